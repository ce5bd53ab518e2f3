//! Deliveries of build events to subscriptions: listed and redelivered through the API, claimed by a
//! node's dispatcher with a per-row lease (so several nodes on one database never send one attempt
//! twice at once), and updated with each attempt's result.

use std::collections::HashMap;

use anyhow::Context;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Store;
use super::rows::{opt_text, opt_ts, text, ts};
use crate::domain::{
    AccountId, BuildId, Delivery, DeliveryId, DeliveryStatus, EventType, SubscriptionId, Timestamp,
    WebhookSecret,
};

/// A delivery a dispatcher holds the lease of, with what sending it needs.
#[derive(Debug)]
pub struct ClaimedDelivery {
    pub id: DeliveryId,
    pub subscription: SubscriptionId,
    pub build: BuildId,
    pub event_type: EventType,
    /// The subscription's current URL.
    pub url: String,
    /// The subscription's current signing secret.
    pub secret: WebhookSecret,
    /// The event, exactly as it is signed and sent.
    pub body: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// After this time a failed attempt gives the delivery up.
    pub retry_until: Timestamp,
}

/// The result of one attempt, as recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub at: Timestamp,
    pub response_code: Option<i64>,
    pub error: Option<String>,
    /// `Delivered`, `Pending` (to retry at `next_attempt_on`) or `Failed` (given up).
    pub status: DeliveryStatus,
    pub next_attempt_on: Timestamp,
}

const COLUMNS: &str = "d.uuid, d.event_type, d.build_uuid, d.status, d.attempts, d.response_code, \
    d.last_error, d.created_on, d.last_attempt_on, d.next_attempt_on, d.finished_on";

fn from_row(row: &AnyRow) -> anyhow::Result<Delivery> {
    let status = DeliveryStatus::from_stored(&text(row, "status")?)?;
    Ok(Delivery {
        id: DeliveryId::from_stored(&text(row, "uuid")?)?,
        event_type: EventType::from_stored(&text(row, "event_type")?)?,
        build_uuid: BuildId::from_stored(&text(row, "build_uuid")?)?,
        status,
        attempts: row.try_get("attempts")?,
        response_code: row.try_get("response_code")?,
        last_error: opt_text(row, "last_error")?,
        created_on: ts(row, "created_on")?,
        last_attempt_on: opt_ts(row, "last_attempt_on")?,
        next_attempt_on: (status == DeliveryStatus::Pending)
            .then(|| ts(row, "next_attempt_on"))
            .transpose()?,
        finished_on: opt_ts(row, "finished_on")?,
    })
}

impl Store {
    /// Leases up to `limit` deliveries that are due at `now` to `owner` until `lease_until`, oldest
    /// due first: pending, of an enabled subscription, not leased by anyone (or the lease lapsed), and
    /// the earliest pending event of their build for their subscription (events of a build go out in
    /// order). A subscription gets at most `per_subscription` deliveries in flight with this owner,
    /// counting `in_flight`, so that a slow endpoint cannot take every slot.
    pub async fn claim_deliveries(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
        in_flight: &HashMap<SubscriptionId, usize>,
        per_subscription: usize,
    ) -> anyhow::Result<Vec<ClaimedDelivery>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let pending = DeliveryStatus::Pending.as_str();
        // More candidates than slots: those of subscriptions at their cap are passed over.
        let candidates = sqlx::query(
            "SELECT d.uuid, d.subscription_uuid FROM event_deliveries d \
             JOIN event_subscriptions s ON s.uuid = d.subscription_uuid \
             WHERE d.status = $1 AND d.next_attempt_on <= $2 AND s.enabled = 1 \
             AND (d.lease_expires IS NULL OR d.lease_expires <= $2) \
             AND NOT EXISTS (SELECT 1 FROM event_deliveries e WHERE e.subscription_uuid = d.subscription_uuid \
                 AND e.build_uuid = d.build_uuid AND e.event_seq < d.event_seq AND e.status = $1) \
             ORDER BY d.next_attempt_on, d.event_seq LIMIT $3",
        )
        .bind(pending)
        .bind(now.millis())
        .bind(i64::try_from(limit.saturating_mul(4)).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .context("finding deliveries to send")?;
        let mut counts = in_flight.clone();
        let mut chosen = Vec::new();
        for row in &candidates {
            if chosen.len() == limit {
                break;
            }
            let subscription = SubscriptionId::from_stored(&text(row, "subscription_uuid")?)?;
            let n = counts.entry(subscription).or_insert(0);
            if *n < per_subscription {
                *n += 1;
                chosen.push(DeliveryId::from_stored(&text(row, "uuid")?)?);
            }
        }
        if chosen.is_empty() {
            return Ok(Vec::new());
        }
        let mut w = self.begin_write().await?;
        let mut claimed = Vec::new();
        for id in chosen {
            // Another node may have taken it since it was read: only a free row is leased.
            let done = sqlx::query(
                "UPDATE event_deliveries SET lease_owner = $1, lease_expires = $2 \
                 WHERE uuid = $3 AND status = $4 AND (lease_expires IS NULL OR lease_expires <= $5)",
            )
            .bind(owner)
            .bind(lease_until.millis())
            .bind(id.to_string())
            .bind(pending)
            .bind(now.millis())
            .execute(&mut *w.tx)
            .await
            .context("leasing a delivery")?;
            if done.rows_affected() != 1 {
                continue;
            }
            let row = sqlx::query(
                "SELECT d.subscription_uuid, d.build_uuid, d.event_type, d.body, d.attempts, \
                 d.retry_until, s.url, s.secret_enc FROM event_deliveries d \
                 JOIN event_subscriptions s ON s.uuid = d.subscription_uuid WHERE d.uuid = $1",
            )
            .bind(id.to_string())
            .fetch_one(&mut *w.tx)
            .await
            .context("reading a leased delivery")?;
            let sealed: Vec<u8> = row.try_get("secret_enc")?;
            claimed.push(ClaimedDelivery {
                id,
                subscription: SubscriptionId::from_stored(&text(&row, "subscription_uuid")?)?,
                build: BuildId::from_stored(&text(&row, "build_uuid")?)?,
                event_type: EventType::from_stored(&text(&row, "event_type")?)?,
                url: text(&row, "url")?,
                secret: WebhookSecret::from_stored(self.secrets.open_str(&sealed)?)?,
                body: text(&row, "body")?,
                attempts: row.try_get("attempts")?,
                retry_until: ts(&row, "retry_until")?,
            });
        }
        w.commit().await?;
        Ok(claimed)
    }

    /// Records an attempt of a delivery `owner` holds and ends the lease; false when the lease was
    /// lost (the subscription was deleted, or the lease lapsed and another node took the delivery).
    pub async fn record_attempt(
        &self,
        id: DeliveryId,
        owner: &str,
        attempt: &AttemptRecord,
    ) -> anyhow::Result<bool> {
        let finished = (attempt.status != DeliveryStatus::Pending).then_some(attempt.at.millis());
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE event_deliveries SET status = $1, attempts = attempts + 1, response_code = $2, \
             last_error = $3, last_attempt_on = $4, next_attempt_on = $5, finished_on = $6, \
             lease_owner = NULL, lease_expires = NULL WHERE uuid = $7 AND lease_owner = $8",
        )
        .bind(attempt.status.as_str())
        .bind(attempt.response_code)
        .bind(attempt.error.as_deref())
        .bind(attempt.at.millis())
        .bind(attempt.next_attempt_on.millis())
        .bind(finished)
        .bind(id.to_string())
        .bind(owner)
        .execute(&mut *w.tx)
        .await
        .context("recording a delivery attempt")?;
        w.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends every lease `owner` holds (a dispatcher stopping with attempts unfinished): those
    /// deliveries are due again at once, here or on another node.
    pub async fn release_deliveries(&self, owner: &str) -> anyhow::Result<u64> {
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE event_deliveries SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner = $1",
        )
        .bind(owner)
        .execute(&mut *w.tx)
        .await
        .context("releasing delivery leases")?;
        w.commit().await?;
        Ok(done.rows_affected())
    }

    /// When the earliest pending delivery of an enabled subscription is due, if any is pending.
    pub async fn next_delivery_due(&self) -> anyhow::Result<Option<Timestamp>> {
        let row = sqlx::query(
            "SELECT MIN(d.next_attempt_on) AS due FROM event_deliveries d \
             JOIN event_subscriptions s ON s.uuid = d.subscription_uuid \
             WHERE d.status = $1 AND s.enabled = 1",
        )
        .bind(DeliveryStatus::Pending.as_str())
        .fetch_one(&self.pool)
        .await
        .context("finding the next delivery due")?;
        opt_ts(&row, "due")
    }

    /// One page of a subscription's deliveries, newest first, and the total count; `None` when the
    /// account has no such subscription.
    pub async fn list_deliveries(
        &self,
        account: &AccountId,
        subscription: SubscriptionId,
        page: u32,
        per_page: u32,
    ) -> anyhow::Result<Option<(Vec<Delivery>, i64)>> {
        if self
            .get_subscription(account, subscription)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let total: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM event_deliveries WHERE subscription_uuid = $1")
                .bind(subscription.to_string())
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM event_deliveries d WHERE d.subscription_uuid = $1 \
             ORDER BY d.created_on DESC, d.event_seq DESC LIMIT $2 OFFSET $3"
        ))
        .bind(subscription.to_string())
        .bind(i64::from(per_page))
        .bind(i64::from(page - 1) * i64::from(per_page))
        .fetch_all(&self.pool)
        .await
        .context("listing deliveries")?;
        Ok(Some((
            rows.iter().map(from_row).collect::<anyhow::Result<_>>()?,
            total,
        )))
    }

    /// Makes a delivery pending again, due at `now`, retried until `retry_until`; `None` when the
    /// account has no such subscription or the subscription no such delivery. An attempt in flight
    /// keeps its lease: it finishes first, and its result stands for the redelivery.
    pub async fn redeliver(
        &self,
        account: &AccountId,
        subscription: SubscriptionId,
        delivery: DeliveryId,
        now: Timestamp,
        retry_until: Timestamp,
    ) -> anyhow::Result<Option<Delivery>> {
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE event_deliveries SET status = $1, next_attempt_on = $2, retry_until = $3, \
             finished_on = NULL WHERE uuid = $4 AND subscription_uuid = $5 AND account_id = $6",
        )
        .bind(DeliveryStatus::Pending.as_str())
        .bind(now.millis())
        .bind(retry_until.millis())
        .bind(delivery.to_string())
        .bind(subscription.to_string())
        .bind(account.as_str())
        .execute(&mut *w.tx)
        .await
        .context("redelivering")?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM event_deliveries d WHERE d.uuid = $1"
        ))
        .bind(delivery.to_string())
        .fetch_one(&mut *w.tx)
        .await
        .context("reading a delivery")?;
        let shown = from_row(&row)?;
        w.commit().await?;
        Ok(Some(shown))
    }
}
