//! Durable state on SQLite or PostgreSQL. All SQL lives under this module.
//!
//! One implementation serves both backends through sqlx's `Any` driver: the schemas differ only in column
//! types (one migration folder per backend), and the few statements that need a dialect of their own
//! branch on [`Backend`]. Values are stored portably: ids and JSON as text, times as epoch milliseconds,
//! booleans as 0/1, secrets as AEAD-sealed bytes.

mod api_tokens;
mod builds;
mod connections;
mod deliveries;
mod deploy_hooks;
mod env_vars;
mod events;
mod fanout;
mod health;
mod installations;
mod logs;
mod overview;
mod queue;
mod reports;
mod rows;
mod scheduling;
mod sessions;
mod stats;
mod subscriptions;
mod tail;
mod timing;
mod tokens;
mod triggers;
mod webhooks;
mod worker_builds;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

use crate::crypto::SecretBox;
use crate::events::EventBus;

pub use builds::BuildSecrets;
pub use builds::{BuildFilter, CancelOutcome, NewBuild};
pub use connections::{DeleteConnection, NewConnection};
pub use deliveries::{AttemptRecord, ClaimedDelivery};
pub use deploy_hooks::{HookCall, HookWriteError};
pub use env_vars::EnvVarChange;
pub use events::BuildEvent;
pub use fanout::FanOut;
pub use health::StoreReadiness;
pub use installations::InstallationLink;
pub use logs::{LogLimit, LogPage};
pub use overview::WorkerSummary;
pub use queue::QueueView;
pub use reports::{
    CheckRunReport, CommentReport, PrBuild, ReportClaim, ReportKind, ReportTarget, Reported,
};
pub use scheduling::{ClaimedBuild, LostBuild};
pub use sessions::DashboardSession;
pub use stats::BuildCount;
pub use subscriptions::{NewSubscription, SubscriptionPatch, SubscriptionWriteError};
pub use timing::StoreTimings;
pub use triggers::{NewTrigger, TriggerPatch, TriggerWriteError};
pub use webhooks::{DeliveryOutcome, PAIR_WINDOW_MS, PushSelection};
pub use worker_builds::{
    NewWorkerBuild, PREVIEWS_TRIGGER_NAME, PRODUCTION_TRIGGER_NAME, Side, WorkerBuild,
    WorkerBuildError, WorkerBuildPatch, WorkerSettings, WorkerSettingsPatch,
};

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
    /// Woken after each commit that appended build events.
    events: EventBus,
    /// How long writers wait for and hold write transactions.
    timings: StoreTimings,
    /// Wakes this process's followers of a build's log when its lines are stored.
    log_watch: Arc<crate::logs::LogWatch>,
}

/// A write transaction, holding the SQLite writer lock when on SQLite.
pub(crate) struct WriteTx<'a> {
    pub tx: sqlx::Transaction<'static, sqlx::Any>,
    /// Builds skipped in this transaction, and the build that superseded each (logged after commit).
    superseded: Vec<(crate::domain::BuildId, crate::domain::BuildId)>,
    /// Build events of this transaction's status changes, appended at commit.
    events: Vec<events::PendingEvent>,
    backend: Backend,
    bus: EventBus,
    held: timing::HeldTimer,
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
                    .after_release(|conn, _| Box::pin(sqlite_connection_is_clean(conn)))
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
        migrator(backend)
            .run(&pool)
            .await
            .context("running migrations")?;
        Ok(Store {
            pool,
            backend,
            secrets,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            events: EventBus::default(),
            timings: StoreTimings::new()?,
            log_watch: Arc::default(),
        })
    }

    /// The SQLite URL for a database file in `data_dir`.
    pub fn sqlite_url(data_dir: &Path) -> String {
        format!("sqlite://{}?mode=rwc", data_dir.join("kiln.db").display())
    }

    /// The bus this store wakes after each commit that appended build events (see
    /// [`crate::events`]); clones of the store share it.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Which backend this store uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The store's own metrics (write transaction and lock timings).
    pub fn timings(&self) -> &StoreTimings {
        &self.timings
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) async fn begin_write(&self) -> anyhow::Result<WriteTx<'_>> {
        let asked = std::time::Instant::now();
        let (guard, tx) = match self.backend {
            Backend::Sqlite => {
                let guard = self.write_lock.lock().await;
                // IMMEDIATE takes the write lock now, waiting up to the busy timeout for another
                // process's writer (`kiln tokens`, a backup): a deferred transaction that has read
                // fails at once with `database is locked` when it then tries to write.
                (Some(guard), self.pool.begin_with("BEGIN IMMEDIATE").await)
            }
            Backend::Postgres => (None, self.pool.begin().await),
        };
        let tx = tx.context("beginning a transaction")?;
        self.timings.waited(timing::Lock::Transaction, asked);
        Ok(WriteTx {
            tx,
            superseded: Vec::new(),
            events: Vec::new(),
            backend: self.backend,
            bus: self.events.clone(),
            held: self.timings.hold(),
            _guard: guard,
        })
    }

    /// Serialises writers on one key for the rest of a PostgreSQL transaction (SQLite is already
    /// serialised by the writer lock).
    pub(crate) async fn lock_key(&self, tx: &mut WriteTx<'_>, key: &str) -> anyhow::Result<()> {
        if self.backend == Backend::Postgres {
            let asked = std::time::Instant::now();
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(key)
                .execute(&mut *tx.tx)
                .await
                .context("taking an advisory lock")?;
            self.timings.waited(timing::Lock::Key, asked);
        }
        Ok(())
    }
}

/// The migrations this binary embeds for `backend`.
fn migrator(backend: Backend) -> sqlx::migrate::Migrator {
    match backend {
        Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("migrations/postgres"),
    }
}

/// Whether a SQLite connection given back to the pool may be used again: false when sqlx's count of
/// its open transactions is not zero once its queued rollback has run.
///
/// SQLite rolls a whole transaction back by itself when a statement or the `COMMIT` fails with
/// `SQLITE_FULL` (also `SQLITE_IOERR` and `SQLITE_NOMEM`; <https://sqlite.org/lang_transaction.html>,
/// "Response To Errors Within A Transaction"). sqlx does not notice: its count stays at 1 and the
/// `ROLLBACK` it sends when the transaction is dropped fails ("no transaction is active"). Reused, such
/// a connection begins its next transaction with `SAVEPOINT` instead of `BEGIN`, and the first of
/// those to fail is undone with `ROLLBACK TO`, which leaves the transaction open: the connection then
/// keeps SQLite's write lock for good, every other connection gets `database is locked`, and what it
/// "commits" (a `RELEASE` inside the open transaction) is never written. Closing the connection
/// instead ends whatever SQLite still holds; the pool opens a fresh one.
async fn sqlite_connection_is_clean(conn: &mut sqlx::AnyConnection) -> Result<bool, sqlx::Error> {
    use sqlx::{Connection, TransactionManager};
    // The rollback of a dropped transaction is queued on the connection: let it run first.
    conn.ping().await?;
    let depth = sqlx::any::AnyTransactionManager::get_transaction_depth(conn);
    if depth != 0 {
        tracing::warn!(
            depth,
            "discarding a database connection whose transaction SQLite ended by itself"
        );
    }
    Ok(depth == 0)
}

/// A condition of the store (the database, or the disk under it) that is not a bug in the request or
/// in Kiln: the same request can succeed once it is over. See [`store_condition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCondition {
    /// The disk is full: SQLite's `SQLITE_FULL`, PostgreSQL's `disk_full` (53100), or `ENOSPC` /
    /// `EDQUOT` from the file system. Writes fail until space is freed; reads go on.
    Full,
    /// The database is busy, overloaded or unreachable: SQLite's `SQLITE_BUSY`/`SQLITE_LOCKED`,
    /// PostgreSQL's other insufficient-resource errors (class 53), shutdown and connection errors
    /// (57P01–57P03, class 08), a pool with no free connection in time, or a broken connection.
    Unavailable,
}

/// What `e` (anywhere in its chain) says about the store, if it is a [`StoreCondition`].
pub fn store_condition(e: &anyhow::Error) -> Option<StoreCondition> {
    for cause in e.chain() {
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            match e {
                sqlx::Error::Database(db) => {
                    if let Some(condition) = database_condition(db.as_ref()) {
                        return Some(condition);
                    }
                }
                sqlx::Error::Io(io) if crate::disk::is_full_io(io) => {
                    return Some(StoreCondition::Full);
                }
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => return Some(StoreCondition::Unavailable),
                _ => {}
            }
        } else if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && crate::disk::is_full_io(io)
        {
            return Some(StoreCondition::Full);
        }
    }
    None
}

/// The condition a database error stands for, from its SQLite result code or PostgreSQL SQLSTATE.
fn database_condition(db: &dyn sqlx::error::DatabaseError) -> Option<StoreCondition> {
    let code = db.code()?;
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // Extended result codes keep the primary code in their low byte
        // (<https://sqlite.org/rescode.html>).
        return match code.parse::<i32>().ok()? & 0xff {
            SQLITE_FULL => Some(StoreCondition::Full),
            SQLITE_BUSY | SQLITE_LOCKED => Some(StoreCondition::Unavailable),
            _ => None,
        };
    }
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        // <https://www.postgresql.org/docs/current/errcodes-appendix.html>
        return match code.as_ref() {
            "53100" => Some(StoreCondition::Full),
            "57P01" | "57P02" | "57P03" => Some(StoreCondition::Unavailable),
            c if c.starts_with("53") || c.starts_with("08") => Some(StoreCondition::Unavailable),
            _ => None,
        };
    }
    None
}

const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_FULL: i32 = 13;

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Executor};

    use super::*;

    #[tokio::test]
    async fn recognises_sqlites_own_full_and_busy_errors() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().expect("tempdir");
        let url = Store::sqlite_url(dir.path());
        let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
        conn.execute("CREATE TABLE t (v BLOB)")
            .await
            .expect("create");
        // A database that may not grow is full the way a full disk makes it.
        conn.execute("PRAGMA max_page_count = 3")
            .await
            .expect("pragma");
        let full = conn
            .execute("INSERT INTO t VALUES (zeroblob(100000))")
            .await
            .expect_err("the database is full");
        assert_eq!(
            store_condition(&anyhow::Error::new(full).context("inserting")),
            Some(StoreCondition::Full)
        );
        let bad = conn
            .execute("INSERT INTO missing VALUES (1)")
            .await
            .expect_err("no such table");
        assert_eq!(store_condition(&anyhow::Error::new(bad)), None);

        // Another connection holds the write lock and this one does not wait.
        let mut other = sqlx::AnyConnection::connect(&url).await.expect("connect");
        other.execute("BEGIN IMMEDIATE").await.expect("begin");
        conn.execute("PRAGMA busy_timeout = 0")
            .await
            .expect("pragma");
        let busy = conn
            .execute("BEGIN IMMEDIATE")
            .await
            .expect_err("the database is locked");
        assert_eq!(
            store_condition(&anyhow::Error::new(busy)),
            Some(StoreCondition::Unavailable)
        );
        assert_eq!(
            store_condition(&anyhow::anyhow!("database or disk is full")),
            None,
            "only the error itself counts, never its text"
        );
    }
}
