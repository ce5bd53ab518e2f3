//! The cache's files: entry layout, atomic publish, read marks, eviction. Everything here blocks;
//! `BuildCache` calls it from `spawn_blocking`.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::archive::{self, UnpackError};
use super::{CacheDir, CacheKind, CacheLimits, EntryInfo, Restored};

/// zstd level of entries (see the `cache` module docs).
const ZSTD_LEVEL: i32 = 1;
/// Longest trigger id accepted, in characters (ids are UUIDs: 36).
const MAX_TRIGGER_LEN: usize = 64;
/// Longest key accepted, in hex digits (a SHA-256 is 64).
const MAX_KEY_LEN: usize = 128;
const ARCHIVE_SUFFIX: &str = ".tar.zst";
const READ_MARK_SUFFIX: &str = ".read.json";
const TMP_DIR: &str = ".tmp";

type Clock = Box<dyn Fn() -> SystemTime + Send + Sync>;

/// The state behind a `BuildCache`.
pub(super) struct Inner {
    root: PathBuf,
    limits: CacheLimits,
    clock: Clock,
    /// Per-trigger locks for publish, read marks and eviction (entries are read without one).
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Temp files this process is writing; any other file in `.tmp` is a crash's leftover.
    in_flight: Mutex<HashSet<PathBuf>>,
}

/// An entry found on disk.
struct Stored {
    kind: CacheKind,
    key: String,
    path: PathBuf,
    size: u64,
    created: SystemTime,
    last_read: Option<SystemTime>,
}

impl Stored {
    /// The time LRU and expiry go by: the last read, or the creation if never read.
    fn last_used(&self) -> SystemTime {
        self.last_read.unwrap_or(self.created)
    }
}

/// The read-mark sidecar of an entry.
#[derive(Serialize, Deserialize)]
struct ReadMark {
    /// Milliseconds since the Unix epoch.
    last_read_ms: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    pub(super) fn open(root: PathBuf, limits: CacheLimits, clock: Clock) -> anyhow::Result<Inner> {
        fs::create_dir_all(root.join(TMP_DIR))
            .with_context(|| format!("creating the build cache at {}", root.display()))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", root.display()))?;
        Ok(Inner {
            root,
            limits,
            clock,
            locks: Mutex::default(),
            in_flight: Mutex::default(),
        })
    }

    pub(super) fn restore(
        &self,
        trigger: &str,
        kind: CacheKind,
        key: &str,
        dirs: &[CacheDir],
        owner: Option<(u32, u32)>,
    ) -> anyhow::Result<Restored> {
        check_trigger(trigger)?;
        check_key(key)?;
        check_dirs(dirs)?;
        let exact = self.archive_path(trigger, kind, key);
        let (file, path, found_key, how) = match File::open(&exact) {
            Ok(f) => (f, exact, key.to_owned(), Restored::Exact),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let newest = self
                    .list(trigger)?
                    .into_iter()
                    .filter(|s| s.kind == kind)
                    .max_by(|a, b| a.created.cmp(&b.created).then(a.key.cmp(&b.key)));
                let Some(newest) = newest else {
                    return Ok(Restored::Miss);
                };
                match File::open(&newest.path) {
                    Ok(f) => (f, newest.path, newest.key, Restored::Fallback),
                    // Evicted meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Restored::Miss),
                    Err(e) => {
                        return Err(self.drop_bad(trigger, kind, &newest.key, None, e.into()));
                    }
                }
            }
            Err(e) => return Err(self.drop_bad(trigger, kind, key, None, e.into())),
        };
        // The entry we read is this inode: a save may rename a new one over the path meanwhile.
        let id = file.metadata().map(|m| (m.dev(), m.ino())).ok();
        let unpacked = zstd::stream::read::Decoder::new(file)
            .map_err(|e| UnpackError::Entry(anyhow!("starting to decompress: {e}")))
            .and_then(|decoder| archive::unpack(decoder, dirs, owner));
        match unpacked {
            Ok(()) => {
                // The dirs are restored: a lost read mark only makes the entry look older.
                if let Err(e) = self.mark_read(trigger, &path, id) {
                    tracing::warn!(trigger, %kind, error = format!("{e:#}"), "could not record a cache read");
                }
                Ok(how)
            }
            Err(UnpackError::Entry(e)) => Err(self.drop_bad(trigger, kind, &found_key, id, e)),
            Err(UnpackError::Target(e)) => {
                Err(e.context(format!("could not restore the {kind} cache")))
            }
        }
    }

    /// Removes an entry that could not be read (unless it was replaced meanwhile) and says so.
    fn drop_bad(
        &self,
        trigger: &str,
        kind: CacheKind,
        key: &str,
        id: Option<(u64, u64)>,
        cause: anyhow::Error,
    ) -> anyhow::Error {
        let path = self.archive_path(trigger, kind, key);
        let trigger_lock = self.trigger_lock(trigger);
        let _held = lock(&trigger_lock);
        let same = match (id, fs::symlink_metadata(&path)) {
            (Some(id), Ok(m)) => id == (m.dev(), m.ino()),
            (None, Ok(_)) => true,
            (_, Err(_)) => false,
        };
        if same {
            if let Err(e) = remove_entry(&path) {
                tracing::warn!(trigger, %kind, key, error = %e, "could not remove a damaged cache entry");
            } else {
                tracing::warn!(trigger, %kind, key, error = format!("{cause:#}"), "removed a damaged cache entry");
            }
        }
        cause.context(format!(
            "the {kind} cache entry {key} could not be restored and was removed"
        ))
    }

    /// Records that the entry at `path` (the inode `id`) was read now.
    fn mark_read(&self, trigger: &str, path: &Path, id: Option<(u64, u64)>) -> anyhow::Result<()> {
        let trigger_lock = self.trigger_lock(trigger);
        let _held = lock(&trigger_lock);
        match fs::symlink_metadata(path) {
            Ok(m) if Some((m.dev(), m.ino())) == id => {}
            // Replaced or evicted meanwhile: the mark would belong to another entry.
            _ => return Ok(()),
        }
        let mark = ReadMark {
            last_read_ms: millis((self.clock)()),
        };
        let tmp = self.temp_path()?;
        let written = (|| -> anyhow::Result<()> {
            fs::write(&tmp.path, serde_json::to_vec(&mark)?)?;
            fs::rename(&tmp.path, read_mark_path(path))?;
            Ok(())
        })();
        written.with_context(|| format!("recording the read of {}", path.display()))
    }

    pub(super) fn save(
        &self,
        trigger: &str,
        kind: CacheKind,
        key: &str,
        dirs: &[CacheDir],
    ) -> anyhow::Result<u64> {
        check_trigger(trigger)?;
        check_key(key)?;
        check_dirs(dirs)?;
        let tmp = self.temp_path()?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp.path)
            .with_context(|| format!("creating {}", tmp.path.display()))?;
        let max = self.limits.max_bytes_per_trigger;
        // Capped while it is written: a build that fills its cache dirs cannot fill Kiln's disk.
        let capped = Capped {
            inner: file,
            written: 0,
            max,
        };
        let mut encoder = zstd::stream::write::Encoder::new(capped, ZSTD_LEVEL)?;
        encoder.include_checksum(true)?;
        let packed = archive::pack(dirs, encoder).and_then(|(encoder, packed)| {
            let capped = encoder.finish().context("compressing the cache entry")?;
            Ok((capped, packed))
        });
        let (capped, packed) = match packed {
            Ok(done) => done,
            Err(e) if is_over_cap(&e) => bail!(
                "the {kind} cache entry is larger than the {max} bytes a trigger may keep; not saved"
            ),
            Err(e) => return Err(e),
        };
        if packed == 0 {
            return Ok(0);
        }
        let file = capped.inner;
        file.set_modified((self.clock)())?;
        file.sync_all().context("syncing the cache entry")?;
        let size = file.metadata()?.len();
        drop(file);

        let trigger_lock = self.trigger_lock(trigger);
        let _held = lock(&trigger_lock);
        let dir = self.root.join(trigger);
        if !dir.is_dir() {
            fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            sync_dir(&self.root)?;
        }
        let path = self.archive_path(trigger, kind, key);
        fs::rename(&tmp.path, &path)
            .with_context(|| format!("publishing the cache entry {}", path.display()))?;
        // The read mark of the entry it replaced does not apply to it.
        remove_if_exists(&read_mark_path(&path))?;
        sync_dir(&dir)?;
        self.evict_over_limit(trigger, &path)?;
        Ok(size)
    }

    /// Evicts the trigger's least recently read entries (never `keep`) while it holds more than
    /// the limit. Called with the trigger's lock held.
    fn evict_over_limit(&self, trigger: &str, keep: &Path) -> anyhow::Result<()> {
        let mut entries = self.list(trigger)?;
        let mut total: u64 = entries.iter().map(|s| s.size).sum();
        entries.sort_by(|a, b| {
            (a.last_used(), a.created, &a.key).cmp(&(b.last_used(), b.created, &b.key))
        });
        for victim in entries {
            if total <= self.limits.max_bytes_per_trigger {
                break;
            }
            if victim.path == keep {
                continue;
            }
            remove_entry(&victim.path)?;
            total -= victim.size;
            tracing::info!(trigger, kind = %victim.kind, key = victim.key, size = victim.size, "evicted a cache entry over the trigger's size limit");
        }
        Ok(())
    }

    pub(super) fn purge(&self, trigger: &str) -> anyhow::Result<usize> {
        check_trigger(trigger)?;
        let trigger_lock = self.trigger_lock(trigger);
        let _held = lock(&trigger_lock);
        let count = self.list(trigger)?.len();
        let dir = self.root.join(trigger);
        match fs::remove_dir_all(&dir) {
            Ok(()) => sync_dir(&self.root)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("purging {}", dir.display())),
        }
        Ok(count)
    }

    pub(super) fn evict_expired(&self) -> anyhow::Result<usize> {
        let now = (self.clock)();
        let mut dropped = 0;
        let root =
            fs::read_dir(&self.root).with_context(|| format!("listing {}", self.root.display()))?;
        for dirent in root {
            let name = dirent?.file_name();
            let Some(trigger) = name.to_str().filter(|t| check_trigger(t).is_ok()) else {
                continue;
            };
            let trigger_lock = self.trigger_lock(trigger);
            let _held = lock(&trigger_lock);
            for s in self.list(trigger)? {
                let idle = now.duration_since(s.last_used()).unwrap_or_default();
                if idle > self.limits.max_idle {
                    remove_entry(&s.path)?;
                    dropped += 1;
                    tracing::info!(trigger, kind = %s.kind, key = s.key, idle_s = idle.as_secs(), "dropped an expired cache entry");
                }
            }
            self.remove_orphan_marks(trigger)?;
        }
        self.remove_stale_temps()?;
        Ok(dropped)
    }

    /// Read marks whose entry is gone (a crash between removing the two).
    fn remove_orphan_marks(&self, trigger: &str) -> anyhow::Result<()> {
        let dir = self.root.join(trigger);
        for dirent in read_dir_if_exists(&dir)? {
            let path = dirent?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(stem) = name.strip_suffix(READ_MARK_SUFFIX)
                && !dir.join(format!("{stem}{ARCHIVE_SUFFIX}")).exists()
            {
                remove_if_exists(&path)?;
            }
        }
        Ok(())
    }

    fn remove_stale_temps(&self) -> anyhow::Result<()> {
        let in_flight = lock(&self.in_flight).clone();
        for dirent in read_dir_if_exists(&self.root.join(TMP_DIR))? {
            let path = dirent?.path();
            if !in_flight.contains(&path) {
                remove_if_exists(&path)?;
                tracing::info!(path = %path.display(), "removed a cache temp file left by a crash");
            }
        }
        Ok(())
    }

    pub(super) fn entries(&self, trigger: &str) -> anyhow::Result<Vec<EntryInfo>> {
        check_trigger(trigger)?;
        let mut entries = self.list(trigger)?;
        entries.sort_by(|a, b| (a.created, &a.key).cmp(&(b.created, &b.key)));
        Ok(entries
            .into_iter()
            .map(|s| EntryInfo {
                kind: s.kind,
                key: s.key,
                size: s.size,
                created: s.created,
                last_read: s.last_read,
            })
            .collect())
    }

    /// The trigger's entries as found on disk (files that are not entries are ignored).
    fn list(&self, trigger: &str) -> anyhow::Result<Vec<Stored>> {
        let dir = self.root.join(trigger);
        let mut found = Vec::new();
        for dirent in read_dir_if_exists(&dir)? {
            let path = dirent?.path();
            let Some((kind, key)) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_archive_name)
            else {
                continue;
            };
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            found.push(Stored {
                kind,
                key,
                size: meta.len(),
                created: meta.modified()?,
                last_read: read_mark(&read_mark_path(&path)),
                path,
            });
        }
        Ok(found)
    }

    fn archive_path(&self, trigger: &str, kind: CacheKind, key: &str) -> PathBuf {
        self.root
            .join(trigger)
            .join(format!("{}-{key}{ARCHIVE_SUFFIX}", kind.slug()))
    }

    fn trigger_lock(&self, trigger: &str) -> Arc<Mutex<()>> {
        lock(&self.locks)
            .entry(trigger.to_owned())
            .or_default()
            .clone()
    }

    /// A fresh temp path in `.tmp`, registered as in flight until the guard drops (which also
    /// removes the file if it is still there, e.g. after an error).
    fn temp_path(&self) -> anyhow::Result<TempPath<'_>> {
        let path = self
            .root
            .join(TMP_DIR)
            .join(format!("{}.part", uuid::Uuid::new_v4()));
        lock(&self.in_flight).insert(path.clone());
        Ok(TempPath { inner: self, path })
    }
}

/// A writer that fails once more than `max` bytes went through it.
struct Capped<W> {
    inner: W,
    written: u64,
    max: u64,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let after = self.written.saturating_add(buf.len() as u64);
        if after > self.max {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "over the trigger's cache size limit",
            ));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn is_over_cap(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::FileTooLarge)
    })
}

struct TempPath<'a> {
    inner: &'a Inner,
    path: PathBuf,
}

impl Drop for TempPath<'_> {
    fn drop(&mut self) {
        // Already renamed into place in the normal case.
        let _ = fs::remove_file(&self.path);
        lock(&self.inner.in_flight).remove(&self.path);
    }
}

fn parse_archive_name(name: &str) -> Option<(CacheKind, String)> {
    let stem = name.strip_suffix(ARCHIVE_SUFFIX)?;
    let (slug, key) = stem.split_once('-')?;
    let kind = CacheKind::from_slug(slug)?;
    check_key(key).ok()?;
    Some((kind, key.to_owned()))
}

fn read_mark_path(archive: &Path) -> PathBuf {
    let name = archive
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(ARCHIVE_SUFFIX))
        .unwrap_or_default();
    archive.with_file_name(format!("{name}{READ_MARK_SUFFIX}"))
}

/// The last read recorded for an entry; a missing or unreadable mark counts as never read.
fn read_mark(path: &Path) -> Option<SystemTime> {
    let bytes = fs::read(path).ok()?;
    let mark: ReadMark = serde_json::from_slice(&bytes).ok()?;
    Some(UNIX_EPOCH + Duration::from_millis(mark.last_read_ms))
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn remove_entry(archive: &Path) -> anyhow::Result<()> {
    remove_if_exists(archive)?;
    remove_if_exists(&read_mark_path(archive))
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn read_dir_if_exists(dir: &Path) -> anyhow::Result<Vec<io::Result<fs::DirEntry>>> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd.collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("listing {}", dir.display())),
    }
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Trigger ids are UUIDs; anything outside `[A-Za-z0-9-]` could be a path trick.
fn check_trigger(trigger: &str) -> anyhow::Result<()> {
    if trigger.is_empty()
        || trigger.len() > MAX_TRIGGER_LEN
        || !trigger
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        bail!("invalid trigger id {trigger:?} for the build cache");
    }
    Ok(())
}

/// Keys are lowercase hex (see `lockfile_key`).
fn check_key(key: &str) -> anyhow::Result<()> {
    if key.is_empty()
        || key.len() > MAX_KEY_LEN
        || !key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        bail!("invalid build cache key {key:?}: expected lowercase hex");
    }
    Ok(())
}

fn check_dirs(dirs: &[CacheDir]) -> anyhow::Result<()> {
    let names: Vec<Vec<&str>> = dirs.iter().map(|d| d.name.split('/').collect()).collect();
    for (dir, name) in dirs.iter().zip(&names) {
        if name
            .iter()
            .any(|c| c.is_empty() || *c == "." || *c == ".." || c.contains('\0'))
        {
            bail!("invalid cache dir name {:?}", dir.name);
        }
    }
    for (i, a) in names.iter().enumerate() {
        for (j, b) in names.iter().enumerate() {
            if i != j && b.starts_with(a) {
                bail!(
                    "cache dir names {:?} and {:?} overlap",
                    dirs[i].name,
                    dirs[j].name
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entry_file_names_are_entries() {
        let key = "ab".repeat(32);
        assert_eq!(
            parse_archive_name(&format!("deps-{key}.tar.zst")),
            Some((CacheKind::Dependencies, key.clone()))
        );
        assert_eq!(
            parse_archive_name(&format!("build-{key}.tar.zst")),
            Some((CacheKind::BuildOutput, key.clone()))
        );
        for name in [
            format!("deps-{key}.read.json"),
            format!("other-{key}.tar.zst"),
            "deps-XY.tar.zst".to_owned(),
            "deps-.tar.zst".to_owned(),
        ] {
            assert_eq!(parse_archive_name(&name), None, "{name}");
        }
        assert_eq!(
            read_mark_path(Path::new("/c/t/deps-ab.tar.zst")),
            Path::new("/c/t/deps-ab.read.json")
        );
    }

    #[test]
    fn trigger_ids_and_keys_are_checked() {
        assert!(check_trigger("0b5e6e2a-3f0c-4c1e-9d4e-2f8a1b7c9d01").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"a".repeat(65)] {
            assert!(check_trigger(bad).is_err(), "{bad:?}");
        }
        assert!(check_key(&"0f".repeat(32)).is_ok());
        for bad in ["", "0F", "0g", "../a", &"a".repeat(129)] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }
}
