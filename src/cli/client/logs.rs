//! A build's log: paged through `getBuildLogs` with its cursor, or followed live through the
//! Server-Sent Events of `streamBuildLogs` (`…/logs/stream`) until the build ends. A stream that
//! drops before its `end` event is opened again with `Last-Event-ID` (the id of the last line
//! received), after a back-off, so that no line is missed or repeated (the stream's contract,
//! `src/api/log_stream.rs`).

use std::time::Duration;

use anyhow::Context;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::http::{Api, ApiFailure, ErrorItem};

/// First wait before reconnecting; it doubles with each failed attempt in a row.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest wait between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Attempts in a row that bring no event before following gives up (about a minute of waits).
const MAX_FAILED_ATTEMPTS: u32 = 12;

/// One log line: `[epoch_seconds, message]` as the API shows it.
pub type LogLine = (f64, String);

/// Data of the stream's `end` event.
#[derive(Debug, Clone, Deserialize)]
pub struct End {
    pub build_outcome: Option<String>,
}

/// Calls `on_line` with every line of the build's log, page by page.
pub async fn page_logs(
    api: &Api,
    account: &str,
    build: &str,
    mut on_line: impl FnMut(&LogLine) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    #[derive(Deserialize)]
    struct Page {
        cursor: String,
        lines: Vec<LogLine>,
        truncated: bool,
    }
    let mut cursor = String::new();
    loop {
        let query = if cursor.is_empty() {
            vec![]
        } else {
            vec![("cursor", cursor.clone())]
        };
        let result = api
            .get(
                &["accounts", account, "builds", "builds", build, "logs"],
                &query,
            )
            .await?;
        let page: Page =
            serde_json::from_value(result).context("the server's log page is not understood")?;
        for line in &page.lines {
            on_line(line)?;
        }
        if !page.truncated || page.cursor == cursor {
            return Ok(());
        }
        cursor = page.cursor;
    }
}

/// What a follower tells its caller besides lines.
pub trait FollowEvents {
    /// A line of the log, each once and in order.
    fn line(&mut self, line: &LogLine) -> anyhow::Result<()>;
    /// The connection dropped; the next attempt comes after `wait`.
    fn reconnecting(&mut self, why: &str, wait: Duration);
}

/// Follows the build's log live from its first line until its end: reconnects with
/// `Last-Event-ID` after a dropped connection, a stream closed without `end`, a server answering
/// 429, 502, 503 or 504 (after its `Retry-After`, at most [`BACKOFF_MAX`]); gives up after
/// [`MAX_FAILED_ATTEMPTS`] attempts in a row without an event. Any other error answer (an unknown
/// build, a token refused) ends it at once.
pub async fn follow(
    api: &Api,
    account: &str,
    build: &str,
    events: &mut impl FollowEvents,
) -> anyhow::Result<End> {
    let url = api.url(&[
        "accounts", account, "builds", "builds", build, "logs", "stream",
    ])?;
    let mut last_id: Option<String> = None;
    let mut failed = 0u32;
    loop {
        let mut request = api
            .request(Method::GET, url.clone())
            .header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let (why, retry_after) = match api.send(request, &url).await {
            Err(e) => (format!("{e:#}"), None),
            Ok(response) if response.status() == StatusCode::OK => {
                let mut stream = response.bytes_stream().eventsource();
                let why = loop {
                    match stream.next().await {
                        Some(Ok(event)) => match event.event.as_str() {
                            "line" => {
                                let line: LogLine = serde_json::from_str(&event.data)
                                    .context("a line event of the log stream is not understood")?;
                                events.line(&line)?;
                                last_id = Some(event.id);
                                failed = 0;
                            }
                            "end" => {
                                return serde_json::from_str(&event.data)
                                    .context("the end event of the log stream is not understood");
                            }
                            // Events this client does not know are skipped (the stream may grow).
                            _ => {}
                        },
                        Some(Err(e)) => break format!("the stream broke: {e}"),
                        None => break "the server closed the stream before the build ended".into(),
                    }
                };
                (why, None)
            }
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let errors = response
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| {
                        serde_json::from_value::<Vec<ErrorItem>>(v["errors"].clone()).ok()
                    })
                    .unwrap_or_default();
                let failure = ApiFailure { status, errors };
                let passing = matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                );
                if !passing {
                    return Err(failure.into());
                }
                (failure.to_string(), retry_after)
            }
        };
        failed += 1;
        if failed > MAX_FAILED_ATTEMPTS {
            anyhow::bail!("{why} (gave up after {MAX_FAILED_ATTEMPTS} attempts in a row)");
        }
        let backoff = BACKOFF_START
            .saturating_mul(1 << (failed - 1).min(8))
            .min(BACKOFF_MAX);
        let wait = retry_after.map_or(backoff, |r| r.clamp(backoff, BACKOFF_MAX));
        events.reconnecting(&why, wait);
        tokio::time::sleep(wait).await;
    }
}
