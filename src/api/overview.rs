//! Kiln extensions for clients that start from nothing but a token (the dashboard's account list,
//! the command-line client): which accounts the credential sees, and an account's Workers with
//! their newest build.

use axum::Extension;
use axum::extract::State;
use schemars::JsonSchema;
use serde::Serialize;

use super::AppState;
use super::error::{ApiResult, Success};
use super::extract::{Account, QueryParams};
use crate::domain::{AccountId, ApiToken, Build, WorkerId};

/// An account of `listAccounts`: the shape of Cloudflare's `GET /accounts` items, reduced to what
/// Kiln knows (it keeps no account names: `name` is the id).
#[derive(Debug, Serialize, JsonSchema)]
pub struct AccountSummary {
    pub id: AccountId,
    pub name: AccountId,
}

/// A Worker of `listWorkers`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkerView {
    pub external_script_id: WorkerId,
    /// Its live triggers (0–2).
    pub triggers: i64,
    /// Its newest build, as `getBuildByUuid` shows it (without `queue`); `null` before its first.
    pub latest_build: Option<Build>,
}

/// `GET /accounts`
pub async fn list_accounts(
    State(app): State<AppState>,
    Extension(token): Extension<ApiToken>,
    query: QueryParams,
) -> ApiResult<Vec<AccountSummary>> {
    let paging = query.paging()?;
    let (ids, total) = app
        .store
        .list_accounts(&token.scope, paging.page, paging.per_page)
        .await?;
    let info = paging.info(ids.len(), total);
    let accounts = ids
        .into_iter()
        .map(|id| AccountSummary {
            name: id.clone(),
            id,
        })
        .collect();
    Ok(Success(accounts, Some(info)))
}

/// `GET /accounts/{account_id}/builds/workers`
pub async fn list_workers(
    State(app): State<AppState>,
    Account(account): Account,
    query: QueryParams,
) -> ApiResult<Vec<WorkerView>> {
    let largest = app.store.largest_account_build(&account).await?;
    let paging = query.paging()?.fit(largest);
    let (workers, total) = app
        .store
        .list_workers(&account, paging.page, paging.per_page)
        .await?;
    let info = paging.info(workers.len(), total);
    let views = workers
        .into_iter()
        .map(|w| WorkerView {
            external_script_id: w.external_script_id,
            triggers: w.triggers,
            latest_build: w.latest_build,
        })
        .collect();
    Ok(Success(views, Some(info)))
}
