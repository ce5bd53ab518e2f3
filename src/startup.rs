//! Starting Kiln: opening the store, registering the bootstrap token, serving HTTP. Tests start the
//! server through the same code on a random port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, AppState, Limits};
use crate::crypto::{SecretBox, hash_credential};
use crate::domain::{AccountScope, ApiToken, CredentialKind, Permission, Timestamp};
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
}

/// Opens (creating if needed) the data dir and the store, running migrations.
pub async fn open_store(config: &StoreConfig) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    restrict_permissions(&config.data_dir);
    let secrets = SecretBox::load(config.secret_key.as_deref(), &config.data_dir)?;
    let url = config
        .database_url
        .clone()
        .unwrap_or_else(|| Store::sqlite_url(&config.data_dir));
    Store::connect(&url, secrets).await
}

fn restrict_permissions(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // The data dir holds the database and the secret key: owner only.
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(error = %e, dir = %dir.display(), "could not restrict data dir permissions");
    }
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

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub store: Store,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Opens the store, binds `config.listen` and serves in the background.
    pub async fn start(config: &ServeConfig) -> anyhow::Result<Server> {
        let store = open_store(&config.store).await?;
        if let Some(token) = config.bootstrap_token.as_deref().filter(|t| !t.is_empty()) {
            register_bootstrap_token(&store, token).await?;
        }
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let app = api::router(AppState {
            store: store.clone(),
            limits: config.limits,
        });
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    rx.await.ok();
                })
                .await
                .context("serving HTTP")
        });
        Ok(Server {
            addr,
            store,
            shutdown: Some(tx),
            task,
        })
    }

    /// Stops accepting requests, finishes the ones in flight (for at most [`SHUTDOWN_GRACE`]) and
    /// closes the store.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let result = match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(joined) => joined.context("server task panicked")?,
            Err(_) => {
                tracing::warn!(
                    grace_seconds = SHUTDOWN_GRACE.as_secs(),
                    "connections still open after the grace period: closing them"
                );
                self.task.abort();
                Ok(())
            }
        };
        self.store.close().await;
        result
    }

    /// Serves until the task ends on its own (it does not without a shutdown).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await.context("server task panicked")?
    }
}
