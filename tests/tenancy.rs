//! Tenant isolation on GitHub, against a fake GitHub that serves its repositories over git's smart
//! HTTP (`git http-backend`) and refuses private ones to credentials that do not cover them, as GitHub
//! does, and records every call.
//!
//! * A token scoped to account B connects account A's private repository (same `repo_id`, or another
//!   one with A's owner and name): B's manual and deploy-hook builds fail at their clone without any
//!   token being made or any git request, A's pushes and pull requests build only A's triggers, and
//!   nothing of B's is reported on A's repository. Unlinking A stops A's builds too.
//! * Without a GitHub App, deliveries build only the triggers of the accounts linked to the
//!   installation they name, and none without one.
//! * Mirrors are shared by repository: a mirror (or a submodule's mirror) that one installation's
//!   token filled is handed to other credentials only after the remote accepted them.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use common::*;
use kiln::domain::Permission;
use kiln::git::{GitCache, GitError};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// Account A's installation: it covers `octo-org/site`.
const A_INSTALLATION: i64 = 7001;
/// Account B's installation: it covers `b-org/tools`.
const B_INSTALLATION: i64 = 8002;
const SITE_REPO_ID: u64 = 5_550_001;
const TOOLS_REPO_ID: u64 = 5_550_002;

/// The token the fake issues for an installation.
fn installation_token(installation: i64) -> String {
    format!("ghs_fake_installation_{installation}")
}

#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    auth: String,
    body: Value,
}

/// A repository the fake serves.
#[derive(Debug, Clone, Copy)]
struct Policy {
    /// The App installation that covers it (its token may read it).
    installation: Option<i64>,
    /// Whether reads need that token.
    private: bool,
}

/// The fake GitHub: App API, check runs and comments, and git over HTTP under `/git/<owner>/<repo>`.
#[derive(Clone)]
struct FakeGithub {
    /// `<root>/<owner>/<repo>`: the repositories served (work trees).
    root: PathBuf,
    repos: Arc<Mutex<HashMap<String, Policy>>>,
    calls: Arc<Mutex<Vec<Call>>>,
    /// Git requests wait for this lock: a test holds it to keep fetches in flight.
    gate: Arc<tokio::sync::Mutex<()>>,
    url: String,
}

impl FakeGithub {
    async fn start(root: &Path) -> FakeGithub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let fake = FakeGithub {
            root: root.to_path_buf(),
            repos: Arc::default(),
            calls: Arc::default(),
            gate: Arc::default(),
            url: format!("http://{}", listener.local_addr().expect("addr")),
        };
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        fake
    }

    /// The URL template Kiln clones through.
    fn template(&self) -> String {
        format!("{}/git/{{owner}}/{{repo}}", self.url)
    }

    /// Creates `owner/repo` with one commit on `main`; returns its directory and the commit.
    fn repo(&self, owner: &str, repo: &str, policy: Policy) -> (PathBuf, String) {
        let dir = self.root.join(owner).join(repo);
        std::fs::create_dir_all(&dir).expect("mkdir");
        git(&dir, &["init", "-q", "-b", "main"]);
        std::fs::write(dir.join("index.js"), format!("// {owner}/{repo}\n")).expect("write");
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-q", "-m", "first"]);
        self.repos
            .lock()
            .unwrap()
            .insert(format!("{owner}/{repo}"), policy);
        let sha = head(&dir);
        (dir, sha)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The git requests made so far, with the Authorization header they carried.
    fn git_calls(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.path.starts_with("/git/"))
            .collect()
    }
}

async fn handle(
    State(fake): State<FakeGithub>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    fake.calls.lock().unwrap().push(Call {
        method: method.to_string(),
        path: path.clone(),
        auth: auth.clone(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    if let Some(rest) = path.strip_prefix("/git") {
        return serve_git(
            &fake,
            &method,
            rest,
            uri.query().unwrap_or(""),
            &headers,
            &auth,
            body,
        )
        .await;
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let json = |status: StatusCode, v: Value| (status, axum::Json(v)).into_response();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["app", "installations", id, "access_tokens"]) => match id.parse::<i64>() {
            Ok(n) => json(
                StatusCode::CREATED,
                json!({"token": installation_token(n), "expires_at": "2099-01-01T00:00:00Z"}),
            ),
            Err(_) => json(StatusCode::NOT_FOUND, json!({"message": "Not Found"})),
        },
        ("GET", ["repos", owner, repo, "installation"]) => {
            let policy = fake
                .repos
                .lock()
                .unwrap()
                .get(&format!("{owner}/{repo}"))
                .copied();
            match policy.and_then(|p| p.installation) {
                Some(id) => json(StatusCode::OK, json!({"id": id})),
                None => json(StatusCode::NOT_FOUND, json!({"message": "Not Found"})),
            }
        }
        ("POST", ["repos", _, _, "check-runs"]) => json(StatusCode::CREATED, json!({"id": 4242})),
        ("PATCH", ["repos", _, _, "check-runs", _]) => json(StatusCode::OK, json!({"id": 4242})),
        ("POST", ["repos", _, _, "issues", _, "comments"]) => {
            json(StatusCode::CREATED, json!({"id": 99}))
        }
        ("PATCH", ["repos", _, _, "issues", "comments", _]) => {
            json(StatusCode::OK, json!({"id": 99}))
        }
        _ => json(StatusCode::NOT_FOUND, json!({"message": "Not Found"})),
    }
}

/// Git's smart HTTP for `/<owner>/<repo>/…` through `git http-backend`, after GitHub's access rule:
/// a private repository needs the token of the installation that covers it (Basic auth, any user).
async fn serve_git(
    fake: &FakeGithub,
    method: &HttpMethod,
    path_info: &str,
    query: &str,
    headers: &HeaderMap,
    auth: &str,
    body: Bytes,
) -> Response {
    let parts: Vec<&str> = path_info.trim_start_matches('/').splitn(3, '/').collect();
    let policy = match parts.as_slice() {
        [owner, repo, _] => fake
            .repos
            .lock()
            .unwrap()
            .get(&format!("{owner}/{repo}"))
            .copied(),
        _ => None,
    };
    let Some(policy) = policy else {
        return (StatusCode::NOT_FOUND, "Repository not found").into_response();
    };
    let password = auth
        .strip_prefix("Basic ")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|userpass| userpass.split_once(':').map(|(_, p)| p.to_owned()));
    let allowed = !policy.private
        || policy
            .installation
            .is_some_and(|i| password.as_deref() == Some(installation_token(i).as_str()));
    if !allowed {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"GitHub\"")],
            "Invalid username or token",
        )
            .into_response();
    }
    drop(fake.gate.lock().await);
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env("HOME", &fake.root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", &fake.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", query)
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (header, var) in [
        ("content-type", "CONTENT_TYPE"),
        ("git-protocol", "GIT_PROTOCOL"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
    ] {
        if let Some(v) = headers.get(header).and_then(|v| v.to_str().ok()) {
            cmd.env(var, v);
        }
    }
    let mut child = cmd.spawn().expect("git http-backend");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.expect("http-backend output");
    let _ = writer.await;
    // CGI output: headers, a blank line, the body.
    let raw = out.stdout;
    let (head_end, body_start) = match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (i, i + 4),
        None => match raw.windows(2).position(|w| w == b"\n\n") {
            Some(i) => (i, i + 2),
            None => (raw.len(), raw.len()),
        },
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut resp = Response::builder().status(StatusCode::OK);
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .trim()
                .get(..3)
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            resp = resp.status(code);
        } else {
            resp = resp.header(name.trim(), value.trim());
        }
    }
    resp.body(axum::body::Body::from(raw[body_start..].to_vec()))
        .expect("response")
}

/// A fresh RSA key (PEM) for the App: the fake does not check JWTs, Kiln must still sign them.
fn app_key() -> String {
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "2048"])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("pem")
}

fn push_payload(repo_id: u64, full_name: &str, sha: &str, installation: Option<i64>) -> Value {
    let mut p = json!({"ref": "refs/heads/main", "after": sha, "deleted": false,
        "repository": {"id": repo_id, "full_name": full_name, "private": true},
        "head_commit": {"message": "first", "author": {"email": "mona@example.com"}},
        "commits": [{"added": ["index.js"], "removed": [], "modified": []}]});
    if let Some(i) = installation {
        p["installation"] = json!({"id": i});
    }
    p
}

fn pull_request_payload(repo_id: u64, full_name: &str, sha: &str, installation: i64) -> Value {
    json!({"action": "opened", "number": 7,
        "pull_request": {"html_url": format!("https://github.com/{full_name}/pull/7"),
            "created_at": "2026-11-23T09:00:00Z", "title": "Page", "user": {"login": "mona"},
            "head": {"ref": "main", "sha": sha, "repo": {"id": repo_id}}, "base": {"ref": "main"}},
        "repository": {"id": repo_id, "full_name": full_name},
        "installation": {"id": installation}})
}

/// One account's view of the API: its own token and its own account in every path.
struct Tenant<'a> {
    app: &'a TestApp,
    account: &'static str,
    token: String,
}

impl Tenant<'_> {
    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let full = format!("/accounts/{}/builds{path}", self.account);
        let (status, v) = self
            .app
            .call(method.clone(), &full, Some(&self.token), body)
            .await;
        assert_eq!(status, 200, "{method} {full}: {v}");
        v["result"].clone()
    }

    /// A connection to `owner/name` (GitHub id `repo_id`), a build token and a trigger building `main`
    /// for `worker`; returns the trigger.
    async fn trigger(&self, worker: &str, owner: &str, name: &str, repo_id: &str) -> String {
        let conn = self
            .ok(
                Method::PUT,
                "/repos/connections",
                Some(json!({"provider_type": "github",
                "provider_account_id": "1", "provider_account_name": owner, "repo_id": repo_id,
                "repo_name": name})),
            )
            .await;
        let token = self
            .ok(
                Method::POST,
                "/tokens",
                Some(json!({"build_token_name": worker,
                "build_token_secret": "cf-secret-0123", "cloudflare_token_id": "cf"})),
            )
            .await;
        let t = self
            .ok(Method::POST, "/triggers", Some(json!({"external_script_id": worker,
                "repo_connection_uuid": conn["repo_connection_uuid"],
                "build_token_uuid": token["build_token_uuid"], "trigger_name": format!("{worker}-prod"),
                "branch_includes": ["main"], "build_command": "cat index.js", "deploy_command": ""})))
            .await;
        s(&t["trigger_uuid"])
    }

    async fn build(&self, id: &str) -> Value {
        self.ok(Method::GET, &format!("/builds/{id}"), None).await
    }

    async fn builds_of(&self, worker: &str) -> Vec<Value> {
        self.ok(Method::GET, &format!("/workers/{worker}/builds"), None)
            .await
            .as_array()
            .expect("builds")
            .clone()
    }

    async fn wait_stopped(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + BUILD_DEADLINE;
        loop {
            let b = self.build(id).await;
            if b["status"] == "stopped" {
                return b;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "build {id} never stopped: {b}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn logs(&self, id: &str) -> Vec<String> {
        let r = self
            .ok(Method::GET, &format!("/builds/{id}/logs"), None)
            .await;
        r["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .map(|l| s(&l[1]))
            .collect()
    }
}

/// Waits until the fake saw a check run completed for `build`.
async fn wait_check_run_completed(fake: &FakeGithub, build: &str) {
    let deadline = tokio::time::Instant::now() + BUILD_DEADLINE;
    loop {
        let calls = fake.calls();
        let created = calls.iter().any(|c| c.body["external_id"] == build);
        // The check run of `build` is 4242 like every other: look at the last call for it.
        if created
            && calls
                .iter()
                .rev()
                .find(|c| c.path.contains("/check-runs"))
                .is_some_and(|c| c.body["status"] == "completed")
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no completed check run for {build}: {calls:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const NOT_LINKED: &str = "Failed: octo-org/site is covered by a GitHub App installation that is not linked to this account; a Kiln operator links it with `kiln installations link`";

#[tokio::test]
async fn another_accounts_private_repository_is_never_cloned_built_or_reported() {
    let remotes = tempfile::tempdir().expect("tempdir");
    let fake = FakeGithub::start(remotes.path()).await;
    let (_, site_sha) = fake.repo(
        "octo-org",
        "site",
        Policy {
            installation: Some(A_INSTALLATION),
            private: true,
        },
    );
    let (_, tools_sha) = fake.repo(
        "b-org",
        "tools",
        Policy {
            installation: Some(B_INSTALLATION),
            private: true,
        },
    );
    let key = app_key();
    let app = TestApp::spawn_with(|c| {
        c.scheduler.runners = 2;
        c.scheduler.default_concurrency = 2;
        c.runner.sandbox = kiln::sandbox::SandboxMode::None;
        c.git_url_template = fake.template();
        c.github_app = Some(kiln::github::AppConfig {
            api_url: fake.url.clone(),
            app_id: "4242".to_owned(),
            private_key_pem: key,
        });
        c.public_url = Some("https://kiln.example".to_owned());
    })
    .await;
    // The operator linked each account to its own installation.
    app.link_installation(ACCOUNT, A_INSTALLATION).await;
    app.link_installation(OTHER_ACCOUNT, B_INSTALLATION).await;
    let a = Tenant {
        app: &app,
        account: ACCOUNT,
        token: app.mint_token(Some(&[ACCOUNT]), Permission::Write).await,
    };
    let b = Tenant {
        app: &app,
        account: OTHER_ACCOUNT,
        token: app
            .mint_token(Some(&[OTHER_ACCOUNT]), Permission::Write)
            .await,
    };
    let site_id = SITE_REPO_ID.to_string();
    a.trigger("site", "octo-org", "site", &site_id).await;
    // B connects A's private repository: by its id, and by its name under an id of its own choosing.
    let stolen = b.trigger("stolen", "octo-org", "site", &site_id).await;
    let renamed = b.trigger("renamed", "octo-org", "site", "123").await;
    b.trigger("tools", "b-org", "tools", &TOOLS_REPO_ID.to_string())
        .await;

    // A's push builds A's trigger only.
    let built = deliver_accepted(
        &app,
        "push",
        &push_payload(
            SITE_REPO_ID,
            "octo-org/site",
            &site_sha,
            Some(A_INSTALLATION),
        ),
    )
    .await;
    assert_eq!(built.len(), 1, "{built:?}");
    let a_build = a.wait_stopped(&built[0]).await;
    assert_eq!(
        a_build["build_outcome"],
        "success",
        "{:?}",
        a.logs(&built[0]).await
    );
    assert!(b.builds_of("stolen").await.is_empty());
    // …cloned with A's installation token.
    let a_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "x-access-token:{}",
            installation_token(A_INSTALLATION)
        ))
    );
    assert!(
        fake.git_calls().iter().any(|c| c.auth == a_auth),
        "{:#?}",
        fake.git_calls()
    );
    wait_check_run_completed(&fake, &built[0]).await;
    // A pull request of A's repository builds nothing of B's either.
    let pr = deliver_accepted(
        &app,
        "pull_request",
        &pull_request_payload(SITE_REPO_ID, "octo-org/site", &site_sha, A_INSTALLATION),
    )
    .await;
    assert!(
        pr.is_empty(),
        "A's trigger built the commit already: {pr:?}"
    );
    assert!(b.builds_of("stolen").await.is_empty());

    // B's own repository works for B, with B's token.
    let tools = deliver_accepted(
        &app,
        "push",
        &push_payload(
            TOOLS_REPO_ID,
            "b-org/tools",
            &tools_sha,
            Some(B_INSTALLATION),
        ),
    )
    .await;
    assert_eq!(tools.len(), 1);
    let tools_build = b.wait_stopped(&tools[0]).await;
    assert_eq!(
        tools_build["build_outcome"],
        "success",
        "{:?}",
        b.logs(&tools[0]).await
    );
    wait_check_run_completed(&fake, &tools[0]).await;

    // B's manual builds and deploy hook builds of A's repository fail at the clone: no token is made
    // for them and git asks nothing, whatever id B's connection gives the repository.
    let before = fake.calls().len();
    let manual = b
        .ok(
            Method::POST,
            &format!("/triggers/{stolen}/builds"),
            Some(json!({"branch": "main"})),
        )
        .await;
    // (With the commit named: the build has a commit to report from the start.)
    let manual_commit = b
        .ok(
            Method::POST,
            &format!("/triggers/{stolen}/builds"),
            Some(json!({"branch": "main", "commit_hash": site_sha})),
        )
        .await;
    let manual_by_name = b
        .ok(
            Method::POST,
            &format!("/triggers/{renamed}/builds"),
            Some(json!({"branch": "main"})),
        )
        .await;
    let hook = b
        .ok(
            Method::POST,
            "/workers/stolen/deploy_hooks",
            Some(json!({"deploy_hook_name": "deploy", "branch": "main"})),
        )
        .await;
    let (status, fired) = app
        .call(
            Method::POST,
            &format!(
                "/workers/builds/deploy_hooks/{}",
                s(&hook["deploy_hook_uuid"])
            ),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{fired}");
    let hook_build = s(&fired["result"]["build_uuid"]);
    let b_builds = [
        s(&manual["build_uuid"]),
        s(&manual_commit["build_uuid"]),
        s(&manual_by_name["build_uuid"]),
        hook_build,
    ];
    for id in &b_builds {
        let build = b.wait_stopped(id).await;
        assert_eq!(build["build_outcome"], "fail", "{build}");
        // A's open pull request on main is none of B's business.
        assert_eq!(build["pull_request"], Value::Null, "{build}");
        let logs = b.logs(id).await;
        assert!(logs.iter().any(|l| l == NOT_LINKED), "{logs:#?}");
        assert!(
            !logs.iter().any(|l| l.contains("first")),
            "B learnt A's commit message: {logs:#?}"
        );
    }
    let after: Vec<Call> = fake.calls()[before..].to_vec();
    assert!(
        !after.iter().any(|c| c.path.starts_with("/git/")),
        "B's builds reached git: {after:#?}"
    );
    assert!(
        !after
            .iter()
            .any(|c| c.path.starts_with("/app/installations/")),
        "a token was made for B's builds: {after:#?}"
    );

    // A later build of A's (it carries A's pull request) is reported and commented on; B's failed
    // builds, queued before it, never were, and B's Workers are in no comment.
    let later = a
        .ok(
            Method::POST,
            &format!(
                "/triggers/{}/builds",
                s(&a_build["trigger"]["trigger_uuid"])
            ),
            Some(json!({"branch": "main"})),
        )
        .await;
    let later = s(&later["build_uuid"]);
    assert_eq!(a.wait_stopped(&later).await["build_outcome"], "success");
    wait_check_run_completed(&fake, &later).await;
    let deadline = tokio::time::Instant::now() + BUILD_DEADLINE;
    while !fake.calls().iter().any(|c| c.path.contains("/issues/")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pull request comment"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in fake.calls() {
        assert!(
            !b_builds
                .iter()
                .any(|id| c.body["external_id"] == id.as_str()),
            "B's build was reported: {c:#?}"
        );
        if c.path.contains("/issues/") {
            let body = s(&c.body["body"]);
            assert!(body.contains("| site |"), "{body}");
            assert!(
                !body.contains("stolen") && !body.contains("renamed"),
                "{body}"
            );
            assert!(c.path.starts_with("/repos/octo-org/site/"), "{c:#?}");
        }
        if c.path.contains("/check-runs") && c.method == "POST" {
            let build = s(&c.body["external_id"]);
            let repo = if build == tools[0] {
                "b-org/tools"
            } else {
                "octo-org/site"
            };
            assert_eq!(c.path, format!("/repos/{repo}/check-runs"), "{c:#?}");
        }
    }

    // Unlinked, A's pushes build nothing more.
    assert!(
        app.store()
            .unlink_installation(
                A_INSTALLATION,
                &kiln::domain::AccountId::parse(ACCOUNT).unwrap()
            )
            .await
            .unwrap()
    );
    let built = deliver_accepted(
        &app,
        "push",
        &push_payload(
            SITE_REPO_ID,
            "octo-org/site",
            &"e".repeat(40),
            Some(A_INSTALLATION),
        ),
    )
    .await;
    assert!(built.is_empty(), "{built:?}");
    app.stop().await;
}

#[tokio::test]
async fn without_an_app_deliveries_build_only_the_linked_accounts_and_nothing_without_an_installation()
 {
    let app = TestApp::spawn_with(|c| {
        c.scheduler.runners = 1;
        c.runner.sandbox = kiln::sandbox::SandboxMode::None;
    })
    .await;
    let repo = app.git_remotes().join("octo-org").join("site");
    std::fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("index.js"), "// site\n").expect("write");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    let sha = head(&repo);
    app.link_installation(ACCOUNT, A_INSTALLATION).await;
    let a = Tenant {
        app: &app,
        account: ACCOUNT,
        token: app.mint_token(Some(&[ACCOUNT]), Permission::Write).await,
    };
    let b = Tenant {
        app: &app,
        account: OTHER_ACCOUNT,
        token: app
            .mint_token(Some(&[OTHER_ACCOUNT]), Permission::Write)
            .await,
    };
    let site_id = SITE_REPO_ID.to_string();
    a.trigger("site", "octo-org", "site", &site_id).await;
    let stolen = b.trigger("stolen", "octo-org", "site", &site_id).await;

    // A repository webhook (no installation): nobody's trigger builds.
    let none = deliver_accepted(
        &app,
        "push",
        &push_payload(SITE_REPO_ID, "octo-org/site", &sha, None),
    )
    .await;
    assert!(none.is_empty(), "{none:?}");
    // The App's delivery: only the account linked to its installation.
    let built = deliver_accepted(
        &app,
        "push",
        &push_payload(SITE_REPO_ID, "octo-org/site", &sha, Some(A_INSTALLATION)),
    )
    .await;
    assert_eq!(built.len(), 1, "{built:?}");
    assert_eq!(
        a.wait_stopped(&built[0]).await["build_outcome"],
        "success",
        "{:?}",
        a.logs(&built[0]).await
    );
    assert!(b.builds_of("stolen").await.is_empty());
    // The installation GitHub named covers the repository: B's manual build of it fails at the clone
    // (without an App, the URL template would reach it for anyone).
    let manual = b
        .ok(
            Method::POST,
            &format!("/triggers/{stolen}/builds"),
            Some(json!({"branch": "main"})),
        )
        .await;
    let id = s(&manual["build_uuid"]);
    assert_eq!(b.wait_stopped(&id).await["build_outcome"], "fail");
    let logs = b.logs(&id).await;
    assert!(logs.iter().any(|l| l == NOT_LINKED), "{logs:#?}");
    assert!(!logs.iter().any(|l| l.contains(&sha)), "{logs:#?}");
    app.stop().await;
}

#[tokio::test]
async fn a_mirror_filled_with_one_installations_token_needs_the_callers_own_credentials() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fake = FakeGithub::start(&tmp.path().join("remotes")).await;
    fake.repo(
        "octo-org",
        "site",
        Policy {
            installation: Some(A_INSTALLATION),
            private: true,
        },
    );
    let cache = Arc::new(GitCache::new(tmp.path().join("git"), fake.template()));
    let a_token = installation_token(A_INSTALLATION);
    let b_token = installation_token(B_INSTALLATION);
    cache
        .mirror_with_token("octo-org", "site", Some(&a_token))
        .await
        .expect("A's token reads the repository");
    // The mirror is complete on disk; other credentials still do not get it.
    for token in [None, Some(b_token.as_str())] {
        let err = cache
            .mirror_with_token("octo-org", "site", token)
            .await
            .expect_err("refused");
        assert!(
            matches!(GitError::find(&err), Some(GitError::Fetch { .. })),
            "{err:#}"
        );
    }
    // Nor by waiting for a fetch made with A's token that started after their own call: a fetch
    // with A's token holds the mirror, another with A's token and one without queue behind it.
    let gate = fake.gate.clone().lock_owned().await;
    let fetch = |token: Option<String>| {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .mirror_with_token("octo-org", "site", token.as_deref())
                .await
        })
    };
    let first = fetch(Some(a_token.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = fetch(Some(a_token.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let anonymous = fetch(None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(gate);
    first.await.expect("join").expect("A's first fetch");
    second.await.expect("join").expect("A's second fetch");
    let err = anonymous
        .await
        .expect("join")
        .expect_err("no credentials, no mirror");
    assert!(
        matches!(GitError::find(&err), Some(GitError::Fetch { .. })),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_submodule_mirror_filled_with_another_token_is_fetched_with_the_builds_own_credentials() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fake = FakeGithub::start(&tmp.path().join("remotes")).await;
    let (_, private) = fake.repo(
        "octo-org",
        "private",
        Policy {
            installation: Some(A_INSTALLATION),
            private: true,
        },
    );
    // A public repository whose submodule is A's private repository.
    let (site, _) = fake.repo(
        "b-org",
        "site",
        Policy {
            installation: None,
            private: false,
        },
    );
    git(
        &site,
        &[
            "config",
            "--file",
            ".gitmodules",
            "submodule.lib.path",
            "lib",
        ],
    );
    git(
        &site,
        &[
            "config",
            "--file",
            ".gitmodules",
            "submodule.lib.url",
            "https://github.com/octo-org/private.git",
        ],
    );
    git(&site, &["add", ".gitmodules"]);
    git(
        &site,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{private},lib"),
        ],
    );
    git(&site, &["commit", "-q", "-m", "a submodule"]);
    let sha = head(&site);
    let cache = GitCache::new(tmp.path().join("git"), fake.template());

    // A's build (A's token covers the submodule) fills the submodule's mirror.
    let a_token = installation_token(A_INSTALLATION);
    let mirror = cache
        .mirror_with_token("b-org", "site", Some(&a_token))
        .await
        .expect("mirror");
    let a_dest = tmp.path().join("work/a");
    mirror.checkout(&sha, &a_dest).await.expect("checkout");
    let subs = cache
        .checkout_submodules(&a_dest, &mirror, Some(&a_token))
        .await
        .expect("A's submodule");
    assert_eq!(subs.len(), 1);
    assert!(a_dest.join("lib/index.js").is_file());

    // B's builds of the same public repository, without a token or with another installation's: the
    // submodule's mirror has the commit, but it is not theirs to read.
    let b_token = installation_token(B_INSTALLATION);
    for (n, token) in [None, Some(b_token.as_str())].into_iter().enumerate() {
        let mirror = cache
            .mirror_with_token("b-org", "site", token)
            .await
            .expect("the public superproject");
        let dest = tmp.path().join(format!("work/b{n}"));
        mirror.checkout(&sha, &dest).await.expect("checkout");
        let err = cache
            .checkout_submodules(&dest, &mirror, token)
            .await
            .expect_err("the submodule is A's");
        let text = format!("{err:#}");
        assert!(
            text.starts_with("submodule lib (https://github.com/octo-org/private.git): "),
            "{text}"
        );
        assert!(
            matches!(GitError::find(&err), Some(GitError::Fetch { .. })),
            "{text}"
        );
        assert!(!dest.join("lib/index.js").exists());
    }
}
