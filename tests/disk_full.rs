//! A full data-dir disk: the server's data dir is a small tmpfs that a filler file fills while a build
//! is writing logs. Requests that must write get the envelope error (507, "storage is full"), reads go
//! on, and once the filler is deleted Kiln recovers by itself: the running build ends with its real
//! outcome, saying how many log lines could not be stored, and new builds queue and run — no restart.
//!
//! Needs root (for `mount`); skipped with a printed reason otherwise.

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
    let outer = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&outer.path().join("data"), "24m");
    let data = mount.path.clone();
    let app = spawn_runner(SandboxMode::Bwrap, |c| {
        c.store.data_dir = data.clone();
        c.scheduler.default_concurrency = 1;
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
