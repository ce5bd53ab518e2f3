//! A Worker's build configuration (API-REFERENCE §6.12, rows 29–32 of §9): create, get, update,
//! delete. The configuration is held as the Worker's triggers: `production_settings` is the trigger of
//! the production branch (`git_repository.branch`); `previews_base_config` is the trigger of every
//! other branch (`branch_includes: ["*"]`, `branch_excludes: [branch]`, PRODUCT-NOTES §3), which
//! builds while `previews_enabled` is true and keeps its settings while it is false.

use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::env_vars::{EnvVarsRequest, view};
use super::error::{ApiError, ApiResult, Created, ok};
use super::extract::{Account, ApiJson, IdText, PathParams, QueryParams};
use super::schema;
use super::triggers::no_default_token;
use crate::domain::{
    BuildTokenId, DEFAULT_DEPLOY_COMMAND, EnvVarMap, Invalid, MAX_NAME_LEN, ProviderType, Trigger,
    WorkerId, bounded_text, branch, command, patterns, root_directory,
};
use crate::store::{
    CancelOutcome, NewConnection, NewWorkerBuild, Side, TriggerWriteError, WorkerBuild,
    WorkerBuildError, WorkerBuildPatch, WorkerSettings, WorkerSettingsPatch,
};

/// `git_repository` of `createWorkerBuild`: the repository (a connection, as `upsertRepoConnection`
/// makes) and its production branch. `provider_account_id` and `repo_id` may be JSON integers.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct GitRepositoryInput {
    /// `github` (Kiln builds GitHub repositories only).
    #[schemars(with = "ProviderType")]
    pub provider_type: String,
    pub provider_account_id: IdText,
    #[schemars(with = "schema::Name")]
    pub provider_account_name: String,
    pub repo_id: IdText,
    #[schemars(with = "schema::Name")]
    pub repo_name: String,
    /// The production branch (1–256 characters).
    #[schemars(with = "schema::Branch")]
    pub branch: String,
}

/// `git_repository` of `updateWorkerBuild`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct GitRepositoryPatch {
    /// The new production branch (required: the repository itself cannot change).
    #[schemars(with = "schema::Branch")]
    pub branch: Option<String>,
}

/// Build settings of one side. On create, absent fields take defaults: no build command,
/// `npx wrangler deploy` (`npx wrangler versions upload` for previews), the account's only build
/// token, caching on, root `/`, paths `["*"]` minus none. On update, absent fields stay. (No
/// `Debug`: variables may be secrets.)
#[derive(Deserialize, JsonSchema)]
#[schemars(transform = schema::without_null)]
pub struct WorkerSettingsInput {
    #[schemars(with = "Option<schema::Command>")]
    pub build_command: Option<String>,
    #[schemars(with = "Option<schema::Command>")]
    pub deploy_command: Option<String>,
    #[schemars(with = "Option<BuildTokenId>")]
    pub build_token_uuid: Option<String>,
    #[schemars(with = "Option<bool>")]
    pub build_caching_enabled: Option<bool>,
    #[schemars(with = "Option<schema::RootDirectory>")]
    pub root_directory: Option<String>,
    /// Variables by name; on update a `null` entry deletes one. A secret's value is never shown.
    #[schemars(with = "Option<EnvVarsRequest>")]
    pub environment_variables: Option<EnvVarsRequest>,
    /// Watch paths, with the rules of a trigger's `path_includes`.
    #[schemars(with = "Option<schema::Patterns>")]
    pub path_includes: Option<Vec<String>>,
    #[schemars(with = "Option<schema::Patterns>")]
    pub path_excludes: Option<Vec<String>>,
}

/// Body of `createWorkerBuild`.
#[derive(Deserialize, JsonSchema)]
#[schemars(transform = schema::without_null)]
pub struct CreateWorkerBuildRequest {
    /// The Worker (1–64 characters).
    #[schemars(with = "WorkerId")]
    pub script_tag: String,
    pub git_repository: GitRepositoryInput,
    pub production_settings: WorkerSettingsInput,
    /// Build every other branch with `previews_base_config` (default false).
    #[schemars(with = "Option<bool>")]
    pub previews_enabled: Option<bool>,
    /// Settings of the branch builds, over the production settings (without their variables) with
    /// the deploy command `npx wrangler versions upload`.
    #[schemars(with = "Option<WorkerSettingsInput>")]
    pub previews_base_config: Option<WorkerSettingsInput>,
}

/// Body of `updateWorkerBuild`: at least one field.
#[derive(Deserialize, JsonSchema)]
#[schemars(extend("minProperties" = 1))]
#[schemars(transform = schema::without_null)]
pub struct UpdateWorkerBuildRequest {
    #[schemars(with = "Option<GitRepositoryPatch>")]
    pub git_repository: Option<GitRepositoryPatch>,
    #[schemars(with = "Option<SettingsPatchSchema>")]
    pub production_settings: Option<WorkerSettingsInput>,
    /// Turn the branch builds on or off (their settings are kept while off).
    #[schemars(with = "Option<bool>")]
    pub previews_enabled: Option<bool>,
    #[schemars(with = "Option<SettingsPatchSchema>")]
    pub previews_base_config: Option<WorkerSettingsInput>,
}

/// The schema of a [`WorkerSettingsInput`] in `updateWorkerBuild`: at least one setting
/// (API-REFERENCE `UpdateWorkerBuildSettingsInput`, ≥ 1 property).
struct SettingsPatchSchema;

impl JsonSchema for SettingsPatchSchema {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "UpdateWorkerBuildSettingsInput".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = WorkerSettingsInput::json_schema(generator);
        schema.insert("minProperties".into(), 1.into());
        schema
    }
}

/// `git_repository` of a configuration.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkerGitRepository {
    pub branch: String,
    /// Internal GitLab grants; always null.
    pub grant_id: Option<String>,
    pub provider_account_id: String,
    pub provider_account_name: String,
    pub provider_type: ProviderType,
    pub repo_id: String,
    pub repo_name: String,
}

/// Build settings of one side of a configuration.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkerBuildSettings {
    pub build_caching_enabled: bool,
    pub build_command: String,
    pub build_token_uuid: BuildTokenId,
    pub deploy_command: String,
    /// `value` is null for secrets.
    pub environment_variables: EnvVarMap,
    pub path_excludes: Vec<String>,
    pub path_includes: Vec<String>,
    pub root_directory: String,
}

/// A Worker's build configuration.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkerResponse {
    pub script_tag: WorkerId,
    pub git_repository: WorkerGitRepository,
    pub production_settings: WorkerBuildSettings,
    /// Whether every other branch is built with `previews_base_config`.
    pub previews_enabled: bool,
    /// Null until previews were turned on or configured.
    pub previews_base_config: Option<WorkerBuildSettings>,
}

fn settings_view(t: &Trigger, env: Vec<crate::domain::EnvVar>) -> WorkerBuildSettings {
    WorkerBuildSettings {
        build_caching_enabled: t.info.build_caching_enabled,
        build_command: t.info.build_command.clone(),
        build_token_uuid: t.build_token_uuid,
        deploy_command: t.info.deploy_command.clone(),
        environment_variables: view(env),
        path_excludes: t.info.path_excludes.clone(),
        path_includes: t.info.path_includes.clone(),
        root_directory: t.info.root_directory.clone(),
    }
}

impl From<WorkerBuild> for WorkerResponse {
    fn from(c: WorkerBuild) -> Self {
        let conn = &c.production.info.repo_connection;
        WorkerResponse {
            git_repository: WorkerGitRepository {
                branch: c.branch.clone(),
                grant_id: None,
                provider_account_id: conn.provider_account_id.clone(),
                provider_account_name: conn.provider_account_name.clone(),
                provider_type: conn.provider_type,
                repo_id: conn.repo_id.clone(),
                repo_name: conn.repo_name.clone(),
            },
            production_settings: settings_view(&c.production, c.production_env),
            previews_enabled: c.previews_enabled,
            previews_base_config: c.previews.map(|(t, env)| settings_view(&t, env)),
            script_tag: c.script_tag,
        }
    }
}

/// `why` about a field inside `side`'s settings.
fn in_side(side: Side, e: Invalid) -> Invalid {
    Invalid(format!("{}.{}", side.field(), e.0))
}

impl WorkerSettingsInput {
    /// A patch of `side` (every field optional; at least one when `require_one`).
    fn patch(self, side: Side, require_one: bool) -> Result<WorkerSettingsPatch, Invalid> {
        let opt = |v: Option<&String>, f: &dyn Fn(&str) -> Result<String, Invalid>| {
            v.map(|v| f(v)).transpose().map_err(|e| in_side(side, e))
        };
        let lists = |field: &str, v: Option<&Vec<String>>| {
            v.map(|v| patterns(field, v))
                .transpose()
                .map_err(|e| in_side(side, e))
        };
        let empty = self.build_command.is_none()
            && self.deploy_command.is_none()
            && self.build_token_uuid.is_none()
            && self.build_caching_enabled.is_none()
            && self.root_directory.is_none()
            && self.environment_variables.is_none()
            && self.path_includes.is_none()
            && self.path_excludes.is_none();
        if require_one && empty {
            return Err(Invalid::field(side.field(), "give at least one setting"));
        }
        let env = self
            .environment_variables
            .map(EnvVarsRequest::validate)
            .transpose()
            .map_err(|e| Invalid(format!("{}.environment_variables.{}", side.field(), e.0)))?
            .unwrap_or_default();
        Ok(WorkerSettingsPatch {
            build_command: opt(self.build_command.as_ref(), &|v| {
                command("build_command", v)
            })?,
            deploy_command: opt(self.deploy_command.as_ref(), &|v| {
                command("deploy_command", v)
            })?,
            build_token_uuid: self
                .build_token_uuid
                .as_deref()
                .map(|v| BuildTokenId::parse("build_token_uuid", v))
                .transpose()
                .map_err(|e| in_side(side, e))?,
            root_directory: opt(self.root_directory.as_ref(), &root_directory)?,
            path_includes: lists("path_includes", self.path_includes.as_ref())?,
            path_excludes: lists("path_excludes", self.path_excludes.as_ref())?,
            build_caching_enabled: self.build_caching_enabled,
            env_set: env.set,
            env_remove: env.remove,
        })
    }
}

impl CreateWorkerBuildRequest {
    fn validate(self) -> Result<NewWorkerBuild, Invalid> {
        let repo = self.git_repository;
        let provider_type = ProviderType::parse(&repo.provider_type).ok_or_else(|| {
            Invalid::field(
                "git_repository.provider_type",
                "must be \"github\" (Kiln builds GitHub repositories)",
            )
        })?;
        let text = |field: &str, v: &str| bounded_text(field, v, 1, MAX_NAME_LEN);
        let connection = NewConnection {
            provider_type,
            provider_account_id: text(
                "git_repository.provider_account_id",
                &repo.provider_account_id.0,
            )?,
            provider_account_name: text(
                "git_repository.provider_account_name",
                &repo.provider_account_name,
            )?,
            repo_id: text("git_repository.repo_id", &repo.repo_id.0)?,
            repo_name: text("git_repository.repo_name", &repo.repo_name)?,
        };
        let production = self.production_settings.patch(Side::Production, false)?;
        let production = WorkerSettings {
            build_command: production.build_command.unwrap_or_default(),
            deploy_command: production
                .deploy_command
                .unwrap_or_else(|| DEFAULT_DEPLOY_COMMAND.to_owned()),
            build_token_uuid: production.build_token_uuid,
            root_directory: production.root_directory.unwrap_or_else(|| "/".to_owned()),
            path_includes: production
                .path_includes
                .unwrap_or_else(|| vec!["*".to_owned()]),
            path_excludes: production.path_excludes.unwrap_or_default(),
            // The default of a configuration, unlike a trigger's (API-REFERENCE §7.19).
            build_caching_enabled: production.build_caching_enabled.unwrap_or(true),
            env_set: production.env_set,
        };
        Ok(NewWorkerBuild {
            script_tag: WorkerId::parse("script_tag", &self.script_tag)?,
            connection,
            branch: branch("git_repository.branch", &repo.branch)?,
            production,
            previews_enabled: self.previews_enabled.unwrap_or(false),
            previews: self
                .previews_base_config
                .map(|p| p.patch(Side::Previews, false))
                .transpose()?,
        })
    }
}

impl UpdateWorkerBuildRequest {
    fn validate(self) -> Result<WorkerBuildPatch, Invalid> {
        if self.git_repository.is_none()
            && self.production_settings.is_none()
            && self.previews_enabled.is_none()
            && self.previews_base_config.is_none()
        {
            return Err(Invalid(
                "give at least one of git_repository, production_settings, previews_enabled, \
                 previews_base_config"
                    .into(),
            ));
        }
        let branch = match self.git_repository {
            Some(GitRepositoryPatch { branch: Some(b) }) => {
                Some(branch("git_repository.branch", &b)?)
            }
            Some(GitRepositoryPatch { branch: None }) => {
                return Err(Invalid::field(
                    "git_repository.branch",
                    "is required in git_repository (the repository itself cannot change)",
                ));
            }
            None => None,
        };
        Ok(WorkerBuildPatch {
            branch,
            production: self
                .production_settings
                .map(|p| p.patch(Side::Production, true))
                .transpose()?,
            previews_enabled: self.previews_enabled,
            previews: self
                .previews_base_config
                .map(|p| p.patch(Side::Previews, true))
                .transpose()?,
        })
    }
}

fn write_error(e: WorkerBuildError) -> ApiError {
    match e {
        WorkerBuildError::NotFound => ApiError::NotFound,
        WorkerBuildError::Exists => ApiError::Conflict(
            "the Worker already has a build configuration: change it with PATCH".into(),
        ),
        WorkerBuildError::HasTriggers => ApiError::Conflict(
            "the Worker already has triggers (made with POST /builds/triggers): delete them first"
                .into(),
        ),
        WorkerBuildError::PreviewsBlocked => ApiError::Conflict(
            "previews need the Worker's second trigger, which a trigger made with POST \
             /builds/triggers holds: delete that trigger first"
                .into(),
        ),
        WorkerBuildError::BuildToken(side, e) => {
            let field = format!("{}.build_token_uuid", side.field());
            match e {
                TriggerWriteError::NoDefaultBuildToken { tokens } => {
                    ApiError::Conflict(format!("{field}: {}", no_default_token(tokens)))
                }
                _ => ApiError::Missing(format!("{field}: no such build token in this account")),
            }
        }
        // Refused by the stored variables (a secret made plain without a value, too many): a
        // conflict with them, as on the environment variables endpoint.
        WorkerBuildError::Env(side, e) => {
            ApiError::Conflict(format!("{}.environment_variables.{}", side.field(), e.0))
        }
    }
}

fn worker(path: &PathParams) -> Result<WorkerId, ApiError> {
    Ok(WorkerId::parse(
        "external_script_id",
        path.get("external_script_id")?,
    )?)
}

/// `POST /accounts/{account_id}/builds/workers` — `201 Created`.
pub async fn create_worker_build(
    State(app): State<AppState>,
    Account(account): Account,
    ApiJson(body): ApiJson<CreateWorkerBuildRequest>,
) -> Result<Created<WorkerResponse>, ApiError> {
    let new = body.validate()?;
    let config = app
        .store
        .insert_worker_build(&account, &new)
        .await?
        .map_err(write_error)?;
    Ok(Created(config.into()))
}

/// `GET /accounts/{account_id}/builds/workers/{script_tag}`
pub async fn get_worker_build(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<WorkerResponse> {
    let worker = worker(&path)?;
    match app.store.get_worker_build(&account, &worker).await? {
        Some(config) => ok(config.into()),
        None => Err(ApiError::NotFound),
    }
}

/// `PATCH /accounts/{account_id}/builds/workers/{script_tag}`
pub async fn update_worker_build(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    query: QueryParams,
    ApiJson(body): ApiJson<UpdateWorkerBuildRequest>,
) -> ApiResult<WorkerResponse> {
    let worker = worker(&path)?;
    if let Some(v) = query.get("patch_existing_previews")
        && v != "true"
        && v != "false"
    {
        return Err(Invalid::field("patch_existing_previews", "must be true or false").into());
    }
    let patch = body.validate()?;
    let config = app
        .store
        .update_worker_build(&account, &worker, &patch)
        .await?
        .map_err(write_error)?;
    ok(config.into())
}

/// `DELETE /accounts/{account_id}/builds/workers/{script_tag}` — result `"ok"`.
pub async fn delete_worker_build(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<String> {
    let worker = worker(&path)?;
    let Some(running) = app.store.delete_worker_build(&account, &worker).await? else {
        return Err(ApiError::NotFound);
    };
    for id in running {
        if let CancelOutcome::Cancelled { .. } = app.store.cancel_build(&account, id).await? {
            app.scheduler.cancel(id);
        }
    }
    ok("ok".to_owned())
}
