//! Test helpers for the log pipeline: an in-memory [`LogWriter`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{LogLine, LogWriter};

/// A batch written, with when (time since the writer's first call).
type Batch = (Duration, Vec<LogLine>);

/// An in-memory writer recording each batch and when (Tokio time, from its first call) it was
/// written; a [`MemoryWriter::failing`] one fails its first calls.
#[derive(Clone, Default)]
pub(crate) struct MemoryWriter {
    batches: Arc<Mutex<Vec<Batch>>>,
    failures: Arc<AtomicUsize>,
    /// Failures are a full disk (`ENOSPC`) rather than an unreachable store.
    full: bool,
    /// Calls to `append`, failed ones included.
    pub(crate) calls: Arc<AtomicUsize>,
    start: Arc<Mutex<Option<Instant>>>,
}

impl MemoryWriter {
    /// A writer whose first `failures` calls fail.
    pub(crate) fn failing(failures: usize) -> Self {
        let w = MemoryWriter::default();
        w.failures.store(failures, Ordering::SeqCst);
        w
    }

    /// A writer whose first `failures` calls fail because the disk is full.
    pub(crate) fn full_disk(failures: usize) -> Self {
        MemoryWriter {
            full: true,
            ..MemoryWriter::failing(failures)
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every message written, in order.
    pub(crate) fn messages(&self) -> Vec<String> {
        Self::lock(&self.batches)
            .iter()
            .flat_map(|(_, b)| b.iter().map(|(_, m)| m.clone()))
            .collect()
    }

    /// (time since the first call, batch size) per batch.
    pub(crate) fn batches(&self) -> Vec<(Duration, usize)> {
        Self::lock(&self.batches)
            .iter()
            .map(|(t, b)| (*t, b.len()))
            .collect()
    }
}

impl LogWriter for MemoryWriter {
    async fn append(&self, lines: &[LogLine]) -> anyhow::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = Instant::now();
        let start = *Self::lock(&self.start).get_or_insert(now);
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            if self.full {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into());
            }
            anyhow::bail!("store unavailable");
        }
        Self::lock(&self.batches).push((now - start, lines.to_vec()));
        Ok(())
    }
}
