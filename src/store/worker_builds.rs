//! Worker build configurations (API-REFERENCE §6.12): a Worker's repository and production branch,
//! held as triggers. The production trigger builds the branch; the preview trigger, the previews
//! base config, builds every other branch while previews are on, and keeps its settings and
//! variables, soft-deleted, while they are off. Editing the configuration edits those triggers; a
//! configuration whose production trigger was deleted (through the triggers API) is gone.

use anyhow::Context;
use sqlx::Row;

use super::connections::NewConnection;
use super::env_vars::EnvVarChange;
use super::rows::{opt_text, text, to_json_list};
use super::triggers::{NewTrigger, TriggerWriteError, fetch_any_trigger, fetch_trigger};
use super::{Store, WriteTx};
use crate::domain::{
    AccountId, BuildId, BuildStatus, BuildTokenId, DEFAULT_PREVIEW_DEPLOY_COMMAND, EnvVar, Invalid,
    MAX_TRIGGERS_PER_WORKER, Timestamp, Trigger, TriggerId, WorkerId,
};

/// Name of the trigger holding a configuration's production settings.
pub const PRODUCTION_TRIGGER_NAME: &str = "Production";
/// Name of the trigger holding a configuration's previews base config.
pub const PREVIEWS_TRIGGER_NAME: &str = "Previews";

/// Which settings of a configuration something is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `production_settings`: the production branch.
    Production,
    /// `previews_base_config`: every other branch.
    Previews,
}

impl Side {
    /// The request field holding these settings.
    pub fn field(self) -> &'static str {
        match self {
            Side::Production => "production_settings",
            Side::Previews => "previews_base_config",
        }
    }
}

/// Settings of one side, validated, for a new trigger.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub build_command: String,
    pub deploy_command: String,
    /// `None`: the account's only build token.
    pub build_token_uuid: Option<BuildTokenId>,
    pub root_directory: String,
    pub path_includes: Vec<String>,
    pub path_excludes: Vec<String>,
    pub build_caching_enabled: bool,
    pub env_set: Vec<EnvVarChange>,
}

/// A partial update of one side's settings; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct WorkerSettingsPatch {
    pub build_command: Option<String>,
    pub deploy_command: Option<String>,
    pub build_token_uuid: Option<BuildTokenId>,
    pub root_directory: Option<String>,
    pub path_includes: Option<Vec<String>>,
    pub path_excludes: Option<Vec<String>>,
    pub build_caching_enabled: Option<bool>,
    pub env_set: Vec<EnvVarChange>,
    /// Variables to delete.
    pub env_remove: Vec<String>,
}

impl WorkerSettingsPatch {
    /// `base` with this patch applied (deletions of variables `base` does not have do nothing).
    fn over(&self, base: WorkerSettings) -> WorkerSettings {
        let mut env_set: Vec<EnvVarChange> = base
            .env_set
            .into_iter()
            .filter(|v| !self.env_remove.contains(&v.key))
            .collect();
        env_set.extend(self.env_set.iter().cloned());
        WorkerSettings {
            build_command: self.build_command.clone().unwrap_or(base.build_command),
            deploy_command: self.deploy_command.clone().unwrap_or(base.deploy_command),
            build_token_uuid: self.build_token_uuid.or(base.build_token_uuid),
            root_directory: self.root_directory.clone().unwrap_or(base.root_directory),
            path_includes: self.path_includes.clone().unwrap_or(base.path_includes),
            path_excludes: self.path_excludes.clone().unwrap_or(base.path_excludes),
            build_caching_enabled: self
                .build_caching_enabled
                .unwrap_or(base.build_caching_enabled),
            env_set,
        }
    }
}

/// A validated configuration to create.
#[derive(Debug, Clone)]
pub struct NewWorkerBuild {
    pub script_tag: WorkerId,
    pub connection: NewConnection,
    /// The production branch.
    pub branch: String,
    pub production: WorkerSettings,
    pub previews_enabled: bool,
    /// The previews base config, over defaults taken from `production` (without its variables).
    pub previews: Option<WorkerSettingsPatch>,
}

/// A validated partial update of a configuration.
#[derive(Debug, Clone, Default)]
pub struct WorkerBuildPatch {
    pub branch: Option<String>,
    pub production: Option<WorkerSettingsPatch>,
    pub previews_enabled: Option<bool>,
    pub previews: Option<WorkerSettingsPatch>,
}

/// A Worker's build configuration as stored.
#[derive(Debug, Clone)]
pub struct WorkerBuild {
    pub script_tag: WorkerId,
    /// The production branch.
    pub branch: String,
    /// The production trigger (its connection is the configuration's repository).
    pub production: Trigger,
    pub production_env: Vec<EnvVar>,
    /// The previews base config, once set: its trigger (live while previews are on) and variables.
    pub previews: Option<(Trigger, Vec<EnvVar>)>,
    pub previews_enabled: bool,
}

/// Why a configuration could not be written.
#[derive(Debug, PartialEq, Eq)]
pub enum WorkerBuildError {
    NotFound,
    /// The Worker already has a configuration.
    Exists,
    /// The Worker has live triggers made through the triggers API.
    HasTriggers,
    /// Previews need the Worker's second trigger, which one made through the triggers API holds.
    PreviewsBlocked,
    /// The build token of one side is unknown, or none was named and the account has not one.
    BuildToken(Side, TriggerWriteError),
    /// The variables of one side break a rule.
    Env(Side, Invalid),
}

/// The `worker_builds` row of a configuration.
struct ConfigRow {
    branch: String,
    production: TriggerId,
    previews: Option<TriggerId>,
}

/// The settings of an existing trigger, without its variables.
fn settings_of(t: &Trigger) -> WorkerSettings {
    WorkerSettings {
        build_command: t.info.build_command.clone(),
        deploy_command: t.info.deploy_command.clone(),
        build_token_uuid: Some(t.build_token_uuid),
        root_directory: t.info.root_directory.clone(),
        path_includes: t.info.path_includes.clone(),
        path_excludes: t.info.path_excludes.clone(),
        build_caching_enabled: t.info.build_caching_enabled,
        env_set: Vec::new(),
    }
}

/// What the previews base config starts from: the production settings with the previews deploy
/// command, and no variables (production secrets do not go to branch builds unasked).
fn previews_defaults(production: WorkerSettings) -> WorkerSettings {
    WorkerSettings {
        deploy_command: DEFAULT_PREVIEW_DEPLOY_COMMAND.to_owned(),
        env_set: Vec::new(),
        ..production
    }
}

/// The branch filters of one side: the production branch, or every other branch.
fn branch_filters(side: Side, branch: &str) -> (Vec<String>, Vec<String>) {
    match side {
        Side::Production => (vec![branch.to_owned()], vec![]),
        Side::Previews => (vec!["*".to_owned()], vec![branch.to_owned()]),
    }
}

impl Store {
    async fn config_row(
        &self,
        conn: &mut sqlx::AnyConnection,
        account: &AccountId,
        worker: &WorkerId,
    ) -> anyhow::Result<Option<ConfigRow>> {
        let row = sqlx::query(
            "SELECT branch, production_trigger_uuid, preview_trigger_uuid FROM worker_builds \
             WHERE account_id = $1 AND script_tag = $2",
        )
        .bind(account.as_str())
        .bind(worker.as_str())
        .fetch_optional(&mut *conn)
        .await
        .context("reading a Worker build configuration")?;
        row.map(|r| {
            Ok(ConfigRow {
                branch: text(&r, "branch")?,
                production: TriggerId::from_stored(&text(&r, "production_trigger_uuid")?)?,
                previews: opt_text(&r, "preview_trigger_uuid")?
                    .map(|id| TriggerId::from_stored(&id))
                    .transpose()?,
            })
        })
        .transpose()
    }

    /// The configuration, if it exists and its production trigger is live.
    async fn read_worker_build(
        &self,
        conn: &mut sqlx::AnyConnection,
        account: &AccountId,
        worker: &WorkerId,
    ) -> anyhow::Result<Option<WorkerBuild>> {
        let Some(row) = self.config_row(conn, account, worker).await? else {
            return Ok(None);
        };
        let Some(production) = fetch_trigger(&mut *conn, account, row.production).await? else {
            return Ok(None);
        };
        let production_env = self.read_env_vars(&mut *conn, row.production).await?;
        let previews = match row.previews {
            Some(id) => {
                let t = fetch_any_trigger(&mut *conn, account, id)
                    .await?
                    .context("the previews trigger of a configuration vanished")?;
                Some((t, self.read_env_vars(&mut *conn, id).await?))
            }
            None => None,
        };
        let previews_enabled = previews
            .as_ref()
            .is_some_and(|(t, _)| t.info.deleted_on.is_none());
        Ok(Some(WorkerBuild {
            script_tag: worker.clone(),
            branch: row.branch,
            production,
            production_env,
            previews,
            previews_enabled,
        }))
    }

    /// A Worker's build configuration; `None` when it has none.
    pub async fn get_worker_build(
        &self,
        account: &AccountId,
        worker: &WorkerId,
    ) -> anyhow::Result<Option<WorkerBuild>> {
        let mut conn = self.pool.acquire().await.context("connecting")?;
        self.read_worker_build(&mut conn, account, worker).await
    }

    /// Creates the trigger of one side with its variables.
    #[allow(clippy::too_many_arguments)]
    async fn insert_side(
        &self,
        w: &mut WriteTx<'_>,
        account: &AccountId,
        worker: &WorkerId,
        connection: crate::domain::RepoConnectionId,
        branch: &str,
        side: Side,
        settings: &WorkerSettings,
    ) -> anyhow::Result<Result<TriggerId, WorkerBuildError>> {
        let token = match self
            .resolve_build_token(w, account, settings.build_token_uuid)
            .await?
        {
            Ok(token) => token,
            Err(e) => return Ok(Err(WorkerBuildError::BuildToken(side, e))),
        };
        let (branch_includes, branch_excludes) = branch_filters(side, branch);
        let new = NewTrigger {
            external_script_id: worker.clone(),
            repo_connection_uuid: connection,
            build_token_uuid: Some(token),
            trigger_name: match side {
                Side::Production => PRODUCTION_TRIGGER_NAME,
                Side::Previews => PREVIEWS_TRIGGER_NAME,
            }
            .to_owned(),
            build_command: settings.build_command.clone(),
            deploy_command: settings.deploy_command.clone(),
            root_directory: settings.root_directory.clone(),
            branch_includes,
            branch_excludes,
            path_includes: settings.path_includes.clone(),
            path_excludes: settings.path_excludes.clone(),
            build_caching_enabled: settings.build_caching_enabled,
        };
        let id = self.insert_trigger_row(w, account, &new, token).await?;
        if let Err(e) = self
            .upsert_env_vars_in(w, id, &settings.env_set, &[])
            .await?
        {
            return Ok(Err(WorkerBuildError::Env(side, e)));
        }
        Ok(Ok(id))
    }

    /// Applies a patch to the trigger of one side, live or not.
    async fn patch_side(
        &self,
        w: &mut WriteTx<'_>,
        account: &AccountId,
        id: TriggerId,
        side: Side,
        patch: &WorkerSettingsPatch,
    ) -> anyhow::Result<Result<(), WorkerBuildError>> {
        let t = fetch_any_trigger(&mut *w.tx, account, id)
            .await?
            .context("the trigger of a configuration vanished")?;
        if let Some(token) = patch.build_token_uuid
            && let Err(e) = self.resolve_build_token(w, account, Some(token)).await?
        {
            return Ok(Err(WorkerBuildError::BuildToken(side, e)));
        }
        let s = patch.over(settings_of(&t));
        sqlx::query(
            "UPDATE triggers SET build_token_uuid = $1, build_command = $2, deploy_command = $3, \
             root_directory = $4, path_includes = $5, path_excludes = $6, build_caching_enabled = $7, \
             modified_on = $8 WHERE uuid = $9",
        )
        .bind(s.build_token_uuid.unwrap_or(t.build_token_uuid).to_string())
        .bind(&s.build_command)
        .bind(&s.deploy_command)
        .bind(&s.root_directory)
        .bind(to_json_list(&s.path_includes))
        .bind(to_json_list(&s.path_excludes))
        .bind(i64::from(s.build_caching_enabled))
        .bind(Timestamp::now().millis())
        .bind(id.to_string())
        .execute(&mut *w.tx)
        .await
        .context("updating a configuration's trigger")?;
        if let Err(e) = self
            .upsert_env_vars_in(w, id, &patch.env_set, &patch.env_remove)
            .await?
        {
            return Ok(Err(WorkerBuildError::Env(side, e)));
        }
        Ok(Ok(()))
    }

    /// Sets the branch filters of one side's trigger for the production branch `branch`.
    async fn set_side_branch(
        &self,
        w: &mut WriteTx<'_>,
        id: TriggerId,
        side: Side,
        branch: &str,
    ) -> anyhow::Result<()> {
        let (includes, excludes) = branch_filters(side, branch);
        sqlx::query(
            "UPDATE triggers SET branch_includes = $1, branch_excludes = $2, modified_on = $3 WHERE uuid = $4",
        )
        .bind(to_json_list(&includes))
        .bind(to_json_list(&excludes))
        .bind(Timestamp::now().millis())
        .bind(id.to_string())
        .execute(&mut *w.tx)
        .await
        .context("updating a configuration's branch")?;
        Ok(())
    }

    /// Whether the Worker has room for a live previews trigger next to its production one.
    async fn previews_fit(
        &self,
        w: &mut WriteTx<'_>,
        account: &AccountId,
        worker: &WorkerId,
    ) -> anyhow::Result<bool> {
        Ok(self.live_trigger_count(w, account, worker).await? < MAX_TRIGGERS_PER_WORKER)
    }

    /// Creates a Worker's build configuration: its repository connection (as
    /// [`Store::upsert_repo_connection`] does), its production trigger and, when previews are on or
    /// configured, its previews trigger, with their variables, in one transaction.
    pub async fn insert_worker_build(
        &self,
        account: &AccountId,
        new: &NewWorkerBuild,
    ) -> anyhow::Result<Result<WorkerBuild, WorkerBuildError>> {
        let worker = &new.script_tag;
        let mut w = self.begin_write().await?;
        self.lock_key(&mut w, &format!("worker:{account}:{worker}"))
            .await?;
        if let Some(row) = self.config_row(&mut w.tx, account, worker).await? {
            if fetch_trigger(&mut *w.tx, account, row.production)
                .await?
                .is_some()
            {
                return Ok(Err(WorkerBuildError::Exists));
            }
            self.delete_config_row(&mut w, account, worker).await?;
        }
        if self.live_trigger_count(&mut w, account, worker).await? > 0 {
            return Ok(Err(WorkerBuildError::HasTriggers));
        }
        let connection = self
            .upsert_repo_connection_in(&mut w, account, &new.connection)
            .await?
            .repo_connection_uuid;
        let production = match self
            .insert_side(
                &mut w,
                account,
                worker,
                connection,
                &new.branch,
                Side::Production,
                &new.production,
            )
            .await?
        {
            Ok(id) => id,
            Err(e) => return Ok(Err(e)),
        };
        let previews = match (&new.previews, new.previews_enabled) {
            (None, false) => None,
            (patch, enabled) => {
                let base = previews_defaults(new.production.clone());
                let settings = patch.as_ref().map_or(base.clone(), |p| p.over(base));
                let id = match self
                    .insert_side(
                        &mut w,
                        account,
                        worker,
                        connection,
                        &new.branch,
                        Side::Previews,
                        &settings,
                    )
                    .await?
                {
                    Ok(id) => id,
                    Err(e) => return Ok(Err(e)),
                };
                if !enabled {
                    self.delete_trigger_in(&mut w, account, id).await?;
                }
                Some(id)
            }
        };
        let now = Timestamp::now().millis();
        sqlx::query(
            "INSERT INTO worker_builds (account_id, script_tag, branch, production_trigger_uuid, \
             preview_trigger_uuid, created_on, modified_on) VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(account.as_str())
        .bind(worker.as_str())
        .bind(&new.branch)
        .bind(production.to_string())
        .bind(previews.map(|id| id.to_string()))
        .bind(now)
        .execute(&mut *w.tx)
        .await
        .context("inserting a Worker build configuration")?;
        let config = self
            .read_worker_build(&mut w.tx, account, worker)
            .await?
            .context("the configuration vanished")?;
        w.commit().await?;
        Ok(Ok(config))
    }

    /// Updates a Worker's build configuration in one transaction: the production branch (both
    /// triggers' filters), either side's settings and variables, and whether previews are on
    /// (reviving or soft-deleting the previews trigger, whose queued builds are then cancelled).
    pub async fn update_worker_build(
        &self,
        account: &AccountId,
        worker: &WorkerId,
        patch: &WorkerBuildPatch,
    ) -> anyhow::Result<Result<WorkerBuild, WorkerBuildError>> {
        let mut w = self.begin_write().await?;
        self.lock_key(&mut w, &format!("worker:{account}:{worker}"))
            .await?;
        let Some(row) = self.config_row(&mut w.tx, account, worker).await? else {
            return Ok(Err(WorkerBuildError::NotFound));
        };
        let Some(production) = fetch_trigger(&mut *w.tx, account, row.production).await? else {
            return Ok(Err(WorkerBuildError::NotFound));
        };
        let branch = patch.branch.clone().unwrap_or(row.branch);
        if patch.branch.is_some() {
            self.set_side_branch(&mut w, row.production, Side::Production, &branch)
                .await?;
            if let Some(id) = row.previews {
                self.set_side_branch(&mut w, id, Side::Previews, &branch)
                    .await?;
            }
        }
        if let Some(p) = &patch.production
            && let Err(e) = self
                .patch_side(&mut w, account, row.production, Side::Production, p)
                .await?
        {
            return Ok(Err(e));
        }
        let mut previews = row.previews;
        match (previews, &patch.previews) {
            (Some(id), Some(p)) => {
                if let Err(e) = self
                    .patch_side(&mut w, account, id, Side::Previews, p)
                    .await?
                {
                    return Ok(Err(e));
                }
            }
            (None, p) if p.is_some() || patch.previews_enabled == Some(true) => {
                // The base config is created off, then turned on below if asked.
                let production = fetch_trigger(&mut *w.tx, account, row.production)
                    .await?
                    .unwrap_or(production);
                let base = previews_defaults(settings_of(&production));
                let settings = p.as_ref().map_or(base.clone(), |p| p.over(base));
                let id = match self
                    .insert_side(
                        &mut w,
                        account,
                        worker,
                        production.info.repo_connection.repo_connection_uuid,
                        &branch,
                        Side::Previews,
                        &settings,
                    )
                    .await?
                {
                    Ok(id) => id,
                    Err(e) => return Ok(Err(e)),
                };
                self.delete_trigger_in(&mut w, account, id).await?;
                previews = Some(id);
            }
            _ => {}
        }
        if let (Some(enabled), Some(id)) = (patch.previews_enabled, previews) {
            let live = fetch_trigger(&mut *w.tx, account, id).await?.is_some();
            if enabled && !live {
                if !self.previews_fit(&mut w, account, worker).await? {
                    return Ok(Err(WorkerBuildError::PreviewsBlocked));
                }
                sqlx::query(
                    "UPDATE triggers SET deleted_on = NULL, modified_on = $1 WHERE uuid = $2",
                )
                .bind(Timestamp::now().millis())
                .bind(id.to_string())
                .execute(&mut *w.tx)
                .await
                .context("turning previews on")?;
            } else if !enabled && live {
                self.delete_trigger_in(&mut w, account, id).await?;
            }
        }
        sqlx::query(
            "UPDATE worker_builds SET branch = $1, preview_trigger_uuid = $2, modified_on = $3 \
             WHERE account_id = $4 AND script_tag = $5",
        )
        .bind(&branch)
        .bind(previews.map(|id| id.to_string()))
        .bind(Timestamp::now().millis())
        .bind(account.as_str())
        .bind(worker.as_str())
        .execute(&mut *w.tx)
        .await
        .context("updating a Worker build configuration")?;
        let config = self
            .read_worker_build(&mut w.tx, account, worker)
            .await?
            .context("the configuration vanished")?;
        w.commit().await?;
        Ok(Ok(config))
    }

    /// Deletes a Worker's build configuration: its triggers are soft-deleted (their queued builds
    /// cancelled; every build stays readable) and the configuration forgotten. Returns the builds of
    /// those triggers still initializing or running, for the caller to cancel; `None` when the Worker
    /// has no configuration.
    pub async fn delete_worker_build(
        &self,
        account: &AccountId,
        worker: &WorkerId,
    ) -> anyhow::Result<Option<Vec<BuildId>>> {
        let mut w = self.begin_write().await?;
        self.lock_key(&mut w, &format!("worker:{account}:{worker}"))
            .await?;
        let Some(row) = self.config_row(&mut w.tx, account, worker).await? else {
            return Ok(None);
        };
        let live = self
            .delete_trigger_in(&mut w, account, row.production)
            .await?;
        self.delete_config_row(&mut w, account, worker).await?;
        if !live {
            // Its production trigger was deleted through the triggers API: it was already gone.
            w.commit().await?;
            return Ok(None);
        }
        if let Some(previews) = row.previews {
            self.delete_trigger_in(&mut w, account, previews).await?;
        }
        let mut running = Vec::new();
        for id in std::iter::once(row.production).chain(row.previews) {
            let rows = sqlx::query(
                "SELECT uuid FROM builds WHERE trigger_uuid = $1 AND status IN ($2, $3)",
            )
            .bind(id.to_string())
            .bind(BuildStatus::Initializing.as_str())
            .bind(BuildStatus::Running.as_str())
            .fetch_all(&mut *w.tx)
            .await
            .context("finding the configuration's running builds")?;
            for r in rows {
                running.push(BuildId::from_stored(&r.try_get::<String, _>("uuid")?)?);
            }
        }
        w.commit().await?;
        Ok(Some(running))
    }

    async fn delete_config_row(
        &self,
        w: &mut WriteTx<'_>,
        account: &AccountId,
        worker: &WorkerId,
    ) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM worker_builds WHERE account_id = $1 AND script_tag = $2")
            .bind(account.as_str())
            .bind(worker.as_str())
            .execute(&mut *w.tx)
            .await
            .context("deleting a Worker build configuration")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, value: &str) -> EnvVarChange {
        EnvVarChange {
            key: key.to_owned(),
            is_secret: false,
            value: Some(value.to_owned()),
        }
    }

    #[test]
    fn a_patch_applies_over_settings() {
        let base = WorkerSettings {
            build_command: "npm run build".into(),
            deploy_command: "npx wrangler deploy".into(),
            build_token_uuid: None,
            root_directory: "/".into(),
            path_includes: vec!["*".into()],
            path_excludes: vec![],
            build_caching_enabled: true,
            env_set: vec![change("A", "1"), change("B", "2")],
        };
        let patch = WorkerSettingsPatch {
            deploy_command: Some("npx wrangler versions upload".into()),
            env_set: vec![change("C", "3")],
            env_remove: vec!["A".into()],
            ..WorkerSettingsPatch::default()
        };
        let out = patch.over(base.clone());
        assert_eq!(out.build_command, base.build_command);
        assert_eq!(out.deploy_command, "npx wrangler versions upload");
        let keys: Vec<&str> = out.env_set.iter().map(|v| v.key.as_str()).collect();
        assert_eq!(keys, ["B", "C"]);
        // The previews defaults keep production's commands but not its variables.
        let previews = previews_defaults(base);
        assert_eq!(previews.deploy_command, DEFAULT_PREVIEW_DEPLOY_COMMAND);
        assert!(previews.env_set.is_empty());
        assert_eq!(
            branch_filters(Side::Previews, "main"),
            (vec!["*".to_owned()], vec!["main".to_owned()])
        );
    }
}
