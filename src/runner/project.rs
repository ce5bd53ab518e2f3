//! Reading a checkout's project files (package manifests, lockfiles, version files) for
//! [`crate::domain::plan_project`], safely: the checkout is pushed content, so only regular files
//! inside the checkout are read (a symlink is skipped, whatever it points at), each up to
//! [`MAX_PROJECT_FILE_BYTES`].

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::domain::{MAX_PROJECT_FILE_BYTES, PROJECT_FILES, ProjectDir, project_dirs};

/// The [`PROJECT_FILES`] of every directory from `root` (relative to the checkout) up to the
/// checkout's top, nearest first. Directories that are missing, or symlinks, contribute no files.
pub async fn load_project_dirs(checkout: &Path, root: &str) -> Vec<ProjectDir> {
    let (checkout, root) = (checkout.to_path_buf(), root.to_owned());
    tokio::task::spawn_blocking(move || load_blocking(&checkout, &root))
        .await
        .unwrap_or_default()
}

/// Largest manifest (`package.json`, `pnpm-workspace.yaml`) read, in bytes.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Largest version file (`.nvmrc`, …) read, in bytes.
const MAX_VERSION_FILE_BYTES: u64 = 64 * 1024;

fn load_blocking(checkout: &Path, root: &str) -> Vec<ProjectDir> {
    // Only the nearest lockfile counts: lockfiles further up are not read (a tree of large files
    // must not make Kiln hold each of them in memory).
    let mut lockfile_seen = false;
    project_dirs(root)
        .into_iter()
        .map(|path| {
            let mut files = std::collections::BTreeMap::new();
            if let Some(dir) = real_dir_inside(checkout, &path) {
                for name in PROJECT_FILES {
                    let lockfile = LOCKFILE_NAMES.contains(name);
                    let cap = match *name {
                        _ if lockfile => MAX_PROJECT_FILE_BYTES,
                        "package.json" | "pnpm-workspace.yaml" => MAX_MANIFEST_BYTES,
                        _ => MAX_VERSION_FILE_BYTES,
                    };
                    if lockfile && lockfile_seen {
                        continue;
                    }
                    if let Some(content) = read_regular(&dir.join(name), cap) {
                        files.insert((*name).to_owned(), content);
                    }
                }
            }
            lockfile_seen |= files.keys().any(|f| LOCKFILE_NAMES.contains(&f.as_str()));
            ProjectDir { path, files }
        })
        .collect()
}

/// The lockfiles among [`PROJECT_FILES`].
const LOCKFILE_NAMES: &[&str] = &[
    "pnpm-lock.yaml",
    "yarn.lock",
    "bun.lock",
    "bun.lockb",
    "package-lock.json",
    "npm-shrinkwrap.json",
];

/// `checkout/<relative>` when every component of it is a real directory (no symlink on the way).
fn real_dir_inside(checkout: &Path, relative: &str) -> Option<PathBuf> {
    let mut dir = checkout.to_path_buf();
    for part in relative.split('/').filter(|p| !p.is_empty()) {
        if part == ".." || part == "." {
            return None;
        }
        dir.push(part);
        if !std::fs::symlink_metadata(&dir).ok()?.is_dir() {
            return None;
        }
    }
    Some(dir)
}

/// `Some(Some(bytes))` for a regular file within `cap` bytes, `Some(None)` for a larger (or
/// unreadable) regular file, `None` when there is no regular file (missing, symlink, directory, FIFO).
/// Opened with `O_NOFOLLOW` and checked again once open, so a link swapped in is never read.
fn read_regular(path: &Path, cap: u64) -> Option<Option<Vec<u8>>> {
    use std::os::unix::fs::OpenOptionsExt;
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.len() > cap {
        return Some(None);
    }
    let read = || -> std::io::Result<Option<Vec<u8>>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        if !file.metadata()?.is_file() {
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(cap + 1).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    };
    match read() {
        Ok(Some(bytes)) => Some((bytes.len() as u64 <= cap).then_some(bytes)),
        Ok(None) => None,
        Err(_) => Some(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_regular_files_only_and_walks_up() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        std::fs::create_dir_all(repo.join("apps/web")).unwrap();
        std::fs::write(repo.join("apps/web/package.json"), "{}").unwrap();
        std::fs::write(repo.join("pnpm-lock.yaml"), "lockfileVersion: '9.0'").unwrap();
        std::os::unix::fs::symlink("/dev/zero", repo.join("apps/web/.nvmrc")).unwrap();
        std::os::unix::fs::symlink("/etc", repo.join("apps/linked")).unwrap();
        let dirs = load_project_dirs(repo, "apps/web").await;
        assert_eq!(dirs.len(), 3);
        assert_eq!(dirs[0].path, "apps/web");
        assert!(dirs[0].files.contains_key("package.json"));
        assert!(
            !dirs[0].files.contains_key(".nvmrc"),
            "a symlink is not read"
        );
        assert!(dirs[2].files.contains_key("pnpm-lock.yaml"));
        // A root directory that is a symlink out of the checkout reads nothing.
        let dirs = load_project_dirs(repo, "apps/linked").await;
        assert!(dirs[0].files.is_empty());
    }
}
