//! Triggers: at most two live per Worker; deletion is soft so that builds keep their trigger.

use anyhow::Context;
use sqlx::Row;

use super::events::Actor;
use super::rows::{CONNECTION_COLUMNS, TRIGGER_COLUMNS, TRIGGER_FROM, text, to_json_list, trigger};
use super::{Store, WriteTx};
use crate::domain::{
    AccountId, BuildChange, BuildId, BuildStatus, BuildTokenId, MAX_TRIGGERS_PER_WORKER,
    RepoConnectionId, Timestamp, Trigger, TriggerId, WorkerId,
};

/// A validated trigger to create.
#[derive(Debug, Clone)]
pub struct NewTrigger {
    pub external_script_id: WorkerId,
    pub repo_connection_uuid: RepoConnectionId,
    /// `None`: the account's only live build token.
    pub build_token_uuid: Option<BuildTokenId>,
    pub trigger_name: String,
    pub build_command: String,
    pub deploy_command: String,
    pub root_directory: String,
    pub branch_includes: Vec<String>,
    pub branch_excludes: Vec<String>,
    pub path_includes: Vec<String>,
    pub path_excludes: Vec<String>,
    pub build_caching_enabled: bool,
}

/// A validated partial update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct TriggerPatch {
    pub trigger_name: Option<String>,
    pub build_token_uuid: Option<BuildTokenId>,
    pub build_command: Option<String>,
    pub deploy_command: Option<String>,
    pub root_directory: Option<String>,
    pub branch_includes: Option<Vec<String>>,
    pub branch_excludes: Option<Vec<String>>,
    pub path_includes: Option<Vec<String>>,
    pub path_excludes: Option<Vec<String>>,
    pub build_caching_enabled: Option<bool>,
}

/// Why a trigger could not be written.
#[derive(Debug, PartialEq, Eq)]
pub enum TriggerWriteError {
    NotFound,
    UnknownConnection,
    UnknownBuildToken,
    TooManyTriggers,
    /// No token was named and the account does not have exactly one (`tokens` live ones).
    NoDefaultBuildToken {
        tokens: usize,
    },
}

impl Store {
    async fn build_token_is_live(
        &self,
        w: &mut WriteTx<'_>,
        account: &AccountId,
        id: BuildTokenId,
    ) -> anyhow::Result<bool> {
        Ok(sqlx::query(
            "SELECT uuid FROM build_tokens WHERE uuid = $1 AND account_id = $2 AND deleted_on IS NULL",
        )
        .bind(id.to_string())
        .bind(account.as_str())
        .fetch_optional(&mut *w.tx)
        .await?
        .is_some())
    }

    /// The account's live build token when it has exactly one, else how many it has (two or more
    /// are counted as two).
    async fn only_build_token(
        &self,
        w: &mut WriteTx<'_>,
        account: &AccountId,
    ) -> anyhow::Result<Result<BuildTokenId, usize>> {
        let rows = sqlx::query(
            "SELECT uuid FROM build_tokens WHERE account_id = $1 AND deleted_on IS NULL LIMIT 2",
        )
        .bind(account.as_str())
        .fetch_all(&mut *w.tx)
        .await
        .context("looking for the account's build token")?;
        match rows.as_slice() {
            [only] => Ok(Ok(BuildTokenId::from_stored(
                &only.try_get::<String, _>("uuid")?,
            )?)),
            rows => Ok(Err(rows.len())),
        }
    }

    /// Creates a trigger after checking its connection, its token (or finding the account's only
    /// one) and the per-Worker limit.
    pub async fn insert_trigger(
        &self,
        account: &AccountId,
        new: &NewTrigger,
    ) -> anyhow::Result<Result<Trigger, TriggerWriteError>> {
        let mut w = self.begin_write().await?;
        self.lock_key(
            &mut w,
            &format!("worker:{account}:{}", new.external_script_id),
        )
        .await?;
        let conn = sqlx::query(
            "SELECT uuid FROM repo_connections WHERE uuid = $1 AND account_id = $2 AND deleted_on IS NULL",
        )
        .bind(new.repo_connection_uuid.to_string())
        .bind(account.as_str())
        .fetch_optional(&mut *w.tx)
        .await?;
        if conn.is_none() {
            return Ok(Err(TriggerWriteError::UnknownConnection));
        }
        let build_token = match self
            .resolve_build_token(&mut w, account, new.build_token_uuid)
            .await?
        {
            Ok(token) => token,
            Err(e) => return Ok(Err(e)),
        };
        if self
            .live_trigger_count(&mut w, account, &new.external_script_id)
            .await?
            >= MAX_TRIGGERS_PER_WORKER
        {
            return Ok(Err(TriggerWriteError::TooManyTriggers));
        }
        let id = self
            .insert_trigger_row(&mut w, account, new, build_token)
            .await?;
        let t = fetch_trigger(&mut *w.tx, account, id)
            .await?
            .context("trigger vanished")?;
        w.commit().await?;
        Ok(Ok(t))
    }

    /// The named build token when it is live in the account, or the account's only live token.
    pub(super) async fn resolve_build_token(
        &self,
        w: &mut WriteTx<'_>,
        account: &AccountId,
        named: Option<BuildTokenId>,
    ) -> anyhow::Result<Result<BuildTokenId, TriggerWriteError>> {
        Ok(match named {
            Some(token) if self.build_token_is_live(w, account, token).await? => Ok(token),
            Some(_) => Err(TriggerWriteError::UnknownBuildToken),
            None => self
                .only_build_token(w, account)
                .await?
                .map_err(|tokens| TriggerWriteError::NoDefaultBuildToken { tokens }),
        })
    }

    /// How many live triggers a Worker has.
    pub(super) async fn live_trigger_count(
        &self,
        w: &mut WriteTx<'_>,
        account: &AccountId,
        worker: &WorkerId,
    ) -> anyhow::Result<i64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM triggers WHERE account_id = $1 AND external_script_id = $2 AND deleted_on IS NULL",
        )
        .bind(account.as_str())
        .bind(worker.as_str())
        .fetch_one(&mut *w.tx)
        .await?
        .try_get("n")?)
    }

    /// Inserts a trigger row whose connection and token were checked; returns its id.
    pub(super) async fn insert_trigger_row(
        &self,
        w: &mut WriteTx<'_>,
        account: &AccountId,
        new: &NewTrigger,
        build_token: BuildTokenId,
    ) -> anyhow::Result<TriggerId> {
        let id = TriggerId::new();
        let now = Timestamp::now().millis();
        sqlx::query(
            "INSERT INTO triggers (uuid, account_id, external_script_id, trigger_name, repo_connection_uuid, \
             build_token_uuid, build_command, deploy_command, root_directory, branch_includes, branch_excludes, \
             path_includes, path_excludes, build_caching_enabled, created_on, modified_on) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)",
        )
        .bind(id.to_string())
        .bind(account.as_str())
        .bind(new.external_script_id.as_str())
        .bind(&new.trigger_name)
        .bind(new.repo_connection_uuid.to_string())
        .bind(build_token.to_string())
        .bind(&new.build_command)
        .bind(&new.deploy_command)
        .bind(&new.root_directory)
        .bind(to_json_list(&new.branch_includes))
        .bind(to_json_list(&new.branch_excludes))
        .bind(to_json_list(&new.path_includes))
        .bind(to_json_list(&new.path_excludes))
        .bind(i64::from(new.build_caching_enabled))
        .bind(now)
        .execute(&mut *w.tx)
        .await
        .context("inserting a trigger")?;
        Ok(id)
    }

    /// The live trigger with this id in this account.
    pub async fn get_trigger(
        &self,
        account: &AccountId,
        id: TriggerId,
    ) -> anyhow::Result<Option<Trigger>> {
        fetch_trigger(&self.pool, account, id).await
    }

    /// A Worker's live triggers, oldest first.
    pub async fn list_triggers(
        &self,
        account: &AccountId,
        worker: &WorkerId,
    ) -> anyhow::Result<Vec<Trigger>> {
        let rows = sqlx::query(&format!(
            "SELECT {TRIGGER_COLUMNS}, {CONNECTION_COLUMNS} FROM {TRIGGER_FROM} \
             WHERE t.account_id = $1 AND t.external_script_id = $2 AND t.deleted_on IS NULL \
             ORDER BY t.created_on, t.uuid"
        ))
        .bind(account.as_str())
        .bind(worker.as_str())
        .fetch_all(&self.pool)
        .await
        .context("listing triggers")?;
        rows.iter().map(trigger).collect()
    }

    /// Applies a partial update to a live trigger.
    pub async fn update_trigger(
        &self,
        account: &AccountId,
        id: TriggerId,
        patch: &TriggerPatch,
    ) -> anyhow::Result<Result<Trigger, TriggerWriteError>> {
        let mut w = self.begin_write().await?;
        let Some(mut t) = fetch_trigger(&mut *w.tx, account, id).await? else {
            return Ok(Err(TriggerWriteError::NotFound));
        };
        if let Some(token) = patch.build_token_uuid {
            if !self.build_token_is_live(&mut w, account, token).await? {
                return Ok(Err(TriggerWriteError::UnknownBuildToken));
            }
            t.build_token_uuid = token;
        }
        let i = &mut t.info;
        macro_rules! apply {
            ($($f:ident),*) => { $(if let Some(v) = &patch.$f { i.$f = v.clone(); })* };
        }
        apply!(
            trigger_name,
            build_command,
            deploy_command,
            root_directory,
            branch_includes,
            branch_excludes,
            path_includes,
            path_excludes,
            build_caching_enabled
        );
        sqlx::query(
            "UPDATE triggers SET trigger_name = $1, build_token_uuid = $2, build_command = $3, deploy_command = $4, \
             root_directory = $5, branch_includes = $6, branch_excludes = $7, path_includes = $8, \
             path_excludes = $9, build_caching_enabled = $10, modified_on = $11 WHERE uuid = $12",
        )
        .bind(&i.trigger_name)
        .bind(t.build_token_uuid.to_string())
        .bind(&i.build_command)
        .bind(&i.deploy_command)
        .bind(&i.root_directory)
        .bind(to_json_list(&i.branch_includes))
        .bind(to_json_list(&i.branch_excludes))
        .bind(to_json_list(&i.path_includes))
        .bind(to_json_list(&i.path_excludes))
        .bind(i64::from(i.build_caching_enabled))
        .bind(Timestamp::now().millis())
        .bind(id.to_string())
        .execute(&mut *w.tx)
        .await
        .context("updating a trigger")?;
        let t = fetch_trigger(&mut *w.tx, account, id)
            .await?
            .context("trigger vanished")?;
        w.commit().await?;
        Ok(Ok(t))
    }

    /// Soft-deletes a trigger and cancels its queued builds; false when there is no live trigger with
    /// this id. Builds already running finish; every build stays readable.
    pub async fn delete_trigger(&self, account: &AccountId, id: TriggerId) -> anyhow::Result<bool> {
        let mut w = self.begin_write().await?;
        if !self.delete_trigger_in(&mut w, account, id).await? {
            return Ok(false);
        }
        w.commit().await?;
        Ok(true)
    }

    /// [`Store::delete_trigger`] inside the caller's transaction.
    pub(super) async fn delete_trigger_in(
        &self,
        w: &mut WriteTx<'_>,
        account: &AccountId,
        id: TriggerId,
    ) -> anyhow::Result<bool> {
        // The same lock as queuing a build: no build of this trigger is queued past the deletion.
        self.lock_key(w, &format!("trigger:{id}")).await?;
        let now = Timestamp::now().millis();
        let done = sqlx::query(
            "UPDATE triggers SET deleted_on = $1, modified_on = $1 WHERE uuid = $2 AND account_id = $3 AND deleted_on IS NULL",
        )
        .bind(now)
        .bind(id.to_string())
        .bind(account.as_str())
        .execute(&mut *w.tx)
        .await
        .context("deleting a trigger")?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        let queued = sqlx::query(
            "SELECT uuid FROM builds WHERE trigger_uuid = $1 AND status = $2 ORDER BY id",
        )
        .bind(id.to_string())
        .bind(BuildStatus::Queued.as_str())
        .fetch_all(&mut *w.tx)
        .await
        .context("finding the deleted trigger's queued builds")?;
        for row in &queued {
            let build = BuildId::from_stored(&text(row, "uuid")?)?;
            // Refused only when it stopped meanwhile: nothing is left to cancel then.
            let _ = self
                .change_build(w, build, None, BuildChange::Cancel, Actor::Anyone)
                .await?;
        }
        Ok(true)
    }
}

/// The live trigger with this id in this account.
pub(super) async fn fetch_trigger<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    executor: E,
    account: &AccountId,
    id: TriggerId,
) -> anyhow::Result<Option<Trigger>> {
    let row = sqlx::query(&format!(
        "SELECT {TRIGGER_COLUMNS}, {CONNECTION_COLUMNS} FROM {TRIGGER_FROM} \
         WHERE t.uuid = $1 AND t.account_id = $2 AND t.deleted_on IS NULL"
    ))
    .bind(id.to_string())
    .bind(account.as_str())
    .fetch_optional(executor)
    .await
    .context("reading a trigger")?;
    row.as_ref().map(trigger).transpose()
}

/// The trigger with this id in this account, live or deleted.
pub(super) async fn fetch_any_trigger<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    executor: E,
    account: &AccountId,
    id: TriggerId,
) -> anyhow::Result<Option<Trigger>> {
    let row = sqlx::query(&format!(
        "SELECT {TRIGGER_COLUMNS}, {CONNECTION_COLUMNS} FROM {TRIGGER_FROM} \
         WHERE t.uuid = $1 AND t.account_id = $2"
    ))
    .bind(id.to_string())
    .bind(account.as_str())
    .fetch_optional(executor)
    .await
    .context("reading a trigger")?;
    row.as_ref().map(trigger).transpose()
}
