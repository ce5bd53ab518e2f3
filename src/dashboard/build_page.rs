//! A build's page: its metadata, why it waits (queued), its steps and their durations, its log
//! (colours, line numbers, a link per line, search), live while it runs; Cancel and Retry.

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use super::ansi::{self, RenderedLine};
use super::assets;
use super::error::{PageError, PageResult};
use super::session::{AccountAccess, Form, PagePath, PageQuery, WriteAccess, redirect_with_flash};
use super::view::{self, BuildState, Layout};
use crate::api::AppState;
use crate::api::builds::{build_view, cancel, queue_manual_build};
use crate::api::error::ApiError;
use crate::domain::{
    AccountId, Build, BuildId, BuildStatus, StepLines, StepState, Timestamp, TriggerSource,
};
use crate::store::{LogLimit, NewBuild};

/// Log lines shown on one page at most; later ones are on the next page (`?from=`).
pub const WINDOW_LINES: i64 = 5000;
/// Bytes of log read from the store at once.
const READ_BYTES: usize = 1024 * 1024;
/// Search results shown at most.
const MAX_MATCHES: usize = 1000;
/// Longest search text, in bytes.
const MAX_QUERY_BYTES: usize = 200;

/// A log line ready for the page: the whole `<li>`, its text escaped by [`ansi::render_line`].
pub struct LineHtml(String);

impl std::fmt::Display for LineHtml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// Built only by `line_html` below, whose every piece of text is escaped.
impl askama::filters::HtmlSafe for LineHtml {}

/// The `<li>` of log line `seq` (from 0; shown as `seq + 1`, with the anchor `L<seq + 1>`), whose
/// content is `html` (already escaped).
fn line_item(seq: i64, html: &str, href: Option<&str>) -> LineHtml {
    let n = seq + 1;
    let link = href.map_or_else(|| format!("#L{n}"), str::to_owned);
    LineHtml(format!(
        "<li id=\"L{n}\"><a class=\"ln\" href=\"{link}\" aria-label=\"Line {n}\">{n}</a><span class=\"lt\">{html}</span></li>"
    ))
}

/// A stored log line as the page (and the live log) shows it.
pub fn line_html(seq: i64, text: &str) -> LineHtml {
    let RenderedLine { html, .. } = ansi::render_line(text);
    line_item(seq, &html, None)
}

/// `?q=&from=` of the build page.
#[derive(Debug, Deserialize)]
pub struct BuildQuery {
    /// Show only the lines containing this text (case-insensitive).
    q: Option<String>,
    /// First line number shown (from 0).
    from: Option<i64>,
}

/// A step as shown.
pub struct StepView {
    pub title: String,
    pub state: &'static str,
    pub class: &'static str,
    pub duration: String,
    /// Link to the line that started it.
    pub href: String,
}

/// Why a queued build waits, as shown.
pub struct QueueView {
    pub message: String,
    pub position: u64,
    pub estimate: Option<String>,
}

#[derive(askama::Template)]
#[template(path = "build.html")]
struct BuildPage {
    layout: Layout,
    account: AccountId,
    build: Build,
    worker: String,
    state: BuildState,
    source: &'static str,
    created: String,
    created_age: String,
    started: Option<String>,
    stopped: Option<String>,
    duration: Option<String>,
    queue: Option<QueueView>,
    steps: Vec<StepView>,
    lines: Vec<LineHtml>,
    /// First line shown, numbered from 1.
    first_shown: i64,
    prev_from: Option<i64>,
    next_from: Option<i64>,
    query: String,
    matches_truncated: bool,
    total_lines: i64,
    live_url: Option<String>,
    can_cancel: bool,
    can_retry: bool,
    js: &'static str,
}

impl BuildPage {
    fn commit(&self) -> &str {
        self.build
            .build_trigger_metadata
            .commit_hash
            .as_deref()
            .unwrap_or_default()
    }

    fn short_commit(&self) -> &str {
        view::short_commit(self.commit())
    }

    fn commit_message(&self) -> &str {
        self.build
            .build_trigger_metadata
            .commit_message
            .as_deref()
            .unwrap_or_default()
    }
}

/// The page of a build.
fn build_path(account: &AccountId, id: BuildId) -> String {
    format!("/accounts/{account}/builds/{id}")
}

/// What one read through a build's log collects.
struct LogScan {
    steps: StepLines,
    lines: Vec<LineHtml>,
    total: i64,
    truncated: bool,
}

/// Reads the build's whole log once: its step lines, and either the lines of the window starting at
/// `from` or (with a query) the lines containing `query`.
async fn scan_log(
    app: &AppState,
    account: &AccountId,
    build: &Build,
    from: i64,
    query: &str,
) -> PageResult<LogScan> {
    let id = build.build_uuid;
    let page_of = |seq: i64| (seq / WINDOW_LINES) * WINDOW_LINES;
    let mut scan = LogScan {
        steps: StepLines::default(),
        lines: Vec::new(),
        total: 0,
        truncated: false,
    };
    let needle = query.to_lowercase();
    let mut next = 0;
    loop {
        let page = app
            .store
            .get_build_logs(
                account,
                id,
                next,
                LogLimit {
                    lines: 10_000,
                    bytes: READ_BYTES,
                },
            )
            .await?
            .ok_or(ApiError::NotFound)?;
        for (i, (at, text)) in page.lines.iter().enumerate() {
            let seq = next + i as i64;
            scan.steps.push(seq, *at, text);
            if needle.is_empty() {
                if (from..from + WINDOW_LINES).contains(&seq) {
                    scan.lines.push(line_html(seq, text));
                }
            } else {
                let rendered = ansi::render_line(text);
                if rendered.text.to_lowercase().contains(&needle) {
                    if scan.lines.len() == MAX_MATCHES {
                        scan.truncated = true;
                    } else {
                        let href = format!(
                            "{}?from={}#L{}",
                            build_path(account, id),
                            page_of(seq),
                            seq + 1
                        );
                        scan.lines.push(line_item(
                            seq,
                            &ansi::highlight(&rendered.text, query),
                            Some(&href),
                        ));
                    }
                }
            }
        }
        next = page.next_seq;
        if !page.more {
            scan.total = next;
            return Ok(scan);
        }
    }
}

/// `GET /accounts/{account_id}/builds/{build_uuid}?q=&from=`
pub async fn show_build(
    State(app): State<AppState>,
    access: AccountAccess,
    PagePath((_, raw_id)): PagePath<(String, String)>,
    PageQuery(params): PageQuery<BuildQuery>,
) -> PageResult<Response> {
    let id = BuildId::parse("build_uuid", &raw_id)?;
    let account = &access.account;
    let found = build_view(&app, account, id).await?;
    let build = found.build;
    let now = Timestamp::now();
    let mut query = params.q.unwrap_or_default().trim().to_owned();
    while query.len() > MAX_QUERY_BYTES {
        query.pop();
    }
    let from = params.from.unwrap_or(0).max(0);
    let scan = scan_log(&app, account, &build, from, &query).await?;
    let steps = scan
        .steps
        .steps(build.stopped_on, build.build_outcome)
        .into_iter()
        .map(|s| {
            let (state, class) = match s.state {
                StepState::Done => ("done", "ok"),
                StepState::Running => ("running", "live"),
                StepState::Failed => ("failed", "bad"),
                StepState::Cancelled => ("cancelled", "off"),
            };
            StepView {
                duration: view::duration(s.duration_ms(now)),
                href: format!(
                    "{}?from={}#L{}",
                    build_path(account, id),
                    (s.line / WINDOW_LINES) * WINDOW_LINES,
                    s.line + 1
                ),
                title: s.title,
                state,
                class,
            }
        })
        .collect();
    let running = build.status != BuildStatus::Stopped;
    let window_end = from + WINDOW_LINES;
    // Live lines follow the last line shown: only when the page shows the log's end.
    let live_url = (running && query.is_empty() && window_end >= scan.total).then(|| {
        format!(
            "{}/live?from={}",
            build_path(account, id),
            scan.total.max(from)
        )
    });
    let layout = Layout::new(
        &app,
        &access.viewer,
        format!("Build {}", build.build_uuid),
        Some(account),
    )
    .await?;
    let page = BuildPage {
        layout,
        account: account.clone(),
        worker: build.trigger.external_script_id.as_str().to_owned(),
        state: view::build_state(build.status, build.build_outcome),
        source: view::source_label(build.build_trigger_metadata.build_trigger_source),
        created: view::when(build.created_on),
        created_age: view::age(build.created_on, now),
        started: build.initializing_on.map(view::when),
        stopped: build.stopped_on.map(view::when),
        duration: view::build_duration(&build, now).map(view::duration),
        queue: found.queue.map(|q| QueueView {
            message: q.message,
            position: q.position,
            estimate: q
                .estimated_start_on
                .map(|t| format!("{} ({})", view::when(t), in_time(t, now))),
        }),
        steps,
        lines: scan.lines,
        first_shown: from + 1,
        prev_from: (query.is_empty() && from > 0).then(|| (from - WINDOW_LINES).max(0)),
        next_from: (query.is_empty() && window_end < scan.total).then_some(window_end),
        query,
        matches_truncated: scan.truncated,
        total_lines: scan.total,
        live_url,
        can_cancel: access.can_write && running,
        can_retry: access.can_write && !running,
        js: assets::build_js_url(),
        build,
    };
    Ok(view::page(&access.viewer, &page))
}

/// How far in the future `t` is at `now`: `in about 3 min`, or `any moment now`.
fn in_time(t: Timestamp, now: Timestamp) -> String {
    let secs = (t.millis() - now.millis()) / 1000;
    match secs {
        ..=4 => "any moment now".into(),
        5..=59 => format!("in about {secs} s"),
        60..=3599 => format!("in about {} min", secs / 60),
        _ => format!("in about {} h", secs / 3600),
    }
}

/// A form with nothing but its CSRF token (checked before the handler runs).
#[derive(Deserialize)]
pub struct EmptyForm {}

/// `POST /accounts/{account_id}/builds/{build_uuid}/cancel`: as `cancelBuildByUuid`.
pub async fn cancel_build(
    State(app): State<AppState>,
    WriteAccess(access): WriteAccess,
    PagePath((_, raw_id)): PagePath<(String, String)>,
    Form(_): Form<EmptyForm>,
) -> PageResult<Response> {
    let id = BuildId::parse("build_uuid", &raw_id)?;
    cancel(&app, &access.account, id).await?;
    Ok(redirect_with_flash(
        &build_path(&access.account, id),
        "Build cancelled",
    ))
}

/// `POST /accounts/{account_id}/builds/{build_uuid}/retry`: a manual build of the build's trigger
/// pinned to its branch and commit, with the trigger's current settings (PRODUCT-NOTES §1 "Retry,
/// rerun"), queued as `createManualBuild` queues it.
pub async fn retry_build(
    State(app): State<AppState>,
    WriteAccess(access): WriteAccess,
    PagePath((_, raw_id)): PagePath<(String, String)>,
    Form(_): Form<EmptyForm>,
) -> PageResult<Response> {
    let id = BuildId::parse("build_uuid", &raw_id)?;
    let account = &access.account;
    let build = app
        .store
        .get_build(account, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let meta = &build.build_trigger_metadata;
    if meta.branch.is_none() && meta.commit_hash.is_none() {
        return Err(ApiError::Conflict(
            "this build has neither a branch nor a commit to build again".into(),
        )
        .into());
    }
    let new = NewBuild {
        trigger: build.trigger.trigger_uuid,
        source: TriggerSource::Manual,
        branch: meta.branch.clone(),
        commit_hash: meta.commit_hash.clone(),
        commit_message: None,
        author: None,
        pull_request: None,
        deploy_hook: None,
        seed: None,
        watch_paths: None,
    };
    let inserted = queue_manual_build(&app, account, &new)
        .await
        .map_err(|e| match e {
            ApiError::NotFound => PageError::Api(ApiError::Conflict(
                "this build's trigger was deleted: it cannot be retried".into(),
            )),
            other => other.into(),
        })?;
    Ok(redirect_with_flash(
        &build_path(account, inserted.build_uuid),
        "Retry queued",
    ))
}
