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
/// Maximum number of `*` wildcards in one branch or path pattern. The hosted product documents `*`
/// alone, at the start or at the end of a rule; Kiln takes it anywhere, a bounded number of times,
/// which bounds the cost of matching a push's paths.
pub const MAX_PATTERN_WILDCARDS: usize = 8;
/// Maximum length of names (trigger, token) and provider identifiers, in characters.
pub const MAX_NAME_LEN: usize = 256;
/// Maximum length of a deploy hook name, in characters.
pub const MAX_HOOK_NAME_LEN: usize = 58;
/// Maximum length of a branch name, in bytes (git's limit on one file name, which a loose ref is).
pub const MAX_BRANCH_LEN: usize = 255;
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

/// A list of branch or path patterns: at most [`MAX_PATTERNS`], each 1–[`MAX_PATTERN_LEN`]
/// characters with at most [`MAX_PATTERN_WILDCARDS`] `*`.
pub fn patterns(field: &str, values: &[String]) -> Result<Vec<String>, Invalid> {
    if values.len() > MAX_PATTERNS {
        return Err(Invalid::field(
            field,
            format!("must have at most {MAX_PATTERNS} entries"),
        ));
    }
    values
        .iter()
        .map(|p| {
            let p = bounded_text(field, p, 1, MAX_PATTERN_LEN)?;
            if p.matches('*').count() > MAX_PATTERN_WILDCARDS {
                return Err(Invalid::field(
                    field,
                    format!("a pattern may have at most {MAX_PATTERN_WILDCARDS} '*' wildcards"),
                ));
            }
            Ok(p)
        })
        .collect()
}

/// Whether `name` is a full reference name by git's rules (`git check-ref-format`): no control
/// character (U+0000 included), space, `~ ^ : ? * [ \`, `..`, `@{`, `//`; no component that is empty,
/// starts with `.` or ends with `.lock`; not `@`, not ending with `/` or `.`.
pub fn valid_refname(name: &str) -> bool {
    if name.is_empty()
        || name == "@"
        || name.ends_with('/')
        || name.ends_with('.')
        || name.contains("..")
        || name.contains("@{")
        || name.contains("//")
    {
        return false;
    }
    let bad_char = |c: char| {
        c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    };
    if name.chars().any(bad_char) {
        return false;
    }
    name.split('/')
        .all(|part| !part.is_empty() && !part.starts_with('.') && !part.ends_with(".lock"))
}

/// Whether `name` is a branch name: `git check-ref-format --branch` rules (which also refuse `HEAD`
/// and a leading `-`), at most [`MAX_BRANCH_LEN`] bytes. The one rule for branch names from the API,
/// from webhook payloads and before any git command.
pub fn valid_branch_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_BRANCH_LEN
        && !name.starts_with('-')
        && name != "HEAD"
        && valid_refname(&format!("refs/heads/{name}"))
}

/// A branch name from a client (surrounding whitespace trimmed): [`valid_branch_name`].
pub fn branch(field: &str, value: &str) -> Result<String, Invalid> {
    let b = value.trim();
    if !valid_branch_name(b) {
        return Err(Invalid::field(
            field,
            format!(
                "is not a valid git branch name (git check-ref-format rules, 1-{MAX_BRANCH_LEN} bytes)"
            ),
        ));
    }
    Ok(b.to_owned())
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

/// An environment variable value: at most [`MAX_ENV_VALUE_BYTES`] bytes, without control characters
/// other than tab, line feed and carriage return (a NUL cannot be in an environment at all; the
/// others would each take six bytes in a JSON response, which keeps the variable lists bounded).
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
    if value
        .bytes()
        .any(|b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
    {
        return Err(Invalid(format!(
            "{key}: value must not contain control characters other than tab and line breaks"
        )));
    }
    Ok(())
}

/// Longest commit message stored with a build, in bytes; a longer one (from a webhook payload or
/// read from the repository) is cut on a character boundary.
pub const MAX_COMMIT_MESSAGE_BYTES: usize = 4096;
/// Longest commit author (an e-mail address or a name) stored with a build, in bytes.
pub const MAX_AUTHOR_BYTES: usize = 256;

/// Free text from outside (a webhook payload, a repository) made storable: U+0000, which a
/// PostgreSQL `text` cannot hold, becomes U+FFFD, and what is longer than `max_bytes` is cut at the
/// last character boundary within it.
pub fn storable_text(value: &str, max_bytes: usize) -> String {
    let mut text = value.replace('\0', "\u{fffd}");
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
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
    fn patterns_have_bounded_wildcards() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(patterns("path_includes", &v(&["*a*b*c*d*e*f*g*"])).is_ok());
        assert!(patterns("path_includes", &v(&["*a*b*c*d*e*f*g*h*"])).is_err());
        assert!(patterns("path_includes", &vec!["x".to_owned(); MAX_PATTERNS + 1]).is_err());
    }

    #[test]
    fn storable_text_has_no_nul_and_fits() {
        assert_eq!(storable_text("a\0b", 100), "a\u{fffd}b");
        assert_eq!(storable_text("héllo", 2), "h");
        assert_eq!(storable_text("héllo", 3), "hé");
        assert_eq!(
            storable_text(&"€".repeat(2000), MAX_COMMIT_MESSAGE_BYTES).len(),
            4095
        );
        assert_eq!(storable_text("short", MAX_AUTHOR_BYTES), "short");
    }

    #[test]
    fn branches_and_commits() {
        assert!(branch("branch", "main").is_ok());
        assert!(branch("branch", "feature/x-1").is_ok());
        assert!(branch("branch", "-rf").is_err());
        assert!(branch("branch", "a..b").is_err());
        assert!(branch("branch", "a b").is_err());
        // One rule with git's: NUL and the rest of check-ref-format's refusals.
        for bad in ["ma\0in", "x.lock", "a//b", ".hidden", "HEAD", "a\u{7f}b"] {
            assert!(branch("branch", bad).is_err(), "{bad:?}");
        }
        assert!(branch("branch", &"a".repeat(MAX_BRANCH_LEN)).is_ok());
        assert!(branch("branch", &"a".repeat(MAX_BRANCH_LEN + 1)).is_err());
        assert!(commit_hash("abc123def456").is_ok());
        assert!(commit_hash("xyz").is_err());
        assert!(commit_hash("abc").is_err());
    }
}
