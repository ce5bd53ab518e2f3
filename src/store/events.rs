//! The one place a build's status changes, and the build events outbox it writes.
//!
//! [`Store::change_build`] applies a [`BuildChange`] inside the caller's write transaction: it
//! reads the build's state (locking its row on PostgreSQL), asks [`crate::domain::transition`]
//! whether the change is legal, writes the new status, outcome and times from the enums, and queues
//! one `build_events` row. [`WriteTx::commit`] appends the queued rows last, under a short
//! transaction-level lock on PostgreSQL so that `seq` grows in commit order (a reader that has seen
//! `seq` n has seen every row below it), notifies channel [`crate::events::CHANNEL`] in the same
//! transaction, and wakes the store's [`crate::events::EventBus`] once committed.

use anyhow::Context;
use sqlx::Row;

use super::rows::{opt_text, text, ts};
use super::{Backend, Store, WriteTx};
use crate::domain::{
    AccountId, BuildChange, BuildId, BuildOutcome, BuildState, BuildStatus, Timestamp, WorkerId,
    transition,
};

/// One status change of one build, as appended to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildEvent {
    /// Position in the outbox: grows with every event, in commit order (with gaps).
    pub seq: i64,
    pub build: BuildId,
    pub account: AccountId,
    /// The build's Worker (`external_script_id`).
    pub worker: WorkerId,
    pub status: BuildStatus,
    /// How the build ended, when `status` is `stopped`.
    pub outcome: Option<BuildOutcome>,
    /// When the change was made.
    pub at: Timestamp,
}

/// An event waiting in a [`WriteTx`] for its commit.
pub(super) struct PendingEvent {
    build: BuildId,
    account: AccountId,
    worker: WorkerId,
    state: BuildState,
    at: Timestamp,
}

/// Who makes a change, and what [`Store::change_build`] checks of them.
#[derive(Debug, Clone, Copy)]
pub(super) enum Actor<'a> {
    /// A user, a queue, a recovery pass: no lease is checked.
    Anyone,
    /// The runner holding the build's lease; the change is refused to any other.
    Owner(&'a str),
    /// A runner claiming the build: it holds the lease from now until `lease_until`.
    Claimer {
        owner: &'a str,
        lease_until: Timestamp,
    },
}

/// Why [`Store::change_build`] changed nothing.
#[derive(Debug)]
pub(super) enum Refused {
    /// No such build (in the account asked for).
    NotFound,
    /// The build's state does not allow the change (it stopped meanwhile, …).
    Illegal,
    /// Another runner holds the build's lease, or none does.
    NotOwner,
}

/// A change [`Store::change_build`] made.
#[derive(Debug, Clone)]
pub(super) struct Changed {
    pub account: AccountId,
    pub at: Timestamp,
}

/// The key of the lock that orders appends to `build_events` (PostgreSQL).
const APPEND_LOCK: &str = "kiln:build_events";

impl Store {
    /// Applies `change` to build `id` by `actor` inside `w`, with its event. `account`, when given,
    /// limits the change to a build of that account. Every status change of an existing build goes
    /// through here; a new build's first state comes from [`Store::queue_event`].
    pub(super) async fn change_build(
        &self,
        w: &mut WriteTx<'_>,
        id: BuildId,
        account: Option<&AccountId>,
        change: BuildChange,
        actor: Actor<'_>,
    ) -> anyhow::Result<Result<Changed, Refused>> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "SELECT status, outcome, account_id, external_script_id, lease_owner FROM builds \
             WHERE uuid = $1{lock}"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut *w.tx)
        .await
        .context("reading a build's state")?;
        let Some(row) = row else {
            return Ok(Err(Refused::NotFound));
        };
        let build_account = AccountId::from_stored(text(&row, "account_id")?);
        if account.is_some_and(|a| *a != build_account) {
            return Ok(Err(Refused::NotFound));
        }
        let from = BuildState::from_parts(
            BuildStatus::from_stored(&text(&row, "status")?)?,
            opt_text(&row, "outcome")?
                .map(|o| BuildOutcome::from_stored(&o))
                .transpose()?,
        )?;
        let to = match transition(Some(from), change) {
            Ok(to) => to,
            Err(_) => return Ok(Err(Refused::Illegal)),
        };
        let lease_owner = opt_text(&row, "lease_owner")?;
        match actor {
            Actor::Owner(owner) if lease_owner.as_deref() != Some(owner) => {
                return Ok(Err(Refused::NotOwner));
            }
            _ => {}
        }
        let now = Timestamp::now();
        // $1 status, $2 outcome, $3 now, $4 uuid, $5 the status read above.
        let (set, lease) = match (to, actor) {
            (BuildState::Initializing, Actor::Claimer { owner, lease_until }) => (
                "initializing_on = $3, lease_owner = $6, lease_expires = $7",
                Some((owner, lease_until)),
            ),
            (BuildState::Running, _) => ("running_on = $3", None),
            // A lost build stopped when its runner was last known alive, not when recovery noticed:
            // a node that was down for days must not charge those days as build minutes.
            (BuildState::Stopped(_), _) if change == BuildChange::Lost => (
                "stopped_on = CASE WHEN lease_expires IS NOT NULL AND lease_expires < $3 \
                 THEN lease_expires ELSE $3 END, lease_owner = NULL, lease_expires = NULL",
                None,
            ),
            (BuildState::Stopped(_), _) => (
                "stopped_on = $3, lease_owner = NULL, lease_expires = NULL",
                None,
            ),
            (to, actor) => anyhow::bail!("{change:?} to {to:?} by {actor:?} is not a store change"),
        };
        let sql = format!(
            "UPDATE builds SET status = $1, outcome = $2, modified_on = $3, {set} \
             WHERE uuid = $4 AND status = $5"
        );
        let mut query = sqlx::query(&sql)
            .bind(to.status().as_str())
            .bind(to.outcome().map(BuildOutcome::as_str))
            .bind(now.millis())
            .bind(id.to_string())
            .bind(from.status().as_str());
        if let Some((owner, until)) = lease {
            query = query.bind(owner).bind(until.millis());
        }
        let updated = query
            .execute(&mut *w.tx)
            .await
            .with_context(|| format!("changing a build's status ({change:?})"))?;
        // The row is locked (PostgreSQL) or the writer is alone (SQLite): it cannot have moved.
        anyhow::ensure!(
            updated.rows_affected() == 1,
            "the build changed under a change that had locked it"
        );
        w.events.push(PendingEvent {
            build: id,
            account: build_account.clone(),
            worker: WorkerId::from_stored(text(&row, "external_script_id")?),
            state: to,
            at: now,
        });
        Ok(Ok(Changed {
            account: build_account,
            at: now,
        }))
    }

    /// The first state of a new build (`queued`), its event queued in `w`: the caller inserts the
    /// build's row with this state in the same transaction.
    pub(super) fn queue_event(
        &self,
        w: &mut WriteTx<'_>,
        id: BuildId,
        account: &AccountId,
        worker: &WorkerId,
        at: Timestamp,
    ) -> anyhow::Result<BuildState> {
        let state = transition(None, BuildChange::Queue)?;
        w.events.push(PendingEvent {
            build: id,
            account: account.clone(),
            worker: worker.clone(),
            state,
            at,
        });
        Ok(state)
    }

    /// Events with `seq > after`, oldest first, at most `limit`.
    pub async fn build_events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<BuildEvent>> {
        let rows = sqlx::query(
            "SELECT seq, build_uuid, account_id, worker, status, outcome, created_on FROM build_events \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await
        .context("reading build events")?;
        rows.iter()
            .map(|r| {
                Ok(BuildEvent {
                    seq: r.try_get("seq")?,
                    build: BuildId::from_stored(&text(r, "build_uuid")?)?,
                    account: AccountId::from_stored(text(r, "account_id")?),
                    worker: WorkerId::from_stored(text(r, "worker")?),
                    status: BuildStatus::from_stored(&text(r, "status")?)?,
                    outcome: opt_text(r, "outcome")?
                        .map(|o| BuildOutcome::from_stored(&o))
                        .transpose()?,
                    at: ts(r, "created_on")?,
                })
            })
            .collect()
    }

    /// The highest seq stored (0 when none).
    pub async fn last_build_event_seq(&self) -> anyhow::Result<i64> {
        let row =
            sqlx::query("SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) AS seq FROM build_events")
                .fetch_one(&self.pool)
                .await
                .context("reading the last build event")?;
        Ok(row.try_get("seq")?)
    }
}

impl WriteTx<'_> {
    /// Appends the events queued by this transaction's changes, in order, and commits; then wakes
    /// the store's event bus.
    pub async fn commit(mut self) -> anyhow::Result<()> {
        let events = std::mem::take(&mut self.events);
        if !events.is_empty() {
            if self.backend == Backend::Postgres {
                // Appends take turns from here to the commit: `seq` then grows in commit order.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(APPEND_LOCK)
                    .execute(&mut *self.tx)
                    .await
                    .context("locking the build events")?;
            }
            for e in &events {
                sqlx::query(
                    "INSERT INTO build_events (build_uuid, account_id, worker, status, outcome, created_on) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(e.build.to_string())
                .bind(e.account.as_str())
                .bind(e.worker.as_str())
                .bind(e.state.status().as_str())
                .bind(e.state.outcome().map(BuildOutcome::as_str))
                .bind(e.at.millis())
                .execute(&mut *self.tx)
                .await
                .context("appending a build event")?;
            }
            if self.backend == Backend::Postgres {
                // Delivered to the other nodes' listeners when (and only if) this commits.
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(crate::events::CHANNEL)
                    .execute(&mut *self.tx)
                    .await
                    .context("notifying the build events")?;
            }
        }
        self.tx.commit().await.context("committing")?;
        self.held.committed();
        if !events.is_empty() {
            self.bus.notify();
        }
        Ok(())
    }
}
