//! Secrets (secret env var values, build token secrets) never appear in a response body and are not
//! stored in plain text: the raw database is read to prove it.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

const TOKEN_SECRET: &str = "cf-build-token-SECRET-7d1e4f0a9b";
const ENV_SECRET: &str = "env-secret-value-SECRET-51c3e8";
const ENV_SECRET_2: &str = "rotated-secret-SECRET-0f2a77";
const PLAIN_VALUE: &str = "plain-value-visible-9911";

/// Every byte of the database, as text where possible: SQLite files (with WAL) or PostgreSQL rows.
async fn raw_database(app: &TestApp) -> Vec<u8> {
    match backend() {
        Backend::Sqlite => {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(app.data_dir()).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if name.starts_with("kiln.db") {
                    out.extend(std::fs::read(&path).unwrap());
                }
            }
            out
        }
        Backend::Postgres => {
            use sqlx::{Connection, Row};
            let url = app.config.store.database_url.clone().unwrap();
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let tables: Vec<String> =
                sqlx::query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<String, _>(0))
                    .collect();
            assert!(tables.len() >= 8, "{tables:?}");
            let mut out = Vec::new();
            for t in tables {
                // BYTEA columns appear hex-encoded (`\x…`); the caller also looks for hex-encoded secrets.
                let rows = sqlx::query(&format!("SELECT t::text FROM {t} t"))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                for r in rows {
                    out.extend(r.get::<String, _>(0).into_bytes());
                    out.push(b'\n');
                }
            }
            conn.close().await.ok();
            out
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn secrets_never_leave_encrypted_storage() {
    let app = TestApp::spawn().await;
    let mut bodies: Vec<String> = Vec::new();
    let mut record = |v: &serde_json::Value| bodies.push(v.to_string());

    let conn = app
        .ok(Method::PUT, &app.acct("/repos/connections"), Some(json!({ "provider_type": "github",
            "provider_account_id": "1", "provider_account_name": "o", "repo_id": "42", "repo_name": "r" })))
        .await;
    record(&conn);
    let token = app
        .ok(
            Method::POST,
            &app.acct("/tokens"),
            Some(json!({ "build_token_name": "deploy",
            "build_token_secret": TOKEN_SECRET, "cloudflare_token_id": "cf-1" })),
        )
        .await;
    record(&token);
    assert!(token.get("build_token_secret").is_none());
    let trigger = app
        .ok(Method::POST, &app.acct("/triggers"), Some(json!({ "external_script_id": "w",
            "repo_connection_uuid": conn["repo_connection_uuid"], "build_token_uuid": token["build_token_uuid"],
            "trigger_name": "prod" })))
        .await;
    record(&trigger);
    let t = s(&trigger["trigger_uuid"]);
    let ev = app.acct(&format!("/triggers/{t}/environment_variables"));
    let v = app
        .ok(
            Method::PATCH,
            &ev,
            Some(json!({ "API_KEY": {"is_secret": true, "value": ENV_SECRET},
            "PLAIN": {"is_secret": false, "value": PLAIN_VALUE} })),
        )
        .await;
    assert_eq!(v["API_KEY"]["value"], serde_json::Value::Null);
    assert_eq!(v["PLAIN"]["value"], PLAIN_VALUE);
    record(&v);
    let b1 = app
        .ok(
            Method::POST,
            &app.acct(&format!("/triggers/{t}/builds")),
            Some(json!({"branch": "main"})),
        )
        .await;
    record(&b1);
    // Rotate the secret; flip a plain variable to secret without resending its value.
    let v = app
        .ok(
            Method::PATCH,
            &ev,
            Some(
                json!({ "API_KEY": {"is_secret": true, "value": ENV_SECRET_2},
            "PLAIN": {"is_secret": true} }),
            ),
        )
        .await;
    assert_eq!(
        v["PLAIN"]["value"],
        serde_json::Value::Null,
        "now a secret: {v}"
    );
    record(&v);
    let b2 = app
        .ok(
            Method::POST,
            &app.acct(&format!("/triggers/{t}/builds")),
            Some(json!({"branch": "main"})),
        )
        .await;
    record(&b2);

    for path in [
        app.acct("/tokens"),
        ev.clone(),
        app.acct("/workers/w/triggers"),
        app.acct("/workers/w/builds"),
        app.acct(&format!("/builds/{}", s(&b1["build_uuid"]))),
        app.acct(&format!("/builds/{}", s(&b2["build_uuid"]))),
        app.acct("/builds/latest?external_script_ids=w"),
    ] {
        let (_, v) = app.get(&path).await;
        assert_eq!(v["success"], true, "{path}: {v}");
        bodies.push(v.to_string());
    }
    let build = app
        .ok(
            Method::GET,
            &app.acct(&format!("/builds/{}", s(&b1["build_uuid"]))),
            None,
        )
        .await;
    assert_eq!(
        build["build_trigger_metadata"]["environment_variables"]["API_KEY"]["value"],
        serde_json::Value::Null
    );
    assert_eq!(
        build["build_trigger_metadata"]["environment_variables"]["PLAIN"]["value"],
        PLAIN_VALUE
    );

    for body in &bodies {
        for secret in [TOKEN_SECRET, ENV_SECRET, ENV_SECRET_2] {
            assert!(!body.contains(secret), "secret in a response: {body}");
        }
    }

    // The raw database holds no secret in plain text, but does hold the plain value (so the check works).
    let mut app = app;
    app.restart().await; // checkpoint nothing away: the WAL is read too
    let raw = raw_database(&app).await;
    assert!(
        contains(&raw, PLAIN_VALUE),
        "sanity: plain values are readable in the raw dump"
    );
    for secret in [TOKEN_SECRET, ENV_SECRET, ENV_SECRET_2] {
        assert!(
            !contains(&raw, secret),
            "secret {secret} stored in plain text"
        );
        assert!(
            !contains(&raw, &hex::encode(secret)),
            "secret {secret} stored hex-encoded"
        );
    }
    // API tokens are stored as hashes only.
    assert!(
        !contains(&raw, ADMIN_TOKEN),
        "API token stored in plain text"
    );
    app.stop().await;
}

/// A secret is replaced or deleted, never revealed: making it plain without a new value (the issue's
/// `{"NAME": {"is_secret": false}}`) is refused, leaves it as it was, and nothing else shows it.
#[tokio::test]
async fn a_secret_is_never_turned_back_into_plain_text() {
    let app = TestApp::spawn().await;
    let f = app.fixture("secret-worker").await;
    let ev = app.acct(&format!("/triggers/{}/environment_variables", f.trigger));
    app.ok(
        Method::PATCH,
        &ev,
        Some(json!({"API_KEY": {"is_secret": true, "value": ENV_SECRET}})),
    )
    .await;
    let mut bodies: Vec<String> = Vec::new();
    for body in [
        json!({"API_KEY": {"is_secret": false}}),
        json!({"API_KEY": {"is_secret": false, "value": null}}),
        json!({"OTHER": {"is_secret": false, "value": "x"}, "API_KEY": {"is_secret": false}}),
    ] {
        let (status, v) = app
            .call(Method::PATCH, &ev, Some(ADMIN_TOKEN), Some(body.clone()))
            .await;
        // A conflict with what is stored (the stored variable is a secret), as for other store refusals.
        assert_error(status, &v, 409, 12009);
        let message = s(&v["errors"][0]["message"]);
        assert!(message.contains("API_KEY"), "{body}: {message}");
        bodies.push(v.to_string());
    }
    let vars = app.ok(Method::GET, &ev, None).await;
    assert_eq!(
        vars,
        json!({"API_KEY": {"is_secret": true, "created_on": vars["API_KEY"]["created_on"], "value": null}}),
        "nothing changed"
    );
    let build = s(&app
        .ok(
            Method::POST,
            &app.acct(&format!("/triggers/{}/builds", f.trigger)),
            Some(json!({"branch": "main"})),
        )
        .await["build_uuid"]);
    // Replacing it with a new plain value is fine: the old value is never shown.
    let vars = app
        .ok(
            Method::PATCH,
            &ev,
            Some(json!({"API_KEY": {"is_secret": false, "value": PLAIN_VALUE}})),
        )
        .await;
    assert_eq!(vars["API_KEY"]["value"], PLAIN_VALUE);
    for path in [
        ev.clone(),
        app.acct(&format!("/builds/{build}")),
        app.acct("/workers/secret-worker/builds"),
        app.acct("/workers/secret-worker/triggers"),
        app.acct("/builds/latest?external_script_ids=secret-worker"),
    ] {
        let (_, v) = app.get(&path).await;
        assert_eq!(v["success"], true, "{path}: {v}");
        bodies.push(v.to_string());
    }
    let b = app
        .ok(Method::GET, &app.acct(&format!("/builds/{build}")), None)
        .await;
    assert_eq!(
        b["build_trigger_metadata"]["environment_variables"]["API_KEY"],
        json!({"is_secret": true, "created_on": b["build_trigger_metadata"]["environment_variables"]["API_KEY"]["created_on"], "value": null})
    );
    for body in &bodies {
        assert!(!body.contains(ENV_SECRET), "secret in a response: {body}");
    }
    app.stop().await;
}
