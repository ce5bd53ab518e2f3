//! The read pages: the home redirect, the account switcher, the accounts list, an account's
//! Workers overview and a Worker's builds.

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::error::PageResult;
use super::session::{AccountAccess, PagePath, PageQuery, Viewer};
use super::view::{self, Layout};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::domain::{
    AccountId, Build, BuildOutcome, BuildState, Invalid, Permission, Timestamp, WorkerId, branch,
};
use crate::store::BuildFilter;

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
    PageQuery(query): PageQuery<SwitchQuery>,
) -> PageResult<Response> {
    let account = AccountId::parse(&query.account)?;
    if !viewer.permits(&account, Permission::Read) {
        return Err(ApiError::Forbidden("this token is not valid for this account").into());
    }
    Ok(Redirect::to(&format!("/accounts/{account}/workers")).into_response())
}

/// `?page=` of a paged list.
#[derive(Deserialize)]
pub struct PageNumber {
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
    PageQuery(query): PageQuery<PageNumber>,
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

/// Workers read for the overview at most (it sorts them all: red and running ones first).
const MAX_OVERVIEW_WORKERS: usize = 1000;
/// Workers read from the store at once.
const WORKERS_PER_READ: u32 = 200;
/// Builds per page of a Worker's builds.
const BUILDS_PER_PAGE: u32 = 25;

/// A build as a row of a table.
pub struct BuildRow {
    pub id: String,
    pub state: view::BuildState,
    pub branch: String,
    pub commit: String,
    pub message: String,
    pub source: &'static str,
    pub age: String,
    pub duration: String,
}

impl BuildRow {
    fn of(build: &Build, now: Timestamp) -> BuildRow {
        let meta = &build.build_trigger_metadata;
        BuildRow {
            id: build.build_uuid.to_string(),
            state: view::build_state(build.status, build.build_outcome),
            branch: meta.branch.clone().unwrap_or_default(),
            commit: view::short_commit(meta.commit_hash.as_deref().unwrap_or_default()).to_owned(),
            message: view::message_title(meta.commit_message.as_deref().unwrap_or_default()),
            source: view::source_label(meta.build_trigger_source),
            age: view::age(build.created_on, now),
            duration: view::build_duration(build, now)
                .map(view::duration)
                .unwrap_or_default(),
        }
    }
}

/// A Worker of the overview.
pub struct WorkerRow {
    pub name: String,
    pub triggers: i64,
    pub latest: Option<BuildRow>,
}

/// Where a Worker goes in the overview ([`BuildState::attention`]; one without builds last).
fn urgency(build: Option<&Build>) -> u8 {
    build
        .and_then(|b| BuildState::from_parts(b.status, b.build_outcome).ok())
        .map_or(4, BuildState::attention)
}

#[derive(askama::Template)]
#[template(path = "workers.html")]
struct WorkersPage {
    layout: Layout,
    account: AccountId,
    workers: Vec<WorkerRow>,
    total: i64,
}

/// `GET /accounts/{account_id}/workers`: each Worker's newest build, running and red ones first.
pub async fn workers_overview(
    State(app): State<AppState>,
    access: AccountAccess,
) -> PageResult<Response> {
    let account = &access.account;
    let mut summaries = Vec::new();
    let mut page = 1;
    let total = loop {
        let (found, total) = app
            .store
            .list_workers(account, page, WORKERS_PER_READ)
            .await?;
        let last = found.len() < WORKERS_PER_READ as usize;
        summaries.extend(found);
        if last || summaries.len() >= MAX_OVERVIEW_WORKERS {
            break total;
        }
        page += 1;
    };
    summaries.sort_by(|a, b| {
        urgency(a.latest_build.as_ref())
            .cmp(&urgency(b.latest_build.as_ref()))
            .then_with(|| a.external_script_id.cmp(&b.external_script_id))
    });
    let now = Timestamp::now();
    let workers = summaries
        .iter()
        .map(|w| WorkerRow {
            name: w.external_script_id.as_str().to_owned(),
            triggers: w.triggers,
            latest: w.latest_build.as_ref().map(|b| BuildRow::of(b, now)),
        })
        .collect();
    let layout = Layout::new(&app, &access.viewer, "Workers", Some(account)).await?;
    let tpl = WorkersPage {
        layout,
        account: account.clone(),
        workers,
        total,
    };
    Ok(view::page(&access.viewer, &tpl))
}

/// `?page=&branch=&outcome=` of a Worker's builds.
#[derive(Deserialize)]
pub struct BuildsQuery {
    page: Option<u32>,
    branch: Option<String>,
    outcome: Option<String>,
}

/// The outcomes the builds list filters by, as `(value, label)`.
const OUTCOMES: [(&str, &str); 5] = [
    ("success", "Success"),
    ("fail", "Failed"),
    ("cancelled", "Cancelled"),
    ("terminated", "Terminated"),
    ("skipped", "Skipped"),
];

#[derive(askama::Template)]
#[template(path = "builds.html")]
struct BuildsPage {
    layout: Layout,
    account: AccountId,
    worker: String,
    builds: Vec<BuildRow>,
    total: i64,
    page: u32,
    branch: String,
    outcome: String,
    outcomes: [(&'static str, &'static str); 5],
    /// The query string of the filters, for the pager's links (`&branch=…&outcome=…`).
    filter_query: String,
    prev_page: Option<u32>,
    next_page: Option<u32>,
}

/// `GET /accounts/{account_id}/workers/{worker}/builds?page=&branch=&outcome=`: a Worker's builds,
/// newest first, filtered as `listBuildsByScript` filters them.
pub async fn worker_builds(
    State(app): State<AppState>,
    access: AccountAccess,
    PagePath((_, raw_worker)): PagePath<(String, String)>,
    PageQuery(query): PageQuery<BuildsQuery>,
) -> PageResult<Response> {
    let account = &access.account;
    let worker = WorkerId::parse("external_script_id", &raw_worker)?;
    let branch_text = query.branch.unwrap_or_default().trim().to_owned();
    let outcome_text = query.outcome.unwrap_or_default().trim().to_owned();
    let filter = BuildFilter {
        branch: (!branch_text.is_empty())
            .then(|| branch("branch", &branch_text))
            .transpose()?,
        outcome: (!outcome_text.is_empty())
            .then(|| {
                BuildOutcome::parse(&outcome_text).ok_or_else(|| {
                    Invalid::field(
                        "outcome",
                        "must be success, fail, skipped, cancelled or terminated",
                    )
                })
            })
            .transpose()?,
    };
    let page = query.page.unwrap_or(1).max(1);
    let (total, _) = app
        .store
        .build_list_stats(account, &worker, &filter)
        .await?;
    let builds = app
        .store
        .list_builds(account, &worker, &filter, page, BUILDS_PER_PAGE)
        .await?;
    let now = Timestamp::now();
    let shown_until = i64::from(page - 1) * i64::from(BUILDS_PER_PAGE) + builds.len() as i64;
    let mut filter_query = String::new();
    if !branch_text.is_empty() {
        filter_query.push_str(&format!("&branch={}", view::encode_query(&branch_text)));
    }
    if !outcome_text.is_empty() {
        filter_query.push_str(&format!("&outcome={}", view::encode_query(&outcome_text)));
    }
    let layout = Layout::new(
        &app,
        &access.viewer,
        format!("Builds of {}", worker.as_str()),
        Some(account),
    )
    .await?;
    let tpl = BuildsPage {
        layout,
        account: account.clone(),
        worker: worker.as_str().to_owned(),
        builds: builds.iter().map(|b| BuildRow::of(b, now)).collect(),
        total,
        page,
        branch: branch_text,
        outcome: outcome_text,
        outcomes: OUTCOMES,
        filter_query,
        prev_page: (page > 1).then(|| page - 1),
        next_page: (shown_until < total).then(|| page + 1),
    };
    Ok(view::page(&access.viewer, &tpl))
}
