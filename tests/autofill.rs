//! Config autofill over HTTP, against real git repositories that the test server clones over `file://`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use kiln::domain::Permission;
use reqwest::Method;
use serde_json::{Value, json};

/// The connections' `provider_account_id` and `provider_account_name`.
const OWNER_ID: &str = "1001";
const OWNER: &str = "octo-org";

/// A work repository under the test server's remotes, acting as the provider.
struct Repo {
    dir: PathBuf,
    /// The connection's `repo_id`.
    id: String,
}

impl Repo {
    /// Creates `<remotes>/octo-org/<name>` on branch `main` with `files`, committed.
    fn create(app: &TestApp, name: &str, files: &[(&str, &str)]) -> Repo {
        let dir = app.git_remotes().join(OWNER).join(name);
        std::fs::create_dir_all(&dir).expect("create repo dir");
        let repo = Repo {
            dir,
            id: format!("id-{name}"),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.commit(files);
        repo
    }

    fn git(&self, args: &[&str]) {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args(args)
            .env("HOME", &self.dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Ada")
            .env("GIT_AUTHOR_EMAIL", "ada@example.com")
            .env("GIT_COMMITTER_NAME", "Ada")
            .env("GIT_COMMITTER_EMAIL", "ada@example.com")
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes `files` (relative paths) and commits everything.
    fn commit(&self, files: &[(&str, &str)]) {
        for (path, contents) in files {
            let p = self.dir.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, contents).expect("write");
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", "update"]);
    }

    /// Connects the repository in ACCOUNT.
    async fn connect(&self, app: &TestApp) -> String {
        let name = self.dir.file_name().expect("name").to_string_lossy();
        let conn = app
            .ok(
                Method::PUT,
                &app.acct("/repos/connections"),
                Some(
                    json!({ "provider_type": "github", "provider_account_id": OWNER_ID,
                    "provider_account_name": OWNER, "repo_id": self.id, "repo_name": name }),
                ),
            )
            .await;
        s(&conn["repo_connection_uuid"])
    }

    /// The autofill path for this repository with `query`.
    fn path(&self, app: &TestApp, query: &str) -> String {
        app.acct(&format!(
            "/repos/github/{OWNER_ID}/{}/config_autofill?{query}",
            self.id
        ))
    }
}

/// Creates and connects a repository, then returns the autofill result for `main`.
async fn autofill(app: &TestApp, name: &str, files: &[(&str, &str)], query: &str) -> Value {
    let repo = Repo::create(app, name, files);
    repo.connect(app).await;
    app.ok(Method::GET, &repo.path(app, query), None).await
}

/// A file of a test repository: path and contents.
type File = (&'static str, &'static str);

const PACKAGE_JSON: &str = r#"{
  "name": "my-app",
  "scripts": { "build": "vite build", "deploy": "wrangler deploy", "nested": { "not": "a string" } }
}"#;

#[tokio::test]
async fn wrangler_toml_with_environments_and_npm() {
    let app = TestApp::spawn().await;
    let files = [
        (
            "wrangler.toml",
            r#"name = "my-worker"
main = "src/index.ts"
compatibility_date = "2025-01-01"

[env.production]
name = "my-worker-prod"

[env.staging]
vars = { A = "1" }
"#,
        ),
        ("package.json", PACKAGE_JSON),
        ("package-lock.json", "{}"),
    ];
    let repo = Repo::create(&app, "toml-app", &files);
    repo.connect(&app).await;
    let (status, v) = app.get(&repo.path(&app, "branch=main")).await;
    assert_eq!(status, 200, "{v}");
    insta::assert_json_snapshot!("config_autofill", redact(&v));
    let r = &v["result"];
    assert_eq!(r["config_file"], "wrangler.toml");
    assert_eq!(r["default_worker_name"], "my-worker");
    assert_eq!(
        r["env_worker_names"],
        json!({"production": "my-worker-prod", "staging": "my-worker-staging"})
    );
    assert_eq!(r["package_manager"], "npm");
    assert_eq!(
        r["scripts"],
        json!({"build": "vite build", "deploy": "wrangler deploy"})
    );
    app.stop().await;
}

#[tokio::test]
async fn json_and_jsonc_configs() {
    let app = TestApp::spawn().await;
    let r = autofill(
        &app,
        "json-app",
        &[
            (
                "wrangler.json",
                r#"{"name": "json-worker", "env": {"dev": {}}}"#,
            ),
            ("package.json", "{}"),
            ("pnpm-lock.yaml", "lockfileVersion: '9.0'\n"),
        ],
        "branch=main",
    )
    .await;
    assert_eq!(
        r,
        json!({"config_file": "wrangler.json", "default_worker_name": "json-worker",
            "env_worker_names": {"dev": "json-worker-dev"}, "package_manager": "pnpm", "scripts": {}})
    );

    let jsonc = r#"// wrangler config
{
  /* the Worker's name, see https://developers.cloudflare.com/workers */
  "name": "jsonc-worker", // trailing comment
  "main": "src/index.ts",
  "routes": ["example.com/*", "https://example.com//double//slashes"],
  "vars": { "URL": "https://api.example.com/v1", "QUOTE": "a \" // still a string", },
  "env": {
    "staging": { "name": "jsonc-staging", },
  },
}
"#;
    let r = autofill(
        &app,
        "jsonc-app",
        &[
            ("wrangler.jsonc", jsonc),
            ("package.json", PACKAGE_JSON),
            ("yarn.lock", "# yarn lockfile v1\n"),
        ],
        "branch=main",
    )
    .await;
    assert_eq!(r["config_file"], "wrangler.jsonc");
    assert_eq!(r["default_worker_name"], "jsonc-worker");
    assert_eq!(r["env_worker_names"], json!({"staging": "jsonc-staging"}));
    assert_eq!(r["package_manager"], "yarn");

    // wrangler.json wins over wrangler.toml, as in wrangler itself.
    let r = autofill(
        &app,
        "both-app",
        &[
            ("wrangler.toml", "name = \"from-toml\"\n"),
            ("wrangler.json", "{\"name\": \"from-json\"}"),
        ],
        "branch=main",
    )
    .await;
    assert_eq!(r["config_file"], "wrangler.json");
    assert_eq!(r["default_worker_name"], "from-json");
    assert_eq!(r["env_worker_names"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn package_manager_from_lockfiles_and_package_json() {
    let app = TestApp::spawn().await;
    let cases: &[(&str, &[File], Value)] = &[
        (
            "npm",
            &[("package.json", "{}"), ("package-lock.json", "{}")],
            json!("npm"),
        ),
        (
            "pnpm",
            &[("package.json", "{}"), ("pnpm-lock.yaml", "x")],
            json!("pnpm"),
        ),
        (
            "yarn",
            &[("package.json", "{}"), ("yarn.lock", "x")],
            json!("yarn"),
        ),
        (
            "bun",
            &[("package.json", "{}"), ("bun.lock", "{}")],
            json!("bun"),
        ),
        (
            "bun-binary",
            &[("package.json", "{}"), ("bun.lockb", "x")],
            json!("bun"),
        ),
        (
            "uv",
            &[
                ("pyproject.toml", "[project]\nname = \"x\"\n"),
                ("uv.lock", "x"),
            ],
            json!("uv"),
        ),
        (
            "override",
            &[
                (
                    "package.json",
                    r#"{"packageManager": "pnpm@9.1.0+sha512.abc"}"#,
                ),
                ("package-lock.json", "{}"),
            ],
            json!("pnpm"),
        ),
        (
            "unknown-override",
            &[
                ("package.json", r#"{"packageManager": "deno@2"}"#),
                ("yarn.lock", "x"),
            ],
            json!("yarn"),
        ),
        ("no-lockfile", &[("package.json", "{}")], json!("npm")),
        ("nothing", &[("README.md", "hi")], Value::Null),
    ];
    for (name, files, want) in cases {
        let r = autofill(&app, &format!("pm-{name}"), files, "branch=main").await;
        assert_eq!(&r["package_manager"], want, "{name}: {r}");
    }
    app.stop().await;
}

#[tokio::test]
async fn root_directory_of_a_monorepo_and_other_branches() {
    let app = TestApp::spawn().await;
    let repo = Repo::create(
        &app,
        "monorepo",
        &[
            ("package.json", r#"{"scripts": {"lint": "eslint ."}}"#),
            ("pnpm-lock.yaml", "x"),
            ("apps/web/wrangler.toml", "name = \"web\"\n"),
            (
                "apps/web/package.json",
                r#"{"scripts": {"build": "astro build"}}"#,
            ),
            ("apps/web/bun.lockb", "x"),
        ],
    );
    repo.connect(&app).await;
    for query in [
        "branch=main&root_directory=apps/web",
        "branch=main&root_directory=/apps/web/",
        "branch=main&root_directory=./apps//web",
    ] {
        let r = app.ok(Method::GET, &repo.path(&app, query), None).await;
        assert_eq!(
            r,
            json!({"config_file": "wrangler.toml", "default_worker_name": "web", "env_worker_names": null,
                "package_manager": "bun", "scripts": {"build": "astro build"}}),
            "{query}"
        );
    }
    let r = app
        .ok(Method::GET, &repo.path(&app, "branch=main"), None)
        .await;
    assert_eq!(
        r,
        json!({"config_file": null, "default_worker_name": null, "env_worker_names": null,
            "package_manager": "pnpm", "scripts": {"lint": "eslint ."}})
    );
    // A directory that does not exist: nothing to suggest.
    let r = app
        .ok(
            Method::GET,
            &repo.path(&app, "branch=main&root_directory=apps/missing"),
            None,
        )
        .await;
    assert!(
        r.as_object().expect("object").values().all(Value::is_null),
        "{r}"
    );

    // Another branch, and a new commit on main seen on the next call.
    repo.git(&["checkout", "-q", "-b", "feature/next"]);
    repo.commit(&[("apps/web/wrangler.toml", "name = \"web-next\"\n")]);
    repo.git(&["checkout", "-q", "main"]);
    let r = app
        .ok(
            Method::GET,
            &repo.path(&app, "branch=feature/next&root_directory=apps/web"),
            None,
        )
        .await;
    assert_eq!(r["default_worker_name"], "web-next");
    repo.commit(&[("apps/web/wrangler.toml", "name = \"web-2\"\n")]);
    let r = app
        .ok(
            Method::GET,
            &repo.path(&app, "branch=main&root_directory=apps/web"),
            None,
        )
        .await;
    assert_eq!(r["default_worker_name"], "web-2");

    // Read permission is enough.
    let read = app.mint_token(Some(&[ACCOUNT]), Permission::Read).await;
    let (status, v) = app
        .call(
            Method::GET,
            &repo.path(&app, "branch=main"),
            Some(&read),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    app.stop().await;
}

#[tokio::test]
async fn missing_or_invalid_files_give_nulls() {
    let app = TestApp::spawn().await;
    let r = autofill(
        &app,
        "no-package-json",
        &[("wrangler.toml", "name = \"solo\"\n")],
        "branch=main",
    )
    .await;
    assert_eq!(
        r,
        json!({"config_file": "wrangler.toml", "default_worker_name": "solo", "env_worker_names": null,
            "package_manager": null, "scripts": null})
    );
    let r = autofill(
        &app,
        "broken",
        &[
            ("wrangler.toml", "name = \"unterminated\n[env\n"),
            ("package.json", "{ not json"),
            ("yarn.lock", "x"),
        ],
        "branch=main",
    )
    .await;
    assert_eq!(
        r,
        json!({"config_file": "wrangler.toml", "default_worker_name": null, "env_worker_names": null,
            "package_manager": "yarn", "scripts": null})
    );
    let r = autofill(
        &app,
        "odd-types",
        &[
            ("wrangler.jsonc", "[1, 2]"),
            (
                "package.json",
                r#"{"scripts": "build", "packageManager": 7}"#,
            ),
        ],
        "branch=main",
    )
    .await;
    assert_eq!(
        r,
        json!({"config_file": "wrangler.jsonc", "default_worker_name": null, "env_worker_names": null,
            "package_manager": "npm", "scripts": {}})
    );
    // A raw control character inside a JSON string is invalid JSON.
    let r = autofill(
        &app,
        "control-character",
        &[("wrangler.json", "{\"name\": \"a\u{1}b\"}")],
        "branch=main",
    )
    .await;
    assert_eq!(r["config_file"], "wrangler.json");
    assert_eq!(r["default_worker_name"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn errors() {
    let app = TestApp::spawn().await;
    let repo = Repo::create(&app, "errors-app", &[("package.json", "{}")]);
    let conn = repo.connect(&app).await;

    // A well-formed branch the repository does not have is unknown, not malformed.
    let (status, v) = app.get(&repo.path(&app, "branch=does-not-exist")).await;
    assert_error(status, &v, 404, 12000);
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("does-not-exist"),
        "{v}"
    );
    for query in [
        "",
        "root_directory=/",
        "branch=--upload-pack%3Dtouch%20x",
        "branch=main~1",
        "branch=",
        "branch=main&root_directory=../other",
    ] {
        let (status, v) = app.get(&repo.path(&app, query)).await;
        assert_error(status, &v, 400, 12002);
        let message = v["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("branch") || message.contains("root_directory"),
            "{query}: {v}"
        );
    }
    let (status, v) = app
        .get(&app.acct(&format!(
            "/repos/gitlab/{OWNER_ID}/{}/config_autofill?branch=main",
            repo.id
        )))
        .await;
    assert_error(status, &v, 400, 12002);

    // Unknown connection: another repo id, another provider account, another account.
    for path in [
        app.acct(&format!(
            "/repos/github/{OWNER_ID}/nope/config_autofill?branch=main"
        )),
        app.acct(&format!(
            "/repos/github/2002/{}/config_autofill?branch=main",
            repo.id
        )),
        format!(
            "/accounts/{OTHER_ACCOUNT}/builds/repos/github/{OWNER_ID}/{}/config_autofill?branch=main",
            repo.id
        ),
    ] {
        let (status, v) = app.get(&path).await;
        assert_error(status, &v, 404, 12000);
    }

    // A deleted connection is unknown.
    app.ok(
        Method::DELETE,
        &app.acct(&format!("/repos/connections/{conn}")),
        None,
    )
    .await;
    let (status, v) = app.get(&repo.path(&app, "branch=main")).await;
    assert_error(status, &v, 404, 12000);

    // A connection whose repository cannot be fetched.
    let ghost = Repo {
        dir: app.git_remotes().join(OWNER).join("ghost"),
        id: "id-ghost".to_owned(),
    };
    ghost.connect(&app).await;
    let (status, v) = app.get(&ghost.path(&app, "branch=main")).await;
    assert_error(status, &v, 404, 12000);
    let text = v.to_string();
    assert!(text.contains("octo-org/ghost"), "{v}");
    assert!(
        !text.contains("remotes"),
        "no server paths in the answer: {v}"
    );
    app.stop().await;
}
