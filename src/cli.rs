//! The `kiln` command line: `serve`, `tokens`, `accounts`, `installations` and `toolchains` on the
//! data dir, and the client commands that call a server's API ([`client`]).

pub mod client;
mod secrets;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use std::time::Duration;

use crate::api::Limits;
use crate::crypto::{hash_credential, new_credential};
use crate::domain::{AccountId, AccountScope, ApiToken, CredentialKind, Permission, Timestamp};
use crate::runner::RunnerConfig;
use crate::sandbox::{BuildLimits, BuildUserSpec, SandboxMode};
use crate::scheduler::SchedulerConfig;
use crate::startup::{self, ServeConfig, Server, StoreConfig};
use crate::toolchain::{Tool, ToolchainStore, bundled_npm_spec};

/// Kiln: a self-hosted build service speaking the Cloudflare Workers Builds API.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, after_help = client::EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API server.
    Serve(Box<ServeArgs>),
    /// Manage API tokens.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Per-account build limits.
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Which accounts own which GitHub App installations (what they may build, clone and report on).
    Installations {
        #[command(subcommand)]
        command: InstallationsCommand,
    },
    /// The toolchain store (Node.js, npm, pnpm, yarn, bun).
    Toolchains {
        #[command(subcommand)]
        command: ToolchainsCommand,
    },
    #[command(flatten)]
    Client(client::ClientCommand),
}

#[derive(Debug, Subcommand)]
pub enum ToolchainsCommand {
    /// Install toolchains: `node@22 pnpm@10 yarn@4.9.1 bun` (a bare name: the hosted default).
    /// Installing Node also installs the npm it bundles.
    Install {
        /// `tool@spec` or `tool`; tools: node, npm, pnpm, yarn, bun; specs: `22`, `22.16.0`, `^10`, …
        #[arg(required = true, value_name = "TOOL@SPEC")]
        tools: Vec<String>,
        #[command(flatten)]
        store: ToolchainArgs,
    },
    /// List installed toolchains.
    List {
        #[command(flatten)]
        store: ToolchainArgs,
    },
}

/// Where the toolchain store is and where it fills from.
#[derive(Debug, Args)]
pub struct ToolchainArgs {
    /// Kiln's data directory; the store is `<data-dir>/toolchains` unless `--toolchain-dir` says.
    #[arg(long, env = "KILN_DATA_DIR", default_value = "./kiln-data")]
    pub data_dir: PathBuf,
    /// The toolchain store directory.
    #[arg(long, env = "KILN_TOOLCHAIN_DIR")]
    pub toolchain_dir: Option<PathBuf>,
    /// The npm registry toolchains are fetched from.
    #[arg(long, env = "KILN_NPM_REGISTRY", default_value = crate::toolchain::DEFAULT_REGISTRY, hide_env_values = true)]
    pub npm_registry: String,
}

impl ToolchainArgs {
    fn open(&self) -> anyhow::Result<ToolchainStore> {
        let root = self
            .toolchain_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("toolchains"));
        ToolchainStore::open(root, &self.npm_registry)
    }
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Set an account's concurrent builds and/or monthly build minutes.
    Set {
        /// The account id.
        account: String,
        /// Builds of this account that may run at once.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Build minutes per calendar month.
        #[arg(long)]
        build_minutes: Option<u32>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show the accounts with their own limits.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// The links between accounts and GitHub App installations. A repository covered by an installation
/// is built from GitHub's deliveries, cloned with the installation's token and reported on (check runs,
/// pull request comments) only for the accounts linked to it; nothing in the API can make the link.
#[derive(Debug, Subcommand)]
pub enum InstallationsCommand {
    /// Link an account to an installation (the account then builds the repositories it covers).
    Link(InstallationArgs),
    /// Remove a link: the account's builds of those repositories fail at their clone from now on.
    Unlink(InstallationArgs),
    /// Show the links.
    List {
        /// Only this account's links.
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// One account ↔ installation link.
#[derive(Debug, Args)]
pub struct InstallationArgs {
    /// The account id.
    #[arg(long)]
    pub account: String,
    /// GitHub's numeric id of the App installation (`installation.id` of its webhook deliveries; the
    /// number at the end of the installation's settings URL).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub installation: i64,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Where the data lives (shared by every command that opens the store).
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Directory for the SQLite database, the secret key and build workspaces.
    #[arg(long, env = "KILN_DATA_DIR", default_value = "./kiln-data")]
    pub data_dir: PathBuf,
    /// Database URL: `sqlite://…` or `postgres://…` (default: a SQLite file in the data dir). One
    /// with a password belongs in `--database-url-file`: arguments are visible to every local user.
    #[arg(
        long,
        env = "KILN_DATABASE_URL",
        hide_env_values = true,
        conflicts_with = "database_url_file"
    )]
    pub database_url: Option<String>,
    /// A file holding the database URL.
    #[arg(long, env = "KILN_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// A file holding the 32-byte key (hex or base64) that seals secrets at rest, instead of the
    /// environment variable `KILN_SECRET_KEY` (default: `secret.key` in the data dir, created 0600).
    #[arg(long, env = "KILN_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
}

impl StoreArgs {
    fn config(&self) -> anyhow::Result<StoreConfig> {
        let database_url = match &self.database_url_file {
            Some(path) => Some(secrets::read_secret_file("database URL", path)?),
            None => self.database_url.clone(),
        };
        // A key is read from a file or the environment only: on the command line it would show in `ps`.
        let env_key = std::env::var("KILN_SECRET_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        let secret_key = match (&self.secret_key_file, env_key) {
            (Some(_), Some(_)) => {
                anyhow::bail!(
                    "give the secret key in KILN_SECRET_KEY or --secret-key-file, not both"
                )
            }
            (Some(path), None) => Some(secrets::read_secret_file("secret key", path)?),
            (None, key) => key,
        };
        Ok(StoreConfig {
            data_dir: self.data_dir.clone(),
            database_url,
            secret_key,
        })
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// An API token accepted with write permission on all accounts (stored hashed): at least 32
    /// characters, e.g. `openssl rand -hex 32`. Prefer `--bootstrap-token-file`: arguments are
    /// visible to every local user.
    #[arg(
        long,
        env = "KILN_BOOTSTRAP_TOKEN",
        hide_env_values = true,
        conflicts_with = "bootstrap_token_file"
    )]
    pub bootstrap_token: Option<String>,
    /// A file holding the bootstrap token.
    #[arg(long, env = "KILN_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// The bearer token `GET /metrics` requires (at least 32 characters, e.g. `openssl rand -hex
    /// 32`); without one the metrics are open to every client. Prefer `--metrics-token-file`:
    /// arguments are visible to every local user.
    #[arg(
        long,
        env = "KILN_METRICS_TOKEN",
        hide_env_values = true,
        conflicts_with = "metrics_token_file"
    )]
    pub metrics_token: Option<String>,
    /// A file holding the metrics token.
    #[arg(long, env = "KILN_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// Build minutes per account per month (unless `kiln accounts set` says otherwise).
    #[arg(long, env = "KILN_BUILD_MINUTES", default_value_t = 3000)]
    pub build_minutes: i64,
    /// Build slots on this node (0: API only).
    #[arg(long, env = "KILN_RUNNERS", default_value_t = 2)]
    pub runners: usize,
    /// Live log streams (`…/logs/stream`) open at once on this node; more are refused with 429.
    #[arg(long, env = "KILN_MAX_LOG_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_log_streams: u32,
    /// Mark the dashboard's cookies `Secure` on every response (by default: when the request came
    /// over https, as `X-Forwarded-Proto` says, or `--public-url` is https).
    #[arg(long, env = "KILN_DASHBOARD_SECURE_COOKIES")]
    pub dashboard_secure_cookies: bool,
    /// A dashboard session ends this long after its last use.
    #[arg(long, env = "KILN_DASHBOARD_SESSION_IDLE", default_value = "2h", value_parser = parse_duration)]
    pub dashboard_session_idle: Duration,
    /// A dashboard session ends this long after sign-in, however it is used.
    #[arg(long, env = "KILN_DASHBOARD_SESSION_LIFETIME", default_value = "12h", value_parser = parse_duration)]
    pub dashboard_session_lifetime: Duration,
    /// Concurrent builds per account (unless `kiln accounts set` says otherwise).
    #[arg(long, env = "KILN_DEFAULT_CONCURRENCY", default_value_t = 2)]
    pub default_concurrency: u32,
    /// How build commands run: `bwrap` (bubblewrap sandbox) or `none` (directly on the host).
    #[arg(long, env = "KILN_SANDBOX", default_value = "bwrap")]
    pub sandbox: SandboxMode,
    /// Who build steps run as when Kiln runs as root: a user name (created as a system user if it
    /// does not exist) or numeric `uid:gid`. When Kiln is not root, steps run as Kiln's own user.
    #[arg(long, env = "KILN_BUILD_USER", default_value = crate::sandbox::DEFAULT_BUILD_USER)]
    pub build_user: BuildUserSpec,
    /// Longest a build may take, e.g. `20m`, `90s`, `1h`.
    #[arg(long, env = "KILN_BUILD_TIMEOUT", default_value = "20m", value_parser = parse_duration)]
    pub build_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when a build is cancelled or times out.
    #[arg(long, env = "KILN_CANCEL_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub cancel_grace: Duration,
    /// Failed authentications (unknown tokens, keys or deploy hook ids) one client address may make
    /// back to back before it gets 429; `0` turns the throttle off (e.g. behind a proxy that throttles).
    #[arg(long, env = "KILN_AUTH_FAILURE_BURST", default_value_t = crate::api::throttle::FAILURE_BURST)]
    pub auth_failure_burst: u32,
    /// Time after which a throttled client may fail once more, e.g. `6s`.
    #[arg(long, env = "KILN_AUTH_FAILURE_REFILL", default_value = "6s", value_parser = parse_duration)]
    pub auth_failure_refill: Duration,
    /// Stored log size per build in MiB; the head and the tail are kept.
    #[arg(long, env = "KILN_LOG_CAP_MIB", default_value_t = 50)]
    pub log_cap_mib: u64,
    /// How long a runner's claim on a build lasts without renewal (other nodes recover it after).
    #[arg(long, env = "KILN_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,
    /// How often to look for work and build events that no notification announced: builds queued
    /// and cancels made by other processes on one SQLite file, a PostgreSQL listener reconnecting.
    /// Wake-ups (in-process, and PostgreSQL `LISTEN/NOTIFY` across nodes) do not wait for it.
    #[arg(long, env = "KILN_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Clone URL of connected repositories; `{owner}` is the connection's `provider_account_name` and
    /// `{repo}` its `repo_name`.
    #[arg(long, env = "KILN_GIT_URL_TEMPLATE", default_value = crate::git::DEFAULT_URL_TEMPLATE)]
    pub git_url_template: String,
    /// Secret(s) of GitHub webhook signatures, comma-separated during a rotation. Prefer
    /// `--github-webhook-secret-file`: arguments are visible to every local user.
    #[arg(
        long,
        env = "KILN_GITHUB_WEBHOOK_SECRET",
        hide_env_values = true,
        value_delimiter = ',',
        conflicts_with = "github_webhook_secret_file"
    )]
    pub github_webhook_secret: Vec<String>,
    /// A file holding the webhook secret(s), one per line during a rotation.
    #[arg(long, env = "KILN_GITHUB_WEBHOOK_SECRET_FILE")]
    pub github_webhook_secret_file: Option<PathBuf>,
    /// GitHub's API (check runs are reported there when an App is configured).
    #[arg(
        long,
        env = "KILN_GITHUB_API_URL",
        default_value = "https://api.github.com"
    )]
    pub github_api_url: String,
    /// The GitHub App's id.
    #[arg(
        long,
        env = "KILN_GITHUB_APP_ID",
        requires = "github_app_private_key_path"
    )]
    pub github_app_id: Option<String>,
    /// The GitHub App's private key (PEM).
    #[arg(
        long,
        env = "KILN_GITHUB_APP_PRIVATE_KEY_PATH",
        requires = "github_app_id"
    )]
    pub github_app_private_key_path: Option<PathBuf>,
    /// The URL users reach this server at (check runs link to builds under it).
    #[arg(long, env = "KILN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// A build variable every build gets unless its trigger sets it (repeatable; in the environment
    /// variable, one `KEY=VALUE` per line).
    #[arg(long = "build-env", env = "KILN_BUILD_ENV", hide_env_values = true, value_parser = parse_key_value, value_delimiter = '\n')]
    pub build_env: Vec<(String, String)>,
    /// Variables of Kiln's own environment passed into every build when set (comma-separated;
    /// default: the proxy and CA variables).
    #[arg(
        long,
        env = "KILN_BUILD_ENV_PASSTHROUGH",
        value_delimiter = ',',
        default_values_t = crate::runner::DEFAULT_ENV_PASSTHROUGH.iter().map(|s| (*s).to_owned())
    )]
    pub build_env_passthrough: Vec<String>,
    /// The npm registry toolchains are fetched from, also handed to builds when not the default.
    #[arg(long, env = "KILN_NPM_REGISTRY", default_value = DEFAULT_NPM_REGISTRY, hide_env_values = true)]
    pub npm_registry: String,
    /// The toolchain store shared by builds (default: `<data-dir>/toolchains`).
    #[arg(long, env = "KILN_TOOLCHAIN_DIR")]
    pub toolchain_dir: Option<PathBuf>,
    /// HTTP connections served at once; further clients wait until one closes.
    #[arg(long, env = "KILN_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Time a client has to send a request's head (request line and header fields) from its first
    /// byte; the connection is closed after it.
    #[arg(long, env = "KILN_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's body once its head arrived; the answer is 408 after it.
    #[arg(long, env = "KILN_BODY_READ_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Time a connection may stay open without a request starting (a new one, or between keep-alive
    /// requests), or without its client reading the response; it is closed after it.
    #[arg(long, env = "KILN_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub notifications: NotificationArgs,
}

/// How event notifications are sent (see `crate::notify`).
#[derive(Debug, Args)]
pub struct NotificationArgs {
    /// Wait after a delivery's first failed attempt; it doubles with each further failure (half of
    /// each wait is random).
    #[arg(long, env = "KILN_NOTIFICATION_RETRY_BASE", default_value = "5s", value_parser = parse_duration)]
    pub notification_retry_base: Duration,
    /// Longest wait between two attempts of a delivery.
    #[arg(long, env = "KILN_NOTIFICATION_RETRY_MAX", default_value = "1h", value_parser = parse_duration)]
    pub notification_retry_max: Duration,
    /// How long a delivery is retried (from when it was queued or redelivered) before it is marked
    /// failed.
    #[arg(long, env = "KILN_NOTIFICATION_RETRY_FOR", default_value = "24h", value_parser = parse_duration)]
    pub notification_retry_for: Duration,
    /// Time limit of one delivery attempt: connecting, sending and reading the answer.
    #[arg(long, env = "KILN_NOTIFICATION_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub notification_timeout: Duration,
    /// Delivery attempts in flight at once on this node.
    #[arg(long, env = "KILN_NOTIFICATION_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub notification_concurrency: u32,
}

impl NotificationArgs {
    /// The settings these flags give.
    pub fn config(&self) -> crate::notify::NotifyConfig {
        crate::notify::NotifyConfig {
            retry: crate::domain::RetryPolicy {
                base: self.notification_retry_base,
                cap: self.notification_retry_max,
                window: self.notification_retry_for,
            },
            timeout: self.notification_timeout,
            concurrency: self.notification_concurrency as usize,
        }
    }
}

/// Per-build resource limits (sizes: `8G`, `512MiB`, `20GB`…; see [`parse_size`]).
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Memory of one build's processes together; past it the kernel kills one and the build fails.
    #[arg(long, env = "KILN_BUILD_MEMORY", default_value = "8GiB", value_parser = parse_size)]
    pub build_memory: u64,
    /// Processes and threads of one build at a time; a fork past it fails and the build fails.
    #[arg(long, env = "KILN_BUILD_PROCESSES", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub build_processes: u64,
    /// Disk one build's workspace may use (also the largest file it may write); past it the build
    /// is stopped and fails.
    #[arg(long, env = "KILN_BUILD_DISK", default_value = "20GiB", value_parser = parse_size)]
    pub build_disk: u64,
    /// Size of `/tmp` in the bwrap sandbox (a tmpfs, counted in the memory limit).
    #[arg(long, env = "KILN_BUILD_TMP_SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub build_tmp_size: u64,
    /// Size of `/dev/shm` in the bwrap sandbox (a tmpfs, counted in the memory limit).
    #[arg(long, env = "KILN_BUILD_SHM_SIZE", default_value = "256MiB", value_parser = parse_size)]
    pub build_shm_size: u64,
}

impl LimitArgs {
    /// The limits these flags give.
    pub fn limits(&self) -> BuildLimits {
        BuildLimits {
            memory_bytes: self.build_memory,
            processes: self.build_processes,
            disk_bytes: self.build_disk,
            tmp_bytes: self.build_tmp_size,
            shm_bytes: self.build_shm_size,
        }
    }
}

/// A size in bytes: a number with an optional unit. `K`, `M`, `G`, `T` (alone or with `iB`) are
/// binary (1024-based), as in `8G` = `8GiB`; `KB`, `MB`, `GB`, `TB` are decimal; `B` or no unit is
/// bytes. Zero is refused.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 8GiB, 512M or 20GB"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use K, M, G, T, KiB…, KB…)"
            ));
        }
    };
    let bytes = n
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err("must be more than zero".to_owned());
    }
    Ok(bytes)
}

use crate::toolchain::DEFAULT_REGISTRY as DEFAULT_NPM_REGISTRY;

/// `KEY=VALUE` with a variable name of letters, digits and `_`, not starting with a digit.
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    let valid = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!("{key:?} is not a valid variable name"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create an API token (or a global key) and print it once.
    Create(CreateTokenArgs),
    /// List API tokens (never their secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke an API token by id.
    Revoke {
        /// The token id shown by `kiln tokens list`.
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Args)]
pub struct CreateTokenArgs {
    /// Account the token may act on (repeatable).
    #[arg(long = "account", required_unless_present = "all_accounts")]
    pub accounts: Vec<String>,
    /// Let the token act on every account.
    #[arg(long, conflicts_with = "accounts")]
    pub all_accounts: bool,
    /// `read` (Workers CI Read) or `write` (Workers CI Write).
    #[arg(long, default_value = "write", value_parser = ["read", "write"])]
    pub permission: String,
    /// Create a global API key for `X-Auth-Email` + `X-Auth-Key` instead of a Bearer token.
    #[arg(long, requires = "email")]
    pub global_key: bool,
    /// The e-mail address that goes with a global key.
    #[arg(long)]
    pub email: Option<String>,
    /// A note to recognise the token by.
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Runs a parsed command line. A client command reports its own error and gives its exit code
/// ([`client::EXIT_CODES`]); the others' errors are returned.
pub async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    secrets::warn_about_argv_secrets(&std::env::args().collect::<Vec<_>>());
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Tokens { command } => tokens(command).await,
        Command::Accounts { command } => accounts(command).await,
        Command::Installations { command } => installations(command).await,
        Command::Toolchains { command } => toolchains(command).await,
        Command::Client(command) => return Ok(client::run(command).await),
    }
    .map(|()| std::process::ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let bootstrap_token = match &args.bootstrap_token_file {
        Some(path) => Some(secrets::read_secret_file("bootstrap token", path)?),
        None => args.bootstrap_token.clone(),
    };
    let metrics_token = match &args.metrics_token_file {
        Some(path) => Some(secrets::read_secret_file("metrics token", path)?),
        None => args.metrics_token.clone(),
    };
    let github_webhook_secrets: Vec<String> = match &args.github_webhook_secret_file {
        Some(path) => secrets::read_secret_file("GitHub webhook secret", path)?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => args.github_webhook_secret.clone(),
    };
    let github_app = match (&args.github_app_id, &args.github_app_private_key_path) {
        (Some(app_id), Some(path)) => Some(crate::github::AppConfig {
            api_url: args.github_api_url.clone(),
            app_id: app_id.clone(),
            private_key_pem: std::fs::read_to_string(path)
                .with_context(|| format!("reading the GitHub App key {}", path.display()))?,
        }),
        _ => None,
    };
    let config = ServeConfig {
        listen: args.listen,
        store: args.store.config()?,
        bootstrap_token,
        limits: Limits {
            build_minutes_per_month: args.build_minutes,
        },
        git_url_template: args.git_url_template,
        scheduler: SchedulerConfig {
            runners: args.runners,
            default_concurrency: i64::from(args.default_concurrency),
            lease: args.lease,
            poll_interval: args.poll_interval,
        },
        runner: RunnerConfig {
            sandbox: args.sandbox,
            build_timeout: args.build_timeout,
            cancel_grace: args.cancel_grace,
            log_cap_bytes: args.log_cap_mib.saturating_mul(1024 * 1024),
            host_env: crate::runner::HostEnv {
                passthrough: args
                    .build_env_passthrough
                    .into_iter()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect(),
                defaults: args.build_env,
                npm_registry: (args.npm_registry.trim_end_matches('/')
                    != DEFAULT_NPM_REGISTRY.trim_end_matches('/'))
                .then(|| args.npm_registry.clone()),
            },
            toolchain_dir: args.toolchain_dir,
            npm_registry: args.npm_registry,
            build_user: args.build_user,
            // Hidden from builds like the database (the files may be anywhere).
            private_paths: [
                args.github_app_private_key_path.clone(),
                args.bootstrap_token_file.clone(),
                args.metrics_token_file.clone(),
                args.github_webhook_secret_file.clone(),
                args.store.database_url_file.clone(),
                args.store.secret_key_file.clone(),
            ]
            .into_iter()
            .flatten()
            .collect(),
            limits: args.limits.limits(),
            ..RunnerConfig::default()
        },
        github_webhook_secrets: github_webhook_secrets
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        github_app,
        public_url: args.public_url,
        http: crate::listen::HttpConfig {
            max_connections: args.max_connections as usize,
            header_read_timeout: args.header_read_timeout,
            body_read_timeout: args.body_read_timeout,
            idle_timeout: args.idle_timeout,
        },
        auth_throttle: crate::api::throttle::ThrottleConfig {
            burst: args.auth_failure_burst,
            refill: args.auth_failure_refill,
        },
        metrics_token,
        notifications: args.notifications.config(),
        log_streams: crate::api::LogStreamConfig {
            max_streams: args.max_log_streams as usize,
            ..Default::default()
        },
        dashboard: crate::dashboard::DashboardConfig {
            secure_cookies: args.dashboard_secure_cookies,
            session_idle: args.dashboard_session_idle,
            session_lifetime: args.dashboard_session_lifetime,
        },
    };
    let mut server = Server::start(&config).await?;
    tracing::info!(addr = %server.addr, backend = ?server.store.backend(), "kiln listening on http://{}", server.addr);
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        result = server.wait() => return result,
    }
    server.stop().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn tokens(command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::Create(args) => {
            let store = startup::open_store(&args.store.config()?).await?;
            let scope = if args.all_accounts {
                AccountScope::All
            } else {
                AccountScope::Only(
                    args.accounts
                        .iter()
                        .map(|a| AccountId::parse(a).map_err(|e| anyhow::anyhow!("--account: {e}")))
                        .collect::<anyhow::Result<_>>()?,
                )
            };
            let permission = Permission::parse(&args.permission).context("--permission")?;
            let (kind, secret) = if args.global_key {
                (CredentialKind::GlobalKey, new_credential("kilnkey_"))
            } else {
                (CredentialKind::Token, new_credential("kiln_"))
            };
            let token = ApiToken {
                id: format!("tok_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
                kind,
                email: args.email.clone(),
                permission,
                scope,
                created_on: Timestamp::now(),
                revoked_on: None,
                label: args.label.clone(),
            };
            store
                .insert_api_token(&token, &hash_credential(&secret))
                .await?;
            store.close().await;
            eprintln!(
                "Created {} {} ({}). It is shown only once:",
                kind_name(kind),
                token.id,
                permission.as_str()
            );
            println!("{secret}");
            Ok(())
        }
        TokensCommand::List { store } => {
            let store = startup::open_store(&store.config()?).await?;
            let tokens = store.list_api_tokens().await?;
            store.close().await;
            println!(
                "{:<22} {:<10} {:<6} {:<26} {:<25} {:<25} LABEL",
                "ID", "KIND", "PERM", "ACCOUNTS", "CREATED", "REVOKED"
            );
            for t in tokens {
                let accounts = match &t.scope {
                    AccountScope::All => "*".to_owned(),
                    AccountScope::Only(ids) => ids
                        .iter()
                        .map(AccountId::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                };
                println!(
                    "{:<22} {:<10} {:<6} {:<26} {:<25} {:<25} {}",
                    t.id,
                    kind_name(t.kind),
                    t.permission.as_str(),
                    accounts,
                    t.created_on.to_rfc3339(),
                    t.revoked_on.map_or("-".to_owned(), |r| r.to_rfc3339()),
                    [t.email.as_deref(), t.label.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
            Ok(())
        }
        TokensCommand::Revoke { id, store } => {
            let store = startup::open_store(&store.config()?).await?;
            let done = store.revoke_api_token(&id, Timestamp::now()).await?;
            store.close().await;
            anyhow::ensure!(done, "no live token with id {id}");
            eprintln!("Revoked {id}");
            Ok(())
        }
    }
}

async fn accounts(command: AccountsCommand) -> anyhow::Result<()> {
    match command {
        AccountsCommand::Set {
            account,
            concurrency,
            build_minutes,
            store,
        } => {
            let account =
                AccountId::parse(&account).map_err(|e| anyhow::anyhow!("account: {e}"))?;
            anyhow::ensure!(
                concurrency.is_some() || build_minutes.is_some(),
                "nothing to set: give --concurrency and/or --build-minutes"
            );
            let store = startup::open_store(&store.config()?).await?;
            store
                .set_account_limits(
                    &account,
                    concurrency.map(i64::from),
                    build_minutes.map(i64::from),
                )
                .await?;
            store.close().await;
            eprintln!("Updated account {account}");
            Ok(())
        }
        AccountsCommand::List { store } => {
            let store = startup::open_store(&store.config()?).await?;
            let accounts = store.list_account_limits().await?;
            store.close().await;
            println!("{:<34} {:<12} BUILD MINUTES", "ACCOUNT", "CONCURRENCY");
            let show = |v: Option<i64>| v.map_or("default".to_owned(), |n| n.to_string());
            for (account, (concurrency, minutes)) in accounts {
                println!("{account:<34} {:<12} {}", show(concurrency), show(minutes));
            }
            Ok(())
        }
    }
}

async fn installations(command: InstallationsCommand) -> anyhow::Result<()> {
    let parse =
        |account: &str| AccountId::parse(account).map_err(|e| anyhow::anyhow!("--account: {e}"));
    match command {
        InstallationsCommand::Link(args) => {
            let account = parse(&args.account)?;
            let store = startup::open_store(&args.store.config()?).await?;
            let new = store.link_installation(args.installation, &account).await;
            store.close().await;
            if new? {
                eprintln!(
                    "Linked account {account} to GitHub App installation {}",
                    args.installation
                );
            } else {
                eprintln!(
                    "Account {account} was already linked to GitHub App installation {}",
                    args.installation
                );
            }
            Ok(())
        }
        InstallationsCommand::Unlink(args) => {
            let account = parse(&args.account)?;
            let store = startup::open_store(&args.store.config()?).await?;
            let removed = store.unlink_installation(args.installation, &account).await;
            store.close().await;
            anyhow::ensure!(
                removed?,
                "account {account} is not linked to GitHub App installation {}",
                args.installation
            );
            eprintln!(
                "Unlinked account {account} from GitHub App installation {}",
                args.installation
            );
            Ok(())
        }
        InstallationsCommand::List { account, store } => {
            let account = account.as_deref().map(parse).transpose()?;
            let store = startup::open_store(&store.config()?).await?;
            let links = store.installation_links(account.as_ref()).await;
            store.close().await;
            println!("{:<14} {:<34} LINKED", "INSTALLATION", "ACCOUNT");
            for link in links? {
                println!(
                    "{:<14} {:<34} {}",
                    link.installation,
                    link.account,
                    link.created_on.to_rfc3339()
                );
            }
            Ok(())
        }
    }
}

async fn toolchains(command: ToolchainsCommand) -> anyhow::Result<()> {
    match command {
        ToolchainsCommand::Install { tools, store } => {
            // Parse all before installing any, so a typo fails fast.
            let wanted = tools
                .iter()
                .map(|t| parse_tool_spec(t))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let store = store.open()?;
            for (tool, spec) in wanted {
                let version = install_one(&store, tool, &spec).await?;
                if tool == Tool::Node {
                    install_one(&store, Tool::Npm, bundled_npm_spec(&version)).await?;
                }
            }
            Ok(())
        }
        ToolchainsCommand::List { store } => {
            let store = store.open()?;
            for (tool, version) in store.list()? {
                println!("{tool}@{version}");
            }
            Ok(())
        }
    }
}

/// `node@22` → (Node, "22"); `bun` → (Bun, the hosted default).
fn parse_tool_spec(text: &str) -> anyhow::Result<(Tool, String)> {
    let (name, spec) = match text.split_once('@') {
        Some((name, spec)) => (name, spec.trim()),
        None => (text, ""),
    };
    let tool: Tool = name.parse().map_err(|e| anyhow::anyhow!("{text}: {e}"))?;
    let spec = if spec.is_empty() {
        tool.default_version()
    } else {
        spec
    };
    Ok((tool, spec.to_owned()))
}

/// Resolves and installs one toolchain, printing progress; returns the exact version.
async fn install_one(store: &ToolchainStore, tool: Tool, spec: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let version = store.resolve(tool, spec).await?;
    eprint!("Installing {} {version} ... ", tool.log_name());
    let _ = std::io::stderr().flush();
    match store.ensure(tool, &version, None).await {
        Ok(installed) => {
            eprintln!(
                "{}",
                if installed.downloaded {
                    "done"
                } else {
                    "already installed"
                }
            );
            Ok(version)
        }
        Err(e) => {
            eprintln!("failed");
            Err(e.into())
        }
    }
}

/// Parses `90`, `90s`, `20m`, `1h` or `500ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 20m or 1h"))?;
    let ms = match unit.trim() {
        "" | "s" => n.checked_mul(1000),
        "ms" => Some(n),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{text:?}: unit must be ms, s, m or h")),
    }
    .ok_or_else(|| format!("{text:?} is too long"))?;
    if ms == 0 {
        return Err("must be more than zero".to_owned());
    }
    Ok(Duration::from_millis(ms))
}

fn kind_name(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::Token => "token",
        CredentialKind::GlobalKey => "global-key",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("20GB"), Ok(20_000_000_000));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "0", "0G", "G", "1.5G", "8 gigs", "99999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_limit_flags_default_to_the_hosted_product() {
        let cli = Cli::try_parse_from(["kiln", "serve"]).expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(args.limits.limits(), BuildLimits::default());
        let cli = Cli::try_parse_from([
            "kiln",
            "serve",
            "--build-memory",
            "512M",
            "--build-processes",
            "64",
            "--build-disk",
            "1G",
        ])
        .expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        let limits = args.limits.limits();
        assert_eq!(
            (limits.memory_bytes, limits.processes, limits.disk_bytes),
            (512 << 20, 64, 1 << 30)
        );
        assert!(Cli::try_parse_from(["kiln", "serve", "--build-processes", "0"]).is_err());
    }
}
