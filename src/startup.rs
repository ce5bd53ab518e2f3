//! Starting Kiln: opening the store, registering the bootstrap token, serving HTTP. Tests start the
//! server through the same code on a random port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, AppState, Limits};
use crate::crypto::{SecretBox, hash_credential};
use crate::domain::{AccountScope, ApiToken, CredentialKind, Permission, Timestamp};
use crate::git::GitCache;
use crate::runner::{RunnerConfig, RunnerContext};
use crate::sandbox::{BuildUserPool, SandboxMode, bwrap_available, bwrap_available_as};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerHandle};
use crate::store::Store;

/// Where the store lives and how secrets are sealed.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; `None` = `kiln.db` in the data dir.
    pub database_url: Option<String>,
    /// 32-byte key as hex or base64; `None` = `secret.key` in the data dir.
    pub secret_key: Option<String>,
}

/// Everything `kiln serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: String,
    pub store: StoreConfig,
    pub bootstrap_token: Option<String>,
    pub limits: Limits,
    /// Clone URL of a connected repository; `{owner}` and `{repo}` are substituted
    /// ([`crate::git::DEFAULT_URL_TEMPLATE`] for GitHub).
    pub git_url_template: String,
    /// Build slots, account concurrency and leases.
    pub scheduler: SchedulerConfig,
    /// How builds run: sandbox, timeout, cancel grace, log cap.
    pub runner: RunnerConfig,
    /// Secrets of GitHub webhook signatures; empty: `/webhooks/github` refuses every delivery.
    pub github_webhook_secrets: Vec<String>,
    /// The GitHub App that check runs are reported as; `None`: nothing is reported.
    pub github_app: Option<crate::github::AppConfig>,
    /// The URL users reach this server at (check runs link to builds under it); `None`: the listen address.
    pub public_url: Option<String>,
    /// Connection limit and timeouts of the HTTP server.
    pub http: crate::listen::HttpConfig,
    /// How many failed authentications a client may make ([`crate::api::throttle`]).
    pub auth_throttle: crate::api::throttle::ThrottleConfig,
    /// The bearer token `GET /metrics` requires; `None`: the metrics are open to every client.
    pub metrics_token: Option<String>,
    /// How event notifications are sent ([`crate::notify`]).
    pub notifications: crate::notify::NotifyConfig,
    /// The live log streams of this node.
    pub log_streams: crate::api::LogStreamConfig,
    /// The dashboard's sessions.
    pub dashboard: crate::dashboard::DashboardConfig,
}

/// Opens (creating if needed) the data dir and the store, running migrations.
pub async fn open_store(config: &StoreConfig) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    if let Err(e) = set_mode(&config.data_dir, DATA_DIR_MODE) {
        tracing::warn!(
            error = format!("{e:#}"),
            "could not restrict the data dir's permissions"
        );
    }
    let secrets = SecretBox::load(config.secret_key.as_deref(), &config.data_dir)?;
    let url = config
        .database_url
        .clone()
        .unwrap_or_else(|| Store::sqlite_url(&config.data_dir));
    if let Some(db) = sqlite_file(&url) {
        private_database_file(&db)?;
    }
    let store = Store::connect(&url, secrets).await?;
    // The key file is created 0600; one from elsewhere (or an older Kiln) may not be.
    let key = config.data_dir.join(crate::crypto::KEY_FILE);
    if key.exists() {
        set_mode(&key, PRIVATE_FILE_MODE)?;
    }
    Ok(store)
}

/// The data dir: others (the build user, whose workspaces are inside) may pass through but not list
/// it; everything in it that is not theirs is owner-only ([`PRIVATE_FILE_MODE`]).
const DATA_DIR_MODE: u32 = 0o711;
/// The database, the secret key, the lock and the node id.
const PRIVATE_FILE_MODE: u32 = 0o600;
/// The directory in the data dir that builds pass through: `workspaces` (each workspace belongs to
/// its build).
const PASS_THROUGH_DIR_MODE: u32 = 0o711;
/// Directories of the data dir that are Kiln's alone: the git cache (a checkout gets its mirror's
/// objects as links, so builds need no access to any mirror).
const PRIVATE_DIR_MODE: u32 = 0o700;

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the permissions of {} to {mode:o}", path.display()))
}

/// The file of a `sqlite:` URL (`None` for an in-memory database or another backend).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Creates the SQLite file owner-only before SQLite does (with 0644), and restricts an existing one;
/// SQLite creates its `-wal` and `-shm` files with the database file's mode.
fn private_database_file(db: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(PRIVATE_FILE_MODE)
        .open(db)
        .with_context(|| format!("opening {}", db.display()))?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = PathBuf::from(name);
        if path.exists() {
            set_mode(&path, PRIVATE_FILE_MODE)?;
        }
    }
    Ok(())
}

/// Shortest bootstrap token accepted, in characters.
pub const MIN_BOOTSTRAP_TOKEN_LEN: usize = 32;
/// Longest bootstrap token accepted, in characters.
pub const MAX_BOOTSTRAP_TOKEN_LEN: usize = 1024;
/// Least Shannon entropy of the bootstrap token's characters, in bits per character (random hex
/// has about 3.7 over 32 characters, random base64 about 4.6; `aaaa…` has 0).
const MIN_BOOTSTRAP_TOKEN_BITS_PER_CHAR: f64 = 3.0;

/// Refuses a bootstrap token that is easy to guess: it grants write access to every account. See
/// [`check_token_strength`].
pub fn check_bootstrap_token(token: &str) -> anyhow::Result<()> {
    check_token_strength("bootstrap token", token)
}

/// Refuses a token (named `what` in the error) that is easy to guess. It must have
/// [`MIN_BOOTSTRAP_TOKEN_LEN`]–[`MAX_BOOTSTRAP_TOKEN_LEN`] printable characters without blanks, not
/// be one short run repeated, and vary enough (Shannon entropy of at least 3 bits per character).
/// The error never shows the token.
pub fn check_token_strength(what: &str, token: &str) -> anyhow::Result<()> {
    let how = "generate one with `openssl rand -hex 32`";
    let chars: Vec<char> = token.chars().collect();
    anyhow::ensure!(
        (MIN_BOOTSTRAP_TOKEN_LEN..=MAX_BOOTSTRAP_TOKEN_LEN).contains(&chars.len()),
        "the {what} is too weak: it has {} characters, at least {MIN_BOOTSTRAP_TOKEN_LEN} are needed \
         ({how})",
        chars.len()
    );
    anyhow::ensure!(
        chars.iter().all(|c| !c.is_whitespace() && !c.is_control()),
        "the {what} must not contain blanks or control characters ({how})"
    );
    let periodic =
        (1..=chars.len() / 2).any(|p| chars.iter().zip(&chars[p..]).all(|(a, b)| a == b));
    anyhow::ensure!(
        !periodic,
        "the {what} is too weak: it repeats a shorter part ({how})"
    );
    let mut counts = std::collections::HashMap::new();
    for c in &chars {
        *counts.entry(c).or_insert(0_usize) += 1;
    }
    let n = chars.len() as f64;
    let bits: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum();
    anyhow::ensure!(
        bits >= MIN_BOOTSTRAP_TOKEN_BITS_PER_CHAR,
        "the {what} is too weak: its characters vary too little ({how})"
    );
    Ok(())
}

/// Registers `token` as an all-accounts write token (idempotent: stored once, by hash).
pub async fn register_bootstrap_token(store: &Store, token: &str) -> anyhow::Result<()> {
    let hash = hash_credential(token);
    let record = ApiToken {
        id: format!("bootstrap-{}", &hash[..12]),
        kind: CredentialKind::Token,
        email: None,
        permission: Permission::Write,
        scope: AccountScope::All,
        created_on: Timestamp::now(),
        revoked_on: None,
        label: Some("KILN_BOOTSTRAP_TOKEN".to_owned()),
    };
    if store.insert_api_token(&record, &hash).await? {
        tracing::info!(token_id = %record.id, "registered the bootstrap token");
    }
    Ok(())
}

/// How long [`Server::stop`] waits for the connections in flight. A client that never finishes
/// sending its request would otherwise keep the server from stopping at all.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Name of the lock file that keeps two servers off one data dir.
const LOCK_FILE: &str = "kiln.lock";
/// Name of the file holding this node's stable id.
const NODE_ID_FILE: &str = "node-id";

/// Takes the data dir's lock: one `kiln serve` per data dir (its workspaces and its node id).
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    set_mode(&path, PRIVATE_FILE_MODE)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another kiln serve is using the data dir {}; give each server its own --data-dir",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Deletes `<data_dir>/workspaces` left by a previous run (the data dir lock is held).
fn remove_stale_workspaces(data_dir: &Path) {
    let dir = data_dir.join("workspaces");
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => tracing::debug!("removed the workspaces of the previous run"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "could not remove old workspaces"),
    }
}

/// Creates (or fixes the modes of) the directories of the data dir that builds touch: `workspaces`,
/// which the build user passes through to its own workspace, and the git cache, which is Kiln's
/// alone (git creates the mirrors in it 0755: the cache itself must not be passable).
fn prepare_build_dirs(data_dir: &Path) -> anyhow::Result<()> {
    for (dir, mode) in [
        ("workspaces", PASS_THROUGH_DIR_MODE),
        ("git", PRIVATE_DIR_MODE),
    ] {
        let path = data_dir.join(dir);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        set_mode(&path, mode)?;
    }
    Ok(())
}

/// What builds must never read besides the data dir: the SQLite files when the database lives
/// elsewhere, and the private paths configured (key files given by path).
fn private_paths(config: &ServeConfig, data_dir: &Path) -> Vec<PathBuf> {
    let url = config
        .store
        .database_url
        .clone()
        .unwrap_or_else(|| Store::sqlite_url(data_dir));
    let database = sqlite_file(&url)
        .map(|db| std::path::absolute(&db).unwrap_or(db))
        .into_iter()
        .flat_map(|db| {
            ["", "-wal", "-shm", "-journal"].map(|suffix| {
                let mut name = db.as_os_str().to_owned();
                name.push(suffix);
                PathBuf::from(name)
            })
        });
    config
        .runner
        .private_paths
        .iter()
        .cloned()
        .chain(database)
        .map(|path| std::fs::canonicalize(&path).unwrap_or(path))
        .filter(|path| !path.starts_with(data_dir))
        .collect()
}

/// The user build steps run as (created if needed), checked to reach its workspaces and, without
/// the bwrap sandbox (which hides them), not to read any of `private` (files it could read could
/// not be protected: Kiln refuses to start); `None` when Kiln is not root, which is then logged as a
/// warning in sandbox mode none (builds then run as Kiln's own user and can read all it stores).
async fn build_users(
    config: &RunnerConfig,
    slots: usize,
    data_dir: &Path,
    private: Vec<PathBuf>,
) -> anyhow::Result<Option<Arc<BuildUserPool>>> {
    let spec = config.build_user.clone();
    let sandbox = config.sandbox;
    let workspaces = data_dir.join("workspaces");
    let slots = u32::try_from(slots.max(1)).unwrap_or(u32::MAX);
    tokio::task::spawn_blocking(move || {
        let mut users = Vec::new();
        for slot in 0..slots {
            let slot_spec = spec.for_slot(slot);
            let Some(user) = slot_spec.resolve()? else {
                // SAFETY: geteuid has no preconditions.
                let uid = unsafe { libc::geteuid() };
                if sandbox == SandboxMode::None {
                    tracing::warn!(
                        uid,
                        "Kiln does not run as root and builds run with --sandbox none: build steps \
                         run as Kiln's own user without isolation and can read everything Kiln \
                         stores (database, secret key, key files, mirrors, caches, other builds' \
                         workspaces). Run only trusted builds this way; use --sandbox bwrap or run \
                         Kiln as root (builds then run as unprivileged build users)"
                    );
                } else {
                    tracing::info!(uid, "Kiln does not run as root: build steps run as Kiln's own user in the bwrap sandbox");
                }
                return Ok(None);
            };
            anyhow::ensure!(
                user.can_enter(&workspaces)?,
                "the build user {slot_spec} (uid {}) cannot reach {}: every directory above the data \
                 dir must be searchable by it (e.g. chmod o+x)",
                user.uid,
                workspaces.display()
            );
            anyhow::ensure!(
                sandbox != SandboxMode::Bwrap || slot > 0 || bwrap_available_as(&user),
                "bwrap cannot create its sandbox as the build user {slot_spec} (uid {}): unprivileged \
                 user namespaces are needed (sysctls kernel.unprivileged_userns_clone, \
                 user.max_user_namespaces); or run builds with --sandbox none",
                user.uid
            );
            if sandbox == SandboxMode::None {
                for path in &private {
                    anyhow::ensure!(
                        !user.can_read(path)?,
                        "the build user {slot_spec} (uid {}) can read {}, which builds must never \
                         see (--sandbox none does not hide it): make it readable by Kiln's user only \
                         (chmod 600, and no ACL granting others), or run builds with --sandbox bwrap",
                        user.uid,
                        path.display()
                    );
                }
            }
            anyhow::ensure!(
                !users.contains(&user),
                "the build users {spec} and {slot_spec} are the same uid {}: each build slot needs its own",
                user.uid
            );
            users.push(user);
        }
        tracing::info!(build_user = %spec, slots, first_uid = users.first().map(|u| u.uid), "build steps run as unprivileged users, one per build slot");
        Ok(Some(Arc::new(BuildUserPool::new(users))))
    })
    .await
    .context("resolving the build users")?
}

/// Logs a warning for each per-build limit this host cannot enforce (no cgroup controller Kiln can
/// use, e.g. when not root): builds still run, without it.
async fn warn_unenforced_limits(config: &RunnerConfig) {
    let limits = config.limits;
    let Ok(support) =
        tokio::task::spawn_blocking(move || crate::sandbox::limit_support(limits)).await
    else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !support.memory {
        tracing::warn!(
            limit = %crate::sandbox::format_bytes(limits.memory_bytes),
            "the per-build memory limit cannot be enforced here: no cgroup memory controller Kiln \
             can write (v2 memory.max or the v1 memory hierarchy; Kiln must run as root)"
        );
    }
    if !support.pids {
        tracing::warn!(
            limit = limits.processes,
            "the per-build process limit cannot be enforced by a cgroup here (v2 pids.max or the v1 \
             pids hierarchy){}",
            if root {
                "; RLIMIT_NPROC of the build user still applies"
            } else {
                ""
            }
        );
    }
    if !support.kill && config.sandbox == SandboxMode::None {
        tracing::warn!(
            "no cgroup v2 Kiln can write: in sandbox mode none, a build's daemons can outlive it \
             and a node that dies leaves its builds' processes running"
        );
    }
}

/// This node's id, created on first start: builds it leased are recognised as orphans after a restart.
fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => {
            set_mode(&path, PRIVATE_FILE_MODE)?;
            Ok(id.trim().to_owned())
        }
        Ok(_) => anyhow::bail!("{} is empty", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let id = uuid::Uuid::new_v4().simple().to_string();
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(PRIVATE_FILE_MODE)
                .open(&path)
                .and_then(|mut file| file.write_all(id.as_bytes()))
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub store: Store,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    scheduler: Option<(tokio::sync::watch::Sender<bool>, JoinHandle<()>)>,
    reporter: Option<(tokio::sync::watch::Sender<bool>, JoinHandle<()>)>,
    /// Wakes the store's event bus for other nodes' events ([`crate::events::spawn_watcher`]).
    watcher: (tokio::sync::watch::Sender<bool>, JoinHandle<()>),
    notifier: Option<(tokio::sync::watch::Sender<bool>, JoinHandle<()>)>,
    /// This node's build slots as the other nodes see them (when it runs builds).
    announcement: Option<crate::nodes::Announcement>,
    log_streams: Arc<crate::api::LogStreams>,
    _lock: std::fs::File,
}

impl Server {
    /// Opens the store, binds `config.listen`, and serves and schedules builds in the background.
    pub async fn start(config: &ServeConfig) -> anyhow::Result<Server> {
        let bootstrap_token = config.bootstrap_token.as_deref().filter(|t| !t.is_empty());
        if let Some(token) = bootstrap_token {
            check_bootstrap_token(token)?;
        }
        let metrics_token = config.metrics_token.as_deref().filter(|t| !t.is_empty());
        if let Some(token) = metrics_token {
            check_token_strength("metrics token", token)?;
        }
        match crate::listen::raise_fd_limit() {
            Ok(files) => tracing::debug!(open_file_limit = files, "open-file limit"),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
        let store = open_store(&config.store).await?;
        // Absolute, because builds run elsewhere (the sandbox needs absolute paths) and `./kiln-data`
        // is the default.
        // Canonical too: the build cache refuses paths with a symlink on the way, so a data dir that
        // is a link to another disk must be resolved once here.
        let data_dir = &std::fs::canonicalize(&config.store.data_dir)
            .with_context(|| format!("resolving {}", config.store.data_dir.display()))?;
        let lock = lock_data_dir(data_dir)?;
        // Workspaces of builds that ran before a crash: nothing of them is needed any more.
        remove_stale_workspaces(data_dir);
        prepare_build_dirs(data_dir)?;
        if let Some(token) = bootstrap_token {
            register_bootstrap_token(&store, token).await?;
        }
        if config.scheduler.runners > 0
            && config.runner.sandbox == SandboxMode::Bwrap
            && !bwrap_available()
        {
            anyhow::bail!(
                "the bwrap sandbox is not available on this host: install bubblewrap, or run builds unsandboxed with --sandbox none"
            );
        }
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let git = Arc::new(GitCache::new(
            data_dir.join("git"),
            config.git_url_template.clone(),
        ));
        let github = config
            .github_app
            .as_ref()
            .map(crate::github::GithubApp::new)
            .transpose()?
            .map(Arc::new);
        let cache = Arc::new(
            crate::cache::BuildCache::open(
                data_dir.join("cache"),
                crate::cache::CacheLimits::default(),
            )
            .context("opening the build cache")?,
        );
        spawn_cache_eviction(cache.clone());
        let watcher = {
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let task = crate::events::spawn_watcher(
                store.clone(),
                config.store.database_url.clone(),
                config.scheduler.poll_interval,
                stop_rx,
            );
            (stop_tx, task)
        };
        let metrics = Arc::new(crate::metrics::Metrics::new(
            &store,
            config.scheduler.runners,
            metrics_token,
        )?);
        let handle = SchedulerHandle::default();
        let (scheduler, announcement) = if config.scheduler.runners > 0 {
            let orphans = tokio::task::spawn_blocking(crate::sandbox::kill_orphaned_builds)
                .await
                .unwrap_or(0);
            if orphans > 0 {
                tracing::info!(
                    orphans,
                    "killed what builds of dead Kiln processes left on this host"
                );
            }
            warn_unenforced_limits(&config.runner).await;
            tracing::info!(
                runners = config.scheduler.runners,
                sandbox = %config.runner.sandbox,
                "running builds on this node"
            );
            let toolchain_dir = config
                .runner
                .toolchain_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("toolchains"));
            let toolchains =
                crate::toolchain::ToolchainStore::open(&toolchain_dir, &config.runner.npm_registry)
                    .with_context(|| {
                        format!("opening the toolchain store {}", toolchain_dir.display())
                    })?;
            let mut runner_config = config.runner.clone();
            runner_config.private_paths = private_paths(config, data_dir);
            let build_users = build_users(
                &config.runner,
                config.scheduler.runners,
                data_dir,
                runner_config.private_paths.clone(),
            )
            .await?;
            let runner = RunnerContext {
                store: store.clone(),
                git: git.clone(),
                data_dir: data_dir.clone(),
                config: runner_config,
                github: github.clone(),
                toolchains,
                cache: cache.clone(),
                build_users,
                metrics: metrics.clone(),
            };
            let node_id = node_id(data_dir)?;
            let scheduler = Scheduler::new(
                store.clone(),
                config.scheduler.clone(),
                runner,
                node_id.clone(),
                handle.clone(),
            );
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            // `/readyz` is not ready once the scheduler's task ended (or panicked).
            let up = metrics.scheduler_running();
            let task = tokio::spawn(async move {
                let _up = up;
                scheduler.run(stop_rx).await;
            });
            let announcement = crate::nodes::Announcement::start(
                store.clone(),
                node_id,
                config.scheduler.runners,
                config.scheduler.lease,
            )
            .await;
            (Some((stop_tx, task)), Some(announcement))
        } else {
            tracing::info!("no build runners on this node (--runners 0)");
            (None, None)
        };
        let reporter = match (&config.github_app, &github) {
            (Some(app_config), Some(app)) => {
                let app = app.clone();
                let public_url = config
                    .public_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{addr}"));
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                tracing::info!(api = %app_config.api_url, "reporting check runs to GitHub");
                let reporter = crate::github::reporter::ReporterConfig {
                    public_url,
                    owner: format!(
                        "{}/reporter-{}",
                        node_id(data_dir)?,
                        uuid::Uuid::new_v4().simple()
                    ),
                    lease: config.scheduler.lease,
                    poll: config.scheduler.poll_interval,
                };
                Some((
                    stop_tx,
                    tokio::spawn(crate::github::reporter::run(
                        store.clone(),
                        app,
                        reporter,
                        stop_rx,
                    )),
                ))
            }
            _ => None,
        };
        let notifier = crate::notify::NotifyHandle::new(config.notifications.retry.window);
        let notifications = {
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(crate::notify::run(
                store.clone(),
                config.notifications,
                notifier.clone(),
                metrics.clone(),
                stop_rx,
            ));
            Some((stop_tx, task))
        };
        let log_streams = Arc::new(crate::api::LogStreams::new(
            config.log_streams,
            config.runner.cancel_grace,
        ));
        let app = api::router(AppState {
            store: store.clone(),
            limits: config.limits,
            git,
            scheduler: handle,
            events: store.events().clone(),
            github_webhook_secrets: Arc::new(config.github_webhook_secrets.clone()),
            cache,
            auth_throttle: Arc::new(crate::api::throttle::AuthThrottle::new(
                config.auth_throttle,
            )),
            metrics,
            notifier,
            log_streams: log_streams.clone(),
            default_concurrency: config.scheduler.default_concurrency,
            dashboard: crate::dashboard::DashboardConfig {
                // Cookies sent to a server users reach over https are never sent in the clear.
                secure_cookies: config.dashboard.secure_cookies
                    || config
                        .public_url
                        .as_deref()
                        .is_some_and(|u| u.starts_with("https://")),
                ..config.dashboard
            },
        });
        let (tx, rx) = oneshot::channel::<()>();
        let http = config.http.clone();
        let task = tokio::spawn(crate::listen::serve(listener, app, http, async {
            rx.await.ok();
        }));
        Ok(Server {
            addr,
            store,
            shutdown: Some(tx),
            task,
            scheduler,
            reporter,
            watcher,
            notifier: notifications,
            announcement,
            log_streams,
            _lock: lock,
        })
    }

    /// Stops accepting requests, ends the live log streams, finishes the requests in flight (for at
    /// most [`SHUTDOWN_GRACE`]), stops the builds running here (they end `terminated`), reports what is
    /// pending to GitHub (their check runs included, for at most
    /// [`crate::github::reporter::FLUSH_GRACE`]), and closes the store.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Live log streams would hold their connections until their builds end.
        self.log_streams.close();
        let result = match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(joined) => joined.context("server task panicked"),
            Err(_) => {
                tracing::warn!(
                    grace_seconds = SHUTDOWN_GRACE.as_secs(),
                    "connections still open after the grace period: closing them"
                );
                self.task.abort();
                Ok(())
            }
        };
        if let Some((stop, task)) = self.scheduler.take() {
            let _ = stop.send(true);
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the scheduler task panicked");
            }
        }
        if let Some(announcement) = self.announcement.take() {
            announcement.withdraw().await;
        }
        // After the builds: what they ended as (`terminated`) reaches GitHub before the exit.
        if let Some((stop, task)) = self.reporter.take() {
            let _ = stop.send(true);
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the GitHub reporter task panicked");
            }
        }
        // Attempts in flight are dropped and their deliveries released: they are due again at once.
        if let Some((stop, task)) = self.notifier.take() {
            let _ = stop.send(true);
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the notification task panicked");
            }
        }
        let (stop, task) = self.watcher;
        let _ = stop.send(true);
        if let Err(e) = task.await {
            tracing::error!(error = %e, "the build events watcher panicked");
        }
        self.store.close().await;
        result
    }

    /// Serves until the task ends on its own (it does not without a shutdown).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await.context("server task panicked")
    }
}

/// How often the build cache drops entries unread for a week (PRODUCT-NOTES §5).
const CACHE_EVICTION_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Drops expired build cache entries now and every [`CACHE_EVICTION_INTERVAL`].
fn spawn_cache_eviction(cache: Arc<crate::cache::BuildCache>) {
    tokio::spawn(async move {
        loop {
            match cache.evict_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(entries = n, "dropped expired build cache entries"),
                Err(e) => tracing::warn!(error = format!("{e:#}"), "build cache eviction failed"),
            }
            tokio::time::sleep(CACHE_EVICTION_INTERVAL).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_bootstrap_tokens_are_refused() {
        for weak in [
            "x",
            "change-me",
            "test-admin-token-0123456789",
            &"a".repeat(64),
            &"change-me-".repeat(4),
            &"ab".repeat(20),
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab",
            "with a blank in the middle 0123456789abcdef",
            &"x".repeat(MAX_BOOTSTRAP_TOKEN_LEN + 1),
        ] {
            let e = check_bootstrap_token(weak).expect_err(weak);
            assert!(
                weak.len() < 8 || !e.to_string().contains(weak),
                "the error shows the token: {e}"
            );
        }
    }

    #[test]
    fn generated_tokens_are_accepted() {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            // `openssl rand -hex 16`, `-hex 32` and `-base64 32`, and Kiln's own credentials.
            let bytes: Vec<u8> = (0..32).map(|_| rng.r#gen()).collect();
            for token in [
                hex::encode(&bytes[..16]),
                hex::encode(&bytes),
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes),
                crate::crypto::new_credential("kiln_"),
            ] {
                check_bootstrap_token(&token).expect(&token);
            }
        }
        check_bootstrap_token(&uuid::Uuid::new_v4().to_string()).expect("a UUID");
    }
}
