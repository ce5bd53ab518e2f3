//! How the client prints: JSON for scripts (`--json`), else aligned tables and key/value blocks with
//! colours only when standard output is a terminal and `NO_COLOR` is unset; times in local time and
//! ages; log lines with their colours (SGR sequences) on a terminal and without them elsewhere, and
//! never another escape or control sequence (log lines are written by builds, i.e. untrusted).

use std::io::{IsTerminal, Write};

use chrono::{DateTime, Local, Utc};
use console::{Style, measure_text_width, pad_str};
use serde_json::Value;

/// Where and how a command prints.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// `--json`: the API's `result` as JSON on standard output, nothing else there.
    pub json: bool,
    /// Colours on standard output.
    pub color: bool,
    /// Standard error is a terminal (spinners and progress go there).
    pub stderr_tty: bool,
}

impl Out {
    /// The output for `--json` as given, reading the terminal and `NO_COLOR`.
    pub fn new(json: bool) -> Out {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = !json && !no_color && std::io::stdout().is_terminal();
        console::set_colors_enabled(color);
        console::set_colors_enabled_stderr(!no_color && std::io::stderr().is_terminal());
        Out {
            json,
            color,
            stderr_tty: std::io::stderr().is_terminal(),
        }
    }

    /// Prints `value` as pretty JSON.
    pub fn print_json(&self, value: &Value) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, value)?;
        writeln!(out)?;
        Ok(())
    }

    /// A spinner on standard error with `message`, drawn only on a terminal.
    pub fn spinner(&self, message: &str) -> indicatif::ProgressBar {
        if !self.stderr_tty {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new_spinner();
        // `wide_msg`: the message is cut to the terminal's width, so that the line never wraps.
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {wide_msg}") {
            bar.set_style(style);
        }
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        bar
    }
}

/// Rows printed under a header row, each column as wide as its widest cell (cells may hold colour
/// codes: widths are measured without them).
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, columns two spaces apart, no trailing blanks.
    pub fn render(&self) -> String {
        let header: Vec<String> = self
            .header
            .iter()
            .map(|h| Style::new().bold().apply_to(h).to_string())
            .collect();
        let all: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let columns = self.header.len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                all.iter()
                    .map(|r| r.get(c).map_or(0, |s| measure_text_width(s)))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in all {
            let mut line = String::new();
            for (c, width) in widths.iter().enumerate() {
                let cell = row.get(c).map_or("", String::as_str);
                if c + 1 == columns {
                    line.push_str(cell);
                } else {
                    line.push_str(&pad_str(cell, *width, console::Alignment::Left, None));
                    line.push_str("  ");
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    pub fn print(&self) -> anyhow::Result<()> {
        std::io::stdout()
            .lock()
            .write_all(self.render().as_bytes())?;
        Ok(())
    }
}

/// Prints `label: value` lines with the labels aligned.
pub fn print_fields(fields: &[(&str, String)]) -> anyhow::Result<()> {
    let width = fields.iter().map(|(l, _)| l.len() + 1).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (label, value) in fields {
        let label = format!("{label}:");
        writeln!(
            out,
            "{}  {value}",
            Style::new().bold().apply_to(format!("{label:<width$}"))
        )?;
    }
    Ok(())
}

/// A string field of a JSON object (`""` when absent or not a string).
pub fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or("")
}

/// `-` for an empty cell.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

fn parse_time(rfc3339: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// An API time in local time, `2026-11-30 14:02:11`; `-` when absent.
pub fn local_time(rfc3339: &str) -> String {
    parse_time(rfc3339).map_or_else(
        || or_dash(rfc3339),
        |t| {
            t.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        },
    )
}

/// A duration in words: `45s`, `3m 05s`, `2h 10m`, `3d 4h`.
pub fn span(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// How long ago an API time was: `5m 02s ago`; `-` when absent.
pub fn age(rfc3339: &str) -> String {
    parse_time(rfc3339).map_or_else(
        || "-".to_owned(),
        |t| format!("{} ago", span((Utc::now() - t).num_seconds())),
    )
}

/// A build's duration: from `running_on` (else `initializing_on`) to `stopped_on`, or to now while
/// it runs; `-` before it started.
pub fn build_duration(build: &Value) -> String {
    let start = [text(build, "initializing_on"), text(build, "running_on")]
        .into_iter()
        .find_map(parse_time);
    let Some(start) = start else {
        return "-".to_owned();
    };
    let end = parse_time(text(build, "stopped_on")).unwrap_or_else(Utc::now);
    span((end - start).num_seconds())
}

/// A build's state in one word: its outcome once stopped, else its status.
pub fn build_state(build: &Value) -> &str {
    match build["build_outcome"].as_str() {
        Some(outcome) if text(build, "status") == "stopped" => outcome,
        _ => text(build, "status"),
    }
}

/// [`build_state`] coloured: green success, red fail and terminated, yellow while it runs.
pub fn styled_state(state: &str) -> String {
    let style = match state {
        "success" => Style::new().green(),
        "fail" | "terminated" => Style::new().red().bold(),
        "running" | "initializing" => Style::new().yellow(),
        "queued" => Style::new().cyan(),
        _ => Style::new().dim(),
    };
    style.apply_to(state).to_string()
}

/// The first 7 characters of a commit hash; `-` when unknown.
pub fn short_commit(hash: &str) -> String {
    or_dash(&hash.chars().take(7).collect::<String>())
}

/// The first line of `text`, cut to `width` characters with `…`.
pub fn first_line(text: &str, width: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    console::truncate_str(&strip_controls(line), width, "…").into_owned()
}

/// `text` without control characters (tabs become spaces): server data shown in a table cannot
/// move the cursor or change the terminal.
pub fn strip_controls(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// A log line as printed: its SGR (colour) sequences kept when `color`, every other escape
/// sequence and control character dropped (tabs kept).
pub fn log_line(line: &str, color: bool) -> String {
    let mut out = String::with_capacity(line.len());
    for (chunk, is_escape) in console::AnsiCodeIterator::new(line) {
        if is_escape {
            if color && is_sgr(chunk) {
                out.push_str(chunk);
            }
        } else {
            out.extend(chunk.chars().filter(|c| *c == '\t' || !c.is_control()));
        }
    }
    // A line that set a colour does not leak it into the next one.
    if color && out.contains('\u{1b}') {
        out.push_str("\u{1b}[0m");
    }
    out
}

/// `ESC [ <digits, ; or :> m`: Select Graphic Rendition, i.e. colours and text attributes.
fn is_sgr(sequence: &str) -> bool {
    sequence
        .strip_prefix("\u{1b}[")
        .and_then(|s| s.strip_suffix('m'))
        .is_some_and(|params| {
            params
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b';' || b == b':')
        })
}

/// A log line's time (`epoch_seconds`) as a local RFC 3339 time with milliseconds.
pub fn log_time(epoch_seconds: f64) -> String {
    let millis = (epoch_seconds * 1000.0).round() as i64;
    DateTime::from_timestamp_millis(millis).map_or_else(String::new, |t| {
        t.with_timezone(&Local)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_keep_only_colours_and_only_on_a_terminal() {
        let line = "\u{1b}[31merror\u{1b}[0m: \u{1b}]0;pwned\u{7}title\u{1b}[2J\tdone\r\u{8}";
        assert_eq!(log_line(line, false), "error: title\tdone");
        assert_eq!(
            log_line(line, true),
            "\u{1b}[31merror\u{1b}[0m: title\tdone\u{1b}[0m"
        );
        assert_eq!(log_line("plain", true), "plain");
        assert_eq!(
            log_line("\u{1b}[38;5;196mx", true),
            "\u{1b}[38;5;196mx\u{1b}[0m"
        );
    }

    #[test]
    fn tables_align_columns_whatever_the_colours() {
        console::set_colors_enabled(true);
        let mut table = Table::new(&["A", "LONGER"]);
        table.row(vec![
            Style::new().red().apply_to("xyz").to_string(),
            "1".into(),
        ]);
        table.row(vec!["w".into(), "".into()]);
        let plain = console::strip_ansi_codes(&table.render()).into_owned();
        assert_eq!(plain, "A    LONGER\nxyz  1\nw\n");
    }

    #[test]
    fn spans_read_as_words() {
        assert_eq!(span(-3), "0s");
        assert_eq!(span(59), "59s");
        assert_eq!(span(65), "1m 05s");
        assert_eq!(span(3 * 3600 + 120), "3h 02m");
        assert_eq!(span(2 * 86400 + 3600), "2d 1h");
        assert_eq!(strip_controls("a\u{1b}[2Jb\tc"), "a[2Jb c");
        assert_eq!(short_commit("0123456789"), "0123456");
        assert_eq!(short_commit(""), "-");
    }
}
