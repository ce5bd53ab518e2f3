//! Reporting to GitHub against a fake GitHub API that records every call: the App JWT is exchanged for
//! an installation token once, the build's check run is created and completed with the build's
//! conclusion, and a failing API is retried without affecting the build.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::*;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;

const REPO_ID: u64 = 5_550_001;
const INSTALLATION: i64 = 777;
const APP_ID: &str = "12345";

#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    auth: String,
    body: Value,
}

#[derive(Clone, Default)]
struct Fake {
    calls: Arc<Mutex<Vec<Call>>>,
    fail_next: Arc<AtomicUsize>,
    /// Set: every call is recorded, then never answered (a GitHub that hangs).
    stall: Arc<std::sync::atomic::AtomicBool>,
}

async fn fake_handler(State(fake): State<Fake>, req: Request) -> impl IntoResponse {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    fake.calls.lock().unwrap().push(Call {
        method: method.clone(),
        path: path.clone(),
        auth,
        body,
    });
    if fake.stall.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    if fake.fail_next.load(Ordering::SeqCst) > 0 {
        fake.fail_next.fetch_sub(1, Ordering::SeqCst);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"message": "Server Error"})),
        );
    }
    match (method.as_str(), path.as_str()) {
        ("POST", p) if p == format!("/app/installations/{INSTALLATION}/access_tokens") => (
            StatusCode::CREATED,
            Json(json!({"token": "ghs_faketoken123", "expires_at": "2099-01-01T00:00:00Z"})),
        ),
        ("POST", "/repos/octo-org/site/check-runs") => {
            (StatusCode::CREATED, Json(json!({"id": 4242})))
        }
        ("PATCH", "/repos/octo-org/site/check-runs/4242") => {
            (StatusCode::OK, Json(json!({"id": 4242})))
        }
        ("POST", "/repos/octo-org/site/issues/7/comments") => {
            (StatusCode::CREATED, Json(json!({"id": 99})))
        }
        ("PATCH", "/repos/octo-org/site/issues/comments/99") => {
            (StatusCode::OK, Json(json!({"id": 99})))
        }
        _ => (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))),
    }
}

async fn start_fake() -> (Fake, String) {
    let fake = Fake::default();
    let app = axum::Router::new()
        .fallback(fake_handler)
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, format!("http://{addr}"))
}

/// An RSA key pair made with openssl: (private PKCS#1/8 PEM, public SPKI PEM).
fn key_pair(dir: &Path) -> (String, String) {
    let key = dir.join("app.pem");
    let ok = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let public = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(public.status.success());
    (
        std::fs::read_to_string(&key).unwrap(),
        String::from_utf8(public.stdout).unwrap(),
    )
}

fn verify_jwt(jwt: &str, public_pem: &str) -> Value {
    use base64::Engine;
    use rsa::pkcs8::DecodePublicKey;
    use rsa::signature::Verifier;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let key = rsa::RsaPublicKey::from_public_key_pem(public_pem).unwrap();
    let verifier = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key);
    let signature =
        rsa::pkcs1v15::Signature::try_from(b64.decode(parts[2]).unwrap().as_slice()).unwrap();
    verifier
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .expect("the JWT is signed with the App's key");
    serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap()
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Mona")
        .env("GIT_AUTHOR_EMAIL", "mona@example.com")
        .env("GIT_COMMITTER_NAME", "Mona")
        .env("GIT_COMMITTER_EMAIL", "mona@example.com")
        .output()
        .unwrap();
    assert!(ok.status.success(), "git {args:?}");
}

async fn setup(fail_first: usize) -> (TestApp, Fake, String, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = key_pair(keys.path());
    let (fake, fake_url) = start_fake().await;
    fake.fail_next.store(fail_first, Ordering::SeqCst);
    let app = TestApp::spawn_with(|c| {
        c.scheduler.runners = 2;
        c.runner.sandbox = kiln::sandbox::SandboxMode::None;
        c.github_app = Some(kiln::github::AppConfig {
            api_url: fake_url.clone(),
            app_id: APP_ID.to_owned(),
            private_key_pem: private,
        });
        c.public_url = Some("https://kiln.example".to_owned());
    })
    .await;
    let repo = app.git_remotes().join("octo-org").join("site");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("index.js"), "x").unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "site"]);
    app.link_installation(ACCOUNT, INSTALLATION).await;
    let (conn, token) = app
        .github_repo("octo-org", "site", &REPO_ID.to_string())
        .await;
    app.trigger(
        "site",
        &conn,
        &token,
        json!({"branch_includes": ["main"], "build_command": "echo built",
        "deploy_command": ""}),
    )
    .await;
    (app, fake, public, keys)
}

async fn push(app: &TestApp, sha: &str) -> String {
    let payload = json!({"ref": "refs/heads/main", "after": sha, "deleted": false,
        "repository": {"id": REPO_ID, "name": "site", "full_name": "octo-org/site"},
        "head_commit": {"message": "site", "author": {"email": "mona@example.com"}},
        "commits": [{"added": ["index.js"], "removed": [], "modified": []}],
        "installation": {"id": INSTALLATION}});
    let body = serde_json::to_vec(&payload).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let v: Value = app
        .client
        .post(format!("{}/webhooks/github", app.base))
        .header("x-github-event", "push")
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .header("x-hub-signature-256", sig)
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    s(&v["result"]["builds"][0])
}

fn head(app: &TestApp) -> String {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(app.git_remotes().join("octo-org").join("site"))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn wait_completed(fake: &Fake) -> Vec<Call> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let calls = fake.calls.lock().unwrap().clone();
        let done = calls.iter().any(|c| c.body["status"] == "completed");
        let last_ok = fake.fail_next.load(Ordering::SeqCst) == 0;
        if done && last_ok {
            return calls;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no completed check run: {calls:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_check_run_follows_the_build_to_its_conclusion() {
    let (app, fake, public, _keys) = setup(0).await;
    let sha = head(&app);
    let build = push(&app, &sha).await;
    let calls = wait_completed(&fake).await;
    let b = app
        .ok(Method::GET, &app.acct(&format!("/builds/{build}")), None)
        .await;
    assert_eq!(b["build_outcome"], "success");

    // First the token exchange, with a valid App JWT; only once (the token is cached).
    assert_eq!(calls[0].method, "POST");
    assert_eq!(
        calls[0].path,
        format!("/app/installations/{INSTALLATION}/access_tokens")
    );
    let claims = verify_jwt(calls[0].auth.trim_start_matches("Bearer "), &public);
    assert_eq!(claims["iss"], APP_ID);
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.path.ends_with("/access_tokens"))
            .count(),
        1,
        "{calls:#?}"
    );
    // Then the check run, created once and updated to its conclusion.
    let create = &calls[1];
    assert_eq!(
        (create.method.as_str(), create.path.as_str()),
        ("POST", "/repos/octo-org/site/check-runs")
    );
    assert_eq!(create.auth, "Bearer ghs_faketoken123");
    assert_eq!(create.body["name"], "Workers Builds: site");
    assert_eq!(create.body["head_sha"], sha.as_str());
    assert_eq!(create.body["external_id"], build.as_str());
    assert_eq!(
        create.body["details_url"],
        format!("https://kiln.example/client/v4/accounts/{ACCOUNT}/builds/builds/{build}")
    );
    let mut statuses = vec![s(&create.body["status"])];
    for c in &calls[2..] {
        assert_eq!(
            (c.method.as_str(), c.path.as_str()),
            ("PATCH", "/repos/octo-org/site/check-runs/4242"),
            "unexpected call {c:#?}"
        );
        assert_eq!(c.auth, "Bearer ghs_faketoken123");
        statuses.push(s(&c.body["status"]));
    }
    // queued → in_progress → completed, some steps possibly observed together.
    let order = |s: &str| {
        ["queued", "in_progress", "completed"]
            .iter()
            .position(|x| *x == s)
            .unwrap()
    };
    assert!(
        statuses.windows(2).all(|w| order(&w[0]) <= order(&w[1])),
        "{statuses:?}"
    );
    let last = calls.last().unwrap();
    assert_eq!(last.body["status"], "completed");
    assert_eq!(last.body["conclusion"], "success");
    app.stop().await;
}

#[tokio::test]
async fn a_failing_github_api_is_retried_and_never_fails_the_build() {
    let (app, fake, _public, _keys) = setup(2).await;
    let sha = head(&app);
    let build = push(&app, &sha).await;
    let calls = wait_completed(&fake).await;
    let b = app
        .ok(Method::GET, &app.acct(&format!("/builds/{build}")), None)
        .await;
    assert_eq!(b["build_outcome"], "success");
    assert!(
        calls.len() >= 4,
        "the two failed calls were retried: {calls:#?}"
    );
    assert_eq!(calls.last().unwrap().body["conclusion"], "success");
    app.stop().await;
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(app: &TestApp, event: &str, payload: Value) -> Value {
    let body = serde_json::to_vec(&payload).unwrap();
    app.client
        .post(format!("{}/webhooks/github", app.base))
        .header("x-github-event", event)
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .header("x-hub-signature-256", sign(&body))
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_pull_request_gets_one_comment_updated_in_place() {
    let (app, fake, _public, _keys) = setup(0).await;
    // Previews: every branch but main.
    let (_, prod) = app.get(&app.acct("/workers/site/triggers")).await;
    let t = &prod["result"][0];
    app.ok(Method::POST, &app.acct("/triggers"), Some(json!({"external_script_id": "site",
        "repo_connection_uuid": t["repo_connection"]["repo_connection_uuid"], "build_token_uuid": t["build_token_uuid"],
        "trigger_name": "previews", "branch_includes": ["*"], "branch_excludes": ["main"],
        "build_command": "echo preview", "deploy_command": ""})))
        .await;
    let repo = app.git_remotes().join("octo-org").join("site");
    git(&repo, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(repo.join("page.js"), "1").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "page"]);
    let sha = head(&app);
    let pr = json!({"action": "opened", "number": 7,
        "pull_request": {"html_url": "https://github.com/octo-org/site/pull/7", "created_at": "2026-11-23T09:00:00Z",
            "title": "Page", "user": {"login": "mona"},
            "head": {"ref": "feature", "sha": sha, "repo": {"id": REPO_ID}}, "base": {"ref": "main"}},
        "repository": {"id": REPO_ID, "name": "site", "full_name": "octo-org/site"},
        "installation": {"id": INSTALLATION}});
    let v = deliver(&app, "pull_request", pr).await;
    assert_eq!(v["result"]["builds"].as_array().unwrap().len(), 1, "{v}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // The first build's comment.
    loop {
        let calls = fake.calls.lock().unwrap().clone();
        let comments: Vec<Call> = calls
            .into_iter()
            .filter(|c| c.path.contains("/issues/"))
            .collect();
        if comments
            .last()
            .is_some_and(|c| s(&c.body["body"]).contains("✅ Success"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no final comment: {comments:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new commit on the branch: its build updates the same comment.
    std::fs::write(repo.join("page.js"), "2").unwrap();
    git(&repo, &["commit", "-q", "-am", "page v2"]);
    let sha2 = head(&app);
    let v = deliver(
        &app,
        "push",
        json!({"ref": "refs/heads/feature", "after": sha2, "repository": {"id": REPO_ID},
            "head_commit": {"message": "page v2", "author": {"email": "mona@example.com"}},
            "commits": [{"added": [], "removed": [], "modified": ["page.js"]}],
            "installation": {"id": INSTALLATION}}),
    )
    .await;
    assert_eq!(v["result"]["builds"].as_array().unwrap().len(), 1, "{v}");
    let comments = loop {
        let calls = fake.calls.lock().unwrap().clone();
        let comments: Vec<Call> = calls
            .into_iter()
            .filter(|c| c.path.contains("/issues/"))
            .collect();
        let row = format!("| site | ✅ Success | `{}` |", &sha2[..7]);
        if comments
            .last()
            .is_some_and(|c| s(&c.body["body"]).contains(&row))
        {
            break comments;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no updated comment: {comments:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sha = sha2;
    // Created once, then edited in place.
    assert!(comments.len() >= 2, "{comments:#?}");
    assert_eq!(
        (comments[0].method.as_str(), comments[0].path.as_str()),
        ("POST", "/repos/octo-org/site/issues/7/comments")
    );
    for c in &comments[1..] {
        assert_eq!(
            (c.method.as_str(), c.path.as_str()),
            ("PATCH", "/repos/octo-org/site/issues/comments/99"),
            "{c:#?}"
        );
    }
    let body = s(&comments.last().unwrap().body["body"]);
    assert!(
        body.contains(&format!("| site | ✅ Success | `{}` |", &sha[..7])),
        "{body}"
    );
    // Every call is one the fake expects.
    for c in fake.calls.lock().unwrap().iter() {
        assert!(
            c.path.ends_with("/access_tokens")
                || c.path.contains("/check-runs")
                || c.path.contains("/issues/"),
            "unexpected call {c:#?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn private_repositories_are_cloned_with_the_installation_token() {
    let keys = tempfile::tempdir().unwrap();
    let (private, _public) = key_pair(keys.path());
    let (fake, fake_url) = start_fake().await;
    // The fake also stands in for GitHub's git server: it records the clone's headers, then answers 404.
    let app = TestApp::spawn_with(|c| {
        c.scheduler.runners = 1;
        c.runner.sandbox = kiln::sandbox::SandboxMode::None;
        c.git_url_template = format!("{fake_url}/git/{{owner}}/{{repo}}.git");
        c.github_app = Some(kiln::github::AppConfig {
            api_url: fake_url.clone(),
            app_id: APP_ID.to_owned(),
            private_key_pem: private,
        });
    })
    .await;
    app.link_installation(ACCOUNT, INSTALLATION).await;
    let (conn, token) = app
        .github_repo("octo-org", "site", &REPO_ID.to_string())
        .await;
    app.trigger(
        "site",
        &conn,
        &token,
        json!({"branch_includes": ["main"], "build_command": "echo built",
        "deploy_command": ""}),
    )
    .await;
    let build = push(&app, &"9".repeat(40)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let b = app
            .ok(Method::GET, &app.acct(&format!("/builds/{build}")), None)
            .await;
        if b["status"] == "stopped" {
            assert_eq!(b["build_outcome"], "fail", "the fake serves no repository");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("x-access-token:ghs_faketoken123")
    );
    let calls = fake.calls.lock().unwrap().clone();
    let clone = calls
        .iter()
        .find(|c| c.path.starts_with("/git/octo-org/site.git/"))
        .unwrap_or_else(|| panic!("git never asked the server: {calls:#?}"));
    assert_eq!(clone.auth, expected);
    // The token is in no log line of the build.
    let logs = app
        .ok(
            Method::GET,
            &app.acct(&format!("/builds/{build}/logs")),
            None,
        )
        .await;
    assert!(!logs.to_string().contains("ghs_faketoken123"), "{logs}");
    app.stop().await;
}

#[tokio::test]
async fn a_build_stopped_by_a_shutdown_completes_its_check_run_before_the_server_exits() {
    let (app, fake, _public, _keys) = setup(0).await;
    // A build that runs until the server stops.
    let (_, triggers) = app.get(&app.acct("/workers/site/triggers")).await;
    let trigger = s(&triggers["result"][0]["trigger_uuid"]);
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{trigger}")),
        Some(json!({"build_command": "echo started; sleep 600"})),
    )
    .await;
    let build = push(&app, &head(&app)).await;
    // The check run goes in progress when the build initializes; wait until its command runs too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let calls = fake.calls.lock().unwrap().clone();
        let running = app
            .ok(Method::GET, &app.acct(&format!("/builds/{build}")), None)
            .await;
        if calls.iter().any(|c| c.body["status"] == "in_progress") && running["status"] == "running"
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the build never ran with its check run in progress: {running} {calls:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // What `kiln serve` does on SIGTERM: the build ends `terminated`, and its check run says so before
    // the server is gone (not when a node starts again).
    app.stop().await;
    let calls = fake.calls.lock().unwrap().clone();
    let last = calls
        .iter()
        .rev()
        .find(|c| c.path.contains("/check-runs"))
        .expect("check run calls");
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("PATCH", "/repos/octo-org/site/check-runs/4242"),
        "{calls:#?}"
    );
    assert_eq!(last.body["status"], "completed", "{calls:#?}");
    // `terminated` is reported as GitHub's `timed_out` (a timeout or a lost or stopped runner).
    assert_eq!(last.body["conclusion"], "timed_out", "{calls:#?}");
}

#[tokio::test]
async fn the_shutdown_waits_for_a_hanging_github_only_for_a_bounded_time() {
    let (app, fake, _public, _keys) = setup(0).await;
    let (_, triggers) = app.get(&app.acct("/workers/site/triggers")).await;
    let trigger = s(&triggers["result"][0]["trigger_uuid"]);
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{trigger}")),
        Some(json!({"build_command": "sleep 600"})),
    )
    .await;
    push(&app, &head(&app)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !fake
        .calls
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.body["status"] == "in_progress")
    {
        assert!(tokio::time::Instant::now() < deadline, "never in progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fake.stall.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    app.stop().await;
    let took = started.elapsed();
    // The flush gives up after FLUSH_GRACE (the build's own stop and the HTTP grace come before it).
    assert!(
        took < kiln::github::reporter::FLUSH_GRACE + Duration::from_secs(45),
        "stopping took {took:?}"
    );
    assert!(
        fake.calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.body["status"] == "completed"),
        "the completion was at least attempted"
    );
}
