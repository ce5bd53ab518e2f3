//! The public deploy-hook endpoint: builds of the hook's branch with the matching trigger, dedupe while
//! a build is pending, rate limits per Worker and per account, 404 for unknown or deleted hooks.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn call_hook(app: &TestApp, hook: &str) -> (StatusCode, Value, Option<String>) {
    // No credentials: the hook id is the secret.
    let resp = app
        .client
        .post(app.url(&format!("/workers/builds/deploy_hooks/{hook}")))
        .send()
        .await
        .expect("call hook");
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, resp.json().await.expect("json"), retry)
}

async fn hook(app: &TestApp, worker: &str, name: &str, branch: &str) -> String {
    let r = app
        .ok(
            Method::POST,
            &app.acct(&format!("/workers/{worker}/deploy_hooks")),
            Some(json!({"deploy_hook_name": name, "branch": branch})),
        )
        .await;
    s(&r["deploy_hook_uuid"])
}

/// A Worker with a production trigger (main) and a preview trigger (every other branch).
async fn worker_with_two_triggers(app: &TestApp, worker: &str) -> (String, String) {
    let f = app.fixture(worker).await;
    let preview = app
        .ok(
            Method::POST,
            &app.acct("/triggers"),
            Some(
                json!({"external_script_id": worker, "repo_connection_uuid": f.connection,
                "build_token_uuid": f.token, "trigger_name": "Previews",
                "branch_includes": ["*"], "branch_excludes": ["main"]}),
            ),
        )
        .await;
    (f.trigger, s(&preview["trigger_uuid"]))
}

#[tokio::test]
async fn a_hook_builds_its_branch_once_while_the_build_is_pending() {
    let app = TestApp::spawn().await;
    let (production, preview) = worker_with_two_triggers(&app, "site").await;
    let main_hook = hook(&app, "site", "CMS publish", "main").await;
    let (status, v, _) = call_hook(&app, &main_hook).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["already_exists"], false);
    assert_eq!(v["result"]["status"], "queued");
    let build = s(&v["result"]["build_uuid"]);
    let b = app
        .ok(Method::GET, &app.acct(&format!("/builds/{build}")), None)
        .await;
    assert_eq!(b["trigger"]["trigger_uuid"], production.as_str());
    assert_eq!(
        b["build_trigger_metadata"]["build_trigger_source"],
        "deploy_hook"
    );
    assert_eq!(b["build_trigger_metadata"]["branch"], "main");

    // Pending: the same build comes back and nothing new is created.
    let (status, again, _) = call_hook(&app, &main_hook).await;
    assert_eq!(status, 200);
    assert_eq!(again["result"]["already_exists"], true);
    assert_eq!(s(&again["result"]["build_uuid"]), build);
    let (_, list) = app.get(&app.acct("/workers/site/builds")).await;
    assert_eq!(list["result_info"]["total_count"], 1);

    // Once it has left the queue, the next call builds again.
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{build}/cancel")),
        None,
    )
    .await;
    let (_, third, _) = call_hook(&app, &main_hook).await;
    assert_eq!(third["result"]["already_exists"], false);
    assert_ne!(s(&third["result"]["build_uuid"]), build);

    // Another branch goes to the preview trigger; the hook's latest build shows in the list.
    let feature_hook = hook(&app, "site", "Feature", "feature/x").await;
    let (_, v, _) = call_hook(&app, &feature_hook).await;
    let b = app
        .ok(
            Method::GET,
            &app.acct(&format!("/builds/{}", s(&v["result"]["build_uuid"]))),
            None,
        )
        .await;
    assert_eq!(b["trigger"]["trigger_uuid"], preview.as_str());
    let hooks = app
        .ok(Method::GET, &app.acct("/workers/site/deploy_hooks"), None)
        .await;
    assert!(
        hooks
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["latest_build"]["created_on"].is_string()),
        "{hooks}"
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_deleted_and_unmatched_hooks_build_nothing() {
    let app = TestApp::spawn().await;
    let f = app.fixture("w").await; // production trigger: branch_includes ["main"]
    let (status, v, _) = call_hook(&app, &uuid::Uuid::new_v4().to_string()).await;
    assert_error(status, &v, 404, 12000);
    let (status, v, _) = call_hook(&app, "not-a-uuid").await;
    assert_error(status, &v, 400, 12002);

    let h = hook(&app, "w", "to delete", "main").await;
    app.ok(
        Method::DELETE,
        &app.acct(&format!("/workers/w/deploy_hooks/{h}")),
        None,
    )
    .await;
    let (status, v, _) = call_hook(&app, &h).await;
    assert_error(status, &v, 404, 12000);

    // No trigger selects this branch.
    let h = hook(&app, "w", "stray", "gh-pages").await;
    let (status, v, _) = call_hook(&app, &h).await;
    assert_error(status, &v, 409, 12009);
    assert!(s(&v["errors"][0]["message"]).contains("gh-pages"), "{v}");
    let (_, list) = app.get(&app.acct("/workers/w/builds")).await;
    assert_eq!(list["result"], json!([]));
    let _ = f;
    app.stop().await;
}

#[tokio::test]
async fn hooks_are_rate_limited_per_worker_and_per_account() {
    let app = TestApp::spawn().await;
    // 10 builds per minute per Worker.
    app.fixture("busy").await;
    let h = hook(&app, "busy", "loop", "main").await;
    for _ in 0..10 {
        let (status, v, _) = call_hook(&app, &h).await;
        assert_eq!(status, 200, "{v}");
        let id = s(&v["result"]["build_uuid"]);
        app.ok(
            Method::PUT,
            &app.acct(&format!("/builds/{id}/cancel")),
            None,
        )
        .await;
    }
    let (status, v, retry) = call_hook(&app, &h).await;
    assert_error(status, &v, 429, 12051);
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let (_, list) = app.get(&app.acct("/workers/busy/builds")).await;
    assert_eq!(list["result_info"]["total_count"], 10);

    // 100 per account: nine more Workers with ten builds each, then any Worker of the account waits.
    for i in 0..9 {
        let worker = format!("w{i}");
        app.fixture(&worker).await;
        let h = hook(&app, &worker, "loop", "main").await;
        for _ in 0..10 {
            let (status, v, _) = call_hook(&app, &h).await;
            assert_eq!(status, 200, "{v}");
            let id = s(&v["result"]["build_uuid"]);
            app.ok(
                Method::PUT,
                &app.acct(&format!("/builds/{id}/cancel")),
                None,
            )
            .await;
        }
    }
    app.fixture("fresh").await;
    let h = hook(&app, "fresh", "first", "main").await;
    let (status, v, retry) = call_hook(&app, &h).await;
    assert_error(status, &v, 429, 12051);
    assert!(retry.is_some());
    app.stop().await;
}
