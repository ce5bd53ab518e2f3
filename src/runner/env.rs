//! The environment a build's commands see (DESIGN.md §3), the dependency install command, and wrangler's
//! output files.

use std::path::Path;

use crate::sandbox::SandboxMode;
use crate::store::ClaimedBuild;

/// Directory (inside the workspace, outside the checkout) where wrangler writes its ND-JSON output.
pub const WRANGLER_OUTPUT_DIR: &str = "wrangler-output";

/// `PATH` for builds when Kiln's own is unset.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Directory (inside the workspace) whose links point at this build's toolchains; first on `PATH`.
pub const TOOLCHAIN_BIN_DIR: &str = "toolchain/bin";

/// Variables of Kiln's own environment passed into every build unless configured otherwise: the
/// proxy and CA settings a build needs on a network like Kiln's (issue 7; DESIGN.md §3b).
pub const DEFAULT_ENV_PASSTHROUGH: &[&str] = crate::domain::NETWORK_ENV_VARIABLES;

/// Server-wide settings that shape every build's environment.
#[derive(Debug, Clone)]
pub struct HostEnv {
    /// Names of Kiln's own variables copied into builds when set ([`DEFAULT_ENV_PASSTHROUGH`]).
    pub passthrough: Vec<String>,
    /// `--build-env KEY=VALUE` defaults; the passthrough values and system variables yield to them,
    /// a trigger's own variables override them.
    pub defaults: Vec<(String, String)>,
    /// The npm registry builds use, when not npm's default (`--npm-registry`).
    pub npm_registry: Option<String>,
}

impl Default for HostEnv {
    fn default() -> Self {
        HostEnv {
            passthrough: DEFAULT_ENV_PASSTHROUGH
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            defaults: Vec::new(),
            npm_registry: None,
        }
    }
}

/// What the environment is built from, besides the build itself.
pub struct EnvContext<'a> {
    pub workspace: &'a Path,
    pub token: &'a str,
    pub branch: Option<&'a str>,
    pub sha: &'a str,
    pub mode: SandboxMode,
    pub host: &'a HostEnv,
}

/// System variables (DESIGN.md §3, PRODUCT-NOTES §4), then Kiln's passed-through variables, then the
/// server's `--build-env` defaults, then the trigger's variables, each overriding the ones before.
pub fn build_env(build: &ClaimedBuild, cx: &EnvContext<'_>) -> Vec<(String, String)> {
    let ws = cx.workspace;
    let tmp = match cx.mode {
        SandboxMode::Bwrap => "/tmp".to_owned(),
        SandboxMode::None => ws.join("tmp").display().to_string(),
    };
    let host_path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned());
    let worker = build.worker.to_string();
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            format!("{}:{host_path}", ws.join(TOOLCHAIN_BIN_DIR).display()),
        ),
        ("HOME".into(), ws.join("home").display().to_string()),
        ("TMPDIR".into(), tmp),
        ("LANG".into(), "C.UTF-8".into()),
        ("CI".into(), "true".into()),
        ("WORKERS_CI".into(), "1".into()),
        ("WORKERS_CI_BUILD_UUID".into(), build.id.to_string()),
        ("WORKERS_CI_COMMIT_SHA".into(), cx.sha.to_owned()),
        (
            "WORKERS_CI_BRANCH".into(),
            cx.branch.unwrap_or_default().to_owned(),
        ),
        ("CLOUDFLARE_ACCOUNT_ID".into(), build.account.to_string()),
        ("CLOUDFLARE_API_TOKEN".into(), cx.token.to_owned()),
        // Preview aliases for non-production builds (PRODUCT-NOTES §4); the Worker's tag or name below.
        (
            "WRANGLER_CI_GENERATE_PREVIEW_ALIAS".into(),
            build.preview_trigger.to_string(),
        ),
        (
            "WRANGLER_OUTPUT_FILE_DIRECTORY".into(),
            ws.join(WRANGLER_OUTPUT_DIR).display().to_string(),
        ),
        ("NO_UPDATE_NOTIFIER".into(), "1".into()),
        // Toolchains come from Kiln's store; Corepack must not try to download over them.
        ("COREPACK_ENABLE_DOWNLOAD_PROMPT".into(), "0".into()),
        ("COREPACK_ENABLE_STRICT".into(), "0".into()),
    ];
    // What Workers Builds sets for wrangler (PRODUCT-NOTES §4). Kiln's Worker id is one opaque
    // identifier (DESIGN.md §2): a script tag (32 hex digits) is what wrangler compares with the
    // deployed Worker's tag (`WRANGLER_CI_MATCH_TAG`); anything else is the Worker's name, which
    // replaces the config's (`WRANGLER_CI_OVERRIDE_NAME`). Setting both to one value would make every
    // real deploy fail wrangler's check, which looks the Worker up by name and compares its tag.
    let is_tag = worker.len() == 32 && worker.bytes().all(|b| b.is_ascii_hexdigit());
    let name = if is_tag {
        "WRANGLER_CI_MATCH_TAG"
    } else {
        "WRANGLER_CI_OVERRIDE_NAME"
    };
    env.push((name.into(), worker));
    if let Some(registry) = &cx.host.npm_registry {
        for name in [
            "NPM_CONFIG_REGISTRY",
            "COREPACK_NPM_REGISTRY",
            "YARN_NPM_REGISTRY_SERVER",
            "YARN_REGISTRY",
        ] {
            env.push((name.into(), registry.clone()));
        }
    }
    let passed = cx
        .host
        .passthrough
        .iter()
        .filter_map(|name| Some((name.clone(), std::env::var(name).ok()?)));
    let plain = build
        .metadata
        .environment_variables
        .iter()
        .filter_map(|(k, v)| v.value.clone().map(|value| (k.clone(), value)));
    let secrets = build
        .secrets
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()));
    let overrides = passed
        .chain(cx.host.defaults.iter().cloned())
        .chain(plain)
        .chain(secrets);
    for (key, value) in overrides {
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    }
    env
}

/// Whether `SKIP_DEPENDENCY_INSTALL` is `1`/`true` (PRODUCT-NOTES §4).
pub fn skip_install(env: &[(String, String)]) -> bool {
    env.iter().any(|(k, v)| {
        k == "SKIP_DEPENDENCY_INSTALL"
            && matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true")
    })
}

/// The build's variables as a map, for [`crate::domain::plan_project`].
pub fn var_map(env: &[(String, String)]) -> std::collections::BTreeMap<String, String> {
    env.iter().cloned().collect()
}

/// Largest wrangler output file read, in bytes; the directory is writable by the build.
const MAX_WRANGLER_OUTPUT_BYTES: u64 = 4 * 1024 * 1024;
/// Most wrangler output files read.
const MAX_WRANGLER_OUTPUT_FILES: usize = 64;

/// The last `version_id` of a `deploy` or `version-upload` entry in wrangler's ND-JSON output files
/// in the workspace `ws`. The build owns the workspace, so it is read as an untrusted tree
/// ([`crate::untrusted::Tree`]): no link out of it, regular files only, each up to
/// [`MAX_WRANGLER_OUTPUT_BYTES`], the first [`MAX_WRANGLER_OUTPUT_FILES`] by name.
pub async fn version_from_wrangler_output(ws: &Path) -> Option<String> {
    let ws = ws.to_path_buf();
    tokio::task::spawn_blocking(move || version_from_wrangler_output_blocking(&ws))
        .await
        .ok()
        .flatten()
}

fn version_from_wrangler_output_blocking(ws: &Path) -> Option<String> {
    let tree = crate::untrusted::Tree::open(ws).ok()?;
    let dir = tree.open_dir(WRANGLER_OUTPUT_DIR).ok()?;
    let mut names: Vec<String> = dir
        .entries()
        .ok()?
        .into_iter()
        .filter(|(_, kind)| *kind == rustix::fs::FileType::RegularFile)
        .filter_map(|(name, _)| name.into_string().ok())
        .collect();
    names.sort();
    names.truncate(MAX_WRANGLER_OUTPUT_FILES);
    let mut found = None;
    for name in names {
        let Ok(bytes) = dir.read(&name, MAX_WRANGLER_OUTPUT_BYTES) else {
            continue;
        };
        for line in String::from_utf8_lossy(&bytes).lines() {
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
