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

fn load_blocking(checkout: &Path, root: &str) -> Vec<ProjectDir> {
    project_dirs(root)
        .into_iter()
        .map(|path| {
            let files = match real_dir_inside(checkout, &path) {
                Some(dir) => PROJECT_FILES
                    .iter()
                    .filter_map(|name| Some(((*name).to_owned(), read_regular(&dir.join(name))?)))
                    .collect(),
                None => Default::default(),
            };
            ProjectDir { path, files }
        })
        .collect()
}

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

/// `Some(Some(bytes))` for a regular file within the size cap, `Some(None)` for a larger (or
/// unreadable) regular file, `None` when there is no regular file (missing, symlink, directory, FIFO).
fn read_regular(path: &Path) -> Option<Option<Vec<u8>>> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.len() > MAX_PROJECT_FILE_BYTES {
        return Some(None);
    }
    let read = || -> std::io::Result<Vec<u8>> {
        let file = std::fs::File::open(path)?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_PROJECT_FILE_BYTES + 1)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    Some(
        read()
            .ok()
            .filter(|b| b.len() as u64 <= MAX_PROJECT_FILE_BYTES),
    )
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
