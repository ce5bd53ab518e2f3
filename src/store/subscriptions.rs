//! Event subscriptions per account; their signing secrets are sealed. Deleting one deletes its
//! deliveries (the foreign key cascades).

use anyhow::Context;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::rows::{flag, list, text, to_json_list, ts};
use super::{Backend, Store};
use crate::domain::{
    AccountId, EventSubscription, EventType, MAX_SUBSCRIPTIONS_PER_ACCOUNT, SubscriptionId,
    Timestamp, WebhookSecret, WorkerId,
};

/// A subscription to create.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub name: String,
    pub url: String,
    pub secret: WebhookSecret,
    pub worker_names: Vec<WorkerId>,
    pub event_types: Vec<EventType>,
    pub enabled: bool,
}

/// Changes to a subscription; `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionPatch {
    pub name: Option<String>,
    pub url: Option<String>,
    pub secret: Option<WebhookSecret>,
    pub worker_names: Option<Vec<WorkerId>>,
    pub event_types: Option<Vec<EventType>>,
    pub enabled: Option<bool>,
}

/// Why a subscription could not be created.
#[derive(Debug, PartialEq, Eq)]
pub enum SubscriptionWriteError {
    /// The account already has [`MAX_SUBSCRIPTIONS_PER_ACCOUNT`] subscriptions.
    TooMany,
}

pub(super) const COLUMNS: &str =
    "uuid, account_id, name, url, worker_names, event_types, enabled, created_on, modified_on";

pub(super) fn from_row(row: &AnyRow) -> anyhow::Result<EventSubscription> {
    Ok(EventSubscription {
        id: SubscriptionId::from_stored(&text(row, "uuid")?)?,
        name: text(row, "name")?,
        url: text(row, "url")?,
        worker_names: list(row, "worker_names")?
            .into_iter()
            .map(WorkerId::from_stored)
            .collect(),
        event_types: list(row, "event_types")?
            .iter()
            .map(|t| EventType::from_stored(t))
            .collect::<anyhow::Result<_>>()?,
        enabled: flag(row, "enabled")?,
        created_on: ts(row, "created_on")?,
        modified_on: ts(row, "modified_on")?,
        account_id: AccountId::from_stored(text(row, "account_id")?),
    })
}

fn workers_json(workers: &[WorkerId]) -> String {
    to_json_list(&workers.iter().map(|w| w.to_string()).collect::<Vec<_>>())
}

fn types_json(types: &[EventType]) -> String {
    to_json_list(
        &types
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
}

impl Store {
    /// Creates a subscription, sealing its secret; refused when the account has
    /// [`MAX_SUBSCRIPTIONS_PER_ACCOUNT`] already.
    pub async fn insert_subscription(
        &self,
        account: &AccountId,
        new: &NewSubscription,
    ) -> anyhow::Result<Result<EventSubscription, SubscriptionWriteError>> {
        let sealed = self.secrets.seal_str(new.secret.expose())?;
        let mut w = self.begin_write().await?;
        self.lock_key(&mut w, &format!("subscriptions:{account}"))
            .await?;
        let count: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM event_subscriptions WHERE account_id = $1")
                .bind(account.as_str())
                .fetch_one(&mut *w.tx)
                .await?
                .try_get("n")?;
        if count >= MAX_SUBSCRIPTIONS_PER_ACCOUNT {
            return Ok(Err(SubscriptionWriteError::TooMany));
        }
        let now = Timestamp::now();
        let sub = EventSubscription {
            id: SubscriptionId::new(),
            name: new.name.clone(),
            url: new.url.clone(),
            worker_names: new.worker_names.clone(),
            event_types: new.event_types.clone(),
            enabled: new.enabled,
            created_on: now,
            modified_on: now,
            account_id: account.clone(),
        };
        sqlx::query(
            "INSERT INTO event_subscriptions (uuid, account_id, name, url, secret_enc, worker_names, \
             event_types, enabled, created_on, modified_on) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(sub.id.to_string())
        .bind(account.as_str())
        .bind(&sub.name)
        .bind(&sub.url)
        .bind(sealed)
        .bind(workers_json(&sub.worker_names))
        .bind(types_json(&sub.event_types))
        .bind(i64::from(sub.enabled))
        .bind(now.millis())
        .execute(&mut *w.tx)
        .await
        .context("inserting an event subscription")?;
        w.commit().await?;
        Ok(Ok(sub))
    }

    /// One page of an account's subscriptions, oldest first, and the total count.
    pub async fn list_subscriptions(
        &self,
        account: &AccountId,
        page: u32,
        per_page: u32,
    ) -> anyhow::Result<(Vec<EventSubscription>, i64)> {
        let total: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM event_subscriptions WHERE account_id = $1")
                .bind(account.as_str())
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM event_subscriptions WHERE account_id = $1 \
             ORDER BY created_on, uuid LIMIT $2 OFFSET $3"
        ))
        .bind(account.as_str())
        .bind(i64::from(per_page))
        .bind(i64::from(page - 1) * i64::from(per_page))
        .fetch_all(&self.pool)
        .await
        .context("listing event subscriptions")?;
        Ok((
            rows.iter().map(from_row).collect::<anyhow::Result<_>>()?,
            total,
        ))
    }

    /// The subscription with this id in this account.
    pub async fn get_subscription(
        &self,
        account: &AccountId,
        id: SubscriptionId,
    ) -> anyhow::Result<Option<EventSubscription>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM event_subscriptions WHERE uuid = $1 AND account_id = $2"
        ))
        .bind(id.to_string())
        .bind(account.as_str())
        .fetch_optional(&self.pool)
        .await
        .context("reading an event subscription")?;
        row.as_ref().map(from_row).transpose()
    }

    /// Applies `patch`; `None` when there is no such subscription in the account.
    pub async fn update_subscription(
        &self,
        account: &AccountId,
        id: SubscriptionId,
        patch: &SubscriptionPatch,
    ) -> anyhow::Result<Option<EventSubscription>> {
        let sealed = patch
            .secret
            .as_ref()
            .map(|s| self.secrets.seal_str(s.expose()))
            .transpose()?;
        let mut w = self.begin_write().await?;
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM event_subscriptions WHERE uuid = $1 AND account_id = $2{lock}"
        ))
        .bind(id.to_string())
        .bind(account.as_str())
        .fetch_optional(&mut *w.tx)
        .await
        .context("reading an event subscription")?;
        let Some(row) = row else { return Ok(None) };
        let mut sub = from_row(&row)?;
        if let Some(v) = &patch.name {
            sub.name = v.clone();
        }
        if let Some(v) = &patch.url {
            sub.url = v.clone();
        }
        if let Some(v) = &patch.worker_names {
            sub.worker_names = v.clone();
        }
        if let Some(v) = &patch.event_types {
            sub.event_types = v.clone();
        }
        if let Some(v) = patch.enabled {
            sub.enabled = v;
        }
        sub.modified_on = Timestamp::now();
        sqlx::query(
            "UPDATE event_subscriptions SET name = $1, url = $2, worker_names = $3, event_types = $4, \
             enabled = $5, modified_on = $6 WHERE uuid = $7",
        )
        .bind(&sub.name)
        .bind(&sub.url)
        .bind(workers_json(&sub.worker_names))
        .bind(types_json(&sub.event_types))
        .bind(i64::from(sub.enabled))
        .bind(sub.modified_on.millis())
        .bind(id.to_string())
        .execute(&mut *w.tx)
        .await
        .context("updating an event subscription")?;
        if let Some(sealed) = sealed {
            sqlx::query("UPDATE event_subscriptions SET secret_enc = $1 WHERE uuid = $2")
                .bind(sealed)
                .bind(id.to_string())
                .execute(&mut *w.tx)
                .await
                .context("replacing an event subscription's secret")?;
        }
        w.commit().await?;
        Ok(Some(sub))
    }

    /// Deletes a subscription and its deliveries; false when there is no such subscription in the
    /// account.
    pub async fn delete_subscription(
        &self,
        account: &AccountId,
        id: SubscriptionId,
    ) -> anyhow::Result<bool> {
        let mut w = self.begin_write().await?;
        let done =
            sqlx::query("DELETE FROM event_subscriptions WHERE uuid = $1 AND account_id = $2")
                .bind(id.to_string())
                .bind(account.as_str())
                .execute(&mut *w.tx)
                .await
                .context("deleting an event subscription")?;
        w.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}
