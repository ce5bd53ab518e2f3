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
}

impl Store {
    /// Builds of GitHub repositories (with a known installation and commit) whose last reported status
    /// differs from their status and whose retry time has come, oldest first.
    pub async fn builds_to_report(
        &self,
        now: Timestamp,
        limit: i64,
    ) -> anyhow::Result<Vec<ReportItem>> {
        let rows = sqlx::query(
            "SELECT b.uuid AS uuid, b.account_id AS account_id, b.external_script_id AS worker, b.status AS status, \
             b.outcome AS outcome, b.commit_hash AS sha, c.provider_account_name AS owner, c.repo_name AS repo, \
             i.installation_id AS installation, r.check_run_id AS check_run_id, COALESCE(r.attempts, 0) AS attempts \
             FROM builds b JOIN triggers t ON t.uuid = b.trigger_uuid \
             JOIN repo_connections c ON c.uuid = t.repo_connection_uuid \
             JOIN github_installations i ON i.repo_id = c.repo_id \
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
                })
            })
            .collect()
    }

    /// Records a successful report.
    pub async fn report_done(
        &self,
        build: BuildId,
        check_run_id: i64,
        status: BuildStatus,
    ) -> anyhow::Result<()> {
        let mut w = self.begin_write().await?;
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
}
