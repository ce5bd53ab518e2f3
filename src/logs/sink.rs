//! The log sink: batches a build's lines into the store from a background task, under a size cap.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::cap::{DEFAULT_LOG_CAP_BYTES, LogCap};
use super::version::version_id_in_line;
use crate::domain::{BuildId, Timestamp};
use crate::store::{Store, StoreCondition, store_condition};

/// One log line: when it was read or written, and its text (no `\n`).
pub type LogLine = (Timestamp, String);

/// Lines per write to the store at most; reaching it flushes at once.
pub const BATCH_LINES: usize = 1000;

/// Messages (each a group of lines, typically one read's worth) queued to the writer task before
/// producers wait.
pub const CHANNEL_CAPACITY: usize = 64;

/// Tries per batch before it is given up on.
const WRITE_ATTEMPTS: u32 = 5;

/// Wait before the first retry, in milliseconds; doubled for each further one.
const RETRY_BASE_DELAY_MS: u64 = 100;

/// Where a sink writes its batches. Implemented by `(Store, BuildId)`; tests use an in-memory one.
pub trait LogWriter: Send + Sync + 'static {
    /// Appends `lines`, in order, after the ones already written.
    fn append(&self, lines: &[LogLine]) -> impl Future<Output = anyhow::Result<()>> + Send;
}

impl LogWriter for (Store, BuildId) {
    async fn append(&self, lines: &[LogLine]) -> anyhow::Result<()> {
        self.0.append_build_logs(self.1, lines).await
    }
}

/// Tuning of a [`LogSink`]; the defaults are what builds use.
#[derive(Debug, Clone)]
pub struct LogSinkConfig {
    /// Stored size of a build's log at most, in bytes (see [`super::line_cost`]).
    pub cap_bytes: u64,
    /// Lines per write at most; reaching it flushes at once.
    pub batch_lines: usize,
    /// Messages queued to the writer task before producers wait.
    pub channel_capacity: usize,
    /// The node's log counters to add to (`None`: not counted).
    pub metrics: Option<crate::metrics::LogMetrics>,
}

impl Default for LogSinkConfig {
    fn default() -> Self {
        LogSinkConfig {
            cap_bytes: DEFAULT_LOG_CAP_BYTES,
            batch_lines: BATCH_LINES,
            channel_capacity: CHANNEL_CAPACITY,
            metrics: None,
        }
    }
}

/// What a sink saw and stored, returned by [`LogSink::finish`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSummary {
    /// Lines received.
    pub lines_seen: u64,
    /// Lines written to the store, including the cap's marker line.
    pub lines_stored: u64,
    /// Message bytes received.
    pub bytes_seen: u64,
    /// Lines dropped by the size cap.
    pub lines_omitted: u64,
    /// Lines lost because the store kept failing.
    pub lines_unwritten: u64,
    /// Of [`LogSummary::lines_unwritten`], the last ones that no stored line accounts for yet (the
    /// store still failed at the end): the caller stores [`LogSummary::unwritten_line`] once it can.
    pub lines_unwritten_unreported: u64,
    /// The last failed write failed because Kiln's storage was full.
    pub storage_full: bool,
    /// The last version id announced in the output (`Current Version ID: <uuid>`), if any.
    pub version_id: Option<String>,
}

/// Receives a build's log lines and writes them to the store in batches from a background task.
///
/// Producers wait only when the queue to the writer is full (backpressure, nothing is dropped); the
/// writer writes as soon as it is idle — whatever arrived while the previous write ran goes into the
/// next one, up to [`BATCH_LINES`] lines — so a quiet build's line is readable at once and a chatty
/// build's lines go in large batches (group commit). A failing store is retried with
/// back-off, then the batch is lost and the build goes on; the next line stored is a marker saying
/// how many lines are missing there and why (e.g. Kiln's storage was full). Dropping a sink without
/// [`LogSink::finish`] still writes everything, unobserved.
#[derive(Debug)]
pub struct LogSink {
    tx: mpsc::Sender<Vec<LogLine>>,
    task: JoinHandle<LogSummary>,
}

impl LogSink {
    /// A sink with the default configuration. Must be called within a Tokio runtime.
    pub fn new<W: LogWriter>(writer: W) -> LogSink {
        LogSink::with_config(writer, LogSinkConfig::default())
    }

    /// A sink with `config`. Must be called within a Tokio runtime; the writer task runs in the
    /// caller's tracing span.
    pub fn with_config<W: LogWriter>(writer: W, config: LogSinkConfig) -> LogSink {
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let task = Writer::new(writer, config).run(rx);
        let task = tokio::spawn(task.instrument(tracing::Span::current()));
        LogSink { tx, task }
    }

    /// Queues one line, waiting while the queue is full.
    pub async fn push(&self, at: Timestamp, line: impl Into<String>) -> anyhow::Result<()> {
        self.push_lines(vec![(at, line.into())]).await
    }

    /// Queues lines in order, waiting while the queue is full.
    pub async fn push_lines(&self, lines: Vec<LogLine>) -> anyhow::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        self.tx
            .send(lines)
            .await
            .ok()
            .context("the build log writer has stopped")
    }

    /// Writes everything still queued or held back (the cap's tail) and reports what was seen.
    pub async fn finish(self) -> anyhow::Result<LogSummary> {
        drop(self.tx);
        self.task.await.context("the build log writer failed")
    }
}

impl LogSummary {
    /// The line that accounts for [`LogSummary::lines_unwritten_unreported`], if any.
    pub fn unwritten_line(&self) -> Option<String> {
        (self.lines_unwritten_unreported > 0)
            .then(|| unwritten_line(self.lines_unwritten_unreported, self.storage_full))
    }
}

/// The line stored where log lines are missing because the store failed (like the cap's marker).
fn unwritten_line(count: u64, storage_full: bool) -> String {
    let why = if storage_full {
        "Kiln's storage was full"
    } else {
        "Kiln's store was unavailable"
    };
    let plural = if count == 1 { "" } else { "s" };
    format!("[... {count} line{plural} could not be stored: {why} ...]")
}

/// The background task's state.
struct Writer<W> {
    writer: W,
    config: LogSinkConfig,
    pending: Vec<LogLine>,
    cap: LogCap,
    summary: LogSummary,
    /// The last batch was given up on: try the next ones once each until one succeeds, so that a
    /// store outage does not slow the build by the whole back-off on every batch.
    degraded: bool,
}

impl<W: LogWriter> Writer<W> {
    fn new(writer: W, config: LogSinkConfig) -> Self {
        Writer {
            writer,
            pending: Vec::with_capacity(config.batch_lines.min(BATCH_LINES)),
            cap: LogCap::new(config.cap_bytes),
            summary: LogSummary::default(),
            degraded: false,
            config,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Vec<LogLine>>) -> LogSummary {
        while let Some(lines) = rx.recv().await {
            self.accept_all(lines).await;
            // Everything queued meanwhile joins this write.
            while let Ok(more) = rx.try_recv() {
                self.accept_all(more).await;
            }
            self.flush().await;
        }
        self.flush().await;
        let cap = std::mem::replace(&mut self.cap, LogCap::new(0));
        self.summary.lines_omitted = cap.omitted_lines();
        let end = cap.finish();
        for batch in end.chunks(self.config.batch_lines.max(1)) {
            self.write(batch).await;
        }
        if self.summary.lines_unwritten_unreported > 0 {
            // Only the marker is left to write: give it every try.
            self.degraded = false;
            self.write(&[]).await;
        }
        self.summary
    }

    async fn accept_all(&mut self, lines: Vec<LogLine>) {
        for line in lines {
            self.accept(line);
            if self.pending.len() >= self.config.batch_lines.max(1) {
                self.flush().await;
            }
        }
    }

    fn accept(&mut self, (at, mut message): LogLine) {
        self.summary.lines_seen += 1;
        self.summary.bytes_seen += message.len() as u64;
        if let Some(m) = &self.config.metrics {
            m.lines_ingested.inc();
            m.bytes_ingested.inc_by(message.len() as u64);
        }
        if let Some(id) = version_id_in_line(&message) {
            self.summary.version_id = Some(id);
        }
        if message.contains('\0') {
            // PostgreSQL text cannot hold NUL.
            message = message.replace('\0', "\u{fffd}");
        }
        if let Some(line) = self.cap.admit((at, message)) {
            self.pending.push(line);
        }
    }

    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        self.write(&batch).await;
        // Reuse the allocation.
        self.pending = batch;
        self.pending.clear();
    }

    /// Writes `batch`, after a line accounting for the lines lost before it, if any.
    async fn write(&mut self, batch: &[LogLine]) {
        let lost = self.summary.lines_unwritten_unreported;
        let with_marker;
        let lines = if lost > 0 {
            let at = batch.first().map_or_else(Timestamp::now, |(at, _)| *at);
            with_marker = std::iter::once((at, unwritten_line(lost, self.summary.storage_full)))
                .chain(batch.iter().cloned())
                .collect::<Vec<_>>();
            &with_marker[..]
        } else {
            batch
        };
        if lines.is_empty() {
            return;
        }
        let attempts = if self.degraded { 1 } else { WRITE_ATTEMPTS };
        let mut delay = Duration::from_millis(RETRY_BASE_DELAY_MS);
        for attempt in 1..=attempts {
            match self.writer.append(lines).await {
                Ok(()) => {
                    self.summary.lines_stored += lines.len() as u64;
                    if let Some(m) = &self.config.metrics {
                        m.lines_stored.inc_by(lines.len() as u64);
                    }
                    self.summary.lines_unwritten_unreported = 0;
                    self.degraded = false;
                    return;
                }
                Err(e) if attempt < attempts => {
                    tracing::warn!(
                        attempt,
                        error = format!("{e:#}"),
                        "writing build log lines failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    self.summary.storage_full = store_condition(&e) == Some(StoreCondition::Full);
                    tracing::error!(
                        lines = batch.len(),
                        error = format!("{e:#}"),
                        "could not write build log lines; they are lost"
                    );
                }
            }
        }
        self.summary.lines_unwritten += batch.len() as u64;
        self.summary.lines_unwritten_unreported += batch.len() as u64;
        self.degraded = true;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::super::testing::MemoryWriter;
    use super::*;

    fn line(i: usize) -> LogLine {
        (Timestamp::from_millis(i as i64), format!("line {i}"))
    }

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn writes_each_line_at_once_when_idle() {
        let w = MemoryWriter::default();
        // Anchor the writer's clock at zero.
        w.append(&[]).await.expect("append");
        let sink = LogSink::new(w.clone());
        for (i, wait) in [0, 50, 49, 51].into_iter().enumerate() {
            tokio::time::sleep(wait * MS).await;
            sink.push_lines(vec![line(i)]).await.expect("push");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            w.batches()[1..],
            [
                (Duration::ZERO, 1),
                (50 * MS, 1),
                (99 * MS, 1),
                (150 * MS, 1)
            ]
        );
        let summary = sink.finish().await.expect("finish");
        assert_eq!(summary.lines_seen, 4);
        assert_eq!(summary.lines_stored, 4);
        assert_eq!(summary.bytes_seen, 4 * 6);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_what_queued_meanwhile_up_to_1000_lines() {
        let w = MemoryWriter::default();
        w.append(&[]).await.expect("append");
        let sink = LogSink::new(w.clone());
        sink.push_lines((0..1500).map(line).collect())
            .await
            .expect("push");
        sink.push_lines((1500..2500).map(line).collect())
            .await
            .expect("push");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            w.batches()[1..],
            [
                (Duration::ZERO, 1000),
                (Duration::ZERO, 1000),
                (Duration::ZERO, 500)
            ]
        );
        sink.push(Timestamp::from_millis(9), "last")
            .await
            .expect("push");
        let summary = sink.finish().await.expect("finish");
        assert_eq!(w.batches().last(), Some(&(1000 * MS, 1)));
        assert_eq!(summary.lines_stored, 2501);
        let mut want: Vec<String> = (0..2500).map(|i| line(i).1).collect();
        want.push("last".into());
        assert_eq!(w.messages(), want);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_store_applies_backpressure_and_loses_nothing() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let w = MemoryWriter::default();
        let blocked = BlockingWriter {
            inner: w.clone(),
            gate: gate.clone(),
        };
        let config = LogSinkConfig {
            batch_lines: 10,
            channel_capacity: 2,
            ..LogSinkConfig::default()
        };
        let sink = LogSink::with_config(blocked, config);
        let mut sent = 0;
        loop {
            let push = sink.push_lines((sent..sent + 10).map(line).collect());
            match tokio::time::timeout(Duration::from_secs(60), push).await {
                Ok(pushed) => {
                    pushed.expect("push");
                    sent += 10;
                }
                Err(_) => break,
            }
            assert!(sent < 1000, "the producer was never made to wait");
        }
        // The writer holds one batch, the queue two messages: the producer waits on the third.
        assert_eq!(sent, 30);
        gate.add_permits(1000);
        for i in sent..sent + 25 {
            sink.push(Timestamp::from_millis(0), line(i).1)
                .await
                .expect("push");
        }
        let summary = sink.finish().await.expect("finish");
        assert_eq!(summary.lines_stored, 55);
        assert_eq!(w.messages(), (0..55).map(|i| line(i).1).collect::<Vec<_>>());
    }

    struct BlockingWriter {
        inner: MemoryWriter,
        gate: Arc<tokio::sync::Semaphore>,
    }

    impl LogWriter for BlockingWriter {
        async fn append(&self, lines: &[LogLine]) -> anyhow::Result<()> {
            let _permit = self.gate.acquire().await.context("gate closed")?;
            self.inner.append(lines).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn store_errors_are_retried_then_given_up_on() {
        let w = MemoryWriter::failing(2);
        let sink = LogSink::new(w.clone());
        sink.push_lines((0..3).map(line).collect())
            .await
            .expect("push");
        let summary = sink.finish().await.expect("finish");
        assert_eq!(w.messages().len(), 3, "written once, on the third try");
        assert_eq!(w.calls.load(Ordering::SeqCst), 3);
        assert_eq!(summary.lines_stored, 3);

        // A store that stays down: the batch is lost after WRITE_ATTEMPTS, the next one is tried once,
        // and the sink still finishes.
        let w = MemoryWriter::failing(usize::MAX);
        let config = LogSinkConfig {
            batch_lines: 2,
            ..LogSinkConfig::default()
        };
        let sink = LogSink::with_config(w.clone(), config);
        sink.push_lines((0..4).map(line).collect())
            .await
            .expect("push");
        let summary = sink.finish().await.expect("finish");
        // The first batch with retries, the second once, then the marker for both with retries.
        assert_eq!(
            w.calls.load(Ordering::SeqCst),
            2 * WRITE_ATTEMPTS as usize + 1
        );
        assert_eq!((summary.lines_stored, summary.lines_unwritten), (0, 4));
        assert_eq!(summary.lines_unwritten_unreported, 4);
        assert_eq!(
            summary.unwritten_line().as_deref(),
            Some("[... 4 lines could not be stored: Kiln's store was unavailable ...]")
        );
    }

    /// The node's counters see what the sink took in and what it stored, cap and losses included.
    #[tokio::test(start_paused = true)]
    async fn counts_lines_ingested_and_stored_in_the_metrics() {
        let counter = |name: &str| prometheus::IntCounter::new(name, "test").expect("counter");
        let metrics = crate::metrics::LogMetrics {
            lines_ingested: counter("lines"),
            bytes_ingested: counter("bytes"),
            lines_stored: counter("stored"),
        };
        // The first write is given up on: its 2 lines are lost, then accounted for by a marker.
        let w = MemoryWriter::failing(WRITE_ATTEMPTS as usize);
        let config = LogSinkConfig {
            batch_lines: 2,
            metrics: Some(metrics.clone()),
            ..LogSinkConfig::default()
        };
        let sink = LogSink::with_config(w.clone(), config);
        sink.push_lines((0..6).map(line).collect())
            .await
            .expect("push");
        let summary = sink.finish().await.expect("finish");
        assert_eq!(metrics.lines_ingested.get(), 6);
        assert_eq!(metrics.bytes_ingested.get(), summary.bytes_seen);
        assert_eq!(summary.bytes_seen, 6 * "line 0".len() as u64);
        assert_eq!(metrics.lines_stored.get(), summary.lines_stored);
        assert_eq!(summary.lines_stored, 4 + 1, "4 lines and the marker");
    }

    #[tokio::test(start_paused = true)]
    async fn lines_lost_to_a_full_disk_are_accounted_for_where_they_are_missing() {
        // The first batch is given up on, the second is tried once: both lost; the third is stored
        // after a marker for them.
        let w = MemoryWriter::full_disk(WRITE_ATTEMPTS as usize + 1);
        let config = LogSinkConfig {
            batch_lines: 2,
            ..LogSinkConfig::default()
        };
        let sink = LogSink::with_config(w.clone(), config);
        sink.push_lines((0..6).map(line).collect())
            .await
            .expect("push");
        let summary = sink.finish().await.expect("finish");
        assert_eq!(
            w.messages(),
            [
                "[... 4 lines could not be stored: Kiln's storage was full ...]",
                "line 4",
                "line 5"
            ]
        );
        assert_eq!(
            (
                summary.lines_stored,
                summary.lines_unwritten,
                summary.lines_unwritten_unreported
            ),
            (3, 4, 0)
        );
        assert_eq!(summary.unwritten_line(), None);

        // Lost at the very end and stored once the store is back: the marker alone.
        let w = MemoryWriter::full_disk(WRITE_ATTEMPTS as usize);
        let sink = LogSink::new(w.clone());
        sink.push(Timestamp::from_millis(1), "only")
            .await
            .expect("push");
        let summary = sink.finish().await.expect("finish");
        assert_eq!(
            w.messages(),
            ["[... 1 line could not be stored: Kiln's storage was full ...]"]
        );
        assert_eq!(summary.lines_unwritten_unreported, 0);
    }

    #[tokio::test]
    async fn caps_the_log_and_stores_the_tail_at_the_end() {
        let w = MemoryWriter::default();
        let config = LogSinkConfig {
            cap_bytes: 1000,
            batch_lines: 3,
            ..LogSinkConfig::default()
        };
        let sink = LogSink::with_config(w.clone(), config);
        // 84-byte messages cost 100 bytes each: 5 in the head, 5 in the tail.
        let msg = |i: usize| format!("{i:084}");
        for i in 0..20 {
            sink.push(Timestamp::from_millis(i as i64), msg(i))
                .await
                .expect("push");
        }
        let summary = sink.finish().await.expect("finish");
        let mut want: Vec<String> = (0..5).map(msg).collect();
        want.push(
            "[... 10 lines (840 bytes) omitted: the build log is capped at 1000 bytes ...]".into(),
        );
        want.extend((15..20).map(msg));
        assert_eq!(w.messages(), want);
        assert_eq!(
            (
                summary.lines_seen,
                summary.lines_stored,
                summary.lines_omitted
            ),
            (20, 11, 10)
        );
        assert_eq!(summary.bytes_seen, 20 * 84);
    }

    #[tokio::test]
    async fn remembers_the_last_version_id_even_in_omitted_lines() {
        let w = MemoryWriter::default();
        let config = LogSinkConfig {
            cap_bytes: 200,
            ..LogSinkConfig::default()
        };
        let sink = LogSink::with_config(w.clone(), config);
        let first = "11111111-2222-4333-8444-555555555555";
        let second = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
        let t = Timestamp::from_millis(0);
        sink.push(t, format!("Worker Version ID: {first}"))
            .await
            .expect("push");
        sink.push(
            t,
            format!("\u{1b}[1mCurrent Version ID:\u{1b}[22m {second}"),
        )
        .await
        .expect("push");
        sink.push(t, "x".repeat(300)).await.expect("push");
        sink.push(t, "nul\0byte").await.expect("push");
        let summary = sink.finish().await.expect("finish");
        assert_eq!(summary.version_id.as_deref(), Some(second));
        assert_eq!(
            w.messages().last().map(String::as_str),
            Some("nul\u{fffd}byte")
        );
    }
}
