//! Which accounts own which GitHub App installations (`github_installation_accounts`).
//!
//! The link is made by an operator (`kiln installations link`), never through the API: a request body
//! can name any repository, so what a connection says proves nothing about who may build it. A
//! repository covered by an installation (GitHub says which, in every App delivery, see
//! [`Store::get_installation`]) is built from deliveries, cloned with the installation's token and
//! reported on only for the accounts linked to that installation.

use anyhow::Context;
use sqlx::Row;

use super::Store;
use super::rows::{text, ts};
use crate::domain::{AccountId, Timestamp};

/// One account ↔ installation link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallationLink {
    /// GitHub's numeric installation id.
    pub installation: i64,
    pub account: AccountId,
    pub created_on: Timestamp,
}

impl Store {
    /// Links `account` to the GitHub App installation `installation`; false when it was linked already.
    pub async fn link_installation(
        &self,
        installation: i64,
        account: &AccountId,
    ) -> anyhow::Result<bool> {
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "INSERT INTO github_installation_accounts (installation_id, account_id, created_on) \
             VALUES ($1, $2, $3) ON CONFLICT (installation_id, account_id) DO NOTHING",
        )
        .bind(installation)
        .bind(account.as_str())
        .bind(Timestamp::now().millis())
        .execute(&mut *w.tx)
        .await
        .context("linking an installation")?;
        w.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes the link; false when there was none. Builds already queued for the account then fail
    /// at their clone, and nothing more is reported for them.
    pub async fn unlink_installation(
        &self,
        installation: i64,
        account: &AccountId,
    ) -> anyhow::Result<bool> {
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "DELETE FROM github_installation_accounts WHERE installation_id = $1 AND account_id = $2",
        )
        .bind(installation)
        .bind(account.as_str())
        .execute(&mut *w.tx)
        .await
        .context("unlinking an installation")?;
        w.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// The links, of one account or of all, by installation then account.
    pub async fn installation_links(
        &self,
        account: Option<&AccountId>,
    ) -> anyhow::Result<Vec<InstallationLink>> {
        const SELECT: &str =
            "SELECT installation_id, account_id, created_on FROM github_installation_accounts";
        const ORDER: &str = "ORDER BY installation_id, account_id";
        let rows = match account {
            Some(a) => {
                sqlx::query(&format!("{SELECT} WHERE account_id = $1 {ORDER}"))
                    .bind(a.as_str())
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query(&format!("{SELECT} {ORDER}"))
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .context("listing installation links")?;
        rows.iter()
            .map(|r| {
                Ok(InstallationLink {
                    installation: r.try_get("installation_id")?,
                    account: AccountId::from_stored(text(r, "account_id")?),
                    created_on: ts(r, "created_on")?,
                })
            })
            .collect()
    }

    /// Whether `account` is linked to the installation.
    pub async fn owns_installation(
        &self,
        account: &AccountId,
        installation: i64,
    ) -> anyhow::Result<bool> {
        Ok(sqlx::query(
            "SELECT account_id FROM github_installation_accounts \
             WHERE installation_id = $1 AND account_id = $2",
        )
        .bind(installation)
        .bind(account.as_str())
        .fetch_optional(&self.pool)
        .await
        .context("reading an installation link")?
        .is_some())
    }
}
