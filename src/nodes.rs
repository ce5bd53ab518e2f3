//! This node's announcement of its build slots to the other nodes: a row in the store renewed like
//! a lease while the node runs builds and withdrawn when it stops. The queue explanation counts the
//! runner slots of the live nodes from it (a node whose announcement lapsed counts as gone).

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::domain::Timestamp;
use crate::store::Store;

/// A node's announcement, renewed in the background until [`Announcement::withdraw`].
pub struct Announcement {
    store: Store,
    node_id: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Announcement {
    /// Announces `slots` build slots of node `node_id` now, then every third of `lease`, each
    /// announcement holding for `lease` (as runners renew their claims). A failed announcement is
    /// logged and retried at the next renewal: builds do not depend on it.
    pub async fn start(
        store: Store,
        node_id: String,
        slots: usize,
        lease: Duration,
    ) -> Announcement {
        let slots = u32::try_from(slots).unwrap_or(u32::MAX);
        announce(&store, &node_id, slots, lease).await;
        let (stop, mut stopped) = watch::channel(false);
        let (renewing, id) = (store.clone(), node_id.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => return,
                    () = tokio::time::sleep(lease / 3) => announce(&renewing, &id, slots, lease).await,
                }
            }
        });
        Announcement {
            store,
            node_id,
            stop,
            task,
        }
    }

    /// Stops renewing and withdraws the announcement (the node runs no more builds).
    pub async fn withdraw(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the runner node announcement task panicked");
        }
        if let Err(e) = self.store.withdraw_runner_node(&self.node_id).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "withdrawing this node's build slots failed; they lapse with the lease"
            );
        }
    }
}

async fn announce(store: &Store, node_id: &str, slots: u32, lease: Duration) {
    let until = Timestamp::from_millis(
        Timestamp::now().millis() + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2),
    );
    if let Err(e) = store.announce_runner_node(node_id, slots, until).await {
        tracing::warn!(
            error = format!("{e:#}"),
            "announcing this node's build slots failed; retrying at the next renewal"
        );
    }
}
