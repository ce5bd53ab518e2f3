//! What a follower of a build's log reads besides the lines ([`crate::logs::tail`]).

use anyhow::Context;

use super::Store;
use super::rows::{opt_text, opt_ts, text};
use crate::domain::{AccountId, BuildId, BuildOutcome, BuildStatus};
use crate::logs::tail::TailState;

impl Store {
    /// The status of a build of this account; `None` when it is not in the account.
    pub async fn build_tail_state(
        &self,
        account: &AccountId,
        id: BuildId,
    ) -> anyhow::Result<Option<TailState>> {
        let row = sqlx::query(
            "SELECT status, outcome, stopped_on, initializing_on FROM builds \
             WHERE uuid = $1 AND account_id = $2",
        )
        .bind(id.to_string())
        .bind(account.as_str())
        .fetch_optional(&self.pool)
        .await
        .context("reading a build's status")?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(TailState {
            status: BuildStatus::from_stored(&text(&row, "status")?)?,
            outcome: opt_text(&row, "outcome")?
                .map(|o| BuildOutcome::from_stored(&o))
                .transpose()?,
            stopped_on: opt_ts(&row, "stopped_on")?,
            claimed: opt_ts(&row, "initializing_on")?.is_some(),
        }))
    }
}
