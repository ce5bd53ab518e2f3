//! The `kiln` command line: `serve` and `tokens`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::api::Limits;
use crate::crypto::{hash_credential, new_credential};
use crate::domain::{AccountId, AccountScope, ApiToken, CredentialKind, Permission, Timestamp};
use crate::startup::{self, ServeConfig, Server, StoreConfig};

/// Kiln: a self-hosted build service speaking the Cloudflare Workers Builds API.
#[derive(Debug, Parser)]
#[command(name = "kiln", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API server.
    Serve(ServeArgs),
    /// Manage API tokens.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
}

/// Where the data lives (shared by every command that opens the store).
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Directory for the SQLite database, the secret key and build workspaces.
    #[arg(long, env = "KILN_DATA_DIR", default_value = "./kiln-data")]
    pub data_dir: PathBuf,
    /// Database URL: `sqlite://…` or `postgres://…` (default: a SQLite file in the data dir).
    #[arg(long, env = "KILN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl StoreArgs {
    fn config(&self) -> StoreConfig {
        StoreConfig {
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            // Read from the environment only: a key on the command line would show in `ps`.
            secret_key: std::env::var("KILN_SECRET_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// An API token accepted with write permission on all accounts (stored hashed).
    #[arg(long, env = "KILN_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub bootstrap_token: Option<String>,
    /// Build minutes per account per month.
    #[arg(long, env = "KILN_BUILD_MINUTES", default_value_t = 3000)]
    pub build_minutes: i64,
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

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Tokens { command } => tokens(command).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServeConfig {
        listen: args.listen,
        store: args.store.config(),
        bootstrap_token: args.bootstrap_token,
        limits: Limits {
            build_minutes_per_month: args.build_minutes,
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
            let store = startup::open_store(&args.store.config()).await?;
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
            let store = startup::open_store(&store.config()).await?;
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
            let store = startup::open_store(&store.config()).await?;
            let done = store.revoke_api_token(&id, Timestamp::now()).await?;
            store.close().await;
            anyhow::ensure!(done, "no live token with id {id}");
            eprintln!("Revoked {id}");
            Ok(())
        }
    }
}

fn kind_name(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::Token => "token",
        CredentialKind::GlobalKey => "global-key",
    }
}
