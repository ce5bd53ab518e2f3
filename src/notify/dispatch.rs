//! The dispatcher: leases due deliveries, sends each on its own task, records every attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::sign::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, signature};
use super::{NotifyConfig, NotifyHandle};
use crate::domain::{DeliveryStatus, RetryPolicy, SubscriptionId, Timestamp};
use crate::metrics::{Metrics, NotificationResult};
use crate::store::{AttemptRecord, ClaimedDelivery, Store};

/// Attempts of one subscription in flight at once on a node: an endpoint that hangs holds at most
/// these slots (and one attempt per build: a build's events go in order).
pub const PER_SUBSCRIPTION_IN_FLIGHT: usize = 4;
/// The most of an answer's body that is read, in bytes (the rest is dropped with the connection).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How long a lease on a delivery lasts past its attempt's timeout: another node takes the delivery
/// over only when this node is gone.
const LEASE_MARGIN: Duration = Duration::from_secs(60);
/// The longest the dispatcher waits without looking for due deliveries (those of other nodes'
/// lapsed leases, and those queued by other nodes).
const POLL: Duration = Duration::from_secs(1);

pub(super) async fn run(
    store: Store,
    config: NotifyConfig,
    handle: NotifyHandle,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match client(config.timeout) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "cannot build the notification HTTP client: no event notifications are sent"
            );
            return;
        }
    };
    // Leases name this dispatcher: a restarted node does not mistake another run's for its own.
    let owner = format!("notify-{}", uuid::Uuid::new_v4().simple());
    let lease = config.timeout + LEASE_MARGIN;
    let mut tasks: JoinSet<SubscriptionId> = JoinSet::new();
    let mut in_flight: HashMap<SubscriptionId, usize> = HashMap::new();
    loop {
        let free = config.concurrency.saturating_sub(tasks.len());
        let now = Timestamp::now();
        let claimed = match store
            .claim_deliveries(
                &owner,
                now,
                now.plus(lease),
                free,
                &in_flight,
                PER_SUBSCRIPTION_IN_FLIGHT,
            )
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "finding deliveries to send failed"
                );
                Vec::new()
            }
        };
        let got = claimed.len();
        for delivery in claimed {
            *in_flight.entry(delivery.subscription).or_default() += 1;
            tasks.spawn(attempt(
                store.clone(),
                client.clone(),
                owner.clone(),
                config.retry,
                metrics.clone(),
                delivery,
            ));
        }
        // More may be due: look again at once while slots are free.
        if got > 0 && tasks.len() < config.concurrency {
            continue;
        }
        let wait = match store.next_delivery_due().await {
            Ok(Some(due)) if due > now => due.since(now).min(POLL),
            _ => POLL,
        };
        tokio::select! {
            Some(done) = tasks.join_next() => {
                if let Ok(subscription) = done
                    && let Some(n) = in_flight.get_mut(&subscription)
                {
                    *n -= 1;
                    if *n == 0 {
                        in_flight.remove(&subscription);
                    }
                }
            }
            _ = handle.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => break,
        }
    }
    tasks.shutdown().await;
    match store.release_deliveries(&owner).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            deliveries = n,
            "stopped with notification attempts in flight: they are due again"
        ),
        Err(e) => tracing::warn!(
            error = format!("{e:#}"),
            "releasing delivery leases failed: they are due again when the leases lapse"
        ),
    }
}

/// The HTTP client of deliveries: the system's CA store (reqwest's `rustls-tls-native-roots`), the
/// host's proxy variables, `timeout` for connecting and for the whole attempt, no redirects (a 3xx
/// answer is a failed attempt: the signature is for the configured URL).
fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The endpoint answered with this status.
    Status(u16),
    /// No answer within the timeout.
    TimedOut,
    /// No connection (refused, DNS, TLS).
    Unreachable,
    /// The request failed otherwise.
    Failed,
}

impl Answer {
    /// The text recorded as the delivery's `last_error` for a failure: fixed texts, never an error
    /// chain (which could name internal hosts or the URL).
    fn error(self) -> Option<String> {
        match self {
            Answer::Status(code) if (200..300).contains(&code) => None,
            Answer::Status(code) => Some(format!("HTTP {code}")),
            Answer::TimedOut => Some("timed out".to_owned()),
            Answer::Unreachable => Some("connection failed".to_owned()),
            Answer::Failed => Some("request failed".to_owned()),
        }
    }
}

/// Sends one delivery and records the result; returns its subscription (for the in-flight counts).
async fn attempt(
    store: Store,
    client: reqwest::Client,
    owner: String,
    retry: RetryPolicy,
    metrics: Arc<Metrics>,
    delivery: ClaimedDelivery,
) -> SubscriptionId {
    let answer = send(&client, &delivery).await;
    let now = Timestamp::now();
    let attempts = delivery.attempts + 1;
    let code = match answer {
        Answer::Status(code) => Some(i64::from(code)),
        _ => None,
    };
    let error = answer.error();
    let (status, next) = if error.is_none() {
        (DeliveryStatus::Delivered, now)
    } else {
        let next = now.plus(retry.delay(attempts, rand::random::<f64>()));
        if next > delivery.retry_until {
            (DeliveryStatus::Failed, now)
        } else {
            (DeliveryStatus::Pending, next)
        }
    };
    metrics.notification_delivery(match status {
        DeliveryStatus::Delivered => NotificationResult::Delivered,
        DeliveryStatus::Pending => NotificationResult::Failed,
        DeliveryStatus::Failed => NotificationResult::Abandoned,
    });
    match status {
        DeliveryStatus::Delivered => tracing::info!(
            delivery = %delivery.id, subscription = %delivery.subscription,
            build.uuid = %delivery.build, event = delivery.event_type.as_str(), code, attempts,
            "event delivered"
        ),
        DeliveryStatus::Pending => tracing::warn!(
            delivery = %delivery.id, subscription = %delivery.subscription,
            build.uuid = %delivery.build, event = delivery.event_type.as_str(), code, attempts,
            error = error.as_deref(), retry_in_ms = next.since(now).as_millis(),
            "event delivery failed: retrying"
        ),
        DeliveryStatus::Failed => tracing::warn!(
            delivery = %delivery.id, subscription = %delivery.subscription,
            build.uuid = %delivery.build, event = delivery.event_type.as_str(), code, attempts,
            error = error.as_deref(), "event delivery failed: giving up"
        ),
    }
    let record = AttemptRecord {
        at: now,
        response_code: code,
        error,
        status,
        next_attempt_on: next,
    };
    match store.record_attempt(delivery.id, &owner, &record).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!(
            delivery = %delivery.id,
            "the delivery was deleted or taken over during its attempt"
        ),
        Err(e) => tracing::error!(
            delivery = %delivery.id, error = format!("{e:#}"),
            "recording a delivery attempt failed: it is attempted again when its lease lapses"
        ),
    }
    delivery.subscription
}

/// POSTs the delivery's body, signed for now, and reads at most [`MAX_RESPONSE_BYTES`] of the answer.
async fn send(client: &reqwest::Client, d: &ClaimedDelivery) -> Answer {
    let id = d.id.to_string();
    let timestamp = Timestamp::now().millis().div_euclid(1000);
    let sig = signature(d.secret.key(), &id, timestamp, &d.body);
    let request = client
        .post(&d.url)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(HEADER_ID, id)
        .header(HEADER_TIMESTAMP, timestamp.to_string())
        .header(HEADER_SIGNATURE, sig)
        .body(d.body.clone());
    let mut response = match request.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Answer::TimedOut,
        Err(e) if e.is_connect() => return Answer::Unreachable,
        Err(_) => return Answer::Failed,
    };
    let code = response.status().as_u16();
    // The status is the answer; the body is read (bounded) only so that the connection ends cleanly.
    let mut read = 0;
    while read < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => break,
        }
    }
    Answer::Status(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_errors_are_short_fixed_texts() {
        assert_eq!(Answer::Status(204).error(), None);
        assert_eq!(Answer::Status(500).error().as_deref(), Some("HTTP 500"));
        assert_eq!(Answer::Status(302).error().as_deref(), Some("HTTP 302"));
        for a in [
            Answer::Status(u16::MAX),
            Answer::TimedOut,
            Answer::Unreachable,
            Answer::Failed,
        ] {
            assert!(a.error().is_some_and(|e| e.len() <= 64));
        }
    }
}
