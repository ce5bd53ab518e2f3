//! A full disk: the server's data dir is a small tmpfs that a filler file fills while a build is
//! writing logs. Requests that must write get the envelope error (507, "storage is full"), reads go
//! on, and once the filler is deleted Kiln recovers by itself: the running build ends with its real
//! outcome, saying how many log lines could not be stored, and new builds queue and run — no restart.
//! A checkout that does not fit fails its build saying the disk is full; the build cache keeps its
//! entries whole. The database's own conditions (PostgreSQL's `disk_full`, a busy or overloaded
//! database) are envelope errors (507, 503) on both backends, never a 500.
//!
//! The tmpfs tests need root (for `mount`); they are skipped with a printed reason otherwise.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use kiln::sandbox::SandboxMode;
use reqwest::StatusCode;
use serde_json::json;

/// A tmpfs mounted on a directory for the life of the value (unmounted lazily on drop, so that a
/// failing test still leaves no mount behind).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("create the mount point");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0711"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mount -t tmpfs on {}", path.display());
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Fills the file system of `dir` with one file until a write fails with ENOSPC, then gives `leave`
/// bytes back.
fn fill_leaving(dir: &Path, leave: u64) -> PathBuf {
    let path = fill(dir);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open the filler");
    let len = f.metadata().expect("filler size").len();
    f.set_len(len.saturating_sub(leave))
        .expect("shrink the filler");
    path
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    bytes
}

/// Fills the file system of `dir` with one file until a write fails with ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut small = false;
    loop {
        let r = if small {
            f.write(&chunk[..512])
        } else {
            f.write(&chunk)
        };
        match r {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                if small {
                    break;
                }
                small = true;
            }
            Err(e) => panic!("writing the filler: {e}"),
        }
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_disk_fails_writes_clearly_and_kiln_recovers_when_space_is_back() {
    if !is_root() {
        println!("skipped: mounting a tmpfs as the data dir needs root");
        return;
    }
    if backend() != Backend::Sqlite {
        println!("skipped: the database is on the data dir's disk only with SQLite");
        return;
    }
    let outer = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&outer.path().join("data"), "24m");
    let data = mount.path.clone();
    let app = spawn_runner(SandboxMode::Bwrap, |c| {
        c.store.data_dir = data.clone();
        c.scheduler.default_concurrency = 1;
        // Shorter than the outage: the build's lease lapses while it cannot be renewed.
        c.scheduler.lease = Duration::from_secs(2);
    })
    .await;
    let f = app.fixture("diskfull").await;
    commit_files(&app, "diskfull", &[("README.md", "full disk\n")], "init");
    // Chatty until told to stop (a file in its checkout), then a line that must survive the outage.
    let line = "x".repeat(200);
    set_commands(
        &app,
        &f.trigger,
        &format!(
            "i=0; while [ ! -e go ]; do i=$((i+1)); for j in 1 2 3 4 5 6 7 8 9 10; do echo \"tick $i $j {line}\"; done; sleep 0.01; done; echo finished-after-the-outage"
        ),
        "",
    )
    .await;
    let first = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    wait_log(&app, &first, &format!("tick 1 1 {line}")).await;

    let filler = fill(&data);
    // Log batches keep the store writing; a write that needs a new page soon finds no room.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let full = loop {
        let (status, body) = app
            .post(
                &app.acct(&format!("/triggers/{}/builds", f.trigger)),
                json!({"branch": "main"}),
            )
            .await;
        if status != StatusCode::OK {
            break (status, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes never failed on a full disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_error(full.0, &full.1, 507, 10507);
    assert_eq!(
        full.1["errors"][0]["message"],
        "Storage is full: free disk space on the Kiln server, then retry"
    );
    // The disk stays full for a while: long enough for the log writer to give lines up. Every write
    // fails the same clear way meanwhile, and reading goes on.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < until {
        let (status, body) = app
            .post(
                &app.acct(&format!("/triggers/{}/builds", f.trigger)),
                json!({"branch": "main"}),
            )
            .await;
        assert_error(status, &body, 507, 10507);
        assert_eq!(get_build(&app, &first).await["status"], "running");
        assert!(!all_logs(&app, &first).await.is_empty());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    std::fs::remove_file(&filler).unwrap();
    // Space is back: the build's next lines are stored after a line saying what is missing. Its
    // lease lapsed meanwhile, yet this node, which runs it, does not take it for lost.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !all_logs(&app, &first)
        .await
        .iter()
        .any(|l| l.contains("could not be stored"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the build's log never resumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        let b = get_build(&app, &first).await;
        assert_eq!(b["status"], "running", "{b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(
        data.join("workspaces").join(&first).join("repo").join("go"),
        "",
    )
    .unwrap();
    let b = wait_stopped(&app, &first).await;
    assert_eq!(b["build_outcome"], "success", "{b}");
    let logs = all_logs(&app, &first).await;
    assert!(
        logs.iter().any(|l| l == "finished-after-the-outage"),
        "{:?}",
        &logs[logs.len().saturating_sub(5)..]
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("could not be stored") && l.contains("storage was full")),
        "{:?}",
        &logs[logs.len().saturating_sub(5)..]
    );

    // No restart: new builds queue and run.
    set_commands(&app, &f.trigger, "echo fresh-build", "").await;
    let next = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let b = wait_stopped(&app, &next).await;
    assert_eq!(b["build_outcome"], "success", "{b}");
    assert!(
        all_logs(&app, &next)
            .await
            .contains(&"fresh-build".to_owned())
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_that_does_not_fit_fails_the_build_saying_the_disk_is_full() {
    if !is_root() {
        println!("skipped: mounting a tmpfs as the data dir needs root");
        return;
    }
    let outer = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&outer.path().join("data"), "48m");
    let data = mount.path.clone();
    let app = spawn_runner(SandboxMode::Bwrap, |c| c.store.data_dir = data.clone()).await;
    let f = app.fixture("bigcheckout").await;
    let repo = commit_files(&app, "bigcheckout", &[("README.md", "big\n")], "init");
    // Incompressible: the checkout writes all 8 MB.
    std::fs::write(repo.join("big.bin"), random_bytes(8 << 20)).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "big file"]);
    set_commands(&app, &f.trigger, "echo built", "").await;
    // The first build fills the mirror; the commit is then fetched, only its checkout needs room.
    let first = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    assert_eq!(wait_stopped(&app, &first).await["build_outcome"], "success");

    let filler = fill_leaving(&data, 3 << 20);
    let failed = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let b = wait_stopped(&app, &failed).await;
    assert_eq!(b["build_outcome"], "fail", "{b}");
    let logs = all_logs(&app, &failed).await;
    assert!(
        logs.iter()
            .any(|l| l.starts_with("Failed: error occurred while cloning the repository")),
        "{logs:?}"
    );
    assert_eq!(
        logs.last().map(String::as_str),
        Some(kiln::runner::DISK_FULL_LINE),
        "{logs:?}"
    );
    assert!(!logs.iter().any(|l| l == "built"), "{logs:?}");

    std::fs::remove_file(&filler).unwrap();
    let next = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let b = wait_stopped(&app, &next).await;
    assert_eq!(b["build_outcome"], "success", "{b}");
    app.stop().await;
}

#[tokio::test]
async fn the_build_cache_keeps_whole_entries_when_the_disk_is_full() {
    use kiln::cache::{BuildCache, CacheDir, CacheKind, CacheLimits, Restored};
    if !is_root() {
        println!("skipped: mounting a tmpfs for the cache needs root");
        return;
    }
    let outer = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&outer.path().join("fs"), "16m");
    let cache = BuildCache::open(mount.path.join("cache"), CacheLimits::default()).unwrap();
    let (trigger, key, kind) = (
        "6f1c2f0e-2f0b-4b8e-9d1a-3c5d7e9f1a2b",
        "ab12",
        CacheKind::Dependencies,
    );
    let source = outer.path().join("npm");
    std::fs::create_dir_all(&source).unwrap();
    let dirs = |path: &Path| {
        vec![CacheDir {
            name: "home/.npm".into(),
            path: path.to_path_buf(),
        }]
    };
    let original = random_bytes(2 << 20);
    std::fs::write(source.join("a.bin"), &original).unwrap();
    assert!(
        cache
            .save(trigger, kind, key, &dirs(&source))
            .await
            .unwrap()
            > 0
    );

    // A save that does not fit fails as a full disk and leaves the stored entry and no temp file.
    let filler = fill(&mount.path);
    std::fs::write(source.join("a.bin"), random_bytes(2 << 20)).unwrap();
    let e = cache
        .save(trigger, kind, key, &dirs(&source))
        .await
        .expect_err("saving on a full disk");
    assert!(kiln::disk::is_full_error(&e), "{e:#}");
    let temps: Vec<_> = std::fs::read_dir(mount.path.join("cache").join(".tmp"))
        .unwrap()
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    let elsewhere = outer.path().join("restored");
    assert_eq!(
        cache
            .restore(trigger, kind, key, &dirs(&elsewhere), None)
            .await
            .unwrap(),
        Restored::Exact
    );
    assert_eq!(std::fs::read(elsewhere.join("a.bin")).unwrap(), original);

    // A restore into the full disk fails as a full disk and keeps the entry.
    let e = cache
        .restore(trigger, kind, key, &dirs(&mount.path.join("target")), None)
        .await
        .expect_err("restoring onto a full disk");
    assert!(kiln::disk::is_full_error(&e), "{e:#}");
    assert_eq!(cache.entries(trigger).await.unwrap().len(), 1);

    // Space back: saving works again.
    std::fs::remove_file(&filler).unwrap();
    let newer = std::fs::read(source.join("a.bin")).unwrap();
    assert!(
        cache
            .save(trigger, kind, key, &dirs(&source))
            .await
            .unwrap()
            > 0
    );
    let again = outer.path().join("again");
    cache
        .restore(trigger, kind, key, &dirs(&again), None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(again.join("a.bin")).unwrap(), newer);
}

/// Calls `POST …/triggers/{trigger}/builds` and returns status, body and `Retry-After`.
async fn post_build(
    app: &TestApp,
    trigger: &str,
) -> (StatusCode, serde_json::Value, Option<String>) {
    let resp = app
        .client
        .post(app.url(&app.acct(&format!("/triggers/{trigger}/builds"))))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"branch": "main"}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, resp.json().await.unwrap(), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_databases_own_conditions_are_envelope_errors_not_500() {
    use sqlx::{Connection, Executor};
    let app = TestApp::spawn().await;
    let f = app.fixture("conditions").await;
    match backend() {
        Backend::Postgres => {
            // The server itself answers with the condition, as on a real full disk or overload.
            let url = app.config.store.database_url.clone().unwrap();
            let mut pg = sqlx::PgConnection::connect(&url).await.unwrap();
            let raise = |code: &str| {
                format!(
                    "CREATE OR REPLACE FUNCTION kiln_test_refuse() RETURNS trigger AS $$ BEGIN \
                     RAISE EXCEPTION 'refused by the test' USING ERRCODE = '{code}'; END $$ LANGUAGE plpgsql"
                )
            };
            pg.execute(raise("disk_full").as_str()).await.unwrap();
            pg.execute(
                "CREATE TRIGGER kiln_test_refuse BEFORE INSERT ON builds \
                 FOR EACH ROW EXECUTE FUNCTION kiln_test_refuse()",
            )
            .await
            .unwrap();
            let (status, body, retry) = post_build(&app, &f.trigger).await;
            assert_error(status, &body, 507, 10507);
            assert_eq!(
                body["errors"][0]["message"],
                "Storage is full: free disk space on the Kiln server, then retry"
            );
            assert!(retry.is_some());
            pg.execute(raise("too_many_connections").as_str())
                .await
                .unwrap();
            let (status, body, retry) = post_build(&app, &f.trigger).await;
            assert_error(status, &body, 503, 10503);
            assert!(retry.is_some());
            pg.execute("DROP TRIGGER kiln_test_refuse ON builds")
                .await
                .unwrap();
            pg.close().await.unwrap();
        }
        Backend::Sqlite => {
            // Another process holds SQLite's write lock past Kiln's busy timeout (10 s).
            let db = app.data_dir().join("kiln.db");
            let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap();
            other.execute("BEGIN IMMEDIATE").await.unwrap();
            let (status, body, retry) = post_build(&app, &f.trigger).await;
            assert_error(status, &body, 503, 10503);
            assert_eq!(
                body["errors"][0]["message"],
                "Storage is unavailable: retry shortly"
            );
            assert!(retry.is_some());
            other.execute("ROLLBACK").await.unwrap();
            other.close().await.unwrap();
        }
    }
    // The condition is over: the same request succeeds, on the same server.
    let (status, body, _) = post_build(&app, &f.trigger).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.stop().await;
}
