//! Crash recovery with the real binary: `kill -9` of `kiln serve` in the middle of a build. The build
//! that was running ends `terminated` with a log line saying why, its processes are gone (in both
//! sandbox modes, before another node reports it ended), and every queued build still runs after the
//! restart. A node's recovery pass leaves the builds it runs itself alone, even when their leases
//! lapsed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

const DEADLINE: Duration = NODE_DEADLINE;

async fn start(data: &Path, db: Option<&str>, remotes: &Path) -> KilnProcess {
    start_node(data, db, remotes, "bwrap").await
}

/// `kiln serve` in sandbox mode `sandbox` on `db` (`None`: SQLite in the data dir).
async fn start_node(
    data: &Path,
    db: Option<&str>,
    remotes: &Path,
    sandbox: &'static str,
) -> KilnProcess {
    let mut options = NodeOptions::new(sandbox);
    options.database_url = db.map(str::to_owned);
    start_kiln(data, remotes, &options).await
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
    init_repo(&repo, &[("README.md", "crash test\n")], "init");
    git(&repo, &["branch", "slow"]);
    let marker = format!("1000.{}", &uuid::Uuid::new_v4().as_u128().to_string()[..12]);

    let mut kiln = start(&data, db.as_deref(), &remotes).await;
    use reqwest::Method;
    let t = kiln
        .trigger_with("crash-repo", "77", json!({"external_script_id": "crash",
            "build_command": format!("case \"$WORKERS_CI_BRANCH\" in slow) echo slow-started; sleep {marker};; *) echo fast-done;; esac")}))
        .await;

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
    assert!(!processes_with(&marker).is_empty());

    kiln.child.start_kill().unwrap(); // SIGKILL
    kiln.child.wait().await.unwrap();
    // The sandbox dies with its parent: nothing of the build survives the crash.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !processes_with(&marker).is_empty() {
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

/// The input: with `--sandbox none`, `kill -9` of a node left its build's processes running
/// to the end (even deploying) after another node had reported the build `terminated`. Now the
/// node that recovers the build kills what is left of it on this host first: a step that sleeps then
/// writes marker files (in the foreground, in the background, and in a `setsid` daemon) never
/// writes them, and no process of the build is left once it is reported ended.
#[tokio::test]
async fn kill_9_of_a_node_without_the_sandbox_leaves_no_process_of_its_build() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let remotes = dir.path().join("remotes");
    let repo = remotes.join("octo-org").join("orphan-repo");
    init_repo(&repo, &[("README.md", "orphans\n")], "init");
    // Both nodes share one database (SQLite outside either data dir, or PostgreSQL).
    let db = shared_database(dir.path()).await;
    // Where the build would leave its marks (writable by the build user).
    let marks = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        marks.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let m = marks.path().display();
    // Long enough for the lease (3 s) to expire and the build to be recovered first.
    let sleep = format!("12.{}", &uuid::Uuid::new_v4().as_u128().to_string()[..9]);
    let command = format!(
        "(sleep {sleep}; touch {m}/background) & setsid sh -c 'sleep {sleep}; touch {m}/daemon' & echo started; sleep {sleep}; touch {m}/foreground"
    );

    let mut a = start_node(&dir.path().join("data-a"), db.as_deref(), &remotes, "none").await;
    use reqwest::Method;
    let conn = a
        .call(
            Method::PUT,
            "/repos/connections",
            Some(
                json!({"provider_type": "github", "provider_account_id": "1",
            "provider_account_name": "octo-org", "repo_id": "78", "repo_name": "orphan-repo"}),
            ),
        )
        .await;
    let token = a
        .call(
            Method::POST,
            "/tokens",
            Some(
                json!({"build_token_name": "t", "build_token_secret": "s3cret-token",
            "cloudflare_token_id": "cf"}),
            ),
        )
        .await;
    let trigger = a
        .call(Method::POST, "/triggers", Some(json!({"external_script_id": "orphan", "trigger_name": "prod",
            "repo_connection_uuid": conn["repo_connection_uuid"], "build_token_uuid": token["build_token_uuid"],
            "build_command": command, "deploy_command": format!("touch {m}/deployed")})))
        .await;
    let t = s(&trigger["trigger_uuid"]);
    let id = s(&a
        .call(
            Method::POST,
            &format!("/triggers/{t}/builds"),
            Some(json!({"branch": "main"})),
        )
        .await["build_uuid"]);
    let started = tokio::time::Instant::now();
    a.wait(&id, "started", |b, logs| {
        b["status"] == "running" && logs.iter().any(|l| l == "started")
    })
    .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while processes_with(&sleep).len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sleeps never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another node, running when the first dies: it recovers the build.
    let b = start_node(&dir.path().join("data-b"), db.as_deref(), &remotes, "none").await;
    a.child.start_kill().unwrap(); // SIGKILL
    a.child.wait().await.unwrap();

    let build = b
        .wait(&id, "terminated", |b, _| b["status"] == "stopped")
        .await;
    // Reported ended: nothing of it runs any more.
    assert_eq!(
        processes_with(&sleep),
        Vec::<u32>::new(),
        "processes of the ended build survived"
    );
    assert_eq!(build["build_outcome"], "terminated", "{build}");
    assert!(
        b.logs(&id)
            .await
            .last()
            .unwrap()
            .contains("runner running this build was lost")
    );
    // Past the time the step would have written its marks: none appears.
    let until = started + Duration::from_secs(15);
    tokio::time::sleep_until(until).await;
    let left: Vec<_> = std::fs::read_dir(marks.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the killed build wrote {left:?}");
    assert_eq!(processes_with(&sleep), Vec::<u32>::new());
}
