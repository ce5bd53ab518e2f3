//! What Kiln reported to GitHub about each build: the check run and the last status sent.

use anyhow::Context;
use sqlx::Row;

use super::Store;
use super::rows::{opt_text, text};
use crate::domain::{AccountId, BuildId, BuildOutcome, BuildStatus, Timestamp};

/// A build whose check run is behind its status.
#[derive(Debug, Clone)]
pub struct ReportItem {
    pub build: BuildId,
    pub account: AccountId,
    pub worker: String,
    pub owner: String,
    pub repo: String,
    pub installation: i64,
    pub sha: String,
    pub status: BuildStatus,
    pub outcome: Option<BuildOutcome>,
    pub check_run_id: Option<i64>,
    pub attempts: i64,
    /// The pull request the build belongs to.
    pub pr_url: Option<String>,
}

/// A pull request whose comment is behind its builds.
#[derive(Debug, Clone)]
pub struct CommentItem {
    pub pr_url: String,
    pub owner: String,
    pub repo: String,
    pub installation: i64,
    pub comment_id: Option<i64>,
    /// Changes not yet in the comment (a counter: updates made meanwhile are not lost).
    pub generation: i64,
    pub attempts: i64,
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

impl Store {
    /// Builds of GitHub repositories (with a known installation and commit) whose last reported status
    /// differs from their status and whose retry time has come, oldest first. Only builds of accounts
    /// that own the repository's installation: another account's connection to the repository never
    /// reports on it (and an account unlinked since stops being reported).
    pub async fn builds_to_report(
        &self,
        now: Timestamp,
        limit: i64,
    ) -> anyhow::Result<Vec<ReportItem>> {
        let rows = sqlx::query(
            "SELECT b.uuid AS uuid, b.account_id AS account_id, b.external_script_id AS worker, b.status AS status, \
             b.outcome AS outcome, b.commit_hash AS sha, c.provider_account_name AS owner, c.repo_name AS repo, \
             i.installation_id AS installation, r.check_run_id AS check_run_id, COALESCE(r.attempts, 0) AS attempts, \
             b.pr_url AS pr_url \
             FROM builds b JOIN triggers t ON t.uuid = b.trigger_uuid \
             JOIN repo_connections c ON c.uuid = t.repo_connection_uuid \
             JOIN github_installations i ON i.repo_id = c.repo_id \
             JOIN github_installation_accounts l ON l.installation_id = i.installation_id AND l.account_id = b.account_id \
             LEFT JOIN github_reports r ON r.build_uuid = b.uuid \
             WHERE c.provider_type = 'github' AND b.commit_hash IS NOT NULL \
             AND (r.build_uuid IS NULL OR r.reported_status IS NULL OR r.reported_status <> b.status) \
             AND (r.next_attempt_on IS NULL OR r.next_attempt_on <= $1) \
             ORDER BY b.id LIMIT $2",
        )
        .bind(now.millis())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("finding builds to report")?;
        rows.iter()
            .map(|r| {
                Ok(ReportItem {
                    build: BuildId::from_stored(&text(r, "uuid")?)?,
                    account: AccountId::from_stored(text(r, "account_id")?),
                    worker: text(r, "worker")?,
                    owner: text(r, "owner")?,
                    repo: text(r, "repo")?,
                    installation: r.try_get("installation")?,
                    sha: text(r, "sha")?,
                    status: BuildStatus::from_stored(&text(r, "status")?)?,
                    outcome: opt_text(r, "outcome")?
                        .map(|o| BuildOutcome::from_stored(&o))
                        .transpose()?,
                    check_run_id: r.try_get("check_run_id")?,
                    attempts: r.try_get("attempts")?,
                    pr_url: opt_text(r, "pr_url")?,
                })
            })
            .collect()
    }

    /// Records a successful report; the build's pull request comment then needs an update.
    pub async fn report_done(&self, item: &ReportItem, check_run_id: i64) -> anyhow::Result<()> {
        let (build, status) = (item.build, item.status);
        let mut w = self.begin_write().await?;
        if let Some(pr_url) = &item.pr_url {
            sqlx::query(
                "INSERT INTO github_pr_comments (pr_url, owner, repo, installation_id, dirty, attempts) \
                 VALUES ($1, $2, $3, $4, 1, 0) ON CONFLICT (pr_url) DO UPDATE SET dirty = github_pr_comments.dirty + 1, \
                 installation_id = excluded.installation_id",
            )
            .bind(pr_url)
            .bind(&item.owner)
            .bind(&item.repo)
            .bind(item.installation)
            .execute(&mut *w.tx)
            .await
            .context("marking a pull request comment for update")?;
        }
        sqlx::query(
            "INSERT INTO github_reports (build_uuid, check_run_id, reported_status, attempts, next_attempt_on) \
             VALUES ($1, $2, $3, 0, NULL) ON CONFLICT (build_uuid) DO UPDATE SET check_run_id = excluded.check_run_id, \
             reported_status = excluded.reported_status, attempts = 0, next_attempt_on = NULL",
        )
        .bind(build.to_string())
        .bind(check_run_id)
        .bind(status.as_str())
        .execute(&mut *w.tx)
        .await
        .context("recording a report")?;
        w.commit().await
    }

    /// Records a failed report and when to try again.
    pub async fn report_failed(
        &self,
        build: BuildId,
        attempts: i64,
        retry_on: Timestamp,
    ) -> anyhow::Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO github_reports (build_uuid, attempts, next_attempt_on) VALUES ($1, $2, $3) \
             ON CONFLICT (build_uuid) DO UPDATE SET attempts = excluded.attempts, next_attempt_on = excluded.next_attempt_on",
        )
        .bind(build.to_string())
        .bind(attempts)
        .bind(retry_on.millis())
        .execute(&mut *w.tx)
        .await
        .context("recording a failed report")?;
        w.commit().await
    }

    /// Pull requests whose comment needs an update and whose retry time has come.
    pub async fn comments_to_update(
        &self,
        now: Timestamp,
        limit: i64,
    ) -> anyhow::Result<Vec<CommentItem>> {
        let rows = sqlx::query(
            "SELECT pr_url, owner, repo, installation_id, comment_id, dirty, attempts FROM github_pr_comments \
             WHERE dirty > 0 AND (next_attempt_on IS NULL OR next_attempt_on <= $1) ORDER BY pr_url LIMIT $2",
        )
        .bind(now.millis())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("finding pull request comments to update")?;
        rows.iter()
            .map(|r| {
                Ok(CommentItem {
                    pr_url: text(r, "pr_url")?,
                    owner: text(r, "owner")?,
                    repo: text(r, "repo")?,
                    installation: r.try_get("installation_id")?,
                    comment_id: r.try_get("comment_id")?,
                    generation: r.try_get("dirty")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// The newest build of each Worker for a pull request, in the order the Workers were first built:
    /// builds of the accounts that own `installation` (the one the comment is written with) only.
    pub async fn pr_builds(&self, pr_url: &str, installation: i64) -> anyhow::Result<Vec<PrBuild>> {
        let rows = sqlx::query(
            "SELECT b.uuid AS uuid, b.account_id AS account_id, b.external_script_id AS external_script_id, \
             b.status AS status, b.outcome AS outcome, b.commit_hash AS commit_hash FROM builds b \
             JOIN github_installation_accounts l ON l.account_id = b.account_id AND l.installation_id = $2 \
             WHERE b.pr_url = $1 ORDER BY b.id",
        )
        .bind(pr_url)
        .bind(installation)
        .fetch_all(&self.pool)
        .await
        .context("reading a pull request's builds")?;
        let mut out: Vec<PrBuild> = Vec::new();
        for r in &rows {
            let b = PrBuild {
                build: BuildId::from_stored(&text(r, "uuid")?)?,
                account: AccountId::from_stored(text(r, "account_id")?),
                worker: text(r, "external_script_id")?,
                status: BuildStatus::from_stored(&text(r, "status")?)?,
                outcome: opt_text(r, "outcome")?
                    .map(|o| BuildOutcome::from_stored(&o))
                    .transpose()?,
                commit: opt_text(r, "commit_hash")?,
            };
            match out.iter_mut().find(|x| x.worker == b.worker) {
                Some(slot) => *slot = b,
                None => out.push(b),
            }
        }
        Ok(out)
    }

    /// Records the comment as up to date with the `generation` of changes it was made from.
    pub async fn comment_done(
        &self,
        pr_url: &str,
        comment_id: i64,
        generation: i64,
    ) -> anyhow::Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "UPDATE github_pr_comments SET comment_id = $1, dirty = dirty - $2, attempts = 0, next_attempt_on = NULL \
             WHERE pr_url = $3",
        )
        .bind(comment_id)
        .bind(generation)
        .bind(pr_url)
        .execute(&mut *w.tx)
        .await
        .context("recording a pull request comment")?;
        w.commit().await
    }

    /// Records a failed comment update and when to try again.
    pub async fn comment_failed(
        &self,
        pr_url: &str,
        attempts: i64,
        retry_on: Timestamp,
    ) -> anyhow::Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "UPDATE github_pr_comments SET attempts = $1, next_attempt_on = $2 WHERE pr_url = $3",
        )
        .bind(attempts)
        .bind(retry_on.millis())
        .bind(pr_url)
        .execute(&mut *w.tx)
        .await
        .context("recording a failed comment update")?;
        w.commit().await
    }
}
