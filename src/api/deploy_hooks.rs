//! Deploy hooks per Worker: create, list, get, update, delete.

use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ApiResult, ok};
use super::extract::{Account, ApiJson, Client, NoBody, PathParams};
use super::schema;
use crate::domain::{
    AccountId, BuildId, BuildStatus, DeployHook, DeployHookId, DetailedDeployHook, Invalid,
    MAX_DEPLOY_HOOKS_PER_WORKER, MAX_HOOK_NAME_LEN, Timestamp, WorkerId, bounded_text, branch,
};
use crate::store::{HookCall, HookWriteError};

/// Body of `createDeployHook` and `updateDeployHook`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct DeployHookRequest {
    /// 1–58 characters, unique among the Worker's hooks.
    #[schemars(with = "schema::HookName")]
    pub deploy_hook_name: String,
    /// The branch the hook builds.
    #[schemars(with = "schema::Branch")]
    pub branch: String,
}

impl DeployHookRequest {
    fn validate(&self) -> Result<(String, String), Invalid> {
        Ok((
            bounded_text(
                "deploy_hook_name",
                &self.deploy_hook_name,
                1,
                MAX_HOOK_NAME_LEN,
            )?,
            branch("branch", &self.branch)?,
        ))
    }
}

fn worker(path: &PathParams) -> Result<WorkerId, ApiError> {
    Ok(WorkerId::parse(
        "external_script_id",
        path.get("external_script_id")?,
    )?)
}

fn hook_id(path: &PathParams) -> Result<DeployHookId, ApiError> {
    Ok(DeployHookId::parse(
        "deploy_hook_uuid",
        path.get("deploy_hook_uuid")?,
    )?)
}

fn write_error(e: HookWriteError) -> ApiError {
    match e {
        HookWriteError::NotFound | HookWriteError::NoTrigger => ApiError::NotFound,
        HookWriteError::DuplicateName => {
            ApiError::Conflict("the Worker already has a deploy hook with this name".into())
        }
        HookWriteError::TooManyHooks => ApiError::Conflict(format!(
            "a Worker can have at most {MAX_DEPLOY_HOOKS_PER_WORKER} deploy hooks"
        )),
    }
}

/// `POST /accounts/{account_id}/builds/workers/{script_name}/deploy_hooks` — the Worker needs a trigger.
pub async fn create_deploy_hook(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    ApiJson(body): ApiJson<DeployHookRequest>,
) -> ApiResult<DeployHook> {
    ok(create(&app, &account, &worker(&path)?, &body).await?)
}

/// What `createDeployHook` does (the dashboard's hook form does the same): validates `body` (400)
/// and adds the hook to `worker` of `account`; 404 when the Worker has no trigger, 409 for a name
/// the Worker already has or one hook too many.
pub(crate) async fn create(
    app: &AppState,
    account: &AccountId,
    worker: &WorkerId,
    body: &DeployHookRequest,
) -> Result<DeployHook, ApiError> {
    let (name, branch) = body.validate()?;
    app.store
        .insert_deploy_hook(account, worker, &name, &branch)
        .await?
        .map_err(write_error)
}

/// `GET /accounts/{account_id}/builds/workers/{script_name}/deploy_hooks`
pub async fn list_deploy_hooks(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<Vec<DetailedDeployHook>> {
    let worker = worker(&path)?;
    ok(app.store.list_deploy_hooks(&account, &worker).await?)
}

/// `GET /accounts/{account_id}/builds/workers/{script_name}/deploy_hooks/{deploy_hook_uuid}`
pub async fn get_deploy_hook(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<DeployHook> {
    let (worker, id) = (worker(&path)?, hook_id(&path)?);
    app.store
        .get_deploy_hook(&account, &worker, id)
        .await?
        .map_or(Err(ApiError::NotFound), ok)
}

/// `PUT /accounts/{account_id}/builds/workers/{script_name}/deploy_hooks/{deploy_hook_uuid}`
pub async fn update_deploy_hook(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    ApiJson(body): ApiJson<DeployHookRequest>,
) -> ApiResult<DeployHook> {
    let (worker, id) = (worker(&path)?, hook_id(&path)?);
    let (name, branch) = body.validate()?;
    ok(app
        .store
        .update_deploy_hook(&account, &worker, id, &name, &branch)
        .await?
        .map_err(write_error)?)
}

/// `DELETE /accounts/{account_id}/builds/workers/{script_name}/deploy_hooks/{deploy_hook_uuid}` — returns
/// the deleted hook.
pub async fn delete_deploy_hook(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<DeployHook> {
    let (worker, id) = (worker(&path)?, hook_id(&path)?);
    ok(delete(&app, &account, &worker, id).await?)
}

/// What `deleteDeployHook` does (the dashboard's Delete button does the same): deletes the live
/// hook `id` of `worker` of `account` (its URL stops working at once) and returns it; 404 when
/// there is no such hook.
pub(crate) async fn delete(
    app: &AppState,
    account: &AccountId,
    worker: &WorkerId,
    id: DeployHookId,
) -> Result<DeployHook, ApiError> {
    app.store
        .delete_deploy_hook(account, worker, id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// Result of `triggerDeployHook`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HookTriggered {
    /// True when a pending (queued or initializing) build of this hook was returned instead of a new one.
    pub already_exists: bool,
    pub build_uuid: BuildId,
    pub created_on: Timestamp,
    pub status: BuildStatus,
}

/// `POST /workers/builds/deploy_hooks/{deploy_hook_uuid}` — no authentication: the hook id is the secret.
pub async fn trigger_deploy_hook(
    State(app): State<AppState>,
    Client(client): Client,
    path: PathParams,
    _: NoBody,
) -> ApiResult<HookTriggered> {
    // An unknown hook id is a wrong credential: guessing them is throttled like guessing tokens.
    if let Some(retry_after_secs) = client.and_then(|c| app.auth_throttle.check(c)) {
        return Err(ApiError::RateLimited { retry_after_secs });
    }
    let id = hook_id(&path)?;
    let call = app.store.call_deploy_hook(id).await?;
    if let (HookCall::NotFound, Some(c)) = (&call, client) {
        app.auth_throttle.record_failure(c);
    }
    match call {
        HookCall::Created { build, created_on } => ok(HookTriggered {
            already_exists: false,
            build_uuid: build,
            created_on,
            status: BuildStatus::Queued,
        }),
        HookCall::Pending {
            build,
            created_on,
            status,
        } => ok(HookTriggered {
            already_exists: true,
            build_uuid: build,
            created_on,
            status,
        }),
        HookCall::NotFound => Err(ApiError::NotFound),
        HookCall::NoTrigger { branch } => Err(ApiError::Conflict(format!(
            "no trigger of this Worker builds branch {branch:?}: check the triggers' branch filters"
        ))),
        HookCall::RateLimited { retry_after_secs } => {
            Err(ApiError::RateLimited { retry_after_secs })
        }
    }
}
