//! The scheduler inside `kiln serve`: claims queued builds through the store (oldest first, per-account
//! concurrency, leases), runs each in a build slot, relays cancels, and recovers builds whose runner died.
//!
//! It waits on the store's [`crate::events::EventBus`]: a build queued, or a build stopped (which may
//! free an account slot), on this node or another, wakes it at once; the poll interval is only a
//! fallback. [`relay`] stops the builds running here that the event stream says were ended elsewhere.

mod relay;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::domain::{BuildId, Timestamp};
use crate::runner::{self, RunnerContext};
use crate::store::Store;

/// Why a running build must stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep running.
    No,
    /// Cancelled by a user (the store already says `cancelled`).
    Cancel,
    /// Kiln is shutting down.
    Shutdown,
    /// Another node took the build over or it was ended elsewhere.
    LeaseLost,
}

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Build slots on this node; 0 runs no builds here.
    pub runners: usize,
    /// Concurrent builds per account unless `kiln accounts set` says otherwise.
    pub default_concurrency: i64,
    /// How long a claim lasts without renewal; runners renew at a third of it.
    pub lease: Duration,
    /// How often to look for work and events without a wake-up: a fallback for what no notification
    /// announces (several processes on one SQLite file, `kiln accounts set`, a PostgreSQL listener
    /// reconnecting).
    pub poll_interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            runners: 2,
            default_concurrency: 2,
            lease: Duration::from_secs(30),
            poll_interval: crate::events::DEFAULT_POLL_INTERVAL,
        }
    }
}

#[derive(Default)]
struct Shared {
    running: Mutex<HashMap<BuildId, watch::Sender<Stop>>>,
}

/// What the API uses to talk to the scheduler: relay a cancel to a build running on this node
/// without waiting for its event to be read back.
#[derive(Clone, Default)]
pub struct SchedulerHandle {
    shared: Arc<Shared>,
}

impl SchedulerHandle {
    /// Stops a build if it runs on this node (its processes get TERM, then KILL after the grace).
    pub fn cancel(&self, id: BuildId) {
        self.stop(id, Stop::Cancel);
    }

    /// Stops a build if it runs on this node, for `why`.
    fn stop(&self, id: BuildId, why: Stop) {
        if let Ok(running) = self.shared.running.lock()
            && let Some(tx) = running.get(&id)
        {
            let _ = tx.send(why);
        }
    }

    fn register(&self, id: BuildId) -> (watch::Sender<Stop>, watch::Receiver<Stop>) {
        let (tx, rx) = watch::channel(Stop::No);
        if let Ok(mut running) = self.shared.running.lock() {
            running.insert(id, tx.clone());
        }
        (tx, rx)
    }

    /// The builds running on this node now.
    fn running(&self) -> Vec<BuildId> {
        self.shared
            .running
            .lock()
            .map(|running| running.keys().copied().collect())
            .unwrap_or_default()
    }

    fn unregister(&self, id: BuildId) {
        if let Ok(mut running) = self.shared.running.lock() {
            running.remove(&id);
        }
    }

    fn stop_all(&self, why: Stop) {
        if let Ok(running) = self.shared.running.lock() {
            for tx in running.values() {
                let _ = tx.send(why);
            }
        }
    }
}

/// The claim loop of one node.
pub struct Scheduler {
    store: Store,
    config: SchedulerConfig,
    handle: SchedulerHandle,
    runner: Arc<RunnerContext>,
    node_id: String,
}

impl Scheduler {
    /// A scheduler for node `node_id` (stable across restarts of this node).
    pub fn new(
        store: Store,
        config: SchedulerConfig,
        runner: RunnerContext,
        node_id: String,
        handle: SchedulerHandle,
    ) -> Self {
        Scheduler {
            store,
            config,
            handle,
            runner: Arc::new(runner),
            node_id,
        }
    }

    /// Runs until `shutdown` turns true; then stops the builds in progress and waits for them.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let incarnation = uuid::Uuid::new_v4().simple().to_string();
        let owner = format!("{}/{}", self.node_id, incarnation);
        // Whatever this node was running before it restarted has no runner any more.
        self.recover(Some(&format!("{}/", self.node_id))).await;
        // Subscribed before the first claim: nothing appended after it goes unnoticed.
        let mut events = self.store.events().subscribe();
        let relay = tokio::spawn(relay::run(
            self.store.clone(),
            self.handle.clone(),
            shutdown.clone(),
        ));
        let slots = Arc::new(Semaphore::new(self.config.runners));
        let mut tasks = JoinSet::new();
        let mut recovery = tokio::time::interval(self.config.lease / 2);
        recovery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.changed() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                _ = recovery.tick() => {
                    self.recover(None).await;
                    continue;
                }
            };
            let lease_until = runner::lease_until(self.config.lease);
            match self
                .store
                .claim_build(&owner, lease_until, self.config.default_concurrency)
                .await
            {
                Ok(Some(build)) => {
                    let id = build.id;
                    let (tx, rx) = self.handle.register(id);
                    let ctx = self.runner.clone();
                    let handle = self.handle.clone();
                    let owner = owner.clone();
                    let lease = self.config.lease;
                    tasks.spawn(async move {
                        runner::run_build(ctx, build, owner, lease, tx, rx).await;
                        handle.unregister(id);
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = events.changed() => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = shutdown.changed() => break,
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::error!(error = format!("{e:#}"), "claiming a build failed");
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = shutdown.changed() => break,
                    }
                }
            }
        }
        self.handle.stop_all(Stop::Shutdown);
        while tasks.join_next().await.is_some() {}
        if let Err(e) = relay.await {
            tracing::error!(error = %e, "the cancel relay panicked");
        }
    }

    /// Ends the builds whose runner is gone. Before any is reported ended, what Kiln processes that
    /// died left running on this host is killed (their steps, by cgroup); after, whatever is left
    /// of each ended build here (a runner still alive that lost its lease also stops its steps).
    async fn recover(&self, dead_owner_prefix: Option<&str>) {
        if let Ok(orphans) = tokio::task::spawn_blocking(crate::sandbox::kill_orphaned_builds).await
            && orphans > 0
        {
            tracing::info!(
                orphans,
                "killed what builds of dead Kiln processes left on this host"
            );
        }
        let running_here = self.handle.running();
        match self
            .store
            .recover_lost_builds(Timestamp::now(), dead_owner_prefix, &running_here)
            .await
        {
            Ok(lost) => {
                for b in lost {
                    tracing::warn!(build.uuid = %b.id, account = %b.account, "build terminated: its runner was lost");
                    let id = b.id.to_string();
                    if let Err(e) =
                        tokio::task::spawn_blocking(move || crate::sandbox::kill_build(&id)).await
                    {
                        tracing::error!(error = %e, "killing what is left of a lost build failed");
                    }
                }
            }
            Err(e) => tracing::error!(error = format!("{e:#}"), "recovering lost builds failed"),
        }
    }
}
