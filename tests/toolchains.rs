//! The toolchain store: real toolchains from the npm registry (downloaded once into a shared store
//! dir and run as real processes), and a local fake registry for what the real one cannot show:
//! integrity and pinned-hash failures, one download for many callers, unsafe archives, limits,
//! offline resolution and a `kill -9` in the middle of an install.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use kiln::toolchain::{DEFAULT_REGISTRY, Tool, ToolchainError, ToolchainStore, bundled_npm_spec};
use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------------
// Helpers

/// The store shared by the real-registry tests (and by runs): `KILN_TEST_TOOLCHAIN_DIR`, else a
/// fixed dir under the temp dir, so each toolchain is downloaded once.
fn shared_store() -> ToolchainStore {
    ToolchainStore::open(shared_dir(), DEFAULT_REGISTRY).expect("open the shared toolchain store")
}

fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("KILN_TEST_TOOLCHAIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("kiln-test-toolchains"));
    std::fs::create_dir_all(&dir).expect("create the shared toolchain dir");
    dir
}

/// Runs `cmd args` with PATH set to `bin_dirs` + `/usr/bin:/bin` only and a scratch HOME and cwd;
/// returns trimmed stdout, panicking with stderr on failure.
fn run(bin_dirs: &[&Path], cmd: &str, args: &[&str]) -> String {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut path: Vec<String> = bin_dirs.iter().map(|d| d.display().to_string()).collect();
    path.push("/usr/bin:/bin".to_owned());
    let out = Command::new(cmd)
        .args(args)
        .env_clear()
        .env("PATH", path.join(":"))
        .env("HOME", scratch.path())
        .current_dir(scratch.path())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => vec![],
    }
}

/// Polls `cond` until it holds, failing after `secs` seconds.
async fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One file of a synthetic npm tarball: (path, contents, mode). Paths are written as given, so a
/// test can put `..` or an absolute link target in (the tar crate's helpers refuse those).
enum Entry<'a> {
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

fn tarball(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for entry in entries {
        let mut header = tar::Header::new_old();
        let (path, data, link): (&str, &[u8], Option<&str>) = match entry {
            Entry::File(path, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                (path, data, None)
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                (path, b"", Some(target))
            }
            Entry::HardLink(path, target) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o644);
                (path, b"", Some(target))
            }
        };
        header.set_size(data.len() as u64);
        let old = header.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, data).expect("append");
    }
    builder
        .into_inner()
        .expect("finish tar")
        .finish()
        .expect("finish gzip")
}

/// A fake `pnpm` package whose commands print `version`.
fn fake_pnpm(version: &str, extra: &[Entry]) -> Vec<u8> {
    let manifest = format!(
        r#"{{"name":"pnpm","version":"{version}","bin":{{"pnpm":"bin/pnpm.cjs","pnpx":"bin/pnpx.cjs"}}}}"#
    );
    let script = format!("console.log('{version}')\n");
    let mut all = vec![
        Entry::File("package/package.json", manifest.as_bytes(), 0o644),
        Entry::File("package/bin/pnpm.cjs", script.as_bytes(), 0o755),
        Entry::File("package/bin/pnpx.cjs", script.as_bytes(), 0o644),
        Entry::File("package/README.md", b"fake\n", 0o600),
    ];
    all.extend(extra.iter().map(|e| match e {
        Entry::File(p, d, m) => Entry::File(p, d, *m),
        Entry::Symlink(p, t) => Entry::Symlink(p, t),
        Entry::HardLink(p, t) => Entry::HardLink(p, t),
    }));
    tarball(&all)
}

fn sri(bytes: &[u8]) -> String {
    format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(bytes))
    )
}

// ---------------------------------------------------------------------------------------------
// The fake registry: HTTP/1.1 on a random port, one response per connection.

struct FakeVersion {
    tarball: Vec<u8>,
    integrity: String,
}

#[derive(Default)]
struct FakeState {
    packages: HashMap<String, BTreeMap<String, FakeVersion>>,
    /// Requests per path.
    requests: HashMap<String, usize>,
    /// Tarball responses send half their body, then hang.
    stall: bool,
}

#[derive(Clone)]
struct FakeRegistry {
    url: String,
    state: Arc<Mutex<FakeState>>,
}

impl FakeRegistry {
    async fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(FakeState::default()));
        let registry = FakeRegistry { url, state };
        let server = registry.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move { server.serve(socket).await });
            }
        });
        registry
    }

    /// Publishes `version` of `package` with `integrity` (the right one when `None`).
    fn publish(&self, package: &str, version: &str, tarball: Vec<u8>, integrity: Option<String>) {
        let integrity = integrity.unwrap_or_else(|| sri(&tarball));
        self.state
            .lock()
            .unwrap()
            .packages
            .entry(package.to_owned())
            .or_default()
            .insert(version.to_owned(), FakeVersion { tarball, integrity });
    }

    fn set_stall(&self, stall: bool) {
        self.state.lock().unwrap().stall = stall;
    }

    fn tarball_requests(&self) -> usize {
        let state = self.state.lock().unwrap();
        state
            .requests
            .iter()
            .filter(|(path, _)| path.starts_with("/tarballs/"))
            .map(|(_, n)| n)
            .sum()
    }

    async fn serve(&self, mut socket: tokio::net::TcpStream) {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let (status, body, stall) = {
            let mut state = self.state.lock().unwrap();
            *state.requests.entry(path.clone()).or_default() += 1;
            self.respond(&state, &path)
        };
        let header = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if socket.write_all(header.as_bytes()).await.is_err() {
            return;
        }
        if stall {
            let _ = socket.write_all(&body[..body.len() / 2]).await;
            let _ = socket.flush().await;
            // A stalled registry: the connection stays open and silent until the test ends.
            std::future::pending::<()>().await;
        }
        let _ = socket.write_all(&body).await;
        let _ = socket.shutdown().await;
    }

    fn respond(&self, state: &FakeState, path: &str) -> (&'static str, Vec<u8>, bool) {
        if let Some(rest) = path.strip_prefix("/tarballs/") {
            let found = rest.rsplit_once('/').and_then(|(package, file)| {
                let package = package.replace("%2f", "/");
                let version = file.strip_suffix(".tgz")?;
                state.packages.get(&package)?.get(version)
            });
            return match found {
                Some(v) => ("200 OK", v.tarball.clone(), state.stall),
                None => ("404 Not Found", b"{}".to_vec(), false),
            };
        }
        let name = path.trim_start_matches('/').replace("%2f", "/");
        let Some(versions) = state.packages.get(&name) else {
            return ("404 Not Found", br#"{"error":"Not found"}"#.to_vec(), false);
        };
        let mut doc = serde_json::json!({ "name": name, "dist-tags": {}, "versions": {} });
        for (version, v) in versions {
            doc["versions"][version] = serde_json::json!({
                "name": name,
                "version": version,
                "dist": {
                    "tarball": format!("{}tarballs/{}/{version}.tgz", self.url, name.replace('/', "%2f")),
                    "integrity": v.integrity,
                }
            });
            doc["dist-tags"]["latest"] = serde_json::json!(version);
        }
        ("200 OK", serde_json::to_vec(&doc).unwrap(), false)
    }
}

/// A store in a fresh temp dir filled from `registry`.
fn temp_store(registry: &FakeRegistry) -> (tempfile::TempDir, ToolchainStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ToolchainStore::open(dir.path().join("toolchains"), &registry.url).expect("open");
    (dir, store)
}

fn assert_nothing_installed(store: &ToolchainStore) {
    assert_eq!(store.list().expect("list"), vec![]);
    assert_eq!(entries(&store.root().join(".tmp")), Vec::<String>::new());
    assert!(!store.root().join("pnpm").join("1.0.0").exists());
}

// ---------------------------------------------------------------------------------------------
// The real registry

#[tokio::test]
async fn resolves_node_versions_from_the_registry() {
    let store = shared_store();
    let newest_22 = store.resolve(Tool::Node, "22").await.expect("resolve 22");
    let v = semver::Version::parse(&newest_22).expect("a version");
    assert_eq!(v.major, 22);
    assert!(v.minor >= 16, "{newest_22}");
    assert!(v.pre.is_empty());
    assert_eq!(
        store.resolve(Tool::Node, ">=22 <23").await.unwrap(),
        newest_22
    );
    assert_eq!(store.resolve(Tool::Node, "^22").await.unwrap(), newest_22);

    let line = store
        .resolve(Tool::Node, "22.16")
        .await
        .expect("resolve 22.16");
    assert!(line.starts_with("22.16."), "{line}");
    assert_eq!(
        store.resolve(Tool::Node, "v22.16.0").await.unwrap(),
        "22.16.0"
    );

    match store.resolve(Tool::Node, "99").await {
        Err(ToolchainError::UnknownVersion {
            tool,
            spec,
            nearest,
        }) => {
            assert_eq!((tool, spec.as_str()), (Tool::Node, "99"));
            assert!((1..=3).contains(&nearest.len()), "{nearest:?}");
            for n in &nearest {
                let n = semver::Version::parse(n).expect("nearest are versions");
                assert!(n.major >= 24 && n.pre.is_empty(), "{n}");
            }
        }
        other => panic!("expected UnknownVersion, got {other:?}"),
    }
    let e = store.resolve(Tool::Node, "99").await.unwrap_err();
    assert!(e.to_string().contains("nearest: "), "{e}");

    // yarn spans two packages: classic (<2) and Berry (>=2).
    assert_eq!(store.resolve(Tool::Yarn, "1").await.unwrap(), "1.22.22");
    let berry = store.resolve(Tool::Yarn, "4").await.unwrap();
    assert!(berry.starts_with("4."), "{berry}");
}

#[tokio::test]
async fn node_and_its_npm_run() {
    let store = shared_store();
    let version = store.resolve(Tool::Node, "22").await.expect("resolve");
    let node = store
        .ensure(Tool::Node, &version, None)
        .await
        .expect("node");
    assert_eq!(
        (node.tool, node.version.as_str()),
        (Tool::Node, version.as_str())
    );
    let npm_version = store
        .resolve(Tool::Npm, bundled_npm_spec(&version))
        .await
        .expect("resolve npm");
    assert!(npm_version.starts_with("10."), "{npm_version}");
    let npm = store
        .ensure(Tool::Npm, &npm_version, None)
        .await
        .expect("npm");

    let dirs = [node.bin_dir.as_path(), npm.bin_dir.as_path()];
    assert_eq!(run(&dirs, "node", &["--version"]), format!("v{version}"));
    assert_eq!(run(&dirs, "npm", &["--version"]), npm_version);
    assert_eq!(run(&dirs, "npx", &["--version"]), npm_version);

    // Readable and runnable by anyone; the listing knows them; a second ensure downloads nothing.
    assert_eq!(mode(&node.bin_dir.join("node")), 0o755);
    assert_eq!(mode(&npm.bin_dir.join("npm")), 0o755);
    assert_eq!(mode(store.root()), 0o755);
    let listed = store.list().unwrap();
    assert!(
        listed.contains(&(Tool::Node, version.clone())),
        "{listed:?}"
    );
    assert!(
        listed.contains(&(Tool::Npm, npm_version.clone())),
        "{listed:?}"
    );
    let again = store.ensure(Tool::Node, &version, None).await.unwrap();
    assert!(!again.downloaded);
    assert_eq!(again.bin_dir, node.bin_dir);
}

#[tokio::test]
async fn cli_installs_node_with_its_npm() {
    let dir = shared_dir();
    let node = shared_store().resolve(Tool::Node, "22").await.unwrap();
    let out = kiln_on(&["install", "node@22"], &dir, DEFAULT_REGISTRY)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // "done" or, when another test or run got there first, "already installed".
    assert!(
        stderr.contains(&format!("Installing nodejs {node} ... ")),
        "{stderr}"
    );
    assert!(stderr.contains("Installing npm 10."), "{stderr}");
    let out = kiln_on(&["list"], &dir, DEFAULT_REGISTRY)
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.lines().any(|l| l == format!("node@{node}")),
        "{listed}"
    );
    assert!(listed.lines().any(|l| l.starts_with("npm@10.")), "{listed}");
}

#[tokio::test]
async fn package_managers_and_bun_run() {
    let store = shared_store();
    let node_version = store.resolve(Tool::Node, "22").await.expect("resolve node");
    let node = store
        .ensure(Tool::Node, &node_version, None)
        .await
        .expect("node");

    for (tool, version, command) in [
        (Tool::Pnpm, "10.11.1", "pnpm"),
        (Tool::Yarn, "4.9.1", "yarn"),
        (Tool::Yarn, "1.22.22", "yarn"),
    ] {
        let installed = store.ensure(tool, version, None).await.expect("install");
        let dirs = [installed.bin_dir.as_path(), node.bin_dir.as_path()];
        let shown = run(&dirs, command, &["--version"]);
        // The npm build of Yarn Berry (`@yarnpkg/cli-dist`, what Corepack takes from an npm
        // registry) reports itself as `4.9.1-git.<date>.hash-<commit>`.
        assert!(
            shown == version || shown.starts_with(&format!("{version}-git.")),
            "{tool} {version}: {shown}"
        );
    }
    let pnpm = store.ensure(Tool::Pnpm, "10.11.1", None).await.unwrap();
    assert!(pnpm.bin_dir.join("pnpx").is_file());
    let yarn = store.ensure(Tool::Yarn, "4.9.1", None).await.unwrap();
    let dirs = [yarn.bin_dir.as_path(), node.bin_dir.as_path()];
    assert!(run(&dirs, "yarnpkg", &["--version"]).starts_with("4.9.1"));

    // bun needs no node.
    let bun = store.ensure(Tool::Bun, "1.2.15", None).await.expect("bun");
    assert_eq!(run(&[&bun.bin_dir], "bun", &["--version"]), "1.2.15");
    assert_eq!(
        std::fs::read_link(bun.bin_dir.join("bunx")).unwrap(),
        Path::new("bun")
    );
}

// ---------------------------------------------------------------------------------------------
// The fake registry

#[tokio::test]
async fn integrity_mismatch_is_refused_and_leaves_nothing() {
    let registry = FakeRegistry::start().await;
    registry.publish(
        "pnpm",
        "1.0.0",
        fake_pnpm("1.0.0", &[]),
        Some(sri(b"something else")),
    );
    let (_dir, store) = temp_store(&registry);

    let err = store.ensure(Tool::Pnpm, "1.0.0", None).await.unwrap_err();
    assert!(
        matches!(&err, ToolchainError::Integrity { tool: Tool::Pnpm, version, .. } if version == "1.0.0"),
        "{err:?}"
    );
    assert!(err.to_string().contains("integrity"), "{err}");
    assert_eq!(registry.tarball_requests(), 1);
    assert_nothing_installed(&store);
}

#[tokio::test]
async fn concurrent_ensures_download_once() {
    let registry = FakeRegistry::start().await;
    registry.publish("pnpm", "1.0.0", fake_pnpm("1.0.0", &[]), None);
    let (dir, store) = temp_store(&registry);
    // A second store on the same root stands for another process: they meet at the flock.
    let other = ToolchainStore::open(dir.path().join("toolchains"), &registry.url).unwrap();

    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let s = if i % 2 == 0 {
                store.clone()
            } else {
                other.clone()
            };
            tokio::spawn(async move { s.ensure(Tool::Pnpm, "1.0.0", None).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("join").expect("ensure"));
    }
    assert_eq!(registry.tarball_requests(), 1);
    assert_eq!(results.iter().filter(|r| r.downloaded).count(), 1);
    let bin = results[0].bin_dir.clone();
    assert!(
        results
            .iter()
            .all(|r| r.bin_dir == bin && r.version == "1.0.0")
    );
    assert_eq!(
        store.list().unwrap(),
        vec![(Tool::Pnpm, "1.0.0".to_owned())]
    );
    assert_eq!(entries(&store.root().join(".tmp")), Vec::<String>::new());

    // The commands are sh scripts running `node` from PATH on the absolute script path: a fake
    // `node` that echoes its arguments shows exactly what runs.
    let version_dir = store.root().join("pnpm").join("1.0.0");
    assert_eq!(bin, version_dir.join("bin"));
    let fake_node = tempfile::tempdir().unwrap();
    let node = fake_node.path().join("node");
    std::fs::write(&node, "#!/bin/sh\necho node \"$@\"\n").unwrap();
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = version_dir.join("package/bin/pnpm.cjs");
    assert_eq!(
        run(&[fake_node.path(), &bin], "pnpm", &["--version", "a b"]),
        format!("node {} --version a b", script.display())
    );
    assert_eq!(
        run(&[fake_node.path(), &bin], "pnpx", &[]),
        format!(
            "node {}",
            version_dir.join("package/bin/pnpx.cjs").display()
        )
    );

    // Modes: dirs and executables 0755, other files 0644, whatever the archive said.
    assert_eq!(mode(&version_dir), 0o755);
    assert_eq!(mode(&version_dir.join("package/bin")), 0o755);
    assert_eq!(mode(&script), 0o755);
    assert_eq!(mode(&version_dir.join("package/bin/pnpx.cjs")), 0o644);
    assert_eq!(mode(&version_dir.join("package/README.md")), 0o644);
    assert_eq!(mode(&bin.join("pnpm")), 0o755);
}

#[tokio::test]
async fn pinned_hash_must_match() {
    let registry = FakeRegistry::start().await;
    let tgz = fake_pnpm("1.0.0", &[]);
    let sha256 = hex::encode(Sha256::digest(&tgz));
    let sha512 = hex::encode(Sha512::digest(&tgz));
    registry.publish("pnpm", "1.0.0", tgz, None);
    let (_dir, store) = temp_store(&registry);

    let wrong = format!("sha512.{}", hex::encode(Sha512::digest(b"other")));
    let err = store
        .ensure(Tool::Pnpm, "1.0.0", Some(&wrong))
        .await
        .unwrap_err();
    assert!(matches!(err, ToolchainError::Integrity { .. }), "{err:?}");
    assert!(err.to_string().contains("pinned"), "{err}");
    assert_nothing_installed(&store);

    let err = store
        .ensure(Tool::Pnpm, "1.0.0", Some("md5.0123"))
        .await
        .unwrap_err();
    assert!(matches!(err, ToolchainError::Integrity { .. }), "{err:?}");

    let ok = store
        .ensure(Tool::Pnpm, "1.0.0", Some(&format!("sha256.{sha256}")))
        .await
        .expect("right pin");
    assert!(ok.downloaded);
    // Installed already: the pin is checked against the digests recorded at install time.
    let again = store
        .ensure(Tool::Pnpm, "1.0.0", Some(&format!("sha512.{sha512}")))
        .await
        .expect("right pin, installed");
    assert!(!again.downloaded);
    let err = store
        .ensure(Tool::Pnpm, "1.0.0", Some(&wrong))
        .await
        .unwrap_err();
    assert!(matches!(err, ToolchainError::Integrity { .. }), "{err:?}");
    assert_eq!(registry.tarball_requests(), 2);
}

/// Corepack pins yarn 2+ by the hash of `yarn.js` itself (the file repo.yarnpkg.com serves), so a
/// `packageManager: "yarn@4…+sha512.…"` written by `corepack use` must build from the npm package too.
#[tokio::test]
async fn a_yarn_berry_pin_is_the_hash_of_its_script() {
    let registry = FakeRegistry::start().await;
    let script: &[u8] = b"#!/usr/bin/env node\nconsole.log('4.0.0')\n";
    let manifest =
        br#"{"name":"@yarnpkg/cli-dist","version":"4.0.0","bin":{"yarn":"bin/yarn.js"}}"#;
    let tgz = tarball(&[
        Entry::File("package/package.json", manifest, 0o644),
        Entry::File("package/bin/yarn.js", script, 0o755),
    ]);
    registry.publish("@yarnpkg/cli-dist", "4.0.0", tgz, None);
    let (_dir, store) = temp_store(&registry);
    let pin = format!("sha512.{}", hex::encode(Sha512::digest(script)));
    let installed = store
        .ensure(Tool::Yarn, "4.0.0", Some(&pin))
        .await
        .expect("the script's hash");
    assert!(installed.downloaded);
    assert!(!installed.pin_unchecked);
    // Installed already: the pin is checked against the installed script.
    let again = store.ensure(Tool::Yarn, "4.0.0", Some(&pin)).await.unwrap();
    assert!(!again.downloaded && !again.pin_unchecked);
    // A pin of the file repo.yarnpkg.com serves (which differs from the npm build) cannot be checked:
    // reported, not fatal; the package was checked against the registry's integrity.
    let other = format!(
        "sha512.{}",
        hex::encode(Sha512::digest(b"yarn.js as repo.yarnpkg.com serves it"))
    );
    let unchecked = store
        .ensure(Tool::Yarn, "4.0.0", Some(&other))
        .await
        .unwrap();
    assert!(unchecked.pin_unchecked);
    // Other tools' pins are the tarball's: a mismatch is fatal (tested in pinned_hash_must_match).
}

#[tokio::test]
async fn unsafe_archives_are_refused() {
    let registry = FakeRegistry::start().await;
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        (
            "1.0.0",
            vec![Entry::File("package/../../escaped", b"x", 0o644)],
        ),
        (
            "2.0.0",
            vec![Entry::Symlink("package/lib/passwd", "/etc/passwd")],
        ),
        ("3.0.0", vec![Entry::Symlink("package/lib/up", "../../..")]),
        (
            "4.0.0",
            vec![Entry::HardLink("package/lib/hard", "/etc/passwd")],
        ),
        // Each link looks inside on its own; together `x` is the staging dir above the package.
        (
            "6.0.0",
            vec![
                Entry::Symlink("package/lib/a", ".."),
                Entry::Symlink("package/x", "lib/a/.."),
                Entry::File("package/x/escaped", b"x", 0o644),
            ],
        ),
        (
            "7.0.0",
            vec![
                Entry::Symlink("package/lib/a", ".."),
                Entry::Symlink("package/x", "lib/a/.."),
            ],
        ),
    ];
    for (version, extra) in &cases {
        registry.publish("pnpm", version, fake_pnpm(version, extra), None);
    }
    // Links that stay inside are fine, even chained, as is a missing `pnpx`.
    registry.publish(
        "pnpm",
        "5.0.0",
        fake_pnpm(
            "5.0.0",
            &[
                Entry::Symlink("package/lib/a", "../bin"),
                Entry::Symlink("package/lib/b", "a/pnpm.cjs"),
            ],
        ),
        None,
    );
    let (dir, store) = temp_store(&registry);
    for (version, _) in &cases {
        let err = store.ensure(Tool::Pnpm, version, None).await.unwrap_err();
        assert!(
            matches!(&err, ToolchainError::BadPackage { version: v, .. } if v == version),
            "{version}: {err:?}"
        );
    }
    assert!(!dir.path().join("escaped").exists());
    assert!(!store.root().join("escaped").exists());
    assert_nothing_installed(&store);

    let ok = store
        .ensure(Tool::Pnpm, "5.0.0", None)
        .await
        .expect("safe links");
    let b = ok.bin_dir.parent().unwrap().join("package/lib/b");
    assert_eq!(
        std::fs::read_to_string(b).unwrap(),
        "console.log('5.0.0')\n"
    );
}

#[tokio::test]
async fn download_limits() {
    let registry = FakeRegistry::start().await;
    let padding = vec![7u8; 4096];
    registry.publish(
        "pnpm",
        "1.0.0",
        fake_pnpm("1.0.0", &[Entry::File("package/pad", &padding, 0o644)]),
        None,
    );
    let (_dir, store) = temp_store(&registry);

    let small = store.clone().with_max_download_bytes(100);
    let err = small.ensure(Tool::Pnpm, "1.0.0", None).await.unwrap_err();
    assert!(matches!(err, ToolchainError::Registry { .. }), "{err:?}");
    assert!(err.to_string().contains("MiB limit"), "{err}");
    assert_nothing_installed(&store);

    registry.set_stall(true);
    let impatient = store
        .clone()
        .with_download_timeout(Duration::from_millis(300));
    let err = impatient
        .ensure(Tool::Pnpm, "1.0.0", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ToolchainError::Registry { .. }), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_nothing_installed(&store);
}

#[tokio::test]
async fn resolves_ranges_and_offline_against_installed() {
    let registry = FakeRegistry::start().await;
    for v in ["1.0.0", "1.2.0", "1.2.3", "2.0.0-rc.1"] {
        registry.publish("pnpm", v, fake_pnpm(v, &[]), None);
    }
    let (dir, store) = temp_store(&registry);
    assert_eq!(store.resolve(Tool::Pnpm, "1").await.unwrap(), "1.2.3");
    assert_eq!(store.resolve(Tool::Pnpm, "1.0").await.unwrap(), "1.0.0");
    assert_eq!(store.resolve(Tool::Pnpm, "~1.2.0").await.unwrap(), "1.2.3");
    assert_eq!(store.resolve(Tool::Pnpm, "<1.2.3").await.unwrap(), "1.2.0");
    assert_eq!(store.resolve(Tool::Pnpm, "*").await.unwrap(), "1.2.3");
    assert_eq!(
        store.resolve(Tool::Pnpm, "2.0.0-rc.1").await.unwrap(),
        "2.0.0-rc.1"
    );
    let err = store.resolve(Tool::Pnpm, "3").await.unwrap_err();
    assert!(
        err.to_string().ends_with("nearest: 2.0.0-rc.1, 1.2.3")
            || err.to_string().ends_with("nearest: 1.2.3"),
        "{err}"
    );
    store.ensure(Tool::Pnpm, "1.0.0", None).await.unwrap();
    store.ensure(Tool::Pnpm, "1.2.0", None).await.unwrap();

    // A registry that is not there: a port nobody listens on any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", l.local_addr().unwrap())
    };
    let offline = ToolchainStore::open(dir.path().join("toolchains"), &closed).unwrap();
    assert_eq!(offline.resolve(Tool::Pnpm, "1").await.unwrap(), "1.2.0");
    assert_eq!(offline.resolve(Tool::Pnpm, "1.0").await.unwrap(), "1.0.0");
    let err = offline.resolve(Tool::Pnpm, "2").await.unwrap_err();
    assert!(matches!(err, ToolchainError::Registry { .. }), "{err:?}");
    let installed = offline.ensure(Tool::Pnpm, "1.2.0", None).await.unwrap();
    assert!(!installed.downloaded);
    assert!(offline.ensure(Tool::Pnpm, "1.2.3", None).await.is_err());
    // Asked again while the registry is still away: the answer comes from what is installed.
    assert_eq!(offline.resolve(Tool::Pnpm, "1").await.unwrap(), "1.2.0");

    // A registry that answers without the package (a mirror, a proxy's block page): the same.
    let empty = FakeRegistry::start().await;
    let mirror = ToolchainStore::open(dir.path().join("toolchains"), &empty.url).unwrap();
    assert_eq!(mirror.resolve(Tool::Pnpm, "1").await.unwrap(), "1.2.0");
}

/// `kiln toolchains <args>` on `store_dir` filled from `registry`; async, so the fake registry on
/// this test's runtime keeps answering while it runs.
fn kiln(args: &[&str], store_dir: &Path, registry: &FakeRegistry) -> tokio::process::Command {
    kiln_on(args, store_dir, &registry.url)
}

fn kiln_on(args: &[&str], store_dir: &Path, registry: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.arg("toolchains")
        .args(args)
        .arg("--toolchain-dir")
        .arg(store_dir)
        .args(["--npm-registry", registry])
        .env("KILN_LOG", "warn");
    cmd
}

#[tokio::test]
async fn kill_during_install_leaves_nothing() {
    let registry = FakeRegistry::start().await;
    // Incompressible, so half the tarball is a real half-download.
    let noise: Vec<u8> = (0..512 * 1024).map(|_| rand::random::<u8>()).collect();
    registry.publish(
        "pnpm",
        "1.0.0",
        fake_pnpm("1.0.0", &[Entry::File("package/noise", &noise, 0o644)]),
        None,
    );
    registry.set_stall(true);
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut child = kiln(&["install", "pnpm@1.0.0"], &store_dir, &registry)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kiln");
    let tmp = store_dir.join(".tmp");
    wait_for(60, "half a download on disk", || {
        entries(&tmp).iter().any(|e| {
            std::fs::metadata(tmp.join(e).join("tarball.tgz")).is_ok_and(|m| m.len() > 64 * 1024)
        })
    })
    .await;
    child.kill().await.expect("kill -9");
    assert_eq!(
        entries(&tmp).len(),
        1,
        "the killed install left its staging dir"
    );

    let out = kiln(&["list"], &store_dir, &registry)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(
        entries(&tmp),
        Vec::<String>::new(),
        "open removes stale staging"
    );
    assert!(!store_dir.join("pnpm").exists() || entries(&store_dir.join("pnpm")).is_empty());

    registry.set_stall(false);
    let out = kiln(&["install", "pnpm@1"], &store_dir, &registry)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Installing pnpm 1.0.0 ... done"),
        "{stderr}"
    );
    let out = kiln(&["list"], &store_dir, &registry)
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pnpm@1.0.0\n");
    assert_eq!(registry.tarball_requests(), 2);
}

#[tokio::test]
async fn cli_names_the_nearest_versions() {
    let registry = FakeRegistry::start().await;
    registry.publish("pnpm", "1.2.0", fake_pnpm("1.2.0", &[]), None);
    registry.publish("pnpm", "2.1.0", fake_pnpm("2.1.0", &[]), None);
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let out = kiln(&["install", "pnpm@7"], &store_dir, &registry)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(r#"no pnpm version matches "7"; nearest: 2.1.0, 1.2.0"#),
        "{stderr}"
    );
    let out = kiln(&["install", "deno@1"], &store_dir, &registry)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown tool"));
}
