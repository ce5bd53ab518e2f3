//! Tells GitHub how builds go, outside the builds' path, from the build events outbox: every status
//! change of a reported build becomes one check run update (the first creates the check run) and,
//! for a build of a pull request, one update of the pull request's comment. A failing or slow GitHub
//! never fails or delays a build.
//!
//! Each node runs a reporter; they share the work through the store ([`crate::store`]'s report
//! items): events are turned into items once (under the reporter's cursor), each item is claimed by
//! one node with a lease it renews while posting, the items of one build (or pull request) are posted
//! one at a time in event order, a failure is retried with exponential back-off (at most
//! [`MAX_BACKOFF`] apart, given up [`GIVE_UP_AFTER`] after the change, or at once when GitHub refuses
//! it for good), and an item whose node died is claimed again once its lease lapses. A retried
//! creation first looks for what an attempt whose answer was lost may have created (the check run by
//! its `external_id`, the comment by its marker) and edits it instead of creating a second one.
//!
//! The reporter wakes on the store's event bus (this node's changes, and other nodes' through
//! PostgreSQL `LISTEN/NOTIFY`); it also looks every poll interval, and when a retry or a lease is due.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::app::{ApiError, GithubApp};
use crate::domain::{BuildOutcome, BuildStatus, Timestamp};
use crate::store::{
    CheckRunReport, CommentReport, PrBuild, ReportClaim, ReportKind, Reported, Store,
};

/// Build events turned into report items per transaction at most.
const INGEST_BATCH: i64 = 500;
/// Items one node posts at once at most.
const CONCURRENCY: usize = 8;
/// Wait after the first failed attempt (doubled with each further failure).
const BASE_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// How long after its change an update is retried at most; it is then given up (and logged).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// Shortest wait between two looks at the store when something seems due at once (a guard against a
/// busy loop on items that are due but cannot be claimed yet).
const MIN_WAIT: Duration = Duration::from_millis(100);

/// How long the reporter goes on after shutdown was asked, at most: what the builds stopped by the
/// shutdown (ended `terminated`) and any other pending report get to reach GitHub. What is left then
/// is reported by another node, or by the next start, once its lease lapses.
pub const FLUSH_GRACE: Duration = Duration::from_secs(10);

/// Marks Kiln's pull request comment (an HTML comment, invisible on GitHub): a retried creation finds
/// the comment an attempt whose answer was lost made.
pub const COMMENT_MARKER: &str = "<!-- kiln:workers-builds -->";

/// The reporter's settings.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// The URL users reach Kiln at (check runs and comments link to builds under it).
    pub public_url: String,
    /// Who holds this reporter's claims (unique per process).
    pub owner: String,
    /// How long a claim lasts without renewal (renewed at a third of it while posting).
    pub lease: Duration,
    /// How often to look for work without a wake-up.
    pub poll: Duration,
}

/// Runs until `shutdown` turns true, then flushes the pending reports (at most [`FLUSH_GRACE`]). The
/// node stops its builds before it asks the reporter to stop, so their last status is among them.
pub async fn run(
    store: Store,
    app: Arc<GithubApp>,
    config: ReporterConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let reporter = Arc::new(Reporter { store, app, config });
    // Subscribed before the first look: nothing appended after it goes unnoticed.
    let mut events = reporter.store.events().subscribe();
    let mut none = HashSet::new();
    loop {
        // A shutdown does not wait for the posts under way (GitHub may hang): they are given up
        // here, their items released, and the flush makes them again.
        tokio::select! {
            _ = reporter.round(Mode::Due, &mut none) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        let wait = reporter.next_wait().await;
        tokio::select! {
            _ = events.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    reporter.release().await;
    let flushed = tokio::time::timeout(FLUSH_GRACE, reporter.flush()).await;
    if flushed.is_err() {
        tracing::warn!(
            grace_seconds = FLUSH_GRACE.as_secs(),
            "GitHub reports still pending at shutdown: another node or the next start reports them"
        );
        reporter.release().await;
    }
}

/// Which items a round posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Those whose retry time has come.
    Due,
    /// Every pending one, each once, whatever its back-off (the node is going away).
    Flush,
}

/// What posting one item came to.
enum Posted {
    Done(Reported),
    Failed(anyhow::Error),
}

struct Reporter {
    store: Store,
    app: Arc<GithubApp>,
    config: ReporterConfig,
}

impl Reporter {
    /// Gives back the items this reporter holds, whose posts were given up: claimable at once (by
    /// the flush, or by another node).
    async fn release(&self) {
        if let Err(e) = self.store.release_report_claims(&self.config.owner).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "releasing GitHub report claims failed: they are retaken when their lease lapses"
            );
        }
    }

    /// Reports everything pending, each item once, until nothing is left but items that failed here.
    async fn flush(self: &Arc<Self>) {
        let mut tried = HashSet::new();
        while self.round(Mode::Flush, &mut tried).await > 0 {}
    }

    /// Turns new events into items, then posts claimable items (but those in `tried`, which gets
    /// the ones posted) until none is left; returns how many were posted.
    async fn round(self: &Arc<Self>, mode: Mode, tried: &mut HashSet<(ReportKind, i64)>) -> usize {
        self.ingest().await;
        let mut posted = 0;
        loop {
            let due = match mode {
                Mode::Due => Timestamp::now(),
                Mode::Flush => Timestamp::from_millis(i64::MAX),
            };
            let claims = match self
                .store
                .claim_reports(
                    &self.config.owner,
                    self.lease_until(),
                    due,
                    CONCURRENCY,
                    tried,
                )
                .await
            {
                Ok(claims) => claims,
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "finding GitHub reports to make failed"
                    );
                    return posted;
                }
            };
            if claims.is_empty() {
                return posted;
            }
            posted += claims.len();
            if mode == Mode::Flush {
                tried.extend(claims.iter().map(ReportClaim::key));
            }
            self.post_all(claims).await;
        }
    }

    /// Moves every new build event into report items.
    async fn ingest(&self) {
        loop {
            match self.store.ingest_report_events(INGEST_BATCH).await {
                Ok(n) if (n as i64) < INGEST_BATCH => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "reading build events for GitHub failed"
                    );
                    return;
                }
            }
        }
    }

    /// Posts `claims` at once, renewing their leases until all are done.
    async fn post_all(self: &Arc<Self>, claims: Vec<ReportClaim>) {
        let mut tasks = JoinSet::new();
        for claim in claims {
            let reporter = self.clone();
            tasks.spawn(async move { reporter.post_and_record(claim).await });
        }
        let mut renew = tokio::time::interval(self.config.lease / 3);
        renew.tick().await;
        loop {
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    Some(Ok(())) => {}
                    Some(Err(e)) => tracing::error!(error = %e, "a GitHub report task failed"),
                    None => return,
                },
                _ = renew.tick() => {
                    if let Err(e) = self.store.renew_report_leases(&self.config.owner, self.lease_until()).await {
                        tracing::warn!(error = format!("{e:#}"), "renewing GitHub report claims failed");
                    }
                }
            }
        }
    }

    fn lease_until(&self) -> Timestamp {
        let lease = i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX);
        Timestamp::from_millis(Timestamp::now().millis().saturating_add(lease))
    }

    /// Posts one item and records the result: done (with what it made), or a retry time after a
    /// failure, or given up.
    async fn post_and_record(&self, claim: ReportClaim) {
        let owner = &self.config.owner;
        let recorded = match self.post(&claim).await {
            Posted::Done(reported) => {
                match self.store.report_done(&claim, owner, &reported).await {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        tracing::warn!(build.uuid = %claim.build, kind = claim.kind.as_str(), seq = claim.seq,
                            "a GitHub report outlived its claim: another node may post it again");
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Posted::Failed(e) => {
                let retry_on = retry_time(&claim, &e, Timestamp::now());
                match retry_on {
                    Some(at) => {
                        tracing::warn!(build.uuid = %claim.build, kind = claim.kind.as_str(),
                        attempts = claim.attempts, retry_in_ms = at.millis() - Timestamp::now().millis(),
                        error = format!("{e:#}"), "reporting to GitHub failed")
                    }
                    None => tracing::error!(build.uuid = %claim.build, kind = claim.kind.as_str(),
                        attempts = claim.attempts, error = format!("{e:#}"),
                        "reporting to GitHub failed: given up"),
                }
                self.store.report_failed(&claim, owner, retry_on).await
            }
        };
        if let Err(e) = recorded {
            // The claim lapses and the item is posted again (a creation is then found, not repeated).
            tracing::error!(error = format!("{e:#}"), "recording a GitHub report failed");
        }
    }

    /// Makes the item's call(s).
    async fn post(&self, claim: &ReportClaim) -> Posted {
        let result = match claim.kind {
            ReportKind::CheckRun => match self.store.check_run_report(claim).await {
                Ok(Some(report)) => self
                    .post_check_run(&report, claim.attempts)
                    .await
                    .map(Reported::CheckRun),
                Ok(None) => Ok(Reported::Nothing),
                Err(e) => Err(e),
            },
            ReportKind::Comment => match self.store.comment_report(claim).await {
                Ok(Some(report)) => {
                    let target = report.target.clone();
                    self.post_comment(&report, claim.attempts)
                        .await
                        .map(|id| Reported::Comment { id, target })
                }
                Ok(None) => Ok(Reported::Nothing),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(reported) => Posted::Done(reported),
            Err(e) => Posted::Failed(e),
        }
    }

    /// Creates or updates the build's check run with the event's state; returns its id. A creation
    /// that may have been made before (a retry, or not the build's first change) first looks for it.
    async fn post_check_run(&self, r: &CheckRunReport, attempts: i64) -> anyhow::Result<i64> {
        let t = &r.target;
        let state = check_run_state(r.status, r.outcome, r.at);
        if let Some(id) = r.check_run_id {
            self.app
                .update_check_run(t.installation, &t.owner, &t.repo, id, state)
                .await?;
            tracing::info!(build.uuid = %r.build, status = r.status.as_str(), "reported to GitHub");
            return Ok(id);
        }
        let sha = t
            .sha
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("the build has no commit to report on"))?;
        let name = format!("Workers Builds: {}", t.worker);
        let external_id = r.build.to_string();
        if attempts > 1 || r.status != BuildStatus::Queued {
            let found = self
                .app
                .find_check_run(t.installation, &t.owner, &t.repo, sha, &name, &external_id)
                .await?;
            if let Some(found) = found {
                let same = state["status"] == found.status.as_str()
                    && state.get("conclusion").and_then(Value::as_str)
                        == found.conclusion.as_deref();
                if !same {
                    self.app
                        .update_check_run(t.installation, &t.owner, &t.repo, found.id, state)
                        .await?;
                }
                tracing::info!(build.uuid = %r.build, status = r.status.as_str(), "reported to GitHub (check run found)");
                return Ok(found.id);
            }
        }
        let mut body = state;
        body["name"] = json!(name);
        body["head_sha"] = json!(sha);
        body["external_id"] = json!(external_id);
        body["details_url"] = json!(build_link(&self.config.public_url, &t.account, r.build));
        let id = self
            .app
            .create_check_run(t.installation, &t.owner, &t.repo, body)
            .await?;
        tracing::info!(build.uuid = %r.build, status = r.status.as_str(), "reported to GitHub");
        Ok(id)
    }

    /// Creates or updates the pull request's comment; returns its id. A retried creation first looks
    /// for the comment (by [`COMMENT_MARKER`]).
    async fn post_comment(&self, r: &CommentReport, attempts: i64) -> anyhow::Result<i64> {
        let t = &r.target;
        let number = pr_number(&r.pr_url)?;
        let body = render_comment(&r.builds, &self.config.public_url);
        if let Some(id) = r.comment_id {
            self.app
                .update_comment(t.installation, &t.owner, &t.repo, id, &body)
                .await?;
            return Ok(id);
        }
        if attempts > 1 {
            let found = self
                .app
                .find_comment(t.installation, &t.owner, &t.repo, number, COMMENT_MARKER)
                .await?;
            if let Some(found) = found {
                if found.body != body {
                    self.app
                        .update_comment(t.installation, &t.owner, &t.repo, found.id, &body)
                        .await?;
                }
                return Ok(found.id);
            }
        }
        self.app
            .create_comment(t.installation, &t.owner, &t.repo, number, &body)
            .await
    }

    /// How long to wait for a wake-up before looking again: until the next retry or lease end, at
    /// most the poll interval, at least [`MIN_WAIT`].
    async fn next_wait(&self) -> Duration {
        let due = match self.store.next_report_due().await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "reading when GitHub reports are due failed"
                );
                None
            }
        };
        let until_due = due.map(|at| {
            Duration::from_millis(
                u64::try_from(at.millis() - Timestamp::now().millis()).unwrap_or(0),
            )
        });
        until_due
            .map_or(self.config.poll, |d| d.min(self.config.poll))
            .max(MIN_WAIT)
    }
}

/// When a failed item is tried again (`None`: given up): after [`BASE_BACKOFF`] doubled per earlier
/// attempt, at most [`MAX_BACKOFF`]; given up once [`GIVE_UP_AFTER`] has passed since the item was
/// made, or at once when GitHub refused the call for good (400, 404, 410 and 422: the request itself
/// is wrong, or the repository, check run or pull request is gone).
fn retry_time(claim: &ReportClaim, error: &anyhow::Error, now: Timestamp) -> Option<Timestamp> {
    use reqwest::StatusCode;
    let permanent = ApiError::status_of(error).is_some_and(|s| {
        [
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
            StatusCode::GONE,
            StatusCode::UNPROCESSABLE_ENTITY,
        ]
        .contains(&s)
    });
    let give_up_at = claim
        .created_on
        .millis()
        .saturating_add(millis(GIVE_UP_AFTER));
    if permanent || now.millis() >= give_up_at {
        return None;
    }
    let doublings = u32::try_from(claim.attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let backoff = millis(BASE_BACKOFF)
        .saturating_mul(1 << doublings)
        .min(millis(MAX_BACKOFF));
    Some(Timestamp::from_millis(now.millis().saturating_add(backoff)))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The number of a pull request from its URL (`…/pull/<n>`).
fn pr_number(url: &str) -> anyhow::Result<i64> {
    url.rsplit('/')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no pull request number in {url}"))
}

/// The API URL of a build under `public_url`.
fn build_link(
    public_url: &str,
    account: &crate::domain::AccountId,
    build: crate::domain::BuildId,
) -> String {
    format!(
        "{}/client/v4/accounts/{account}/builds/builds/{build}",
        public_url.trim_end_matches('/')
    )
}

/// The comment: [`COMMENT_MARKER`], then a row per Worker with its newest build's status, commit and
/// link.
pub fn render_comment(builds: &[PrBuild], public_url: &str) -> String {
    let mut body = format!(
        "{COMMENT_MARKER}\n## Deploying with Workers Builds\n\n| Worker | Status | Commit | Build |\n|---|---|---|---|\n"
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
        body.push_str(&format!(
            "| {} | {status} | `{commit}` | [View build]({}) |\n",
            b.worker,
            build_link(public_url, &b.account, b.build)
        ));
    }
    body
}

/// The check run's `status` (and `conclusion` and `completed_at` once stopped, at `at`) for a
/// build's status and outcome.
fn check_run_state(status: BuildStatus, outcome: Option<BuildOutcome>, at: Timestamp) -> Value {
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
            json!({"status": "completed", "conclusion": conclusion, "completed_at": at.to_rfc3339()})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::BuildId;

    fn claim(attempts: i64, created_on: Timestamp) -> ReportClaim {
        ReportClaim {
            kind: ReportKind::CheckRun,
            seq: 1,
            build: BuildId::new(),
            attempts,
            created_on,
        }
    }

    fn api_error(status: u16) -> anyhow::Error {
        anyhow::Error::new(ApiError {
            method: reqwest::Method::PATCH,
            url: "https://api.github.com/x".to_owned(),
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            text: String::new(),
        })
        .context("reporting")
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap_then_give_up() {
        let now = Timestamp::from_millis(1_000_000_000);
        let wait = |attempts| {
            retry_time(&claim(attempts, now), &anyhow::anyhow!("timeout"), now)
                .map(|at| at.millis() - now.millis())
        };
        assert_eq!(wait(1), Some(500));
        assert_eq!(wait(2), Some(1_000));
        assert_eq!(wait(3), Some(2_000));
        assert_eq!(wait(10), Some(256_000));
        assert_eq!(wait(11), Some(millis(MAX_BACKOFF)));
        assert_eq!(wait(1_000), Some(millis(MAX_BACKOFF)));
        // A day after the change, the update is given up.
        let old = Timestamp::from_millis(now.millis() - millis(GIVE_UP_AFTER));
        assert_eq!(
            retry_time(&claim(3, old), &anyhow::anyhow!("timeout"), now),
            None
        );
        let recent = Timestamp::from_millis(old.millis() + 1);
        assert!(retry_time(&claim(3, recent), &anyhow::anyhow!("timeout"), now).is_some());
    }

    #[test]
    fn refusals_for_good_are_given_up_at_once_and_the_others_retried() {
        let now = Timestamp::now();
        for status in [400, 404, 410, 422] {
            assert_eq!(
                retry_time(&claim(1, now), &api_error(status), now),
                None,
                "{status}"
            );
        }
        for status in [401, 403, 408, 409, 429, 500, 502, 503] {
            assert!(
                retry_time(&claim(1, now), &api_error(status), now).is_some(),
                "{status}"
            );
        }
    }

    #[test]
    fn check_run_states_follow_the_build() {
        let at = Timestamp::from_millis(1_764_000_000_000);
        assert_eq!(
            check_run_state(BuildStatus::Queued, None, at),
            json!({"status": "queued"})
        );
        assert_eq!(
            check_run_state(BuildStatus::Running, None, at),
            json!({"status": "in_progress"})
        );
        let done = check_run_state(BuildStatus::Stopped, Some(BuildOutcome::Terminated), at);
        assert_eq!(done["conclusion"], "timed_out");
        assert_eq!(done["completed_at"], at.to_rfc3339());
    }

    #[test]
    fn comments_carry_the_marker_and_a_row_per_worker() {
        let build = BuildId::new();
        let body = render_comment(
            &[PrBuild {
                build,
                account: crate::domain::AccountId::from_stored("a".repeat(32)),
                worker: "site".to_owned(),
                status: BuildStatus::Stopped,
                outcome: Some(BuildOutcome::Success),
                commit: Some("0123456789abcdef".to_owned()),
            }],
            "https://kiln.example/",
        );
        assert!(body.starts_with(COMMENT_MARKER), "{body}");
        assert!(
            body.contains(&format!(
                "| site | ✅ Success | `0123456` | [View build](https://kiln.example/client/v4/accounts/{}/builds/builds/{build}) |",
                "a".repeat(32)
            )),
            "{body}"
        );
    }
}
