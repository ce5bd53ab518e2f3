//! The build cache store on real files in temp dirs: round trips, fallback, purge, damaged and
//! malicious entries, LRU and expiry, concurrent saves, ownership (PRODUCT-NOTES §5).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use kiln::cache::{BuildCache, CacheDir, CacheKind, CacheLimits, Restored, lockfile_key};

const TRIGGER: &str = "0b5e6e2a-3f0c-4c1e-9d4e-2f8a1b7c9d01";
const OTHER_TRIGGER: &str = "7d1c2b3a-0000-4000-8000-000000000002";
const DAY: u64 = 24 * 60 * 60;

/// A cache on a fake clock (seconds since the epoch), in its own temp dir.
struct Fixture {
    tmp: tempfile::TempDir,
    cache: BuildCache,
    now: Arc<AtomicU64>,
}

impl Fixture {
    fn new(limits: CacheLimits) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicU64::new(1_800_000_000));
        let clock = now.clone();
        let cache = BuildCache::open_with_clock(tmp.path().join("cache"), limits, move || {
            UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::SeqCst))
        })
        .unwrap();
        Fixture { tmp, cache, now }
    }

    fn advance(&self, secs: u64) {
        self.now.fetch_add(secs, Ordering::SeqCst);
    }

    /// A fresh dir under the fixture's temp dir (not created).
    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn archive(&self, trigger: &str, kind: &str, key: &str) -> PathBuf {
        self.path("cache")
            .join(trigger)
            .join(format!("{kind}-{key}.tar.zst"))
    }

    fn temp_files(&self) -> Vec<PathBuf> {
        fs::read_dir(self.path("cache/.tmp"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

fn dir(name: &str, path: &Path) -> CacheDir {
    CacheDir {
        name: name.to_owned(),
        path: path.to_path_buf(),
    }
}

fn key(n: u8) -> String {
    lockfile_key(&[("package-lock.json", &[n])])
}

fn write(path: &Path, content: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Everything below `root`, without following links: path → (type, mode, content or target).
fn tree(root: &Path) -> BTreeMap<PathBuf, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.insert(rel, ('l', 0, t.as_os_str().as_bytes().to_vec()));
            } else if m.is_dir() {
                out.insert(rel, ('d', mode, Vec::new()));
                stack.push(p);
            } else if m.is_file() {
                out.insert(rel, ('f', mode, fs::read(&p).unwrap()));
            } else {
                out.insert(rel, ('s', mode, Vec::new()));
            }
        }
    }
    out
}

/// Bytes that zstd cannot shrink, so entry sizes are predictable.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[tokio::test]
async fn save_then_restore_gives_the_same_trees_elsewhere() {
    let f = Fixture::new(CacheLimits::default());
    let npm = f.path("a/home/.npm");
    let next = f.path("a/repo/.next/cache");
    write(&npm.join("_cacache/index/ab/cd"), b"index", 0o644);
    write(&npm.join("bin/tool"), b"#!/bin/sh\n", 0o755);
    write(&npm.join("private"), b"secret-ish", 0o600);
    write(&npm.join("readonly"), b"ro", 0o444);
    let long = "d".repeat(120);
    write(&npm.join(&long).join("f".repeat(120)), b"long names", 0o644);
    fs::create_dir_all(npm.join("empty/nested-empty")).unwrap();
    fs::set_permissions(npm.join("empty"), fs::Permissions::from_mode(0o750)).unwrap();
    symlink("bin/tool", npm.join("rel-link")).unwrap();
    symlink("/etc/passwd", npm.join("abs-link")).unwrap();
    symlink("missing", npm.join("dangling")).unwrap();
    write(
        &next.join("webpack/client/0.pack"),
        &noise(100_000, 1),
        0o644,
    );
    let dirs = [dir("home/.npm", &npm), dir("root/.next/cache", &next)];

    let k = key(1);
    let size = f
        .cache
        .save(TRIGGER, CacheKind::Dependencies, &k, &dirs)
        .await
        .unwrap();
    assert!(size > 100_000, "{size}");

    let npm2 = f.path("b/home/.npm");
    let next2 = f.path("b/repo/.next/cache");
    let dirs2 = [dir("home/.npm", &npm2), dir("root/.next/cache", &next2)];
    let got = f
        .cache
        .restore(TRIGGER, CacheKind::Dependencies, &k, &dirs2, None)
        .await
        .unwrap();
    assert_eq!(got, Restored::Exact);
    assert_eq!(tree(&npm2), tree(&npm));
    assert_eq!(tree(&next2), tree(&next));
    assert_eq!(
        fs::symlink_metadata(&npm2).unwrap().mode() & 0o777,
        fs::symlink_metadata(&npm).unwrap().mode() & 0o777
    );

    let entries = f.cache.entries(TRIGGER).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind, CacheKind::Dependencies);
    assert_eq!(entries[0].key, k);
    assert_eq!(entries[0].size, size);
    assert_eq!(entries[0].last_read, Some(entries[0].created));
}

#[tokio::test]
async fn special_files_are_skipped_setuid_bits_dropped_and_restore_merges() {
    let f = Fixture::new(CacheLimits::default());
    let src = f.path("a/.npm");
    write(&src.join("suid"), b"x", 0o4755);
    write(&src.join("kept"), b"new", 0o644);
    mkfifo(&src.join("fifo"));
    let k = key(1);
    f.cache
        .save(TRIGGER, CacheKind::Dependencies, &k, &[dir("npm", &src)])
        .await
        .unwrap();

    let dst = f.path("b/.npm");
    write(&dst.join("kept"), b"old", 0o644);
    write(&dst.join("other"), b"untouched", 0o644);
    // A link where the entry has a file is replaced, not followed.
    let outside = f.path("outside");
    write(&outside, b"outside", 0o644);
    symlink(&outside, dst.join("suid")).unwrap();
    f.cache
        .restore(
            TRIGGER,
            CacheKind::Dependencies,
            &k,
            &[dir("npm", &dst)],
            None,
        )
        .await
        .unwrap();
    let t = tree(&dst);
    assert_eq!(t[Path::new("suid")], ('f', 0o755, b"x".to_vec()));
    assert_eq!(t[Path::new("kept")].2, b"new");
    assert_eq!(t[Path::new("other")].2, b"untouched");
    assert!(!t.contains_key(Path::new("fifo")));
    assert_eq!(fs::read(&outside).unwrap(), b"outside");
}

#[tokio::test]
async fn another_key_falls_back_to_the_newest_entry_of_its_kind() {
    let f = Fixture::new(CacheLimits::default());
    let src = f.path("src");
    let dirs = [dir("d", &src)];
    for n in 1..=2u8 {
        write(&src.join("which"), &[n], 0o644);
        f.cache
            .save(TRIGGER, CacheKind::Dependencies, &key(n), &dirs)
            .await
            .unwrap();
        f.advance(60);
    }
    // Read the older one, so that "newest" cannot mean "most recently read".
    let dst = f.path("dst");
    let restore = |k: String, kind: CacheKind, trigger: &'static str| {
        let dirs = [dir("d", &dst)];
        let cache = &f.cache;
        async move { cache.restore(trigger, kind, &k, &dirs, None).await.unwrap() }
    };
    assert_eq!(
        restore(key(1), CacheKind::Dependencies, TRIGGER).await,
        Restored::Exact
    );
    assert_eq!(fs::read(dst.join("which")).unwrap(), [1]);
    assert_eq!(
        restore(key(9), CacheKind::Dependencies, TRIGGER).await,
        Restored::Fallback
    );
    assert_eq!(fs::read(dst.join("which")).unwrap(), [2]);

    fs::remove_dir_all(&dst).unwrap();
    assert_eq!(
        restore(key(1), CacheKind::BuildOutput, TRIGGER).await,
        Restored::Miss
    );
    assert_eq!(
        restore(key(1), CacheKind::Dependencies, OTHER_TRIGGER).await,
        Restored::Miss
    );
    assert!(!dst.exists(), "a miss creates nothing");
}

#[tokio::test]
async fn saving_nothing_stores_nothing_and_bad_names_are_refused() {
    let f = Fixture::new(CacheLimits::default());
    let missing = [dir("a", &f.path("nope")), dir("b", &f.path("nope2"))];
    let size = f
        .cache
        .save(TRIGGER, CacheKind::Dependencies, &key(1), &missing)
        .await
        .unwrap();
    assert_eq!(size, 0);
    assert!(f.cache.entries(TRIGGER).await.unwrap().is_empty());

    let src = f.path("src");
    write(&src.join("x"), b"x", 0o644);
    let ok = [dir("a", &src)];
    for trigger in ["../x", "", "a/b", "a.b", "..", "x y"] {
        assert!(
            f.cache
                .save(trigger, CacheKind::Dependencies, &key(1), &ok)
                .await
                .is_err(),
            "{trigger:?}"
        );
        assert!(f.cache.purge(trigger).await.is_err(), "{trigger:?}");
    }
    for k in ["", "../00", "ABCD", "zz", "00/11"] {
        assert!(
            f.cache
                .save(TRIGGER, CacheKind::Dependencies, k, &ok)
                .await
                .is_err(),
            "{k:?}"
        );
    }
    for names in [
        vec!["../a"],
        vec!["/a"],
        vec!["a//b"],
        vec!["a", "a/b"],
        vec!["a", "a"],
    ] {
        let dirs: Vec<_> = names.iter().map(|n| dir(n, &src)).collect();
        assert!(
            f.cache
                .save(TRIGGER, CacheKind::Dependencies, &key(1), &dirs)
                .await
                .is_err(),
            "{names:?}"
        );
    }
    // A relative path is refused too: the runner passes canonical absolute paths.
    let rel = [dir("a", Path::new("relative/dir"))];
    assert!(
        f.cache
            .save(TRIGGER, CacheKind::Dependencies, &key(1), &rel)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn purge_removes_only_that_triggers_entries() {
    let f = Fixture::new(CacheLimits::default());
    let src = f.path("src");
    write(&src.join("x"), b"x", 0o644);
    let dirs = [dir("d", &src)];
    for (t, kind, k) in [
        (TRIGGER, CacheKind::Dependencies, key(1)),
        (TRIGGER, CacheKind::BuildOutput, key(1)),
        (TRIGGER, CacheKind::Dependencies, key(2)),
        (OTHER_TRIGGER, CacheKind::Dependencies, key(1)),
    ] {
        f.cache.save(t, kind, &k, &dirs).await.unwrap();
    }
    assert_eq!(f.cache.purge(TRIGGER).await.unwrap(), 3);
    assert!(f.cache.entries(TRIGGER).await.unwrap().is_empty());
    assert!(!f.path("cache").join(TRIGGER).exists(), "purged for real");
    assert_eq!(f.cache.entries(OTHER_TRIGGER).await.unwrap().len(), 1);
    assert_eq!(f.cache.purge(TRIGGER).await.unwrap(), 0);
}

/// Damages an entry's bytes in place.
type Damage = fn(&mut Vec<u8>);

#[tokio::test]
async fn a_damaged_entry_fails_once_is_removed_and_the_cache_recovers() {
    let f = Fixture::new(CacheLimits::default());
    let src = f.path("src");
    for i in 0..20 {
        write(&src.join(format!("f{i}")), &noise(20_000, i), 0o644);
    }
    let dirs = [dir("d", &src)];
    let k = key(1);
    let archive = f.archive(TRIGGER, "deps", &k);
    let damages: [(&str, Damage); 3] = [
        ("truncated", |b| b.truncate(b.len() / 2)),
        ("garbage in the middle", |b| {
            let mid = b.len() / 2;
            b[mid..mid + 64].copy_from_slice(&[0x5a; 64]);
        }),
        ("not an archive at all", |b| *b = b"garbage bytes".to_vec()),
    ];
    for (what, damage) in damages {
        f.cache
            .save(TRIGGER, CacheKind::Dependencies, &k, &dirs)
            .await
            .unwrap();
        let mut bytes = fs::read(&archive).unwrap();
        damage(&mut bytes);
        fs::write(&archive, bytes).unwrap();

        let dst = f.path("dst");
        let err = f
            .cache
            .restore(
                TRIGGER,
                CacheKind::Dependencies,
                &k,
                &[dir("d", &dst)],
                None,
            )
            .await
            .expect_err(what);
        assert!(
            format!("{err:#}").contains("was removed"),
            "{what}: {err:#}"
        );
        assert!(f.cache.entries(TRIGGER).await.unwrap().is_empty(), "{what}");
        assert!(
            !dst.exists(),
            "{what}: a failed restore leaves no half-restored dir it created"
        );
        let again = f
            .cache
            .restore(
                TRIGGER,
                CacheKind::Dependencies,
                &k,
                &[dir("d", &dst)],
                None,
            )
            .await
            .unwrap();
        assert_eq!(again, Restored::Miss, "{what}");
    }
    f.cache
        .save(TRIGGER, CacheKind::Dependencies, &k, &dirs)
        .await
        .unwrap();
    let dst = f.path("dst");
    let got = f
        .cache
        .restore(
            TRIGGER,
            CacheKind::Dependencies,
            &k,
            &[dir("d", &dst)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(got, Restored::Exact);
    assert_eq!(tree(&dst), tree(&src));
}

#[tokio::test]
async fn the_least_recently_read_entry_is_evicted_first() {
    // Room for two entries of ~20 kB of incompressible content, not three.
    let f = Fixture::new(CacheLimits {
        max_bytes_per_trigger: 50_000,
        ..CacheLimits::default()
    });
    let src = f.path("src");
    let dirs = [dir("d", &src)];
    for n in 1..=2u8 {
        write(&src.join("blob"), &noise(20_000, n.into()), 0o644);
        f.cache
            .save(TRIGGER, CacheKind::Dependencies, &key(n), &dirs)
            .await
            .unwrap();
        f.advance(60);
    }
    // The older entry is read, so the newer one is now the least recently read.
    f.cache
        .restore(
            TRIGGER,
            CacheKind::Dependencies,
            &key(1),
            &[dir("d", &f.path("dst"))],
            None,
        )
        .await
        .unwrap();
    f.advance(60);
    write(&src.join("blob"), &noise(20_000, 3), 0o644);
    f.cache
        .save(TRIGGER, CacheKind::BuildOutput, &key(3), &dirs)
        .await
        .unwrap();

    let keys: Vec<_> = f
        .cache
        .entries(TRIGGER)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, [key(1), key(3)]);
    // Other triggers have their own budget.
    f.cache
        .save(OTHER_TRIGGER, CacheKind::Dependencies, &key(1), &dirs)
        .await
        .unwrap();
    assert_eq!(f.cache.entries(TRIGGER).await.unwrap().len(), 2);

    // One entry above the whole budget is not kept, whether the cap is hit while compressing
    // (1 MB, past zstd's output buffer) or when the stream ends (60 kB).
    for len in [60_000, 1_000_000] {
        write(&src.join("blob"), &noise(len, 4), 0o644);
        let err = f
            .cache
            .save(TRIGGER, CacheKind::Dependencies, &key(4), &dirs)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("not saved"), "{err:#}");
        assert_eq!(f.cache.entries(TRIGGER).await.unwrap().len(), 2);
        assert!(f.temp_files().is_empty());
    }
}

#[tokio::test]
async fn entries_idle_past_max_idle_expire_and_crash_leftovers_go() {
    let f = Fixture::new(CacheLimits::default());
    let src = f.path("src");
    write(&src.join("x"), b"x", 0o644);
    let dirs = [dir("d", &src)];
    let start = f.now.load(Ordering::SeqCst);
    f.cache
        .save(TRIGGER, CacheKind::Dependencies, &key(1), &dirs)
        .await
        .unwrap();
    f.cache
        .save(TRIGGER, CacheKind::Dependencies, &key(2), &dirs)
        .await
        .unwrap();
    f.cache
        .save(OTHER_TRIGGER, CacheKind::BuildOutput, &key(1), &dirs)
        .await
        .unwrap();
    f.advance(6 * DAY);
    f.cache
        .restore(
            TRIGGER,
            CacheKind::Dependencies,
            &key(2),
            &[dir("d", &f.path("dst"))],
            None,
        )
        .await
        .unwrap();
    let leftover = f.path("cache/.tmp/0000-crashed.part");
    fs::write(&leftover, b"half an entry").unwrap();

    f.advance(DAY);
    assert_eq!(
        f.cache.evict_expired().await.unwrap(),
        0,
        "exactly 7 days is not past"
    );
    assert!(!leftover.exists(), "a crash's temp file is removed");
    f.advance(1);
    assert_eq!(
        f.cache.evict_expired().await.unwrap(),
        2,
        "never read: 7 days after creation"
    );
    let left = f.cache.entries(TRIGGER).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key, key(2));
    assert_eq!(
        left[0].last_read,
        Some(UNIX_EPOCH + Duration::from_secs(start + 6 * DAY))
    );
    assert!(f.cache.entries(OTHER_TRIGGER).await.unwrap().is_empty());

    f.advance(6 * DAY);
    assert_eq!(
        f.cache.evict_expired().await.unwrap(),
        1,
        "7 days after the last read"
    );
    assert!(f.cache.entries(TRIGGER).await.unwrap().is_empty());
    assert!(
        fs::read_dir(f.path("cache").join(TRIGGER))
            .unwrap()
            .next()
            .is_none(),
        "no read marks left"
    );

    // The times survive a restart (a new BuildCache on the same root).
    f.cache
        .save(TRIGGER, CacheKind::Dependencies, &key(1), &dirs)
        .await
        .unwrap();
    let before = f.cache.entries(TRIGGER).await.unwrap();
    let reopened = BuildCache::open(f.path("cache"), CacheLimits::default()).unwrap();
    assert_eq!(reopened.entries(TRIGGER).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_saves_of_one_key_leave_one_whole_version() {
    const FILES: usize = 40;
    let f = Arc::new(Fixture::new(CacheLimits::default()));
    let k = key(1);
    let mut tasks = Vec::new();
    for n in 0..8u64 {
        let src = f.path(&format!("src{n}"));
        for i in 0..FILES {
            let mut content = format!("writer {n}\n").into_bytes();
            content.extend(noise(4_000, n * 1000 + i as u64));
            write(&src.join(format!("f{i:02}")), &content, 0o644);
        }
        let (f, k) = (f.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            f.cache
                .save(TRIGGER, CacheKind::Dependencies, &k, &[dir("d", &src)])
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let dst = f.path("dst");
    let got = f
        .cache
        .restore(
            TRIGGER,
            CacheKind::Dependencies,
            &k,
            &[dir("d", &dst)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(got, Restored::Exact);
    let restored = tree(&dst);
    assert_eq!(restored.len(), FILES);
    let writer = restored[Path::new("f00")].2[..9].to_vec();
    let n = writer[7] - b'0';
    assert_eq!(
        restored,
        tree(&f.path(&format!("src{n}"))),
        "one writer's whole tree"
    );
    assert_eq!(f.cache.entries(TRIGGER).await.unwrap().len(), 1);
    assert!(f.temp_files().is_empty());
}

/// Adds hand-made entries to an archive.
type Planter<'a> = Box<dyn Fn(&mut tar::Builder<Vec<u8>>) + 'a>;

/// Plants a hand-made archive as the entry (TRIGGER, deps, key(1)).
fn plant(f: &Fixture, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) {
    let mut builder = tar::Builder::new(Vec::new());
    build(&mut builder);
    let tar = builder.into_inner().unwrap();
    let zst = zstd::encode_all(&tar[..], 1).unwrap();
    let path = f.archive(TRIGGER, "deps", &key(1));
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, zst).unwrap();
}

/// A header with a raw path, bypassing the tar crate's own checks on `..` and absolute paths.
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    path: &str,
    link: &str,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    b.append(&h, data).unwrap();
}

#[tokio::test]
async fn a_malicious_entry_writes_nothing_outside_its_dir() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let f = Fixture::new(CacheLimits::default());
    let outside = f.path("outside");
    fs::create_dir_all(&outside).unwrap();
    let target = f.path("work/d");
    let out = outside.to_str().unwrap().to_owned();
    let cases: Vec<(&str, Planter)> = vec![
        (
            "dot-dot",
            Box::new(|b| raw_entry(b, Regular, "d/../escape", "", b"x")),
        ),
        (
            "deep dot-dot",
            Box::new(|b| raw_entry(b, Regular, "d/a/../../../outside/escape", "", b"x")),
        ),
        (
            "absolute",
            Box::new(move |b| raw_entry(b, Regular, &format!("{out}/escape"), "", b"x")),
        ),
        (
            "through a link",
            Box::new(|b| {
                raw_entry(b, Directory, "d", "", b"");
                raw_entry(
                    b,
                    Symlink,
                    "d/link",
                    f.path("outside").to_str().unwrap(),
                    b"",
                );
                raw_entry(b, Regular, "d/link/escape", "", b"x");
            }),
        ),
        (
            "link then dir then file",
            Box::new(|b| {
                raw_entry(
                    b,
                    Symlink,
                    "d/link",
                    f.path("outside").to_str().unwrap(),
                    b"",
                );
                raw_entry(b, Directory, "d/link", "", b"");
                raw_entry(b, Regular, "d/link/escape", "", b"x");
            }),
        ),
        (
            "hard link",
            Box::new(|b| raw_entry(b, Link, "d/hard", "/etc/passwd", b"")),
        ),
    ];
    for (what, build) in cases {
        plant(&f, build);
        let res = f
            .cache
            .restore(
                TRIGGER,
                CacheKind::Dependencies,
                &key(1),
                &[dir("d", &target)],
                None,
            )
            .await;
        let err = format!("{:#}", res.expect_err(what));
        assert!(err.contains("was removed"), "{what}: {err}");
        assert!(
            fs::read_dir(&outside).unwrap().next().is_none(),
            "{what}: wrote outside"
        );
        assert!(
            !f.path("work/escape").exists() && !f.path("escape").exists(),
            "{what}"
        );
        assert!(
            f.cache.entries(TRIGGER).await.unwrap().is_empty(),
            "{what}: the entry is removed"
        );
    }

    // A link pointing outside stays a link, and nothing is written through it.
    plant(&f, |b| {
        raw_entry(b, Directory, "d", "", b"");
        raw_entry(
            b,
            Symlink,
            "d/link",
            f.path("outside").to_str().unwrap(),
            b"",
        );
    });
    let got = f
        .cache
        .restore(
            TRIGGER,
            CacheKind::Dependencies,
            &key(1),
            &[dir("d", &target)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(got, Restored::Exact);
    assert_eq!(fs::read_link(target.join("link")).unwrap(), outside);
    assert!(fs::read_dir(&outside).unwrap().next().is_none());
}

#[tokio::test]
async fn dirs_reached_through_a_symlink_are_neither_saved_nor_restored_into() {
    let f = Fixture::new(CacheLimits::default());
    let secret = f.path("secret");
    write(&secret.join("cache/key"), b"secret", 0o600);
    // The repository makes `.next` a link to somewhere else.
    fs::create_dir_all(f.path("repo")).unwrap();
    symlink(&secret, f.path("repo/.next")).unwrap();
    let via_link = [dir("root/.next/cache", &f.path("repo/.next/cache"))];
    let size = f
        .cache
        .save(TRIGGER, CacheKind::BuildOutput, &key(1), &via_link)
        .await
        .unwrap();
    assert_eq!(size, 0, "nothing read through the link");

    let src = f.path("src");
    write(&src.join("x"), b"x", 0o644);
    f.cache
        .save(
            TRIGGER,
            CacheKind::BuildOutput,
            &key(1),
            &[dir("root/.next/cache", &src)],
        )
        .await
        .unwrap();
    let err = f
        .cache
        .restore(TRIGGER, CacheKind::BuildOutput, &key(1), &via_link, None)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("symlink"), "{err:#}");
    assert!(!secret.join("cache/x").exists());
    assert_eq!(
        f.cache.entries(TRIGGER).await.unwrap().len(),
        1,
        "the entry is fine and kept"
    );
}

#[tokio::test]
async fn restored_paths_belong_to_the_owner() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: chown needs root");
        return;
    }
    let f = Fixture::new(CacheLimits::default());
    let src = f.path("src");
    write(&src.join("a/b/file"), b"x", 0o644);
    fs::create_dir_all(src.join("empty")).unwrap();
    symlink("a/b/file", src.join("link")).unwrap();
    f.cache
        .save(TRIGGER, CacheKind::Dependencies, &key(1), &[dir("d", &src)])
        .await
        .unwrap();
    let home = f.path("home");
    fs::create_dir_all(&home).unwrap();
    let dst = home.join(".cache/yarn");
    f.cache
        .restore(
            TRIGGER,
            CacheKind::Dependencies,
            &key(1),
            &[dir("d", &dst)],
            Some((65534, 65534)),
        )
        .await
        .unwrap();
    let mut paths: Vec<PathBuf> = tree(&dst).into_keys().map(|p| dst.join(p)).collect();
    paths.push(dst.clone());
    paths.push(home.join(".cache"));
    assert_eq!(paths.len(), 7);
    for p in paths {
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{}", p.display());
    }
    let m = fs::metadata(&home).unwrap();
    assert_eq!(m.uid(), 0, "a dir that existed keeps its owner");
}

#[test]
fn lockfile_keys_are_stable_hex_over_names_and_contents() {
    let a = lockfile_key(&[("package-lock.json", b"{}"), ("npm", b"10.9.2")]);
    assert_eq!(a.len(), 64);
    assert!(
        a.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(
        a,
        lockfile_key(&[("npm", b"10.9.2"), ("package-lock.json", b"{}")])
    );
    assert_ne!(
        a,
        lockfile_key(&[("package-lock.json", b"{ }"), ("npm", b"10.9.2")])
    );
    assert_ne!(
        a,
        lockfile_key(&[("package-lock.json", b"{}"), ("npm", b"11.0.0")])
    );
    assert_ne!(
        lockfile_key(&[("ab", b"c")]),
        lockfile_key(&[("a", b"bc")]),
        "name and content boundaries count"
    );
}

#[test]
fn the_cache_can_be_shared_across_tasks() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<BuildCache>();
    send_sync::<Arc<BuildCache>>();
}
