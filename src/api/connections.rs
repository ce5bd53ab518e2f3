//! Repository connections: `PUT …/repos/connections`, `DELETE …/repos/connections/{uuid}`.

use schemars::JsonSchema;
use serde::Deserialize;

use super::error::{ApiError, ApiResult, ok, ok_empty};
use super::extract::{Account, ApiJson, IdText, PathParams};
use super::schema;
use crate::domain::{
    Invalid, MAX_NAME_LEN, ProviderType, RepoConnection, RepoConnectionId, bounded_text,
};
use crate::store::{DeleteConnection, NewConnection};
use axum::extract::State;

use super::AppState;

/// Body of `upsertRepoConnection`. A connection names a repository and grants nothing by itself: a
/// repository covered by a GitHub App installation is built, cloned and reported on only for the
/// accounts an operator linked to that installation (`kiln installations link`).
/// `provider_account_id` and `repo_id` may be JSON integers (GitHub's numeric ids), taken as their
/// decimal strings.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct UpsertRepoConnectionRequest {
    #[schemars(with = "ProviderType")]
    pub provider_type: String,
    pub provider_account_id: IdText,
    #[schemars(with = "schema::Name")]
    pub provider_account_name: String,
    pub repo_id: IdText,
    #[schemars(with = "schema::Name")]
    pub repo_name: String,
}

impl UpsertRepoConnectionRequest {
    fn validate(self) -> Result<NewConnection, Invalid> {
        let provider_type = ProviderType::parse(&self.provider_type)
            .ok_or_else(|| Invalid::field("provider_type", "must be \"github\""))?;
        Ok(NewConnection {
            provider_type,
            provider_account_id: bounded_text(
                "provider_account_id",
                &self.provider_account_id.0,
                1,
                MAX_NAME_LEN,
            )?,
            provider_account_name: bounded_text(
                "provider_account_name",
                &self.provider_account_name,
                1,
                MAX_NAME_LEN,
            )?,
            repo_id: bounded_text("repo_id", &self.repo_id.0, 1, MAX_NAME_LEN)?,
            repo_name: bounded_text("repo_name", &self.repo_name, 1, MAX_NAME_LEN)?,
        })
    }
}

/// `PUT /accounts/{account_id}/builds/repos/connections`
pub async fn upsert_repo_connection(
    State(app): State<AppState>,
    Account(account): Account,
    ApiJson(body): ApiJson<UpsertRepoConnectionRequest>,
) -> ApiResult<RepoConnection> {
    let new = body.validate()?;
    ok(app.store.upsert_repo_connection(&account, &new).await?)
}

/// `DELETE /accounts/{account_id}/builds/repos/connections/{repo_connection_uuid}`
pub async fn delete_repo_connection(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<()> {
    let id = RepoConnectionId::parse("repo_connection_uuid", path.get("repo_connection_uuid")?)?;
    match app.store.delete_repo_connection(&account, id).await? {
        DeleteConnection::Deleted => ok_empty(),
        DeleteConnection::NotFound => Err(ApiError::NotFound),
        DeleteConnection::InUse(n) => Err(ApiError::Conflict(format!(
            "the repository connection is used by {n} trigger(s); delete them first"
        ))),
    }
}
