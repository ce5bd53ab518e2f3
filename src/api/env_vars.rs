//! A trigger's environment variables: list, upsert, delete one. Secret values are never shown.
//!
//! The upsert body comes in two forms (DESIGN.md §2, PRODUCT-NOTES §4): the API reference's map
//! `{NAME: {is_secret, value}}` and the docs guide's `{"variables": [{key, value, type}]}`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use axum::extract::State;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, ApiResult, ok, ok_empty};
use super::extract::{Account, ApiJson, PathParams};
use super::schema;
use super::triggers::trigger_id;
use crate::domain::{AccountId, EnvVarKey, EnvVarMap, Invalid, MAX_ENV_VARS, TriggerId, env_value};
use crate::store::EnvVarChange;

/// One variable of the map form. Without `value` the stored value is kept, which makes a plain
/// variable secret; a secret becomes plain only with a new `value` (a secret is never revealed).
#[derive(Deserialize, JsonSchema)]
pub struct EnvVarInput {
    pub is_secret: bool,
    #[schemars(with = "Option<schema::EnvValue>")]
    pub value: Option<String>,
}

/// Whether a variable of the list form is secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnvVarType {
    Text,
    Secret,
}

/// One variable of the docs guide's list form.
#[derive(Deserialize, JsonSchema)]
pub struct EnvVarListItem {
    #[schemars(with = "crate::domain::EnvVarKey")]
    pub key: String,
    #[schemars(with = "schema::EnvListValue")]
    pub value: String,
    #[serde(rename = "type")]
    pub kind: EnvVarType,
}

/// Variables to set, by name; a `null` entry deletes the variable. Read from either body form.
pub struct EnvVarsRequest(pub BTreeMap<String, Option<EnvVarInput>>);

/// Validated edits of a trigger's variables.
#[derive(Debug, Default)]
pub struct EnvVarEdits {
    pub set: Vec<EnvVarChange>,
    pub remove: Vec<String>,
}

/// Reads `value` as `T`, naming the failing field after `prefix` in the message.
fn from_value<T: serde::de::DeserializeOwned>(prefix: &str, value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("{prefix}: {inner}")
        } else if path.starts_with('[') {
            format!("{prefix}{path}: {inner}")
        } else {
            format!("{prefix}.{path}: {inner}")
        }
    })
}

impl<'de> Deserialize<'de> for EnvVarsRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let map = serde_json::Map::<String, Value>::deserialize(d)?;
        // The list form: its one key holds an array, which no variable of the map form can.
        if map.len() == 1
            && let Some(items @ Value::Array(_)) = map.get("variables")
        {
            let items: Vec<EnvVarListItem> =
                from_value("variables", items.clone()).map_err(D::Error::custom)?;
            // A key listed more than once: the last entry counts, as with a repeated key of the map
            // form (and as a JSON Schema of the list can say nothing about its keys' uniqueness).
            let out = items
                .into_iter()
                .map(|item| {
                    let input = EnvVarInput {
                        is_secret: item.kind == EnvVarType::Secret,
                        value: Some(item.value),
                    };
                    (item.key, Some(input))
                })
                .collect();
            return Ok(EnvVarsRequest(out));
        }
        map.into_iter()
            .map(|(key, value)| {
                let input = match value {
                    Value::Null => None,
                    v => Some(
                        from_value(&crate::domain::truncate_for_message(&key), v)
                            .map_err(D::Error::custom)?,
                    ),
                };
                Ok((key, input))
            })
            .collect::<Result<_, D::Error>>()
            .map(EnvVarsRequest)
    }
}

impl JsonSchema for EnvVarsRequest {
    fn schema_name() -> Cow<'static, str> {
        "EnvVarsRequest".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let entry = generator.subschema_for::<EnvVarInput>();
        let item = generator.subschema_for::<EnvVarListItem>();
        let mut map_form = json_schema!({"type": "object", "additionalProperties": entry});
        schema::env_vars_rules(&mut map_form);
        json_schema!({
            "description": "Variables by name (`null` deletes one), or the docs guide's form \
                `{\"variables\": [{\"key\", \"value\", \"type\": \"text\"|\"secret\"}]}`. \
                A secret's value is never shown; it becomes a plain variable only with a new value. \
                A key listed more than once: the last entry counts.",
            "oneOf": [
                map_form,
                {
                    "type": "object",
                    "required": ["variables"],
                    "properties": {"variables": {"type": "array", "maxItems": MAX_ENV_VARS, "items": item}},
                    "additionalProperties": false,
                },
            ],
        })
    }
}

impl EnvVarsRequest {
    /// Checks names, values and the per-trigger count.
    pub fn validate(self) -> Result<EnvVarEdits, Invalid> {
        if self.0.len() > MAX_ENV_VARS {
            return Err(Invalid(format!(
                "at most {MAX_ENV_VARS} environment variables per trigger"
            )));
        }
        let mut edits = EnvVarEdits::default();
        for (key, input) in self.0 {
            let key = EnvVarKey::parse(&key)?;
            match input {
                None => edits.remove.push(key.as_str().to_owned()),
                Some(input) => {
                    if let Some(v) = &input.value {
                        env_value(key.as_str(), v)?;
                    }
                    edits.set.push(EnvVarChange {
                        key: key.as_str().to_owned(),
                        is_secret: input.is_secret,
                        value: input.value,
                    });
                }
            }
        }
        Ok(edits)
    }
}

/// 404 unless `account` has the live trigger `id`.
async fn check_live(app: &AppState, account: &AccountId, id: TriggerId) -> Result<(), ApiError> {
    match app.store.get_trigger(account, id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound),
    }
}

/// The public view of variables: secret values hidden.
pub(super) fn view(vars: Vec<crate::domain::EnvVar>) -> EnvVarMap {
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
    ok(list(&app, &account, trigger_id(&path)?).await?)
}

/// The variables of the live trigger `id` of `account`, secret values hidden (404 when there is no
/// such trigger): what `GET …/environment_variables` answers and the dashboard shows.
pub(crate) async fn list(
    app: &AppState,
    account: &AccountId,
    id: TriggerId,
) -> Result<EnvVarMap, ApiError> {
    check_live(app, account, id).await?;
    Ok(view(app.store.list_env_vars(id).await?))
}

/// `PATCH /accounts/{account_id}/builds/triggers/{trigger_uuid}/environment_variables` — returns the full
/// map after the change.
pub async fn upsert_env_vars(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    ApiJson(body): ApiJson<EnvVarsRequest>,
) -> ApiResult<EnvVarMap> {
    let id = trigger_id(&path)?;
    ok(upsert(&app, &account, id, body).await?)
}

/// What `PATCH …/environment_variables` does (the dashboard's variable form does the same): checks
/// the live trigger `id` of `account` (404), validates `body` (400) and applies it (409 when the
/// stored variables refuse it); returns the full map after the change, secret values hidden.
pub(crate) async fn upsert(
    app: &AppState,
    account: &AccountId,
    id: TriggerId,
    body: EnvVarsRequest,
) -> Result<EnvVarMap, ApiError> {
    check_live(app, account, id).await?;
    let edits = body.validate()?;
    if let Some(key) = edits.remove.first() {
        // Deleting by `null` is the Worker configuration's form; here DELETE …/{key} does it.
        return Err(Invalid::field(
            key,
            format!(
                "must be an object {{is_secret, value}} (delete a variable with DELETE …/environment_variables/{key})"
            ),
        )
        .into());
    }
    // What the stored variables refuse (a new variable without a value, a secret made plain
    // without a new value, too many in all) is a conflict with them, not a malformed request.
    let vars = app
        .store
        .upsert_env_vars(id, &edits.set, &edits.remove)
        .await?
        .map_err(|e| ApiError::Conflict(e.0))?;
    Ok(view(vars))
}

/// `DELETE /accounts/{account_id}/builds/triggers/{trigger_uuid}/environment_variables/{environment_variable_key}`
pub async fn delete_env_var(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<()> {
    let key = path.get("environment_variable_key")?;
    delete(&app, &account, trigger_id(&path)?, key).await?;
    ok_empty()
}

/// What `DELETE …/environment_variables/{key}` does (the dashboard's Delete button does the same):
/// deletes the variable `key` of the live trigger `id` of `account`; 404 when there is no such
/// trigger or variable, 400 for a malformed name.
pub(crate) async fn delete(
    app: &AppState,
    account: &AccountId,
    id: TriggerId,
    key: &str,
) -> Result<(), ApiError> {
    check_live(app, account, id).await?;
    let key = EnvVarKey::parse(key)?;
    if app.store.delete_env_var(id, key.as_str()).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound)
    }
}
