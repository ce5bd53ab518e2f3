//! Environment variables per trigger; secret values are sealed at rest.

use anyhow::Context;
use sqlx::any::AnyRow;

use super::Store;
use super::rows::{flag, opt_text, text, ts};
use crate::domain::{EnvVar, Invalid, MAX_ENV_VARS, Timestamp, TriggerId};

/// One requested change: set `key`, keeping the stored value when `value` is `None`.
#[derive(Clone)]
pub struct EnvVarChange {
    pub key: String,
    pub is_secret: bool,
    pub value: Option<String>,
}

// The value may be a secret: `{:?}` must not show it.
impl std::fmt::Debug for EnvVarChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvVarChange")
            .field("key", &self.key)
            .field("is_secret", &self.is_secret)
            .field("value", &self.value.as_ref().map(|_| ".."))
            .finish()
    }
}

impl Store {
    fn env_var_from_row(&self, row: &AnyRow) -> anyhow::Result<EnvVar> {
        let is_secret = flag(row, "is_secret")?;
        let value = if is_secret {
            let sealed: Vec<u8> = sqlx::Row::try_get(row, "value_enc")?;
            self.secrets.open_str(&sealed)?
        } else {
            opt_text(row, "value_plain")?.unwrap_or_default()
        };
        Ok(EnvVar {
            key: text(row, "key")?,
            is_secret,
            value,
            created_on: ts(row, "created_on")?,
        })
    }

    pub(super) async fn read_env_vars<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
        &self,
        executor: E,
        trigger: TriggerId,
    ) -> anyhow::Result<Vec<EnvVar>> {
        let rows = sqlx::query(
            "SELECT key, is_secret, value_plain, value_enc, created_on FROM env_vars WHERE trigger_uuid = $1 ORDER BY key",
        )
        .bind(trigger.to_string())
        .fetch_all(executor)
        .await
        .context("reading environment variables")?;
        rows.iter().map(|r| self.env_var_from_row(r)).collect()
    }

    /// A trigger's variables by name, secrets decrypted (callers show them only through [`EnvVar::view`]).
    pub async fn list_env_vars(&self, trigger: TriggerId) -> anyhow::Result<Vec<EnvVar>> {
        self.read_env_vars(&self.pool, trigger).await
    }

    /// Deletes the variables named in `remove` and sets `changes`, in one transaction, enforcing the
    /// per-trigger count; returns the full map after.
    /// A change without a value keeps the stored value; it is refused for a new variable and for a
    /// secret that would become plain (a secret is replaced or deleted, never revealed). Nothing is
    /// written when a change is refused.
    pub async fn upsert_env_vars(
        &self,
        trigger: TriggerId,
        changes: &[EnvVarChange],
        remove: &[String],
    ) -> anyhow::Result<Result<Vec<EnvVar>, Invalid>> {
        let mut w = self.begin_write().await?;
        let result = self
            .upsert_env_vars_in(&mut w, trigger, changes, remove)
            .await?;
        if result.is_ok() {
            w.commit().await?;
        }
        Ok(result)
    }

    /// [`Store::upsert_env_vars`] inside the caller's transaction (not committed here; the caller
    /// must not commit after an `Err`).
    pub(super) async fn upsert_env_vars_in(
        &self,
        w: &mut super::WriteTx<'_>,
        trigger: TriggerId,
        changes: &[EnvVarChange],
        remove: &[String],
    ) -> anyhow::Result<Result<Vec<EnvVar>, Invalid>> {
        self.lock_key(w, &format!("env:{trigger}")).await?;
        for key in remove {
            sqlx::query("DELETE FROM env_vars WHERE trigger_uuid = $1 AND key = $2")
                .bind(trigger.to_string())
                .bind(key)
                .execute(&mut *w.tx)
                .await
                .context("deleting an environment variable")?;
        }
        let existing = self.read_env_vars(&mut *w.tx, trigger).await?;
        let now = Timestamp::now().millis();
        for change in changes {
            let old = existing.iter().find(|v| v.key == change.key);
            let value = match (&change.value, old) {
                (Some(v), _) => v.clone(),
                // A secret can be replaced or deleted, never revealed: turning it into a plain
                // variable would show the stored value (DESIGN.md §2).
                (None, Some(old)) if old.is_secret && !change.is_secret => {
                    return Ok(Err(Invalid(format!(
                        "{}: a secret becomes a plain variable only with a new value (its value is never shown)",
                        change.key
                    ))));
                }
                (None, Some(old)) => old.value.clone(),
                (None, None) => {
                    return Ok(Err(Invalid(format!(
                        "{}: value is required for a new variable",
                        change.key
                    ))));
                }
            };
            let (plain, sealed) = if change.is_secret {
                (None, Some(self.secrets.seal_str(&value)?))
            } else {
                (Some(value), None)
            };
            sqlx::query(
                "INSERT INTO env_vars (trigger_uuid, key, is_secret, value_plain, value_enc, created_on, modified_on) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (trigger_uuid, key) DO UPDATE SET \
                 is_secret = excluded.is_secret, value_plain = excluded.value_plain, \
                 value_enc = excluded.value_enc, modified_on = excluded.modified_on",
            )
            .bind(trigger.to_string())
            .bind(&change.key)
            .bind(i64::from(change.is_secret))
            .bind(plain)
            .bind(sealed)
            .bind(now)
            .execute(&mut *w.tx)
            .await
            .context("upserting an environment variable")?;
        }
        let after = self.read_env_vars(&mut *w.tx, trigger).await?;
        if after.len() > MAX_ENV_VARS {
            return Ok(Err(Invalid(format!(
                "a trigger can have at most {MAX_ENV_VARS} environment variables (this request would make {})",
                after.len()
            ))));
        }
        Ok(Ok(after))
    }

    /// Deletes one variable; false when it does not exist.
    pub async fn delete_env_var(&self, trigger: TriggerId, key: &str) -> anyhow::Result<bool> {
        let mut w = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM env_vars WHERE trigger_uuid = $1 AND key = $2")
            .bind(trigger.to_string())
            .bind(key)
            .execute(&mut *w.tx)
            .await
            .context("deleting an environment variable")?;
        w.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}
