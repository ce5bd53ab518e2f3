//! A cgroup v2 directory per step: every process of the step lives in it, so it can be listed and killed
//! as a whole (`cgroup.kill`) even after it called `setsid` or double-forked.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Directory under the cgroup2 mount that holds one sub-directory per running step.
const KILN_DIR: &str = "kiln";

/// Numbers the steps of this Kiln process so that their cgroup names never collide.
static NEXT_STEP: AtomicU64 = AtomicU64::new(0);

/// The cgroup of one step; its directory is removed by [`Cgroup::remove`] or, best effort, on drop.
#[derive(Debug)]
pub(super) struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2 mount>/kiln/<pid>-<n>-<random>`, which must offer `cgroup.kill` (Linux ≥ 5.14).
    pub(super) fn create() -> anyhow::Result<Cgroup> {
        let root = cgroup2_mount().context("no read-write cgroup2 mount in /proc/self/mounts")?;
        let parent = root.join(KILN_DIR);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let name = format!(
            "{}-{}-{:08x}",
            std::process::id(),
            NEXT_STEP.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let dir = parent.join(name);
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
        self.event("populated")
    }

    /// Whether every process of the cgroup is frozen (`set_frozen(true)` acts asynchronously).
    pub(super) fn frozen(&self) -> anyhow::Result<bool> {
        self.event("frozen")
    }

    /// Freezes or thaws every process of the cgroup. A frozen process cannot fork; signals sent to it
    /// are delivered when it thaws (SIGKILL at once).
    pub(super) fn set_frozen(&self, frozen: bool) -> anyhow::Result<()> {
        let path = self.dir.join("cgroup.freeze");
        let value = if frozen { "1" } else { "0" };
        std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))
    }

    /// Whether `cgroup.events` says `<key> 1`.
    fn event(&self, key: &str) -> anyhow::Result<bool> {
        let path = self.dir.join("cgroup.events");
        let events = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(events
            .lines()
            .any(|line| line.split_whitespace().eq([key, "1"])))
    }

    /// SIGKILLs every process of the cgroup and below it, atomically with respect to forks.
    pub(super) fn kill(&self) -> anyhow::Result<()> {
        let path = self.dir.join("cgroup.kill");
        std::fs::write(&path, "1").with_context(|| format!("writing {}", path.display()))
    }

    /// Removes the (empty) cgroup and any cgroup the step created below it.
    pub(super) fn remove(&self) -> anyhow::Result<()> {
        remove_tree(&self.dir).with_context(|| format!("removing cgroup {}", self.dir.display()))
    }

    /// For `Drop`: waits up to `timeout` for the killed processes to disappear, then removes the cgroup.
    pub(super) fn remove_when_empty(&self, timeout: Duration, poll: Duration) {
        let deadline = Instant::now() + timeout;
        while matches!(self.populated(), Ok(true)) && Instant::now() < deadline {
            std::thread::sleep(poll);
        }
        if let Err(error) = self.remove() {
            tracing::warn!(error = format!("{error:#}"), "leaving a step cgroup behind");
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Best effort for early-return paths; `remove` has normally run already (NotFound is ignored).
        let _ = remove_tree(&self.dir);
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

/// Removes the step cgroups that Kiln processes which no longer run left behind (a crash, `kill -9`).
/// Cgroup names start with the creating process's pid; those of live processes are left alone. A
/// dead process's cgroup still holding processes (none mode after a crash) is killed first.
pub(super) fn remove_orphans() -> usize {
    let Some(root) = cgroup2_mount() else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(root.join(KILN_DIR)) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let cgroup = Cgroup { dir: entry.path() };
        if matches!(cgroup.populated(), Ok(true)) {
            let _ = cgroup.kill();
        }
        cgroup.remove_when_empty(Duration::from_secs(2), Duration::from_millis(10));
        removed += 1;
    }
    removed
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
}
