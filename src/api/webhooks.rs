//! `POST /webhooks/github`: signed GitHub deliveries, each handled once.

use std::borrow::Cow;

use axum::extract::{Request, State};
use schemars::JsonSchema;
use serde::Serialize;

use super::AppState;
use super::error::{ApiError, ApiResult, ok};
use super::extract::read_body;
use crate::domain::BuildId;
use crate::github::{parse_pull_request, parse_push, signature_valid};
use crate::metrics::WebhookResult;
use crate::store::DeliveryOutcome;

/// What a delivery caused.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeliveryResult {
    pub delivery: String,
    pub event: String,
    /// True for a redelivery: nothing new was created.
    pub duplicate: bool,
    /// The builds queued.
    pub builds: Vec<BuildId>,
}

/// Verifies the signature before reading the payload, then handles `push` and `pull_request`; other
/// events (and `ping`) are acknowledged. A delivery and the builds it causes are stored in one transaction before the 200.
/// Both of GitHub's content types are read: `application/json`, and `application/x-www-form-urlencoded`
/// (GitHub's default: `payload=<url-encoded JSON>`), whose raw body the signature covers.
/// Every delivery is counted in `kiln_webhook_deliveries_total` by what became of it.
pub async fn receive_github_webhook(
    State(app): State<AppState>,
    req: Request,
) -> ApiResult<DeliveryResult> {
    let result = handle_github_webhook(&app, req).await;
    app.metrics.webhook_delivery(match &result {
        Ok(delivery) if delivery.0.duplicate => WebhookResult::Duplicate,
        Ok(_) => WebhookResult::Accepted,
        Err(ApiError::Unauthenticated) => WebhookResult::Unauthenticated,
        Err(
            ApiError::BadRequest(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::BodyTimeout { .. },
        ) => WebhookResult::Invalid,
        Err(_) => WebhookResult::Failed,
    });
    result
}

async fn handle_github_webhook(app: &AppState, req: Request) -> ApiResult<DeliveryResult> {
    if app.github_webhook_secrets.is_empty() {
        return Err(ApiError::Unauthenticated);
    }
    let (signature, event, delivery, content_type) = {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (
            header("x-hub-signature-256"),
            header("x-github-event"),
            header("x-github-delivery"),
            header("content-type"),
        )
    };
    // Unsigned deliveries are refused before their body is read.
    if signature.is_none() {
        return Err(ApiError::Unauthenticated);
    }
    let body = read_body(req).await?;
    // Nothing is parsed, stored or logged for a delivery that is not signed with our secret.
    let signed = signature.is_some_and(|s| signature_valid(&app.github_webhook_secrets, &body, &s));
    if !signed {
        return Err(ApiError::Unauthenticated);
    }
    // GitHub's event names: lower-case words joined by `_` (stored with the delivery).
    let event = event
        .filter(|e| {
            !e.is_empty() && e.len() <= 64 && e.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .ok_or_else(|| {
            ApiError::BadRequest("X-GitHub-Event: header is required (an event name)".into())
        })?;
    let delivery = delivery
        .filter(|d| !d.is_empty() && d.len() <= 128)
        .ok_or_else(|| ApiError::BadRequest("X-GitHub-Delivery: header is required".into()))?;
    let payload = || payload_json(content_type.as_deref(), &body);
    let (duplicate, builds) = match event.as_str() {
        "push" => {
            let push = parse_push(&payload()?)
                .map_err(|e| ApiError::BadRequest(format!("invalid push payload: {e}")))?;
            match push {
                Some(push) => {
                    let selection = app.store.select_push_triggers(&push).await?;
                    outcome(app.store.handle_push(&delivery, &push, &selection).await?)
                }
                None => (!app.store.record_delivery(&delivery, &event).await?, vec![]),
            }
        }
        "pull_request" => {
            let ev = parse_pull_request(&payload()?)
                .map_err(|e| ApiError::BadRequest(format!("invalid pull_request payload: {e}")))?;
            outcome(app.store.handle_pull_request(&delivery, &ev).await?)
        }
        _ => (!app.store.record_delivery(&delivery, &event).await?, vec![]),
    };
    tracing::info!(
        delivery,
        event,
        duplicate,
        builds = builds.len(),
        "github delivery"
    );
    ok(DeliveryResult {
        delivery,
        event,
        duplicate,
        builds,
    })
}

/// The JSON payload of a delivery: the body itself, or the `payload` field of a form-encoded one.
fn payload_json<'a>(content_type: Option<&str>, body: &'a [u8]) -> Result<Cow<'a, [u8]>, ApiError> {
    let essence = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    if essence.as_deref() != Some("application/x-www-form-urlencoded") {
        return Ok(Cow::Borrowed(body));
    }
    form_urlencoded::parse(body)
        .find(|(key, _)| key == "payload")
        .map(|(_, value)| Cow::Owned(value.into_owned().into_bytes()))
        .ok_or_else(|| {
            ApiError::BadRequest("a form-encoded delivery needs a payload= field".into())
        })
}

/// Whether the delivery was a redelivery, and the builds it queued (their events wake the
/// schedulers).
fn outcome(outcome: DeliveryOutcome) -> (bool, Vec<BuildId>) {
    match outcome {
        DeliveryOutcome::Duplicate => (true, vec![]),
        DeliveryOutcome::Handled(queued) => (false, queued.into_iter().map(|(b, _)| b).collect()),
    }
}
