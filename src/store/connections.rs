//! Repository connections: upsert by (account, provider, repo id), soft delete.

use anyhow::Context;
use sqlx::Row;

use super::Store;
use super::rows::{CONNECTION_COLUMNS, connection};
use crate::domain::{AccountId, ProviderType, RepoConnection, RepoConnectionId, Timestamp};

/// A validated connection to create or update.
#[derive(Debug, Clone)]
pub struct NewConnection {
    pub provider_type: ProviderType,
    pub provider_account_id: String,
    pub provider_account_name: String,
    pub repo_id: String,
    pub repo_name: String,
}

/// What deleting a connection did.
#[derive(Debug, PartialEq, Eq)]
pub enum DeleteConnection {
    Deleted,
    NotFound,
    /// Live triggers still build from it.
    InUse(i64),
}

impl Store {
    /// Creates the connection, or updates (and revives) the one with the same account, provider and repo id.
    pub async fn upsert_repo_connection(
        &self,
        account: &AccountId,
        new: &NewConnection,
    ) -> anyhow::Result<RepoConnection> {
        let mut w = self.begin_write().await?;
        let conn = self.upsert_repo_connection_in(&mut w, account, new).await?;
        w.commit().await?;
        Ok(conn)
    }

    /// [`Store::upsert_repo_connection`] inside the caller's transaction.
    pub(super) async fn upsert_repo_connection_in(
        &self,
        w: &mut super::WriteTx<'_>,
        account: &AccountId,
        new: &NewConnection,
    ) -> anyhow::Result<RepoConnection> {
        let now = Timestamp::now().millis();
        sqlx::query(
            "INSERT INTO repo_connections (uuid, account_id, provider_type, provider_account_id, \
             provider_account_name, repo_id, repo_name, created_on, modified_on) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             ON CONFLICT (account_id, provider_type, repo_id) DO UPDATE SET \
             provider_account_id = excluded.provider_account_id, \
             provider_account_name = excluded.provider_account_name, \
             repo_name = excluded.repo_name, modified_on = excluded.modified_on, deleted_on = NULL",
        )
        .bind(RepoConnectionId::new().to_string())
        .bind(account.as_str())
        .bind(new.provider_type.as_str())
        .bind(&new.provider_account_id)
        .bind(&new.provider_account_name)
        .bind(&new.repo_id)
        .bind(&new.repo_name)
        .bind(now)
        .execute(&mut *w.tx)
        .await
        .context("upserting a repository connection")?;
        let row = sqlx::query(&format!(
            "SELECT {CONNECTION_COLUMNS} FROM repo_connections c \
             WHERE c.account_id = $1 AND c.provider_type = $2 AND c.repo_id = $3"
        ))
        .bind(account.as_str())
        .bind(new.provider_type.as_str())
        .bind(&new.repo_id)
        .fetch_one(&mut *w.tx)
        .await
        .context("reading back a repository connection")?;
        connection(&row)
    }

    /// The live connection with this id in this account.
    pub async fn get_repo_connection(
        &self,
        account: &AccountId,
        id: RepoConnectionId,
    ) -> anyhow::Result<Option<RepoConnection>> {
        let row = sqlx::query(&format!(
            "SELECT {CONNECTION_COLUMNS} FROM repo_connections c \
             WHERE c.uuid = $1 AND c.account_id = $2 AND c.deleted_on IS NULL"
        ))
        .bind(id.to_string())
        .bind(account.as_str())
        .fetch_optional(&self.pool)
        .await
        .context("reading a repository connection")?;
        row.as_ref().map(connection).transpose()
    }

    /// The live connection of this account to this repository (`provider_type`, `provider_account_id`,
    /// `repo_id`), as named in the repository routes.
    pub async fn get_repo_connection_by_repo(
        &self,
        account: &AccountId,
        provider_type: ProviderType,
        provider_account_id: &str,
        repo_id: &str,
    ) -> anyhow::Result<Option<RepoConnection>> {
        let row = sqlx::query(&format!(
            "SELECT {CONNECTION_COLUMNS} FROM repo_connections c \
             WHERE c.account_id = $1 AND c.provider_type = $2 AND c.provider_account_id = $3 \
             AND c.repo_id = $4 AND c.deleted_on IS NULL"
        ))
        .bind(account.as_str())
        .bind(provider_type.as_str())
        .bind(provider_account_id)
        .bind(repo_id)
        .fetch_optional(&self.pool)
        .await
        .context("reading a repository connection by repository")?;
        row.as_ref().map(connection).transpose()
    }

    /// Soft-deletes a connection that no live trigger uses.
    pub async fn delete_repo_connection(
        &self,
        account: &AccountId,
        id: RepoConnectionId,
    ) -> anyhow::Result<DeleteConnection> {
        let mut w = self.begin_write().await?;
        let exists = sqlx::query(
            "SELECT uuid FROM repo_connections WHERE uuid = $1 AND account_id = $2 AND deleted_on IS NULL",
        )
        .bind(id.to_string())
        .bind(account.as_str())
        .fetch_optional(&mut *w.tx)
        .await?;
        if exists.is_none() {
            return Ok(DeleteConnection::NotFound);
        }
        let users: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM triggers WHERE repo_connection_uuid = $1 AND deleted_on IS NULL",
        )
        .bind(id.to_string())
        .fetch_one(&mut *w.tx)
        .await?
        .try_get("n")?;
        if users > 0 {
            return Ok(DeleteConnection::InUse(users));
        }
        sqlx::query(
            "UPDATE repo_connections SET deleted_on = $1, modified_on = $1 WHERE uuid = $2",
        )
        .bind(Timestamp::now().millis())
        .bind(id.to_string())
        .execute(&mut *w.tx)
        .await
        .context("deleting a repository connection")?;
        w.commit().await?;
        Ok(DeleteConnection::Deleted)
    }
}
