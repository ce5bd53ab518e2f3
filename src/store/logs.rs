//! Build log lines, stored in chunks (one row per batch) so that ingestion costs one insert per batch.
//! Each chunk's body is `<epoch ms>\t<message>\n` per line; messages never contain `\n`.

use anyhow::Context;
use sqlx::Row;

use super::Store;
use super::rows::text;
use crate::domain::{AccountId, BuildId, Timestamp};

/// Lines per stored chunk at most.
const MAX_CHUNK_LINES: usize = 1000;
/// Body bytes per stored chunk at most, unless its one line is longer: reading a page never loads
/// much more than the page.
const MAX_CHUNK_BYTES: usize = 128 * 1024;
/// Chunks read per query while a page fills.
const CHUNKS_PER_READ: i64 = 8;

/// One page of log lines.
#[derive(Debug, Clone)]
pub struct LogPage {
    pub lines: Vec<(Timestamp, String)>,
    /// Sequence number of the first line after this page.
    pub next_seq: i64,
    /// More stored lines follow this page.
    pub more: bool,
}

/// How large a page of log lines may be: at most `lines` lines, and lines whose [`LogLimit::cost`]
/// adds up to at most `bytes` (a page always has its first line, whatever it costs, so that paging
/// advances).
#[derive(Debug, Clone, Copy)]
pub struct LogLimit {
    pub lines: u32,
    pub bytes: usize,
}

impl LogLimit {
    /// What a line costs against `bytes`: its size in a JSON response, `[seconds, "message"]` with the
    /// message escaped.
    pub fn cost(message: &str) -> usize {
        const LINE_FRAME_BYTES: usize = 32;
        let escapes: usize = message
            .bytes()
            .map(|b| match b {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
                0..0x20 => 5,
                _ => 0,
            })
            .sum();
        LINE_FRAME_BYTES + message.len() + escapes
    }
}

/// `lines` cut into chunks of at most [`MAX_CHUNK_LINES`] lines and (but for a single long line)
/// [`MAX_CHUNK_BYTES`] bytes of body.
fn chunk_bounds(lines: &[(Timestamp, String)]) -> Vec<&[(Timestamp, String)]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (_, message)) in lines.iter().enumerate() {
        let cost = message.len() + 16;
        if i > start && (i - start == MAX_CHUNK_LINES || bytes + cost > MAX_CHUNK_BYTES) {
            out.push(&lines[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += cost;
    }
    if start < lines.len() {
        out.push(&lines[start..]);
    }
    out
}

fn encode_chunk(lines: &[(Timestamp, String)]) -> String {
    let mut body = String::with_capacity(lines.iter().map(|(_, m)| m.len() + 16).sum());
    for (t, msg) in lines {
        body.push_str(&t.millis().to_string());
        body.push('\t');
        if msg.contains('\n') {
            body.push_str(&msg.replace('\n', " "));
        } else {
            body.push_str(msg);
        }
        body.push('\n');
    }
    body
}

fn decode_chunk(body: &str) -> impl Iterator<Item = anyhow::Result<(Timestamp, &str)>> {
    body.split_terminator('\n').map(|line| {
        let (ts, msg) = line
            .split_once('\t')
            .context("log chunk line without a tab")?;
        Ok((
            Timestamp::from_millis(ts.parse().context("log chunk timestamp")?),
            msg,
        ))
    })
}

impl Store {
    /// Appends log lines to a build, numbering them after the ones already stored, and wakes the
    /// build's followers in this process once they are committed.
    pub async fn append_build_logs(
        &self,
        id: BuildId,
        lines: &[(Timestamp, String)],
    ) -> anyhow::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut w = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT b.id AS id, (SELECT COALESCE(MAX(l.first_seq + l.line_count), 0) \
             FROM build_log_chunks l WHERE l.build_id = b.id) AS next FROM builds b WHERE b.uuid = $1",
        )
        .bind(id.to_string())
        .fetch_one(&mut *w.tx)
        .await
        .context("finding the build to log to")?;
        let build_id: i64 = row.try_get("id")?;
        let mut seq: i64 = row.try_get("next")?;
        for chunk in chunk_bounds(lines) {
            sqlx::query("INSERT INTO build_log_chunks (build_id, first_seq, line_count, body) VALUES ($1, $2, $3, $4)")
                .bind(build_id)
                .bind(seq)
                .bind(chunk.len() as i64)
                .bind(encode_chunk(chunk))
                .execute(&mut *w.tx)
                .await
                .context("appending log lines")?;
            seq += chunk.len() as i64;
        }
        w.commit().await?;
        self.log_watch.notify(id);
        Ok(())
    }

    /// A waiter woken when lines of `id` are stored by this process from now on (lines stored by
    /// another node wake nobody here: see [`crate::logs::tail`]).
    pub fn watch_logs(&self, id: BuildId) -> crate::logs::LogWaiter {
        self.log_watch.subscribe(id)
    }

    /// A page of a build's log lines starting at sequence number `from`, within `limit`; `None` when
    /// the build is not in the account. Chunks are read a few at a time, so a page costs about its
    /// own size in memory.
    pub async fn get_build_logs(
        &self,
        account: &AccountId,
        id: BuildId,
        from: i64,
        limit: LogLimit,
    ) -> anyhow::Result<Option<LogPage>> {
        let build = sqlx::query("SELECT id FROM builds WHERE uuid = $1 AND account_id = $2")
            .bind(id.to_string())
            .bind(account.as_str())
            .fetch_optional(&self.pool)
            .await
            .context("finding a build's logs")?;
        let Some(build) = build else { return Ok(None) };
        let build_id: i64 = build.try_get("id")?;
        let mut lines = Vec::new();
        let mut bytes = 0;
        let mut next_seq = from;
        loop {
            let chunks = sqlx::query(
                "SELECT first_seq, body FROM build_log_chunks WHERE build_id = $1 AND first_seq + line_count > $2 \
                 ORDER BY first_seq LIMIT $3",
            )
            .bind(build_id)
            .bind(next_seq)
            .bind(CHUNKS_PER_READ)
            .fetch_all(&self.pool)
            .await
            .context("reading log lines")?;
            if chunks.is_empty() {
                return Ok(Some(LogPage {
                    lines,
                    next_seq,
                    more: false,
                }));
            }
            let before = next_seq;
            for chunk in &chunks {
                let first: i64 = chunk.try_get("first_seq")?;
                let body = text(chunk, "body")?;
                for (i, line) in decode_chunk(&body).enumerate() {
                    let seq = first + i as i64;
                    if seq < next_seq {
                        continue;
                    }
                    let (t, msg) = line?;
                    let cost = LogLimit::cost(msg);
                    let full = lines.len() == limit.lines as usize
                        || !lines.is_empty() && bytes + cost > limit.bytes;
                    if full {
                        return Ok(Some(LogPage {
                            lines,
                            next_seq,
                            more: true,
                        }));
                    }
                    bytes += cost;
                    lines.push((t, msg.to_owned()));
                    next_seq = seq + 1;
                }
            }
            anyhow::ensure!(
                next_seq > before,
                "a log chunk of build {id} holds fewer lines than its count"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_bounded_by_lines_and_bytes() {
        let at = Timestamp::from_millis(1);
        let small: Vec<(Timestamp, String)> = (0..2500).map(|i| (at, format!("l{i}"))).collect();
        let sizes: Vec<usize> = chunk_bounds(&small).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        let big: Vec<(Timestamp, String)> = (0..10).map(|_| (at, "x".repeat(60_000))).collect();
        let chunks = chunk_bounds(&big);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 10);
        assert!(chunks.iter().all(|c| c.len() == 2), "{}", chunks.len());
        // A line longer than a chunk gets a chunk of its own.
        let huge = vec![(at, "y".repeat(MAX_CHUNK_BYTES * 2)), (at, "z".into())];
        assert_eq!(chunk_bounds(&huge).len(), 2);
        assert!(chunk_bounds(&[]).is_empty());
    }

    #[test]
    fn a_line_costs_its_json_size() {
        for message in [
            "plain",
            "with \"quotes\" and \\",
            "tab\there",
            "\u{1b}[32mgreen\u{1b}[0m",
            "é→🚀",
            "",
        ] {
            let json = serde_json::to_string(&(1.5_f64, message)).unwrap();
            assert!(LogLimit::cost(message) >= json.len(), "{message:?}: {json}");
            assert!(
                LogLimit::cost(message) <= json.len() + 32,
                "{message:?}: {json}"
            );
        }
    }

    #[test]
    fn chunks_roundtrip_and_flatten_newlines() {
        let lines = vec![
            (Timestamp::from_millis(1), "a\tb".to_owned()),
            (Timestamp::from_millis(2), "multi\nline".to_owned()),
            (Timestamp::from_millis(3), String::new()),
        ];
        let body = encode_chunk(&lines);
        let back: Vec<(Timestamp, String)> = decode_chunk(&body)
            .map(|r| r.map(|(t, m)| (t, m.to_owned())))
            .collect::<anyhow::Result<_>>()
            .unwrap();
        assert_eq!(back[0], lines[0]);
        assert_eq!(back[1].1, "multi line");
        assert_eq!(back[2], lines[2]);
    }
}
