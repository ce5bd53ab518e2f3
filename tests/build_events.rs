//! The build events outbox (issue 9, "one owner of build state"): every status change of a build,
//! whatever makes it (a manual build, a webhook push, a deploy hook, a Worker build configuration,
//! a claim, a runner, a cancel, a supersede, a timeout, a lost runner, an unreadable build), appends
//! exactly one event in the transaction that made it, in order; a change the build's state does not
//! allow appends nothing.

mod common;

use std::time::Duration;

use common::*;
use kiln::domain::{BuildId, BuildOutcome, Timestamp};
use kiln::sandbox::SandboxMode;
use kiln::store::Store;
use reqwest::Method;
use serde_json::{Value, json};

const OWNER: &str = "test-node/incarnation";
/// Builds claimed here never wait for an account slot.
const CONCURRENCY: i64 = 100;

/// (build, status, outcome) of each event after `after`, oldest first.
async fn events_after(store: &Store, after: i64) -> Vec<(String, String, Option<String>)> {
    let mut all = Vec::new();
    let mut cursor = after;
    // Small pages: paging must neither skip nor repeat an event.
    loop {
        let page = store.build_events_after(cursor, 3).await.expect("events");
        let Some(last) = page.last() else { return all };
        assert!(page.len() <= 3);
        assert!(page.windows(2).all(|w| w[0].seq < w[1].seq), "{page:?}");
        cursor = last.seq;
        all.extend(page.into_iter().map(|e| {
            (
                e.build.to_string(),
                e.status.as_str().to_owned(),
                e.outcome.map(|o| o.as_str().to_owned()),
            )
        }));
    }
}

fn ev(build: &str, status: &str, outcome: Option<&str>) -> (String, String, Option<String>) {
    (
        build.to_owned(),
        status.to_owned(),
        outcome.map(str::to_owned),
    )
}

fn lease(secs: i64) -> Timestamp {
    Timestamp::from_millis(Timestamp::now().millis() + secs * 1000)
}

async fn claim(store: &Store, until: Timestamp) -> String {
    store
        .claim_build(OWNER, until, CONCURRENCY)
        .await
        .expect("claim")
        .expect("a queued build")
        .id
        .to_string()
}

fn id(s: &str) -> BuildId {
    BuildId::from_stored(s).expect("build id")
}

async fn cancel(app: &TestApp, build: &str) {
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{build}/cancel")),
        None,
    )
    .await;
}

/// Seals garbage in place of a queued build's secrets, as a changed secret key leaves them.
async fn make_unreadable(app: &TestApp, build: &str) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let url = app
        .config
        .store
        .database_url
        .clone()
        .unwrap_or_else(|| Store::sqlite_url(&app.data_dir()));
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
    sqlx::query("UPDATE builds SET secrets_enc = $1 WHERE uuid = $2")
        .bind(vec![7_u8; 40])
        .bind(build)
        .execute(&mut conn)
        .await
        .expect("corrupt the build's secrets");
    conn.close().await.ok();
}

const WORKER: &str = "events-worker";
const REPO_ID: u64 = 771_203_559;
const INSTALLATION: i64 = 7_310_551;

/// A signed GitHub push of `branch` to the Worker configuration's repository; the builds it queued.
async fn push(app: &TestApp, branch: &str) -> Vec<String> {
    let payload = push_payload(REPO_ID, INSTALLATION, branch, &"a".repeat(40));
    deliver_accepted(app, "push", &payload).await
}

/// Every kind of change, one after the other, against the exact list of events it must append.
#[tokio::test]
async fn every_change_of_a_build_appends_exactly_one_event_in_order() {
    let app = TestApp::spawn().await;
    let store = app.store().clone();
    let f = app.fixture("events").await;
    let start = store.last_build_event_seq().await.expect("last seq");
    assert_eq!(start, 0, "a fresh store has no events");
    let mut want = Vec::new();

    // Queue, and supersede: a newer build of the branch skips the queued one.
    let a = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    want.push(ev(&a, "queued", None));
    let b = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    want.push(ev(&b, "queued", None));
    want.push(ev(&a, "stopped", Some("skipped")));

    // Claim, run, success; then changes the state no longer allows append nothing.
    assert_eq!(claim(&store, lease(60)).await, b);
    want.push(ev(&b, "initializing", None));
    assert!(store.set_build_running(id(&b), OWNER).await.unwrap());
    want.push(ev(&b, "running", None));
    assert!(
        !store
            .set_build_running(id(&b), "another/owner")
            .await
            .unwrap(),
        "only the owner"
    );
    assert!(
        store
            .finish_build(id(&b), OWNER, BuildOutcome::Success)
            .await
            .unwrap()
    );
    want.push(ev(&b, "stopped", Some("success")));
    assert!(
        !store
            .finish_build(id(&b), OWNER, BuildOutcome::Fail)
            .await
            .unwrap()
    );
    assert!(!store.set_build_running(id(&b), OWNER).await.unwrap());
    let (status, body) = app
        .call(
            Method::PUT,
            &app.acct(&format!("/builds/{b}/cancel")),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 409, "cancelling a stopped build: {body}");

    // Fail, from initializing (the runner failed before the steps).
    let c = queue(&app, &f.trigger, json!({"branch": "c"})).await;
    want.push(ev(&c, "queued", None));
    assert_eq!(claim(&store, lease(60)).await, c);
    want.push(ev(&c, "initializing", None));
    assert!(
        store
            .finish_build(id(&c), OWNER, BuildOutcome::Fail)
            .await
            .unwrap()
    );
    want.push(ev(&c, "stopped", Some("fail")));

    // Cancel a queued build.
    let d = queue(&app, &f.trigger, json!({"branch": "d"})).await;
    want.push(ev(&d, "queued", None));
    cancel(&app, &d).await;
    want.push(ev(&d, "stopped", Some("cancelled")));

    // Cancel a running build: its runner's own outcome comes too late and changes nothing.
    let e = queue(&app, &f.trigger, json!({"branch": "e"})).await;
    want.push(ev(&e, "queued", None));
    assert_eq!(claim(&store, lease(60)).await, e);
    want.push(ev(&e, "initializing", None));
    assert!(store.set_build_running(id(&e), OWNER).await.unwrap());
    want.push(ev(&e, "running", None));
    cancel(&app, &e).await;
    want.push(ev(&e, "stopped", Some("cancelled")));
    assert!(
        !store
            .finish_build(id(&e), OWNER, BuildOutcome::Cancelled)
            .await
            .unwrap()
    );

    // A timeout: the runner ends the build `terminated` (the real one is in the runner test below).
    let g = queue(&app, &f.trigger, json!({"branch": "g"})).await;
    want.push(ev(&g, "queued", None));
    assert_eq!(claim(&store, lease(60)).await, g);
    want.push(ev(&g, "initializing", None));
    assert!(store.set_build_running(id(&g), OWNER).await.unwrap());
    want.push(ev(&g, "running", None));
    assert!(
        store
            .finish_build(id(&g), OWNER, BuildOutcome::Terminated)
            .await
            .unwrap()
    );
    want.push(ev(&g, "stopped", Some("terminated")));

    // A lost runner: its lease lapsed and recovery ends the build; its late outcome changes nothing.
    let h = queue(&app, &f.trigger, json!({"branch": "h"})).await;
    want.push(ev(&h, "queued", None));
    assert_eq!(claim(&store, lease(-1)).await, h);
    want.push(ev(&h, "initializing", None));
    let lost = store
        .recover_lost_builds(Timestamp::now(), None, &[])
        .await
        .unwrap();
    assert_eq!(lost.len(), 1, "{lost:?}");
    want.push(ev(&h, "stopped", Some("terminated")));
    assert!(
        !store
            .finish_build(id(&h), OWNER, BuildOutcome::Success)
            .await
            .unwrap()
    );
    assert!(
        store
            .recover_lost_builds(Timestamp::now(), None, &[])
            .await
            .unwrap()
            .is_empty()
    );

    // A build whose stored settings cannot be read fails when claimed.
    let u = queue(&app, &f.trigger, json!({"branch": "u"})).await;
    want.push(ev(&u, "queued", None));
    make_unreadable(&app, &u).await;
    assert!(
        store
            .claim_build(OWNER, lease(60), CONCURRENCY)
            .await
            .unwrap()
            .is_none()
    );
    want.push(ev(&u, "stopped", Some("fail")));

    // A deploy hook queues a build.
    let hook = app
        .ok(
            Method::POST,
            &app.acct("/workers/events/deploy_hooks"),
            Some(json!({"deploy_hook_name": "CMS", "branch": "main"})),
        )
        .await;
    let resp = app
        .client
        .post(app.url(&format!(
            "/workers/builds/deploy_hooks/{}",
            s(&hook["deploy_hook_uuid"])
        )))
        .send()
        .await
        .expect("call hook");
    let called: Value = resp.json().await.expect("json");
    assert_eq!(called["result"]["status"], "queued", "{called}");
    let k = s(&called["result"]["build_uuid"]);
    want.push(ev(&k, "queued", None));
    cancel(&app, &k).await;
    want.push(ev(&k, "stopped", Some("cancelled")));

    // A Worker build configuration: a push builds it; deleting the configuration cancels its
    // queued build and its running one.
    let token = app
        .ok(
            Method::POST,
            &app.acct("/tokens"),
            Some(
                json!({"build_token_name": "wb", "build_token_secret": "cf-wb-secret-9Zq",
                "cloudflare_token_id": "cf-wb"}),
            ),
        )
        .await;
    let (status, created) = app
        .post(
            &app.acct("/workers"),
            json!({"script_tag": WORKER,
                "git_repository": {"branch": "main", "provider_account_id": 6811672,
                    "provider_account_name": "acme", "provider_type": "github", "repo_id": REPO_ID,
                    "repo_name": "site"},
                "production_settings": {"build_caching_enabled": false, "build_command": "npm run build",
                    "build_token_uuid": token["build_token_uuid"], "deploy_command": "npx wrangler deploy",
                    "path_excludes": [], "path_includes": ["*"], "root_directory": "/"}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    app.link_installation(ACCOUNT, INSTALLATION).await;
    let running = push(&app, "main").await;
    assert_eq!(running.len(), 1, "{running:?}");
    let running = running[0].clone();
    want.push(ev(&running, "queued", None));
    assert_eq!(claim(&store, lease(60)).await, running);
    want.push(ev(&running, "initializing", None));
    assert!(store.set_build_running(id(&running), OWNER).await.unwrap());
    want.push(ev(&running, "running", None));
    let waiting = push(&app, "main").await;
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    let waiting = waiting[0].clone();
    want.push(ev(&waiting, "queued", None));
    app.ok(
        Method::DELETE,
        &app.acct(&format!("/workers/{WORKER}")),
        None,
    )
    .await;
    want.push(ev(&waiting, "stopped", Some("cancelled")));
    want.push(ev(&running, "stopped", Some("cancelled")));

    // Deleting a trigger cancels its queued builds.
    let t = queue(&app, &f.trigger, json!({"branch": "t"})).await;
    want.push(ev(&t, "queued", None));
    app.ok(
        Method::DELETE,
        &app.acct(&format!("/triggers/{}", f.trigger)),
        None,
    )
    .await;
    want.push(ev(&t, "stopped", Some("cancelled")));

    let got = events_after(&store, start).await;
    assert_eq!(got, want);
    assert_eq!(
        store.last_build_event_seq().await.unwrap(),
        store
            .build_events_after(start, 1000)
            .await
            .unwrap()
            .last()
            .unwrap()
            .seq
    );
    // Each build's last event is the state the API shows.
    for (build, status, outcome) in &want {
        let last = want.iter().rev().find(|(b, _, _)| b == build).unwrap();
        if (build, status, outcome) != (&last.0, &last.1, &last.2) {
            continue;
        }
        let shown = get_build(&app, build).await;
        assert_eq!(shown["status"], json!(status), "{shown}");
        assert_eq!(shown["build_outcome"], json!(outcome), "{shown}");
    }
    app.stop().await;
}

/// The changes a real runner makes: a build that succeeds, one cancelled while its command runs,
/// and one past the build timeout each append exactly their lifecycle's events.
#[tokio::test]
async fn a_runner_s_changes_append_one_event_each() {
    let app = spawn_runner(SandboxMode::None, |c| {
        c.runner.build_timeout = Duration::from_secs(20);
    })
    .await;
    let store = app.store().clone();
    let f = app.fixture("runner-events").await;
    commit_files(&app, "runner-events", &[("README.md", "x")], "init");
    let dir = app
        .git_remotes()
        .join("octo-org")
        .join("runner-events-repo");
    git(&dir, &["branch", "slow"]);
    git(&dir, &["branch", "stuck"]);
    let sleep = format!("1000.{}", &uuid::Uuid::new_v4().as_u128().to_string()[..9]);
    set_commands(
        &app,
        &f.trigger,
        &format!(
            "case \"$WORKERS_CI_BRANCH\" in slow) echo started; sleep {sleep};; stuck) echo stuck; sleep {sleep};; *) echo done;; esac"
        ),
        "",
    )
    .await;
    let start = store.last_build_event_seq().await.unwrap();

    let ok = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    assert_eq!(wait_stopped(&app, &ok).await["build_outcome"], "success");
    let slow = queue(&app, &f.trigger, json!({"branch": "slow"})).await;
    wait_log(&app, &slow, "started").await;
    cancel(&app, &slow).await;
    wait_log(&app, &slow, "Build was cancelled").await;
    // Its runner's outcome (`cancelled` too) was refused: the cancel had already stopped it.
    assert_eq!(
        get_build(&app, &slow).await["build_outcome"],
        json!("cancelled")
    );
    let got = events_after(&store, start).await;
    let lifecycle = |b: &str, outcome: &str| {
        vec![
            ev(b, "queued", None),
            ev(b, "initializing", None),
            ev(b, "running", None),
            ev(b, "stopped", Some(outcome)),
        ]
    };
    let of = |b: &str| -> Vec<_> { got.iter().filter(|e| e.0 == b).cloned().collect() };
    assert_eq!(of(&ok), lifecycle(&ok, "success"));
    assert_eq!(of(&slow), lifecycle(&slow, "cancelled"));
    assert_eq!(got.len(), 8, "{got:?}");
    app.stop().await;

    // A timeout.
    let app = spawn_runner(SandboxMode::None, |c| {
        c.runner.build_timeout = Duration::from_secs(2);
    })
    .await;
    let store = app.store().clone();
    let f = app.fixture("runner-timeout").await;
    commit_files(&app, "runner-timeout", &[("README.md", "x")], "init");
    set_commands(&app, &f.trigger, &format!("sleep {sleep}"), "").await;
    let stuck = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    assert_eq!(
        wait_stopped(&app, &stuck).await["build_outcome"],
        "terminated"
    );
    assert_eq!(
        all_logs(&app, &stuck).await.last().unwrap(),
        "Build was timed out"
    );
    assert_eq!(
        events_after(&store, 0).await,
        lifecycle(&stuck, "terminated")
    );
    app.stop().await;
}
