//! Putting one toolchain in place: unpack a verified tarball safely into a staging directory under
//! `<root>/.tmp`, write its commands, then `rename` it to `<root>/<tool>/<version>`; plus the
//! cross-process locks that make one process do it once and the clean-up of what a killed one left.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::Tool;

/// Staging directories, one per install in progress: `<tool>-<version>-<random>`.
pub(crate) const TMP_DIR: &str = ".tmp";
/// Lock files, one per `(tool, version)`: `<tool>-<version>.lock`.
pub(crate) const LOCK_DIR: &str = ".locks";
/// The record written next to an installed toolchain.
pub(crate) const RECORD: &str = "kiln-toolchain.json";
/// Where the package's files go inside a toolchain directory.
pub(crate) const PACKAGE_DIR: &str = "package";
/// Where the ready-to-run commands go inside a toolchain directory.
pub(crate) const BIN_DIR: &str = "bin";

const DIR_MODE: u32 = 0o755;
const EXEC_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

/// Why an archive was refused (or could not be read).
#[derive(Debug)]
pub(crate) enum UnpackError {
    /// The archive is unsafe or malformed: the message says which entry and why.
    Refused(String),
    Io(String, io::Error),
}

fn refused(msg: impl Into<String>) -> UnpackError {
    UnpackError::Refused(msg.into())
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> UnpackError {
    let what = what.into();
    move |e| UnpackError::Io(what, e)
}

/// Creates `dir` (and parents) and gives it mode 0755.
pub(crate) fn make_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
}

/// Opens (creating) the lock file of `(tool, version)` and waits for an exclusive `flock` on it.
/// Blocking: call it from `spawn_blocking`. The lock lasts as long as the returned file is open,
/// and the kernel drops it when the process dies.
pub(crate) fn lock_blocking(root: &Path, tool: Tool, version: &str) -> io::Result<File> {
    let file = open_lock(root, tool, version)?;
    file.lock()?;
    Ok(file)
}

fn open_lock(root: &Path, tool: Tool, version: &str) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(root.join(LOCK_DIR).join(format!("{tool}-{version}.lock")))
}

/// A fresh staging directory name for `(tool, version)`.
pub(crate) fn staging_name(tool: Tool, version: &str) -> String {
    format!("{tool}-{version}-{:016x}", rand::random::<u64>())
}

/// Removes staging directories nobody is working in: for each entry of `<root>/.tmp`, the
/// `(tool, version)` lock is tried without waiting; an entry whose lock is free was left by a
/// process that died (or a cancelled task) and goes. `only`: restrict to one `(tool, version)`
/// whose lock the caller already holds (then the entries go without trying the lock).
pub(crate) fn remove_stale_staging(root: &Path, only: Option<(Tool, &str)>) -> io::Result<()> {
    let tmp = root.join(TMP_DIR);
    let entries = match fs::read_dir(&tmp) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name
            .rsplit_once('-')
            .and_then(|(rest, _random)| rest.split_once('-'))
            .and_then(|(tool, version)| Some((tool.parse::<Tool>().ok()?, version.to_owned())));
        let remove = match (&owner, only) {
            (Some((tool, version)), Some((only_tool, only_version))) => {
                *tool == only_tool && version == only_version
            }
            (_, Some(_)) => false,
            (Some((tool, version)), None) => {
                let lock = open_lock(root, *tool, version)?;
                match lock.try_lock() {
                    Ok(()) => true,
                    Err(fs::TryLockError::WouldBlock) => false,
                    Err(fs::TryLockError::Error(e)) => return Err(e),
                }
            }
            // Not a name we make: nobody installs into it.
            (None, None) => true,
        };
        if remove {
            let path = entry.path();
            let result = if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match result {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "removed a stale toolchain staging dir")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Unpacks the gzipped npm tarball at `tarball` into `dest` (created), dropping the archive's top
/// directory (`package/`). Refuses entries that would land outside `dest`, links whose target is
/// outside it, hard links and special files, and more than `max_bytes` of content in all.
/// Directories get 0755, executables (any `x` bit in the archive) 0755, other files 0644.
pub(crate) fn unpack(tarball: &Path, dest: &Path, max_bytes: u64) -> Result<(), UnpackError> {
    make_dir(dest).map_err(io_err(format!("creating {}", dest.display())))?;
    let root = dest
        .canonicalize()
        .map_err(io_err(format!("resolving {}", dest.display())))?;
    let file = File::open(tarball).map_err(io_err("opening the tarball"))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let mut total: u64 = 0;
    let entries = archive.entries().map_err(io_err("reading the tarball"))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading the tarball"))?;
        let raw = entry
            .path()
            .map_err(io_err("reading an entry name"))?
            .into_owned();
        let mut parts = Vec::new();
        for c in raw.components() {
            match c {
                Component::Normal(p) => parts.push(p.to_owned()),
                Component::CurDir => {}
                _ => {
                    return Err(refused(format!(
                        "entry {} escapes the package",
                        raw.display()
                    )));
                }
            }
        }
        // npm tarballs keep everything under one top directory, usually `package/`.
        let rel: PathBuf = parts.iter().skip(1).collect();
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = root.join(&rel);
        let kind = entry.header().entry_type();
        // A symlink unpacked earlier must not carry this entry (or the directories made for it)
        // outside: what already exists of its path must resolve inside.
        let parent = target.parent().unwrap_or(&root);
        check_inside(&root, parent, &raw)?;
        if kind.is_dir() {
            make_dir(&target).map_err(io_err(format!("creating {}", rel.display())))?;
            continue;
        }
        make_dir(parent).map_err(io_err(format!("creating the parent of {}", rel.display())))?;
        // A later entry of the same name replaces an earlier one (as tar does), never through it.
        if let Ok(meta) = fs::symlink_metadata(&target) {
            if meta.is_dir() {
                return Err(refused(format!(
                    "entry {} replaces a directory",
                    raw.display()
                )));
            }
            fs::remove_file(&target).map_err(io_err(format!("replacing {}", rel.display())))?;
        }
        if kind.is_file() || kind == tar::EntryType::Continuous {
            total = total.saturating_add(entry.size());
            if total > max_bytes {
                return Err(refused(format!(
                    "the package unpacks to more than {} MiB",
                    max_bytes / (1024 * 1024)
                )));
            }
            let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
            entry
                .unpack(&target)
                .map_err(io_err(format!("unpacking {}", rel.display())))?;
            let mode = if executable { EXEC_MODE } else { FILE_MODE };
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(io_err(format!("setting the mode of {}", rel.display())))?;
        } else if kind.is_symlink() {
            let link = entry
                .link_name()
                .map_err(io_err(format!("reading the link of {}", raw.display())))?
                .ok_or_else(|| refused(format!("symlink {} has no target", raw.display())))?
                .into_owned();
            if !stays_inside(&rel, &link) {
                return Err(refused(format!(
                    "symlink {} points outside the package ({})",
                    raw.display(),
                    link.display()
                )));
            }
            std::os::unix::fs::symlink(&link, &target)
                .map_err(io_err(format!("creating the link {}", rel.display())))?;
        } else if kind.is_hard_link() {
            return Err(refused(format!(
                "entry {} is a hard link (not allowed)",
                raw.display()
            )));
        } else if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            // Metadata the reader has already applied.
        } else {
            return Err(refused(format!(
                "entry {} is a special file (not allowed)",
                raw.display()
            )));
        }
    }
    check_tree(&root, &root)
}

/// Checks that the longest existing prefix of `path` resolves inside `root` (so creating the rest
/// of it, made of plain names, stays inside too).
fn check_inside(root: &Path, path: &Path, entry: &Path) -> Result<(), UnpackError> {
    let mut existing = path;
    while fs::symlink_metadata(existing).is_err() {
        match existing.parent() {
            Some(p) => existing = p,
            None => break,
        }
    }
    let inside = existing
        .canonicalize()
        .is_ok_and(|real| real.starts_with(root));
    if inside {
        Ok(())
    } else {
        Err(refused(format!(
            "entry {} is written through a link leading outside the package",
            entry.display()
        )))
    }
}

/// Whether a link at `rel` (relative to the package root) pointing at `link` stays inside, reading
/// the path lexically. Chains of links are checked on disk afterwards by [`check_tree`].
fn stays_inside(rel: &Path, link: &Path) -> bool {
    if link.is_absolute() {
        return false;
    }
    let mut depth: Vec<&std::ffi::OsStr> = Vec::new();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            if let Component::Normal(p) = c {
                depth.push(p);
            }
        }
    }
    for c in link.components() {
        match c {
            Component::Normal(p) => depth.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Gives every directory 0755 (whatever the umask made of it) and checks that every symlink that
/// resolves, resolves inside `root`.
fn check_tree(root: &Path, dir: &Path) -> Result<(), UnpackError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
        .map_err(io_err(format!("setting the mode of {}", dir.display())))?;
    let entries = fs::read_dir(dir).map_err(io_err(format!("listing {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(io_err(format!("reading {}", path.display())))?;
        if kind.is_dir() {
            check_tree(root, &path)?;
        } else if kind.is_symlink()
            && let Ok(real) = path.canonicalize()
            && !real.starts_with(root)
        {
            return Err(refused(format!(
                "symlink {} resolves outside the package",
                path.strip_prefix(root).unwrap_or(&path).display()
            )));
        }
    }
    Ok(())
}

/// A command to put in `bin/`.
pub(crate) enum Command {
    /// A symlink to a native executable inside the toolchain directory (`target` relative to `bin/`).
    Link { name: &'static str, target: PathBuf },
    /// `#!/bin/sh` + `exec node '<script>' "$@"`, with the script's final absolute path.
    NodeScript { name: &'static str, script: PathBuf },
}

/// The commands of `tool`, read from the unpacked package at `staged` (the toolchain directory
/// being built: `package/` inside it); `final_dir` is where that directory will end up.
pub(crate) fn commands(
    tool: Tool,
    staged: &Path,
    final_dir: &Path,
) -> Result<Vec<Command>, UnpackError> {
    let pkg = staged.join(PACKAGE_DIR);
    let native = |name: &'static str, file: &str| -> Result<Command, UnpackError> {
        let rel = Path::new(PACKAGE_DIR).join(file);
        if !staged.join(&rel).is_file() {
            return Err(refused(format!("the package has no {file}")));
        }
        Ok(Command::Link {
            name,
            target: Path::new("..").join(rel),
        })
    };
    // (command, default script, required)
    let scripts: &[(&'static str, &str, bool)] = match tool {
        Tool::Node => return Ok(vec![native("node", "bin/node")?]),
        Tool::Bun => {
            return Ok(vec![
                native("bun", "bin/bun")?,
                // bun acts as bunx when called by that name.
                Command::Link {
                    name: "bunx",
                    target: PathBuf::from("bun"),
                },
            ]);
        }
        Tool::Npm => &[
            ("npm", "bin/npm-cli.js", true),
            ("npx", "bin/npx-cli.js", false),
        ],
        Tool::Pnpm => &[
            ("pnpm", "bin/pnpm.cjs", true),
            ("pnpx", "bin/pnpx.cjs", false),
        ],
        Tool::Yarn => &[
            ("yarn", "bin/yarn.js", true),
            ("yarnpkg", "bin/yarn.js", false),
        ],
    };
    // The package's own `bin` map wins over our defaults (older releases used other file names).
    let manifest: serde_json::Value = fs::read(pkg.join("package.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut out = Vec::new();
    for &(name, default, required) in scripts {
        let declared = manifest
            .get("bin")
            .and_then(|b| b.get(name))
            .and_then(|s| s.as_str());
        let chosen = [declared, Some(default)]
            .into_iter()
            .flatten()
            .map(clean_relative)
            .find_map(|rel| rel.filter(|r| pkg.join(r).is_file()));
        match chosen {
            Some(rel) => out.push(Command::NodeScript {
                name,
                script: final_dir.join(PACKAGE_DIR).join(rel),
            }),
            None if required => {
                return Err(refused(format!(
                    "the package has no script for `{name}` ({default})"
                )));
            }
            None => {}
        }
    }
    Ok(out)
}

/// `./bin/x.js` → `bin/x.js`; `None` for anything leaving the package.
fn clean_relative(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Writes `commands` into `bin_dir` (created, 0755; scripts 0755).
pub(crate) fn write_commands(bin_dir: &Path, commands: &[Command]) -> io::Result<()> {
    make_dir(bin_dir)?;
    for command in commands {
        match command {
            Command::Link { name, target } => {
                std::os::unix::fs::symlink(target, bin_dir.join(name))?
            }
            Command::NodeScript { name, script } => {
                let path = bin_dir.join(name);
                let text = format!(
                    "#!/bin/sh\n# Written by Kiln: runs {name} with the `node` found on PATH.\nexec node {} \"$@\"\n",
                    sh_quote(&script.to_string_lossy())
                );
                fs::write(&path, text)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(EXEC_MODE))?;
            }
        }
    }
    Ok(())
}

/// Single-quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Writes a small file with mode 0644.
pub(crate) fn write_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    fs::write(path, contents)?;
    fs::set_permissions(path, fs::Permissions::from_mode(FILE_MODE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets() {
        assert!(stays_inside(Path::new("bin/x"), Path::new("../lib/x.js")));
        assert!(stays_inside(Path::new("bin/x"), Path::new("./y")));
        assert!(!stays_inside(
            Path::new("bin/x"),
            Path::new("../../etc/passwd")
        ));
        assert!(!stays_inside(Path::new("x"), Path::new("..")));
        assert!(!stays_inside(Path::new("x"), Path::new("/etc/passwd")));
    }

    #[test]
    fn quoting_and_paths() {
        assert_eq!(sh_quote("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(
            clean_relative("./bin/yarn.js"),
            Some(PathBuf::from("bin/yarn.js"))
        );
        assert_eq!(clean_relative("../x"), None);
        assert_eq!(clean_relative("/x"), None);
    }
}
