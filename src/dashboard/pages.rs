//! The read pages: the home redirect, the account switcher, the accounts list.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::error::PageResult;
use super::session::Viewer;
use super::view::{self, Layout};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::domain::{AccountId, AccountScope, Permission};

/// Accounts per page of the accounts list.
const ACCOUNTS_PER_PAGE: u32 = 50;

/// One page of the accounts `scope` may act on, sorted by id, and how many there are in all.
pub async fn accounts_page(
    _app: &AppState,
    scope: &AccountScope,
    page: u32,
    per_page: u32,
) -> anyhow::Result<(Vec<AccountId>, i64)> {
    // Until the store lists every account an all-accounts token sees, such a token lists none here.
    let mut ids = match scope {
        AccountScope::Only(ids) => ids.clone(),
        AccountScope::All => Vec::new(),
    };
    ids.sort();
    ids.dedup();
    let total = ids.len() as i64;
    let skip = (page.saturating_sub(1) as usize).saturating_mul(per_page as usize);
    Ok((
        ids.into_iter().skip(skip).take(per_page as usize).collect(),
        total,
    ))
}

/// `GET /`: the account's Workers when the token has one account, else the accounts list.
pub async fn home(State(app): State<AppState>, viewer: Viewer) -> PageResult<Response> {
    let (accounts, total) = accounts_page(&app, &viewer.token.scope, 1, 2).await?;
    Ok(match (accounts.as_slice(), total) {
        ([only], 1) => Redirect::to(&format!("/accounts/{only}/workers")).into_response(),
        _ => Redirect::to("/accounts").into_response(),
    })
}

/// `?account=` of the header's switcher.
#[derive(Deserialize)]
pub struct SwitchQuery {
    account: String,
}

/// `GET /switch?account=`: the Workers of the account chosen in the header (a form that works
/// without JavaScript).
pub async fn switch_account(
    viewer: Viewer,
    Query(query): Query<SwitchQuery>,
) -> PageResult<Response> {
    let account = AccountId::parse(&query.account)?;
    if !viewer.permits(&account, Permission::Read) {
        return Err(ApiError::Forbidden("this token is not valid for this account").into());
    }
    Ok(Redirect::to(&format!("/accounts/{account}/workers")).into_response())
}

/// `?page=` of a paged list.
#[derive(Deserialize)]
pub struct PageQuery {
    page: Option<u32>,
}

#[derive(askama::Template)]
#[template(path = "accounts.html")]
struct AccountsPage {
    layout: Layout,
    accounts: Vec<AccountId>,
    total: i64,
    page: u32,
    prev_page: Option<u32>,
    next_page: Option<u32>,
}

/// `GET /accounts?page=`
pub async fn list_accounts(
    State(app): State<AppState>,
    viewer: Viewer,
    Query(query): Query<PageQuery>,
) -> PageResult<Response> {
    let page = query.page.unwrap_or(1).max(1);
    let (accounts, total) =
        accounts_page(&app, &viewer.token.scope, page, ACCOUNTS_PER_PAGE).await?;
    let layout = Layout::new(&app, &viewer, "Accounts", None).await?;
    let shown_until = i64::from(page - 1) * i64::from(ACCOUNTS_PER_PAGE) + accounts.len() as i64;
    let tpl = AccountsPage {
        layout,
        accounts,
        total,
        page,
        prev_page: (page > 1).then(|| page - 1),
        next_page: (shown_until < total).then(|| page + 1),
    };
    Ok(view::page(&viewer, &tpl))
}
