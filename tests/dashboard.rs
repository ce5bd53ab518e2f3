//! The web dashboard in a real headless Chromium (WebDriver): signing in and out, the pages of a
//! real server with real builds, the live log, Cancel and Retry, what a read token may do, forged
//! forms, and attacker-controlled text (branch names, log lines) shown as text. Screenshots of the
//! main pages are saved under `target/screenshots/`.

mod common;

use common::browser::{Browser, Viewport};
use common::*;
use fantoccini::Locator;
use kiln::domain::{Permission, Timestamp};
use kiln::sandbox::SandboxMode;
use reqwest::StatusCode;
use serde_json::json;

/// A client that shows redirects instead of following them.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The CSRF token of the page shown (every signed-in page has the sign-out form).
async fn csrf_of(browser: &Browser) -> String {
    browser
        .find("form.sign-out input[name=csrf]")
        .await
        .attr("value")
        .await
        .expect("csrf attribute")
        .expect("a csrf value")
}

/// How many forms of the page post (the sign-out form is one).
fn post_forms(source: &str) -> usize {
    source.matches("method=\"post\"").count()
}

/// A failing and a passing Worker on the overview (failing first), a Worker's builds filtered by
/// outcome, a finished build's page with its steps and coloured log, and Retry.
#[tokio::test]
async fn the_overview_builds_list_and_a_finished_build() {
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let good = app.fixture("good-site").await;
    let bad = app.fixture("bad-site").await;
    commit_files(
        &app,
        "good-site",
        &[("README.md", "x")],
        "Add the site\n\nWith a body.",
    );
    commit_files(&app, "bad-site", &[("README.md", "x")], "Break the build");
    set_commands(
        &app,
        &good.trigger,
        r"printf '\033[1;32mcompiled\033[0m <b>bold?</b>\n'",
        "echo deployed",
    )
    .await;
    set_commands(&app, &bad.trigger, "echo oops; exit 3", "").await;
    let good_id = queue(&app, &good.trigger, json!({"branch": "main"})).await;
    let bad_id = queue(&app, &bad.trigger, json!({"branch": "main"})).await;
    assert_eq!(
        wait_stopped(&app, &good_id).await["build_outcome"],
        "success"
    );
    assert_eq!(wait_stopped(&app, &bad_id).await["build_outcome"], "fail");

    let browser = Browser::open(&app.base).await;
    browser.goto("/sign-in").await;
    browser.screenshot("sign-in").await;
    browser.sign_in(ADMIN_TOKEN).await;
    // Kiln holds one account: an all-accounts token lands on its Workers.
    assert_eq!(browser.path().await, format!("/accounts/{ACCOUNT}/workers"));
    browser.goto("/accounts").await;
    browser.wait_text("h1", "Accounts").await;
    browser
        .find(&format!("a[href='/accounts/{ACCOUNT}/workers']"))
        .await
        .click()
        .await
        .expect("open the account");
    browser.wait_text("h1", "Workers").await;
    let rows = browser
        .client
        .find_all(Locator::Css("tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2);
    let first = rows[0].text().await.expect("text");
    let second = rows[1].text().await.expect("text");
    assert!(
        first.contains("bad-site") && first.contains("failed"),
        "{first}"
    );
    assert!(
        second.contains("good-site") && second.contains("success"),
        "{second}"
    );
    browser.screenshot("overview").await;

    // The failing Worker's builds, filtered.
    browser
        .find("a[href$='/workers/bad-site/builds']")
        .await
        .click()
        .await
        .expect("open the builds");
    browser.wait_text("h1", "bad-site").await;
    browser.screenshot("builds-list").await;
    browser
        .goto(&format!(
            "/accounts/{ACCOUNT}/workers/bad-site/builds?outcome=success"
        ))
        .await;
    browser.wait_text("main", "0 builds match the filter").await;
    browser
        .goto(&format!(
            "/accounts/{ACCOUNT}/workers/bad-site/builds?outcome=fail&branch=main"
        ))
        .await;
    browser
        .wait_text("main", "1 build matches the filter")
        .await;
    browser
        .goto(&format!(
            "/accounts/{ACCOUNT}/workers/bad-site/builds?outcome=nope"
        ))
        .await;
    browser.wait_text("main", "outcome: must be").await;

    // The passing build's page.
    browser
        .goto(&format!("/accounts/{ACCOUNT}/builds/{good_id}"))
        .await;
    browser.wait_text("#build-status", "success").await;
    let steps = browser.text("ol.steps").await;
    for step in [
        "Initialize build environment",
        "Clone repository",
        "Build: ",
        "Deploy: echo deployed",
    ] {
        assert!(steps.contains(step), "{steps}");
    }
    let source = browser.source().await;
    assert!(
        source.contains("<span class=\"f2 ab\">compiled</span> &lt;b&gt;bold?&lt;/b&gt;"),
        "{source}"
    );
    assert!(source.contains("id=\"L1\""), "line anchors");
    browser.screenshot("build-finished").await;
    browser.scroll_to("#steps-heading").await;
    browser.screenshot("build-finished-log").await;

    // Search without JavaScript: the matching lines only, linked to their place.
    browser
        .goto(&format!("/accounts/{ACCOUNT}/builds/{good_id}?q=DEPLOYED"))
        .await;
    browser.wait_text("main", "containing “DEPLOYED”").await;
    let hits = browser.source().await;
    assert!(hits.contains("<mark>deployed</mark>"), "{hits}");

    // Retry: a manual build pinned to the same branch and commit.
    browser
        .goto(&format!("/accounts/{ACCOUNT}/builds/{bad_id}"))
        .await;
    browser
        .find("form[action$='/retry'] button")
        .await
        .click()
        .await
        .expect("retry");
    browser.wait_text(".flash", "Retry queued").await;
    let path = browser.path().await;
    let retried = path.rsplit('/').next().expect("build id").to_owned();
    assert_ne!(retried, bad_id);
    let original = get_build(&app, &bad_id).await;
    let again = wait_stopped(&app, &retried).await;
    let meta = &again["build_trigger_metadata"];
    assert_eq!(meta["build_trigger_source"], "manual");
    assert_eq!(meta["branch"], "main");
    assert_eq!(
        meta["commit_hash"],
        original["build_trigger_metadata"]["commit_hash"]
    );

    // At a phone's width the overview has no horizontal scroll.
    let phone = Browser::open_with(&app.base, Viewport::Phone).await;
    phone.sign_in(ADMIN_TOKEN).await;
    phone.goto(&format!("/accounts/{ACCOUNT}/workers")).await;
    phone.wait_text("h1", "Workers").await;
    let width = phone
        .client
        .execute("return document.documentElement.scrollWidth;", vec![])
        .await
        .expect("scroll width");
    assert!(width.as_u64().is_some_and(|w| w <= 375), "{width}");
    phone.screenshot("overview-phone").await;
    phone
        .goto(&format!("/accounts/{ACCOUNT}/builds/{good_id}"))
        .await;
    phone.wait_text("#build-status", "success").await;
    phone.screenshot("build-phone").await;
    phone.close().await;
    browser.close().await;
}

/// A running build's page shows new log lines as they are written, and Cancel stops it.
#[tokio::test]
async fn a_running_build_streams_live_and_is_cancelled_from_its_page() {
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let f = app.fixture("live").await;
    commit_files(&app, "live", &[("README.md", "x")], "init");
    set_commands(
        &app,
        &f.trigger,
        "i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo \"tick $i\"; sleep 0.2; done",
        "",
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    wait_log(&app, &id, "tick 1").await;

    let browser = Browser::open(&app.base).await;
    browser.sign_in(ADMIN_TOKEN).await;
    browser
        .goto(&format!("/accounts/{ACCOUNT}/builds/{id}"))
        .await;
    browser.wait_text("#build-status", "running").await;
    let at_load = browser
        .client
        .find_all(Locator::Css("#log li"))
        .await
        .expect("lines")
        .len();
    // Lines written after the page was rendered arrive without a reload.
    let last = browser
        .eventually("new log lines appear live", || async {
            let lines = browser
                .client
                .find_all(Locator::Css("#log li"))
                .await
                .ok()?;
            if lines.len() < at_load + 3 {
                return None;
            }
            lines.last()?.text().await.ok()
        })
        .await;
    assert!(last.contains("tick"), "{last}");
    browser
        .wait_text("#live-note", "Following the log live")
        .await;
    browser.screenshot("build-running").await;
    browser.scroll_to("#log-heading").await;
    browser.screenshot("build-running-log").await;

    browser
        .find("#cancel-form button")
        .await
        .click()
        .await
        .expect("cancel");
    browser.wait_text(".flash", "Build cancelled").await;
    browser.wait_text("#build-status", "cancelled").await;
    assert!(
        !browser.has("#cancel-form").await,
        "no Cancel on a stopped build"
    );
    let build = wait_stopped(&app, &id).await;
    assert_eq!(build["build_outcome"], "cancelled");
    browser.close().await;
}

/// A read token sees every page of its account and no editing control; forged forms (its own
/// session without write permission, no CSRF token, a foreign origin) are refused and change
/// nothing; a queued build says why it waits.
#[tokio::test]
async fn a_read_token_edits_nothing_and_forged_forms_are_refused() {
    let app = TestApp::spawn().await;
    let f = app.fixture("queued-site").await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let reader = app.mint_token(Some(&[ACCOUNT]), Permission::Read).await;

    let browser = Browser::open(&app.base).await;
    browser.sign_in(&reader).await;
    // A token of one account lands on its Workers.
    assert_eq!(browser.path().await, format!("/accounts/{ACCOUNT}/workers"));
    browser.wait_text("main", "queued-site").await;
    assert_eq!(
        post_forms(&browser.source().await),
        1,
        "only sign-out posts"
    );
    browser
        .goto(&format!("/accounts/{ACCOUNT}/workers/queued-site/builds"))
        .await;
    browser.wait_text("main", "1 build").await;
    assert_eq!(post_forms(&browser.source().await), 1);
    browser
        .goto(&format!("/accounts/{ACCOUNT}/builds/{id}"))
        .await;
    browser.wait_text("#build-status", "queued").await;
    browser.wait_text("main", "Waiting in the queue").await;
    browser.wait_text("main", "Position in the queue: 1").await;
    let source = browser.source().await;
    assert_eq!(post_forms(&source), 1, "{source}");
    assert!(!browser.has("#cancel-form").await);
    browser.screenshot("build-queued-read-token").await;
    // Another account is not its to see.
    browser
        .goto(&format!("/accounts/{OTHER_ACCOUNT}/workers"))
        .await;
    browser
        .wait_text("main", "not valid for this account")
        .await;

    let reader_cookie = browser
        .cookie("kiln_session")
        .await
        .expect("session cookie");
    browser.goto(&format!("/accounts/{ACCOUNT}/workers")).await;
    let reader_csrf = csrf_of(&browser).await;
    let admin = Browser::open(&app.base).await;
    admin.sign_in(ADMIN_TOKEN).await;
    admin.goto(&format!("/accounts/{ACCOUNT}/workers")).await;
    let admin_cookie = admin.cookie("kiln_session").await.expect("session cookie");
    let admin_csrf = csrf_of(&admin).await;
    let host = app.base.trim_start_matches("http://").to_owned();

    let client = raw_client();
    let cancel = format!("{}/accounts/{ACCOUNT}/builds/{id}/cancel", app.base);
    let post = |cookie: Option<String>, origin: Option<String>, body: String| {
        let mut req = client
            .post(&cancel)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(c) = cookie {
            req = req.header("cookie", format!("kiln_session={c}"));
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let same_origin = Some(format!("http://{host}"));
    // The read token's own session, with its valid CSRF token: no write permission.
    let r = post(
        Some(reader_cookie.clone()),
        same_origin.clone(),
        format!("csrf={reader_csrf}"),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body = r.text().await.expect("body");
    assert!(body.contains("can only read"), "{body}");
    // Without a CSRF token, or with another session's.
    for body in [
        String::new(),
        format!("csrf={admin_csrf}"),
        "csrf=".to_owned(),
    ] {
        let r = post(Some(reader_cookie.clone()), same_origin.clone(), body)
            .await
            .expect("post");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    // A writer's session, but no or a wrong CSRF token, or a foreign origin.
    for (origin, body) in [
        (same_origin.clone(), String::new()),
        (same_origin.clone(), format!("csrf={reader_csrf}")),
        (
            Some("http://evil.example".to_owned()),
            format!("csrf={admin_csrf}"),
        ),
        (Some("null".to_owned()), format!("csrf={admin_csrf}")),
    ] {
        let r = post(Some(admin_cookie.clone()), origin, body)
            .await
            .expect("post");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let page = r.text().await.expect("body");
        assert!(
            page.contains("Nothing was changed") || page.contains("nothing was changed"),
            "{page}"
        );
    }
    // A foreign Referer without an Origin.
    let r = client
        .post(&cancel)
        .header("cookie", format!("kiln_session={admin_cookie}"))
        .header("referer", "http://evil.example/page")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={admin_csrf}"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // No session at all.
    let r = post(None, same_origin.clone(), format!("csrf={admin_csrf}"))
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Nothing changed.
    assert_eq!(get_build(&app, &id).await["status"], "queued");

    // The same form, sent right, does cancel: the refusals above were not for another reason.
    let r = post(
        Some(admin_cookie),
        same_origin,
        format!("csrf={admin_csrf}"),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(get_build(&app, &id).await["build_outcome"], "cancelled");
    admin.close().await;
    browser.close().await;
}

/// A branch named `<script>alert(1)</script>` and log lines with HTML are shown as text on every
/// page that shows them, and no script of theirs runs.
#[tokio::test]
async fn attacker_controlled_text_renders_as_text() {
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let f = app.fixture("xss").await;
    let branch = "<script>alert(1)</script>";
    app.ok(
        reqwest::Method::PATCH,
        &app.acct(&format!("/triggers/{}", f.trigger)),
        Some(json!({"branch_includes": ["*"]})),
    )
    .await;
    let repo = commit_files(&app, "xss", &[("README.md", "x")], "init");
    git(&repo, &["checkout", "-q", "-b", branch]);
    git(
        &repo,
        &[
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "<img src=x onerror=alert(3)>",
        ],
    );
    set_commands(
        &app,
        &f.trigger,
        "echo '<img src=x onerror=alert(2)><script>alert(4)</script>'",
        "",
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": branch})).await;
    assert_eq!(wait_stopped(&app, &id).await["build_outcome"], "success");

    let browser = Browser::open(&app.base).await;
    browser.sign_in(ADMIN_TOKEN).await;
    for path in [
        format!("/accounts/{ACCOUNT}/workers"),
        format!("/accounts/{ACCOUNT}/workers/xss/builds"),
        format!(
            "/accounts/{ACCOUNT}/workers/xss/builds?branch={}",
            urlencode(branch)
        ),
        format!("/accounts/{ACCOUNT}/builds/{id}"),
        format!("/accounts/{ACCOUNT}/builds/{id}?q=alert"),
    ] {
        browser.goto(&path).await;
        browser.wait_text("main", branch).await;
        let source = browser.source().await;
        assert!(
            source.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path}: {source}"
        );
        assert!(!source.contains("<script>alert("), "{path}: {source}");
        assert!(!source.contains("<img src=x"), "{path}: {source}");
        assert!(!browser.alert_open().await, "{path}: an alert opened");
    }
    let source = browser.source().await;
    assert!(
        source.contains("&lt;img src=x onerror=alert(2)&gt;"),
        "{source}"
    );
    browser.close().await;
}

/// `text` percent-encoded for a query string.
fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A wrong token is refused on the sign-in page; signing out ends the session (its cookie no
/// longer works); revoking the token ends its sessions too.
#[tokio::test]
async fn signing_out_or_revoking_the_token_ends_the_session() {
    // A failed sign-in is forgiven only after an hour: the throttle's count below is exact.
    let app = TestApp::spawn_with(|c| {
        c.auth_throttle.refill = std::time::Duration::from_secs(3600);
    })
    .await;
    app.fixture("site").await;
    let browser = Browser::open(&app.base).await;
    browser.goto("/sign-in").await;
    browser
        .find("#token")
        .await
        .send_keys("kiln_not-a-token")
        .await
        .expect("type");
    browser
        .find(".sign-in button")
        .await
        .click()
        .await
        .expect("submit");
    browser.wait_text(".form-error", "not valid").await;
    browser.screenshot("sign-in-refused").await;

    // Pages need a session: the sign-in page comes back to them.
    browser.goto(&format!("/accounts/{ACCOUNT}/workers")).await;
    assert!(browser.path().await.starts_with("/sign-in?next="));
    browser
        .find("#token")
        .await
        .send_keys(ADMIN_TOKEN)
        .await
        .expect("type");
    browser
        .find(".sign-in button")
        .await
        .click()
        .await
        .expect("submit");
    browser.wait_text("h1", "Workers").await;
    assert_eq!(browser.path().await, format!("/accounts/{ACCOUNT}/workers"));

    let cookie = browser.cookie("kiln_session").await.expect("cookie");
    let client = raw_client();
    let page = format!("{}/accounts/{ACCOUNT}/workers", app.base);
    let get = |cookie: String| {
        client
            .get(&page)
            .header("cookie", format!("kiln_session={cookie}"))
            .send()
    };
    let r = get(cookie.clone()).await.expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let headers = r.headers().clone();
    let csp = headers["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");

    browser
        .find("form.sign-out button")
        .await
        .click()
        .await
        .expect("sign out");
    browser.wait_text(".flash", "Signed out").await;
    assert!(browser.cookie("kiln_session").await.is_none());
    let r = get(cookie).await.expect("get");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["location"]
            .to_str()
            .is_ok_and(|l| l.starts_with("/sign-in")),
        "{:?}",
        r.headers()
    );

    // Malformed addresses get HTML error pages, not a bare 500 or axum's plain text.
    for (path, status) in [
        (
            format!("/accounts/{ACCOUNT}/builds/not-a-uuid"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/accounts/{ACCOUNT}/builds/%FF"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/accounts/{ACCOUNT}/builds/182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e"),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/accounts/{ACCOUNT}/workers/site/builds?page=x"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/accounts/no.pe/workers".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        ("/no/such/page".to_owned(), StatusCode::NOT_FOUND),
    ] {
        let admin_cookie = {
            browser.sign_in(ADMIN_TOKEN).await;
            browser.cookie("kiln_session").await.expect("cookie")
        };
        let r = client
            .get(format!("{}{path}", app.base))
            .header("cookie", format!("kiln_session={admin_cookie}"))
            .header("accept", "text/html")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), status, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .is_ok_and(|t| t.starts_with("text/html")),
            "{path}"
        );
    }

    // A token revoked while signed in: the next page signs out.
    let reader = app.mint_token(Some(&[ACCOUNT]), Permission::Read).await;
    browser.sign_in(&reader).await;
    let tokens = app.store().list_api_tokens().await.expect("tokens");
    let revoked = tokens.last().expect("the reader's token");
    assert!(
        app.store()
            .revoke_api_token(&revoked.id, Timestamp::now())
            .await
            .expect("revoke")
    );
    browser.goto(&format!("/accounts/{ACCOUNT}/workers")).await;
    assert!(browser.path().await.starts_with("/sign-in"));
    browser.close().await;

    // The sign-in form is throttled as the API is: 10 wrong tokens (the one typed above included),
    // then 429.
    let form = client
        .get(format!("{}/sign-in", app.base))
        .send()
        .await
        .expect("sign-in page");
    let cookie = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("kiln_sign_in="))
        .and_then(|v| v.split(';').next())
        .expect("sign-in cookie")
        .to_owned();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = client
            .post(format!("{}/sign-in", app.base))
            .header("cookie", format!("kiln_sign_in={cookie}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={cookie}&token=kiln_wrong"))
            .send()
            .await
            .expect("post");
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses[..9], [401; 9]);
    assert_eq!(statuses[9], 429);
}
