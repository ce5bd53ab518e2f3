//! Validation rules for client input, with limits from the hosted product (PRODUCT-NOTES.md §2).

use super::Invalid;

/// Maximum length of a build or deploy command, in characters.
pub const MAX_COMMAND_LEN: usize = 512;
/// Maximum length of a root directory, in characters.
pub const MAX_ROOT_DIRECTORY_LEN: usize = 256;
/// Maximum length of a branch or path pattern, in characters.
pub const MAX_PATTERN_LEN: usize = 256;
/// Maximum number of patterns in one include/exclude list.
pub const MAX_PATTERNS: usize = 100;
/// Maximum length of names (trigger, token) and provider identifiers, in characters.
pub const MAX_NAME_LEN: usize = 256;
/// Maximum length of a deploy hook name, in characters.
pub const MAX_HOOK_NAME_LEN: usize = 58;
/// Maximum length of a branch name, in characters.
pub const MAX_BRANCH_LEN: usize = 256;
/// Maximum size of one environment variable value, in bytes (5 KB).
pub const MAX_ENV_VALUE_BYTES: usize = 5 * 1024;
/// Maximum number of environment variables per trigger.
pub const MAX_ENV_VARS: usize = 64;
/// Maximum size of a build token secret, in bytes.
pub const MAX_TOKEN_SECRET_BYTES: usize = 4096;
/// Maximum number of ids in a comma-separated list query parameter.
pub const MAX_IDS_PER_QUERY: usize = 20;
/// Maximum length of a commit hash, in characters (a SHA-256 object id is 64).
pub const MAX_COMMIT_HASH_LEN: usize = 64;

/// A text field trimmed, `min..=max` characters long, without control characters.
pub fn bounded_text(field: &str, value: &str, min: usize, max: usize) -> Result<String, Invalid> {
    let trimmed = value.trim();
    let n = trimmed.chars().count();
    if n < min || n > max {
        return Err(Invalid::field(
            field,
            format!("must be {min}-{max} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(Invalid::field(field, "must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

/// A shell command: may be empty (the step is then skipped), at most [`MAX_COMMAND_LEN`] characters.
pub fn command(field: &str, value: &str) -> Result<String, Invalid> {
    if value.chars().count() > MAX_COMMAND_LEN {
        return Err(Invalid::field(
            field,
            format!("must be at most {MAX_COMMAND_LEN} characters"),
        ));
    }
    if value.contains('\0') {
        return Err(Invalid::field(field, "must not contain NUL characters"));
    }
    Ok(value.trim().to_owned())
}

/// A root directory inside the repository: relative or `/`-anchored, never escaping it with `..`.
pub fn root_directory(value: &str) -> Result<String, Invalid> {
    let field = "root_directory";
    let v = value.trim();
    if v.chars().count() > MAX_ROOT_DIRECTORY_LEN {
        return Err(Invalid::field(
            field,
            format!("must be at most {MAX_ROOT_DIRECTORY_LEN} characters"),
        ));
    }
    if v.chars().any(char::is_control) || v.contains('\\') {
        return Err(Invalid::field(
            field,
            "must not contain control characters or '\\'",
        ));
    }
    if v.split('/').any(|seg| seg == "..") {
        return Err(Invalid::field(field, "must not contain '..'"));
    }
    Ok(if v.is_empty() {
        "/".to_owned()
    } else {
        v.to_owned()
    })
}

/// A list of branch or path patterns.
pub fn patterns(field: &str, values: &[String]) -> Result<Vec<String>, Invalid> {
    if values.len() > MAX_PATTERNS {
        return Err(Invalid::field(
            field,
            format!("must have at most {MAX_PATTERNS} entries"),
        ));
    }
    values
        .iter()
        .map(|p| bounded_text(field, p, 1, MAX_PATTERN_LEN))
        .collect()
}

/// A branch name as git accepts it (the subset that matters for safety: no spaces, `..`, or leading `-`).
pub fn branch(field: &str, value: &str) -> Result<String, Invalid> {
    let b = bounded_text(field, value, 1, MAX_BRANCH_LEN)?;
    let bad = b.starts_with('-')
        || b.contains("..")
        || b.contains("@{")
        || b.ends_with('/')
        || b.ends_with(".lock")
        || b.chars()
            .any(|c| c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        return Err(Invalid::field(field, "is not a valid git branch name"));
    }
    Ok(b)
}

/// A commit hash: 4–64 hexadecimal characters (abbreviated or full).
pub fn commit_hash(value: &str) -> Result<String, Invalid> {
    let v = value.trim();
    if v.len() < 4 || v.len() > MAX_COMMIT_HASH_LEN || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Invalid::field(
            "commit_hash",
            "must be 4-64 hexadecimal characters",
        ));
    }
    Ok(v.to_ascii_lowercase())
}

/// An environment variable value: at most [`MAX_ENV_VALUE_BYTES`] bytes.
pub fn env_value(key: &str, value: &str) -> Result<(), Invalid> {
    if value.len() > MAX_ENV_VALUE_BYTES {
        return Err(Invalid(format!(
            "{key}: value must be at most {MAX_ENV_VALUE_BYTES} bytes"
        )));
    }
    if value.contains('\0') {
        return Err(Invalid(format!(
            "{key}: value must not contain NUL characters"
        )));
    }
    Ok(())
}

/// The variables that describe how a host reaches the network: proxies (both spellings) and the CA
/// store. Kiln's own downloads and git fetches use them, and builds get them by default (issue 7).
pub const NETWORK_ENV_VARIABLES: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_directories() {
        assert_eq!(root_directory("").unwrap(), "/");
        assert_eq!(root_directory("/apps/web").unwrap(), "/apps/web");
        assert!(root_directory("../etc").is_err());
        assert!(root_directory("a/../../b").is_err());
    }

    #[test]
    fn branches_and_commits() {
        assert!(branch("branch", "main").is_ok());
        assert!(branch("branch", "feature/x-1").is_ok());
        assert!(branch("branch", "-rf").is_err());
        assert!(branch("branch", "a..b").is_err());
        assert!(branch("branch", "a b").is_err());
        assert!(commit_hash("abc123def456").is_ok());
        assert!(commit_hash("xyz").is_err());
        assert!(commit_hash("abc").is_err());
    }
}
