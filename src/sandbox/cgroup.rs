//! Kiln's cgroups: a cgroup v2 directory per step, so that every process of the step can be listed
//! and killed as a whole (`cgroup.kill`) even after it called `setsid` or double-forked; and, per
//! build, the cgroups that hold its resource limits (memory, processes).
//!
//! Layout, `<owner>` being `<pid>-<start time>` of the Kiln process that made it (so that another
//! Kiln on the host can tell a dead owner's cgroups, even once its pid is reused):
//!
//! ```text
//! <cgroup2 mount>/kiln/<owner>/<build uuid>/step-<n>    a step of a build (limits on the build dir
//!                                                        when v2 offers the controllers)
//! <cgroup2 mount>/kiln/<owner>/step-<n>                 a step outside any build (none mode)
//! <v1 memory|pids mount>/<Kiln's own cgroup>/kiln/<owner>/<build uuid>
//!                                                        the build's limits where v2 lacks them
//! ```
//!
//! A step joins its build's v1 cgroups and its own v2 cgroup before anything of it runs.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Directory under each cgroup mount (v2: at its root; v1: under Kiln's own cgroup) that holds
/// Kiln's cgroups.
const KILN_DIR: &str = "kiln";

/// Numbers the steps of this Kiln process so that their cgroup names never collide.
static NEXT_STEP: AtomicU64 = AtomicU64::new(0);

/// A cgroup v2 directory; removed by [`Cgroup::remove`] or, best effort, on drop.
#[derive(Debug)]
pub(super) struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// Creates `<parent>/step-<n>` (the parent: this process's directory under `<cgroup2>/kiln`, or a
    /// build's), which must offer `cgroup.kill` (Linux ≥ 5.14).
    pub(super) fn create_step(parent: Option<&Path>) -> anyhow::Result<Cgroup> {
        let parent = match parent {
            Some(parent) => parent.to_path_buf(),
            None => owner_dir_v2()?,
        };
        let dir = parent.join(format!(
            "step-{}",
            NEXT_STEP.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cgroup = Cgroup { dir };
        anyhow::ensure!(
            cgroup.dir.join("cgroup.kill").exists(),
            "{} has no cgroup.kill (Linux older than 5.14)",
            cgroup.dir.display()
        );
        Ok(cgroup)
    }

    /// `cgroup.procs`: a process that writes "0" to it joins the cgroup.
    pub(super) fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The pids in this cgroup and in any cgroup the step created below it.
    pub(super) fn pids(&self) -> anyhow::Result<Vec<i32>> {
        let mut pids = Vec::new();
        collect_pids(&self.dir, &mut pids)?;
        Ok(pids)
    }

    /// Whether any live process is left in the cgroup or below it.
    pub(super) fn populated(&self) -> anyhow::Result<bool> {
        populated(&self.dir)
    }

    /// Whether every process of the cgroup is frozen (`set_frozen(true)` acts asynchronously).
    pub(super) fn frozen(&self) -> anyhow::Result<bool> {
        event(&self.dir, "cgroup.events", "frozen").map(|n| n == 1)
    }

    /// Freezes or thaws every process of the cgroup. A frozen process cannot fork; signals sent to it
    /// are delivered when it thaws (SIGKILL at once).
    pub(super) fn set_frozen(&self, frozen: bool) -> anyhow::Result<()> {
        let path = self.dir.join("cgroup.freeze");
        let value = if frozen { "1" } else { "0" };
        std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))
    }

    /// SIGKILLs every process of the cgroup and below it, atomically with respect to forks.
    pub(super) fn kill(&self) -> anyhow::Result<()> {
        kill_v2(&self.dir)
    }

    /// Removes the (empty) cgroup and any cgroup the step created below it.
    pub(super) fn remove(&self) -> anyhow::Result<()> {
        remove_tree(&self.dir).with_context(|| format!("removing cgroup {}", self.dir.display()))
    }

    /// For `Drop`: waits up to `timeout` for the killed processes to disappear, then removes the cgroup.
    pub(super) fn remove_when_empty(&self, timeout: Duration, poll: Duration) {
        remove_when_empty(&self.dir, timeout, poll);
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Best effort for early-return paths; `remove` has normally run already (NotFound is ignored).
        let _ = remove_tree(&self.dir);
    }
}

/// How a limit is enforced: which file holds it, which counts its hits.
#[derive(Debug, Clone)]
struct Limit {
    /// The cgroup directory.
    dir: PathBuf,
    /// File and key of the counter of events where the limit struck (`memory.events` `oom_kill`,
    /// `pids.events` `max`).
    events: (&'static str, &'static str),
}

/// The cgroups of one build (see the module's layout); [`BuildCgroups::kill_and_remove`] ends them.
#[derive(Debug)]
pub(super) struct BuildCgroups {
    /// `<cgroup2>/kiln/<owner>/<build>`: parent of the steps' cgroups.
    pub(super) v2: Option<PathBuf>,
    /// v1 cgroups every step joins (their `cgroup.procs`).
    pub(super) v1_procs: Vec<PathBuf>,
    memory: Option<Limit>,
    pids: Option<Limit>,
}

/// What [`BuildCgroups::create`] could set up, for the start-up check and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSupport {
    /// Steps can be killed as a whole through cgroup v2.
    pub kill: bool,
    /// The memory limit is enforced (cgroup v2 `memory.max`, else v1 `memory.limit_in_bytes`).
    pub memory: bool,
    /// The process limit is enforced by a cgroup (v2 `pids.max`, else v1 `pids.max`).
    pub pids: bool,
}

impl BuildCgroups {
    /// Creates the cgroups of build `build` with a memory limit of `memory` bytes (swap included
    /// where the kernel accounts it) and a limit of `processes` tasks (threads count). What cannot
    /// be created or set is left out (logged at debug level: start-up warns once); the build runs
    /// regardless.
    pub(super) fn create(build: &str, memory: u64, processes: u64) -> BuildCgroups {
        let mut cgroups = BuildCgroups::empty();
        let v2 = owner_dir_v2().and_then(|owner| {
            let dir = owner.join(build);
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok(dir)
        });
        match v2 {
            Ok(dir) => {
                if write(&dir, "memory.max", &memory.to_string()).is_ok() {
                    // Without swap the limit is the memory the build really gets.
                    let _ = write(&dir, "memory.swap.max", "0");
                    cgroups.memory = Some(Limit {
                        dir: dir.clone(),
                        events: ("memory.events", "oom_kill"),
                    });
                }
                if write(&dir, "pids.max", &processes.to_string()).is_ok() {
                    cgroups.pids = Some(Limit {
                        dir: dir.clone(),
                        events: ("pids.events", "max"),
                    });
                }
                cgroups.v2 = Some(dir);
            }
            // Said once at start (see `crate::startup`), not for every build.
            Err(error) => {
                tracing::debug!(error = format!("{error:#}"), "no cgroup v2 for the build")
            }
        }
        if cgroups.memory.is_none() {
            match v1_build_dir("memory", build).and_then(|dir| {
                write(&dir, "memory.limit_in_bytes", &memory.to_string())?;
                // Memory and swap together (needs swap accounting; absent otherwise).
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    write(&dir, "memory.memsw.limit_in_bytes", &memory.to_string())?;
                }
                Ok(dir)
            }) {
                Ok(dir) => {
                    cgroups.v1_procs.push(dir.join("cgroup.procs"));
                    cgroups.memory = Some(Limit {
                        dir,
                        events: ("memory.oom_control", "oom_kill"),
                    });
                }
                Err(error) => tracing::debug!(
                    error = format!("{error:#}"),
                    "the build's memory limit cannot be enforced"
                ),
            }
        }
        if cgroups.pids.is_none() {
            match v1_build_dir("pids", build).and_then(|dir| {
                write(&dir, "pids.max", &processes.to_string())?;
                Ok(dir)
            }) {
                Ok(dir) => {
                    cgroups.v1_procs.push(dir.join("cgroup.procs"));
                    cgroups.pids = Some(Limit {
                        dir,
                        events: ("pids.events", "max"),
                    });
                }
                Err(error) => tracing::debug!(
                    error = format!("{error:#}"),
                    "the build's process limit cannot be enforced by a cgroup"
                ),
            }
        }
        cgroups
    }

    /// No cgroups (what a build scope holds once its cgroups were handed off).
    pub(super) fn empty() -> BuildCgroups {
        BuildCgroups {
            v2: None,
            v1_procs: Vec::new(),
            memory: None,
            pids: None,
        }
    }

    /// What this build's cgroups enforce.
    pub(super) fn support(&self) -> LimitSupport {
        LimitSupport {
            kill: self.v2.is_some(),
            memory: self.memory.is_some(),
            pids: self.pids.is_some(),
        }
    }

    /// How many times the memory limit made the kernel kill a process of the build.
    pub(super) fn oom_kills(&self) -> u64 {
        self.memory.as_ref().map_or(0, Limit::hits)
    }

    /// How many times a fork or clone of the build failed on its process limit.
    pub(super) fn pids_hits(&self) -> u64 {
        self.pids.as_ref().map_or(0, Limit::hits)
    }

    /// Kills every process left in the build's cgroups, waits (up to `timeout`) for them to be gone
    /// and removes the cgroups.
    pub(super) fn kill_and_remove(&self, timeout: Duration) {
        let mut dirs: Vec<&Path> = self.v1_procs.iter().filter_map(|p| p.parent()).collect();
        if let Some(v2) = &self.v2 {
            let _ = kill_v2(v2);
            remove_when_empty(v2, timeout, POLL);
        }
        dirs.dedup();
        for dir in dirs {
            kill_v1(dir, timeout);
            let _ = remove_tree(dir);
        }
    }
}

impl Limit {
    fn hits(&self) -> u64 {
        event(&self.dir, self.events.0, self.events.1).unwrap_or(0)
    }
}

/// How long killed processes may take to leave their cgroup before it is left behind.
pub(super) const KILL_WAIT: Duration = Duration::from_secs(10);
/// How often we look whether a cgroup is empty.
const POLL: Duration = Duration::from_millis(5);

/// Kills what is left of build `build` on this host, whichever Kiln process started it (recovery:
/// the build has been declared lost); returns how many cgroups held it.
pub(super) fn kill_build(build: &str) -> usize {
    let mut found = 0;
    for owner in owners_v2() {
        let dir = owner.join(build);
        if dir.is_dir() {
            found += 1;
            let _ = kill_v2(&dir);
            remove_when_empty(&dir, KILL_WAIT, POLL);
        }
    }
    for controller in ["memory", "pids"] {
        for owner in owners_v1(controller) {
            let dir = owner.join(build);
            if dir.is_dir() {
                kill_v1(&dir, KILL_WAIT);
                let _ = remove_tree(&dir);
            }
        }
    }
    found
}

/// Kills and removes the cgroups of Kiln processes that no longer run (a crash, `kill -9`): their
/// steps have no one to stop them. Returns how many owners' cgroups were removed.
pub(super) fn kill_orphans() -> usize {
    let mut removed = 0;
    for owner in owners_v2() {
        if owner_alive(&owner) {
            continue;
        }
        let _ = kill_v2(&owner);
        remove_when_empty(&owner, KILL_WAIT, POLL);
        removed += 1;
    }
    for controller in ["memory", "pids"] {
        for owner in owners_v1(controller) {
            if !owner_alive(&owner) {
                kill_v1(&owner, KILL_WAIT);
                let _ = remove_tree(&owner);
            }
        }
    }
    removed
}

/// The owner directories under `<cgroup2>/kiln` (the names of other Kiln processes included).
fn owners_v2() -> Vec<PathBuf> {
    let Some(root) = cgroup2_mount() else {
        return Vec::new();
    };
    subdirs(&root.join(KILN_DIR))
}

/// The owner directories under this process's own cgroup of the v1 `controller`.
fn owners_v1(controller: &str) -> Vec<PathBuf> {
    match v1_kiln_dir(controller) {
        Some(dir) => subdirs(&dir),
        None => Vec::new(),
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Whether the Kiln process an owner directory is named after (`<pid>-<start time>`) still runs.
/// A name that is not of that form is treated as alive (not ours to remove).
fn owner_alive(dir: &Path) -> bool {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some((pid, start)) = name.split_once('-') else {
        return true;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
        return true;
    };
    super::procfs::start_time(pid) == Some(start)
}

/// This process's owner name, `<pid>-<start time>`.
fn owner_name() -> String {
    let pid = std::process::id();
    let start = i32::try_from(pid)
        .ok()
        .and_then(super::procfs::start_time)
        .unwrap_or(0);
    format!("{pid}-{start}")
}

/// `<cgroup2>/kiln/<owner>`, created on first use.
fn owner_dir_v2() -> anyhow::Result<PathBuf> {
    let root = cgroup2_mount().context("no read-write cgroup2 mount in /proc/self/mounts")?;
    let dir = root.join(KILN_DIR).join(owner_name());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Controllers the build directories need for their limits, where v2 has them (best effort, once:
    // a controller the root does not offer cannot be enabled, and v1 takes over).
    static ENABLED: OnceLock<()> = OnceLock::new();
    ENABLED.get_or_init(|| {
        for level in [root.clone(), root.join(KILN_DIR), dir.clone()] {
            let _ = write(&level, "cgroup.subtree_control", "+memory");
            let _ = write(&level, "cgroup.subtree_control", "+pids");
        }
    });
    Ok(dir)
}

/// `<v1 controller mount>/<own cgroup>/kiln/<owner>/<build>`, created.
fn v1_build_dir(controller: &str, build: &str) -> anyhow::Result<PathBuf> {
    let dir = v1_kiln_dir(controller)
        .with_context(|| format!("no writable cgroup v1 {controller} hierarchy"))?
        .join(owner_name())
        .join(build);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `<v1 controller mount>/<this process's cgroup of it>/kiln`: nested under Kiln's own cgroup, so that
/// builds stay within whatever limits Kiln itself runs under.
fn v1_kiln_dir(controller: &str) -> Option<PathBuf> {
    let mount = v1_mount(controller)?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })?;
    Some(mount.join(path.trim_start_matches('/')).join(KILN_DIR))
}

/// The mount point of the cgroup v1 hierarchy of `controller`, if mounted read-write.
fn v1_mount(controller: &str) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (mount_point, fs_type, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        let mut options = options.split(',');
        (*fs_type == "cgroup"
            && options.clone().any(|o| o == "rw")
            && options.any(|o| o == controller))
        .then(|| PathBuf::from(unescape_mount_point(mount_point)))
    })
}

fn write(dir: &Path, file: &str, value: &str) -> anyhow::Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))
}

/// The number after `key` in a `key value` file such as `cgroup.events` or `memory.events`.
fn event(dir: &Path, file: &str, key: &str) -> anyhow::Result<u64> {
    let path = dir.join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(char::is_whitespace)?;
            (name == key).then(|| value.trim().parse().ok()).flatten()
        })
        .unwrap_or(0))
}

fn populated(dir: &Path) -> anyhow::Result<bool> {
    event(dir, "cgroup.events", "populated").map(|n| n == 1)
}

fn kill_v2(dir: &Path) -> anyhow::Result<()> {
    write(dir, "cgroup.kill", "1")
}

/// v1 has no `cgroup.kill`: SIGKILLs the listed processes until none is left (new forks included),
/// for at most `timeout`.
fn kill_v1(dir: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut pids = Vec::new();
        if collect_pids(dir, &mut pids).is_err() || pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) has no memory-safety preconditions; ESRCH (already gone) is fine.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(POLL);
    }
}

fn remove_when_empty(dir: &Path, timeout: Duration, poll: Duration) {
    let deadline = Instant::now() + timeout;
    while matches!(populated(dir), Ok(true)) && Instant::now() < deadline {
        std::thread::sleep(poll);
    }
    if let Err(error) = remove_tree(dir) {
        tracing::warn!(error = %error, dir = %dir.display(), "leaving a cgroup behind");
    }
}

fn collect_pids(dir: &Path, pids: &mut Vec<i32>) -> anyhow::Result<()> {
    let path = dir.join("cgroup.procs");
    let procs = match std::fs::read_to_string(&path) {
        Ok(procs) => procs,
        // A sub-cgroup removed while we walk the tree.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    pids.extend(
        procs
            .lines()
            .filter_map(|line| line.trim().parse::<i32>().ok()),
    );
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            collect_pids(&entry.path(), pids)?;
        }
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    // A cgroup directory holds only kernel interface files: rmdir removes it once it has no processes.
    match std::fs::remove_dir(dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The first read-write cgroup2 mount point, looked up once.
fn cgroup2_mount() -> Option<PathBuf> {
    static MOUNT: OnceLock<Option<PathBuf>> = OnceLock::new();
    MOUNT
        .get_or_init(|| {
            let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
            find_cgroup2_mount(&mounts)
        })
        .clone()
}

/// Parses `/proc/self/mounts` (device, mount point, type, options, …) for a read-write cgroup2 mount.
fn find_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (mount_point, fs_type, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        let read_write = options.split(',').any(|option| option == "rw");
        (*fs_type == "cgroup2" && read_write)
            .then(|| PathBuf::from(unescape_mount_point(mount_point)))
    })
}

/// The kernel writes space, tab, newline and backslash in mount points as `\040`-style octal escapes.
fn unescape_mount_point(escaped: &str) -> String {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_a_hybrid_layout() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n\
                      cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(
            find_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            find_cgroup2_mount("cgroup2 /sys/fs/cgroup cgroup2 ro,nosuid 0 0\n"),
            None
        );
        assert_eq!(
            find_cgroup2_mount("cgroup2 /mnt/my\\040cg cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/mnt/my cg"))
        );
    }

    #[test]
    fn an_owner_is_alive_while_its_process_with_that_start_time_runs() {
        let me = owner_name();
        assert!(owner_alive(Path::new(&me)));
        let (pid, start) = me.split_once('-').unwrap();
        let other_start = start.parse::<u64>().unwrap() + 1;
        assert!(!owner_alive(Path::new(&format!("{pid}-{other_start}"))));
        assert!(!owner_alive(Path::new(&format!("{}-1", i32::MAX))));
        assert!(owner_alive(Path::new("not-an-owner")));
    }
}
