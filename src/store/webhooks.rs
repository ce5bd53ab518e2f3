//! GitHub deliveries: each handled once, in the same transaction as the builds it causes.
//!
//! Every push to a branch a trigger selects builds, also a commit the trigger built before (a force
//! push back to it, a retry by pushing again). The one exception is the pair GitHub sends for one
//! `git push` to a branch with an open pull request: a `push` and a `pull_request` event for the same
//! head commit. When they arrive together, that is while the build the first one queued is still
//! queued, initializing or running, or within [`PAIR_WINDOW_MS`] of its creation, the second joins
//! that build instead of queuing another (a build's pull request is attached to it if it had none).

use anyhow::Context;
use sqlx::Row;

use super::Store;
use super::builds::NewBuild;
use super::rows::{list, text, ts};
use crate::domain::{
    AccountId, BuildId, BuildStatus, PullRequest, Timestamp, TriggerId, TriggerSource,
    WatchPathCheck, branch_selected, paths_selected,
};
use crate::github::{PullRequestAction, PullRequestEvent, Push};

/// How long after the build of one event of a push/pull_request pair was queued the other event still
/// joins it, in milliseconds, once that build has stopped (GitHub sends both within seconds).
pub const PAIR_WINDOW_MS: i64 = 60_000;

/// The triggers a push selects by their branch filters and watch paths, matched outside any write
/// transaction by [`Store::select_push_triggers`] and then handed to [`Store::handle_push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSelection {
    triggers: Vec<TriggerId>,
}

/// What handling a push delivery did.
#[derive(Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// This delivery id was handled before: nothing new.
    Duplicate,
    /// The builds it queued (possibly none).
    Handled(Vec<(BuildId, TriggerId)>),
}

impl Store {
    /// Records a delivery that causes no build (other events, tags, deletions); false for a redelivery.
    pub async fn record_delivery(&self, delivery: &str, event: &str) -> anyhow::Result<bool> {
        let mut w = self.begin_write().await?;
        let new = insert_delivery(&mut w, delivery, event).await?;
        w.commit().await?;
        Ok(new)
    }

    /// Matches a push against the branch filters and watch paths of the live triggers of GitHub
    /// connections to its repository. The triggers are read without a write transaction and matched
    /// on a blocking thread (up to 2,999 paths against a few hundred patterns): the cost of a large
    /// push falls on its own delivery, never on the store's writers. A delivery is matched against
    /// the filters as they are when it arrives.
    pub async fn select_push_triggers(&self, push: &Push) -> anyhow::Result<PushSelection> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .context("reading the repository's triggers")?;
        let triggers = repo_triggers(&mut conn, &push.repo_id, push.installation_id).await?;
        drop(conn);
        let push = push.clone();
        tokio::task::spawn_blocking(move || PushSelection {
            triggers: triggers
                .into_iter()
                .filter(|t| {
                    branch_selected(&t.branch_includes, &t.branch_excludes, &push.branch)
                        && paths_selected(
                            &t.path_includes,
                            &t.path_excludes,
                            &push.changed_paths,
                            push.commit_count,
                        )
                })
                .map(|t| t.id)
                .collect(),
        })
        .await
        .context("matching a push against watch paths")
    }

    /// Queues one build of the pushed commit for every trigger in `selection` (from
    /// [`Store::select_push_triggers`]) that is still live, and records the delivery — atomically.
    /// Builds carry the branch's open pull request. A trigger whose build of the same head and branch
    /// from the pull request's event arrived together with this push (see the module's doc) builds
    /// nothing more; that build, if still queued, then builds without checking watch paths (this
    /// push selected the trigger by itself).
    pub async fn handle_push(
        &self,
        delivery: &str,
        push: &Push,
        selection: &PushSelection,
    ) -> anyhow::Result<DeliveryOutcome> {
        let mut w = self.begin_write().await?;
        if !insert_delivery(&mut w, delivery, "push").await? {
            w.commit().await?;
            return Ok(DeliveryOutcome::Duplicate);
        }
        // A push and a pull_request event for one commit arrive together: one at a time per repository.
        self.lock_key(&mut w, &format!("github-repo:{}", push.repo_id))
            .await?;
        if let Some(installation) = push.installation_id {
            remember_installation(&mut w, &push.repo_id, installation).await?;
        }
        let mut queued = Vec::new();
        for t in repo_triggers(&mut w.tx, &push.repo_id, push.installation_id).await? {
            if !selection.triggers.contains(&t.id) {
                continue;
            }
            let paired = paired_build(
                &mut w,
                t.id,
                &push.after,
                &push.branch,
                TriggerSource::PullRequest,
            )
            .await?;
            if let Some(build) = paired {
                // The push selects the trigger by itself: the joined build needs no check of its own.
                skip_watch_path_check(&mut w, build).await?;
                continue;
            }
            let new = NewBuild {
                trigger: t.id,
                source: TriggerSource::Push,
                branch: Some(push.branch.clone()),
                commit_hash: Some(push.after.clone()),
                commit_message: push.commit_message.clone(),
                author: push.author.clone(),
                // Attached by insert_build when the branch has an open pull request.
                pull_request: None,
                deploy_hook: None,
                seed: None,
                watch_paths: None,
            };
            if let Some((build, _)) = self.insert_build_in(&mut w, &t.account, &new).await? {
                queued.push((build, t.id));
            }
        }
        self.finish_delivery(w, delivery, queued).await
    }

    /// Opened, reopened or synchronized pull requests build their head commit with every trigger whose
    /// branch filters select the head branch, unless the push of that head arrived together with the
    /// event (see the module's doc); closed ones stop being attached to the branch's builds. The
    /// payload lists no files: a trigger with watch paths gets a build that checks them against the
    /// pull request's changes when it starts ([`WatchPathCheck`]) and ends `skipped` if none matches.
    pub async fn handle_pull_request(
        &self,
        delivery: &str,
        ev: &PullRequestEvent,
    ) -> anyhow::Result<DeliveryOutcome> {
        let mut w = self.begin_write().await?;
        if !insert_delivery(&mut w, delivery, "pull_request").await? {
            w.commit().await?;
            return Ok(DeliveryOutcome::Duplicate);
        }
        self.lock_key(&mut w, &format!("github-repo:{}", ev.repo_id))
            .await?;
        if let Some(installation) = ev.installation_id {
            remember_installation(&mut w, &ev.repo_id, installation).await?;
        }
        let now = Timestamp::now().millis();
        match ev.action {
            PullRequestAction::Ignore => {}
            PullRequestAction::Close => {
                sqlx::query(
                    "UPDATE pull_requests SET closed_on = $1 WHERE repo_id = $2 AND number = $3",
                )
                .bind(now)
                .bind(&ev.repo_id)
                .bind(ev.number)
                .execute(&mut *w.tx)
                .await
                .context("closing a pull request")?;
            }
            PullRequestAction::Build => {
                sqlx::query(
                    "INSERT INTO pull_requests (repo_id, number, head_branch, url, created_on) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (repo_id, number) DO UPDATE SET head_branch = excluded.head_branch, url = excluded.url, closed_on = NULL",
                )
                .bind(&ev.repo_id)
                .bind(ev.number)
                .bind(&ev.head_branch)
                .bind(&ev.url)
                .bind(ev.created_on.millis())
                .execute(&mut *w.tx)
                .await
                .context("recording a pull request")?;
            }
        }
        let mut queued = Vec::new();
        if ev.action == PullRequestAction::Build {
            let pull_request = Some(PullRequest {
                created_on: ev.created_on,
                pull_request_url: ev.url.clone(),
            });
            for t in repo_triggers(&mut w.tx, &ev.repo_id, ev.installation_id).await? {
                if !branch_selected(&t.branch_includes, &t.branch_excludes, &ev.head_branch) {
                    continue;
                }
                let paired = paired_build(
                    &mut w,
                    t.id,
                    &ev.head_sha,
                    &ev.head_branch,
                    TriggerSource::Push,
                )
                .await?;
                if let Some(build) = paired {
                    if let Some(pr) = &pull_request {
                        attach_pull_request(&mut w, build, pr).await?;
                    }
                    continue;
                }
                let new = NewBuild {
                    trigger: t.id,
                    source: TriggerSource::PullRequest,
                    branch: Some(ev.head_branch.clone()),
                    commit_hash: Some(ev.head_sha.clone()),
                    commit_message: None,
                    author: None,
                    pull_request: pull_request.clone(),
                    deploy_hook: None,
                    seed: None,
                    watch_paths: WatchPathCheck::for_pull_request(
                        &t.path_includes,
                        &t.path_excludes,
                        ev.base_branch.as_deref(),
                        ev.base_sha.as_deref(),
                    ),
                };
                if let Some((build, _)) = self.insert_build_in(&mut w, &t.account, &new).await? {
                    queued.push((build, t.id));
                }
            }
        }
        self.finish_delivery(w, delivery, queued).await
    }

    /// Counts the delivery's builds and commits (with the supersedes the new builds made).
    async fn finish_delivery(
        &self,
        mut w: super::WriteTx<'_>,
        delivery: &str,
        queued: Vec<(BuildId, TriggerId)>,
    ) -> anyhow::Result<DeliveryOutcome> {
        sqlx::query("UPDATE webhook_deliveries SET build_count = $1 WHERE delivery_id = $2")
            .bind(queued.len() as i64)
            .bind(delivery)
            .execute(&mut *w.tx)
            .await
            .context("counting the delivery's builds")?;
        self.commit_queued(w).await?;
        Ok(DeliveryOutcome::Handled(queued))
    }

    /// The GitHub App installation last seen for a repository (by GitHub's numeric `repo_id`): the one
    /// named by the newest signed delivery about it, i.e. GitHub's word that it covers the repository.
    pub async fn get_installation(&self, repo_id: &str) -> anyhow::Result<Option<i64>> {
        let row =
            sqlx::query("SELECT installation_id FROM github_installations WHERE repo_id = $1")
                .bind(repo_id)
                .fetch_optional(&self.pool)
                .await
                .context("reading an installation")?;
        row.map(|r| r.try_get("installation_id").map_err(Into::into))
            .transpose()
    }
}

/// A live trigger of a GitHub repository, with its filters.
struct RepoTrigger {
    id: TriggerId,
    account: AccountId,
    branch_includes: Vec<String>,
    branch_excludes: Vec<String>,
    path_includes: Vec<String>,
    path_excludes: Vec<String>,
}

/// The live triggers of the GitHub repository `repo_id` whose accounts own `installation`, the App
/// installation the delivery names (GitHub's word that it covers the repository). A delivery without
/// one (a repository or organization webhook rather than the App's) reaches no trigger: nothing then
/// says which account the repository belongs to, and a connection (any account can name any
/// repository) is no proof.
async fn repo_triggers(
    conn: &mut sqlx::AnyConnection,
    repo_id: &str,
    installation: Option<i64>,
) -> anyhow::Result<Vec<RepoTrigger>> {
    let Some(installation) = installation else {
        return Ok(Vec::new());
    };
    let rows = sqlx::query(
        "SELECT t.uuid AS uuid, t.account_id AS account_id, t.branch_includes AS branch_includes, \
         t.branch_excludes AS branch_excludes, t.path_includes AS path_includes, t.path_excludes AS path_excludes \
         FROM triggers t JOIN repo_connections c ON c.uuid = t.repo_connection_uuid \
         JOIN github_installation_accounts l ON l.account_id = t.account_id AND l.installation_id = $2 \
         WHERE c.provider_type = 'github' AND c.repo_id = $1 AND c.deleted_on IS NULL AND t.deleted_on IS NULL \
         ORDER BY t.created_on, t.uuid",
    )
    .bind(repo_id)
    .bind(installation)
    .fetch_all(conn)
    .await
    .context("finding the repository's triggers")?;
    rows.iter()
        .map(|t| {
            Ok(RepoTrigger {
                id: TriggerId::from_stored(&text(t, "uuid")?)?,
                account: AccountId::from_stored(text(t, "account_id")?),
                branch_includes: list(t, "branch_includes")?,
                branch_excludes: list(t, "branch_excludes")?,
                path_includes: list(t, "path_includes")?,
                path_excludes: list(t, "path_excludes")?,
            })
        })
        .collect()
}

/// Records a delivery; false when it was recorded before (a redelivery).
async fn insert_delivery(
    w: &mut super::WriteTx<'_>,
    delivery: &str,
    event: &str,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO webhook_deliveries (delivery_id, event, received_on, build_count) VALUES ($1, $2, $3, 0) \
         ON CONFLICT (delivery_id) DO NOTHING",
    )
    .bind(delivery)
    .bind(event)
    .bind(Timestamp::now().millis())
    .execute(&mut *w.tx)
    .await
    .context("recording a delivery")?;
    Ok(done.rows_affected() == 1)
}

async fn remember_installation(
    w: &mut super::WriteTx<'_>,
    repo_id: &str,
    installation: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO github_installations (repo_id, installation_id, modified_on) VALUES ($1, $2, $3) \
         ON CONFLICT (repo_id) DO UPDATE SET installation_id = excluded.installation_id, modified_on = excluded.modified_on",
    )
    .bind(repo_id)
    .bind(installation)
    .bind(Timestamp::now().millis())
    .execute(&mut *w.tx)
    .await
    .context("remembering the installation")?;
    Ok(())
}

/// The newest open pull request whose head is `branch`, for a build of `account`: only when the
/// account owns the App installation that covers the repository (another account's connection to the
/// repository learns nothing of its pull requests, and its builds never reach their comments).
pub(super) async fn open_pull_request(
    w: &mut super::WriteTx<'_>,
    repo_id: &str,
    branch: &str,
    account: &AccountId,
) -> anyhow::Result<Option<PullRequest>> {
    let row = sqlx::query(
        "SELECT p.url AS url, p.created_on AS created_on FROM pull_requests p \
         JOIN github_installations i ON i.repo_id = p.repo_id \
         JOIN github_installation_accounts l ON l.installation_id = i.installation_id AND l.account_id = $3 \
         WHERE p.repo_id = $1 AND p.head_branch = $2 AND p.closed_on IS NULL \
         ORDER BY p.number DESC LIMIT 1",
    )
    .bind(repo_id)
    .bind(branch)
    .bind(account.as_str())
    .fetch_optional(&mut *w.tx)
    .await
    .context("finding the branch's pull request")?;
    row.map(|r| {
        Ok(PullRequest {
            created_on: ts(&r, "created_on")?,
            pull_request_url: text(&r, "url")?,
        })
    })
    .transpose()
}

/// The build of `trigger` for `commit` on `branch` that the other event of a push/pull_request pair
/// (`other`) queued, when it arrived together with this one: still queued, initializing or running, or
/// created less than [`PAIR_WINDOW_MS`] ago. The newest such build.
async fn paired_build(
    w: &mut super::WriteTx<'_>,
    trigger: TriggerId,
    commit: &str,
    branch: &str,
    other: TriggerSource,
) -> anyhow::Result<Option<BuildId>> {
    let row = sqlx::query(
        "SELECT uuid FROM builds WHERE trigger_uuid = $1 AND commit_hash = $2 AND branch = $3 \
         AND trigger_source = $4 AND (status <> $6 OR created_on >= $5) ORDER BY id DESC LIMIT 1",
    )
    .bind(trigger.to_string())
    .bind(commit)
    .bind(branch)
    .bind(other.as_str())
    .bind(Timestamp::now().millis() - PAIR_WINDOW_MS)
    .bind(BuildStatus::Stopped.as_str())
    .fetch_optional(&mut *w.tx)
    .await
    .context("looking for the paired build of the commit")?;
    row.map(|r| BuildId::from_stored(&text(&r, "uuid")?))
        .transpose()
}

/// A queued pull-request build joined by a push that selects its trigger builds without checking
/// watch paths (a push with no file list, say, always builds).
async fn skip_watch_path_check(w: &mut super::WriteTx<'_>, build: BuildId) -> anyhow::Result<()> {
    sqlx::query("UPDATE builds SET watch_paths = NULL WHERE uuid = $1 AND status = $2")
        .bind(build.to_string())
        .bind(BuildStatus::Queued.as_str())
        .execute(&mut *w.tx)
        .await
        .context("dropping a build's watch-path check")?;
    Ok(())
}

/// A push build joined by its pull request's event carries the pull request (unless it has one).
async fn attach_pull_request(
    w: &mut super::WriteTx<'_>,
    build: BuildId,
    pr: &PullRequest,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE builds SET pull_request = $1, pr_url = $2 WHERE uuid = $3 AND pull_request IS NULL",
    )
    .bind(serde_json::to_string(pr)?)
    .bind(&pr.pull_request_url)
    .bind(build.to_string())
    .execute(&mut *w.tx)
    .await
    .context("attaching the pull request to its build")?;
    Ok(())
}
