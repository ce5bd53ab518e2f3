//! A Worker's build configuration (rows 29–32 of API-REFERENCE §9), driven the way an
//! infrastructure-as-code provider drives it: create, read, update, delete, held as the Worker's
//! triggers, with previews building every other branch only while they are on.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WORKER: &str = "site-worker";
const REPO_ID: u64 = 482_913_377;
const INSTALLATION: i64 = 7_310_442;
const SECRET_VALUE: &str = "prod-api-key-SECRET-4f2a9c";

/// A build token; returns its id.
async fn build_token(app: &TestApp, name: &str) -> String {
    s(&app
        .ok(
            Method::POST,
            &app.acct("/tokens"),
            Some(
                json!({"build_token_name": name, "build_token_secret": format!("cf-{name}-secret"),
                "cloudflare_token_id": format!("cf-{name}")}),
            ),
        )
        .await["build_token_uuid"])
}

/// The body an infrastructure-as-code provider sends (Cloudflare's example, with our repository).
fn create_body(token: &str) -> Value {
    json!({
        "script_tag": WORKER,
        "git_repository": {"branch": "main", "provider_account_id": 6811672,
            "provider_account_name": "acme", "provider_type": "github", "repo_id": REPO_ID,
            "repo_name": "site"},
        "production_settings": {"build_caching_enabled": true, "build_command": "npm run build",
            "build_token_uuid": token, "deploy_command": "npx wrangler deploy",
            "environment_variables": {
                "API_KEY": {"is_secret": true, "value": SECRET_VALUE},
                "NODE_ENV": {"is_secret": false, "value": "production"}},
            "path_excludes": ["*.md"], "path_includes": ["*"], "root_directory": "/"}
    })
}

/// Creates a configuration, asserting `201 Created`; returns it.
async fn create(app: &TestApp, body: Value) -> Value {
    let (status, v) = app.post(&app.acct("/workers"), body).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["success"], true, "{v}");
    v["result"].clone()
}

async fn triggers(app: &TestApp) -> Vec<Value> {
    app.ok(
        Method::GET,
        &app.acct(&format!("/workers/{WORKER}/triggers")),
        None,
    )
    .await
    .as_array()
    .expect("triggers")
    .clone()
}

fn config_path(app: &TestApp) -> String {
    app.acct(&format!("/workers/{WORKER}"))
}

#[tokio::test]
async fn a_configuration_is_created_read_updated_and_deleted_as_triggers() {
    let app = TestApp::spawn().await;
    let token = build_token(&app, "ci").await;
    let path = config_path(&app);
    let (status, _) = app.get(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no configuration yet");

    // Create: 201 with the configuration.
    let resp = app
        .client
        .post(app.url(&app.acct("/workers")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&create_body(&token))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.expect("json");
    assert_eq!(created["success"], true, "{created}");
    let config = created["result"].clone();
    assert_eq!(config["script_tag"], WORKER);
    assert_eq!(
        config["git_repository"],
        json!({"branch": "main", "grant_id": null, "provider_account_id": "6811672",
            "provider_account_name": "acme", "provider_type": "github", "repo_id": REPO_ID.to_string(),
            "repo_name": "site"})
    );
    let prod = &config["production_settings"];
    assert_eq!(prod["build_command"], "npm run build");
    assert_eq!(prod["build_token_uuid"], token);
    assert_eq!(prod["path_excludes"], json!(["*.md"]));
    assert_eq!(prod["build_caching_enabled"], true);
    assert_eq!(
        prod["environment_variables"]["API_KEY"]["value"],
        Value::Null
    );
    assert_eq!(
        prod["environment_variables"]["NODE_ENV"]["value"],
        "production"
    );
    assert_eq!(config["previews_enabled"], false);
    assert_eq!(config["previews_base_config"], Value::Null);
    assert!(!created.to_string().contains(SECRET_VALUE));
    assert_eq!(app.ok(Method::GET, &path, None).await, config);

    // It is the Worker's production trigger.
    let t = triggers(&app).await;
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0]["branch_includes"], json!(["main"]));
    assert_eq!(t[0]["branch_excludes"], json!([]));
    let production = s(&t[0]["trigger_uuid"]);
    let vars = app
        .ok(
            Method::GET,
            &app.acct(&format!("/triggers/{production}/environment_variables")),
            None,
        )
        .await;
    assert_eq!(vars["API_KEY"]["is_secret"], true);

    // A second create is a conflict.
    let (status, v) = app.post(&app.acct("/workers"), create_body(&token)).await;
    assert_error(status, &v, 409, 12009);

    // Update: branch, settings, a variable deleted by null, another added.
    let updated = app
        .ok(
            Method::PATCH,
            &path,
            Some(json!({"git_repository": {"branch": "release"},
            "production_settings": {"deploy_command": "npx wrangler deploy --env production",
                "environment_variables": {"NODE_ENV": null, "REGION": {"is_secret": false, "value": "eu"}}}})),
        )
        .await;
    assert_eq!(updated["git_repository"]["branch"], "release");
    let prod = &updated["production_settings"];
    assert_eq!(
        prod["deploy_command"],
        "npx wrangler deploy --env production"
    );
    assert_eq!(prod["build_command"], "npm run build", "unchanged");
    let keys: Vec<&String> = prod["environment_variables"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys, ["API_KEY", "REGION"]);
    let t = triggers(&app).await;
    assert_eq!(t[0]["branch_includes"], json!(["release"]));
    assert_eq!(
        t[0]["deploy_command"],
        "npx wrangler deploy --env production"
    );

    // Previews on: a second trigger builds every other branch, with the preview deploy command and
    // none of production's variables.
    let on = app
        .ok(
            Method::PATCH,
            &path,
            Some(json!({"previews_enabled": true})),
        )
        .await;
    assert_eq!(on["previews_enabled"], true);
    let previews = &on["previews_base_config"];
    assert_eq!(previews["deploy_command"], "npx wrangler versions upload");
    assert_eq!(previews["build_command"], "npm run build");
    assert_eq!(previews["environment_variables"], json!({}));
    let t = triggers(&app).await;
    assert_eq!(t.len(), 2, "{t:?}");
    assert_eq!(t[1]["branch_includes"], json!(["*"]));
    assert_eq!(t[1]["branch_excludes"], json!(["release"]));
    let preview_trigger = s(&t[1]["trigger_uuid"]);

    // Previews off: the trigger goes, its settings stay; changing them while off works.
    let off = app
        .ok(
            Method::PATCH,
            &path,
            Some(json!({"previews_enabled": false,
            "previews_base_config": {"build_command": "npm run build:preview",
                "environment_variables": {"PREVIEW": {"is_secret": false, "value": "1"}}}})),
        )
        .await;
    assert_eq!(off["previews_enabled"], false);
    assert_eq!(
        off["previews_base_config"]["build_command"],
        "npm run build:preview"
    );
    assert_eq!(triggers(&app).await.len(), 1);
    // And on again: the same trigger, with the settings changed while off.
    let on = app
        .ok(
            Method::PATCH,
            &format!("{path}?patch_existing_previews=true"),
            Some(json!({"previews_enabled": true})),
        )
        .await;
    assert_eq!(
        on["previews_base_config"]["build_command"],
        "npm run build:preview"
    );
    assert_eq!(
        on["previews_base_config"]["environment_variables"]["PREVIEW"]["value"],
        "1"
    );
    let t = triggers(&app).await;
    assert_eq!(t.len(), 2);
    assert_eq!(s(&t[1]["trigger_uuid"]), preview_trigger);

    // A build of each, then delete: triggers go, queued builds are cancelled, builds stay readable.
    let build = s(&app
        .ok(
            Method::POST,
            &app.acct(&format!("/triggers/{production}/builds")),
            Some(json!({"branch": "release"})),
        )
        .await["build_uuid"]);
    let deleted = app.ok(Method::DELETE, &path, None).await;
    assert_eq!(deleted, "ok");
    let (status, v) = app.get(&path).await;
    assert_error(status, &v, 404, 12000);
    let (status, v) = app
        .call(Method::DELETE, &path, Some(ADMIN_TOKEN), None)
        .await;
    assert_error(status, &v, 404, 12000);
    assert!(triggers(&app).await.is_empty());
    let b = app
        .ok(Method::GET, &app.acct(&format!("/builds/{build}")), None)
        .await;
    assert_eq!(b["status"], "stopped");
    assert_eq!(b["build_outcome"], "cancelled");
    // The Worker can be configured again.
    let again = app
        .client
        .post(app.url(&app.acct("/workers")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&create_body(&token))
        .send()
        .await
        .expect("send");
    assert_eq!(again.status(), StatusCode::CREATED);
    app.stop().await;
}

/// The configuration's rules: other accounts see nothing, triggers made through the triggers API
/// are not taken over, bad input is refused with the field named, a secret is never revealed.
#[tokio::test]
async fn configurations_are_scoped_validated_and_never_reveal_secrets() {
    let app = TestApp::spawn().await;
    let token = build_token(&app, "ci").await;
    let path = config_path(&app);
    create(&app, create_body(&token)).await;

    // Another account: not found, and it cannot be changed or deleted from there.
    let other = app
        .mint_token(Some(&[OTHER_ACCOUNT]), kiln::domain::Permission::Write)
        .await;
    let other_path = format!("/accounts/{OTHER_ACCOUNT}/builds/workers/{WORKER}");
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"previews_enabled": true}))),
        (Method::DELETE, None),
    ] {
        let (status, v) = app.call(method, &other_path, Some(&other), body).await;
        assert_error(status, &v, 404, 12000);
    }
    // A read-only token reads but does not write.
    let reader = app
        .mint_token(Some(&[ACCOUNT]), kiln::domain::Permission::Read)
        .await;
    let (status, _) = app.call(Method::GET, &path, Some(&reader), None).await;
    assert_eq!(status, 200);
    let (status, v) = app
        .call(
            Method::PATCH,
            &path,
            Some(&reader),
            Some(json!({"previews_enabled": true})),
        )
        .await;
    assert_error(status, &v, 403, 10000);

    // Bad input.
    let before = app.ok(Method::GET, &path, None).await;
    #[rustfmt::skip]
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "at least one"),
        (json!({"git_repository": {}}), "git_repository.branch"),
        (json!({"git_repository": {"branch": "a..b"}}), "git_repository.branch"),
        (json!({"production_settings": {}}), "production_settings"),
        (json!({"production_settings": {"root_directory": "../x"}}), "production_settings.root_directory"),
        (json!({"production_settings": {"environment_variables": {"1BAD": {"is_secret": false, "value": "x"}}}}), "production_settings.environment_variables"),
        (json!({"previews_base_config": {"path_includes": [""]}}), "previews_base_config.path_includes"),
        (json!({"previews_enabled": "yes"}), "previews_enabled"),
    ];
    // Well-formed, but refused by what is stored: an unknown build token (404), a secret made plain
    // without a new value (the issue; 409, as on the environment variables endpoint).
    #[rustfmt::skip]
    let refused: Vec<(Value, &str, u16, u64)> = vec![
        (json!({"production_settings": {"build_token_uuid": "5f4e3d2c-1b0a-4f9e-8d7c-6b5a4f3e2d1c"}}), "production_settings.build_token_uuid", 404, 12000),
        (json!({"production_settings": {"environment_variables": {"API_KEY": {"is_secret": false}}}}), "API_KEY", 409, 12009),
    ];
    let cases = cases
        .into_iter()
        .map(|(body, names)| (body, names, 400, 12002))
        .chain(refused);
    for (body, names, want_status, want_code) in cases {
        let (status, v) = app
            .call(Method::PATCH, &path, Some(ADMIN_TOKEN), Some(body.clone()))
            .await;
        assert_error(status, &v, want_status, want_code);
        let message = s(&v["errors"][0]["message"]);
        assert!(message.contains(names), "{body}: {message}");
    }
    let (status, v) = app
        .call(
            Method::PATCH,
            &format!("{path}?patch_existing_previews=maybe"),
            Some(ADMIN_TOKEN),
            Some(json!({"previews_enabled": true})),
        )
        .await;
    assert_error(status, &v, 400, 12002);
    assert_eq!(
        app.ok(Method::GET, &path, None).await,
        before,
        "nothing changed"
    );
    let mut create_cases = Vec::new();
    let mut body = create_body(&token);
    body["script_tag"] = json!("other-worker");
    for (pointer, value, names) in [
        (
            "/git_repository/provider_type",
            json!("gitlab"),
            "git_repository.provider_type",
        ),
        ("/git_repository/branch", json!(""), "git_repository.branch"),
        ("/git_repository/repo_id", json!(-1), "repo_id"),
        ("/script_tag", json!("a/b"), "script_tag"),
        (
            "/production_settings/build_command",
            json!("x".repeat(513)),
            "production_settings.build_command",
        ),
    ] {
        let mut b = body.clone();
        *b.pointer_mut(pointer).expect("field of the body") = value;
        create_cases.push((b, names, 400, 12002));
    }
    // A new variable needs a value: refused by the store like on the variables endpoint (409).
    let mut b = body.clone();
    *b.pointer_mut("/production_settings/environment_variables/API_KEY")
        .expect("field of the body") = json!({"is_secret": true});
    create_cases.push((b, "API_KEY", 409, 12009));
    for (b, names, want_status, want_code) in create_cases {
        let (status, v) = app.post(&app.acct("/workers"), b.clone()).await;
        assert_error(status, &v, want_status, want_code);
        let message = s(&v["errors"][0]["message"]);
        assert!(message.contains(names), "{b}: {message}");
    }
    let (status, _) = app.get(&app.acct("/workers/other-worker")).await;
    assert_eq!(status, 404, "a refused create left nothing");
    let (_, t) = app.get(&app.acct("/workers/other-worker/triggers")).await;
    assert_eq!(t["result"], json!([]));

    // Without build_token_uuid, the account's only token; with two, which one must be said.
    let mut b = create_body(&token);
    b["script_tag"] = json!("tokenless");
    b["production_settings"]
        .as_object_mut()
        .unwrap()
        .remove("build_token_uuid");
    let (status, v) = app.post(&app.acct("/workers"), b.clone()).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v["result"]["production_settings"]["build_token_uuid"],
        token
    );
    build_token(&app, "second").await;
    b["script_tag"] = json!("tokenless-2");
    let (status, v) = app.post(&app.acct("/workers"), b).await;
    assert_error(status, &v, 409, 12009);
    assert!(s(&v["errors"][0]["message"]).contains("production_settings.build_token_uuid"));

    // A Worker with a trigger made through the triggers API is not taken over.
    let f = app.fixture("legacy-worker").await;
    let mut b = create_body(&token);
    b["script_tag"] = json!("legacy-worker");
    let (status, v) = app.post(&app.acct("/workers"), b).await;
    assert_error(status, &v, 409, 12009);
    // And previews need the second trigger: one made through the triggers API blocks them.
    app.ok(
        Method::POST,
        &app.acct("/triggers"),
        Some(
            json!({"external_script_id": WORKER, "repo_connection_uuid": f.connection,
            "build_token_uuid": token, "trigger_name": "legacy preview",
            "branch_includes": ["*"], "branch_excludes": ["main"]}),
        ),
    )
    .await;
    let (status, v) = app
        .call(
            Method::PATCH,
            &path,
            Some(ADMIN_TOKEN),
            Some(json!({"previews_enabled": true})),
        )
        .await;
    assert_error(status, &v, 409, 12009);

    // No response ever showed the secret.
    for p in [
        path.clone(),
        app.acct(&format!("/workers/{WORKER}/triggers")),
    ] {
        let (_, v) = app.get(&p).await;
        assert!(!v.to_string().contains(SECRET_VALUE), "{v}");
    }
    app.stop().await;
}

/// Delivers a signed push of `branch`; returns the builds it queued.
async fn push(app: &TestApp, branch: &str, after: &str) -> Vec<Value> {
    let payload = push_payload(REPO_ID, INSTALLATION, branch, after);
    deliver_accepted(app, "push", &payload)
        .await
        .into_iter()
        .map(Value::String)
        .collect()
}

/// The trigger a build (by id) ran with, and the build.
async fn trigger_of(app: &TestApp, id: &Value) -> (String, Value) {
    let build = app
        .ok(Method::GET, &app.acct(&format!("/builds/{}", s(id))), None)
        .await;
    (s(&build["trigger"]["trigger_uuid"]), build)
}

/// What `previews_enabled` means for the Worker's builds: a push to the production branch builds the
/// production settings; a push to another branch builds the previews base config while previews are
/// on, and nothing while they are off.
#[tokio::test]
async fn previews_build_every_other_branch_only_while_on() {
    let app = TestApp::spawn().await;
    app.link_installation(ACCOUNT, INSTALLATION).await;
    let token = build_token(&app, "ci").await;
    let path = config_path(&app);
    create(&app, create_body(&token)).await;
    let production = s(&triggers(&app).await[0]["trigger_uuid"]);

    let built = push(&app, "main", &"a1".repeat(20)).await;
    assert_eq!(built.len(), 1);
    assert_eq!(trigger_of(&app, &built[0]).await.0, production);
    assert!(
        push(&app, "feature/x", &"b2".repeat(20)).await.is_empty(),
        "previews are off"
    );

    let on = app
        .ok(
            Method::PATCH,
            &path,
            Some(json!({"previews_enabled": true,
                "previews_base_config": {"deploy_command": "npx wrangler versions upload --preview-alias x"}})),
        )
        .await;
    assert_eq!(on["previews_enabled"], true);
    let built = push(&app, "feature/x", &"c3".repeat(20)).await;
    assert_eq!(built.len(), 1, "previews are on");
    let (trigger, build) = trigger_of(&app, &built[0]).await;
    assert_ne!(trigger, production);
    assert_eq!(
        build["build_trigger_metadata"]["deploy_command"],
        "npx wrangler versions upload --preview-alias x"
    );
    // The production branch still builds only production.
    let built = push(&app, "main", &"d4".repeat(20)).await;
    assert_eq!(built.len(), 1);
    assert_eq!(trigger_of(&app, &built[0]).await.0, production);

    app.ok(
        Method::PATCH,
        &path,
        Some(json!({"previews_enabled": false})),
    )
    .await;
    assert!(
        push(&app, "feature/y", &"e5".repeat(20)).await.is_empty(),
        "previews are off again"
    );
    app.stop().await;
}
