//! The package managers the build image knows. Which one a project uses, and how it installs, is
//! decided by [`super::plan_project`], shared by config autofill and the runner so they always agree.

use schemars::JsonSchema;
use serde::Serialize;

/// A package manager the build image knows (the `package_manager` enum of config autofill).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    Npm,
    Yarn,
    Pnpm,
    Bun,
    Uv,
}

impl PackageManager {
    /// The manager a `packageManager` field or a lockfile names; `None` for any other name.
    pub fn parse(name: &str) -> Option<PackageManager> {
        Some(match name {
            "npm" => PackageManager::Npm,
            "yarn" => PackageManager::Yarn,
            "pnpm" => PackageManager::Pnpm,
            "bun" => PackageManager::Bun,
            "uv" => PackageManager::Uv,
            _ => return None,
        })
    }

    /// The name as the hosted product writes it (`npm`, `pnpm`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            PackageManager::Npm => "npm",
            PackageManager::Yarn => "yarn",
            PackageManager::Pnpm => "pnpm",
            PackageManager::Bun => "bun",
            PackageManager::Uv => "uv",
        }
    }
}
