//! Reporting to GitHub against a fake GitHub API that records every call: the App JWT is exchanged for
//! an installation token once, the build's check run is created and completed with the build's
//! conclusion, and a failing API is retried without affecting the build.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::*;
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

/// A check run's `status` and `conclusion`.
type RunState = (String, Option<String>);

/// A check run as the fake GitHub holds it.
#[derive(Debug, Clone)]
struct CheckRun {
    id: i64,
    name: String,
    head_sha: String,
    external_id: String,
    /// Every state given to it, in order: the creation's, then each update's (`status`,
    /// `conclusion`).
    states: Vec<RunState>,
}

/// A pull request comment as the fake GitHub holds it.
#[derive(Debug, Clone)]
struct Comment {
    id: i64,
    number: i64,
    /// Every text given to it, in order.
    bodies: Vec<String>,
}

#[derive(Debug, Default)]
struct GithubState {
    check_runs: Vec<CheckRun>,
    comments: Vec<Comment>,
}

#[derive(Clone, Default)]
struct Fake {
    calls: Arc<Mutex<Vec<Call>>>,
    /// What the calls that succeeded made.
    state: Arc<Mutex<GithubState>>,
    fail_next: Arc<AtomicUsize>,
    /// Set: every call is recorded, then never answered (a GitHub that hangs).
    stall: Arc<AtomicBool>,
    /// Set: a check run is created, then the call is never answered (its answer is lost).
    stall_after_create: Arc<AtomicBool>,
}

/// The fields of a state in a check run body.
fn check_run_state(body: &Value) -> RunState {
    (
        s(&body["status"]),
        body["conclusion"].as_str().map(str::to_owned),
    )
}

async fn fake_handler(State(fake): State<Fake>, req: Request) -> axum::response::Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
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
        body: body.clone(),
    });
    if fake.stall.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    if fake.fail_next.load(Ordering::SeqCst) > 0 {
        fake.fail_next.fetch_sub(1, Ordering::SeqCst);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"message": "Server Error"})),
        )
            .into_response();
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let not_found =
        || (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["app", "installations", id, "access_tokens"])
            if *id == INSTALLATION.to_string() =>
        {
            (
                StatusCode::CREATED,
                Json(json!({"token": "ghs_faketoken123", "expires_at": "2099-01-01T00:00:00Z"})),
            )
                .into_response()
        }
        ("POST", ["repos", "octo-org", "site", "check-runs"]) => {
            let id = {
                let mut state = fake.state.lock().unwrap();
                let id = 4242 + state.check_runs.len() as i64;
                state.check_runs.push(CheckRun {
                    id,
                    name: s(&body["name"]),
                    head_sha: s(&body["head_sha"]),
                    external_id: s(&body["external_id"]),
                    states: vec![check_run_state(&body)],
                });
                id
            };
            if fake.stall_after_create.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            (StatusCode::CREATED, Json(json!({"id": id}))).into_response()
        }
        ("PATCH", ["repos", "octo-org", "site", "check-runs", id]) => {
            let mut state = fake.state.lock().unwrap();
            match state
                .check_runs
                .iter_mut()
                .find(|c| c.id.to_string() == *id)
            {
                Some(run) => {
                    run.states.push(check_run_state(&body));
                    (StatusCode::OK, Json(json!({"id": run.id}))).into_response()
                }
                None => not_found(),
            }
        }
        ("GET", ["repos", "octo-org", "site", "commits", sha, "check-runs"]) => {
            let name = query
                .iter()
                .find(|(k, _)| k == "check_name")
                .map(|(_, v)| v.clone());
            let state = fake.state.lock().unwrap();
            let runs: Vec<Value> = state
                .check_runs
                .iter()
                .filter(|c| c.head_sha == *sha && name.as_ref().is_none_or(|n| *n == c.name))
                .map(|c| {
                    let (status, conclusion) = c.states.last().cloned().unwrap_or_default();
                    json!({"id": c.id, "name": c.name, "head_sha": c.head_sha, "external_id": c.external_id,
                        "status": status, "conclusion": conclusion})
                })
                .collect();
            (
                StatusCode::OK,
                Json(json!({"total_count": runs.len(), "check_runs": runs})),
            )
                .into_response()
        }
        ("POST", ["repos", "octo-org", "site", "issues", number, "comments"]) => {
            let Ok(number) = number.parse::<i64>() else {
                return not_found();
            };
            let mut state = fake.state.lock().unwrap();
            let id = 99 + state.comments.len() as i64;
            state.comments.push(Comment {
                id,
                number,
                bodies: vec![s(&body["body"])],
            });
            (StatusCode::CREATED, Json(json!({"id": id}))).into_response()
        }
        ("GET", ["repos", "octo-org", "site", "issues", number, "comments"]) => {
            let state = fake.state.lock().unwrap();
            let listed: Vec<Value> = state
                .comments
                .iter()
                .filter(|c| c.number.to_string() == *number)
                .map(|c| json!({"id": c.id, "body": c.bodies.last()}))
                .collect();
            (StatusCode::OK, Json(json!(listed))).into_response()
        }
        ("PATCH", ["repos", "octo-org", "site", "issues", "comments", id]) => {
            let mut state = fake.state.lock().unwrap();
            match state.comments.iter_mut().find(|c| c.id.to_string() == *id) {
                Some(comment) => {
                    comment.bodies.push(s(&body["body"]));
                    (StatusCode::OK, Json(json!({"id": comment.id}))).into_response()
                }
                None => not_found(),
            }
        }
        _ => not_found(),
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
    init_repo(&repo, &[("index.js", "x")], "site");
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
    let builds = deliver_accepted(app, "push", &payload).await;
    builds.first().cloned().expect("a build queued")
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

async fn deliver(app: &TestApp, event: &str, payload: Value) -> Value {
    deliver_to(&app.base, event, payload).await
}

/// Delivers a signed GitHub webhook to the server at `root` (`http://host:port`).
async fn deliver_to(root: &str, event: &str, payload: Value) -> Value {
    deliver_webhook(root, event, &payload).await.1
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
    let build = push(&app, &head(&app)).await;
    // Every change so far (queued, initializing, running) is on GitHub: the next update is the
    // completion, which the shutdown brings about.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while runs_of(&fake, &build)
        .first()
        .is_none_or(|run| run.states.len() < 3)
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

// ---- The reporter as a consumer of build events (issue 9) ----

/// The check run state each of `build`'s events calls for, in order (nothing when the build never
/// had a commit to report on).
async fn expected_states(app: &TestApp, build: &str) -> Vec<RunState> {
    let b = app
        .ok(Method::GET, &app.acct(&format!("/builds/{build}")), None)
        .await;
    // (An unknown commit reads "", as Cloudflare's clients expect.)
    if b["build_trigger_metadata"]["commit_hash"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        return Vec::new();
    }
    states_for(&events_of(app.store(), build).await)
}

/// The check run state each event calls for.
fn states_for(events: &[kiln::store::BuildEvent]) -> Vec<RunState> {
    use kiln::domain::{BuildOutcome, BuildStatus};
    events
        .iter()
        .map(|e| match e.status {
            BuildStatus::Queued => ("queued".to_owned(), None),
            BuildStatus::Initializing | BuildStatus::Running => ("in_progress".to_owned(), None),
            BuildStatus::Stopped => (
                "completed".to_owned(),
                Some(
                    match e.outcome {
                        Some(BuildOutcome::Success) => "success",
                        Some(BuildOutcome::Cancelled) => "cancelled",
                        Some(BuildOutcome::Skipped) => "skipped",
                        Some(BuildOutcome::Terminated) => "timed_out",
                        Some(BuildOutcome::Fail) | None => "failure",
                    }
                    .to_owned(),
                ),
            ),
        })
        .collect()
}

/// The outbox events of `build`, oldest first.
async fn events_of(store: &kiln::store::Store, build: &str) -> Vec<kiln::store::BuildEvent> {
    store
        .build_events_after(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.build.to_string() == build)
        .collect()
}

/// The check runs the fake holds for `build`.
fn runs_of(fake: &Fake, build: &str) -> Vec<CheckRun> {
    fake.state
        .lock()
        .unwrap()
        .check_runs
        .iter()
        .filter(|c| c.external_id == build)
        .cloned()
        .collect()
}

/// Waits until every build in `builds` has stopped and has exactly one check run whose states are
/// those its events call for, in order; then until the report queue is empty, and checks again
/// (nothing more can be posted then).
async fn wait_reported_exactly(app: &TestApp, fake: &Fake, builds: &[String]) {
    for b in builds {
        wait_stopped(app, b).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let check = |fake: &Fake, expected: &[(String, Vec<RunState>)]| {
        expected.iter().all(|(b, want)| {
            let runs = runs_of(fake, b);
            match runs.as_slice() {
                [] => want.is_empty(),
                [run] => run.states == *want,
                _ => false,
            }
        })
    };
    let mut expected = Vec::new();
    for b in builds {
        expected.push((b.clone(), expected_states(app, b).await));
    }
    while !check(fake, &expected) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reported as the events say: {:#?}\ncheck runs: {:#?}",
            expected,
            fake.state.lock().unwrap().check_runs
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while pending_reports(app).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reports still pending"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (b, want) in &expected {
        let runs = runs_of(fake, b);
        match runs.as_slice() {
            [] => assert!(want.is_empty(), "build {b} was never reported"),
            [run] => assert_eq!(run.states, *want, "build {b}"),
            _ => panic!("build {b} has {} check runs: {runs:#?}", runs.len()),
        }
    }
    let state = fake.state.lock().unwrap();
    for run in &state.check_runs {
        assert!(
            builds.contains(&run.external_id),
            "a check run for no build of the test: {run:#?}"
        );
    }
}

/// Report items not yet done (read from the database itself).
async fn pending_reports(app: &TestApp) -> i64 {
    pending_reports_at(&database_url(
        &app.config.store.database_url,
        &app.data_dir(),
    ))
    .await
}

/// The database of a node: `url`, else SQLite in `data_dir`.
fn database_url(url: &Option<String>, data_dir: &Path) -> String {
    url.clone()
        .unwrap_or_else(|| kiln::store::Store::sqlite_url(data_dir))
}

/// Report items not yet done in the database at `url`.
async fn pending_reports_at(url: &str) -> i64 {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM github_report_items")
        .fetch_one(&pool)
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    pool.close().await;
    n
}

/// The status cell of each text of a comment (one Worker per comment here).
fn comment_statuses(bodies: &[String]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| {
            let row = b
                .lines()
                .find(|l| l.starts_with("| site |"))
                .unwrap_or_else(|| panic!("no row for site: {b}"));
            row.split('|').nth(2).unwrap_or_default().trim().to_owned()
        })
        .collect()
}

/// The comment label each of the pull request build's events calls for.
async fn expected_comment_statuses(app: &TestApp, build: &str) -> Vec<String> {
    use kiln::domain::{BuildOutcome, BuildStatus};
    events_of(app.store(), build)
        .await
        .into_iter()
        .map(|e| {
            match (e.status, e.outcome) {
                (BuildStatus::Queued, _) => "⏳ Queued",
                (BuildStatus::Initializing | BuildStatus::Running, _) => "🔄 Building",
                (BuildStatus::Stopped, Some(BuildOutcome::Success)) => "✅ Success",
                (BuildStatus::Stopped, Some(BuildOutcome::Cancelled)) => "⏹️ Cancelled",
                (BuildStatus::Stopped, Some(BuildOutcome::Skipped)) => "⏭️ Skipped",
                (BuildStatus::Stopped, Some(BuildOutcome::Terminated)) => "⌛ Timed out",
                (BuildStatus::Stopped, _) => "❌ Failed",
            }
            .to_owned()
        })
        .collect()
}

/// A server configured like [`setup`]'s, for the fake GitHub at `fake_url`.
fn node_config(c: &mut kiln::startup::ServeConfig, fake_url: &str, private: &str) {
    c.scheduler.runners = 2;
    c.scheduler.default_concurrency = 8;
    c.runner.sandbox = kiln::sandbox::SandboxMode::None;
    c.github_app = Some(kiln::github::AppConfig {
        api_url: fake_url.to_owned(),
        app_id: APP_ID.to_owned(),
        private_key_pem: private.to_owned(),
    });
    c.public_url = Some("https://kiln.example".to_owned());
}

/// Another node on `app`'s database (its own data dir, the same secret key).
async fn second_node(app: &TestApp) -> (kiln::startup::Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let mut config = app.config.clone();
    config.store.data_dir = dir.path().join("data");
    config.store.secret_key = Some(
        std::fs::read_to_string(app.data_dir().join("secret.key"))
            .unwrap()
            .trim()
            .to_owned(),
    );
    let server = kiln::startup::Server::start(&config)
        .await
        .expect("start the second node");
    (server, dir)
}

/// A push of `sha` to main; returns the builds it queued.
async fn push_all(app: &TestApp, sha: &str) -> Vec<String> {
    let payload = json!({"ref": "refs/heads/main", "after": sha, "deleted": false,
        "repository": {"id": REPO_ID, "name": "site", "full_name": "octo-org/site"},
        "head_commit": {"message": "site", "author": {"email": "mona@example.com"}},
        "commits": [{"added": ["index.js"], "removed": [], "modified": []}],
        "installation": {"id": INSTALLATION}});
    let v = deliver(app, "push", payload).await;
    v["result"]["builds"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(s)
        .collect()
}

/// A pull request (number 7) from branch `feature`, one new commit on it; returns its builds.
async fn open_pull_request(app: &TestApp) -> Vec<String> {
    let repo = app.git_remotes().join("octo-org").join("site");
    git(&repo, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(repo.join("page.js"), "1").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "page"]);
    let sha = head(app);
    git(&repo, &["checkout", "-q", "main"]);
    let pr = json!({"action": "opened", "number": 7,
        "pull_request": {"html_url": "https://github.com/octo-org/site/pull/7", "created_at": "2026-11-23T09:00:00Z",
            "title": "Page", "user": {"login": "mona"},
            "head": {"ref": "feature", "sha": sha, "repo": {"id": REPO_ID}}, "base": {"ref": "main"}},
        "repository": {"id": REPO_ID, "name": "site", "full_name": "octo-org/site"},
        "installation": {"id": INSTALLATION}});
    let v = deliver(app, "pull_request", pr).await;
    v["result"]["builds"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(s)
        .collect()
}

/// Adds a previews trigger (every branch but main) for Worker `site`.
async fn previews(app: &TestApp) {
    let (_, prod) = app.get(&app.acct("/workers/site/triggers")).await;
    let t = &prod["result"][0];
    app.ok(Method::POST, &app.acct("/triggers"), Some(json!({"external_script_id": "site",
        "repo_connection_uuid": t["repo_connection"]["repo_connection_uuid"], "build_token_uuid": t["build_token_uuid"],
        "trigger_name": "previews", "branch_includes": ["*"], "branch_excludes": ["main"],
        "build_command": "echo preview", "deploy_command": ""})))
        .await;
}

/// Checks the pull request's comment: created once, then one update per event of its build, each
/// showing the build as that event left it.
async fn assert_comment_follows(app: &TestApp, fake: &Fake, pr_build: &str) {
    let want = expected_comment_statuses(app, pr_build).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let comments = fake.state.lock().unwrap().comments.clone();
        if let [comment] = comments.as_slice()
            && comment_statuses(&comment.bodies) == want
        {
            assert_eq!(comment.number, 7);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the comment does not follow the build's events {want:?}: {comments:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The acceptance test of issue 9: builds of several Workers (pushed commits, manual builds whose
/// commit is only known once they run, a pull request) run on two nodes sharing one PostgreSQL
/// database (one node on SQLite), both reporting: each build gets one check run, updated once per
/// status change in the order of the changes, nothing twice; the pull request gets one comment,
/// updated once per change of its build.
#[tokio::test]
async fn every_change_is_reported_once_and_in_order_by_all_nodes_together() {
    let keys = tempfile::tempdir().unwrap();
    let (private, _public) = key_pair(keys.path());
    let (fake, fake_url) = start_fake().await;
    let app = TestApp::spawn_with(|c| node_config(c, &fake_url, &private)).await;
    let second = match backend() {
        Backend::Postgres => Some(second_node(&app).await),
        Backend::Sqlite => None,
    };
    let repo = app.git_remotes().join("octo-org").join("site");
    init_repo(&repo, &[("index.js", "x")], "site");
    app.link_installation(ACCOUNT, INSTALLATION).await;
    let (conn, token) = app
        .github_repo("octo-org", "site", &REPO_ID.to_string())
        .await;
    let mut triggers = Vec::new();
    for worker in ["site", "docs", "blog"] {
        triggers.push(
            app.trigger(
                worker,
                &conn,
                &token,
                json!({"branch_includes": ["main"], "build_command": "echo built",
                "deploy_command": ""}),
            )
            .await,
        );
    }
    previews(&app).await;

    let mut builds = push_all(&app, &head(&app)).await;
    assert_eq!(builds.len(), 3, "{builds:?}");
    let pr = open_pull_request(&app).await;
    assert_eq!(pr.len(), 1, "{pr:?}");
    builds.extend(pr.iter().cloned());
    std::fs::write(repo.join("index.js"), "y").unwrap();
    git(&repo, &["commit", "-q", "-am", "second"]);
    builds.extend(push_all(&app, &head(&app)).await);
    // Manual builds of the branch (the newest: they supersede what is still queued, and run):
    // their commit is resolved when they run, and their check runs wait for it.
    let mut manual = Vec::new();
    for t in &triggers {
        let b = app
            .ok(
                Method::POST,
                &app.acct(&format!("/triggers/{t}/builds")),
                Some(json!({"branch": "main"})),
            )
            .await;
        manual.push(s(&b["build_uuid"]));
    }
    builds.extend(manual.iter().cloned());

    wait_reported_exactly(&app, &fake, &builds).await;
    assert_comment_follows(&app, &fake, &pr[0]).await;
    // The manual builds ran and were reported once their commit was known (the test is not
    // vacuous).
    for b in &manual {
        assert_eq!(wait_stopped(&app, b).await["build_outcome"], "success");
        assert_eq!(runs_of(&fake, b).len(), 1, "manual build {b}");
    }
    if let Some((server, _dir)) = second {
        server.stop().await.unwrap();
    }
    app.stop().await;
}

/// A GitHub that fails the first calls, then answers: every check run and comment update is made
/// once (the failed calls changed nothing), in order, after retries with back-off.
#[tokio::test]
async fn a_github_failing_a_few_times_gets_each_update_once_and_in_order() {
    let (app, fake, _public, _keys) = setup(0).await;
    previews(&app).await;
    fake.fail_next.store(5, Ordering::SeqCst);
    let mut builds = vec![push(&app, &head(&app)).await];
    let pr = open_pull_request(&app).await;
    assert_eq!(pr.len(), 1, "{pr:?}");
    builds.extend(pr.iter().cloned());
    wait_reported_exactly(&app, &fake, &builds).await;
    assert_comment_follows(&app, &fake, &pr[0]).await;
    assert_eq!(fake.fail_next.load(Ordering::SeqCst), 0);
    let calls = fake.calls.lock().unwrap().len();
    let made = {
        let state = fake.state.lock().unwrap();
        state
            .check_runs
            .iter()
            .map(|c| c.states.len())
            .sum::<usize>()
            + state.comments.iter().map(|c| c.bodies.len()).sum::<usize>()
    };
    assert!(
        calls >= made + 5,
        "the failed calls were made: {calls} for {made}"
    );
    app.stop().await;
}

/// A node killed while it posts a check run's creation (GitHub made the check run, its answer never
/// came back): once the dead node's claim lapses, the restarted node makes the update again, finding
/// the check run instead of creating a second one, then every later update, in order. Both backends,
/// with the real binary and `kill -9`.
#[tokio::test]
async fn a_node_killed_while_posting_loses_no_update_and_makes_no_second_check_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let _ = key_pair(dir.path());
    let (fake, fake_url) = start_fake().await;
    fake.stall_after_create.store(true, Ordering::SeqCst);
    let remotes = dir.path().join("remotes");
    let repo = remotes.join("octo-org").join("site");
    init_repo(&repo, &[("index.js", "x")], "site");
    let sha = String::from_utf8(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(&repo)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let data = dir.path().join("data");
    let mut options = NodeOptions::new("none");
    options.database_url = fresh_database_url().await;
    options.extra = [
        "--github-app-id",
        APP_ID,
        "--github-app-private-key-path",
        &dir.path().join("app.pem").display().to_string(),
        "--github-api-url",
        &fake_url,
        "--github-webhook-secret",
        WEBHOOK_SECRET,
        "--public-url",
        "https://kiln.example",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut node = start_kiln(&data, &remotes, &options).await;
    node.trigger_with(
        "site",
        &REPO_ID.to_string(),
        json!({"branch_includes": ["main"], "build_command": "echo built"}),
    )
    .await;
    let url = database_url(&options.database_url, &data);
    let store =
        kiln::store::Store::connect(&url, kiln::crypto::SecretBox::load(None, &data).unwrap())
            .await
            .unwrap();
    store
        .link_installation(
            INSTALLATION,
            &kiln::domain::AccountId::parse(ACCOUNT).unwrap(),
        )
        .await
        .unwrap();
    let root = node.base.trim_end_matches("/client/v4").to_owned();
    let payload = json!({"ref": "refs/heads/main", "after": sha, "deleted": false,
        "repository": {"id": REPO_ID, "name": "site", "full_name": "octo-org/site"},
        "head_commit": {"message": "site", "author": {"email": "mona@example.com"}},
        "commits": [{"added": ["index.js"], "removed": [], "modified": []}],
        "installation": {"id": INSTALLATION}});
    let v = deliver_to(&root, "push", payload).await;
    let build = s(&v["result"]["builds"][0]);

    // GitHub made the check run; the node never hears so, and dies.
    let deadline = tokio::time::Instant::now() + NODE_DEADLINE;
    while runs_of(&fake, &build).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no check run created"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.child.kill().await.unwrap();
    fake.stall_after_create.store(false, Ordering::SeqCst);
    let node = start_kiln(&data, &remotes, &options).await;
    node.wait(&build, "stopped", |b, _| b["status"] == "stopped")
        .await;

    let want = states_for(&events_of(&store, &build).await);
    assert!(want.len() >= 2, "{want:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let runs = runs_of(&fake, &build);
        if runs.len() == 1 && runs[0].states == want && pending_reports_at(&url).await == 0 {
            break;
        }
        assert!(
            runs.len() <= 1 && tokio::time::Instant::now() < deadline,
            "want {want:?}: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runs = runs_of(&fake, &build);
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].states, want);
    let calls = fake.calls.lock().unwrap().clone();
    let creations = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/check-runs"))
        .count();
    assert_eq!(creations, 1, "{calls:#?}");
    assert!(
        calls.iter().any(|c| c.method == "GET"
            && c.path == format!("/repos/octo-org/site/commits/{sha}/check-runs")),
        "the restarted node looked for the check run: {calls:#?}"
    );
    store.close().await;
    drop(node);
}

/// The claims themselves, without GitHub: report items derived from many builds' events, ingested
/// and claimed by several claimers on two stores (two nodes, as far as the database can tell) at
/// once. Each event becomes its item once, each item is claimed by one claimer, and the items of one
/// build are claimed one at a time, in event order.
#[tokio::test]
async fn report_items_are_made_once_and_claimed_once_in_order_by_racing_nodes() {
    use kiln::store::{ReportKind, Reported, Store};
    use std::collections::{HashMap, HashSet};
    let app = TestApp::spawn().await;
    app.link_installation(ACCOUNT, INSTALLATION).await;
    let (conn, token) = app
        .github_repo("octo-org", "site", &REPO_ID.to_string())
        .await;
    for worker in ["site", "docs", "blog"] {
        app.trigger(
            worker,
            &conn,
            &token,
            json!({"branch_includes": ["main"], "deploy_command": ""}),
        )
        .await;
    }
    // Without runners, each push's builds stay queued until the next push supersedes them (an
    // all-zero commit would be a branch deletion).
    let mut builds = Vec::new();
    for i in 0..8 {
        builds.extend(push_all(&app, &format!("{:x}", i + 1).repeat(40)).await);
    }
    assert_eq!(builds.len(), 24);
    let url = database_url(&app.config.store.database_url, &app.data_dir());
    let second = Store::connect(
        &url,
        kiln::crypto::SecretBox::load(None, &app.data_dir()).unwrap(),
    )
    .await
    .unwrap();
    let stores = [app.store().clone(), second.clone()];
    let mut ingest = tokio::task::JoinSet::new();
    for store in &stores {
        for _ in 0..3 {
            let store = store.clone();
            ingest.spawn(async move {
                // Small batches: the claimers race for the cursor many times.
                while store.ingest_report_events(3).await.unwrap() > 0 {}
            });
        }
    }
    while let Some(done) = ingest.join_next().await {
        done.unwrap();
    }
    let mut events = 0;
    for b in &builds {
        events += events_of(app.store(), b).await.len();
    }
    assert_eq!(pending_reports_at(&url).await as usize, events);

    let in_flight = Arc::new(Mutex::new(HashSet::new()));
    let done: Arc<Mutex<HashMap<String, Vec<i64>>>> = Arc::default();
    let mut claimers = tokio::task::JoinSet::new();
    for (n, store) in stores.iter().enumerate() {
        for c in 0..4 {
            let (store, in_flight, done) = (store.clone(), in_flight.clone(), done.clone());
            claimers.spawn(async move {
                let owner = format!("node-{n}/claimer-{c}");
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                let lease = |secs: i64| {
                    kiln::domain::Timestamp::from_millis(
                        kiln::domain::Timestamp::now().millis() + secs * 1000,
                    )
                };
                loop {
                    assert!(tokio::time::Instant::now() < deadline, "claims stalled");
                    let claims = store
                        .claim_reports(&owner, lease(60), lease(0), 2, &HashSet::new())
                        .await
                        .unwrap();
                    if claims.is_empty() {
                        if done.lock().unwrap().values().map(Vec::len).sum::<usize>() == events {
                            return;
                        }
                        tokio::task::yield_now().await;
                        continue;
                    }
                    for claim in &claims {
                        assert_eq!(claim.kind, ReportKind::CheckRun);
                        assert_eq!(claim.attempts, 1, "{claim:?}");
                        let build = claim.build.to_string();
                        assert!(
                            in_flight.lock().unwrap().insert(build.clone()),
                            "two items of build {build} claimed at once"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    for claim in &claims {
                        let build = claim.build.to_string();
                        {
                            let mut done = done.lock().unwrap();
                            let seqs = done.entry(build.clone()).or_default();
                            assert!(
                                seqs.last().is_none_or(|last| *last < claim.seq),
                                "build {build}: {} after {seqs:?}",
                                claim.seq
                            );
                            seqs.push(claim.seq);
                            in_flight.lock().unwrap().remove(&build);
                        }
                        assert!(
                            store
                                .report_done(claim, &owner, &Reported::Nothing)
                                .await
                                .unwrap()
                        );
                    }
                }
            });
        }
    }
    while let Some(claimer) = claimers.join_next().await {
        claimer.unwrap();
    }
    assert_eq!(pending_reports_at(&url).await, 0);
    let done = done.lock().unwrap().clone();
    for b in &builds {
        let want: Vec<i64> = events_of(app.store(), b)
            .await
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(done.get(b).cloned().unwrap_or_default(), want, "build {b}");
    }
    second.close().await;
    app.stop().await;
}
