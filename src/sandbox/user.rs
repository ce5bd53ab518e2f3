//! The unprivileged user that build steps run as when Kiln runs as root: which one (a name, created on
//! first start, or `uid:gid`), and the `setpriv` prefix that makes a step that user.
//!
//! The privileges are dropped before anything of the step runs, by exec'ing `setpriv` in front of the
//! step's program (`sh`, or `bwrap`, which then builds its sandbox as that user: bwrap started as root
//! maps the sandbox's uid back to host root, which still reads root-only files). A `setpriv` exec costs
//! about a millisecond; dropping them in Kiln's child instead (`Command::uid`) would turn std's
//! `posix_spawn` into a full `fork` of the server.

use std::ffi::{CString, OsString};
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, bail};

/// The build user `kiln serve` uses unless told otherwise; created when missing.
pub const DEFAULT_BUILD_USER: &str = "kiln-build";

/// Lock file (the first whose directory exists; both are root's) that Kiln processes hold while they
/// create the build user.
const USERADD_LOCK: [&str; 2] = ["/run/kiln-useradd.lock", "/etc/.kiln-useradd.lock"];

/// A uid and gid that build steps run as (no supplementary groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BuildUser {
    pub uid: u32,
    pub gid: u32,
}

/// Who build steps should run as, as configured: a user name or numeric `uid:gid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildUserSpec {
    /// A passwd user; if Kiln runs as root and it does not exist, Kiln creates it (a system user with
    /// its own group, no home, no login shell).
    Name(String),
    /// Numeric ids; need no passwd entry.
    Ids(BuildUser),
}

impl Default for BuildUserSpec {
    fn default() -> Self {
        BuildUserSpec::Name(DEFAULT_BUILD_USER.to_owned())
    }
}

/// A `--build-user` that is neither a user name nor `uid:gid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid build user {0:?}: expected a user name (letters, digits, `_`, `-`, `.`, not starting \
     with `-`) or numeric `uid:gid`"
)]
pub struct InvalidBuildUser(pub String);

impl std::str::FromStr for BuildUserSpec {
    type Err = InvalidBuildUser;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidBuildUser(text.to_owned());
        if let Some((uid, gid)) = text.split_once(':') {
            let uid = uid.parse().map_err(|_| invalid())?;
            let gid = gid.parse().map_err(|_| invalid())?;
            return Ok(BuildUserSpec::Ids(BuildUser { uid, gid }));
        }
        // The shadow-utils rule (a name goes on useradd's command line: no leading `-`).
        let valid = !text.is_empty()
            && text.len() <= 32
            && !text.starts_with('-')
            && !text.bytes().all(|b| b.is_ascii_digit())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if valid {
            Ok(BuildUserSpec::Name(text.to_owned()))
        } else {
            Err(invalid())
        }
    }
}

impl std::fmt::Display for BuildUserSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildUserSpec::Name(name) => f.write_str(name),
            BuildUserSpec::Ids(user) => write!(f, "{}:{}", user.uid, user.gid),
        }
    }
}

impl BuildUserSpec {
    /// The `slot`-th user of a pool of build users, one per build slot, so that builds running at
    /// the same time never share a uid (a process of one could otherwise read another's environment,
    /// token included, or write into its workspace): slot 0 is this spec itself, slot `i` is the name
    /// with `-i` appended, or `uid+i:gid+i`.
    pub fn for_slot(&self, slot: u32) -> BuildUserSpec {
        match self {
            _ if slot == 0 => self.clone(),
            BuildUserSpec::Name(name) => BuildUserSpec::Name(format!("{name}-{slot}")),
            BuildUserSpec::Ids(user) => BuildUserSpec::Ids(BuildUser {
                uid: user.uid.saturating_add(slot),
                gid: user.gid.saturating_add(slot),
            }),
        }
    }

    /// The user steps run as: `None` when Kiln does not run as root (steps then run as Kiln's own
    /// user; nothing to drop). As root, a missing named user is created. Blocking (may run `useradd`).
    pub fn resolve(&self) -> anyhow::Result<Option<BuildUser>> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let user = match self {
            BuildUserSpec::Ids(user) => *user,
            BuildUserSpec::Name(name) => match lookup_user(name)? {
                Some(user) => user,
                None => create_user(name)?,
            },
        };
        anyhow::ensure!(
            user.uid != 0 && user.gid != 0,
            "the build user {self} is root (uid {}, gid {}): builds must run unprivileged",
            user.uid,
            user.gid
        );
        Ok(Some(user))
    }
}

impl BuildUser {
    /// The command line prefix that runs the rest of it as this user: `setpriv … --`. With
    /// `no_new_privs`, set-user-id programs (`su`, `sudo`) gain nothing either; with `pdeathsig`, the
    /// process is SIGKILLed when the thread of Kiln that started it ends (with Kiln itself: see
    /// [`pdeathsig_prefix`]).
    pub(super) fn setpriv_prefix(
        &self,
        no_new_privs: bool,
        pdeathsig: bool,
    ) -> anyhow::Result<Vec<OsString>> {
        let setpriv = setpriv_path()
            .context("setpriv (util-linux) is not installed: it drops a build step's privileges")?;
        let mut args: Vec<OsString> = vec![
            setpriv.into(),
            "--reuid".into(),
            self.uid.to_string().into(),
            "--regid".into(),
            self.gid.to_string().into(),
            "--clear-groups".into(),
        ];
        if no_new_privs {
            args.push("--no-new-privs".into());
        }
        if pdeathsig {
            // Set after the ids change (which would clear it), as setpriv does.
            args.extend(["--pdeathsig".into(), "KILL".into()]);
        }
        args.push("--".into());
        Ok(args)
    }

    /// Whether this user can enter `dir` (every directory above it searchable by it). Runs a process
    /// as the user, so ACLs and mount options count too.
    pub fn can_enter(&self, dir: &Path) -> anyhow::Result<bool> {
        self.check(dir, "cd -- \"$1\"")
    }

    /// Whether this user can read `path` (as `can_enter`, by a process running as the user).
    pub fn can_read(&self, path: &Path) -> anyhow::Result<bool> {
        self.check(path, "test -r \"$1\"")
    }

    /// Whether `script` (with the path as `$1`) succeeds when run as this user.
    fn check(&self, path: &Path, script: &str) -> anyhow::Result<bool> {
        let prefix = self.setpriv_prefix(true, false)?;
        let status = std::process::Command::new(&prefix[0])
            .args(&prefix[1..])
            .args(["/bin/sh", "-c", script, "kiln-check"])
            .arg(path)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running setpriv")?;
        Ok(status.success())
    }
}

impl BuildUser {
    /// Runs `f` on a thread of its own with this user's rights (uid, gid, no supplementary groups),
    /// so that file access through it is checked as for a build step: a link or path that leads
    /// somewhere the build user cannot read or write fails instead of reaching root's files. Only that
    /// thread changes its credentials (`setres[ug]id` of one thread, not glibc's process-wide
    /// wrappers), and it ends with `f`. `None`: `f` runs as Kiln's own user, also on a new thread.
    pub async fn run_as<T: Send + 'static>(
        user: Option<BuildUser>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("kiln-as-build-user".to_owned())
            .spawn(move || {
                let result = match user {
                    Some(user) => user.become_on_this_thread().map(|()| f()),
                    None => Ok(f()),
                };
                let _ = tx.send(result);
            })
            .context("starting a thread for the build user")?;
        rx.await
            .context("the build user's thread ended without an answer")?
    }

    /// Drops this thread's privileges to this user for good (groups first, then gid, then uid).
    fn become_on_this_thread(&self) -> anyhow::Result<()> {
        use rustix::thread::{Gid, Uid};
        let (uid, gid) = (Uid::from_raw(self.uid), Gid::from_raw(self.gid));
        rustix::thread::set_thread_groups(&[]).context("clearing the thread's groups")?;
        rustix::thread::set_thread_res_gid(gid, gid, gid).context("setting the thread's gid")?;
        rustix::thread::set_thread_res_uid(uid, uid, uid).context("setting the thread's uid")?;
        Ok(())
    }
}

/// `setpriv --pdeathsig KILL --`: the rest of the command line is SIGKILLed when the thread that
/// started it (a thread of Kiln's runtime, which lives as long as Kiln) ends, so that a step's leader
/// dies with a Kiln killed by `kill -9`. `None` without `setpriv`.
pub(super) fn pdeathsig_prefix() -> Option<Vec<OsString>> {
    let setpriv = setpriv_path()?;
    Some(vec![
        setpriv.into(),
        "--pdeathsig".into(),
        "KILL".into(),
        "--".into(),
    ])
}

/// Where `setpriv` is (looked up once on Kiln's `PATH`, then in `/usr/bin` and `/bin`).
fn setpriv_path() -> Option<&'static Path> {
    static PATH: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    PATH.get_or_init(|| super::bwrap::program_on_path("setpriv"))
        .as_deref()
}

/// The uid and primary gid of the passwd user `name`, if there is one.
fn lookup_user(name: &str) -> anyhow::Result<Option<BuildUser>> {
    let c_name = CString::new(name).context("a user name with a NUL byte")?;
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids); getpwnam_r fills it.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: the name is NUL-terminated, `buf` is writable for its length, and `entry`/`found`
        // outlive the call; the strings it points into `buf` are not used.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Ok(None),
            0 => {
                return Ok(Some(BuildUser {
                    uid: entry.pw_uid,
                    gid: entry.pw_gid,
                }));
            }
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            // "Not found" may also come as one of these, depending on the NSS module.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            errno => {
                return Err(std::io::Error::from_raw_os_error(errno))
                    .with_context(|| format!("looking up the user {name}"));
            }
        }
    }
}

/// Creates the system user `name` with its own group. Several Kiln processes may start at once:
/// `useradd` waits for another's lock on `/etc/passwd` but then adds the name a second time (it checked
/// before), so creations are serialized by [`USERADD_LOCK`], and the user is looked up again under it.
fn create_user(name: &str) -> anyhow::Result<BuildUser> {
    let lock_path = USERADD_LOCK
        .iter()
        .map(Path::new)
        .find(|path| path.parent().is_some_and(Path::is_dir))
        .context("no directory for the useradd lock")?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if let Some(user) = lookup_user(name)? {
        return Ok(user);
    }
    let output = std::process::Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--",
            name,
        ])
        .stdin(Stdio::null())
        .output();
    // Whatever useradd said, the user may exist now (made by someone else meanwhile).
    if let Some(user) = lookup_user(name)? {
        tracing::info!(
            user = name,
            uid = user.uid,
            gid = user.gid,
            "created the build user"
        );
        return Ok(user);
    }
    let why = match output {
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Err(e) => format!("cannot run useradd: {e}"),
    };
    bail!(
        "the build user {name} does not exist and could not be created ({why}); create it, or give \
         --build-user uid:gid"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_ids() {
        assert_eq!(
            "kiln-build".parse(),
            Ok(BuildUserSpec::Name("kiln-build".into()))
        );
        assert_eq!(
            "1234:5678".parse(),
            Ok(BuildUserSpec::Ids(BuildUser {
                uid: 1234,
                gid: 5678
            }))
        );
        for bad in ["", "-rf", "a b", "1234", "1:x", ":1", "a/b", "x;y"] {
            assert!(bad.parse::<BuildUserSpec>().is_err(), "{bad:?}");
        }
        for text in ["kiln-build", "65534:65534"] {
            assert_eq!(
                text.parse::<BuildUserSpec>().expect("parses").to_string(),
                text
            );
        }
    }

    #[test]
    fn looks_up_users() {
        assert_eq!(
            lookup_user("root").expect("lookup"),
            Some(BuildUser { uid: 0, gid: 0 })
        );
        assert_eq!(lookup_user("kiln-no-such-user-x7").expect("lookup"), None);
    }

    #[test]
    fn concurrent_starts_create_the_missing_user_once_and_agree_on_it() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let name = format!("kiln-t{:08}", rand::random::<u32>() % 100_000_000);
        let spec = BuildUserSpec::Name(name.clone());
        // Several Kiln processes starting at once: each runs its own useradd.
        let users: Vec<_> = std::thread::scope(|scope| {
            let starts: Vec<_> = (0..4).map(|_| scope.spawn(|| spec.resolve())).collect();
            starts
                .into_iter()
                .map(|start| start.join().expect("join"))
                .collect()
        });
        let removed = std::process::Command::new("userdel")
            .arg(&name)
            .status()
            .is_ok_and(|status| status.success());
        let users: Vec<BuildUser> = users
            .into_iter()
            .map(|user| user.expect("resolve").expect("as root"))
            .collect();
        assert!(removed, "userdel {name}");
        assert!(users.iter().all(|user| *user == users[0]), "{users:?}");
        assert_ne!(users[0].uid, 0);
        assert_eq!(lookup_user(&name).expect("lookup"), None);
    }

    #[tokio::test]
    async fn run_as_changes_only_its_own_thread() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let user = BuildUser {
            uid: 65534,
            gid: 65534,
        };
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("root-only");
        std::fs::write(&secret, "secret").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let path = secret.clone();
        let (ids, read) = BuildUser::run_as(Some(user), move || {
            // SAFETY: plain id getters; the raw syscalls report this thread's ids.
            let ids = unsafe {
                (
                    libc::syscall(libc::SYS_getuid),
                    libc::syscall(libc::SYS_getgid),
                )
            };
            (ids, std::fs::read(&path).is_ok())
        })
        .await
        .unwrap();
        assert_eq!(ids, (65534, 65534));
        assert!(!read, "the build user cannot read a root-only file");
        // The rest of the process is still root.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::geteuid() }, 0);
        assert!(std::fs::read(&secret).is_ok());
    }

    #[test]
    fn root_is_refused_as_the_build_user() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert_eq!(
                BuildUserSpec::Ids(BuildUser { uid: 0, gid: 0 })
                    .resolve()
                    .ok(),
                Some(None)
            );
            return;
        }
        assert!(BuildUserSpec::Name("root".into()).resolve().is_err());
        assert!(
            BuildUserSpec::Ids(BuildUser { uid: 0, gid: 5 })
                .resolve()
                .is_err()
        );
    }
}

/// The build users of a node, one per build slot ([`BuildUserSpec::for_slot`]): a build takes a free
/// one for its whole run and gives it back when it ends.
#[derive(Debug)]
pub struct BuildUserPool {
    free: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<BuildUser>>,
    back: tokio::sync::mpsc::Sender<BuildUser>,
}

impl BuildUserPool {
    /// A pool of `users` (at least one).
    pub fn new(users: Vec<BuildUser>) -> BuildUserPool {
        let (back, free) = tokio::sync::mpsc::channel(users.len().max(1));
        for user in users {
            // The channel holds every user: it cannot be full.
            let _ = back.try_send(user);
        }
        BuildUserPool {
            free: tokio::sync::Mutex::new(free),
            back,
        }
    }

    /// A free build user, waiting for one if every slot's is in use; returned when the lease drops.
    pub async fn acquire(&self) -> BuildUserLease {
        let user = self.free.lock().await.recv().await;
        BuildUserLease {
            // The pool holds a sender itself, so the channel never closes.
            user: user.unwrap_or(BuildUser {
                uid: u32::MAX - 1,
                gid: u32::MAX - 1,
            }),
            back: self.back.clone(),
        }
    }
}

/// A build user held by one build; given back to its pool on drop.
#[derive(Debug)]
pub struct BuildUserLease {
    pub user: BuildUser,
    back: tokio::sync::mpsc::Sender<BuildUser>,
}

impl Drop for BuildUserLease {
    fn drop(&mut self) {
        let _ = self.back.try_send(self.user);
    }
}
