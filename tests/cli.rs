//! The `kiln` client commands (the real binary as a child process) against a real server: `login`
//! profiles and the environment, each command's text and `--json`, `build --wait` exit codes of real
//! builds, `logs -f` through a proxy that drops the connection, and API errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::proxy::Proxy;
use common::*;
use kiln::domain::Permission;
use kiln::sandbox::SandboxMode;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
/// Longest one client command may take (a `--wait` or `-f` one follows a whole build).
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// How a command finds its server: a home directory (for profiles) and the environment.
struct Client {
    home: tempfile::TempDir,
    env: Vec<(String, String)>,
}

/// What a finished command printed.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(self, what: &str) -> Ran {
        assert_eq!(self.code, Some(0), "{what}: {self:#?}");
        self
    }

    fn failed(self, code: i32, what: &str, messages: &[&str]) -> Ran {
        assert_eq!(self.code, Some(code), "{what}: {self:#?}");
        for m in messages {
            assert!(self.stderr.contains(m), "{what}: no {m:?} in {self:#?}");
        }
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }

    /// The stdout lines split on runs of two or more spaces (table cells).
    fn rows(&self) -> Vec<Vec<String>> {
        self.stdout
            .lines()
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .collect()
    }
}

impl Client {
    /// A client of `app` through `KILN_URL`, `KILN_API_TOKEN` and `KILN_ACCOUNT_ID`.
    fn env(url: &str, token: &str) -> Client {
        let mut client = Client::bare();
        client.set("KILN_URL", url);
        client.set("KILN_API_TOKEN", token);
        client.set("KILN_ACCOUNT_ID", ACCOUNT);
        client
    }

    /// A client with an empty home directory and no Kiln variables.
    fn bare() -> Client {
        Client {
            home: tempfile::tempdir().expect("home"),
            env: Vec::new(),
        }
    }

    fn set(&mut self, name: &str, value: &str) {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_owned(), value.to_owned()));
    }

    fn unset(&mut self, name: &str) {
        self.env.retain(|(n, _)| n != name);
    }

    fn config_file(&self) -> PathBuf {
        self.home.path().join(".config/kiln/config.json")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(KILN);
        cmd.args(args);
        self.environment(&mut cmd);
        cmd
    }

    /// The client's environment (and piped output) on `cmd`.
    fn environment(&self, cmd: &mut Command) {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
    }

    /// Runs `kiln <args>` with a terminal (a pseudo-terminal of `script`) as its standard input,
    /// output and error, with `extra` variables; returns what the terminal showed, lines ending in
    /// `\n`.
    async fn run_on_terminal(&self, args: &[&str], extra: &[(&str, &str)]) -> Ran {
        let line = std::iter::once(KILN)
            .chain(args.iter().copied())
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"]);
        self.environment(&mut cmd);
        cmd.env("TERM", "xterm-256color").stdin(Stdio::null());
        for (name, value) in extra {
            cmd.env(name, value);
        }
        let output = tokio::time::timeout(COMMAND_DEADLINE, cmd.output())
            .await
            .expect("kiln on a terminal finishes in time")
            .expect("run script");
        Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).replace("\r\n", "\n"),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs `kiln <args>` with `stdin` as its standard input (else none).
    async fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Ran {
        let mut cmd = self.command(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("spawn kiln");
        if let Some(text) = stdin {
            let mut input = child.stdin.take().expect("stdin");
            input.write_all(text.as_bytes()).await.expect("write stdin");
            drop(input);
        }
        let output = tokio::time::timeout(COMMAND_DEADLINE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kiln {args:?} did not finish in time"))
            .expect("wait for kiln");
        Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Ran {
        self.run_with(args, None).await
    }

    /// Starts `kiln <args>` and leaves it running.
    fn spawn(&self, args: &[&str]) -> Child {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null());
        cmd.spawn().expect("spawn kiln")
    }
}

/// Reads a running command's stdout line by line until `pred` holds for a line; returns the lines.
async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<String>,
    pred: impl Fn(&str) -> bool,
) {
    loop {
        let line = tokio::time::timeout(COMMAND_DEADLINE, lines.next_line())
            .await
            .expect("a line in time")
            .expect("read stdout")
            .unwrap_or_else(|| panic!("stdout ended; lines so far: {seen:?}"));
        let hit = pred(&line);
        seen.push(line);
        if hit {
            return;
        }
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[tokio::test]
async fn login_stores_a_private_profile_that_commands_use_until_logout() {
    let app = TestApp::spawn().await;
    let f = app.fixture("site").await;
    let mut client = Client::bare();

    // A refused token: a clear message, nothing stored.
    client
        .run_with(
            &["login", "--url", &app.base],
            Some("kiln_not-a-real-token\n"),
        )
        .await
        .failed(
            2,
            "a wrong token",
            &["refused the token", "Authentication error", "10000"],
        );
    assert!(!client.config_file().exists());

    // The token on standard input; the account found from it (the only one with anything in it).
    let ran = client
        .run_with(
            &["login", "--url", &format!("{}/client/v4/", app.base)],
            Some(&format!("{ADMIN_TOKEN}\n")),
        )
        .await
        .ok("login");
    assert!(
        ran.stdout.contains(&format!("Logged in to {}", app.base)),
        "{ran:#?}"
    );
    assert!(
        ran.stdout.contains(&format!("Account: {ACCOUNT}")),
        "{ran:#?}"
    );
    assert!(!ran.stdout.contains(ADMIN_TOKEN) && !ran.stderr.contains(ADMIN_TOKEN));
    let file = client.config_file();
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(stored["profiles"]["default"]["url"], json!(app.base));
    assert_eq!(stored["profiles"]["default"]["token"], json!(ADMIN_TOKEN));

    // Commands use the profile (no variable set) and find the account from the token.
    let ran = client
        .run(&["triggers", "list", "--worker", "site", "--json"])
        .await
        .ok("triggers list from the profile");
    assert_eq!(ran.json()[0]["trigger_uuid"], json!(f.trigger));

    // The token is in no process's command line or environment: a following command's, read while
    // it runs (a build of a server without runners stays queued).
    let build = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let mut follower = client.spawn(&["logs", "-f", &build]);
    let pid = follower.id().expect("pid");
    // It is running once it connected (a following client keeps its connection).
    wait_until(COMMAND_DEADLINE, "logs -f never connected", || {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        assert!(!String::from_utf8_lossy(&cmdline).contains(ADMIN_TOKEN));
        assert!(!String::from_utf8_lossy(&environ).contains(ADMIN_TOKEN));
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fds")
            .flatten()
            .any(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            })
    })
    .await;
    assert!(
        follower.try_wait().expect("try_wait").is_none(),
        "logs -f ended early"
    );
    follower.kill().await.expect("kill");

    // The environment overrides the profile: a wrong KILN_API_TOKEN is used, and refused.
    client.set("KILN_API_TOKEN", "kiln_wrong-token-from-the-environment");
    client
        .run(&["triggers", "list", "--worker", "site"])
        .await
        .failed(
            2,
            "env token over the profile",
            &["Authentication error", "10000", "refused the API token"],
        );
    client.unset("KILN_API_TOKEN");

    // A token scoped to two accounts: commands need --account (or KILN_ACCOUNT_ID), login checks it.
    let two = app
        .mint_token(Some(&[ACCOUNT, OTHER_ACCOUNT]), Permission::Read)
        .await;
    client
        .run_with(
            &["login", "--url", &app.base, "--profile", "two"],
            Some(&two),
        )
        .await
        .ok("login with two accounts");
    client
        .run(&["triggers", "list", "--worker", "site", "--profile", "two"])
        .await
        .failed(
            2,
            "two accounts",
            &["2 accounts", ACCOUNT, OTHER_ACCOUNT, "--account"],
        );
    client
        .run(&[
            "triggers",
            "list",
            "--worker",
            "site",
            "--profile",
            "two",
            "--account",
            ACCOUNT,
        ])
        .await
        .ok("with --account");
    let third = "0123456789abcdef0123456789abcdef";
    client
        .run_with(
            &[
                "login",
                "--url",
                &app.base,
                "--profile",
                "three",
                "--account",
                third,
            ],
            Some(&two),
        )
        .await
        .failed(
            2,
            "an account out of the token's scope",
            &["cannot act on account", third],
        );
    client
        .run_with(
            &[
                "login",
                "--url",
                &app.base,
                "--profile",
                "two",
                "--account",
                OTHER_ACCOUNT,
                "--json",
            ],
            Some(&two),
        )
        .await
        .ok("login with an account");
    client.set("KILN_PROFILE", "two");
    let ran = client
        .run(&["triggers", "list", "--worker", "site", "--json"])
        .await
        .ok("the profile's account");
    assert_eq!(ran.json(), json!([]), "OTHER_ACCOUNT has no trigger");
    client.set("KILN_ACCOUNT_ID", ACCOUNT);
    let ran = client
        .run(&["triggers", "list", "--worker", "site", "--json"])
        .await
        .ok("KILN_ACCOUNT_ID over the profile's account");
    assert_eq!(ran.json()[0]["trigger_uuid"], json!(f.trigger));
    client.unset("KILN_ACCOUNT_ID");
    client.unset("KILN_PROFILE");

    // XDG_CONFIG_HOME places the file.
    let xdg = tempfile::tempdir().unwrap();
    client.set("XDG_CONFIG_HOME", xdg.path().to_str().unwrap());
    client
        .run_with(&["login", "--url", &app.base], Some(ADMIN_TOKEN))
        .await
        .ok("login under XDG_CONFIG_HOME");
    assert_eq!(mode(&xdg.path().join("kiln/config.json")), 0o600);
    client.run(&["logout"]).await.ok("logout (XDG)");
    assert!(!xdg.path().join("kiln/config.json").exists());
    client.unset("XDG_CONFIG_HOME");

    // Logout removes one profile; the last one takes the file with it.
    client.run(&["logout"]).await.ok("logout");
    client
        .run(&["triggers", "list", "--worker", "site"])
        .await
        .failed(
            2,
            "after logout",
            &["no Kiln server configured", "KILN_URL", "kiln login"],
        );
    client
        .run(&["logout", "--profile", "two"])
        .await
        .ok("logout two");
    assert!(!client.config_file().exists());
    client
        .run(&["logout"])
        .await
        .failed(2, "nothing to log out of", &["no profile"]);
    app.stop().await;
}

#[tokio::test]
async fn a_missing_server_or_token_and_an_unreachable_server_are_clear_errors() {
    let mut client = Client::bare();
    client.run(&["builds", "list"]).await.failed(
        2,
        "nothing configured",
        &[
            "no Kiln server configured",
            "KILN_URL",
            "KILN_API_TOKEN",
            "kiln login",
        ],
    );
    client.set("KILN_URL", "http://127.0.0.1:9");
    client
        .run(&["workers", "list"])
        .await
        .failed(2, "no token", &["KILN_API_TOKEN"]);
    client
        .run(&["builds", "list", "--profile", "work"])
        .await
        .failed(
            2,
            "a missing profile",
            &["no profile \"work\"", "--profile work"],
        );
    // A port nothing listens on: the error names the URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let client = Client::env(&url, ADMIN_TOKEN);
    client.run(&["workers", "list"]).await.failed(
        2,
        "unreachable",
        &[
            &format!("{url}/client/v4/accounts/{ACCOUNT}/builds/workers"),
            "failed",
        ],
    );
    client
        .run(&["builds", "show", "x", "--account", "not-an-account"])
        .await
        .failed(2, "unreachable", &["failed"]);
    client
        .run(&["build", "b7d2d2d6-1111-4a4a-8b8b-000000000000"])
        .await
        .failed(2, "usage: neither --branch nor --commit", &["--branch"]);
}

#[tokio::test]
async fn every_command_prints_text_and_its_json() {
    let app = TestApp::spawn().await;
    let alpha = app.fixture("alpha").await;
    let client = Client::env(&app.base, ADMIN_TOKEN);

    // Triggers: list, show (found without --worker), create, update, delete.
    let ran = client
        .run(&["triggers", "list", "--worker", "alpha"])
        .await
        .ok("triggers list");
    let rows = ran.rows();
    assert_eq!(rows[0][..3], ["TRIGGER", "NAME", "BRANCHES"], "{ran:#?}");
    assert_eq!(
        rows[1][..3],
        [alpha.trigger.as_str(), "Production Deploy", "main"],
        "{ran:#?}"
    );
    let listed = client
        .run(&["triggers", "list", "--worker", "alpha", "--json"])
        .await
        .ok("triggers list --json")
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let shown = client
        .run(&["triggers", "show", &alpha.trigger, "--json"])
        .await
        .ok("triggers show --json")
        .json();
    assert_eq!(shown, listed[0]);
    let ran = client
        .run(&["triggers", "show", &alpha.trigger])
        .await
        .ok("triggers show");
    for want in [
        "Name:",
        "Production Deploy",
        "Path excludes:",
        "*.md",
        "Build cache:",
        "off",
    ] {
        assert!(ran.stdout.contains(want), "{want}: {ran:#?}");
    }
    let created = client
        .run(&[
            "triggers",
            "create",
            "--worker",
            "gamma",
            "--connection",
            &alpha.connection,
            "--build-token",
            &alpha.token,
            "--name",
            "staging",
            "--build-command",
            "make site",
            "--branch-include",
            "release/*",
            "--branch-include",
            "main",
            "--path-include",
            "src/*",
            "--root-directory",
            "/web",
            "--build-cache",
            "on",
            "--json",
        ])
        .await
        .ok("triggers create")
        .json();
    let gamma = s(&created["trigger_uuid"]);
    assert_eq!(created["external_script_id"], "gamma");
    assert_eq!(created["branch_includes"], json!(["release/*", "main"]));
    assert_eq!(created["path_includes"], json!(["src/*"]));
    assert_eq!(created["root_directory"], "/web");
    assert_eq!(created["build_command"], "make site");
    assert_eq!(created["build_caching_enabled"], json!(true));
    let ran = client
        .run(&[
            "triggers",
            "update",
            &gamma,
            "--branch-include",
            "",
            "--branch-exclude",
            "wip/*",
            "--build-cache",
            "off",
            "--deploy-command",
            "echo deploy",
        ])
        .await
        .ok("triggers update");
    assert!(
        ran.stdout.contains(&format!("Updated trigger {gamma}")),
        "{ran:#?}"
    );
    let updated = client
        .run(&["triggers", "show", &gamma, "--worker", "gamma", "--json"])
        .await
        .ok("show the update")
        .json();
    assert_eq!(updated["branch_includes"], json!([]));
    assert_eq!(updated["branch_excludes"], json!(["wip/*"]));
    assert_eq!(updated["deploy_command"], "echo deploy");
    assert_eq!(updated["build_caching_enabled"], json!(false));
    assert_eq!(updated["build_command"], "make site", "unchanged");
    client.run(&["triggers", "update", &gamma]).await.failed(
        2,
        "an empty update",
        &["nothing to change"],
    );
    client
        .run(&["triggers", "update", &gamma, "--root-directory", "../out"])
        .await
        .failed(2, "a refused setting", &["root_directory", "12002"]);
    let ran = client
        .run(&["triggers", "purge-cache", &gamma])
        .await
        .ok("purge");
    assert!(ran.stdout.contains("Purged the build cache"), "{ran:#?}");

    // Environment variables: plain from the command line, secret from standard input, never shown.
    let secret = "s3cret-value-Qx81";
    client
        .run(&["env", "set", &alpha.trigger, "PLAIN=hello world"])
        .await
        .ok("env set plain");
    let ran = client
        .run_with(
            &["env", "set", &alpha.trigger, "API_KEY", "--secret"],
            Some(&format!("{secret}\n")),
        )
        .await
        .ok("env set secret");
    assert!(ran.stdout.contains("Set secret API_KEY"), "{ran:#?}");
    client
        .run(&["env", "set", &alpha.trigger, "LEAK=value", "--secret"])
        .await
        .failed(
            2,
            "a secret on the command line",
            &["never from the command line"],
        );
    let ran = client
        .run_with(
            &["env", "set", &alpha.trigger, "ONE", "TWO", "--json"],
            Some("first\nsecond\n"),
        )
        .await
        .ok("two values, a line each");
    assert_eq!(ran.json()["TWO"]["value"], "second");
    let ran = client
        .run(&["env", "list", &alpha.trigger])
        .await
        .ok("env list");
    let rows = ran.rows();
    assert_eq!(rows[0], ["NAME", "TYPE", "VALUE", "CREATED"]);
    assert_eq!(rows[1][..3], ["API_KEY", "secret", "(hidden)"], "{ran:#?}");
    assert!(
        rows.iter()
            .any(|r| r[..3] == ["PLAIN", "plain", "hello world"]),
        "{ran:#?}"
    );
    let vars = client
        .run(&["env", "list", &alpha.trigger, "--json"])
        .await
        .ok("env list --json")
        .json();
    assert_eq!(vars["API_KEY"]["is_secret"], json!(true));
    assert_eq!(vars["API_KEY"]["value"], Value::Null);
    assert_eq!(vars["ONE"]["value"], "first");
    let ran = client
        .run(&["env", "delete", &alpha.trigger, "ONE", "TWO"])
        .await
        .ok("env delete");
    assert!(
        ran.stdout.contains("Deleted ONE") && ran.stdout.contains("Deleted TWO"),
        "{ran:#?}"
    );
    let vars = client
        .run(&["env", "list", &alpha.trigger, "--json"])
        .await
        .ok("after delete")
        .json();
    let names: Vec<&String> = vars.as_object().unwrap().keys().collect();
    assert_eq!(names, ["API_KEY", "PLAIN"]);

    // Deploy hooks: the URL starts a build without a token.
    let ran = client
        .run(&[
            "hooks",
            "create",
            "--worker",
            "alpha",
            "--name",
            "deploy-main",
            "--branch",
            "main",
        ])
        .await
        .ok("hooks create");
    let hook_url = ran
        .stdout
        .lines()
        .find(|l| l.starts_with("http"))
        .unwrap_or_else(|| panic!("no URL: {ran:#?}"))
        .to_owned();
    assert!(hook_url.starts_with(&format!(
        "{}/client/v4/workers/builds/deploy_hooks/",
        app.base
    )));
    let response = reqwest::Client::new().post(&hook_url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let hooks = client
        .run(&["hooks", "list", "--worker", "alpha", "--json"])
        .await
        .ok("hooks list --json")
        .json();
    let hook = s(&hooks[0]["deploy_hook_uuid"]);
    assert!(hook_url.ends_with(&hook));
    let ran = client
        .run(&["hooks", "list", "--worker", "alpha"])
        .await
        .ok("hooks list");
    let rows = ran.rows();
    assert_eq!(rows[0], ["HOOK", "NAME", "BRANCH", "LAST BUILD", "CREATED"]);
    assert_eq!(rows[1][..3], [hook.as_str(), "deploy-main", "main"]);
    assert!(
        rows[1][3].ends_with(" ago"),
        "a build was started: {ran:#?}"
    );

    // Builds: started, shown with the queue's explanation, listed, cancelled.
    let ran = client
        .run(&["build", &alpha.trigger, "--branch", "main"])
        .await
        .ok("build");
    let first = ran
        .stdout
        .trim()
        .strip_prefix("Queued build ")
        .unwrap_or_else(|| panic!("{ran:#?}"))
        .to_owned();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let started = client
        .run(&[
            "build",
            &alpha.trigger,
            "--branch",
            "feature/x",
            "--commit",
            commit,
            "--json",
        ])
        .await
        .ok("build --json")
        .json();
    let second = s(&started["build_uuid"]);
    let ran = client
        .run(&["builds", "show", &second])
        .await
        .ok("builds show");
    for want in [
        "Build:".to_owned(),
        second.clone(),
        "queued".to_owned(),
        "feature/x".to_owned(),
        commit.to_owned(),
        "Queued because:".to_owned(),
        "Queue position:".to_owned(),
        "Estimated start:".to_owned(),
    ] {
        assert!(ran.stdout.contains(&want), "{want}: {ran:#?}");
    }
    let shown = client
        .run(&["builds", "show", &second, "--json"])
        .await
        .ok("builds show --json")
        .json();
    assert_eq!(shown["build_uuid"], json!(second));
    assert_eq!(shown["status"], "queued");
    assert!(shown["queue"]["message"].is_string(), "{shown}");

    let ran = client
        .run(&["builds", "list", "--worker", "alpha"])
        .await
        .ok("builds list --worker");
    let rows = ran.rows();
    assert_eq!(rows[0][..3], ["BUILD", "STATE", "BRANCH"]);
    assert_eq!(rows.len(), 4, "the hook's build and two more: {ran:#?}");
    assert_eq!(rows[1][..3], [second.as_str(), "queued", "feature/x"]);
    let listed = client
        .run(&[
            "builds",
            "list",
            "--worker",
            "alpha",
            "--branch",
            "feature/x",
            "--json",
        ])
        .await
        .ok("--branch")
        .json();
    let ids: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| s(&b["build_uuid"]))
        .collect();
    assert_eq!(ids, std::slice::from_ref(&second));
    let listed = client
        .run(&[
            "builds", "list", "--worker", "alpha", "--limit", "2", "--json",
        ])
        .await
        .ok("--limit")
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 2);

    let ran = client.run(&["builds", "cancel", &first]).await.ok("cancel");
    assert!(
        ran.stdout.contains(&format!("Cancelled build {first}")),
        "{ran:#?}"
    );
    let cancelled = client
        .run(&["builds", "cancel", &second, "--json"])
        .await
        .ok("cancel --json")
        .json();
    assert_eq!(cancelled["build_outcome"], "cancelled");
    client.run(&["builds", "cancel", &second]).await.failed(
        2,
        "cancelled twice",
        &["already stopped", "12009"],
    );
    let listed = client
        .run(&[
            "builds",
            "list",
            "--worker",
            "alpha",
            "--outcome",
            "cancelled",
            "--json",
        ])
        .await
        .ok("--outcome")
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    // Workers and the overview: each Worker's latest build.
    let ran = client.run(&["workers", "list"]).await.ok("workers list");
    let rows = ran.rows();
    assert_eq!(rows[0][..3], ["WORKER", "TRIGGERS", "LATEST"]);
    assert_eq!(rows[1][..3], ["alpha", "1", "cancelled"], "{ran:#?}");
    assert_eq!(rows[2][..3], ["gamma", "1", "-"], "{ran:#?}");
    let workers = client
        .run(&["workers", "list", "--json"])
        .await
        .ok("workers --json")
        .json();
    assert_eq!(workers[0]["latest_build"]["build_uuid"], json!(second));
    assert_eq!(workers[1]["latest_build"], Value::Null);
    let ran = client.run(&["builds", "list"]).await.ok("overview");
    let rows = ran.rows();
    assert_eq!(rows[0][..3], ["WORKER", "BUILD", "STATE"]);
    assert_eq!(rows[1][..3], ["alpha", second.as_str(), "cancelled"]);
    assert_eq!(rows.len(), 2, "gamma has no build: {ran:#?}");

    // Logs of a build that never ran: none.
    let ran = client.run(&["logs", &second]).await.ok("logs");
    assert_eq!(ran.stdout, "");

    // API errors print the envelope's message and code.
    client
        .run(&["builds", "show", "7c9e6679-7425-40de-944b-e07fc1f90ae7"])
        .await
        .failed(
            2,
            "an unknown build",
            &["Not found", "12000", "7c9e6679-7425-40de-944b-e07fc1f90ae7"],
        );
    client
        .run(&["logs", "-f", "7c9e6679-7425-40de-944b-e07fc1f90ae7"])
        .await
        .failed(2, "following an unknown build", &["Not found", "12000"]);
    client.run(&["builds", "show", "not-a-uuid"]).await.failed(
        2,
        "a malformed id",
        &["build_uuid", "12002"],
    );
    let read = app.mint_token(Some(&[ACCOUNT]), Permission::Read).await;
    let reader = Client::env(&app.base, &read);
    let third = queue(&app, &alpha.trigger, json!({"branch": "main"})).await;
    reader.run(&["builds", "cancel", &third]).await.failed(
        2,
        "a read token cancelling",
        &["Workers CI Write", "10000"],
    );
    assert_eq!(get_build(&app, &third).await["status"], "queued");
    reader
        .run(&["builds", "show", &third])
        .await
        .ok("a read token reads");
    app.stop().await;
}

/// A server with build runners and a trigger whose repository has a commit on `main`.
async fn runner_app(worker: &str) -> (TestApp, Fixture) {
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let f = app.fixture(worker).await;
    commit_files(&app, worker, &[("README.md", "x")], "init");
    (app, f)
}

#[tokio::test]
async fn build_wait_exits_with_the_outcome() {
    let (app, f) = runner_app("waited").await;
    let client = Client::env(&app.base, ADMIN_TOKEN);

    set_commands(
        &app,
        &f.trigger,
        "printf '\\033[31mred\\033[0m text\\n'; printf '\\033]0;pwned\\007titled\\n'; echo built-ok",
        "",
    )
    .await;
    let ran = client
        .run(&["build", &f.trigger, "--branch", "main", "--wait"])
        .await
        .ok("a succeeding build");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(lines.contains(&"built-ok"), "{ran:#?}");
    assert!(
        lines.contains(&"red text"),
        "colours are stripped off a terminal: {ran:#?}"
    );
    assert!(!ran.stdout.contains('\u{1b}'), "{ran:#?}");
    assert!(ran.stderr.contains("success"), "{ran:#?}");
    let id = ran
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("Queued build "))
        .expect("the build's id")
        .to_owned();
    assert_eq!(
        lines,
        all_logs(&app, &id)
            .await
            .iter()
            .map(|l| console_strip(l))
            .collect::<Vec<_>>()
    );
    assert!(lines.contains(&"titled"), "{ran:#?}");
    // On a terminal the colours stay (and are reset at the line's end); other sequences never do.
    let shown = client
        .run_on_terminal(&["logs", &id], &[])
        .await
        .ok("logs on a terminal");
    assert!(
        shown
            .stdout
            .lines()
            .any(|l| l == "\u{1b}[31mred\u{1b}[0m text\u{1b}[0m"),
        "{shown:#?}"
    );
    assert!(shown.stdout.lines().any(|l| l == "titled"), "{shown:#?}");
    assert!(
        !shown.stdout.contains("\u{1b}]"),
        "no OSC sequence: {shown:#?}"
    );
    let shown = client
        .run_on_terminal(&["logs", &id], &[("NO_COLOR", "1")])
        .await
        .ok("logs on a terminal with NO_COLOR");
    assert!(shown.stdout.lines().any(|l| l == "red text"), "{shown:#?}");
    assert!(!shown.stdout.contains('\u{1b}'), "{shown:#?}");
    // JSON lines: the API's [seconds, line] pairs; -t: each line after its time.
    let ran = client.run(&["logs", &id, "--json"]).await.ok("logs --json");
    let stored = all_logs(&app, &id).await;
    let pairs: Vec<Value> = ran
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(pairs.len(), stored.len());
    assert!(
        pairs
            .iter()
            .zip(&stored)
            .all(|(p, l)| p[0].is_number() && p[1] == json!(l))
    );
    let ran = client.run(&["logs", &id, "-t"]).await.ok("logs -t");
    let timed: Vec<(&str, &str)> = ran
        .stdout
        .lines()
        .map(|l| l.split_once(' ').expect("time and text"))
        .collect();
    assert_eq!(timed.len(), stored.len());
    assert!(
        timed.iter().any(|(_, text)| *text == "built-ok"),
        "{ran:#?}"
    );
    for (time, _) in &timed {
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
    }

    set_commands(&app, &f.trigger, "echo about-to-fail; exit 7", "").await;
    let ran = client
        .run(&["build", &f.trigger, "--branch", "main", "--wait"])
        .await
        .failed(1, "a failing build", &["fail"]);
    assert!(ran.stdout.lines().any(|l| l == "about-to-fail"), "{ran:#?}");
    // --json: the finished build, not the log.
    let ran = client
        .run(&["build", &f.trigger, "--branch", "main", "--wait", "--json"])
        .await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    let build = ran.json();
    assert_eq!(build["build_outcome"], "fail");
    assert_eq!(build["status"], "stopped");

    // Cancelled while it runs: 3.
    let gate = app.dir.path().join("gate-never");
    set_commands(
        &app,
        &f.trigger,
        &format!(
            "echo waiting; while [ ! -f {} ]; do sleep 0.05; done",
            gate.display()
        ),
        "",
    )
    .await;
    let mut waiting = client.spawn(&["build", &f.trigger, "--branch", "main", "--wait"]);
    let mut lines = BufReader::new(waiting.stdout.take().unwrap()).lines();
    read_until(&mut lines, &mut Vec::new(), |l| l == "waiting").await;
    let latest = app
        .ok(
            Method::GET,
            &app.acct("/workers/waited/builds?per_page=1"),
            None,
        )
        .await;
    let running = s(&latest[0]["build_uuid"]);
    client
        .run(&["builds", "cancel", &running])
        .await
        .ok("cancel the running build");
    let status = tokio::time::timeout(COMMAND_DEADLINE, waiting.wait())
        .await
        .expect("build --wait ends")
        .expect("wait");
    assert_eq!(status.code(), Some(3));
    app.stop().await;
}

/// A log line as printed off a terminal: without escape sequences and control characters.
fn console_strip(line: &str) -> String {
    console::strip_ansi_codes(line)
        .chars()
        .filter(|c| *c == '\t' || !c.is_control())
        .collect()
}

#[tokio::test]
async fn logs_follow_a_running_build_through_a_dropped_connection() {
    let (app, f) = runner_app("followed").await;
    let gate = app.dir.path().join("gate");
    set_commands(
        &app,
        &f.trigger,
        &format!(
            "seq 1 300; while [ ! -f {} ]; do sleep 0.05; done; seq 301 2000",
            gate.display()
        ),
        "",
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let server = app.server.as_ref().unwrap().addr;
    let proxy = Proxy::start(server).await;
    let client = Client::env(&proxy.url(), ADMIN_TOKEN);
    let mut follower = client.spawn(&["logs", "-f", &id]);
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    read_until(&mut lines, &mut seen, |l| l == "300").await;
    // The build waits at its gate: cut the connection mid-stream, then let the build go on.
    let before = proxy.connections();
    proxy.cut();
    wait_until(COMMAND_DEADLINE, "logs -f never reconnected", || {
        proxy.connections() > before
    })
    .await;
    std::fs::write(&gate, "go").unwrap();
    while let Some(line) = tokio::time::timeout(COMMAND_DEADLINE, lines.next_line())
        .await
        .expect("lines in time")
        .expect("read")
    {
        seen.push(line);
    }
    let status = tokio::time::timeout(COMMAND_DEADLINE, follower.wait())
        .await
        .expect("logs -f ends with the build")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut follower.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("reconnecting"), "{stderr}");
    assert_eq!(get_build(&app, &id).await["build_outcome"], "success");
    // Every line once and in order: the stored log, the counted lines contiguous.
    let stored = all_logs(&app, &id).await;
    assert_eq!(seen.len(), stored.len(), "lines missed or repeated");
    assert!(
        seen == stored,
        "the followed lines differ from the stored log"
    );
    let first = seen.iter().position(|l| l == "1").unwrap();
    let want: Vec<String> = (1..=2000).map(|i| i.to_string()).collect();
    assert!(
        seen[first..first + 2000] == want[..],
        "counted lines out of order"
    );
    // The reconnection resumed from the last line received.
    let sent = proxy.sent();
    assert!(sent.len() >= 2, "{sent:?}");
    assert!(!sent[0].to_ascii_lowercase().contains("last-event-id"));
    assert!(
        sent[1..]
            .iter()
            .all(|s| s.to_ascii_lowercase().contains("last-event-id:")),
        "{sent:?}"
    );
    app.stop().await;
}
