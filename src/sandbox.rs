//! Running one build step command (`sh -c <command>`) as a child process: isolated, and killable as a
//! whole.
//!
//! **Isolation.** In [`SandboxMode::Bwrap`] the step runs under bubblewrap: the host filesystem read-only,
//! a private `/tmp`, `/dev` and `/proc`, the [`StepSpec::hidden`] directories replaced by empty tmpfs,
//! the workspace writable, private PID, IPC and UTS namespaces, all capabilities dropped (the step
//! cannot unmount what hides the data dir or remount `/` read-write), the network shared with the
//! host. [`SandboxMode::None`] runs the command directly, with Kiln's view of the machine.
//!
//! **User.** With [`StepSpec::user`] (Kiln runs as root) the step runs as that unprivileged uid and
//! gid in both modes: `setpriv` drops the privileges right before `bwrap` or `sh` is exec'd (see
//! [`user`]), so bwrap builds its sandbox in a user namespace of its own, and the step cannot read
//! root-only files, write the host or signal Kiln. Without one it runs as Kiln's own user.
//!
//! **Killing.** Every process a step starts dies with it, including background jobs and daemons that
//! called `setsid` or double-forked, both when `sh` exits normally (like the hosted product, which
//! destroys the build container) and on [`Step::terminate`]:
//! * bwrap: the step is alone in a PID namespace; when its `sh` exits, or bwrap is killed
//!   (`--die-with-parent`), the kernel kills everything left in the namespace.
//! * cgroup v2 (both modes, when a read-write cgroup2 mount exists): the child joins
//!   `<mount>/kiln/<unique>` before it execs, so every descendant is in that cgroup; TERM goes to the
//!   pids in `cgroup.procs`, KILL through `cgroup.kill`, and the directory is removed afterwards.
//! * fallback (no usable cgroup2): the step's process group. **A daemon that called `setsid` escapes
//!   this in [`SandboxMode::None`]**; a warning is logged once.
//!
//! **Builds.** A step of a build ([`StepSpec::scope`], a [`BuildScope`]) runs in both modes in a
//! cgroup of its own under its build's (`<cgroup2>/kiln/<owner>/<build>/step-<n>`): the build's
//! memory and process limits hold for all its steps together ([`BuildLimits`]), and a node that
//! recovers a lost build, or starts after a Kiln that died, kills whatever of it is left on this
//! host ([`kill_build`], [`kill_orphaned_builds`]). Its leader also dies with the Kiln thread that
//! started it (`PR_SET_PDEATHSIG`, set by `setpriv`; bwrap's `--die-with-parent` in bwrap mode).
//! Each step gets `RLIMIT_FSIZE` at the disk limit and, as a build user, `RLIMIT_NPROC` at the
//! process limit (through `prlimit`); in bwrap mode `/tmp` and `/dev/shm` are tmpfs of the sizes
//! configured.
//!
//! Secrets never appear on a command line: the environment reaches the step through the process
//! environment only.

mod bwrap;
mod cgroup;
mod procfs;
#[cfg(test)]
mod tests;
mod user;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Once;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

use bwrap::{Paths, bwrap_args_for, bwrap_path};
pub use bwrap::{bwrap_available, bwrap_available_as};
pub use cgroup::LimitSupport;
use cgroup::{BuildCgroups, Cgroup};
pub use user::{
    BuildUser, BuildUserLease, BuildUserPool, BuildUserSpec, DEFAULT_BUILD_USER, InvalidBuildUser,
};

/// The shell that moves a step into its cgroups before exec'ing it.
const SHELL: &str = "/bin/sh";
/// `$1`: how many `cgroup.procs` files follow (the build's v1 cgroups, then the step's v2 cgroup);
/// the rest: the step's program and arguments. It runs as Kiln's user (who may write
/// `cgroup.procs`); the program is `prlimit` or `setpriv` when the step gets limits or drops
/// privileges.
const JOIN_CGROUP_SCRIPT: &str = "n=$1; shift; while [ \"$n\" -gt 0 ]; do echo 0 > \"$1\" || { echo 'kiln: could not join the build step cgroup' >&2; exit 125; }; shift; n=$((n - 1)); done; exec \"$@\"";
/// What a held step runs: `$1` is the working directory, the command arrives on stdin.
const HOLD_SCRIPT: &str =
    "command=$(cat) || exit 125; cd -- \"$1\" || exit 125; exec sh -c \"$command\"";

/// Longest we wait for bwrap to stop after SIGSTOP.
const STOP_TIMEOUT: Duration = Duration::from_millis(100);

/// Longest a new step may take to move into its cgroup.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How often we look whether the processes of a step are gone, in milliseconds.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// How long we wait for a step's cgroup to freeze before sending SIGTERM anyway, in milliseconds.
const FREEZE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often we look whether the freeze is complete, in milliseconds.
const FREEZE_POLL_INTERVAL: Duration = Duration::from_millis(1);
/// How long SIGKILLed processes may take to disappear before `wait`/`terminate` report an error, in
/// seconds (a process stuck in uninterruptible I/O cannot die sooner).
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest [`Step::release`] waits for a bwrap sandbox to be set up before it looks at its tmpfs.
const SANDBOX_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`Step::release`] looks whether the sandbox is set up.
const SANDBOX_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// `statfs` type of a tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// A sandbox tmpfs with less free space than this is full (a write that failed for want of space
/// leaves less than one of its buffers); at most a sixteenth of its size for small ones.
const TMPFS_FULL_BELOW: u64 = 1024 * 1024;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Per-build resource limits. The defaults are the hosted product's 8 GB memory and 20 GB disk
/// (PRODUCT-NOTES §2, taken as GiB), 1,024 processes, a 1 GiB `/tmp` and a 256 MiB `/dev/shm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildLimits {
    /// Memory of all the build's processes together (page cache, tmpfs pages and, where the kernel
    /// accounts it, swap included), in bytes. Past it the kernel kills a process of the build.
    pub memory_bytes: u64,
    /// Processes and threads of the build at a time; past it `fork` and `clone` fail.
    pub processes: u64,
    /// Disk used by the build's workspace (checkout, dependencies, caches, `TMPDIR`), in bytes;
    /// also the largest file a step may write (`RLIMIT_FSIZE`).
    pub disk_bytes: u64,
    /// Size of `/tmp` in the bwrap sandbox, in bytes.
    pub tmp_bytes: u64,
    /// Size of `/dev/shm` in the bwrap sandbox, in bytes.
    pub shm_bytes: u64,
}

impl Default for BuildLimits {
    fn default() -> Self {
        BuildLimits {
            memory_bytes: 8 * GIB,
            processes: 1024,
            disk_bytes: 20 * GIB,
            tmp_bytes: GIB,
            shm_bytes: 256 * MIB,
        }
    }
}

/// A limit a build went past; its `Display` is the build's last log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// The kernel killed a process of the build for want of memory (the limit, in bytes).
    Memory(u64),
    /// A `fork` or `clone` of the build failed on its process limit.
    Processes(u64),
    /// The workspace used more disk than allowed (the limit, in bytes).
    Disk(u64),
    /// `/tmp` of the sandbox was full when a step failed (its size, in bytes).
    Tmp(u64),
    /// `/dev/shm` of the sandbox was full when a step failed (its size, in bytes).
    Shm(u64),
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, limit) = match *self {
            Exceeded::Memory(bytes) => ("memory limit", format_bytes(bytes)),
            Exceeded::Processes(count) => ("process limit", count.to_string()),
            Exceeded::Disk(bytes) => ("disk limit", format_bytes(bytes)),
            Exceeded::Tmp(bytes) => ("/tmp size limit", format_bytes(bytes)),
            Exceeded::Shm(bytes) => ("/dev/shm size limit", format_bytes(bytes)),
        };
        write!(f, "Build was stopped: it exceeded its {what} of {limit}")
    }
}

/// `8 GiB`, `512 MiB`, `64 KiB` or `1000 bytes`: the largest binary unit that divides `bytes`, so
/// that the configured number shows as given.
pub fn format_bytes(bytes: u64) -> String {
    for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} bytes")
}

/// The cgroups and limits of one build on this host, shared by its steps ([`StepSpec::scope`]).
/// [`BuildScope::close`] (or, as a fallback, dropping it) kills whatever of the build is left and
/// removes its cgroups.
#[derive(Debug)]
pub struct BuildScope {
    limits: BuildLimits,
    cgroups: BuildCgroups,
    closed: std::sync::atomic::AtomicBool,
}

impl BuildScope {
    /// Creates the cgroups of the build `build` (its id: recovery finds them by it) with `limits`.
    /// Never fails: what cannot be enforced here is logged (see [`limit_support`]). Blocking.
    pub fn create(build: &str, limits: BuildLimits) -> BuildScope {
        BuildScope {
            cgroups: BuildCgroups::create(build, limits.memory_bytes, limits.processes),
            limits,
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The build's limits.
    pub fn limits(&self) -> &BuildLimits {
        &self.limits
    }

    /// What the build's cgroups enforce on this host.
    pub fn support(&self) -> LimitSupport {
        self.cgroups.support()
    }

    /// The cgroup limit the build went past so far, if any: the kernel killed one of its processes
    /// for want of memory, or one of its forks failed on the process limit.
    pub fn exceeded(&self) -> Option<Exceeded> {
        if self.cgroups.oom_kills() > 0 {
            return Some(Exceeded::Memory(self.limits.memory_bytes));
        }
        if self.cgroups.pids_hits() > 0 {
            return Some(Exceeded::Processes(self.limits.processes));
        }
        None
    }

    /// Kills every process of the build that is left, waits for them to go and removes the cgroups.
    /// Idempotent. Blocking (up to the time killed processes take to die).
    pub fn close(&self) {
        if !self.closed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.cgroups.kill_and_remove(cgroup::KILL_WAIT);
        }
    }
}

impl Drop for BuildScope {
    fn drop(&mut self) {
        if !self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            // Killed processes leave their cgroups asynchronously: wait for them off this thread.
            let cgroups = std::mem::replace(&mut self.cgroups, BuildCgroups::empty());
            std::thread::spawn(move || cgroups.kill_and_remove(cgroup::KILL_WAIT));
        }
    }
}

/// What per-build limits this host can enforce with the cgroups Kiln can create: found by making
/// (and removing) a build scope. Blocking.
pub fn limit_support(limits: BuildLimits) -> LimitSupport {
    let probe = BuildScope::create(&format!("probe-{:08x}", rand::random::<u32>()), limits);
    let support = probe.support();
    probe.close();
    support
}

/// Kills what is left of the build `build` on this host, whichever Kiln process ran it (a node that
/// declares a build lost calls it); returns how many of its cgroups were found. Blocking.
pub fn kill_build(build: &str) -> usize {
    cgroup::kill_build(build)
}

/// Kills and removes what Kiln processes that no longer run (a crash, `kill -9`) left on this host:
/// the processes of their builds' steps and their cgroups. Returns how many dead Kiln processes'
/// cgroups were removed. Blocking.
pub fn kill_orphaned_builds() -> usize {
    cgroup::kill_orphans()
}

/// How a step is isolated from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxMode {
    /// bubblewrap (`bwrap`): read-only host, hidden data dir, private `/tmp` and PID namespace.
    Bwrap,
    /// No isolation: the command runs as Kiln's user with Kiln's view of the machine.
    None,
}

/// A sandbox mode name that is neither `bwrap` nor `none`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sandbox mode {0:?}: expected \"bwrap\" or \"none\"")]
pub struct UnknownSandboxMode(pub String);

impl std::str::FromStr for SandboxMode {
    type Err = UnknownSandboxMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "bwrap" => Ok(SandboxMode::Bwrap),
            "none" => Ok(SandboxMode::None),
            other => Err(UnknownSandboxMode(other.to_owned())),
        }
    }
}

impl std::fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SandboxMode::Bwrap => "bwrap",
            SandboxMode::None => "none",
        })
    }
}

/// What to run and what it may see. All paths must be absolute and exist.
#[derive(Debug, Clone)]
pub struct StepSpec {
    pub mode: SandboxMode,
    /// Run as `sh -c <command>`.
    pub command: String,
    /// Working directory; must be inside `workspace`.
    pub cwd: PathBuf,
    /// The complete environment of the step (nothing is inherited from Kiln); include `HOME` and `PATH`.
    pub env: Vec<(String, String)>,
    /// Writable inside the sandbox, even when it lies under a hidden directory.
    pub workspace: PathBuf,
    /// Paths hidden inside the sandbox: a directory is replaced by an empty tmpfs (e.g. the data dir
    /// with the database, the secret key and other builds), a file by an empty one (e.g. a database
    /// or key file elsewhere); paths that do not exist are left alone. Bwrap mode only.
    pub hidden: Vec<PathBuf>,
    /// Re-exposed read-only after hiding and after the workspace (e.g. this repository's git mirror
    /// under the data dir). Bwrap mode only.
    pub read_only: Vec<PathBuf>,
    /// Run as this unprivileged user (Kiln must be root); `None`: as Kiln's own user. It needs
    /// `workspace` (owned by it) and, in bwrap mode, the `read_only` paths within its reach.
    pub user: Option<BuildUser>,
    /// The build the step belongs to: its cgroups and limits. `None`: a step of its own, without
    /// limits (a standalone cgroup in none mode, the PID namespace alone in bwrap mode).
    pub scope: Option<std::sync::Arc<BuildScope>>,
}

/// A running step. Dropping it kills every process of the step (without waiting for them).
#[derive(Debug)]
pub struct Step {
    child: Child,
    mode: SandboxMode,
    /// Pid of the direct child (`sh`, or `bwrap`), which is also its process group id.
    pid: i32,
    cgroup: Option<Cgroup>,
    output: Option<(ChildStdout, ChildStderr)>,
    /// A held step's stdin, where its command goes (see [`Step::spawn_held`]).
    stdin: Option<ChildStdin>,
    /// bwrap mode: the init of the sandbox's PID namespace (host pid), once known.
    init: Option<i32>,
    /// bwrap mode: the sandbox's PID namespace, once known.
    namespace: Option<OsString>,
    /// Set once every process of the step is gone and its cgroup removed.
    finished: bool,
    /// bwrap mode with limits: the sizes of the sandbox's `/tmp` and `/dev/shm`, whose fill is
    /// looked at when the step fails.
    tmpfs_sizes: Option<(u64, u64)>,
    /// The sandbox's `/tmp` and `/dev/shm`, opened once the sandbox is set up (an open directory keeps
    /// its tmpfs readable after the sandbox is gone).
    tmpfs: Vec<(Exceeded, std::os::fd::OwnedFd)>,
}

impl Step {
    /// Starts the step with stdin from `/dev/null` and stdout and stderr piped (see [`Step::take_output`]).
    ///
    /// The step's leader is SIGKILLed when the thread that calls this ends (`PR_SET_PDEATHSIG` in
    /// none mode, bwrap's `--die-with-parent`), so that it dies with Kiln: call it from a thread that
    /// lives as long as the step (an async runtime's worker), never from a blocking-pool thread.
    ///
    /// In bwrap mode a sandbox setup error (e.g. a path bwrap cannot mount) shows up as exit status 1
    /// with bwrap's message on stderr.
    pub fn spawn(spec: &StepSpec) -> anyhow::Result<Step> {
        // In bwrap mode the PID namespace is what guarantees that nothing survives: the kernel kills
        // every process in it when its init ends. A step outside a build gets no cgroup there, as it
        // would add nothing but its cost (moving a process into a cgroup may wait for an RCU grace
        // period, 10-20 ms in a busy server); a build's steps need theirs for the build's limits.
        Self::spawn_mode(spec, false)
    }

    /// Like [`Step::spawn`], but the command is given later, to [`Step::release`]: the process and its
    /// sandbox start now (`spec.command` is ignored, `spec.cwd` need not exist yet), so that their
    /// set-up overlaps whatever the caller does meanwhile, such as checking the commit out. Until it
    /// is released the step runs nothing of the build.
    pub fn spawn_held(spec: &StepSpec) -> anyhow::Result<Step> {
        Self::spawn_mode(spec, true)
    }

    /// Gives a held step its command; it then runs in `spec.cwd` as `sh -c <command>`. A bwrap
    /// step with tmpfs sizes first waits for its sandbox to be set up, to keep hold of its `/tmp`
    /// and `/dev/shm` (see [`Step::full_tmpfs`]).
    pub async fn release(&mut self, command: &str) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        if self.tmpfs_sizes.is_some() && self.tmpfs.is_empty() {
            self.open_tmpfs().await;
        }
        let mut stdin = self.stdin.take().context("the step is not held")?;
        stdin
            .write_all(command.as_bytes())
            .await
            .context("handing the command to the step")?;
        // End of input: the command starts; its own stdin is at end-of-file.
        drop(stdin);
        Ok(())
    }

    fn spawn_mode(spec: &StepSpec, held: bool) -> anyhow::Result<Step> {
        if spec.mode == SandboxMode::Bwrap && spec.scope.is_none() {
            return Self::spawn_in(spec, None, held);
        }
        let parent = spec
            .scope
            .as_ref()
            .and_then(|scope| scope.cgroups.v2.clone());
        let cgroup = match Cgroup::create_step(parent.as_deref()) {
            Ok(cgroup) => Some(cgroup),
            Err(_) if spec.mode == SandboxMode::Bwrap => None,
            Err(error) => {
                static WARNED: Once = Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "no usable cgroup v2: build steps are killed by process group, so a daemon \
                         that calls setsid can outlive its step in sandbox mode none"
                    )
                });
                None
            }
        };
        Self::spawn_in(spec, cgroup, held)
    }

    /// [`Step::spawn`] with the cgroup chosen by the caller (`None`: process-group fallback).
    fn spawn_in(spec: &StepSpec, cgroup: Option<Cgroup>, held: bool) -> anyhow::Result<Step> {
        let paths = Paths::resolve(spec, !held)?;
        // A held step starts in the workspace and waits for its command on stdin.
        let (argv, dir): (Vec<OsString>, &std::path::Path) = if held {
            let argv = ["sh", "-c", HOLD_SCRIPT, "kiln-step"]
                .map(OsString::from)
                .into_iter()
                .chain([paths.cwd.clone().into_os_string()])
                .collect();
            (argv, &paths.workspace)
        } else {
            let argv = ["sh", "-c", spec.command.as_str()]
                .map(OsString::from)
                .into();
            (argv, &paths.cwd)
        };
        let limits = spec.scope.as_ref().map(|scope| scope.limits);
        let tmpfs_sizes = match (spec.mode, limits) {
            (SandboxMode::Bwrap, Some(limits)) => Some((limits.tmp_bytes, limits.shm_bytes)),
            _ => None,
        };
        let mut argv: Vec<OsString> = match spec.mode {
            SandboxMode::Bwrap => {
                let bwrap = bwrap_path().context("bwrap is not installed")?;
                std::iter::once(bwrap.into())
                    .chain(bwrap_args_for(&paths, dir, argv, tmpfs_sizes))
                    .collect()
            }
            SandboxMode::None => argv,
        };
        // In none mode the leader dies with Kiln (bwrap does that itself: --die-with-parent).
        let pdeathsig = spec.mode == SandboxMode::None;
        match &spec.user {
            Some(user) => {
                // bwrap sets no_new_privs itself (and a set-uid bwrap would need the privileges).
                let prefix = user.setpriv_prefix(spec.mode == SandboxMode::None, pdeathsig)?;
                argv.splice(0..0, prefix);
            }
            None if pdeathsig => match user::pdeathsig_prefix() {
                Some(prefix) => {
                    argv.splice(0..0, prefix);
                }
                None => warn_once(
                    &PDEATHSIG_WARNED,
                    "setpriv (util-linux) is not installed: a build step's leader does not die \
                     with Kiln in sandbox mode none",
                ),
            },
            None => {}
        }
        if let Some(limits) = limits {
            // As root, RLIMIT_NPROC is set before setpriv makes the step the build user, whose
            // processes it then counts (a little above the cgroup's, whose hits are reported).
            let nproc = spec.user.map(|_| limits.processes + NPROC_MARGIN);
            match rlimit_prefix(limits.disk_bytes, nproc) {
                Some(prefix) => {
                    argv.splice(0..0, prefix);
                }
                None => warn_once(
                    &PRLIMIT_WARNED,
                    "prlimit (util-linux) is not installed: build steps get no RLIMIT_FSIZE or \
                     RLIMIT_NPROC",
                ),
            }
        }
        let mut argv = argv.into_iter();
        let program = argv.next().context("an empty command line")?;
        let args: Vec<OsString> = argv.collect();
        // The step joins its cgroups before anything of it runs: a small `sh` moves itself in, then
        // execs the step (same pid). Doing it in a `pre_exec` hook would force a full fork() of Kiln,
        // which costs 10-25 ms in a busy server; without one, std spawns with posix_spawn. The v2
        // cgroup goes last: once it is populated, the step is in all of them.
        let procs: Vec<PathBuf> = spec
            .scope
            .iter()
            .flat_map(|scope| scope.cgroups.v1_procs.iter().cloned())
            .chain(cgroup.as_ref().map(Cgroup::procs_path))
            .collect();
        let mut command = match procs.is_empty() {
            false => {
                let mut c = Command::new(SHELL);
                c.args(["-c", JOIN_CGROUP_SCRIPT, "kiln-step"])
                    .arg(procs.len().to_string())
                    .args(&procs)
                    .arg(program)
                    .args(args);
                c
            }
            true => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        };
        if spec.mode == SandboxMode::None {
            command.current_dir(dir);
        }
        command
            .env_clear()
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .stdin(if held { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting a build step ({} sandbox)", spec.mode))?;
        let pid = child
            .id()
            .context("the step exited before we saw its pid")?;
        if let Some(cgroup) = &cgroup {
            wait_joined(cgroup, &mut child)?;
        }
        let output = child.stdout.take().zip(child.stderr.take());
        let stdin = child.stdin.take();
        Ok(Step {
            child,
            mode: spec.mode,
            pid: i32::try_from(pid).context("pid out of range")?,
            cgroup,
            output,
            stdin,
            init: None,
            namespace: None,
            finished: false,
            tmpfs_sizes,
            tmpfs: Vec::new(),
        })
    }

    /// Waits (at most [`SANDBOX_READY_TIMEOUT`]) until the bwrap sandbox is set up, then opens its
    /// `/tmp` and `/dev/shm` through the init's root, checked to be the tmpfs of the sizes asked
    /// for. Best effort: without them a full tmpfs is not reported.
    async fn open_tmpfs(&mut self) {
        let Some((tmp, shm)) = self.tmpfs_sizes else {
            return;
        };
        let deadline = Instant::now() + SANDBOX_READY_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            // The init starts the command (here the held shell) once the mounts are all made.
            if let Ok(Some((init, namespace))) = procfs::sandbox_init(self.pid)
                && procfs::pids_in_namespace(&namespace)
                    .is_ok_and(|pids| pids.iter().any(|&pid| pid != init))
            {
                let root = PathBuf::from(format!("/proc/{init}/root"));
                let opened: Option<Vec<_>> = [
                    (Exceeded::Tmp(tmp), root.join("tmp"), tmp),
                    (Exceeded::Shm(shm), root.join("dev/shm"), shm),
                ]
                .into_iter()
                .map(|(what, path, size)| open_sized_tmpfs(&path, size).map(|fd| (what, fd)))
                .collect();
                if let Some(opened) = opened {
                    self.tmpfs = opened;
                }
                return;
            }
            tokio::time::sleep(SANDBOX_POLL_INTERVAL).await;
        }
    }

    /// The sandbox tmpfs (`/tmp` or `/dev/shm`) that is full, if any: for a step that failed, the
    /// likely reason. Only known for a step given its command by [`Step::release`].
    pub fn full_tmpfs(&self) -> Option<Exceeded> {
        self.tmpfs.iter().find_map(|(what, fd)| {
            let stat = rustix::fs::fstatfs(fd).ok()?;
            let block = u64::try_from(stat.f_bsize).ok()?;
            let free = stat.f_bavail.saturating_mul(block);
            let size = stat.f_blocks.saturating_mul(block);
            (free < TMPFS_FULL_BELOW.min(size / 16)).then_some(*what)
        })
    }

    /// The step's stdout and stderr; `None` after the first call.
    pub fn take_output(&mut self) -> Option<(ChildStdout, ChildStderr)> {
        self.output.take()
    }

    /// Waits for `sh` to exit, then kills every process of the step that is left, so readers of the
    /// output reach EOF. Returns the exit status of `sh` (in bwrap mode a signal death shows as
    /// exit code 128 + signal). Cancel-safe; may be called again after [`Step::terminate`].
    pub async fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        let status = self
            .child
            .wait()
            .await
            .context("waiting for a build step")?;
        self.finish().await?;
        Ok(status)
    }

    /// Sends SIGTERM to every process of the step, waits until all are gone or `grace` has passed, then
    /// SIGKILLs whatever is left and waits for it to disappear. In bwrap mode the whole step also ends
    /// as soon as its top-level `sh` does (the PID namespace dies with it).
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<()> {
        if self.finished {
            return Ok(());
        }
        if self.send_term().await? {
            let deadline = Instant::now() + grace;
            while !self.all_gone()? && Instant::now() < deadline {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
        self.finish().await
    }

    /// SIGTERMs the step's processes; `false` when nothing of the command runs yet (bwrap still setting
    /// up the sandbox), so there is nothing to be graceful about.
    async fn send_term(&mut self) -> anyhow::Result<bool> {
        // Frozen, no process can fork between our listing the pids and signalling them.
        let _frozen = match &self.cgroup {
            Some(cgroup) => Frozen::freeze(cgroup).await,
            None => None,
        };
        let (sent, namespace) = self.term_snapshot()?;
        if namespace.is_some() {
            self.namespace = namespace;
        }
        Ok(sent)
    }

    /// TERMs the step's processes; also returns the sandbox's PID namespace when it looked it up.
    fn term_snapshot(&self) -> anyhow::Result<(bool, Option<OsString>)> {
        let mut targets = self
            .cgroup
            .as_ref()
            .map(Cgroup::pids)
            .transpose()?
            .unwrap_or_default();
        let mut seen_namespace = None;
        match self.mode {
            SandboxMode::None if self.cgroup.is_none() => signal_group(self.pid, libc::SIGTERM),
            SandboxMode::None => {}
            SandboxMode::Bwrap => {
                // Never TERM bwrap itself: bwrap dying kills the whole namespace at once.
                let Some((init, namespace)) =
                    procfs::sandbox_init(self.pid).context("looking for the sandbox's init")?
                else {
                    return Ok((false, None));
                };
                let in_namespace =
                    procfs::pids_in_namespace(&namespace).context("listing the sandbox's pids")?;
                if in_namespace.iter().all(|&pid| pid == init) {
                    // bwrap's init has not started the command yet.
                    return Ok((false, Some(namespace)));
                }
                targets.extend(in_namespace);
                targets.retain(|&pid| pid != self.pid && pid != init);
                seen_namespace = Some(namespace);
            }
        }
        targets.sort_unstable();
        targets.dedup();
        for pid in targets {
            signal(pid, libc::SIGTERM);
        }
        Ok((true, seen_namespace))
    }

    /// Whether every process of the step has exited (reaping the direct child if it has).
    fn all_gone(&mut self) -> anyhow::Result<bool> {
        if self
            .child
            .try_wait()
            .context("checking a build step")?
            .is_none()
        {
            return Ok(false);
        }
        Ok(match (&self.cgroup, self.mode) {
            (Some(cgroup), _) => !cgroup.populated()?,
            // Once bwrap and the init it had are gone, the kernel has killed everything else in the
            // namespace; a process may still be on its way out, so the namespace, when known, is
            // looked at too.
            (None, SandboxMode::Bwrap) => {
                let init_gone = match self.init {
                    Some(init) => matches!(procfs::state(init), None | Some('Z' | 'X')),
                    None => true,
                };
                init_gone
                    && match &self.namespace {
                        Some(namespace) => !procfs::live_in_namespace(namespace)
                            .context("listing the sandbox's processes")?,
                        None => true,
                    }
            }
            (None, SandboxMode::None) => {
                !procfs::group_alive(self.pid).context("listing processes")?
            }
        })
    }

    /// SIGKILLs everything of the step; errors are ignored (the processes may be gone already).
    fn kill_all(&mut self) {
        match (&self.cgroup, self.mode) {
            (Some(cgroup), _) => {
                if let Err(error) = cgroup.kill() {
                    tracing::warn!(error = format!("{error:#}"), "cgroup.kill failed");
                }
            }
            (None, SandboxMode::None) => signal_group(self.pid, libc::SIGKILL),
            // Killing the namespace's init ends the namespace: the kernel kills everything in it, and
            // bwrap exits once it has reaped the init. bwrap is stopped while we look, so that it cannot
            // create the init between our look and our kill.
            (None, SandboxMode::Bwrap) => {
                if self.child.try_wait().ok().flatten().is_none() {
                    signal(self.pid, libc::SIGSTOP);
                    wait_stopped(self.pid);
                    if let Ok(Some((init, namespace))) = procfs::sandbox_init(self.pid) {
                        self.init = Some(init);
                        self.namespace = Some(namespace);
                        signal(init, libc::SIGKILL);
                        signal(self.pid, libc::SIGCONT);
                        return;
                    }
                }
            }
        }
        // Fails harmlessly when the child has been reaped already.
        let _ = self.child.start_kill();
    }

    /// Kills what is left, waits until it is gone and removes the cgroup. Idempotent.
    async fn finish(&mut self) -> anyhow::Result<()> {
        if self.finished {
            return Ok(());
        }
        let deadline = Instant::now() + KILL_TIMEOUT;
        self.kill_all();
        while !self.all_gone()? {
            if Instant::now() >= deadline {
                bail!("processes of the build step survived SIGKILL for {KILL_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
            // Again, for processes forked meanwhile in a process group (cgroup.kill needs only one).
            self.kill_all();
        }
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove()?;
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.kill_all();
        if let Some(cgroup) = self.cgroup.take() {
            // The killed processes disappear asynchronously; the cgroup can only be removed after.
            std::thread::spawn(move || cgroup.remove_when_empty(KILL_TIMEOUT, POLL_INTERVAL));
        }
    }
}

/// A frozen cgroup, thawed on drop (also when `terminate` is cancelled while freezing).
struct Frozen<'a>(&'a Cgroup);

impl<'a> Frozen<'a> {
    /// Freezes the cgroup and waits (up to [`FREEZE_TIMEOUT`]) until it is; `None` if it cannot.
    async fn freeze(cgroup: &'a Cgroup) -> Option<Frozen<'a>> {
        if let Err(error) = cgroup.set_frozen(true) {
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot freeze a build step's cgroup"
            );
            return None;
        }
        let frozen = Frozen(cgroup);
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        // A process in uninterruptible sleep delays the freeze: after the timeout, signal anyway.
        while !matches!(cgroup.frozen(), Ok(true)) && Instant::now() < deadline {
            tokio::time::sleep(FREEZE_POLL_INTERVAL).await;
        }
        Some(frozen)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Err(error) = self.0.set_frozen(false) {
            // The processes stay frozen until the SIGKILL phase, which works on frozen processes.
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot thaw a build step's cgroup"
            );
        }
    }
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; ESRCH (already gone) is fine.
    unsafe { libc::kill(pid, signal) };
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: as for `signal`; a negative pid addresses the process group.
    unsafe { libc::kill(-pgid, signal) };
}

/// Waits (briefly: the wrapper joins within a millisecond) until the step is in its cgroup, so that
/// a terminate right after spawn cannot miss it. Returns early if the step already exited.
fn wait_joined(cgroup: &Cgroup, child: &mut Child) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + JOIN_TIMEOUT;
    loop {
        if cgroup.populated()? || child.try_wait()?.is_some() {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the build step did not join its cgroup within {JOIN_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// How far above the process limit `RLIMIT_NPROC` is set: bwrap's own processes, and room for the
/// cgroup (whose hits are reported) to strike first.
const NPROC_MARGIN: u64 = 16;

static PDEATHSIG_WARNED: Once = Once::new();
static PRLIMIT_WARNED: Once = Once::new();

fn warn_once(once: &'static Once, message: &'static str) {
    once.call_once(|| tracing::warn!("{message}"));
}

/// `prlimit --fsize=<bytes> [--nproc=<n>] --` (hard and soft), or `None` without `prlimit`.
fn rlimit_prefix(fsize: u64, nproc: Option<u64>) -> Option<Vec<OsString>> {
    static PATH: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let prlimit = PATH
        .get_or_init(|| bwrap::program_on_path("prlimit"))
        .as_ref()?;
    let mut args: Vec<OsString> = vec![prlimit.into(), format!("--fsize={fsize}:{fsize}").into()];
    if let Some(n) = nproc {
        args.push(format!("--nproc={n}:{n}").into());
    }
    args.push("--".into());
    Some(args)
}

/// Opens the directory `path` if it is a tmpfs of `size` bytes (rounded to pages by the kernel).
fn open_sized_tmpfs(path: &std::path::Path, size: u64) -> Option<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let stat = rustix::fs::fstatfs(&fd).ok()?;
    #[allow(clippy::unnecessary_cast)]
    let is_tmpfs = stat.f_type as i64 == TMPFS_MAGIC;
    let block = u64::try_from(stat.f_bsize).ok()?;
    let total = stat.f_blocks.saturating_mul(block);
    (is_tmpfs && total >= size && total < size.saturating_add(block.max(4096))).then_some(fd)
}

/// Waits (at most [`STOP_TIMEOUT`]) until `pid` is stopped or gone after a SIGSTOP.
fn wait_stopped(pid: i32) {
    let deadline = std::time::Instant::now() + STOP_TIMEOUT;
    while matches!(procfs::state(pid), Some(state) if state != 'T' && state != 't')
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_micros(100));
    }
}
