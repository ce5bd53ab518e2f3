//! Every endpoint's response shape, over real HTTP, as insta snapshots with ids and times redacted.
//! The same snapshot files serve both backends, so SQLite and PostgreSQL must answer identically.

mod common;

use common::*;
use kiln::domain::{BuildId, Timestamp, VersionId};
use reqwest::Method;
use serde_json::{Value, json};

fn snap(name: &str, v: &Value) {
    insta::assert_json_snapshot!(name, redact(v));
}

async fn full(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, v) = app
        .call(method.clone(), path, Some(ADMIN_TOKEN), body)
        .await;
    assert_eq!(status, 200, "{method} {path}: {v}");
    v
}

#[tokio::test]
async fn every_endpoint_returns_the_documented_shape() {
    let app = TestApp::spawn().await;
    let a = |p: &str| app.acct(p);

    // Repository connection (seed body).
    let conn_body = json!({ "provider_account_id": "cloudflare", "provider_account_name": "Cloudflare",
        "provider_type": "github", "repo_id": "workers-sdk", "repo_name": "workers-sdk" });
    let v = full(
        &app,
        Method::PUT,
        &a("/repos/connections"),
        Some(conn_body.clone()),
    )
    .await;
    snap("upsert_repo_connection", &v);
    let conn = s(&v["result"]["repo_connection_uuid"]);
    let again = full(&app, Method::PUT, &a("/repos/connections"), Some(conn_body)).await;
    assert_eq!(
        s(&again["result"]["repo_connection_uuid"]),
        conn,
        "upsert is idempotent"
    );

    // Build tokens.
    let v = full(
        &app,
        Method::POST,
        &a("/tokens"),
        Some(json!({ "build_token_name": "My Build Token",
        "build_token_secret": "super-secret-token", "cloudflare_token_id": "cf-token-123" })),
    )
    .await;
    snap("create_build_token", &v);
    let token = s(&v["result"]["build_token_uuid"]);
    snap(
        "list_build_tokens",
        &full(&app, Method::GET, &a("/tokens?per_page=10"), None).await,
    );

    // Triggers (seed body, with real ids).
    let v = full(&app, Method::POST, &a("/triggers"), Some(json!({ "branch_excludes": ["string"],
        "branch_includes": ["main"], "build_command": "npm run build", "build_token_uuid": token,
        "deploy_command": "npx wrangler deploy", "external_script_id": "my-worker", "path_excludes": ["*.md"],
        "path_includes": ["*"], "repo_connection_uuid": conn, "root_directory": "/",
        "trigger_name": "Production Deploy" }))).await;
    snap("create_trigger", &v);
    let trigger = s(&v["result"]["trigger_uuid"]);
    let v = full(&app, Method::POST, &a("/triggers"), Some(json!({ "build_token_uuid": token,
        "external_script_id": "my-worker", "repo_connection_uuid": conn, "trigger_name": "Previews" }))).await;
    snap("create_trigger_with_defaults", &v);
    let preview_trigger = s(&v["result"]["trigger_uuid"]);
    let v = full(
        &app,
        Method::PATCH,
        &a(&format!("/triggers/{trigger}")),
        Some(json!({ "branch_excludes": [],
        "build_command": "npm run build:prod", "build_caching_enabled": true })),
    )
    .await;
    snap("update_trigger", &v);
    snap(
        "list_triggers",
        &full(&app, Method::GET, &a("/workers/my-worker/triggers"), None).await,
    );

    // Environment variables (seed body).
    let ev = a(&format!("/triggers/{trigger}/environment_variables"));
    let v = full(
        &app,
        Method::PATCH,
        &ev,
        Some(
            json!({ "API_KEY": { "is_secret": true, "value": "secret-key" },
        "NODE_ENV": { "is_secret": false, "value": "production" } }),
        ),
    )
    .await;
    snap("upsert_environment_variables", &v);
    snap(
        "list_environment_variables",
        &full(&app, Method::GET, &ev, None).await,
    );

    // Manual builds.
    let v = full(
        &app,
        Method::POST,
        &a(&format!("/triggers/{trigger}/builds")),
        Some(json!({ "branch": "main", "commit_hash": "abc123def456" })),
    )
    .await;
    snap("create_manual_build", &v);
    let build = s(&v["result"]["build_uuid"]);
    let v = full(
        &app,
        Method::POST,
        &a(&format!("/triggers/{preview_trigger}/builds")),
        Some(json!({ "commit_hash": "0123456789abcdef0123456789abcdef01234567" })),
    )
    .await;
    let commit_only = s(&v["result"]["build_uuid"]);
    snap(
        "get_build",
        &full(&app, Method::GET, &a(&format!("/builds/{build}")), None).await,
    );
    snap(
        "get_build_commit_only",
        &full(
            &app,
            Method::GET,
            &a(&format!("/builds/{commit_only}")),
            None,
        )
        .await,
    );
    snap(
        "list_builds",
        &full(
            &app,
            Method::GET,
            &a("/workers/my-worker/builds?page=1&per_page=1"),
            None,
        )
        .await,
    );
    snap(
        "latest_builds",
        &full(
            &app,
            Method::GET,
            &a("/builds/latest?external_script_ids=my-worker,no-builds-worker"),
            None,
        )
        .await,
    );

    // Version ids map to the build that produced them (recorded by the runner; here through the store).
    let version = VersionId::new();
    let account = kiln::domain::AccountId::parse(ACCOUNT).unwrap();
    app.store()
        .insert_build_version(&account, version, BuildId::parse("b", &build).unwrap())
        .await
        .unwrap();
    let v = full(
        &app,
        Method::GET,
        &a(&format!(
            "/builds?version_ids={version},{}",
            VersionId::new()
        )),
        None,
    )
    .await;
    assert_eq!(
        s(&v["result"]["builds"][version.to_string()]["build_uuid"]),
        build
    );
    snap("builds_by_version_ids", &v);

    // Logs: stored lines, paged with the cursor.
    let t0 = Timestamp::from_millis(1_636_472_400_117);
    app.store()
        .append_build_logs(
            BuildId::parse("b", &build).unwrap(),
            &[
                (t0, "Initializing build environment...".into()),
                (
                    Timestamp::from_millis(t0.millis() + 5),
                    "Success: Finished initializing build environment".into(),
                ),
            ],
        )
        .await
        .unwrap();
    let v = full(
        &app,
        Method::GET,
        &a(&format!("/builds/{build}/logs")),
        None,
    )
    .await;
    assert_eq!(
        v["result"]["lines"][0],
        json!([1_636_472_400.117, "Initializing build environment..."])
    );
    snap("get_build_logs", &v);

    snap(
        "account_limits",
        &full(&app, Method::GET, &a("/account/limits"), None).await,
    );

    // Deploy hooks.
    let hooks = a("/workers/my-worker/deploy_hooks");
    let v = full(
        &app,
        Method::POST,
        &hooks,
        Some(json!({ "deploy_hook_name": "CMS publish", "branch": "main" })),
    )
    .await;
    snap("create_deploy_hook", &v);
    let hook = s(&v["result"]["deploy_hook_uuid"]);
    assert_eq!(
        uuid::Uuid::parse_str(&hook).unwrap().get_version_num(),
        4,
        "hook ids are random v4 UUIDs"
    );
    snap(
        "list_deploy_hooks",
        &full(&app, Method::GET, &hooks, None).await,
    );
    snap(
        "get_deploy_hook",
        &full(&app, Method::GET, &format!("{hooks}/{hook}"), None).await,
    );
    snap(
        "update_deploy_hook",
        &full(
            &app,
            Method::PUT,
            &format!("{hooks}/{hook}"),
            Some(json!({ "deploy_hook_name": "CMS publish (staging)", "branch": "staging" })),
        )
        .await,
    );
    snap(
        "delete_deploy_hook",
        &full(&app, Method::DELETE, &format!("{hooks}/{hook}"), None).await,
    );

    // Cancel, purge, deletes.
    snap(
        "cancel_build",
        &full(
            &app,
            Method::PUT,
            &a(&format!("/builds/{build}/cancel")),
            None,
        )
        .await,
    );
    snap(
        "purge_build_cache",
        &full(
            &app,
            Method::POST,
            &a(&format!("/triggers/{trigger}/purge_build_cache")),
            None,
        )
        .await,
    );
    snap(
        "delete_environment_variable",
        &full(&app, Method::DELETE, &format!("{ev}/NODE_ENV"), None).await,
    );
    snap(
        "delete_trigger",
        &full(
            &app,
            Method::DELETE,
            &a(&format!("/triggers/{trigger}")),
            None,
        )
        .await,
    );
    // The build of a deleted trigger stays readable and shows the deletion.
    let v = full(&app, Method::GET, &a(&format!("/builds/{build}")), None).await;
    assert!(v["result"]["trigger"]["deleted_on"].is_string(), "{v}");
    assert_eq!(v["result"]["status"], "stopped");
    assert_eq!(v["result"]["build_outcome"], "cancelled");
    snap(
        "delete_build_token",
        &full(&app, Method::DELETE, &a(&format!("/tokens/{token}")), None).await,
    );
    full(
        &app,
        Method::DELETE,
        &a(&format!("/triggers/{preview_trigger}")),
        None,
    )
    .await;
    snap(
        "delete_repo_connection",
        &full(
            &app,
            Method::DELETE,
            &a(&format!("/repos/connections/{conn}")),
            None,
        )
        .await,
    );
    app.stop().await;
}

#[tokio::test]
async fn error_envelopes_have_the_documented_shape() {
    let app = TestApp::spawn().await;
    let (_, v) = app
        .get(&app.acct(&format!("/builds/{}", uuid::Uuid::new_v4())))
        .await;
    snap("error_not_found", &v);
    let (_, v) = app
        .call(Method::GET, &app.acct("/tokens"), None, None)
        .await;
    snap("error_unauthenticated", &v);
    let (_, v) = app.get("/nope").await;
    snap("error_no_route", &v);
    let (_, v) = app
        .post(&app.acct("/triggers"), json!({"trigger_name": 5}))
        .await;
    snap("error_invalid_field", &v);
    app.stop().await;
}

#[tokio::test]
async fn log_cursor_pages_through_every_stored_line_in_order() {
    let app = TestApp::spawn().await;
    let f = app.fixture("logs-worker").await;
    let b = app
        .ok(
            Method::POST,
            &app.acct(&format!("/triggers/{}/builds", f.trigger)),
            Some(json!({"branch": "main"})),
        )
        .await;
    let build = s(&b["build_uuid"]);
    let id = BuildId::parse("b", &build).unwrap();
    let n = 2_500;
    let lines: Vec<(Timestamp, String)> = (0..n)
        .map(|i| {
            (
                Timestamp::from_millis(1_700_000_000_000 + i),
                format!("line {i}"),
            )
        })
        .collect();
    // Appended in two batches, as a runner would.
    app.store()
        .append_build_logs(id, &lines[..1_200])
        .await
        .unwrap();
    app.store()
        .append_build_logs(id, &lines[1_200..])
        .await
        .unwrap();

    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => app.acct(&format!("/builds/{build}/logs?cursor={c}")),
            None => app.acct(&format!("/builds/{build}/logs")),
        };
        let r = app.ok(Method::GET, &path, None).await;
        pages += 1;
        for l in r["lines"].as_array().unwrap() {
            got.push(s(&l[1]));
        }
        cursor = Some(s(&r["cursor"]));
        if r["truncated"] == json!(false) {
            break;
        }
        assert!(pages < 10, "cursor does not advance");
    }
    assert_eq!(pages, 3, "1,000 lines per page");
    let want: Vec<String> = lines.iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(got, want);
    // The last cursor returns only lines appended later.
    let c = cursor.unwrap();
    let r = app
        .ok(
            Method::GET,
            &app.acct(&format!("/builds/{build}/logs?cursor={c}")),
            None,
        )
        .await;
    assert_eq!(r["lines"], json!([]));
    app.store()
        .append_build_logs(id, &[(Timestamp::now(), "late line".into())])
        .await
        .unwrap();
    let r = app
        .ok(
            Method::GET,
            &app.acct(&format!("/builds/{build}/logs?cursor={c}")),
            None,
        )
        .await;
    assert_eq!(r["lines"][0][1], "late line");
    assert_eq!(r["lines"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn builds_list_newest_first_with_paging_info() {
    let app = TestApp::spawn().await;
    let f = app.fixture("paged-worker").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let b = app
            .ok(
                Method::POST,
                &app.acct(&format!("/triggers/{}/builds", f.trigger)),
                Some(json!({"branch": format!("b{i}")})),
            )
            .await;
        ids.push(s(&b["build_uuid"]));
    }
    ids.reverse();
    let (_, v) = app
        .get(&app.acct("/workers/paged-worker/builds?per_page=2&page=2"))
        .await;
    let page: Vec<String> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| s(&b["build_uuid"]))
        .collect();
    assert_eq!(page, ids[2..4].to_vec());
    assert_eq!(
        v["result_info"],
        json!({"page": 2, "per_page": 2, "count": 2, "total_count": 5, "total_pages": 3, "next_page": true})
    );
    let (_, v) = app
        .get(&app.acct("/workers/paged-worker/builds?per_page=2&page=3"))
        .await;
    // A boolean on the last page too (Cloudflare's client rejects null or a number).
    assert_eq!(v["result_info"]["next_page"], json!(false));
    assert_eq!(v["result_info"]["count"], 1);
    let (_, v) = app
        .get(&app.acct("/builds/latest?external_script_ids=paged-worker"))
        .await;
    assert_eq!(
        s(&v["result"]["builds"]["paged-worker"]["build_uuid"]),
        ids[0]
    );
    app.stop().await;
}

#[tokio::test]
async fn openapi_describes_every_route() {
    let app = TestApp::spawn().await;
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for r in kiln::api::routes() {
        let op =
            &doc["paths"][format!("/client/v4{}", r.path)][r.method.as_str().to_ascii_lowercase()];
        assert_eq!(op["operationId"], r.operation_id, "{} {}", r.method, r.path);
        let success = if r.created { "201" } else { "200" };
        assert!(
            op["responses"][success].is_object(),
            "{} {}",
            r.method,
            r.path
        );
    }
    // Every $ref resolves.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
    app.stop().await;
}

/// What Cloudflare's own clients send (its Builds API guide, an infrastructure-as-code provider) is
/// accepted: provider ids as JSON numbers, a trigger without `build_token_uuid`, the guide's
/// `{"variables": [...]}` body.
#[tokio::test]
async fn requests_from_cloudflare_clients_are_accepted() {
    let app = TestApp::spawn().await;
    let a = |p: &str| app.acct(p);

    // GitHub's numeric ids sent as numbers are their decimal strings: the same connection.
    let conn = app
        .ok(
            Method::PUT,
            &a("/repos/connections"),
            Some(json!({"provider_type": "github",
            "provider_account_id": 6811672, "provider_account_name": "acme",
            "repo_id": 123456789, "repo_name": "site"})),
        )
        .await;
    assert_eq!(conn["provider_account_id"], "6811672");
    assert_eq!(conn["repo_id"], "123456789");
    let again = app
        .ok(
            Method::PUT,
            &a("/repos/connections"),
            Some(json!({"provider_type": "github",
            "provider_account_id": "6811672", "provider_account_name": "acme",
            "repo_id": "123456789", "repo_name": "site"})),
        )
        .await;
    assert_eq!(again["repo_connection_uuid"], conn["repo_connection_uuid"]);
    // A number with a zero fraction is an integer to JSON Schema, and to Kiln.
    let float = app
        .ok(
            Method::PUT,
            &a("/repos/connections"),
            Some(json!({"provider_type": "github",
            "provider_account_id": 6811672.0, "provider_account_name": "acme",
            "repo_id": 123456789.0, "repo_name": "site"})),
        )
        .await;
    assert_eq!(float["repo_connection_uuid"], conn["repo_connection_uuid"]);

    // A trigger without build_token_uuid takes the account's only build token.
    let trigger_body = |worker: &str| {
        json!({"external_script_id": worker, "repo_connection_uuid": conn["repo_connection_uuid"],
            "trigger_name": "Production", "build_command": "npm run build",
            "deploy_command": "npx wrangler deploy", "root_directory": "/",
            "branch_includes": ["main"], "branch_excludes": [], "path_includes": ["*"], "path_excludes": []})
    };
    let (status, body) = app.post(&a("/triggers"), trigger_body("w1")).await;
    assert_error(status, &body, 409, 12009);
    let message = s(&body["errors"][0]["message"]);
    assert!(
        message.contains("build_token_uuid") && message.contains("no build token"),
        "{message}"
    );
    let token = app
        .ok(
            Method::POST,
            &a("/tokens"),
            Some(json!({"build_token_name": "ci",
            "build_token_secret": "cf-secret-0001", "cloudflare_token_id": "cf-1"})),
        )
        .await;
    let trigger = app
        .ok(Method::POST, &a("/triggers"), Some(trigger_body("w1")))
        .await;
    assert_eq!(trigger["build_token_uuid"], token["build_token_uuid"]);
    assert_eq!(trigger["build_token_name"], "ci");
    // With two tokens, which one is meant must be said.
    app.ok(
        Method::POST,
        &a("/tokens"),
        Some(json!({"build_token_name": "other",
        "build_token_secret": "cf-secret-0002", "cloudflare_token_id": "cf-2"})),
    )
    .await;
    let (status, body) = app.post(&a("/triggers"), trigger_body("w2")).await;
    assert_error(status, &body, 409, 12009);
    let message = s(&body["errors"][0]["message"]);
    assert!(
        message.contains("build_token_uuid") && message.contains("more than one"),
        "{message}"
    );
    let (_, triggers) = app.get(&a("/workers/w2/triggers")).await;
    assert_eq!(triggers["result"], json!([]), "nothing created");

    // The guide's variables body.
    let ev = a(&format!(
        "/triggers/{}/environment_variables",
        s(&trigger["trigger_uuid"])
    ));
    let vars = app
        .ok(
            Method::PATCH,
            &ev,
            Some(json!({"variables": [
            {"key": "API_URL", "value": "https://api.example.com", "type": "text"},
            {"key": "API_KEY", "value": "k-0123456789", "type": "secret"}]})),
        )
        .await;
    assert_eq!(vars["API_URL"]["value"], "https://api.example.com");
    assert_eq!(vars["API_URL"]["is_secret"], false);
    assert_eq!(vars["API_KEY"]["value"], Value::Null);
    assert_eq!(vars["API_KEY"]["is_secret"], true);
    assert!(!vars.to_string().contains("k-0123456789"));

    // A key listed twice: the last entry counts, as with a repeated key of the map form.
    let vars = app
        .ok(
            Method::PATCH,
            &ev,
            Some(json!({"variables": [
            {"key": "DUP_VAR", "value": "first", "type": "secret"},
            {"key": "DUP_VAR", "value": "second", "type": "text"}]})),
        )
        .await;
    assert_eq!(vars["DUP_VAR"]["value"], "second");
    assert_eq!(vars["DUP_VAR"]["is_secret"], false);
    app.stop().await;
}

/// `build_trigger_metadata.commit_hash`, `commit_message` and `author` are strings, `""` while
/// unknown (a queued build of a branch), never null: Cloudflare's client rejects null there.
#[tokio::test]
async fn unknown_commit_fields_are_empty_strings() {
    let app = TestApp::spawn().await;
    let f = app.fixture("queued-worker").await;
    let build = s(&app
        .ok(
            Method::POST,
            &app.acct(&format!("/triggers/{}/builds", f.trigger)),
            Some(json!({"branch": "main"})),
        )
        .await["build_uuid"]);
    let one = app
        .ok(Method::GET, &app.acct(&format!("/builds/{build}")), None)
        .await;
    let list = app
        .ok(
            Method::GET,
            &app.acct("/workers/queued-worker/builds"),
            None,
        )
        .await;
    let latest = app
        .ok(
            Method::GET,
            &app.acct("/builds/latest?external_script_ids=queued-worker"),
            None,
        )
        .await;
    for b in [&one, &list[0], &latest["builds"]["queued-worker"]] {
        let meta = &b["build_trigger_metadata"];
        for field in ["commit_hash", "commit_message", "author"] {
            assert_eq!(meta[field], json!(""), "{field}: {meta}");
        }
        assert_eq!(meta["branch"], "main");
    }
    app.stop().await;
}

/// List pages are bounded by bytes as well as items: builds carrying large variables come fewer per
/// page (the same `per_page` on every page, reported in `result_info`, so paging skips nothing), and
/// a `latest` map that would exceed the bound asks for fewer ids.
#[tokio::test]
async fn list_pages_are_bounded_by_bytes() {
    let app = TestApp::spawn().await;
    let limit = kiln::api::MAX_PAGE_BYTES + 64 * 1024;
    // Variables as large as allowed, of a character JSON escapes: about 650 KB per build.
    let vars: serde_json::Map<String, Value> = (0..64)
        .map(|i| {
            (
                format!("VAR_{i:02}"),
                json!({"is_secret": false, "value": "\"".repeat(5 * 1024)}),
            )
        })
        .collect();
    let mut ids = Vec::new();
    for worker in ["big-a", "big-b"] {
        let f = app.fixture(worker).await;
        app.ok(
            Method::PATCH,
            &app.acct(&format!("/triggers/{}/environment_variables", f.trigger)),
            Some(Value::Object(vars.clone())),
        )
        .await;
        for i in 0..3 {
            let b = app
                .ok(
                    Method::POST,
                    &app.acct(&format!("/triggers/{}/builds", f.trigger)),
                    Some(json!({"branch": format!("b{i}")})),
                )
                .await;
            if worker == "big-a" {
                ids.push(s(&b["build_uuid"]));
            }
        }
    }
    ids.reverse();
    let get = |path: String| {
        let req = app.client.get(app.url(&path)).bearer_auth(ADMIN_TOKEN);
        async move {
            let resp = req.send().await.expect("send");
            let status = resp.status();
            let body = resp.bytes().await.expect("body");
            assert!(body.len() <= limit, "{path}: {} bytes", body.len());
            (
                status,
                serde_json::from_slice::<Value>(&body).expect("json"),
            )
        }
    };
    let mut seen = Vec::new();
    for page in 1.. {
        let (status, v) =
            get(app.acct(&format!("/workers/big-a/builds?per_page=200&page={page}"))).await;
        assert_eq!(status, 200, "{v}");
        let info = &v["result_info"];
        assert_eq!(info["per_page"], 1, "{info}");
        assert_eq!(info["total_count"], 3, "{info}");
        assert_eq!(info["total_pages"], 3, "{info}");
        seen.extend(
            v["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| s(&b["build_uuid"])),
        );
        if info["next_page"] == json!(false) {
            break;
        }
        assert!(page < 10);
    }
    assert_eq!(seen, ids, "every build once, newest first");
    // One Worker's latest build fits; both together would not.
    let (status, v) = get(app.acct("/builds/latest?external_script_ids=big-a")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(s(&v["result"]["builds"]["big-a"]["build_uuid"]), ids[0]);
    let (status, v) = get(app.acct("/builds/latest?external_script_ids=big-a,big-b")).await;
    assert_error(status, &v, 400, 12002);
    assert!(
        s(&v["errors"][0]["message"]).contains("external_script_ids"),
        "{v}"
    );
    // Small builds still come 50 to a page by default.
    let f = app.fixture("small").await;
    for i in 0..3 {
        app.ok(
            Method::POST,
            &app.acct(&format!("/triggers/{}/builds", f.trigger)),
            Some(json!({"branch": format!("s{i}")})),
        )
        .await;
    }
    let (_, v) = get(app.acct("/workers/small/builds")).await;
    assert_eq!(v["result_info"]["per_page"], 50);
    assert_eq!(v["result_info"]["count"], 3);
    app.stop().await;
}

/// The Worker build configuration endpoints answer Cloudflare's shapes (`builds_WorkerResponse`,
/// 201 on create, `"ok"` on delete), for Cloudflare's own example request.
#[tokio::test]
async fn worker_build_configuration_shapes() {
    let app = TestApp::spawn().await;
    let token = s(&app
        .ok(
            Method::POST,
            &app.acct("/tokens"),
            Some(json!({"build_token_name": "My Build Token", "build_token_secret": "super-secret-token",
                "cloudflare_token_id": "cf-token-123"})),
        )
        .await["build_token_uuid"]);
    // Cloudflare's example body (cloudflare-openapi-builds.json), with a real token id.
    let body = json!({
        "git_repository": {"branch": "main", "provider_account_id": "cloudflare",
            "provider_account_name": "Cloudflare", "provider_type": "github", "repo_id": "workers-sdk",
            "repo_name": "workers-sdk"},
        "production_settings": {"build_caching_enabled": true, "build_command": "npm run build",
            "build_token_uuid": token, "deploy_command": "npx wrangler deploy", "environment_variables": {},
            "path_excludes": ["*.md"], "path_includes": ["*"], "root_directory": "/"},
        "script_tag": "my-worker"
    });
    let (status, v) = app
        .call(
            Method::POST,
            &app.acct("/workers"),
            Some(ADMIN_TOKEN),
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    snap("create_worker_build", &v);
    snap(
        "get_worker_build",
        &full(&app, Method::GET, &app.acct("/workers/my-worker"), None).await,
    );
    // Cloudflare's example update.
    snap(
        "update_worker_build",
        &full(
            &app,
            Method::PATCH,
            &app.acct("/workers/my-worker"),
            Some(json!({"production_settings": {"build_command": "npm run build:production",
                "deploy_command": "npx wrangler deploy --env production"}, "previews_enabled": true})),
        )
        .await,
    );
    snap(
        "delete_worker_build",
        &full(&app, Method::DELETE, &app.acct("/workers/my-worker"), None).await,
    );
    app.stop().await;
}
