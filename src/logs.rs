//! A build's log pipeline: raw child-process output → lines → secrets masked (as they are and
//! base64-encoded) → batched into the store.
//!
//! [`pump`] reads a child's stdout and stderr, a [`LineSplitter`] per stream turns the bytes into lines
//! and masks them with the build's [`Masker`], and a [`LogSink`] writes them (and the runner's own
//! lines) to the store from a background task, under a per-build size cap, while watching for the
//! Worker version id that wrangler prints. [`tail`] follows a build's log as it is stored (the live
//! log stream).

mod cap;
mod mask;
mod sink;
mod split;
pub mod tail;
#[cfg(test)]
mod testing;
mod version;

use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::domain::Timestamp;

pub use cap::{DEFAULT_LOG_CAP_BYTES, LINE_OVERHEAD_BYTES, line_cost};
pub use mask::{MASK, MIN_MASKED_BASE64_LEN, MIN_MASKED_SECRET_LEN, Masker, base64_fragments};
pub use sink::{
    BATCH_LINES, CHANNEL_CAPACITY, LogLine, LogSink, LogSinkConfig, LogSummary, LogWriter,
};
pub use split::{LineSplitter, MAX_LINE_BYTES};
pub use tail::{LogWaiter, LogWatch};
pub use version::version_id_in_line;

/// Size of each read from a child's pipe, in bytes.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Reads `stdout` and `stderr` to their ends concurrently and sends their masked lines to `sink` in
/// the order they arrive, each stamped with the time it was read (the lines of one read share it).
/// The two streams are split separately, so their partial lines never mix. While the sink's queue is
/// full, reading pauses, and so does a child that fills its pipe.
pub async fn pump(
    stdout: impl AsyncRead + Unpin,
    stderr: impl AsyncRead + Unpin,
    masker: Arc<Masker>,
    sink: &LogSink,
) -> anyhow::Result<()> {
    let mut out = Stream::new(stdout, masker.clone());
    let mut err = Stream::new(stderr, masker);
    let mut lines = Vec::new();
    while out.open || err.open {
        tokio::select! {
            read = out.reader.read(&mut out.buf), if out.open => {
                out.consume(read.context("reading the build's stdout")?, &mut lines);
            }
            read = err.reader.read(&mut err.buf), if err.open => {
                err.consume(read.context("reading the build's stderr")?, &mut lines);
            }
        }
        if !lines.is_empty() {
            let at = Timestamp::now();
            sink.push_lines(lines.drain(..).map(|l| (at, l)).collect())
                .await?;
        }
    }
    Ok(())
}

/// One of a child's output streams being read.
struct Stream<R> {
    reader: R,
    buf: Vec<u8>,
    splitter: LineSplitter,
    open: bool,
}

impl<R: AsyncRead + Unpin> Stream<R> {
    fn new(reader: R, masker: Arc<Masker>) -> Self {
        Stream {
            reader,
            buf: vec![0; READ_BUFFER_BYTES],
            splitter: LineSplitter::new(masker),
            open: true,
        }
    }

    /// Handles a read of `n` bytes (0 = end of stream).
    fn consume(&mut self, n: usize, lines: &mut Vec<String>) {
        if n == 0 {
            self.open = false;
            self.splitter.finish(lines);
        } else {
            self.splitter.feed(&self.buf[..n], lines);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pump_interleaves_both_streams_and_masks_them() {
        let (mut out_w, out_r) = tokio::io::duplex(64);
        let (mut err_w, err_r) = tokio::io::duplex(64);
        let writer = testing::MemoryWriter::default();
        let sink = LogSink::new(writer.clone());
        let masker = Arc::new(Masker::new([("TOKEN", "tok-123456")]).expect("masker"));
        let feed = async {
            use tokio::io::AsyncWriteExt;
            // Each write waits for the pump to read the previous one, so the order is known.
            out_w.write_all(b"out 1 tok-12").await.expect("write");
            wait_for(&writer, 0).await;
            err_w.write_all(b"err 1\n").await.expect("write");
            wait_for(&writer, 1).await;
            out_w.write_all(b"3456\nout 2").await.expect("write");
            wait_for(&writer, 2).await;
            drop(out_w);
            wait_for(&writer, 3).await;
            err_w.write_all(b"err 2 no newline").await.expect("write");
            drop(err_w);
        };
        let (pumped, ()) = tokio::join!(pump(out_r, err_r, masker, &sink), feed);
        pumped.expect("pump");
        let summary = sink.finish().await.expect("finish");
        assert_eq!(
            writer.messages(),
            ["err 1", "out 1 ***", "out 2", "err 2 no newline"]
        );
        assert_eq!(summary.lines_seen, 4);
    }

    /// Waits until `writer` holds `n` lines (the sink writes as soon as it is idle).
    async fn wait_for(writer: &testing::MemoryWriter, n: usize) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while writer.messages().len() < n {
            assert!(tokio::time::Instant::now() < deadline, "no log lines");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
