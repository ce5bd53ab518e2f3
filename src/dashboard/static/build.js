// Kiln build page: appends log lines as they are written (Server-Sent Events from the page's
// `data-live` URL), shows status changes, and highlights the lines matching the search box as one
// types. The page is complete without it: reloading shows the same.
(function () {
  'use strict';
  var log = document.getElementById('log');
  if (!log) { return; }

  var search = document.getElementById('log-search');
  var count = document.getElementById('search-count');
  function highlight() {
    if (!search) { return; }
    var q = search.value.trim().toLowerCase();
    var hits = 0;
    var items = log.children;
    for (var i = 0; i < items.length; i++) {
      var text = items[i].querySelector('.lt');
      var hit = q !== '' && text !== null && text.textContent.toLowerCase().indexOf(q) !== -1;
      items[i].classList.toggle('hit', hit);
      if (hit) { hits++; }
    }
    if (count) {
      count.textContent = q === '' ? '' : hits + (hits === 1 ? ' line matches' : ' lines match') + ' on this page';
    }
  }
  if (search) { search.addEventListener('input', highlight); }

  var url = log.getAttribute('data-live');
  if (!url || !window.EventSource) { return; }
  var note = document.getElementById('live-note');
  var badge = document.getElementById('build-status');
  var source = new EventSource(url);
  function setNote(text) { if (note) { note.textContent = text; } }
  function setStatus(data) {
    if (badge) {
      badge.textContent = data.label;
      badge.className = 'badge ' + data.class;
    }
    if (data.stopped) {
      var cancel = document.getElementById('cancel-form');
      if (cancel) { cancel.hidden = true; }
    }
  }
  setNote('Following the log live.');
  source.addEventListener('line', function (e) {
    var nearBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
    // The server renders each line with every character of the log escaped.
    log.insertAdjacentHTML('beforeend', e.data);
    var empty = document.getElementById('log-empty');
    if (empty) { empty.remove(); }
    var shown = document.getElementById('log-count');
    if (shown) {
      var first = Number(shown.getAttribute('data-first')) || 1;
      shown.textContent = 'Lines ' + first + '–' + (first + log.children.length - 1) + ' so far.';
    }
    if (search && search.value) { highlight(); }
    if (nearBottom) { window.scrollTo(0, document.body.scrollHeight); }
  });
  source.addEventListener('status', function (e) { setStatus(JSON.parse(e.data)); });
  source.addEventListener('end', function (e) {
    setStatus(JSON.parse(e.data));
    source.close();
    setNote('The build has finished. Reload the page for its final steps and times.');
  });
  source.addEventListener('error', function () {
    if (source.readyState === EventSource.CONNECTING) {
      setNote('Connection lost: reconnecting…');
    } else if (source.readyState === EventSource.CLOSED) {
      setNote('The live log stopped. Reload the page to see new lines.');
    }
  });
  source.addEventListener('open', function () { setNote('Following the log live.'); });
})();
