//! End-to-end smoke test: the seed flow over HTTP.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn manual_build_flow_and_restart() {
    let mut app = TestApp::spawn().await;
    let f = app.fixture("my-worker").await;
    let b = app
        .ok(
            Method::POST,
            &app.acct(&format!("/triggers/{}/builds", f.trigger)),
            Some(json!({"branch": "main"})),
        )
        .await;
    let id = s(&b["build_uuid"]);
    app.restart().await;
    let got = app
        .ok(Method::GET, &app.acct(&format!("/builds/{id}")), None)
        .await;
    assert_eq!(got["status"], "queued");
    app.stop().await;
}
