//! The queue explanation of `getBuildByUuid` (a Kiln extension): why a queued build waits, its place
//! in the queue and when it should start; absent once the build has left the queue.

mod common;

use common::*;
use kiln::domain::AccountId;
use kiln::sandbox::SandboxMode;
use reqwest::Method;
use serde_json::{Value, json};

fn millis(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&s(v))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
        .timestamp_millis()
}

fn marker() -> String {
    format!("1000.{}", &uuid::Uuid::new_v4().as_u128().to_string()[..12])
}

/// A trigger whose `slow` branch sleeps (until cancelled) and whose other builds end at once, and a
/// finished build of it: the history estimates are made from. Returns the trigger, the repository and
/// that build's duration in milliseconds.
async fn slow_and_fast(app: &TestApp, worker: &str) -> (String, std::path::PathBuf, i64) {
    let f = app.fixture(worker).await;
    let dir = commit_files(app, worker, &[("README.md", "x")], "init");
    git(&dir, &["branch", "slow"]);
    let m = marker();
    set_commands(
        app,
        &f.trigger,
        &format!("case \"$WORKERS_CI_BRANCH\" in slow) echo slow-started; sleep {m};; *) echo fast;; esac"),
        "",
    )
    .await;
    let first = queue(app, &f.trigger, json!({"branch": "main"})).await;
    let done = wait_stopped(app, &first).await;
    assert_eq!(done["build_outcome"], "success", "{done}");
    assert!(done.get("queue").is_none(), "{done}");
    let took = millis(&done["stopped_on"]) - millis(&done["initializing_on"]);
    (f.trigger, dir, took)
}

/// The case: an account that may run one build at a time, a long build running, two queued
/// behind it.
#[tokio::test]
async fn a_build_held_by_its_accounts_limit_says_so_with_its_place_and_start() {
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let account = AccountId::parse(ACCOUNT).unwrap();
    app.store()
        .set_account_limits(&account, Some(1), None)
        .await
        .unwrap();
    let (trigger, dir, took) = slow_and_fast(&app, "limited").await;
    let slow = queue(&app, &trigger, json!({"branch": "slow"})).await;
    wait_log(&app, &slow, "slow-started").await;
    let running = get_build(&app, &slow).await;
    assert!(running.get("queue").is_none(), "{running}");

    let head = head(&dir);
    let second = queue(&app, &trigger, json!({"commit_hash": head})).await;
    let third = queue(&app, &trigger, json!({"commit_hash": head})).await;
    let b = get_build(&app, &second).await;
    let asked = chrono::Utc::now().timestamp_millis();
    assert_eq!(b["status"], "queued");
    // The seed's fields are all there, as they were.
    for field in [
        "build_uuid",
        "status",
        "build_outcome",
        "created_on",
        "trigger",
        "build_trigger_metadata",
    ] {
        assert!(b.get(field).is_some(), "{field} missing: {b}");
    }
    let q = &b["queue"];
    assert_eq!(q["reason"], "account_concurrency_limit", "{b}");
    assert!(s(&q["message"]).contains("1 of its 1"), "{q}");
    assert_eq!(q["position"], 1, "{q}");
    // When the slow build should end by the trigger's history (or now, if it is past that).
    let started = millis(&running["initializing_on"]);
    let slot_frees = |estimate: i64, asked: i64| {
        assert!(
            estimate >= started + took,
            "{estimate} < {started} + {took}"
        );
        assert!(
            estimate == started + took || estimate <= asked,
            "{estimate}: neither {started} + {took} nor by {asked}"
        );
    };
    slot_frees(millis(&q["estimated_start_on"]), asked);

    let c = get_build(&app, &third).await;
    let asked = chrono::Utc::now().timestamp_millis();
    let q3 = &c["queue"];
    assert_eq!(q3["reason"], "account_concurrency_limit", "{c}");
    assert_eq!(q3["position"], 2, "{q3}");
    // One build of the trigger's usual duration after the second's start.
    slot_frees(millis(&q3["estimated_start_on"]) - took, asked);

    // Once the slot frees, the second starts and has no queue any more; the third moves up.
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{slow}/cancel")),
        None,
    )
    .await;
    let started = wait_for(&app, &second, "out of the queue", |b| {
        b["status"] != "queued"
    })
    .await;
    assert!(started.get("queue").is_none(), "{started}");
    let waiting = get_build(&app, &third).await;
    if waiting["status"] == "queued" {
        assert_eq!(waiting["queue"]["position"], 1, "{waiting}");
    }
    // A list shows builds as the seed does.
    let list = app
        .ok(Method::GET, &app.acct("/workers/limited/builds"), None)
        .await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|b| b.get("queue").is_none()),
        "{list}"
    );
    wait_stopped(&app, &third).await;
    app.stop().await;
}

/// Every runner slot busy: the build waits for a runner, though its account could run more.
#[tokio::test]
async fn a_build_waits_for_a_runner_when_every_slot_is_busy() {
    let app = spawn_runner(SandboxMode::None, |c| {
        c.scheduler.runners = 1;
    })
    .await;
    let (trigger, dir, took) = slow_and_fast(&app, "busy").await;
    let slow = queue(&app, &trigger, json!({"branch": "slow"})).await;
    wait_log(&app, &slow, "slow-started").await;
    let running = get_build(&app, &slow).await;
    let waiting = queue(&app, &trigger, json!({"commit_hash": head(&dir)})).await;
    let b = get_build(&app, &waiting).await;
    let q = &b["queue"];
    assert_eq!(q["reason"], "no_free_runner", "{b}");
    assert!(s(&q["message"]).contains("All 1 build slots"), "{q}");
    assert_eq!(q["position"], 1, "{q}");
    let estimate = millis(&q["estimated_start_on"]);
    assert!(
        estimate >= millis(&running["initializing_on"]) + took,
        "{q}"
    );
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{slow}/cancel")),
        None,
    )
    .await;
    wait_stopped(&app, &waiting).await;
    app.stop().await;
}

/// No node runs builds: the builds wait for a runner, in order, with no estimate.
#[tokio::test]
async fn without_runner_nodes_builds_wait_in_order_with_no_estimate() {
    let app = TestApp::spawn().await;
    let f = app.fixture("no-runners").await;
    let first = queue(
        &app,
        &f.trigger,
        json!({"commit_hash": "0123456789abcdef0123456789abcdef01234567"}),
    )
    .await;
    let second = queue(
        &app,
        &f.trigger,
        json!({"commit_hash": "0123456789abcdef0123456789abcdef01234567"}),
    )
    .await;
    for (id, position) in [(&first, 1), (&second, 2)] {
        let b = get_build(&app, id).await;
        let q = &b["queue"];
        assert_eq!(q["reason"], "no_free_runner", "{b}");
        assert!(s(&q["message"]).contains("No runner node"), "{q}");
        assert_eq!(q["position"], position, "{q}");
        assert_eq!(q["estimated_start_on"], Value::Null, "{q}");
    }
    // A runner node announces its slots while it runs and withdraws them when it stops. (The
    // account may run nothing meanwhile, so that the node leaves the builds queued.)
    let account = AccountId::parse(ACCOUNT).unwrap();
    app.store()
        .set_account_limits(&account, Some(0), None)
        .await
        .unwrap();
    let slots = |app: &TestApp| {
        let store = app.store().clone();
        let id = kiln::domain::BuildId::parse("b", &first).unwrap();
        let account = account.clone();
        async move {
            let view = store
                .queue_view(&account, id, 2)
                .await
                .unwrap()
                .expect("queued");
            (view.snapshot.runner_nodes, view.snapshot.runner_slots)
        }
    };
    assert_eq!(slots(&app).await, (0, 0));
    let runner = spawn_runner(SandboxMode::None, |c| {
        c.store.database_url = app
            .config
            .store
            .database_url
            .clone()
            .or_else(|| Some(kiln::store::Store::sqlite_url(&app.data_dir())));
        c.scheduler.runners = 3;
    })
    .await;
    assert_eq!(slots(&app).await, (1, 3));
    let b = get_build(&app, &first).await;
    assert_eq!(b["queue"]["reason"], "account_concurrency_limit", "{b}");
    assert!(s(&b["queue"]["message"]).contains("0 of its 0"), "{b}");
    runner.stop().await;
    assert_eq!(slots(&app).await, (0, 0));
    app.store()
        .set_account_limits(&account, Some(2), None)
        .await
        .unwrap();
    // Cancelled: out of the queue.
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{first}/cancel")),
        None,
    )
    .await;
    assert!(get_build(&app, &first).await.get("queue").is_none());
    assert_eq!(get_build(&app, &second).await["queue"]["position"], 1);
    app.stop().await;
}
