//! Event notifications (issue 9): build events go to the account's event subscriptions as signed
//! HTTP POSTs. A fan-out step turns the `build_events` outbox into one stored delivery per matching
//! subscription; a dispatcher sends the deliveries that are due, each on its own task (bounded in
//! number, and per subscription), retrying failures with back-off for a day. Neither is on a build's
//! path: a slow or dead endpoint delays nothing but its own deliveries.

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

/// Sends due deliveries until `shutdown` turns true; attempts still in flight then are dropped and
/// their leases released, so that they are due again at once (here after a restart, or on another
/// node): delivery is at least once.
pub async fn run(
    store: Store,
    config: NotifyConfig,
    handle: NotifyHandle,
    shutdown: watch::Receiver<bool>,
) {
    dispatch::run(store, config, handle, shutdown).await;
}
