//! The environment a build's commands see (DESIGN.md §3), the dependency install command, and wrangler's
//! output files.

use std::path::Path;

use crate::domain::PackageManager;
use crate::sandbox::SandboxMode;
use crate::store::ClaimedBuild;

/// Directory (inside the workspace, outside the checkout) where wrangler writes its ND-JSON output.
pub const WRANGLER_OUTPUT_DIR: &str = "wrangler-output";

/// `PATH` for builds when Kiln's own is unset.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// System variables, then the trigger's variables, which override them.
pub fn build_env(
    build: &ClaimedBuild,
    ws: &Path,
    token: &str,
    branch: Option<&str>,
    sha: &str,
    mode: SandboxMode,
) -> Vec<(String, String)> {
    let tmp = match mode {
        SandboxMode::Bwrap => "/tmp".to_owned(),
        SandboxMode::None => ws.join("tmp").display().to_string(),
    };
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned()),
        ),
        ("HOME".into(), ws.join("home").display().to_string()),
        ("TMPDIR".into(), tmp),
        ("LANG".into(), "C.UTF-8".into()),
        ("CI".into(), "true".into()),
        ("WORKERS_CI".into(), "1".into()),
        ("WORKERS_CI_BUILD_UUID".into(), build.id.to_string()),
        ("WORKERS_CI_COMMIT_SHA".into(), sha.to_owned()),
        (
            "WORKERS_CI_BRANCH".into(),
            branch.unwrap_or_default().to_owned(),
        ),
        ("CLOUDFLARE_ACCOUNT_ID".into(), build.account.to_string()),
        ("CLOUDFLARE_API_TOKEN".into(), token.to_owned()),
        (
            "WRANGLER_OUTPUT_FILE_DIRECTORY".into(),
            ws.join(WRANGLER_OUTPUT_DIR).display().to_string(),
        ),
        ("NO_UPDATE_NOTIFIER".into(), "1".into()),
    ];
    let plain = build
        .metadata
        .environment_variables
        .iter()
        .filter_map(|(k, v)| v.value.clone().map(|value| (k.clone(), value)));
    let user = plain.chain(
        build
            .secrets
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    for (key, value) in user {
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    }
    env
}

/// The install command for a `package.json` in `cwd`, unless `SKIP_DEPENDENCY_INSTALL` is `1`/`true`.
pub async fn install_command(cwd: &Path, env: &[(String, String)]) -> Option<String> {
    let skip = env.iter().any(|(k, v)| {
        k == "SKIP_DEPENDENCY_INSTALL"
            && matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true")
    });
    if skip {
        return None;
    }
    let text = tokio::fs::read(cwd.join("package.json")).await.ok()?;
    let package_json = serde_json::from_slice(&text).unwrap_or(serde_json::Value::Null);
    let has = |f: &str| cwd.join(f).is_file();
    let pm = PackageManager::detect(has, Some(&package_json))?;
    Some(pm.install_command(has).to_owned())
}

/// Largest wrangler output file read, in bytes; the directory is writable by the build.
const MAX_WRANGLER_OUTPUT_BYTES: u64 = 4 * 1024 * 1024;

/// The last `version_id` of a `deploy` or `version-upload` entry in wrangler's ND-JSON output files.
/// Only a real directory and regular files in it are read (no symlinks, FIFOs or devices the build
/// may have planted), each up to
/// [`MAX_WRANGLER_OUTPUT_BYTES`].
pub async fn version_from_wrangler_output(dir: &Path) -> Option<String> {
    // The build owns the workspace: it may have replaced the directory with a link elsewhere.
    if !tokio::fs::symlink_metadata(dir).await.ok()?.is_dir() {
        return None;
    }
    let mut entries = tokio::fs::read_dir(dir).await.ok()?;
    let mut files = Vec::new();
    while let Ok(Some(e)) = entries.next_entry().await {
        let Ok(meta) = tokio::fs::symlink_metadata(e.path()).await else {
            continue;
        };
        if meta.is_file() && meta.len() <= MAX_WRANGLER_OUTPUT_BYTES {
            files.push(e.path());
        }
    }
    files.sort();
    let mut found = None;
    for f in files {
        let Ok(text) = tokio::fs::read_to_string(&f).await else {
            continue;
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let kind = v.get("type").and_then(|t| t.as_str());
            if matches!(kind, Some("deploy" | "version-upload"))
                && let Some(id) = v.get("version_id").and_then(|i| i.as_str())
            {
                found = Some(id.to_owned());
            }
        }
    }
    found
}
