//! GitHub: webhook signatures and payloads, turned into Kiln's own events before anything else sees
//! them.

mod access;
mod app;
pub mod reporter;

pub use access::{RepoAccess, RepoRef, repo_access};
pub use app::{AppConfig, GithubApp};

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// Largest webhook body accepted, in bytes (GitHub caps payloads at 25 MB).
pub const MAX_WEBHOOK_BYTES: usize = 25 * 1024 * 1024;

/// Whether `signature` (the `X-Hub-Signature-256` header, `sha256=<hex>`) is the HMAC-SHA256 of `body`
/// under one of `secrets` (several allow rotation). The comparison is constant-time.
pub fn signature_valid(secrets: &[String], body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    secrets.iter().filter(|s| !s.is_empty()).any(|secret| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    })
}

/// A push to a branch, as Kiln needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// GitHub's numeric repository id, as text (the connections' `repo_id`).
    pub repo_id: String,
    pub branch: String,
    /// The pushed commit.
    pub after: String,
    pub commit_message: Option<String>,
    pub author: Option<String>,
    /// Paths added, removed or modified by the pushed commits.
    pub changed_paths: Vec<String>,
    pub commit_count: usize,
    pub installation_id: Option<i64>,
}

#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: Repository,
    head_commit: Option<Commit>,
    #[serde(default)]
    commits: Vec<Commit>,
    installation: Option<Installation>,
}

#[derive(Deserialize)]
struct Repository {
    id: u64,
}

#[derive(Deserialize)]
struct Installation {
    id: i64,
}

#[derive(Deserialize)]
struct Commit {
    #[serde(default)]
    message: String,
    author: Option<Author>,
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
    #[serde(default)]
    modified: Vec<String>,
}

#[derive(Deserialize)]
struct Author {
    email: Option<String>,
}

/// Reads a `push` payload. `Ok(None)` for pushes that build nothing: tags and branch deletions.
/// Fails for a branch name git would refuse ([`crate::domain::valid_branch_name`]: U+0000, `..`…)
/// and for an `after` that is not a full commit id.
pub fn parse_push(body: &[u8]) -> anyhow::Result<Option<Push>> {
    let p: PushPayload = serde_json::from_slice(body)?;
    let Some(branch) = p.git_ref.strip_prefix("refs/heads/") else {
        return Ok(None);
    };
    if p.deleted || p.after.bytes().all(|b| b == b'0') {
        return Ok(None);
    }
    check_branch_field("ref", branch)?;
    check_commit_field("after", &p.after)?;
    let mut changed: Vec<String> = p
        .commits
        .iter()
        .flat_map(|c| c.added.iter().chain(&c.removed).chain(&c.modified).cloned())
        .collect();
    changed.sort();
    changed.dedup();
    Ok(Some(Push {
        repo_id: p.repository.id.to_string(),
        branch: branch.to_owned(),
        after: p.after.to_ascii_lowercase(),
        commit_message: p.head_commit.as_ref().map(|c| c.message.clone()),
        author: p
            .head_commit
            .as_ref()
            .and_then(|c| c.author.as_ref()?.email.clone()),
        changed_paths: changed,
        commit_count: p.commits.len(),
        installation_id: p.installation.map(|i| i.id),
    }))
}

/// What a `pull_request` delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullRequestAction {
    /// Opened, reopened or new commits pushed: build the head commit.
    Build,
    /// Closed (merged or not): builds of the branch stop carrying it.
    Close,
    /// Anything else (labels, reviews, edits): nothing to do.
    Ignore,
}

/// A pull request event, as Kiln needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestEvent {
    pub action: PullRequestAction,
    pub repo_id: String,
    pub number: i64,
    pub url: String,
    pub created_on: crate::domain::Timestamp,
    pub head_branch: String,
    pub head_sha: String,
    /// The branch the pull request merges into, and its head when the event was sent (`None` when
    /// the payload has no `base`): watch paths are evaluated on the changes since their merge base.
    pub base_branch: Option<String>,
    pub base_sha: Option<String>,
    pub title: String,
    pub author: Option<String>,
    pub installation_id: Option<i64>,
}

#[derive(Deserialize)]
struct PullRequestPayload {
    action: String,
    number: i64,
    pull_request: PullRequestBody,
    repository: Repository,
    installation: Option<Installation>,
}

#[derive(Deserialize)]
struct PullRequestBody {
    html_url: String,
    created_at: String,
    #[serde(default)]
    title: String,
    head: PullRequestHead,
    base: Option<PullRequestBase>,
    user: Option<PullRequestUser>,
}

#[derive(Deserialize)]
struct PullRequestBase {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: Option<String>,
}

#[derive(Deserialize)]
struct PullRequestHead {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    /// `null` when the fork was deleted.
    repo: Option<Repository>,
}

#[derive(Deserialize)]
struct PullRequestUser {
    login: String,
}

/// Reads a `pull_request` payload. Fails for branch names git would refuse, commit ids that are not
/// full ones, and a URL with control characters or longer than [`MAX_URL_BYTES`].
pub fn parse_pull_request(body: &[u8]) -> anyhow::Result<PullRequestEvent> {
    let p: PullRequestPayload = serde_json::from_slice(body)?;
    let pr = &p.pull_request;
    check_branch_field("pull_request.head.ref", &pr.head.git_ref)?;
    check_commit_field("pull_request.head.sha", &pr.head.sha)?;
    if let Some(base) = &pr.base {
        check_branch_field("pull_request.base.ref", &base.git_ref)?;
        if let Some(sha) = &base.sha {
            check_commit_field("pull_request.base.sha", sha)?;
        }
    }
    anyhow::ensure!(
        pr.html_url.len() <= MAX_URL_BYTES && !pr.html_url.chars().any(char::is_control),
        "pull_request.html_url: must be at most {MAX_URL_BYTES} bytes without control characters"
    );
    // Pull requests from forks build nothing: their branches are not the repository's, and a build
    // runs with the trigger's token and secrets.
    let from_fork = p
        .pull_request
        .head
        .repo
        .as_ref()
        .is_none_or(|r| r.id != p.repository.id);
    let action = match p.action.as_str() {
        _ if from_fork => PullRequestAction::Ignore,
        "opened" | "reopened" | "synchronize" => PullRequestAction::Build,
        "closed" => PullRequestAction::Close,
        _ => PullRequestAction::Ignore,
    };
    let created = chrono::DateTime::parse_from_rfc3339(&p.pull_request.created_at)
        .map_err(|e| anyhow::anyhow!("pull_request.created_at: {e}"))?;
    Ok(PullRequestEvent {
        action,
        repo_id: p.repository.id.to_string(),
        number: p.number,
        url: p.pull_request.html_url,
        created_on: crate::domain::Timestamp::from_millis(created.timestamp_millis()),
        head_branch: p.pull_request.head.git_ref,
        head_sha: p.pull_request.head.sha.to_ascii_lowercase(),
        base_branch: p.pull_request.base.as_ref().map(|b| b.git_ref.clone()),
        base_sha: p
            .pull_request
            .base
            .as_ref()
            .and_then(|b| b.sha.as_ref())
            .map(|sha| sha.to_ascii_lowercase()),
        title: p.pull_request.title,
        author: p.pull_request.user.map(|u| u.login),
        installation_id: p.installation.map(|i| i.id),
    })
}

/// Longest pull request URL accepted from a payload, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// A branch name from a payload: the one branch-name rule, git's.
fn check_branch_field(field: &str, branch: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        crate::domain::valid_branch_name(branch),
        "{field}: not a valid git branch name"
    );
    Ok(())
}

/// A commit id from a payload: a full SHA-1 or SHA-256 object id.
fn check_commit_field(field: &str, sha: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        crate::git::is_full_oid(sha),
        "{field}: not a full commit id (40 or 64 hexadecimal digits)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let secrets = vec!["old".to_owned(), "new".to_owned()];
        assert!(signature_valid(&secrets, body, &sign("new", body)));
        assert!(signature_valid(&secrets, body, &sign("old", body)));
        assert!(!signature_valid(&secrets, body, &sign("other", body)));
        assert!(!signature_valid(&secrets, b"tampered", &sign("new", body)));
        assert!(!signature_valid(&secrets, body, "sha1=abc"));
        assert!(!signature_valid(&secrets, body, "sha256=zz"));
        assert!(!signature_valid(&[], body, &sign("", body)));
    }

    #[test]
    fn tags_and_deletions_build_nothing() {
        let tag = br#"{"ref":"refs/tags/v1","after":"abc","repository":{"id":1}}"#;
        assert_eq!(parse_push(tag).unwrap(), None);
        let deletion = br#"{"ref":"refs/heads/x","after":"0000000000000000000000000000000000000000","deleted":true,"repository":{"id":1}}"#;
        assert_eq!(parse_push(deletion).unwrap(), None);
    }

    #[test]
    fn impossible_names_and_ids_are_refused() {
        let push = |git_ref: &str, after: &str| {
            serde_json::to_vec(
                &serde_json::json!({"ref": git_ref, "after": after, "repository": {"id": 1}}),
            )
            .unwrap()
        };
        let sha = "a".repeat(40);
        assert!(
            parse_push(&push("refs/heads/main", &sha))
                .unwrap()
                .is_some()
        );
        for bad in [
            "refs/heads/ma\0in",
            "refs/heads/a..b",
            "refs/heads/x.lock",
            "refs/heads/-x",
        ] {
            assert!(parse_push(&push(bad, &sha)).is_err(), "{bad:?}");
        }
        for bad in ["abc", "main", &"g".repeat(40)] {
            assert!(
                parse_push(&push("refs/heads/main", bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
