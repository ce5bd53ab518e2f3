// Kiln dashboard, settings pages. The pages work without this script; it adds:
// * Copy buttons (`<button data-copy="ID" hidden>`): shown, they copy the value of the field #ID
//   with the Clipboard API and say so in #ID-status; where the browser refuses, the text is
//   selected for the user to copy.
// * The value field of the variable form is a password field while "Secret" is ticked, plain text
//   otherwise (`<input type=checkbox data-secret-for="ID">`).
"use strict";

(function () {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    var field = document.getElementById(button.dataset.copy);
    var status = document.getElementById(button.dataset.copy + "-status");
    if (!field) {
      return;
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      var say = function (text) {
        if (status) {
          status.textContent = text;
        }
      };
      var selectIt = function () {
        field.focus();
        field.select();
        say("Selected: press Ctrl+C (⌘C) to copy.");
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(function () {
          say("Copied to the clipboard.");
        }, selectIt);
      } else {
        selectIt();
      }
    });
  });

  document.querySelectorAll("input[data-secret-for]").forEach(function (box) {
    var field = document.getElementById(box.dataset.secretFor);
    if (!field) {
      return;
    }
    var sync = function () {
      field.type = box.checked ? "password" : "text";
    };
    box.addEventListener("change", sync);
    sync();
  });
})();
