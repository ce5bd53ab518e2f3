//! The queue as the queue explanation sees it ([`crate::domain::explain_queued`]): the runner nodes
//! and their slots, the builds in progress and queued, account limits and recent build durations.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context;
use sqlx::Row;

use super::Store;
use super::rows::{text, ts};
use crate::domain::{
    AccountId, ActiveBuild, BuildId, DURATION_SAMPLES, Durations, PastBuild, QueueSnapshot,
    QueuedBuild, Timestamp, TriggerId,
};

/// Queued builds loaded at most, oldest first: a build further back is placed by counting.
const MAX_QUEUED_LOADED: i64 = 1000;

/// Recent finished builds read for durations, newest first (besides the build's own account's).
const RECENT_BUILDS: i64 = 2000;

/// Finished builds whose duration says how long builds take: those that ran to their own end.
const TIMED_BUILDS: &str = "status = 'stopped' AND outcome IN ('success', 'fail') \
    AND initializing_on IS NOT NULL AND stopped_on IS NOT NULL";

/// A queued build with what its explanation needs.
#[derive(Debug)]
pub struct QueueView {
    pub snapshot: QueueSnapshot,
    pub target: QueuedBuild,
    /// Queued builds older than the target.
    pub older: u64,
}

impl Store {
    /// Announces that node `node_id` runs builds in `slots` slots, until `until` unless renewed.
    pub async fn announce_runner_node(
        &self,
        node_id: &str,
        slots: u32,
        until: Timestamp,
    ) -> anyhow::Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO runner_nodes (node_id, slots, seen_on, expires_on) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (node_id) DO UPDATE SET slots = excluded.slots, seen_on = excluded.seen_on, \
             expires_on = excluded.expires_on",
        )
        .bind(node_id)
        .bind(i64::from(slots))
        .bind(Timestamp::now().millis())
        .bind(until.millis())
        .execute(&mut *w.tx)
        .await
        .context("announcing the runner node")?;
        w.commit().await
    }

    /// Withdraws node `node_id`'s announcement (it stops running builds).
    pub async fn withdraw_runner_node(&self, node_id: &str) -> anyhow::Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query("DELETE FROM runner_nodes WHERE node_id = $1")
            .bind(node_id)
            .execute(&mut *w.tx)
            .await
            .context("withdrawing the runner node")?;
        w.commit().await
    }

    /// The queue around build `id` of `account`, if it is queued; accounts without a concurrency
    /// limit of their own have `default_concurrency`.
    pub async fn queue_view(
        &self,
        account: &AccountId,
        id: BuildId,
        default_concurrency: i64,
    ) -> anyhow::Result<Option<QueueView>> {
        // One transaction: one snapshot of the queue on SQLite.
        let mut tx = self.pool.begin().await.context("reading the queue")?;
        let row = sqlx::query(
            "SELECT id, trigger_uuid FROM builds WHERE uuid = $1 AND account_id = $2 AND status = 'queued'",
        )
        .bind(id.to_string())
        .bind(account.as_str())
        .fetch_optional(&mut *tx)
        .await
        .context("reading a queued build")?;
        let Some(row) = row else { return Ok(None) };
        let row_id: i64 = row.try_get("id")?;
        let target = QueuedBuild {
            id,
            account: account.clone(),
            trigger: TriggerId::from_stored(&text(&row, "trigger_uuid")?)?,
        };
        let now = Timestamp::now();
        let nodes = sqlx::query(
            "SELECT COUNT(*) AS nodes, CAST(COALESCE(SUM(slots), 0) AS BIGINT) AS slots \
             FROM runner_nodes WHERE expires_on > $1",
        )
        .bind(now.millis())
        .fetch_one(&mut *tx)
        .await
        .context("counting runner slots")?;
        let older: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM builds WHERE status = 'queued' AND id < $1")
                .bind(row_id)
                .fetch_one(&mut *tx)
                .await
                .context("counting older queued builds")?
                .try_get("n")?;
        let active = sqlx::query(
            "SELECT account_id, trigger_uuid, COALESCE(initializing_on, modified_on) AS started \
             FROM builds WHERE status IN ('initializing', 'running')",
        )
        .fetch_all(&mut *tx)
        .await
        .context("reading the builds in progress")?
        .iter()
        .map(|r| {
            Ok(ActiveBuild {
                account: AccountId::from_stored(text(r, "account_id")?),
                trigger: TriggerId::from_stored(&text(r, "trigger_uuid")?)?,
                started: ts(r, "started")?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
        let queued = sqlx::query(
            "SELECT uuid, account_id, trigger_uuid FROM builds WHERE status = 'queued' ORDER BY id LIMIT $1",
        )
        .bind(MAX_QUEUED_LOADED)
        .fetch_all(&mut *tx)
        .await
        .context("reading the queue")?
        .iter()
        .map(|r| {
            Ok(QueuedBuild {
                id: BuildId::from_stored(&text(r, "uuid")?)?,
                account: AccountId::from_stored(text(r, "account_id")?),
                trigger: TriggerId::from_stored(&text(r, "trigger_uuid")?)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
        let accounts: BTreeSet<&str> = queued
            .iter()
            .map(|q| q.account.as_str())
            .chain(active.iter().map(|a| a.account.as_str()))
            .chain([account.as_str()])
            .collect();
        let mut limits = HashMap::new();
        let rows = sqlx::query(
            "SELECT account_id, concurrency FROM accounts WHERE concurrency IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await
        .context("reading account limits")?;
        for r in &rows {
            let id = text(r, "account_id")?;
            if accounts.contains(id.as_str()) {
                limits.insert(
                    AccountId::from_stored(id),
                    r.try_get::<i64, _>("concurrency")?,
                );
            }
        }
        // The newest finished builds of every account, and the build's own account's newest.
        let newest = sqlx::query(&format!(
            "SELECT id, account_id, trigger_uuid, stopped_on - initializing_on AS ms FROM builds \
             WHERE {TIMED_BUILDS} ORDER BY id DESC LIMIT $1"
        ))
        .bind(RECENT_BUILDS)
        .fetch_all(&mut *tx)
        .await
        .context("reading recent build durations")?;
        let own = sqlx::query(&format!(
            "SELECT id, account_id, trigger_uuid, stopped_on - initializing_on AS ms FROM builds \
             WHERE {TIMED_BUILDS} AND account_id = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(account.as_str())
        .bind(DURATION_SAMPLES as i64)
        .fetch_all(&mut *tx)
        .await
        .context("reading the account's recent build durations")?;
        let mut recent: BTreeMap<Reverse<i64>, PastBuild> = BTreeMap::new();
        for r in newest.iter().chain(&own) {
            recent.insert(
                Reverse(r.try_get("id")?),
                PastBuild {
                    account: AccountId::from_stored(text(r, "account_id")?),
                    trigger: TriggerId::from_stored(&text(r, "trigger_uuid")?)?,
                    duration_ms: r.try_get("ms")?,
                },
            );
        }
        let recent: Vec<PastBuild> = recent.into_values().collect();
        tx.rollback().await.context("ending the queue read")?;
        Ok(Some(QueueView {
            snapshot: QueueSnapshot {
                now,
                runner_slots: u64::try_from(nodes.try_get::<i64, _>("slots")?).unwrap_or(0),
                runner_nodes: u64::try_from(nodes.try_get::<i64, _>("nodes")?).unwrap_or(0),
                limits,
                default_concurrency,
                active,
                queued,
                durations: Durations::from_recent(&recent),
            },
            target,
            older: u64::try_from(older).unwrap_or(0),
        }))
    }
}
