//! Reading a checkout's project files (package manifests, lockfiles, version files) for
//! [`crate::domain::plan_project`], safely: the checkout is pushed content, so it is read through
//! [`crate::untrusted::Tree`] (no link out of the checkout is followed, only regular files are read),
//! each file up to a cap ([`MAX_PROJECT_FILE_BYTES`] for lockfiles).

use std::path::Path;

use crate::domain::{MAX_PROJECT_FILE_BYTES, PROJECT_FILES, ProjectDir, project_dirs};
use crate::untrusted::{Tree, TreeError};

/// The [`PROJECT_FILES`] of every directory from `root` (relative to the checkout) up to the
/// checkout's top, nearest first. Directories that are missing, or reached through a link out of the
/// checkout, contribute no files.
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
    let tree = match Tree::open(checkout) {
        Ok(tree) => Some(tree),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the checkout");
            None
        }
    };
    // Only the nearest lockfile counts: lockfiles further up are not read (a tree of large files
    // must not make Kiln hold each of them in memory).
    let mut lockfile_seen = false;
    project_dirs(root)
        .into_iter()
        .map(|path| {
            let mut files = std::collections::BTreeMap::new();
            if let Some(tree) = tree.as_ref().filter(|tree| tree.is_dir(&path)) {
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
                    let rel = if path.is_empty() {
                        (*name).to_owned()
                    } else {
                        format!("{path}/{name}")
                    };
                    // A file too large (or unreadable) is known to exist, without its content.
                    let content = match tree.read(&rel, cap) {
                        Ok(bytes) => Some(bytes),
                        Err(TreeError::TooLarge { .. } | TreeError::Io { .. }) => None,
                        Err(_) => continue,
                    };
                    files.insert((*name).to_owned(), content);
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
            "a symlink out of the checkout is not read"
        );
        assert!(dirs[2].files.contains_key("pnpm-lock.yaml"));
        // A root directory that is a symlink out of the checkout reads nothing.
        let dirs = load_project_dirs(repo, "apps/linked").await;
        assert!(dirs[0].files.is_empty());
    }

    /// The input: a `package.json` that is a link to `/dev/zero` made the server allocate
    /// until the host ran out of memory. Links inside the checkout are still followed.
    #[tokio::test]
    async fn a_manifest_linked_out_of_the_checkout_is_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        std::fs::create_dir_all(repo.join("shared")).unwrap();
        std::fs::write(repo.join("shared/.node-version"), "22.1.0\n").unwrap();
        std::os::unix::fs::symlink("/dev/zero", repo.join("package.json")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", repo.join("yarn.lock")).unwrap();
        std::os::unix::fs::symlink("shared/.node-version", repo.join(".node-version")).unwrap();
        std::os::unix::fs::symlink("../../etc/passwd", repo.join(".nvmrc")).unwrap();
        let dirs = load_project_dirs(repo, "").await;
        assert_eq!(dirs.len(), 1);
        let names: Vec<&String> = dirs[0].files.keys().collect();
        assert_eq!(names, [".node-version"]);
        assert_eq!(
            dirs[0].files[".node-version"].as_deref(),
            Some(&b"22.1.0\n"[..])
        );
    }
}
