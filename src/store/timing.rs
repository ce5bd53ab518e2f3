//! How long writers wait for the store's write transaction (and for key locks), and how long they
//! hold it: the store's own metrics, which [`crate::metrics::Metrics`] serves.

use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, Registry};

/// What a writer waited for (the `lock` label of `kiln_store_lock_wait_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    /// Obtaining a write transaction: on SQLite the in-process writer lock and `BEGIN IMMEDIATE`
    /// (which waits for another process's writer), on PostgreSQL a pooled connection and `BEGIN`.
    Transaction,
    /// A PostgreSQL advisory lock on one key, inside a transaction ([`super::Store::lock_key`]).
    Key,
}

impl Lock {
    fn as_str(self) -> &'static str {
        match self {
            Lock::Transaction => "transaction",
            Lock::Key => "key",
        }
    }
}

/// The store's timing histograms; clones add to the same series.
#[derive(Clone)]
pub struct StoreTimings {
    lock_wait: HistogramVec,
    held: HistogramVec,
}

impl StoreTimings {
    pub(crate) fn new() -> anyhow::Result<StoreTimings> {
        let buckets = crate::metrics::STORE_BUCKETS.to_vec();
        Ok(StoreTimings {
            lock_wait: HistogramVec::new(
                HistogramOpts::new(
                    "kiln_store_lock_wait_seconds",
                    "Time writers waited for the store: to obtain a write transaction \
                     (lock=\"transaction\"), or a key lock within one (lock=\"key\", PostgreSQL)",
                )
                .buckets(buckets.clone()),
                &["lock"],
            )?,
            held: HistogramVec::new(
                HistogramOpts::new(
                    "kiln_store_write_transaction_seconds",
                    "Time write transactions were held, from obtaining them to their commit or \
                     rollback, by result",
                )
                .buckets(buckets),
                &["result"],
            )?,
        })
    }

    /// Adds these histograms to `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.lock_wait.clone()))?;
        registry.register(Box::new(self.held.clone()))
    }

    /// Observes a wait for `lock` that began at `since`.
    pub(crate) fn waited(&self, lock: Lock, since: Instant) {
        self.lock_wait
            .with_label_values(&[lock.as_str()])
            .observe(since.elapsed().as_secs_f64());
    }

    /// Starts timing a write transaction obtained now.
    pub(crate) fn hold(&self) -> HeldTimer {
        HeldTimer {
            held: self.held.clone(),
            since: Instant::now(),
            committed: false,
        }
    }
}

/// Times one write transaction; observed when dropped, as `commit` once
/// [`HeldTimer::committed`] was called, else as `rollback`.
pub(crate) struct HeldTimer {
    held: HistogramVec,
    since: Instant,
    committed: bool,
}

impl HeldTimer {
    /// The transaction committed.
    pub(crate) fn committed(&mut self) {
        self.committed = true;
    }
}

impl Drop for HeldTimer {
    fn drop(&mut self) {
        let result = if self.committed { "commit" } else { "rollback" };
        self.held
            .with_label_values(&[result])
            .observe(self.since.elapsed().as_secs_f64());
    }
}
