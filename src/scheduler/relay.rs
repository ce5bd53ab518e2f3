//! The cancel relay: follows the build events outbox and stops the builds running on this node
//! that were ended elsewhere — cancelled through any node's API, deleted with their trigger or
//! Worker configuration, or taken for lost by another node's recovery. A cancel accepted on node A
//! so reaches node B's runner as soon as B's bus wakes (PostgreSQL `LISTEN/NOTIFY`), and B's steps
//! get TERM, then KILL after the cancel grace; the lease renewal only catches what this misses.

use std::time::Duration;

use tokio::sync::watch;

use super::{SchedulerHandle, Stop};
use crate::domain::{BuildOutcome, BuildStatus};
use crate::store::Store;

/// Events read per query.
const PAGE: i64 = 500;

/// How long to wait before reading again after the store failed.
const RETRY: Duration = Duration::from_secs(1);

/// Runs until `shutdown` turns true.
pub(super) async fn run(
    store: Store,
    handle: SchedulerHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    // Subscribed before the first read: an event appended after it wakes the loop below.
    let mut events = store.events().subscribe();
    // Builds running here were claimed after this point: older events are not theirs.
    let mut cursor = loop {
        match store.last_build_event_seq().await {
            Ok(seq) => break seq,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "reading the last build event failed"
                );
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        }
    };
    loop {
        let retry = match relay_after(&store, &handle, &mut cursor).await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "reading build events failed");
                Some(RETRY)
            }
        };
        tokio::select! {
            _ = events.changed(), if retry.is_none() => {}
            _ = tokio::time::sleep(retry.unwrap_or_default()), if retry.is_some() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Stops the builds running here that an event after `cursor` says stopped; moves `cursor` on.
async fn relay_after(
    store: &Store,
    handle: &SchedulerHandle,
    cursor: &mut i64,
) -> anyhow::Result<()> {
    loop {
        let page = store.build_events_after(*cursor, PAGE).await?;
        for event in &page {
            *cursor = event.seq;
            if event.status == BuildStatus::Stopped {
                // A runner's own outcome lands here too, after its run: nothing listens then.
                let why = match event.outcome {
                    Some(BuildOutcome::Cancelled) => Stop::Cancel,
                    _ => Stop::LeaseLost,
                };
                handle.stop(event.build, why);
            }
        }
        if (page.len() as i64) < PAGE {
            return Ok(());
        }
    }
}
