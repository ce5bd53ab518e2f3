//! Build tokens: the Cloudflare API tokens builds deploy with. Secrets are sealed; deletion is soft so
//! that builds keep naming the token they ran with.

use anyhow::Context;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Store;
use super::rows::{text, ts};
use crate::domain::{AccountId, BuildToken, BuildTokenId, Timestamp};

fn from_row(row: &AnyRow) -> anyhow::Result<BuildToken> {
    Ok(BuildToken {
        build_token_uuid: BuildTokenId::from_stored(&text(row, "uuid")?)?,
        build_token_name: text(row, "name")?,
        cloudflare_token_id: text(row, "cloudflare_token_id")?,
        owner_type: text(row, "owner_type")?,
        created_on: ts(row, "created_on")?,
    })
}

const COLUMNS: &str = "uuid, name, cloudflare_token_id, owner_type, created_on";

impl Store {
    /// Creates a build token, sealing its secret.
    pub async fn insert_build_token(
        &self,
        account: &AccountId,
        name: &str,
        cloudflare_token_id: &str,
        secret: &str,
    ) -> anyhow::Result<BuildToken> {
        let token = BuildToken {
            build_token_uuid: BuildTokenId::new(),
            build_token_name: name.to_owned(),
            cloudflare_token_id: cloudflare_token_id.to_owned(),
            owner_type: "user".to_owned(),
            created_on: Timestamp::now(),
        };
        let sealed = self.secrets.seal_str(secret)?;
        let mut w = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO build_tokens (uuid, account_id, name, cloudflare_token_id, owner_type, secret_enc, created_on) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(token.build_token_uuid.to_string())
        .bind(account.as_str())
        .bind(name)
        .bind(cloudflare_token_id)
        .bind(&token.owner_type)
        .bind(sealed)
        .bind(token.created_on.millis())
        .execute(&mut *w.tx)
        .await
        .context("inserting a build token")?;
        w.commit().await?;
        Ok(token)
    }

    /// One page of an account's live build tokens, newest first, and the total count.
    pub async fn list_build_tokens(
        &self,
        account: &AccountId,
        page: u32,
        per_page: u32,
    ) -> anyhow::Result<(Vec<BuildToken>, i64)> {
        let total: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM build_tokens WHERE account_id = $1 AND deleted_on IS NULL",
        )
        .bind(account.as_str())
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM build_tokens WHERE account_id = $1 AND deleted_on IS NULL \
             ORDER BY created_on DESC, uuid DESC LIMIT $2 OFFSET $3"
        ))
        .bind(account.as_str())
        .bind(i64::from(per_page))
        .bind(i64::from(page - 1) * i64::from(per_page))
        .fetch_all(&self.pool)
        .await
        .context("listing build tokens")?;
        Ok((
            rows.iter().map(from_row).collect::<anyhow::Result<_>>()?,
            total,
        ))
    }

    /// The live build token with this id in this account.
    pub async fn get_build_token(
        &self,
        account: &AccountId,
        id: BuildTokenId,
    ) -> anyhow::Result<Option<BuildToken>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM build_tokens WHERE uuid = $1 AND account_id = $2 AND deleted_on IS NULL"
        ))
        .bind(id.to_string())
        .bind(account.as_str())
        .fetch_optional(&self.pool)
        .await
        .context("reading a build token")?;
        row.as_ref().map(from_row).transpose()
    }

    /// Soft-deletes a build token; false when there is no live token with this id.
    pub async fn delete_build_token(
        &self,
        account: &AccountId,
        id: BuildTokenId,
    ) -> anyhow::Result<bool> {
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE build_tokens SET deleted_on = $1 WHERE uuid = $2 AND account_id = $3 AND deleted_on IS NULL",
        )
        .bind(Timestamp::now().millis())
        .bind(id.to_string())
        .bind(account.as_str())
        .execute(&mut *w.tx)
        .await
        .context("deleting a build token")?;
        w.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}
