//! The build page's live log: Server-Sent Events authenticated by the session cookie (an
//! `EventSource` cannot send an `Authorization` header), on the same follower as the API's
//! `…/logs/stream` ([`crate::api::log_stream::follow_build`], [`crate::logs::tail`]).
//!
//! `GET /accounts/{account_id}/builds/{build_uuid}/live?from=N` sends, from line `N` (or the line
//! after the `Last-Event-ID` a reconnecting `EventSource` sends):
//! * `event: line`, `id:` the number of the next line, `data:` the line's `<li>` as the page renders
//!   it (every character of the log escaped);
//! * `event: status` with `{"label", "class", "stopped"}` when the build's status is first read and
//!   whenever it changes;
//! * `event: end` with the same fields once the build has stopped and every line was sent; then the
//!   stream closes.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::response::sse::Event;
use serde::{Deserialize, Serialize};

use super::build_page::line_html;
use super::error::PageResult;
use super::session::{AccountAccess, PagePath, PageQuery};
use super::view;
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::log_stream::{follow_build, sse_response};
use crate::domain::{BuildId, BuildStatus};
use crate::logs::tail::{TailEvent, TailState};

/// `?from=` of the live log.
#[derive(Deserialize)]
pub struct LiveQuery {
    from: Option<i64>,
}

/// Data of `status` and `end` events.
#[derive(Serialize)]
struct StatusData {
    label: &'static str,
    class: &'static str,
    stopped: bool,
}

fn status_data(state: &TailState) -> StatusData {
    let shown = view::build_state(state.status, state.outcome);
    StatusData {
        label: shown.label,
        class: shown.class,
        stopped: state.status == BuildStatus::Stopped,
    }
}

/// The first line to send: after the `Last-Event-ID`, else `from`, else 0.
fn start(headers: &HeaderMap, from: Option<i64>) -> Result<i64, ApiError> {
    if let Some(value) = headers.get("last-event-id") {
        let raw = value.to_str().unwrap_or_default().trim();
        if !raw.is_empty() {
            return raw.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::BadRequest("Last-Event-ID: is not an event id of this stream".into())
            });
        }
    }
    match from {
        Some(n) if n < 0 => Err(ApiError::BadRequest("from: must be 0 or more".into())),
        Some(n) => Ok(n),
        None => Ok(0),
    }
}

fn event(e: TailEvent) -> Result<Event, axum::Error> {
    match e {
        TailEvent::Line { seq, text, .. } => Ok(Event::default()
            .event("line")
            .id((seq + 1).to_string())
            .data(line_html(seq, &text).to_string())),
        TailEvent::Status(state) => Event::default()
            .event("status")
            .json_data(status_data(&state)),
        TailEvent::End(state) => Event::default().event("end").json_data(status_data(&state)),
    }
}

/// `GET /accounts/{account_id}/builds/{build_uuid}/live?from=`
pub async fn stream_live_log(
    State(app): State<AppState>,
    access: AccountAccess,
    PagePath((_, raw_id)): PagePath<(String, String)>,
    PageQuery(query): PageQuery<LiveQuery>,
    headers: HeaderMap,
) -> PageResult<Response> {
    let id = BuildId::parse("build_uuid", &raw_id)?;
    let from = start(&headers, query.from)?;
    let rx = follow_build(&app, access.account, id, from, true).await?;
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let e = rx.recv().await?;
        Some((event(e), rx))
    });
    Ok(sse_response(&app, events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_stream_resumes_after_the_last_event() {
        let mut h = HeaderMap::new();
        assert_eq!(start(&h, None).ok(), Some(0));
        assert_eq!(start(&h, Some(7)).ok(), Some(7));
        assert!(start(&h, Some(-1)).is_err());
        h.insert("last-event-id", HeaderValue::from_static("12"));
        assert_eq!(start(&h, Some(7)).ok(), Some(12));
        h.insert("last-event-id", HeaderValue::from_static("x"));
        assert!(start(&h, Some(7)).is_err());
    }
}
