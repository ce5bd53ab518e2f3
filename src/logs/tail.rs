//! Following a build's log as it is written: the in-process wake-up sent when lines are stored, and
//! the follower behind the live log stream (`GET …/builds/{build_uuid}/logs/stream`).
//!
//! How a follower learns of new lines:
//! * On the node that stores them (the node whose runner runs the build), [`LogWatch`] wakes the
//!   build's followers as soon as [`crate::store::Store::append_build_logs`] has committed a batch: a
//!   line is on its way to the client within a store read of being stored.
//! * A build can run on another node (several nodes on one PostgreSQL), whose wake-ups do not reach
//!   this one. So a follower also reads the store when [`TailConfig::poll_interval`] passes without a
//!   wake-up. It polls only while it has a subscriber (a follower ends with its client), and a wake-up
//!   restarts the interval, so a build logging on this node is read on its wake-ups alone.
//! * The build's status is read with every read of lines. Once it is `stopped`, the follower waits
//!   until no runner may still log (see [`TailState::settles_at`]), reads what was stored meanwhile,
//!   and ends with [`TailEvent::End`].
//!
//! A follower reads the store at its own pace and hands events to its client through a bounded
//! channel: a client that takes nothing for [`TailConfig::send_timeout`] is dropped
//! ([`TailEnd::TooSlow`]). Nothing of this is on the build's path: the build writes its log to the
//! store whatever its readers do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::domain::{AccountId, BuildId, BuildOutcome, BuildStatus, Timestamp};
use crate::store::{LogLimit, Store};

/// How long after a build stopped its log may still grow, in milliseconds, unless it was cancelled
/// while in progress: the note written right after the status change (a superseded build's, a lost
/// runner's).
pub const SETTLE_MS: i64 = 1_000;

/// How long after the cancel grace a cancelled build's runner may still take to log its last line
/// (`Build was cancelled`, written once the build's processes are gone), in milliseconds.
pub const CANCEL_SETTLE_MS: i64 = 2_000;

/// Wakes the followers of a build's log when lines are stored on this node. One per process, kept
/// by the [`Store`]; cheap when nobody follows (a map lookup under a lock).
#[derive(Debug, Default)]
pub struct LogWatch {
    builds: Mutex<HashMap<BuildId, watch::Sender<()>>>,
}

impl LogWatch {
    /// Lines of `build` were stored: wakes its followers.
    pub fn notify(&self, build: BuildId) {
        if let Ok(builds) = self.builds.lock()
            && let Some(tx) = builds.get(&build)
        {
            tx.send_replace(());
        }
    }

    /// A waiter for the lines of `build` stored from now on.
    pub fn subscribe(self: &Arc<Self>, build: BuildId) -> LogWaiter {
        let rx = match self.builds.lock() {
            Ok(mut builds) => builds
                .entry(build)
                .or_insert_with(|| watch::channel(()).0)
                .subscribe(),
            // A poisoned map only loses wake-ups: the follower polls.
            Err(_) => watch::channel(()).1,
        };
        LogWaiter {
            watch: self.clone(),
            build,
            rx,
        }
    }

    /// How many builds have followers on this node.
    pub fn followed(&self) -> usize {
        self.builds.lock().map_or(0, |b| b.len())
    }
}

/// One follower's subscription to [`LogWatch`]; dropping the last one of a build forgets it.
#[derive(Debug)]
pub struct LogWaiter {
    watch: Arc<LogWatch>,
    build: BuildId,
    rx: watch::Receiver<()>,
}

impl LogWaiter {
    /// Returns when lines were stored since the previous call (or since the subscription).
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            // The sender is gone only with the map entry, which outlives its waiters.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for LogWaiter {
    fn drop(&mut self) {
        if let Ok(mut builds) = self.watch.builds.lock()
            && builds
                .get(&self.build)
                .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            builds.remove(&self.build);
        }
    }
}

/// What a follower needs to know of its build besides the lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailState {
    pub status: BuildStatus,
    pub outcome: Option<BuildOutcome>,
    pub stopped_on: Option<Timestamp>,
    /// A runner claimed it (it has an `initializing_on`).
    pub claimed: bool,
}

impl TailState {
    /// When a stopped build's log is complete (`None` while it has not stopped): [`SETTLE_MS`] after
    /// it stopped; for a build cancelled while a runner ran it, once that runner has had
    /// `cancel_grace` to stop its processes and [`CANCEL_SETTLE_MS`] more to log that it did.
    pub fn settles_at(&self, cancel_grace: Duration) -> Option<Timestamp> {
        if self.status != BuildStatus::Stopped {
            return None;
        }
        let stopped = self.stopped_on.map_or(0, Timestamp::millis);
        let settle = if self.claimed && self.outcome == Some(BuildOutcome::Cancelled) {
            i64::try_from(cancel_grace.as_millis()).unwrap_or(i64::MAX / 4) + CANCEL_SETTLE_MS
        } else {
            SETTLE_MS
        };
        Some(Timestamp::from_millis(stopped.saturating_add(settle)))
    }
}

/// One event of a followed log.
#[derive(Debug, Clone, PartialEq)]
pub enum TailEvent {
    /// A stored line; `seq` is its number in the build's log, from 0.
    Line {
        seq: i64,
        at: Timestamp,
        text: String,
    },
    /// The build's status as first read, and each change of it after (only when
    /// [`TailConfig::status_changes`] asks for them).
    Status(TailState),
    /// The build has stopped and every line is sent.
    End(TailState),
}

/// How a follower ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailEnd {
    /// The build stopped; [`TailEvent::End`] was sent.
    Finished,
    /// The client went away.
    Gone,
    /// The client took nothing for [`TailConfig::send_timeout`].
    TooSlow,
    /// The server is shutting down.
    Closing,
    /// The build is not in the account (any more).
    NotFound,
}

/// Tuning of followers.
#[derive(Debug, Clone, Copy)]
pub struct TailConfig {
    /// Time without an in-process wake-up after which the store is read anyway.
    pub poll_interval: Duration,
    /// Time a client may take nothing before it is dropped.
    pub send_timeout: Duration,
    /// Size of one read of lines.
    pub page: LogLimit,
    /// The runners' cancel grace (see [`TailState::settles_at`]).
    pub cancel_grace: Duration,
    /// Send [`TailEvent::Status`] events (the dashboard's build page shows the status as it
    /// changes; the API's stream has only the `end` event).
    pub status_changes: bool,
}

/// Sends `build`'s log lines from line number `from` to `tx`, then new ones as they are stored, then
/// [`TailEvent::End`] once the build has stopped and its log is complete (see the module docs).
/// Returns early when the client goes, is too slow, or `closing` turns true. Errors: the store failed.
pub async fn follow(
    store: &Store,
    account: &AccountId,
    build: BuildId,
    from: i64,
    config: TailConfig,
    tx: &mpsc::Sender<TailEvent>,
    mut closing: watch::Receiver<bool>,
) -> anyhow::Result<TailEnd> {
    // Subscribed before the first read: nothing stored after it can be missed.
    let mut waiter = store.watch_logs(build);
    let mut next = from;
    let mut status_sent: Option<BuildStatus> = None;
    loop {
        if *closing.borrow() {
            return Ok(TailEnd::Closing);
        }
        // The status is read before the lines: when it says the log is complete, the read that
        // follows has every line.
        let Some(state) = store.build_tail_state(account, build).await? else {
            return Ok(TailEnd::NotFound);
        };
        if config.status_changes && status_sent != Some(state.status) {
            status_sent = Some(state.status);
            if let Some(end) = send(tx, TailEvent::Status(state.clone()), config.send_timeout).await
            {
                return Ok(end);
            }
        }
        let settles_at = state.settles_at(config.cancel_grace);
        let complete = settles_at.is_some_and(|at| at <= Timestamp::now());
        let Some(page) = store
            .get_build_logs(account, build, next, config.page)
            .await?
        else {
            return Ok(TailEnd::NotFound);
        };
        for (i, (at, text)) in page.lines.into_iter().enumerate() {
            let event = TailEvent::Line {
                seq: next + i as i64,
                at,
                text,
            };
            if let Some(end) = send(tx, event, config.send_timeout).await {
                return Ok(end);
            }
        }
        next = page.next_seq;
        if page.more {
            continue;
        }
        if complete {
            return Ok(send(tx, TailEvent::End(state), config.send_timeout)
                .await
                .unwrap_or(TailEnd::Finished));
        }
        // A stopped build is read again when its log settles, whatever else happens.
        let wait = match settles_at {
            Some(at) => Duration::from_millis(
                u64::try_from(at.millis() - Timestamp::now().millis())
                    .unwrap_or(0)
                    .min(config.poll_interval.as_millis() as u64),
            ),
            None => config.poll_interval,
        };
        tokio::select! {
            () = waiter.changed() => {}
            () = tokio::time::sleep(wait) => {}
            () = tx.closed() => return Ok(TailEnd::Gone),
            _ = closing.changed() => return Ok(TailEnd::Closing),
        }
    }
}

/// Hands `event` to the client within `timeout`; `Some` says why the follower must end.
async fn send(
    tx: &mpsc::Sender<TailEvent>,
    event: TailEvent,
    timeout: Duration,
) -> Option<TailEnd> {
    match tx.send_timeout(event, timeout).await {
        Ok(()) => None,
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => Some(TailEnd::TooSlow),
        Err(mpsc::error::SendTimeoutError::Closed(_)) => Some(TailEnd::Gone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(outcome: Option<BuildOutcome>, stopped: Option<i64>, claimed: bool) -> TailState {
        TailState {
            status: if outcome.is_some() {
                BuildStatus::Stopped
            } else {
                BuildStatus::Running
            },
            outcome,
            stopped_on: stopped.map(Timestamp::from_millis),
            claimed,
        }
    }

    #[test]
    fn a_stopped_log_settles_once_its_runner_is_done_with_it() {
        let grace = Duration::from_secs(10);
        let at = |s: TailState| s.settles_at(grace).map(Timestamp::millis);
        assert_eq!(at(state(None, None, true)), None);
        // Finished by its runner, skipped, lost: a moment after it stopped.
        for (outcome, claimed) in [
            (BuildOutcome::Success, true),
            (BuildOutcome::Fail, true),
            (BuildOutcome::Skipped, false),
            (BuildOutcome::Terminated, true),
            (BuildOutcome::Cancelled, false),
        ] {
            assert_eq!(
                at(state(Some(outcome), Some(10_000), claimed)),
                Some(10_000 + SETTLE_MS),
                "{outcome:?}"
            );
        }
        // Cancelled while running: its runner logs once the processes are gone.
        assert_eq!(
            at(state(Some(BuildOutcome::Cancelled), Some(10_000), true)),
            Some(10_000 + 10_000 + CANCEL_SETTLE_MS)
        );
    }

    #[tokio::test]
    async fn waiters_wake_on_their_build_only_and_are_forgotten_when_dropped() {
        let watch = Arc::new(LogWatch::default());
        let (a, b) = (BuildId::new(), BuildId::new());
        let mut first = watch.subscribe(a);
        let second = watch.subscribe(a);
        let mut other = watch.subscribe(b);
        assert_eq!(watch.followed(), 2);
        watch.notify(a);
        tokio::time::timeout(Duration::from_secs(5), first.changed())
            .await
            .expect("woken");
        let quiet = tokio::time::timeout(Duration::from_millis(50), other.changed()).await;
        assert!(quiet.is_err(), "another build's waiter woke");
        // A wake-up before the wait is not lost.
        watch.notify(b);
        tokio::time::timeout(Duration::from_secs(5), other.changed())
            .await
            .expect("woken");
        drop(first);
        assert_eq!(watch.followed(), 2, "a's second waiter remains");
        drop(second);
        drop(other);
        assert_eq!(watch.followed(), 0);
        // Nobody follows: nothing to do.
        watch.notify(a);
        assert_eq!(watch.followed(), 0);
    }
}
