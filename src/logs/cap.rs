//! The per-build log size cap: keep the head and the tail of an oversized log, drop the middle.

use std::collections::VecDeque;

use crate::domain::Timestamp;

/// Default size of a build's stored log, in bytes (see [`line_cost`] for how a line is counted).
pub const DEFAULT_LOG_CAP_BYTES: u64 = 50 * 1024 * 1024;

/// Bytes a stored line costs on top of its message: its timestamp and separators. Counting them keeps
/// a flood of empty lines from escaping the cap.
pub const LINE_OVERHEAD_BYTES: u64 = 16;

/// What a line counts against the cap, in bytes.
pub fn line_cost(message: &str) -> u64 {
    message.len() as u64 + LINE_OVERHEAD_BYTES
}

/// Decides which lines of a build are stored. Lines are stored as they come until half the cap is used
/// (the head); after that the most recent lines worth up to the other half are held back (the tail)
/// and stored at the end, after a marker line saying what was dropped in between.
#[derive(Debug)]
pub(crate) struct LogCap {
    cap: u64,
    head_budget: u64,
    tail_budget: u64,
    head_used: u64,
    head_full: bool,
    tail: VecDeque<(Timestamp, String)>,
    tail_used: u64,
    omitted_lines: u64,
    /// Message bytes of the omitted lines.
    omitted_bytes: u64,
    last_omitted_at: Option<Timestamp>,
}

impl LogCap {
    /// A cap of `cap` bytes.
    pub(crate) fn new(cap: u64) -> LogCap {
        let head_budget = cap / 2;
        LogCap {
            cap,
            head_budget,
            tail_budget: cap - head_budget,
            head_used: 0,
            head_full: false,
            tail: VecDeque::new(),
            tail_used: 0,
            omitted_lines: 0,
            omitted_bytes: 0,
            last_omitted_at: None,
        }
    }

    /// Takes a line; gives it back when it is to be stored now (it belongs to the head).
    pub(crate) fn admit(&mut self, line: (Timestamp, String)) -> Option<(Timestamp, String)> {
        let cost = line_cost(&line.1);
        if !self.head_full {
            if self.head_used + cost <= self.head_budget {
                self.head_used += cost;
                return Some(line);
            }
            // Once one line misses the head, later ones go to the tail too, so order is kept.
            self.head_full = true;
        }
        self.tail_used += cost;
        self.tail.push_back(line);
        while self.tail_used > self.tail_budget {
            let Some((at, message)) = self.tail.pop_front() else {
                break;
            };
            self.tail_used -= line_cost(&message);
            self.omitted_lines += 1;
            self.omitted_bytes += message.len() as u64;
            self.last_omitted_at = Some(at);
        }
        None
    }

    /// Lines omitted so far.
    pub(crate) fn omitted_lines(&self) -> u64 {
        self.omitted_lines
    }

    /// The lines to store at the end: the marker, when lines were omitted, then the tail.
    pub(crate) fn finish(self) -> Vec<(Timestamp, String)> {
        let mut out = Vec::with_capacity(self.tail.len() + 1);
        if self.omitted_lines > 0 {
            let at = self
                .tail
                .front()
                .map(|(t, _)| *t)
                .or(self.last_omitted_at)
                .unwrap_or_else(Timestamp::now);
            out.push((
                at,
                format!(
                    "[... {} line{} ({}) omitted: the build log is capped at {} ...]",
                    self.omitted_lines,
                    if self.omitted_lines == 1 { "" } else { "s" },
                    format_size(self.omitted_bytes),
                    format_size(self.cap),
                ),
            ));
        }
        out.extend(self.tail);
        out
    }
}

/// A byte count for people: `512 bytes`, `1.5 KiB`, `98.2 MiB`, `50 MiB`.
pub(crate) fn format_size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let (value, unit) = match bytes {
        b if b >= 1 << 30 => (b as f64 / (KIB * KIB * KIB), "GiB"),
        b if b >= 1 << 20 => (b as f64 / (KIB * KIB), "MiB"),
        b if b >= 1 << 10 => (b as f64 / KIB, "KiB"),
        b => return format!("{b} byte{}", if b == 1 { "" } else { "s" }),
    };
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line that costs exactly 100 bytes.
    fn line(i: i64) -> (Timestamp, String) {
        let msg = format!("{i:084}");
        assert_eq!(line_cost(&msg), 100);
        (Timestamp::from_millis(i), msg)
    }

    #[test]
    fn small_logs_are_stored_whole_as_they_come() {
        let mut cap = LogCap::new(1000);
        for i in 0..5 {
            assert_eq!(cap.admit(line(i)), Some(line(i)));
        }
        assert!(cap.finish().is_empty());
    }

    #[test]
    fn keeps_head_and_tail_with_a_marker_between() {
        let mut cap = LogCap::new(1000);
        let stored_now: Vec<_> = (0..20).filter_map(|i| cap.admit(line(i))).collect();
        assert_eq!(stored_now, (0..5).map(line).collect::<Vec<_>>());
        assert_eq!(cap.omitted_lines(), 10);
        let end = cap.finish();
        assert_eq!(
            end[0],
            (
                Timestamp::from_millis(15),
                "[... 10 lines (840 bytes) omitted: the build log is capped at 1000 bytes ...]"
                    .to_owned()
            )
        );
        assert_eq!(end[1..], (15..20).map(line).collect::<Vec<_>>());
    }

    #[test]
    fn a_log_between_half_and_the_whole_cap_loses_nothing() {
        let mut cap = LogCap::new(1000);
        let now: Vec<_> = (0..8).filter_map(|i| cap.admit(line(i))).collect();
        assert_eq!(now.len(), 5);
        assert_eq!(cap.finish(), (5..8).map(line).collect::<Vec<_>>());
    }

    #[test]
    fn a_line_larger_than_the_tail_is_omitted() {
        let mut cap = LogCap::new(100);
        assert_eq!(
            cap.admit((Timestamp::from_millis(7), "x".repeat(200))),
            None
        );
        assert_eq!(
            cap.finish(),
            [(
                Timestamp::from_millis(7),
                "[... 1 line (200 bytes) omitted: the build log is capped at 100 bytes ...]"
                    .to_owned()
            )]
        );
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(format_size(1), "1 byte");
        assert_eq!(format_size(1023), "1023 bytes");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(DEFAULT_LOG_CAP_BYTES), "50 MiB");
        assert_eq!(format_size(102_970_000), "98.2 MiB");
        assert_eq!(format_size(3 << 30), "3 GiB");
    }
}
