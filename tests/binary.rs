//! The real `kiln` binary, started the way a user starts it: the `tokens` commands, `serve` configured by
//! flags or by environment variables, signals, restarts on the same data, and the curl examples of the API
//! reference (`../shared/spec/seeds/002_*.txt`, copied to `tests/fixtures/seed-curl-examples.md`) run with the real `curl`.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ACCOUNT, Backend, OTHER_ACCOUNT, backend, fresh_database_url};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
/// How long `kiln serve` may take to answer its first request (migrations included).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long `kiln serve` may take to exit after SIGTERM/SIGINT with nothing in flight.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Every variable the binary reads: cleared so that the caller's environment cannot leak into a test.
const KILN_VARS: &[&str] = &[
    "KILN_LISTEN",
    "KILN_DATA_DIR",
    "KILN_DATABASE_URL",
    "KILN_BOOTSTRAP_TOKEN",
    "KILN_BOOTSTRAP_TOKEN_FILE",
    "KILN_DATABASE_URL_FILE",
    "KILN_SECRET_KEY_FILE",
    "KILN_GITHUB_WEBHOOK_SECRET",
    "KILN_GITHUB_WEBHOOK_SECRET_FILE",
    "KILN_BUILD_MINUTES",
    "KILN_SECRET_KEY",
    "KILN_LOG",
    "KILN_RUNNERS",
    "KILN_SANDBOX",
    "KILN_DEFAULT_CONCURRENCY",
    "KILN_BUILD_TIMEOUT",
    "KILN_CANCEL_GRACE",
    "KILN_LOG_CAP_MIB",
    "KILN_LEASE",
    "KILN_GIT_URL_TEMPLATE",
    "KILN_MAX_CONNECTIONS",
    "KILN_HEADER_READ_TIMEOUT",
    "KILN_BODY_READ_TIMEOUT",
    "KILN_IDLE_TIMEOUT",
];

// ---------------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------------

/// One installation: a data dir and, on PostgreSQL, a fresh database.
struct Site {
    dir: tempfile::TempDir,
    database_url: Option<String>,
}

/// What a finished `kiln` command printed.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "{}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    fn assert_ok(&self, what: &str) {
        assert!(self.status.success(), "{what}: {}", self.describe());
    }

    /// Asserts a failure that printed nothing on stdout and `message` on stderr.
    fn assert_failed(&self, what: &str, message: &str) {
        assert!(
            !self.status.success(),
            "{what} should fail: {}",
            self.describe()
        );
        assert!(
            self.status.code().is_some(),
            "{what} should exit, not die of a signal: {}",
            self.describe()
        );
        assert_eq!(
            self.stdout,
            "",
            "{what} printed on stdout: {}",
            self.describe()
        );
        assert!(
            self.stderr.contains(message),
            "{what}: stderr should mention {message:?}: {}",
            self.describe()
        );
    }
}

/// A credential made by `kiln tokens create`.
struct Created {
    id: String,
    secret: String,
}

/// One row of `kiln tokens list`.
#[derive(Debug, Clone)]
struct Listed {
    id: String,
    kind: String,
    permission: String,
    accounts: String,
    revoked: String,
    /// E-mail and label.
    note: String,
}

impl Site {
    async fn new() -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        // `kiln serve` checks that its build user (the tests run as root) reaches the data dir.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod tempdir");
        Site {
            dir,
            database_url: fresh_database_url().await,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The database URL to give `KILN_DATABASE_URL`: on SQLite, the file `kiln serve` uses by default.
    fn explicit_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => kiln::store::Store::sqlite_url(&self.data_dir()),
        }
    }

    /// `--data-dir` and, on PostgreSQL, `--database-url`.
    fn store_args(&self) -> Vec<String> {
        let mut args = vec![
            "--data-dir".to_owned(),
            self.data_dir().display().to_string(),
        ];
        if let Some(url) = &self.database_url {
            args.extend(["--database-url".to_owned(), url.clone()]);
        }
        args
    }

    /// The binary, run in the temp dir with no `KILN_*` variable set.
    fn command(&self) -> Command {
        let mut cmd = Command::new(KILN);
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for var in KILN_VARS {
            cmd.env_remove(var);
        }
        // These tests are about the API and the CLI: builds stay queued (tests/execution.rs and
        // tests/recovery.rs run them).
        cmd.env("KILN_RUNNERS", "0");
        cmd
    }

    /// Runs `kiln ARGS…` with this site's store flags appended.
    async fn kiln(&self, args: &[&str]) -> Run {
        let mut cmd = self.command();
        cmd.args(args).args(self.store_args());
        run(cmd).await
    }

    /// `kiln tokens create ARGS…`: asserts that exactly one line, the secret, goes to stdout.
    async fn create_token(&self, args: &[&str]) -> Created {
        let run = self.kiln(&[&["tokens", "create"], args].concat()).await;
        run.assert_ok(&format!("tokens create {args:?}"));
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "stdout should hold exactly the token: {}",
            run.describe()
        );
        let secret = lines[0].to_owned();
        assert!(
            secret.len() >= 32 && !secret.contains(char::is_whitespace),
            "not a token: {}",
            run.describe()
        );
        assert_eq!(run.stdout, format!("{secret}\n"));
        assert!(
            !run.stderr.contains(&secret),
            "the secret went to stderr too: {}",
            run.describe()
        );
        let id = run
            .stderr
            .lines()
            .find(|l| l.starts_with("Created "))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("tok_")))
            .unwrap_or_else(|| panic!("no token id on stderr: {}", run.describe()))
            .to_owned();
        Created { id, secret }
    }

    /// `kiln tokens list`, parsed; asserts that none of `secrets` is printed.
    async fn list_tokens(&self, secrets: &[&str]) -> Vec<Listed> {
        let run = self.kiln(&["tokens", "list"]).await;
        run.assert_ok("tokens list");
        parse_token_list(&run, secrets)
    }

    /// Starts `kiln serve --listen 127.0.0.1:PORT <store flags> EXTRA…` and waits until it answers.
    async fn serve(&self, extra: &[&str]) -> Kiln {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Kiln::start(|port| {
            let mut cmd = self.command();
            cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .args(self.store_args())
                .args(&extra);
            cmd
        })
        .await
    }
}

fn parse_token_list(run: &Run, secrets: &[&str]) -> Vec<Listed> {
    for secret in secrets {
        assert!(
            !run.stdout.contains(secret),
            "tokens list printed a secret: {}",
            run.describe()
        );
        assert!(
            !run.stderr.contains(secret),
            "tokens list printed a secret: {}",
            run.describe()
        );
    }
    let mut lines = run.stdout.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.split_whitespace().eq([
            "ID", "KIND", "PERM", "ACCOUNTS", "CREATED", "REVOKED", "LABEL"
        ]),
        "header: {}",
        run.describe()
    );
    lines
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() >= 6, "short row {line:?}: {}", run.describe());
            Listed {
                id: f[0].to_owned(),
                kind: f[1].to_owned(),
                permission: f[2].to_owned(),
                accounts: f[3].to_owned(),
                revoked: f[5].to_owned(),
                note: f[6..].join(" "),
            }
        })
        .collect()
}

fn find<'a>(listed: &'a [Listed], id: &str) -> &'a Listed {
    listed
        .iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("{id} not listed: {listed:?}"))
}

/// Runs a command to completion, within a deadline.
async fn run(mut cmd: Command) -> Run {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within 60s"))
        .expect("run kiln");
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A port nothing listens on right now (bound, read, released: `kiln serve` does not report the port it
/// got for `:0`).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A running `kiln serve`; killed if dropped while running.
struct Kiln {
    child: Child,
    port: u16,
    base: String,
    stderr: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
    http: reqwest::Client,
}

impl Kiln {
    /// Spawns the command `make(port)` builds on a free port and polls `GET /client/v4/openapi.json`
    /// until it answers (after the process logged its listen address). Tries another port if the one picked was taken in the meantime.
    async fn start(make: impl Fn(u16) -> Command) -> Kiln {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = free_port();
            match Kiln::try_start(make(port), port).await {
                Ok(kiln) => return kiln,
                Err(stderr) if stderr.contains("in use") && attempts < 5 => continue,
                Err(stderr) => panic!("kiln serve did not start:\n{stderr}"),
            }
        }
    }

    async fn try_start(mut cmd: Command, port: u16) -> Result<Kiln, String> {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kiln serve");
        let mut pipe = child.stderr.take().expect("stderr pipe");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client");
        let mut kiln = Kiln {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            stderr,
            reader: Some(reader),
            http,
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = kiln.child.try_wait().expect("try_wait") {
                if let Some(r) = kiln.reader.take() {
                    r.await.ok();
                }
                return Err(format!(
                    "exited with {status} before answering:\n{}",
                    kiln.stderr()
                ));
            }
            // Our process must have logged that it listens on the port before an answer counts: on a
            // port picked twice, the answer could come from another test's server.
            if kiln
                .stderr()
                .contains(&format!("listening on http://127.0.0.1:{port}"))
            {
                let probe = kiln
                    .http
                    .get(format!("{}/client/v4/openapi.json", kiln.base))
                    .send()
                    .await;
                if probe.is_ok_and(|r| r.status() == 200) {
                    return Ok(kiln);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer on port {port} within {START_DEADLINE:?}:\n{}",
                    kiln.stderr()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits (with a deadline) until stderr contains `text`.
    async fn await_stderr(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < deadline,
                "stderr never mentioned {text:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid(&self) -> String {
        self.child
            .id()
            .expect("kiln serve still running")
            .to_string()
    }

    /// Sends `signal` (`TERM`, `INT`) with the `kill` command.
    async fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Sends `signal` and waits for the exit, at most `within`; returns the status and all of stderr.
    async fn stop_within(mut self, signal: &str, within: Duration) -> (ExitStatus, String) {
        self.signal(signal).await;
        let started = Instant::now();
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for kiln serve"),
            Err(_) => panic!(
                "kiln serve still running {within:?} after SIG{signal}:\n{}",
                self.stderr()
            ),
        };
        if let Some(r) = self.reader.take() {
            r.await.ok();
        }
        let stderr = self.stderr();
        eprintln!(
            "kiln serve exited {:?} after SIG{signal}",
            started.elapsed()
        );
        (status, stderr)
    }

    /// SIGTERM; asserts a prompt exit with status 0 and returns stderr.
    async fn stop(self) -> String {
        let (status, stderr) = self.stop_within("TERM", STOP_DEADLINE).await;
        assert!(
            status.success(),
            "kiln serve exited with {status} after SIGTERM:\n{stderr}"
        );
        stderr
    }

    fn url(&self, path: &str) -> String {
        format!("{}/client/v4{path}", self.base)
    }

    /// Sends a request; returns the status and the JSON body.
    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.expect("send request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("read body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"));
        (status, body)
    }

    /// A request with a Bearer token and an optional JSON body.
    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    /// Like [`Kiln::call`], asserting a success envelope; returns the whole body.
    async fn ok(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(token, method.clone(), path, body).await;
        assert_eq!(status, 200, "{method} {path}: {v}");
        assert_eq!(v["success"], json!(true), "{method} {path}: {v}");
        v
    }
}

/// `/accounts/{ACCOUNT}/builds` + `path`.
fn acct(path: &str) -> String {
    format!("/accounts/{ACCOUNT}/builds{path}")
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: u64) {
    common::assert_error(
        reqwest::StatusCode::from_u16(status).expect("status"),
        body,
        want_status,
        want_code,
    );
}

fn string(v: &Value) -> String {
    common::s(v)
}

fn build_token_body(name: &str) -> Value {
    json!({"build_token_name": name, "build_token_secret": format!("cf-secret-{name}-Zq9"), "cloudflare_token_id": "cf-token-123"})
}

// ---------------------------------------------------------------------------------------------------
// kiln tokens
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn tokens_commands_create_list_and_revoke_credentials_a_running_server_honours() {
    let site = Site::new().await;

    let read = site
        .create_token(&[
            "--account",
            ACCOUNT,
            "--permission",
            "read",
            "--label",
            "ci-reader",
        ])
        .await;
    let key = site
        .create_token(&[
            "--all-accounts",
            "--global-key",
            "--email",
            "ops@example.com",
        ])
        .await;
    assert!(read.secret.starts_with("kiln_"), "{}", read.secret);
    assert!(key.secret.starts_with("kilnkey_"), "{}", key.secret);

    // The commands work while the server runs (SQLite in WAL mode, or PostgreSQL).
    let kiln = site.serve(&[]).await;
    let write = site
        .create_token(&["--all-accounts", "--permission", "write"])
        .await;
    let secrets = [
        read.secret.as_str(),
        write.secret.as_str(),
        key.secret.as_str(),
    ];
    let unique = |items: [&str; 3]| std::collections::HashSet::from(items).len() == 3;
    assert!(unique(secrets), "secrets must differ");
    assert!(
        unique([&read.id, &write.id, &key.id].map(String::as_str)),
        "ids must differ"
    );

    let listed = site.list_tokens(&secrets).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    let r = find(&listed, &read.id);
    assert_eq!(
        (
            r.kind.as_str(),
            r.permission.as_str(),
            r.accounts.as_str(),
            r.revoked.as_str()
        ),
        ("token", "read", ACCOUNT, "-")
    );
    assert_eq!(r.note, "ci-reader");
    let w = find(&listed, &write.id);
    assert_eq!(
        (
            w.kind.as_str(),
            w.permission.as_str(),
            w.accounts.as_str(),
            w.revoked.as_str()
        ),
        ("token", "write", "*", "-")
    );
    let k = find(&listed, &key.id);
    assert_eq!(
        (
            k.kind.as_str(),
            k.permission.as_str(),
            k.accounts.as_str(),
            k.revoked.as_str()
        ),
        ("global-key", "write", "*", "-")
    );
    assert_eq!(k.note, "ops@example.com");

    // What each credential may do.
    kiln.ok(&read.secret, Method::GET, &acct("/tokens"), None)
        .await;
    let (st, v) = kiln
        .call(
            &read.secret,
            Method::POST,
            &acct("/tokens"),
            Some(build_token_body("r")),
        )
        .await;
    assert_error(st, &v, 403, 10000);
    let (st, v) = kiln
        .call(
            &read.secret,
            Method::GET,
            &format!("/accounts/{OTHER_ACCOUNT}/builds/tokens"),
            None,
        )
        .await;
    assert_error(st, &v, 403, 10000);
    kiln.ok(
        &write.secret,
        Method::POST,
        &format!("/accounts/{OTHER_ACCOUNT}/builds/tokens"),
        Some(build_token_body("w")),
    )
    .await;
    let with_key = |email: &str| {
        kiln.http
            .get(kiln.url(&acct("/tokens")))
            .header("X-Auth-Email", email)
            .header("X-Auth-Key", &key.secret)
    };
    let (st, v) = kiln.send(with_key("ops@example.com")).await;
    assert_eq!((st, &v["success"]), (200, &json!(true)), "{v}");
    let (st, v) = kiln.send(with_key("someone@example.com")).await;
    assert_error(st, &v, 401, 10000);
    let (st, v) = kiln
        .call(&key.secret, Method::GET, &acct("/tokens"), None)
        .await;
    assert_error(st, &v, 401, 10000);

    // Revoking takes effect on the running server at once.
    let run = site.kiln(&["tokens", "revoke", &read.id]).await;
    run.assert_ok("tokens revoke");
    assert_eq!(run.stdout, "", "{}", run.describe());
    assert!(
        run.stderr.contains(&format!("Revoked {}", read.id)),
        "{}",
        run.describe()
    );
    let (st, v) = kiln
        .call(&read.secret, Method::GET, &acct("/tokens"), None)
        .await;
    assert_error(st, &v, 401, 10000);
    kiln.ok(&write.secret, Method::GET, &acct("/tokens"), None)
        .await;
    let run = site.kiln(&["tokens", "revoke", &key.id]).await;
    run.assert_ok("tokens revoke (global key)");
    let (st, v) = kiln.send(with_key("ops@example.com")).await;
    assert_error(st, &v, 401, 10000);

    let listed = site.list_tokens(&secrets).await;
    assert_eq!(listed.len(), 3, "revoked tokens stay listed: {listed:?}");
    assert_ne!(find(&listed, &read.id).revoked, "-");
    assert_ne!(find(&listed, &key.id).revoked, "-");
    assert_eq!(find(&listed, &write.id).revoked, "-");

    // Revoking what is not a live token fails with a clear message.
    site.kiln(&["tokens", "revoke", &read.id])
        .await
        .assert_failed(
            "revoking twice",
            &format!("no live token with id {}", read.id),
        );
    site.kiln(&["tokens", "revoke", "tok_0000000000000000"])
        .await
        .assert_failed(
            "revoking an unknown id",
            "no live token with id tok_0000000000000000",
        );
    site.kiln(&["tokens", "revoke"])
        .await
        .assert_failed("revoke without an id", "<ID>");

    // Bad arguments fail without creating anything.
    site.kiln(&[
        "tokens",
        "create",
        "--all-accounts",
        "--permission",
        "admin",
    ])
    .await
    .assert_failed("--permission admin", "admin");
    site.kiln(&["tokens", "create", "--permission", "read"])
        .await
        .assert_failed("no --account and no --all-accounts", "--account");
    site.kiln(&[
        "tokens",
        "create",
        "--account",
        "not an/account!",
        "--permission",
        "read",
    ])
    .await
    .assert_failed("a bad account id", "--account");
    site.kiln(&["tokens", "create", "--account", "", "--permission", "read"])
        .await
        .assert_failed("an empty account id", "--account");
    site.kiln(&["tokens", "create", "--account", ACCOUNT, "--all-accounts"])
        .await
        .assert_failed("--account with --all-accounts", "--all-accounts");
    site.kiln(&["tokens", "create", "--all-accounts", "--global-key"])
        .await
        .assert_failed("--global-key without --email", "--email");
    assert_eq!(site.list_tokens(&secrets).await.len(), 3);

    let stderr = kiln.stop().await;
    for secret in secrets {
        assert!(
            !stderr.contains(secret),
            "the server logged a secret:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// kiln serve
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn serve_takes_flags_or_environment_and_stops_on_sigterm_and_sigint() {
    let site = Site::new().await;
    let flag_token = "flag-bootstrap-token-5e0c1f9a7b3d2468";
    let env_token = "env-bootstrap-token-9c8d7e6f5a4b3021";

    // Flags.
    let kiln = site.serve(&["--bootstrap-token", flag_token]).await;
    kiln.await_stderr(&format!("listening on http://127.0.0.1:{}", kiln.port))
        .await;
    kiln.await_stderr(match backend() {
        Backend::Sqlite => "Sqlite",
        Backend::Postgres => "Postgres",
    })
    .await;
    let created = kiln
        .ok(
            flag_token,
            Method::POST,
            &acct("/tokens"),
            Some(build_token_body("flags")),
        )
        .await;
    let tokens_before = kiln
        .ok(flag_token, Method::GET, &acct("/tokens"), None)
        .await;
    assert_eq!(
        tokens_before["result"][0]["build_token_uuid"],
        created["result"]["build_token_uuid"]
    );
    // The client keeps its keep-alive connection open: the stop must not wait for it.
    let first_port = kiln.port;
    let stderr = kiln.stop().await;
    assert!(
        stderr.contains("shutting down") && stderr.contains("stopped"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(flag_token),
        "the bootstrap token was logged:\n{stderr}"
    );
    let (st, v) = probe(first_port).await;
    assert!(st.is_none(), "still answering after the exit: {v:?}");

    // Environment variables instead of flags, on the same data.
    let env_command = |port: u16| {
        let mut cmd = site.command();
        cmd.arg("serve")
            .env("KILN_LISTEN", format!("127.0.0.1:{port}"))
            .env("KILN_DATA_DIR", site.data_dir())
            .env("KILN_DATABASE_URL", site.explicit_database_url())
            .env("KILN_BOOTSTRAP_TOKEN", env_token);
        cmd
    };
    let kiln = Kiln::start(env_command).await;
    kiln.await_stderr(&format!("listening on http://127.0.0.1:{}", kiln.port))
        .await;
    assert_eq!(
        kiln.ok(env_token, Method::GET, &acct("/tokens"), None)
            .await,
        tokens_before
    );
    // The token registered by the first run is stored, not just held in memory.
    assert_eq!(
        kiln.ok(flag_token, Method::GET, &acct("/tokens"), None)
            .await,
        tokens_before
    );

    // `kiln tokens list` reads the same variables.
    let mut list = site.command();
    list.args(["tokens", "list"])
        .env("KILN_DATA_DIR", site.data_dir())
        .env("KILN_DATABASE_URL", site.explicit_database_url());
    let run = run(list).await;
    run.assert_ok("tokens list from the environment");
    let listed = parse_token_list(&run, &[flag_token, env_token]);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|t| t.note == "KILN_BOOTSTRAP_TOKEN" && t.accounts == "*"),
        "{listed:?}"
    );

    let (status, stderr) = kiln.stop_within("INT", STOP_DEADLINE).await;
    assert!(status.success(), "exit after SIGINT: {status}\n{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    assert!(
        !stderr.contains(env_token),
        "the bootstrap token was logged:\n{stderr}"
    );
}

/// `GET /client/v4/openapi.json` on `port`: the status, or `None` when nothing answers.
async fn probe(port: u16) -> (Option<u16>, Option<String>) {
    match reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{port}/client/v4/openapi.json"))
        .send()
        .await
    {
        Ok(r) => (Some(r.status().as_u16()), r.text().await.ok()),
        Err(_) => (None, None),
    }
}

#[tokio::test]
async fn sigterm_does_not_wait_forever_for_a_client_that_never_finishes_its_request() {
    let site = Site::new().await;
    let kiln = site.serve(&[]).await;
    // Half a request head: the server can neither answer nor call the connection idle.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", kiln.port))
        .await
        .expect("connect");
    stalled
        .write_all(b"GET /client/v4/openapi.json HTTP/1.1\r\nHost: kiln\r\n")
        .await
        .expect("write");
    // A round trip on another connection, so the server has read the partial head by now.
    assert_eq!(probe(kiln.port).await.0, Some(200));
    let within = kiln::startup::SHUTDOWN_GRACE + STOP_DEADLINE;
    let (status, stderr) = kiln.stop_within("TERM", within).await;
    assert!(status.success(), "exit after SIGTERM: {status}\n{stderr}");
    assert!(
        stderr.contains("grace period"),
        "the forced close should be logged:\n{stderr}"
    );
    drop(stalled);
}

#[tokio::test]
async fn serve_fails_fast_with_a_message_when_it_cannot_start() {
    let site = Site::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();

    let mut cmd = site.command();
    cmd.args(["serve", "--listen", &addr])
        .args(site.store_args());
    run(cmd)
        .await
        .assert_failed("a port in use", &format!("binding {addr}"));

    let mut cmd = site.command();
    cmd.args(["serve", "--listen", "not-an-address"])
        .args(site.store_args());
    run(cmd)
        .await
        .assert_failed("a bad listen address", "binding not-an-address");

    let mut cmd = site.command();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(site.data_dir())
        .args([
            "--database-url",
            "mysql://kiln:hunter2-db-password@127.0.0.1/kiln",
        ]);
    let run = run(cmd).await;
    run.assert_failed("an unsupported database URL", "unsupported database URL");
    assert!(
        !run.stderr.contains("hunter2-db-password"),
        "the database password was printed: {}",
        run.describe()
    );
    drop(taken);
}

#[tokio::test]
async fn bootstrap_token_writes_on_every_account_and_is_registered_once() {
    let site = Site::new().await;
    let token = "bootstrap-token-abcdefghijklmnopqr";
    let env_command = |port: u16| {
        let mut cmd = site.command();
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(site.store_args())
            .env("KILN_BOOTSTRAP_TOKEN", token);
        cmd
    };

    let kiln = Kiln::start(env_command).await;
    for account in [ACCOUNT, OTHER_ACCOUNT, "a-third-account_42"] {
        let path = format!("/accounts/{account}/builds/tokens");
        kiln.ok(token, Method::POST, &path, Some(build_token_body(account)))
            .await;
        let list = kiln.ok(token, Method::GET, &path, None).await;
        assert_eq!(list["result"].as_array().map(Vec::len), Some(1), "{list}");
    }
    let listed = site.list_tokens(&[token]).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let boot = listed[0].clone();
    assert_eq!(
        (
            boot.kind.as_str(),
            boot.permission.as_str(),
            boot.accounts.as_str(),
            boot.revoked.as_str(),
            boot.note.as_str()
        ),
        ("token", "write", "*", "-", "KILN_BOOTSTRAP_TOKEN")
    );
    kiln.stop().await;

    // Same token again, this time as a flag: still one credential, the same one.
    let kiln = site.serve(&["--bootstrap-token", token]).await;
    kiln.ok(token, Method::GET, &acct("/tokens"), None).await;
    let listed = site.list_tokens(&[token]).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, boot.id);
    kiln.stop().await;

    // And once more from the environment; a revocation is not undone by a restart.
    let kiln = Kiln::start(env_command).await;
    assert_eq!(site.list_tokens(&[token]).await.len(), 1);
    site.kiln(&["tokens", "revoke", &boot.id])
        .await
        .assert_ok("revoke the bootstrap token");
    let (st, v) = kiln.call(token, Method::GET, &acct("/tokens"), None).await;
    assert_error(st, &v, 401, 10000);
    kiln.stop().await;
    let kiln = Kiln::start(env_command).await;
    let (st, v) = kiln.call(token, Method::GET, &acct("/tokens"), None).await;
    assert_error(st, &v, 401, 10000);
    assert_eq!(site.list_tokens(&[token]).await.len(), 1);
    let stderr = kiln.stop().await;
    assert!(
        !stderr.contains(token),
        "the bootstrap token was logged:\n{stderr}"
    );
}

/// Writes `text` to a file only its owner can read; returns its path.
fn private_file(site: &Site, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = site.dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// A signed `ping` delivery to `kiln`: its status.
async fn ping(kiln: &Kiln, secret: &str) -> u16 {
    use hmac::{Hmac, Mac};
    let body = br#"{"zen":"Keep it logically awesome."}"#;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac");
    mac.update(body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let req = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/webhooks/github", kiln.port))
        .header("content-type", "application/json")
        .header("x-github-event", "ping")
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .header("x-hub-signature-256", signature)
        .body(body.to_vec());
    kiln.send(req).await.0
}

/// Issue 8: a one-character bootstrap token was accepted, and `--bootstrap-token`,
/// `--github-webhook-secret` and a `--database-url` with a password could only be given where every
/// local user reads them. A weak token now stops the start with a clear message; every secret has a
/// file form (and an environment form); one given as an argument is warned about.
/// The status of `GET /metrics` with a bearer token or none.
async fn scrape(kiln: &Kiln, token: Option<&str>) -> u16 {
    let mut req = kiln.http.get(format!("{}/metrics", kiln.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("GET /metrics").status().as_u16()
}

#[tokio::test]
async fn secrets_come_from_files_and_weak_or_visible_ones_are_reported() {
    let site = Site::new().await;
    for weak in ["x", "change-me", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"] {
        let mut cmd = site.command();
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(site.store_args())
            .env("KILN_BOOTSTRAP_TOKEN", weak);
        let refused = run(cmd).await;
        refused.assert_failed(weak, "the bootstrap token is too weak");
        assert!(
            refused.stderr.contains("openssl rand"),
            "{}",
            refused.describe()
        );
    }

    let mut cmd = site.command();
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .args(site.store_args())
        .env("KILN_METRICS_TOKEN", "metrics");
    run(cmd)
        .await
        .assert_failed("a weak metrics token", "the metrics token is too weak");

    let token = "file-bootstrap-token-7f3e2d1c0b9a8765";
    let webhook_secret = "file-webhook-secret-1e2d3c4b";
    let metrics_token = "file-metrics-token-5c4b3a2918f7e6d5";
    let token_file = private_file(&site, "bootstrap-token", &format!("{token}\n"));
    let metrics_file = private_file(&site, "metrics-token", &format!("{metrics_token}\n"));
    let url_file = private_file(
        &site,
        "database-url",
        &format!("{}\n", site.explicit_database_url()),
    );
    let webhook_file = private_file(
        &site,
        "webhook-secret",
        &format!("old-webhook-secret-9a8b7c\n{webhook_secret}\n"),
    );
    let kiln = Kiln::start(|port| {
        let mut cmd = site.command();
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(site.data_dir())
            .arg("--bootstrap-token-file")
            .arg(&token_file)
            .arg("--github-webhook-secret-file")
            .arg(&webhook_file)
            .arg("--metrics-token-file")
            .arg(&metrics_file)
            .env("KILN_DATABASE_URL_FILE", &url_file);
        cmd
    })
    .await;
    kiln.ok(token, Method::GET, &acct("/tokens"), None).await;
    assert_eq!(scrape(&kiln, None).await, 401);
    assert_eq!(
        scrape(&kiln, Some(token)).await,
        401,
        "an API token is not the metrics token"
    );
    assert_eq!(scrape(&kiln, Some(metrics_token)).await, 200);
    assert_eq!(ping(&kiln, webhook_secret).await, 200);
    assert_eq!(ping(&kiln, "old-webhook-secret-9a8b7c").await, 200);
    assert_eq!(ping(&kiln, "not-the-secret").await, 401);
    let stderr = kiln.stop().await;
    assert!(
        !stderr.contains("on the command line"),
        "a warning without a secret in the arguments:\n{stderr}"
    );
    assert!(!stderr.contains(token), "the token was logged:\n{stderr}");
    assert!(
        !stderr.contains(metrics_token),
        "the token was logged:\n{stderr}"
    );

    // The argument forms still work, each with a warning naming the file form.
    let kiln = site
        .serve(&[
            "--bootstrap-token",
            token,
            "--github-webhook-secret",
            webhook_secret,
            "--metrics-token",
            metrics_token,
        ])
        .await;
    kiln.ok(token, Method::GET, &acct("/tokens"), None).await;
    assert_eq!(scrape(&kiln, Some(metrics_token)).await, 200);
    let stderr = kiln.stop().await;
    for (flag, instead) in [
        ("--bootstrap-token", "--bootstrap-token-file"),
        ("--github-webhook-secret", "--github-webhook-secret-file"),
        ("--metrics-token", "--metrics-token-file"),
    ] {
        assert!(
            stderr.contains(&format!("{flag} was given on the command line"))
                && stderr.contains(instead),
            "no warning about {flag}:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains(token)
            && !stderr.contains(webhook_secret)
            && !stderr.contains(metrics_token),
        "{stderr}"
    );

    // A database URL with a password: the warning, never the password.
    let mut cmd = site.command();
    cmd.args(["tokens", "list", "--data-dir"])
        .arg(site.data_dir())
        .args([
            "--database-url",
            "postgres://kiln:hunter2-db-password@127.0.0.1:1/kiln",
        ]);
    let listed = run(cmd).await;
    assert!(
        listed
            .stderr
            .contains("--database-url was given on the command line")
            && listed.stderr.contains("--database-url-file"),
        "{}",
        listed.describe()
    );
    assert!(
        !listed.stderr.contains("hunter2-db-password"),
        "{}",
        listed.describe()
    );
    // A file and the argument together are refused.
    let mut cmd = site.command();
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .args(site.store_args())
        .args(["--bootstrap-token", token])
        .arg("--bootstrap-token-file")
        .arg(&token_file);
    run(cmd)
        .await
        .assert_failed("both forms", "--bootstrap-token");
}

#[tokio::test]
async fn everything_survives_a_restart_of_the_binary() {
    let site = Site::new().await;
    let admin = "restart-admin-token-0123456789abcdef";
    let kiln = site.serve(&["--bootstrap-token", admin]).await;
    let cli = site
        .create_token(&["--account", ACCOUNT, "--permission", "read"])
        .await;
    let worker = "survivor";
    let token_secret = "cf-build-token-secret-S3cr3t";
    let env_secret = "env-secret-value-Zz9";

    let conn = kiln
        .ok(admin, Method::PUT, &acct("/repos/connections"), Some(json!({
            "provider_type": "github", "provider_account_id": "1001", "provider_account_name": "octo-org",
            "repo_id": "repo-survivor", "repo_name": "survivor-repo"
        })))
        .await["result"]
        .clone();
    let token = kiln
        .ok(admin, Method::POST, &acct("/tokens"), Some(json!({
            "build_token_name": "survivor token", "build_token_secret": token_secret, "cloudflare_token_id": "cf-token-123"
        })))
        .await["result"]
        .clone();
    let trigger = kiln
        .ok(admin, Method::POST, &acct("/triggers"), Some(json!({
            "external_script_id": worker, "repo_connection_uuid": conn["repo_connection_uuid"],
            "build_token_uuid": token["build_token_uuid"], "trigger_name": "Production Deploy",
            "build_command": "npm run build", "deploy_command": "npx wrangler deploy", "root_directory": "/app",
            "branch_includes": ["main", "release/*"], "branch_excludes": ["wip"], "path_includes": ["*"],
            "path_excludes": ["*.md"], "build_caching_enabled": true
        })))
        .await["result"]
        .clone();
    let trigger_id = string(&trigger["trigger_uuid"]);
    kiln.ok(admin, Method::PATCH, &acct(&format!("/triggers/{trigger_id}/environment_variables")), Some(json!({
        "API_KEY": {"is_secret": true, "value": env_secret}, "NODE_ENV": {"is_secret": false, "value": "production"}
    })))
    .await;
    let first = kiln
        .ok(
            admin,
            Method::POST,
            &acct(&format!("/triggers/{trigger_id}/builds")),
            Some(json!({"branch": "main"})),
        )
        .await;
    let second = kiln
        .ok(
            admin,
            Method::POST,
            &acct(&format!("/triggers/{trigger_id}/builds")),
            Some(json!({"commit_hash": "abc123def456"})),
        )
        .await;
    let first_id = string(&first["result"]["build_uuid"]);
    let second_id = string(&second["result"]["build_uuid"]);
    kiln.ok(
        admin,
        Method::PUT,
        &acct(&format!("/builds/{second_id}/cancel")),
        None,
    )
    .await;
    let hook = kiln
        .ok(
            admin,
            Method::POST,
            &acct(&format!("/workers/{worker}/deploy_hooks")),
            Some(json!({
                "deploy_hook_name": "nightly", "branch": "main"
            })),
        )
        .await["result"]
        .clone();
    let hook_id = string(&hook["deploy_hook_uuid"]);

    let reads = [
        acct(&format!("/workers/{worker}/triggers")),
        acct("/tokens"),
        acct(&format!("/triggers/{trigger_id}/environment_variables")),
        acct(&format!("/builds/{first_id}")),
        acct(&format!("/builds/{second_id}")),
        acct(&format!("/builds/{first_id}/logs")),
        acct(&format!("/workers/{worker}/builds")),
        acct(&format!("/builds/latest?external_script_ids={worker}")),
        acct(&format!("/workers/{worker}/deploy_hooks")),
        acct(&format!("/workers/{worker}/deploy_hooks/{hook_id}")),
    ];
    let mut before = Vec::new();
    for path in &reads {
        before.push(kiln.ok(&cli.secret, Method::GET, path, None).await);
    }
    assert_eq!(
        before[8]["result"].as_array().map(Vec::len),
        Some(1),
        "{}",
        before[8]
    );
    assert_eq!(
        before[6]["result"].as_array().map(Vec::len),
        Some(2),
        "{}",
        before[6]
    );
    let stderr = kiln.stop().await;

    let kiln = site.serve(&[]).await;
    for (path, want) in reads.iter().zip(&before) {
        let got = kiln.ok(&cli.secret, Method::GET, path, None).await;
        assert_eq!(&got, want, "GET {path} changed across the restart");
    }
    // The bootstrap token was stored, and the connection upsert finds the same connection.
    let again = kiln
        .ok(admin, Method::PUT, &acct("/repos/connections"), Some(json!({
            "provider_type": "github", "provider_account_id": "1001", "provider_account_name": "octo-org",
            "repo_id": "repo-survivor", "repo_name": "survivor-repo"
        })))
        .await;
    assert_eq!(
        again["result"]["repo_connection_uuid"],
        conn["repo_connection_uuid"]
    );
    let stderr = stderr + &kiln.stop().await;
    for secret in [admin, cli.secret.as_str(), token_secret, env_secret] {
        assert!(
            !stderr.contains(secret),
            "the server logged a secret:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// The curl examples of the API reference
// ---------------------------------------------------------------------------------------------------

/// The placeholder uuid of the reference's examples.
const PLACEHOLDER_UUID: &str = "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e";

/// The curl commands of the ```http blocks of `seeds/002_*.txt` (via the fixture copy), joined into one line each, keyed by
/// `METHOD /path-with-$VARS` (the path below `/client/v4`).
fn seed_examples() -> HashMap<String, String> {
    // A verbatim copy of the seed's ```http blocks, so that CI does not need ../shared.
    let file =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed-curl-examples.md");
    let text = std::fs::read_to_string(&file).expect("read seed");
    let mut examples = HashMap::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("```http") {
        let after = &rest[start + "```http".len()..];
        let end = after
            .find("```")
            .unwrap_or_else(|| panic!("unterminated ```http block in {}", file.display()));
        rest = &after[end + 3..];
        // Line continuations, whether the block kept its newlines or was flattened to ` \ `.
        let command = after[..end]
            .replace("\\\r\n", " ")
            .replace("\\\n", " ")
            .split_whitespace()
            .filter(|w| *w != "\\")
            .collect::<Vec<_>>()
            .join(" ");
        let words: Vec<&str> = command.split(' ').collect();
        assert_eq!(
            words.first(),
            Some(&"curl"),
            "not a curl command: {command}"
        );
        let url = words
            .iter()
            .find(|w| w.starts_with("https://api.cloudflare.com/client/v4/"))
            .unwrap_or_else(|| panic!("no API URL in {command}"));
        let method = match words.iter().position(|w| *w == "-X" || *w == "--request") {
            Some(i) => words[i + 1].to_owned(),
            None if words.iter().any(|w| *w == "-d" || *w == "--data") => "POST".to_owned(),
            None => "GET".to_owned(),
        };
        let key = format!(
            "{method} {}",
            &url["https://api.cloudflare.com/client/v4".len()..]
        );
        assert!(
            examples.insert(key.clone(), command.clone()).is_none(),
            "two examples for {key}"
        );
    }
    assert!(
        !examples.is_empty(),
        "no ```http blocks in {}",
        file.display()
    );
    examples
}

/// Replaces the placeholder after `"field":` in a JSON body inside a shell command.
fn replace_field(command: &str, field: &str, value: &str) -> String {
    let key = format!("\"{field}\"");
    let at = command
        .find(&key)
        .unwrap_or_else(|| panic!("no {key} in {command}"));
    let value_at = at
        + command[at..]
            .find(PLACEHOLDER_UUID)
            .unwrap_or_else(|| panic!("no placeholder after {key}"));
    format!(
        "{}{value}{}",
        &command[..value_at],
        &command[value_at + PLACEHOLDER_UUID.len()..]
    )
}

/// Runs the seed examples in a sensible order against a running server.
struct CurlRunner {
    examples: HashMap<String, String>,
    base: String,
    vars: HashMap<&'static str, String>,
}

impl CurlRunner {
    /// Removes the example for `key` and returns it with the server's base URL.
    fn take(&mut self, key: &str) -> String {
        let command = self.examples.remove(key).unwrap_or_else(|| {
            panic!(
                "no seed example for {key}; have: {:?}",
                self.examples.keys()
            )
        });
        command.replace("https://api.cloudflare.com", &self.base)
    }

    /// Adds `?query` to the example's URL (quoted for the shell; `$VARS` still expand).
    fn with_query(command: &str, query: &str) -> String {
        let url = command
            .split(' ')
            .find(|w| w.contains("/client/v4/"))
            .expect("url");
        command.replacen(url, &format!("\"{url}?{query}\""), 1)
    }

    /// Runs a command with `sh -c` and the variables set; returns the status and the JSON body.
    async fn curl(&self, command: &str) -> (u16, Value) {
        let script = format!(
            "{command} --silent --show-error --noproxy '*' --write-out '\\n%{{http_code}}'"
        );
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            Command::new("sh")
                .arg("-c")
                .arg(&script)
                .envs(&self.vars)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("curl hung: {script}"))
        .expect("run sh (is curl installed?)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{script}: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, status) = stdout
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("no status line: {stdout}"));
        let status: u16 = status
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("bad status line: {stdout}"));
        let body = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{script}: {status}: not JSON ({e}): {body}"));
        (status, body)
    }

    /// Runs the example for `key` and asserts a 200 success envelope; returns `result`.
    async fn ok(&mut self, key: &str) -> Value {
        let command = self.take(key);
        self.ok_command(key, &command).await
    }

    async fn ok_command(&self, key: &str, command: &str) -> Value {
        let (status, body) = self.curl(command).await;
        assert_eq!(status, 200, "{key}: {body}");
        assert_eq!(body["success"], json!(true), "{key}: {body}");
        assert_eq!(body["errors"], json!([]), "{key}: {body}");
        body["result"].clone()
    }
}

#[tokio::test]
async fn the_curl_examples_of_the_api_reference_work_against_the_binary() {
    let examples = seed_examples();
    // 002 (the Workers Builds reference) and 004 (the public deploy-hook trigger).
    let site = Site::new().await;
    // The seed's connection names the GitHub repository Cloudflare/workers-sdk: a local copy stands in.
    let remotes = site.dir.path().join("remotes");
    let repo = remotes.join("Cloudflare").join("workers-sdk");
    std::fs::create_dir_all(&repo).expect("repo dir");
    std::fs::write(repo.join("wrangler.toml"), "name = \"my-worker\"\n").expect("write");
    std::fs::write(
        repo.join("package.json"),
        r#"{"scripts":{"build":"vite build"}}"#,
    )
    .expect("write");
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "-m",
            "init",
        ],
    ] {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .status()
            .expect("git");
        assert!(ok.success(), "git {args:?}");
    }
    let template = format!("file://{}/{{owner}}/{{repo}}", remotes.display());
    let kiln = site.serve(&["--git-url-template", &template]).await;
    let api_token = site
        .create_token(&["--account", ACCOUNT, "--permission", "write"])
        .await;
    let mut vars = HashMap::new();
    vars.insert("ACCOUNT_ID", ACCOUNT.to_owned());
    vars.insert("CLOUDFLARE_API_TOKEN", api_token.secret.clone());
    vars.insert("EXTERNAL_SCRIPT_ID", "my-worker".to_owned());
    let mut c = CurlRunner {
        examples,
        base: kiln.base.clone(),
        vars,
    };

    // Connection and build token.
    let conn = c
        .ok("PUT /accounts/$ACCOUNT_ID/builds/repos/connections")
        .await;
    c.vars.insert(
        "REPO_CONNECTION_UUID",
        string(&conn["repo_connection_uuid"]),
    );
    c.vars
        .insert("PROVIDER_TYPE", string(&conn["provider_type"]));
    c.vars
        .insert("PROVIDER_ACCOUNT_ID", string(&conn["provider_account_id"]));
    c.vars.insert("REPO_ID", string(&conn["repo_id"]));
    let token = c.ok("POST /accounts/$ACCOUNT_ID/builds/tokens").await;
    assert!(!token.to_string().contains("super-secret-token"), "{token}");
    c.vars
        .insert("BUILD_TOKEN_UUID", string(&token["build_token_uuid"]));
    let tokens = c.ok("GET /accounts/$ACCOUNT_ID/builds/tokens").await;
    assert_eq!(
        tokens[0]["build_token_uuid"], token["build_token_uuid"],
        "{tokens}"
    );
    assert!(
        !tokens.to_string().contains("super-secret-token"),
        "{tokens}"
    );

    // Trigger: the example body names the connection and the build token by the reference's placeholder
    // uuid "182bd5e5-…"; it is replaced (plain string replacement) by the ids created above.
    let create = c.take("POST /accounts/$ACCOUNT_ID/builds/triggers");
    let create = replace_field(&create, "build_token_uuid", &c.vars["BUILD_TOKEN_UUID"]);
    let create = replace_field(
        &create,
        "repo_connection_uuid",
        &c.vars["REPO_CONNECTION_UUID"],
    );
    assert!(!create.contains(PLACEHOLDER_UUID), "{create}");
    let trigger = c.ok_command("createTrigger", &create).await;
    assert_eq!(
        trigger["external_script_id"],
        json!("my-worker"),
        "{trigger}"
    );
    assert_eq!(
        trigger["repo_connection"]["repo_connection_uuid"], conn["repo_connection_uuid"],
        "{trigger}"
    );
    c.vars
        .insert("TRIGGER_UUID", string(&trigger["trigger_uuid"]));
    let listed = c
        .ok("GET /accounts/$ACCOUNT_ID/builds/workers/$EXTERNAL_SCRIPT_ID/triggers")
        .await;
    assert_eq!(
        listed[0]["trigger_uuid"], trigger["trigger_uuid"],
        "{listed}"
    );
    c.ok("PATCH /accounts/$ACCOUNT_ID/builds/triggers/$TRIGGER_UUID")
        .await;

    // Environment variables.
    let vars = c
        .ok("PATCH /accounts/$ACCOUNT_ID/builds/triggers/$TRIGGER_UUID/environment_variables")
        .await;
    assert!(
        vars.get("API_KEY").is_some() && vars.get("NODE_ENV").is_some(),
        "{vars}"
    );
    let vars = c
        .ok("GET /accounts/$ACCOUNT_ID/builds/triggers/$TRIGGER_UUID/environment_variables")
        .await;
    assert_eq!(vars["NODE_ENV"]["value"], json!("production"), "{vars}");
    assert!(
        !vars.to_string().contains("secret-key"),
        "a secret value was shown: {vars}"
    );
    c.vars
        .insert("ENVIRONMENT_VARIABLE_KEY", "API_KEY".to_owned());

    // A build, and the reads.
    let build = c
        .ok("POST /accounts/$ACCOUNT_ID/builds/triggers/$TRIGGER_UUID/builds")
        .await;
    c.vars.insert("BUILD_UUID", string(&build["build_uuid"]));
    let got = c
        .ok("GET /accounts/$ACCOUNT_ID/builds/builds/$BUILD_UUID")
        .await;
    assert_eq!(got["build_uuid"], build["build_uuid"], "{got}");
    let list = c
        .ok("GET /accounts/$ACCOUNT_ID/builds/workers/$EXTERNAL_SCRIPT_ID/builds")
        .await;
    assert_eq!(list[0]["build_uuid"], build["build_uuid"], "{list}");
    c.ok("GET /accounts/$ACCOUNT_ID/builds/builds/$BUILD_UUID/logs")
        .await;
    c.ok("GET /accounts/$ACCOUNT_ID/builds/account/limits")
        .await;

    // These two examples omit their required query parameter: 400/12002 as written, success with it.
    let latest = c.take("GET /accounts/$ACCOUNT_ID/builds/builds/latest");
    let (status, body) = c.curl(&latest).await;
    assert_error(status, &body, 400, 12002);
    assert!(body.to_string().contains("external_script_ids"), "{body}");
    let latest = CurlRunner::with_query(&latest, "external_script_ids=$EXTERNAL_SCRIPT_ID");
    let got = c.ok_command("getLatestBuildsByScripts", &latest).await;
    assert_eq!(
        got["builds"]["my-worker"]["build_uuid"], build["build_uuid"],
        "{got}"
    );
    let by_version = c.take("GET /accounts/$ACCOUNT_ID/builds/builds");
    let (status, body) = c.curl(&by_version).await;
    assert_error(status, &body, 400, 12002);
    assert!(body.to_string().contains("version_ids"), "{body}");
    let by_version = CurlRunner::with_query(
        &by_version,
        &format!("version_ids={}", uuid::Uuid::new_v4()),
    );
    let got = c.ok_command("getBuildsByVersionIds", &by_version).await;
    assert_eq!(got["builds"], json!({}), "{got}");

    // config_autofill: the example omits the required `branch` query parameter.
    let autofill = c.take("GET /accounts/$ACCOUNT_ID/builds/repos/$PROVIDER_TYPE/$PROVIDER_ACCOUNT_ID/$REPO_ID/config_autofill");
    let (status, body) = c.curl(&autofill).await;
    assert_error(status, &body, 400, 12002);
    assert!(body.to_string().contains("branch"), "{body}");
    let autofill = CurlRunner::with_query(&autofill, "branch=main");
    let got = c.ok_command("getWorkerConfigAutofill", &autofill).await;
    assert_eq!(got["config_file"], json!("wrangler.toml"), "{got}");
    assert_eq!(got["default_worker_name"], json!("my-worker"), "{got}");
    assert_eq!(got["scripts"], json!({"build": "vite build"}), "{got}");

    // Writes on the build and the trigger, then the deletes, last.
    c.ok("POST /accounts/$ACCOUNT_ID/builds/triggers/$TRIGGER_UUID/purge_build_cache")
        .await;
    let cancelled = c
        .ok("PUT /accounts/$ACCOUNT_ID/builds/builds/$BUILD_UUID/cancel")
        .await;
    assert_eq!(
        cancelled["build_outcome"],
        json!("cancelled"),
        "{cancelled}"
    );
    c.ok("DELETE /accounts/$ACCOUNT_ID/builds/triggers/$TRIGGER_UUID/environment_variables/$ENVIRONMENT_VARIABLE_KEY")
        .await;
    let vars = kiln
        .ok(
            &api_token.secret,
            Method::GET,
            &acct(&format!(
                "/triggers/{}/environment_variables",
                c.vars["TRIGGER_UUID"]
            )),
            None,
        )
        .await;
    assert!(
        vars["result"].get("API_KEY").is_none() && vars["result"].get("NODE_ENV").is_some(),
        "{vars}"
    );
    // 004: the public deploy-hook trigger (the example's X-Auth headers are ignored: no auth needed).
    let hook = kiln
        .ok(
            &api_token.secret,
            Method::POST,
            &acct("/workers/my-worker/deploy_hooks"),
            Some(json!({"deploy_hook_name": "CMS", "branch": "main"})),
        )
        .await;
    c.vars.insert(
        "DEPLOY_HOOK_UUID",
        string(&hook["result"]["deploy_hook_uuid"]),
    );
    c.vars
        .insert("CLOUDFLARE_EMAIL", "nobody@example.com".to_owned());
    c.vars.insert("CLOUDFLARE_API_KEY", "not-a-key".to_owned());
    let trigger_hook = c.take("POST /workers/builds/deploy_hooks/$DEPLOY_HOOK_UUID");
    let hooked = c.ok_command("triggerDeployHook", &trigger_hook).await;
    assert_eq!(hooked["already_exists"], json!(false), "{hooked}");
    // The build is still queued (no runners here): the same call returns it.
    let hooked_again = c
        .ok_command("triggerDeployHook (again)", &trigger_hook)
        .await;
    assert_eq!(
        hooked_again["already_exists"],
        json!(true),
        "{hooked_again}"
    );

    c.ok("DELETE /accounts/$ACCOUNT_ID/builds/triggers/$TRIGGER_UUID")
        .await;
    c.ok("DELETE /accounts/$ACCOUNT_ID/builds/tokens/$BUILD_TOKEN_UUID")
        .await;
    c.ok("DELETE /accounts/$ACCOUNT_ID/builds/repos/connections/$REPO_CONNECTION_UUID")
        .await;
    let tokens = kiln
        .ok(&api_token.secret, Method::GET, &acct("/tokens"), None)
        .await;
    assert_eq!(tokens["result"], json!([]), "{tokens}");

    assert!(
        c.examples.is_empty(),
        "seed examples not exercised: {:?}",
        c.examples.keys()
    );
    let stderr = kiln.stop().await;
    for secret in [
        api_token.secret.as_str(),
        "super-secret-token",
        "secret-key",
    ] {
        assert!(
            !stderr.contains(secret),
            "the server logged a secret ({secret}):\n{stderr}"
        );
    }
}

#[tokio::test]
async fn accounts_commands_set_limits_that_a_running_server_applies() {
    let site = Site::new().await;
    let token = "accounts-bootstrap-token-0123456789ab";
    let kiln = site.serve(&["--bootstrap-token", token]).await;
    let run = site
        .kiln(&[
            "accounts",
            "set",
            ACCOUNT,
            "--concurrency",
            "3",
            "--build-minutes",
            "0",
        ])
        .await;
    run.assert_ok("accounts set");
    // Only the build minutes change; the concurrency stays.
    site.kiln(&["accounts", "set", ACCOUNT, "--build-minutes", "0"])
        .await
        .assert_ok("accounts set minutes");
    let list = site.kiln(&["accounts", "list"]).await;
    list.assert_ok("accounts list");
    let line = list
        .stdout
        .lines()
        .find(|l| l.starts_with(ACCOUNT))
        .unwrap_or_else(|| panic!("{}", list.describe()));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols, [ACCOUNT, "3", "0"], "{line}");
    // The server reads the limit from the store: this account is out of build minutes.
    let limits = kiln
        .ok(token, Method::GET, &acct("/account/limits"), None)
        .await;
    assert_eq!(
        limits["result"]["has_reached_build_minutes_limit"],
        json!(true),
        "{limits}"
    );

    site.kiln(&["accounts", "set", ACCOUNT])
        .await
        .assert_failed("accounts set without a limit", "nothing to set");
    site.kiln(&["accounts", "set", "not an account", "--concurrency", "1"])
        .await
        .assert_failed("accounts set with a bad id", "account");
}

// ---------------------------------------------------------------------------------------------------
// kiln installations
// ---------------------------------------------------------------------------------------------------

/// A signed `push` delivery to the binary naming the GitHub App installation `installation`; returns
/// the number of builds it queued.
async fn deliver_push(kiln: &Kiln, secret: &str, delivery: &str, installation: i64) -> usize {
    use hmac::{Hmac, Mac};
    let payload = json!({"ref": "refs/heads/main", "after": "c".repeat(40),
        "repository": {"id": 4_040_404, "full_name": "octo-org/site"},
        "head_commit": {"message": "m", "author": {"email": "mona@example.com"}},
        "commits": [{"added": ["index.js"], "removed": [], "modified": []}],
        "installation": {"id": installation}});
    let body = serde_json::to_vec(&payload).expect("json");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac");
    mac.update(&body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let req = kiln
        .http
        .post(format!("{}/webhooks/github", kiln.base))
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .body(body);
    let (status, v) = kiln.send(req).await;
    assert_eq!(status, 200, "{v}");
    v["result"]["builds"].as_array().expect("builds").len()
}

#[tokio::test]
async fn installations_commands_decide_which_accounts_a_running_server_builds_pushes_for() {
    let site = Site::new().await;
    let token = "installations-bootstrap-token-0123456789";
    let secret = "installations-webhook-secret";
    let kiln = site
        .serve(&[
            "--bootstrap-token",
            token,
            "--github-webhook-secret",
            secret,
        ])
        .await;
    let conn = kiln
        .ok(
            token,
            Method::PUT,
            &acct("/repos/connections"),
            Some(json!({"provider_type": "github",
            "provider_account_id": "1", "provider_account_name": "octo-org", "repo_id": "4040404",
            "repo_name": "site"})),
        )
        .await;
    let build_token = kiln
        .ok(
            token,
            Method::POST,
            &acct("/tokens"),
            Some(build_token_body("ci")),
        )
        .await;
    kiln.ok(
        token,
        Method::POST,
        &acct("/triggers"),
        Some(json!({"external_script_id": "site",
        "repo_connection_uuid": conn["result"]["repo_connection_uuid"],
        "build_token_uuid": build_token["result"]["build_token_uuid"], "trigger_name": "prod",
        "build_command": "", "branch_includes": ["main"]})),
    )
    .await;

    // Not linked: the account's trigger does not build the installation's pushes.
    assert_eq!(deliver_push(&kiln, secret, "d-1", 31337).await, 0);
    let run = site
        .kiln(&[
            "installations",
            "link",
            "--account",
            ACCOUNT,
            "--installation",
            "31337",
        ])
        .await;
    run.assert_ok("installations link");
    assert!(run.stderr.contains("Linked"), "{}", run.describe());
    site.kiln(&[
        "installations",
        "link",
        "--account",
        OTHER_ACCOUNT,
        "--installation",
        "42",
    ])
    .await
    .assert_ok("installations link another");
    let list = site
        .kiln(&["installations", "list", "--account", ACCOUNT])
        .await;
    list.assert_ok("installations list");
    let rows: Vec<Vec<&str>> = list
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 1, "{}", list.describe());
    assert_eq!(rows[0][..2], ["31337", ACCOUNT], "{}", list.describe());
    let all = site.kiln(&["installations", "list"]).await;
    all.assert_ok("installations list");
    assert_eq!(all.stdout.lines().count(), 3, "{}", all.describe());

    // Linked: the running server builds the next push, and only a push naming that installation.
    assert_eq!(deliver_push(&kiln, secret, "d-2", 31337).await, 1);
    assert_eq!(deliver_push(&kiln, secret, "d-3", 42).await, 0);

    site.kiln(&[
        "installations",
        "unlink",
        "--account",
        ACCOUNT,
        "--installation",
        "31337",
    ])
    .await
    .assert_ok("installations unlink");
    assert_eq!(deliver_push(&kiln, secret, "d-4", 31337).await, 0);
    site.kiln(&[
        "installations",
        "unlink",
        "--account",
        ACCOUNT,
        "--installation",
        "31337",
    ])
    .await
    .assert_failed("unlinking twice", "not linked");
    site.kiln(&[
        "installations",
        "link",
        "--account",
        ACCOUNT,
        "--installation",
        "0",
    ])
    .await
    .assert_failed("a zero installation id", "installation");
    site.kiln(&[
        "installations",
        "link",
        "--account",
        "not an account",
        "--installation",
        "1",
    ])
    .await
    .assert_failed("a bad account id", "account");
    kiln.stop().await;
}

/// The soft and hard `Max open files` of process `pid`.
fn open_file_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[tokio::test]
async fn serve_raises_its_open_file_limit_and_takes_the_connection_flags() {
    let site = Site::new().await;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    let hard = limit.rlim_max;
    let low = hard.min(256);
    let kiln = Kiln::start(|port| {
        let mut cmd = site.command();
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(site.store_args())
            .args(["--max-connections", "16", "--header-read-timeout", "700ms"])
            .env("KILN_BODY_READ_TIMEOUT", "2s")
            .env("KILN_IDLE_TIMEOUT", "700ms");
        // SAFETY: setrlimit is async-signal-safe; the closure only calls it.
        unsafe {
            cmd.pre_exec(move || {
                let lowered = libc::rlimit {
                    rlim_cur: low,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        cmd
    })
    .await;
    // Started with a soft limit of 256 (or the hard one): raised to the hard limit.
    assert_eq!(open_file_limits(&kiln.pid()), (hard, hard));

    // The idle timeout of the flag: an idle connection is closed after it.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", kiln.port))
        .await
        .expect("connect");
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), idle.read_to_end(&mut rest))
        .await
        .expect("the idle connection was not closed")
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(700));
    // And a request head that never ends is closed after the header read timeout.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", kiln.port))
        .await
        .expect("connect");
    stalled
        .write_all(b"GET /client/v4/openapi.json HTTP/1.1\r\nHost: kiln\r\n")
        .await
        .expect("write");
    tokio::time::timeout(Duration::from_secs(60), stalled.read_to_end(&mut rest))
        .await
        .expect("the stalled head was not closed")
        .ok();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    kiln.stop().await;
}
