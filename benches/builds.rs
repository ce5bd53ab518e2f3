//! `cargo bench --bench builds`: how fast a build starts and how fast its log is ingested, each against
//! a baseline measured in the same run on the same machine.
//!
//! 1. Latency: for 200 manual builds of a small repository, the time from sending the manual-build
//!    request to the moment the first line of the build command's output can be read through the logs
//!    endpoint. Baseline: `git clone --shared` of the same mirror plus `sh -c` of the same command, up to
//!    its first output line.
//! 2. Ingestion: lines per second of a build command that prints 1,000,000 lines, from the start of the
//!    command to the last line stored, against `sh -c '<same command>' > file`.
//! 3. Build cache: a pnpm project of 50 packages (tests/fixtures/projects/bench-pnpm) with
//!    `build_caching_enabled`, built cold (cache purged) then warm, alternately; the time from
//!    `Restoring from dependencies cache` to the build command's start (restore, toolchains, install).
//!    Target: warm at most half of cold. The warm span is also shown by part (restore, toolchains,
//!    install), and the restore against a baseline: GNU `tar --zstd -x` of the same entry into the
//!    workspaces dir right after a build's workspace was removed there, as a warm restore runs
//!    after the previous build's (what the file system makes of that: see README "Performance").
//! 4. Watch-path matching (in process): the worst the limits allow, 200 patterns of 8 wildcards
//!    (100 includes, 100 excludes) whose literals nearly match everywhere (`abb` in `abab…`), against
//!    1 MiB of changed paths (255 of ~4,000 bytes, and 2,999 of ~350 bytes), none matching; and the
//!    issue's push (2,999 paths of ~4,000 bytes), which is over the limits and not matched at all.
//! 5. Queue → claim on another node (PostgreSQL only: `KILN_BENCH_DATABASE_URL`): a second `kiln serve`
//!    with no build slots on the same database takes the manual-build requests; the time from the
//!    build's `created_on` (taken in the queuing transaction) to its `initializing_on` (the claim
//!    on the node that runs it), for `KILN_BENCH_BUILDS` builds. Baseline: the same builds queued on
//!    the node that runs them (woken in process). Target: at most 100 ms.
//!
//! `cargo bench --bench builds -- cache` runs only the sections named (of [`SECTIONS`]); all of them
//! when none is. The smoke run under `cargo test` runs them all, whatever its arguments.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kiln::sandbox::{SandboxMode, bwrap_available};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A bootstrap token strong enough for `kiln serve` to accept (see `check_bootstrap_token`).
const TOKEN: &str = "bench-admin-token-0123456789abcdefXYZ";
const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs this file too, as a quick smoke run.
fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The sections a full run may be limited to, by naming them as arguments.
const SECTIONS: &[&str] = &["watch-paths", "latency", "cross-node", "ingestion", "cache"];

/// The sections named on the command line of a full run (none: all of them). An unknown name stops
/// the run with the list of sections.
fn named_sections() -> Vec<String> {
    if !full_run() {
        return Vec::new();
    }
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for name in &named {
        assert!(
            SECTIONS.contains(&name.as_str()),
            "unknown section {name:?}: the sections are {SECTIONS:?}"
        );
    }
    named
}

/// Whether this run measures `section` (one of [`SECTIONS`]).
fn runs(section: &str) -> bool {
    let named = named_sections();
    named.is_empty() || named.iter().any(|n| n == section)
}

/// Builds measured: 200 (3 in a smoke run; `KILN_BENCH_BUILDS` overrides).
fn builds() -> usize {
    std::env::var("KILN_BENCH_BUILDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if full_run() { 200 } else { 3 })
}

/// Lines printed by the ingestion build: 1,000,000 (20,000 in a smoke run).
fn ingest_lines() -> u64 {
    if full_run() { 1_000_000 } else { 20_000 }
}
const WARMUP: usize = 5;
/// Interval between two reads of the logs endpoint while waiting for the first line, in ms: the
/// resolution of the measurement (kiln serve runs in its own process, a read costs it ~0.2 ms).
const POLL_MS: u64 = 1;
const FIRST_LINE: &str = "kiln-bench-first-line";

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .client
            .request(
                method.clone(),
                format!("{}/client/v4/accounts/{ACCOUNT}/builds{path}", self.base),
            )
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        assert_eq!(v["success"], true, "{method} {path}: {v}");
        v["result"].clone()
    }

    async fn queue(&self, trigger: &str) -> String {
        let r = self
            .call(
                reqwest::Method::POST,
                &format!("/triggers/{trigger}/builds"),
                Some(json!({"branch": "main"})),
            )
            .await;
        r["build_uuid"].as_str().expect("build_uuid").to_owned()
    }

    async fn wait_stopped(&self, id: &str) -> Value {
        loop {
            let b = self
                .call(reqwest::Method::GET, &format!("/builds/{id}"), None)
                .await;
            if b["status"] == "stopped" {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Polls the first log page until a line equals `needle`.
    async fn wait_line(&self, id: &str, needle: &str) {
        loop {
            let r = self
                .call(reqwest::Method::GET, &format!("/builds/{id}/logs"), None)
                .await;
            if r["lines"]
                .as_array()
                .expect("lines")
                .iter()
                .any(|l| l[1] == needle)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }

    /// Every log line's timestamp (ms) and text.
    async fn all_logs(&self, id: &str) -> Vec<(f64, String)> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let q = if cursor.is_empty() {
                String::new()
            } else {
                format!("?cursor={cursor}")
            };
            let r = self
                .call(reqwest::Method::GET, &format!("/builds/{id}/logs{q}"), None)
                .await;
            for l in r["lines"].as_array().expect("lines") {
                out.push((
                    l[0].as_f64().expect("ts") * 1000.0,
                    l[1].as_str().expect("msg").to_owned(),
                ));
            }
            cursor = r["cursor"].as_str().expect("cursor").to_owned();
            if r["truncated"] != true {
                return out;
            }
        }
    }
}

fn git(dir: &Path, args: &[&str]) {
    let ok = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .stdout(Stdio::null())
        .status()
        .expect("git")
        .success();
    assert!(ok, "git {args:?}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Baseline: `git clone --shared` of the mirror, then `sh -c <command>` until its first output line.
async fn baseline_once(mirror: &Path, dest: &Path, command: &str) -> Duration {
    let start = Instant::now();
    let ok = tokio::process::Command::new("git")
        .args(["clone", "-q", "--shared"])
        .arg(mirror)
        .arg(dest)
        .status()
        .await
        .expect("git clone")
        .success();
    assert!(ok, "git clone --shared");
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", command])
        .current_dir(dest)
        .stdout(Stdio::piped())
        .spawn()
        .expect("sh");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next_line().await.expect("read").expect("a line");
    let elapsed = start.elapsed();
    assert_eq!(first, FIRST_LINE);
    child.wait().await.expect("wait");
    elapsed
}

/// Median time of `paths_selected` over `rounds` runs (section 4).
fn time_watch_paths(
    includes: &[String],
    excludes: &[String],
    paths: &[String],
    rounds: usize,
    expected: bool,
) -> Duration {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            let selected = kiln::domain::paths_selected(includes, excludes, paths, 1);
            let took = start.elapsed();
            assert_eq!(selected, expected);
            took
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn measure_watch_paths() {
    let patterns = |tag: &str| -> Vec<String> {
        (0..100)
            .map(|i| format!("*{}{tag}{i:02}*", "abb*".repeat(6)))
            .collect()
    };
    let (includes, excludes) = (patterns("x"), patterns("y"));
    let paths = |count: usize, bytes: usize| -> Vec<String> {
        (0..count)
            .map(|i| format!("src/{}/{i:04}", "ab".repeat(bytes / 2)))
            .collect()
    };
    let rounds = if full_run() { 5 } else { 1 };
    println!("watch-path matching, 100 + 100 patterns of 8 wildcards (median of {rounds}):");
    for (count, bytes, what, builds) in [
        (255, 3990, "255 paths of ~4,000 bytes (1 MiB)", false),
        (2999, 340, "2,999 paths of ~350 bytes (1 MiB)", false),
        (
            2999,
            3990,
            "the issue's 2,999 paths of ~4,000 bytes (over the limit: builds)",
            true,
        ),
    ] {
        let list = paths(count, bytes);
        let took = time_watch_paths(&includes, &excludes, &list, rounds, builds);
        println!("  {:9.1} ms  {what}", ms(took));
    }
}

#[tokio::main]
async fn main() {
    named_sections();
    if runs("watch-paths") {
        measure_watch_paths();
    }
    // The other sections build through a server.
    if !SECTIONS.iter().any(|s| *s != "watch-paths" && runs(s)) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Run as root, `kiln serve` checks that its build user reaches the data dir below this directory.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .expect("chmod tempdir");
    let remotes = dir.path().join("remotes");
    let repo = remotes.join("bench-org").join("bench-repo");
    std::fs::create_dir_all(repo.join("src")).expect("mkdir");
    for i in 0..10 {
        std::fs::write(
            repo.join(format!("src/f{i}.js")),
            format!("export const x{i} = {i};\n"),
        )
        .expect("write");
    }
    std::fs::write(repo.join("README.md"), "bench\n").expect("write");
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "small repository"]);

    let sandbox = if bwrap_available() {
        SandboxMode::Bwrap
    } else {
        SandboxMode::None
    };
    let database_url = std::env::var("KILN_BENCH_DATABASE_URL").ok();
    // `kiln serve` in its own process, started the way a user starts it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    serve
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--runners",
            "2",
            "--default-concurrency",
            "2",
            "--log-cap-mib",
            "1024",
        ])
        .args([
            "--build-minutes",
            "1000000000",
            "--sandbox",
            &sandbox.to_string(),
        ])
        .args([
            "--git-url-template",
            &format!("file://{}/{{owner}}/{{repo}}", remotes.display()),
        ])
        // Toolchains are shared with the test suite's store: downloaded once, not per run.
        .arg("--toolchain-dir")
        .arg(
            std::env::var_os("KILN_TEST_TOOLCHAIN_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("kiln-test-toolchains")),
        )
        .env("KILN_BOOTSTRAP_TOKEN", TOKEN)
        .env("KILN_LOG", "warn")
        .kill_on_drop(true);
    if let Some(url) = &database_url {
        serve.args(["--database-url", url]);
    }
    let mut server = serve.spawn().expect("start kiln serve");
    let base = format!("http://127.0.0.1:{port}");
    let ready = Instant::now();
    while reqwest::get(format!("{base}/client/v4/openapi.json"))
        .await
        .is_err()
    {
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "kiln serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let api = Api {
        client: reqwest::Client::new(),
        base,
    };
    let conn = api
        .call(reqwest::Method::PUT, "/repos/connections", Some(json!({"provider_type": "github",
            "provider_account_id": "1", "provider_account_name": "bench-org", "repo_id": "1", "repo_name": "bench-repo"})))
        .await;
    let token = api
        .call(
            reqwest::Method::POST,
            "/tokens",
            Some(json!({"build_token_name": "bench",
            "build_token_secret": "bench-secret-value", "cloudflare_token_id": "cf"})),
        )
        .await;
    let command = format!("echo {FIRST_LINE}");
    let trigger = api
        .call(reqwest::Method::POST, "/triggers", Some(json!({"external_script_id": "bench", "trigger_name": "bench",
            "repo_connection_uuid": conn["repo_connection_uuid"], "build_token_uuid": token["build_token_uuid"],
            "build_command": command, "deploy_command": ""})))
        .await;
    let trigger = trigger["trigger_uuid"]
        .as_str()
        .expect("trigger")
        .to_owned();

    if !full_run() {
        println!("(smoke run under cargo test: `cargo bench --bench builds` measures for real)");
    }
    println!(
        "kiln bench: sandbox {sandbox}, store {}",
        if database_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    );
    if runs("latency") {
        measure_latency(&api, &trigger, dir.path(), &command).await;
    }
    if runs("cross-node") {
        match &database_url {
            Some(url) if url.starts_with("postgres") => {
                measure_cross_node(&api, &trigger, dir.path(), url, &remotes, sandbox).await;
            }
            _ => println!(
                "queue -> claim on another node: needs PostgreSQL (KILN_BENCH_DATABASE_URL); processes \
                 on one SQLite file find each other's builds at their poll interval"
            ),
        }
    }
    if runs("ingestion") {
        measure_ingestion(&api, &trigger, dir.path()).await;
    }
    if runs("cache") {
        measure_cache(&api, dir.path(), &remotes, &token).await;
    }
    server.start_kill().expect("stop kiln serve");
    server.wait().await.expect("wait for kiln serve");
}

/// Section 1: request -> first line of output, against `git clone --shared` + `sh -c`.
async fn measure_latency(api: &Api, trigger: &str, dir: &Path, command: &str) {
    println!("{} builds of a 12-file repository:", builds());
    for _ in 0..WARMUP {
        let id = api.queue(trigger).await;
        assert_eq!(api.wait_stopped(&id).await["build_outcome"], "success");
    }
    let mirror: PathBuf = dir.join("data/git/mirrors/bench-org/bench-repo.git");
    assert!(mirror.exists(), "mirror at {}", mirror.display());
    for i in 0..WARMUP {
        let dest = dir.join(format!("baseline/warmup-{i}"));
        baseline_once(&mirror, &dest, command).await;
        std::fs::remove_dir_all(&dest).ok();
    }
    // Kiln and the baseline alternate, so that both see the same state of the machine.
    let mut kiln_lat = Vec::with_capacity(builds());
    let mut base_lat = Vec::with_capacity(builds());
    // Per log line: offsets (ms) from the request, to show where the time goes.
    let mut stages: Vec<(String, Vec<f64>)> = Vec::new();
    for i in 0..builds() {
        let requested_ms = chrono::Utc::now().timestamp_micros() as f64 / 1000.0;
        let start = Instant::now();
        let id = api.queue(trigger).await;
        api.wait_line(&id, FIRST_LINE).await;
        kiln_lat.push(start.elapsed());
        api.wait_stopped(&id).await;
        for (i, (ts, msg)) in api.all_logs(&id).await.into_iter().enumerate() {
            let name: String = msg.chars().take(48).collect();
            match stages.get_mut(i) {
                Some((_, v)) => v.push(ts - requested_ms),
                None => stages.push((name, vec![ts - requested_ms])),
            }
        }
        let dest = dir.join(format!("baseline/{i}"));
        base_lat.push(baseline_once(&mirror, &dest, command).await);
        std::fs::remove_dir_all(&dest).ok();
    }
    kiln_lat.sort();
    base_lat.sort();
    let (k50, k99) = (percentile(&kiln_lat, 0.5), percentile(&kiln_lat, 0.99));
    let (b50, b99) = (percentile(&base_lat, 0.5), percentile(&base_lat, 0.99));
    println!("request -> first line of output (visible through the logs API):");
    println!(
        "  kiln      p50 {:7.1} ms   p99 {:7.1} ms",
        ms(k50),
        ms(k99)
    );
    println!(
        "  baseline  p50 {:7.1} ms   p99 {:7.1} ms   (git clone --shared + sh -c)",
        ms(b50),
        ms(b99)
    );
    println!(
        "  ratio     p50 {:7.2}x     p99 {:7.2}x",
        ms(k50) / ms(b50),
        ms(k99) / ms(b99)
    );
    println!(
        "where the time goes (median, from the request, of the time each log line was read or written):"
    );
    for (name, mut offsets) in stages {
        offsets.sort_by(f64::total_cmp);
        println!("  {:7.1} ms  {name}", offsets[offsets.len() / 2]);
    }
}

/// Section 2: lines per second of a build printing [`ingest_lines`] lines, against `sh -c … > file`.
async fn measure_ingestion(api: &Api, trigger: &str, dir: &Path) {
    let ingest = ingest_lines();
    let printer = format!(
        "awk 'BEGIN {{ for (i = 0; i < {ingest}; i++) print \"log line \" i \" of the ingestion benchmark, some text\" }}'"
    );
    api.call(
        reqwest::Method::PATCH,
        &format!("/triggers/{trigger}"),
        Some(json!({"build_command": printer})),
    )
    .await;
    let id = api.queue(trigger).await;
    let b = api.wait_stopped(&id).await;
    assert_eq!(b["build_outcome"], "success");
    let logs = api.all_logs(&id).await;
    let exec = logs
        .iter()
        .position(|(_, m)| m.starts_with("Executing user build command"))
        .expect("exec line");
    let done = logs
        .iter()
        .position(|(_, m)| m == "Success: Build command completed")
        .expect("done line");
    let stored = logs[exec + 1..done].len() as u64;
    assert_eq!(stored, ingest, "every line stored");
    // From the command's start to the build's stop, which comes only after every line is stored.
    let stopped_ms =
        chrono::DateTime::parse_from_rfc3339(b["stopped_on"].as_str().expect("stopped_on"))
            .expect("rfc3339")
            .timestamp_millis() as f64;
    let span_ms = (stopped_ms - logs[exec].0).max(1.0);
    let kiln_rate = ingest as f64 / (span_ms / 1000.0);
    let out = dir.join("cat-baseline.txt");
    let start = Instant::now();
    let ok = std::process::Command::new("sh")
        .args(["-c", &format!("{printer} > '{}'", out.display())])
        .status()
        .expect("sh")
        .success();
    assert!(ok);
    let base_rate = ingest as f64 / start.elapsed().as_secs_f64();
    println!("log ingestion of {ingest} lines:");
    println!(
        "  kiln      {:>12.0} lines/s (read, masked, batched into the store)",
        kiln_rate
    );
    println!(
        "  baseline  {:>12.0} lines/s (the same command > file)",
        base_rate
    );
    println!("  ratio     {:>12.2}x", kiln_rate / base_rate);
}

/// Milliseconds from a build's `created_on` to its `initializing_on`.
fn queued_to_claimed(b: &Value) -> f64 {
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(b[field].as_str().expect(field))
            .expect("rfc3339")
            .timestamp_millis() as f64
    };
    at("initializing_on") - at("created_on")
}

/// Section 5: queue on a node without build slots, claim on the node that runs builds.
async fn measure_cross_node(
    api: &Api,
    trigger: &str,
    dir: &Path,
    database_url: &str,
    remotes: &Path,
    sandbox: SandboxMode,
) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // The same database and secret key as the node that runs the builds, and no build slots.
    let mut front = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.join("data-front"))
        .args(["--runners", "0", "--database-url", database_url])
        .arg("--secret-key-file")
        .arg(dir.join("data").join("secret.key"))
        .args(["--sandbox", &sandbox.to_string()])
        .args([
            "--git-url-template",
            &format!("file://{}/{{owner}}/{{repo}}", remotes.display()),
        ])
        .env("KILN_BOOTSTRAP_TOKEN", TOKEN)
        .env("KILN_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start the second kiln serve");
    let front_api = Api {
        client: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
    };
    let ready = Instant::now();
    while reqwest::get(format!("{}/client/v4/openapi.json", front_api.base))
        .await
        .is_err()
    {
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "the second kiln serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Alternating, so that both see the same state of the machine.
    let (mut other, mut same) = (Vec::new(), Vec::new());
    for _ in 0..builds() {
        for (queue_on, sample) in [(&front_api, &mut other), (api, &mut same)] {
            let id = queue_on.queue(trigger).await;
            let b = api.wait_stopped(&id).await;
            assert_eq!(b["build_outcome"], "success", "{b}");
            sample.push(queued_to_claimed(&b));
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    };
    let (o50, o99) = (pct(&mut other, 0.5), pct(&mut other, 0.99));
    let (s50, s99) = (pct(&mut same, 0.5), pct(&mut same, 0.99));
    println!(
        "queue -> claim (created_on to initializing_on), {} builds, PostgreSQL:",
        builds()
    );
    println!("  other node  p50 {o50:7.1} ms   p99 {o99:7.1} ms   (LISTEN/NOTIFY wake-up)");
    println!("  same node   p50 {s50:7.1} ms   p99 {s99:7.1} ms   (baseline: in-process wake-up)");
    println!(
        "  ratio       p50 {:7.2}x     p99 {:7.2}x",
        o50 / s50.max(1.0),
        o99 / s99.max(1.0)
    );
    println!(
        "  target      other node at most 100 ms: p50 {}, p99 {}",
        if o50 <= 100.0 { "met" } else { "MISSED" },
        if o99 <= 100.0 { "met" } else { "MISSED" }
    );
    front.start_kill().expect("stop the second kiln serve");
    front.wait().await.expect("wait for the second kiln serve");
}

/// Rounds of cold + warm builds of the cache benchmark.
fn cache_rounds() -> usize {
    if full_run() { 5 } else { 1 }
}

/// Where the time of one cache benchmark build goes, in ms, from its log lines.
#[derive(Debug, Clone, Copy)]
struct CacheSpans {
    /// `Restoring from dependencies cache` to the line that ends the restore.
    restore: f64,
    /// The end of the restore to `Installing project dependencies` (toolchains).
    toolchains: f64,
    /// `Installing project dependencies` to `Executing user build command`.
    install: f64,
    /// `Restoring from dependencies cache` to `Executing user build command`.
    whole: f64,
}

impl CacheSpans {
    fn of(logs: &[(f64, String)]) -> CacheSpans {
        let find = |needle: &str| {
            logs.iter()
                .position(|(_, l)| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no line {needle:?}"))
        };
        let restoring = find("Restoring from dependencies cache");
        let install = logs[find("Installing project dependencies")].0;
        let end = logs[find("Executing user build command")].0;
        // The next line says how the restore ended (restored, none yet, or failed).
        let restored = logs[restoring + 1].0;
        let restoring = logs[restoring].0;
        CacheSpans {
            restore: restored - restoring,
            toolchains: install - restored,
            install: end - install,
            whole: end - restoring,
        }
    }
}

/// The median of `xs`.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Baseline of the restore: GNU tar extracts `entry` (the trigger's dependencies entry) into a new
/// dir in `workspaces`, as root like Kiln (owners and modes kept). Returns the time and how many
/// paths it made, `None` when tar cannot (no zstd). The dir is kept until the bench ends: removing
/// it would free inodes right before the next build, which makes its file creation slower on some
/// file systems (README "Performance").
fn tar_baseline(entry: &Path, workspaces: &Path, round: usize) -> Option<(f64, usize)> {
    let dest = workspaces.join(format!("bench-tar-baseline-{round}"));
    std::fs::create_dir(&dest).expect("baseline dir");
    let start = Instant::now();
    let ok = std::process::Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(entry)
        .arg("-C")
        .arg(&dest)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let took = ms(start.elapsed());
    ok.then(|| (took, count_paths(&dest)))
}

/// Files, dirs and links below `dir` (links not followed).
fn count_paths(dir: &Path) -> usize {
    let mut count = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("entry");
            count += 1;
            if entry.file_type().expect("file type").is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    count
}

/// The trigger's dependencies entry (the one the warm build restored and saved again).
fn dependencies_entry(data: &Path, trigger: &str) -> PathBuf {
    let dir = data.join("cache").join(trigger);
    std::fs::read_dir(&dir)
        .expect("the trigger's cache dir")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("deps-") && n.ends_with(".tar.zst"))
        })
        .expect("a dependencies entry")
}

/// Section 3: the dependency install cold against warm (restored from the build cache).
async fn measure_cache(api: &Api, dir: &Path, remotes: &Path, token: &Value) {
    let repo = remotes.join("bench-org").join("bench-pnpm");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/projects/bench-pnpm");
    std::fs::create_dir_all(&repo).expect("mkdir");
    for entry in std::fs::read_dir(&fixture).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), repo.join(entry.file_name())).expect("copy");
    }
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "pnpm project"]);
    let conn2 = api
        .call(reqwest::Method::PUT, "/repos/connections", Some(json!({"provider_type": "github",
            "provider_account_id": "1", "provider_account_name": "bench-org", "repo_id": "2", "repo_name": "bench-pnpm"})))
        .await;
    let trigger = api
        .call(reqwest::Method::POST, "/triggers", Some(json!({"external_script_id": "bench-cache", "trigger_name": "cache",
            "repo_connection_uuid": conn2["repo_connection_uuid"], "build_token_uuid": token["build_token_uuid"],
            "build_command": "pnpm run build", "deploy_command": "", "build_caching_enabled": true})))
        .await;
    let trigger = trigger["trigger_uuid"]
        .as_str()
        .expect("trigger")
        .to_owned();
    let data = dir.join("data");
    let (mut cold, mut warm, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..cache_rounds() {
        api.call(
            reqwest::Method::POST,
            &format!("/triggers/{trigger}/purge_build_cache"),
            None,
        )
        .await;
        for sample in [&mut cold, &mut warm] {
            let id = api.queue(&trigger).await;
            let b = api.wait_stopped(&id).await;
            let logs = api.all_logs(&id).await;
            assert_eq!(b["build_outcome"], "success", "{logs:?}");
            sample.push(CacheSpans::of(&logs));
        }
        // The warm build's workspace was removed before it stopped: the same state the warm
        // restore met after the cold build.
        let entry = dependencies_entry(&data, &trigger);
        baseline.extend(tar_baseline(&entry, &data.join("workspaces"), round));
    }
    println!(
        "dependencies of a 50-package pnpm project, cold (cache purged) and warm (pnpm store restored), median:"
    );
    let install: fn(&CacheSpans) -> f64 = |s| s.install;
    let whole: fn(&CacheSpans) -> f64 = |s| s.whole;
    for (what, pick) in [
        ("install step", install),
        ("restore + toolchains + install", whole),
    ] {
        let c = median(cold.iter().map(pick).collect());
        let w = median(warm.iter().map(pick).collect());
        println!(
            "  {what:<32} cold {c:>7.0} ms  warm {w:>7.0} ms  ratio {:.2}x (target: at most 0.50)",
            w / c
        );
    }
    let part = |pick: fn(&CacheSpans) -> f64| median(warm.iter().map(pick).collect());
    println!(
        "  warm, by part                    restore {:.0} ms, toolchains {:.0} ms, install {:.0} ms",
        part(|s| s.restore),
        part(|s| s.toolchains),
        part(|s| s.install),
    );
    if baseline.is_empty() {
        println!("  restore baseline                 n/a (needs GNU tar with zstd)");
    } else {
        let paths = baseline[0].1;
        println!(
            "  restore baseline                 {:.0} ms: tar --zstd -x of the same entry ({paths} paths) \
             into the workspaces dir, right after a build's workspace was removed there",
            median(baseline.iter().map(|b| b.0).collect()),
        );
    }
}
