//! Durable state on SQLite or PostgreSQL. All SQL lives under this module.
//!
//! One implementation serves both backends through sqlx's `Any` driver: the schemas differ only in column
//! types (one migration folder per backend), and the few statements that need a dialect of their own
//! branch on [`Backend`]. Values are stored portably: ids and JSON as text, times as epoch milliseconds,
//! booleans as 0/1, secrets as AEAD-sealed bytes.

mod api_tokens;
mod builds;
mod connections;
mod deploy_hooks;
mod env_vars;
mod installations;
mod logs;
mod reports;
mod rows;
mod scheduling;
mod tokens;
mod triggers;
mod webhooks;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

use crate::crypto::SecretBox;

pub use builds::BuildSecrets;
pub use builds::{CancelOutcome, NewBuild};
pub use connections::{DeleteConnection, NewConnection};
pub use deploy_hooks::{HookCall, HookWriteError};
pub use env_vars::EnvVarChange;
pub use installations::InstallationLink;
pub use logs::LogPage;
pub use reports::{CommentItem, PrBuild, ReportItem};
pub use scheduling::{ClaimedBuild, LostBuild};
pub use triggers::{NewTrigger, TriggerPatch, TriggerWriteError};
pub use webhooks::DeliveryOutcome;

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The store: a connection pool plus the key that seals secrets.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    secrets: SecretBox,
    /// SQLite allows one writer; serialising write transactions in-process avoids busy errors on
    /// lock upgrades. PostgreSQL uses row and advisory locks instead.
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction, holding the SQLite writer lock when on SQLite.
pub(crate) struct WriteTx<'a> {
    pub tx: sqlx::Transaction<'static, sqlx::Any>,
    /// Builds skipped in this transaction, and the build that superseded each (logged after commit).
    superseded: Vec<(crate::domain::BuildId, crate::domain::BuildId)>,
    _guard: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl Store {
    /// Connects to `url` (`sqlite://…` or `postgres://…`) and runs the migrations.
    pub async fn connect(url: &str, secrets: SecretBox) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            anyhow::bail!("unsupported database URL: expected sqlite:// or postgres://");
        };
        let options = AnyConnectOptions::from_str(url).context("parsing the database URL")?;
        let pool = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(8)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
            }
        }
        .context("connecting to the database")?;
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("migrations/postgres"),
        };
        migrator.run(&pool).await.context("running migrations")?;
        Ok(Store {
            pool,
            backend,
            secrets,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The SQLite URL for a database file in `data_dir`.
    pub fn sqlite_url(data_dir: &Path) -> String {
        format!("sqlite://{}?mode=rwc", data_dir.join("kiln.db").display())
    }

    /// Which backend this store uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) async fn begin_write(&self) -> anyhow::Result<WriteTx<'_>> {
        let guard = match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock().await),
            Backend::Postgres => None,
        };
        let tx = self.pool.begin().await.context("beginning a transaction")?;
        Ok(WriteTx {
            tx,
            superseded: Vec::new(),
            _guard: guard,
        })
    }

    /// Serialises writers on one key for the rest of a PostgreSQL transaction (SQLite is already
    /// serialised by the writer lock).
    pub(crate) async fn lock_key(&self, tx: &mut WriteTx<'_>, key: &str) -> anyhow::Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(key)
                .execute(&mut *tx.tx)
                .await
                .context("taking an advisory lock")?;
        }
        Ok(())
    }
}

impl WriteTx<'_> {
    /// Commits the transaction.
    pub async fn commit(self) -> anyhow::Result<()> {
        self.tx.commit().await.context("committing")
    }
}
