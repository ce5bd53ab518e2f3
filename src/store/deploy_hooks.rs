//! Deploy hooks per Worker; names are unique among a Worker's live hooks.

use anyhow::Context;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::builds::NewBuild;
use super::rows::{list, opt_ts, text, ts};
use super::{Store, WriteTx};
use crate::domain::{
    AccountId, BuildId, BuildStatus, DeployHook, DeployHookId, DetailedDeployHook, LatestHookBuild,
    MAX_DEPLOY_HOOKS_PER_WORKER, Timestamp, TriggerId, TriggerSource, WorkerId, branch_selected,
};

/// Why a hook could not be written.
#[derive(Debug, PartialEq, Eq)]
pub enum HookWriteError {
    /// The hook does not exist.
    NotFound,
    /// The Worker has no live trigger to build with.
    NoTrigger,
    /// Another live hook of the Worker has this name.
    DuplicateName,
    /// The Worker already has [`MAX_DEPLOY_HOOKS_PER_WORKER`] live hooks.
    TooManyHooks,
}

const COLUMNS: &str = "h.uuid, h.name, h.external_script_id, h.branch, h.created_on, h.modified_on";

fn from_row(row: &AnyRow) -> anyhow::Result<DeployHook> {
    Ok(DeployHook {
        deploy_hook_uuid: DeployHookId::from_stored(&text(row, "uuid")?)?,
        deploy_hook_name: text(row, "name")?,
        external_script_id: WorkerId::from_stored(text(row, "external_script_id")?),
        branch: text(row, "branch")?,
        created_on: ts(row, "created_on")?,
        modified_on: ts(row, "modified_on")?,
    })
}

impl Store {
    async fn hook_name_taken(
        &self,
        w: &mut WriteTx<'_>,
        account: &AccountId,
        worker: &WorkerId,
        name: &str,
        except: Option<DeployHookId>,
    ) -> anyhow::Result<bool> {
        let rows = sqlx::query(
            "SELECT uuid FROM deploy_hooks WHERE account_id = $1 AND external_script_id = $2 AND name = $3 AND deleted_on IS NULL",
        )
        .bind(account.as_str())
        .bind(worker.as_str())
        .bind(name)
        .fetch_all(&mut *w.tx)
        .await?;
        let except = except.map(|e| e.to_string());
        Ok(rows
            .iter()
            .any(|r| r.try_get::<String, _>("uuid").ok() != except))
    }

    /// Creates a hook for a Worker that has a live trigger.
    pub async fn insert_deploy_hook(
        &self,
        account: &AccountId,
        worker: &WorkerId,
        name: &str,
        branch: &str,
    ) -> anyhow::Result<Result<DeployHook, HookWriteError>> {
        let mut w = self.begin_write().await?;
        self.lock_key(&mut w, &format!("worker:{account}:{worker}"))
            .await?;
        let has_trigger = sqlx::query(
            "SELECT uuid FROM triggers WHERE account_id = $1 AND external_script_id = $2 AND deleted_on IS NULL",
        )
        .bind(account.as_str())
        .bind(worker.as_str())
        .fetch_optional(&mut *w.tx)
        .await?
        .is_some();
        if !has_trigger {
            return Ok(Err(HookWriteError::NoTrigger));
        }
        if self
            .hook_name_taken(&mut w, account, worker, name, None)
            .await?
        {
            return Ok(Err(HookWriteError::DuplicateName));
        }
        let live: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM deploy_hooks WHERE account_id = $1 AND external_script_id = $2 AND deleted_on IS NULL",
        )
        .bind(account.as_str())
        .bind(worker.as_str())
        .fetch_one(&mut *w.tx)
        .await?
        .try_get("n")?;
        if live >= MAX_DEPLOY_HOOKS_PER_WORKER {
            return Ok(Err(HookWriteError::TooManyHooks));
        }
        let now = Timestamp::now();
        let hook = DeployHook {
            deploy_hook_uuid: DeployHookId::new(),
            deploy_hook_name: name.to_owned(),
            external_script_id: worker.clone(),
            branch: branch.to_owned(),
            created_on: now,
            modified_on: now,
        };
        sqlx::query(
            "INSERT INTO deploy_hooks (uuid, account_id, external_script_id, name, branch, created_on, modified_on) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(hook.deploy_hook_uuid.to_string())
        .bind(account.as_str())
        .bind(worker.as_str())
        .bind(name)
        .bind(branch)
        .bind(now.millis())
        .execute(&mut *w.tx)
        .await
        .context("inserting a deploy hook")?;
        w.commit().await?;
        Ok(Ok(hook))
    }

    /// A Worker's live hooks, oldest first, each with its newest build's time.
    pub async fn list_deploy_hooks(
        &self,
        account: &AccountId,
        worker: &WorkerId,
    ) -> anyhow::Result<Vec<DetailedDeployHook>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS}, (SELECT MAX(b.created_on) FROM builds b WHERE b.deploy_hook_uuid = h.uuid) AS latest \
             FROM deploy_hooks h WHERE h.account_id = $1 AND h.external_script_id = $2 AND h.deleted_on IS NULL \
             ORDER BY h.created_on, h.uuid"
        ))
        .bind(account.as_str())
        .bind(worker.as_str())
        .fetch_all(&self.pool)
        .await
        .context("listing deploy hooks")?;
        rows.iter()
            .map(|r| {
                Ok(DetailedDeployHook {
                    hook: from_row(r)?,
                    latest_build: opt_ts(r, "latest")?
                        .map(|created_on| LatestHookBuild { created_on }),
                })
            })
            .collect()
    }

    /// One live hook of a Worker.
    pub async fn get_deploy_hook(
        &self,
        account: &AccountId,
        worker: &WorkerId,
        id: DeployHookId,
    ) -> anyhow::Result<Option<DeployHook>> {
        fetch_hook(&self.pool, account, worker, id).await
    }

    /// Renames a hook and/or changes its branch.
    pub async fn update_deploy_hook(
        &self,
        account: &AccountId,
        worker: &WorkerId,
        id: DeployHookId,
        name: &str,
        branch: &str,
    ) -> anyhow::Result<Result<DeployHook, HookWriteError>> {
        let mut w = self.begin_write().await?;
        self.lock_key(&mut w, &format!("worker:{account}:{worker}"))
            .await?;
        if fetch_hook(&mut *w.tx, account, worker, id).await?.is_none() {
            return Ok(Err(HookWriteError::NotFound));
        }
        if self
            .hook_name_taken(&mut w, account, worker, name, Some(id))
            .await?
        {
            return Ok(Err(HookWriteError::DuplicateName));
        }
        sqlx::query(
            "UPDATE deploy_hooks SET name = $1, branch = $2, modified_on = $3 WHERE uuid = $4",
        )
        .bind(name)
        .bind(branch)
        .bind(Timestamp::now().millis())
        .bind(id.to_string())
        .execute(&mut *w.tx)
        .await
        .context("updating a deploy hook")?;
        let hook = fetch_hook(&mut *w.tx, account, worker, id)
            .await?
            .context("hook vanished")?;
        w.commit().await?;
        Ok(Ok(hook))
    }

    /// Soft-deletes a hook (its URL stops working at once) and returns it.
    pub async fn delete_deploy_hook(
        &self,
        account: &AccountId,
        worker: &WorkerId,
        id: DeployHookId,
    ) -> anyhow::Result<Option<DeployHook>> {
        let mut w = self.begin_write().await?;
        let Some(hook) = fetch_hook(&mut *w.tx, account, worker, id).await? else {
            return Ok(None);
        };
        sqlx::query("UPDATE deploy_hooks SET deleted_on = $1 WHERE uuid = $2")
            .bind(Timestamp::now().millis())
            .bind(id.to_string())
            .execute(&mut *w.tx)
            .await
            .context("deleting a deploy hook")?;
        w.commit().await?;
        Ok(Some(hook))
    }
}

async fn fetch_hook<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    executor: E,
    account: &AccountId,
    worker: &WorkerId,
    id: DeployHookId,
) -> anyhow::Result<Option<DeployHook>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM deploy_hooks h WHERE h.uuid = $1 AND h.account_id = $2 \
         AND h.external_script_id = $3 AND h.deleted_on IS NULL"
    ))
    .bind(id.to_string())
    .bind(account.as_str())
    .bind(worker.as_str())
    .fetch_optional(executor)
    .await
    .context("reading a deploy hook")?;
    row.as_ref().map(from_row).transpose()
}

/// Builds per Worker that deploy hooks may start per [`HOOK_RATE_WINDOW_MS`].
pub const HOOK_BUILDS_PER_WORKER: i64 = 10;
/// Builds per account that deploy hooks may start per [`HOOK_RATE_WINDOW_MS`].
pub const HOOK_BUILDS_PER_ACCOUNT: i64 = 100;
/// The deploy-hook rate-limit window, in milliseconds.
pub const HOOK_RATE_WINDOW_MS: i64 = 60_000;

/// What calling a deploy hook did.
#[derive(Debug, PartialEq, Eq)]
pub enum HookCall {
    /// A build was queued.
    Created {
        build: BuildId,
        created_on: Timestamp,
    },
    /// A build of this hook is still queued or initializing: it is returned instead.
    Pending {
        build: BuildId,
        created_on: Timestamp,
        status: BuildStatus,
    },
    /// No live hook has this id.
    NotFound,
    /// No live trigger of the Worker builds the hook's branch.
    NoTrigger { branch: String },
    /// Too many hook builds in the window; retry after this many seconds.
    RateLimited { retry_after_secs: u64 },
}

impl Store {
    /// Calls a deploy hook: dedupe against its pending build, rate limits, then one build of the hook's
    /// branch with the Worker's trigger whose branch filters select it — all in one transaction.
    pub async fn call_deploy_hook(&self, id: DeployHookId) -> anyhow::Result<HookCall> {
        let mut w = self.begin_write().await?;
        let hook = sqlx::query(
            "SELECT account_id, external_script_id, branch FROM deploy_hooks WHERE uuid = $1 AND deleted_on IS NULL",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *w.tx)
        .await
        .context("finding a deploy hook")?;
        let Some(hook) = hook else {
            return Ok(HookCall::NotFound);
        };
        let account = AccountId::from_stored(text(&hook, "account_id")?);
        let worker = text(&hook, "external_script_id")?;
        let branch = text(&hook, "branch")?;
        // Hook calls of one account are serialised: the dedupe and the counts below stay true until commit.
        self.lock_key(&mut w, &format!("hooks:{account}")).await?;
        let pending = sqlx::query(
            "SELECT uuid, status, created_on FROM builds WHERE deploy_hook_uuid = $1 \
             AND status IN ($2, $3) ORDER BY id DESC LIMIT 1",
        )
        .bind(id.to_string())
        .bind(BuildStatus::Queued.as_str())
        .bind(BuildStatus::Initializing.as_str())
        .fetch_optional(&mut *w.tx)
        .await
        .context("looking for a pending hook build")?;
        if let Some(p) = pending {
            return Ok(HookCall::Pending {
                build: BuildId::from_stored(&text(&p, "uuid")?)?,
                created_on: ts(&p, "created_on")?,
                status: BuildStatus::from_stored(&text(&p, "status")?)?,
            });
        }
        let now = Timestamp::now();
        let since = now.millis() - HOOK_RATE_WINDOW_MS;
        let window = sqlx::query(
            "SELECT COUNT(*) AS n_account, \
             COALESCE(SUM(CASE WHEN external_script_id = $2 THEN 1 ELSE 0 END), 0) AS n_worker, \
             MIN(created_on) AS oldest_account, \
             MIN(CASE WHEN external_script_id = $2 THEN created_on END) AS oldest_worker \
             FROM builds WHERE account_id = $1 AND trigger_source = 'deploy_hook' AND created_on >= $3",
        )
        .bind(account.as_str())
        .bind(&worker)
        .bind(since)
        .fetch_one(&mut *w.tx)
        .await
        .context("counting hook builds")?;
        let n_account: i64 = window.try_get("n_account")?;
        let n_worker: i64 = window.try_get("n_worker")?;
        let oldest = if n_worker >= HOOK_BUILDS_PER_WORKER {
            Some(window.try_get::<Option<i64>, _>("oldest_worker")?)
        } else if n_account >= HOOK_BUILDS_PER_ACCOUNT {
            Some(window.try_get::<Option<i64>, _>("oldest_account")?)
        } else {
            None
        };
        if let Some(oldest) = oldest {
            let free_at = oldest.unwrap_or(now.millis()) + HOOK_RATE_WINDOW_MS;
            let retry_after_secs = ((free_at - now.millis()).max(0) as u64)
                .div_ceil(1000)
                .max(1);
            return Ok(HookCall::RateLimited { retry_after_secs });
        }
        let triggers = sqlx::query(
            "SELECT uuid, branch_includes, branch_excludes FROM triggers \
             WHERE account_id = $1 AND external_script_id = $2 AND deleted_on IS NULL ORDER BY created_on, uuid",
        )
        .bind(account.as_str())
        .bind(&worker)
        .fetch_all(&mut *w.tx)
        .await
        .context("finding the hook's trigger")?;
        let mut chosen = None;
        for t in &triggers {
            if branch_selected(
                &list(t, "branch_includes")?,
                &list(t, "branch_excludes")?,
                &branch,
            ) {
                chosen = Some(TriggerId::from_stored(&text(t, "uuid")?)?);
                break;
            }
        }
        let Some(trigger) = chosen else {
            return Ok(HookCall::NoTrigger { branch });
        };
        let new = NewBuild {
            trigger,
            source: TriggerSource::DeployHook,
            branch: Some(branch.clone()),
            commit_hash: None,
            commit_message: None,
            author: None,
            pull_request: None,
            deploy_hook: Some(id),
            seed: None,
            watch_paths: None,
        };
        let Some((build, created_on)) = self.insert_build_in(&mut w, &account, &new).await? else {
            return Ok(HookCall::NoTrigger { branch });
        };
        self.commit_queued(w).await?;
        Ok(HookCall::Created { build, created_on })
    }
}
