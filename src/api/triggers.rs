//! Triggers: create, list by Worker, partial update, soft delete, cache purge.

use axum::extract::State;
use schemars::JsonSchema;
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiResult, ok, ok_empty};
use super::extract::{Account, ApiJson, NoBody, PathParams};
use super::schema;
use crate::domain::{
    AccountId, BuildTokenId, DEFAULT_DEPLOY_COMMAND, DEFAULT_PREVIEW_DEPLOY_COMMAND, Invalid,
    MAX_NAME_LEN, MAX_TRIGGERS_PER_WORKER, RepoConnectionId, Trigger, TriggerId, WorkerId,
    bounded_text, command, is_preview_trigger, patterns, root_directory,
};
use crate::store::{NewTrigger, TriggerPatch, TriggerWriteError};

/// Body of `createTrigger`. Fields after `trigger_name` take the hosted product's defaults when absent.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateTriggerRequest {
    #[schemars(with = "WorkerId")]
    pub external_script_id: String,
    #[schemars(with = "RepoConnectionId")]
    pub repo_connection_uuid: String,
    /// Default: the account's build token when it has exactly one (as in Cloudflare's Builds API
    /// guide); with none or several, the field is required.
    #[schemars(with = "Option<BuildTokenId>")]
    pub build_token_uuid: Option<String>,
    #[schemars(with = "schema::Name")]
    pub trigger_name: String,
    /// Default: empty (no build step).
    #[schemars(with = "Option<schema::Command>")]
    pub build_command: Option<String>,
    /// Default: `npx wrangler deploy`; for a preview trigger (`branch_includes: ["*"]` with
    /// `branch_excludes`), `npx wrangler versions upload`.
    #[schemars(with = "Option<schema::Command>")]
    pub deploy_command: Option<String>,
    /// Default: `/`.
    #[schemars(with = "Option<schema::RootDirectory>")]
    pub root_directory: Option<String>,
    /// Default: `[]`. Branch patterns: at most 100, each 1–256 characters with at most 8 `*`
    /// wildcards (`*` matches any run of characters, `/` included).
    #[schemars(with = "Option<schema::Patterns>")]
    pub branch_includes: Option<Vec<String>>,
    /// Default: `[]`. Same rules as `branch_includes`.
    #[schemars(with = "Option<schema::Patterns>")]
    pub branch_excludes: Option<Vec<String>>,
    /// Default: `["*"]`. Watch paths, with the rules of `branch_includes`: a push builds when a
    /// changed path not matching `path_excludes` matches one. A pull request's build checks them
    /// against the pull request's changes when it starts and ends `skipped` when none matches.
    #[schemars(with = "Option<schema::Patterns>")]
    pub path_includes: Option<Vec<String>>,
    /// Default: `[]`. Same rules as `branch_includes`.
    #[schemars(with = "Option<schema::Patterns>")]
    pub path_excludes: Option<Vec<String>>,
    /// Default: `false`.
    pub build_caching_enabled: Option<bool>,
}

/// Body of `updateTrigger`: every field optional; absent fields stay as they are.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct UpdateTriggerRequest {
    #[schemars(with = "Option<schema::Name>")]
    pub trigger_name: Option<String>,
    #[schemars(with = "Option<BuildTokenId>")]
    pub build_token_uuid: Option<String>,
    #[schemars(with = "Option<schema::Command>")]
    pub build_command: Option<String>,
    #[schemars(with = "Option<schema::Command>")]
    pub deploy_command: Option<String>,
    #[schemars(with = "Option<schema::RootDirectory>")]
    pub root_directory: Option<String>,
    /// Same rules as in `createTrigger`.
    #[schemars(with = "Option<schema::Patterns>")]
    pub branch_includes: Option<Vec<String>>,
    #[schemars(with = "Option<schema::Patterns>")]
    pub branch_excludes: Option<Vec<String>>,
    /// Same rules as in `createTrigger`.
    #[schemars(with = "Option<schema::Patterns>")]
    pub path_includes: Option<Vec<String>>,
    #[schemars(with = "Option<schema::Patterns>")]
    pub path_excludes: Option<Vec<String>>,
    pub build_caching_enabled: Option<bool>,
}

fn opt<T>(v: Option<&T>, f: impl FnOnce(&T) -> Result<T, Invalid>) -> Result<Option<T>, Invalid> {
    v.map(f).transpose()
}

impl CreateTriggerRequest {
    fn validate(self) -> Result<NewTrigger, Invalid> {
        let branch_includes =
            patterns("branch_includes", &self.branch_includes.unwrap_or_default())?;
        let branch_excludes =
            patterns("branch_excludes", &self.branch_excludes.unwrap_or_default())?;
        let default_deploy = if is_preview_trigger(&branch_includes, &branch_excludes) {
            DEFAULT_PREVIEW_DEPLOY_COMMAND
        } else {
            DEFAULT_DEPLOY_COMMAND
        };
        Ok(NewTrigger {
            external_script_id: WorkerId::parse("external_script_id", &self.external_script_id)?,
            repo_connection_uuid: RepoConnectionId::parse(
                "repo_connection_uuid",
                &self.repo_connection_uuid,
            )?,
            build_token_uuid: self
                .build_token_uuid
                .as_deref()
                .map(|v| BuildTokenId::parse("build_token_uuid", v))
                .transpose()?,
            trigger_name: bounded_text("trigger_name", &self.trigger_name, 1, MAX_NAME_LEN)?,
            build_command: command("build_command", self.build_command.as_deref().unwrap_or(""))?,
            deploy_command: command(
                "deploy_command",
                self.deploy_command.as_deref().unwrap_or(default_deploy),
            )?,
            root_directory: root_directory(self.root_directory.as_deref().unwrap_or("/"))?,
            branch_includes,
            branch_excludes,
            path_includes: patterns(
                "path_includes",
                &self.path_includes.unwrap_or_else(|| vec!["*".to_owned()]),
            )?,
            path_excludes: patterns("path_excludes", &self.path_excludes.unwrap_or_default())?,
            build_caching_enabled: self.build_caching_enabled.unwrap_or(false),
        })
    }
}

impl UpdateTriggerRequest {
    fn validate(self) -> Result<TriggerPatch, Invalid> {
        Ok(TriggerPatch {
            trigger_name: opt(self.trigger_name.as_ref(), |v| {
                bounded_text("trigger_name", v, 1, MAX_NAME_LEN)
            })?,
            build_token_uuid: self
                .build_token_uuid
                .as_deref()
                .map(|v| BuildTokenId::parse("build_token_uuid", v))
                .transpose()?,
            build_command: opt(self.build_command.as_ref(), |v| command("build_command", v))?,
            deploy_command: opt(self.deploy_command.as_ref(), |v| {
                command("deploy_command", v)
            })?,
            root_directory: opt(self.root_directory.as_ref(), |v| root_directory(v))?,
            branch_includes: opt(self.branch_includes.as_ref(), |v| {
                patterns("branch_includes", v)
            })?,
            branch_excludes: opt(self.branch_excludes.as_ref(), |v| {
                patterns("branch_excludes", v)
            })?,
            path_includes: opt(self.path_includes.as_ref(), |v| {
                patterns("path_includes", v)
            })?,
            path_excludes: opt(self.path_excludes.as_ref(), |v| {
                patterns("path_excludes", v)
            })?,
            build_caching_enabled: self.build_caching_enabled,
        })
    }
}

/// The API error for a refused trigger write.
pub(super) fn write_error(e: TriggerWriteError) -> ApiError {
    match e {
        TriggerWriteError::NotFound => ApiError::NotFound,
        TriggerWriteError::UnknownConnection => ApiError::Missing(
            "repo_connection_uuid: no such repository connection in this account".into(),
        ),
        TriggerWriteError::UnknownBuildToken => {
            ApiError::Missing("build_token_uuid: no such build token in this account".into())
        }
        TriggerWriteError::TooManyTriggers => ApiError::Conflict(format!(
            "a Worker can have at most {MAX_TRIGGERS_PER_WORKER} triggers"
        )),
        TriggerWriteError::NoDefaultBuildToken { tokens } => {
            ApiError::Conflict(format!("build_token_uuid: {}", no_default_token(tokens)))
        }
    }
}

/// Why a write without `build_token_uuid` cannot take the account's only build token, when the
/// account has `tokens` of them (0 or several): a conflict with the stored tokens (409).
pub(super) fn no_default_token(tokens: usize) -> &'static str {
    if tokens == 0 {
        "is required: the account has no build token (create one with POST /builds/tokens)"
    } else {
        "is required: the account has more than one build token, name the one to use"
    }
}

/// The trigger id from the path.
pub(super) fn trigger_id(path: &PathParams) -> Result<TriggerId, ApiError> {
    Ok(TriggerId::parse("trigger_uuid", path.get("trigger_uuid")?)?)
}

/// `POST /accounts/{account_id}/builds/triggers`
pub async fn create_trigger(
    State(app): State<AppState>,
    Account(account): Account,
    ApiJson(body): ApiJson<CreateTriggerRequest>,
) -> ApiResult<Trigger> {
    let new = body.validate()?;
    ok(app
        .store
        .insert_trigger(&account, &new)
        .await?
        .map_err(write_error)?)
}

/// `GET /accounts/{account_id}/builds/workers/{external_script_id}/triggers`
pub async fn list_triggers(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<Vec<Trigger>> {
    let worker = WorkerId::parse("external_script_id", path.get("external_script_id")?)?;
    ok(app.store.list_triggers(&account, &worker).await?)
}

/// `PATCH /accounts/{account_id}/builds/triggers/{trigger_uuid}`
pub async fn update_trigger(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    ApiJson(body): ApiJson<UpdateTriggerRequest>,
) -> ApiResult<Trigger> {
    let id = trigger_id(&path)?;
    ok(update(&app, &account, id, body).await?)
}

/// What `updateTrigger` does (the dashboard's trigger form does the same): validates `body` and
/// applies it to the live trigger `id` of `account`. 400 for an invalid field, 404 for no such
/// trigger (or build token), 409 for a conflict with what is stored.
pub(crate) async fn update(
    app: &AppState,
    account: &AccountId,
    id: TriggerId,
    body: UpdateTriggerRequest,
) -> Result<Trigger, ApiError> {
    let patch = body.validate()?;
    app.store
        .update_trigger(account, id, &patch)
        .await?
        .map_err(write_error)
}

/// `DELETE /accounts/{account_id}/builds/triggers/{trigger_uuid}`
pub async fn delete_trigger(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<()> {
    let id = trigger_id(&path)?;
    if app.store.delete_trigger(&account, id).await? {
        ok_empty()
    } else {
        Err(ApiError::NotFound)
    }
}

/// `POST /accounts/{account_id}/builds/triggers/{trigger_uuid}/purge_build_cache`
///
/// Deletes every build cache entry of a live trigger (PRODUCT-NOTES §5); its next build runs cold.
pub async fn purge_build_cache(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    _: NoBody,
) -> ApiResult<()> {
    let id = trigger_id(&path)?;
    purge_cache(&app, &account, id).await?;
    ok_empty()
}

/// What `purge_build_cache` does (the dashboard's Purge button does the same): deletes every build
/// cache entry of the live trigger `id` of `account`; 404 when there is no such trigger.
pub(crate) async fn purge_cache(
    app: &AppState,
    account: &AccountId,
    id: TriggerId,
) -> Result<(), ApiError> {
    if app.store.get_trigger(account, id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    let purged = app.cache.purge(&id.to_string()).await?;
    tracing::info!(trigger = %id, entries = purged, "build cache purged");
    Ok(())
}
