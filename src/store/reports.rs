//! The GitHub reporter's work, derived from the build events outbox (`build_events`): report items
//! (one check run or pull request comment update per build event), the reporter's cursor, and the
//! check run and comment ids each update edits.
//!
//! * [`Store::ingest_report_events`] turns the events after the cursor into items and moves the
//!   cursor in one transaction (the cursor row locked on PostgreSQL: nodes take turns), so each event
//!   becomes its items exactly once whichever node reads it.
//! * [`Store::claim_reports`] leases items to one node (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the
//!   write transaction on SQLite): only the oldest item of each subject (the build for a check run,
//!   the pull request for a comment), so that updates reach GitHub in event order; a lease that lapses
//!   (its node died) makes the item claimable again.
//! * [`Store::report_done`] records the check run or comment id and deletes the item;
//!   [`Store::report_failed`] schedules a retry or gives the item up. Both act only while the caller
//!   still holds the claim.
//!
//! Tenancy: items are made only for builds of GitHub repositories whose account is linked to the
//! installation covering the repository (`github_installation_accounts`, see
//! [`crate::github::access`]), and checked again when posted: an account unlinked meanwhile is no
//! longer reported.

use std::collections::HashSet;

use anyhow::Context;
use sqlx::Row;

use super::rows::{opt_text, text, ts};
use super::{Backend, Store};
use crate::domain::{AccountId, BuildId, BuildOutcome, BuildStatus, ProviderType, Timestamp};

/// What a report item updates on GitHub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReportKind {
    /// The build's check run (`Workers Builds: <worker>`), created by the build's first item.
    CheckRun,
    /// The comment of the build's pull request (one per pull request, edited in place).
    Comment,
}

impl ReportKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::CheckRun => "check_run",
            ReportKind::Comment => "comment",
        }
    }

    fn from_stored(s: &str) -> anyhow::Result<ReportKind> {
        match s {
            "check_run" => Ok(ReportKind::CheckRun),
            "comment" => Ok(ReportKind::Comment),
            _ => anyhow::bail!("unknown report kind {s:?} in store"),
        }
    }
}

/// One claimed report item: the update that build event `seq` makes to a check run or comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportClaim {
    pub kind: ReportKind,
    /// The build event reported (`build_events.seq`).
    pub seq: i64,
    pub build: BuildId,
    /// Claims of this item so far, this one included: more than 1 when an earlier attempt failed or
    /// its node died, so that GitHub may already have what that attempt sent.
    pub attempts: i64,
    /// When the item was made (its retries end a bounded time after).
    pub created_on: Timestamp,
}

impl ReportClaim {
    /// The item's key: unique among items.
    pub fn key(&self) -> (ReportKind, i64) {
        (self.kind, self.seq)
    }
}

/// Where a build is reported: its GitHub repository, installation and commit.
#[derive(Debug, Clone)]
pub struct ReportTarget {
    pub account: AccountId,
    pub worker: String,
    /// The repository's owner and name on GitHub.
    pub owner: String,
    pub repo: String,
    /// The App installation that covers the repository, linked to the build's account.
    pub installation: i64,
    /// The commit built; `None` until the build has resolved it.
    pub sha: Option<String>,
    pub pr_url: Option<String>,
}

/// A check run update: the state a build event gave the build, and where it goes.
#[derive(Debug, Clone)]
pub struct CheckRunReport {
    pub build: BuildId,
    pub target: ReportTarget,
    pub status: BuildStatus,
    pub outcome: Option<BuildOutcome>,
    /// When the build changed (the event's time).
    pub at: Timestamp,
    /// The build's check run, once created.
    pub check_run_id: Option<i64>,
}

/// A pull request comment update: the pull request's builds as a build event left them.
#[derive(Debug, Clone)]
pub struct CommentReport {
    pub pr_url: String,
    pub target: ReportTarget,
    /// The comment, once created.
    pub comment_id: Option<i64>,
    /// The newest build of each Worker as of the event, in the order the Workers were first built.
    pub builds: Vec<PrBuild>,
}

/// The newest build of one Worker for a pull request's comment.
#[derive(Debug, Clone)]
pub struct PrBuild {
    pub build: BuildId,
    pub account: AccountId,
    pub worker: String,
    pub status: BuildStatus,
    pub outcome: Option<BuildOutcome>,
    pub commit: Option<String>,
}

/// What a posted item leaves to remember.
#[derive(Debug, Clone)]
pub enum Reported {
    /// Nothing (the build is no longer reported, or has no commit to report on).
    Nothing,
    /// The id of the item's build's check run.
    CheckRun(i64),
    /// The id of the comment of the pull request `target` names.
    Comment { id: i64, target: ReportTarget },
}

/// Joins a build `b` to the GitHub repository its trigger's connection names (`c`) and to the
/// installation covering it (`i`) when the build's account is linked to that installation (`l`).
const LINKED_BUILD_JOINS: &str = "JOIN triggers t ON t.uuid = b.trigger_uuid \
    JOIN repo_connections c ON c.uuid = t.repo_connection_uuid \
    JOIN github_installations i ON i.repo_id = c.repo_id \
    JOIN github_installation_accounts l ON l.installation_id = i.installation_id AND l.account_id = b.account_id";

impl Store {
    /// Turns up to `limit` build events after the reporter's cursor into report items and moves the
    /// cursor past them, in one transaction: a check run item for every event of a reported build
    /// (see the module's tenancy rule) and a comment item for every event of such a build that belongs
    /// to a pull request. Returns how many events were read (0: caught up).
    pub async fn ingest_report_events(&self, limit: i64) -> anyhow::Result<usize> {
        // A read first: most wake-ups find nothing new, and need no write transaction.
        let behind = sqlx::query(
            "SELECT CAST(COALESCE(MAX(e.seq), 0) AS BIGINT) AS last, \
             (SELECT seq FROM github_report_cursor WHERE id = 1) AS cursor FROM build_events e",
        )
        .fetch_one(&self.pool)
        .await
        .context("reading the GitHub report cursor")?;
        if behind.try_get::<i64, _>("last")? <= behind.try_get::<i64, _>("cursor")? {
            return Ok(0);
        }
        let mut w = self.begin_write().await?;
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let cursor: i64 = sqlx::query(&format!(
            "SELECT seq FROM github_report_cursor WHERE id = 1{lock}"
        ))
        .fetch_one(&mut *w.tx)
        .await
        .context("reading the GitHub report cursor")?
        .try_get("seq")?;
        let rows = sqlx::query("SELECT seq FROM build_events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(cursor)
            .bind(limit.max(1))
            .fetch_all(&mut *w.tx)
            .await
            .context("reading build events")?;
        let Some(last) = rows.last() else {
            return Ok(0);
        };
        let upto: i64 = last.try_get("seq")?;
        let now = Timestamp::now().millis();
        for (kind, subject, only_prs) in [
            (ReportKind::CheckRun, "b.uuid", ""),
            (ReportKind::Comment, "b.pr_url", " AND b.pr_url IS NOT NULL"),
        ] {
            sqlx::query(&format!(
                "INSERT INTO github_report_items (kind, seq, subject, build_uuid, attempts, created_on) \
                 SELECT $1, e.seq, {subject}, b.uuid, 0, $2 FROM build_events e \
                 JOIN builds b ON b.uuid = e.build_uuid {LINKED_BUILD_JOINS} \
                 WHERE e.seq > $3 AND e.seq <= $4 AND c.provider_type = $5{only_prs} \
                 ON CONFLICT (kind, seq) DO NOTHING"
            ))
            .bind(kind.as_str())
            .bind(now)
            .bind(cursor)
            .bind(upto)
            .bind(ProviderType::Github.as_str())
            .execute(&mut *w.tx)
            .await
            .context("queueing GitHub reports")?;
        }
        sqlx::query("UPDATE github_report_cursor SET seq = $1 WHERE id = 1")
            .bind(upto)
            .execute(&mut *w.tx)
            .await
            .context("moving the GitHub report cursor")?;
        w.commit().await?;
        Ok(rows.len())
    }

    /// Leases up to `limit` items to `owner` until `lease_until`: items whose retry time is `due` or
    /// earlier, not leased to anyone (or whose lease lapsed), the oldest of their subject, and (for a
    /// check run) whose build has a commit or stopped without one; but those in `skip`. Oldest first.
    pub async fn claim_reports(
        &self,
        owner: &str,
        lease_until: Timestamp,
        due: Timestamp,
        limit: usize,
        skip: &HashSet<(ReportKind, i64)>,
    ) -> anyhow::Result<Vec<ReportClaim>> {
        // A read first: most of the time there is nothing to claim, and no write transaction needed.
        if sqlx::query("SELECT seq FROM github_report_items LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .context("looking for GitHub reports")?
            .is_none()
        {
            return Ok(Vec::new());
        }
        let mut w = self.begin_write().await?;
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE OF q SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let now = Timestamp::now();
        let fetch = i64::try_from(limit.saturating_add(skip.len())).unwrap_or(i64::MAX);
        let rows = sqlx::query(&format!(
            "SELECT q.kind AS kind, q.seq AS seq, q.build_uuid AS build_uuid, q.attempts AS attempts, \
             q.created_on AS created_on FROM github_report_items q JOIN builds b ON b.uuid = q.build_uuid \
             WHERE (q.next_attempt_on IS NULL OR q.next_attempt_on <= $1) \
             AND (q.lease_expires IS NULL OR q.lease_expires <= $2) \
             AND NOT EXISTS (SELECT 1 FROM github_report_items p \
                 WHERE p.kind = q.kind AND p.subject = q.subject AND p.seq < q.seq) \
             AND (q.kind <> $3 OR b.commit_hash IS NOT NULL OR b.status = $4) \
             ORDER BY q.seq LIMIT $5{lock}"
        ))
        .bind(due.millis())
        .bind(now.millis())
        .bind(ReportKind::CheckRun.as_str())
        .bind(BuildStatus::Stopped.as_str())
        .bind(fetch)
        .fetch_all(&mut *w.tx)
        .await
        .context("finding GitHub reports to make")?;
        let mut claims = Vec::new();
        for r in &rows {
            let claim = ReportClaim {
                kind: ReportKind::from_stored(&text(r, "kind")?)?,
                seq: r.try_get("seq")?,
                build: BuildId::from_stored(&text(r, "build_uuid")?)?,
                attempts: r.try_get::<i64, _>("attempts")? + 1,
                created_on: ts(r, "created_on")?,
            };
            if skip.contains(&claim.key()) {
                continue;
            }
            sqlx::query(
                "UPDATE github_report_items SET lease_owner = $1, lease_expires = $2, attempts = $3 \
                 WHERE kind = $4 AND seq = $5",
            )
            .bind(owner)
            .bind(lease_until.millis())
            .bind(claim.attempts)
            .bind(claim.kind.as_str())
            .bind(claim.seq)
            .execute(&mut *w.tx)
            .await
            .context("claiming a GitHub report")?;
            claims.push(claim);
            if claims.len() == limit {
                break;
            }
        }
        w.commit().await?;
        Ok(claims)
    }

    /// Extends every lease `owner` holds to `until` (its posts are still under way).
    pub async fn renew_report_leases(&self, owner: &str, until: Timestamp) -> anyhow::Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query("UPDATE github_report_items SET lease_expires = $1 WHERE lease_owner = $2")
            .bind(until.millis())
            .bind(owner)
            .execute(&mut *w.tx)
            .await
            .context("renewing GitHub report leases")?;
        w.commit().await
    }

    /// Releases every claim `owner` holds (its posts were abandoned): the items are claimable at
    /// once, their attempts counted.
    pub async fn release_report_claims(&self, owner: &str) -> anyhow::Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "UPDATE github_report_items SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner = $1",
        )
        .bind(owner)
        .execute(&mut *w.tx)
        .await
        .context("releasing GitHub report claims")?;
        w.commit().await
    }

    /// When an item may next become claimable without a new event: the earliest retry time or lease
    /// end among the items (`None`: no item waits for either).
    pub async fn next_report_due(&self) -> anyhow::Result<Option<Timestamp>> {
        let row = sqlx::query(
            "SELECT MIN(CASE WHEN lease_expires IS NOT NULL AND (next_attempt_on IS NULL OR lease_expires > next_attempt_on) \
             THEN lease_expires ELSE next_attempt_on END) AS due FROM github_report_items \
             WHERE lease_expires IS NOT NULL OR next_attempt_on IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await
        .context("reading when GitHub reports are due")?;
        Ok(row
            .try_get::<Option<i64>, _>("due")?
            .map(Timestamp::from_millis))
    }

    /// Where `build` is reported, if it still is: a build of a GitHub repository whose account is
    /// linked to the installation covering it.
    async fn report_target(&self, build: BuildId) -> anyhow::Result<Option<ReportTarget>> {
        let row = sqlx::query(&format!(
            "SELECT b.account_id AS account_id, b.external_script_id AS worker, b.commit_hash AS sha, \
             b.pr_url AS pr_url, c.provider_account_name AS owner, c.repo_name AS repo, \
             i.installation_id AS installation FROM builds b {LINKED_BUILD_JOINS} \
             WHERE b.uuid = $1 AND c.provider_type = $2"
        ))
        .bind(build.to_string())
        .bind(ProviderType::Github.as_str())
        .fetch_optional(&self.pool)
        .await
        .context("reading where a build is reported")?;
        row.map(|r| {
            Ok(ReportTarget {
                account: AccountId::from_stored(text(&r, "account_id")?),
                worker: text(&r, "worker")?,
                owner: text(&r, "owner")?,
                repo: text(&r, "repo")?,
                installation: r.try_get("installation")?,
                sha: opt_text(&r, "sha")?,
                pr_url: opt_text(&r, "pr_url")?,
            })
        })
        .transpose()
    }

    /// The check run update of a claimed [`ReportKind::CheckRun`] item; `None` when there is nothing
    /// to report (the build is no longer reported, or stopped without a commit).
    pub async fn check_run_report(
        &self,
        claim: &ReportClaim,
    ) -> anyhow::Result<Option<CheckRunReport>> {
        let Some(target) = self.report_target(claim.build).await? else {
            return Ok(None);
        };
        if target.sha.is_none() {
            return Ok(None);
        }
        let event =
            sqlx::query("SELECT status, outcome, created_on FROM build_events WHERE seq = $1")
                .bind(claim.seq)
                .fetch_one(&self.pool)
                .await
                .context("reading a build event")?;
        let check_run_id =
            sqlx::query("SELECT check_run_id FROM github_reports WHERE build_uuid = $1")
                .bind(claim.build.to_string())
                .fetch_optional(&self.pool)
                .await
                .context("reading a build's check run")?
                .map(|r| r.try_get::<Option<i64>, _>("check_run_id"))
                .transpose()?
                .flatten();
        Ok(Some(CheckRunReport {
            build: claim.build,
            target,
            status: BuildStatus::from_stored(&text(&event, "status")?)?,
            outcome: opt_text(&event, "outcome")?
                .map(|o| BuildOutcome::from_stored(&o))
                .transpose()?,
            at: ts(&event, "created_on")?,
            check_run_id,
        }))
    }

    /// The comment update of a claimed [`ReportKind::Comment`] item; `None` when there is nothing to
    /// report (the build is no longer reported).
    pub async fn comment_report(
        &self,
        claim: &ReportClaim,
    ) -> anyhow::Result<Option<CommentReport>> {
        let Some(target) = self.report_target(claim.build).await? else {
            return Ok(None);
        };
        let Some(pr_url) = target.pr_url.clone() else {
            return Ok(None);
        };
        let comment_id = sqlx::query("SELECT comment_id FROM github_pr_comments WHERE pr_url = $1")
            .bind(&pr_url)
            .fetch_optional(&self.pool)
            .await
            .context("reading a pull request's comment")?
            .map(|r| r.try_get::<Option<i64>, _>("comment_id"))
            .transpose()?
            .flatten();
        let builds = self
            .pr_builds_at(&pr_url, target.installation, claim.seq)
            .await?;
        Ok(Some(CommentReport {
            pr_url,
            target,
            comment_id,
            builds,
        }))
    }

    /// The newest build of each Worker for a pull request as build event `seq` left them, in the order
    /// the Workers were first built: builds of the accounts that own `installation` (the one the
    /// comment is written with) only. A build's status is its last event's up to `seq`; builds queued
    /// after `seq` are left out; builds older than the outbox show their current status.
    async fn pr_builds_at(
        &self,
        pr_url: &str,
        installation: i64,
        seq: i64,
    ) -> anyhow::Result<Vec<PrBuild>> {
        let rows = sqlx::query(
            "SELECT b.uuid AS uuid, b.account_id AS account_id, b.external_script_id AS external_script_id, \
             b.status AS status, b.outcome AS outcome, b.commit_hash AS commit_hash, \
             e.status AS event_status, e.outcome AS event_outcome, \
             (SELECT MIN(f.seq) FROM build_events f WHERE f.build_uuid = b.uuid) AS first_seq \
             FROM builds b \
             JOIN github_installation_accounts l ON l.account_id = b.account_id AND l.installation_id = $2 \
             LEFT JOIN build_events e ON e.seq = \
                 (SELECT MAX(x.seq) FROM build_events x WHERE x.build_uuid = b.uuid AND x.seq <= $3) \
             WHERE b.pr_url = $1 ORDER BY b.id",
        )
        .bind(pr_url)
        .bind(installation)
        .bind(seq)
        .fetch_all(&self.pool)
        .await
        .context("reading a pull request's builds")?;
        let mut out: Vec<PrBuild> = Vec::new();
        for r in &rows {
            let first: Option<i64> = r.try_get("first_seq")?;
            if first.is_some_and(|first| first > seq) {
                continue;
            }
            let (status, outcome) = match opt_text(r, "event_status")? {
                Some(status) => (status, opt_text(r, "event_outcome")?),
                None => (text(r, "status")?, opt_text(r, "outcome")?),
            };
            let b = PrBuild {
                build: BuildId::from_stored(&text(r, "uuid")?)?,
                account: AccountId::from_stored(text(r, "account_id")?),
                worker: text(r, "external_script_id")?,
                status: BuildStatus::from_stored(&status)?,
                outcome: outcome.map(|o| BuildOutcome::from_stored(&o)).transpose()?,
                commit: opt_text(r, "commit_hash")?,
            };
            match out.iter_mut().find(|x| x.worker == b.worker) {
                Some(slot) => *slot = b,
                None => out.push(b),
            }
        }
        Ok(out)
    }

    /// Records what a posted item made (a check run or comment id, kept for the next updates) and
    /// deletes the item, in one transaction. False when `owner` no longer held the claim (its lease
    /// lapsed and another node claimed the item): the ids are recorded all the same.
    pub async fn report_done(
        &self,
        claim: &ReportClaim,
        owner: &str,
        reported: &Reported,
    ) -> anyhow::Result<bool> {
        let mut w = self.begin_write().await?;
        match reported {
            Reported::CheckRun(id) => {
                sqlx::query(
                    "INSERT INTO github_reports (build_uuid, check_run_id) VALUES ($1, $2) \
                     ON CONFLICT (build_uuid) DO UPDATE SET check_run_id = excluded.check_run_id",
                )
                .bind(claim.build.to_string())
                .bind(id)
                .execute(&mut *w.tx)
                .await
                .context("recording a check run")?;
            }
            Reported::Comment { id, target } => {
                let pr_url = target
                    .pr_url
                    .as_deref()
                    .context("a comment for a build without a pull request")?;
                sqlx::query(
                    "INSERT INTO github_pr_comments (pr_url, owner, repo, installation_id, comment_id) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (pr_url) DO UPDATE SET \
                     comment_id = excluded.comment_id, installation_id = excluded.installation_id",
                )
                .bind(pr_url)
                .bind(&target.owner)
                .bind(&target.repo)
                .bind(target.installation)
                .bind(id)
                .execute(&mut *w.tx)
                .await
                .context("recording a pull request comment")?;
            }
            Reported::Nothing => {}
        }
        let deleted = sqlx::query(
            "DELETE FROM github_report_items WHERE kind = $1 AND seq = $2 AND lease_owner = $3 AND attempts = $4",
        )
        .bind(claim.kind.as_str())
        .bind(claim.seq)
        .bind(owner)
        .bind(claim.attempts)
        .execute(&mut *w.tx)
        .await
        .context("finishing a GitHub report")?;
        w.commit().await?;
        Ok(deleted.rows_affected() == 1)
    }

    /// Records a failed attempt: the item is claimable again at `retry_on`, or deleted (given up)
    /// when `retry_on` is `None`. Nothing changes when `owner` no longer holds the claim.
    pub async fn report_failed(
        &self,
        claim: &ReportClaim,
        owner: &str,
        retry_on: Option<Timestamp>,
    ) -> anyhow::Result<()> {
        let mut w = self.begin_write().await?;
        let query = match retry_on {
            Some(_) => {
                "UPDATE github_report_items SET next_attempt_on = $5, lease_owner = NULL, lease_expires = NULL \
                 WHERE kind = $1 AND seq = $2 AND lease_owner = $3 AND attempts = $4"
            }
            None => {
                "DELETE FROM github_report_items WHERE kind = $1 AND seq = $2 AND lease_owner = $3 AND attempts = $4"
            }
        };
        let mut q = sqlx::query(query)
            .bind(claim.kind.as_str())
            .bind(claim.seq)
            .bind(owner)
            .bind(claim.attempts);
        if let Some(at) = retry_on {
            q = q.bind(at.millis());
        }
        q.execute(&mut *w.tx)
            .await
            .context("recording a failed GitHub report")?;
        w.commit().await
    }
}
