//! `kiln serve` as a real process (the binary), for tests that kill it or run it as another user.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use super::{ACCOUNT, ADMIN_TOKEN, s};

/// The processes whose command line contains `marker` (zombies, whose command line is empty, are
/// already dead and not counted).
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        {
            found.push(pid);
        }
    }
    found
}

/// Longest a node takes to start, or a build to reach what a test waits for.
pub const NODE_DEADLINE: Duration = Duration::from_secs(60);

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `--sandbox`.
    pub sandbox: &'static str,
    /// `--database-url` (`None`: SQLite in the data dir).
    pub database_url: Option<String>,
    /// `--toolchain-dir`.
    pub toolchain_dir: PathBuf,
    /// `--runners` (build slots; 0: API only).
    pub runners: u32,
    /// `--lease`.
    pub lease: &'static str,
    /// More arguments of `kiln serve`.
    pub extra: Vec<String>,
    /// Run it as this uid and gid (through `setpriv`) instead of the test's user.
    pub as_user: Option<(u32, u32)>,
}

impl NodeOptions {
    /// 2 build slots of the shared toolchain store, in sandbox mode `sandbox`.
    pub fn new(sandbox: &'static str) -> NodeOptions {
        NodeOptions {
            sandbox,
            database_url: None,
            toolchain_dir: super::shared_toolchain_dir(),
            runners: 2,
            lease: "3s",
            extra: Vec::new(),
            as_user: None,
        }
    }
}

/// A running `kiln serve` (killed when dropped).
pub struct KilnProcess {
    pub child: Child,
    /// `http://127.0.0.1:<port>/client/v4`.
    pub base: String,
}

/// Starts `kiln serve` on a free port with its data in `data` (given relative to its working
/// directory, like the default `./kiln-data`), cloning from `remotes/<owner>/<repo>`, with the
/// options' build slots and lease and one build at a time per account; waits until it answers.
pub async fn start_kiln(data: &Path, remotes: &Path, options: &NodeOptions) -> KilnProcess {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = match options.as_user {
            Some((uid, gid)) => {
                let mut cmd = Command::new("setpriv");
                cmd.args([
                    "--reuid",
                    &uid.to_string(),
                    "--regid",
                    &gid.to_string(),
                    "--clear-groups",
                    "--",
                    env!("CARGO_BIN_EXE_kiln"),
                ]);
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_kiln")),
        };
        let base = data.parent().expect("data dir parent");
        let relative = data.file_name().expect("data dir name");
        cmd.arg("serve")
            .current_dir(base)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(relative)
            .args(["--runners", &options.runners.to_string()])
            .args(["--default-concurrency", "1", "--lease", options.lease])
            .args(["--sandbox", options.sandbox])
            .args([
                "--git-url-template",
                &format!("file://{}/{{owner}}/{{repo}}", remotes.display()),
            ])
            .arg("--toolchain-dir")
            .arg(&options.toolchain_dir)
            .args(&options.extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KILN_BOOTSTRAP_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(url) = &options.database_url {
            cmd.args(["--database-url", url]);
        }
        let mut child = cmd.spawn().expect("spawn kiln");
        let base = format!("http://127.0.0.1:{port}/client/v4");
        let deadline = tokio::time::Instant::now() + NODE_DEADLINE;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break; // the port was taken meanwhile: try another
            }
            if reqwest::get(format!("{base}/openapi.json"))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return KilnProcess { child, base };
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "kiln serve did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("could not start kiln serve");
}

impl KilnProcess {
    /// Calls `…/accounts/{ACCOUNT}/builds{path}` with the admin token; asserts success, returns `result`.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = reqwest::Client::new()
            .request(
                method.clone(),
                format!("{}/accounts/{ACCOUNT}/builds{path}", self.base),
            )
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        assert_eq!(v["success"], true, "{method} {path}: {v}");
        v["result"].clone()
    }

    pub async fn build(&self, id: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/builds/{id}"), None)
            .await
    }

    /// The first page of the build's log lines.
    pub async fn logs(&self, id: &str) -> Vec<String> {
        let r = self
            .call(reqwest::Method::GET, &format!("/builds/{id}/logs"), None)
            .await;
        r["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| s(&l[1]))
            .collect()
    }

    /// Polls until `pred` holds for the build and its log, or panics after [`NODE_DEADLINE`].
    pub async fn wait(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&Value, &[String]) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + NODE_DEADLINE;
        loop {
            let (b, logs) = (self.build(id).await, self.logs(id).await);
            if pred(&b, &logs) {
                return b;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "build {id} never {what}: {b} {logs:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A connection to `octo-org/<repo>`, a build token and a trigger running `build_command`;
    /// returns the trigger's id.
    pub async fn trigger(&self, repo: &str, repo_id: &str, build_command: &str) -> String {
        self.trigger_with(
            repo,
            repo_id,
            serde_json::json!({"build_command": build_command}),
        )
        .await
    }

    /// A connection to `octo-org/<repo>`, a build token and a trigger of Worker `<repo>` without
    /// commands, `extra` fields merged into its body; returns the trigger's id.
    pub async fn trigger_with(&self, repo: &str, repo_id: &str, extra: Value) -> String {
        use reqwest::Method;
        let conn = self
            .call(
                Method::PUT,
                "/repos/connections",
                Some(
                    serde_json::json!({"provider_type": "github", "provider_account_id": "1",
                    "provider_account_name": "octo-org", "repo_id": repo_id, "repo_name": repo}),
                ),
            )
            .await;
        let token = self
            .call(
                Method::POST,
                "/tokens",
                Some(serde_json::json!({"build_token_name": "t", "build_token_secret": "s3cret-token",
                    "cloudflare_token_id": "cf"})),
            )
            .await;
        let mut body = serde_json::json!({"external_script_id": repo, "trigger_name": "prod",
            "repo_connection_uuid": conn["repo_connection_uuid"],
            "build_token_uuid": token["build_token_uuid"], "build_command": "", "deploy_command": ""});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let trigger = self.call(Method::POST, "/triggers", Some(body)).await;
        s(&trigger["trigger_uuid"])
    }
}
