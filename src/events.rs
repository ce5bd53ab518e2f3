//! Wake-ups for the build events outbox (`build_events`, written by [`crate::store`]): whoever
//! consumes events (the scheduler, cancel relay, reporters, live tails) waits on an [`EventBus`]
//! instead of polling, then reads the events after its own cursor with
//! [`Store::build_events_after`](crate::store::Store::build_events_after).
//!
//! * In one process, the store notifies its bus after every commit that appended events.
//! * Across nodes on PostgreSQL, those transactions also `NOTIFY kiln_build_events`; every node runs
//!   a `LISTEN` task ([`spawn_watcher`]) that wakes its bus, and reconnects when its connection drops.
//! * As a slow fallback (SQLite files shared by several processes, notifications lost while the
//!   listener reconnected), the same task compares the last event's `seq` every poll interval.
//!
//! A wake-up says only "events may have been appended": consumers must tolerate spurious ones and
//! read from their cursor.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::store::Store;

/// The PostgreSQL channel that transactions appending build events notify.
pub const CHANNEL: &str = "kiln_build_events";

/// Wakes the consumers of build events. Cheap to clone: clones share subscribers.
#[derive(Clone)]
pub struct EventBus {
    tx: Arc<watch::Sender<u64>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: Arc::new(watch::channel(0).0),
        }
    }
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("subscribers", &self.tx.receiver_count())
            .finish()
    }
}

impl EventBus {
    /// Wakes every subscriber; called after a transaction that appended events commits.
    pub fn notify(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A subscriber; `changed().await` returns when events may have been appended since the last
    /// call (or since it subscribed), on this node or, through PostgreSQL `LISTEN/NOTIFY` on
    /// channel [`CHANNEL`], on another node. Subscribe before reading, so that no event appended
    /// between the read and the wait goes unnoticed.
    pub fn subscribe(&self) -> EventWaiter {
        EventWaiter {
            rx: self.tx.subscribe(),
            _bus: self.tx.clone(),
        }
    }
}

/// One subscriber of an [`EventBus`].
pub struct EventWaiter {
    rx: watch::Receiver<u64>,
    // The bus lives as long as any subscriber: `changed` never sees it closed.
    _bus: Arc<watch::Sender<u64>>,
}

impl EventWaiter {
    /// Returns once events may have been appended since the previous call (at once when a wake-up
    /// came meanwhile; several wake-ups in between count as one).
    pub async fn changed(&mut self) {
        // The sender is kept alive by `_bus`: this never fails.
        let _ = self.rx.changed().await;
    }
}

/// The default of [`spawn_watcher`]'s fallback poll (and the scheduler's): how long a node may miss
/// another node's events when no notification reaches it (SQLite shared by several processes, a
/// PostgreSQL listener reconnecting).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Starts the task that wakes `store`'s bus for events appended by other processes: a PostgreSQL
/// `LISTEN` on [`CHANNEL`] when `database_url` is PostgreSQL, and on every backend a check of the
/// last event's `seq` every `poll`. Ends when `shutdown` turns true.
pub fn spawn_watcher(
    store: Store,
    database_url: Option<String>,
    poll: Duration,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bus = store.events().clone();
        let listen = database_url
            .filter(|url| url.starts_with("postgres://") || url.starts_with("postgresql://"))
            .map(|url| tokio::spawn(listen(url, bus.clone(), shutdown.clone())));
        poll_last_seq(&store, &bus, poll, shutdown).await;
        if let Some(task) = listen {
            let _ = task.await;
        }
    })
}

/// Wakes `bus` whenever the last event's `seq` moved since the previous look, every `every`.
async fn poll_last_seq(
    store: &Store,
    bus: &EventBus,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen = None;
    loop {
        match store.last_build_event_seq().await {
            Ok(seq) => {
                if seen.is_some_and(|s| s != seq) {
                    bus.notify();
                }
                seen = Some(seq);
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "reading the last build event failed"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Longest wait between two attempts to (re)connect the listener.
const MAX_LISTEN_BACKOFF: Duration = Duration::from_secs(10);

/// `LISTEN`s on [`CHANNEL`] on a connection of its own and wakes `bus` on each notification;
/// reconnects (with back-off) when the connection drops, waking `bus` once reconnected since
/// notifications may have been missed meanwhile.
async fn listen(url: String, bus: EventBus, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&url, &bus, &mut shutdown).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                retry_ms = backoff.as_millis() as u64,
                "listening for build events failed; reconnecting"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(MAX_LISTEN_BACKOFF);
    }
}

/// The application name of the listener's connection (`pg_stat_activity.application_name`).
pub const LISTENER_APPLICATION_NAME: &str = "kiln-build-events";

/// One listener connection: returns `Ok` on shutdown, an error when it cannot go on.
async fn listen_once(
    url: &str,
    bus: &EventBus,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .context("parsing the database URL")?
        .application_name(LISTENER_APPLICATION_NAME);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .context("connecting the build events listener")?;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .context("connecting the build events listener")?;
    listener
        .listen(CHANNEL)
        .await
        .context("LISTEN kiln_build_events")?;
    // Whatever was appended while this listener was not connected is looked at now.
    bus.notify();
    loop {
        tokio::select! {
            received = listener.try_recv() => match received.context("receiving a notification")? {
                Some(_) => bus.notify(),
                // The connection dropped; `try_recv` has reconnected and listens again.
                None => {
                    tracing::info!("the build events listener reconnected");
                    bus.notify();
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        }
    }
}
