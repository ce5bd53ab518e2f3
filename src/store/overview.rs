//! Listings across an account, for the dashboard and the command-line client (Kiln extensions of
//! the API, `listAccounts` and `listWorkers`): the accounts a credential sees, and an account's
//! Workers with their newest build.

use std::collections::HashMap;

use anyhow::Context;
use sqlx::Row;

use super::Store;
use super::builds::{build_from_row, select_builds};
use crate::domain::{AccountId, AccountScope, Build, WorkerId};

/// A Worker of an account: one with a live trigger or with a build.
#[derive(Debug, Clone)]
pub struct WorkerSummary {
    pub external_script_id: WorkerId,
    /// Its live (not deleted) triggers: 0 to [`crate::domain::MAX_TRIGGERS_PER_WORKER`].
    pub triggers: i64,
    /// Its newest build, if it has one.
    pub latest_build: Option<Build>,
}

/// Every account Kiln holds anything of: a trigger, connection, build token, Worker build
/// configuration, build or per-account setting (deleted rows included: their builds stay readable).
const KNOWN_ACCOUNTS: &str = "SELECT account_id FROM triggers \
    UNION SELECT account_id FROM repo_connections \
    UNION SELECT account_id FROM build_tokens \
    UNION SELECT account_id FROM worker_builds \
    UNION SELECT account_id FROM builds \
    UNION SELECT account_id FROM accounts";

/// The Workers of account `$1`: those with a live trigger or a build.
const ACCOUNT_WORKERS: &str = "SELECT external_script_id FROM triggers \
    WHERE account_id = $1 AND deleted_on IS NULL \
    UNION SELECT external_script_id FROM builds WHERE account_id = $1";

impl Store {
    /// One page of the accounts `scope` may act on, sorted by id, and how many there are in all:
    /// an account list is itself; [`AccountScope::All`] means every account Kiln holds anything of.
    /// `page` counts from 1.
    pub async fn list_accounts(
        &self,
        scope: &AccountScope,
        page: u32,
        per_page: u32,
    ) -> anyhow::Result<(Vec<AccountId>, i64)> {
        let skip = i64::from(page - 1) * i64::from(per_page);
        match scope {
            AccountScope::Only(ids) => {
                let mut ids = ids.clone();
                ids.sort();
                ids.dedup();
                let total = ids.len() as i64;
                let start = usize::try_from(skip).unwrap_or(usize::MAX).min(ids.len());
                let end = start.saturating_add(per_page as usize).min(ids.len());
                Ok((ids[start..end].to_vec(), total))
            }
            AccountScope::All => {
                let total: i64 =
                    sqlx::query(&format!("SELECT COUNT(*) AS n FROM ({KNOWN_ACCOUNTS}) a"))
                        .fetch_one(&self.pool)
                        .await
                        .context("counting accounts")?
                        .try_get("n")?;
                let rows = sqlx::query(&format!(
                    "SELECT account_id FROM ({KNOWN_ACCOUNTS}) a ORDER BY account_id LIMIT $1 OFFSET $2"
                ))
                .bind(i64::from(per_page))
                .bind(skip)
                .fetch_all(&self.pool)
                .await
                .context("listing accounts")?;
                let ids = rows
                    .iter()
                    .map(|r| {
                        Ok(AccountId::from_stored(
                            r.try_get::<String, _>("account_id")?,
                        ))
                    })
                    .collect::<anyhow::Result<_>>()?;
                Ok((ids, total))
            }
        }
    }

    /// One page of the account's Workers (a live trigger or a build), sorted by id, each with its
    /// trigger count and newest build, and how many Workers there are in all. `page` counts from 1.
    pub async fn list_workers(
        &self,
        account: &AccountId,
        page: u32,
        per_page: u32,
    ) -> anyhow::Result<(Vec<WorkerSummary>, i64)> {
        let total: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM ({ACCOUNT_WORKERS}) w"))
            .bind(account.as_str())
            .fetch_one(&self.pool)
            .await
            .context("counting Workers")?
            .try_get("n")?;
        let rows = sqlx::query(&format!(
            "SELECT w.external_script_id AS worker, \
               (SELECT COUNT(*) FROM triggers t WHERE t.account_id = $1 \
                  AND t.external_script_id = w.external_script_id AND t.deleted_on IS NULL) AS n_triggers, \
               (SELECT MAX(b.id) FROM builds b WHERE b.account_id = $1 \
                  AND b.external_script_id = w.external_script_id) AS latest \
             FROM ({ACCOUNT_WORKERS}) w ORDER BY w.external_script_id LIMIT $2 OFFSET $3"
        ))
        .bind(account.as_str())
        .bind(i64::from(per_page))
        .bind(i64::from(page - 1) * i64::from(per_page))
        .fetch_all(&self.pool)
        .await
        .context("listing Workers")?;
        let mut workers = Vec::with_capacity(rows.len());
        let mut latest_ids = Vec::new();
        for row in &rows {
            let latest: Option<i64> = row.try_get("latest")?;
            latest_ids.extend(latest);
            workers.push((
                WorkerId::from_stored(row.try_get::<String, _>("worker")?),
                row.try_get::<i64, _>("n_triggers")?,
                latest,
            ));
        }
        let mut latest = self.builds_by_row_id(&latest_ids).await?;
        let summaries = workers
            .into_iter()
            .map(|(external_script_id, triggers, id)| WorkerSummary {
                external_script_id,
                triggers,
                latest_build: id.and_then(|id| latest.remove(&id)),
            })
            .collect();
        Ok((summaries, total))
    }

    /// Builds by their row ids (at most one page's worth), keyed by row id.
    async fn builds_by_row_id(&self, ids: &[i64]) -> anyhow::Result<HashMap<i64, Build>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let placeholders = (1..=ids.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        // `select_builds` rows carry the row id as `b_id`.
        let sql = select_builds(&format!("b.id IN ({placeholders})"));
        let mut q = sqlx::query(&sql);
        for id in ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(&self.pool).await.context("reading builds")?;
        rows.iter()
            .map(|row| Ok((row.try_get::<i64, _>("b_id")?, build_from_row(row)?)))
            .collect()
    }
}
