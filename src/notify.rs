//! Event notifications (issue 9): build events go to the account's event subscriptions as signed
//! HTTP POSTs. A fan-out step turns the `build_events` outbox into one stored delivery per matching
//! subscription ([`Store::fan_out_build_events`], woken by the store's event bus); a dispatcher
//! sends the deliveries that are due, each on its own task (bounded in number, and per
//! subscription), retrying failures with back-off for a day. Neither is on a build's path: a slow or
//! dead endpoint delays nothing but its own deliveries.

mod dispatch;
pub mod sign;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::domain::{RetryPolicy, Timestamp};
use crate::store::Store;

pub use dispatch::{MAX_RESPONSE_BYTES, PER_SUBSCRIPTION_IN_FLIGHT};

/// How a node sends notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyConfig {
    /// Back-off of failed attempts and how long a delivery is retried.
    pub retry: RetryPolicy,
    /// Time limit of one attempt, from connecting to reading the answer (its head, and at most
    /// [`MAX_RESPONSE_BYTES`] of its body).
    pub timeout: Duration,
    /// Attempts in flight at once on this node (each subscription takes at most
    /// [`PER_SUBSCRIPTION_IN_FLIGHT`] of them).
    pub concurrency: usize,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(10),
            concurrency: 32,
        }
    }
}

/// What the API reaches of this node's notifier: a wake-up (a redelivery or an enabled subscription
/// is due at once) and the retry window a redelivery gets. Cheap to clone.
#[derive(Clone)]
pub struct NotifyHandle {
    wake: Arc<Notify>,
    window: Duration,
}

impl NotifyHandle {
    /// A handle for a notifier retrying deliveries for `window`.
    pub fn new(window: Duration) -> Self {
        NotifyHandle {
            wake: Arc::new(Notify::new()),
            window,
        }
    }

    /// Makes the dispatcher look for due deliveries now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Until when a delivery queued or redelivered at `now` is retried.
    pub fn retry_until(&self, now: Timestamp) -> Timestamp {
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        Timestamp::from_millis(now.millis().saturating_add(window))
    }
}

/// Fans build events out to deliveries and sends the due ones until `shutdown` turns true; attempts
/// still in flight then are dropped and their leases released, so that they are due again at once
/// (here after a restart, or on another node): delivery is at least once.
pub async fn run(
    store: Store,
    config: NotifyConfig,
    handle: NotifyHandle,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    let fan_out = tokio::spawn(fan_out(
        store.clone(),
        config.retry.window,
        handle.clone(),
        shutdown.clone(),
    ));
    dispatch::run(store, config, handle, metrics, shutdown).await;
    if let Err(e) = fan_out.await {
        tracing::error!(error = %e, "the notification fan-out panicked");
    }
}

/// Events read from the outbox per fan-out transaction.
const FAN_OUT_BATCH: i64 = 200;
/// The longest the fan-out waits without reading the outbox (a wake-up lost, a store error).
const FAN_OUT_POLL: Duration = Duration::from_secs(5);

/// Turns new build events into deliveries whenever the event bus says some may have been appended,
/// waking the dispatcher when it stored any.
async fn fan_out(
    store: Store,
    window: Duration,
    handle: NotifyHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    // Subscribed before the first read: nothing appended meanwhile goes unnoticed.
    let mut waiter = store.events().subscribe();
    loop {
        loop {
            match store.fan_out_build_events(FAN_OUT_BATCH, window).await {
                Ok(done) => {
                    if done.deliveries > 0 {
                        handle.wake();
                    }
                    if done.events < FAN_OUT_BATCH as usize {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "turning build events into notifications failed: retrying"
                    );
                    break;
                }
            }
        }
        tokio::select! {
            _ = waiter.changed() => {}
            _ = tokio::time::sleep(FAN_OUT_POLL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
