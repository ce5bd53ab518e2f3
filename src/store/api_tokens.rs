//! API credentials (Kiln's own tokens and global keys), stored as hashes.

use anyhow::Context;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Store;
use super::rows::{opt_text, opt_ts, text, ts};
use crate::domain::{AccountId, AccountScope, ApiToken, CredentialKind, Permission};

const COLUMNS: &str =
    "id, kind, email, permission, all_accounts, accounts, label, created_on, revoked_on";

fn from_row(row: &AnyRow) -> anyhow::Result<ApiToken> {
    let kind = match text(row, "kind")?.as_str() {
        "global_key" => CredentialKind::GlobalKey,
        _ => CredentialKind::Token,
    };
    let scope = if row.try_get::<i64, _>("all_accounts")? != 0 {
        AccountScope::All
    } else {
        let ids: Vec<String> = serde_json::from_str(&text(row, "accounts")?)?;
        AccountScope::Only(ids.into_iter().map(AccountId::from_stored).collect())
    };
    Ok(ApiToken {
        id: text(row, "id")?,
        kind,
        email: opt_text(row, "email")?,
        permission: Permission::from_stored(&text(row, "permission")?)?,
        scope,
        created_on: ts(row, "created_on")?,
        revoked_on: opt_ts(row, "revoked_on")?,
        label: opt_text(row, "label")?,
    })
}

impl Store {
    /// Stores a credential by the hash of its secret. Returns false when that hash already exists
    /// (so registering the same bootstrap token at every start is idempotent).
    pub async fn insert_api_token(
        &self,
        token: &ApiToken,
        secret_hash: &str,
    ) -> anyhow::Result<bool> {
        let (all, accounts) = match &token.scope {
            AccountScope::All => (1i64, "[]".to_owned()),
            AccountScope::Only(ids) => (
                0i64,
                serde_json::to_string(&ids.iter().map(AccountId::as_str).collect::<Vec<_>>())?,
            ),
        };
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "INSERT INTO api_tokens (id, kind, email, secret_hash, permission, all_accounts, accounts, label, created_on) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (secret_hash) DO NOTHING",
        )
        .bind(&token.id)
        .bind(token.kind.as_str())
        .bind(token.email.as_deref())
        .bind(secret_hash)
        .bind(token.permission.as_str())
        .bind(all)
        .bind(accounts)
        .bind(token.label.as_deref())
        .bind(token.created_on.millis())
        .execute(&mut *w.tx)
        .await
        .context("inserting an API token")?;
        w.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// The live (not revoked) credential with this secret hash and kind.
    pub async fn get_api_token_by_hash(
        &self,
        kind: CredentialKind,
        secret_hash: &str,
    ) -> anyhow::Result<Option<ApiToken>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_tokens WHERE secret_hash = $1 AND kind = $2 AND revoked_on IS NULL"
        ))
        .bind(secret_hash)
        .bind(kind.as_str())
        .fetch_optional(&self.pool)
        .await
        .context("looking up an API token")?;
        row.as_ref().map(from_row).transpose()
    }

    /// The live (not revoked) credential with this id (a dashboard session reads its token again on
    /// every request through it).
    pub async fn get_api_token(&self, id: &str) -> anyhow::Result<Option<ApiToken>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_tokens WHERE id = $1 AND revoked_on IS NULL"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("reading an API token")?;
        row.as_ref().map(from_row).transpose()
    }

    /// Every credential, oldest first, revoked ones included.
    pub async fn list_api_tokens(&self) -> anyhow::Result<Vec<ApiToken>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_tokens ORDER BY created_on, id"
        ))
        .fetch_all(&self.pool)
        .await
        .context("listing API tokens")?;
        rows.iter().map(from_row).collect()
    }

    /// Revokes a credential; false when no live credential has this id.
    pub async fn revoke_api_token(
        &self,
        id: &str,
        now: crate::domain::Timestamp,
    ) -> anyhow::Result<bool> {
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_on = $1 WHERE id = $2 AND revoked_on IS NULL",
        )
        .bind(now.millis())
        .bind(id)
        .execute(&mut *w.tx)
        .await
        .context("revoking an API token")?;
        w.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}
