//! Running builds in tests: repositories made with real `git`, servers with build runners, queuing
//! builds through the API and waiting for them, reading their logs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln::sandbox::SandboxMode;
use reqwest::Method;
use serde_json::{Value, json};

use super::{TestApp, s};

/// Longest any build in these tests may take before the test gives up.
pub const BUILD_DEADLINE: Duration = Duration::from_secs(60);

pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Dev Eloper")
        .env("GIT_AUTHOR_EMAIL", "developer@example.com")
        .env("GIT_COMMITTER_NAME", "Dev Eloper")
        .env("GIT_COMMITTER_EMAIL", "developer@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new repository at `dir` (created) on branch `main` with one commit of `files`
/// (`(path, content)`), its message `message`.
pub fn init_repo(dir: &Path, files: &[(&str, &str)], message: &str) {
    std::fs::create_dir_all(dir).expect("create the repository's directory");
    git(dir, &["init", "-q", "-b", "main"]);
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("a file below the repository"))
            .expect("create a directory of the repository");
        std::fs::write(path, content).expect("write a file of the repository");
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
}

/// Creates (or adds a commit to) the repository the fixture of `worker` connects to.
pub fn commit_files(app: &TestApp, worker: &str, files: &[(&str, &str)], message: &str) -> PathBuf {
    let dir = app
        .git_remotes()
        .join("octo-org")
        .join(format!("{worker}-repo"));
    if !dir.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
    }
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", message]);
    dir
}

pub fn head(dir: &Path) -> String {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub async fn spawn_runner(
    mode: SandboxMode,
    tweak: impl FnOnce(&mut kiln::startup::ServeConfig),
) -> TestApp {
    TestApp::spawn_with(|c| {
        c.scheduler.runners = 2;
        c.scheduler.default_concurrency = 2;
        c.runner.sandbox = mode;
        c.runner.cancel_grace = Duration::from_secs(2);
        tweak(c);
    })
    .await
}

pub async fn set_commands(app: &TestApp, trigger: &str, build: &str, deploy: &str) {
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{trigger}")),
        Some(json!({"build_command": build, "deploy_command": deploy})),
    )
    .await;
}

pub async fn queue(app: &TestApp, trigger: &str, body: Value) -> String {
    let r = app
        .ok(
            Method::POST,
            &app.acct(&format!("/triggers/{trigger}/builds")),
            Some(body),
        )
        .await;
    s(&r["build_uuid"])
}

pub async fn get_build(app: &TestApp, id: &str) -> Value {
    app.ok(Method::GET, &app.acct(&format!("/builds/{id}")), None)
        .await
}

/// Polls until `pred` holds for the build, or panics after the deadline.
pub async fn wait_for(app: &TestApp, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for_within(app, id, what, BUILD_DEADLINE, pred).await
}

/// [`wait_for`] with another deadline (builds that install real dependencies take longer).
pub async fn wait_for_within(
    app: &TestApp,
    id: &str,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let b = get_build(app, id).await;
        if pred(&b) {
            return b;
        }
        if tokio::time::Instant::now() > deadline {
            let logs = all_logs(app, id).await;
            panic!(
                "build {id} never became {what}: {b}\nlogs:\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_stopped(app: &TestApp, id: &str) -> Value {
    wait_for(app, id, "stopped", |b| b["status"] == "stopped").await
}

/// Every log line of a build, paged with the cursor.
pub async fn all_logs(app: &TestApp, id: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = if cursor.is_empty() {
            app.acct(&format!("/builds/{id}/logs"))
        } else {
            app.acct(&format!("/builds/{id}/logs?cursor={cursor}"))
        };
        let r = app.ok(Method::GET, &path, None).await;
        for l in r["lines"].as_array().unwrap() {
            assert!(l[0].is_number(), "{l}");
            lines.push(s(&l[1]));
        }
        cursor = s(&r["cursor"]);
        if r["truncated"] != json!(true) {
            return lines;
        }
    }
}

/// Waits until a log line equal to `line` is readable (equal: the command echoing it is logged too).
pub async fn wait_log(app: &TestApp, id: &str, line: &str) {
    let deadline = tokio::time::Instant::now() + BUILD_DEADLINE;
    while !all_logs(app, id).await.iter().any(|l| l == line) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line {line:?} in build {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
