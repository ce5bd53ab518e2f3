//! The live log stream: a build's log as Server-Sent Events, from a cursor to the build's end.
//!
//! `GET /accounts/{account_id}/builds/builds/{build_uuid}/logs/stream` answers `text/event-stream`
//! with, in order:
//! * every stored line from the position given (the `Last-Event-ID` header a reconnecting
//!   `EventSource` sends, else `?cursor=` of `getBuildLogs`, else the first line), then each new line
//!   as it is stored: `event: line`, `id:` the position after the line (a `getBuildLogs` cursor), and
//!   `data:` the line as `getBuildLogs` shows it, `[epoch_seconds, "message"]`;
//! * once the build has stopped and its log is complete (for a build cancelled while it ran, once its
//!   runner had the cancel grace to stop it and log so), `event: end` with the build's status and
//!   outcome ([`EndEvent`]), and the stream closes;
//! * a `: keep-alive` comment whenever [`LogStreamConfig::keep_alive`] passes without an event.
//!
//! Reconnecting with the last id received resumes at the next line: no line is missed or repeated.
//! A stream that closes without an `end` event (a client too slow, a server stopping, a store error)
//! is resumed the same way. Lines are the stored ones, so they are masked as the logs endpoint's are.
//! How new lines are noticed, on this node or another, is in [`crate::logs::tail`].
//!
//! At most [`LogStreamConfig::max_streams`] streams are open on a node at once; the next one is
//! refused with 429 (code 12051) and `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::Instrument;

use super::AppState;
use super::builds::{LogCursor, build_id, decode_cursor, encode_cursor};
use super::error::ApiError;
use super::extract::{Account, MAX_PAGE_BYTES, PathParams, QueryParams};
use crate::domain::{BuildId, BuildOutcome, BuildStatus, Timestamp};
use crate::logs::tail::{TailConfig, TailEnd, TailEvent, follow};
use crate::store::LogLimit;

/// Events a stream holds for its client at most: the bound on what a client that reads slowly costs
/// (each is one line, at most [`crate::logs::MAX_LINE_BYTES`] of message).
const EVENT_BUFFER: usize = 32;

/// Lines read from the store at once.
const READ_LINES: u32 = 1000;

/// `Retry-After` of a stream refused because the node has all it may open, in seconds.
const STREAMS_RETRY_SECS: u64 = 5;

/// Live log streams of one node (`kiln serve` flags; README "Flags").
#[derive(Debug, Clone, Copy)]
pub struct LogStreamConfig {
    /// Streams open at once on this node at most.
    pub max_streams: usize,
    /// Time without an in-process wake-up after which a stream reads the store anyway (the build may
    /// run on another node).
    pub poll_interval: Duration,
    /// Time without an event after which a keep-alive comment is sent.
    pub keep_alive: Duration,
    /// Time a client may read nothing of the events waiting for it before its stream is closed.
    pub slow_reader_timeout: Duration,
}

impl Default for LogStreamConfig {
    fn default() -> Self {
        LogStreamConfig {
            max_streams: 100,
            poll_interval: Duration::from_millis(400),
            keep_alive: Duration::from_secs(15),
            slow_reader_timeout: Duration::from_secs(10),
        }
    }
}

/// The live log streams of this node: how many may open, and the signal that ends them all.
#[derive(Debug)]
pub struct LogStreams {
    config: LogStreamConfig,
    cancel_grace: Duration,
    slots: Arc<Semaphore>,
    closing: watch::Sender<bool>,
}

impl LogStreams {
    /// Streams by `config`, of builds whose runners stop cancelled builds within `cancel_grace`.
    pub fn new(config: LogStreamConfig, cancel_grace: Duration) -> LogStreams {
        LogStreams {
            config,
            cancel_grace,
            slots: Arc::new(Semaphore::new(config.max_streams)),
            closing: watch::channel(false).0,
        }
    }

    /// Ends every stream (the server is stopping); their clients reconnect with `Last-Event-ID`.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

/// Data of the stream's `end` event: the build has stopped and every line of its log was sent.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EndEvent {
    pub build_uuid: BuildId,
    /// Always `stopped`.
    pub status: BuildStatus,
    pub build_outcome: Option<BuildOutcome>,
    pub stopped_on: Option<Timestamp>,
}

/// Where the stream starts: the line after the `Last-Event-ID` header's, else `cursor`'s, else 0.
fn start_line(query: &QueryParams, headers: &HeaderMap) -> Result<i64, ApiError> {
    if let Some(value) = headers.get("last-event-id") {
        let raw = value.to_str().map_err(|_| {
            ApiError::BadRequest("Last-Event-ID: is not an event id sent by this stream".into())
        })?;
        if !raw.trim().is_empty() {
            return Ok(
                decode_cursor("Last-Event-ID", "an event id sent by this stream", raw)?.line,
            );
        }
    }
    match query.get("cursor") {
        Some(raw) if !raw.trim().is_empty() => Ok(decode_cursor(
            "cursor",
            "a cursor returned by getBuildLogs or this stream",
            raw,
        )?
        .line),
        _ => Ok(0),
    }
}

/// `GET /accounts/{account_id}/builds/builds/{build_uuid}/logs/stream`
pub async fn stream_build_logs(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = build_id(&path)?;
    let from = start_line(&query, &headers)?;
    let rx = follow_build(&app, account, id, from, false).await?;
    let events = futures_util::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await? {
                TailEvent::Status(_) => continue,
                event => return Some((sse_event(id, event), rx)),
            }
        }
    });
    Ok(sse_response(&app, events))
}

/// Starts following the log of build `id` of `account` from line `from` (with status changes when
/// `status_changes`, see [`TailConfig::status_changes`]) in a task holding one of the node's stream
/// slots; the events come through the returned channel. The API's stream and the dashboard's live
/// log are both this. Errors: 404 for a build not in the account, 429 when the node has all the
/// streams it may open.
pub(crate) async fn follow_build(
    app: &AppState,
    account: crate::domain::AccountId,
    id: BuildId,
    from: i64,
    status_changes: bool,
) -> Result<mpsc::Receiver<TailEvent>, ApiError> {
    if app.store.build_tail_state(&account, id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    let streams = &app.log_streams;
    let Ok(slot) = streams.slots.clone().try_acquire_owned() else {
        return Err(ApiError::QuotaExceeded {
            message: format!(
                "Too many live log streams on this server (at most {}): retry later, or page through \
                 the build's logs endpoint",
                streams.config.max_streams
            ),
            retry_after_secs: STREAMS_RETRY_SECS,
        });
    };
    let config = TailConfig {
        poll_interval: streams.config.poll_interval,
        send_timeout: streams.config.slow_reader_timeout,
        page: LogLimit {
            lines: READ_LINES,
            bytes: MAX_PAGE_BYTES / 4,
        },
        cancel_grace: streams.cancel_grace,
        status_changes,
    };
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    let closing = streams.closing.subscribe();
    let store = app.store.clone();
    let span = tracing::info_span!("log stream", build.uuid = %id, account = %account);
    // The follower holds the stream's slot: a client dropped for being slow frees it at once, even
    // while its connection waits to be closed.
    tokio::spawn(
        async move {
            let _slot = slot;
            match follow(&store, &account, id, from, config, &tx, closing).await {
                Ok(TailEnd::TooSlow) => tracing::info!(
                    timeout_seconds = config.send_timeout.as_secs(),
                    "closed a live log stream whose client read nothing in time"
                ),
                Ok(end) => tracing::debug!(?end, "live log stream ended"),
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "reading a build's log for a live stream failed; the stream ends"
                ),
            }
        }
        .instrument(span),
    );
    Ok(rx)
}

/// The `text/event-stream` response of a stream of events, with the node's keep-alive comments.
pub(crate) fn sse_response<S>(app: &AppState, events: S) -> Response
where
    S: futures_util::Stream<Item = Result<Event, axum::Error>> + Send + 'static,
{
    let keep_alive = KeepAlive::new()
        .interval(app.log_streams.config.keep_alive)
        .text("keep-alive");
    let mut response = Sse::new(events).keep_alive(keep_alive).into_response();
    // Proxies that buffer responses (nginx) would hold the events back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The SSE form of an event.
fn sse_event(build: BuildId, event: TailEvent) -> Result<Event, axum::Error> {
    match event {
        TailEvent::Line { seq, at, text } => Event::default()
            .event("line")
            .id(encode_cursor(&LogCursor {
                line: seq + 1,
                timestamp: at.millis() / 1000,
            }))
            .json_data((at.epoch_seconds(), text)),
        // Not asked for by this stream.
        TailEvent::Status(_) => Ok(Event::default().comment("status")),
        TailEvent::End(state) => Event::default().event("end").json_data(EndEvent {
            build_uuid: build,
            status: state.status,
            build_outcome: state.outcome,
            stopped_on: state.stopped_on,
        }),
    }
}
