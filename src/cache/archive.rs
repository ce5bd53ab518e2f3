//! The tar stream inside a cache entry: `<name>/…` per cached dir. Packing walks the dirs without
//! following links; unpacking maps `<name>/…` back onto the build's dirs and refuses anything that
//! could land outside them.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use tar::{EntryType, Header};

use super::CacheDir;

/// Permission bits kept in and restored from an archive: rwx for all, never setuid, setgid or sticky.
const MODE_MASK: u32 = 0o777;
/// Copy buffer for file contents, in bytes.
const COPY_BUF_BYTES: usize = 64 * 1024;

/// Why an unpack failed: the caller removes the entry only when the entry itself is at fault.
#[derive(Debug)]
pub(super) enum UnpackError {
    /// The archive is corrupt, truncated or malicious (`..`, absolute paths, writes through links).
    Entry(anyhow::Error),
    /// The target dirs could not be prepared or written (a symlink on the way, a full disk).
    Target(anyhow::Error),
}

/// Writes a tar stream of the `dirs` that exist into `out`; returns `out` and how many dirs were
/// packed. Symlinks are stored as links, sockets, FIFOs and devices are skipped, and a file or dir
/// that vanishes during the walk is left out.
pub(super) fn pack<W: Write>(dirs: &[CacheDir], out: W) -> anyhow::Result<(W, usize)> {
    let mut builder = tar::Builder::new(out);
    let mut packed = 0;
    for dir in dirs {
        let Some(meta) = dir_to_save(&dir.path)? else {
            continue;
        };
        packed += 1;
        let name = PathBuf::from(&dir.name);
        append_dir(&mut builder, &name, &meta)?;
        walk(&mut builder, &dir.path, &name)
            .with_context(|| format!("archiving {}", dir.path.display()))?;
    }
    let out = builder.into_inner().context("finishing the archive")?;
    Ok((out, packed))
}

/// The metadata of a dir to save, or `None` when there is nothing safe to save there.
fn dir_to_save(path: &Path) -> anyhow::Result<Option<fs::Metadata>> {
    if let Some(link) = symlink_on_the_way(path)? {
        tracing::warn!(dir = %path.display(), link = %link.display(), "not caching a dir reached through a symlink");
        return Ok(None);
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(Some(meta)),
        Ok(_) => {
            tracing::warn!(dir = %path.display(), "not caching a path that is not a directory");
            Ok(None)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Depth-first walk below `root`; every dir's header is written before its children.
fn walk<W: Write>(builder: &mut tar::Builder<W>, root: &Path, name: &Path) -> anyhow::Result<()> {
    let mut stack = vec![(root.to_path_buf(), name.to_path_buf())];
    while let Some((dir, in_archive)) = stack.pop() {
        let listed = fs::read_dir(&dir).and_then(|rd| {
            rd.map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
        });
        let mut children = match listed {
            Ok(children) => children,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        // Sorted so that the same tree gives the same archive.
        children.sort();
        let mut subdirs = Vec::new();
        for child in children.iter() {
            let path = dir.join(child);
            let archived = in_archive.join(child);
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                append_dir(builder, &archived, &meta)?;
                subdirs.push((path, archived));
            } else if ft.is_symlink() {
                let target = match fs::read_link(&path) {
                    Ok(t) => t,
                    Err(e) if vanished(&e) => continue,
                    Err(e) => {
                        return Err(e).with_context(|| format!("reading link {}", path.display()));
                    }
                };
                let mut header = header_for(&meta, EntryType::Symlink, 0);
                builder
                    .append_link(&mut header, &archived, &target)
                    .with_context(|| format!("archiving link {}", path.display()))?;
            } else if ft.is_file() {
                append_file(builder, &path, &archived)?;
            }
            // Sockets, FIFOs and devices are not cache content.
        }
        // Reversed so that the stack pops them in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// A dir or file that disappeared (or was swapped for something else) while we walked.
fn vanished(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || e.raw_os_error() == Some(libc::ELOOP)
}

fn header_for(meta: &fs::Metadata, kind: EntryType, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(meta.mode() & MODE_MASK);
    header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(size);
    header
}

fn append_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    archived: &Path,
    meta: &fs::Metadata,
) -> anyhow::Result<()> {
    let mut header = header_for(meta, EntryType::Directory, 0);
    builder
        .append_data(&mut header, archived, io::empty())
        .with_context(|| format!("archiving dir {}", archived.display()))
}

fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    archived: &Path,
) -> anyhow::Result<()> {
    // O_NOFOLLOW: a file swapped for a link after we looked at it is not followed.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if vanished(&e) => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        return Ok(());
    }
    let len = meta.len();
    let mut header = header_for(&meta, EntryType::Regular, len);
    // Exactly `len` bytes whatever happens to the file meanwhile (a lingering build process),
    // so the archive stays well-formed: zeros if it shrank, cut if it grew.
    let data = file.take(len).chain(io::repeat(0)).take(len);
    builder
        .append_data(&mut header, archived, data)
        .with_context(|| format!("archiving {}", path.display()))
}

/// The first existing component of `path` (absolute, without `..`) that is a symlink.
pub(super) fn symlink_on_the_way(path: &Path) -> anyhow::Result<Option<PathBuf>> {
    check_target_path(path)?;
    let mut cur = PathBuf::new();
    for comp in path.components() {
        cur.push(comp);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Ok(Some(cur)),
            Ok(_) => {}
            Err(e) if vanished(&e) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", cur.display())),
        }
    }
    Ok(None)
}

fn check_target_path(path: &Path) -> anyhow::Result<()> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        bail!(
            "cache dir {} must be an absolute path without `..`",
            path.display()
        );
    }
    Ok(())
}

/// One cached dir being restored: where it goes and what this unpack created for it.
struct Target<'a> {
    name: Vec<&'a [u8]>,
    path: &'a Path,
    /// `None` until the archive first mentions this dir; then the topmost dir we had to create
    /// (removed again if the restore fails), if any.
    prepared: Option<Option<PathBuf>>,
}

/// Unpacks a tar stream made by [`pack`] into `dirs` (matched by name; archive content for other
/// names is skipped). Every restored path is lchown'ed to `owner` when given.
///
/// Rules that keep a malicious archive inside the target dirs: paths with `..`, absolute paths or
/// NUL bytes are refused; every entry's parent must be a target dir or a dir made earlier by this
/// same archive (so nothing is ever written through a link, the build's or the archive's); a path
/// may appear only once; only files, dirs and symlinks are accepted; modes are masked to 0o777.
/// On failure the target dirs this call created are removed again.
pub(super) fn unpack<R: Read>(
    src: R,
    dirs: &[CacheDir],
    owner: Option<(u32, u32)>,
) -> Result<(), UnpackError> {
    let mut targets: Vec<Target> = dirs
        .iter()
        .map(|d| Target {
            name: d.name.as_bytes().split(|b| *b == b'/').collect(),
            path: &d.path,
            prepared: None,
        })
        .collect();
    let result = unpack_into(src, &mut targets, owner);
    if result.is_err() {
        for created in targets.iter().filter_map(|t| t.prepared.clone().flatten()) {
            if let Err(e) = fs::remove_dir_all(&created) {
                tracing::warn!(dir = %created.display(), error = %e, "could not remove a partly restored cache dir");
            }
        }
    }
    result
}

fn unpack_into<R: Read>(
    src: R,
    targets: &mut [Target],
    owner: Option<(u32, u32)>,
) -> Result<(), UnpackError> {
    use UnpackError::{Entry as Bad, Target as Io};
    let mut archive = tar::Archive::new(src);
    let entries = archive
        .entries()
        .map_err(|e| Bad(anyhow!("reading the archive: {e}")))?;
    // Dirs made or verified by this unpack, with the mode and mtime to give them at the end
    // (after their content is written, so a read-only dir can still be filled).
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    let mut known_dirs: HashSet<PathBuf> = HashSet::new();
    let mut written: HashSet<PathBuf> = HashSet::new();
    let mut buf = vec![0u8; COPY_BUF_BYTES];

    for entry in entries {
        let mut entry = entry.map_err(|e| Bad(anyhow!("reading the archive: {e}")))?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let comps = split_entry_path(&raw_path).map_err(Bad)?;
        let Some(ti) = best_target(targets, &comps) else {
            continue;
        };
        let rel = &comps[targets[ti].name.len()..];
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header
            .mode()
            .map_err(|e| Bad(anyhow!("entry {shown}: bad mode: {e}")))?
            & MODE_MASK;
        let mtime = header.mtime().unwrap_or(0);

        if targets[ti].prepared.is_none() {
            let created = prepare_target(targets[ti].path, owner).map_err(Io)?;
            targets[ti].prepared = Some(created);
            known_dirs.insert(targets[ti].path.to_path_buf());
        }
        let root = targets[ti].path;
        let mut dest = root.to_path_buf();
        for c in rel {
            dest.push(OsStr::from_bytes(c));
        }
        if !written.insert(dest.clone()) {
            return Err(Bad(anyhow!("entry {shown} appears twice")));
        }
        if rel.is_empty() {
            if !kind.is_dir() {
                return Err(Bad(anyhow!("entry {shown} should be a directory")));
            }
            dirs.push((dest, mode, mtime));
            continue;
        }
        let parent = dest.parent().map(Path::to_path_buf).unwrap_or_default();
        if !known_dirs.contains(&parent) {
            return Err(Bad(anyhow!(
                "entry {shown} is not inside a directory of the archive (refusing to follow links)"
            )));
        }

        match kind {
            EntryType::Directory => {
                make_dir(&dest).map_err(Io)?;
                known_dirs.insert(dest.clone());
                dirs.push((dest, mode, mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                clear(&dest).map_err(Io)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&dest)
                    .map_err(|e| {
                        Io(anyhow::Error::new(e).context(format!("creating {}", dest.display())))
                    })?;
                loop {
                    let n = match entry.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(Bad(anyhow!("reading entry {shown}: {e}"))),
                    };
                    file.write_all(&buf[..n]).map_err(|e| {
                        Io(anyhow::Error::new(e).context(format!("writing {}", dest.display())))
                    })?;
                }
                let finish = || -> io::Result<()> {
                    file.set_permissions(Permissions::from_mode(mode))?;
                    file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))?;
                    if let Some((uid, gid)) = owner {
                        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
                    }
                    Ok(())
                };
                finish().map_err(|e| {
                    Io(anyhow::Error::new(e).context(format!("finishing {}", dest.display())))
                })?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Bad(anyhow!("symlink entry {shown} has no target")))?
                    .into_owned();
                clear(&dest).map_err(Io)?;
                // The target is kept as it is: the link stays a link, even one pointing outside.
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dest).map_err(|e| {
                    Io(anyhow::Error::new(e).context(format!("creating link {}", dest.display())))
                })?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::lchown(&dest, Some(uid), Some(gid)).map_err(|e| {
                        Io(anyhow::Error::new(e).context(format!("chown {}", dest.display())))
                    })?;
                }
            }
            other => {
                return Err(Bad(anyhow!(
                    "entry {shown} has an unsupported type {other:?}"
                )));
            }
        }
    }

    // Reading to the end makes the decompressor check the frame checksum: a damaged or cut
    // entry fails here at the latest.
    io::copy(&mut archive.into_inner(), &mut io::sink())
        .map_err(|e| Bad(anyhow!("reading the end of the archive: {e}")))?;

    for (dir, mode, mtime) in dirs.iter().rev() {
        let finish = || -> io::Result<()> {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
            }
            fs::set_permissions(dir, Permissions::from_mode(*mode))?;
            let times = fs::FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(*mtime));
            File::open(dir)?.set_times(times)
        };
        finish().map_err(|e| {
            Io(anyhow::Error::new(e).context(format!("finishing {}", dir.display())))
        })?;
    }
    Ok(())
}

/// The components of an archive path; `..`, absolute paths and NUL bytes are refused.
fn split_entry_path(raw: &[u8]) -> anyhow::Result<Vec<&[u8]>> {
    let shown = String::from_utf8_lossy(raw);
    if raw.first() == Some(&b'/') {
        bail!("entry {shown} has an absolute path");
    }
    if raw.contains(&0) {
        bail!("entry {shown} has a NUL byte in its path");
    }
    let mut comps = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => bail!("entry {shown} has `..` in its path"),
            c => comps.push(c),
        }
    }
    if comps.is_empty() {
        bail!("entry {shown} has an empty path");
    }
    Ok(comps)
}

/// The target whose name is the longest prefix of `comps`.
fn best_target(targets: &[Target], comps: &[&[u8]]) -> Option<usize> {
    targets
        .iter()
        .enumerate()
        .filter(|(_, t)| comps.starts_with(&t.name))
        .max_by_key(|(_, t)| t.name.len())
        .map(|(i, _)| i)
}

/// Creates `path` and missing parents (lchown'ed to `owner`), refusing symlinks on the way.
/// Returns the topmost dir it created.
fn prepare_target(path: &Path, owner: Option<(u32, u32)>) -> anyhow::Result<Option<PathBuf>> {
    check_target_path(path)?;
    let mut cur = PathBuf::new();
    let mut topmost = None;
    for comp in path.components() {
        cur.push(comp);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => continue,
            Ok(m) if m.file_type().is_symlink() => bail!(
                "refusing to restore into {}: {} is a symlink",
                path.display(),
                cur.display()
            ),
            Ok(_) => bail!(
                "refusing to restore into {}: {} is not a directory",
                path.display(),
                cur.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", cur.display())),
        }
        match fs::create_dir(&cur) {
            Ok(()) => {
                if topmost.is_none() {
                    topmost = Some(cur.clone());
                }
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::lchown(&cur, Some(uid), Some(gid))
                        .with_context(|| format!("chown {}", cur.display()))?;
                }
            }
            // Made meanwhile by someone else: checked again on the next restore of the path.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(&cur)?.is_dir() {
                    bail!("{} appeared as a non-directory", cur.display());
                }
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", cur.display())),
        }
    }
    Ok(topmost)
}

/// Makes `dest` a directory, replacing a file or link there (never following it).
fn make_dir(dest: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => fs::remove_file(dest).with_context(|| format!("replacing {}", dest.display()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", dest.display())),
    }
    fs::create_dir(dest).with_context(|| format!("creating {}", dest.display()))?;
    // Until its content is in place the dir stays private; its mode is set at the end.
    fs::set_permissions(dest, Permissions::from_mode(0o700))
        .with_context(|| format!("creating {}", dest.display()))
}

/// Removes whatever is at `dest` (a dir with its content, a file or a link itself).
fn clear(dest: &Path) -> anyhow::Result<()> {
    let res = match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(dest),
        Ok(_) => fs::remove_file(dest),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    res.with_context(|| format!("replacing {}", dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_refuse_dot_dot_absolute_paths_and_nul() {
        assert_eq!(
            split_entry_path(b"home/.npm/./a//b/").unwrap(),
            [&b"home"[..], b".npm", b"a", b"b"]
        );
        for bad in [&b"a/../b"[..], b"..", b"/etc/passwd", b"a/b\0c", b"", b"./"] {
            assert!(
                split_entry_path(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_entry_belongs_to_the_dir_whose_whole_name_prefixes_it() {
        let targets: Vec<Target> = [("home/.npm", "/h"), ("home/.npm-extra", "/x")]
            .iter()
            .map(|(name, path)| Target {
                name: name.as_bytes().split(|b| *b == b'/').collect(),
                path: Path::new(path),
                prepared: None,
            })
            .collect();
        let comps = |p: &'static str| split_entry_path(p.as_bytes()).unwrap();
        assert_eq!(best_target(&targets, &comps("home/.npm/a")), Some(0));
        assert_eq!(best_target(&targets, &comps("home/.npm-extra/a")), Some(1));
        assert_eq!(best_target(&targets, &comps("home/.npmrc")), None);
        assert_eq!(best_target(&targets, &comps("home")), None);
    }
}
