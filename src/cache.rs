//! The build cache store: per-trigger entries of cached dirs (package-manager and framework
//! caches) that the runner restores before installing dependencies and saves after a successful
//! build (PRODUCT-NOTES §5, DESIGN §3b). A pure storage engine: no database, no build logic.
//!
//! On disk, under the root (`<data_dir>/cache`, owned by Kiln, never shown to builds):
//! `<trigger>/<deps|build>-<key>.tar.zst` is an entry (a zstd-compressed tar, `<name>/…` per
//! [`CacheDir`]; its mtime is its creation time), `<trigger>/<deps|build>-<key>.read.json` holds
//! when it was last restored, and `.tmp/` holds entries being written. Entries are published by
//! rename, so readers see a whole entry or none.
//!
//! Compression: zstd level 1 with its frame checksum. Measured on 100 MB in 10,000 files of 2-18 kB
//! (half incompressible like npm's tarballs, half JSON), release build, same run, best of three on
//! a busy 2-core machine: plain tar 108 MB, save 449 ms, restore 685 ms; zstd 1: 54 MB, 398 ms,
//! 888 ms; zstd 3: 53 MB, 511 ms, 764 ms (restore differences are within the noise of creating
//! 10,000 files). Level 1 saves as fast as plain tar since it writes half the bytes, halves what
//! counts against the 10 GB, and its checksum catches a damaged entry; level 3 gains nothing more.
//! `cargo bench --bench build_cache` measures save and restore against `cp -a`.
//!
//! Restores run before any build step, so nothing else writes the target dirs meanwhile: the
//! checks against links (see `archive::unpack`) rely on that.

mod archive;
mod disk;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use sha2::{Digest, Sha256};

use disk::Inner;

/// The per-trigger limits of the cache (PRODUCT-NOTES §5: 10 GB per project, least recently read
/// evicted first; entries kept 7 days after the last read, or after creation if never read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Bytes on disk (compressed entries) a trigger may hold; default 10 GB (10^10 bytes).
    pub max_bytes_per_trigger: u64,
    /// How long an entry is kept after it was last read (or created, if never read); default 7 days.
    pub max_idle: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_bytes_per_trigger: 10_000_000_000,
            max_idle: Duration::from_secs(7 * 24 * 60 * 60),
        }
    }
}

/// What kind of entry. The hosted product logs them separately ("Restoring from dependencies
/// cache", "Restoring from build output cache"); [`fmt::Display`] gives "dependencies" and
/// "build output" for those lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheKind {
    /// Package-manager global caches (`.npm`, `.cache/yarn`, …).
    Dependencies,
    /// Framework build-output caches (`.next/cache`, `.astro`, …).
    BuildOutput,
}

impl CacheKind {
    /// The file name prefix of this kind's entries.
    fn slug(self) -> &'static str {
        match self {
            CacheKind::Dependencies => "deps",
            CacheKind::BuildOutput => "build",
        }
    }

    fn from_slug(slug: &str) -> Option<CacheKind> {
        match slug {
            "deps" => Some(CacheKind::Dependencies),
            "build" => Some(CacheKind::BuildOutput),
            _ => None,
        }
    }
}

impl fmt::Display for CacheKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheKind::Dependencies => "dependencies",
            CacheKind::BuildOutput => "build output",
        })
    }
}

/// A directory to cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDir {
    /// A stable name for the dir inside the entry, e.g. `home/.npm` or `root/.next/cache`:
    /// relative, `/`-separated, without `.`, `..` or empty components; within one call no name may
    /// be another's prefix.
    pub name: String,
    /// Where the dir lives in this build. Absolute, and with no symlink on the way (the build's
    /// repository controls the workspace, so `.next -> /etc` would otherwise make Kiln, as root,
    /// read or write elsewhere): canonicalize the build's root once. A dir reached through a
    /// symlink is skipped on save and refused on restore.
    pub path: PathBuf,
}

/// What [`BuildCache::restore`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// The entry with the requested key.
    Exact,
    /// No entry with that key: the trigger's newest entry of that kind.
    Fallback,
    /// Nothing of that kind for the trigger.
    Miss,
}

/// One stored entry, for tests and the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub kind: CacheKind,
    pub key: String,
    /// Bytes on disk (the compressed entry).
    pub size: u64,
    pub created: SystemTime,
    /// `None` while the entry was never restored.
    pub last_read: Option<SystemTime>,
}

/// The build cache store; `Send + Sync`, cheap to share in an `Arc`. All file system work runs in
/// `spawn_blocking`. One Kiln process per root: temp files another process is writing would be
/// taken for a crash's leftovers by [`BuildCache::evict_expired`].
pub struct BuildCache {
    inner: Arc<Inner>,
}

impl BuildCache {
    /// Opens (creating it if needed, mode 0700) the store at `root`, usually `<data_dir>/cache`.
    pub fn open(root: impl Into<PathBuf>, limits: CacheLimits) -> anyhow::Result<BuildCache> {
        Self::open_with_clock(root, limits, SystemTime::now)
    }

    /// [`BuildCache::open`] with the clock used for creation, read and expiry times (for tests).
    pub fn open_with_clock(
        root: impl Into<PathBuf>,
        limits: CacheLimits,
        clock: impl Fn() -> SystemTime + Send + Sync + 'static,
    ) -> anyhow::Result<BuildCache> {
        let inner = Inner::open(root.into(), limits, Box::new(clock))?;
        Ok(BuildCache {
            inner: Arc::new(inner),
        })
    }

    /// Restores the entry for (`trigger`, `kind`, `key`), else the trigger's newest entry of that
    /// kind, into `dirs` (matched by [`CacheDir::name`]; created when the entry has content for
    /// them; an existing dir's content is merged, same paths overwritten). With `owner`, every
    /// restored file and dir (and any parent dir created for it) is lchown'ed to that uid/gid.
    /// Marks the entry read now.
    ///
    /// Errors: a corrupt, truncated, unreadable or malicious entry (`..`, absolute paths, writes
    /// through links) is removed, the dirs this call created are removed again, and the error
    /// says so: the caller builds cold. A target dir that cannot be used (a symlink on its path, a
    /// full disk) is an error too, but the entry is kept.
    pub async fn restore(
        &self,
        trigger: &str,
        kind: CacheKind,
        key: &str,
        dirs: &[CacheDir],
        owner: Option<(u32, u32)>,
    ) -> anyhow::Result<Restored> {
        let (trigger, key, dirs) = (trigger.to_owned(), key.to_owned(), dirs.to_vec());
        self.blocking(move |c| c.restore(&trigger, kind, &key, &dirs, owner))
            .await
    }

    /// Saves the `dirs` that exist (missing ones skipped; symlinks stored as links, never
    /// followed; sockets, FIFOs and devices skipped) as the entry (`trigger`, `kind`, `key`),
    /// replacing an entry with the same key. Published atomically (temp file in the root, fsync,
    /// rename): concurrent saves of one key leave one whole entry (last writer wins) and a crash
    /// leaves no partial entry. Then evicts the trigger's least recently read entries until it
    /// holds at most `max_bytes_per_trigger`.
    ///
    /// Returns the entry's size in bytes on disk (0, and no entry, when none of the dirs exists).
    /// An entry larger than `max_bytes_per_trigger` on its own is an error and is not kept (writing
    /// stops as soon as it is over, so a build cannot fill Kiln's disk through its cache dirs).
    pub async fn save(
        &self,
        trigger: &str,
        kind: CacheKind,
        key: &str,
        dirs: &[CacheDir],
    ) -> anyhow::Result<u64> {
        let (trigger, key, dirs) = (trigger.to_owned(), key.to_owned(), dirs.to_vec());
        self.blocking(move |c| c.save(&trigger, kind, &key, &dirs))
            .await
    }

    /// Deletes every entry of `trigger` from disk (the API's `purge_build_cache`); returns how many.
    pub async fn purge(&self, trigger: &str) -> anyhow::Result<usize> {
        let trigger = trigger.to_owned();
        self.blocking(move |c| c.purge(&trigger)).await
    }

    /// Drops entries, of all triggers, not read for `max_idle` (never-read ones: since creation)
    /// and removes temp files left by a crash. Returns how many entries were dropped. Called at
    /// start and periodically.
    pub async fn evict_expired(&self) -> anyhow::Result<usize> {
        self.blocking(|c| c.evict_expired()).await
    }

    /// The entries of `trigger`, oldest first.
    pub async fn entries(&self, trigger: &str) -> anyhow::Result<Vec<EntryInfo>> {
        let trigger = trigger.to_owned();
        self.blocking(move |c| c.entries(&trigger)).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .context("build cache task failed")?
    }
}

/// A cache key from lockfiles: hex SHA-256 over the names and contents of `files` (the lockfiles,
/// plus the package manager and version as one more "file"), independent of their order.
pub fn lockfile_key(files: &[(&str, &[u8])]) -> String {
    let mut files = files.to_vec();
    files.sort();
    let mut hash = Sha256::new();
    hash.update(b"kiln build cache key v1\0");
    for (name, content) in files {
        // Lengths first, so that no two different lists hash the same bytes.
        hash.update((name.len() as u64).to_le_bytes());
        hash.update(name.as_bytes());
        hash.update((content.len() as u64).to_le_bytes());
        hash.update(content);
    }
    hex::encode(hash.finalize())
}
