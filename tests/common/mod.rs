//! Test harness: a real Kiln server on a random port over a fresh database (SQLite file or a new
//! PostgreSQL database), chosen by `KILN_TEST_BACKEND` (`sqlite` by default, `postgres` with
//! `KILN_TEST_POSTGRES_URL` pointing at a server; `scripts/test` sets both).
#![allow(dead_code)]

pub mod browser;
pub mod builds;
pub mod github;
pub mod process;
pub mod proxy;
pub mod receiver;
pub mod sse;

#[allow(unused_imports)]
pub use builds::*;
#[allow(unused_imports)]
pub use github::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use sse::*;

use std::path::PathBuf;

use kiln::api::Limits;
use kiln::crypto::{hash_credential, new_credential};
use kiln::domain::{AccountId, AccountScope, ApiToken, CredentialKind, Permission, Timestamp};
use kiln::runner::RunnerConfig;
use kiln::scheduler::SchedulerConfig;
use kiln::startup::{ServeConfig, Server, StoreConfig};
use kiln::store::Store;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The all-accounts write token every test server accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdefXYZ";
/// The secret the test server verifies GitHub webhook signatures with.
pub const WEBHOOK_SECRET: &str = "test-webhook-secret-6a1f";
/// The account most tests work in.
pub const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";
/// Another account, for isolation tests.
pub const OTHER_ACCOUNT: &str = "99999999999999999999999999999999";

/// Which database the tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn backend() -> Backend {
    match std::env::var("KILN_TEST_BACKEND").as_deref() {
        Ok("postgres") => Backend::Postgres,
        _ => Backend::Sqlite,
    }
}

/// A fresh database URL for one test (`None` = SQLite in the data dir).
pub async fn fresh_database_url() -> Option<String> {
    match backend() {
        Backend::Sqlite => None,
        Backend::Postgres => {
            use sqlx::Connection;
            let admin = std::env::var("KILN_TEST_POSTGRES_URL").expect(
                "KILN_TEST_BACKEND=postgres needs KILN_TEST_POSTGRES_URL (scripts/test sets it)",
            );
            let name = format!("kiln_test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .expect("create test database");
            conn.close().await.ok();
            let base = admin
                .rsplit_once('/')
                .map(|(b, _)| b)
                .unwrap_or(&admin)
                .to_owned();
            Some(format!("{base}/{name}"))
        }
    }
}

/// Checks that `holds` stays true for all of `window`, looking every 20 ms, and fails at the first
/// look where it does not: for "nothing more happens" checks, whose window must span the period of
/// whatever could still act (a poll interval, a retry delay).
pub async fn assert_stays(window: std::time::Duration, what: &str, holds: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + window;
    loop {
        assert!(holds(), "{what}");
        if tokio::time::Instant::now() >= end {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until `cond` holds, looking every 20 ms; fails with `what` after `within`.
pub async fn wait_until(within: std::time::Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The database URL several server processes share: a SQLite file in `dir/shared` (outside every
/// node's data dir), or a fresh PostgreSQL database.
pub async fn shared_database(dir: &std::path::Path) -> Option<String> {
    match backend() {
        Backend::Sqlite => {
            let shared = dir.join("shared");
            std::fs::create_dir_all(&shared).expect("create the shared directory");
            Some(format!("sqlite://{}/kiln.db", shared.display()))
        }
        Backend::Postgres => fresh_database_url().await,
    }
}

/// The toolchain store every test server shares (`KILN_TEST_TOOLCHAIN_DIR`, else a fixed directory
/// under the temp dir), so that a test run downloads each toolchain once.
pub fn shared_toolchain_dir() -> PathBuf {
    let dir = std::env::var_os("KILN_TEST_TOOLCHAIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("kiln-test-toolchains"));
    std::fs::create_dir_all(&dir).expect("create the shared toolchain dir");
    dir
}

/// The configuration test servers start from (no build runners), with its data and remotes in `dir`.
pub async fn test_config(dir: &std::path::Path) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".to_owned(),
        store: StoreConfig {
            data_dir: dir.join("data"),
            database_url: fresh_database_url().await,
            secret_key: None,
        },
        bootstrap_token: Some(ADMIN_TOKEN.to_owned()),
        limits: Limits::default(),
        git_url_template: format!(
            "file://{}/{{owner}}/{{repo}}",
            dir.join("remotes").display()
        ),
        scheduler: SchedulerConfig {
            runners: 0,
            ..SchedulerConfig::default()
        },
        runner: RunnerConfig {
            toolchain_dir: Some(shared_toolchain_dir()),
            ..RunnerConfig::default()
        },
        github_webhook_secrets: vec![WEBHOOK_SECRET.to_owned()],
        github_app: None,
        public_url: None,
        http: kiln::listen::HttpConfig::default(),
        auth_throttle: Default::default(),
        metrics_token: None,
        notifications: Default::default(),
        log_streams: Default::default(),
        dashboard: Default::default(),
    }
}

/// A running server and a client for it.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub config: ServeConfig,
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
}

impl TestApp {
    /// Starts a server on a fresh database, without build runners (builds stay queued).
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(|_| {}).await
    }

    /// Starts a server on a fresh database after `configure` adjusted the configuration.
    pub async fn spawn_with(configure: impl FnOnce(&mut ServeConfig)) -> TestApp {
        // Kiln's warnings and errors show in the output of a failing test.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::new("kiln=warn"))
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        // Build steps run as an unprivileged user (the tests run as root) that must reach its
        // workspace in the data dir below this directory, as on a real host.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod tempdir");
        let config = test_config(dir.path()).await;
        let mut config = config;
        configure(&mut config);
        let server = Server::start(&config).await.expect("start server");
        TestApp {
            base: format!("http://{}", server.addr),
            client: reqwest::Client::new(),
            config,
            server: Some(server),
            dir,
        }
    }

    pub fn store(&self) -> &Store {
        &self.server.as_ref().expect("server running").store
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.store.data_dir.clone()
    }

    /// Where the test server clones repositories from: `<git_remotes>/<owner>/<repo>`.
    pub fn git_remotes(&self) -> PathBuf {
        self.dir.path().join("remotes")
    }

    /// Stops the server and starts a new one on the same data (a new port).
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.expect("stop server");
        }
        let server = Server::start(&self.config).await.expect("restart server");
        self.base = format!("http://{}", server.addr);
        self.server = Some(server);
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.expect("stop server");
        }
    }

    /// Mints an API token directly in the store.
    pub async fn mint_token(&self, accounts: Option<&[&str]>, permission: Permission) -> String {
        self.mint(CredentialKind::Token, None, accounts, permission)
            .await
    }

    /// Mints a global key for `email`.
    pub async fn mint_global_key(
        &self,
        email: &str,
        accounts: Option<&[&str]>,
        permission: Permission,
    ) -> String {
        self.mint(CredentialKind::GlobalKey, Some(email), accounts, permission)
            .await
    }

    async fn mint(
        &self,
        kind: CredentialKind,
        email: Option<&str>,
        accounts: Option<&[&str]>,
        permission: Permission,
    ) -> String {
        let secret = new_credential("kiln_");
        let scope = match accounts {
            None => AccountScope::All,
            Some(ids) => AccountScope::Only(
                ids.iter()
                    .map(|a| AccountId::parse(a).expect("account id"))
                    .collect(),
            ),
        };
        let token = ApiToken {
            id: format!("t_{}", uuid::Uuid::new_v4().simple()),
            kind,
            email: email.map(str::to_owned),
            permission,
            scope,
            created_on: Timestamp::now(),
            revoked_on: None,
            label: None,
        };
        assert!(
            self.store()
                .insert_api_token(&token, &hash_credential(&secret))
                .await
                .expect("insert token")
        );
        secret
    }

    /// `http://host:port/client/v4` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/client/v4{}", self.base, path)
    }

    /// `…/accounts/{ACCOUNT}/builds` + `path`.
    pub fn acct(&self, path: &str) -> String {
        format!("/accounts/{ACCOUNT}/builds{path}")
    }

    /// Sends a request with a Bearer token (or none) and an optional JSON body; returns status and JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("send request");
        read(resp).await
    }

    /// Sends a raw body (no JSON encoding) with the admin token.
    pub async fn call_raw(&self, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send request");
        read(resp).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(ADMIN_TOKEN), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(ADMIN_TOKEN), Some(body))
            .await
    }

    /// Calls and asserts a 200 success envelope; returns `result`.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self
            .call(method.clone(), path, Some(ADMIN_TOKEN), body)
            .await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {v}");
        assert_eq!(v["success"], json!(true), "{method} {path}: {v}");
        assert_eq!(v["errors"], json!([]), "{method} {path}: {v}");
        v["result"].clone()
    }

    /// A connection to the GitHub repository `owner/repo` (numeric id `repo_id`) and a build token;
    /// returns their ids.
    pub async fn github_repo(&self, owner: &str, repo: &str, repo_id: &str) -> (String, String) {
        let conn = self
            .ok(Method::PUT, &self.acct("/repos/connections"), Some(json!({"provider_type": "github",
                "provider_account_id": "6811672", "provider_account_name": owner, "repo_id": repo_id,
                "repo_name": repo})))
            .await;
        let token = self
            .ok(
                Method::POST,
                &self.acct("/tokens"),
                Some(json!({"build_token_name": "t",
                "build_token_secret": "cf-secret-1234", "cloudflare_token_id": "cf"})),
            )
            .await;
        (
            s(&conn["repo_connection_uuid"]),
            s(&token["build_token_uuid"]),
        )
    }

    /// Links `account` to the GitHub App installation `installation`, as `kiln installations link`
    /// does: the account then builds the pushes of the repositories that installation covers.
    pub async fn link_installation(&self, account: &str, installation: i64) {
        let account = AccountId::parse(account).expect("account id");
        self.store()
            .link_installation(installation, &account)
            .await
            .expect("link installation");
    }

    /// A trigger for `worker` on a connection; `extra` fields are merged into the request body.
    pub async fn trigger(&self, worker: &str, conn: &str, token: &str, extra: Value) -> String {
        let mut body = json!({"external_script_id": worker, "repo_connection_uuid": conn,
            "build_token_uuid": token, "trigger_name": "prod"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        s(&self
            .ok(Method::POST, &self.acct("/triggers"), Some(body))
            .await["trigger_uuid"])
    }

    /// Creates a connection, a build token and a trigger for `worker`; returns their ids.
    pub async fn fixture(&self, worker: &str) -> Fixture {
        let conn = self
            .ok(Method::PUT, &self.acct("/repos/connections"), Some(json!({
                "provider_type": "github", "provider_account_id": "1001", "provider_account_name": "octo-org",
                "repo_id": format!("repo-{worker}"), "repo_name": format!("{worker}-repo")
            })))
            .await;
        let token = self
            .ok(Method::POST, &self.acct("/tokens"), Some(json!({
                "build_token_name": format!("{worker} token"), "build_token_secret": format!("cf-secret-{worker}-Zq9"),
                "cloudflare_token_id": "cf-token-123"
            })))
            .await;
        let trigger = self
            .ok(Method::POST, &self.acct("/triggers"), Some(json!({
                "external_script_id": worker, "repo_connection_uuid": conn["repo_connection_uuid"],
                "build_token_uuid": token["build_token_uuid"], "trigger_name": "Production Deploy",
                "build_command": "npm run build", "deploy_command": "npx wrangler deploy", "root_directory": "/",
                "branch_includes": ["main"], "branch_excludes": [], "path_includes": ["*"], "path_excludes": ["*.md"]
            })))
            .await;
        Fixture {
            connection: s(&conn["repo_connection_uuid"]),
            token: s(&token["build_token_uuid"]),
            trigger: s(&trigger["trigger_uuid"]),
        }
    }
}

/// Ids created by [`TestApp::fixture`].
#[derive(Debug, Clone)]
pub struct Fixture {
    pub connection: String,
    pub token: String,
    pub trigger: String,
}

pub fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
        .to_owned()
}

async fn read(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.expect("read body");
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"));
    (status, v)
}

/// Asserts an error envelope with this status and code.
pub fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: u64) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["success"], json!(false), "{body}");
    assert_eq!(body["result"], Value::Null, "{body}");
    assert_eq!(body["messages"], json!([]), "{body}");
    assert_eq!(body["errors"][0]["code"], json!(want_code), "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Replaces UUIDs and timestamps so that snapshots are stable.
pub fn redact(v: &Value) -> Value {
    match v {
        Value::String(s) if uuid::Uuid::try_parse(s).is_ok() && s.len() == 36 => json!("[uuid]"),
        Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => json!("[time]"),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let key = if uuid::Uuid::try_parse(k).is_ok() && k.len() == 36 {
                        "[uuid]".to_owned()
                    } else {
                        k.clone()
                    };
                    (key, redact(v))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}
