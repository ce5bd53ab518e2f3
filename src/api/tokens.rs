//! Build tokens: create, list (paged), delete. The secret is write-only.

use axum::extract::State;
use schemars::JsonSchema;
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiResult, Success, ok, ok_empty};
use super::extract::{Account, ApiJson, PathParams, QueryParams};
use super::schema;
use crate::domain::{
    BuildToken, BuildTokenId, Invalid, MAX_NAME_LEN, MAX_TOKEN_SECRET_BYTES, bounded_text,
};

/// Body of `createBuildToken`.
#[derive(Deserialize, JsonSchema)]
pub struct CreateBuildTokenRequest {
    #[schemars(with = "schema::Name")]
    pub build_token_name: String,
    /// Write-only: stored encrypted, never returned.
    #[schemars(with = "schema::TokenSecret")]
    pub build_token_secret: String,
    #[schemars(with = "schema::Name")]
    pub cloudflare_token_id: String,
}

// No Debug derive: the secret must not reach a log through `{:?}`.
impl std::fmt::Debug for CreateBuildTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateBuildTokenRequest")
            .field("build_token_name", &self.build_token_name)
            .field("cloudflare_token_id", &self.cloudflare_token_id)
            .finish_non_exhaustive()
    }
}

/// `POST /accounts/{account_id}/builds/tokens`
pub async fn create_build_token(
    State(app): State<AppState>,
    Account(account): Account,
    ApiJson(body): ApiJson<CreateBuildTokenRequest>,
) -> ApiResult<BuildToken> {
    let name = bounded_text("build_token_name", &body.build_token_name, 1, MAX_NAME_LEN)?;
    let cf_id = bounded_text(
        "cloudflare_token_id",
        &body.cloudflare_token_id,
        1,
        MAX_NAME_LEN,
    )?;
    let secret = body.build_token_secret.trim();
    if secret.is_empty() || secret.len() > MAX_TOKEN_SECRET_BYTES {
        return Err(Invalid::field(
            "build_token_secret",
            format!("must be 1-{MAX_TOKEN_SECRET_BYTES} bytes"),
        )
        .into());
    }
    if secret.chars().any(char::is_control) {
        return Err(
            Invalid::field("build_token_secret", "must not contain control characters").into(),
        );
    }
    ok(app
        .store
        .insert_build_token(&account, &name, &cf_id, secret)
        .await?)
}

/// `GET /accounts/{account_id}/builds/tokens`
pub async fn list_build_tokens(
    State(app): State<AppState>,
    Account(account): Account,
    query: QueryParams,
) -> ApiResult<Vec<BuildToken>> {
    let paging = query.paging()?;
    let (tokens, total) = app
        .store
        .list_build_tokens(&account, paging.page, paging.per_page)
        .await?;
    let info = paging.info(tokens.len(), total);
    Ok(Success(tokens, Some(info)))
}

/// `DELETE /accounts/{account_id}/builds/tokens/{build_token_uuid}`
pub async fn delete_build_token(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<()> {
    let id = BuildTokenId::parse("build_token_uuid", path.get("build_token_uuid")?)?;
    if app.store.delete_build_token(&account, id).await? {
        ok_empty()
    } else {
        Err(ApiError::NotFound)
    }
}
