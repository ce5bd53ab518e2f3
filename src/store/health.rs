//! Whether the store can serve (`GET /readyz`): it answers, and holds every migration this binary
//! embeds.

use std::collections::HashMap;

use anyhow::Context;
use sqlx::{Connection, Row};

use super::{Backend, Store, migrator};

/// What the store says about its readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReadiness {
    /// Migrations this binary embeds.
    pub embedded: usize,
    /// Of those, the ones the database holds as applied successfully, unchanged.
    pub applied: usize,
    /// What keeps the store from being ready, one sentence each without internal detail (empty
    /// when ready).
    pub problems: Vec<String>,
}

impl Store {
    /// Checks that the store answers and that every migration this binary embeds is applied there,
    /// successfully and with the checksum this binary has.
    ///
    /// On SQLite the database file is also opened anew, read-only, and the migrations are read
    /// through that connection: the pool's connections keep working on a file that was deleted or
    /// replaced (and whatever they write then is lost), so only a fresh open shows what the next
    /// start would find. An error means the store cannot be reached; its text may name hosts or
    /// paths, so it is for the log only.
    pub async fn readiness(&self) -> anyhow::Result<StoreReadiness> {
        let applied = match self.backend {
            Backend::Postgres => {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .context("querying the database")?;
                applied_migrations(&self.pool).await
            }
            Backend::Sqlite => {
                let file: String =
                    sqlx::query("SELECT file FROM pragma_database_list WHERE name = 'main'")
                        .fetch_one(&self.pool)
                        .await
                        .context("querying the database")?
                        .try_get("file")?;
                if file.is_empty() {
                    // An in-memory database: the pool's connections are all there is.
                    applied_migrations(&self.pool).await
                } else {
                    let mut fresh =
                        sqlx::AnyConnection::connect(&format!("sqlite://{file}?mode=ro"))
                            .await
                            .context("opening the database file")?;
                    let applied = applied_migrations(&mut fresh).await;
                    fresh.close().await.ok();
                    applied
                }
            }
        };
        let embedded: Vec<_> = migrator(self.backend)
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .cloned()
            .collect();
        let applied = match applied {
            Ok(applied) => applied,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "reading the applied migrations failed"
                );
                return Ok(StoreReadiness {
                    embedded: embedded.len(),
                    applied: 0,
                    problems: vec!["the database's applied migrations could not be read".into()],
                });
            }
        };
        let mut problems = Vec::new();
        for m in &embedded {
            match applied.get(&m.version) {
                None => problems.push(format!(
                    "migration {} ({}) is not applied",
                    m.version, m.description
                )),
                Some((_, false)) => problems.push(format!(
                    "migration {} ({}) failed",
                    m.version, m.description
                )),
                Some((checksum, true)) if checksum[..] != m.checksum[..] => problems.push(format!(
                    "migration {} ({}) differs from the one this binary embeds",
                    m.version, m.description
                )),
                Some(_) => {}
            }
        }
        Ok(StoreReadiness {
            embedded: embedded.len(),
            applied: embedded.len() - problems.len(),
            problems,
        })
    }
}

/// The migrations the database records: version → (checksum, applied successfully).
async fn applied_migrations<'c, E>(executor: E) -> anyhow::Result<HashMap<i64, (Vec<u8>, bool)>>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT version, checksum, CASE WHEN success THEN 1 ELSE 0 END AS ok FROM _sqlx_migrations",
    )
    .fetch_all(executor)
    .await
    .context("reading _sqlx_migrations")?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<i64, _>("version")?,
                (
                    row.try_get::<Vec<u8>, _>("checksum")?,
                    row.try_get::<i64, _>("ok")? == 1,
                ),
            ))
        })
        .collect()
}
