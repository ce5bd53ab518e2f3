//! What a build caches when its trigger has `build_caching_enabled` (PRODUCT-NOTES §5): the package
//! managers' global caches under `HOME`, and the framework caches under the root directory, keyed by
//! the lockfile (with the trigger's newest entry as the fallback). Restore and save never fail a
//! build: a bad entry is logged, removed, and the build goes on cold.

use std::path::Path;

use serde_json::Value;

use crate::cache::{CacheDir, CacheKind, lockfile_key};
use crate::domain::{ProjectDir, ProjectPlan};

/// Package-manager caches relative to `HOME`: PRODUCT-NOTES §5 (npm `.npm`, yarn 1 `.cache/yarn`,
/// pnpm `.pnpm-store` and `.local/share/pnpm/store`, bun `.bun/install/cache`), plus yarn 2+'s
/// global cache `.yarn/berry/cache` (yarn 4 keeps its packages there by default).
pub const DEPENDENCY_DIRS: &[&str] = &[
    ".npm",
    ".cache/yarn",
    ".pnpm-store",
    ".local/share/pnpm/store",
    ".bun/install/cache",
    ".yarn/berry/cache",
];

/// Framework build-output caches relative to the root directory (PRODUCT-NOTES §5), by the
/// dependency in the root directory's `package.json` that identifies the framework.
pub const FRAMEWORK_DIRS: &[(&str, &[&str])] = &[
    ("astro", &["node_modules/.astro"]),
    (
        "@docusaurus/core",
        &["node_modules/.cache", ".docusaurus", "build"],
    ),
    ("@11ty/eleventy", &[".cache"]),
    ("gatsby", &[".cache", "public"]),
    ("next", &[".next/cache"]),
    ("nuxt", &["node_modules/.cache/nuxt"]),
    ("@sveltejs/kit", &["node_modules/.cache/imagetools"]),
];

/// The cache key: the lockfile that decided the install (else the root directory's `package.json`)
/// and the package manager.
pub fn cache_key(plan: &ProjectPlan, dirs: &[ProjectDir]) -> String {
    let manager = plan.manager.map(|m| m.as_str()).unwrap_or("none");
    let lockfile = plan.lockfile.as_deref().and_then(|path| {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let content = dirs.iter().find(|d| d.path == dir)?.files.get(name)?;
        Some((path, content.as_deref().unwrap_or(b"(too large to read)")))
    });
    let package_json = dirs
        .first()
        .and_then(|d| d.files.get("package.json"))
        .and_then(|c| c.as_deref())
        .map(|c| ("package.json", c));
    let mut parts: Vec<(&str, &[u8])> = vec![("manager", manager.as_bytes())];
    parts.extend(lockfile.or(package_json));
    lockfile_key(&parts)
}

/// The dependency caches of a build whose `HOME` is `home`.
pub fn dependency_dirs(home: &Path) -> Vec<CacheDir> {
    DEPENDENCY_DIRS
        .iter()
        .map(|rel| CacheDir {
            name: format!("home/{rel}"),
            path: home.join(rel),
        })
        .collect()
}

/// The framework caches of the root directory `cwd`, for the frameworks its `package.json` uses.
pub fn build_output_dirs(root: Option<&ProjectDir>, cwd: &Path) -> Vec<CacheDir> {
    let Some(package_json) = root
        .and_then(|d| d.files.get("package.json"))
        .and_then(|c| c.as_deref())
        .and_then(|c| serde_json::from_slice::<Value>(c).ok())
    else {
        return Vec::new();
    };
    let uses = |name: &str| {
        ["dependencies", "devDependencies"].iter().any(|section| {
            package_json
                .get(section)
                .and_then(|d| d.get(name))
                .is_some()
        })
    };
    let mut rels: Vec<&str> = FRAMEWORK_DIRS
        .iter()
        .filter(|(framework, _)| uses(framework))
        .flat_map(|(_, paths)| paths.iter().copied())
        .collect();
    rels.sort_unstable();
    rels.dedup();
    // A directory inside another selected one (Nuxt's `node_modules/.cache/nuxt` with Docusaurus's
    // `node_modules/.cache`) is already cached with it; entries must not overlap.
    let nested = |rel: &str| {
        rels.iter()
            .any(|other| rel.len() > other.len() && rel.starts_with(&format!("{other}/")))
    };
    rels.iter()
        .filter(|rel| !nested(rel))
        .map(|rel| CacheDir {
            name: format!("root/{rel}"),
            path: cwd.join(rel),
        })
        .collect()
}

/// What a cache kind is called in log lines.
pub fn label(kind: CacheKind) -> &'static str {
    match kind {
        CacheKind::Dependencies => "dependencies",
        CacheKind::BuildOutput => "build output",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan_project;

    fn dir(path: &str, files: &[(&str, &str)]) -> ProjectDir {
        ProjectDir::with_files(path, files)
    }

    #[test]
    fn the_key_follows_the_lockfile() {
        let a = [dir("", &[("package.json", "{}"), ("pnpm-lock.yaml", "a")])];
        let b = [dir("", &[("package.json", "{}"), ("pnpm-lock.yaml", "b")])];
        let key = |d: &[ProjectDir]| cache_key(&plan_project(d, &Default::default()), d);
        assert_eq!(key(&a), key(&a));
        assert_ne!(key(&a), key(&b));
    }

    #[test]
    fn framework_dirs_from_dependencies() {
        let root = dir(
            "",
            &[(
                "package.json",
                r#"{"dependencies":{"astro":"5"},"devDependencies":{"next":"15"}}"#,
            )],
        );
        let dirs = build_output_dirs(Some(&root), Path::new("/w/repo"));
        let names: Vec<_> = dirs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["root/.next/cache", "root/node_modules/.astro"]);
        let overlapping = dir(
            "",
            &[(
                "package.json",
                r#"{"dependencies":{"@docusaurus/core":"3","nuxt":"3"}}"#,
            )],
        );
        let dirs = build_output_dirs(Some(&overlapping), Path::new("/w"));
        let names: Vec<_> = dirs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["root/.docusaurus", "root/build", "root/node_modules/.cache"]
        );
        assert!(build_output_dirs(None, Path::new("/w")).is_empty());
    }
}
