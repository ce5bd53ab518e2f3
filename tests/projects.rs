//! Real Workers projects build out of the box (issue 7): fixtures with real lockfiles
//! (tests/fixtures/projects) are pushed to a repository and built through the API by a real server in
//! the default sandbox, with toolchains that Kiln fetches from the npm registry into the shared store.
//! Also: submodules, the build cache, unknown versions, and one download for concurrent builds.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use kiln::sandbox::SandboxMode;
use reqwest::Method;
use serde_json::{Value, json};

/// Longest a build that installs real dependencies (and may first download its toolchains) may take.
const PROJECT_DEADLINE: Duration = Duration::from_secs(600);

/// The deploy command of the acceptance criteria: wrangler cannot reach Cloudflare here.
const DRY_RUN_DEPLOY: &str = "npx wrangler deploy --dry-run --outdir dist-deploy";

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/projects")
        .join(name)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Pushes the fixture `name` as the first commit of the repository the fixture of `worker` connects to.
fn commit_fixture(app: &TestApp, worker: &str, name: &str) -> PathBuf {
    let dir = app
        .git_remotes()
        .join("octo-org")
        .join(format!("{worker}-repo"));
    copy_tree(&fixture_dir(name), &dir);
    git(&dir, &["init", "-q", "-b", "main"]);
    git(&dir, &["add", "-A"]);
    git(
        &dir,
        &["commit", "-q", "-m", &format!("The {name} fixture")],
    );
    dir
}

async fn spawn() -> TestApp {
    spawn_runner(SandboxMode::Bwrap, |_| {}).await
}

/// Sets the trigger's commands, root directory and caching, with wrangler's metrics off.
async fn configure(app: &TestApp, trigger: &str, settings: Value) {
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{trigger}")),
        Some(settings),
    )
    .await;
    set_vars(
        app,
        trigger,
        json!({"WRANGLER_SEND_METRICS": {"value": "false", "is_secret": false}}),
    )
    .await;
}

async fn set_vars(app: &TestApp, trigger: &str, vars: Value) {
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{trigger}/environment_variables")),
        Some(vars),
    )
    .await;
}

/// Builds `main` and returns the stopped build and its log.
async fn build(app: &TestApp, trigger: &str) -> (Value, Vec<String>) {
    let id = queue(app, trigger, json!({"branch": "main"})).await;
    let b = wait_for_within(app, &id, "stopped", PROJECT_DEADLINE, |b| {
        b["status"] == "stopped"
    })
    .await;
    (b, all_logs(app, &id).await)
}

fn has_line(logs: &[String], pred: impl Fn(&str) -> bool) -> bool {
    logs.iter().any(|l| pred(l))
}

#[track_caller]
fn assert_line(logs: &[String], pred: impl Fn(&str) -> bool, what: &str) {
    assert!(has_line(logs, pred), "no {what} in\n{}", logs.join("\n"));
}

#[track_caller]
fn assert_success(b: &Value, logs: &[String]) {
    assert_eq!(b["build_outcome"], "success", "{}", logs.join("\n"));
    assert_line(
        logs,
        |l| l.contains("--dry-run: exiting now."),
        "wrangler dry-run",
    );
}

/// A fixture built through the API, and the lines its log must contain.
struct ProjectCase {
    fixture: &'static str,
    /// The trigger's settings besides the deploy command.
    settings: Value,
    /// The start of the `Detected the following tools` line.
    tools: &'static str,
    install: &'static str,
    /// Another line the log must contain.
    also: Option<&'static str>,
}

/// Builds the case's fixture (a new server each) and checks it succeeds with the expected lines.
async fn builds_out_of_the_box(case: ProjectCase) -> Vec<String> {
    let app = spawn().await;
    let f = app.fixture(case.fixture).await;
    commit_fixture(&app, case.fixture, case.fixture);
    let mut settings = case.settings;
    settings["deploy_command"] = json!(DRY_RUN_DEPLOY);
    configure(&app, &f.trigger, settings).await;
    let (b, logs) = build(&app, &f.trigger).await;
    assert_success(&b, &logs);
    let tools = format!(
        "Detected the following tools from environment: {}",
        case.tools
    );
    assert_line(&logs, |l| l.starts_with(&tools), &tools);
    let install = format!("Installing project dependencies: {}", case.install);
    assert_line(&logs, |l| l == install, &install);
    if let Some(also) = case.also {
        assert_line(&logs, |l| l.contains(also), also);
    }
    app.stop().await;
    logs
}

#[tokio::test]
async fn an_npm_project_builds_with_the_hosted_default_node() {
    let logs = builds_out_of_the_box(ProjectCase {
        fixture: "npm-worker",
        settings: json!({"build_command": "npm run build"}),
        tools: "npm@11.",
        install: "npm clean-install --progress=false",
        also: Some(", nodejs@24.18.0"),
    })
    .await;
    // The default Node is preinstalled in the hosted image: no "Installing" line.
    assert!(!has_line(&logs, |l| l.starts_with("Installing nodejs")));
}

#[tokio::test]
async fn a_pnpm_workspace_installs_at_its_root_and_builds_the_app() {
    builds_out_of_the_box(ProjectCase {
        fixture: "pnpm-monorepo",
        settings: json!({"build_command": "pnpm run build", "root_directory": "/apps/web"}),
        tools: "pnpm@10.11.1, nodejs@24.18.0, npm@11.",
        install: "pnpm install --frozen-lockfile",
        // The whole workspace is installed at its root: pnpm reports every workspace project.
        also: Some("Scope: all 3 workspace projects"),
    })
    .await;
}

#[tokio::test]
async fn a_yarn_4_project_gets_yarn_from_package_manager() {
    builds_out_of_the_box(ProjectCase {
        fixture: "yarn4-worker",
        settings: json!({"build_command": "yarn build"}),
        tools: "yarn@4.9.1, nodejs@24.18.0",
        install: "yarn install --immutable",
        also: None,
    })
    .await;
}

#[tokio::test]
async fn a_bun_project_builds_with_bun() {
    builds_out_of_the_box(ProjectCase {
        fixture: "bun-worker",
        settings: json!({"build_command": "bun run build"}),
        tools: "bun@1.2.15, nodejs@24.18.0",
        install: "bun install --frozen-lockfile",
        also: None,
    })
    .await;
}

#[tokio::test]
async fn nvmrc_picks_node_22_and_node_version_overrides_it() {
    let app = spawn().await;
    let f = app.fixture("nvm").await;
    commit_fixture(&app, "nvm", "nvmrc-worker");
    configure(
        &app,
        &f.trigger,
        json!({"build_command": "npm run build", "deploy_command": DRY_RUN_DEPLOY}),
    )
    .await;
    let (b, logs) = build(&app, &f.trigger).await;
    assert_success(&b, &logs);
    let node22 = logs
        .iter()
        .find_map(|l| l.strip_prefix("Installing nodejs "))
        .unwrap_or_else(|| panic!("no Installing nodejs line in\n{}", logs.join("\n")))
        .to_owned();
    assert!(node22.starts_with("22."), "{node22}");
    assert_line(
        &logs,
        |l| l == format!("node v{node22}"),
        "the build's own Node version",
    );
    assert_line(
        &logs,
        |l| l.contains(&format!("nodejs@{node22}")) && l.contains("npm@10."),
        "tools line with Node 22 and its npm 10",
    );

    set_vars(
        &app,
        &f.trigger,
        json!({"NODE_VERSION": {"value": "24.18.0", "is_secret": false}}),
    )
    .await;
    let (b, logs) = build(&app, &f.trigger).await;
    assert_success(&b, &logs);
    assert_line(
        &logs,
        |l| l == "Installing nodejs 24.18.0",
        "the variable's Node",
    );
    assert_line(&logs, |l| l == "node v24.18.0", "Node 24 running the build");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_node_version_fails_naming_the_variable_and_the_nearest_versions() {
    let app = spawn().await;
    let f = app.fixture("nover").await;
    commit_files(&app, "nover", &[("package.json", "{}")], "empty project");
    configure(
        &app,
        &f.trigger,
        json!({"build_command": "node --version", "deploy_command": ""}),
    )
    .await;
    set_vars(
        &app,
        &f.trigger,
        json!({"NODE_VERSION": {"value": "99", "is_secret": false}}),
    )
    .await;
    let (b, logs) = build(&app, &f.trigger).await;
    assert_eq!(b["build_outcome"], "fail", "{}", logs.join("\n"));
    let line = logs
        .iter()
        .find(|l| l.starts_with("Failed: error occurred while installing tools"))
        .unwrap_or_else(|| panic!("no failure line in\n{}", logs.join("\n")));
    assert!(line.contains("NODE_VERSION"), "{line}");
    assert!(line.contains("\"99\""), "{line}");
    assert!(line.contains("nearest: "), "{line}");
    // It fails while the build environment initializes: before the clone.
    assert!(
        !has_line(&logs, |l| l == "Cloning repository..."),
        "{}",
        logs.join("\n")
    );
    assert!(!has_line(&logs, |l| l.starts_with("Success: Finished initializing")));
    assert!(b["running_on"].is_null(), "{b}");
    app.stop().await;
}

#[tokio::test]
async fn submodules_are_checked_out_and_a_missing_one_fails_the_clone() {
    let app = spawn().await;
    let f = app.fixture("site").await;
    let theme = commit_files(
        &app,
        "theme",
        &[("style.css", "body { color: teal }\n")],
        "theme",
    );
    let site = commit_files(&app, "site", &[("index.html", "<p>hi</p>\n")], "site");
    git(
        &site,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            "../theme-repo",
            "themes/teal",
        ],
    );
    git(&site, &["commit", "-q", "-m", "Add the theme"]);
    configure(
        &app,
        &f.trigger,
        json!({"build_command": "cat themes/teal/style.css && git -C themes/teal log -1 --format=%s",
               "deploy_command": ""}),
    )
    .await;
    let (b, logs) = build(&app, &f.trigger).await;
    assert_eq!(b["build_outcome"], "success", "{}", logs.join("\n"));
    assert_line(
        &logs,
        |l| l == "body { color: teal }",
        "the submodule's file",
    );
    assert_line(&logs, |l| l == "theme", "git log inside the submodule");
    assert_line(
        &logs,
        |l| l.starts_with("Checked out submodule themes/teal at "),
        "submodule line",
    );

    // The submodule now points at a repository that does not exist: the clone step fails, naming it.
    assert!(theme.exists());
    git(
        &site,
        &[
            "config",
            "-f",
            ".gitmodules",
            "submodule.themes/teal.url",
            "../missing-repo",
        ],
    );
    git(&site, &["commit", "-q", "-am", "Point the theme elsewhere"]);
    let (b, logs) = build(&app, &f.trigger).await;
    assert_eq!(b["build_outcome"], "fail", "{}", logs.join("\n"));
    assert_line(
        &logs,
        |l| {
            l.starts_with("Failed: error occurred while cloning the repository:")
                && l.contains("submodule themes/teal")
        },
        "clone failure naming the submodule",
    );
    app.stop().await;
}

/// Damages every entry of the trigger's cache in place (garbage over the middle of the file).
fn corrupt_cache(app: &TestApp, trigger: &str) -> usize {
    let dir = app.data_dir().join("cache").join(trigger);
    let mut damaged = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "zst") {
            let mut bytes = std::fs::read(&path).unwrap();
            let mid = bytes.len() / 2;
            let end = (mid + 4096).min(bytes.len());
            bytes[mid..end].fill(0x5a);
            std::fs::write(&path, bytes).unwrap();
            damaged += 1;
        }
    }
    damaged
}

#[tokio::test]
async fn the_build_cache_restores_purges_and_survives_corruption() {
    let app = spawn().await;
    let f = app.fixture("cached").await;
    commit_fixture(&app, "cached", "bench-pnpm");
    configure(
        &app,
        &f.trigger,
        json!({"build_command": "pnpm run build", "deploy_command": "",
               "build_caching_enabled": true}),
    )
    .await;
    let cache_dir = app.data_dir().join("cache").join(&f.trigger);

    let (b, logs) = build(&app, &f.trigger).await;
    assert_eq!(b["build_outcome"], "success", "{}", logs.join("\n"));
    assert_line(
        &logs,
        |l| l == "Restoring from dependencies cache",
        "restore line",
    );
    assert_line(
        &logs,
        |l| l.starts_with("No dependencies cache found"),
        "a cold first build",
    );
    assert_line(
        &logs,
        |l| l.starts_with("Success: dependencies cache saved"),
        "save line",
    );
    assert_line(
        &logs,
        |l| l.starts_with("bench build ok"),
        "the build's output",
    );

    // The second build restores the pnpm store.
    let (b, logs) = build(&app, &f.trigger).await;
    assert_eq!(b["build_outcome"], "success", "{}", logs.join("\n"));
    assert_line(
        &logs,
        |l| l == "Success: Dependencies restored from build cache.",
        "a warm second build",
    );

    // A corrupted entry is logged and the build goes on cold.
    assert!(corrupt_cache(&app, &f.trigger) > 0);
    let (b, logs) = build(&app, &f.trigger).await;
    assert_eq!(b["build_outcome"], "success", "{}", logs.join("\n"));
    assert_line(
        &logs,
        |l| l.starts_with("Failed to restore dependencies cache"),
        "the corrupt entry reported",
    );
    assert_line(
        &logs,
        |l| l.starts_with("bench build ok"),
        "the build's output",
    );

    // Purge deletes the trigger's entries for real; the next build is cold again.
    assert!(std::fs::read_dir(&cache_dir).unwrap().count() > 0);
    app.ok(
        Method::POST,
        &app.acct(&format!("/triggers/{}/purge_build_cache", f.trigger)),
        None,
    )
    .await;
    let left = std::fs::read_dir(&cache_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "entries left after the purge");
    let (b, logs) = build(&app, &f.trigger).await;
    assert_eq!(b["build_outcome"], "success", "{}", logs.join("\n"));
    assert_line(
        &logs,
        |l| l.starts_with("No dependencies cache found"),
        "a cold build after the purge",
    );
    app.stop().await;
}

/// An npm registry in front of the real one that counts tarball downloads (tarball URLs in the
/// metadata are rewritten to come through it).
struct CountingRegistry {
    url: String,
    tarballs: Arc<AtomicUsize>,
}

impl CountingRegistry {
    async fn start() -> CountingRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let tarballs = Arc::new(AtomicUsize::new(0));
        let (me, count) = (url.clone(), tarballs.clone());
        let client = reqwest::Client::new();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (me, count, client) = (me.clone(), count.clone(), client.clone());
            async move {
                let path = req.uri().path().trim_start_matches('/').to_owned();
                let tarball = path.contains("/-/");
                if tarball {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                let mut upstream = client.get(format!("https://registry.npmjs.org/{path}"));
                if let Some(accept) = req.headers().get("accept") {
                    upstream = upstream.header("accept", accept);
                }
                let Ok(resp) = upstream.send().await else {
                    return (axum::http::StatusCode::BAD_GATEWAY, Vec::new());
                };
                let status = axum::http::StatusCode::from_u16(resp.status().as_u16())
                    .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
                let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                let body = if tarball {
                    body
                } else {
                    String::from_utf8_lossy(&body)
                        .replace("https://registry.npmjs.org/", &me)
                        .into_bytes()
                };
                (status, body)
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CountingRegistry { url, tarballs }
    }
}

#[tokio::test]
async fn ten_concurrent_builds_download_an_uninstalled_node_once() {
    let registry = CountingRegistry::start().await;
    let store = tempfile::tempdir().unwrap();
    // The build user must reach the store (the temp dir is 0700).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let store_dir = store.path().to_path_buf();
    let registry_url = registry.url.clone();
    let app = spawn_runner(SandboxMode::Bwrap, move |c| {
        c.scheduler.runners = 10;
        c.scheduler.default_concurrency = 10;
        c.runner.toolchain_dir = Some(store_dir);
        c.runner.npm_registry = registry_url;
    })
    .await;
    let f = app.fixture("ten").await;
    commit_files(&app, "ten", &[("README.md", "no package.json\n")], "plain");
    configure(
        &app,
        &f.trigger,
        json!({"build_command": "node --version", "deploy_command": ""}),
    )
    .await;
    set_vars(
        &app,
        &f.trigger,
        json!({"NODE_VERSION": {"value": "20", "is_secret": false}}),
    )
    .await;
    // Ten builds of ten branches (builds of one branch would supersede each other).
    let repo = app.git_remotes().join("octo-org").join("ten-repo");
    let mut ids = Vec::new();
    for i in 0..10 {
        git(&repo, &["branch", &format!("b{i}")]);
    }
    for i in 0..10 {
        ids.push(queue(&app, &f.trigger, json!({"branch": format!("b{i}")})).await);
    }
    let mut versions = Vec::new();
    for id in &ids {
        let b = wait_for_within(&app, id, "stopped", PROJECT_DEADLINE, |b| {
            b["status"] == "stopped"
        })
        .await;
        let logs = all_logs(&app, id).await;
        assert_eq!(b["build_outcome"], "success", "{}", logs.join("\n"));
        let v = logs
            .iter()
            .find(|l| l.starts_with("v20."))
            .unwrap_or_else(|| panic!("no Node 20 output in\n{}", logs.join("\n")))
            .clone();
        versions.push(v);
    }
    assert!(versions.windows(2).all(|w| w[0] == w[1]), "{versions:?}");
    // Node and its npm: one tarball each, whatever the number of builds.
    assert_eq!(registry.tarballs.load(Ordering::SeqCst), 2);
    app.stop().await;
}
