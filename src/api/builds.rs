//! Builds: manual creation, reads, cancel, logs and account limits.

use std::collections::BTreeMap;

use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ApiResult, Success, ok};
use super::extract::{Account, ApiJson, MAX_PAGE_BYTES, NoBody, PathParams, QueryParams, id_list};
use super::schema;
use super::triggers::trigger_id;
use crate::domain::{
    AccountId, Build, BuildId, BuildOutcome, BuildStatus, Invalid, MAX_SEED_FILES, QueueInfo,
    SeedFile, SeedRepo, Timestamp, TriggerSource, VersionId, WorkerId, branch, commit_hash,
    encode_content, explain_queued, relative_path,
};
use crate::store::{BuildFilter, CancelOutcome, LogLimit, NewBuild};

/// Log lines per page at most (pages are also bounded by bytes, [`MAX_PAGE_BYTES`]).
pub const LOG_PAGE_LINES: u32 = 1000;

/// Builds keyed by Worker id or version id. Its JSON is kept under [`MAX_PAGE_BYTES`] unless it holds
/// a single build: a request whose builds are larger together is refused (ask for fewer ids).
#[derive(Debug, Serialize, JsonSchema)]
pub struct BuildsMap {
    pub builds: BTreeMap<String, Build>,
}

/// Result of `cancelBuildByUuid`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CancelledBuild {
    pub build_outcome: BuildOutcome,
    pub build_uuid: BuildId,
    pub stopped_on: Timestamp,
}

/// Result of `getBuildLogs`: `[epoch_seconds, message]` lines, at most [`LOG_PAGE_LINES`] and about
/// [`MAX_PAGE_BYTES`] of them (a page always holds the next line). `truncated` means more lines
/// follow: call again with `cursor` while it is true; a cursor never skips a line.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LogsPage {
    pub cursor: String,
    pub lines: Vec<(f64, String)>,
    pub truncated: bool,
}

/// Result of `getAccountLimits`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AccountLimits {
    pub build_minutes_refresh_on: Timestamp,
    pub has_reached_build_minutes_limit: bool,
}

/// Result of `createManualBuild`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InsertedBuild {
    pub build_uuid: BuildId,
    pub created_on: Timestamp,
}

/// Body of `createManualBuild`: a branch, a commit, or both (a branch with `seed_repo`).
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(transform = schema::manual_build_rules)]
pub struct CreateBuildRequest {
    /// A branch name by git's rules (`git check-ref-format --branch`), at most 255 bytes.
    #[schemars(with = "Option<schema::Branch>")]
    pub branch: Option<String>,
    #[schemars(with = "Option<schema::CommitHash>")]
    pub commit_hash: Option<String>,
    /// A template to create the (empty) connected repository's first commit from, before building.
    pub seed_repo: Option<SeedRepoRequest>,
}

/// `seed_repo` of `createManualBuild`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SeedRepoRequest {
    /// `github`.
    #[schemars(with = "crate::domain::ProviderType")]
    pub provider: String,
    #[schemars(with = "schema::GithubName")]
    pub owner: String,
    #[schemars(with = "schema::GithubName")]
    pub repository: String,
    /// The template's branch (default: its default branch).
    #[schemars(with = "Option<schema::Branch>")]
    pub branch: Option<String>,
    /// The template's directory that becomes the repository's root (default: all of it).
    #[schemars(with = "Option<schema::SeedPath>")]
    pub path: Option<String>,
    /// At most two files to add, or to edit (`replace`: the text replaced by `content`).
    #[schemars(length(max = MAX_SEED_FILES))]
    pub files: Option<Vec<SeedFileRequest>>,
}

/// A file of `seed_repo`; with `isBase64`, `content` is standard base64.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(transform = schema::seed_file_rules)]
pub struct SeedFileRequest {
    #[schemars(with = "schema::SeedFilename")]
    pub filename: String,
    pub content: String,
    #[serde(rename = "isBase64", default)]
    pub is_base64: bool,
    pub replace: Option<String>,
}

impl SeedRepoRequest {
    fn validate(self) -> Result<SeedRepo, Invalid> {
        if self.provider != "github" {
            return Err(Invalid::field("seed_repo.provider", "must be \"github\""));
        }
        let slug = |field: &str, v: &str| {
            let ok = !v.is_empty()
                && v.len() <= 100
                && v != "."
                && v != ".."
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if ok {
                Ok(v.to_owned())
            } else {
                Err(Invalid::field(field, "is not a valid GitHub name"))
            }
        };
        let files = self.files.unwrap_or_default();
        if files.len() > MAX_SEED_FILES {
            return Err(Invalid::field(
                "seed_repo.files",
                format!("at most {MAX_SEED_FILES} files"),
            ));
        }
        Ok(SeedRepo {
            owner: slug("seed_repo.owner", &self.owner)?,
            repository: slug("seed_repo.repository", &self.repository)?,
            branch: self
                .branch
                .as_deref()
                .map(|b| branch("seed_repo.branch", b))
                .transpose()?,
            path: relative_path("seed_repo.path", self.path.as_deref().unwrap_or(""), true)?,
            files: files
                .into_iter()
                .map(|f| {
                    Ok(SeedFile {
                        filename: relative_path("seed_repo.files.filename", &f.filename, false)?,
                        content_base64: encode_content(
                            "seed_repo.files.content",
                            &f.content,
                            f.is_base64,
                        )?,
                        replace: f.replace.filter(|r| !r.is_empty()),
                    })
                })
                .collect::<Result<_, Invalid>>()?,
        })
    }
}

/// The opaque log cursor: URL-safe base64 of `{"line": next line, "timestamp": seconds}`, as in the seeds.
/// The live log stream's event ids are cursors too.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LogCursor {
    /// Number of the next line, from 0.
    pub line: i64,
    /// Epoch seconds of the line before.
    pub timestamp: i64,
}

pub(super) fn encode_cursor(c: &LogCursor) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(c).unwrap_or_default())
}

/// Parses a cursor given in `field`; `what` names where valid ones come from.
pub(super) fn decode_cursor(field: &str, what: &str, raw: &str) -> Result<LogCursor, Invalid> {
    let bad = || Invalid::field(field, format!("is not {what}"));
    let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).map_err(|_| bad())?;
    let c: LogCursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if c.line < 0 {
        return Err(bad());
    }
    Ok(c)
}

pub(super) fn build_id(path: &PathParams) -> Result<BuildId, ApiError> {
    Ok(BuildId::parse("build_uuid", path.get("build_uuid")?)?)
}

/// `POST /accounts/{account_id}/builds/triggers/{trigger_uuid}/builds`
pub async fn create_manual_build(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    ApiJson(body): ApiJson<CreateBuildRequest>,
) -> ApiResult<InsertedBuild> {
    let trigger = trigger_id(&path)?;
    let seed = body.seed_repo.map(SeedRepoRequest::validate).transpose()?;
    if seed.is_some() && body.branch.is_none() {
        return Err(Invalid::field(
            "branch",
            "is required with seed_repo (the branch to create)",
        )
        .into());
    }
    let branch = body
        .branch
        .as_deref()
        .map(|b| branch("branch", b))
        .transpose()?;
    let commit = body.commit_hash.as_deref().map(commit_hash).transpose()?;
    if branch.is_none() && commit.is_none() {
        return Err(Invalid("branch or commit_hash: at least one is required".into()).into());
    }
    let new = NewBuild {
        trigger,
        source: TriggerSource::Manual,
        branch,
        commit_hash: commit,
        commit_message: None,
        author: None,
        pull_request: None,
        deploy_hook: None,
        seed,
        watch_paths: None,
    };
    ok(queue_manual_build(&app, &account, &new).await?)
}

/// Queues a manual build of `new.trigger` (the API's `createManualBuild` and the dashboard's Retry):
/// 404 for a trigger not in the account (or deleted), 429 when the account's build minutes are used
/// up.
pub(crate) async fn queue_manual_build(
    app: &AppState,
    account: &AccountId,
    new: &NewBuild,
) -> Result<InsertedBuild, ApiError> {
    // An unknown trigger is a 404 even for an account out of build minutes.
    let trigger_exists = app.store.get_trigger(account, new.trigger).await?.is_some();
    if !trigger_exists {
        return Err(ApiError::NotFound);
    }
    refuse_over_build_minutes(app, account).await?;
    let Some((build_uuid, created_on)) = app.store.insert_build(account, new).await? else {
        return Err(ApiError::NotFound);
    };
    Ok(InsertedBuild {
        build_uuid,
        created_on,
    })
}

/// The account's monthly build minutes: its own setting, else the server default.
async fn build_minutes_allowance(app: &AppState, account: &AccountId) -> Result<i64, ApiError> {
    Ok(app
        .store
        .get_account_build_minutes(account)
        .await?
        .unwrap_or(app.limits.build_minutes_per_month))
}

/// 429 when the account has used up this month's build minutes.
async fn refuse_over_build_minutes(app: &AppState, account: &AccountId) -> Result<(), ApiError> {
    let now = Timestamp::now();
    let used = app
        .store
        .build_minutes_used(account, now.month_start())
        .await?;
    if used >= build_minutes_allowance(app, account).await? {
        let refresh = now.next_month_start();
        return Err(ApiError::QuotaExceeded {
            message: format!(
                "Build minutes limit reached for this month ({used} minutes used); it refreshes on {}",
                refresh.to_rfc3339()
            ),
            retry_after_secs: ((refresh.millis() - now.millis()) / 1000).max(1) as u64,
        });
    }
    Ok(())
}

/// Result of `getBuildByUuid`: the build, and for a queued one why it waits.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BuildView {
    #[serde(flatten)]
    pub build: Build,
    /// A Kiln extension, present while the build is queued: why it waits, its place in the queue
    /// and when it should start (see [`crate::domain::explain_queued`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueInfo>,
}

/// `GET /accounts/{account_id}/builds/builds/{build_uuid}`
pub async fn get_build(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
) -> ApiResult<BuildView> {
    let id = build_id(&path)?;
    ok(build_view(&app, &account, id).await?)
}

/// A build of the account with, when it is queued, why it waits (`getBuildByUuid` and the
/// dashboard's build page); 404 when the account has no such build.
pub(crate) async fn build_view(
    app: &AppState,
    account: &AccountId,
    id: BuildId,
) -> Result<BuildView, ApiError> {
    let build = app
        .store
        .get_build(account, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let queue = match build.status {
        BuildStatus::Queued => app
            .store
            .queue_view(account, id, app.default_concurrency)
            .await?
            .map(|view| explain_queued(&view.snapshot, &view.target, view.older)),
        _ => None,
    };
    Ok(BuildView { build, queue })
}

/// `GET /accounts/{account_id}/builds/workers/{external_script_id}/builds`; the `branch` and
/// `outcome` filters are Kiln extensions (for the dashboard and the CLI).
pub async fn list_builds(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    query: QueryParams,
) -> ApiResult<Vec<Build>> {
    let worker = WorkerId::parse("external_script_id", path.get("external_script_id")?)?;
    let filter = build_filter(&query)?;
    let (total, largest) = app
        .store
        .build_list_stats(&account, &worker, &filter)
        .await?;
    let paging = query.paging()?.fit(largest);
    let builds = app
        .store
        .list_builds(&account, &worker, &filter, paging.page, paging.per_page)
        .await?;
    let info = paging.info(builds.len(), total);
    Ok(Success(builds, Some(info)))
}

/// The `branch` (a valid branch name) and `outcome` (a `build_outcome` value) query parameters.
fn build_filter(query: &QueryParams) -> Result<BuildFilter, Invalid> {
    let outcome = query
        .get("outcome")
        .map(|o| {
            BuildOutcome::parse(o).ok_or_else(|| {
                Invalid::field(
                    "outcome",
                    "must be success, fail, skipped, cancelled or terminated",
                )
            })
        })
        .transpose()?;
    Ok(BuildFilter {
        branch: query
            .get("branch")
            .map(|b| branch("branch", b))
            .transpose()?,
        outcome,
    })
}

/// Builds keyed by id, collected into a map whose JSON stays under [`MAX_PAGE_BYTES`] unless it
/// holds one build; `field` names the query parameter to ask for fewer ids with.
struct BoundedMap {
    field: &'static str,
    builds: BTreeMap<String, Build>,
    bytes: usize,
}

impl BoundedMap {
    fn new(field: &'static str) -> Self {
        BoundedMap {
            field,
            builds: BTreeMap::new(),
            bytes: 0,
        }
    }

    fn add(&mut self, key: String, build: Build) -> Result<(), ApiError> {
        self.bytes += serde_json::to_vec(&build)
            .map_err(anyhow::Error::from)?
            .len();
        if self.bytes > MAX_PAGE_BYTES && !self.builds.is_empty() {
            return Err(Invalid::field(
                self.field,
                format!(
                    "the builds asked for are larger than {} KiB together; ask for fewer ids at a time",
                    MAX_PAGE_BYTES / 1024
                ),
            )
            .into());
        }
        self.builds.insert(key, build);
        Ok(())
    }
}

/// `GET /accounts/{account_id}/builds/builds/latest?external_script_ids=a,b`
pub async fn get_latest_builds(
    State(app): State<AppState>,
    Account(account): Account,
    query: QueryParams,
) -> ApiResult<BuildsMap> {
    let raw = query.require("external_script_ids")?;
    let workers = id_list("external_script_ids", raw)?
        .into_iter()
        .map(|w| WorkerId::parse("external_script_ids", w))
        .collect::<Result<Vec<_>, _>>()?;
    let mut map = BoundedMap::new("external_script_ids");
    for worker in workers {
        if let Some(build) = app.store.latest_build(&account, &worker).await? {
            map.add(worker.as_str().to_owned(), build)?;
        }
    }
    ok(BuildsMap { builds: map.builds })
}

/// `GET /accounts/{account_id}/builds/builds?version_ids=a,b`
pub async fn get_builds_by_versions(
    State(app): State<AppState>,
    Account(account): Account,
    query: QueryParams,
) -> ApiResult<BuildsMap> {
    let raw = query.require("version_ids")?;
    let versions = id_list("version_ids", raw)?
        .into_iter()
        .map(|v| VersionId::parse("version_ids", v))
        .collect::<Result<Vec<_>, _>>()?;
    let mut map = BoundedMap::new("version_ids");
    for version in versions {
        if let Some(build) = app.store.build_by_version(&account, version).await? {
            map.add(version.to_string(), build)?;
        }
    }
    ok(BuildsMap { builds: map.builds })
}

/// `PUT /accounts/{account_id}/builds/builds/{build_uuid}/cancel`
pub async fn cancel_build(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    _: NoBody,
) -> ApiResult<CancelledBuild> {
    let id = build_id(&path)?;
    ok(cancel(&app, &account, id).await?)
}

/// Cancels a queued or running build of the account and tells this node's runners at once
/// (`cancelBuildByUuid` and the dashboard's Cancel): 409 for a stopped build, 404 for none.
pub(crate) async fn cancel(
    app: &AppState,
    account: &AccountId,
    id: BuildId,
) -> Result<CancelledBuild, ApiError> {
    match app.store.cancel_build(account, id).await? {
        CancelOutcome::Cancelled { stopped_on } => {
            app.scheduler.cancel(id);
            Ok(CancelledBuild {
                build_outcome: BuildOutcome::Cancelled,
                build_uuid: id,
                stopped_on,
            })
        }
        CancelOutcome::AlreadyStopped => {
            Err(ApiError::Conflict("the build has already stopped".into()))
        }
        CancelOutcome::NotFound => Err(ApiError::NotFound),
    }
}

/// `GET /accounts/{account_id}/builds/builds/{build_uuid}/logs?cursor=`
pub async fn get_build_logs(
    State(app): State<AppState>,
    Account(account): Account,
    path: PathParams,
    query: QueryParams,
) -> ApiResult<LogsPage> {
    let id = build_id(&path)?;
    let from = match query.get("cursor") {
        Some(raw) if !raw.trim().is_empty() => {
            decode_cursor("cursor", "a cursor returned by this endpoint", raw)?.line
        }
        _ => 0,
    };
    let page = app
        .store
        .get_build_logs(
            &account,
            id,
            from,
            LogLimit {
                lines: LOG_PAGE_LINES,
                bytes: MAX_PAGE_BYTES,
            },
        )
        .await?
        .ok_or(ApiError::NotFound)?;
    let last_ts = page.lines.last().map_or(0, |(t, _)| t.millis() / 1000);
    ok(LogsPage {
        cursor: encode_cursor(&LogCursor {
            line: page.next_seq,
            timestamp: last_ts,
        }),
        lines: page
            .lines
            .into_iter()
            .map(|(t, m)| (t.epoch_seconds(), m))
            .collect(),
        truncated: page.more,
    })
}

/// `GET /accounts/{account_id}/builds/account/limits`
pub async fn get_account_limits(
    State(app): State<AppState>,
    Account(account): Account,
) -> ApiResult<AccountLimits> {
    let now = Timestamp::now();
    let used = app
        .store
        .build_minutes_used(&account, now.month_start())
        .await?;
    ok(AccountLimits {
        build_minutes_refresh_on: now.next_month_start(),
        has_reached_build_minutes_limit: used >= build_minutes_allowance(&app, &account).await?,
    })
}
