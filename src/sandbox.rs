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
use cgroup::Cgroup;
pub use user::{
    BuildUser, BuildUserLease, BuildUserPool, BuildUserSpec, DEFAULT_BUILD_USER, InvalidBuildUser,
};

/// The shell that moves a step into its cgroup before exec'ing it.
const SHELL: &str = "/bin/sh";
/// `$1`: the cgroup's `cgroup.procs`; the rest: the step's program and arguments. It runs as Kiln's
/// user (only root may write `cgroup.procs`); the program is `setpriv` when the step drops privileges.
const JOIN_CGROUP_SCRIPT: &str = "echo 0 > \"$1\" || { echo 'kiln: could not join the build step cgroup' >&2; exit 125; }; shift; exec \"$@\"";
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
    /// Set once every process of the step is gone and its cgroup removed.
    finished: bool,
}

impl Step {
    /// Starts the step with stdin from `/dev/null` and stdout and stderr piped (see [`Step::take_output`]).
    ///
    /// In bwrap mode a sandbox setup error (e.g. a path bwrap cannot mount) shows up as exit status 1
    /// with bwrap's message on stderr.
    pub fn spawn(spec: &StepSpec) -> anyhow::Result<Step> {
        // In bwrap mode the PID namespace is what guarantees that nothing survives: the kernel kills
        // every process in it when its init ends. A cgroup would add nothing but its cost: moving a
        // process into a cgroup waits for an RCU grace period (10-20 ms here), which is most of the
        // start-up time of a step.
        Self::spawn_mode(spec, false)
    }

    /// Like [`Step::spawn`], but the command is given later, to [`Step::release`]: the process and its
    /// sandbox start now (`spec.command` is ignored, `spec.cwd` need not exist yet), so that their
    /// set-up overlaps whatever the caller does meanwhile, such as checking the commit out. Until it
    /// is released the step runs nothing of the build.
    pub fn spawn_held(spec: &StepSpec) -> anyhow::Result<Step> {
        Self::spawn_mode(spec, true)
    }

    /// Gives a held step its command; it then runs in `spec.cwd` as `sh -c <command>`.
    pub async fn release(&mut self, command: &str) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
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
        if spec.mode == SandboxMode::Bwrap {
            return Self::spawn_in(spec, None, held);
        }
        let cgroup = match Cgroup::create() {
            Ok(cgroup) => Some(cgroup),
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
        let mut argv: Vec<OsString> = match spec.mode {
            SandboxMode::Bwrap => {
                let bwrap = bwrap_path().context("bwrap is not installed")?;
                std::iter::once(bwrap.into())
                    .chain(bwrap_args_for(&paths, dir, argv))
                    .collect()
            }
            SandboxMode::None => argv,
        };
        if let Some(user) = &spec.user {
            // bwrap sets no_new_privs itself (and a set-uid bwrap would need the privileges).
            let prefix = user.setpriv_prefix(spec.mode == SandboxMode::None)?;
            argv.splice(0..0, prefix);
        }
        let mut argv = argv.into_iter();
        let program = argv.next().context("an empty command line")?;
        let args: Vec<OsString> = argv.collect();
        // The step joins its cgroup before anything of it runs: a small `sh` moves itself in, then
        // execs the step (same pid). Doing it in a `pre_exec` hook would force a full fork() of Kiln,
        // which costs 10-25 ms in a busy server; without one, std spawns with posix_spawn.
        let mut command = match &cgroup {
            Some(cgroup) => {
                let mut c = Command::new(SHELL);
                c.args(["-c", JOIN_CGROUP_SCRIPT, "kiln-step"])
                    .arg(cgroup.procs_path())
                    .arg(program)
                    .args(args);
                c
            }
            None => {
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
            finished: false,
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
        self.term_snapshot()
    }

    fn term_snapshot(&self) -> anyhow::Result<bool> {
        let mut targets = self
            .cgroup
            .as_ref()
            .map(Cgroup::pids)
            .transpose()?
            .unwrap_or_default();
        match self.mode {
            SandboxMode::None if self.cgroup.is_none() => signal_group(self.pid, libc::SIGTERM),
            SandboxMode::None => {}
            SandboxMode::Bwrap => {
                // Never TERM bwrap itself: bwrap dying kills the whole namespace at once.
                let Some((init, namespace)) =
                    procfs::sandbox_init(self.pid).context("looking for the sandbox's init")?
                else {
                    return Ok(false);
                };
                let in_namespace =
                    procfs::pids_in_namespace(&namespace).context("listing the sandbox's pids")?;
                if in_namespace.iter().all(|&pid| pid == init) {
                    // bwrap's init has not started the command yet.
                    return Ok(false);
                }
                targets.extend(in_namespace);
                targets.retain(|&pid| pid != self.pid && pid != init);
            }
        }
        targets.sort_unstable();
        targets.dedup();
        for pid in targets {
            signal(pid, libc::SIGTERM);
        }
        Ok(true)
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
            // The namespace's init exits only once the kernel has killed and reaped everything else
            // in the namespace, so the step is gone when bwrap and the init it had are.
            (None, SandboxMode::Bwrap) => match self.init {
                Some(init) => matches!(procfs::state(init), None | Some('Z' | 'X')),
                None => true,
            },
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
                    if let Ok(Some((init, _))) = procfs::sandbox_init(self.pid) {
                        self.init = Some(init);
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

/// Cleans up after Kiln processes that died without stopping their builds: removes their leftover
/// step cgroups (killing what still runs in them). Returns how many were removed.
pub fn remove_orphaned_cgroups() -> usize {
    cgroup::remove_orphans()
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
