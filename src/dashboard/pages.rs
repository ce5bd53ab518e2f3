//! The read pages: the home redirect, the account switcher, the accounts list.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::error::PageResult;
use super::session::Viewer;
use super::view::{self, Layout};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::domain::{AccountId, Permission};

/// Accounts per page of the accounts list.
const ACCOUNTS_PER_PAGE: u32 = 50;

/// `GET /`: the account's Workers when the token has one account, else the accounts list.
pub async fn home(State(app): State<AppState>, viewer: Viewer) -> PageResult<Response> {
    let (accounts, total) = app.store.list_accounts(&viewer.token.scope, 1, 2).await?;
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
    let (accounts, total) = app
        .store
        .list_accounts(&viewer.token.scope, page, ACCOUNTS_PER_PAGE)
        .await?;
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
