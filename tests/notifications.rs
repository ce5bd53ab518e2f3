//! Event notifications (issue 9): subscriptions through the API (create, list, get, update, delete;
//! read and write tokens; tenancy; the secret shown once and sealed at rest), and deliveries of real
//! builds' events to real local receivers that verify the Standard Webhooks signatures with the
//! reference library: the hosted event shape, retries with back-off until accepted (each event
//! accepted once, in order per build), failure after the retry window and redelivery, filters, and a
//! receiver that never answers delaying neither builds nor other subscriptions.

mod common;

use std::time::Duration;

use common::receiver::{Behaviour, Receiver};
use common::*;
use kiln::domain::Permission;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How long "nothing more arrives" is watched: longer than the dispatcher's poll interval (1 s,
/// `src/notify/dispatch.rs`), so a repeated send would be seen.
const DISPATCHER_QUIET: Duration = Duration::from_millis(1500);
const SUBS: &str = "/event_subscriptions";
const STARTED: &str = "cf.workersBuilds.worker.build.started";
const SUCCEEDED: &str = "cf.workersBuilds.worker.build.succeeded";
const FAILED: &str = "cf.workersBuilds.worker.build.failed";
const CANCELED: &str = "cf.workersBuilds.worker.build.canceled";
/// A secret given by the client (the Standard Webhooks specification's example).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn create(app: &TestApp, body: Value) -> Value {
    app.ok(Method::POST, &app.acct(SUBS), Some(body)).await
}

#[tokio::test]
async fn subscriptions_are_created_listed_updated_and_deleted_and_the_secret_is_shown_once() {
    let app = TestApp::spawn().await;
    let generated = create(
        &app,
        json!({"name": " Slack ", "url": "HTTPS://Hooks.Example.COM/services/T0/B0"}),
    )
    .await;
    let id = s(&generated["id"]);
    let secret = s(&generated["secret"]);
    assert!(secret.starts_with("whsec_"), "{generated}");
    assert!(
        standardwebhooks::Webhook::new(&secret).is_ok(),
        "the generated secret is not a Standard Webhooks secret: {secret}"
    );
    assert_eq!(
        redact(&generated),
        json!({"id": "[uuid]", "name": "Slack", "url": "https://hooks.example.com/services/T0/B0",
               "worker_names": [], "event_types": [], "enabled": true,
               "created_on": "[time]", "modified_on": "[time]", "secret": secret})
    );
    let given = create(
        &app,
        json!({"name": "discord", "url": "http://127.0.0.1:9/hook?x=1", "secret": SECRET,
               "worker_names": ["b-worker", "a-worker", "b-worker"],
               "event_types": [FAILED, STARTED, FAILED], "enabled": false}),
    )
    .await;
    assert_eq!(given["secret"], SECRET);
    assert_eq!(given["worker_names"], json!(["a-worker", "b-worker"]));
    assert_eq!(given["event_types"], json!([STARTED, FAILED]));
    assert_eq!(given["enabled"], false);

    // Reads never show a secret.
    let one = app
        .ok(Method::GET, &app.acct(&format!("{SUBS}/{id}")), None)
        .await;
    let mut without_secret = generated.clone();
    without_secret
        .as_object_mut()
        .expect("object")
        .remove("secret");
    assert_eq!(one, without_secret);
    let (status, list) = app.get(&app.acct(SUBS)).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["result"].as_array().expect("list").len(), 2);
    assert_eq!(list["result"][0]["id"], id.as_str(), "oldest first");
    assert_eq!(list["result_info"]["total_count"], 2);
    assert_eq!(list["result_info"]["next_page"], false);
    let text = list.to_string() + &one.to_string();
    assert!(
        !text.contains("whsec_") && !text.contains("secret"),
        "{text}"
    );

    // Partial update: absent fields stay; a new secret is not shown back.
    let updated = app
        .ok(
            Method::PATCH,
            &app.acct(&format!("{SUBS}/{id}")),
            Some(
                json!({"url": "https://example.org/new", "event_types": [CANCELED],
                        "worker_names": ["w1"], "secret": SECRET}),
            ),
        )
        .await;
    assert_eq!(updated["name"], "Slack");
    assert_eq!(updated["url"], "https://example.org/new");
    assert_eq!(updated["event_types"], json!([CANCELED]));
    assert_eq!(updated["worker_names"], json!(["w1"]));
    assert_eq!(updated["created_on"], generated["created_on"]);
    assert!(updated.get("secret").is_none(), "{updated}");
    let cleared = app
        .ok(
            Method::PATCH,
            &app.acct(&format!("{SUBS}/{id}")),
            Some(json!({"event_types": [], "worker_names": [], "enabled": false})),
        )
        .await;
    assert_eq!(cleared["event_types"], json!([]));
    assert_eq!(cleared["worker_names"], json!([]));
    assert_eq!(cleared["enabled"], false);
    assert_eq!(
        app.ok(Method::GET, &app.acct(&format!("{SUBS}/{id}")), None)
            .await,
        cleared
    );

    // Delete: gone, and a second delete is a 404.
    app.ok(Method::DELETE, &app.acct(&format!("{SUBS}/{id}")), None)
        .await;
    for method in [Method::GET, Method::DELETE] {
        let (status, body) = app
            .call(
                method,
                &app.acct(&format!("{SUBS}/{id}")),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_error(status, &body, 404, 12000);
    }
    let (status, body) = app.get(&app.acct(&format!("{SUBS}/{id}/deliveries"))).await;
    assert_error(status, &body, 404, 12000);
    app.stop().await;
}

#[tokio::test]
async fn read_tokens_list_write_tokens_change_and_accounts_are_isolated() {
    let app = TestApp::spawn().await;
    let sub = create(&app, json!({"name": "n", "url": "https://example.com/"})).await;
    let id = s(&sub["id"]);
    let read = app.mint_token(Some(&[ACCOUNT]), Permission::Read).await;
    let write = app.mint_token(Some(&[ACCOUNT]), Permission::Write).await;
    let one = app.acct(&format!("{SUBS}/{id}"));
    let deliveries = app.acct(&format!("{SUBS}/{id}/deliveries"));
    let redeliver = app.acct(&format!(
        "{SUBS}/{id}/deliveries/{}/redeliver",
        uuid::Uuid::new_v4()
    ));
    for path in [app.acct(SUBS), one.clone(), deliveries.clone()] {
        let (status, body) = app.call(Method::GET, &path, Some(&read), None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let writes = [
        (
            Method::POST,
            app.acct(SUBS),
            Some(json!({"name": "x", "url": "https://example.com/"})),
        ),
        (Method::PATCH, one.clone(), Some(json!({"name": "x"}))),
        (Method::DELETE, one.clone(), None),
        (Method::POST, redeliver.clone(), None),
    ];
    for (method, path, body) in &writes {
        let (status, answer) = app
            .call(method.clone(), path, Some(&read), body.clone())
            .await;
        assert_error(status, &answer, 403, 10000);
        let (status, answer) = app.call(method.clone(), path, None, body.clone()).await;
        assert_error(status, &answer, 401, 10000);
    }
    let (status, body) = app
        .call(
            Method::PATCH,
            &one,
            Some(&write),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Another account: its lists are empty, this account's ids are unknown there (404, as for the
    // other resources), and a token of this account is refused there (403).
    let other = |path: &str| format!("/accounts/{OTHER_ACCOUNT}/builds{path}");
    let (status, body) = app.get(&other(SUBS)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], json!([]));
    for (method, path, body) in [
        (Method::GET, other(&format!("{SUBS}/{id}")), None),
        (
            Method::PATCH,
            other(&format!("{SUBS}/{id}")),
            Some(json!({"name": "stolen"})),
        ),
        (Method::DELETE, other(&format!("{SUBS}/{id}")), None),
        (Method::GET, other(&format!("{SUBS}/{id}/deliveries")), None),
        (
            Method::POST,
            other(&format!(
                "{SUBS}/{id}/deliveries/{}/redeliver",
                uuid::Uuid::new_v4()
            )),
            None,
        ),
    ] {
        let (status, answer) = app
            .call(method.clone(), &path, Some(ADMIN_TOKEN), body)
            .await;
        assert_error(status, &answer, 404, 12000);
    }
    let (status, body) = app
        .call(Method::GET, &other(SUBS), Some(&write), None)
        .await;
    assert_error(status, &body, 403, 10000);
    // Nothing of the above changed the subscription but the rename.
    let now = app.ok(Method::GET, &one, None).await;
    assert_eq!(now["name"], "renamed");
    assert_eq!(now["url"], sub["url"]);
    app.stop().await;
}

#[tokio::test]
async fn an_account_has_at_most_100_subscriptions() {
    let app = TestApp::spawn().await;
    for i in 0..100 {
        create(
            &app,
            json!({"name": format!("s{i}"), "url": "https://example.com/"}),
        )
        .await;
    }
    let (status, body) = app
        .post(
            &app.acct(SUBS),
            json!({"name": "one too many", "url": "https://example.com/"}),
        )
        .await;
    assert_error(status, &body, 409, 12009);
    assert!(body.to_string().contains("100"), "{body}");
    // Pages hold every subscription once.
    let mut seen = std::collections::HashSet::new();
    for page in 1..=5 {
        let (status, body) = app
            .get(&app.acct(&format!("{SUBS}?page={page}&per_page=200")))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for s in body["result"].as_array().expect("page") {
            assert!(seen.insert(s["id"].to_string()), "{s} twice");
        }
        if body["result_info"]["next_page"] == false {
            break;
        }
    }
    assert_eq!(seen.len(), 100);
    // Another account has its own 100.
    let (status, body) = app
        .post(
            &format!("/accounts/{OTHER_ACCOUNT}/builds{SUBS}"),
            json!({"name": "other", "url": "https://example.com/"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn the_secret_is_sealed_at_rest() {
    let app = TestApp::spawn().await;
    create(
        &app,
        json!({"name": "n", "url": "https://example.com/", "secret": SECRET}),
    )
    .await;
    let url = app
        .config
        .store
        .database_url
        .clone()
        .unwrap_or_else(|| kiln::store::Store::sqlite_url(&app.data_dir()));
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
    let rows = sqlx::query("SELECT * FROM event_subscriptions")
        .fetch_all(&pool)
        .await
        .expect("read");
    assert_eq!(rows.len(), 1);
    use sqlx::Row;
    let sealed: Vec<u8> = rows[0].try_get("secret_enc").expect("secret_enc");
    let key = &SECRET["whsec_".len()..];
    for needle in [SECRET.as_bytes(), key.as_bytes()] {
        assert!(
            !sealed.windows(needle.len()).any(|w| w == needle),
            "the secret is stored in clear"
        );
    }
    pool.close().await;
    app.stop().await;
}

/// A server running builds (unsandboxed: these tests are about events), retrying deliveries after
/// 50 ms doubling to at most 200 ms, shared by every test below; `tweak` adjusts it further.
async fn runner(tweak: impl FnOnce(&mut kiln::startup::ServeConfig)) -> TestApp {
    spawn_runner(kiln::sandbox::SandboxMode::None, |c| {
        c.notifications.retry.base = Duration::from_millis(50);
        c.notifications.retry.cap = Duration::from_millis(200);
        tweak(c);
    })
    .await
}

/// A Worker with a repository and a trigger running `build`; returns the trigger.
async fn worker(app: &TestApp, name: &str, build: &str) -> String {
    let f = app.fixture(name).await;
    commit_files(app, name, &[("README.md", "events\n")], "Add the readme");
    set_commands(app, &f.trigger, build, "echo deployed").await;
    f.trigger
}

async fn subscribe(app: &TestApp, url: &str, extra: Value) -> String {
    let mut body = json!({"name": "receiver", "url": url, "secret": SECRET});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    s(&create(app, body).await["id"])
}

async fn deliveries(app: &TestApp, subscription: &str) -> Vec<Value> {
    let page = app
        .ok(
            Method::GET,
            &app.acct(&format!("{SUBS}/{subscription}/deliveries?per_page=200")),
            None,
        )
        .await;
    page.as_array().expect("deliveries").clone()
}

/// Polls a subscription's deliveries until `pred` holds (generous deadline), returns them.
async fn wait_deliveries(
    app: &TestApp,
    subscription: &str,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + BUILD_DEADLINE;
    loop {
        let got = deliveries(app, subscription).await;
        if pred(&got) {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries never became {what}: {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The types of the accepted events of `build`, in acceptance order.
fn accepted_types(r: &Receiver, build: &str) -> Vec<String> {
    r.accepted()
        .iter()
        .filter(|e| e.build() == build)
        .map(|e| e.event_type().to_owned())
        .collect()
}

/// The event the hosted product sends for `build` (as the builds API shows it) at `status`.
fn expected_event(build: &Value, event_type: &str, subscription: &str, status: &str) -> Value {
    let meta = &build["build_trigger_metadata"];
    let stopped = status == "stopped";
    json!({
        "type": event_type,
        "source": {"type": "workersBuilds.worker", "workerName": build["trigger"]["external_script_id"]},
        "payload": {
            "buildUuid": build["build_uuid"],
            "status": status,
            "buildOutcome": if stopped { build["build_outcome"].clone() } else { Value::Null },
            "createdAt": build["created_on"],
            "initializingAt": build["initializing_on"],
            "runningAt": build["running_on"],
            "stoppedAt": if stopped { build["stopped_on"].clone() } else { Value::Null },
            "buildTriggerMetadata": {
                "buildTriggerSource": meta["build_trigger_source"],
                "branch": meta["branch"],
                "commitHash": meta["commit_hash"],
                "commitMessage": meta["commit_message"],
                "author": meta["author"],
                "buildCommand": meta["build_command"],
                "deployCommand": meta["deploy_command"],
                "rootDirectory": meta["root_directory"],
                "repoName": meta["repo_name"],
                "providerAccountName": meta["provider_account_name"],
                "providerType": meta["provider_type"],
            },
        },
        "metadata": {
            "accountId": ACCOUNT,
            "eventSubscriptionId": subscription,
            "eventSchemaVersion": 1,
            "eventTimestamp": if stopped { build["stopped_on"].clone() } else { build["running_on"].clone() },
        },
    })
}

#[tokio::test]
async fn a_builds_events_are_signed_in_order_and_have_the_hosted_shape() {
    let app = runner(|_| {}).await;
    let receiver = Receiver::start(SECRET, Behaviour::Accept).await;
    let trigger = worker(&app, "notify-worker", "echo built").await;
    let sub = subscribe(&app, &receiver.url, json!({})).await;
    // Subscriptions that must get nothing of this build.
    let silent = Receiver::start(SECRET, Behaviour::Accept).await;
    let others = [
        subscribe(
            &app,
            &silent.url,
            json!({"worker_names": ["another-worker"]}),
        )
        .await,
        subscribe(
            &app,
            &silent.url,
            json!({"event_types": [FAILED, CANCELED]}),
        )
        .await,
        subscribe(&app, &silent.url, json!({"enabled": false})).await,
    ];
    let id = queue(&app, &trigger, json!({"branch": "main"})).await;
    let build = wait_stopped(&app, &id).await;
    assert_eq!(build["build_outcome"], "success", "{build}");
    let got = receiver
        .wait_until("started and succeeded", BUILD_DEADLINE, |r| {
            r.iter().filter(|e| e.accepted()).count() == 2
        })
        .await;
    assert_eq!(accepted_types(&receiver, &id), [STARTED, SUCCEEDED]);
    for e in &got {
        assert!(e.verified, "the signature does not verify: {e:#?}");
        assert_eq!(e.content_type, "application/json");
        assert!(e.signature.starts_with("v1,"), "{e:#?}");
        let ts: i64 = e.timestamp.parse().expect("webhook-timestamp in seconds");
        assert!((ts - chrono::Utc::now().timestamp()).abs() < 300, "{ts}");
    }
    assert_ne!(got[0].id, got[1].id);
    // The whole envelope, against the build as the API shows it. A branch build learns its commit
    // from its checkout, after it started: the `started` event has it, or (fanned out before the
    // checkout) has it unknown, `""`, as the API shows an unknown commit.
    let started = expected_event(&build, STARTED, &sub, "running");
    let mut unknown_commit = started.clone();
    for field in ["commitHash", "commitMessage", "author"] {
        unknown_commit["payload"]["buildTriggerMetadata"][field] = json!("");
    }
    assert!(
        got[0].body == started || got[0].body == unknown_commit,
        "{:#}\nis neither\n{started:#}\nnor the same with the commit unknown",
        got[0].body
    );
    assert_eq!(
        got[1].body,
        expected_event(&build, SUCCEEDED, &sub, "stopped")
    );
    assert_eq!(
        build["build_trigger_metadata"]["build_trigger_source"],
        "manual"
    );
    assert!(
        build["build_trigger_metadata"]["commit_hash"]
            .as_str()
            .is_some_and(|h| h.len() == 40),
        "{build}"
    );

    // The deliveries as the API lists them: newest first, each delivered on its first attempt,
    // their ids the webhook-ids sent.
    let listed = wait_deliveries(&app, &sub, "delivered", |d| {
        d.len() == 2 && d.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    assert_eq!(listed[0]["event_type"], SUCCEEDED);
    assert_eq!(listed[1]["event_type"], STARTED);
    for (d, e) in listed.iter().rev().zip(&got) {
        assert_eq!(d["id"], e.id.as_str());
        assert_eq!(d["build_uuid"], id.as_str());
        assert_eq!(d["attempts"], 1);
        assert_eq!(d["response_code"], 200);
        assert_eq!(d["last_error"], Value::Null);
        assert_eq!(d["next_attempt_on"], Value::Null);
        assert!(
            d["finished_on"].is_string() && d["last_attempt_on"].is_string(),
            "{d}"
        );
    }
    for other in &others {
        assert_eq!(deliveries(&app, other).await, Vec::<Value>::new());
    }
    assert!(silent.received().is_empty());

    // A failing build is `failed`, a cancelled one `canceled` (after its `started`), to the
    // subscription that asks for those only.
    let trigger = worker(&app, "slow-worker", "sleep 600").await;
    let failing = worker(&app, "failing-worker", "echo compiling; exit 3").await;
    let picky = Receiver::start(SECRET, Behaviour::Accept).await;
    subscribe(&app, &picky.url, json!({"event_types": [FAILED, CANCELED]})).await;
    let slow = queue(&app, &trigger, json!({"branch": "main"})).await;
    wait_for(&app, &slow, "running", |b| b["status"] == "running").await;
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{slow}/cancel")),
        None,
    )
    .await;
    let broken = queue(&app, &failing, json!({"branch": "main"})).await;
    assert_eq!(wait_stopped(&app, &broken).await["build_outcome"], "fail");
    picky
        .wait_until("failed and canceled", BUILD_DEADLINE, |r| r.len() == 2)
        .await;
    assert_eq!(accepted_types(&picky, &slow), [CANCELED]);
    assert_eq!(accepted_types(&picky, &broken), [FAILED]);
    let cancelled = get_build(&app, &slow).await;
    let event = picky
        .accepted()
        .into_iter()
        .find(|e| e.build() == slow)
        .expect("canceled event");
    assert_eq!(event.body["payload"]["buildOutcome"], "cancelled");
    assert_eq!(event.body["payload"]["stoppedAt"], cancelled["stopped_on"]);
    wait_stopped(&app, &slow).await;
    assert_eq!(
        accepted_types(&receiver, &slow),
        [STARTED, CANCELED],
        "the unfiltered subscription gets every event"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_each_event_accepted_once_and_in_order() {
    let app = runner(|_| {}).await;
    let receiver = Receiver::start(SECRET, Behaviour::FailFirst(3)).await;
    let trigger = worker(&app, "flaky-worker", "echo built").await;
    let sub = subscribe(&app, &receiver.url, json!({})).await;
    let id = queue(&app, &trigger, json!({"branch": "main"})).await;
    wait_stopped(&app, &id).await;
    let listed = wait_deliveries(&app, &sub, "delivered after 4 attempts", |d| {
        d.len() == 2 && d.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    for d in &listed {
        assert_eq!(d["attempts"], 4, "{d}");
        assert_eq!(d["response_code"], 204, "{d}");
    }
    // Nothing more arrives once both are accepted, for longer than the dispatcher's poll (1 s).
    assert_stays(DISPATCHER_QUIET, "a delivered event arrived again", || {
        receiver.received().len() == 8
    })
    .await;
    let got = receiver.received();
    assert_eq!(got.len(), 8, "{got:#?}");
    assert!(got.iter().all(|e| e.verified), "{got:#?}");
    for d in &listed {
        let attempts: Vec<_> = got.iter().filter(|e| e.id == s(&d["id"])).collect();
        assert_eq!(attempts.len(), 4);
        assert_eq!(
            attempts.iter().filter(|e| e.accepted()).count(),
            1,
            "accepted exactly once"
        );
        assert!(attempts[3].accepted());
        // Each attempt has the same body, signed anew.
        assert!(attempts.iter().all(|e| e.body == attempts[0].body));
    }
    // In order: no attempt of `succeeded` before `started` was accepted.
    let started_accepted = got
        .iter()
        .position(|e| e.event_type() == STARTED && e.accepted())
        .expect("started accepted");
    let first_succeeded = got
        .iter()
        .position(|e| e.event_type() == SUCCEEDED)
        .expect("succeeded sent");
    assert!(started_accepted < first_succeeded, "{got:#?}");
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_delays_neither_builds_nor_other_subscriptions() {
    // An attempt would wait a minute for the dead endpoint: longer than this test may take.
    let app = runner(|c| c.notifications.timeout = Duration::from_secs(60)).await;
    let dead = Receiver::start(SECRET, Behaviour::Hang).await;
    let alive = Receiver::start(SECRET, Behaviour::Accept).await;
    let trigger = worker(&app, "busy-worker", "echo built").await;
    let dead_sub = subscribe(&app, &dead.url, json!({})).await;
    subscribe(&app, &alive.url, json!({})).await;
    let mut builds = Vec::new();
    for _ in 0..3 {
        let id = queue(&app, &trigger, json!({"branch": "main"})).await;
        assert_eq!(wait_stopped(&app, &id).await["build_outcome"], "success");
        builds.push(id);
    }
    alive
        .wait_until("every event of the three builds", BUILD_DEADLINE, |r| {
            r.iter().filter(|e| e.accepted()).count() == 6
        })
        .await;
    for id in &builds {
        assert_eq!(accepted_types(&alive, id), [STARTED, SUCCEEDED]);
    }
    // The dead endpoint holds each build's `started`; the `succeeded` after it waits its turn.
    let hanging = dead
        .wait_until("each build's started", BUILD_DEADLINE, |r| r.len() == 3)
        .await;
    assert!(
        hanging
            .iter()
            .all(|e| e.event_type() == STARTED && e.answered.is_none())
    );
    let listed = deliveries(&app, &dead_sub).await;
    assert_eq!(listed.len(), 6, "{listed:#?}");
    assert!(
        listed
            .iter()
            .all(|d| d["status"] == "pending" && d["attempts"] == 0),
        "{listed:#?}"
    );
    // Stopping does not wait for the dead endpoint.
    app.stop().await;
}

#[tokio::test]
async fn a_delivery_past_its_retry_window_fails_and_a_redelivery_sends_it_again() {
    let app = runner(|c| c.notifications.retry.window = Duration::from_millis(1500)).await;
    let receiver = Receiver::start(SECRET, Behaviour::Fail).await;
    let trigger = worker(&app, "down-worker", "echo built").await;
    let sub = subscribe(&app, &receiver.url, json!({})).await;
    let id = queue(&app, &trigger, json!({"branch": "main"})).await;
    wait_stopped(&app, &id).await;
    let listed = wait_deliveries(&app, &sub, "failed", |d| {
        d.len() == 2 && d.iter().all(|d| d["status"] == "failed")
    })
    .await;
    for d in &listed {
        assert!(d["attempts"].as_i64().is_some_and(|n| n >= 1), "{d}");
        assert_eq!(d["response_code"], 503);
        assert_eq!(d["last_error"], "HTTP 503");
        assert_eq!(d["next_attempt_on"], Value::Null);
        assert!(d["finished_on"].is_string(), "{d}");
    }
    let tried = receiver.received().len();
    receiver.set(Behaviour::Accept);
    let started = listed
        .iter()
        .find(|d| d["event_type"] == STARTED)
        .expect("started");
    let again = app
        .ok(
            Method::POST,
            &app.acct(&format!(
                "{SUBS}/{sub}/deliveries/{}/redeliver",
                s(&started["id"])
            )),
            None,
        )
        .await;
    assert_eq!(again["status"], "pending");
    assert_eq!(again["id"], started["id"]);
    let after = wait_deliveries(&app, &sub, "redelivered", |d| {
        d.iter()
            .any(|d| d["id"] == started["id"] && d["status"] == "delivered")
    })
    .await;
    let redelivered = after
        .iter()
        .find(|d| d["id"] == started["id"])
        .expect("listed");
    assert_eq!(
        redelivered["attempts"].as_i64(),
        started["attempts"].as_i64().map(|n| n + 1)
    );
    assert_eq!(redelivered["response_code"], 200);
    assert_eq!(redelivered["last_error"], Value::Null);
    let got = receiver.received();
    assert_eq!(got.len(), tried + 1, "{got:#?}");
    let last = got.last().expect("the redelivery");
    assert!(last.accepted() && last.verified);
    assert_eq!(last.id, s(&started["id"]), "the same webhook-id");
    assert_eq!(last.body, got[0].body, "the same body");
    // The other one stays failed.
    assert!(
        after
            .iter()
            .any(|d| d["event_type"] == SUCCEEDED && d["status"] == "failed")
    );
    app.stop().await;
}

#[tokio::test]
async fn two_nodes_on_one_database_deliver_each_event_once() {
    // One key seals for both nodes (each node would otherwise make its own in its data dir).
    let key = "8b2f6a0c4d1e3f5a7b9c0d2e4f6a8b0c1d3e5f7a9b1c3d5e7f9a0b2c4d6e8f0a1";
    let key = &key[..64];
    let a = runner(|c| c.store.secret_key = Some(key.to_owned())).await;
    let url = a
        .config
        .store
        .database_url
        .clone()
        .unwrap_or_else(|| kiln::store::Store::sqlite_url(&a.data_dir()));
    let b = TestApp::spawn_with(|c| {
        c.store.database_url = Some(url);
        c.store.secret_key = Some(key.to_owned());
    })
    .await;
    let receiver = Receiver::start(SECRET, Behaviour::FailFirst(1)).await;
    let trigger = worker(&a, "shared-worker", "echo built").await;
    // Created through node B: node A's fan-out and both dispatchers see it.
    let sub = subscribe(&b, &receiver.url, json!({})).await;
    // One after another: a build queued while an older one of its branch still waits supersedes it
    // (skipped), and a skipped build sends no event.
    let mut builds = Vec::new();
    for _ in 0..3 {
        let id = queue(&a, &trigger, json!({"branch": "main"})).await;
        wait_stopped(&a, &id).await;
        builds.push(id);
    }
    wait_deliveries(&b, &sub, "six delivered", |d| {
        d.len() == 6 && d.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    assert_stays(DISPATCHER_QUIET, "an event was accepted again", || {
        receiver.accepted().len() == 6
    })
    .await;
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 6, "{accepted:#?}");
    let ids: std::collections::HashSet<_> = accepted.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 6, "an event was accepted twice");
    for id in &builds {
        assert_eq!(accepted_types(&receiver, id), [STARTED, SUCCEEDED]);
    }
    b.stop().await;
    a.stop().await;
}
