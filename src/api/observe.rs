//! What every request gets on its way through the router: a request id, a tracing span, and its
//! count and latency in the metrics.
//!
//! The request id is the client's `x-request-id` when it is sane ([`is_sane_request_id`]), else a
//! new UUID (an insane one is replaced, never echoed). It is in the request's span, in the
//! response's `x-request-id` header, and in the log line of every error answered
//! ([`current_request_id`], used by [`super::error`]), even when the span's level is filtered out.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::metrics::{Metrics, UNMATCHED_ROUTE};

/// The header a request id comes in and goes out with.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a client, in bytes (a UUID has 36).
pub const MAX_REQUEST_ID_LEN: usize = 128;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// The id of the request this task is answering, if it is answering one.
pub fn current_request_id() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// Whether a client's request id may be used as is: 1 to [`MAX_REQUEST_ID_LEN`] bytes of visible
/// ASCII (no blanks or control characters) other than `"` and `\`, so that it cannot forge or break
/// a log line, nor make one long.
pub fn is_sane_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// Wraps every route of `router` (and its fallback) with, from the outside in: removal of an insane
/// `x-request-id`, a new id where none is left, the id copied to the response, the request's span,
/// the id in the task for error log lines, and the HTTP metrics (by route template). Layers added
/// to `router` before run inside all of these, so that a panic answered by one is counted too.
pub fn instrument(router: Router, metrics: Arc<Metrics>) -> Router {
    router
        .layer(middleware::from_fn_with_state(metrics, count_request))
        .layer(middleware::from_fn(scope_request_id))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
        .layer(middleware::map_request(drop_insane_request_id))
}

/// Removes the client's `x-request-id` unless it is one sane value (several values are not).
async fn drop_insane_request_id(mut req: Request) -> Request {
    let mut values = req.headers().get_all(&REQUEST_ID_HEADER).iter();
    let sane = match (values.next(), values.next()) {
        (None, _) => true,
        (Some(one), None) => is_sane_request_id(one.as_bytes()),
        (Some(_), Some(_)) => false,
    };
    if !sane {
        req.headers_mut().remove(&REQUEST_ID_HEADER);
    }
    req
}

/// The request's id as set by [`SetRequestIdLayer`].
fn request_id<B>(req: &axum::http::Request<B>) -> Option<&str> {
    req.extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
}

/// The span of a request: its method, its path fit for logs (see [`super::loggable_path`]) and its
/// id. At `info`, so that the lines logged while it is answered carry them.
fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let path: Cow<'_, str> = super::loggable_path(req.uri().path());
    tracing::info_span!(
        "request",
        method = %req.method(),
        path = %path,
        request_id = request_id(req).unwrap_or_default(),
    )
}

/// Runs the rest of the request with its id in the task ([`current_request_id`]).
async fn scope_request_id(req: Request, next: Next) -> Response {
    match request_id(&req).map(Arc::<str>::from) {
        Some(id) => REQUEST_ID.scope(id, next.run(req)).await,
        None => next.run(req).await,
    }
}

/// Counts the request in the metrics by its route template (never its raw path).
async fn count_request(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let resp = next.run(req).await;
    metrics.http_request(
        &method,
        route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str),
        resp.status(),
        started.elapsed(),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_ids_are_short_visible_ascii() {
        for sane in [
            "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e",
            "a",
            "01HZY3K8W5Q2ZJ7N4V6T9B1C0D",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
            &"x".repeat(MAX_REQUEST_ID_LEN),
        ] {
            assert!(is_sane_request_id(sane.as_bytes()), "{sane}");
        }
        for insane in [
            &b""[..],
            b"two words",
            b"tab\there",
            b"quote\"d",
            b"back\\slash",
            b"new\nline",
            "caf\u{e9}".as_bytes(),
            &[0xff, 0xfe],
            "x".repeat(MAX_REQUEST_ID_LEN + 1).as_bytes(),
        ] {
            assert!(!is_sane_request_id(insane), "{insane:?}");
        }
    }
}
