//! Tests of the sandbox with real child processes, in both modes (bwrap is required when running as
//! root: scripts/test installs it), plus the process-group fallback used when there is no cgroup v2.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::*;

/// How long a test waits for a condition that should hold almost at once, in seconds.
const DEADLINE: Duration = Duration::from_secs(20);

fn modes() -> Vec<SandboxMode> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            bwrap_available(),
            "bwrap must work when tests run as root (apt-get install bubblewrap)"
        );
    }
    if bwrap_available() {
        vec![SandboxMode::None, SandboxMode::Bwrap]
    } else {
        eprintln!("bwrap is not available: testing sandbox mode none only");
        vec![SandboxMode::None]
    }
}

/// The user steps run as when the tests run as root: numeric ids, which need no passwd entry.
const TEST_BUILD_USER: BuildUser = BuildUser {
    uid: 65534,
    gid: 65534,
};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// [`TEST_BUILD_USER`] as root; `None` (steps run as the test's user) otherwise.
fn build_user() -> Option<BuildUser> {
    is_root().then_some(TEST_BUILD_USER)
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A data dir (hidden in bwrap mode) holding a secret, a git mirror (read-only) and the workspace,
/// laid out as Kiln does: the data dir passable but not listable, the secret owner-only, the workspace
/// with its HOME and TMPDIR owned by the build user.
struct Fixture {
    _root: tempfile::TempDir,
    data: PathBuf,
    mirror: PathBuf,
    workspace: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let root = tempfile::tempdir().expect("tempdir");
        set_mode(root.path(), 0o711);
        let data = root.path().join("data");
        let mirror = data.join("mirrors/repo.git");
        let workspace = data.join("builds/b1/workspace");
        std::fs::create_dir_all(&mirror).expect("mkdir mirror");
        std::fs::create_dir_all(workspace.join("home")).expect("mkdir workspace");
        std::fs::create_dir_all(workspace.join("tmp")).expect("mkdir workspace");
        for dir in [&data, &data.join("builds"), &data.join("builds/b1")] {
            set_mode(dir, 0o711);
        }
        std::fs::write(data.join("secret.key"), "top secret").expect("write key");
        set_mode(&data.join("secret.key"), 0o600);
        std::fs::write(mirror.join("HEAD"), "ref: refs/heads/main\n").expect("write HEAD");
        if let Some(user) = build_user() {
            for dir in [&workspace, &workspace.join("home"), &workspace.join("tmp")] {
                std::os::unix::fs::lchown(dir, Some(user.uid), Some(user.gid)).expect("chown");
            }
        }
        Fixture {
            _root: root,
            data,
            mirror,
            workspace,
        }
    }

    fn spec(&self, mode: SandboxMode, command: &str) -> StepSpec {
        StepSpec {
            mode,
            command: command.to_owned(),
            cwd: self.workspace.clone(),
            env: vec![
                (
                    "PATH".into(),
                    "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into(),
                ),
                (
                    "HOME".into(),
                    self.workspace.join("home").display().to_string(),
                ),
                (
                    "TMPDIR".into(),
                    match mode {
                        SandboxMode::Bwrap => "/tmp".into(),
                        SandboxMode::None => self.workspace.join("tmp").display().to_string(),
                    },
                ),
                ("KILN_TEST_SECRET".into(), "s3cr3t-value".into()),
            ],
            workspace: self.workspace.clone(),
            hidden: vec![self.data.clone()],
            read_only: vec![self.mirror.clone()],
            user: build_user(),
            scope: None,
        }
    }
}

/// Reads both pipes to EOF while waiting; fails if EOF does not come (a leftover process holds a pipe).
async fn collect(step: &mut Step) -> (ExitStatus, String, String) {
    let (mut stdout, mut stderr) = step.take_output().expect("output not taken yet");
    let (mut out, mut err) = (String::new(), String::new());
    let (out_read, err_read, status) = tokio::time::timeout(DEADLINE, async {
        tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err),
            step.wait()
        )
    })
    .await
    .expect("the step's output reaches EOF and wait returns");
    out_read.expect("read stdout");
    err_read.expect("read stderr");
    (status.expect("wait"), out, err)
}

async fn run(spec: &StepSpec) -> (ExitStatus, String, String) {
    collect(&mut Step::spawn(spec).expect("spawn")).await
}

/// A `sleep` argument no other process on the machine has: `1000.<random digits>` seconds.
fn marker() -> String {
    format!("1000.{:09}", rand::random::<u32>() % 1_000_000_000)
}

/// Live `sleep` processes whose command line contains `marker` (zombies have an empty command line).
fn sleepers(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for process in procfs::processes().expect("list /proc") {
        let comm =
            std::fs::read_to_string(format!("/proc/{}/comm", process.pid)).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", process.pid)).unwrap_or_default();
        if comm.trim() == "sleep" && String::from_utf8_lossy(&cmdline).contains(marker) {
            found.push(process.pid);
        }
    }
    found
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A background job, a setsid daemon and a double-forked setsid daemon, each `sleep <marker>`.
fn background_jobs(marker: &str) -> String {
    format!("sleep {marker} &\nsetsid sleep {marker} &\nsetsid sh -c 'sleep {marker} &' &\n")
}

#[tokio::test]
async fn exit_code_and_both_output_streams() {
    let fixture = Fixture::new();
    for mode in modes() {
        let (status, out, err) = run(&fixture.spec(mode, "echo out; echo err >&2; exit 3")).await;
        assert_eq!(status.code(), Some(3), "{mode}");
        assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"), "{mode}");
    }
}

#[tokio::test]
async fn the_environment_is_exactly_the_spec_and_not_on_any_command_line() {
    let fixture = Fixture::new();
    for mode in modes() {
        let (status, out, _) = run(&fixture.spec(mode, "env")).await;
        assert!(status.success(), "{mode}");
        let mut names: Vec<&str> = out
            .lines()
            .filter_map(|line| line.split('=').next())
            .collect();
        names.retain(|name| !["PWD", "OLDPWD", "SHLVL", "_"].contains(name));
        names.sort_unstable();
        assert_eq!(
            names,
            ["HOME", "KILN_TEST_SECRET", "PATH", "TMPDIR"],
            "{mode}: {out}"
        );
        assert!(out.contains("KILN_TEST_SECRET=s3cr3t-value"), "{mode}");
    }
    let spec = fixture.spec(SandboxMode::Bwrap, "true");
    let paths = Paths::resolve(&spec, true).expect("paths");
    let argv = ["sh", "-c", spec.command.as_str()]
        .map(OsString::from)
        .into();
    let args = bwrap_args_for(&paths, &paths.cwd, argv, None);
    assert!(
        !args
            .iter()
            .any(|arg| arg.to_string_lossy().contains("s3cr3t"))
    );
}

#[tokio::test]
async fn leftover_processes_die_when_sh_exits() {
    let fixture = Fixture::new();
    for mode in modes() {
        let marker = marker();
        let go = fixture.workspace.join("go");
        let _ = std::fs::remove_file(&go);
        let script = format!(
            "{}while [ ! -e go ]; do sleep 0.01; done\necho done",
            background_jobs(&marker)
        );
        let mut step = Step::spawn(&fixture.spec(mode, &script)).expect("spawn");
        wait_for("3 background sleeps", || sleepers(&marker).len() == 3).await;
        std::fs::write(&go, "").expect("write go");
        let (status, out, _) = collect(&mut step).await;
        assert!(status.success(), "{mode}");
        assert_eq!(out, "done\n", "{mode}");
        wait_for("the background sleeps to be gone", || {
            sleepers(&marker).is_empty()
        })
        .await;
    }
}

#[tokio::test]
async fn terminate_kills_daemons_and_term_ignorers_after_the_grace() {
    let fixture = Fixture::new();
    let grace = Duration::from_secs(1);
    for mode in modes() {
        let marker = marker();
        let script = format!(
            "{}setsid sh -c 'trap \"\" TERM; exec sleep {marker}' &\nsleep {marker}\n",
            background_jobs(&marker)
        );
        let mut step = Step::spawn(&fixture.spec(mode, &script)).expect("spawn");
        wait_for("5 sleeps", || sleepers(&marker).len() == 5).await;
        let started = Instant::now();
        step.terminate(grace).await.expect("terminate");
        let elapsed = started.elapsed();
        assert!(
            sleepers(&marker).is_empty(),
            "{mode}: survivors {:?}",
            sleepers(&marker)
        );
        assert!(
            elapsed < grace + Duration::from_secs(5),
            "{mode}: took {elapsed:?}"
        );
        if mode == SandboxMode::None {
            // The TERM-ignoring daemon outlives SIGTERM, so the grace is honoured in full.
            assert!(elapsed >= grace, "{mode}: took {elapsed:?}");
        }
        let (status, _, _) = collect(&mut step).await;
        assert!(!status.success(), "{mode}");
    }
}

#[tokio::test]
async fn terminate_does_not_wait_for_the_grace_when_everything_exits_on_term() {
    let fixture = Fixture::new();
    let grace = Duration::from_secs(60);
    for mode in modes() {
        let marker = marker();
        let script = format!("{}sleep {marker}\n", background_jobs(&marker));
        let mut step = Step::spawn(&fixture.spec(mode, &script)).expect("spawn");
        wait_for("4 sleeps", || sleepers(&marker).len() == 4).await;
        let started = Instant::now();
        step.terminate(grace).await.expect("terminate");
        assert!(started.elapsed() < grace, "{mode}");
        assert!(sleepers(&marker).is_empty(), "{mode}");

        // Right after spawn, before the command (or bwrap's sandbox) is even up.
        let mut step = Step::spawn(&fixture.spec(mode, &script)).expect("spawn");
        let started = Instant::now();
        step.terminate(grace).await.expect("terminate");
        assert!(started.elapsed() < grace, "{mode}");
        wait_for("no sleeps", || sleepers(&marker).is_empty()).await;
    }
}

#[tokio::test]
async fn dropping_a_step_kills_it() {
    let fixture = Fixture::new();
    for mode in modes() {
        let marker = marker();
        let script = format!("{}sleep {marker}\n", background_jobs(&marker));
        let step = Step::spawn(&fixture.spec(mode, &script)).expect("spawn");
        wait_for("4 sleeps", || sleepers(&marker).len() == 4).await;
        drop(step);
        wait_for("the sleeps to be gone", || sleepers(&marker).is_empty()).await;
    }
}

#[tokio::test]
async fn process_group_fallback_without_cgroup() {
    let fixture = Fixture::new();
    for mode in modes() {
        let spec = fixture.spec(mode, "echo out; echo err >&2; exit 3");
        let (status, out, err) =
            collect(&mut Step::spawn_in(&spec, None, false).expect("spawn")).await;
        assert_eq!(
            (status.code(), out.as_str(), err.as_str()),
            (Some(3), "out\n", "err\n")
        );

        // A plain background job (same process group) dies with sh; setsid daemons only in bwrap mode.
        let marker = marker();
        let script = match mode {
            SandboxMode::None => format!("sleep {marker} &\nsleep {marker} &\n"),
            SandboxMode::Bwrap => background_jobs(&marker),
        };
        let mut step = Step::spawn_in(&fixture.spec(mode, &script), None, false).expect("spawn");
        let (status, _, _) = collect(&mut step).await;
        assert!(status.success(), "{mode}");
        wait_for("the background sleeps to be gone", || {
            sleepers(&marker).is_empty()
        })
        .await;

        let mut step = Step::spawn_in(&fixture.spec(mode, &format!("sleep {marker}")), None, false)
            .expect("spawn");
        wait_for("the sleep", || sleepers(&marker).len() == 1).await;
        step.terminate(Duration::from_secs(60))
            .await
            .expect("terminate");
        assert!(sleepers(&marker).is_empty(), "{mode}");
    }
}

#[tokio::test]
async fn bwrap_hides_the_data_dir_and_keeps_the_host_safe() {
    if !modes().contains(&SandboxMode::Bwrap) {
        return;
    }
    let fixture = Fixture::new();
    let check = |command: String| {
        let spec = fixture.spec(SandboxMode::Bwrap, &command);
        async move { run(&spec).await }
    };
    let data = fixture.data.display();
    let (status, _, _) = check(format!("cat {data}/secret.key")).await;
    assert!(!status.success(), "the data dir is hidden");
    let (status, _, _) = check(format!("umount {data}; cat {data}/secret.key")).await;
    assert!(
        !status.success(),
        "root without capabilities cannot unmount the cover"
    );

    let (status, out, _) = check("echo hi > made-inside && cat made-inside".into()).await;
    assert!(
        status.success() && out == "hi\n",
        "the workspace is writable"
    );
    assert_eq!(
        std::fs::read_to_string(fixture.workspace.join("made-inside")).expect("read"),
        "hi\n"
    );

    let mirror = fixture.mirror.display();
    let (status, out, _) = check(format!("cat {mirror}/HEAD")).await;
    assert!(
        status.success() && out.starts_with("ref: "),
        "the mirror is readable"
    );
    let (status, _, _) = check(format!("echo evil > {mirror}/HEAD")).await;
    assert!(!status.success(), "the mirror is read-only");

    // Hidden files (e.g. a database elsewhere) read as empty; a hidden directory inside a read-only
    // one is covered too.
    let private = fixture.data.parent().expect("root").join("elsewhere.db");
    std::fs::write(&private, "DATABASE").expect("write");
    let inner = fixture.mirror.join("private");
    std::fs::create_dir_all(&inner).expect("mkdir");
    std::fs::write(inner.join("x"), "INNER").expect("write");
    let mut spec = fixture.spec(
        SandboxMode::Bwrap,
        &format!(
            "cat {} {}/x; ls {mirror} | grep -c HEAD",
            private.display(),
            inner.display()
        ),
    );
    spec.hidden
        .extend([private.clone(), inner.clone(), fixture.data.join("missing")]);
    let (status, out, _) = run(&spec).await;
    assert!(!out.contains("DATABASE") && !out.contains("INNER"), "{out}");
    assert!(
        out.ends_with("1\n"),
        "the rest of the mirror is visible: {status:?} {out}"
    );
    let (status, _, _) = check("echo evil > /usr/kiln-test".into()).await;
    assert!(!status.success(), "the host is read-only");
    assert!(!Path::new("/usr/kiln-test").exists());

    let host_file = tempfile::NamedTempFile::new_in("/tmp").expect("host tmp file");
    let inside = format!("/tmp/kiln-sandbox-inside-{}", marker());
    let command = format!(
        "test ! -e {} && echo x > {inside}",
        host_file.path().display()
    );
    let (status, _, _) = check(command).await;
    assert!(
        status.success(),
        "host /tmp is invisible and the private /tmp writable"
    );
    assert!(
        !Path::new(&inside).exists(),
        "the private /tmp stays private"
    );

    let (status, out, _) = check("ls /proc | grep -c '^[0-9]'".into()).await;
    let pids: usize = out.trim().parse().expect("a count");
    assert!(
        status.success() && pids < 10,
        "private PID namespace, saw {pids} pids"
    );

    let (status, out, _) = check("readlink /proc/self/ns/net".into()).await;
    let host_net = std::fs::read_link("/proc/self/ns/net").expect("readlink");
    assert!(status.success(), "readlink");
    assert_eq!(
        out.trim(),
        host_net.to_string_lossy(),
        "the network is shared with the host"
    );
}

#[test]
fn parses_and_prints_modes() {
    for mode in [SandboxMode::Bwrap, SandboxMode::None] {
        assert_eq!(mode.to_string().parse::<SandboxMode>(), Ok(mode));
    }
    assert!("docker".parse::<SandboxMode>().is_err());
}

#[tokio::test]
async fn rejects_a_cwd_outside_the_workspace() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec(SandboxMode::None, "true");
    spec.cwd = fixture.data.clone();
    let error = Step::spawn(&spec).expect_err("cwd outside the workspace");
    assert!(
        format!("{error:#}").contains("outside the workspace"),
        "{error:#}"
    );
}

#[tokio::test]
async fn a_held_step_runs_nothing_until_released_then_runs_in_its_directory() {
    let fixture = Fixture::new();
    for mode in modes() {
        let marker = marker();
        let mut spec = fixture.spec(mode, "ignored");
        // The working directory does not exist yet when the step is spawned (it comes with the checkout).
        spec.cwd = spec.workspace.join(format!("later-{marker}"));
        let mut step = Step::spawn_held(&spec).expect("spawn held");
        std::fs::create_dir_all(&spec.cwd).expect("create cwd");
        let command = format!("pwd; echo \"multi\nline\"; sleep {marker} & wait");
        // Nothing of the command runs before the release.
        assert!(sleepers(&marker).is_empty(), "{mode}");
        step.release(&command).await.expect("release");
        wait_for("the sleep", || sleepers(&marker).len() == 1).await;
        step.terminate(Duration::from_secs(1))
            .await
            .expect("terminate");
        let (_, out, _) = collect(&mut step).await;
        assert!(
            out.starts_with(&format!(
                "{}\n",
                spec.cwd.canonicalize().expect("cwd").display()
            )),
            "{mode}: {out}"
        );
        assert!(out.contains("multi\nline\n"), "{mode}: {out}");
        assert!(sleepers(&marker).is_empty(), "{mode}");

        // Dropped without a release: nothing ran, nothing is left.
        let step = Step::spawn_held(&spec).expect("spawn held");
        drop(step);
        assert!(sleepers(&marker).is_empty(), "{mode}");
        assert!(
            Step::spawn_held(&{
                let mut bad = fixture.spec(mode, "x");
                bad.cwd = bad.workspace.join("../escape");
                bad
            })
            .is_err()
        );
    }
}

#[tokio::test]
async fn steps_run_as_the_build_user_and_cannot_touch_what_is_not_theirs() {
    if !is_root() {
        eprintln!("not root: steps run as the test's own user, nothing to drop");
        return;
    }
    let fixture = Fixture::new();
    // A root-only file outside /tmp (bwrap gives steps a private /tmp) and outside the data dir.
    let private = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    set_mode(private.path(), 0o755);
    let key = private.path().join("app-private-key.pem");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----").expect("write key");
    set_mode(&key, 0o600);
    let user = TEST_BUILD_USER;
    for mode in modes() {
        let check = |command: String| {
            let spec = fixture.spec(mode, &command);
            async move { run(&spec).await }
        };
        let (status, out, err) = check("id -u; id -g; id -G".into()).await;
        assert!(status.success(), "{mode}: {err}");
        let (uid, gid) = (user.uid, user.gid);
        assert_eq!(out, format!("{uid}\n{gid}\n{gid}\n"), "{mode}");

        for command in [format!("cat {}", key.display()), "cat /etc/shadow".into()] {
            let (status, out, _) = check(command.clone()).await;
            assert!(
                !status.success() && out.is_empty(),
                "{mode}: {command} read {out}"
            );
        }
        let probe = PathBuf::from(format!("/etc/kiln-probe-{}", rand::random::<u32>()));
        let (status, _, _) = check(format!("echo x > {}", probe.display())).await;
        assert!(
            !status.success() && !probe.exists(),
            "{mode}: wrote {probe:?}"
        );
        let next_to_key = fixture.data.join("probe");
        let (status, _, _) = check(format!("echo x > {}", next_to_key.display())).await;
        assert!(!status.success(), "{mode}: wrote into the data dir");
        assert!(!next_to_key.exists(), "{mode}");
        let (status, _, _) = check(format!("cat {}/secret.key", fixture.data.display())).await;
        assert!(!status.success(), "{mode}: read the secret key");

        // Kiln (this test process) cannot be signalled: a delivered TERM would end the test run.
        let (status, _, _) = check(format!("kill -TERM {}", std::process::id())).await;
        assert!(!status.success(), "{mode}: signalled Kiln");

        let (status, out, err) = check(
            "echo w > in-workspace && echo h > \"$HOME/in-home\" && echo t > \"$TMPDIR/in-tmp\" \
             && cat in-workspace \"$HOME/in-home\" \"$TMPDIR/in-tmp\""
                .into(),
        )
        .await;
        assert!(status.success(), "{mode}: {err}");
        assert_eq!(out, "w\nh\nt\n", "{mode}");
        use std::os::unix::fs::MetadataExt;
        let made = std::fs::metadata(fixture.workspace.join("in-workspace")).expect("stat");
        assert_eq!((made.uid(), made.gid()), (uid, gid), "{mode}");
        std::fs::remove_file(fixture.workspace.join("in-workspace")).expect("rm");
    }
}

/// A scope with small limits: every step of it is held by its build's cgroups.
fn small_scope(processes: u64, memory: u64) -> std::sync::Arc<BuildScope> {
    std::sync::Arc::new(BuildScope::create(
        &format!("test-{}", marker()),
        BuildLimits {
            memory_bytes: memory,
            processes,
            disk_bytes: 64 << 20,
            tmp_bytes: 4 << 20,
            shm_bytes: 2 << 20,
        },
    ))
}

#[tokio::test]
async fn a_build_scope_limits_processes_and_memory_in_both_modes() {
    let fixture = Fixture::new();
    let probe = small_scope(16, 64 << 20);
    let support = probe.support();
    probe.close();
    if !is_root() || !support.pids || !support.memory {
        eprintln!("no cgroup limits here ({support:?}): nothing to test");
        return;
    }
    // As root, not the shared test build user: its RLIMIT_NPROC counts the processes of every test
    // running as that user (each build slot has its own user in Kiln).
    for mode in modes() {
        let scope = small_scope(16, 64 << 20);
        let mut spec = fixture.spec(
            mode,
            "i=0; while [ $i -lt 40 ]; do sleep 2 & i=$((i+1)); done; wait",
        );
        spec.scope = Some(scope.clone());
        spec.user = None;
        let _ = run(&spec).await;
        assert_eq!(scope.exceeded(), Some(Exceeded::Processes(16)), "{mode}");
        scope.close();

        let scope = small_scope(64, 32 << 20);
        let mut spec = fixture.spec(
            mode,
            "awk 'BEGIN { s = \"x\"; while (length(s) < 256 * 1024 * 1024) s = s s; print length(s) }'",
        );
        spec.scope = Some(scope.clone());
        spec.user = None;
        let (status, out, _) = run(&spec).await;
        assert!(!status.success(), "{mode}: {out}");
        assert_eq!(scope.exceeded(), Some(Exceeded::Memory(32 << 20)), "{mode}");
        scope.close();
    }
}

#[tokio::test]
async fn a_full_sandbox_tmpfs_is_reported() {
    if !modes().contains(&SandboxMode::Bwrap) {
        return;
    }
    let fixture = Fixture::new();
    for (target, want) in [
        ("/tmp", Exceeded::Tmp(4 << 20)),
        ("/dev/shm", Exceeded::Shm(2 << 20)),
    ] {
        let scope = small_scope(64, 256 << 20);
        let mut spec = fixture.spec(
            SandboxMode::Bwrap,
            &format!("dd if=/dev/zero of={target}/fill bs=64k count=256"),
        );
        spec.scope = Some(scope.clone());
        let mut step = Step::spawn_held(&spec).expect("spawn");
        step.release(&spec.command).await.expect("release");
        let (status, _, err) = collect(&mut step).await;
        assert!(!status.success(), "{target}: {err}");
        assert_eq!(step.full_tmpfs(), Some(want), "{target}: {err}");
        scope.close();
    }
    // Not full: nothing to report.
    let scope = small_scope(64, 256 << 20);
    let mut spec = fixture.spec(SandboxMode::Bwrap, "echo small > /tmp/x; exit 1");
    spec.scope = Some(scope.clone());
    let mut step = Step::spawn_held(&spec).expect("spawn");
    step.release(&spec.command).await.expect("release");
    collect(&mut step).await;
    assert_eq!(step.full_tmpfs(), None);
    scope.close();
}

#[test]
fn limit_lines_name_the_limit_as_configured() {
    assert_eq!(
        Exceeded::Memory(8 << 30).to_string(),
        "Build was stopped: it exceeded its memory limit of 8 GiB"
    );
    assert_eq!(
        Exceeded::Processes(1024).to_string(),
        "Build was stopped: it exceeded its process limit of 1024"
    );
    assert_eq!(
        Exceeded::Tmp(1536 << 20).to_string(),
        "Build was stopped: it exceeded its /tmp size limit of 1536 MiB"
    );
    assert_eq!(format_bytes(1000), "1000 bytes");
}
