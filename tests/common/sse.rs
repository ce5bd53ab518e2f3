//! Reading Server-Sent Events (the live log stream) from a response, as an `EventSource` does:
//! events are blocks of `field: value` lines ended by a blank line; `:` lines are comments.

use std::time::Duration;

use serde_json::Value;

use super::{ADMIN_TOKEN, TestApp};

/// One event of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// `event:` (`message` when absent).
    pub event: String,
    pub id: Option<String>,
    /// `data:` lines joined with `\n`, parsed as JSON.
    pub data: Value,
}

/// An open event stream.
pub struct SseReader {
    response: reqwest::Response,
    buf: Vec<u8>,
    /// Comments received so far (keep-alives).
    pub comments: Vec<String>,
}

/// Longest a test waits for the next event before it fails.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(60);

impl SseReader {
    /// A reader of `response`, which must be a `200` event stream.
    pub fn new(response: reqwest::Response) -> SseReader {
        assert_eq!(response.status(), 200, "not a stream");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(content_type, "text/event-stream", "content type");
        SseReader {
            response,
            buf: Vec::new(),
            comments: Vec::new(),
        }
    }

    /// The next event, or `None` when the stream ended; panics after [`EVENT_DEADLINE`].
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("events are UTF-8");
                if let Some(event) = self.parse(&text) {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout(EVENT_DEADLINE, self.response.chunk())
                .await
                .expect("no event in time")
                .expect("read the stream")?;
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next comment (a keep-alive); panics when an event or the end of the stream comes first,
    /// or after [`EVENT_DEADLINE`].
    pub async fn next_comment(&mut self) -> String {
        let seen = self.comments.len();
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("events are UTF-8");
                if let Some(event) = self.parse(&text) {
                    panic!("expected a comment, got {event:?}");
                }
                if let Some(comment) = self.comments.get(seen) {
                    return comment.clone();
                }
                continue;
            }
            let chunk = tokio::time::timeout(EVENT_DEADLINE, self.response.chunk())
                .await
                .expect("no comment in time")
                .expect("read the stream")
                .expect("the stream ended before a comment");
            self.buf.extend_from_slice(&chunk);
        }
    }

    fn parse(&mut self, block: &str) -> Option<SseEvent> {
        let mut event = None;
        let mut id = None;
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if let Some(comment) = line.strip_prefix(':') {
                self.comments.push(comment.trim().to_owned());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = Some(value.to_owned()),
                "id" => id = Some(value.to_owned()),
                "data" => data.push(value),
                "" => {}
                other => panic!("unexpected field {other:?} in {block:?}"),
            }
        }
        if data.is_empty() {
            return None;
        }
        Some(SseEvent {
            event: event.unwrap_or_else(|| "message".to_owned()),
            id,
            data: serde_json::from_str(&data.join("\n")).expect("event data is JSON"),
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `GET …/builds/{build}/logs/stream` with the admin token, a `Last-Event-ID` and/or a query.
pub async fn open_stream(
    app: &TestApp,
    build: &str,
    last_event_id: Option<&str>,
    query: &str,
) -> reqwest::Response {
    let mut req = app
        .client
        .get(app.url(&app.acct(&format!("/builds/{build}/logs/stream{query}"))))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    req.send().await.expect("open the stream")
}

/// What a client read from a build's stream: the lines, in order, with the last id, and the `end`
/// event's data.
#[derive(Debug, Default)]
pub struct StreamRead {
    pub lines: Vec<String>,
    pub last_id: Option<String>,
    pub end: Option<Value>,
    /// Times the client connected.
    pub connections: usize,
}

/// Opens a build's stream from `last_event_id` as a client that honours `Retry-After` does: a node
/// with all its streams open is asked again.
pub async fn open_stream_retrying(
    app: &TestApp,
    build: &str,
    last_event_id: Option<&str>,
) -> SseReader {
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    loop {
        let response = open_stream(app, build, last_event_id, "").await;
        if response.status() != 429 {
            return SseReader::new(response);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no stream slot in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a build's whole log through the stream, as an `EventSource` would, until the `end` event:
/// it disconnects after `disconnect_after` lines (if given) and reconnects with `Last-Event-ID`, as it
/// does when the server closes the stream before the end (a reader too slow for it). Asserts that ids
/// never repeat.
pub async fn read_stream(
    app: &TestApp,
    build: &str,
    disconnect_after: Option<usize>,
) -> StreamRead {
    let mut read = StreamRead::default();
    loop {
        let mut stream = open_stream_retrying(app, build, read.last_id.as_deref()).await;
        read.connections += 1;
        let mut this_connection = 0;
        while let Some(event) = stream.next().await {
            match event.event.as_str() {
                "line" => {
                    let id = event.id.clone().expect("a line has an id");
                    assert_ne!(read.last_id.as_deref(), Some(id.as_str()), "an id repeats");
                    let text = event.data[1].as_str().expect("[seconds, line]").to_owned();
                    assert!(event.data[0].is_number(), "{}", event.data);
                    read.lines.push(text);
                    read.last_id = Some(id);
                    this_connection += 1;
                }
                "end" => {
                    read.end = Some(event.data);
                    return read;
                }
                other => panic!("unexpected event {other}"),
            }
            if read.connections == 1 && disconnect_after == Some(this_connection) {
                // Dropped mid-stream, as a client that loses its connection.
                break;
            }
        }
    }
}
