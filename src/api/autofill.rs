//! Config autofill: `GET …/repos/{provider_type}/{provider_account_id}/{repo_id}/config_autofill`.
//!
//! Reads a branch of a connected repository from the git mirror and suggests a build configuration:
//! the wrangler config file and the Worker names it declares, the package manager, and the
//! `package.json` scripts (PRODUCT-NOTES §9). Decisions the public material leaves open:
//!
//! * The wrangler config and `scripts` come from `root_directory` itself (default: the repository
//!   root); the package manager is found as builds find it, from the root directory up to the
//!   repository root (a workspace's lockfile and `packageManager` at its root count).
//! * Config file precedence is wrangler's own: `wrangler.json`, then `wrangler.jsonc`, then
//!   `wrangler.toml`. Both JSON names are read as JSONC, as wrangler does.
//! * A config file that does not parse still names `config_file`; the fields read from it are `null`.
//!   `env_worker_names` is `null` without an `env` section, else `env.<e>.name` or `<name>-<e>`.
//! * Package manager: [`crate::domain::plan_project`], the runner's own rule (`packageManager`, then
//!   the nearest lockfile, then `npm` for a `package.json`); else `uv` for a `uv.lock` in the root
//!   directory.
//! * `scripts` is `null` without a readable `package.json`, `{}` when it has no scripts.
//! * Errors: no live connection → 404/12000; invalid `provider_type`, `branch` or `root_directory`, an
//!   unknown branch, or a repository that cannot be fetched → 400/12002 with a message naming the
//!   cause (the branch is a query parameter, not a resource of ours).

use std::collections::BTreeMap;

use axum::extract::State;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, ApiResult, ok};
use super::extract::{Account, PathParams, QueryParams};
use crate::domain::{
    MAX_PROJECT_FILE_BYTES, PROJECT_FILES, PackageManager, ProjectDir, ProviderType, plan_project,
    project_dirs,
};
use crate::git::{GitError, Mirror};

/// Wrangler config files, in wrangler's order of precedence.
const CONFIG_FILES: &[&str] = &["wrangler.json", "wrangler.jsonc", "wrangler.toml"];
/// Lockfiles and the package manager they mean, in order of precedence.
/// The suggested configuration (every field nullable).
#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct ConfigAutofill {
    /// The wrangler config file in the root directory (`wrangler.toml`, `wrangler.json`, `wrangler.jsonc`).
    pub config_file: Option<String>,
    /// Its top-level `name`.
    pub default_worker_name: Option<String>,
    /// Each wrangler environment and its Worker name.
    pub env_worker_names: Option<BTreeMap<String, String>>,
    pub package_manager: Option<PackageManager>,
    /// `package.json` scripts: name → command.
    pub scripts: Option<BTreeMap<String, String>>,
}

/// `GET /accounts/{account_id}/builds/repos/{provider_type}/{provider_account_id}/{repo_id}/config_autofill`
pub async fn get_config_autofill(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    query: QueryParams,
) -> ApiResult<ConfigAutofill> {
    let provider_type = ProviderType::parse(path.get("provider_type")?)
        .ok_or_else(|| ApiError::BadRequest("provider_type: must be \"github\"".into()))?;
    let branch = query.require("branch")?;
    crate::git::check_branch(branch)
        .map_err(|_| ApiError::BadRequest("branch: not a valid branch name".into()))?;
    let root = root_directory(query.get("root_directory"))?;
    let conn = app
        .store
        .get_repo_connection_by_repo(
            &account,
            provider_type,
            path.get("provider_account_id")?,
            path.get("repo_id")?,
        )
        .await?
        .ok_or(ApiError::NotFound)?;
    let repo = format!("{}/{}", conn.provider_account_name, conn.repo_name);
    let mirror = app
        .git
        .mirror(&conn.provider_account_name, &conn.repo_name)
        .await
        .map_err(|e| git_error(e, &repo))?;
    let resolved = mirror
        .resolve(Some(branch), None)
        .await
        .map_err(|e| git_error(e, &repo))?;
    ok(inspect(&mirror, &resolved.sha, &root).await?)
}

/// `root_directory` relative to the repository root, without leading or trailing `/` (`""` = root).
fn root_directory(raw: Option<&str>) -> Result<String, ApiError> {
    let raw = raw.unwrap_or("/");
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(ApiError::BadRequest(
                    "root_directory: must stay inside the repository (no `..`)".into(),
                ));
            }
            p if p.chars().any(char::is_control) => {
                return Err(ApiError::BadRequest(
                    "root_directory: must not contain control characters".into(),
                ));
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Maps the failures a client can cause to 4xx answers; the rest are internal.
fn git_error(err: anyhow::Error, repo: &str) -> ApiError {
    let message = match GitError::find(&err) {
        Some(GitError::UnknownBranch(b)) => {
            return ApiError::Missing(format!("branch: no branch named {b:?} in {repo}"));
        }
        // The stored connection is unusable: a conflict with what is stored, not a bad request.
        Some(GitError::InvalidName { what, .. }) => {
            return ApiError::Conflict(format!(
                "the connection's {what} cannot be used to clone {repo}"
            ));
        }
        Some(GitError::Fetch { .. }) => {
            // The provider does not have it, or does not show it to Kiln: unknown either way.
            tracing::warn!(error = %format!("{err:#}"), repo, "config autofill: fetch failed");
            return ApiError::Missing(format!(
                "could not fetch the repository {repo} from its provider"
            ));
        }
        Some(GitError::Timeout { .. } | GitError::TooMuchOutput { .. }) => {
            tracing::warn!(error = %format!("{err:#}"), repo, "config autofill: repository too large or slow");
            format!("the repository {repo} could not be read in time; try again later")
        }
        _ => return ApiError::Internal(err),
    };
    ApiError::BadRequest(message)
}

/// Reads the root directory of commit `sha` (and, for the package manager, its parents up to the
/// repository root, as builds do) and builds the answer.
async fn inspect(mirror: &Mirror, sha: &str, root: &str) -> anyhow::Result<ConfigAutofill> {
    let mut dirs = Vec::new();
    let mut config_file = None;
    let mut config_text = None;
    let mut has_uv_lock = false;
    for (level, path) in project_dirs(root).into_iter().enumerate() {
        let names = mirror.list_dir(sha, &path).await?;
        if level == 0 && names.is_empty() && !path.is_empty() {
            // No such root directory: nothing to suggest (a build would fail there).
            return Ok(ConfigAutofill::default());
        }
        let has = |name: &str| names.iter().any(|n| n == name);
        let join = |name: &str| {
            if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}/{name}")
            }
        };
        let present: Vec<&str> = PROJECT_FILES.iter().copied().filter(|f| has(f)).collect();
        let mut wanted: Vec<String> = present.iter().map(|f| join(f)).collect();
        let level_config = (level == 0)
            .then(|| CONFIG_FILES.iter().copied().find(|f| has(f)))
            .flatten();
        if let Some(f) = level_config {
            wanted.push(join(f));
        }
        let wanted_refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let mut contents = mirror.read_files(sha, &wanted_refs).await?.into_iter();
        let mut files = BTreeMap::new();
        for name in &present {
            if let Some(bytes) = contents.next().flatten() {
                let capped = (bytes.len() as u64 <= MAX_PROJECT_FILE_BYTES).then_some(bytes);
                files.insert((*name).to_owned(), capped);
            }
        }
        if level == 0 {
            config_file = level_config;
            config_text = level_config.and_then(|_| contents.next().flatten());
            has_uv_lock = has("uv.lock");
        }
        dirs.push(ProjectDir { path, files });
    }
    let package_json = dirs
        .first()
        .and_then(|d| d.files.get("package.json"))
        .and_then(|b| b.as_deref())
        .and_then(parse_json);

    let mut answer = ConfigAutofill {
        config_file: config_file.map(str::to_owned),
        ..ConfigAutofill::default()
    };
    let config = match (config_file, config_text) {
        (Some("wrangler.toml"), Some(text)) => std::str::from_utf8(&text)
            .ok()
            .and_then(|t| toml::from_str::<toml::Table>(t).ok())
            .and_then(|t| serde_json::to_value(t).ok()),
        (Some(_), Some(text)) => parse_jsonc(&text),
        _ => None,
    };
    if let Some(Value::Object(config)) = config {
        let name = config.get("name").and_then(Value::as_str);
        answer.default_worker_name = name.map(str::to_owned);
        if let Some(Value::Object(envs)) = config.get("env") {
            let names = envs
                .iter()
                .filter_map(|(env, body)| {
                    let explicit = body.get("name").and_then(Value::as_str).map(str::to_owned);
                    let derived = name.map(|n| format!("{n}-{env}"));
                    Some((env.clone(), explicit.or(derived)?))
                })
                .collect();
            answer.env_worker_names = Some(names);
        }
    }

    let plan = plan_project(&dirs, &BTreeMap::new());
    answer.package_manager = plan.manager.or(has_uv_lock.then_some(PackageManager::Uv));
    answer.scripts = package_json.as_ref().map(|p| {
        p.get("scripts")
            .and_then(Value::as_object)
            .map(|s| {
                s.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    });
    Ok(answer)
}

fn parse_json(bytes: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(bytes).ok()?;
    serde_json::from_str(text.trim_start_matches('\u{feff}')).ok()
}

/// Parses JSON with comments (`//`, `/* */`) and trailing commas, as wrangler accepts.
fn parse_jsonc(bytes: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(bytes).ok()?;
    serde_json::from_str(&strip_jsonc(text.trim_start_matches('\u{feff}'))).ok()
}

/// Removes comments and trailing commas outside strings. Comments become spaces (newlines kept), so
/// error positions stay meaningful; a comma is dropped when only whitespace and comments separate it
/// from a closing `}` or `]`.
fn strip_jsonc(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    // Index in `out` of a comma that a closing bracket would make trailing.
    let mut pending_comma: Option<usize> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' => {
                pending_comma = None;
                out.push(c);
                i += 1;
                while i < chars.len() {
                    let s = chars[i];
                    out.push(s);
                    i += 1;
                    if s == '\\' {
                        if let Some(&next) = chars.get(i) {
                            out.push(next);
                            i += 1;
                        }
                    } else if s == '"' {
                        break;
                    }
                }
            }
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    out.push(' ');
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                out.push_str("  ");
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    out.push(if chars[i] == '\n' { '\n' } else { ' ' });
                    i += 1;
                }
                out.push_str("  ");
                i = (i + 2).min(chars.len());
            }
            ',' => {
                pending_comma = Some(out.len());
                out.push(c);
                i += 1;
            }
            '}' | ']' => {
                if let Some(at) = pending_comma.take() {
                    out.replace_range(at..at + 1, " ");
                }
                out.push(c);
                i += 1;
            }
            c if c.is_whitespace() => {
                out.push(c);
                i += 1;
            }
            _ => {
                pending_comma = None;
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonc_comments_and_trailing_commas() {
        let text = r#"{
            // a comment with "quotes"
            "name": "w // not a comment", /* block,
            comment */ "url": "https://x/*y*/",
            "esc": "a \" // b",
            "list": [1, 2, /* c */ ],
            "env": { "staging": { "name": "s", }, },
        }"#;
        let v = parse_jsonc(text.as_bytes()).expect("parses");
        assert_eq!(v["name"], "w // not a comment");
        assert_eq!(v["url"], "https://x/*y*/");
        assert_eq!(v["esc"], "a \" // b");
        assert_eq!(v["list"], serde_json::json!([1, 2]));
        assert_eq!(v["env"]["staging"]["name"], "s");
        assert!(parse_jsonc(b"{\"a\": 1,, }").is_none());
        assert!(parse_jsonc(b"{ \"a\": /* unterminated").is_none());
    }

    #[test]
    fn root_directories() {
        assert_eq!(root_directory(None).unwrap(), "");
        assert_eq!(root_directory(Some("/")).unwrap(), "");
        assert_eq!(root_directory(Some("./apps//web/")).unwrap(), "apps/web");
        assert!(root_directory(Some("apps/../..")).is_err());
    }
}
