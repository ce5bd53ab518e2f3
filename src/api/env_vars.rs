//! A trigger's environment variables: list, upsert (map body), delete one. Secret values are never shown.

use std::collections::BTreeMap;

use axum::extract::State;
use schemars::JsonSchema;
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiResult, ok, ok_empty};
use super::extract::{Account, ApiJson, PathParams};
use super::schema;
use super::triggers::trigger_id;
use crate::domain::{AccountId, EnvVarKey, EnvVarMap, Invalid, MAX_ENV_VARS, TriggerId, env_value};
use crate::store::EnvVarChange;

/// One variable to set. `value` may be omitted to keep the stored value (e.g. to flip `is_secret`).
#[derive(Deserialize, JsonSchema)]
pub struct EnvVarInput {
    pub is_secret: bool,
    #[schemars(with = "Option<schema::EnvValue>")]
    pub value: Option<String>,
}

/// Body of `upsertEnvironmentVariables`: variables by name.
#[derive(Deserialize, JsonSchema)]
#[serde(transparent)]
#[schemars(transform = schema::env_vars_rules)]
pub struct EnvVarsRequest(pub BTreeMap<String, EnvVarInput>);

impl EnvVarsRequest {
    fn validate(self) -> Result<Vec<EnvVarChange>, Invalid> {
        if self.0.len() > MAX_ENV_VARS {
            return Err(Invalid(format!(
                "at most {MAX_ENV_VARS} environment variables per trigger"
            )));
        }
        self.0
            .into_iter()
            .map(|(key, input)| {
                let key = EnvVarKey::parse(&key)?;
                if let Some(v) = &input.value {
                    env_value(key.as_str(), v)?;
                }
                Ok(EnvVarChange {
                    key: key.as_str().to_owned(),
                    is_secret: input.is_secret,
                    value: input.value,
                })
            })
            .collect()
    }
}

async fn live_trigger(
    app: &AppState,
    account: &AccountId,
    path: &PathParams,
) -> Result<TriggerId, ApiError> {
    let id = trigger_id(path)?;
    match app.store.get_trigger(account, id).await? {
        Some(_) => Ok(id),
        None => Err(ApiError::NotFound),
    }
}

fn view(vars: Vec<crate::domain::EnvVar>) -> EnvVarMap {
    vars.into_iter()
        .map(|v| (v.key.clone(), v.view()))
        .collect()
}

/// `GET /accounts/{account_id}/builds/triggers/{trigger_uuid}/environment_variables`
pub async fn list_env_vars(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<EnvVarMap> {
    let id = live_trigger(&app, &account, &path).await?;
    ok(view(app.store.list_env_vars(id).await?))
}

/// `PATCH /accounts/{account_id}/builds/triggers/{trigger_uuid}/environment_variables` — returns the full
/// map after the change.
pub async fn upsert_env_vars(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    ApiJson(body): ApiJson<EnvVarsRequest>,
) -> ApiResult<EnvVarMap> {
    let id = live_trigger(&app, &account, &path).await?;
    let changes = body.validate()?;
    // What the stored variables refuse (a new variable without a value, too many in all) is a
    // conflict with them, not a malformed request.
    let vars = app
        .store
        .upsert_env_vars(id, &changes)
        .await?
        .map_err(|e| ApiError::Conflict(e.0))?;
    ok(view(vars))
}

/// `DELETE /accounts/{account_id}/builds/triggers/{trigger_uuid}/environment_variables/{environment_variable_key}`
pub async fn delete_env_var(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<()> {
    let id = live_trigger(&app, &account, &path).await?;
    let key = EnvVarKey::parse(path.get("environment_variable_key")?)?;
    if app.store.delete_env_var(id, key.as_str()).await? {
        ok_empty()
    } else {
        Err(ApiError::NotFound)
    }
}
