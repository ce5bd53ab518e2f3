//! Which package manager a project uses, from its lockfiles and `package.json`, and how a build
//! installs its dependencies with it. Shared by config autofill and the runner so they always agree.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

/// A package manager the build image knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    Npm,
    Yarn,
    Pnpm,
    Bun,
    Uv,
}

/// Lockfiles in the order they decide the package manager.
pub const LOCKFILES: &[(&str, PackageManager)] = &[
    ("pnpm-lock.yaml", PackageManager::Pnpm),
    ("yarn.lock", PackageManager::Yarn),
    ("bun.lock", PackageManager::Bun),
    ("bun.lockb", PackageManager::Bun),
    ("package-lock.json", PackageManager::Npm),
    ("npm-shrinkwrap.json", PackageManager::Npm),
    ("uv.lock", PackageManager::Uv),
];

impl PackageManager {
    fn parse(name: &str) -> Option<PackageManager> {
        Some(match name {
            "npm" => PackageManager::Npm,
            "yarn" => PackageManager::Yarn,
            "pnpm" => PackageManager::Pnpm,
            "bun" => PackageManager::Bun,
            "uv" => PackageManager::Uv,
            _ => return None,
        })
    }

    /// `package.json`'s `packageManager` field wins (`"pnpm@9.1.0"` → pnpm), then the first lockfile
    /// present, then npm when there is a `package.json`.
    pub fn detect(
        has_file: impl Fn(&str) -> bool,
        package_json: Option<&Value>,
    ) -> Option<PackageManager> {
        let declared = package_json
            .and_then(|p| p.get("packageManager"))
            .and_then(Value::as_str)
            .and_then(|spec| {
                PackageManager::parse(spec.split('@').next().unwrap_or_default().trim())
            });
        let locked = LOCKFILES
            .iter()
            .find(|(f, _)| has_file(f))
            .map(|(_, pm)| *pm);
        declared
            .or(locked)
            .or(package_json.is_some().then_some(PackageManager::Npm))
    }

    /// The command that installs a Node project's dependencies as the hosted product does: from the
    /// lockfile, never updating it. uv projects with a `package.json` install with npm.
    pub fn install_command(self, has_file: impl Fn(&str) -> bool) -> &'static str {
        match self {
            PackageManager::Pnpm => "pnpm install --frozen-lockfile",
            PackageManager::Yarn => "yarn install --frozen-lockfile",
            PackageManager::Bun => "bun install --frozen-lockfile",
            PackageManager::Npm | PackageManager::Uv => {
                if has_file("package-lock.json") || has_file("npm-shrinkwrap.json") {
                    "npm clean-install --progress=false"
                } else {
                    "npm install --progress=false"
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn declared_then_lockfile_then_npm() {
        let pj = json!({"packageManager": "yarn@4.1.0"});
        assert_eq!(
            PackageManager::detect(|f| f == "pnpm-lock.yaml", Some(&pj)),
            Some(PackageManager::Yarn)
        );
        assert_eq!(
            PackageManager::detect(|f| f == "bun.lockb", Some(&json!({}))),
            Some(PackageManager::Bun)
        );
        assert_eq!(
            PackageManager::detect(|_| false, Some(&json!({}))),
            Some(PackageManager::Npm)
        );
        assert_eq!(
            PackageManager::detect(|f| f == "uv.lock", None),
            Some(PackageManager::Uv)
        );
        assert_eq!(PackageManager::detect(|_| false, None), None);
    }

    #[test]
    fn install_commands() {
        assert_eq!(
            PackageManager::Npm.install_command(|f| f == "package-lock.json"),
            "npm clean-install --progress=false"
        );
        assert_eq!(
            PackageManager::Npm.install_command(|_| false),
            "npm install --progress=false"
        );
        assert_eq!(
            PackageManager::Pnpm.install_command(|_| true),
            "pnpm install --frozen-lockfile"
        );
    }
}
