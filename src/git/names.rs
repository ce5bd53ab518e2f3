//! Checks on every name that reaches a git command line: branch names, object ids, revisions, paths
//! inside a tree and repository owner/name slugs. Nothing that passes can be read as an option or as
//! a revision expression (`main~1`, `a..b`, `@{-1}`).

use super::GitError;
use crate::domain::valid_branch_name;
pub use crate::domain::valid_refname;

/// Shortest abbreviated object id accepted (git's own minimum).
pub const MIN_ABBREV: usize = 4;
/// Length of a full SHA-256 object id; SHA-1 ids have 40.
pub const MAX_OID_LEN: usize = 64;

fn invalid(what: &'static str, value: &str) -> GitError {
    GitError::InvalidName {
        what,
        value: value.chars().take(300).collect(),
    }
}

/// A branch name usable as `refs/heads/<name>`: the one branch-name rule
/// ([`crate::domain::valid_branch_name`], git's `check-ref-format --branch`).
pub fn check_branch(name: &str) -> Result<(), GitError> {
    if valid_branch_name(name) {
        Ok(())
    } else {
        Err(invalid("branch name", name))
    }
}

/// A hexadecimal object id, full or abbreviated (4–64 digits); returned in lower case.
pub fn check_hex(what: &'static str, id: &str) -> Result<String, GitError> {
    if (MIN_ABBREV..=MAX_OID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(invalid(what, id))
    }
}

/// Whether `id` is a full SHA-1 or SHA-256 object id.
pub fn is_full_oid(id: &str) -> bool {
    (id.len() == 40 || id.len() == 64) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A revision to read trees from: an object id, `HEAD`, or a full reference name (`refs/heads/main`).
pub fn check_rev(rev: &str) -> Result<String, GitError> {
    if rev == "HEAD" {
        return Ok(rev.to_owned());
    }
    if rev.starts_with("refs/") && valid_refname(rev) {
        return Ok(rev.to_owned());
    }
    check_hex("revision", rev)
}

/// A path inside a tree, relative to its root: `/`, `.` and empty components are dropped, `..` is
/// refused. Returns the normalised path (`""` = the root).
pub fn check_tree_path(path: &str) -> Result<String, GitError> {
    if path.chars().any(|c| c.is_ascii_control()) {
        return Err(invalid("path", path));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("path", path)),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// A repository owner or name as substituted into the clone URL and used as a directory name:
/// GitHub's alphabet (`A-Z a-z 0-9 . _ -`), at most 100 characters, not `.` or `..`.
pub fn check_slug(what: &'static str, slug: &str) -> Result<(), GitError> {
    let ok = !slug.is_empty()
        && slug.len() <= 100
        && slug != "."
        && slug != ".."
        && !slug.starts_with('-')
        && slug
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(invalid(what, slug)) }
}

/// Longest submodule path or name accepted, in bytes.
pub const MAX_SUBMODULE_PATH_LEN: usize = 1024;

/// A submodule's path from `.gitmodules`: relative, inside the checkout (no `..`, `.` or empty
/// component, no leading `/`), never `.git` or inside one (in any case, with trailing dots or spaces
/// that some file systems drop), no control characters.
pub fn check_submodule_path(path: &str) -> Result<(), GitError> {
    let is_dot_git = |part: &str| {
        part.trim_end_matches(['.', ' '])
            .eq_ignore_ascii_case(".git")
    };
    let ok = !path.is_empty()
        && path.len() <= MAX_SUBMODULE_PATH_LEN
        && !path.chars().any(|c| c.is_control())
        && path
            .split('/')
            .all(|part| !matches!(part, "" | "." | "..") && !is_dot_git(part));
    if ok {
        Ok(())
    } else {
        Err(invalid("submodule path", path))
    }
}

/// A submodule's name (the `<name>` of `submodule.<name>.path`): git's own rule (no `..` component,
/// split at `/` and `\`, so that a name used as a directory under `.git/modules` cannot escape), no
/// control characters.
pub fn check_submodule_name(name: &str) -> Result<(), GitError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SUBMODULE_PATH_LEN
        && !name.chars().any(|c| c.is_control())
        && name.split(['/', '\\']).all(|part| part != "..");
    if ok {
        Ok(())
    } else {
        Err(invalid("submodule name", name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_follow_git_rules() {
        for good in [
            "main",
            "feature/x",
            "release-1.2",
            "dependabot/npm/a-1.0",
            "ünïcode",
        ] {
            assert!(check_branch(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "--upload-pack=x",
            "-x",
            "main~1",
            "a..b",
            "main^",
            "x:y",
            "@{-1}",
            "a b",
            "a/",
            "/a",
            "a//b",
            ".hidden",
            "a/.b",
            "x.lock",
            "x.",
            "a*",
            "a?",
            "a[",
            "a\\b",
            "a\nb",
            "HEAD",
        ] {
            assert!(check_branch(bad).is_err(), "{bad:?}");
        }
        assert!(check_branch(&"a".repeat(crate::domain::MAX_BRANCH_LEN + 1)).is_err());
        assert!(check_branch("a\0b").is_err());
    }

    #[test]
    fn hex_ids_revisions_paths_and_slugs() {
        assert_eq!(check_hex("commit", "ABCD").unwrap(), "abcd");
        assert!(check_hex("commit", "abc").is_err());
        assert!(check_hex("commit", "abcg").is_err());
        assert!(check_hex("commit", &"a".repeat(65)).is_err());
        assert!(is_full_oid(&"a".repeat(40)) && is_full_oid(&"a".repeat(64)));
        assert!(!is_full_oid(&"a".repeat(41)));
        assert!(check_rev("HEAD").is_ok() && check_rev("refs/heads/main").is_ok());
        assert!(check_rev("main").is_err() && check_rev("refs/heads/a..b").is_err());
        assert!(check_rev("--output=/tmp/x").is_err());
        assert_eq!(check_tree_path("/").unwrap(), "");
        assert_eq!(check_tree_path("./a//b/").unwrap(), "a/b");
        assert!(check_tree_path("a/../b").is_err());
        assert!(check_slug("repo", ".github").is_ok() && check_slug("repo", "my_repo-1.x").is_ok());
        for bad in ["", ".", "..", "a/b", "-x", "a b", "a%2f", "a@b"] {
            assert!(check_slug("repo", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn submodule_paths_and_names_stay_inside() {
        for good in [
            "themes/ananke",
            "a",
            "lib/x.y",
            "-dash",
            ".github/x",
            "a.git",
        ] {
            assert!(check_submodule_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../outside",
            "a/../../b",
            "/etc",
            "a//b",
            "a/",
            "./a",
            ".git",
            ".GIT",
            "x/.git/hooks",
            ".git. ",
            "a\nb",
            "a\0b",
        ] {
            assert!(check_submodule_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_submodule_name("themes/ananke").is_ok());
        assert!(check_submodule_name("a.b c").is_ok());
        for bad in ["", "..", "../x", "a/../b", "a\\..\\b", "x\ny"] {
            assert!(check_submodule_name(bad).is_err(), "{bad:?}");
        }
    }
}
