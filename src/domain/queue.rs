//! Why a queued build waits, where it stands in the queue, and when it should start (a Kiln
//! extension of `getBuildByUuid`): the scheduler's claim rule replayed on the queue as it is.
//!
//! The rule (see [`crate::scheduler`]): whenever a runner slot is free, a runner claims the oldest
//! queued build whose account runs fewer builds than its concurrency limit. [`explain_queued`] plays that
//! rule forward from now over the builds in progress and the queued ones, each taking as long as the
//! recent builds of its trigger took (else its account's; see [`Durations`]). The build's position
//! is its rank among the queued builds in that order, and its estimated start the time of its claim.
//! The estimate is `None` when a duration it depends on is unknown (no recent build of the trigger
//! or the account) or when no runner node is live.
//!
//! Build minutes do not hold builds in the queue: an account over its minutes cannot queue builds
//! at all (`createManualBuild` answers 429), so they are never a reason here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use schemars::JsonSchema;
use serde::Serialize;

use super::{AccountId, BuildId, Timestamp, TriggerId};

/// Recent builds per trigger (and per account) whose durations an estimate uses, at most.
pub const DURATION_SAMPLES: usize = 20;

/// Duration assumed for ordering when none is known, in milliseconds (the estimate is then `None`).
const NOMINAL_DURATION_MS: i64 = 60_000;

/// Why a queued build has not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueueReason {
    /// The account runs as many builds as its concurrency limit allows.
    AccountConcurrencyLimit,
    /// No build slot is free for it: every slot of the live runner nodes is busy, the free ones go
    /// to builds queued before it, or no runner node is live.
    NoFreeRunner,
    /// A runner slot and an account slot are free: a runner claims it within its poll interval.
    Starting,
}

/// `queue` of a queued build (a Kiln extension; absent for builds that are not queued).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct QueueInfo {
    pub reason: QueueReason,
    /// The reason in words, with the figures behind it.
    pub message: String,
    /// Rank among the queued builds in the order they would be claimed, from 1 (next).
    pub position: u64,
    /// When it should start, from the recent durations of its trigger's (else its account's) builds
    /// and of the builds ahead of it; `null` when unknown.
    pub estimated_start_on: Option<Timestamp>,
}

/// A queued build, as the claim rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedBuild {
    pub id: BuildId,
    pub account: AccountId,
    pub trigger: TriggerId,
}

/// A build in progress (initializing or running), holding a runner slot and an account slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveBuild {
    pub account: AccountId,
    pub trigger: TriggerId,
    /// When it was claimed.
    pub started: Timestamp,
}

/// A finished build's duration: from its claim to its end, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastBuild {
    pub account: AccountId,
    pub trigger: TriggerId,
    pub duration_ms: i64,
}

/// Expected build durations: the median of the last [`DURATION_SAMPLES`] builds of a trigger, else
/// of its account.
#[derive(Debug, Default)]
pub struct Durations {
    by_trigger: HashMap<TriggerId, i64>,
    by_account: HashMap<AccountId, i64>,
}

impl Durations {
    /// From finished builds, newest first.
    pub fn from_recent(recent: &[PastBuild]) -> Durations {
        let mut triggers: HashMap<TriggerId, Vec<i64>> = HashMap::new();
        let mut accounts: HashMap<AccountId, Vec<i64>> = HashMap::new();
        for b in recent {
            let t = triggers.entry(b.trigger).or_default();
            if t.len() < DURATION_SAMPLES {
                t.push(b.duration_ms.max(0));
            }
            let a = accounts.entry(b.account.clone()).or_default();
            if a.len() < DURATION_SAMPLES {
                a.push(b.duration_ms.max(0));
            }
        }
        Durations {
            by_trigger: triggers.into_iter().map(|(k, v)| (k, median(v))).collect(),
            by_account: accounts.into_iter().map(|(k, v)| (k, median(v))).collect(),
        }
    }

    /// The expected duration of a build of `trigger` in `account`, in milliseconds.
    pub fn of(&self, account: &AccountId, trigger: TriggerId) -> Option<i64> {
        self.by_trigger
            .get(&trigger)
            .or_else(|| self.by_account.get(account))
            .copied()
    }
}

fn median(mut v: Vec<i64>) -> i64 {
    v.sort_unstable();
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2
    } else {
        v[mid]
    }
}

/// The state of the queue a build's explanation is computed from.
#[derive(Debug)]
pub struct QueueSnapshot {
    pub now: Timestamp,
    /// Build slots of the live runner nodes, and how many nodes.
    pub runner_slots: u64,
    pub runner_nodes: u64,
    /// Accounts' own concurrency limits; others have `default_concurrency`.
    pub limits: HashMap<AccountId, i64>,
    pub default_concurrency: i64,
    pub active: Vec<ActiveBuild>,
    /// Queued builds in claim order (oldest first); possibly only the oldest ones.
    pub queued: Vec<QueuedBuild>,
    pub durations: Durations,
}

impl QueueSnapshot {
    fn limit(&self, account: &AccountId) -> i64 {
        self.limits
            .get(account)
            .copied()
            .unwrap_or(self.default_concurrency)
    }
}

/// The explanation of `target`, a queued build. `older` is how many queued builds are older than it:
/// when `snapshot.queued` does not hold `target` (the queue is longer than what was loaded), the
/// position counts them all and the estimate is `None`.
pub fn explain_queued(snapshot: &QueueSnapshot, target: &QueuedBuild, older: u64) -> QueueInfo {
    let limit = snapshot.limit(&target.account);
    let running = snapshot
        .active
        .iter()
        .filter(|a| a.account == target.account)
        .count() as i64;
    let busy = snapshot.active.len() as u64;
    let (position, estimate) = match snapshot.queued.iter().position(|q| q.id == target.id) {
        Some(index) => replay(snapshot, index),
        None => (older + 1, None),
    };
    let (reason, message) = if running >= limit {
        (
            QueueReason::AccountConcurrencyLimit,
            format!(
                "The account's concurrency limit is reached: {running} of its {limit} concurrent \
                 builds are in progress"
            ),
        )
    } else if snapshot.runner_slots == 0 {
        (
            QueueReason::NoFreeRunner,
            "No runner node is live: no node with build slots has announced itself recently"
                .to_owned(),
        )
    } else if busy >= snapshot.runner_slots {
        (
            QueueReason::NoFreeRunner,
            format!(
                "All {} build slots of the {} live runner node(s) are busy",
                snapshot.runner_slots, snapshot.runner_nodes
            ),
        )
    } else if claimed_now(snapshot, target) {
        (
            QueueReason::Starting,
            "A runner slot and an account slot are free: a runner claims the build shortly"
                .to_owned(),
        )
    } else {
        (
            QueueReason::NoFreeRunner,
            format!(
                "{} of the {} build slots of the live runner node(s) are free, for builds queued \
                 before this one",
                snapshot.runner_slots - busy,
                snapshot.runner_slots
            ),
        )
    };
    QueueInfo {
        reason,
        message,
        position,
        estimated_start_on: estimate.map(Timestamp::from_millis),
    }
}

/// Whether `target` is among the builds the free runner slots take now.
fn claimed_now(snapshot: &QueueSnapshot, target: &QueuedBuild) -> bool {
    let mut free = snapshot
        .runner_slots
        .saturating_sub(snapshot.active.len() as u64);
    let mut running: HashMap<&AccountId, i64> = HashMap::new();
    for a in &snapshot.active {
        *running.entry(&a.account).or_default() += 1;
    }
    for q in &snapshot.queued {
        if free == 0 {
            return false;
        }
        let count = running.entry(&q.account).or_default();
        if *count < snapshot.limit(&q.account) {
            if q.id == target.id {
                return true;
            }
            *count += 1;
            free -= 1;
        }
    }
    false
}

/// Plays the claim rule forward until `queued[index]` is claimed: its rank among the claims and the
/// time of its claim (epoch ms; `None` when an unknown duration or the lack of runners decides it).
fn replay(snapshot: &QueueSnapshot, index: usize) -> (u64, Option<i64>) {
    let now = snapshot.now.millis();
    let mut known = snapshot.runner_slots > 0;
    let mut duration =
        |account: &AccountId, trigger: TriggerId| match snapshot.durations.of(account, trigger) {
            Some(ms) => ms,
            None => {
                known = false;
                NOMINAL_DURATION_MS
            }
        };
    // Without a live runner, the order is the one a single slot would give.
    let slots = snapshot.runner_slots.max(1) as usize;
    let mut ends: Vec<i64> = Vec::with_capacity(snapshot.active.len());
    // Per account, when its builds in progress end.
    let mut accounts: HashMap<&AccountId, BinaryHeap<Reverse<i64>>> = HashMap::new();
    for a in &snapshot.active {
        // A build past its expected end may end at any moment.
        let end = (a.started.millis() + duration(&a.account, a.trigger)).max(now);
        ends.push(end);
        accounts.entry(&a.account).or_default().push(Reverse(end));
    }
    // A slot is free when as many builds in progress have ended as there are builds beyond the slots.
    ends.sort_unstable();
    let mut free_at: BinaryHeap<Reverse<i64>> = if ends.len() > slots {
        ends[ends.len() - slots..]
            .iter()
            .map(|&e| Reverse(e))
            .collect()
    } else {
        ends.iter()
            .copied()
            .chain(std::iter::repeat_n(now, slots - ends.len()))
            .map(Reverse)
            .collect()
    };
    let mut pending: Vec<bool> = vec![true; snapshot.queued.len()];
    let mut claims = 0_u64;
    while let Some(Reverse(at)) = free_at.pop() {
        let mut claimed = None;
        for (i, q) in snapshot.queued.iter().enumerate() {
            if !pending[i] {
                continue;
            }
            let running = accounts.entry(&q.account).or_default();
            while running.peek().is_some_and(|Reverse(end)| *end <= at) {
                running.pop();
            }
            if (running.len() as i64) < snapshot.limit(&q.account) {
                claimed = Some(i);
                break;
            }
        }
        let Some(i) = claimed else {
            // Every account with queued builds is at its limit: the slot waits for the first of
            // their builds to end.
            let next = snapshot
                .queued
                .iter()
                .enumerate()
                .filter(|(i, _)| pending[*i])
                .filter_map(|(_, q)| accounts.get(&q.account)?.peek().map(|Reverse(e)| *e))
                .min();
            match next {
                Some(next) => {
                    free_at.push(Reverse(next.max(at)));
                    continue;
                }
                // Builds of accounts that may run none: they never start.
                None => break,
            }
        };
        claims += 1;
        pending[i] = false;
        if i == index {
            return (claims, known.then_some(at));
        }
        let q = &snapshot.queued[i];
        let end = at + duration(&q.account, q.trigger);
        accounts.entry(&q.account).or_default().push(Reverse(end));
        free_at.push(Reverse(end));
    }
    // Never claimed: after everything that is, and in queue order among the rest.
    let ahead = pending[..index].iter().filter(|p| **p).count() as u64;
    (claims + ahead + 1, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;
    const MIN: i64 = 60_000;

    fn account(n: u8) -> AccountId {
        AccountId::parse(&format!("{n:032}")).expect("account")
    }

    struct Fixture {
        triggers: HashMap<u8, TriggerId>,
        snapshot: QueueSnapshot,
    }

    impl Fixture {
        /// `slots` runner slots, accounts with `default` concurrency.
        fn new(slots: u64, default: i64) -> Fixture {
            Fixture {
                triggers: HashMap::new(),
                snapshot: QueueSnapshot {
                    now: Timestamp::from_millis(NOW),
                    runner_slots: slots,
                    runner_nodes: slots.div_ceil(2),
                    limits: HashMap::new(),
                    default_concurrency: default,
                    active: Vec::new(),
                    queued: Vec::new(),
                    durations: Durations::default(),
                },
            }
        }

        /// The trigger of account `n` (one per account).
        fn trigger(&mut self, n: u8) -> TriggerId {
            *self.triggers.entry(n).or_insert_with(TriggerId::new)
        }

        /// Recent builds of account `n` took `minutes`.
        fn takes(mut self, n: u8, minutes: i64) -> Self {
            let trigger = self.trigger(n);
            let past: Vec<PastBuild> = (0..3)
                .map(|_| PastBuild {
                    account: account(n),
                    trigger,
                    duration_ms: minutes * MIN,
                })
                .collect();
            let mut recent = past;
            for (t, ms) in &self.snapshot.durations.by_trigger {
                let owner = self
                    .triggers
                    .iter()
                    .find(|(_, id)| *id == t)
                    .map(|(n, _)| *n)
                    .expect("known trigger");
                recent.push(PastBuild {
                    account: account(owner),
                    trigger: *t,
                    duration_ms: *ms,
                });
            }
            self.snapshot.durations = Durations::from_recent(&recent);
            self
        }

        fn limit(mut self, n: u8, limit: i64) -> Self {
            self.snapshot.limits.insert(account(n), limit);
            self
        }

        /// A build of account `n` claimed `ago` minutes ago.
        fn running(mut self, n: u8, ago: i64) -> Self {
            let trigger = self.trigger(n);
            self.snapshot.active.push(ActiveBuild {
                account: account(n),
                trigger,
                started: Timestamp::from_millis(NOW - ago * MIN),
            });
            self
        }

        fn queued(mut self, n: u8) -> Self {
            let trigger = self.trigger(n);
            self.snapshot.queued.push(QueuedBuild {
                id: BuildId::new(),
                account: account(n),
                trigger,
            });
            self
        }

        fn explain(&self, index: usize) -> QueueInfo {
            explain_queued(&self.snapshot, &self.snapshot.queued[index], index as u64)
        }
    }

    fn at(minutes: i64) -> Option<Timestamp> {
        Some(Timestamp::from_millis(NOW + minutes * MIN))
    }

    #[test]
    fn an_account_at_its_limit_waits_for_its_own_build() {
        // The case: concurrency 1, a 10-minute build 4 minutes in, two queued behind it.
        let f = Fixture::new(4, 1)
            .takes(1, 10)
            .running(1, 4)
            .queued(1)
            .queued(1);
        let first = f.explain(0);
        assert_eq!(first.reason, QueueReason::AccountConcurrencyLimit);
        assert!(first.message.contains("1 of its 1"), "{}", first.message);
        assert_eq!((first.position, first.estimated_start_on), (1, at(6)));
        let second = f.explain(1);
        assert_eq!(second.reason, QueueReason::AccountConcurrencyLimit);
        assert_eq!((second.position, second.estimated_start_on), (2, at(16)));
    }

    #[test]
    fn other_accounts_pass_a_build_held_by_its_account() {
        // Two slots, both busy: account 1's 10-minute build and account 3's 5-minute one.
        let f = Fixture::new(2, 1)
            .takes(1, 10)
            .takes(2, 5)
            .takes(3, 5)
            .running(1, 0)
            .running(3, 0)
            .queued(1)
            .queued(2);
        // The slot that frees first goes to account 2: account 1 still runs its build then.
        let held = f.explain(0);
        assert_eq!(held.reason, QueueReason::AccountConcurrencyLimit);
        let other = f.explain(1);
        assert_eq!(other.reason, QueueReason::NoFreeRunner);
        assert!(
            other.message.contains("All 2 build slots"),
            "{}",
            other.message
        );
        assert_eq!((other.position, other.estimated_start_on), (1, at(5)));
        assert_eq!((held.position, held.estimated_start_on), (2, at(10)));
    }

    #[test]
    fn free_slots_go_to_the_oldest_builds_first() {
        let f = Fixture::new(2, 2)
            .takes(1, 3)
            .running(1, 1)
            .queued(2)
            .queued(1)
            .queued(1);
        let first = f.explain(0);
        assert_eq!(first.reason, QueueReason::Starting);
        // Account 2 has no history: its claim is now, but when it ends is unknown.
        assert_eq!((first.position, first.estimated_start_on), (1, at(0)));
        let second = f.explain(1);
        assert_eq!(second.reason, QueueReason::NoFreeRunner);
        assert!(second.message.contains("1 of the 2"), "{}", second.message);
        // It waits for account 1's running build (2 more minutes) — or for account 2's, whose
        // duration is unknown: no estimate.
        assert_eq!((second.position, second.estimated_start_on), (2, None));
        let f = f.takes(2, 10);
        assert_eq!(f.explain(1).estimated_start_on, at(2));
        assert_eq!(f.explain(2).position, 3);
        // The third waits for the second to end (account 1 may run 2 builds, but the other slot
        // is account 2's until minute 10).
        assert_eq!(f.explain(2).estimated_start_on, at(5));
    }

    #[test]
    fn without_a_live_runner_there_is_an_order_but_no_estimate() {
        let f = Fixture::new(0, 2).takes(1, 3).queued(1).queued(1);
        let info = f.explain(1);
        assert_eq!(info.reason, QueueReason::NoFreeRunner);
        assert!(info.message.contains("No runner node"), "{}", info.message);
        assert_eq!((info.position, info.estimated_start_on), (2, None));
    }

    #[test]
    fn an_account_that_may_run_nothing_never_starts() {
        let f = Fixture::new(2, 2)
            .limit(1, 0)
            .takes(2, 1)
            .queued(1)
            .queued(2)
            .queued(1);
        let info = f.explain(2);
        assert_eq!(info.reason, QueueReason::AccountConcurrencyLimit);
        assert_eq!((info.position, info.estimated_start_on), (3, None));
        assert_eq!(f.explain(1).position, 1);
    }

    #[test]
    fn overdue_builds_may_end_any_moment() {
        let f = Fixture::new(1, 1).takes(1, 2).running(1, 30).queued(1);
        let info = f.explain(0);
        assert_eq!(info.reason, QueueReason::AccountConcurrencyLimit);
        assert_eq!(info.estimated_start_on, at(0));
    }

    #[test]
    fn builds_beyond_the_loaded_queue_count_every_older_one() {
        let f = Fixture::new(1, 1).takes(1, 2).queued(1);
        let beyond = QueuedBuild {
            id: BuildId::new(),
            account: account(1),
            trigger: f.snapshot.queued[0].trigger,
        };
        let info = explain_queued(&f.snapshot, &beyond, 5000);
        assert_eq!((info.position, info.estimated_start_on), (5001, None));
    }

    #[test]
    fn durations_are_medians_of_the_trigger_else_the_account() {
        let a = account(1);
        let (t1, t2, t3) = (TriggerId::new(), TriggerId::new(), TriggerId::new());
        let past = |t: TriggerId, ms: i64| PastBuild {
            account: a.clone(),
            trigger: t,
            duration_ms: ms,
        };
        let mut recent = vec![past(t1, 10), past(t1, 30), past(t1, 1000), past(t2, 7)];
        // Older builds than the samples kept do not count.
        recent.extend((0..DURATION_SAMPLES).map(|_| past(t2, 1_000_000)));
        let d = Durations::from_recent(&recent);
        assert_eq!(d.of(&a, t1), Some(30));
        assert_eq!(d.of(&a, t2), Some(1_000_000));
        // The account's last 20: 10, 30, 1000, 7 and sixteen of 1,000,000.
        assert_eq!(d.of(&a, t3), Some(1_000_000));
        assert_eq!(d.of(&account(2), t3), None);
        assert_eq!(median(vec![1, 2, 3, 4]), 2);
    }
}
