//! Bad inputs, table-driven: each bad input against every endpoint it applies to gets the documented
//! status and Cloudflare error code with a message naming the field, never a 500, and leaves everything
//! stored exactly as it was (a snapshot of every readable resource is taken around each request).

mod common;

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use kiln::domain::{AccountId, BuildId, RepoConnectionId, Timestamp};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

/// The Worker most cases write to: one trigger, so a wrongly accepted trigger would be created.
const WORKER: &str = "bad-input-worker";
/// A Worker that already has the maximum of two triggers.
const FULL_WORKER: &str = "full-worker";
/// A Worker with a build configuration.
const CONFIG_WORKER: &str = "config-worker";
/// The Worker the valid `createWorkerBuild` body configures (nothing before the controls).
const NEW_CONFIG_WORKER: &str = "new-config-worker";

/// A request body.
#[derive(Clone)]
enum Body {
    None,
    /// Bytes sent as is, with `content-type: application/json`.
    Raw(Vec<u8>),
    Json(Value),
}

/// What a case must get back.
enum Want {
    /// An error envelope: this status, this code (any code when `None`), a message containing each of
    /// `names` (the fields it is about).
    Error {
        status: u16,
        code: Option<u64>,
        names: Vec<String>,
    },
    /// `200` with an empty page (a page past the end of a list).
    EmptyPage,
}

fn invalid(names: &[&str]) -> Want {
    Want::Error {
        status: 400,
        code: Some(12002),
        names: names.iter().map(|n| (*n).to_owned()).collect(),
    }
}

fn not_found() -> Want {
    Want::Error {
        status: 404,
        code: Some(12000),
        names: vec![],
    }
}

fn conflict() -> Want {
    Want::Error {
        status: 409,
        code: Some(12009),
        names: vec![],
    }
}

fn no_route() -> Want {
    Want::Error {
        status: 404,
        code: Some(7003),
        names: vec![],
    }
}

fn wrong_method() -> Want {
    Want::Error {
        status: 405,
        code: Some(7001),
        names: vec![],
    }
}

/// 413 naming the API routes' limit.
fn too_large() -> Want {
    Want::Error {
        status: 413,
        code: Some(12002),
        names: vec!["larger than 1 MiB".to_owned()],
    }
}

struct Case {
    label: String,
    method: Method,
    /// Path and query below the server's root (not below `/client/v4`).
    url: String,
    body: Body,
    want: Want,
}

#[derive(Default)]
struct Table(Vec<Case>);

impl Table {
    /// A case on `/client/v4/accounts/{ACCOUNT}/builds` + `path`.
    fn api(
        &mut self,
        label: impl Into<String>,
        method: Method,
        path: &str,
        body: Body,
        want: Want,
    ) {
        self.raw(
            label,
            method,
            &format!("/client/v4/accounts/{ACCOUNT}/builds{path}"),
            body,
            want,
        );
    }

    /// A case on any URL path below the server's root.
    fn raw(&mut self, label: impl Into<String>, method: Method, url: &str, body: Body, want: Want) {
        self.0.push(Case {
            label: label.into(),
            method,
            url: url.to_owned(),
            body,
            want,
        });
    }
}

/// An endpoint that takes a JSON body, with a body it accepts.
struct BodyRoute {
    name: &'static str,
    method: Method,
    path: String,
    valid: Value,
    /// The valid body's field values as an array, in declaration order.
    positional: Value,
}

impl BodyRoute {
    /// The valid body with `field` set to `value` (`None` removes it).
    fn with(&self, field: &str, value: Option<Value>) -> Body {
        let mut obj: Map<String, Value> = self.valid.as_object().expect("object body").clone();
        match value {
            Some(v) => obj.insert(field.to_owned(), v),
            None => obj.remove(field),
        };
        Body::Json(Value::Object(obj))
    }
}

/// Everything the setup created.
struct World {
    trigger: String,
    full_trigger: String,
    connection: String,
    full_connection: String,
    token: String,
    other_connection: String,
    other_token: String,
    hook_prod: String,
    hook_staging: String,
    queued_build: String,
    stopped_build: String,
    /// An event subscription (created after the builds changed: it has no deliveries).
    subscription: String,
}

/// A URL short enough for a failure message.
fn shorten(url: &str) -> String {
    if url.chars().count() <= 120 {
        url.to_owned()
    } else {
        format!("{}…", url.chars().take(120).collect::<String>())
    }
}

/// Sends one case with the admin token; the answer must be a JSON document.
async fn send(app: &TestApp, c: &Case) -> (StatusCode, Value) {
    let mut req = app
        .client
        .request(c.method.clone(), format!("{}{}", app.base, c.url))
        .bearer_auth(ADMIN_TOKEN);
    match &c.body {
        Body::None => {}
        Body::Raw(bytes) => {
            req = req
                .header("content-type", "application/json")
                .body(bytes.clone())
        }
        Body::Json(v) => req = req.json(v),
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: sending failed: {e}", c.label));
    let status = resp.status();
    let text = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("{}: reading failed: {e}", c.label));
    let v = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{}: status {status}, body is not JSON ({e}): {text}",
            c.label
        )
    });
    (status, v)
}

/// Everything observable about the stored state that a bad request could touch.
async fn snapshot(app: &TestApp, w: &World) -> BTreeMap<String, Value> {
    let mut gets = vec![
        format!("/workers/{WORKER}/triggers"),
        format!("/workers/{FULL_WORKER}/triggers"),
        format!("/triggers/{}/environment_variables", w.trigger),
        format!("/triggers/{}/environment_variables", w.full_trigger),
        "/tokens?per_page=200".to_owned(),
        format!("/workers/{WORKER}/builds?per_page=200"),
        format!("/workers/{FULL_WORKER}/builds?per_page=200"),
        format!("/workers/{WORKER}/deploy_hooks"),
        format!("/workers/{FULL_WORKER}/deploy_hooks"),
        format!("/builds/{}", w.queued_build),
        format!("/builds/{}", w.stopped_build),
        format!("/builds/{}/logs", w.queued_build),
        format!("/builds/latest?external_script_ids={WORKER},{FULL_WORKER}"),
        format!("/workers/{CONFIG_WORKER}"),
        format!("/workers/{CONFIG_WORKER}/triggers"),
        format!("/workers/{NEW_CONFIG_WORKER}/triggers"),
        "/event_subscriptions?per_page=200".to_owned(),
        format!("/event_subscriptions/{}", w.subscription),
        format!("/event_subscriptions/{}/deliveries", w.subscription),
    ]
    .into_iter()
    .map(|p| app.acct(&p))
    .collect::<Vec<_>>();
    gets.push(format!(
        "/accounts/{OTHER_ACCOUNT}/builds/tokens?per_page=200"
    ));
    gets.push(format!(
        "/accounts/{OTHER_ACCOUNT}/builds/event_subscriptions?per_page=200"
    ));
    let mut out = BTreeMap::new();
    for path in gets {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "snapshot GET {path}: {body}");
        out.insert(path, body["result"].clone());
    }
    // Repository connections have no GET endpoint: read them from the store.
    let account = AccountId::parse(ACCOUNT).expect("account");
    let other = AccountId::parse(OTHER_ACCOUNT).expect("account");
    for (acct, id) in [
        (&account, &w.connection),
        (&account, &w.full_connection),
        (&other, &w.other_connection),
    ] {
        let conn = app
            .store()
            .get_repo_connection(acct, RepoConnectionId::parse("id", id).expect("uuid"))
            .await
            .expect("read connection");
        out.insert(
            format!("connection {id}"),
            serde_json::to_value(conn).expect("serialize"),
        );
    }
    out
}

/// Fails unless `$cond`, with a formatted reason.
macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

/// The first difference between two snapshots, if any.
fn same_state(
    before: &BTreeMap<String, Value>,
    after: &BTreeMap<String, Value>,
) -> Result<(), String> {
    for (key, was) in before {
        let now = &after[key];
        ensure!(
            was == now,
            "stored state changed at {key}\n    before: {was}\n    after:  {now}"
        );
    }
    Ok(())
}

/// Checks one answer against its expectation: never a 500, then the status, the envelope, the code
/// and a message naming the fields.
fn check(want: &Want, status: StatusCode, body: &Value) -> Result<(), String> {
    ensure!(status.as_u16() < 500, "server error {status}: {body}");
    match want {
        Want::EmptyPage => {
            ensure!(
                status == StatusCode::OK,
                "status {status}, want 200: {body}"
            );
            ensure!(body["success"] == json!(true), "not a success: {body}");
            ensure!(body["result"] == json!([]), "result is not empty: {body}");
            ensure!(
                body["result_info"]["count"] == json!(0),
                "count is not 0: {body}"
            );
            ensure!(
                body["result_info"]["next_page"] == json!(false),
                "next_page is not false: {body}"
            );
        }
        Want::Error {
            status: want_status,
            code,
            names,
        } => {
            ensure!(
                status.as_u16() == *want_status,
                "status {status}, want {want_status}: {body}"
            );
            ensure!(
                body["success"] == json!(false),
                "success is not false: {body}"
            );
            ensure!(body["result"].is_null(), "result is not null: {body}");
            ensure!(body["messages"] == json!([]), "messages is not []: {body}");
            let errors = body["errors"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            ensure!(errors.len() == 1, "want exactly one error: {body}");
            match code {
                Some(code) => ensure!(
                    errors[0]["code"] == json!(code),
                    "code is not {code}: {body}"
                ),
                None => ensure!(errors[0]["code"].is_u64(), "code is not a number: {body}"),
            }
            let message = errors[0]["message"].as_str().unwrap_or_default();
            ensure!(!message.trim().is_empty(), "empty message: {body}");
            for name in names {
                ensure!(
                    message.contains(name.as_str()),
                    "message does not name {name:?}: {message}"
                );
            }
            ensure!(
                !message.contains("sqlx")
                    && !message.contains("SQL")
                    && !message.contains("panicked"),
                "internal text in the message: {message}"
            );
        }
    }
    Ok(())
}

/// Creates two Workers (one with a free trigger slot, one full), env vars, hooks, a queued build with log
/// lines and a stopped build, plus a connection and a token in another account.
async fn setup(app: &TestApp) -> World {
    let f = app.fixture(WORKER).await;
    let full = app.fixture(FULL_WORKER).await;
    let second = app
        .ok(
            Method::POST,
            &app.acct("/triggers"),
            Some(json!({
                "external_script_id": FULL_WORKER, "repo_connection_uuid": full.connection,
                "build_token_uuid": full.token, "trigger_name": "Preview"
            })),
        )
        .await;
    assert!(second["trigger_uuid"].is_string());
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{}/environment_variables", f.trigger)),
        Some(json!({
            "PLAIN_VAR": {"is_secret": false, "value": "plain"},
            "SECRET_VAR": {"is_secret": true, "value": "s3cret-value"}
        })),
    )
    .await;
    let hooks = app.acct(&format!("/workers/{WORKER}/deploy_hooks"));
    let prod = app
        .ok(
            Method::POST,
            &hooks,
            Some(json!({"deploy_hook_name": "prod", "branch": "main"})),
        )
        .await;
    let staging = app
        .ok(
            Method::POST,
            &hooks,
            Some(json!({"deploy_hook_name": "staging", "branch": "develop"})),
        )
        .await;
    let builds = app.acct(&format!("/triggers/{}/builds", f.trigger));
    let queued = s(&app
        .ok(Method::POST, &builds, Some(json!({"branch": "main"})))
        .await["build_uuid"]);
    let stopped = s(&app
        .ok(
            Method::POST,
            &builds,
            Some(json!({"commit_hash": "abc123def456"})),
        )
        .await["build_uuid"]);
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{stopped}/cancel")),
        None,
    )
    .await;
    let lines: Vec<(Timestamp, String)> = (1..=3)
        .map(|i| (Timestamp::now(), format!("log line {i}")))
        .collect();
    app.store()
        .append_build_logs(BuildId::parse("id", &queued).expect("uuid"), &lines)
        .await
        .expect("append logs");
    let (status, config) = app
        .post(&app.acct("/workers"), config_body(CONFIG_WORKER, &f.token))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{config}");
    let other = format!("/accounts/{OTHER_ACCOUNT}/builds");
    let other_conn = app
        .ok(
            Method::PUT,
            &format!("{other}/repos/connections"),
            Some(json!({
                "provider_type": "github", "provider_account_id": "2002", "provider_account_name": "other-org",
                "repo_id": "other-repo", "repo_name": "other-repo"
            })),
        )
        .await;
    let other_token = app
        .ok(
            Method::POST,
            &format!("{other}/tokens"),
            Some(json!({"build_token_name": "other", "build_token_secret": "other-secret-1", "cloudflare_token_id": "cf-other"})),
        )
        .await;
    let subscription = app
        .ok(
            Method::POST,
            &app.acct("/event_subscriptions"),
            Some(json!({"name": "hooks", "url": "https://hooks.example.com/kiln", "worker_names": [WORKER]})),
        )
        .await;
    World {
        subscription: s(&subscription["id"]),
        trigger: f.trigger,
        full_trigger: s(&second["trigger_uuid"]),
        connection: f.connection,
        full_connection: full.connection,
        token: f.token,
        other_connection: s(&other_conn["repo_connection_uuid"]),
        other_token: s(&other_token["build_token_uuid"]),
        hook_prod: s(&prod["deploy_hook_uuid"]),
        hook_staging: s(&staging["deploy_hook_uuid"]),
        queued_build: queued,
        stopped_build: stopped,
    }
}

/// A valid `createWorkerBuild` body for `worker`.
fn config_body(worker: &str, token: &str) -> Value {
    json!({
        "script_tag": worker,
        "git_repository": {"branch": "main", "provider_account_id": "4004",
            "provider_account_name": "config-org", "provider_type": "github",
            "repo_id": format!("{worker}-repo"), "repo_name": format!("{worker}-repo")},
        "production_settings": {"build_command": "npm run build", "build_token_uuid": token,
            "deploy_command": "npx wrangler deploy"}
    })
}

/// The endpoints with a JSON body, each with a body it accepts (sent for real at the end, as a control).
fn body_routes(w: &World) -> Vec<BodyRoute> {
    vec![
        BodyRoute {
            name: "createTrigger",
            method: Method::POST,
            path: "/triggers".to_owned(),
            valid: json!({
                "external_script_id": WORKER, "repo_connection_uuid": w.connection,
                "build_token_uuid": w.token, "trigger_name": "Second"
            }),
            positional: json!([WORKER, w.connection, w.token, "Second"]),
        },
        BodyRoute {
            name: "updateTrigger",
            method: Method::PATCH,
            path: format!("/triggers/{}", w.trigger),
            valid: json!({"trigger_name": "Renamed"}),
            positional: json!(["Renamed"]),
        },
        BodyRoute {
            name: "createManualBuild",
            method: Method::POST,
            path: format!("/triggers/{}/builds", w.trigger),
            valid: json!({"branch": "main"}),
            positional: json!(["main"]),
        },
        BodyRoute {
            name: "upsertEnvironmentVariables",
            method: Method::PATCH,
            path: format!("/triggers/{}/environment_variables", w.trigger),
            valid: json!({"NEW_VAR": {"is_secret": false, "value": "v"}}),
            positional: json!([["NEW_VAR", {"is_secret": false, "value": "v"}]]),
        },
        BodyRoute {
            name: "createBuildToken",
            method: Method::POST,
            path: "/tokens".to_owned(),
            valid: json!({"build_token_name": "new", "build_token_secret": "new-secret-1", "cloudflare_token_id": "cf-new"}),
            positional: json!(["new", "new-secret-1", "cf-new"]),
        },
        BodyRoute {
            name: "upsertRepoConnection",
            method: Method::PUT,
            path: "/repos/connections".to_owned(),
            valid: json!({
                "provider_type": "github", "provider_account_id": "3003", "provider_account_name": "new-org",
                "repo_id": "new-repo", "repo_name": "new-repo"
            }),
            positional: json!(["github", "3003", "new-org", "new-repo", "new-repo"]),
        },
        BodyRoute {
            name: "createDeployHook",
            method: Method::POST,
            path: format!("/workers/{WORKER}/deploy_hooks"),
            valid: json!({"deploy_hook_name": "new-hook", "branch": "main"}),
            positional: json!(["new-hook", "main"]),
        },
        BodyRoute {
            name: "updateDeployHook",
            method: Method::PUT,
            path: format!("/workers/{WORKER}/deploy_hooks/{}", w.hook_prod),
            valid: json!({"deploy_hook_name": "renamed", "branch": "main"}),
            positional: json!(["renamed", "main"]),
        },
        BodyRoute {
            name: "createWorkerBuild",
            method: Method::POST,
            path: "/workers".to_owned(),
            valid: config_body(NEW_CONFIG_WORKER, &w.token),
            positional: json!([NEW_CONFIG_WORKER, ["main"], ["npm run build"]]),
        },
        BodyRoute {
            name: "createEventSubscription",
            method: Method::POST,
            path: "/event_subscriptions".to_owned(),
            valid: json!({"name": "new-sub", "url": "https://example.com/hook"}),
            positional: json!(["new-sub", "https://example.com/hook"]),
        },
        BodyRoute {
            name: "updateEventSubscription",
            method: Method::PATCH,
            path: format!("/event_subscriptions/{}", w.subscription),
            valid: json!({"name": "renamed"}),
            positional: json!(["renamed"]),
        },
        BodyRoute {
            name: "updateWorkerBuild",
            method: Method::PATCH,
            path: format!("/workers/{CONFIG_WORKER}"),
            valid: json!({"production_settings": {"build_command": "npm ci"}}),
            positional: json!([["npm ci"]]),
        },
    ]
}

/// Malformed JSON, empty bodies and wrong top-level types, on every endpoint with a body.
fn malformed_bodies(t: &mut Table, routes: &[BodyRoute]) {
    #[rustfmt::skip]
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("broken JSON", b"{bad".to_vec()),
        ("truncated JSON", br#"{"a":"#.to_vec()),
        ("trailing garbage", b"{} x".to_vec()),
        ("two documents", b"{} {}".to_vec()),
        ("empty body", vec![]),
        ("whitespace body", b"  \n ".to_vec()),
        ("array", b"[]".to_vec()),
        ("string", br#""x""#.to_vec()),
        ("number", b"5".to_vec()),
        ("null", b"null".to_vec()),
        ("boolean", b"true".to_vec()),
        ("invalid UTF-8", b"{\"a\": \"\xff\xfe\"}".to_vec()),
        ("deeply nested, unterminated array", "[".repeat(1000).into_bytes()),
        ("single-quoted JSON", b"{'a': 1}".to_vec()),
    ];
    for r in routes {
        for (what, bytes) in &bodies {
            t.api(
                format!("{} {what}", r.name),
                r.method.clone(),
                &r.path,
                Body::Raw(bytes.clone()),
                invalid(&[]),
            );
        }
        // serde accepts a struct as an array of its field values; the API takes objects only.
        t.api(
            format!("{} positional array {}", r.name, r.positional),
            r.method.clone(),
            &r.path,
            Body::Json(r.positional.clone()),
            invalid(&["object"]),
        );
    }
}

/// Wrong JSON types and missing required fields; the message names the field.
fn wrong_types(t: &mut Table, routes: &[BodyRoute]) {
    let route = |name: &str| routes.iter().find(|r| r.name == name).expect("route");
    #[rustfmt::skip]
    let typed: Vec<(&str, &str, Value)> = vec![
        ("createTrigger", "external_script_id", json!(5)),
        ("createTrigger", "trigger_name", Value::Null),
        ("createTrigger", "trigger_name", json!(5)),
        ("createTrigger", "repo_connection_uuid", Value::Null),
        ("createTrigger", "build_token_uuid", json!(["x"])),
        ("createTrigger", "branch_includes", json!("main")),
        ("createTrigger", "branch_includes", json!([5])),
        ("createTrigger", "path_excludes", json!({"a": 1})),
        ("createTrigger", "build_caching_enabled", json!("yes")),
        ("createTrigger", "build_caching_enabled", json!(1)),
        ("createTrigger", "root_directory", json!(5)),
        ("createTrigger", "build_command", json!(["npm", "run", "build"])),
        ("updateTrigger", "trigger_name", json!(5)),
        ("updateTrigger", "branch_includes", json!("main")),
        ("updateTrigger", "path_includes", json!([null])),
        ("updateTrigger", "build_caching_enabled", json!("true")),
        ("updateTrigger", "build_token_uuid", json!(5)),
        ("updateTrigger", "deploy_command", json!(false)),
        ("createManualBuild", "branch", json!(5)),
        ("createManualBuild", "branch", json!(true)),
        ("createManualBuild", "commit_hash", json!([])),
        ("createManualBuild", "commit_hash", json!(1234567)),
        ("createBuildToken", "build_token_name", json!(5)),
        ("createBuildToken", "build_token_secret", Value::Null),
        ("createBuildToken", "cloudflare_token_id", json!([])),
        // Integers are GitHub's numeric ids (taken as their decimal strings); others are refused.
        ("upsertRepoConnection", "repo_id", json!(-1001)),
        ("upsertRepoConnection", "repo_id", json!(10.5)),
        ("upsertRepoConnection", "provider_type", Value::Null),
        ("upsertRepoConnection", "provider_account_id", json!(true)),
        ("upsertRepoConnection", "provider_account_id", json!([42])),
        ("upsertRepoConnection", "provider_account_id", json!("")),
        ("upsertRepoConnection", "repo_id", json!(" ")),
        ("upsertRepoConnection", "repo_name", json!({"name": "x"})),
        ("createDeployHook", "deploy_hook_name", json!(5)),
        ("createDeployHook", "branch", Value::Null),
        ("createDeployHook", "deploy_hook_name", json!(["a"])),
        ("updateDeployHook", "deploy_hook_name", Value::Null),
        ("updateDeployHook", "branch", json!(7)),
        ("createWorkerBuild", "script_tag", json!(5)),
        ("createWorkerBuild", "git_repository", json!("github")),
        ("createWorkerBuild", "production_settings", json!([])),
        ("createWorkerBuild", "previews_enabled", json!("yes")),
        ("updateWorkerBuild", "production_settings", json!("npm ci")),
        ("updateWorkerBuild", "previews_enabled", json!(1)),
        ("updateWorkerBuild", "git_repository", json!({"branch": 5})),
        ("createEventSubscription", "name", json!(5)),
        ("createEventSubscription", "name", Value::Null),
        ("createEventSubscription", "url", Value::Null),
        ("createEventSubscription", "url", json!(["https://example.com/"])),
        ("createEventSubscription", "secret", json!(5)),
        ("createEventSubscription", "worker_names", json!("w")),
        ("createEventSubscription", "worker_names", json!([5])),
        ("createEventSubscription", "event_types", json!("cf.workersBuilds.worker.build.failed")),
        ("createEventSubscription", "event_types", json!([5])),
        ("createEventSubscription", "enabled", json!("yes")),
        ("createEventSubscription", "enabled", json!(0)),
        ("updateEventSubscription", "name", json!(5)),
        ("updateEventSubscription", "url", json!(true)),
        ("updateEventSubscription", "secret", json!({"key": "x"})),
        ("updateEventSubscription", "worker_names", json!({"a": 1})),
        ("updateEventSubscription", "event_types", json!([null])),
        ("updateEventSubscription", "enabled", json!("false")),
    ];
    for (name, field, value) in typed {
        let r = route(name);
        t.api(
            format!("{name} {field} = {value}"),
            r.method.clone(),
            &r.path,
            r.with(field, Some(value)),
            invalid(&[field]),
        );
    }
    #[rustfmt::skip]
    let required: Vec<(&str, &[&str])> = vec![
        ("createTrigger", &["external_script_id", "repo_connection_uuid", "trigger_name"]),
        ("createBuildToken", &["build_token_name", "build_token_secret", "cloudflare_token_id"]),
        ("upsertRepoConnection", &["provider_type", "provider_account_id", "provider_account_name", "repo_id", "repo_name"]),
        ("createDeployHook", &["deploy_hook_name", "branch"]),
        ("updateDeployHook", &["deploy_hook_name", "branch"]),
        ("createWorkerBuild", &["script_tag", "git_repository", "production_settings"]),
        ("createEventSubscription", &["name", "url"]),
    ];
    for (name, fields) in required {
        let r = route(name);
        for field in fields {
            t.api(
                format!("{name} without {field}"),
                r.method.clone(),
                &r.path,
                r.with(field, None),
                invalid(&[field]),
            );
        }
    }
    // The env var body is a map of objects: errors name the variable and its field.
    let env = route("upsertEnvironmentVariables");
    #[rustfmt::skip]
    let env_cases: Vec<(Value, &[&str])> = vec![
        (json!({"NEW_VAR": "v"}), &["NEW_VAR"]),
        (json!({"NEW_VAR": null}), &["NEW_VAR"]),
        (json!({"NEW_VAR": ["v"]}), &["NEW_VAR"]),
        (json!({"NEW_VAR": {"is_secret": "no", "value": "v"}}), &["NEW_VAR", "is_secret"]),
        (json!({"NEW_VAR": {"is_secret": null, "value": "v"}}), &["NEW_VAR", "is_secret"]),
        (json!({"NEW_VAR": {"is_secret": false, "value": 5}}), &["NEW_VAR", "value"]),
        (json!({"NEW_VAR": {"is_secret": false, "value": ["v"]}}), &["NEW_VAR", "value"]),
        (json!({"NEW_VAR": {"value": "v"}}), &["NEW_VAR", "is_secret"]),
        // The docs guide's list form.
        (json!({"variables": [{"key": "NEW_VAR", "value": "v", "type": "plain"}]}), &["variables[0].type"]),
        (json!({"variables": [{"key": "NEW_VAR", "type": "text"}]}), &["variables[0]", "value"]),
        (json!({"variables": [{"key": "NEW_VAR", "value": 5, "type": "text"}]}), &["variables[0].value"]),
        (json!({"variables": ["NEW_VAR"]}), &["variables[0]"]),
    ];
    for (body, names) in env_cases {
        t.api(
            format!("{} {body}", env.name),
            env.method.clone(),
            &env.path,
            Body::Json(body),
            invalid(names),
        );
    }
}

/// Well-typed values that break a rule.
fn invalid_values(t: &mut Table, routes: &[BodyRoute], w: &World) {
    let route = |name: &str| routes.iter().find(|r| r.name == name).expect("route");
    let unknown = "5f4e3d2c-1b0a-4f9e-8d7c-6b5a4f3e2d1c";
    let long = |n: usize| json!("x".repeat(n));
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Value, &[&str])> = vec![
        // createTrigger
        ("createTrigger", "external_script_id", json!(""), &["external_script_id"]),
        ("createTrigger", "external_script_id", long(65), &["external_script_id"]),
        ("createTrigger", "external_script_id", json!("a/b"), &["external_script_id"]),
        ("createTrigger", "external_script_id", json!("a,b"), &["external_script_id"]),
        ("createTrigger", "external_script_id", json!("a\nb"), &["external_script_id"]),
        ("createTrigger", "repo_connection_uuid", json!("not-a-uuid"), &["repo_connection_uuid"]),
        ("createTrigger", "build_token_uuid", json!(w.token.replace('-', "")), &["build_token_uuid"]),
        ("createTrigger", "trigger_name", json!(""), &["trigger_name"]),
        ("createTrigger", "trigger_name", json!("   "), &["trigger_name"]),
        ("createTrigger", "trigger_name", long(257), &["trigger_name"]),
        ("createTrigger", "trigger_name", json!("a\u{7}b"), &["trigger_name"]),
        ("createTrigger", "root_directory", json!(".."), &["root_directory"]),
        ("createTrigger", "root_directory", json!("../etc"), &["root_directory"]),
        ("createTrigger", "root_directory", json!("apps/../../x"), &["root_directory"]),
        ("createTrigger", "root_directory", json!("apps\\web"), &["root_directory"]),
        ("createTrigger", "root_directory", json!(format!("/{}", "a".repeat(256))), &["root_directory"]),
        ("createTrigger", "branch_includes", json!([""]), &["branch_includes"]),
        ("createTrigger", "branch_includes", json!(vec!["b"; 101]), &["branch_includes"]),
        ("createTrigger", "path_excludes", json!(["x".repeat(257)]), &["path_excludes"]),
        ("createTrigger", "build_command", long(513), &["build_command"]),
        ("createTrigger", "deploy_command", json!("npx wrangler\u{0}deploy"), &["deploy_command"]),
        // updateTrigger
        ("updateTrigger", "trigger_name", json!(""), &["trigger_name"]),
        ("updateTrigger", "root_directory", json!("../x"), &["root_directory"]),
        ("updateTrigger", "build_token_uuid", json!("nope"), &["build_token_uuid"]),
        ("updateTrigger", "path_includes", json!([" "]), &["path_includes"]),
        ("updateTrigger", "build_command", long(513), &["build_command"]),
        // createManualBuild
        ("createManualBuild", "branch", json!("a..b"), &["branch"]),
        ("createManualBuild", "branch", json!("-x"), &["branch"]),
        ("createManualBuild", "branch", json!("a b"), &["branch"]),
        ("createManualBuild", "branch", json!("x.lock"), &["branch"]),
        ("createManualBuild", "branch", json!("a~1"), &["branch"]),
        ("createManualBuild", "branch", json!(""), &["branch"]),
        ("createManualBuild", "branch", long(257), &["branch"]),
        ("createManualBuild", "commit_hash", json!("xyz"), &["commit_hash"]),
        ("createManualBuild", "commit_hash", json!("abc"), &["commit_hash"]),
        ("createManualBuild", "commit_hash", json!("g".repeat(40)), &["commit_hash"]),
        ("createManualBuild", "commit_hash", json!("a".repeat(65)), &["commit_hash"]),
        ("createManualBuild", "commit_hash", json!(""), &["commit_hash"]),
        ("createManualBuild", "seed_repo", json!({"repo": "x"}), &["seed_repo"]),
        // createBuildToken
        ("createBuildToken", "build_token_name", json!(""), &["build_token_name"]),
        ("createBuildToken", "build_token_name", long(257), &["build_token_name"]),
        ("createBuildToken", "build_token_secret", json!(""), &["build_token_secret"]),
        ("createBuildToken", "build_token_secret", json!("   "), &["build_token_secret"]),
        ("createBuildToken", "build_token_secret", long(4097), &["build_token_secret"]),
        ("createBuildToken", "build_token_secret", json!("a\nb"), &["build_token_secret"]),
        ("createBuildToken", "cloudflare_token_id", json!(""), &["cloudflare_token_id"]),
        // upsertRepoConnection
        ("upsertRepoConnection", "provider_type", json!("gitlab"), &["provider_type"]),
        ("upsertRepoConnection", "provider_type", json!("GitHub"), &["provider_type"]),
        ("upsertRepoConnection", "provider_type", json!(""), &["provider_type"]),
        ("upsertRepoConnection", "repo_id", json!(""), &["repo_id"]),
        ("upsertRepoConnection", "repo_name", long(257), &["repo_name"]),
        ("upsertRepoConnection", "provider_account_name", json!("  "), &["provider_account_name"]),
        // deploy hooks
        ("createDeployHook", "deploy_hook_name", json!(""), &["deploy_hook_name"]),
        ("createDeployHook", "deploy_hook_name", json!("   "), &["deploy_hook_name"]),
        ("createDeployHook", "deploy_hook_name", long(59), &["deploy_hook_name"]),
        ("createDeployHook", "branch", json!("a..b"), &["branch"]),
        ("createDeployHook", "branch", json!("-x"), &["branch"]),
        ("createDeployHook", "branch", json!(""), &["branch"]),
        ("updateDeployHook", "deploy_hook_name", json!(""), &["deploy_hook_name"]),
        ("updateDeployHook", "deploy_hook_name", long(59), &["deploy_hook_name"]),
        ("updateDeployHook", "branch", json!("a..b"), &["branch"]),
        ("updateDeployHook", "branch", json!("-x"), &["branch"]),
        // event subscriptions: names, destination URLs, secrets, filters
        ("createEventSubscription", "name", json!(""), &["name"]),
        ("createEventSubscription", "name", json!("  "), &["name"]),
        ("createEventSubscription", "name", long(257), &["name"]),
        ("createEventSubscription", "name", json!("a\u{1b}b"), &["name"]),
        ("createEventSubscription", "url", json!(""), &["url"]),
        ("createEventSubscription", "url", json!("/relative/hook"), &["url"]),
        ("createEventSubscription", "url", json!("example.com/hook"), &["url"]),
        ("createEventSubscription", "url", json!("ftp://example.com/hook"), &["url"]),
        ("createEventSubscription", "url", json!("file:///etc/passwd"), &["url"]),
        ("createEventSubscription", "url", json!("javascript:alert(1)"), &["url"]),
        ("createEventSubscription", "url", json!("https://user:pass@example.com/hook"), &["url", "credentials"]),
        ("createEventSubscription", "url", json!("https://token@example.com/hook"), &["url", "credentials"]),
        ("createEventSubscription", "url", json!("https://example.com/hook#x"), &["url"]),
        ("createEventSubscription", "url", json!("https://exa\tmple.com/hook"), &["url"]),
        ("createEventSubscription", "url", json!(" https://example.com/hook"), &["url"]),
        ("createEventSubscription", "url", json!("https://example.com/a b"), &["url"]),
        ("createEventSubscription", "url", json!("http://"), &["url"]),
        ("createEventSubscription", "url", json!("https://999.0.0.1/"), &["url"]),
        ("createEventSubscription", "url", json!("https://example.com:99999/"), &["url"]),
        ("createEventSubscription", "url", json!(format!("https://example.com/{}", "a".repeat(2048))), &["url", "2048"]),
        ("createEventSubscription", "url", json!(format!("https://example.com/{}", "é".repeat(1000))), &["url", "2048"]),
        ("createEventSubscription", "secret", json!(""), &["secret"]),
        ("createEventSubscription", "secret", json!("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), &["secret", "whsec_"]),
        ("createEventSubscription", "secret", json!("whsec_"), &["secret"]),
        ("createEventSubscription", "secret", json!("whsec_c2hvcnQ="), &["secret", "24-64"]),
        ("createEventSubscription", "secret", json!("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa!w"), &["secret"]),
        ("createEventSubscription", "secret", json!(format!("whsec_{}", "A".repeat(88))), &["secret"]),
        ("createEventSubscription", "worker_names", json!([""]), &["worker_names"]),
        ("createEventSubscription", "worker_names", json!(["a/b"]), &["worker_names"]),
        ("createEventSubscription", "worker_names", json!(["w".repeat(65)]), &["worker_names"]),
        ("createEventSubscription", "worker_names", json!((0..101).map(|i| format!("w{i}")).collect::<Vec<_>>()), &["worker_names", "100"]),
        ("createEventSubscription", "event_types", json!(["cf.workersBuilds.worker.build.queued"]), &["event_types"]),
        ("createEventSubscription", "event_types", json!(["build.started"]), &["event_types"]),
        ("createEventSubscription", "event_types", json!([""]), &["event_types"]),
        ("updateEventSubscription", "name", json!(""), &["name"]),
        ("updateEventSubscription", "url", json!("gopher://example.com/"), &["url"]),
        ("updateEventSubscription", "url", json!("https://a:b@example.com/"), &["url"]),
        ("updateEventSubscription", "secret", json!("whsec_not base64"), &["secret"]),
        ("updateEventSubscription", "worker_names", json!([".."]), &["worker_names"]),
        ("updateEventSubscription", "event_types", json!(["CF.WORKERSBUILDS.WORKER.BUILD.STARTED"]), &["event_types"]),
    ];
    for (name, field, value, names) in cases {
        let r = route(name);
        let shown: String = value.to_string().chars().take(40).collect();
        t.api(
            format!("{name} {field} = {shown}"),
            r.method.clone(),
            &r.path,
            r.with(field, Some(value)),
            invalid(names),
        );
    }

    // Well-formed references to resources that are not the account's (unknown, or another
    // account's): 404 naming the field, like an unknown id in the path.
    #[rustfmt::skip]
    let missing: Vec<(&str, &str, Value, &[&str])> = vec![
        ("createTrigger", "repo_connection_uuid", json!(unknown), &["repo_connection_uuid"]),
        ("createTrigger", "repo_connection_uuid", json!(w.other_connection), &["repo_connection_uuid"]),
        ("createTrigger", "build_token_uuid", json!(unknown), &["build_token_uuid"]),
        ("createTrigger", "build_token_uuid", json!(w.other_token), &["build_token_uuid"]),
        ("updateTrigger", "build_token_uuid", json!(unknown), &["build_token_uuid"]),
        ("updateTrigger", "build_token_uuid", json!(w.other_token), &["build_token_uuid"]),
    ];
    for (name, field, value, names) in missing {
        let r = route(name);
        t.api(
            format!("{name} {field} = {value}"),
            r.method.clone(),
            &r.path,
            r.with(field, Some(value)),
            Want::Error {
                status: 404,
                code: Some(12000),
                names: names.iter().map(|n| (*n).to_owned()).collect(),
            },
        );
    }

    // Without build_token_uuid a trigger takes the account's only token; this account has several,
    // which conflicts with what is stored (409), naming the field.
    let r = route("createTrigger");
    t.api(
        "createTrigger without build_token_uuid, the account having several",
        r.method.clone(),
        &r.path,
        r.with("build_token_uuid", None),
        Want::Error {
            status: 409,
            code: Some(12009),
            names: vec!["build_token_uuid".to_owned()],
        },
    );

    // A manual build needs a branch or a commit.
    let build = route("createManualBuild");
    for body in [
        json!({}),
        json!({"branch": null, "commit_hash": null}),
        json!({"commit_hash": null}),
    ] {
        t.api(
            format!("createManualBuild {body}"),
            Method::POST,
            &build.path,
            Body::Json(body),
            invalid(&["branch", "commit_hash"]),
        );
    }

    // Environment variables: names, sizes, counts; a bad entry must not let the good ones through.
    let env = route("upsertEnvironmentVariables");
    let var = |v: &str| json!({"is_secret": false, "value": v});
    let many = |n: usize| {
        Value::Object(
            (0..n)
                .map(|i| (format!("VAR_{i:03}"), var("v")))
                .collect::<Map<String, Value>>(),
        )
    };
    #[rustfmt::skip]
    let env_cases: Vec<(&str, Value, Vec<&str>)> = vec![
        ("key 1A", json!({"1A": var("v")}), vec!["\"1A\""]),
        ("key A-B", json!({"A-B": var("v")}), vec!["\"A-B\""]),
        ("empty key", json!({"": var("v")}), vec!["\"\""]),
        ("key with a space", json!({"A B": var("v")}), vec!["\"A B\""]),
        ("key too long", Value::Object([("A".repeat(257), var("v"))].into_iter().collect()), vec!["environment variable name"]),
        ("good and bad keys", json!({"GOOD_VAR": var("v"), "1BAD": var("v")}), vec!["\"1BAD\""]),
        ("value over 5 KiB", json!({"BIG_VAR": var(&"x".repeat(5 * 1024 + 1))}), vec!["BIG_VAR"]),
        ("secret value over 5 KiB", json!({"BIG_SECRET": {"is_secret": true, "value": "x".repeat(5 * 1024 + 1)}}), vec!["BIG_SECRET"]),
        ("value with NUL", json!({"NUL_VAR": var("a\u{0}b")}), vec!["NUL_VAR"]),
        ("value with a control character", json!({"CTL_VAR": var("a\u{1b}[0mb")}), vec!["CTL_VAR", "control"]),
        ("65 variables in one request", many(65), vec!["64"]),
        ("list form: a bad key", json!({"variables": [{"key": "1A", "value": "a", "type": "text"}]}), vec!["\"1A\""]),
        ("null deletes only in a Worker configuration", json!({"PLAIN_VAR": null}), vec!["PLAIN_VAR", "DELETE"]),
    ];
    for (what, body, names) in env_cases {
        t.api(
            format!("{} {what}", env.name),
            env.method.clone(),
            &env.path,
            Body::Json(body),
            invalid(&names),
        );
    }
    // Well-formed changes that the stored variables refuse: a conflict with them (409), checked by
    // the store inside its transaction.
    #[rustfmt::skip]
    let env_conflicts: Vec<(&str, Value, Vec<&str>)> = vec![
        // 63 new + 2 stored = 65.
        ("63 new variables on top of 2 stored", many(63), vec!["64"]),
        ("new variable without a value", json!({"NEW_VAR": {"is_secret": false}}), vec!["NEW_VAR"]),
        ("valid variable, then a new one without a value", json!({"AAA_VAR": var("v"), "ZZZ_VAR": {"is_secret": true}}), vec!["ZZZ_VAR"]),        // A secret is replaced or deleted, never revealed (issue 8).
        ("secret made plain without a value", json!({"SECRET_VAR": {"is_secret": false}}), vec!["SECRET_VAR", "new value"]),
        ("secret made plain with a null value", json!({"SECRET_VAR": {"is_secret": false, "value": null}}), vec!["SECRET_VAR"]),
        ("valid variable, then a secret made plain", json!({"AAA_VAR": var("v"), "SECRET_VAR": {"is_secret": false}}), vec!["SECRET_VAR"]),
    ];
    for (what, body, names) in env_conflicts {
        t.api(
            format!("{} {what}", env.name),
            env.method.clone(),
            &env.path,
            Body::Json(body),
            Want::Error {
                status: 409,
                code: Some(12009),
                names: names.iter().map(|n| (*n).to_owned()).collect(),
            },
        );
    }
    // The key in the delete path follows the same rule.
    for key in ["1A", "A-B", "A%20B", "%C3%A9"] {
        t.api(
            format!("deleteEnvironmentVariable key {key}"),
            Method::DELETE,
            &format!("/triggers/{}/environment_variables/{key}", w.trigger),
            Body::None,
            invalid(&["environment variable name"]),
        );
    }
    t.api(
        "deleteEnvironmentVariable unknown key",
        Method::DELETE,
        &format!("/triggers/{}/environment_variables/NO_SUCH_VAR", w.trigger),
        Body::None,
        not_found(),
    );
}

/// Every path segment that takes a UUID: malformed → 400 naming it; well-formed but unknown, another
/// account's, or under the wrong Worker → 404.
fn path_ids(t: &mut Table, w: &World) {
    let rename = json!({"trigger_name": "Renamed"});
    let new_var = json!({"NEW_VAR": {"is_secret": false, "value": "v"}});
    let hook_body = json!({"deploy_hook_name": "renamed", "branch": "main"});
    // (method, path with {ID}, field, existing id, body)
    #[rustfmt::skip]
    let routes: Vec<(Method, &str, &str, &str, Option<Value>)> = vec![
        (Method::GET, "/builds/{ID}", "build_uuid", w.queued_build.as_str(), None),
        (Method::PUT, "/builds/{ID}/cancel", "build_uuid", w.queued_build.as_str(), None),
        (Method::GET, "/builds/{ID}/logs", "build_uuid", w.queued_build.as_str(), None),
        (Method::PATCH, "/triggers/{ID}", "trigger_uuid", w.trigger.as_str(), Some(rename)),
        (Method::DELETE, "/triggers/{ID}", "trigger_uuid", w.trigger.as_str(), None),
        (Method::POST, "/triggers/{ID}/purge_build_cache", "trigger_uuid", w.trigger.as_str(), None),
        (Method::POST, "/triggers/{ID}/builds", "trigger_uuid", w.trigger.as_str(), Some(json!({"branch": "main"}))),
        (Method::GET, "/triggers/{ID}/environment_variables", "trigger_uuid", w.trigger.as_str(), None),
        (Method::PATCH, "/triggers/{ID}/environment_variables", "trigger_uuid", w.trigger.as_str(), Some(new_var)),
        (Method::DELETE, "/triggers/{ID}/environment_variables/PLAIN_VAR", "trigger_uuid", w.trigger.as_str(), None),
        (Method::DELETE, "/tokens/{ID}", "build_token_uuid", w.token.as_str(), None),
        (Method::DELETE, "/repos/connections/{ID}", "repo_connection_uuid", w.connection.as_str(), None),
        (Method::GET, "/workers/{W}/deploy_hooks/{ID}", "deploy_hook_uuid", w.hook_prod.as_str(), None),
        (Method::PUT, "/workers/{W}/deploy_hooks/{ID}", "deploy_hook_uuid", w.hook_prod.as_str(), Some(hook_body)),
        (Method::DELETE, "/workers/{W}/deploy_hooks/{ID}", "deploy_hook_uuid", w.hook_prod.as_str(), None),
        (Method::GET, "/event_subscriptions/{ID}", "event_subscription_id", w.subscription.as_str(), None),
        (Method::PATCH, "/event_subscriptions/{ID}", "event_subscription_id", w.subscription.as_str(), Some(json!({"name": "x"}))),
        (Method::DELETE, "/event_subscriptions/{ID}", "event_subscription_id", w.subscription.as_str(), None),
        (Method::GET, "/event_subscriptions/{ID}/deliveries", "event_subscription_id", w.subscription.as_str(), None),
    ];
    let unknown = uuid::Uuid::new_v4().to_string();
    for (method, template, field, existing, body) in routes {
        let body = body.map_or(Body::None, Body::Json);
        let path = |id: &str, worker: &str| template.replace("{W}", worker).replace("{ID}", id);
        let bad = [
            ("not-a-uuid".to_owned(), "not-a-uuid"),
            (existing.replace('-', ""), "uuid without hyphens"),
            (format!("{existing}0"), "37 characters"),
            (
                "gggggggg-gggg-4ggg-8ggg-gggggggggggg".to_owned(),
                "36 non-hex characters",
            ),
            (format!("%7B{}%7D", &existing[..34]), "braced uuid"),
            (existing.to_uppercase().replace('-', "_"), "underscores"),
        ];
        for (id, what) in bad {
            t.api(
                format!("{method} {template} {field} {what}"),
                method.clone(),
                &path(&id, WORKER),
                body.clone(),
                invalid(&[field]),
            );
        }
        t.api(
            format!("{method} {template} {field} invalid UTF-8"),
            method.clone(),
            &path("%FF%FE", WORKER),
            body.clone(),
            invalid(&[]),
        );
        t.api(
            format!("{method} {template} unknown {field}"),
            method.clone(),
            &path(&unknown, WORKER),
            body.clone(),
            not_found(),
        );
        t.raw(
            format!("{method} {template} {field} of another account"),
            method.clone(),
            &format!(
                "/client/v4/accounts/{OTHER_ACCOUNT}/builds{}",
                path(existing, WORKER)
            ),
            body.clone(),
            not_found(),
        );
        if template.contains("{W}") {
            t.api(
                format!("{method} {template} hook under another Worker"),
                method.clone(),
                &path(existing, FULL_WORKER),
                body,
                not_found(),
            );
        }
    }
    // Redelivery: the subscription and the delivery ids are parsed, then looked up in the account.
    let redeliver = |sub: &str, delivery: &str| {
        format!("/event_subscriptions/{sub}/deliveries/{delivery}/redeliver")
    };
    let unknown_delivery = uuid::Uuid::new_v4().to_string();
    for (label, path, want) in [
        (
            "redeliver a malformed delivery id",
            redeliver(&w.subscription, "not-a-uuid"),
            invalid(&["delivery_id"]),
        ),
        (
            "redeliver with a malformed subscription id",
            redeliver("not-a-uuid", &unknown_delivery),
            invalid(&["event_subscription_id"]),
        ),
        (
            "redeliver an unknown delivery",
            redeliver(&w.subscription, &unknown_delivery),
            not_found(),
        ),
        (
            "redeliver of an unknown subscription",
            redeliver(&unknown, &unknown_delivery),
            not_found(),
        ),
    ] {
        t.api(label, Method::POST, &path, Body::None, want);
    }
    t.raw(
        "redeliver under another account",
        Method::POST,
        &format!(
            "/client/v4/accounts/{OTHER_ACCOUNT}/builds{}",
            redeliver(&w.subscription, &unknown_delivery)
        ),
        Body::None,
        not_found(),
    );
    // A Worker without a trigger cannot get a deploy hook.
    t.api(
        "createDeployHook on a Worker without triggers",
        Method::POST,
        "/workers/no-such-worker/deploy_hooks",
        Body::Json(json!({"deploy_hook_name": "x", "branch": "main"})),
        not_found(),
    );
    // Worker ids in paths.
    let long_worker = "w".repeat(65);
    for path in [
        format!("/workers/{long_worker}/triggers"),
        format!("/workers/{long_worker}/builds"),
        format!("/workers/{long_worker}/deploy_hooks"),
        "/workers/a%2Cb/triggers".to_owned(),
        "/workers/a%0Ab/builds".to_owned(),
    ] {
        t.api(
            format!("GET {path}"),
            Method::GET,
            &path,
            Body::None,
            invalid(&["external_script_id"]),
        );
    }
    // Account ids in paths.
    for account in ["a.b", "a%20b", &"a".repeat(65)] {
        t.raw(
            format!("GET tokens of account {account}"),
            Method::GET,
            &format!("/client/v4/accounts/{account}/builds/tokens"),
            Body::None,
            invalid(&["account_id"]),
        );
    }
}

/// `page` / `per_page` on both paginated lists.
fn paging(t: &mut Table, w: &World) {
    for list in [
        format!("/workers/{WORKER}/builds"),
        "/tokens".to_owned(),
        "/event_subscriptions".to_owned(),
        format!("/event_subscriptions/{}/deliveries", w.subscription),
    ] {
        for q in [
            "per_page=0",
            "per_page=201",
            "per_page=-1",
            "per_page=abc",
            "per_page=1.5",
            "per_page=",
            "page=0",
            "page=-1",
            "page=abc",
            "page=1e3",
            "page=99999999999999999999",
            "page=1000001",
            "page=1&per_page=0",
        ] {
            let field = if q.starts_with("per_page") || q.ends_with("per_page=0") {
                "per_page"
            } else {
                "page"
            };
            t.api(
                format!("GET {list}?{q}"),
                Method::GET,
                &format!("{list}?{q}"),
                Body::None,
                invalid(&[field]),
            );
        }
        for q in [
            "page=2",
            "page=3&per_page=200",
            "page=1000000&per_page=200",
            "page=5&per_page=1",
        ] {
            t.api(
                format!("GET {list}?{q} (past the end)"),
                Method::GET,
                &format!("{list}?{q}"),
                Body::None,
                Want::EmptyPage,
            );
        }
    }
}

/// Comma-separated id lists of `builds/latest` and `builds?version_ids=`.
fn id_lists(t: &mut Table) {
    let uuids: Vec<String> = (0..21).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let workers: Vec<String> = (0..21).map(|i| format!("w{i}")).collect();
    let latest = "/builds/latest?external_script_ids=";
    let versions = "/builds?version_ids=";
    #[rustfmt::skip]
    let cases: Vec<(String, &str)> = vec![
        (format!("{latest}{}", workers.join(",")), "external_script_ids"),
        (format!("{latest}a,,b"), "external_script_ids"),
        (format!("{latest}a,"), "external_script_ids"),
        (format!("{latest},a"), "external_script_ids"),
        (latest.to_owned(), "external_script_ids"),
        ("/builds/latest".to_owned(), "external_script_ids"),
        ("/builds/latest?script_ids=a".to_owned(), "external_script_ids"),
        (format!("{latest}{}", "w".repeat(65)), "external_script_ids"),
        (format!("{latest}a%0Ab"), "external_script_ids"),
        (format!("{versions}{}", uuids.join(",")), "version_ids"),
        (format!("{versions}{},,{}", uuids[0], uuids[1]), "version_ids"),
        (format!("{versions}{},", uuids[0]), "version_ids"),
        (versions.to_owned(), "version_ids"),
        ("/builds".to_owned(), "version_ids"),
        (format!("{versions}not-a-uuid"), "version_ids"),
        (format!("{versions}{},not-a-uuid", uuids[0]), "version_ids"),
        (format!("{versions}{}", uuids[0].replace('-', "")), "version_ids"),
    ];
    for (path, field) in cases {
        let shown: String = path.chars().take(80).collect();
        t.api(
            format!("GET {shown}"),
            Method::GET,
            &path,
            Body::None,
            invalid(&[field]),
        );
    }
}

/// Log cursors that this endpoint never returned.
fn log_cursors(t: &mut Table, w: &World) {
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    for cursor in [
        "%%%".to_owned(),
        "!!!".to_owned(),
        "%FF".to_owned(),
        b64("not json"),
        b64("[]"),
        b64(r#"{"line":-1,"timestamp":0}"#),
        b64(r#"{"line":"3","timestamp":0}"#),
        b64(r#"{"timestamp":0}"#),
        b64(r#"{"line":1.5,"timestamp":0}"#),
        format!("{}==", b64(r#"{"line":1,"timestamp":0}"#)),
    ] {
        t.api(
            format!("GET logs cursor={cursor}"),
            Method::GET,
            &format!("/builds/{}/logs?cursor={cursor}", w.queued_build),
            Body::None,
            invalid(&["cursor"]),
        );
    }
}

/// Bodies over 1 MiB on every endpoint that reads a body.
fn oversized(t: &mut Table, routes: &[BodyRoute], w: &World) {
    let mut big = br#"{"pad":""#.to_vec();
    big.resize(1024 * 1024 + 1, b'x');
    big.extend_from_slice(br#""}"#);
    for r in routes {
        t.api(
            format!("{} over 1 MiB", r.name),
            r.method.clone(),
            &r.path,
            Body::Raw(big.clone()),
            too_large(),
        );
    }
    for (method, path) in [
        (Method::PUT, format!("/builds/{}/cancel", w.queued_build)),
        (
            Method::POST,
            format!("/triggers/{}/purge_build_cache", w.trigger),
        ),
    ] {
        t.api(
            format!("{method} {path} over 1 MiB"),
            method.clone(),
            &path,
            Body::Raw(big.clone()),
            too_large(),
        );
    }
}

/// Unknown routes and wrong methods (`/` and `/accounts/…` outside `/client/v4` are the dashboard's
/// pages, which send a browser without a session to sign in: tests/dashboard.rs).
fn routing(t: &mut Table, w: &World) {
    let a = format!("/client/v4/accounts/{ACCOUNT}/builds");
    for url in [
        "/nope".to_owned(),
        "/client/v4".to_owned(),
        "/client/v4/".to_owned(),
        "/client/v4/nope".to_owned(),
        "/client/v4/accounts/x/builds/nope".to_owned(),
        format!("{a}/nope"),
        format!("{a}/tokens/"),
        format!("{a}/builds/{}/logs/more", w.queued_build),
        format!("/client/v3/accounts/{ACCOUNT}/builds/tokens"),
    ] {
        t.raw(
            format!("GET {url}"),
            Method::GET,
            &url,
            Body::None,
            no_route(),
        );
    }
    t.raw(
        "POST /client/v4/nope",
        Method::POST,
        "/client/v4/nope",
        Body::Json(json!({})),
        no_route(),
    );
    let b = &w.queued_build;
    for (method, path) in [
        (Method::POST, format!("/builds/{b}")),
        (Method::DELETE, format!("/builds/{b}")),
        (Method::GET, format!("/builds/{b}/cancel")),
        (Method::POST, format!("/builds/{b}/cancel")),
        (Method::PATCH, format!("/builds/{b}/logs")),
        (Method::DELETE, "/tokens".to_owned()),
        (Method::PUT, "/tokens".to_owned()),
        (Method::GET, format!("/tokens/{}", w.token)),
        (Method::GET, "/triggers".to_owned()),
        (Method::PUT, format!("/triggers/{}", w.trigger)),
        (
            Method::GET,
            format!("/triggers/{}/purge_build_cache", w.trigger),
        ),
        (Method::GET, format!("/triggers/{}/builds", w.trigger)),
        (
            Method::POST,
            format!("/triggers/{}/environment_variables", w.trigger),
        ),
        (Method::POST, format!("/workers/{WORKER}/triggers")),
        (Method::DELETE, format!("/workers/{WORKER}/builds")),
        (
            Method::PATCH,
            format!("/workers/{WORKER}/deploy_hooks/{}", w.hook_prod),
        ),
        (Method::DELETE, format!("/workers/{WORKER}/deploy_hooks")),
        (Method::GET, "/repos/connections".to_owned()),
        (Method::POST, "/repos/connections".to_owned()),
        (Method::POST, "/builds/latest".to_owned()),
        (Method::POST, "/account/limits".to_owned()),
        (Method::PUT, "/event_subscriptions".to_owned()),
        (Method::DELETE, "/event_subscriptions".to_owned()),
        (
            Method::PUT,
            format!("/event_subscriptions/{}", w.subscription),
        ),
        (
            Method::POST,
            format!("/event_subscriptions/{}", w.subscription),
        ),
        (
            Method::POST,
            format!("/event_subscriptions/{}/deliveries", w.subscription),
        ),
        (
            Method::GET,
            format!(
                "/event_subscriptions/{}/deliveries/{}/redeliver",
                w.subscription, w.subscription
            ),
        ),
    ] {
        t.api(
            format!("{method} {path}"),
            method.clone(),
            &path,
            Body::None,
            wrong_method(),
        );
    }
    t.raw(
        "POST openapi.json",
        Method::POST,
        "/client/v4/openapi.json",
        Body::None,
        wrong_method(),
    );
}

/// Requests that are well-formed but conflict with what is stored.
fn conflicts(t: &mut Table, w: &World) {
    t.api(
        "third trigger on a Worker",
        Method::POST,
        "/triggers",
        Body::Json(json!({
            "external_script_id": FULL_WORKER, "repo_connection_uuid": w.full_connection,
            "build_token_uuid": w.token, "trigger_name": "Third"
        })),
        conflict(),
    );
    let hooks = format!("/workers/{WORKER}/deploy_hooks");
    for name in ["prod", " prod ", "staging"] {
        t.api(
            format!("duplicate deploy hook name {name:?}"),
            Method::POST,
            &hooks,
            Body::Json(json!({"deploy_hook_name": name, "branch": "main"})),
            conflict(),
        );
    }
    t.api(
        "rename a deploy hook to a taken name",
        Method::PUT,
        &format!("{hooks}/{}", w.hook_staging),
        Body::Json(json!({"deploy_hook_name": "prod", "branch": "develop"})),
        conflict(),
    );
    t.api(
        "cancel a stopped build",
        Method::PUT,
        &format!("/builds/{}/cancel", w.stopped_build),
        Body::None,
        conflict(),
    );
    for conn in [&w.connection, &w.full_connection] {
        t.api(
            "delete a connection a trigger uses",
            Method::DELETE,
            &format!("/repos/connections/{conn}"),
            Body::None,
            conflict(),
        );
    }
}

#[tokio::test]
async fn bad_inputs_are_refused_and_change_nothing() {
    let app = TestApp::spawn().await;
    let w = setup(&app).await;
    let routes = body_routes(&w);

    let mut t = Table::default();
    malformed_bodies(&mut t, &routes);
    wrong_types(&mut t, &routes);
    invalid_values(&mut t, &routes, &w);
    path_ids(&mut t, &w);
    paging(&mut t, &w);
    id_lists(&mut t);
    log_cursors(&mut t, &w);
    oversized(&mut t, &routes, &w);
    routing(&mut t, &w);
    conflicts(&mut t, &w);

    let initial = snapshot(&app, &w).await;
    let mut before = initial.clone();
    let mut failures = Vec::new();
    for case in &t.0 {
        let (status, body) = send(&app, case).await;
        let after = snapshot(&app, &w).await;
        let outcome = check(&case.want, status, &body).and_then(|()| same_state(&before, &after));
        if let Err(why) = outcome {
            failures.push(format!(
                "{} ({} {}): {why}",
                case.label,
                case.method,
                shorten(&case.url)
            ));
        }
        before = after;
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        t.0.len(),
        failures.join("\n")
    );
    assert!(t.0.len() > 400, "the table has only {} cases", t.0.len());

    // Controls: each endpoint's valid body is accepted, so the cases above failed for the reason they
    // name, and the snapshot sees the writes.
    for r in &routes {
        let (status, body) = app
            .call(
                r.method.clone(),
                &app.acct(&r.path),
                Some(ADMIN_TOKEN),
                Some(r.valid.clone()),
            )
            .await;
        let want = if r.name == "createWorkerBuild" {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        assert_eq!(status, want, "control {}: {body}", r.name);
        assert_eq!(body["success"], json!(true), "control {}: {body}", r.name);
    }
    let changed = snapshot(&app, &w).await;
    for key in [
        format!("/workers/{CONFIG_WORKER}"),
        format!("/workers/{NEW_CONFIG_WORKER}/triggers"),
        format!("/workers/{WORKER}/triggers"),
        format!("/triggers/{}/environment_variables", w.trigger),
        "/tokens?per_page=200".to_owned(),
        format!("/workers/{WORKER}/builds?per_page=200"),
        format!("/workers/{WORKER}/deploy_hooks"),
        "/event_subscriptions?per_page=200".to_owned(),
        format!("/event_subscriptions/{}", w.subscription),
    ] {
        let key = app.acct(&key);
        assert_ne!(
            initial[&key], changed[&key],
            "control writes are not visible at {key}"
        );
    }
    app.stop().await;
}

/// Writes `request` raw on a new connection and returns everything the server sends until it closes.
async fn raw_exchange(app: &TestApp, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.server.as_ref().expect("server").addr;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write the request");
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the server neither answered nor closed")
    .ok();
    answer
}

/// The answers in `raw`, in order: status and JSON body of each (every one must be JSON).
fn answers(raw: &[u8]) -> Vec<(u16, Value)> {
    let mut text = String::from_utf8_lossy(raw).into_owned();
    let mut out = Vec::new();
    while !text.is_empty() {
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/json"), "{head}");
        let length: usize = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no content-length in {head:?}"));
        let body: Value = serde_json::from_str(&rest[..length])
            .unwrap_or_else(|e| panic!("{e}: {:?}", &rest[..length]));
        out.push((status, body));
        text = rest[length..].to_owned();
    }
    out
}

/// One error answer: `status`, code 12002, a message containing `says`.
fn assert_refused(raw: &[u8], status: u16, says: &str) {
    let all = answers(raw);
    assert_eq!(all.len(), 1, "{all:?}");
    let (got, body) = &all[0];
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["success"], json!(false), "{body}");
    assert_eq!(body["result"], Value::Null, "{body}");
    assert_eq!(body["errors"][0]["code"], json!(12002), "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(says),
        "{status}: {message:?} should say {says:?}"
    );
}

#[tokio::test]
async fn requests_hyper_cannot_parse_get_the_envelope_with_the_true_limits() {
    let app = TestApp::spawn().await;

    // A 100 KB URI: over the http crate's 65534 bytes.
    let uri = format!("/client/v4/{}", "a".repeat(100_000));
    let raw = raw_exchange(
        &app,
        format!("GET {uri} HTTP/1.1\r\nHost: kiln\r\n\r\n").as_bytes(),
    )
    .await;
    assert_refused(&raw, 414, "at most 65534 bytes");

    // 500 header fields, and one header field of 300 KB.
    let many: String = (0..500).map(|i| format!("X-Field-{i}: v\r\n")).collect();
    let raw = raw_exchange(
        &app,
        format!("GET /client/v4/openapi.json HTTP/1.1\r\nHost: kiln\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_refused(&raw, 431, "at most 100 header fields");
    let big = "b".repeat(300 * 1024);
    let raw = raw_exchange(
        &app,
        format!("GET /client/v4/openapi.json HTTP/1.1\r\nHost: kiln\r\nX-Big: {big}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_refused(&raw, 431, "256 KiB");

    // Garbage request lines and header fields.
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /client/v4/openapi.json HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST /client/v4/openapi.json HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ] {
        let raw = raw_exchange(&app, garbage).await;
        assert_refused(&raw, 400, "Malformed HTTP request");
    }

    // After a good request on a keep-alive connection, garbage still gets the envelope.
    let raw = raw_exchange(
        &app,
        b"GET /client/v4/nope HTTP/1.1\r\nHost: kiln\r\n\r\nGARBAGE\r\n\r\n",
    )
    .await;
    let all = answers(&raw);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        (all[0].0, &all[0].1["errors"][0]["code"]),
        (404, &json!(7003))
    );
    assert_eq!(
        (all[1].0, &all[1].1["errors"][0]["code"]),
        (400, &json!(12002))
    );

    // A long URI within the limits is routed as any other.
    let uri = format!("/client/v4/{}", "a".repeat(20_000));
    let raw = raw_exchange(
        &app,
        format!("GET {uri} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    let all = answers(&raw);
    assert_eq!(
        (all[0].0, &all[0].1["errors"][0]["code"]),
        (404, &json!(7003))
    );
    app.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_naming_the_limit_of_their_route() {
    let app = TestApp::spawn().await;
    let webhook_head = |length: &str| {
        format!(
            "POST /webhooks/github HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\n\
             X-GitHub-Event: push\r\nX-GitHub-Delivery: d-1\r\nX-Hub-Signature-256: sha256=00\r\n{length}\r\n"
        )
    };
    // 26 MiB announced: refused before it is read.
    let raw = raw_exchange(
        &app,
        webhook_head(&format!("Content-Length: {}\r\n", 26 * 1024 * 1024)).as_bytes(),
    )
    .await;
    assert_refused(&raw, 413, "larger than 25 MiB");
    // 25 MiB and a byte, chunked: refused once read.
    let mut request = webhook_head("Transfer-Encoding: chunked\r\n").into_bytes();
    let chunk = 25 * 1024 * 1024 + 1;
    request.extend_from_slice(format!("{chunk:x}\r\n").as_bytes());
    request.resize(request.len() + chunk, b' ');
    let raw = raw_exchange(&app, &request).await;
    assert_refused(&raw, 413, "larger than 25 MiB");
    // An API route says its own limit.
    let raw = raw_exchange(
        &app,
        format!(
            "POST /client/v4/accounts/{ACCOUNT}/builds/tokens HTTP/1.1\r\nHost: kiln\r\n\
             Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            2 * 1024 * 1024
        )
        .as_bytes(),
    )
    .await;
    assert_refused(&raw, 413, "larger than 1 MiB");
    app.stop().await;
}

/// Lists without paging stay bounded: a Worker has at most 100 deploy hooks.
#[tokio::test]
async fn a_worker_has_at_most_100_deploy_hooks() {
    let app = TestApp::spawn().await;
    app.fixture("hooked").await;
    let hooks = app.acct("/workers/hooked/deploy_hooks");
    for i in 0..100 {
        app.ok(
            Method::POST,
            &hooks,
            Some(json!({"deploy_hook_name": format!("hook-{i}"), "branch": "main"})),
        )
        .await;
    }
    let (status, body) = app
        .post(
            &hooks,
            json!({"deploy_hook_name": "one-more", "branch": "main"}),
        )
        .await;
    assert_error(status, &body, 409, 12009);
    let list = app.ok(Method::GET, &hooks, None).await;
    assert_eq!(list.as_array().unwrap().len(), 100);
    // Deleting one makes room again.
    let first = s(&list[0]["deploy_hook_uuid"]);
    app.ok(Method::DELETE, &format!("{hooks}/{first}"), None)
        .await;
    app.ok(
        Method::POST,
        &hooks,
        Some(json!({"deploy_hook_name": "one-more", "branch": "main"})),
    )
    .await;
    app.stop().await;
}

/// Commit messages and authors come from pushes, whatever their size: a build keeps a bounded part.
#[tokio::test]
async fn a_huge_commit_message_is_stored_cut() {
    let app = TestApp::spawn().await;
    let f = app.fixture("chatty").await;
    let account = AccountId::parse(ACCOUNT).expect("account");
    let new = kiln::store::NewBuild {
        trigger: kiln::domain::TriggerId::parse("t", &f.trigger).expect("trigger"),
        source: kiln::domain::TriggerSource::Push,
        branch: Some("main".to_owned()),
        commit_hash: Some("0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".to_owned()),
        commit_message: Some(format!("Subject line\n\n{}", "é".repeat(2 * 1024 * 1024))),
        author: Some(format!("{}@example.com", "a".repeat(100_000))),
        pull_request: None,
        deploy_hook: None,
        seed: None,
        watch_paths: None,
    };
    let (id, _) = app
        .store()
        .insert_build(&account, &new)
        .await
        .expect("insert")
        .expect("trigger exists");
    let b = app
        .ok(Method::GET, &app.acct(&format!("/builds/{id}")), None)
        .await;
    let meta = &b["build_trigger_metadata"];
    let message = s(&meta["commit_message"]);
    assert!(
        message.starts_with("Subject line\n\né"),
        "{}",
        &message[..40]
    );
    assert!(
        message.len() <= kiln::domain::MAX_COMMIT_MESSAGE_BYTES,
        "{}",
        message.len()
    );
    assert!(s(&meta["author"]).len() <= kiln::domain::MAX_AUTHOR_BYTES);
    app.stop().await;
}
