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
