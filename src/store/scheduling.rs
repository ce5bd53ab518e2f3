//! Claiming queued builds with leases, renewing and ending them, and recovering builds whose runner
//! died. A runner owns a build only while its lease (`lease_owner`, `lease_expires`) is current.

use std::collections::BTreeMap;

use anyhow::Context;
use sqlx::Row;

use super::builds::BuildSecrets;
use super::events::Actor;
use super::rows::{opt_text, text};
use super::{Backend, Store, WriteTx};
use crate::domain::{
    AccountId, BuildChange, BuildId, BuildOutcome, BuildStatus, BuildTriggerMetadata,
    MAX_AUTHOR_BYTES, MAX_COMMIT_MESSAGE_BYTES, SeedRepo, Timestamp, TriggerId, WatchPathCheck,
    WorkerId, storable_text,
};

/// A build a runner has claimed, with what it needs to run it.
#[derive(Debug)]
pub struct ClaimedBuild {
    pub id: BuildId,
    pub account: AccountId,
    pub trigger: TriggerId,
    pub worker: WorkerId,
    pub metadata: BuildTriggerMetadata,
    pub secrets: BuildSecrets,
    pub created_on: Timestamp,
    /// Seed the repository from a template before the checkout.
    pub seed: Option<SeedRepo>,
    /// Check the trigger's watch paths against the pull request's changes before building.
    pub watch_paths: Option<WatchPathCheck>,
    /// The connected repository's id at its provider (GitHub's numeric id).
    pub repo_id: String,
    /// The trigger's `build_caching_enabled` when the build was claimed (PRODUCT-NOTES §5).
    pub build_caching_enabled: bool,
    /// The trigger is a preview trigger ([`crate::domain::is_preview_trigger`]): its builds are
    /// non-production branch builds.
    pub preview_trigger: bool,
}

/// A build whose runner was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostBuild {
    pub id: BuildId,
    pub account: AccountId,
}

/// SQL: the account `account` (an SQL expression) runs fewer builds than its concurrency limit (`$1`
/// unless the account sets one); `$3` and `$4` are the statuses in progress.
fn under_limit(account: &str) -> String {
    format!(
        "(SELECT COUNT(*) FROM builds r WHERE r.account_id = {account} AND r.status IN ($3, $4)) < \
         COALESCE((SELECT a.concurrency FROM accounts a WHERE a.account_id = {account}), $1)"
    )
}

/// Candidates one claim looks at (unreadable builds it fails, slots lost to concurrent claims)
/// before giving up until the next wake-up.
const MAX_CLAIM_ATTEMPTS: usize = 16;

impl Store {
    /// Claims the oldest queued build whose account is under its concurrency limit, moving it to
    /// `initializing` with a lease for `owner` until `lease_until`.
    ///
    /// Claims do not wait for each other on PostgreSQL: each locks its candidate row with
    /// `FOR UPDATE SKIP LOCKED` (a concurrent claim takes the next one) and then only the account's
    /// claim lock, so claims of different accounts run side by side. The account's builds in
    /// progress are counted again under that lock, which every claim of the account takes until
    /// its commit: the concurrency limit is exact across nodes.
    pub async fn claim_build(
        &self,
        owner: &str,
        lease_until: Timestamp,
        default_concurrency: i64,
    ) -> anyhow::Result<Option<ClaimedBuild>> {
        let skip_locked = match self.backend {
            Backend::Postgres => " FOR UPDATE OF b SKIP LOCKED",
            Backend::Sqlite => "",
        };
        // A build whose stored settings cannot be read fails on its own instead of blocking the
        // queue; a claim that lost its account's last slot to a concurrent one looks again.
        for _ in 0..MAX_CLAIM_ATTEMPTS {
            let mut w = self.begin_write().await?;
            let row = sqlx::query(&format!(
                "SELECT b.id AS id, b.uuid AS uuid, b.account_id AS account_id, b.trigger_uuid AS trigger_uuid, \
                 b.external_script_id AS worker, b.metadata AS metadata, b.secrets_enc AS secrets, b.created_on AS created_on, \
                 b.seed_repo AS seed_repo, b.watch_paths AS watch_paths, (SELECT c.repo_id FROM triggers t JOIN repo_connections c \
                 ON c.uuid = t.repo_connection_uuid WHERE t.uuid = b.trigger_uuid) AS repo_id, \
                 (SELECT t.build_caching_enabled FROM triggers t WHERE t.uuid = b.trigger_uuid) AS caching, \
                 (SELECT t.branch_includes FROM triggers t WHERE t.uuid = b.trigger_uuid) AS branch_includes, \
                 (SELECT t.branch_excludes FROM triggers t WHERE t.uuid = b.trigger_uuid) AS branch_excludes \
                 FROM builds b WHERE b.status = $2 AND {} \
                 ORDER BY b.id LIMIT 1{skip_locked}",
                under_limit("b.account_id")
            ))
            .bind(default_concurrency)
            .bind(BuildStatus::Queued.as_str())
            .bind(BuildStatus::Initializing.as_str())
            .bind(BuildStatus::Running.as_str())
            .fetch_optional(&mut *w.tx)
            .await
            .context("finding a build to claim")?;
            let Some(row) = row else { return Ok(None) };
            let account = AccountId::from_stored(text(&row, "account_id")?);
            if !self
                .claim_slot(&mut w, &account, default_concurrency)
                .await?
            {
                continue;
            }
            let uuid = BuildId::from_stored(&text(&row, "uuid")?)?;
            match self.decode_claim(&row, uuid) {
                Ok(mut claimed) => {
                    let claimer = Actor::Claimer { owner, lease_until };
                    if self
                        .change_build(&mut w, uuid, None, BuildChange::Claim, claimer)
                        .await?
                        .is_err()
                    {
                        continue;
                    }
                    // A token deleted or rolled since the build was queued must not be used.
                    let live = sqlx::query(
                        "SELECT uuid FROM build_tokens WHERE uuid = $1 AND deleted_on IS NULL",
                    )
                    .bind(claimed.metadata.build_token_uuid.to_string())
                    .fetch_optional(&mut *w.tx)
                    .await
                    .context("checking the build token")?;
                    if live.is_none() {
                        claimed.secrets.build_token = None;
                    }
                    w.commit().await?;
                    return Ok(Some(claimed));
                }
                Err(e) => {
                    tracing::error!(build.uuid = %uuid, error = format!("{e:#}"), "a queued build cannot be read; failing it");
                    let failed = self
                        .change_build(&mut w, uuid, None, BuildChange::Unreadable, Actor::Anyone)
                        .await?;
                    w.commit().await?;
                    if let Ok(changed) = failed {
                        self.append_build_logs(
                            uuid,
                            &[(changed.at, "Failed: the build's stored settings could not be read (was the secret key changed?). Retry the build.".to_owned())],
                        )
                        .await?;
                    }
                }
            }
        }
        Ok(None)
    }

    /// Takes `account`'s claim lock for the rest of `w` (PostgreSQL) and says whether the account
    /// still has a free slot: counted under the lock, so no concurrent claim of the account can
    /// take it too. Always true on SQLite, whose one writer already saw the count when it chose.
    async fn claim_slot(
        &self,
        w: &mut WriteTx<'_>,
        account: &AccountId,
        default_concurrency: i64,
    ) -> anyhow::Result<bool> {
        if self.backend != Backend::Postgres {
            return Ok(true);
        }
        self.lock_key(w, &format!("claim:{account}")).await?;
        let row = sqlx::query(&format!(
            "SELECT CASE WHEN {} THEN 1 ELSE 0 END AS free",
            under_limit("$2")
        ))
        .bind(default_concurrency)
        .bind(account.as_str())
        .bind(BuildStatus::Initializing.as_str())
        .bind(BuildStatus::Running.as_str())
        .fetch_one(&mut *w.tx)
        .await
        .context("counting the account's builds in progress")?;
        Ok(row.try_get::<i32, _>("free")? == 1)
    }

    fn decode_claim(&self, row: &sqlx::any::AnyRow, id: BuildId) -> anyhow::Result<ClaimedBuild> {
        let sealed: Vec<u8> = row.try_get("secrets")?;
        Ok(ClaimedBuild {
            id,
            account: AccountId::from_stored(text(row, "account_id")?),
            trigger: TriggerId::from_stored(&text(row, "trigger_uuid")?)?,
            worker: WorkerId::from_stored(text(row, "worker")?),
            metadata: serde_json::from_str(&text(row, "metadata")?).context("build metadata")?,
            secrets: serde_json::from_slice(&self.secrets.open(&sealed)?)
                .context("build secrets")?,
            created_on: Timestamp::from_millis(row.try_get("created_on")?),
            repo_id: opt_text(row, "repo_id")?.unwrap_or_default(),
            build_caching_enabled: row
                .try_get::<Option<i64>, _>("caching")?
                .is_some_and(|v| v != 0),
            preview_trigger: {
                let list = |name: &str| -> anyhow::Result<Vec<String>> {
                    Ok(opt_text(row, name)?
                        .map(|t| serde_json::from_str(&t))
                        .transpose()
                        .with_context(|| format!("trigger {name}"))?
                        .unwrap_or_default())
                };
                crate::domain::is_preview_trigger(
                    &list("branch_includes")?,
                    &list("branch_excludes")?,
                )
            },
            seed: opt_text(row, "seed_repo")?
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .context("build seed_repo")?,
            watch_paths: opt_text(row, "watch_paths")?
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .context("build watch_paths")?,
        })
    }

    /// Extends a lease; false when `owner` no longer holds the build (it was cancelled or recovered).
    pub async fn renew_lease(
        &self,
        id: BuildId,
        owner: &str,
        lease_until: Timestamp,
    ) -> anyhow::Result<bool> {
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE builds SET lease_expires = $1 WHERE uuid = $2 AND lease_owner = $3 AND status IN ($4, $5)",
        )
        .bind(lease_until.millis())
        .bind(id.to_string())
        .bind(owner)
        .bind(BuildStatus::Initializing.as_str())
        .bind(BuildStatus::Running.as_str())
        .execute(&mut *w.tx)
        .await
        .context("renewing a lease")?;
        w.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves a claimed build from `initializing` to `running`; false when `owner` no longer holds it
    /// (it was cancelled or recovered meanwhile).
    pub async fn set_build_running(&self, id: BuildId, owner: &str) -> anyhow::Result<bool> {
        self.change_by_owner(id, owner, BuildChange::Run).await
    }

    /// Records what the build actually checked out: the branch, the full commit, its message and author;
    /// wakes the store's event bus.
    pub async fn set_build_commit(
        &self,
        id: BuildId,
        branch: Option<&str>,
        commit_hash: &str,
        commit_message: &str,
        author: &str,
    ) -> anyhow::Result<()> {
        let mut w = self.begin_write().await?;
        let row = sqlx::query("SELECT metadata FROM builds WHERE uuid = $1")
            .bind(id.to_string())
            .fetch_one(&mut *w.tx)
            .await
            .context("reading build metadata")?;
        let mut meta: BuildTriggerMetadata = serde_json::from_str(&text(&row, "metadata")?)?;
        if branch.is_some() {
            meta.branch = branch.map(str::to_owned);
        }
        meta.commit_hash = Some(commit_hash.to_owned());
        meta.commit_message = Some(storable_text(commit_message, MAX_COMMIT_MESSAGE_BYTES));
        meta.author = Some(storable_text(author, MAX_AUTHOR_BYTES));
        sqlx::query("UPDATE builds SET metadata = $1, branch = $2, commit_hash = $3, modified_on = $4 WHERE uuid = $5")
            .bind(serde_json::to_string(&meta)?)
            .bind(meta.branch.as_deref())
            .bind(commit_hash)
            .bind(Timestamp::now().millis())
            .bind(id.to_string())
            .execute(&mut *w.tx)
            .await
            .context("recording the build's commit")?;
        w.commit().await?;
        // No status changed, but a build's commit is what its first check run waits for (a build
        // queued without one): the reporter on this node looks now rather than at its next poll.
        self.events.notify();
        Ok(())
    }

    /// Ends a build its owner ran; false when it had already stopped (e.g. cancelled meanwhile).
    pub async fn finish_build(
        &self,
        id: BuildId,
        owner: &str,
        outcome: BuildOutcome,
    ) -> anyhow::Result<bool> {
        self.change_by_owner(id, owner, BuildChange::Finish(outcome))
            .await
    }

    /// Applies a change that only the runner holding the build may make; false when it does not
    /// hold it or the build's state no longer allows the change.
    async fn change_by_owner(
        &self,
        id: BuildId,
        owner: &str,
        change: BuildChange,
    ) -> anyhow::Result<bool> {
        let mut w = self.begin_write().await?;
        let changed = self
            .change_build(&mut w, id, None, change, Actor::Owner(owner))
            .await?;
        if changed.is_err() {
            return Ok(false);
        }
        w.commit().await?;
        Ok(true)
    }

    /// Ends as `terminated` every in-progress build whose lease expired before `now`, or (at start-up)
    /// whose owner starts with `dead_owner_prefix`, and logs why. Returns them. Builds in
    /// `running_here` are skipped: the caller runs them, so their runner is not lost even when their
    /// lease could not be renewed (the store was full or unreachable for a while).
    pub async fn recover_lost_builds(
        &self,
        now: Timestamp,
        dead_owner_prefix: Option<&str>,
        running_here: &[BuildId],
    ) -> anyhow::Result<Vec<LostBuild>> {
        let mut w = self.begin_write().await?;
        // Owners are `<node id>/<incarnation>`: hex and '-' only, so LIKE needs no escaping.
        let dead_pattern =
            dead_owner_prefix.map_or_else(|| "\u{1}".to_owned(), |p| format!("{p}%"));
        let rows = sqlx::query(
            "SELECT uuid FROM builds WHERE status IN ($3, $4) AND \
             (lease_expires IS NULL OR lease_expires < $1 OR lease_owner LIKE $2) ORDER BY id",
        )
        .bind(now.millis())
        .bind(dead_pattern)
        .bind(BuildStatus::Initializing.as_str())
        .bind(BuildStatus::Running.as_str())
        .fetch_all(&mut *w.tx)
        .await
        .context("finding lost builds")?;
        let mut lost = Vec::new();
        for row in &rows {
            let id = BuildId::from_stored(&text(row, "uuid")?)?;
            if running_here.contains(&id) {
                continue;
            }
            // Refused when it ended meanwhile (PostgreSQL: between the read and the row lock).
            if let Ok(changed) = self
                .change_build(&mut w, id, None, BuildChange::Lost, Actor::Anyone)
                .await?
            {
                lost.push(LostBuild {
                    id,
                    account: changed.account,
                });
            }
        }
        w.commit().await?;
        for b in &lost {
            self.append_build_logs(
                b.id,
                &[(now, "Build terminated: the runner running this build was lost (Kiln stopped or crashed). Retry the build.".to_owned())],
            )
            .await?;
        }
        Ok(lost)
    }

    /// Marks queued builds of `trigger` on `branch` older than `keep` as `stopped`/`skipped`, inside
    /// the transaction that queued `keep`; their log line is written by [`Store::commit_queued`].
    pub(super) async fn supersede_in(
        &self,
        w: &mut WriteTx<'_>,
        trigger: TriggerId,
        branch: &str,
        keep: BuildId,
    ) -> anyhow::Result<()> {
        // Concurrent supersedes of one trigger and branch would lock the same rows in different
        // orders (a deadlock on PostgreSQL): one at a time.
        self.lock_key(w, &format!("supersede:{trigger}:{branch}"))
            .await?;
        let rows = sqlx::query(
            "SELECT uuid FROM builds WHERE trigger_uuid = $1 AND branch = $2 AND status = $4 AND uuid <> $3 \
             AND id < (SELECT id FROM builds WHERE uuid = $3) ORDER BY id",
        )
        .bind(trigger.to_string())
        .bind(branch)
        .bind(keep.to_string())
        .bind(BuildStatus::Queued.as_str())
        .fetch_all(&mut *w.tx)
        .await
        .context("finding superseded builds")?;
        for row in &rows {
            let id = BuildId::from_stored(&text(row, "uuid")?)?;
            if self
                .change_build(w, id, None, BuildChange::Supersede, Actor::Anyone)
                .await?
                .is_ok()
            {
                w.superseded.push((id, keep));
            }
        }
        Ok(())
    }

    /// Commits a transaction that queued builds, then logs why the builds they superseded were skipped.
    pub(super) async fn commit_queued(&self, mut w: WriteTx<'_>) -> anyhow::Result<()> {
        let superseded = std::mem::take(&mut w.superseded);
        w.commit().await?;
        let now = Timestamp::now();
        for (skipped, by) in superseded {
            let line =
                format!("Build skipped: superseded by a newer build ({by}) of the same branch.");
            self.append_build_logs(skipped, &[(now, line)]).await?;
        }
        Ok(())
    }

    /// Sets an account's concurrency limit and/or monthly build minutes (`None` leaves a value as is).
    pub async fn set_account_limits(
        &self,
        account: &AccountId,
        concurrency: Option<i64>,
        build_minutes: Option<i64>,
    ) -> anyhow::Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO accounts (account_id, concurrency, build_minutes, modified_on) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account_id) DO UPDATE SET concurrency = COALESCE(excluded.concurrency, accounts.concurrency), \
             build_minutes = COALESCE(excluded.build_minutes, accounts.build_minutes), modified_on = excluded.modified_on",
        )
        .bind(account.as_str())
        .bind(concurrency)
        .bind(build_minutes)
        .bind(Timestamp::now().millis())
        .execute(&mut *w.tx)
        .await
        .context("setting account limits")?;
        w.commit().await
    }

    /// Every account's explicit settings: account → (concurrency, build minutes).
    pub async fn list_account_limits(
        &self,
    ) -> anyhow::Result<BTreeMap<String, (Option<i64>, Option<i64>)>> {
        let rows = sqlx::query(
            "SELECT account_id, concurrency, build_minutes FROM accounts ORDER BY account_id",
        )
        .fetch_all(&self.pool)
        .await
        .context("listing account limits")?;
        rows.iter()
            .map(|r| {
                Ok((
                    text(r, "account_id")?,
                    (r.try_get("concurrency")?, r.try_get("build_minutes")?),
                ))
            })
            .collect()
    }

    /// An account's monthly build minutes if set explicitly.
    pub async fn get_account_build_minutes(
        &self,
        account: &AccountId,
    ) -> anyhow::Result<Option<i64>> {
        let row = sqlx::query("SELECT build_minutes FROM accounts WHERE account_id = $1")
            .bind(account.as_str())
            .fetch_optional(&self.pool)
            .await
            .context("reading account limits")?;
        Ok(match row {
            Some(r) => r.try_get::<Option<i64>, _>("build_minutes")?,
            None => None,
        })
    }
}
