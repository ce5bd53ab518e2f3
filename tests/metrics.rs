//! Operating Kiln: `/metrics` read by a strict Prometheus text-format parser as builds are queued,
//! cancelled and run, its token, `/healthz` and `/readyz` (ready, and not when the store is gone or
//! a migration is missing), request ids, and the request id in error log lines.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use kiln::sandbox::SandboxMode;
use prom_text_format_parser::{Scrape, Type, ValueType};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A token that passes Kiln's strength check.
const METRICS_TOKEN: &str = "metrics-0f4c2a9e7b1d3865c0e2f4a6b8d1c3e5";

/// The route template of `getBuildByUuid`, as the `route` label shows it.
const GET_BUILD_ROUTE: &str = "/client/v4/accounts/{account_id}/builds/builds/{build_uuid}";

/// How long a test waits for a metric to reach a value.
const METRIC_DEADLINE: Duration = Duration::from_secs(30);

/// Everything Kiln logs in this test binary (every test starts with [`capture_logs`], so that this
/// subscriber, not the harness's, is the global one). Only `kiln::api::error` and
/// `kiln::api::health` at `debug`: the request span (`info`, `kiln::api::observe`) is filtered out,
/// so a request id in a captured line is the line's own field.
fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "kiln=warn,kiln::api::error=debug,kiln::api::health=debug",
            ))
            .with_writer(move || Capture(sink.clone()))
            .init();
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured log lines that mention `text`.
fn log_lines_with(text: &str) -> Vec<String> {
    let logs = capture_logs();
    let all = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    all.lines()
        .filter(|l| l.contains(text))
        .map(str::to_owned)
        .collect()
}

async fn spawn() -> TestApp {
    capture_logs();
    TestApp::spawn().await
}

/// `GET /metrics`, with a bearer token or none: the status and the body.
async fn get_metrics(app: &TestApp, token: Option<&str>) -> (StatusCode, String) {
    let mut req = app.client.get(format!("{}/metrics", app.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("GET /metrics");
    let status = resp.status();
    if status == StatusCode::OK {
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    }
    (status, resp.text().await.expect("body"))
}

/// Scrapes and parses the metrics (an open endpoint), failing on anything the parser refuses.
async fn scrape(app: &TestApp) -> (Scrape, String) {
    let (status, text) = get_metrics(app, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let parsed = Scrape::parse(&text).unwrap_or_else(|e| panic!("unparseable: {e:?}\n{text}"));
    (parsed, text)
}

/// The value of `name`'s sample whose labels include `labels`; a histogram's is its count.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let metric = scrape.metrics.iter().find(|m| m.name == name)?;
    let want = if metric.kind == Type::Histogram {
        ValueType::Count
    } else {
        ValueType::Sample
    };
    metric
        .samples
        .iter()
        .find(|s| {
            s.value.value_type == want
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|l| l.key == *k && l.value == *v))
        })
        .map(|s| s.value.value.as_f64())
}

/// Scrapes until `name{labels}` satisfies `ok` (the store's figures are re-read at most once a
/// second, and a build's duration is observed just after its outcome is visible).
async fn wait_metric(
    app: &TestApp,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + METRIC_DEADLINE;
    loop {
        let (s, text) = scrape(app).await;
        if let Some(v) = value(&s, name, labels).filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} never reached the value wanted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn requests(s: &Scrape, method: &str, route: &str, status: &str) -> f64 {
    let labels = [("method", method), ("route", route), ("status", status)];
    let count = value(s, "kiln_http_requests_total", &labels).unwrap_or(0.0);
    let observed = value(s, "kiln_http_request_duration_seconds", &labels).unwrap_or(0.0);
    assert_eq!(count, observed, "every request counted is timed");
    count
}

#[tokio::test]
async fn metrics_move_as_builds_are_queued_and_cancelled_and_routes_are_templates() {
    let app = spawn().await;
    let (s, text) = scrape(&app).await;
    for (status, outcome) in [
        ("queued", ""),
        ("initializing", ""),
        ("running", ""),
        ("stopped", "success"),
        ("stopped", "cancelled"),
    ] {
        assert_eq!(
            value(
                &s,
                "kiln_builds",
                &[("status", status), ("outcome", outcome)]
            ),
            Some(0.0),
            "{text}"
        );
    }
    assert_eq!(value(&s, "kiln_build_queue_length", &[]), Some(0.0));
    assert_eq!(value(&s, "kiln_runner_slots", &[]), Some(0.0));
    assert_eq!(value(&s, "kiln_scheduler_up", &[]), Some(0.0));

    let f = app.fixture("metrics-q").await;
    let first = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let second = queue(&app, &f.trigger, json!({"branch": "other"})).await;
    wait_metric(&app, "kiln_build_queue_length", &[], |v| v == 2.0).await;
    let (s, _) = scrape(&app).await;
    assert_eq!(
        value(&s, "kiln_builds", &[("status", "queued"), ("outcome", "")]),
        Some(2.0)
    );
    let age = value(&s, "kiln_build_queue_oldest_age_seconds", &[]).expect("age");
    assert!((0.0..600.0).contains(&age), "{age}");
    // Writes went through the store's write transactions.
    assert!(
        value(
            &s,
            "kiln_store_write_transaction_seconds",
            &[("result", "commit")]
        ) > Some(0.0)
    );
    assert!(
        value(
            &s,
            "kiln_store_lock_wait_seconds",
            &[("lock", "transaction")]
        ) > Some(0.0)
    );

    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{first}/cancel")),
        None,
    )
    .await;
    wait_metric(&app, "kiln_build_queue_length", &[], |v| v == 1.0).await;
    wait_metric(
        &app,
        "kiln_builds",
        &[("status", "stopped"), ("outcome", "cancelled")],
        |v| v == 1.0,
    )
    .await;

    // Requests are counted by route template and status, never by raw path.
    let (before, _) = scrape(&app).await;
    for _ in 0..3 {
        get_build(&app, &second).await;
    }
    let (status, _) = app
        .get(&app.acct(&format!("/builds/{}", uuid::Uuid::new_v4())))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get("/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (after, text) = scrape(&app).await;
    assert_eq!(
        requests(&after, "GET", GET_BUILD_ROUTE, "200")
            - requests(&before, "GET", GET_BUILD_ROUTE, "200"),
        3.0
    );
    assert_eq!(
        requests(&after, "GET", GET_BUILD_ROUTE, "404")
            - requests(&before, "GET", GET_BUILD_ROUTE, "404"),
        1.0
    );
    assert_eq!(
        requests(&after, "GET", "unmatched", "404") - requests(&before, "GET", "unmatched", "404"),
        1.0
    );
    assert!(requests(&after, "GET", "/metrics", "200") >= 1.0);
    for raw in [ACCOUNT, &second, "/no/such/route"] {
        assert!(!text.contains(raw), "{raw} is in the metrics:\n{text}");
    }
    app.stop().await;
}

#[tokio::test]
async fn metrics_move_as_a_build_runs() {
    capture_logs();
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let f = app.fixture("metrics-run").await;
    commit_files(&app, "metrics-run", &[("README", "hello")], "first");
    set_commands(&app, &f.trigger, "echo one; echo two; echo three", "").await;
    let (s, _) = scrape(&app).await;
    assert_eq!(value(&s, "kiln_runner_slots", &[]), Some(2.0));
    assert_eq!(value(&s, "kiln_scheduler_up", &[]), Some(1.0));
    assert_eq!(
        value(&s, "kiln_build_start_latency_seconds", &[]),
        Some(0.0)
    );

    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    assert_eq!(wait_stopped(&app, &id).await["build_outcome"], "success");
    wait_metric(
        &app,
        "kiln_build_duration_seconds",
        &[("outcome", "success")],
        |v| v == 1.0,
    )
    .await;
    wait_metric(
        &app,
        "kiln_builds",
        &[("status", "stopped"), ("outcome", "success")],
        |v| v == 1.0,
    )
    .await;
    let (s, text) = scrape(&app).await;
    assert_eq!(
        value(&s, "kiln_build_start_latency_seconds", &[]),
        Some(1.0)
    );
    assert_eq!(value(&s, "kiln_runner_slots_busy", &[]), Some(0.0));
    assert_eq!(value(&s, "kiln_build_queue_length", &[]), Some(0.0));
    // Every line of the build went through this node's log sink, and nothing else was logged here.
    let lines = all_logs(&app, &id).await;
    assert!(lines.iter().any(|l| l == "three"), "{lines:?}");
    assert_eq!(
        value(&s, "kiln_log_lines_stored_total", &[]),
        Some(lines.len() as f64),
        "{text}"
    );
    assert_eq!(
        value(&s, "kiln_log_lines_ingested_total", &[]),
        Some(lines.len() as f64)
    );
    let bytes: usize = lines.iter().map(String::len).sum();
    assert_eq!(
        value(&s, "kiln_log_bytes_ingested_total", &[]),
        Some(bytes as f64)
    );
    app.stop().await;
}

#[tokio::test]
async fn webhook_deliveries_are_counted_by_result() {
    let app = spawn().await;
    let deliver =
        |event: Option<&'static str>, delivery: &'static str, signature: Option<String>| {
            let body = serde_json::to_vec(&json!({"zen": "Keep it logically awesome."})).unwrap();
            let signature = signature.unwrap_or_else(|| sign(&body));
            let mut req = app
                .client
                .post(format!("{}/webhooks/github", app.base))
                .header("content-type", "application/json")
                .header("x-github-delivery", delivery)
                .header("x-hub-signature-256", signature)
                .body(body);
            if let Some(event) = event {
                req = req.header("x-github-event", event);
            }
            async move { req.send().await.expect("deliver").status() }
        };
    let wrong = Some(format!("sha256={}", "0".repeat(64)));
    assert_eq!(
        deliver(Some("ping"), "d-1", wrong).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(deliver(Some("ping"), "d-1", None).await, StatusCode::OK);
    assert_eq!(deliver(Some("ping"), "d-1", None).await, StatusCode::OK);
    assert_eq!(deliver(Some("ping"), "d-2", None).await, StatusCode::OK);
    assert_eq!(deliver(None, "d-3", None).await, StatusCode::BAD_REQUEST);
    let (s, _) = scrape(&app).await;
    let count = |result| value(&s, "kiln_webhook_deliveries_total", &[("result", result)]);
    assert_eq!(count("unauthenticated"), Some(1.0));
    assert_eq!(count("accepted"), Some(2.0));
    assert_eq!(count("duplicate"), Some(1.0));
    assert_eq!(count("invalid"), Some(1.0));
    assert_eq!(count("failed"), Some(0.0));
    // A signed delivery the store cannot take: GitHub redelivers it later.
    app.store().close().await;
    assert_eq!(
        deliver(Some("ping"), "d-4", None).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (s, _) = scrape(&app).await;
    assert_eq!(
        value(&s, "kiln_webhook_deliveries_total", &[("result", "failed")]),
        Some(1.0)
    );
    app.stop().await;
}

#[tokio::test]
async fn the_metrics_token_is_required_when_configured() {
    capture_logs();
    // Without a token the endpoint is open.
    let open = TestApp::spawn().await;
    assert_eq!(get_metrics(&open, None).await.0, StatusCode::OK);
    open.stop().await;

    let app = TestApp::spawn_with(|c| {
        c.metrics_token = Some(METRICS_TOKEN.to_owned());
        // No refill during the test, so that the counts are exact on a slow machine.
        c.auth_throttle.refill = Duration::from_secs(3600);
    })
    .await;
    let (status, text) = get_metrics(&app, Some(METRICS_TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    Scrape::parse(&text).expect("parses");
    for (header, why) in [
        (None, "no credentials"),
        (Some(format!("Bearer {METRICS_TOKEN}x")), "a wrong token"),
        (Some(format!("Basic {METRICS_TOKEN}")), "another scheme"),
        (Some(format!("Bearer {ADMIN_TOKEN}")), "an API token"),
    ] {
        let mut req = app.client.get(format!("{}/metrics", app.base));
        if let Some(h) = &header {
            req = req.header("authorization", h);
        }
        let resp = req.send().await.expect("GET /metrics");
        let status = resp.status();
        let body: Value = resp.json().await.expect("an envelope");
        assert_error(status, &body, 401, 10000);
        assert!(!body.to_string().contains(METRICS_TOKEN), "{why}: {body}");
    }
    // Guessing is throttled like API credentials: 3 wrong guesses above, then the rest of the burst.
    let wrong = "metrics-guess-4b7d1e9a2c5f8036e1d4a7b0c3f6e9d2";
    for _ in 3..kiln::api::throttle::FAILURE_BURST {
        assert_eq!(
            get_metrics(&app, Some(wrong)).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, body) = get_metrics(&app, Some(METRICS_TOKEN)).await;
    assert_error(status, &serde_json::from_str(&body).unwrap(), 429, 12051);
    app.stop().await;

    // A weak token is refused at start, without showing it.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.metrics_token = Some("metrics".to_owned());
    let e = match kiln::startup::Server::start(&config).await {
        Ok(_) => panic!("a weak metrics token was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("the metrics token is too weak"), "{e}");
}

/// The migrations this binary embeds for the test backend.
fn migration_count() -> usize {
    let dir = match backend() {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    };
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count()
}

async fn get_json(app: &TestApp, path: &str) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let resp = app
        .client
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .expect("GET");
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, resp.json().await.expect("JSON"), headers)
}

#[tokio::test]
async fn healthz_and_readyz_answer_without_credentials_on_a_normal_start() {
    capture_logs();
    let api_only = TestApp::spawn().await;
    let (status, body, _) = get_json(&api_only, "/healthz").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body, _) = get_json(&api_only, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let store = match backend() {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(
        body,
        json!({"success": true, "errors": [], "messages": [], "result": {"status": "ready",
            "store": store, "migrations": migration_count(), "runner_slots": 0, "runner_slots_busy": 0}})
    );
    let resp = api_only
        .client
        .post(format!("{}/healthz", api_only.base))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_error(status, &resp.json().await.unwrap(), 405, 7001);
    api_only.stop().await;

    let runner = spawn_runner(SandboxMode::None, |_| {}).await;
    let (status, body, _) = get_json(&runner, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"]["runner_slots"], 2);
    runner.stop().await;
}

#[tokio::test]
async fn readyz_is_503_when_the_store_is_gone_and_healthz_still_answers() {
    capture_logs();
    let app = TestApp::spawn().await;
    assert_eq!(get_json(&app, "/readyz").await.0, StatusCode::OK);
    match backend() {
        Backend::Postgres => {
            use sqlx::Connection;
            let url = app
                .config
                .store
                .database_url
                .clone()
                .expect("a database URL");
            let name = url.rsplit('/').next().unwrap().to_owned();
            let admin = std::env::var("KILN_TEST_POSTGRES_URL").unwrap();
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.ok();
        }
        Backend::Sqlite => {
            // The server's open connections go on with the deleted file; a restart would not.
            for suffix in ["", "-wal", "-shm"] {
                let path = app.data_dir().join(format!("kiln.db{suffix}"));
                if path.exists() {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }
    }
    let (status, body, headers) = get_json(&app, "/readyz").await;
    assert_error(status, &body, 503, 10503);
    assert_eq!(
        body["errors"],
        json!([{"code": 10503, "message": "Not ready: the store cannot be reached"}])
    );
    // The cause is logged with the request's id.
    let id = headers["x-request-id"].to_str().unwrap();
    let logged = log_lines_with(id);
    assert!(
        logged
            .iter()
            .any(|l| l.contains("not ready: the store cannot be reached")),
        "{logged:?}"
    );
    let (status, body, _) = get_json(&app, "/healthz").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    app.stop().await;
}

/// Runs `sql` on the test server's database from outside.
async fn execute(app: &TestApp, sql: &str) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let url = app
        .config
        .store
        .database_url
        .clone()
        .unwrap_or_else(|| kiln::store::Store::sqlite_url(&app.data_dir()));
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.ok();
}

#[tokio::test]
async fn readyz_names_a_migration_missing_or_changed() {
    capture_logs();
    let app = TestApp::spawn().await;
    execute(&app, "DELETE FROM _sqlx_migrations WHERE version = 2").await;
    execute(
        &app,
        "UPDATE _sqlx_migrations SET checksum = (SELECT checksum FROM _sqlx_migrations WHERE version = 1) \
         WHERE version = 3",
    )
    .await;
    let (status, body, _) = get_json(&app, "/readyz").await;
    assert_error(status, &body, 503, 10503);
    assert_eq!(
        body["errors"],
        json!([
            {"code": 10503, "message": "Not ready: migration 2 (webhooks) is not applied"},
            {"code": 10503, "message": "Not ready: migration 3 (pull requests) differs from the one this binary embeds"},
        ])
    );
    app.stop().await;
}

/// `GET path` with `x-request-id` values; returns the status and the response's request ids.
async fn request_ids(
    app: &TestApp,
    path: &str,
    sent: &[reqwest::header::HeaderValue],
) -> (StatusCode, Vec<String>) {
    let mut req = app.client.get(format!("{}{path}", app.base));
    for value in sent {
        req = req.header("x-request-id", value.clone());
    }
    let resp = req.send().await.expect("GET");
    let ids = resp
        .headers()
        .get_all("x-request-id")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    (resp.status(), ids)
}

#[tokio::test]
async fn request_ids_are_echoed_when_sane_and_generated_otherwise() {
    let app = spawn().await;
    use reqwest::header::HeaderValue;
    for path in [
        "/healthz",
        "/client/v4/no/such/route",
        "/metrics",
        "/client/v4/openapi.json",
    ] {
        // None sent: a new UUID each time.
        let (_, a) = request_ids(&app, path, &[]).await;
        let (_, b) = request_ids(&app, path, &[]).await;
        assert_eq!((a.len(), b.len()), (1, 1), "{path}");
        assert_ne!(a, b);
        for id in a.iter().chain(&b) {
            assert!(uuid::Uuid::parse_str(id).is_ok(), "{path}: {id}");
        }
        // A sane one is echoed.
        for sane in ["req-42", "01HZY3K8W5Q2ZJ7N4V6T9B1C0D", &"r".repeat(128)] {
            let (_, ids) = request_ids(&app, path, &[HeaderValue::from_str(sane).unwrap()]).await;
            assert_eq!(ids, [sane], "{path}");
        }
        // An insane one (too long, blanks, quotes, non-ASCII, two values) is replaced.
        for insane in [
            vec![HeaderValue::from_str(&"r".repeat(129)).unwrap()],
            vec![HeaderValue::from_static("two words")],
            vec![HeaderValue::from_static("say \"hi\"")],
            vec![HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()],
            vec![
                HeaderValue::from_static("one"),
                HeaderValue::from_static("two"),
            ],
        ] {
            let (_, ids) = request_ids(&app, path, &insane).await;
            assert_eq!(ids.len(), 1, "{path}: {ids:?}");
            assert!(
                uuid::Uuid::parse_str(&ids[0]).is_ok(),
                "{path}: {insane:?} → {ids:?}"
            );
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn error_log_lines_carry_the_request_id() {
    let app = spawn().await;
    // A refusal (404) is logged at debug with its id.
    let refused = format!("refused-{}", uuid::Uuid::new_v4());
    let (status, ids) = request_ids(
        &app,
        &format!(
            "/client/v4{}",
            app.acct(&format!("/builds/{}", uuid::Uuid::new_v4()))
        ),
        &[reqwest::header::HeaderValue::from_str(&refused).unwrap()],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no credentials sent");
    assert_eq!(ids, [refused.as_str()]);
    let lines = log_lines_with(&refused);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("request refused") && l.contains("status=401")),
        "{lines:?}"
    );

    // The store goes away: the 503 is logged as an error with its id.
    app.store().close().await;
    let failed = format!("failed-{}", uuid::Uuid::new_v4());
    let resp = app
        .client
        .get(app.url(&app.acct("/builds/latest?external_script_ids=w")))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-request-id", &failed)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], failed.as_str());
    let status = resp.status();
    assert_error(status, &resp.json().await.unwrap(), 503, 10503);
    let lines = log_lines_with(&failed);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("storage is unavailable")),
        "{lines:?}"
    );
    app.stop().await;
}
