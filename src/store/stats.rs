//! Figures about the builds the store holds, for the metrics ([`crate::metrics`]).

use anyhow::Context;
use sqlx::Row;

use super::Store;
use super::rows::{opt_text, text, ts};
use crate::domain::{BuildOutcome, BuildStatus, Timestamp};

/// The builds with one status and outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildCount {
    pub status: BuildStatus,
    /// `None` until stopped.
    pub outcome: Option<BuildOutcome>,
    /// How many builds.
    pub builds: i64,
    /// When the oldest of them was created (queued).
    pub oldest: Timestamp,
}

impl Store {
    /// Builds by status and outcome: one grouped pass over the builds table (no row is returned per
    /// build), in one statement.
    pub async fn count_builds(&self) -> anyhow::Result<Vec<BuildCount>> {
        let rows = sqlx::query(
            "SELECT status, outcome, COUNT(*) AS n, MIN(created_on) AS oldest FROM builds \
             GROUP BY status, outcome",
        )
        .fetch_all(&self.pool)
        .await
        .context("counting builds")?;
        rows.iter()
            .map(|row| {
                Ok(BuildCount {
                    status: BuildStatus::from_stored(&text(row, "status")?)?,
                    outcome: opt_text(row, "outcome")?
                        .as_deref()
                        .map(BuildOutcome::from_stored)
                        .transpose()?,
                    builds: row.try_get::<i64, _>("n").context("column n")?,
                    oldest: ts(row, "oldest")?,
                })
            })
            .collect()
    }
}
