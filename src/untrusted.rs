//! Reading, writing, copying and measuring directory trees whose content Kiln does not trust: a
//! checkout of pushed content, a seed template, a build's workspace. Kiln reads these on the host,
//! often as root, so a link in them must never make it read or write elsewhere.
//!
//! Every path is resolved beneath the tree's root (`openat2` with `RESOLVE_BENEATH`): a symlink that
//! leaves the tree (an absolute target, or `..` above the root) is refused with [`TreeError::Outside`];
//! links that stay inside are followed. Only regular files are read (a FIFO is never waited on, a
//! device never read: no link can reach one outside the tree), each up to a cap the caller gives.
//! Walks ([`Tree::copy_into`], [`Tree::disk_usage`]) follow no link at all and keep one directory open
//! at a time, however deep the tree.
//!
//! On a kernel without `openat2` (before Linux 5.6, or filtered by a container's seccomp profile)
//! paths are resolved one component at a time with `O_NOFOLLOW`, refusing every symlink on the way.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Why a path of an untrusted tree was not read, written or copied.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// Nothing there (or a directory on the way is missing).
    #[error("{0}: no such file or directory")]
    Missing(String),
    /// A symlink on the way leaves the tree (or, without `openat2`, any symlink on the way).
    #[error("{0}: a symbolic link on the way leads out of the tree")]
    Outside(String),
    /// There is something, but not a regular file (a directory, FIFO, socket, device, or a symlink
    /// where a file is to be written).
    #[error("{0} is not a regular file")]
    NotAFile(String),
    /// There is something, but not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(String),
    /// The file, or the whole copy, is larger than allowed.
    #[error("{what} is larger than {cap} bytes")]
    TooLarge { what: String, cap: u64 },
    /// A copy has more entries or levels than allowed.
    #[error("{0}")]
    TooMany(String),
    /// Any other failure of the system call.
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

impl TreeError {
    fn io(path: &str, errno: rustix::io::Errno) -> TreeError {
        TreeError::Io {
            path: path.to_owned(),
            source: errno.into(),
        }
    }

    /// Maps the error of opening `path` beneath a root.
    fn open(path: &str, errno: rustix::io::Errno) -> TreeError {
        use rustix::io::Errno;
        match errno {
            Errno::NOENT => TreeError::Missing(path.to_owned()),
            Errno::XDEV | Errno::LOOP => TreeError::Outside(path.to_owned()),
            Errno::NOTDIR => TreeError::NotADirectory(path.to_owned()),
            other => TreeError::io(path, other),
        }
    }
}

/// Bounds of [`Tree::copy_into`].
#[derive(Debug, Clone, Copy)]
pub struct CopyLimits {
    /// Total bytes of file content.
    pub max_bytes: u64,
    /// Files, directories and links together.
    pub max_entries: u64,
    /// Directory levels below the root.
    pub max_depth: usize,
}

/// An opened directory whose content is untrusted; every path given to it is relative to it.
#[derive(Debug)]
pub struct Tree {
    fd: OwnedFd,
    /// For messages only.
    path: PathBuf,
}

/// Paths longer than this are resolved a few components at a time (each `openat2` takes at most
/// `PATH_MAX` bytes).
const MAX_RESOLVE_BYTES: usize = 2048;

impl Tree {
    /// Opens the directory `root` (a path Kiln trusts; only its last component must not be a link).
    pub fn open(root: &Path) -> Result<Tree, TreeError> {
        let shown = root.display().to_string();
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| TreeError::open(&shown, e))?;
        Ok(Tree {
            fd,
            path: root.to_path_buf(),
        })
    }

    /// The directory `rel` beneath this one, as a tree of its own.
    pub fn open_dir(&self, rel: &str) -> Result<Tree, TreeError> {
        let fd = self.resolve(rel, OFlags::RDONLY | OFlags::DIRECTORY, Links::InTree)?;
        Ok(Tree {
            fd,
            path: self.path.join(rel),
        })
    }

    /// Whether `rel` is a directory beneath this one (links inside the tree followed).
    pub fn is_dir(&self, rel: &str) -> bool {
        self.open_dir(rel).is_ok()
    }

    /// The content of the regular file `rel`, if it has at most `cap` bytes.
    pub fn read(&self, rel: &str, cap: u64) -> Result<Vec<u8>, TreeError> {
        // Non-blocking: opening a FIFO for reading must not wait for a writer.
        let fd = self.resolve(rel, OFlags::RDONLY | OFlags::NONBLOCK, Links::InTree)?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| TreeError::io(rel, e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(TreeError::NotAFile(rel.to_owned()));
        }
        let too_large = || TreeError::TooLarge {
            what: rel.to_owned(),
            cap,
        };
        if u64::try_from(stat.st_size).unwrap_or(u64::MAX) > cap {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(cap.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|source| TreeError::Io {
                path: rel.to_owned(),
                source,
            })?;
        if bytes.len() as u64 > cap {
            return Err(too_large());
        }
        Ok(bytes)
    }

    /// The names and types of the entries of this directory (`.` and `..` left out); a link is
    /// [`FileType::Symlink`], whatever it points at.
    pub fn entries(&self) -> Result<Vec<(OsString, FileType)>, TreeError> {
        list(self.fd.as_fd(), &self.path.display().to_string())
    }

    /// Writes `bytes` to the regular file `rel` (created 0644, or truncated), creating missing
    /// directories on the way (0755). Refuses to write through a symlink as the last component.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), TreeError> {
        let parts = components(rel).ok_or_else(|| TreeError::Outside(rel.to_owned()))?;
        let Some((name, parents)) = parts.split_last() else {
            return Err(TreeError::NotAFile(rel.to_owned()));
        };
        let mut dir: Option<OwnedFd> = None;
        for (i, part) in parents.iter().enumerate() {
            let prefix = join_parts(&parts[..=i]);
            dir = Some(
                match self.resolve(&prefix, OFlags::RDONLY | OFlags::DIRECTORY, Links::InTree) {
                    Ok(fd) => fd,
                    Err(TreeError::Missing(_)) => {
                        let parent = dir.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
                        match rustix::fs::mkdirat(parent, *part, Mode::from_raw_mode(0o755)) {
                            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                            Err(e) => return Err(TreeError::io(&prefix, e)),
                        }
                        rustix::fs::openat(
                            parent,
                            *part,
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                        .map_err(|e| TreeError::open(&prefix, e))?
                    }
                    Err(e) => return Err(e),
                },
            );
        }
        let parent = dir.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
        let fd = rustix::fs::openat(
            parent,
            *name,
            OFlags::WRONLY
                | OFlags::CREATE
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::CLOEXEC
                | OFlags::NOCTTY,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NXIO => {
                TreeError::NotAFile(rel.to_owned())
            }
            other => TreeError::open(rel, other),
        })?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| TreeError::io(rel, e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(TreeError::NotAFile(rel.to_owned()));
        }
        let mut file = std::fs::File::from(fd);
        let io_err = |source| TreeError::Io {
            path: rel.to_owned(),
            source,
        };
        file.set_len(0).map_err(io_err)?;
        file.write_all(bytes).map_err(io_err)
    }

    /// Copies this tree into the empty directory `dest` (Kiln's), following no link: directories and
    /// regular files are copied (0755 / 0644, or 0755 for an executable file), symlinks are recreated
    /// as they are, anything else and every entry named `.git` is left out. Fails once `limits` are
    /// passed (what was copied so far stays).
    pub fn copy_into(&self, dest: &Path, limits: CopyLimits) -> Result<(), TreeError> {
        let dest = Tree::open(dest)?;
        let mut bytes = 0u64;
        let mut entries = 0u64;
        // Directories still to copy, as `/`-joined names relative to both roots.
        let mut pending: Vec<(Vec<u8>, usize)> = vec![(Vec::new(), 0)];
        while let Some((rel, depth)) = pending.pop() {
            let shown = String::from_utf8_lossy(&rel).into_owned();
            let src_dir = self.walk_dir(&rel)?;
            let dst_dir = dest.walk_dir(&rel)?;
            for (name, kind) in list(src_dir.as_fd(), &shown)? {
                if name == ".git" {
                    continue;
                }
                entries += 1;
                if entries > limits.max_entries {
                    return Err(TreeError::TooMany(format!(
                        "more than {} files and directories",
                        limits.max_entries
                    )));
                }
                let child = child_path(&rel, &name);
                let child_shown = String::from_utf8_lossy(&child).into_owned();
                match kind {
                    FileType::Directory => {
                        if depth + 1 > limits.max_depth {
                            return Err(TreeError::TooMany(format!(
                                "more than {} directory levels",
                                limits.max_depth
                            )));
                        }
                        rustix::fs::mkdirat(&dst_dir, name.as_os_str(), Mode::from_raw_mode(0o755))
                            .map_err(|e| TreeError::io(&child_shown, e))?;
                        pending.push((child, depth + 1));
                    }
                    FileType::Symlink => {
                        let target = rustix::fs::readlinkat(&src_dir, name.as_os_str(), Vec::new())
                            .map_err(|e| TreeError::io(&child_shown, e))?;
                        rustix::fs::symlinkat(
                            OsStr::from_bytes(target.as_bytes()),
                            &dst_dir,
                            name.as_os_str(),
                        )
                        .map_err(|e| TreeError::io(&child_shown, e))?;
                    }
                    FileType::RegularFile => {
                        let budget = limits.max_bytes.saturating_sub(bytes);
                        bytes += copy_file(
                            src_dir.as_fd(),
                            dst_dir.as_fd(),
                            &name,
                            &child_shown,
                            budget,
                        )
                        .map_err(|e| match e {
                            TreeError::TooLarge { .. } => TreeError::TooLarge {
                                what: "the copied tree".to_owned(),
                                cap: limits.max_bytes,
                            },
                            other => other,
                        })?;
                    }
                    // FIFOs, sockets and devices are not content.
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Bytes allocated on disk by this tree (`st_blocks`, so sparse files count what they use;
    /// hard-linked files once), following no link and staying on the root's file system. Stops
    /// early and returns the sum so far once it passes `stop_above`. Entries that vanish meanwhile
    /// are skipped; a directory its owner made unreadable is made readable to its owner again
    /// (as Kiln without root would otherwise not see inside).
    pub fn disk_usage(&self, stop_above: u64) -> Result<u64, TreeError> {
        let root_stat = rustix::fs::fstat(&self.fd).map_err(|e| TreeError::io(".", e))?;
        let mut total = block_bytes(&root_stat);
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut pending: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(rel) = pending.pop() {
            if total > stop_above {
                break;
            }
            let shown = String::from_utf8_lossy(&rel).into_owned();
            let dir = match self.walk_dir(&rel) {
                Ok(dir) => dir,
                Err(
                    TreeError::Missing(_) | TreeError::NotADirectory(_) | TreeError::Outside(_),
                ) => {
                    continue;
                }
                Err(TreeError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EACCES) && !rel.is_empty() =>
                {
                    self.make_readable(&rel)?;
                    match self.walk_dir(&rel) {
                        Ok(dir) => dir,
                        Err(_) => continue,
                    }
                }
                Err(e) => return Err(e),
            };
            let names = match list(dir.as_fd(), &shown) {
                Ok(names) => names,
                Err(TreeError::Missing(_)) => continue,
                Err(e) => return Err(e),
            };
            for (name, _) in names {
                let Ok(stat) =
                    rustix::fs::statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                else {
                    continue;
                };
                let kind = FileType::from_raw_mode(stat.st_mode);
                if kind != FileType::Directory && stat.st_nlink > 1 {
                    // st_dev and st_ino are u64 on Linux' 64-bit ABIs.
                    #[allow(clippy::useless_conversion)]
                    let key = (u64::from(stat.st_dev), u64::from(stat.st_ino));
                    if !seen.insert(key) {
                        continue;
                    }
                }
                total = total.saturating_add(block_bytes(&stat));
                if kind == FileType::Directory && stat.st_dev == root_stat.st_dev {
                    pending.push(child_path(&rel, &name));
                }
            }
        }
        Ok(total)
    }

    /// Gives the owner of the directory `rel` read and search permission on it again.
    fn make_readable(&self, rel: &[u8]) -> Result<(), TreeError> {
        let shown = String::from_utf8_lossy(rel).into_owned();
        let (parent, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&[][..], rel),
        };
        let parent = self.walk_dir(parent)?;
        let stat = rustix::fs::statat(&parent, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| TreeError::io(&shown, e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            return Ok(());
        }
        let mode = Mode::from_raw_mode((stat.st_mode & 0o7777) | 0o500);
        rustix::fs::chmodat(&parent, OsStr::from_bytes(name), mode, AtFlags::empty())
            .map_err(|e| TreeError::io(&shown, e))
    }

    /// Opens the directory `rel` (names read from the tree, `/`-joined) without following any link.
    fn walk_dir(&self, rel: &[u8]) -> Result<OwnedFd, TreeError> {
        let rel = String::from_utf8_lossy(rel);
        if rel.is_empty() {
            return rustix::io::dup(&self.fd).map_err(|e| TreeError::io(".", e));
        }
        self.resolve(&rel, OFlags::RDONLY | OFlags::DIRECTORY, Links::None)
    }

    /// Opens `rel` beneath the root with `flags` (`O_CLOEXEC` and `O_NOCTTY` added).
    fn resolve(&self, rel: &str, flags: OFlags, links: Links) -> Result<OwnedFd, TreeError> {
        let parts = components(rel).ok_or_else(|| TreeError::Outside(rel.to_owned()))?;
        let flags = flags | OFlags::CLOEXEC | OFlags::NOCTTY;
        if parts.is_empty() {
            return rustix::fs::openat(&self.fd, ".", flags, Mode::empty())
                .map_err(|e| TreeError::open(rel, e));
        }
        if !openat2_works() {
            return resolve_by_components(self.fd.as_fd(), &parts, flags, rel);
        }
        let mut resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        if links == Links::None {
            resolve |= ResolveFlags::NO_SYMLINKS;
        }
        // A long path is resolved in chunks; a link inside the tree that goes up across a chunk's
        // start is then refused (conservative).
        let mut dir: Option<OwnedFd> = None;
        let mut rest: &[&str] = &parts;
        loop {
            let mut take = 0;
            let mut len = 0;
            while take < rest.len() && (take == 0 || len + rest[take].len() < MAX_RESOLVE_BYTES) {
                len += rest[take].len() + 1;
                take += 1;
            }
            let last = take == rest.len();
            let chunk = join_parts(&rest[..take]);
            let chunk_flags = if last {
                flags
            } else {
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
            };
            let at = dir.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
            let fd = rustix::fs::openat2(at, chunk.as_str(), chunk_flags, Mode::empty(), resolve)
                .map_err(|e| TreeError::open(rel, e))?;
            if last {
                return Ok(fd);
            }
            dir = Some(fd);
            rest = &rest[take..];
        }
    }
}

/// Which symlinks a resolution may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Links {
    /// Those that stay beneath the root.
    InTree,
    /// None.
    None,
}

/// The components of a relative path (`""` and `.` dropped); `None` when it is absolute or has `..`.
fn components(rel: &str) -> Option<Vec<&str>> {
    if rel.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    (!parts.contains(&"..")).then_some(parts)
}

fn join_parts(parts: &[&str]) -> String {
    parts.join("/")
}

fn child_path(rel: &[u8], name: &OsStr) -> Vec<u8> {
    let mut child = rel.to_vec();
    if !child.is_empty() {
        child.push(b'/');
    }
    child.extend_from_slice(name.as_bytes());
    child
}

/// The entries of the directory `dir` (its type from the directory entry, or from `lstat` where the
/// file system does not say).
fn list(dir: BorrowedFd<'_>, shown: &str) -> Result<Vec<(OsString, FileType)>, TreeError> {
    let reader = rustix::fs::Dir::read_from(dir).map_err(|e| TreeError::io(shown, e))?;
    let mut out = Vec::new();
    for entry in reader {
        let entry = entry.map_err(|e| TreeError::io(shown, e))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsString::from_vec(name.to_vec());
        let kind = match entry.file_type() {
            FileType::Unknown => {
                match rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(TreeError::io(shown, e)),
                }
            }
            kind => kind,
        };
        out.push((name, kind));
    }
    Ok(out)
}

/// Copies the regular file `name` of `from` to a new file in `to`; at most `budget` bytes.
fn copy_file(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    name: &OsStr,
    shown: &str,
    budget: u64,
) -> Result<u64, TreeError> {
    let src = rustix::fs::openat(
        from,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| TreeError::open(shown, e))?;
    let stat = rustix::fs::fstat(&src).map_err(|e| TreeError::io(shown, e))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        // Swapped for something else since it was listed.
        return Ok(0);
    }
    let mode = if stat.st_mode & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    let dst = rustix::fs::openat(
        to,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map_err(|e| TreeError::io(shown, e))?;
    let io_err = |source| TreeError::Io {
        path: shown.to_owned(),
        source,
    };
    let copied = io::copy(
        &mut std::fs::File::from(src).take(budget.saturating_add(1)),
        &mut std::fs::File::from(dst),
    )
    .map_err(io_err)?;
    if copied > budget {
        return Err(TreeError::TooLarge {
            what: shown.to_owned(),
            cap: budget,
        });
    }
    Ok(copied)
}

fn block_bytes(stat: &rustix::fs::Stat) -> u64 {
    u64::try_from(stat.st_blocks)
        .unwrap_or(0)
        .saturating_mul(512)
}

/// Without `openat2`: one component at a time, refusing every symlink.
fn resolve_by_components(
    root: BorrowedFd<'_>,
    parts: &[&str],
    flags: OFlags,
    shown: &str,
) -> Result<OwnedFd, TreeError> {
    let mut dir: Option<OwnedFd> = None;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let part_flags = if last {
            flags | OFlags::NOFOLLOW
        } else {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        };
        let at = dir.as_ref().map_or(root, |fd| fd.as_fd());
        let fd = rustix::fs::openat(at, *part, part_flags, Mode::empty())
            .map_err(|e| TreeError::open(shown, e))?;
        if !last {
            // O_PATH | O_NOFOLLOW opens a symlink itself instead of failing.
            let stat = rustix::fs::fstat(&fd).map_err(|e| TreeError::io(shown, e))?;
            if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
                return Err(TreeError::Outside(shown.to_owned()));
            }
        }
        dir = Some(fd);
    }
    dir.ok_or_else(|| TreeError::Missing(shown.to_owned()))
}

/// Whether `openat2` can be used here (checked once).
fn openat2_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        match rustix::fs::openat2(
            rustix::fs::CWD,
            "/",
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "openat2 is not available: symlinks in checkouts are not followed at all"
                );
                false
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn tree() -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("apps/web")).unwrap();
        std::fs::write(root.join("package.json"), "{}").unwrap();
        std::fs::write(root.join("apps/web/.nvmrc"), "22\n").unwrap();
        std::fs::write(dir.path().join("outside.txt"), "host secret").unwrap();
        symlink("/dev/zero", root.join("zero")).unwrap();
        symlink("../outside.txt", root.join("up")).unwrap();
        symlink(dir.path().join("outside.txt"), root.join("abs")).unwrap();
        symlink("apps/web/.nvmrc", root.join("in-tree")).unwrap();
        symlink("/etc", root.join("etc")).unwrap();
        symlink("apps", root.join("apps-link")).unwrap();
        let tree = Tree::open(&root).unwrap();
        (dir, tree)
    }

    #[test]
    fn reads_regular_files_and_links_that_stay_inside_only() {
        let (_dir, tree) = tree();
        assert_eq!(tree.read("package.json", 10).unwrap(), b"{}");
        assert_eq!(tree.read("in-tree", 10).unwrap(), b"22\n");
        assert_eq!(tree.read("apps-link/web/.nvmrc", 10).unwrap(), b"22\n");
        for outside in [
            "zero",
            "up",
            "abs",
            "etc/passwd",
            "../outside.txt",
            "/etc/passwd",
        ] {
            assert!(
                matches!(tree.read(outside, 1 << 20), Err(TreeError::Outside(_))),
                "{outside}: {:?}",
                tree.read(outside, 1 << 20)
            );
        }
        assert!(matches!(tree.read("apps", 10), Err(TreeError::NotAFile(_))));
        assert!(matches!(tree.read("nope", 10), Err(TreeError::Missing(_))));
        assert!(matches!(
            tree.read("package.json", 1),
            Err(TreeError::TooLarge { cap: 1, .. })
        ));
        assert!(tree.is_dir("apps-link/web"));
        assert!(!tree.is_dir("etc"));
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let (dir, tree) = tree();
        let fifo = dir.path().join("repo/fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(matches!(tree.read("fifo", 10), Err(TreeError::NotAFile(_))));
        assert!(matches!(
            tree.write("fifo", b"x"),
            Err(TreeError::NotAFile(_))
        ));
    }

    #[test]
    fn writes_never_go_through_a_link_out_of_the_tree() {
        let (dir, tree) = tree();
        tree.write("new/dir/file.txt", b"hello").unwrap();
        assert_eq!(tree.read("new/dir/file.txt", 10).unwrap(), b"hello");
        tree.write("package.json", b"{\"a\":1}").unwrap();
        assert_eq!(tree.read("package.json", 100).unwrap(), b"{\"a\":1}");
        assert!(matches!(
            tree.write("etc/cron.d/x", b"evil"),
            Err(TreeError::Outside(_))
        ));
        assert!(matches!(
            tree.write("abs", b"evil"),
            Err(TreeError::NotAFile(_))
        ));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("outside.txt")).unwrap(),
            "host secret"
        );
        assert!(matches!(
            tree.write("../escape", b"x"),
            Err(TreeError::Outside(_))
        ));
    }

    #[test]
    fn copies_without_following_links_and_within_limits() {
        let (dir, tree) = tree();
        std::fs::create_dir(dir.path().join("repo/.git")).unwrap();
        std::fs::write(dir.path().join("repo/.git/config"), "x").unwrap();
        let dest = dir.path().join("copy");
        std::fs::create_dir(&dest).unwrap();
        let limits = CopyLimits {
            max_bytes: 1 << 20,
            max_entries: 100,
            max_depth: 10,
        };
        tree.copy_into(&dest, limits).unwrap();
        assert_eq!(
            std::fs::read(dest.join("apps/web/.nvmrc")).unwrap(),
            b"22\n"
        );
        assert_eq!(
            std::fs::read_link(dest.join("etc")).unwrap(),
            Path::new("/etc")
        );
        assert_eq!(
            std::fs::read_link(dest.join("zero")).unwrap(),
            Path::new("/dev/zero")
        );
        assert!(!dest.join(".git").exists());
        // Too many bytes, entries or levels.
        for (limits, what) in [
            (
                CopyLimits {
                    max_bytes: 3,
                    ..limits
                },
                "larger",
            ),
            (
                CopyLimits {
                    max_entries: 3,
                    ..limits
                },
                "files",
            ),
            (
                CopyLimits {
                    max_depth: 1,
                    ..limits
                },
                "levels",
            ),
        ] {
            let dest = tempfile::tempdir().unwrap();
            let err = tree.copy_into(dest.path(), limits).unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    #[test]
    fn disk_usage_counts_blocks_once_and_follows_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/big"), vec![1u8; 1 << 20]).unwrap();
        std::fs::hard_link(root.join("a/b/big"), root.join("a/same")).unwrap();
        symlink("/usr", root.join("usr")).unwrap();
        let tree = Tree::open(&root).unwrap();
        let used = tree.disk_usage(u64::MAX).unwrap();
        assert!((1 << 20..2 << 20).contains(&used), "{used}");
        assert!(tree.disk_usage(1000).unwrap() <= 2 << 20);
    }

    #[test]
    fn the_component_fallback_refuses_every_link() {
        let (_dir, tree) = tree();
        let flags = OFlags::RDONLY | OFlags::CLOEXEC;
        let ok = resolve_by_components(tree.fd.as_fd(), &["apps", "web", ".nvmrc"], flags, "x");
        assert!(ok.is_ok());
        for parts in [
            &["apps-link", "web", ".nvmrc"][..],
            &["in-tree"],
            &["etc", "passwd"],
        ] {
            assert!(
                resolve_by_components(tree.fd.as_fd(), parts, flags, "x").is_err(),
                "{parts:?}"
            );
        }
    }
}
