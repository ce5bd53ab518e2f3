//! GitHub webhooks as GitHub sends them: signed deliveries and push payloads.

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use super::{TestApp, WEBHOOK_SECRET, s};

/// `sha256=<hex HMAC-SHA256 of body>` with `secret`: GitHub's `X-Hub-Signature-256`.
pub fn sign_with(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// [`sign_with`] the test servers' webhook secret.
pub fn sign(body: &[u8]) -> String {
    sign_with(WEBHOOK_SECRET, body)
}

/// Delivers `payload` as a signed `event` to the server at `base` (`http://host:port`), with a
/// fresh delivery id; its status and JSON answer.
pub async fn deliver_webhook(base: &str, event: &str, payload: &Value) -> (StatusCode, Value) {
    let body = serde_json::to_vec(payload).expect("json");
    let resp = reqwest::Client::new()
        .post(format!("{base}/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .header("x-hub-signature-256", sign(&body))
        .body(body)
        .send()
        .await
        .expect("deliver");
    let status = resp.status();
    (status, resp.json().await.expect("json answer"))
}

/// Delivers a signed `event` that must be accepted; the ids of the builds it queued.
pub async fn deliver_accepted(app: &TestApp, event: &str, payload: &Value) -> Vec<String> {
    let (status, v) = deliver_webhook(&app.base, event, payload).await;
    assert_eq!(status, 200, "{v}");
    v["result"]["builds"]
        .as_array()
        .unwrap_or_else(|| panic!("builds in {v}"))
        .iter()
        .map(s)
        .collect()
}

/// A push of commit `after` to `branch` of repository `repo_id` (`acme/site`) through GitHub App
/// installation `installation`, changing `src/index.ts`.
pub fn push_payload(repo_id: u64, installation: i64, branch: &str, after: &str) -> Value {
    let commit = json!({"id": after, "message": "Change", "timestamp": "2026-11-23T10:00:00Z",
        "author": {"name": "Mona", "email": "mona@example.com"},
        "added": ["src/index.ts"], "removed": [], "modified": []});
    json!({"ref": format!("refs/heads/{branch}"), "before": "0".repeat(40), "after": after,
        "created": true, "deleted": false, "forced": false, "commits": [commit.clone()], "head_commit": commit,
        "repository": {"id": repo_id, "name": "site", "full_name": "acme/site",
            "owner": {"login": "acme", "id": 6811672}},
        "installation": {"id": installation}})
}
