//! Tells GitHub how builds go, outside the builds' path: a loop compares each build of a GitHub
//! repository with what was last reported and creates or updates its check run, retrying failed calls
//! with back-off. A failing or slow GitHub never fails or delays a build.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use super::app::GithubApp;
use crate::domain::{BuildId, BuildOutcome, BuildStatus, Timestamp};
use crate::store::{PrBuild, ReportItem, Store};

/// How often the reporter looks for builds to report.
const INTERVAL: Duration = Duration::from_millis(250);
/// Builds reported per round at most.
const BATCH: i64 = 20;
/// Wait after the first failed attempt, in milliseconds (doubled with each further failure).
const BASE_BACKOFF_MS: i64 = 500;
/// Longest wait between two attempts, in milliseconds.
const MAX_BACKOFF_MS: i64 = 5 * 60 * 1000;

/// How long the reporter goes on after shutdown was asked, at most: what the builds stopped by the
/// shutdown (ended `terminated`) and any other pending report get to reach GitHub. What is left then
/// is reported by the next node that starts a reporter.
pub const FLUSH_GRACE: Duration = Duration::from_secs(10);

/// Runs until `shutdown` turns true, then flushes the pending reports (at most [`FLUSH_GRACE`]). The
/// node stops its builds before it asks the reporter to stop, so their last status is among them.
pub async fn run(
    store: Store,
    app: Arc<GithubApp>,
    public_url: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let none = Skip::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.changed() => break,
        }
        round(&store, &app, &public_url, Timestamp::now(), &none).await;
    }
    let flushed = tokio::time::timeout(FLUSH_GRACE, flush(&store, &app, &public_url)).await;
    if flushed.is_err() {
        tracing::warn!(
            grace_seconds = FLUSH_GRACE.as_secs(),
            "GitHub reports still pending at shutdown: the next start reports them"
        );
    }
}

/// Reports everything pending, each item once whatever its back-off (the node is going away), until
/// nothing is left but items that failed here.
async fn flush(store: &Store, app: &GithubApp, public_url: &str) {
    let mut failed = Skip::default();
    // Back-off times are ignored: every pending item is due.
    let due = Timestamp::from_millis(i64::MAX);
    loop {
        let done = round(store, app, public_url, due, &failed).await;
        if done.attempted == 0 {
            return;
        }
        failed.builds.extend(done.failed.builds);
        failed.comments.extend(done.failed.comments);
    }
}

/// Items a round leaves out: builds and pull requests (by URL).
#[derive(Debug, Default)]
struct Skip {
    builds: HashSet<BuildId>,
    comments: HashSet<String>,
}

/// What a round did.
#[derive(Debug, Default)]
struct Round {
    /// Reports and comments tried (0: nothing was due, or the store could not be read).
    attempted: usize,
    failed: Skip,
}

/// Reports the builds whose check run is behind and whose retry time is `due` or earlier (but those in
/// `skip`), retrying failures later with back-off, then brings the pull request comments up to date.
async fn round(
    store: &Store,
    app: &GithubApp,
    public_url: &str,
    due: Timestamp,
    skip: &Skip,
) -> Round {
    let mut done = Round::default();
    let limit = BATCH + i64::try_from(skip.builds.len()).unwrap_or(i64::MAX - BATCH);
    match store.builds_to_report(due, limit).await {
        Ok(items) => {
            for item in items
                .into_iter()
                .filter(|i| !skip.builds.contains(&i.build))
                .take(BATCH as usize)
            {
                done.attempted += 1;
                if !report_one(store, app, &item, public_url).await {
                    done.failed.builds.insert(item.build);
                }
            }
        }
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "finding builds to report to GitHub failed"
        ),
    }
    let comments = update_comments(store, app, public_url, due, &skip.comments).await;
    done.attempted += comments.attempted;
    done.failed.comments = comments.failed.comments;
    done
}

/// Creates or updates one build's check run and records the result (a retry time after a failure);
/// true when GitHub took it.
async fn report_one(store: &Store, app: &GithubApp, item: &ReportItem, public_url: &str) -> bool {
    let (ok, recorded) = match report(app, item, public_url).await {
        Ok(id) => {
            tracing::info!(build.uuid = %item.build, status = item.status.as_str(), "reported to GitHub");
            (true, store.report_done(item, id).await)
        }
        Err(e) => {
            let attempts = item.attempts + 1;
            let backoff = (BASE_BACKOFF_MS << attempts.min(20)).min(MAX_BACKOFF_MS);
            tracing::warn!(build.uuid = %item.build, attempts, retry_in_ms = backoff, error = format!("{e:#}"), "reporting to GitHub failed");
            let recorded = store
                .report_failed(
                    item.build,
                    attempts,
                    Timestamp::from_millis(Timestamp::now().millis() + backoff),
                )
                .await;
            (false, recorded)
        }
    };
    if let Err(e) = recorded {
        tracing::error!(error = format!("{e:#}"), "recording a GitHub report failed");
        return false;
    }
    ok
}

/// Brings the comment of every pull request whose builds changed up to date (one per pull request,
/// edited in place, a row per Worker): those due at `due`, but the ones in `skip`.
async fn update_comments(
    store: &Store,
    app: &GithubApp,
    public_url: &str,
    due: Timestamp,
    skip: &HashSet<String>,
) -> Round {
    let mut done = Round::default();
    let limit = BATCH + i64::try_from(skip.len()).unwrap_or(i64::MAX - BATCH);
    let items = match store.comments_to_update(due, limit).await {
        Ok(items) => items,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "finding pull request comments to update failed"
            );
            return done;
        }
    };
    for item in items
        .into_iter()
        .filter(|i| !skip.contains(&i.pr_url))
        .take(BATCH as usize)
    {
        done.attempted += 1;
        let result = async {
            let number = pr_number(&item.pr_url)?;
            let body = render_comment(
                &store.pr_builds(&item.pr_url, item.installation).await?,
                public_url,
            );
            match item.comment_id {
                None => {
                    app.create_comment(item.installation, &item.owner, &item.repo, number, &body)
                        .await
                }
                Some(id) => {
                    app.update_comment(item.installation, &item.owner, &item.repo, id, &body)
                        .await?;
                    Ok(id)
                }
            }
        }
        .await;
        let recorded = match result {
            Ok(id) => store.comment_done(&item.pr_url, id, item.generation).await,
            Err(e) => {
                done.failed.comments.insert(item.pr_url.clone());
                let attempts = item.attempts + 1;
                let backoff = (BASE_BACKOFF_MS << attempts.min(20)).min(MAX_BACKOFF_MS);
                tracing::warn!(pr = %item.pr_url, attempts, retry_in_ms = backoff, error = format!("{e:#}"), "updating a pull request comment failed");
                store
                    .comment_failed(
                        &item.pr_url,
                        attempts,
                        Timestamp::from_millis(Timestamp::now().millis() + backoff),
                    )
                    .await
            }
        };
        if let Err(e) = recorded {
            done.failed.comments.insert(item.pr_url.clone());
            tracing::error!(
                error = format!("{e:#}"),
                "recording a pull request comment failed"
            );
        }
    }
    done
}

/// The number of a pull request from its URL (`…/pull/<n>`).
fn pr_number(url: &str) -> anyhow::Result<i64> {
    url.rsplit('/')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no pull request number in {url}"))
}

/// The comment: a row per Worker with its newest build's status, commit and link.
pub fn render_comment(builds: &[PrBuild], public_url: &str) -> String {
    let mut body = String::from(
        "## Deploying with Workers Builds\n\n| Worker | Status | Commit | Build |\n|---|---|---|---|\n",
    );
    for b in builds {
        let status = match (b.status, b.outcome) {
            (BuildStatus::Queued, _) => "⏳ Queued",
            (BuildStatus::Initializing | BuildStatus::Running, _) => "🔄 Building",
            (BuildStatus::Stopped, Some(BuildOutcome::Success)) => "✅ Success",
            (BuildStatus::Stopped, Some(BuildOutcome::Cancelled)) => "⏹️ Cancelled",
            (BuildStatus::Stopped, Some(BuildOutcome::Skipped)) => "⏭️ Skipped",
            (BuildStatus::Stopped, Some(BuildOutcome::Terminated)) => "⌛ Timed out",
            (BuildStatus::Stopped, _) => "❌ Failed",
        };
        let commit = b.commit.as_deref().map_or("-", |c| &c[..c.len().min(7)]);
        let link = format!(
            "{}/client/v4/accounts/{}/builds/builds/{}",
            public_url.trim_end_matches('/'),
            b.account,
            b.build
        );
        body.push_str(&format!(
            "| {} | {status} | `{commit}` | [View build]({link}) |\n",
            b.worker
        ));
    }
    body
}

/// Creates or updates the build's check run; returns its id.
async fn report(app: &GithubApp, item: &ReportItem, public_url: &str) -> anyhow::Result<i64> {
    let mut body = check_run_state(item.status, item.outcome);
    match item.check_run_id {
        None => {
            body["name"] = json!(format!("Workers Builds: {}", item.worker));
            body["head_sha"] = json!(item.sha);
            body["external_id"] = json!(item.build.to_string());
            body["details_url"] = json!(format!(
                "{}/client/v4/accounts/{}/builds/builds/{}",
                public_url.trim_end_matches('/'),
                item.account,
                item.build
            ));
            app.create_check_run(item.installation, &item.owner, &item.repo, body)
                .await
        }
        Some(id) => {
            app.update_check_run(item.installation, &item.owner, &item.repo, id, body)
                .await?;
            Ok(id)
        }
    }
}

/// The check run's `status` (and `conclusion` once stopped) for a build's status and outcome.
fn check_run_state(status: BuildStatus, outcome: Option<BuildOutcome>) -> Value {
    match status {
        BuildStatus::Queued => json!({"status": "queued"}),
        BuildStatus::Initializing | BuildStatus::Running => json!({"status": "in_progress"}),
        BuildStatus::Stopped => {
            let conclusion = match outcome {
                Some(BuildOutcome::Success) => "success",
                Some(BuildOutcome::Cancelled) => "cancelled",
                Some(BuildOutcome::Skipped) => "skipped",
                Some(BuildOutcome::Terminated) => "timed_out",
                Some(BuildOutcome::Fail) | None => "failure",
            };
            json!({"status": "completed", "conclusion": conclusion, "completed_at": Timestamp::now().to_rfc3339()})
        }
    }
}
