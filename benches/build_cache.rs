//! `cargo bench --bench build_cache`: how long the build cache takes to save and to restore a
//! package-manager cache, against `cp -a` of the same tree measured in the same run.
//!
//! The tree: 100 MB in 10,000 files of 2-18 kB in 700 dirs, half incompressible (like npm's
//! tarballs), half JSON lines (like its index). `cargo test --all-targets` runs a 1 MB smoke run.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln::cache::{BuildCache, CacheDir, CacheKind, CacheLimits, lockfile_key};

/// `cargo bench` passes `--bench`.
fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn json_lines(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 200);
    let mut i = seed;
    while out.len() < len {
        out.extend(
            format!(
                "{{\"key\":\"make-fetch-happen:request-cache:https://registry.example/pkg-{i}/-/pkg-{i}-1.{}.tgz\",\"time\":{}}}\n",
                i % 17,
                1_700_000_000 + i
            )
            .into_bytes(),
        );
        i += 13;
    }
    out.truncate(len);
    out
}

/// Writes the tree; returns its size in bytes.
fn make_tree(root: &Path, files: u64) -> u64 {
    let mut total = 0;
    for i in 0..files {
        let dir = root.join(format!("d{:03}/e{}", i % 100, i % 7));
        fs::create_dir_all(&dir).expect("creating the tree");
        let len = 2_000 + ((i * 7919) % 16_000) as usize;
        let data = if i % 2 == 0 {
            noise(len, i)
        } else {
            json_lines(len, i)
        };
        total += data.len() as u64;
        fs::write(dir.join(format!("f{i}")), data).expect("writing the tree");
    }
    total
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let files = if full_run() { 10_000 } else { 100 };
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("home/.npm");
    let bytes = make_tree(&src, files);
    let cache = BuildCache::open(tmp.path().join("cache"), CacheLimits::default())?;
    let trigger = "0b5e6e2a-3f0c-4c1e-9d4e-2f8a1b7c9d01";
    let key = lockfile_key(&[("package-lock.json", b"{}")]);
    println!("tree: {} MB in {files} files", bytes / 1_000_000);

    for round in 0..3 {
        let t = Instant::now();
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(tmp.path().join(format!("cp{round}")))
            .status()?;
        anyhow::ensure!(status.success(), "cp -a failed");
        let cp = t.elapsed();

        let dirs = [CacheDir {
            name: "home/.npm".into(),
            path: src.clone(),
        }];
        let t = Instant::now();
        let size = cache
            .save(trigger, CacheKind::Dependencies, &key, &dirs)
            .await?;
        let save = t.elapsed();

        let dirs = [CacheDir {
            name: "home/.npm".into(),
            path: tmp.path().join(format!("restored{round}")),
        }];
        let t = Instant::now();
        cache
            .restore(trigger, CacheKind::Dependencies, &key, &dirs, None)
            .await?;
        let restore = t.elapsed();

        let ratio = |d: Duration| d.as_secs_f64() / cp.as_secs_f64().max(1e-9);
        println!(
            "round {round}: cp -a {} ms; save {} ms ({:.2}x cp, entry {} MB); restore {} ms ({:.2}x cp)",
            ms(cp),
            ms(save),
            ratio(save),
            size / 1_000_000,
            ms(restore),
            ratio(restore),
        );
    }
    Ok(())
}
