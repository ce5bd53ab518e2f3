//! One build from checkout to outcome: workspace, git checkout from the mirror, dependency install,
//! build and deploy commands in the sandbox, streamed and masked logs, version capture, outcome.

mod caching;
mod env;
mod outage;
mod project;
mod tools;

pub use env::{DEFAULT_ENV_PASSTHROUGH, HostEnv};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::cache::{BuildCache, CacheDir, CacheKind, Restored};
use crate::domain::{
    BuildId, BuildOutcome, Timestamp, VersionId, WatchPathCheck, paths_selected, plan_project,
};
use crate::git::{GitCache, GitError, Mirror, Resolved};
use crate::github::RepoAccess;
use crate::logs::{LogSink, LogSinkConfig, LogSummary, Masker, pump};
use crate::sandbox::{
    BuildLimits, BuildScope, BuildUser, BuildUserPool, BuildUserSpec, Exceeded, SandboxMode, Step,
    StepSpec,
};
use crate::scheduler::Stop;
use crate::store::{ClaimedBuild, Store};
use crate::toolchain::ToolchainStore;
use outage::{on_any_stop, on_shutdown, until_stored};

/// Runner settings.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub sandbox: SandboxMode,
    /// Whole-build limit; the build then ends `terminated` with `Build was timed out`.
    pub build_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when a build is cancelled or times out.
    pub cancel_grace: Duration,
    /// Stored log bytes per build (head and tail are kept).
    pub log_cap_bytes: u64,
    /// What builds get from the host: passed-through variables, server-wide defaults, the registry.
    pub host_env: HostEnv,
    /// The toolchain store; `None`: `<data_dir>/toolchains`.
    pub toolchain_dir: Option<PathBuf>,
    /// The npm registry toolchains are fetched from (`--npm-registry`).
    pub npm_registry: String,
    /// Who build steps run as when Kiln runs as root (resolved at start into
    /// [`RunnerContext::build_user`]); ignored otherwise.
    pub build_user: BuildUserSpec,
    /// Files and directories outside the data dir that builds must never read: the database and
    /// its `-wal`/`-shm` files when they live elsewhere, key files given by path. Hidden in the bwrap
    /// sandbox; checked at start to be unreadable by the build user (see [`crate::startup`]).
    pub private_paths: Vec<PathBuf>,
    /// Per-build resource limits; a build that goes past one is stopped and fails with a log line
    /// saying which.
    pub limits: BuildLimits,
    /// How often a running step's memory and process limits are looked at, and at least how often
    /// its workspace's disk use is measured (less often when a measurement takes long: at most a
    /// tenth of the time goes to it).
    pub limit_check_interval: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            sandbox: SandboxMode::Bwrap,
            build_timeout: Duration::from_secs(20 * 60),
            cancel_grace: Duration::from_secs(10),
            log_cap_bytes: crate::logs::DEFAULT_LOG_CAP_BYTES,
            host_env: HostEnv::default(),
            toolchain_dir: None,
            npm_registry: crate::toolchain::DEFAULT_REGISTRY.to_owned(),
            build_user: BuildUserSpec::default(),
            private_paths: Vec::new(),
            limits: BuildLimits::default(),
            limit_check_interval: Duration::from_secs(5),
        }
    }
}

/// What every build on this node shares.
pub struct RunnerContext {
    pub store: Store,
    pub git: Arc<GitCache>,
    /// Kiln's data dir: workspaces live under it and it is hidden from builds.
    pub data_dir: PathBuf,
    pub config: RunnerConfig,
    /// The GitHub App whose installation tokens clone private repositories, when configured.
    pub github: Option<Arc<crate::github::GithubApp>>,
    /// Where builds' toolchains come from (read-only to builds).
    pub toolchains: ToolchainStore,
    /// The build cache (never visible to builds; restored into and saved from their dirs).
    pub cache: Arc<BuildCache>,
    /// The unprivileged users steps run as, one per build slot; `None`: Kiln's own (not root).
    pub build_users: Option<Arc<BuildUserPool>>,
    /// This node's metrics (start latency, durations, busy slots, log lines).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The hosted product's message for a deleted or rolled build token.
pub const STALE_TOKEN_LINE: &str = "Failed: The build token selected for this build has been deleted or rolled and cannot be used for this build. Please update your build token in the Worker Builds settings and retry the build.";

/// Logged after a failure when the disk the build writes to (its workspace, the git mirrors, the
/// cache: all in the data dir) is full.
pub const DISK_FULL_LINE: &str = "Failed: the disk is full (no space left on device)";

/// The line a pull-request build ends with, `skipped`, when no file the pull request changes matches
/// its trigger's watch paths (the hosted product skips such a push without a build; its wording for
/// the case is not known).
pub const WATCH_PATHS_SKIPPED_LINE: &str =
    "Build skipped: no file changed by the pull request matches the build watch paths";

/// What the watch-path check of a pull-request build decided.
enum WatchPaths {
    /// Build; with the mirror fetched and the commit resolved when the check got that far (the
    /// clone step reuses them).
    Build(Option<(Mirror, Resolved)>),
    /// End the build `skipped`.
    Skip,
}

/// Why the steps ended before completing.
enum Interrupted {
    Stopped(Stop),
    TimedOut,
    /// The build went past one of its resource limits.
    Limit(Exceeded),
}

/// Runs a claimed build to its end and records the outcome. Every failure of the build becomes a log
/// line and an outcome; even a panic in here ends the build `terminated` instead of leaving it running.
pub async fn run_build(
    ctx: Arc<RunnerContext>,
    build: ClaimedBuild,
    owner: String,
    lease: Duration,
    stop_tx: watch::Sender<Stop>,
    stop_rx: watch::Receiver<Stop>,
) {
    let id = build.id;
    let span = tracing::info_span!("build", build.uuid = %id, account = %build.account);
    let inner = tokio::spawn(
        execute_build(ctx.clone(), build, owner.clone(), lease, stop_tx, stop_rx)
            .instrument(span.clone()),
    );
    if let Err(e) = inner.await {
        async {
            tracing::error!(error = %e, "the build's task failed; ending it as terminated");
            let line = "Build terminated: an internal error stopped the runner. Retry the build.";
            if let Err(e) = ctx
                .store
                .append_build_logs(id, &[(Timestamp::now(), line.to_owned())])
                .await
            {
                tracing::error!(error = format!("{e:#}"), "logging the failure failed");
            }
            if let Err(e) = ctx
                .store
                .finish_build(id, &owner, BuildOutcome::Terminated)
                .await
            {
                tracing::error!(
                    error = format!("{e:#}"),
                    "recording the build outcome failed"
                );
            }
        }
        .instrument(span)
        .await;
    }
}

/// Whether a pull request's changes select its build under the watch paths of `check`: the files
/// changed from the merge base of its base branch (the head the event saw, else the branch's head
/// now) and `head`, and the commits in between, evaluated like a push's (on a blocking thread).
async fn pull_request_selected(
    mirror: &Mirror,
    check: &WatchPathCheck,
    head: &str,
) -> anyhow::Result<bool> {
    let mut base = None;
    if let Some(sha) = &check.base_sha {
        match mirror
            .resolve(check.base_branch.as_deref(), Some(sha))
            .await
        {
            Ok(resolved) => base = Some(resolved.sha),
            Err(e) if matches!(GitError::find(&e), Some(GitError::UnknownCommit(_))) => {}
            Err(e) => return Err(e),
        }
    }
    let base = match (base, &check.base_branch) {
        (Some(base), _) => base,
        (None, Some(branch)) => mirror.resolve(Some(branch), None).await?.sha,
        (None, None) => anyhow::bail!("the event named no base branch"),
    };
    let merge_base = mirror.merge_base(&base, head).await?.ok_or_else(|| {
        anyhow::anyhow!("the pull request shares no history with its base branch")
    })?;
    let changed = mirror.changed_paths(&merge_base, head).await?;
    let commits = mirror.count_commits(&merge_base, head).await?;
    let (includes, excludes) = (check.includes.clone(), check.excludes.clone());
    tokio::task::spawn_blocking(move || paths_selected(&includes, &excludes, &changed, commits))
        .await
        .map_err(|e| anyhow::anyhow!("matching the watch paths failed: {e}"))
}

/// Aborts a task when dropped (also when the owner unwinds).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn execute_build(
    ctx: Arc<RunnerContext>,
    build: ClaimedBuild,
    owner: String,
    lease: Duration,
    stop_tx: watch::Sender<Stop>,
    stop_rx: watch::Receiver<Stop>,
) {
    let ctx = &*ctx;
    let owner = owner.as_str();
    let id = build.id;
    let claimed = std::time::Instant::now();
    let _busy = ctx.metrics.build_claimed(build.created_on);
    let renewal = AbortOnDrop(tokio::spawn(
        renew_lease(ctx.store.clone(), id, owner.to_owned(), lease, stop_tx).in_current_span(),
    ));
    let workspace = ctx.data_dir.join("workspaces").join(id.to_string());
    let masker = Masker::new(secret_values(&build)).map(Arc::new);
    let sink = LogSink::with_config(
        (ctx.store.clone(), id),
        LogSinkConfig {
            cap_bytes: ctx.config.log_cap_bytes,
            metrics: Some(ctx.metrics.logs()),
            ..LogSinkConfig::default()
        },
    );
    // This build's own uid for its whole run: builds running at the same time never share one.
    let user_lease = match &ctx.build_users {
        Some(pool) => Some(pool.acquire().await),
        None => None,
    };
    // The build's cgroups: its steps' limits, and what recovery finds it by on this host.
    let scope = Arc::new(BuildScope::create(&id.to_string(), ctx.config.limits));
    let mut run = Run {
        ctx,
        scope: scope.clone(),
        build_user: user_lease.as_ref().map(|lease| lease.user),
        build: &build,
        owner,
        lease,
        workspace: &workspace,
        masker: masker
            .as_ref()
            .map_or_else(|_| Arc::new(Masker::disabled()), Arc::clone),
        sink: &sink,
        stop: stop_rx,
        deadline: Instant::now() + ctx.config.build_timeout,
        commit_record: None,
    };
    let result = match &masker {
        Ok(_) => run.execute().await,
        Err(e) => {
            // Without masking no output may be stored: fail before running anything.
            tracing::error!(
                error = format!("{e:#}"),
                "building the secret masker failed"
            );
            run.system("Failed: could not prepare secret masking for this build")
                .await;
            Ok(BuildOutcome::Fail)
        }
    };
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(Interrupted::TimedOut) => {
            run.system("Build was timed out").await;
            BuildOutcome::Terminated
        }
        Err(Interrupted::Limit(exceeded)) => {
            run.system(&exceeded.to_string()).await;
            BuildOutcome::Fail
        }
        Err(Interrupted::Stopped(Stop::Cancel)) => {
            run.system("Build was cancelled").await;
            BuildOutcome::Cancelled
        }
        Err(Interrupted::Stopped(Stop::LeaseLost)) => {
            run.system("Build terminated: this runner lost its claim on the build.")
                .await;
            BuildOutcome::Terminated
        }
        Err(Interrupted::Stopped(_)) => {
            run.system("Build terminated: the Kiln server stopped while the build was running. Retry the build.")
                .await;
            BuildOutcome::Terminated
        }
    };
    let commit_record = run.commit_record.take();
    // What ends the build is recorded even when the store cannot take it right now (a full disk):
    // it is retried until the store is back, unless Kiln shuts down meanwhile.
    let mut stop = run.stop.clone();
    drop(run);
    // Nothing of the build may run once its outcome is recorded (whatever a step left, even a
    // process that escaped its step's cgroup into the build's).
    let closing = scope.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || closing.close()).await {
        tracing::error!(error = %e, "ending the build's cgroups failed");
    }
    let summary = match sink.finish().await {
        Ok(summary) => summary,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "finishing the build log failed");
            LogSummary::default()
        }
    };
    let version = built_version(&workspace, summary.version_id.as_deref()).await;
    // The workspace goes before the store is waited for: a build that filled the disk the store
    // shares must not keep it full.
    let ws = workspace.clone();
    match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&ws)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "removing the workspace failed"),
        Err(e) => tracing::warn!(error = %e, "removing the workspace failed"),
    }
    if let Some(record) = commit_record {
        match record.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "recording the commit failed"),
            Err(e) => tracing::error!(error = %e, "recording the commit failed"),
        }
    }
    if let Some(line) = summary.unwritten_line() {
        let lines = [(Timestamp::now(), line)];
        let stored = until_stored(&mut stop, on_shutdown, || {
            ctx.store.append_build_logs(id, &lines)
        })
        .await;
        if let Err(e) = stored {
            tracing::error!(
                error = format!("{e:#}"),
                "logging the missing log lines failed"
            );
        }
    }
    if let Some(version) = version {
        let stored = until_stored(&mut stop, on_shutdown, || {
            ctx.store.insert_build_version(&build.account, version, id)
        })
        .await;
        if let Err(e) = stored {
            tracing::error!(
                error = format!("{e:#}"),
                "recording the build's version failed"
            );
        }
    }
    let finished = until_stored(&mut stop, on_shutdown, || {
        ctx.store.finish_build(id, owner, outcome)
    })
    .await;
    match finished {
        Ok(true) => {
            ctx.metrics.build_finished(outcome, claimed.elapsed());
            tracing::info!(outcome = outcome.as_str(), "build finished");
        }
        Ok(false) => tracing::info!("build had already been stopped"),
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "recording the build outcome failed"
        ),
    }
    // Renew until the outcome is recorded, so that a slow store cannot make the build look lost.
    drop(renewal);
}

/// The values to mask, by name: secret variables and the build token.
fn secret_values(build: &ClaimedBuild) -> Vec<(String, String)> {
    build
        .secrets
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(
            build
                .secrets
                .build_token
                .clone()
                .map(|t| ("the build token".to_owned(), t)),
        )
        .collect()
}

struct Run<'a> {
    ctx: &'a RunnerContext,
    /// The build's cgroups and limits, shared by its steps.
    scope: Arc<BuildScope>,
    /// The unprivileged user this build's steps run as (`None`: Kiln's own).
    build_user: Option<BuildUser>,
    build: &'a ClaimedBuild,
    owner: &'a str,
    lease: Duration,
    workspace: &'a Path,
    masker: Arc<Masker>,
    sink: &'a LogSink,
    stop: watch::Receiver<Stop>,
    deadline: Instant,
    /// Records the checked-out commit's message and author in the metadata.
    commit_record: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A step's end: its exit code, or `None` when it was killed by a signal.
type ExitCode = Option<i32>;

/// Writes Kiln's own lines into a build's log, masked like user output.
#[derive(Clone, Copy)]
struct SystemLog<'a> {
    sink: &'a LogSink,
    masker: &'a Masker,
}

impl SystemLog<'_> {
    async fn line(&self, line: &str) {
        let masked = self.masker.mask_str(line).into_owned();
        if let Err(e) = self.sink.push(Timestamp::now(), masked).await {
            tracing::error!(error = format!("{e:#}"), "logging a system line failed");
        }
    }
}

impl Run<'_> {
    /// Logs the hosted product's clone failure with its cause; the build fails.
    async fn clone_failed(&self, e: &anyhow::Error) -> BuildOutcome {
        self.system(&format!(
            "Failed: error occurred while cloning the repository: {e:#}"
        ))
        .await;
        self.say_if_disk_full(Some(e)).await;
        BuildOutcome::Fail
    }

    /// After a failure that ends the build: logs [`DISK_FULL_LINE`] when `e` says the disk is full
    /// or the workspace's disk is full now. Then nothing of the build runs any more, so what it wrote
    /// (checkout, HOME, TMPDIR; not the wrangler output) is removed first: its last lines, and the
    /// store when it shares the disk, need the room.
    async fn say_if_disk_full(&self, e: Option<&anyhow::Error>) {
        let workspace = self.workspace.to_path_buf();
        let full = e.is_some_and(crate::disk::is_full_error);
        let freed = tokio::task::spawn_blocking(move || {
            if !full && !crate::disk::is_full(&workspace) {
                return false;
            }
            for dir in ["repo", "home", "tmp"] {
                match std::fs::remove_dir_all(workspace.join(dir)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(error = %e, dir, "freeing the workspace failed"),
                }
            }
            true
        })
        .await;
        if freed.unwrap_or(full) {
            self.system(DISK_FULL_LINE).await;
        }
    }

    /// A system line, masked like user output.
    async fn system(&self, line: &str) {
        SystemLog {
            sink: self.sink,
            masker: &self.masker,
        }
        .line(line)
        .await;
    }

    /// Waits for `fut` unless the build is stopped or times out first.
    async fn guard<T>(
        &mut self,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, Interrupted> {
        let current = *self.stop.borrow();
        if current != Stop::No {
            return Err(Interrupted::Stopped(current));
        }
        tokio::select! {
            v = fut => Ok(v),
            _ = tokio::time::sleep_until(self.deadline) => Err(Interrupted::TimedOut),
            why = wait_stop(&mut self.stop) => Err(Interrupted::Stopped(why)),
        }
    }

    async fn execute(&mut self) -> Result<BuildOutcome, Interrupted> {
        let id = self.build.id;
        let meta = &self.build.metadata;
        self.system(crate::domain::INIT_LINE).await;
        if let Err(e) = prepare_workspace(self.workspace, self.build_user).await {
            tracing::error!(error = format!("{e:#}"), "preparing the workspace failed");
            self.system("Failed: could not prepare the build environment")
                .await;
            self.say_if_disk_full(Some(&e)).await;
            return Ok(BuildOutcome::Fail);
        }
        let Some(token) = self.build.secrets.build_token.clone() else {
            self.system(STALE_TOKEN_LINE).await;
            return Ok(BuildOutcome::Fail);
        };
        for skipped in self.masker.skipped() {
            self.system(&format!(
                "Warning: the value of secret {skipped} is too short to be masked in logs"
            ))
            .await;
        }
        // Versions chosen by variables are known before the clone: an unknown one fails here.
        let vars = env::var_map(&env::build_env(
            self.build,
            &env::EnvContext {
                workspace: self.workspace,
                token: &token,
                branch: None,
                sha: "",
                mode: self.ctx.config.sandbox,
                host: &self.ctx.config.host_env,
            },
        ));
        let checked = self
            .guard(tools::check_version_variables(&self.ctx.toolchains, &vars))
            .await?;
        if let Err(failed) = checked {
            self.system(&failed.line).await;
            return Ok(BuildOutcome::Fail);
        }
        // A pull-request build checks its trigger's watch paths on the pull request's changes: its
        // event listed no files.
        let (mut early_token, mut prefetched) = (None, None);
        if let Some(check) = self.build.watch_paths.clone() {
            let token = match self.clone_credentials().await {
                Ok(token) => token,
                Err(line) => {
                    self.system(&line).await;
                    return Ok(BuildOutcome::Fail);
                }
            };
            match self.check_watch_paths(&check, token.as_deref()).await? {
                WatchPaths::Skip => return Ok(BuildOutcome::Skipped),
                WatchPaths::Build(fetched) => prefetched = fetched,
            }
            early_token = Some(token);
        }
        self.system("Success: Finished initializing build environment")
            .await;
        let (store, owner) = (&self.ctx.store, self.owner);
        let mut stop = self.stop.clone();
        match until_stored(&mut stop, on_any_stop, || {
            store.set_build_running(id, owner)
        })
        .await
        {
            Ok(true) => {}
            // Cancelled (or recovered elsewhere) between the claim and now.
            Ok(false) => return Err(Interrupted::Stopped(why_lost(&self.ctx.store, id).await)),
            Err(e) => tracing::error!(error = format!("{e:#}"), "marking the build running failed"),
        }

        self.system(crate::domain::CLONE_LINE).await;
        // Before anything is fetched or pushed: whether this account may reach the repository at all.
        let credentials = match early_token {
            Some(token) => Ok(token),
            None => self.clone_credentials().await,
        };
        let github_token = match credentials {
            Ok(token) => token,
            Err(line) => {
                self.system(&line).await;
                return Ok(BuildOutcome::Fail);
            }
        };
        let repo = self.workspace.join("repo");
        let git = self.ctx.git.clone();
        let (owner_name, repo_name) = (meta.provider_account_name.clone(), meta.repo_name.clone());
        let (branch, commit) = (meta.branch.clone(), meta.commit_hash.clone());
        if let Some(seed) = &self.build.seed {
            let Some(target) = branch.clone() else {
                self.system("Failed: a seeded build needs a branch").await;
                return Ok(BuildOutcome::Fail);
            };
            self.system(&format!(
                "Seeding the repository from the template {}/{}...",
                seed.owner, seed.repository
            ))
            .await;
            let work = self.workspace.join("seed-work");
            let seeded = self
                .guard(git.seed(
                    &owner_name,
                    &repo_name,
                    &target,
                    seed,
                    &work,
                    self.build_user,
                ))
                .await?;
            match seeded {
                Ok(sha) => {
                    self.system(&format!(
                        "Pushed the first commit {} to {target}",
                        &sha[..sha.len().min(12)]
                    ))
                    .await;
                }
                Err(e) => {
                    self.system(&format!("Failed: could not seed the repository: {e:#}"))
                        .await;
                    return Ok(BuildOutcome::Fail);
                }
            }
        }
        let fetched = match prefetched {
            Some(fetched) => Ok(fetched),
            None => {
                self.guard(async {
                    let mirror = git
                        .mirror_with_token(&owner_name, &repo_name, github_token.as_deref())
                        .await?;
                    let resolved = mirror.resolve(branch.as_deref(), commit.as_deref()).await?;
                    anyhow::Ok((mirror, resolved))
                })
                .await?
            }
        };
        let (mirror, resolved) = match fetched {
            Ok(v) => v,
            Err(e) => return Ok(self.clone_failed(&e).await),
        };
        let root = meta.root_directory.trim_matches('/');
        let cwd = if root.is_empty() {
            repo.clone()
        } else {
            repo.join(root)
        };
        let env = env::build_env(
            self.build,
            &env::EnvContext {
                workspace: self.workspace,
                token: &token,
                branch: resolved.branch.as_deref(),
                sha: &resolved.sha,
                mode: self.ctx.config.sandbox,
                host: &self.ctx.config.host_env,
            },
        );
        let base = StepSpec {
            mode: self.ctx.config.sandbox,
            command: String::new(),
            cwd: cwd.clone(),
            env: env.clone(),
            workspace: self.workspace.to_path_buf(),
            hidden: std::iter::once(self.ctx.data_dir.clone())
                .chain(self.ctx.config.private_paths.iter().cloned())
                .chain(self.ctx.toolchains.internals())
                .collect(),
            read_only: vec![self.ctx.toolchains.root().to_path_buf()],
            user: self.build_user,
            scope: Some(self.scope.clone()),
        };
        // The first step's sandbox starts while the commit is checked out; it gets its command after.
        let mut held = match Step::spawn_held(&base) {
            Ok(step) => Some(step),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not prepare the first step early"
                );
                None
            }
        };
        let checked_out = self
            .guard(async {
                mirror.checkout(&resolved.sha, &repo).await?;
                git.checkout_submodules(&repo, &mirror, github_token.as_deref())
                    .await
            })
            .await?;
        let submodules = match checked_out {
            Ok(submodules) => submodules,
            Err(e) => return Ok(self.clone_failed(&e).await),
        };
        for sub in &submodules {
            self.system(&format!(
                "Checked out submodule {} at {}",
                sub.path,
                &sub.sha[..sub.sha.len().min(12)]
            ))
            .await;
        }
        let spec = |command: &str| StepSpec {
            command: command.to_owned(),
            ..base.clone()
        };
        if let Some(user) = self.build_user {
            let tree = repo.clone();
            let owned = tokio::task::spawn_blocking(move || give_tree(&tree, user)).await;
            if let Err(e) = owned.map_err(anyhow::Error::from).and_then(|r| r) {
                tracing::error!(
                    error = format!("{e:#}"),
                    "handing the checkout to the build user failed"
                );
                self.system("Failed: could not prepare the build environment")
                    .await;
                self.say_if_disk_full(Some(&e)).await;
                return Ok(BuildOutcome::Fail);
            }
        }
        // The commit's message and author go into the build's metadata off the critical path: the
        // build command starts meanwhile (awaited before the outcome is recorded).
        let (store, record_mirror) = (self.ctx.store.clone(), mirror.clone());
        let (sha, resolved_branch) = (resolved.sha.clone(), resolved.branch.clone());
        let mut stop = self.stop.clone();
        self.commit_record = Some(tokio::spawn(
            async move {
                let info = record_mirror.commit_info(&sha).await?;
                until_stored(&mut stop, on_shutdown, || {
                    store.set_build_commit(
                        id,
                        resolved_branch.as_deref(),
                        &sha,
                        &info.message,
                        &info.author,
                    )
                })
                .await
            }
            .in_current_span(),
        ));
        self.system(&format!(
            "HEAD is now at {}",
            &resolved.sha[..resolved.sha.len().min(12)]
        ))
        .await;

        // Pushed content: a root directory that is a link out of the checkout does not exist in it.
        let (tree, rel) = (repo.clone(), root.to_owned());
        let root_exists = tokio::task::spawn_blocking(move || {
            crate::untrusted::Tree::open(&tree).is_ok_and(|tree| tree.is_dir(&rel))
        })
        .await
        .unwrap_or(false);
        if !root_exists {
            self.system(&format!(
                "Failed: root directory {} does not exist in the repository",
                meta.root_directory
            ))
            .await;
            return Ok(BuildOutcome::Fail);
        }

        let dirs = Arc::new(project::load_project_dirs(&repo, root).await);
        let plan = plan_project(&dirs, &env::var_map(&env));
        let caching = self.build.build_caching_enabled && plan.manager.is_some();
        // Hashing a lockfile (up to tens of MB) is CPU work: off the async runtime.
        let key = match caching {
            true => {
                let (plan, dirs) = (plan.clone(), dirs.clone());
                tokio::task::spawn_blocking(move || caching::cache_key(&plan, &dirs))
                    .await
                    .ok()
            }
            false => None,
        };
        let home = self.workspace.join("home");
        let dependency_dirs = caching::dependency_dirs(&home);
        let output_dirs = caching::build_output_dirs(dirs.first(), &cwd);
        if let Some(key) = &key {
            self.restore_cache(CacheKind::Dependencies, key, &dependency_dirs)
                .await?;
        }
        let masker = self.masker.clone();
        let log = SystemLog {
            sink: self.sink,
            masker: &masker,
        };
        let provisioned = self
            .guard(tools::provision(&self.ctx.toolchains, &plan, log))
            .await?;
        match provisioned {
            Ok(installed) => {
                let bin = self.workspace.join(env::TOOLCHAIN_BIN_DIR);
                if let Err(e) = tools::link_commands(&bin, &installed).await {
                    tracing::error!(error = %e, "linking the toolchains failed");
                    self.system("Failed: could not prepare the build's tools")
                        .await;
                    self.say_if_disk_full(Some(&e.into())).await;
                    return Ok(BuildOutcome::Fail);
                }
            }
            // A project that is not a Node project and asks for nothing still builds with the host's
            // tools when the store cannot be filled (e.g. no registry access).
            Err(failed) if plan.manager.is_none() && plan.node.is_default() => {
                self.system(&format!(
                    "Warning: {}; continuing with the host's tools",
                    failed.line.trim_start_matches("Failed: ")
                ))
                .await;
            }
            Err(failed) => {
                self.system(&failed.line).await;
                return Ok(BuildOutcome::Fail);
            }
        }
        let install = plan
            .install_command()
            .filter(|_| !env::skip_install(&env))
            .zip(plan.install_dir.as_deref());
        if let Some((install, dir)) = install {
            self.system(&crate::domain::install_line(&install)).await;
            let mut step = spec(&install);
            if dir != root {
                // A workspace installs at its root; build and deploy still run in the root directory.
                step.cwd = if dir.is_empty() {
                    repo.clone()
                } else {
                    repo.join(dir)
                };
            }
            let early = if step.cwd == cwd { held.take() } else { None };
            if self.run_step(step, early).await? != Some(0) {
                self.system("Failed: error occurred while installing tools or dependencies")
                    .await;
                self.say_if_disk_full(None).await;
                return Ok(BuildOutcome::Fail);
            }
        }
        // Framework caches live in the root directory (some inside node_modules): after the install.
        if let Some(key) = key.as_ref().filter(|_| !output_dirs.is_empty()) {
            self.restore_cache(CacheKind::BuildOutput, key, &output_dirs)
                .await?;
        }
        for (kind, command) in [
            ("build", &meta.build_command),
            ("deploy", &meta.deploy_command),
        ] {
            if command.trim().is_empty() {
                continue;
            }
            self.system(&crate::domain::command_line(kind == "deploy", command))
                .await;
            if self.run_step(spec(command), held.take()).await? != Some(0) {
                self.system(&format!(
                    "Failed: error occurred while running {kind} command"
                ))
                .await;
                self.say_if_disk_full(None).await;
                return Ok(BuildOutcome::Fail);
            }
            let done = if kind == "build" { "Build" } else { "Deploy" };
            self.system(&format!("Success: {done} command completed"))
                .await;
        }
        if let Some(key) = &key {
            self.save_cache(CacheKind::Dependencies, key, &dependency_dirs)
                .await?;
            if !output_dirs.is_empty() {
                self.save_cache(CacheKind::BuildOutput, key, &output_dirs)
                    .await?;
            }
        }
        self.system("✨ Success! Build completed.").await;
        Ok(BuildOutcome::Success)
    }

    /// Restores one kind of cache entry into `dirs`, logging it as the hosted product does. A missing,
    /// corrupt or unreadable entry never fails the build: it is logged and the build goes on cold.
    async fn restore_cache(
        &mut self,
        kind: CacheKind,
        key: &str,
        dirs: &[CacheDir],
    ) -> Result<(), Interrupted> {
        let label = caching::label(kind);
        self.system(&crate::domain::restore_cache_line(label)).await;
        let owner = self.build_user.map(|u| (u.uid, u.gid));
        let trigger = self.build.trigger.to_string();
        let cache = self.ctx.cache.clone();
        let restored = self
            .guard(cache.restore(&trigger, kind, key, dirs, owner))
            .await?;
        match restored {
            Ok(Restored::Exact | Restored::Fallback) => {
                let what = match kind {
                    CacheKind::Dependencies => "Dependencies",
                    CacheKind::BuildOutput => "Build output",
                };
                self.system(&format!("Success: {what} restored from build cache."))
                    .await;
            }
            Ok(Restored::Miss) => {
                self.system(&format!(
                    "No {label} cache found for this trigger yet: building without it"
                ))
                .await;
            }
            Err(e) => {
                // The cache removes what it half-restored; the details (paths) stay in Kiln's log.
                tracing::warn!(error = format!("{e:#}"), "restoring the build cache failed");
                let why = if crate::disk::is_full_error(&e) {
                    "the disk is full"
                } else {
                    "the entry is damaged or unusable"
                };
                self.system(&format!(
                    "Failed to restore {label} cache: {why}; building without it"
                ))
                .await;
            }
        }
        Ok(())
    }

    /// Saves one kind of cache entry from `dirs`; a failure is logged and does not fail the build.
    async fn save_cache(
        &mut self,
        kind: CacheKind,
        key: &str,
        dirs: &[CacheDir],
    ) -> Result<(), Interrupted> {
        let label = caching::label(kind);
        self.system(&crate::domain::save_cache_line(label)).await;
        let trigger = self.build.trigger.to_string();
        let cache = self.ctx.cache.clone();
        let saved = self.guard(cache.save(&trigger, kind, key, dirs)).await?;
        match saved {
            Ok(0) => {
                self.system(&format!("Nothing to save in the {label} cache"))
                    .await
            }
            Ok(bytes) => {
                self.system(&format!(
                    "Success: {label} cache saved ({:.1} MB)",
                    bytes as f64 / 1_000_000.0
                ))
                .await;
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "saving the build cache failed");
                let why = if crate::disk::is_full_error(&e) {
                    "the disk is full"
                } else {
                    "too large or unreadable"
                };
                self.system(&format!(
                    "Warning: could not save the {label} cache ({why})"
                ))
                .await;
            }
        }
        Ok(())
    }

    /// Fetches the mirror and checks the pull request's changes against the trigger's watch paths
    /// ([`WatchPathCheck`]). Changes that cannot be read (a fetch failure, which the clone step then
    /// reports; a base branch gone) build, with a warning.
    async fn check_watch_paths(
        &mut self,
        check: &WatchPathCheck,
        token: Option<&str>,
    ) -> Result<WatchPaths, Interrupted> {
        let meta = &self.build.metadata;
        let git = self.ctx.git.clone();
        let (owner, repo) = (meta.provider_account_name.clone(), meta.repo_name.clone());
        let (branch, commit) = (meta.branch.clone(), meta.commit_hash.clone());
        let fetched = self
            .guard(async {
                let mirror = git.mirror_with_token(&owner, &repo, token).await?;
                let resolved = mirror.resolve(branch.as_deref(), commit.as_deref()).await?;
                anyhow::Ok((mirror, resolved))
            })
            .await?;
        let Ok((mirror, resolved)) = fetched else {
            return Ok(WatchPaths::Build(None));
        };
        match self
            .guard(pull_request_selected(&mirror, check, &resolved.sha))
            .await?
        {
            Ok(true) => {}
            Ok(false) => {
                self.system(WATCH_PATHS_SKIPPED_LINE).await;
                return Ok(WatchPaths::Skip);
            }
            Err(e) => {
                self.system(&format!(
                    "Warning: could not read the pull request's changes to check the build watch paths ({e:#}); building"
                ))
                .await;
            }
        }
        Ok(WatchPaths::Build(Some((mirror, resolved))))
    }

    /// The installation token the build's repository is fetched with ([`crate::github::repo_access`]):
    /// `Ok(Some(token))` when the build's account owns the App installation that covers it, `Ok(None)`
    /// to fetch without one (no App, no installation covers the repository, or GitHub could not be
    /// asked: a fetch without a token reveals nothing), `Err(line)`, the build's failure line, when an
    /// installation the account is not linked to covers it (no token is made, nothing is fetched).
    async fn clone_credentials(&self) -> Result<Option<String>, String> {
        let meta = &self.build.metadata;
        let repo = crate::github::RepoRef {
            provider_type: meta.provider_type,
            repo_id: &self.build.repo_id,
            owner: &meta.provider_account_name,
            name: &meta.repo_name,
        };
        let app = self.ctx.github.as_deref();
        let access =
            crate::github::repo_access(&self.ctx.store, app, &self.build.account, repo).await;
        let installation = match access {
            Ok(RepoAccess::Installation(i)) => i,
            Ok(RepoAccess::WithoutToken) => return Ok(None),
            Ok(RepoAccess::NotLinked) => {
                tracing::warn!(
                    repo = format!("{}/{}", repo.owner, repo.name),
                    "the repository's GitHub App installation is not linked to the build's account"
                );
                return Err(format!(
                    "Failed: {}/{} is covered by a GitHub App installation that is not linked to this \
                     account; a Kiln operator links it with `kiln installations link`",
                    repo.owner, repo.name
                ));
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not find the repository's installation: cloning without a token"
                );
                return Ok(None);
            }
        };
        let Some(app) = app else {
            return Ok(None);
        };
        match app.installation_token(installation).await {
            Ok(token) => Ok(Some(token)),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "no installation token: cloning without one"
                );
                Ok(None)
            }
        }
    }

    /// Runs one command, in `held` (a step spawned early with [`Step::spawn_held`]) when given.
    async fn run_step(
        &mut self,
        spec: StepSpec,
        held: Option<Step>,
    ) -> Result<ExitCode, Interrupted> {
        // A cancel through another node reaches this one through the store: look before each step,
        // so that a cancelled build never starts its deploy.
        match self
            .ctx
            .store
            .renew_lease(self.build.id, self.owner, lease_until(self.lease))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return Err(Interrupted::Stopped(
                    why_lost(&self.ctx.store, self.build.id).await,
                ));
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "renewing the lease failed"),
        }
        // Every step starts held and gets its command once its sandbox is set up (so that its
        // tmpfs can be looked at if it fails).
        let held = match held {
            Some(step) => Some(step),
            None => match Step::spawn_held(&spec) {
                Ok(step) => Some(step),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "starting a held step failed");
                    None
                }
            },
        };
        let released = match held {
            Some(mut step) => match step.release(&spec.command).await {
                Ok(()) => Some(step),
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "the early step failed; starting it again"
                    );
                    None
                }
            },
            None => None,
        };
        let spawned = match released {
            Some(step) => Ok(step),
            None => Step::spawn(&spec),
        };
        let mut step = match spawned {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "starting a step failed");
                self.system("Failed: could not start the command").await;
                return Ok(Some(127));
            }
        };
        let Some((stdout, stderr)) = step.take_output() else {
            self.system("Failed: could not read the command's output")
                .await;
            return Ok(Some(127));
        };
        let masker = self.masker.clone();
        let sink = self.sink;
        let monitor = watch_limits(
            self.scope.clone(),
            self.workspace.to_path_buf(),
            self.ctx.config.limit_check_interval,
        );
        let waiting = async {
            let (pumped, status) = tokio::join!(pump(stdout, stderr, masker, sink), step.wait());
            if let Err(e) = pumped {
                tracing::error!(
                    error = format!("{e:#}"),
                    "reading the command's output failed"
                );
            }
            status
        };
        let result = self
            .guard(async {
                tokio::select! {
                    status = waiting => Ok(status),
                    exceeded = monitor => Err(exceeded),
                }
            })
            .await;
        let code = match result {
            Ok(Ok(Ok(status))) => status.code(),
            Ok(Ok(Err(e))) => {
                tracing::error!(error = format!("{e:#}"), "waiting for a step failed");
                None
            }
            Ok(Err(exceeded)) => {
                if let Err(e) = step.terminate(self.ctx.config.cancel_grace).await {
                    tracing::error!(error = format!("{e:#}"), "stopping a step failed");
                }
                return Err(Interrupted::Limit(exceeded));
            }
            Err(why) => {
                if let Err(e) = step.terminate(self.ctx.config.cancel_grace).await {
                    tracing::error!(error = format!("{e:#}"), "stopping a step failed");
                }
                return Err(why);
            }
        };
        // A limit that struck during the step (it may have failed for it, or exited before the
        // monitor looked) stops the build; a full tmpfs explains a failure.
        let failed = code != Some(0);
        let exceeded = match self.scope.exceeded() {
            Some(exceeded) => Some(exceeded),
            None => {
                let limit = self.ctx.config.limits.disk_bytes;
                match disk_usage(self.workspace.to_path_buf(), limit).await {
                    Some(used) if used > limit || (failed && used >= limit) => {
                        Some(Exceeded::Disk(limit))
                    }
                    _ if failed => step.full_tmpfs(),
                    _ => None,
                }
            }
        };
        match exceeded {
            Some(exceeded) => Err(Interrupted::Limit(exceeded)),
            None => Ok(code),
        }
    }
}

/// Resolves once the build goes past a limit: its cgroups' memory or process limit (looked at
/// every `interval`), or the disk limit (the workspace measured every `interval`, or every ten
/// times the last measurement took when that is longer). Pending forever otherwise.
async fn watch_limits(scope: Arc<BuildScope>, workspace: PathBuf, interval: Duration) -> Exceeded {
    let limit = scope.limits().disk_bytes;
    let mut next_measure = Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        if let Some(exceeded) = scope.exceeded() {
            return exceeded;
        }
        if Instant::now() >= next_measure {
            let started = Instant::now();
            if disk_usage(workspace.clone(), limit)
                .await
                .is_some_and(|used| used > limit)
            {
                return Exceeded::Disk(limit);
            }
            next_measure = Instant::now() + started.elapsed() * 10;
        }
    }
}

/// Bytes the workspace uses on disk (stopping the count past `limit`); `None` when it cannot be
/// measured.
async fn disk_usage(workspace: PathBuf, limit: u64) -> Option<u64> {
    let measured = tokio::task::spawn_blocking(move || {
        crate::untrusted::Tree::open(&workspace)?.disk_usage(limit)
    })
    .await;
    match measured {
        Ok(Ok(used)) => Some(used),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "measuring the workspace failed");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "measuring the workspace failed");
            None
        }
    }
}

async fn wait_stop(rx: &mut watch::Receiver<Stop>) -> Stop {
    loop {
        if rx.changed().await.is_err() {
            // The scheduler is gone: treat as a shutdown.
            return Stop::Shutdown;
        }
        let v = *rx.borrow();
        if v != Stop::No {
            return v;
        }
    }
}

/// Creates the workspace with the build's HOME, TMPDIR and wrangler output dir, all owned by `user`
/// (when steps run as one) and private to it.
async fn prepare_workspace(ws: &Path, user: Option<BuildUser>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for dir in ["home", "tmp", env::WRANGLER_OUTPUT_DIR] {
        tokio::fs::create_dir_all(ws.join(dir)).await?;
    }
    for dir in [
        ws,
        &ws.join("home"),
        &ws.join("tmp"),
        &ws.join(env::WRANGLER_OUTPUT_DIR),
    ] {
        if let Some(user) = user {
            std::os::unix::fs::lchown(dir, Some(user.uid), Some(user.gid))?;
        }
        tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).await?;
    }
    Ok(())
}

/// Gives the checked-out tree to the build user. The content is the build's (symlinks anywhere
/// included): links themselves are changed, never followed, and never descended into. Files with
/// more than one link are the mirror's objects linked into the checkout ([`crate::git::Mirror::checkout`]):
/// they stay Kiln's (read-only to the build), or the build could rewrite the mirror through them.
fn give_tree(root: &Path, user: BuildUser) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        std::os::unix::fs::lchown(&dir, Some(user.uid), Some(user.gid))
            .with_context(|| format!("chown {}", dir.display()))?;
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let path = entry.path();
            // `file_type` is the entry's own type (lstat): a symlink to a directory is a symlink.
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file()
                && std::os::unix::fs::MetadataExt::nlink(
                    &std::fs::symlink_metadata(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                ) > 1
            {
                continue;
            } else {
                std::os::unix::fs::lchown(&path, Some(user.uid), Some(user.gid))
                    .with_context(|| format!("chown {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Renews the build's lease every third of its length; a lost lease stops the build.
async fn renew_lease(
    store: Store,
    id: BuildId,
    owner: String,
    lease: Duration,
    stop: watch::Sender<Stop>,
) {
    let every = lease / 3;
    loop {
        tokio::time::sleep(every).await;
        match store.renew_lease(id, &owner, lease_until(lease)).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = stop.send(why_lost(&store, id).await);
                return;
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "renewing the lease failed"),
        }
    }
}

/// When a lease from now ends.
pub(crate) fn lease_until(lease: Duration) -> Timestamp {
    Timestamp::from_millis(Timestamp::now().millis() + lease.as_millis() as i64)
}

/// Why this runner no longer holds a build: a user cancelled it, or it was declared lost.
async fn why_lost(store: &Store, id: BuildId) -> Stop {
    match store.get_build_outcome(id).await {
        Ok(Some(BuildOutcome::Cancelled)) => Stop::Cancel,
        _ => Stop::LeaseLost,
    }
}

/// The Worker version the deploy produced: wrangler's ND-JSON output first, then the version line
/// printed in the log; `None` when there is none or it is not a UUID.
async fn built_version(ws: &Path, printed: Option<&str>) -> Option<VersionId> {
    let from_file = env::version_from_wrangler_output(ws).await;
    let version = from_file.or_else(|| printed.map(str::to_owned))?;
    match VersionId::parse("version_id", &version) {
        Ok(version) => Some(version),
        Err(_) => {
            tracing::warn!("ignoring a version id that is not a UUID");
            None
        }
    }
}
