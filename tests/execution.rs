//! Builds that really run: real git repositories, real processes in the sandbox, the real server.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use kiln::domain::AccountId;
use kiln::sandbox::SandboxMode;
use reqwest::Method;
use serde_json::json;

async fn wait_no_processes(marker: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes survived: {left:?} ({marker})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `sleep` duration unique to this test run, usable as a process marker.
fn marker() -> String {
    format!("1000.{}", rand_digits())
}

fn rand_digits() -> String {
    uuid::Uuid::new_v4().as_u128().to_string()[..12].to_owned()
}

#[tokio::test]
async fn a_real_repository_builds_and_deploys_with_every_log_line_in_order() {
    let app = spawn_runner(SandboxMode::Bwrap, |_| {}).await;
    let f = app.fixture("site").await;
    let version = uuid::Uuid::new_v4().to_string();
    let repo = commit_files(
        &app,
        "site",
        &[
            (
                "build.sh",
                "i=0\nwhile [ $i -lt 20000 ]; do echo \"out line $i\"; i=$((i+1)); done\necho 'to stderr' >&2\nenv | sort | grep -E '^(CI|WORKERS_CI.*|CLOUDFLARE_.*|USER_VAR|SECRET_VAR|HOME)=' \n",
            ),
            (
                "deploy.sh",
                &format!("echo deploying\necho \"Current Version ID: {version}\"\n"),
            ),
        ],
        "Add the site\n\nWith a body.",
    );
    let sha = head(&repo);
    set_commands(&app, &f.trigger, "sh build.sh", "sh deploy.sh").await;
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{}/environment_variables", f.trigger)),
        Some(
            json!({"USER_VAR": {"is_secret": false, "value": "user-value"},
                    "SECRET_VAR": {"is_secret": true, "value": "very-secret-value"},
                    "CI": {"is_secret": false, "value": "overridden"}}),
        ),
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let b = wait_stopped(&app, &id).await;
    let logs = all_logs(&app, &id).await;
    assert_eq!(b["build_outcome"], "success", "{}", logs.join("\n"));
    for field in ["initializing_on", "running_on", "stopped_on"] {
        assert!(b[field].is_string(), "{field}: {b}");
    }
    let meta = &b["build_trigger_metadata"];
    assert_eq!(meta["commit_hash"], sha.as_str());
    assert_eq!(meta["branch"], "main");
    assert_eq!(meta["commit_message"], "Add the site\n\nWith a body.");
    assert_eq!(meta["author"], "developer@example.com");

    // Every output line, in order, between the system lines of the hosted product.
    let out: Vec<&String> = logs.iter().filter(|l| l.starts_with("out line ")).collect();
    assert_eq!(out.len(), 20_000);
    for (i, l) in out.iter().enumerate() {
        assert_eq!(**l, format!("out line {i}"));
    }
    let pos = |needle: &str| {
        logs.iter().position(|l| l == needle).unwrap_or_else(|| {
            panic!(
                "no line {needle:?} in\n{}",
                logs[..logs.len().min(40)].join("\n")
            )
        })
    };
    let order = [
        pos("Initializing build environment..."),
        pos("Success: Finished initializing build environment"),
        pos("Cloning repository..."),
        pos("Executing user build command: sh build.sh"),
        pos("out line 0"),
        pos("out line 19999"),
        pos("Success: Build command completed"),
        pos("Executing user deploy command: sh deploy.sh"),
        pos("deploying"),
        pos("Success: Deploy command completed"),
        pos("✨ Success! Build completed."),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    assert!(logs.contains(&"to stderr".to_owned()));
    // System variables, user variables overriding them, secrets masked.
    for want in [
        "CI=overridden".to_owned(),
        "WORKERS_CI=1".to_owned(),
        format!("WORKERS_CI_BUILD_UUID={id}"),
        format!("WORKERS_CI_COMMIT_SHA={sha}"),
        "WORKERS_CI_BRANCH=main".to_owned(),
        format!("CLOUDFLARE_ACCOUNT_ID={ACCOUNT}"),
        "CLOUDFLARE_API_TOKEN=***".to_owned(),
        "USER_VAR=user-value".to_owned(),
        "SECRET_VAR=***".to_owned(),
    ] {
        assert!(logs.contains(&want), "missing {want}");
    }
    assert!(
        !logs
            .iter()
            .any(|l| l.contains("very-secret-value") || l.contains("cf-secret-site"))
    );

    // The printed version id links the build.
    let r = app
        .ok(
            Method::GET,
            &app.acct(&format!("/builds?version_ids={version}")),
            None,
        )
        .await;
    assert_eq!(s(&r["builds"][&version]["build_uuid"]), id);
    let r = app
        .ok(
            Method::GET,
            &app.acct("/builds/latest?external_script_ids=site"),
            None,
        )
        .await;
    assert_eq!(s(&r["builds"]["site"]["build_uuid"]), id);
    // The workspace is removed afterwards.
    assert!(!app.data_dir().join("workspaces").join(&id).exists());
    app.stop().await;
}

#[tokio::test]
async fn version_id_comes_from_wrangler_output_files_first() {
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let f = app.fixture("nd").await;
    let from_file = uuid::Uuid::new_v4().to_string();
    let printed = uuid::Uuid::new_v4().to_string();
    commit_files(
        &app,
        "nd",
        &[(
            "deploy.sh",
            &format!(
                "echo '{{\"type\":\"wrangler-session\",\"version\":1}}' > \"$WRANGLER_OUTPUT_FILE_DIRECTORY/wrangler-output-1.json\"\n\
                 echo '{{\"type\":\"deploy\",\"version_id\":\"{from_file}\",\"worker_name\":\"nd\"}}' >> \"$WRANGLER_OUTPUT_FILE_DIRECTORY/wrangler-output-1.json\"\n\
                 echo 'Current Version ID: {printed}'\n"
            ),
        )],
        "nd",
    );
    set_commands(&app, &f.trigger, "", "sh deploy.sh").await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    assert_eq!(wait_stopped(&app, &id).await["build_outcome"], "success");
    let r = app
        .ok(
            Method::GET,
            &app.acct(&format!("/builds?version_ids={from_file},{printed}")),
            None,
        )
        .await;
    assert_eq!(s(&r["builds"][&from_file]["build_uuid"]), id);
    assert!(r["builds"].get(&printed).is_none(), "{r}");
    app.stop().await;
}

/// Whatever Kiln stores is out of every build's reach, in both modes: the database (here outside
/// the data dir, as with `--database-url sqlite:///elsewhere/kiln.db`, where every build could read it)
/// and its WAL and SHM files, the secret key, a key file given by path, the git mirrors (other
/// repositories' and the build's own: a checkout gets its objects as links), the build cache, the
/// toolchain store's internals and other workspaces. bwrap hides them (even a world-readable key file);
/// without the sandbox the file modes keep the build user out.
async fn whatever_kiln_stores_is_out_of_reach(mode: SandboxMode) {
    let keys = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(
        keys.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let key = keys.path().join("github-app.pem");
    std::fs::write(&key, "-----BEGIN RSA PRIVATE KEY----- app key").unwrap();
    // World-readable: the sandbox must hide it; without the sandbox Kiln would refuse to start.
    let key_mode = if mode == SandboxMode::Bwrap {
        0o644
    } else {
        0o600
    };
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(key_mode)).unwrap();
    let sqlite = backend() == Backend::Sqlite;
    let key_path = key.clone();
    let app = spawn_runner(mode, move |c| {
        if sqlite {
            let elsewhere = c.store.data_dir.parent().unwrap().join("elsewhere");
            std::fs::create_dir_all(&elsewhere).unwrap();
            std::fs::set_permissions(
                &elsewhere,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
            c.store.database_url = Some(format!("sqlite://{}/kiln.db", elsewhere.display()));
        }
        c.runner.private_paths = vec![key_path];
    })
    .await;
    let data = app.data_dir();
    let toolchains = shared_toolchain_dir();
    // Another repository's mirror, made by another trigger's build.
    let victim = app.fixture("victim").await;
    commit_files(&app, "victim", &[("README.md", "private\n")], "victim");
    set_commands(&app, &victim.trigger, "true", "").await;
    let id = queue(&app, &victim.trigger, json!({"branch": "main"})).await;
    assert_eq!(wait_stopped(&app, &id).await["build_outcome"], "success");
    // Another build's workspace, as Kiln leaves it: private to that build's user.
    let other = data.join("workspaces").join("other-build");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("secret.txt"), "OTHER-WORKSPACE-CONTENT").unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();

    let f = app.fixture("nosy").await;
    let mut files = vec![
        data.join("secret.key"),
        data.join("node-id"),
        key.clone(),
        data.join("git/mirrors/octo-org/victim-repo.git/HEAD"),
        data.join("git/mirrors/octo-org/nosy-repo.git/HEAD"),
        other.join("secret.txt"),
    ];
    if sqlite {
        let db = data.parent().unwrap().join("elsewhere/kiln.db");
        for suffix in ["", "-wal", "-shm"] {
            let path = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
            assert!(path.exists(), "{}", path.display());
            files.push(path);
        }
    }
    // Directories are hidden when nothing of them can be listed (the sandbox covers them with an
    // empty tmpfs); on the host each has something in it.
    let dirs = [
        data.join("cache"),
        data.join("git/mirrors"),
        toolchains.join(".locks"),
    ];
    for dir in &dirs {
        assert!(
            std::fs::read_dir(dir).unwrap().next().is_some(),
            "{}",
            dir.display()
        );
    }
    let mut script = String::new();
    for file in &files {
        script.push_str(&format!(
            "if cat '{f}' >/dev/null 2>&1; then echo 'READABLE {f}'; else echo 'hidden {f}'; fi\n",
            f = file.display()
        ));
    }
    for dir in &dirs {
        script.push_str(&format!(
            "if [ -n \"$(ls -A '{d}' 2>/dev/null)\" ]; then echo 'READABLE {d}'; else echo 'hidden {d}'; fi\n",
            d = dir.display()
        ));
    }
    script.push_str("git log -1 --format=own-history-%s\nls ..\n");
    commit_files(&app, "nosy", &[("nosy.sh", &script)], "nosy");
    set_commands(&app, &f.trigger, "sh nosy.sh", "").await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let b = wait_stopped(&app, &id).await;
    let logs = all_logs(&app, &id).await;
    let all = logs.join("\n");
    assert_eq!(b["build_outcome"], "success", "{mode}: {all}");
    assert!(
        !logs.iter().any(|l| l.starts_with("READABLE")),
        "{mode}: {all}"
    );
    assert_eq!(
        logs.iter().filter(|l| l.starts_with("hidden ")).count(),
        files.len() + dirs.len(),
        "{mode}: {all}"
    );
    // The build's own repository works: its objects are its own.
    assert!(
        logs.contains(&"own-history-nosy".to_owned()),
        "{mode}: {all}"
    );
    app.stop().await;
}

#[tokio::test]
async fn whatever_kiln_stores_is_out_of_reach_of_sandboxed_builds() {
    whatever_kiln_stores_is_out_of_reach(SandboxMode::Bwrap).await;
}

#[tokio::test]
async fn whatever_kiln_stores_is_out_of_reach_of_unsandboxed_builds() {
    whatever_kiln_stores_is_out_of_reach(SandboxMode::None).await;
}

/// The issue's input as it happened: Kiln not running as root (builds then run as Kiln's own user,
/// who owns every file Kiln stores) with `--database-url sqlite:///elsewhere/kiln.db`: every build
/// read the whole database. The bwrap sandbox hides the database and its WAL and SHM files.
#[tokio::test]
async fn a_kiln_that_is_not_root_hides_a_database_elsewhere_from_its_builds() {
    if !is_root() {
        eprintln!("not root: cannot start Kiln as another user");
        return;
    }
    const NOBODY: (u32, u32) = (65534, 65534);
    // Not under /tmp, which the sandbox replaces anyway.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let (data, elsewhere, toolchains) = (
        dir.path().join("data"),
        dir.path().join("elsewhere"),
        dir.path().join("toolchains"),
    );
    for owned in [&data, &elsewhere, &toolchains] {
        std::fs::create_dir_all(owned).unwrap();
        std::os::unix::fs::chown(owned, Some(NOBODY.0), Some(NOBODY.1)).unwrap();
    }
    let remotes = dir.path().join("remotes");
    let repo = remotes.join("octo-org").join("nosy-repo");
    std::fs::create_dir_all(&repo).unwrap();
    let db = elsewhere.join("kiln.db");
    let mut script = String::new();
    for suffix in ["", "-wal", "-shm"] {
        script.push_str(&format!(
            "if cat '{f}{suffix}' | grep -q .; then echo 'READABLE {suffix}'; else echo 'hidden {suffix}'; fi\n",
            f = db.display()
        ));
    }
    std::fs::write(repo.join("nosy.sh"), script).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "nosy"]);
    // git refuses to clone a repository another user owns.
    let chowned = Command::new("chown")
        .args(["-R", &format!("{}:{}", NOBODY.0, NOBODY.1)])
        .arg(&repo)
        .status()
        .unwrap();
    assert!(chowned.success());
    let mut options = NodeOptions::new("bwrap");
    options.as_user = Some(NOBODY);
    options.database_url = Some(format!("sqlite://{}", db.display()));
    options.toolchain_dir = toolchains;
    // No toolchain downloads: the build needs none (it falls back to the host's tools).
    options.extra = vec!["--npm-registry".into(), "http://127.0.0.1:9/".into()];
    let kiln = start_kiln(&data, &remotes, &options).await;
    let trigger = kiln.trigger("nosy-repo", "91", "sh nosy.sh").await;
    let id = s(&kiln
        .call(
            Method::POST,
            &format!("/triggers/{trigger}/builds"),
            Some(json!({"branch": "main"})),
        )
        .await["build_uuid"]);
    let b = kiln
        .wait(&id, "stopped", |b, _| b["status"] == "stopped")
        .await;
    let logs = kiln.logs(&id).await;
    let all = logs.join("\n");
    assert_eq!(b["build_outcome"], "success", "{all}");
    for suffix in ["", "-wal", "-shm"] {
        assert!(
            std::fs::metadata(format!("{}{suffix}", db.display())).is_ok_and(|m| m.len() > 0),
            "{suffix} exists and has content on the host"
        );
    }
    assert!(!logs.iter().any(|l| l.starts_with("READABLE")), "{all}");
    assert_eq!(
        logs.iter().filter(|l| l.starts_with("hidden")).count(),
        3,
        "{all}"
    );
}

/// Without the sandbox nothing can hide a file the build user may read: a key file given by path
/// that others can read (or a database file, or whatever else Kiln must keep) stops Kiln at start.
#[tokio::test]
async fn a_private_file_builds_could_read_stops_an_unsandboxed_start() {
    if !is_root() {
        eprintln!("not root: builds run as the test's own user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let key = dir.path().join("app.pem");
    std::fs::write(&key, "key").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut config = test_config(dir.path()).await;
    config.scheduler.runners = 1;
    config.runner.sandbox = SandboxMode::None;
    config.runner.private_paths = vec![key.clone()];
    let err = match kiln::startup::Server::start(&config).await {
        Ok(server) => {
            server.stop().await.unwrap();
            panic!("started although the build user can read {}", key.display());
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(&key.display().to_string()), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    // Readable by Kiln only, it starts; so it does with the sandbox, which hides the file.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    kiln::startup::Server::start(&config)
        .await
        .unwrap()
        .stop()
        .await
        .unwrap();
}

/// Small per-build limits: each one stops a build that goes past it, with a log line saying which,
/// and the build fails. (The issue's input: 2,000 processes, 1 GiB of memory and 200 MiB in `/tmp`,
/// `/dev/shm` and the workspace all succeeded, with no limit at all.)
async fn limits_stop_a_build_with_a_line_saying_which(mode: SandboxMode) {
    let app = spawn_runner(mode, |c| {
        c.runner.limits = kiln::sandbox::BuildLimits {
            memory_bytes: 96 << 20,
            processes: 32,
            disk_bytes: 40 << 20,
            tmp_bytes: 16 << 20,
            shm_bytes: 8 << 20,
        };
        c.runner.limit_check_interval = Duration::from_millis(200);
        // Build users of their own: RLIMIT_NPROC counts every process of a uid, and other tests'
        // servers run builds as the default ones at the same time.
        let base = if mode == SandboxMode::Bwrap {
            61100
        } else {
            61200
        };
        c.runner.build_user = kiln::sandbox::BuildUserSpec::Ids(kiln::sandbox::BuildUser {
            uid: base,
            gid: base,
        });
    })
    .await;
    let support = kiln::sandbox::limit_support(app.config.runner.limits);
    let f = app.fixture("hungry").await;
    commit_files(&app, "hungry", &[("README.md", "limits\n")], "init");
    let mut cases = vec![
        (
            "awk 'BEGIN { s = \"x\"; while (length(s) < 1024 * 1024 * 1024) s = s s; print length(s) }'",
            "Build was stopped: it exceeded its memory limit of 96 MiB",
            support.memory,
        ),
        (
            "i=0; while [ $i -lt 2000 ]; do sleep 30 & i=$((i+1)); done; wait",
            "Build was stopped: it exceeded its process limit of 32",
            support.pids,
        ),
        // Several files, each below the largest file allowed: the workspace is measured.
        (
            "for i in 1 2 3 4; do dd if=/dev/zero of=f$i bs=1M count=15 2>/dev/null; done; sleep 30",
            "Build was stopped: it exceeded its disk limit of 40 MiB",
            true,
        ),
        // One file past the limit: RLIMIT_FSIZE stops the write.
        (
            "dd if=/dev/zero of=big bs=1M count=200",
            "Build was stopped: it exceeded its disk limit of 40 MiB",
            true,
        ),
    ];
    if mode == SandboxMode::Bwrap {
        cases.extend([
            (
                "dd if=/dev/zero of=/tmp/fill bs=1M count=200",
                "Build was stopped: it exceeded its /tmp size limit of 16 MiB",
                true,
            ),
            (
                "dd if=/dev/zero of=/dev/shm/fill bs=1M count=200",
                "Build was stopped: it exceeded its /dev/shm size limit of 8 MiB",
                true,
            ),
        ]);
    }
    for (command, line, enforced) in cases {
        if !enforced {
            eprintln!("{mode}: not enforced on this host ({support:?}): {line}");
            continue;
        }
        set_commands(&app, &f.trigger, command, "echo deployed").await;
        let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
        let b = wait_stopped(&app, &id).await;
        let logs = all_logs(&app, &id).await;
        let all = logs.join("\n");
        assert_eq!(b["build_outcome"], "fail", "{mode} {command}: {all}");
        assert_eq!(logs.last().unwrap(), line, "{mode} {command}: {all}");
        assert!(!logs.contains(&"deployed".to_owned()), "{mode}: {all}");
    }
    // Within the limits, the same build succeeds.
    set_commands(
        &app,
        &f.trigger,
        "dd if=/dev/zero of=f bs=1M count=8 2>/dev/null; echo fine",
        "",
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    assert_eq!(wait_stopped(&app, &id).await["build_outcome"], "success");
    app.stop().await;
}

#[tokio::test]
async fn limits_stop_a_sandboxed_build_with_a_line_saying_which() {
    limits_stop_a_build_with_a_line_saying_which(SandboxMode::Bwrap).await;
}

#[tokio::test]
async fn limits_stop_an_unsandboxed_build_with_a_line_saying_which() {
    limits_stop_a_build_with_a_line_saying_which(SandboxMode::None).await;
}

#[tokio::test]
async fn a_failing_command_fails_the_build_with_the_hosted_failure_line() {
    let app = spawn_runner(SandboxMode::Bwrap, |_| {}).await;
    let f = app.fixture("broken").await;
    commit_files(&app, "broken", &[("README.md", "x")], "init");
    set_commands(
        &app,
        &f.trigger,
        "echo compiling; exit 3",
        "echo should-not-run",
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let b = wait_stopped(&app, &id).await;
    assert_eq!(b["build_outcome"], "fail");
    let logs = all_logs(&app, &id).await;
    assert!(logs.contains(&"compiling".to_owned()));
    assert_eq!(
        logs.last().unwrap(),
        "Failed: error occurred while running build command"
    );
    assert!(!logs.contains(&"should-not-run".to_owned()));

    // A deleted build token fails right after initialisation, as the hosted product does.
    app.ok(
        Method::DELETE,
        &app.acct(&format!("/tokens/{}", f.token)),
        None,
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    assert_eq!(wait_stopped(&app, &id).await["build_outcome"], "fail");
    assert_eq!(
        all_logs(&app, &id).await.last().unwrap(),
        kiln::runner::STALE_TOKEN_LINE
    );

    // An unknown branch fails at the clone.
    let f2 = app.fixture("broken2").await;
    commit_files(&app, "broken2", &[("README.md", "x")], "init");
    let id = queue(&app, &f2.trigger, json!({"branch": "no-such-branch"})).await;
    assert_eq!(wait_stopped(&app, &id).await["build_outcome"], "fail");
    let logs = all_logs(&app, &id).await;
    assert!(
        logs.last()
            .unwrap()
            .starts_with("Failed: error occurred while cloning the repository"),
        "{logs:?}"
    );
    app.stop().await;
}

async fn cancel_kills_everything(mode: SandboxMode) {
    let app = spawn_runner(mode, |_| {}).await;
    let f = app.fixture("canc").await;
    let m = marker();
    let script = format!(
        "sleep {m} &\nsetsid sleep {m} &\n(setsid sh -c 'sleep {m} & exit 0' &)\nsh -c 'trap \"\" TERM; sleep {m}' &\necho started\nsleep {m}\n"
    );
    commit_files(&app, "canc", &[("run.sh", &script)], "init");
    set_commands(&app, &f.trigger, "sh run.sh", "").await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    wait_log(&app, &id, "started").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while processes_with(&m).len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "children did not start: {:?}",
            processes_with(&m)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = app
        .ok(
            Method::PUT,
            &app.acct(&format!("/builds/{id}/cancel")),
            None,
        )
        .await;
    assert_eq!(r["build_outcome"], "cancelled");
    // TERM, then KILL after the 2 s grace: nothing survives, not even setsid daemons.
    wait_no_processes(&m, Duration::from_secs(10)).await;
    let b = get_build(&app, &id).await;
    assert_eq!(
        (b["status"].clone(), b["build_outcome"].clone()),
        (json!("stopped"), json!("cancelled"))
    );
    wait_log(&app, &id, "Build was cancelled").await;
    app.stop().await;
}

#[tokio::test]
async fn cancel_kills_every_process_of_the_build_in_the_sandbox() {
    cancel_kills_everything(SandboxMode::Bwrap).await;
}

#[tokio::test]
async fn cancel_kills_every_process_of_the_build_without_the_sandbox() {
    cancel_kills_everything(SandboxMode::None).await;
}

#[tokio::test]
async fn a_build_past_the_timeout_is_terminated() {
    let app = spawn_runner(SandboxMode::Bwrap, |c| {
        c.runner.build_timeout = Duration::from_secs(2)
    })
    .await;
    let f = app.fixture("slow").await;
    let m = marker();
    commit_files(&app, "slow", &[("README.md", "x")], "init");
    set_commands(&app, &f.trigger, &format!("echo started; sleep {m}"), "").await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let b = wait_stopped(&app, &id).await;
    assert_eq!(b["build_outcome"], "terminated");
    assert_eq!(
        all_logs(&app, &id).await.last().unwrap(),
        "Build was timed out"
    );
    wait_no_processes(&m, Duration::from_secs(10)).await;
    app.stop().await;
}

#[tokio::test]
async fn newer_builds_skip_queued_ones_and_the_account_limit_holds_builds_in_the_queue() {
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let account = AccountId::parse(ACCOUNT).unwrap();
    app.store()
        .set_account_limits(&account, Some(1), None)
        .await
        .unwrap();
    let f = app.fixture("busy").await;
    let m = marker();
    commit_files(&app, "busy", &[("README.md", "x")], "init");
    let dir = app.git_remotes().join("octo-org").join("busy-repo");
    git(&dir, &["branch", "slow"]);
    set_commands(
        &app,
        &f.trigger,
        &format!("case \"$WORKERS_CI_BRANCH\" in slow) echo slow-started; sleep {m};; *) echo fast;; esac"),
        "",
    )
    .await;
    let a = queue(&app, &f.trigger, json!({"branch": "slow"})).await;
    wait_log(&app, &a, "slow-started").await;
    let b = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let c = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    // B was still queued when C (same trigger, same branch) arrived: skipped.
    let bb = get_build(&app, &b).await;
    assert_eq!(
        (bb["status"].clone(), bb["build_outcome"].clone()),
        (json!("stopped"), json!("skipped"))
    );
    // C waits for the account's only slot although a runner is free.
    for _ in 0..5 {
        assert_eq!(get_build(&app, &c).await["status"], "queued");
        assert_eq!(get_build(&app, &a).await["status"], "running");
    }
    app.ok(Method::PUT, &app.acct(&format!("/builds/{a}/cancel")), None)
        .await;
    assert_eq!(wait_stopped(&app, &c).await["build_outcome"], "success");
    assert!(all_logs(&app, &c).await.contains(&"fast".to_owned()));
    app.stop().await;
}

#[tokio::test]
async fn logs_are_readable_while_the_build_runs() {
    let app = spawn_runner(SandboxMode::Bwrap, |_| {}).await;
    let f = app.fixture("live").await;
    let m = marker();
    commit_files(&app, "live", &[("README.md", "x")], "init");
    set_commands(&app, &f.trigger, &format!("echo first-line; sleep {m}"), "").await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    wait_log(&app, &id, "first-line").await;
    let b = get_build(&app, &id).await;
    assert_eq!(b["status"], "running");
    // The live page is not truncated and its cursor returns only newer lines later.
    let r = app
        .ok(Method::GET, &app.acct(&format!("/builds/{id}/logs")), None)
        .await;
    assert_eq!(r["truncated"], false);
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{id}/cancel")),
        None,
    )
    .await;
    let later = app
        .ok(
            Method::GET,
            &app.acct(&format!("/builds/{id}/logs?cursor={}", s(&r["cursor"]))),
            None,
        )
        .await;
    wait_log(&app, &id, "Build was cancelled").await;
    assert!(
        !later["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l[1] == "first-line"),
        "first page {r}\nlater page {later}"
    );
    wait_no_processes(&m, Duration::from_secs(10)).await;
    app.stop().await;
}

#[tokio::test]
async fn dependencies_install_from_the_lockfile_unless_skipped() {
    let app = spawn_runner(SandboxMode::Bwrap, |_| {}).await;
    let f = app.fixture("npm").await;
    commit_files(
        &app,
        "npm",
        &[
            (
                "package.json",
                r#"{"name":"npm-site","version":"1.0.0","scripts":{"build":"echo built-by-npm"}}"#,
            ),
            (
                "package-lock.json",
                r#"{"name":"npm-site","version":"1.0.0","lockfileVersion":3,"requires":true,"packages":{"":{"name":"npm-site","version":"1.0.0"}}}"#,
            ),
        ],
        "npm project",
    );
    set_commands(&app, &f.trigger, "npm run build", "").await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let b = wait_stopped(&app, &id).await;
    let logs = all_logs(&app, &id).await;
    assert_eq!(b["build_outcome"], "success", "{}", logs.join("\n"));
    assert!(logs.contains(
        &"Installing project dependencies: npm clean-install --progress=false".to_owned()
    ));
    assert!(logs.contains(&"built-by-npm".to_owned()));

    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{}/environment_variables", f.trigger)),
        Some(json!({"SKIP_DEPENDENCY_INSTALL": {"is_secret": false, "value": "true"}})),
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    assert_eq!(wait_stopped(&app, &id).await["build_outcome"], "success");
    assert!(
        !all_logs(&app, &id)
            .await
            .iter()
            .any(|l| l.starts_with("Installing project dependencies"))
    );
    app.stop().await;
}

#[tokio::test]
async fn builds_over_the_monthly_minutes_are_refused() {
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let f = app.fixture("quota").await;
    let account = AccountId::parse(ACCOUNT).unwrap();
    app.store()
        .set_account_limits(&account, None, Some(0))
        .await
        .unwrap();
    let (status, v) = app
        .post(
            &app.acct(&format!("/triggers/{}/builds", f.trigger)),
            json!({"branch": "main"}),
        )
        .await;
    assert_error(status, &v, 429, 12051);
    assert!(
        s(&v["errors"][0]["message"]).contains("Build minutes"),
        "{v}"
    );
    let limits = app
        .ok(Method::GET, &app.acct("/account/limits"), None)
        .await;
    assert_eq!(limits["has_reached_build_minutes_limit"], true);
    let (_, list) = app.get(&app.acct("/workers/quota/builds")).await;
    assert_eq!(list["result"], json!([]), "nothing was queued");

    // One real build uses one (rounded-up) minute of a one-minute allowance.
    app.store()
        .set_account_limits(&account, None, Some(1))
        .await
        .unwrap();
    commit_files(&app, "quota", &[("README.md", "x")], "init");
    set_commands(&app, &f.trigger, "echo hi", "").await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    wait_stopped(&app, &id).await;
    let limits = app
        .ok(Method::GET, &app.acct("/account/limits"), None)
        .await;
    assert_eq!(limits["has_reached_build_minutes_limit"], true);
    app.stop().await;
}

#[tokio::test]
async fn queued_builds_see_a_deleted_token_and_a_deleted_trigger() {
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let account = AccountId::parse(ACCOUNT).unwrap();
    app.store()
        .set_account_limits(&account, Some(1), None)
        .await
        .unwrap();
    let f = app.fixture("later").await;
    let m = marker();
    commit_files(&app, "later", &[("README.md", "x")], "init");
    let dir = app.git_remotes().join("octo-org").join("later-repo");
    git(&dir, &["branch", "slow"]);
    set_commands(
        &app,
        &f.trigger,
        &format!("case \"$WORKERS_CI_BRANCH\" in slow) echo slow-started; sleep {m};; *) echo fast;; esac"),
        "",
    )
    .await;
    let slow = queue(&app, &f.trigger, json!({"branch": "slow"})).await;
    wait_log(&app, &slow, "slow-started").await;
    // Queued while the token was fine; the token is deleted before the build runs: it must not be used.
    let queued = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    app.ok(
        Method::DELETE,
        &app.acct(&format!("/tokens/{}", f.token)),
        None,
    )
    .await;
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{slow}/cancel")),
        None,
    )
    .await;
    assert_eq!(wait_stopped(&app, &queued).await["build_outcome"], "fail");
    assert_eq!(
        all_logs(&app, &queued).await.last().unwrap(),
        kiln::runner::STALE_TOKEN_LINE
    );

    // Deleting a trigger cancels its queued builds; they stay readable.
    let f2 = app.fixture("later2").await;
    let other = app.fixture("later3").await;
    commit_files(&app, "later3", &[("README.md", "x")], "init");
    set_commands(&app, &other.trigger, &format!("echo hold; sleep {m}"), "").await;
    let hold = queue(&app, &other.trigger, json!({"branch": "main"})).await;
    wait_log(&app, &hold, "hold").await;
    let doomed = queue(&app, &f2.trigger, json!({"branch": "main"})).await;
    app.ok(
        Method::DELETE,
        &app.acct(&format!("/triggers/{}", f2.trigger)),
        None,
    )
    .await;
    let b = get_build(&app, &doomed).await;
    assert_eq!(
        (b["status"].clone(), b["build_outcome"].clone()),
        (json!("stopped"), json!("cancelled"))
    );
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{hold}/cancel")),
        None,
    )
    .await;
    wait_no_processes(&m, Duration::from_secs(10)).await;
    app.stop().await;
}

#[tokio::test]
async fn commands_run_in_the_root_directory() {
    let app = spawn_runner(SandboxMode::Bwrap, |_| {}).await;
    let f = app.fixture("mono").await;
    commit_files(
        &app,
        "mono",
        &[("apps/web/index.js", "x"), ("README.md", "x")],
        "monorepo",
    );
    set_commands(&app, &f.trigger, "pwd; ls", "").await;
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{}", f.trigger)),
        Some(json!({"root_directory": "/apps/web"})),
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    assert_eq!(wait_stopped(&app, &id).await["build_outcome"], "success");
    let logs = all_logs(&app, &id).await;
    assert!(
        logs.iter().any(|l| l.ends_with("/repo/apps/web")),
        "{logs:?}"
    );
    assert!(logs.contains(&"index.js".to_owned()), "{logs:?}");
    assert!(!logs.contains(&"README.md".to_owned()), "{logs:?}");

    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{}", f.trigger)),
        Some(json!({"root_directory": "apps/missing"})),
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    assert_eq!(wait_stopped(&app, &id).await["build_outcome"], "fail");
    assert_eq!(
        all_logs(&app, &id).await.last().unwrap(),
        "Failed: root directory apps/missing does not exist in the repository"
    );

    // A root directory that is a link out of the checkout is not in the repository either.
    let repo = app.git_remotes().join("octo-org").join("mono-repo");
    std::os::unix::fs::symlink("/etc", repo.join("etc-link")).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "link"]);
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{}", f.trigger)),
        Some(json!({"root_directory": "etc-link"})),
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    assert_eq!(wait_stopped(&app, &id).await["build_outcome"], "fail");
    assert_eq!(
        all_logs(&app, &id).await.last().unwrap(),
        "Failed: root directory etc-link does not exist in the repository"
    );
    app.stop().await;
}

#[tokio::test]
async fn seed_repo_creates_the_first_commit_from_a_template_then_builds_it() {
    let app = spawn_runner(SandboxMode::Bwrap, |_| {}).await;
    let f = app.fixture("seeded").await;
    // The template, a directory of a bigger repository.
    let template = app
        .git_remotes()
        .join("templates-org")
        .join("worker-template");
    std::fs::create_dir_all(template.join("templates/hello")).unwrap();
    std::fs::write(
        template.join("templates/hello/index.js"),
        "console.log('PLACEHOLDER');\n",
    )
    .unwrap();
    std::fs::write(
        template.join("templates/hello/build.sh"),
        "cat index.js\ncat extra.txt\n",
    )
    .unwrap();
    std::fs::write(template.join("README.md"), "not part of the seed\n").unwrap();
    git(&template, &["init", "-q", "-b", "main"]);
    git(&template, &["add", "-A"]);
    git(&template, &["commit", "-q", "-m", "templates"]);
    // The connected repository exists but is empty.
    let target = app.git_remotes().join("octo-org").join("seeded-repo");
    std::fs::create_dir_all(&target).unwrap();
    git(&target, &["init", "-q", "--bare"]);
    set_commands(&app, &f.trigger, "sh build.sh", "").await;

    let seed = json!({"provider": "github", "owner": "templates-org", "repository": "worker-template",
        "branch": "main", "path": "templates/hello", "files": [
            {"filename": "extra.txt", "content": "ZXh0cmEgZmlsZQo=", "isBase64": true},
            {"filename": "index.js", "content": "seeded", "replace": "PLACEHOLDER"}]});
    let id = queue(
        &app,
        &f.trigger,
        json!({"branch": "main", "seed_repo": seed}),
    )
    .await;
    let b = wait_stopped(&app, &id).await;
    let logs = all_logs(&app, &id).await;
    assert_eq!(b["build_outcome"], "success", "{}", logs.join("\n"));
    assert!(
        logs.contains(&"console.log('seeded');".to_owned()),
        "{logs:?}"
    );
    assert!(logs.contains(&"extra file".to_owned()), "{logs:?}");
    let out = Command::new("git")
        .args(["log", "-1", "--format=%s", "main"])
        .current_dir(&target)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Initial commit from templates-org/worker-template"
    );
    let files = Command::new("git")
        .args(["ls-tree", "--name-only", "main"])
        .current_dir(&target)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&files.stdout),
        "build.sh\nextra.txt\nindex.js\n"
    );

    // The branch exists now: seeding again is refused by the remote and the build fails.
    let id = queue(
        &app,
        &f.trigger,
        json!({"branch": "main", "seed_repo": seed}),
    )
    .await;
    assert_eq!(wait_stopped(&app, &id).await["build_outcome"], "fail");
    assert!(
        all_logs(&app, &id)
            .await
            .last()
            .unwrap()
            .starts_with("Failed: could not seed the repository")
    );

    // Bad seeds are refused up front.
    for (body, field) in [
        (json!({"seed_repo": seed}), "branch"),
        (
            json!({"branch": "main", "seed_repo": {"provider": "gitlab", "owner": "a", "repository": "b"}}),
            "seed_repo.provider",
        ),
        (
            json!({"branch": "main", "seed_repo": {"provider": "github", "owner": "a", "repository": "b", "path": "../x"}}),
            "seed_repo.path",
        ),
        (
            json!({"branch": "main", "seed_repo": {"provider": "github", "owner": "a", "repository": "b",
            "files": [{"filename": "a", "content": "x"}, {"filename": "b", "content": "x"}, {"filename": "c", "content": "x"}]}}),
            "seed_repo.files",
        ),
        (
            json!({"branch": "main", "seed_repo": {"provider": "github", "owner": "a", "repository": "b",
            "files": [{"filename": "a", "content": "!!!", "isBase64": true}]}}),
            "seed_repo.files.content",
        ),
    ] {
        let (status, v) = app
            .post(&app.acct(&format!("/triggers/{}/builds", f.trigger)), body)
            .await;
        assert_error(status, &v, 400, 12002);
        assert!(
            s(&v["errors"][0]["message"]).contains(field),
            "{field}: {v}"
        );
    }
    app.stop().await;
}

/// The issue's inputs: a template with symlinks wrote a file through a link as root (a link to a
/// cron directory) and copied host directories (git mirrors, a config dir with an App key) into the
/// seeded repository. Links are now copied as links, never followed out of the template, and nothing
/// is written through one.
#[tokio::test]
async fn seeding_never_follows_a_template_link_out_of_the_template() {
    let app = spawn_runner(SandboxMode::Bwrap, |_| {}).await;
    let host = tempfile::tempdir_in("/var/tmp").unwrap();
    let cron = host.path().join("cron.d");
    let config = host.path().join("kiln-config");
    std::fs::create_dir_all(&cron).unwrap();
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("app.pem"),
        "-----BEGIN PRIVATE KEY----- host key",
    )
    .unwrap();
    let mirrors = app.data_dir().join("git/mirrors");
    let template = app.git_remotes().join("templates-org").join("linky");
    std::fs::create_dir_all(template.join("site")).unwrap();
    std::fs::write(template.join("site/build.sh"), "echo built\n").unwrap();
    std::os::unix::fs::symlink(&cron, template.join("site/cron")).unwrap();
    std::os::unix::fs::symlink(&config, template.join("site/config")).unwrap();
    std::os::unix::fs::symlink(&mirrors, template.join("site/mirrors")).unwrap();
    std::os::unix::fs::symlink(config.join("app.pem"), template.join("site/key.pem")).unwrap();
    std::os::unix::fs::symlink(&config, template.join("escape")).unwrap();
    git(&template, &["init", "-q", "-b", "main"]);
    git(&template, &["add", "-A"]);
    git(&template, &["commit", "-q", "-m", "links"]);
    let seed = |path: &str, files: serde_json::Value| {
        json!({"provider": "github", "owner": "templates-org", "repository": "linky",
            "branch": "main", "path": path, "files": files})
    };
    let cases = [
        // Copied: the links stay links; the build of the seeded repository runs.
        ("seed-ok", seed("site", json!([])), None),
        // Writing through a link into a host directory.
        (
            "seed-cron",
            seed(
                "site",
                json!([{"filename": "cron/evil", "content": "* * * * * root sh"}]),
            ),
            Some("could not seed the repository"),
        ),
        // Reading a host file through a link to replace text in it.
        (
            "seed-key",
            seed(
                "site",
                json!([{"filename": "key.pem", "content": "x", "replace": "host"}]),
            ),
            Some("could not seed the repository"),
        ),
        // A template directory that is a link out of the template.
        (
            "seed-escape",
            seed("escape", json!([])),
            Some("could not seed the repository"),
        ),
    ];
    for (worker, seed, failure) in cases {
        let f = app.fixture(worker).await;
        let target = app
            .git_remotes()
            .join("octo-org")
            .join(format!("{worker}-repo"));
        std::fs::create_dir_all(&target).unwrap();
        git(&target, &["init", "-q", "--bare"]);
        set_commands(&app, &f.trigger, "sh build.sh", "").await;
        let id = queue(
            &app,
            &f.trigger,
            json!({"branch": "main", "seed_repo": seed}),
        )
        .await;
        let b = wait_stopped(&app, &id).await;
        let logs = all_logs(&app, &id).await;
        match failure {
            None => {
                assert_eq!(b["build_outcome"], "success", "{}", logs.join("\n"));
                assert!(logs.contains(&"built".to_owned()), "{logs:?}");
                let tree = Command::new("git")
                    .args(["ls-tree", "main"])
                    .current_dir(&target)
                    .output()
                    .unwrap();
                let tree = String::from_utf8_lossy(&tree.stdout).into_owned();
                for link in ["config", "cron", "key.pem", "mirrors"] {
                    assert!(
                        tree.lines()
                            .any(|l| l.starts_with("120000 blob")
                                && l.ends_with(&format!("\t{link}"))),
                        "{link} is committed as a link: {tree}"
                    );
                }
                assert_eq!(tree.lines().count(), 5, "{tree}");
            }
            Some(line) => {
                assert_eq!(b["build_outcome"], "fail", "{worker}: {}", logs.join("\n"));
                assert!(
                    logs.last().unwrap().contains(line),
                    "{worker}: {}",
                    logs.join("\n")
                );
            }
        }
    }
    assert_eq!(
        std::fs::read_dir(&cron).unwrap().count(),
        0,
        "nothing written to the host"
    );
    assert_eq!(
        std::fs::read_to_string(config.join("app.pem")).unwrap(),
        "-----BEGIN PRIVATE KEY----- host key"
    );
    app.stop().await;
}

/// What a build may and may not do as the build user, checked by the build itself: every check
/// prints `ok <name>` or `BAD <name>`.
fn build_user_probe(data: &Path, root_only: &Path, etc_probe: &str) -> String {
    format!(
        r#"check() {{ name=$1; shift; if "$@" >/dev/null 2>&1; then echo "ok $name"; else echo "BAD $name"; fi; }}
refuse() {{ name=$1; shift; if "$@" >/dev/null 2>&1; then echo "BAD $name"; else echo "ok $name"; fi; }}
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
refuse read-root-only cat {root_only}
refuse read-shadow cat /etc/shadow
refuse write-etc sh -c 'echo x > {etc_probe}'
refuse write-data-dir sh -c 'echo x > {data}/kiln-probe'
refuse read-database cat {data}/kiln.db
refuse read-key cat {data}/secret.key
refuse signal-kiln kill -TERM "$KILN_PID"
check write-workspace sh -c 'echo w > in-workspace && test -s in-workspace'
check write-home sh -c 'echo h > "$HOME/in-home" && test -s "$HOME/in-home"'
check write-tmp sh -c 'echo t > "$TMPDIR/in-tmp" && test -s "$TMPDIR/in-tmp"'
check home-owned test -O "$HOME"
check checkout-owned test -O .git/HEAD
check wrangler-output-writable sh -c 'echo > "$WRANGLER_OUTPUT_FILE_DIRECTORY/x.json"'
echo "head=$(git log -1 --format=%H)"
"#,
        data = data.display(),
        root_only = root_only.display(),
    )
}

async fn builds_run_as_the_build_user(mode: SandboxMode) {
    let app = spawn_runner(mode, |_| {}).await;
    let user = kiln::sandbox::BuildUserSpec::default()
        .resolve()
        .expect("the build user exists once the server started");
    let Some(user) = user else {
        eprintln!("not root: builds run as the test's own user");
        app.stop().await;
        return;
    };
    // Outside /tmp (private in bwrap mode) and outside the data dir: the host's root-only file.
    let private = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(
        private.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let root_only = private.path().join("github-app.pem");
    std::fs::write(&root_only, "-----BEGIN RSA PRIVATE KEY-----").unwrap();
    std::fs::set_permissions(
        &root_only,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let etc_probe = format!("/etc/kiln-probe-{}", rand_digits());
    let f = app.fixture("unprivileged").await;
    let script = build_user_probe(&app.data_dir(), &root_only, &etc_probe);
    let repo = commit_files(&app, "unprivileged", &[("probe.sh", &script)], "probe");
    set_commands(&app, &f.trigger, "sh probe.sh", "").await;
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{}/environment_variables", f.trigger)),
        Some(json!({"KILN_PID": {"is_secret": false, "value": std::process::id().to_string()}})),
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let b = wait_stopped(&app, &id).await;
    let logs = all_logs(&app, &id).await;
    let all = logs.join("\n");
    assert_eq!(b["build_outcome"], "success", "{mode}: {all}");
    let (uid, gid) = (user.uid, user.gid);
    assert!(
        logs.contains(&format!("uid={uid} gid={gid} groups={gid}")),
        "{mode}: {all}"
    );
    assert!(!logs.iter().any(|l| l.starts_with("BAD ")), "{mode}: {all}");
    assert_eq!(
        logs.iter().filter(|l| l.starts_with("ok ")).count(),
        13,
        "{mode}: {all}"
    );
    assert!(
        logs.contains(&format!("head={}", head(&repo))),
        "{mode}: {all}"
    );
    assert!(!Path::new(&etc_probe).exists(), "{mode}");
    assert!(!app.data_dir().join("kiln-probe").exists(), "{mode}");
    // Kiln is still serving (and this process, Kiln's, was not signalled).
    get_build(&app, &id).await;
    app.stop().await;
}

#[tokio::test]
async fn builds_run_as_the_build_user_in_the_sandbox() {
    builds_run_as_the_build_user(SandboxMode::Bwrap).await;
}

#[tokio::test]
async fn builds_run_as_the_build_user_without_the_sandbox() {
    builds_run_as_the_build_user(SandboxMode::None).await;
}

#[tokio::test]
async fn the_data_dir_is_passable_but_its_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let data = app.data_dir();
    let mode = |name: &str| {
        std::fs::metadata(data.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(""), 0o711);
    assert_eq!(mode("workspaces"), 0o711);
    // Builds get their repository's objects as links: no mirror needs to be reachable.
    assert_eq!(mode("git"), 0o700);
    let mut files = vec!["secret.key", "kiln.lock", "node-id"];
    if backend() == Backend::Sqlite {
        files.extend(["kiln.db", "kiln.db-wal", "kiln.db-shm"]);
    }
    for file in files {
        assert_eq!(mode(file), 0o600, "{file}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_build_environment_has_host_settings_and_the_wrangler_ci_variables() {
    let app = spawn_runner(SandboxMode::Bwrap, |c| {
        // `cargo test` sets CARGO_MANIFEST_DIR in this process: a variable of Kiln's own environment.
        c.runner.host_env.passthrough = vec![
            "CARGO_MANIFEST_DIR".to_owned(),
            "KILN_TEST_NEVER_SET_ANYWHERE".to_owned(),
        ];
        c.runner.host_env.defaults = vec![
            ("SERVER_DEFAULT".to_owned(), "from-server".to_owned()),
            ("OVERRIDDEN".to_owned(), "server".to_owned()),
        ];
    })
    .await;
    let f = app.fixture("envs").await;
    commit_files(&app, "envs", &[("README.md", "hi\n")], "plain");
    let print = "env | sort | grep -E '^(CARGO_MANIFEST_DIR|SERVER_DEFAULT|OVERRIDDEN|WRANGLER_CI_[A-Z_]+|KILN_TEST_NEVER_SET_ANYWHERE)='";
    set_commands(&app, &f.trigger, print, "").await;
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{}/environment_variables", f.trigger)),
        Some(
            json!({"OVERRIDDEN": {"is_secret": false, "value": "trigger"},
                    "WRANGLER_CI_OVERRIDE_NAME": {"is_secret": false, "value": "custom-name"}}),
        ),
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let b = wait_stopped(&app, &id).await;
    let logs = all_logs(&app, &id).await;
    assert_eq!(b["build_outcome"], "success", "{}", logs.join("\n"));
    for want in [
        format!("CARGO_MANIFEST_DIR={}", env!("CARGO_MANIFEST_DIR")),
        "SERVER_DEFAULT=from-server".to_owned(),
        "OVERRIDDEN=trigger".to_owned(),
        "WRANGLER_CI_OVERRIDE_NAME=custom-name".to_owned(),
        "WRANGLER_CI_GENERATE_PREVIEW_ALIAS=false".to_owned(),
    ] {
        assert!(logs.contains(&want), "no {want:?} in\n{}", logs.join("\n"));
    }
    assert!(
        !logs
            .iter()
            .any(|l| l.starts_with("KILN_TEST_NEVER_SET_ANYWHERE"))
    );
    // The Worker id "envs" is a name, not a script tag: no tag to match.
    assert!(!logs.iter().any(|l| l.starts_with("WRANGLER_CI_MATCH_TAG=")));

    // A preview trigger (every branch but production) created without a deploy command uploads a
    // version instead of deploying, and its builds generate preview aliases.
    let preview = app
        .trigger(
            "envs",
            &f.connection,
            &f.token,
            json!({"trigger_name": "preview", "branch_includes": ["*"], "branch_excludes": ["main"],
                   "build_command": print}),
        )
        .await;
    let triggers = app
        .ok(Method::GET, &app.acct("/workers/envs/triggers"), None)
        .await;
    let created = triggers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["trigger_uuid"] == preview.as_str())
        .expect("the preview trigger")
        .clone();
    assert_eq!(created["deploy_command"], "npx wrangler versions upload");
    set_commands(&app, &preview, print, "").await;
    let repo = app.git_remotes().join("octo-org").join("envs-repo");
    git(&repo, &["branch", "feature"]);
    let id = queue(&app, &preview, json!({"branch": "feature"})).await;
    let b = wait_stopped(&app, &id).await;
    let logs = all_logs(&app, &id).await;
    assert_eq!(b["build_outcome"], "success", "{}", logs.join("\n"));
    assert!(
        logs.contains(&"WRANGLER_CI_GENERATE_PREVIEW_ALIAS=true".to_owned()),
        "{}",
        logs.join("\n")
    );
    app.stop().await;
}

/// Builds running at the same time run as different users: without the sandbox, one cannot read the
/// other's processes' environment (its build token) or enter its workspace.
#[tokio::test]
async fn concurrent_builds_never_share_a_build_user() {
    if !is_root() {
        eprintln!("not root: builds run as the test's own user");
        return;
    }
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let f = app.fixture("pair").await;
    let repo = commit_files(&app, "pair", &[("README.md", "hi\n")], "plain");
    git(&repo, &["branch", "other"]);
    // Each build waits until both run, then lists the build ids it can read in /proc.
    let script = "id -u; touch \"$KILN_MARK.$(id -u)\"; \
        i=0; while [ $(ls \"$KILN_MARK\".* 2>/dev/null | wc -l) -lt 2 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
        for e in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $e 2>/dev/null | grep '^WORKERS_CI_BUILD_UUID='; done | sort -u | sed 's/^/seen /'";
    set_commands(&app, &f.trigger, script, "").await;
    let marks = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        marks.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{}/environment_variables", f.trigger)),
        Some(json!({"KILN_MARK": {"is_secret": false,
            "value": marks.path().join("running").display().to_string()}})),
    )
    .await;
    let a = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let b = queue(&app, &f.trigger, json!({"branch": "other"})).await;
    let mut uids = Vec::new();
    for id in [&a, &b] {
        let build = wait_stopped(&app, id).await;
        let logs = all_logs(&app, id).await;
        assert_eq!(build["build_outcome"], "success", "{}", logs.join("\n"));
        // Other tests' servers in this process run builds as the same users: only these two count.
        let seen: Vec<&String> = logs
            .iter()
            .filter(|l| {
                [&a, &b]
                    .iter()
                    .any(|x| **l == format!("seen WORKERS_CI_BUILD_UUID={x}"))
            })
            .collect();
        assert_eq!(
            seen,
            [&format!("seen WORKERS_CI_BUILD_UUID={id}")],
            "a build saw another's environment:\n{}",
            logs.join("\n")
        );
        uids.push(
            logs.iter()
                .find(|l| !l.is_empty() && l.bytes().all(|c| c.is_ascii_digit()))
                .cloned()
                .unwrap_or_default(),
        );
    }
    assert_ne!(uids[0], uids[1], "both builds ran as uid {}", uids[0]);
    // Both builds were running together (each waited for the other's mark).
    assert_eq!(std::fs::read_dir(marks.path()).unwrap().count(), 2);
    app.stop().await;
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
