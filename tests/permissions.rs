//! Permission matrix over every authenticated route of `kiln::api::routes()`, and cross-account isolation.

mod common;

use common::*;
use kiln::api::{Access, Route, routes};
use kiln::crypto::hash_credential;
use kiln::domain::{AccountId, CredentialKind, Permission, RepoConnectionId, Timestamp};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The Worker the shared fixtures belong to.
const WORKER: &str = "w1";
/// The environment variable every fixture trigger has.
const ENV_KEY: &str = "NODE_VERSION";
/// A version id no build produced (`version_ids` only has to be well formed).
const VERSION_ID: &str = "7d0f6a52-3c1e-4b8e-9a51-2f4c8d9e6b13";
/// Owner of the global keys.
const EMAIL: &str = "ops@example.com";
/// Name of the fixture deploy hook.
const HOOK_NAME: &str = "deploy main";

/// Everything a route's path, query and body can refer to, all in one account.
#[derive(Debug, Clone)]
struct Ids {
    worker: String,
    /// A Worker with a build configuration (the worker build routes use it).
    config_worker: String,
    /// The connection the trigger uses.
    connection: String,
    /// A connection no trigger uses (deletable).
    spare_connection: String,
    token: String,
    trigger: String,
    build: String,
    hook: String,
    /// An event subscription, and a delivery of it (a cancelled build's event).
    subscription: String,
    delivery: String,
}

impl Ids {
    fn all_uuids(&self) -> [&str; 8] {
        [
            &self.connection,
            &self.spare_connection,
            &self.token,
            &self.trigger,
            &self.build,
            &self.hook,
            &self.subscription,
            &self.delivery,
        ]
    }
}

/// Creates, in ACCOUNT, a connection, build token and trigger for `worker`, an env var, a manual build, a
/// deploy hook and a spare connection.
async fn seed(app: &TestApp, worker: &str) -> Ids {
    let f = app.fixture(worker).await;
    git_remote(app, worker);
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{}/environment_variables", f.trigger)),
        Some(json!({ ENV_KEY: {"is_secret": false, "value": "20"} })),
    )
    .await;
    let build = app
        .ok(
            Method::POST,
            &app.acct(&format!("/triggers/{}/builds", f.trigger)),
            Some(json!({"branch": "main"})),
        )
        .await;
    let hook = app
        .ok(
            Method::POST,
            &app.acct(&format!("/workers/{worker}/deploy_hooks")),
            Some(json!({"deploy_hook_name": HOOK_NAME, "branch": "main"})),
        )
        .await;
    let spare = app
        .ok(
            Method::PUT,
            &app.acct("/repos/connections"),
            Some(json!({
                "provider_type": "github", "provider_account_id": "1001", "provider_account_name": "octo-org",
                "repo_id": format!("spare-{worker}"), "repo_name": format!("{worker}-spare")
            })),
        )
        .await;
    let config_worker = format!("{worker}-config");
    let (status, config) = app
        .post(
            &app.acct("/workers"),
            config_body(&config_worker, worker, &f.token),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{config}");
    // An event subscription with one delivery: the event of a build cancelled while queued (a build
    // of a commit, so that it supersedes no build of `main`).
    let subscription = app
        .ok(
            Method::POST,
            &app.acct("/event_subscriptions"),
            Some(
                json!({"name": format!("{worker} events"), "url": "http://127.0.0.1:9/events",
                "worker_names": [worker]}),
            ),
        )
        .await;
    let subscription = s(&subscription["id"]);
    let cancelled = app
        .ok(
            Method::POST,
            &app.acct(&format!("/triggers/{}/builds", f.trigger)),
            Some(json!({"commit_hash": "0".repeat(40)})),
        )
        .await;
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{}/cancel", s(&cancelled["build_uuid"]))),
        None,
    )
    .await;
    let deliveries = app.acct(&format!("/event_subscriptions/{subscription}/deliveries"));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let delivery = loop {
        let list = app.ok(Method::GET, &deliveries, None).await;
        if let Some(d) = list.as_array().and_then(|l| l.first()) {
            break s(&d["id"]);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery of the cancelled build's event"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    Ids {
        worker: worker.to_owned(),
        config_worker,
        connection: f.connection,
        spare_connection: s(&spare["repo_connection_uuid"]),
        token: f.token,
        trigger: f.trigger,
        build: s(&build["build_uuid"]),
        hook: s(&hook["deploy_hook_uuid"]),
        subscription,
        delivery,
    }
}

/// A `createWorkerBuild` body for `config_worker`, on the repository of `worker`'s fixture.
fn config_body(config_worker: &str, worker: &str, token: &str) -> Value {
    json!({
        "script_tag": config_worker,
        "git_repository": {"branch": "main", "provider_account_id": "1001",
            "provider_account_name": "octo-org", "provider_type": "github",
            "repo_id": format!("repo-{worker}"), "repo_name": format!("{worker}-repo")},
        "production_settings": {"build_command": "npm run build", "build_token_uuid": token,
            "deploy_command": "npx wrangler deploy",
            "environment_variables": {ENV_KEY: {"is_secret": false, "value": "22"}}}
    })
}

/// Whether a route is about a Worker's build configuration (its Worker is `config_worker`).
fn is_worker_build_route(route: &Route) -> bool {
    route.operation_id.ends_with("WorkerBuild")
}

/// A git repository with one commit on `main` where the test server clones the fixture connection
/// of `worker` from (`octo-org/<worker>-repo`), for config autofill.
fn git_remote(app: &TestApp, worker: &str) {
    let dir = app
        .git_remotes()
        .join("octo-org")
        .join(format!("{worker}-repo"));
    std::fs::create_dir_all(&dir).expect("create remote dir");
    std::fs::write(dir.join("package.json"), "{}").expect("write package.json");
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &["commit", "-q", "-m", "init"],
    ] {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&dir)
            .args(args)
            .env("HOME", &dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Ada")
            .env("GIT_AUTHOR_EMAIL", "ada@example.com")
            .env("GIT_COMMITTER_NAME", "Ada")
            .env("GIT_COMMITTER_EMAIL", "ada@example.com")
            .output()
            .expect("run git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    }
}

/// The route's path below the API base with every `{param}` replaced, plus its required query parameters.
/// Panics on a parameter it does not know, so that a new route cannot slip past the matrix.
fn fill(route: &Route, account: &str, ids: &Ids) -> String {
    let repo_id = format!("repo-{}", ids.worker);
    let mut out = String::new();
    for seg in route.path.split('/').skip(1) {
        out.push('/');
        let value = match seg.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            None => seg,
            Some("account_id") => account,
            Some("external_script_id") if is_worker_build_route(route) => &ids.config_worker,
            Some("external_script_id") => &ids.worker,
            Some("trigger_uuid") => &ids.trigger,
            Some("build_uuid") => &ids.build,
            Some("build_token_uuid") => &ids.token,
            Some("repo_connection_uuid") => &ids.connection,
            Some("deploy_hook_uuid") => &ids.hook,
            Some("environment_variable_key") => ENV_KEY,
            Some("event_subscription_id") => &ids.subscription,
            Some("delivery_id") => &ids.delivery,
            // The fixture connection (`TestApp::fixture`).
            Some("provider_type") => "github",
            Some("provider_account_id") => "1001",
            Some("repo_id") => &repo_id,
            Some(other) => panic!(
                "{} {}: no fixture for path parameter {{{other}}}; teach tests/permissions.rs fill() about it",
                route.method, route.path
            ),
        };
        out.push_str(value);
    }
    let query: Vec<String> = route
        .query
        .iter()
        .filter(|q| q.required)
        .map(|q| {
            let value = match q.name {
                "external_script_ids" => ids.worker.as_str(),
                "version_ids" => VERSION_ID,
                "branch" => "main",
                other => panic!(
                    "{} {}: no value for required query parameter {other}; teach tests/permissions.rs fill() about it",
                    route.method, route.path
                ),
            };
            format!("{}={value}", q.name)
        })
        .collect();
    if !query.is_empty() {
        out.push('?');
        out.push_str(&query.join("&"));
    }
    out
}

/// A valid JSON body for routes that take one (`None` for the others).
fn body(route: &Route, ids: &Ids) -> Option<Value> {
    route.body?;
    let b = match route.operation_id {
        "createTrigger" => json!({
            "external_script_id": ids.worker, "repo_connection_uuid": ids.connection,
            "build_token_uuid": ids.token, "trigger_name": "Preview Deploy",
            "build_command": "npm run build", "deploy_command": "npx wrangler versions upload",
            "root_directory": "/", "branch_includes": ["*"], "branch_excludes": ["main"],
            "path_includes": ["*"], "path_excludes": []
        }),
        "updateTrigger" => {
            json!({"trigger_name": "Renamed Deploy", "build_command": "npm ci && npm run build"})
        }
        "createManualBuild" => json!({"branch": "main"}),
        "upsertEnvironmentVariables" => json!({
            "API_HOST": {"is_secret": false, "value": "api.example.com"},
            "API_KEY": {"is_secret": true, "value": "s3cr3t"}
        }),
        "createBuildToken" => json!({
            "build_token_name": "second token", "build_token_secret": "cf-secret-second-Zq9",
            "cloudflare_token_id": "cf-token-456"
        }),
        "upsertRepoConnection" => json!({
            "provider_type": "github", "provider_account_id": "1001", "provider_account_name": "octo-org",
            "repo_id": "repo-extra", "repo_name": "extra-repo"
        }),
        "createDeployHook" => json!({"deploy_hook_name": "deploy staging", "branch": "staging"}),
        "updateDeployHook" => {
            json!({"deploy_hook_name": "deploy main renamed", "branch": "release"})
        }
        "createWorkerBuild" => config_body(&format!("{}-new", ids.worker), &ids.worker, &ids.token),
        "updateWorkerBuild" => json!({"production_settings": {"build_command": "npm ci"},
            "previews_enabled": true}),
        "createEventSubscription" => json!({"name": "deploys to chat",
            "url": "https://hooks.example.com/kiln", "event_types": ["cf.workersBuilds.worker.build.failed"]}),
        "updateEventSubscription" => json!({"name": "renamed", "enabled": false}),
        other => panic!(
            "{} {} ({other}) takes a body; add a valid one to tests/permissions.rs body()",
            route.method, route.path
        ),
    };
    Some(b)
}

/// How a request presents (or fails to present) credentials.
#[derive(Debug, Clone, Copy)]
enum Cred<'a> {
    Anonymous,
    Bearer(&'a str),
    /// A raw `Authorization` header value.
    Authorization(&'a str),
    GlobalKey {
        email: &'a str,
        key: &'a str,
    },
    KeyOnly(&'a str),
    EmailOnly(&'a str),
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    cred: Cred<'_>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = app.client.request(method.clone(), app.url(path));
    req = match cred {
        Cred::Anonymous => req,
        Cred::Bearer(t) => req.bearer_auth(t),
        Cred::Authorization(raw) => req.header("authorization", raw),
        Cred::GlobalKey { email, key } => {
            req.header("x-auth-email", email).header("x-auth-key", key)
        }
        Cred::KeyOnly(key) => req.header("x-auth-key", key),
        Cred::EmailOnly(email) => req.header("x-auth-email", email),
    };
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("send request");
    let status = resp.status();
    let events = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes() == b"text/event-stream");
    if status == StatusCode::OK && events {
        // A live log stream runs until its build ends: what it was allowed to open is the answer.
        return (
            status,
            json!({"success": true, "errors": [], "messages": [], "result": "text/event-stream"}),
        );
    }
    let text = resp.text().await.expect("read body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("{method} {path} ({cred:?}): status {status}, body is not JSON ({e}): {text}")
    });
    (status, v)
}

async fn call_route(
    app: &TestApp,
    route: &Route,
    account: &str,
    ids: &Ids,
    cred: Cred<'_>,
) -> (StatusCode, Value) {
    send(
        app,
        route.method.clone(),
        &fill(route, account, ids),
        cred,
        body(route, ids),
    )
    .await
}

/// Asserts an error envelope with this status and code, naming the request on failure.
fn expect_error(what: &str, status: StatusCode, v: &Value, want_status: u16, want_code: u64) {
    assert_eq!(status.as_u16(), want_status, "{what}: {v}");
    assert_eq!(v["success"], json!(false), "{what}: {v}");
    assert_eq!(v["result"], Value::Null, "{what}: {v}");
    assert_eq!(v["errors"][0]["code"], json!(want_code), "{what}: {v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
}

/// Asserts a 200 success envelope.
fn expect_ok(what: &str, status: StatusCode, v: &Value) {
    assert_eq!(status, StatusCode::OK, "{what}: {v}");
    assert_eq!(v["success"], json!(true), "{what}: {v}");
    assert_eq!(v["errors"], json!([]), "{what}: {v}");
}

/// Everything the fixtures of `ids` consist of, read with the admin token and from the store. Two equal
/// snapshots mean no fixture changed.
async fn snapshot(app: &TestApp, ids: &Ids) -> Value {
    let paths = [
        format!("/workers/{}/triggers", ids.worker),
        format!("/triggers/{}/environment_variables", ids.trigger),
        format!("/builds/{}", ids.build),
        format!("/builds/{}/logs", ids.build),
        format!("/workers/{}/builds", ids.worker),
        format!("/builds/latest?external_script_ids={}", ids.worker),
        "/tokens".to_owned(),
        format!("/workers/{}/deploy_hooks", ids.worker),
        format!("/workers/{}/deploy_hooks/{}", ids.worker, ids.hook),
        format!("/workers/{}", ids.config_worker),
        format!("/workers/{}/triggers", ids.config_worker),
    ];
    let mut out = serde_json::Map::new();
    for p in paths {
        let path = app.acct(&p);
        let (status, v) = app.get(&path).await;
        expect_ok(&format!("snapshot GET {path}"), status, &v);
        out.insert(path, v);
    }
    // What a configuration create would add: nothing yet.
    for p in [
        format!("/workers/{}-new", ids.worker),
        format!("/workers/{}-new/triggers", ids.worker),
    ] {
        let path = app.acct(&p);
        let (status, v) = app.get(&path).await;
        out.insert(path, json!([status.as_u16(), v]));
    }
    let account = AccountId::parse(ACCOUNT).expect("account id");
    for conn in [&ids.connection, &ids.spare_connection] {
        let id = RepoConnectionId::parse("repo_connection_uuid", conn).expect("connection id");
        let stored = app
            .store()
            .get_repo_connection(&account, id)
            .await
            .expect("read connection");
        out.insert(
            format!("connection {conn}"),
            serde_json::to_value(stored).expect("serialise connection"),
        );
    }
    let api_tokens = app
        .store()
        .list_api_tokens()
        .await
        .expect("list API tokens");
    out.insert("api_tokens".to_owned(), json!(format!("{api_tokens:?}")));
    Value::Object(out)
}

/// The concrete state `seed` left: asserted after every batch of requests that must not change anything.
async fn assert_fixtures_intact(app: &TestApp, ids: &Ids) {
    let triggers = app
        .ok(
            Method::GET,
            &app.acct(&format!("/workers/{}/triggers", ids.worker)),
            None,
        )
        .await;
    let triggers = triggers.as_array().expect("trigger list");
    assert_eq!(triggers.len(), 1, "{triggers:?}");
    assert_eq!(triggers[0]["trigger_uuid"], json!(ids.trigger));
    assert_eq!(triggers[0]["trigger_name"], json!("Production Deploy"));
    assert_eq!(triggers[0]["build_command"], json!("npm run build"));

    let vars = app
        .ok(
            Method::GET,
            &app.acct(&format!("/triggers/{}/environment_variables", ids.trigger)),
            None,
        )
        .await;
    let vars = vars.as_object().expect("env var map");
    assert_eq!(vars.keys().collect::<Vec<_>>(), vec![ENV_KEY], "{vars:?}");
    assert_eq!(vars[ENV_KEY]["value"], json!("20"));

    let build = app
        .ok(
            Method::GET,
            &app.acct(&format!("/builds/{}", ids.build)),
            None,
        )
        .await;
    assert_eq!(build["status"], json!("queued"), "{build}");
    assert_eq!(build["build_outcome"], Value::Null, "{build}");
    let builds = app
        .ok(
            Method::GET,
            &app.acct(&format!("/workers/{}/builds", ids.worker)),
            None,
        )
        .await;
    // The fixture's queued build, and the cancelled one whose event the subscription delivers.
    assert_eq!(
        builds.as_array().map(Vec::len),
        Some(2),
        "no build was added or removed: {builds}"
    );

    let (status, tokens) = app.get(&app.acct("/tokens")).await;
    expect_ok("list build tokens", status, &tokens);
    let listed: Vec<&Value> = tokens["result"]
        .as_array()
        .expect("token list")
        .iter()
        .map(|t| &t["build_token_uuid"])
        .collect();
    assert_eq!(listed, vec![&json!(ids.token)], "{tokens}");
    assert_eq!(tokens["result_info"]["total_count"], json!(1), "{tokens}");

    let hooks = app
        .ok(
            Method::GET,
            &app.acct(&format!("/workers/{}/deploy_hooks", ids.worker)),
            None,
        )
        .await;
    let hooks = hooks.as_array().expect("hook list");
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["deploy_hook_uuid"], json!(ids.hook));
    let hook = app
        .ok(
            Method::GET,
            &app.acct(&format!(
                "/workers/{}/deploy_hooks/{}",
                ids.worker, ids.hook
            )),
            None,
        )
        .await;
    assert_eq!(hook["deploy_hook_name"], json!(HOOK_NAME));
    assert_eq!(hook["branch"], json!("main"));

    let account = AccountId::parse(ACCOUNT).expect("account id");
    for conn in [&ids.connection, &ids.spare_connection] {
        let id = RepoConnectionId::parse("repo_connection_uuid", conn).expect("connection id");
        assert!(
            app.store()
                .get_repo_connection(&account, id)
                .await
                .expect("read connection")
                .is_some(),
            "connection {conn} still exists"
        );
    }
}

fn authenticated_routes() -> Vec<Route> {
    let all: Vec<Route> = routes()
        .into_iter()
        .filter(|r| r.access != Access::Public)
        .collect();
    assert!(
        all.iter().any(|r| r.access == Access::Read),
        "the table has Read routes"
    );
    assert!(
        all.iter().any(|r| r.access == Access::Write),
        "the table has Write routes"
    );
    all
}

fn describe(route: &Route, cred: &str) -> String {
    format!(
        "{} {} [{}] as {cred}",
        route.method, route.path, route.operation_id
    )
}

#[tokio::test]
async fn every_route_enforces_credentials_permission_and_account_scope() {
    // Hundreds of wrong credentials from one client: its throttling is tested on its own below.
    let app = TestApp::spawn_with(|c| c.auth_throttle.burst = u32::MAX).await;
    let ids = seed(&app, WORKER).await;

    let read = app.mint_token(Some(&[ACCOUNT]), Permission::Read).await;
    let write = app.mint_token(Some(&[ACCOUNT]), Permission::Write).await;
    let write_other = app
        .mint_token(Some(&[OTHER_ACCOUNT]), Permission::Write)
        .await;
    let read_other = app
        .mint_token(Some(&[OTHER_ACCOUNT]), Permission::Read)
        .await;
    let global_key = app
        .mint_global_key(EMAIL, Some(&[ACCOUNT]), Permission::Write)
        .await;
    let global_read = app
        .mint_global_key("reader@example.com", Some(&[ACCOUNT]), Permission::Read)
        .await;
    let global_other = app
        .mint_global_key(
            "other@example.com",
            Some(&[OTHER_ACCOUNT]),
            Permission::Write,
        )
        .await;

    // A token that worked, then was revoked.
    let revoked = app.mint_token(Some(&[ACCOUNT]), Permission::Write).await;
    let (status, v) = send(
        &app,
        Method::GET,
        &app.acct("/tokens"),
        Cred::Bearer(&revoked),
        None,
    )
    .await;
    expect_ok("token before revocation", status, &v);
    let record = app
        .store()
        .get_api_token_by_hash(CredentialKind::Token, &hash_credential(&revoked))
        .await
        .expect("look up token")
        .expect("minted token is live");
    assert!(
        app.store()
            .revoke_api_token(&record.id, Timestamp::now())
            .await
            .expect("revoke")
    );

    let unknown_token = format!("kiln_{}", uuid::Uuid::new_v4().simple());
    let bearer_admin_other_scheme = format!("Token {ADMIN_TOKEN}");
    let basic_admin = format!("Basic {ADMIN_TOKEN}");
    let unauthenticated: Vec<(&str, Cred)> = vec![
        ("no credentials", Cred::Anonymous),
        ("unknown Bearer token", Cred::Bearer(&unknown_token)),
        ("Basic scheme", Cred::Authorization("Basic xyz")),
        (
            "Basic scheme with a valid secret",
            Cred::Authorization(&basic_admin),
        ),
        (
            "unknown scheme with a valid secret",
            Cred::Authorization(&bearer_admin_other_scheme),
        ),
        (
            "bare secret without a scheme",
            Cred::Authorization(ADMIN_TOKEN),
        ),
        ("Bearer with nothing", Cred::Authorization("Bearer")),
        ("Bearer with blanks", Cred::Authorization("Bearer    ")),
        ("empty Authorization", Cred::Authorization("")),
        ("revoked token", Cred::Bearer(&revoked)),
        ("global key as a Bearer token", Cred::Bearer(&global_key)),
        (
            "global key with the wrong email",
            Cred::GlobalKey {
                email: "mallory@example.com",
                key: &global_key,
            },
        ),
        (
            "global key with the wrong key",
            Cred::GlobalKey {
                email: EMAIL,
                key: &unknown_token,
            },
        ),
        (
            "global key of another email",
            Cred::GlobalKey {
                email: EMAIL,
                key: &global_read,
            },
        ),
        (
            "API token as a global key",
            Cred::GlobalKey {
                email: EMAIL,
                key: &write,
            },
        ),
        (
            "X-Auth-Key without X-Auth-Email",
            Cred::KeyOnly(&global_key),
        ),
        ("X-Auth-Email without X-Auth-Key", Cred::EmailOnly(EMAIL)),
    ];
    let wrong_account: Vec<(&str, Cred)> = vec![
        ("write token of OTHER_ACCOUNT", Cred::Bearer(&write_other)),
        ("read token of OTHER_ACCOUNT", Cred::Bearer(&read_other)),
        (
            "write global key of OTHER_ACCOUNT",
            Cred::GlobalKey {
                email: "other@example.com",
                key: &global_other,
            },
        ),
    ];
    let read_only: Vec<(&str, Cred)> = vec![
        ("read token of ACCOUNT", Cred::Bearer(&read)),
        (
            "read global key of ACCOUNT",
            Cred::GlobalKey {
                email: "reader@example.com",
                key: &global_read,
            },
        ),
    ];

    let baseline = snapshot(&app, &ids).await;
    assert_fixtures_intact(&app, &ids).await;

    let table = authenticated_routes();
    for route in &table {
        for (name, cred) in &unauthenticated {
            let (status, v) = call_route(&app, route, ACCOUNT, &ids, *cred).await;
            expect_error(&describe(route, name), status, &v, 401, 10000);
        }
        for (name, cred) in &wrong_account {
            let (status, v) = call_route(&app, route, ACCOUNT, &ids, *cred).await;
            if route.access == Access::Caller {
                // A route outside every account answers with the caller's own accounts only.
                expect_ok(&describe(route, name), status, &v);
                assert!(
                    !v["result"].to_string().contains(ACCOUNT),
                    "{}: {v}",
                    describe(route, name)
                );
            } else {
                expect_error(&describe(route, name), status, &v, 403, 10000);
            }
        }
        for (name, cred) in &read_only {
            let (status, v) = call_route(&app, route, ACCOUNT, &ids, *cred).await;
            match route.access {
                Access::Read | Access::Caller => expect_ok(&describe(route, name), status, &v),
                Access::Write => expect_error(&describe(route, name), status, &v, 403, 10000),
                Access::Public => unreachable!("public routes are skipped"),
            }
        }
        // Denied requests (and allowed reads) changed nothing.
        assert_eq!(
            snapshot(&app, &ids).await,
            baseline,
            "state changed after the denied requests to {} {}",
            route.method,
            route.path
        );
    }
    assert_fixtures_intact(&app, &ids).await;
    // The revoked token stays revoked; nothing minted or revoked another credential.
    let stored = app
        .store()
        .list_api_tokens()
        .await
        .expect("list API tokens");
    assert_eq!(stored.len(), 9, "bootstrap + 8 minted credentials");
    assert!(
        stored
            .iter()
            .filter(|t| t.id == record.id)
            .all(|t| t.revoked_on.is_some())
    );
    assert_eq!(stored.iter().filter(|t| t.revoked_on.is_some()).count(), 1);

    // Positive control: the ACCOUNT-scoped write token and write global key are allowed on every route (so
    // the paths and bodies above are valid requests). Writes run on fresh fixtures of their own.
    let allowed: Vec<(&str, Cred)> = vec![
        ("write token of ACCOUNT", Cred::Bearer(&write)),
        (
            "write global key of ACCOUNT",
            Cred::GlobalKey {
                email: EMAIL,
                key: &global_key,
            },
        ),
        (
            "write global key, email in another case",
            Cred::GlobalKey {
                email: "OPS@Example.COM",
                key: &global_key,
            },
        ),
    ];
    let mut n = 0;
    for route in &table {
        for (name, cred) in &allowed {
            let target = if route.access == Access::Write {
                n += 1;
                let mut fresh = seed(&app, &format!("pos-{n}")).await;
                // Only an unused connection can be deleted.
                fresh.connection = fresh.spare_connection.clone();
                fresh
            } else {
                ids.clone()
            };
            let (status, v) = call_route(&app, route, ACCOUNT, &target, *cred).await;
            if route.created {
                assert_eq!(
                    status,
                    StatusCode::CREATED,
                    "{}: {v}",
                    describe(route, name)
                );
                assert_eq!(v["success"], json!(true), "{}: {v}", describe(route, name));
            } else {
                expect_ok(&describe(route, name), status, &v);
            }
        }
    }

    // The global key's writes land: a deploy hook created with it is listed.
    let (status, v) = send(
        &app,
        Method::POST,
        &app.acct(&format!("/workers/{WORKER}/deploy_hooks")),
        Cred::GlobalKey {
            email: EMAIL,
            key: &global_key,
        },
        Some(json!({"deploy_hook_name": "from global key", "branch": "main"})),
    )
    .await;
    expect_ok("create deploy hook with the global key", status, &v);
    let hooks = app
        .ok(
            Method::GET,
            &app.acct(&format!("/workers/{WORKER}/deploy_hooks")),
            None,
        )
        .await;
    assert!(
        hooks
            .as_array()
            .expect("hook list")
            .iter()
            .any(|h| h["deploy_hook_uuid"] == v["result"]["deploy_hook_uuid"]),
        "{hooks}"
    );
    app.stop().await;
}

#[tokio::test]
async fn resources_of_one_account_are_not_found_under_another() {
    let app = TestApp::spawn().await;
    let ids = seed(&app, WORKER).await;
    let baseline = snapshot(&app, &ids).await;

    const RESOURCE_PARAMS: [&str; 7] = [
        "{trigger_uuid}",
        "{build_uuid}",
        "{build_token_uuid}",
        "{repo_connection_uuid}",
        "{deploy_hook_uuid}",
        "{event_subscription_id}",
        "{delivery_id}",
    ];
    let mut not_found = Vec::new();
    for route in &authenticated_routes() {
        let what = describe(route, "admin under OTHER_ACCOUNT");
        let (status, v) =
            call_route(&app, route, OTHER_ACCOUNT, &ids, Cred::Bearer(ADMIN_TOKEN)).await;
        assert!(status.as_u16() < 500, "{what}: {v}");
        let text = v.to_string();
        for uuid in ids.all_uuids() {
            assert!(!text.contains(uuid), "{what} reveals {uuid}: {v}");
        }
        if RESOURCE_PARAMS.iter().any(|p| route.path.contains(p)) {
            expect_error(&what, status, &v, 404, 12000);
            assert_eq!(v["errors"][0]["message"], json!("Not found"), "{what}");
            not_found.push(route.operation_id);
            continue;
        }
        match (route.access, route.operation_id) {
            // ACCOUNT's connection and build token do not exist in OTHER_ACCOUNT.
            (_, "createTrigger") => expect_error(&what, status, &v, 404, 12000),
            // The Worker has no trigger in OTHER_ACCOUNT.
            (_, "createDeployHook") => expect_error(&what, status, &v, 404, 12000),
            // ACCOUNT's repository connection does not exist in OTHER_ACCOUNT.
            (_, "getWorkerConfigAutofill") => expect_error(&what, status, &v, 404, 12000),
            // ACCOUNT's build token does not exist in OTHER_ACCOUNT.
            (_, "createWorkerBuild") => expect_error(&what, status, &v, 404, 12000),
            // Nor does ACCOUNT's Worker build configuration.
            (_, "getWorkerBuild" | "updateWorkerBuild" | "deleteWorkerBuild") => {
                expect_error(&what, status, &v, 404, 12000);
                not_found.push(route.operation_id);
            }
            // Lists and lookups succeed but are empty (checked above: none of ACCOUNT's ids appear).
            (Access::Read, _) => expect_ok(&what, status, &v),
            _ => {}
        }
    }
    for op in [
        "getBuildByUuid",
        "getBuildLogs",
        "streamBuildLogs",
        "cancelBuildByUuid",
        "updateTrigger",
        "deleteTrigger",
        "listEnvironmentVariables",
        "deleteBuildToken",
        "deleteRepoConnection",
        "getDeployHook",
        "getWorkerBuild",
        "updateWorkerBuild",
        "deleteWorkerBuild",
    ] {
        assert!(
            not_found.contains(&op),
            "{op} was checked for 404 under OTHER_ACCOUNT: {not_found:?}"
        );
    }

    // Everything of ACCOUNT is still there, unchanged; the spare connection (deletable) too.
    assert_eq!(
        snapshot(&app, &ids).await,
        baseline,
        "a request under OTHER_ACCOUNT changed ACCOUNT's data"
    );
    assert_fixtures_intact(&app, &ids).await;
    let logs = app
        .ok(
            Method::GET,
            &app.acct(&format!("/builds/{}/logs", ids.build)),
            None,
        )
        .await;
    assert!(logs["lines"].is_array(), "{logs}");
    app.stop().await;
}

/// A client whose requests come from `ip` (any 127.0.0.0/8 address reaches the test server).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client")
}

async fn get_with(
    app: &TestApp,
    client: &reqwest::Client,
    token: Option<&str>,
) -> (StatusCode, Value, Option<u64>) {
    let mut req = client.get(app.url(&app.acct("/tokens")));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").parse().expect("seconds"));
    (status, resp.json().await.expect("json"), retry_after)
}

/// The input: 2,000 wrong tokens in a row were never slowed down. Now, after a burst, a client
/// presenting wrong credentials gets 429 / 12051 with `Retry-After` whatever it presents (so its
/// guesses learn nothing), while other clients, valid tokens elsewhere, and requests without
/// credentials are not affected; guessing deploy hook ids is throttled the same way.
#[tokio::test]
async fn failed_authentication_is_throttled_per_client() {
    use kiln::api::throttle::FAILURE_BURST;
    // No refill during the test, so that the counts are exact on a slow machine.
    let app =
        TestApp::spawn_with(|c| c.auth_throttle.refill = std::time::Duration::from_secs(3600))
            .await;
    let guesser = client_from("127.0.0.2");
    let (mut refused, mut throttled) = (0, 0);
    for i in 0..2000 {
        let (status, v, retry_after) =
            get_with(&app, &guesser, Some(&format!("kiln_wrong_{i:04}"))).await;
        match status.as_u16() {
            401 => {
                assert_eq!(throttled, 0, "a 401 after a 429");
                refused += 1;
            }
            429 => {
                assert_error(status, &v, 429, 12051);
                assert!(retry_after.is_some_and(|s| s >= 1), "no Retry-After");
                throttled += 1;
            }
            other => panic!("status {other}: {v}"),
        }
    }
    assert_eq!(refused, FAILURE_BURST, "wrong tokens before the throttle");
    assert_eq!(throttled, 2000 - FAILURE_BURST);
    // The throttled client is refused whatever it presents.
    let (status, v, _) = get_with(&app, &guesser, Some(ADMIN_TOKEN)).await;
    assert_error(status, &v, 429, 12051);
    // Another client is not locked out: a valid token works, wrong ones get 401 from its own budget.
    let other = client_from("127.0.0.3");
    let (status, v, _) = get_with(&app, &other, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    let (status, v, _) = get_with(&app, &other, Some("kiln_wrong")).await;
    assert_error(status, &v, 401, 10000);
    let (status, _, _) = get_with(&app, &app.client, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    // Requests without credentials guess nothing and are never throttled.
    let anonymous = client_from("127.0.0.4");
    for _ in 0..(FAILURE_BURST * 3) {
        let (status, v, _) = get_with(&app, &anonymous, None).await;
        assert_error(status, &v, 401, 10000);
    }
    // Deploy hook ids are credentials too.
    let hook_guesser = client_from("127.0.0.5");
    let mut statuses = Vec::new();
    for _ in 0..(FAILURE_BURST + 5) {
        let url = app.url(&format!(
            "/workers/builds/deploy_hooks/{}",
            uuid::Uuid::new_v4()
        ));
        let resp = hook_guesser.post(url).send().await.expect("send");
        statuses.push(resp.status().as_u16());
    }
    let want: Vec<u16> = std::iter::repeat_n(404, FAILURE_BURST as usize)
        .chain(std::iter::repeat_n(429, 5))
        .collect();
    assert_eq!(statuses, want);
    app.stop().await;
}
