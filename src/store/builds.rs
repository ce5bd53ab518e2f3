//! Builds, their log lines and the versions they produced.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Store;
use super::events::{Actor, Refused};
use super::rows::{
    CONNECTION_COLUMNS, TRIGGER_COLUMNS, build_trigger, opt_text, opt_ts, text, trigger, ts,
};
use crate::domain::{
    AccountId, Build, BuildChange, BuildId, BuildOutcome, BuildStatus, BuildTriggerMetadata,
    DeployHookId, MAX_AUTHOR_BYTES, MAX_COMMIT_MESSAGE_BYTES, PullRequest, SeedRepo, Timestamp,
    TriggerId, TriggerSource, VersionId, WatchPathCheck, WorkerId, storable_text,
};

/// A build to queue.
#[derive(Debug, Clone)]
pub struct NewBuild {
    pub trigger: TriggerId,
    pub source: TriggerSource,
    pub branch: Option<String>,
    pub commit_hash: Option<String>,
    pub commit_message: Option<String>,
    pub author: Option<String>,
    pub pull_request: Option<PullRequest>,
    pub deploy_hook: Option<DeployHookId>,
    /// Create the repository's first commit from a template before building.
    pub seed: Option<SeedRepo>,
    /// Check the trigger's watch paths when the build starts (pull-request builds).
    pub watch_paths: Option<WatchPathCheck>,
}

/// What cancelling a build did.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled { stopped_on: Timestamp },
    AlreadyStopped,
    NotFound,
}

/// Secrets a build runs with, sealed as one value in the build row.
#[derive(Default, Serialize, Deserialize)]
pub struct BuildSecrets {
    pub build_token: Option<String>,
    pub env: BTreeMap<String, String>,
}

// Secrets must not reach a log line through `{:?}`.
impl std::fmt::Debug for BuildSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BuildSecrets(..)")
    }
}

const BUILD_COLUMNS: &str = "b.id AS b_id, b.uuid AS b_uuid, b.account_id AS b_account_id, \
    b.status AS b_status, b.outcome AS b_outcome, b.metadata AS b_metadata, \
    b.pull_request AS b_pull_request, b.created_on AS b_created_on, b.modified_on AS b_modified_on, \
    b.initializing_on AS b_initializing_on, b.running_on AS b_running_on, b.stopped_on AS b_stopped_on";

const BUILD_FROM: &str = "builds b \
    JOIN triggers t ON t.uuid = b.trigger_uuid \
    JOIN repo_connections c ON c.uuid = t.repo_connection_uuid \
    LEFT JOIN build_tokens k ON k.uuid = t.build_token_uuid AND k.deleted_on IS NULL";

/// Which of a Worker's builds a list keeps (a Kiln extension of `listBuildsByScript`, for the
/// dashboard and the CLI): every one by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildFilter {
    /// Only builds of this branch (exact name).
    pub branch: Option<String>,
    /// Only builds that stopped with this outcome.
    pub outcome: Option<BuildOutcome>,
}

/// The builds of Worker `$2` of account `$1` kept by a [`BuildFilter`] bound as `$3` (branch) and
/// `$4` (outcome), `NULL` keeping all.
const WORKER_BUILDS: &str = "b.account_id = $1 AND b.external_script_id = $2 \
    AND (CAST($3 AS TEXT) IS NULL OR b.branch = $3) AND (CAST($4 AS TEXT) IS NULL OR b.outcome = $4)";

pub(super) fn select_builds(filter: &str) -> String {
    format!(
        "SELECT {BUILD_COLUMNS}, {TRIGGER_COLUMNS}, {CONNECTION_COLUMNS} FROM {BUILD_FROM} WHERE {filter}"
    )
}

/// Bytes of a build's JSON besides the columns [`build_size_bound`] measures: keys, ids, times,
/// statuses (about 1.3 KB measured; doubled).
const BUILD_JSON_FRAME_BYTES: i64 = 4096;

/// SQL bounding the JSON size of the build row `b` (with its trigger `t` and connection `c`): stored
/// JSON columns count as they are, text columns six times (the longest JSON escape of a byte).
fn build_size_bound() -> String {
    let json = [
        "b.metadata",
        "COALESCE(b.pull_request, '')",
        "t.branch_includes",
        "t.branch_excludes",
        "t.path_includes",
        "t.path_excludes",
    ];
    let text = [
        "t.trigger_name",
        "t.build_command",
        "t.deploy_command",
        "t.root_directory",
        "t.external_script_id",
        "c.provider_account_id",
        "c.provider_account_name",
        "c.repo_id",
        "c.repo_name",
    ];
    let sum = |cols: &[&str]| {
        cols.iter()
            .map(|c| format!("octet_length({c})"))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    format!(
        "{} + 6 * ({}) + {BUILD_JSON_FRAME_BYTES}",
        sum(&json),
        sum(&text)
    )
}

pub(super) fn build_from_row(row: &AnyRow) -> anyhow::Result<Build> {
    let outcome = opt_text(row, "b_outcome")?
        .map(|o| BuildOutcome::from_stored(&o))
        .transpose()?;
    let pull_request = opt_text(row, "b_pull_request")?
        .map(|p| serde_json::from_str::<PullRequest>(&p))
        .transpose()
        .context("build pull_request column")?;
    Ok(Build {
        build_uuid: BuildId::from_stored(&text(row, "b_uuid")?)?,
        status: BuildStatus::from_stored(&text(row, "b_status")?)?,
        build_outcome: outcome,
        created_on: ts(row, "b_created_on")?,
        modified_on: ts(row, "b_modified_on")?,
        initializing_on: opt_ts(row, "b_initializing_on")?,
        running_on: opt_ts(row, "b_running_on")?,
        stopped_on: opt_ts(row, "b_stopped_on")?,
        pull_request,
        trigger: build_trigger(row)?,
        build_trigger_metadata: serde_json::from_str(&text(row, "b_metadata")?)
            .context("build metadata column")?,
        account_id: AccountId::from_stored(text(row, "b_account_id")?),
    })
}

impl Store {
    /// Queues a build of a live trigger, snapshotting the trigger's commands, token and variables.
    /// `None` when the trigger does not exist in the account.
    pub async fn insert_build(
        &self,
        account: &AccountId,
        new: &NewBuild,
    ) -> anyhow::Result<Option<(BuildId, Timestamp)>> {
        let mut w = self.begin_write().await?;
        let inserted = self.insert_build_in(&mut w, account, new).await?;
        if inserted.is_some() {
            self.commit_queued(w).await?;
        }
        Ok(inserted)
    }

    /// [`Store::insert_build`] inside the caller's transaction, which must end with
    /// [`Store::commit_queued`]. A build of a branch supersedes the queued builds of the same trigger and
    /// branch; the trigger is locked so that a concurrent deletion cannot miss the new build.
    pub(super) async fn insert_build_in(
        &self,
        w: &mut super::WriteTx<'_>,
        account: &AccountId,
        new: &NewBuild,
    ) -> anyhow::Result<Option<(BuildId, Timestamp)>> {
        self.lock_key(w, &format!("trigger:{}", new.trigger))
            .await?;
        let row = sqlx::query(&format!(
            "SELECT {TRIGGER_COLUMNS}, {CONNECTION_COLUMNS}, k.secret_enc AS k_secret \
             FROM triggers t JOIN repo_connections c ON c.uuid = t.repo_connection_uuid \
             LEFT JOIN build_tokens k ON k.uuid = t.build_token_uuid AND k.deleted_on IS NULL \
             WHERE t.uuid = $1 AND t.account_id = $2 AND t.deleted_on IS NULL"
        ))
        .bind(new.trigger.to_string())
        .bind(account.as_str())
        .fetch_optional(&mut *w.tx)
        .await
        .context("reading the trigger to build")?;
        let Some(row) = row else { return Ok(None) };
        let t = trigger(&row)?;
        // Builds of a branch with an open pull request carry it, whatever started them.
        let pull_request = match (&new.pull_request, &new.branch) {
            (Some(pr), _) => Some(pr.clone()),
            (None, Some(branch)) => {
                super::webhooks::open_pull_request(
                    w,
                    &t.info.repo_connection.repo_id,
                    branch,
                    account,
                )
                .await?
            }
            (None, None) => None,
        };
        let token_secret = row
            .try_get::<Option<Vec<u8>>, _>("k_secret")?
            .map(|s| self.secrets.open_str(&s))
            .transpose()?;
        let vars = self.read_env_vars(&mut *w.tx, new.trigger).await?;
        let mut secrets = BuildSecrets {
            build_token: token_secret,
            env: BTreeMap::new(),
        };
        let mut env_view = BTreeMap::new();
        for v in vars {
            env_view.insert(v.key.clone(), v.view());
            if v.is_secret {
                secrets.env.insert(v.key, v.value);
            }
        }
        let metadata = BuildTriggerMetadata {
            build_trigger_source: new.source,
            branch: new.branch.clone(),
            commit_hash: new.commit_hash.clone(),
            commit_message: new
                .commit_message
                .as_deref()
                .map(|m| storable_text(m, MAX_COMMIT_MESSAGE_BYTES)),
            author: new
                .author
                .as_deref()
                .map(|a| storable_text(a, MAX_AUTHOR_BYTES)),
            build_command: t.info.build_command.clone(),
            deploy_command: t.info.deploy_command.clone(),
            build_token_name: t.build_token_name.clone(),
            build_token_uuid: t.build_token_uuid,
            environment_variables: env_view,
            provider_type: t.info.repo_connection.provider_type,
            provider_account_name: t.info.repo_connection.provider_account_name.clone(),
            repo_name: t.info.repo_connection.repo_name.clone(),
            root_directory: t.info.root_directory.clone(),
        };
        let id = BuildId::new();
        let now = Timestamp::now();
        let state = self.queue_event(w, id, account, &t.info.external_script_id, now)?;
        sqlx::query(
            "INSERT INTO builds (uuid, account_id, trigger_uuid, external_script_id, status, trigger_source, \
             branch, commit_hash, metadata, secrets_enc, pull_request, deploy_hook_uuid, created_on, modified_on, seed_repo, pr_url, \
             watch_paths) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, $15, $16)",
        )
        .bind(id.to_string())
        .bind(account.as_str())
        .bind(new.trigger.to_string())
        .bind(t.info.external_script_id.as_str())
        .bind(state.status().as_str())
        .bind(new.source.as_str())
        .bind(new.branch.as_deref())
        .bind(new.commit_hash.as_deref())
        .bind(serde_json::to_string(&metadata)?)
        .bind(self.secrets.seal(&serde_json::to_vec(&secrets)?)?)
        .bind(pull_request.as_ref().map(serde_json::to_string).transpose()?)
        .bind(new.deploy_hook.map(|h| h.to_string()))
        .bind(now.millis())
        .bind(new.seed.as_ref().map(serde_json::to_string).transpose()?)
        .bind(pull_request.as_ref().map(|pr| pr.pull_request_url.clone()))
        .bind(new.watch_paths.as_ref().map(serde_json::to_string).transpose()?)
        .execute(&mut *w.tx)
        .await
        .context("inserting a build")?;
        if let Some(branch) = &new.branch {
            self.supersede_in(w, new.trigger, branch, id).await?;
        }
        Ok(Some((id, now)))
    }

    /// One build of this account.
    pub async fn get_build(
        &self,
        account: &AccountId,
        id: BuildId,
    ) -> anyhow::Result<Option<Build>> {
        let row = sqlx::query(&select_builds("b.uuid = $1 AND b.account_id = $2"))
            .bind(id.to_string())
            .bind(account.as_str())
            .fetch_optional(&self.pool)
            .await
            .context("reading a build")?;
        row.as_ref().map(build_from_row).transpose()
    }

    /// How many of a Worker's builds `filter` keeps, and a bound on the JSON size of the largest one
    /// in bytes (its stored JSON parts as they are, its text columns as if every byte needed
    /// escaping), to size pages of [`Store::list_builds`] by.
    pub async fn build_list_stats(
        &self,
        account: &AccountId,
        worker: &WorkerId,
        filter: &BuildFilter,
    ) -> anyhow::Result<(i64, u64)> {
        let row = sqlx::query(&format!(
            "SELECT COUNT(*) AS n, CAST(COALESCE(MAX({}), 0) AS BIGINT) AS max_bytes \
             FROM builds b JOIN triggers t ON t.uuid = b.trigger_uuid \
             JOIN repo_connections c ON c.uuid = t.repo_connection_uuid \
             WHERE {WORKER_BUILDS}",
            build_size_bound()
        ))
        .bind(account.as_str())
        .bind(worker.as_str())
        .bind(filter.branch.as_deref())
        .bind(filter.outcome.map(BuildOutcome::as_str))
        .fetch_one(&self.pool)
        .await
        .context("sizing a Worker's builds")?;
        let max: i64 = row.try_get("max_bytes")?;
        Ok((row.try_get("n")?, u64::try_from(max).unwrap_or(0)))
    }

    /// A bound on the JSON size of the account's largest build in bytes (as
    /// [`Store::build_list_stats`] measures it), to size pages of builds of several Workers by.
    pub async fn largest_account_build(&self, account: &AccountId) -> anyhow::Result<u64> {
        let row = sqlx::query(&format!(
            "SELECT CAST(COALESCE(MAX({}), 0) AS BIGINT) AS max_bytes \
             FROM builds b JOIN triggers t ON t.uuid = b.trigger_uuid \
             JOIN repo_connections c ON c.uuid = t.repo_connection_uuid \
             WHERE b.account_id = $1",
            build_size_bound()
        ))
        .bind(account.as_str())
        .fetch_one(&self.pool)
        .await
        .context("sizing an account's builds")?;
        let max: i64 = row.try_get("max_bytes")?;
        Ok(u64::try_from(max).unwrap_or(0))
    }

    /// One page of the Worker's builds that `filter` keeps, newest first: `per_page` builds after
    /// the first `(page - 1) * per_page`.
    pub async fn list_builds(
        &self,
        account: &AccountId,
        worker: &WorkerId,
        filter: &BuildFilter,
        page: u32,
        per_page: u32,
    ) -> anyhow::Result<Vec<Build>> {
        let rows = sqlx::query(&format!(
            "{} ORDER BY b.id DESC LIMIT $5 OFFSET $6",
            select_builds(WORKER_BUILDS)
        ))
        .bind(account.as_str())
        .bind(worker.as_str())
        .bind(filter.branch.as_deref())
        .bind(filter.outcome.map(BuildOutcome::as_str))
        .bind(i64::from(per_page))
        .bind(i64::from(page - 1) * i64::from(per_page))
        .fetch_all(&self.pool)
        .await
        .context("listing builds")?;
        rows.iter().map(build_from_row).collect()
    }

    /// The newest build of a Worker, if it has one.
    pub async fn latest_build(
        &self,
        account: &AccountId,
        worker: &WorkerId,
    ) -> anyhow::Result<Option<Build>> {
        let row = sqlx::query(&format!(
            "{} ORDER BY b.id DESC LIMIT 1",
            select_builds("b.account_id = $1 AND b.external_script_id = $2")
        ))
        .bind(account.as_str())
        .bind(worker.as_str())
        .fetch_optional(&self.pool)
        .await
        .context("reading the latest build")?;
        row.as_ref().map(build_from_row).transpose()
    }

    /// The build that produced a version, if known.
    pub async fn build_by_version(
        &self,
        account: &AccountId,
        version: VersionId,
    ) -> anyhow::Result<Option<Build>> {
        let row = sqlx::query(&select_builds(
            "b.uuid = (SELECT v.build_uuid FROM build_versions v WHERE v.account_id = $1 AND v.version_id = $2)",
        ))
        .bind(account.as_str())
        .bind(version.to_string())
        .fetch_optional(&self.pool)
        .await
        .context("reading a build by version")?;
        row.as_ref().map(build_from_row).transpose()
    }

    /// Links a Worker version to the build that produced it (the first link wins).
    pub async fn insert_build_version(
        &self,
        account: &AccountId,
        version: VersionId,
        build: BuildId,
    ) -> anyhow::Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO build_versions (account_id, version_id, build_uuid, created_on) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account_id, version_id) DO NOTHING",
        )
        .bind(account.as_str())
        .bind(version.to_string())
        .bind(build.to_string())
        .bind(Timestamp::now().millis())
        .execute(&mut *w.tx)
        .await
        .context("recording a build version")?;
        w.commit().await
    }

    /// Ends a build that has not stopped yet as `stopped`/`cancelled`.
    pub async fn cancel_build(
        &self,
        account: &AccountId,
        id: BuildId,
    ) -> anyhow::Result<CancelOutcome> {
        let mut w = self.begin_write().await?;
        match self
            .change_build(
                &mut w,
                id,
                Some(account),
                BuildChange::Cancel,
                Actor::Anyone,
            )
            .await?
        {
            Ok(changed) => {
                w.commit().await?;
                Ok(CancelOutcome::Cancelled {
                    stopped_on: changed.at,
                })
            }
            Err(Refused::NotFound) => Ok(CancelOutcome::NotFound),
            Err(Refused::Illegal | Refused::NotOwner) => Ok(CancelOutcome::AlreadyStopped),
        }
    }

    /// How a build ended, whatever its account (`None` while it runs or when unknown).
    pub async fn get_build_outcome(&self, id: BuildId) -> anyhow::Result<Option<BuildOutcome>> {
        let row = sqlx::query("SELECT outcome FROM builds WHERE uuid = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .context("reading a build's outcome")?;
        match row {
            Some(r) => opt_text(&r, "outcome")?
                .map(|o| BuildOutcome::from_stored(&o))
                .transpose(),
            None => Ok(None),
        }
    }

    /// Build minutes an account used since `since`: each stopped build counts its rounded-up minutes,
    /// but for skipped ones (a pull-request build that no watch path selects stops while initializing).
    pub async fn build_minutes_used(
        &self,
        account: &AccountId,
        since: Timestamp,
    ) -> anyhow::Result<i64> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM((stopped_on - initializing_on + 59999) / 60000), 0) AS BIGINT) AS minutes \
             FROM builds WHERE account_id = $1 AND stopped_on >= $2 AND initializing_on IS NOT NULL \
             AND outcome <> $3",
        )
        .bind(account.as_str())
        .bind(since.millis())
        .bind(BuildOutcome::Skipped.as_str())
        .fetch_one(&self.pool)
        .await
        .context("summing build minutes")?;
        Ok(row.try_get("minutes")?)
    }
}
