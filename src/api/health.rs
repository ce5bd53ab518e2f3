//! Operating Kiln: `GET /metrics` (Prometheus text format, optionally behind its own bearer token),
//! `GET /healthz` (the process answers) and `GET /readyz` (this node can serve: store, migrations,
//! build slots). None of them needs an API token; all are cheap.

use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use schemars::{JsonSchema, SchemaGenerator};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::error::{ApiError, Envelope, ErrorItem, Success};
use super::observe::current_request_id;
use super::throttle::client_key;
use super::{AppState, method_not_allowed};
use crate::store::Backend;

/// Longest `/readyz` waits for the store; past it the node is not ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The error code of each reason `/readyz` gives for a 503 (the number of the HTTP status, as for
/// an unavailable store).
pub const CODE_NOT_READY: u32 = 10503;

/// The routes of this module, outside the API's base path.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(get_metrics).fallback(method_not_allowed))
        .route("/healthz", get(get_health).fallback(method_not_allowed))
        .route("/readyz", get(get_readiness).fallback(method_not_allowed))
        .with_state(state)
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `GET /metrics`: every metric of this node. With a metrics token configured, the request must
/// carry it as `Authorization: Bearer <token>` (401 otherwise; a client that keeps presenting wrong
/// ones is throttled like API credentials); without one the endpoint is open.
pub async fn get_metrics(State(app): State<AppState>, req: Request) -> Result<Response, ApiError> {
    if app.metrics.needs_token() {
        let client = client_key(req.extensions());
        if let Some(retry_after_secs) = client.and_then(|c| app.auth_throttle.check(c)) {
            return Err(ApiError::RateLimited { retry_after_secs });
        }
        let presented = req.headers().contains_key(header::AUTHORIZATION);
        if !bearer(req.headers()).is_some_and(|t| app.metrics.token_matches(t)) {
            if let Some(c) = client.filter(|_| presented) {
                app.auth_throttle.record_failure(c);
            }
            return Err(ApiError::Unauthenticated);
        }
    }
    let text = app.metrics.render().await?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// `GET /healthz`: 200 `{"status":"ok"}` whenever the process answers (nothing else is checked).
pub async fn get_health() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

/// What a ready node reports.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Readiness {
    /// Always `ready`.
    pub status: &'static str,
    /// The store's backend: `sqlite` or `postgres`.
    pub store: &'static str,
    /// Migrations this binary embeds, all applied.
    pub migrations: usize,
    /// Build slots of this node (`--runners`; 0 on an API-only node).
    pub runner_slots: i64,
    /// Of those, the ones running a build now.
    pub runner_slots_busy: i64,
}

/// `GET /readyz`: 200 with [`Readiness`] when this node can serve: the store answers within
/// [`READY_TIMEOUT`] (on SQLite, its file opens anew), every migration this binary embeds is
/// applied there, and, with build slots, its build scheduler runs. Otherwise 503 with one error per
/// reason (code [`CODE_NOT_READY`]); the details of a store failure go to the log, not the answer.
pub async fn get_readiness(State(app): State<AppState>) -> Response {
    let mut reasons = Vec::new();
    let mut migrations = 0;
    match tokio::time::timeout(READY_TIMEOUT, app.store.readiness()).await {
        Ok(Ok(store)) => {
            migrations = store.embedded;
            reasons.extend(store.problems);
        }
        Ok(Err(e)) => {
            tracing::warn!(
                request_id = current_request_id().as_deref(),
                error = format!("{e:#}"),
                "not ready: the store cannot be reached"
            );
            reasons.push("the store cannot be reached".to_owned());
        }
        Err(_) => reasons.push(format!(
            "the store did not answer within {} s",
            READY_TIMEOUT.as_secs()
        )),
    }
    let slots = app.metrics.runner_slots();
    if slots.slots > 0 && !slots.scheduler_running {
        reasons.push("the build scheduler of this node is not running".to_owned());
    }
    if reasons.is_empty() {
        let store = match app.store.backend() {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        return Success(
            Readiness {
                status: "ready",
                store,
                migrations,
                runner_slots: slots.slots,
                runner_slots_busy: slots.busy,
            },
            None,
        )
        .into_response();
    }
    let body = Envelope::<()> {
        success: false,
        errors: reasons
            .into_iter()
            .map(|reason| ErrorItem {
                code: CODE_NOT_READY,
                message: format!("Not ready: {reason}"),
            })
            .collect(),
        messages: vec![],
        result: None,
        result_info: None,
    };
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// The OpenAPI paths of this module's routes (their schemas go into `g`).
pub fn describe(g: &mut SchemaGenerator) -> Map<String, Value> {
    let readiness = g.subschema_for::<Readiness>();
    let error = json!({"$ref": "#/components/responses/Error"});
    let mut paths = Map::new();
    paths.insert("/metrics".into(), json!({"get": {
        "operationId": "getMetrics",
        "summary": "This node's metrics in the Prometheus text exposition format 0.0.4 (kiln_* names; \
            see the README for the list). Open unless Kiln runs with --metrics-token, then a Bearer \
            token equal to it is needed (not an API token).",
        "security": [{"metrics_token": []}, {}],
        "responses": {
            "200": {"description": "The metrics", "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}}},
            "401": error.clone(),
            "429": error.clone(),
            "default": error.clone(),
        },
    }}));
    paths.insert("/healthz".into(), json!({"get": {
        "operationId": "getHealth",
        "summary": "Liveness: 200 whenever the process answers; nothing else is checked",
        "security": [],
        "responses": {
            "200": {"description": "The process answers", "content": {"application/json": {"schema": {
                "type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}},
            }}}},
            "default": error.clone(),
        },
    }}));
    paths.insert("/readyz".into(), json!({"get": {
        "operationId": "getReadiness",
        "summary": "Readiness: the store answers within 2 s, every migration this binary embeds is \
            applied, and the build scheduler runs when the node has build slots. 503 otherwise, with \
            one error (code 10503) per reason.",
        "security": [],
        "responses": {
            "200": {"description": "Ready", "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["success", "errors", "messages", "result"],
                "properties": {
                    "success": {"const": true},
                    "errors": {"type": "array", "maxItems": 0},
                    "messages": {"type": "array", "items": {"type": "string"}},
                    "result": readiness,
                },
            }}}},
            "503": error.clone(),
            "default": error,
        },
    }}));
    paths
}
