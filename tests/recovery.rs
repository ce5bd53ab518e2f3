//! Crash recovery with the real binary: `kill -9` of `kiln serve` in the middle of a build. The build
//! that was running ends `terminated` with a log line saying why, its processes are gone, and every
//! queued build still runs after the restart. A node's recovery pass leaves the builds it runs itself
//! alone, even when their leases lapsed.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const DEADLINE: Duration = Duration::from_secs(60);

struct Kiln {
    child: Child,
    base: String,
}

async fn start(data: &Path, db: Option<&str>, remotes: &Path) -> Kiln {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        // A relative data dir, like the default `./kiln-data`: builds must still find their workspace.
        let base = data.parent().expect("data dir parent");
        let relative = data.file_name().expect("data dir name");
        cmd.arg("serve")
            .current_dir(base)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(relative)
            .args([
                "--runners",
                "2",
                "--default-concurrency",
                "1",
                "--sandbox",
                "bwrap",
                "--lease",
                "3s",
            ])
            .args([
                "--git-url-template",
                &format!("file://{}/{{owner}}/{{repo}}", remotes.display()),
            ])
            .arg("--toolchain-dir")
            .arg(common::shared_toolchain_dir())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KILN_BOOTSTRAP_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(url) = db {
            cmd.args(["--database-url", url]);
        }
        let mut child = cmd.spawn().expect("spawn kiln");
        let base = format!("http://127.0.0.1:{port}/client/v4");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break; // the port was taken meanwhile: try another
            }
            if reqwest::get(format!("{base}/openapi.json"))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return Kiln { child, base };
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

impl Kiln {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
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

    async fn build(&self, id: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/builds/{id}"), None)
            .await
    }

    async fn logs(&self, id: &str) -> Vec<String> {
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

    async fn wait(&self, id: &str, what: &str, pred: impl Fn(&Value, &[String]) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
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
}

fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .count()
}

fn git(dir: &Path, args: &[&str]) {
    let ok = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "T")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "T")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

#[tokio::test]
async fn kill_9_mid_build_terminates_the_running_build_and_runs_the_queued_ones() {
    let dir = tempfile::tempdir().unwrap();
    // The build user (the tests run as root) passes through to its workspace in the data dir.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let data = dir.path().join("data");
    let remotes = dir.path().join("remotes");
    let db = fresh_database_url().await;
    let repo = remotes.join("octo-org").join("crash-repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("README.md"), "crash test\n").unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "init"]);
    git(&repo, &["branch", "slow"]);
    let marker = format!("1000.{}", &uuid::Uuid::new_v4().as_u128().to_string()[..12]);

    let mut kiln = start(&data, db.as_deref(), &remotes).await;
    use reqwest::Method;
    let conn = kiln
        .call(
            Method::PUT,
            "/repos/connections",
            Some(
                json!({"provider_type": "github", "provider_account_id": "1",
            "provider_account_name": "octo-org", "repo_id": "77", "repo_name": "crash-repo"}),
            ),
        )
        .await;
    let token = kiln
        .call(
            Method::POST,
            "/tokens",
            Some(
                json!({"build_token_name": "t", "build_token_secret": "s3cret-token",
            "cloudflare_token_id": "cf"}),
            ),
        )
        .await;
    let trigger = kiln
        .call(Method::POST, "/triggers", Some(json!({"external_script_id": "crash", "trigger_name": "prod",
            "repo_connection_uuid": conn["repo_connection_uuid"], "build_token_uuid": token["build_token_uuid"],
            "build_command": format!("case \"$WORKERS_CI_BRANCH\" in slow) echo slow-started; sleep {marker};; *) echo fast-done;; esac"),
            "deploy_command": ""})))
        .await;
    let t = s(&trigger["trigger_uuid"]);
    let slow = s(&kiln
        .call(
            Method::POST,
            &format!("/triggers/{t}/builds"),
            Some(json!({"branch": "slow"})),
        )
        .await["build_uuid"]);
    kiln.wait(&slow, "started", |b, logs| {
        b["status"] == "running" && logs.iter().any(|l| l == "slow-started")
    })
    .await;
    // The account may run one build at a time: these wait in the queue.
    let queued_a = s(&kiln
        .call(
            Method::POST,
            &format!("/triggers/{t}/builds"),
            Some(json!({"branch": "main"})),
        )
        .await["build_uuid"]);
    let queued_b = s(&kiln
        .call(
            Method::POST,
            &format!("/triggers/{t}/builds"),
            Some(json!({"commit_hash": head(&repo)})),
        )
        .await["build_uuid"]);
    assert_eq!(kiln.build(&queued_a).await["status"], "queued");
    assert_eq!(kiln.build(&queued_b).await["status"], "queued");
    assert!(processes_with(&marker) > 0);

    kiln.child.start_kill().unwrap(); // SIGKILL
    kiln.child.wait().await.unwrap();
    // The sandbox dies with its parent: nothing of the build survives the crash.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while processes_with(&marker) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "build processes survived kill -9"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let kiln = start(&data, db.as_deref(), &remotes).await;
    let b = kiln
        .wait(&slow, "terminated", |b, _| b["status"] == "stopped")
        .await;
    assert_eq!(b["build_outcome"], "terminated");
    let logs = kiln.logs(&slow).await;
    assert!(
        logs.last()
            .unwrap()
            .contains("runner running this build was lost"),
        "{logs:?}"
    );
    for id in [&queued_a, &queued_b] {
        let b = kiln.wait(id, "done", |b, _| b["status"] == "stopped").await;
        assert_eq!(b["build_outcome"], "success", "{b}");
        assert!(kiln.logs(id).await.contains(&"fast-done".to_owned()));
    }
    let all = kiln.call(Method::GET, "/workers/crash/builds", None).await;
    for b in all.as_array().unwrap() {
        assert_eq!(b["status"], "stopped", "nothing left in progress: {b}");
    }
}

fn head(dir: &Path) -> String {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A node's recovery pass skips the builds the node itself runs: a lease that lapsed because the
/// store could not take its renewal (a full disk) does not make a live build lost.
#[tokio::test]
async fn a_node_does_not_take_its_own_running_builds_for_lost() {
    use kiln::domain::{BuildId, Timestamp};
    let app = TestApp::spawn().await;
    let f = app.fixture("own-builds").await;
    let (status, body) = app
        .post(
            &app.acct(&format!("/triggers/{}/builds", f.trigger)),
            json!({"branch": "main"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let now = Timestamp::now();
    let lapsed = Timestamp::from_millis(now.millis() - 1000);
    let claimed = app
        .store()
        .claim_build("node-a/incarnation", lapsed, 2)
        .await
        .unwrap()
        .expect("a queued build");
    let id: BuildId = claimed.id;
    let lost = app
        .store()
        .recover_lost_builds(now, None, &[id])
        .await
        .unwrap();
    assert!(lost.is_empty(), "{lost:?}");
    let b = app
        .ok(
            reqwest::Method::GET,
            &app.acct(&format!("/builds/{id}")),
            None,
        )
        .await;
    assert_eq!(b["status"], "initializing", "{b}");
    // Another node (or this one once the build is no longer its own) recovers it.
    let lost = app
        .store()
        .recover_lost_builds(now, None, &[])
        .await
        .unwrap();
    assert_eq!(lost.len(), 1, "{lost:?}");
    let b = app
        .ok(
            reqwest::Method::GET,
            &app.acct(&format!("/builds/{id}")),
            None,
        )
        .await;
    assert_eq!(b["build_outcome"], "terminated", "{b}");
}
