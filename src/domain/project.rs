//! What a build needs to know about a Node project before it runs anything: which package manager
//! installs it and where (the workspace root), and which toolchain versions it asks for. Pure: the
//! runner (over the checkout) and config autofill (over the git mirror) load the same few files from
//! the root directory up to the repository root and hand them here, so both always agree.
//!
//! Rules (issue 7; PRODUCT-NOTES §7): Node's version comes from the build variable `NODE_VERSION`, else
//! `.node-version`, else `.nvmrc`, else `.tool-versions`, looked for in the root directory first and
//! then in each parent up to the repository root (the nearest directory wins), else the hosted
//! default. pnpm and yarn honour `packageManager` in `package.json` first, then `PNPM_VERSION` /
//! `YARN_VERSION`; bun takes `BUN_VERSION`, then `packageManager`. A v1 `yarn.lock` without
//! `packageManager` means yarn 1.

use std::collections::BTreeMap;

use serde_json::Value;

use super::PackageManager;

/// Files read in each directory from the root directory up to the repository root.
pub const PROJECT_FILES: &[&str] = &[
    "package.json",
    "pnpm-lock.yaml",
    "yarn.lock",
    "bun.lock",
    "bun.lockb",
    "package-lock.json",
    "npm-shrinkwrap.json",
    "pnpm-workspace.yaml",
    ".node-version",
    ".nvmrc",
    ".tool-versions",
    "uv.lock",
];

/// Largest project file read, in bytes; a larger one counts as present but is not parsed (a lockfile
/// that big is still hashed by its first bytes and its length).
pub const MAX_PROJECT_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// The hosted image's default versions (PRODUCT-NOTES §7, late-2026 build image page).
pub const DEFAULT_NODE_VERSION: &str = "24.18.0";
/// Default pnpm (PRODUCT-NOTES §7).
pub const DEFAULT_PNPM_VERSION: &str = "10.11.1";
/// Default yarn (PRODUCT-NOTES §7); v1 lockfiles get [`YARN_CLASSIC_SPEC`].
pub const DEFAULT_YARN_VERSION: &str = "4.9.1";
/// Default bun (PRODUCT-NOTES §7).
pub const DEFAULT_BUN_VERSION: &str = "1.2.15";
/// The yarn line a v1 `yarn.lock` without `packageManager` installs with.
pub const YARN_CLASSIC_SPEC: &str = "1";

/// One directory between the root directory and the repository root, with the [`PROJECT_FILES`]
/// present in it.
#[derive(Debug, Clone, Default)]
pub struct ProjectDir {
    /// Relative to the repository root, without leading or trailing `/`; `""` is the root.
    pub path: String,
    /// File name → contents (at most [`MAX_PROJECT_FILE_BYTES`]; `None` when larger or unreadable).
    pub files: BTreeMap<String, Option<Vec<u8>>>,
}

impl ProjectDir {
    /// A directory with these files and contents (tests).
    #[cfg(test)]
    pub(crate) fn with_files(path: &str, files: &[(&str, &str)]) -> ProjectDir {
        ProjectDir {
            path: path.to_owned(),
            files: files
                .iter()
                .map(|(n, c)| ((*n).to_owned(), Some(c.as_bytes().to_vec())))
                .collect(),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    fn text(&self, name: &str) -> Option<&str> {
        let bytes = self.files.get(name)?.as_deref()?;
        std::str::from_utf8(bytes).ok()
    }

    fn package_json(&self) -> Option<Value> {
        let text = self.text("package.json")?;
        serde_json::from_str(text.trim_start_matches('\u{feff}')).ok()
    }
}

/// The directories to read, nearest first: `root` (e.g. `apps/web`), then `apps`, then `""`.
pub fn project_dirs(root: &str) -> Vec<String> {
    let mut dirs = Vec::new();
    let mut current = root.trim_matches('/').to_owned();
    loop {
        dirs.push(current.clone());
        if current.is_empty() {
            return dirs;
        }
        current = match current.rfind('/') {
            Some(i) => current[..i].to_owned(),
            None => String::new(),
        };
    }
}

/// Where a requested version came from, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSource {
    /// A build variable (`NODE_VERSION`, …).
    Variable(&'static str),
    /// A file in the repository, e.g. `apps/web/.nvmrc`.
    File(String),
    /// `packageManager` in this `package.json`.
    PackageManagerField(String),
    /// The hosted image's default.
    Default,
}

impl std::fmt::Display for VersionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionSource::Variable(name) => write!(f, "the build variable {name}"),
            VersionSource::File(path) => write!(f, "{path}"),
            VersionSource::PackageManagerField(path) => write!(f, "packageManager in {path}"),
            VersionSource::Default => f.write_str("the default"),
        }
    }
}

/// A requested version: a spec such as `22`, `22.16`, `^10` or `24.18.0`, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    pub spec: String,
    pub source: VersionSource,
    /// A Corepack-style hash pinned by `packageManager` (`sha512.<hex>`), which the download must match.
    pub pinned_hash: Option<String>,
}

impl Requested {
    fn new(spec: impl Into<String>, source: VersionSource) -> Requested {
        Requested {
            spec: spec.into(),
            source,
            pinned_hash: None,
        }
    }

    /// Whether the hosted image would have this version preinstalled (no `Installing …` line).
    pub fn is_default(&self) -> bool {
        self.source == VersionSource::Default
    }
}

/// What a build installs and with which toolchains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectPlan {
    /// `None` when there is no Node project (no `package.json` in the root directory and no lockfile or
    /// workspace above it).
    pub manager: Option<PackageManager>,
    /// Where the install runs, relative to the repository root (the workspace root in a workspace).
    pub install_dir: Option<String>,
    /// The lockfile that decided, relative to the repository root.
    pub lockfile: Option<String>,
    /// yarn 1 (classic) rather than yarn 2+ (berry).
    pub yarn_classic: bool,
    pub node: Requested,
    pub pnpm: Requested,
    pub yarn: Requested,
    pub bun: Requested,
}

impl ProjectPlan {
    /// The install command the hosted product runs (PRODUCT-NOTES §7), without frozen-lockfile flags
    /// when there is no lockfile to freeze.
    pub fn install_command(&self) -> Option<String> {
        let manager = self.manager?;
        let locked = self.lockfile.is_some();
        Some(
            match (manager, locked) {
                (PackageManager::Npm | PackageManager::Uv, true) => {
                    "npm clean-install --progress=false"
                }
                (PackageManager::Npm | PackageManager::Uv, false) => "npm install --progress=false",
                (PackageManager::Pnpm, true) => "pnpm install --frozen-lockfile",
                (PackageManager::Pnpm, false) => "pnpm install",
                (PackageManager::Yarn, true) if self.yarn_classic => {
                    "yarn install --frozen-lockfile"
                }
                (PackageManager::Yarn, true) => "yarn install --immutable",
                (PackageManager::Yarn, false) => "yarn install",
                (PackageManager::Bun, true) => "bun install --frozen-lockfile",
                (PackageManager::Bun, false) => "bun install",
            }
            .to_owned(),
        )
    }
}

/// Lockfiles in the order they decide the package manager within one directory.
const NODE_LOCKFILES: &[(&str, PackageManager)] = &[
    ("pnpm-lock.yaml", PackageManager::Pnpm),
    ("yarn.lock", PackageManager::Yarn),
    ("bun.lock", PackageManager::Bun),
    ("bun.lockb", PackageManager::Bun),
    ("package-lock.json", PackageManager::Npm),
    ("npm-shrinkwrap.json", PackageManager::Npm),
];

/// A `packageManager` field: `pnpm@9.14.4+sha512.abc…` → (pnpm, `9.14.4`, `sha512.abc…`).
pub fn parse_package_manager_field(
    field: &str,
) -> Option<(PackageManager, String, Option<String>)> {
    let (name, rest) = field.trim().split_once('@')?;
    let manager = PackageManager::parse(name.trim())?;
    let (version, hash) = match rest.split_once('+') {
        Some((v, h)) => (v, Some(h.to_owned())),
        None => (rest, None),
    };
    let version = version.trim();
    if version.is_empty() || version.len() > 64 {
        return None;
    }
    Some((manager, version.to_owned(), hash))
}

/// A version file's content: the first word of the first meaningful line, without a leading `v`
/// (`.nvmrc` and `.node-version`); `None` when empty.
fn version_file_spec(text: &str) -> Option<String> {
    let line = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .find(|l| !l.is_empty())?;
    let word = line.split_whitespace().next()?;
    Some(word.to_owned())
}

/// The version `.tool-versions` gives `tool` (`nodejs 22.16.0`, or mise's `node 22`).
fn tool_versions_spec(text: &str, names: &[&str]) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let name = words.next()?;
        if !names.contains(&name) {
            return None;
        }
        words.next().map(str::to_owned)
    })
}

/// Whether a `yarn.lock` is yarn 1's format (berry's starts with a `__metadata:` block).
fn is_yarn_classic_lock(text: Option<&str>) -> bool {
    match text {
        Some(t) => !t.contains("__metadata:"),
        // Too large or unreadable: assume berry, the default.
        None => false,
    }
}

/// Decides the plan from the directories (nearest first, as [`project_dirs`] lists them) and the
/// build's variables (user variables already merged over the server's defaults).
pub fn plan_project(dirs: &[ProjectDir], vars: &BTreeMap<String, String>) -> ProjectPlan {
    let var = |name: &str| {
        vars.get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let join = |dir: &str, name: &str| {
        if dir.is_empty() {
            name.to_owned()
        } else {
            format!("{dir}/{name}")
        }
    };

    // The nearest lockfile decides where the install runs and, without packageManager, with what.
    let locked = dirs.iter().find_map(|d| {
        NODE_LOCKFILES
            .iter()
            .find(|(f, _)| d.has(f))
            .map(|(f, pm)| (d, *f, *pm))
    });
    // packageManager: the nearest package.json that declares one, up to the lockfile's directory.
    let mut declared = None;
    for d in dirs {
        if let Some(field) = d.package_json().and_then(|p| {
            p.get("packageManager")
                .and_then(Value::as_str)
                .map(str::to_owned)
        }) && let Some(parsed) = parse_package_manager_field(&field)
        {
            declared = Some((d.path.clone(), parsed));
            break;
        }
        if locked.is_some_and(|(l, _, _)| l.path == d.path) {
            break;
        }
    }
    let root_has_package_json = dirs.first().is_some_and(|d| d.has("package.json"));
    // Without a lockfile, a workspace root above the root directory still installs the workspace.
    let workspace_root = dirs.iter().skip(1).find(|d| {
        d.has("pnpm-workspace.yaml")
            || d.package_json()
                .is_some_and(|p| p.get("workspaces").is_some())
    });
    let (install_dir, lockfile, locked_manager) = match locked {
        Some((d, f, pm)) => (Some(d.path.clone()), Some(join(&d.path, f)), Some(pm)),
        None => match workspace_root {
            Some(w) => (Some(w.path.clone()), None, None),
            None if root_has_package_json => (dirs.first().map(|d| d.path.clone()), None, None),
            None => (None, None, None),
        },
    };
    let manager = install_dir.as_ref().map(|_| {
        declared
            .as_ref()
            .map(|(_, (pm, _, _))| *pm)
            .or(locked_manager)
            .or_else(|| {
                workspace_root
                    .filter(|w| w.has("pnpm-workspace.yaml"))
                    .map(|_| PackageManager::Pnpm)
            })
            .unwrap_or(PackageManager::Npm)
    });

    let declared_for = |pm: PackageManager| {
        declared.as_ref().and_then(|(dir, (d, version, hash))| {
            (*d == pm).then(|| Requested {
                spec: version.clone(),
                source: VersionSource::PackageManagerField(join(dir, "package.json")),
                pinned_hash: hash.clone(),
            })
        })
    };

    let node = var("NODE_VERSION")
        .map(|v| Requested::new(v, VersionSource::Variable("NODE_VERSION")))
        .or_else(|| {
            dirs.iter().find_map(|d| {
                [".node-version", ".nvmrc"]
                    .iter()
                    .find_map(|f| {
                        let spec = version_file_spec(d.text(f)?)?;
                        Some(Requested::new(spec, VersionSource::File(join(&d.path, f))))
                    })
                    .or_else(|| {
                        let spec =
                            tool_versions_spec(d.text(".tool-versions")?, &["nodejs", "node"])?;
                        Some(Requested::new(
                            spec,
                            VersionSource::File(join(&d.path, ".tool-versions")),
                        ))
                    })
            })
        })
        .unwrap_or_else(|| Requested::new(DEFAULT_NODE_VERSION, VersionSource::Default));

    let tool_file = |names: &[&str]| {
        dirs.iter().find_map(|d| {
            let spec = tool_versions_spec(d.text(".tool-versions")?, names)?;
            Some(Requested::new(
                spec,
                VersionSource::File(join(&d.path, ".tool-versions")),
            ))
        })
    };

    let pnpm = declared_for(PackageManager::Pnpm)
        .or_else(|| {
            var("PNPM_VERSION").map(|v| Requested::new(v, VersionSource::Variable("PNPM_VERSION")))
        })
        .or_else(|| tool_file(&["pnpm"]))
        .unwrap_or_else(|| Requested::new(DEFAULT_PNPM_VERSION, VersionSource::Default));

    let yarn_lock_text = locked
        .filter(|(_, f, _)| *f == "yarn.lock")
        .map(|(d, _, _)| d.text("yarn.lock"));
    let yarn = declared_for(PackageManager::Yarn)
        .or_else(|| {
            var("YARN_VERSION").map(|v| Requested::new(v, VersionSource::Variable("YARN_VERSION")))
        })
        .or_else(|| tool_file(&["yarn"]))
        .or_else(|| {
            yarn_lock_text
                .filter(|t| is_yarn_classic_lock(*t))
                .map(|_| {
                    Requested::new(
                        YARN_CLASSIC_SPEC,
                        VersionSource::File(lockfile.clone().unwrap_or_default()),
                    )
                })
        })
        .unwrap_or_else(|| Requested::new(DEFAULT_YARN_VERSION, VersionSource::Default));
    let yarn_classic = yarn
        .spec
        .trim_start_matches(['v', '^', '~', '='])
        .starts_with("1.")
        || yarn.spec.trim_start_matches(['v', '^', '~', '=']) == "1";

    let bun = var("BUN_VERSION")
        .map(|v| Requested::new(v, VersionSource::Variable("BUN_VERSION")))
        .or_else(|| declared_for(PackageManager::Bun))
        .or_else(|| tool_file(&["bun"]))
        .unwrap_or_else(|| Requested::new(DEFAULT_BUN_VERSION, VersionSource::Default));

    ProjectPlan {
        manager,
        install_dir,
        lockfile,
        yarn_classic,
        node,
        pnpm,
        yarn,
        bun,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(path: &str, files: &[(&str, &str)]) -> ProjectDir {
        ProjectDir::with_files(path, files)
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn dirs_from_root_up() {
        assert_eq!(project_dirs("/apps/web/"), ["apps/web", "apps", ""]);
        assert_eq!(project_dirs("/"), [""]);
        assert_eq!(project_dirs(""), [""]);
    }

    #[test]
    fn pnpm_workspace_installs_at_the_workspace_root() {
        let dirs = [
            dir("apps/web", &[("package.json", r#"{"name":"web"}"#)]),
            dir("apps", &[]),
            dir(
                "",
                &[
                    (
                        "package.json",
                        r#"{"packageManager":"pnpm@9.14.4+sha512.abc"}"#,
                    ),
                    ("pnpm-lock.yaml", "lockfileVersion: '9.0'"),
                    ("pnpm-workspace.yaml", "packages: ['apps/*']"),
                ],
            ),
        ];
        let plan = plan_project(&dirs, &vars(&[("PNPM_VERSION", "8")]));
        assert_eq!(plan.manager, Some(PackageManager::Pnpm));
        assert_eq!(plan.install_dir.as_deref(), Some(""));
        assert_eq!(plan.lockfile.as_deref(), Some("pnpm-lock.yaml"));
        assert_eq!(plan.pnpm.spec, "9.14.4");
        assert_eq!(plan.pnpm.pinned_hash.as_deref(), Some("sha512.abc"));
        assert_eq!(
            plan.install_command().as_deref(),
            Some("pnpm install --frozen-lockfile")
        );
    }

    #[test]
    fn node_version_precedence() {
        let dirs = [
            dir("app", &[("package.json", "{}"), (".nvmrc", "v22\n")]),
            dir(
                "",
                &[
                    (".node-version", "20.1.0"),
                    (".tool-versions", "nodejs 18.0.0\n"),
                ],
            ),
        ];
        let plan = plan_project(&dirs, &vars(&[]));
        assert_eq!(plan.node.spec, "v22");
        assert_eq!(plan.node.source, VersionSource::File("app/.nvmrc".into()));
        let plan = plan_project(&dirs, &vars(&[("NODE_VERSION", "24")]));
        assert_eq!(plan.node.spec, "24");
        let plan = plan_project(&dirs[1..], &vars(&[]));
        assert_eq!(plan.node.spec, "20.1.0");
        let only_tools = [dir(
            "",
            &[(".tool-versions", "# x\nnodejs 18.0.0 # pinned\n")],
        )];
        assert_eq!(plan_project(&only_tools, &vars(&[])).node.spec, "18.0.0");
        let none = [dir("", &[("package.json", "{}")])];
        let plan = plan_project(&none, &vars(&[]));
        assert!(plan.node.is_default());
        assert_eq!(plan.node.spec, DEFAULT_NODE_VERSION);
        assert_eq!(plan.manager, Some(PackageManager::Npm));
        assert_eq!(
            plan.install_command().as_deref(),
            Some("npm install --progress=false")
        );
    }

    #[test]
    fn yarn_lines() {
        let classic = [dir(
            "",
            &[
                ("package.json", "{}"),
                (
                    "yarn.lock",
                    "# yarn lockfile v1\n\nfoo@^1:\n  version \"1.0.0\"\n",
                ),
            ],
        )];
        let plan = plan_project(&classic, &vars(&[]));
        assert!(plan.yarn_classic);
        assert_eq!(
            plan.install_command().as_deref(),
            Some("yarn install --frozen-lockfile")
        );
        let berry = [dir(
            "",
            &[
                ("package.json", r#"{"packageManager":"yarn@4.9.1"}"#),
                ("yarn.lock", "__metadata:\n  version: 8\n"),
            ],
        )];
        let plan = plan_project(&berry, &vars(&[]));
        assert!(!plan.yarn_classic);
        assert_eq!(plan.yarn.spec, "4.9.1");
        assert_eq!(
            plan.install_command().as_deref(),
            Some("yarn install --immutable")
        );
        // packageManager beats YARN_VERSION.
        let plan = plan_project(&berry, &vars(&[("YARN_VERSION", "1.22.22")]));
        assert_eq!(plan.yarn.spec, "4.9.1");
    }

    #[test]
    fn no_project_no_install() {
        let dirs = [dir("site", &[]), dir("", &[("README.md", "")])];
        let plan = plan_project(&dirs, &vars(&[]));
        assert_eq!(plan.manager, None);
        assert_eq!(plan.install_command(), None);
    }

    #[test]
    fn bun_and_package_manager_fields() {
        let dirs = [dir("", &[("package.json", "{}"), ("bun.lock", "{}")])];
        let plan = plan_project(&dirs, &vars(&[("BUN_VERSION", "1.1")]));
        assert_eq!(plan.manager, Some(PackageManager::Bun));
        assert_eq!(plan.bun.spec, "1.1");
        assert_eq!(
            parse_package_manager_field("yarn@4.9.1+sha224.abc"),
            Some((
                PackageManager::Yarn,
                "4.9.1".into(),
                Some("sha224.abc".into())
            ))
        );
        assert_eq!(parse_package_manager_field("cargo@1"), None);
        assert_eq!(parse_package_manager_field("pnpm@"), None);
    }
}
