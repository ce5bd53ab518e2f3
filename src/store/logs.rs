//! Build log lines, stored in chunks (one row per batch) so that ingestion costs one insert per batch.
//! Each chunk's body is `<epoch ms>\t<message>\n` per line; messages never contain `\n`.

use anyhow::Context;
use sqlx::Row;

use super::Store;
use super::rows::text;
use crate::domain::{AccountId, BuildId, Timestamp};

/// Lines per stored chunk at most.
const MAX_CHUNK_LINES: usize = 1000;

/// One page of log lines.
#[derive(Debug, Clone)]
pub struct LogPage {
    pub lines: Vec<(Timestamp, String)>,
    /// Sequence number of the first line after this page.
    pub next_seq: i64,
    /// More stored lines follow this page.
    pub more: bool,
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
    /// Appends log lines to a build, numbering them after the ones already stored.
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
        for chunk in lines.chunks(MAX_CHUNK_LINES) {
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
        w.commit().await
    }

    /// Up to `limit` log lines of a build starting at sequence number `from`; `None` when the build
    /// is not in the account.
    pub async fn get_build_logs(
        &self,
        account: &AccountId,
        id: BuildId,
        from: i64,
        limit: u32,
    ) -> anyhow::Result<Option<LogPage>> {
        let build = sqlx::query("SELECT id FROM builds WHERE uuid = $1 AND account_id = $2")
            .bind(id.to_string())
            .bind(account.as_str())
            .fetch_optional(&self.pool)
            .await
            .context("finding a build's logs")?;
        let Some(build) = build else { return Ok(None) };
        let build_id: i64 = build.try_get("id")?;
        // Each chunk holds at least one line, so limit + 1 chunks always cover limit + 1 lines.
        let chunks = sqlx::query(
            "SELECT first_seq, body FROM build_log_chunks WHERE build_id = $1 AND first_seq + line_count > $2 \
             ORDER BY first_seq LIMIT $3",
        )
        .bind(build_id)
        .bind(from)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .context("reading log lines")?;
        let mut lines = Vec::new();
        let mut more = false;
        let mut next_seq = from;
        'chunks: for chunk in &chunks {
            let first: i64 = chunk.try_get("first_seq")?;
            let body = text(chunk, "body")?;
            for (i, line) in decode_chunk(&body).enumerate() {
                let seq = first + i as i64;
                if seq < from {
                    continue;
                }
                if lines.len() == limit as usize {
                    more = true;
                    break 'chunks;
                }
                let (t, msg) = line?;
                lines.push((t, msg.to_owned()));
                next_seq = seq + 1;
            }
        }
        Ok(Some(LogPage {
            lines,
            next_seq,
            more,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
