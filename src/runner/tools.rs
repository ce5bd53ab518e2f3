//! The build's toolchains (issue 7; PRODUCT-NOTES §7): resolves what the project asks for, installs
//! it into the shared store when missing, logs it as the hosted image does, and links the commands
//! into the workspace's `toolchain/bin` (first on the build's `PATH`).

use std::path::Path;

use crate::domain::{PackageManager, ProjectPlan, Requested, VersionSource};
use crate::toolchain::{Installed, Tool, ToolchainError, ToolchainStore, bundled_npm_spec};

/// Node release lines by LTS codename, for `.nvmrc` values such as `lts/iron`.
const LTS_CODENAMES: &[(&str, &str)] = &[
    ("argon", "4"),
    ("boron", "6"),
    ("carbon", "8"),
    ("dubnium", "10"),
    ("erbium", "12"),
    ("fermium", "14"),
    ("gallium", "16"),
    ("hydrogen", "18"),
    ("iron", "20"),
    ("jod", "22"),
    ("krypton", "24"),
];

/// A version spec as the store understands it: `v22` → `22`, `lts/iron` → `20`, `lts/*` → the newest
/// line in [`LTS_CODENAMES`], `node`/`stable`/`current` → `latest`.
fn normalize_spec(spec: &str) -> String {
    let spec = spec.trim();
    let lower = spec.to_ascii_lowercase();
    if let Some(name) = lower.strip_prefix("lts/") {
        let line = if name == "*" {
            LTS_CODENAMES.last().map(|(_, v)| *v)
        } else {
            LTS_CODENAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
        };
        return line.unwrap_or(spec).to_owned();
    }
    if matches!(lower.as_str(), "node" | "stable" | "current" | "latest") {
        return "latest".to_owned();
    }
    spec.strip_prefix(['v', 'V'])
        .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(spec)
        .to_owned()
}

/// Whether `spec` names one release (`24.18.0`), not a line or a range.
fn is_exact(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// Why the tools could not be prepared: the log line that explains it.
pub struct ToolsFailed {
    pub line: String,
}

/// Resolves and installs the toolchains `plan` asks for. Node and npm always; pnpm, yarn or bun when
/// the project uses it or a variable or file asks for a version. `Installing <tool> <version>` lines
/// are sent to `log` (after the `Detected the following tools` line) before a non-default version is
/// installed. Returns the installed toolchains, in log order.
pub async fn provision(
    store: &ToolchainStore,
    plan: &ProjectPlan,
    log: super::SystemLog<'_>,
) -> Result<Vec<Installed>, ToolsFailed> {
    let explicit = |r: &Requested| !r.is_default();
    let mut wanted: Vec<(Tool, &Requested)> = vec![(Tool::Node, &plan.node)];
    for (tool, manager, requested) in [
        (Tool::Pnpm, PackageManager::Pnpm, &plan.pnpm),
        (Tool::Yarn, PackageManager::Yarn, &plan.yarn),
        (Tool::Bun, PackageManager::Bun, &plan.bun),
    ] {
        if plan.manager == Some(manager) || explicit(requested) {
            wanted.push((tool, requested));
        }
    }

    let mut resolved: Vec<(Tool, String, Option<&str>, bool)> = Vec::new();
    for (tool, requested) in &wanted {
        let spec = normalize_spec(&requested.spec);
        // An exact version needs no registry lookup: `ensure` finds it installed, or fetches it.
        let version = if is_exact(&spec) {
            spec
        } else {
            store
                .resolve(*tool, &spec)
                .await
                .map_err(|e| failed(*tool, requested, &e))?
        };
        resolved.push((
            *tool,
            version,
            requested.pinned_hash.as_deref(),
            !requested.is_default(),
        ));
    }
    let node_version = resolved
        .first()
        .map(|(_, v, _, _)| v.clone())
        .unwrap_or_default();
    let npm_spec = bundled_npm_spec(&node_version);
    let npm_version = store.resolve(Tool::Npm, npm_spec).await.map_err(|e| {
        let requested = Requested {
            spec: npm_spec.to_owned(),
            source: VersionSource::Default,
            pinned_hash: None,
        };
        failed(Tool::Npm, &requested, &e)
    })?;
    // npm's line follows Node's: announced when Node's is.
    let node_explicit = resolved.first().is_some_and(|r| r.3);
    resolved.insert(1, (Tool::Npm, npm_version, None, node_explicit));

    // The hosted order: the package manager first, then nodejs, then npm.
    let manager_tool = match plan.manager {
        Some(PackageManager::Pnpm) => Some(Tool::Pnpm),
        Some(PackageManager::Yarn) => Some(Tool::Yarn),
        Some(PackageManager::Bun) => Some(Tool::Bun),
        Some(PackageManager::Npm | PackageManager::Uv) => Some(Tool::Npm),
        None => None,
    };
    let mut order: Vec<usize> = (0..resolved.len()).collect();
    order.sort_by_key(|&i| {
        let tool = resolved[i].0;
        match tool {
            t if Some(t) == manager_tool => 0,
            Tool::Node => 1,
            Tool::Npm => 2,
            _ => 3,
        }
    });
    let detected_line = format!(
        "Detected the following tools from environment: {}",
        order
            .iter()
            .map(|&i| format!("{}@{}", resolved[i].0.log_name(), resolved[i].1))
            .collect::<Vec<_>>()
            .join(", ")
    );

    log.line(&detected_line).await;
    let mut tools = Vec::new();
    for &i in &order {
        let (tool, version, pinned, explicit) = &resolved[i];
        if *explicit && *tool != Tool::Npm {
            log.line(&format!("Installing {} {version}", tool.log_name()))
                .await;
        }
        let installed = store.ensure(*tool, version, *pinned).await.map_err(|e| {
            let requested = wanted
                .iter()
                .find(|(t, _)| t == tool)
                .map(|(_, r)| (*r).clone())
                .unwrap_or(Requested {
                    spec: version.clone(),
                    source: VersionSource::Default,
                    pinned_hash: None,
                });
            failed(*tool, &requested, &e)
        })?;
        if installed.pin_unchecked {
            log.line(&format!(
                "Warning: the packageManager hash of yarn {version} pins the file repo.yarnpkg.com \
                 serves, which differs from the npm registry's build; yarn was checked against the \
                 registry's integrity instead"
            ))
            .await;
        }
        tools.push(installed);
    }
    Ok(tools)
}

/// The build variables that choose a tool's version whatever the repository says (PRODUCT-NOTES §7;
/// `PNPM_VERSION` and `YARN_VERSION` yield to `packageManager`, so they are checked with the tools).
const VERSION_VARIABLES: &[(&str, Tool)] =
    &[("NODE_VERSION", Tool::Node), ("BUN_VERSION", Tool::Bun)];

/// Checks the versions the build's variables ask for before anything is cloned, so that an unknown one
/// (`NODE_VERSION=99`) fails the build while it initializes. Only an unknown version fails here; a
/// registry that cannot be reached is left to the tools step.
pub async fn check_version_variables(
    store: &ToolchainStore,
    vars: &std::collections::BTreeMap<String, String>,
) -> Result<(), ToolsFailed> {
    for (name, tool) in VERSION_VARIABLES {
        let Some(spec) = vars.get(*name).map(|v| v.trim()).filter(|v| !v.is_empty()) else {
            continue;
        };
        if let Err(e @ ToolchainError::UnknownVersion { .. }) =
            store.resolve(*tool, &normalize_spec(spec)).await
        {
            let requested = Requested {
                spec: spec.to_owned(),
                source: VersionSource::Variable(name),
                pinned_hash: None,
            };
            return Err(failed(*tool, &requested, &e));
        }
    }
    Ok(())
}

fn failed(tool: Tool, requested: &Requested, error: &ToolchainError) -> ToolsFailed {
    let why = match &requested.source {
        VersionSource::Default => String::new(),
        source => format!(" ({} asks for {:?})", source, requested.spec),
    };
    ToolsFailed {
        line: format!(
            "Failed: error occurred while installing tools: {}{why}: {error}",
            tool.log_name()
        ),
    }
}

/// Links every command of `tools` into `bin` (created if needed), replacing older links.
pub async fn link_commands(bin: &Path, tools: &[Installed]) -> std::io::Result<()> {
    let bin = bin.to_path_buf();
    let dirs: Vec<_> = tools.iter().map(|t| t.bin_dir.clone()).collect();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&bin)?;
        for dir in dirs {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let link = bin.join(entry.file_name());
                match std::fs::remove_file(&link) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                std::os::unix::fs::symlink(entry.path(), &link)?;
            }
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::normalize_spec;

    #[test]
    fn exact_versions() {
        assert!(super::is_exact("24.18.0"));
        assert!(!super::is_exact("24"));
        assert!(!super::is_exact("24.x.0"));
        assert!(!super::is_exact("^24.1.0"));
    }

    #[test]
    fn specs_as_nvm_writes_them() {
        assert_eq!(normalize_spec("v22"), "22");
        assert_eq!(normalize_spec(" v22.16.0 "), "22.16.0");
        assert_eq!(normalize_spec("lts/iron"), "20");
        assert_eq!(normalize_spec("lts/*"), "24");
        assert_eq!(normalize_spec("node"), "latest");
        assert_eq!(normalize_spec(">=22"), ">=22");
        assert_eq!(normalize_spec("lts/unknown"), "lts/unknown");
    }
}
