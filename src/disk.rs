//! Recognising a full disk where Kiln writes files (the data dir: workspaces, git mirrors, the build
//! cache): from an error (the file system's `ENOSPC` or `EDQUOT`, also as git reports them) and from
//! the file system itself. The database's own "full" errors are recognised by
//! [`crate::store::store_condition`].

use std::io;
use std::path::Path;

use crate::git::GitError;

/// Below this many bytes available to unprivileged users, a file system counts as full: a step that
/// failed there most likely failed for lack of space.
pub const FULL_BELOW_BYTES: u64 = 1024 * 1024;

/// The file system's messages for `ENOSPC` and `EDQUOT` (`strerror` in the C locale, which Kiln
/// runs git in).
const FULL_MESSAGES: [&str; 2] = ["No space left on device", "Disk quota exceeded"];

/// Whether `e` is the file system saying that it is full (no space or no inodes left, or over a quota).
pub fn is_full_io(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Whether anything in `e`'s chain says that a disk is full: an I/O error ([`is_full_io`]) or a git
/// command that failed with the file system's message for it.
pub fn is_full_error(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return is_full_io(io);
        }
        match cause.downcast_ref::<GitError>() {
            Some(GitError::Command { stderr, .. } | GitError::Fetch { stderr, .. }) => {
                FULL_MESSAGES.iter().any(|m| stderr.contains(m))
            }
            _ => false,
        }
    })
}

/// Whether the file system holding `path` is full now: under [`FULL_BELOW_BYTES`] available to
/// unprivileged users, or no inode left. `false` when it cannot be told (e.g. `path` is gone).
pub fn is_full(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string and `stat` is a valid place for one `statvfs`.
    if unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    available < FULL_BELOW_BYTES || (stat.f_files > 0 && stat.f_favail == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_full_disks_in_errors() {
        let enospc = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(is_full_io(&enospc));
        assert!(is_full_io(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_full_io(&io::Error::from_raw_os_error(libc::EACCES)));
        let chained = anyhow::Error::new(enospc).context("writing the checkout");
        assert!(is_full_error(&chained));
        let git = anyhow::Error::new(GitError::Command {
            args: "checkout".into(),
            code: Some(128),
            stderr: "error: unable to write file a.txt: No space left on device".into(),
        });
        assert!(is_full_error(&git));
        let other = anyhow::Error::new(GitError::Command {
            args: "checkout".into(),
            code: Some(128),
            stderr: "fatal: reference is not a tree".into(),
        });
        assert!(!is_full_error(&other));
    }

    #[test]
    fn a_roomy_file_system_is_not_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The test machines' temp dirs have far more than a MiB free.
        assert!(!is_full(dir.path()));
        assert!(!is_full(&dir.path().join("missing")));
    }
}
