//! The fan-out of build events to event subscriptions: the `build_events` outbox, read after the
//! notifications cursor, becomes one stored delivery per event and matching subscription, written in
//! the transaction that advances the cursor (so an event is fanned out once, whatever fails and
//! however many nodes run this).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use sqlx::Row;

use super::{Backend, Store};
use crate::domain::{
    AccountId, DeliveryId, DeliveryStatus, EventSubscription, EventType, StatusChange, Timestamp,
    event_body,
};

/// The cursor row of the notifications fan-out (migration 0010).
const CURSOR: &str = "notifications";

/// What one fan-out round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanOut {
    /// Events read from the outbox (fewer than the batch: the outbox is caught up).
    pub events: usize,
    /// Deliveries stored.
    pub deliveries: usize,
}

impl Store {
    /// Reads up to `batch` build events after the notifications cursor and, in one write
    /// transaction holding the cursor (its row locked on PostgreSQL; SQLite has one writer), stores
    /// a pending delivery of each for every subscription that wants it, due now and retried for
    /// `retry_window`, then advances the cursor past them. A subscription wants the events of its
    /// account that happened after it was created, of the types and Workers its filters name, while
    /// it is enabled ([`EventSubscription::wants`]); the body is rendered now, from the build as it
    /// is stored, showing it as it was at the event ([`event_body`]).
    pub async fn fan_out_build_events(
        &self,
        batch: i64,
        retry_window: Duration,
    ) -> anyhow::Result<FanOut> {
        let mut w = self.begin_write().await?;
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let after: i64 = sqlx::query(&format!(
            "SELECT last_seq FROM notification_cursor WHERE name = $1{lock}"
        ))
        .bind(CURSOR)
        .fetch_one(&mut *w.tx)
        .await
        .context("reading the notifications cursor")?
        .try_get("last_seq")?;
        // Appends are ordered by commit (see `store::events`): every event below the last one read
        // is committed, so the cursor never passes one that is still to come.
        let events = self.build_events_after(after, batch).await?;
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(FanOut::default());
        };
        let now = Timestamp::now();
        let retry_until = now.plus(retry_window);
        let mut subscriptions: HashMap<AccountId, Vec<EventSubscription>> = HashMap::new();
        let mut deliveries = 0;
        for event in &events {
            let Some(event_type) = EventType::for_change(event.status, event.outcome) else {
                continue;
            };
            if !subscriptions.contains_key(&event.account) {
                let rows = sqlx::query(&format!(
                    "SELECT {} FROM event_subscriptions WHERE account_id = $1 AND enabled = 1 \
                     ORDER BY created_on, uuid",
                    super::subscriptions::COLUMNS
                ))
                .bind(event.account.as_str())
                .fetch_all(&mut *w.tx)
                .await
                .context("reading the subscriptions of an account")?;
                let subs = rows
                    .iter()
                    .map(super::subscriptions::from_row)
                    .collect::<anyhow::Result<_>>()?;
                subscriptions.insert(event.account.clone(), subs);
            }
            let wanting: Vec<&EventSubscription> = subscriptions[&event.account]
                .iter()
                .filter(|s| s.created_on <= event.at && s.wants(&event.worker, event_type))
                .collect();
            if wanting.is_empty() {
                continue;
            }
            let Some(build) = self.get_build(&event.account, event.build).await? else {
                tracing::warn!(build.uuid = %event.build, seq = event.seq, "an event names a build that does not exist: not announced");
                continue;
            };
            let change = StatusChange {
                build: event.build,
                account: event.account.clone(),
                worker: event.worker.clone(),
                status: event.status,
                outcome: event.outcome,
                at: event.at,
            };
            for sub in wanting {
                let inserted = sqlx::query(
                    "INSERT INTO event_deliveries (uuid, subscription_uuid, account_id, build_uuid, \
                     event_seq, event_type, body, status, attempts, created_on, next_attempt_on, \
                     retry_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $9, $10) \
                     ON CONFLICT (subscription_uuid, event_seq) DO NOTHING",
                )
                .bind(DeliveryId::new().to_string())
                .bind(sub.id.to_string())
                .bind(event.account.as_str())
                .bind(event.build.to_string())
                .bind(event.seq)
                .bind(event_type.as_str())
                .bind(event_body(event_type, &change, &build, sub.id))
                .bind(DeliveryStatus::Pending.as_str())
                .bind(now.millis())
                .bind(retry_until.millis())
                .execute(&mut *w.tx)
                .await
                .context("storing a delivery")?;
                deliveries += usize::try_from(inserted.rows_affected()).unwrap_or(0);
            }
        }
        sqlx::query("UPDATE notification_cursor SET last_seq = $1 WHERE name = $2")
            .bind(last)
            .bind(CURSOR)
            .execute(&mut *w.tx)
            .await
            .context("advancing the notifications cursor")?;
        w.commit().await?;
        Ok(FanOut {
            events: events.len(),
            deliveries,
        })
    }
}
