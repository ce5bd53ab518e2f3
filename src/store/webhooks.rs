//! GitHub deliveries: each handled once, in the same transaction as the builds it causes.

use anyhow::Context;
use sqlx::Row;

use super::Store;
use super::builds::NewBuild;
use super::rows::{list, text};
use crate::domain::{
    AccountId, BuildId, Timestamp, TriggerId, TriggerSource, branch_selected, paths_selected,
};
use crate::github::Push;

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
        w.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Queues one build of the pushed commit for every trigger of a GitHub connection to the repository
    /// whose branch filters and watch paths select the push, and records the delivery — atomically.
    pub async fn handle_push(
        &self,
        delivery: &str,
        push: &Push,
    ) -> anyhow::Result<DeliveryOutcome> {
        let mut w = self.begin_write().await?;
        self.lock_key(&mut w, &format!("delivery:{delivery}"))
            .await?;
        let done = sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_id, event, received_on, build_count) VALUES ($1, 'push', $2, 0) \
             ON CONFLICT (delivery_id) DO NOTHING",
        )
        .bind(delivery)
        .bind(Timestamp::now().millis())
        .execute(&mut *w.tx)
        .await
        .context("recording a delivery")?;
        if done.rows_affected() != 1 {
            return Ok(DeliveryOutcome::Duplicate);
        }
        if let Some(installation) = push.installation_id {
            sqlx::query(
                "INSERT INTO github_installations (repo_id, installation_id, modified_on) VALUES ($1, $2, $3) \
                 ON CONFLICT (repo_id) DO UPDATE SET installation_id = excluded.installation_id, modified_on = excluded.modified_on",
            )
            .bind(&push.repo_id)
            .bind(installation)
            .bind(Timestamp::now().millis())
            .execute(&mut *w.tx)
            .await
            .context("remembering the installation")?;
        }
        let triggers = sqlx::query(
            "SELECT t.uuid AS uuid, t.account_id AS account_id, t.branch_includes AS branch_includes, \
             t.branch_excludes AS branch_excludes, t.path_includes AS path_includes, t.path_excludes AS path_excludes \
             FROM triggers t JOIN repo_connections c ON c.uuid = t.repo_connection_uuid \
             WHERE c.provider_type = 'github' AND c.repo_id = $1 AND c.deleted_on IS NULL AND t.deleted_on IS NULL \
             ORDER BY t.created_on, t.uuid",
        )
        .bind(&push.repo_id)
        .fetch_all(&mut *w.tx)
        .await
        .context("finding the repository's triggers")?;
        let mut queued = Vec::new();
        for t in &triggers {
            let branch_ok = branch_selected(
                &list(t, "branch_includes")?,
                &list(t, "branch_excludes")?,
                &push.branch,
            );
            let paths_ok = paths_selected(
                &list(t, "path_includes")?,
                &list(t, "path_excludes")?,
                &push.changed_paths,
                push.commit_count,
            );
            if !(branch_ok && paths_ok) {
                continue;
            }
            let trigger = TriggerId::from_stored(&text(t, "uuid")?)?;
            let account = AccountId::from_stored(text(t, "account_id")?);
            let new = NewBuild {
                trigger,
                source: TriggerSource::Push,
                branch: Some(push.branch.clone()),
                commit_hash: Some(push.after.clone()),
                commit_message: push.commit_message.clone(),
                author: push.author.clone(),
                pull_request: None,
                deploy_hook: None,
            };
            if let Some((build, _)) = self.insert_build_in(&mut w, &account, &new).await? {
                queued.push((build, trigger));
            }
        }
        sqlx::query("UPDATE webhook_deliveries SET build_count = $1 WHERE delivery_id = $2")
            .bind(queued.len() as i64)
            .bind(delivery)
            .execute(&mut *w.tx)
            .await
            .context("counting the delivery's builds")?;
        w.commit().await?;
        for (build, trigger) in &queued {
            self.supersede_queued_builds(*trigger, &push.branch, *build)
                .await?;
        }
        Ok(DeliveryOutcome::Handled(queued))
    }

    /// The GitHub App installation last seen for a repository.
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
