//! The bubblewrap command line of a step (and the checked paths it mounts), and whether bwrap works here.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use anyhow::Context;

use super::StepSpec;

/// The spec's paths, checked and canonicalized (so bwrap mounts over the real locations).
#[derive(Debug)]
pub(super) struct Paths {
    pub cwd: PathBuf,
    pub workspace: PathBuf,
    pub hidden: Vec<PathBuf>,
    pub read_only: Vec<PathBuf>,
}

impl Paths {
    /// Checks and canonicalizes the spec's paths. With `cwd_exists: false` (a held step, whose
    /// directory appears later) the working directory is only checked lexically: absolute, inside
    /// the workspace, without `..`.
    pub(super) fn resolve(spec: &StepSpec, cwd_exists: bool) -> anyhow::Result<Paths> {
        let canonical = |path: &Path| -> anyhow::Result<PathBuf> {
            anyhow::ensure!(
                path.is_absolute(),
                "step path {} is not absolute",
                path.display()
            );
            path.canonicalize()
                .with_context(|| format!("step path {}", path.display()))
        };
        let workspace = canonical(&spec.workspace)?;
        let cwd = if cwd_exists {
            canonical(&spec.cwd)?
        } else {
            let relative = spec.cwd.strip_prefix(&spec.workspace).with_context(|| {
                format!(
                    "step directory {} is outside the workspace {}",
                    spec.cwd.display(),
                    spec.workspace.display()
                )
            })?;
            anyhow::ensure!(
                relative
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
                "step directory {} must not contain `..`",
                spec.cwd.display()
            );
            workspace.join(relative)
        };
        let paths = Paths {
            cwd,
            workspace,
            // What does not exist (yet) has nothing to hide.
            hidden: spec
                .hidden
                .iter()
                .filter(|path| std::fs::symlink_metadata(path).is_ok())
                .map(|path| canonical(path))
                .collect::<Result<_, _>>()?,
            read_only: spec
                .read_only
                .iter()
                .map(|path| canonical(path))
                .collect::<Result<_, _>>()?,
        };
        anyhow::ensure!(
            paths.cwd.starts_with(&paths.workspace),
            "step directory {} is outside the workspace {}",
            paths.cwd.display(),
            paths.workspace.display()
        );
        Ok(paths)
    }
}

/// bwrap's arguments to run `argv` in `chdir`. bwrap applies mount options in order, each source
/// taken from the host: the hidden paths that contain the workspace or a read-only path are covered
/// first (bwrap creates mount points inside the tmpfs as needed), then the workspace is bound on top,
/// then the read-only paths, then the other hidden paths are covered (so that they hide what a
/// read-only path would show, e.g. the toolchain store's internals), then the covers are made
/// read-only. A hidden directory is covered by an empty tmpfs, a hidden file by `/dev/null`.
///
/// When bwrap starts as the (unprivileged) build user it makes its own user namespace, mapping only
/// that uid: the step is that user inside and out, and owns its `/tmp`, `/dev/shm` and covers.
///
/// `tmpfs`: the sizes of `/tmp` and `/dev/shm` in bytes (a write past them fails with "no space");
/// `None`: the kernel's default (half the memory), `/dev/shm` then being a directory of `/dev`.
pub(super) fn bwrap_args_for(
    paths: &Paths,
    chdir: &Path,
    argv: Vec<OsString>,
    tmpfs: Option<(u64, u64)>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--die-with-parent",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        // No controlling terminal: stops TIOCSTI injection into a terminal Kiln was started from.
        "--new-session",
        // Root without capabilities cannot unmount the tmpfs that hides the data dir.
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    match tmpfs {
        Some((tmp, shm)) => args.extend(
            [
                "--size",
                &tmp.to_string(),
                "--tmpfs",
                "/tmp",
                "--size",
                &shm.to_string(),
                "--tmpfs",
                "/dev/shm",
            ]
            .map(OsString::from),
        ),
        None => args.extend(["--tmpfs", "/tmp"].map(OsString::from)),
    }
    // Host users' homes (SSH keys, git credentials, shell history) are none of a build's business;
    // the covers are read-only, so that only `/tmp` and `/dev/shm` (sized) hold files in memory.
    args.extend(["--tmpfs", "/root", "--tmpfs", "/home"].map(OsString::from));
    let exposes = |hidden: &PathBuf| {
        paths.workspace.starts_with(hidden) || paths.read_only.iter().any(|p| p.starts_with(hidden))
    };
    let (first, last): (Vec<&PathBuf>, Vec<&PathBuf>) =
        paths.hidden.iter().partition(|h| exposes(h));
    let mut covered_dirs = Vec::new();
    let mut cover = |args: &mut Vec<OsString>, hidden: &PathBuf| {
        if hidden.is_dir() {
            args.extend(["--tmpfs".into(), hidden.into()]);
            covered_dirs.push(hidden.clone());
        } else {
            args.extend(["--ro-bind".into(), "/dev/null".into(), hidden.into()]);
        }
    };
    for hidden in first {
        cover(&mut args, hidden);
    }
    args.extend([
        "--bind".into(),
        (&paths.workspace).into(),
        (&paths.workspace).into(),
    ]);
    for path in &paths.read_only {
        args.extend(["--ro-bind".into(), path.into(), path.into()]);
    }
    for hidden in last {
        cover(&mut args, hidden);
    }
    // The covers themselves read-only (the mounts on them stay as they are): the build owns these
    // tmpfs, so it could otherwise write there (harmless, private) and look as if it wrote the data dir.
    for hidden in covered_dirs {
        args.extend(["--remount-ro".into(), hidden.into()]);
    }
    args.extend(["--remount-ro", "/root", "--remount-ro", "/home"].map(OsString::from));
    args.extend(["--chdir".into(), chdir.into()]);
    args.push("--".into());
    args.extend(argv);
    args
}

/// Where `bwrap` is on Kiln's `PATH` (the step's own `PATH` may differ).
pub(super) fn bwrap_path() -> Option<&'static Path> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| program_on_path("bwrap")).as_deref()
}

/// The executable `name` on Kiln's `PATH`, then in `/usr/bin` and `/bin`.
pub(super) fn program_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|path| {
            path.metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// Whether bubblewrap is installed and can create the namespaces a step needs here (checked once, by
/// running `true` in a minimal sandbox as Kiln's own user).
pub fn bwrap_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| probe(Vec::new()))
}

/// Whether bubblewrap works when started as `user`, as build steps start it: unprivileged, it needs
/// user namespaces, which a host may forbid (a sysctl, a container's seccomp profile).
pub fn bwrap_available_as(user: &super::BuildUser) -> bool {
    match user.setpriv_prefix(false, false) {
        Ok(prefix) => probe(prefix),
        Err(_) => false,
    }
}

/// Runs `true` in a minimal sandbox, behind `prefix` (e.g. `setpriv … --`).
fn probe(prefix: Vec<OsString>) -> bool {
    let Some(bwrap) = bwrap_path() else {
        return false;
    };
    let mut argv = prefix.into_iter().chain([bwrap.as_os_str().to_owned()]);
    let Some(program) = argv.next() else {
        return false;
    };
    std::process::Command::new(program)
        .args(argv)
        .args([
            "--die-with-parent",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
        ])
        .args(["--new-session", "--cap-drop", "ALL", "--ro-bind", "/", "/"])
        .args([
            "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--", "true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
