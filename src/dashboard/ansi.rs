//! Build log lines as HTML: colours and text attributes of ANSI SGR escape sequences become spans
//! with CSS classes, every character of the text is HTML-escaped, and every other escape or control
//! sequence is dropped. The sequences are parsed by `anstyle-parse` (the VT state machine of
//! `vte`).
//!
//! Classes (see `static/app.css`): `f0`–`f15` and `b0`–`b15` for the 16 terminal colours as
//! foreground and background (256-colour and RGB colours are shown as the nearest of these: the
//! page's Content-Security-Policy allows no inline styles), `ab` bold, `ad` dim, `ai` italic,
//! `au` underlined.

use std::fmt::Write;

use anstyle_parse::{DefaultCharAccumulator, Params, Parser, Perform};

/// A log line rendered: its HTML (safe to insert as is) and its visible text (for search).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedLine {
    pub html: String,
    pub text: String,
}

/// Text attributes in effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Style {
    fg: Option<u8>,
    bg: Option<u8>,
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
}

impl Style {
    fn classes(&self) -> String {
        let mut c = Vec::new();
        if let Some(f) = self.fg {
            c.push(format!("f{f}"));
        }
        if let Some(b) = self.bg {
            c.push(format!("b{b}"));
        }
        for (on, class) in [
            (self.bold, "ab"),
            (self.dim, "ad"),
            (self.italic, "ai"),
            (self.underline, "au"),
        ] {
            if on {
                c.push(class.to_owned());
            }
        }
        c.join(" ")
    }
}

/// The 16-colour index nearest to an RGB colour (the xterm palette's basic colours).
fn nearest_basic(r: u8, g: u8, b: u8) -> u8 {
    const PALETTE: [(u8, u8, u8); 16] = [
        (0, 0, 0),
        (205, 0, 0),
        (0, 205, 0),
        (205, 205, 0),
        (0, 0, 238),
        (205, 0, 205),
        (0, 205, 205),
        (229, 229, 229),
        (127, 127, 127),
        (255, 0, 0),
        (0, 255, 0),
        (255, 255, 0),
        (92, 92, 255),
        (255, 0, 255),
        (0, 255, 255),
        (255, 255, 255),
    ];
    let dist = |(pr, pg, pb): (u8, u8, u8)| {
        let d = |a: u8, b: u8| (i32::from(a) - i32::from(b)).pow(2);
        d(pr, r) + d(pg, g) + d(pb, b)
    };
    (0..16u8)
        .min_by_key(|&i| dist(PALETTE[usize::from(i)]))
        .unwrap_or(7)
}

/// The 16-colour index nearest to a 256-colour index.
fn from_256(n: u16) -> u8 {
    match n {
        0..=15 => n as u8,
        16..=231 => {
            let n = n - 16;
            let level = |v: u16| if v == 0 { 0 } else { (55 + v * 40) as u8 };
            nearest_basic(level(n / 36), level((n / 6) % 6), level(n % 6))
        }
        _ => {
            let grey = (8 + (n.min(255) - 232) * 10) as u8;
            nearest_basic(grey, grey, grey)
        }
    }
}

/// Collects a line's text runs with their styles.
#[derive(Default)]
struct Collector {
    style: Style,
    /// Runs of text with one style.
    runs: Vec<(Style, String)>,
    /// A carriage return was seen: the next text starts the line over (a progress bar's update).
    carriage_return: bool,
}

impl Collector {
    fn push(&mut self, c: char) {
        if self.carriage_return {
            self.carriage_return = false;
            self.runs.clear();
        }
        match self.runs.last_mut() {
            Some((style, text)) if *style == self.style => text.push(c),
            _ => self.runs.push((self.style, c.to_string())),
        }
    }

    /// Applies an SGR sequence's parameters.
    fn sgr(&mut self, params: &Params) {
        let mut values = params.iter().flat_map(|p| p.iter().copied());
        let mut any = false;
        while let Some(p) = values.next() {
            any = true;
            let s = &mut self.style;
            match p {
                0 => *s = Style::default(),
                1 => s.bold = true,
                2 => s.dim = true,
                3 => s.italic = true,
                4 => s.underline = true,
                22 => {
                    s.bold = false;
                    s.dim = false;
                }
                23 => s.italic = false,
                24 => s.underline = false,
                30..=37 => s.fg = Some((p - 30) as u8),
                39 => s.fg = None,
                40..=47 => s.bg = Some((p - 40) as u8),
                49 => s.bg = None,
                90..=97 => s.fg = Some((p - 90 + 8) as u8),
                100..=107 => s.bg = Some((p - 100 + 8) as u8),
                38 | 48 => {
                    let colour = match values.next() {
                        Some(5) => values.next().map(from_256),
                        Some(2) => {
                            let (r, g, b) = (values.next(), values.next(), values.next());
                            match (r, g, b) {
                                (Some(r), Some(g), Some(b)) => Some(nearest_basic(
                                    r.min(255) as u8,
                                    g.min(255) as u8,
                                    b.min(255) as u8,
                                )),
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    if p == 38 {
                        s.fg = colour;
                    } else {
                        s.bg = colour;
                    }
                }
                _ => {}
            }
        }
        // `ESC[m` resets, as `ESC[0m`.
        if !any {
            self.style = Style::default();
        }
    }
}

impl Perform for Collector {
    fn print(&mut self, c: char) {
        self.push(c);
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\t' => self.push('\t'),
            b'\r' => self.carriage_return = true,
            // Other control characters (bell, backspace, …) are not shown.
            _ => {}
        }
    }

    fn csi_dispatch(&mut self, params: &Params, intermediates: &[u8], ignore: bool, action: u8) {
        if action == b'm' && intermediates.is_empty() && !ignore {
            self.sgr(params);
        }
    }
}

/// Appends `text` HTML-escaped to `out`.
pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Renders one log line (see the module docs). A line ending in a carriage return keeps its text.
pub fn render_line(line: &str) -> RenderedLine {
    let mut parser = Parser::<DefaultCharAccumulator>::new();
    let mut collector = Collector::default();
    for byte in line.bytes() {
        parser.advance(&mut collector, byte);
    }
    let mut html = String::with_capacity(line.len() + 16);
    let mut text = String::with_capacity(line.len());
    for (style, run) in &collector.runs {
        text.push_str(run);
        let classes = style.classes();
        if classes.is_empty() {
            escape_into(&mut html, run);
        } else {
            // Classes come from the fixed names above: nothing of the line reaches an attribute.
            let _ = write!(html, "<span class=\"{classes}\">");
            escape_into(&mut html, run);
            html.push_str("</span>");
        }
    }
    RenderedLine { html, text }
}

/// `text` HTML-escaped, with each case-insensitive occurrence of `needle` (non-empty) wrapped in
/// `<mark>` (the server-side search of a log shows its matches so).
pub fn highlight(text: &str, needle: &str) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    let lower = text.to_lowercase();
    let needle = needle.to_lowercase();
    // Lowercasing can change lengths (e.g. `İ`): highlight only when byte offsets still line up.
    if needle.is_empty() || lower.len() != text.len() {
        escape_into(&mut out, text);
        return out;
    }
    let mut at = 0;
    for (start, _) in lower.match_indices(&needle) {
        if start < at
            || !text.is_char_boundary(start)
            || !text.is_char_boundary(start + needle.len())
        {
            continue;
        }
        escape_into(&mut out, &text[at..start]);
        out.push_str("<mark>");
        escape_into(&mut out, &text[start..start + needle.len()]);
        out.push_str("</mark>");
        at = start + needle.len();
    }
    escape_into(&mut out, &text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_become_classes_and_text_is_escaped() {
        let r = render_line("\x1b[1;31merror\x1b[0m: <b>&amp;</b> \x1b[32mok\x1b[m done");
        assert_eq!(
            r.html,
            "<span class=\"f1 ab\">error</span>: &lt;b&gt;&amp;amp;&lt;/b&gt; <span class=\"f2\">ok</span> done"
        );
        assert_eq!(r.text, "error: <b>&amp;</b> ok done");
    }

    #[test]
    fn html_in_a_line_is_text() {
        let r = render_line("<script>alert(1)</script><img src=x onerror=alert(2)> \"'");
        assert!(
            !r.html.contains('<') || !r.html.contains("<script"),
            "{}",
            r.html
        );
        assert_eq!(
            r.html,
            "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt; &quot;&#39;"
        );
        // Escapes cannot smuggle markup either.
        let r = render_line("\x1b[31m<i>\x1b]8;;http://x\x07link\x1b]8;;\x07\x1b[0m");
        assert_eq!(r.html, "<span class=\"f1\">&lt;i&gt;link</span>");
    }

    #[test]
    fn bright_256_and_rgb_colours_map_to_the_16() {
        assert_eq!(render_line("\x1b[91mx").html, "<span class=\"f9\">x</span>");
        assert_eq!(
            render_line("\x1b[38;5;196mx").html,
            "<span class=\"f9\">x</span>"
        );
        assert_eq!(
            render_line("\x1b[38;5;2mx").html,
            "<span class=\"f2\">x</span>"
        );
        assert_eq!(
            render_line("\x1b[38;2;0;200;0;44mx").html,
            "<span class=\"f2 b4\">x</span>"
        );
        assert_eq!(render_line("\x1b[38;2;1mx").html, "x");
    }

    #[test]
    fn carriage_returns_start_the_line_over_and_controls_are_dropped() {
        assert_eq!(render_line("10%\r50%\r100%").text, "100%");
        assert_eq!(render_line("done\r").text, "done");
        assert_eq!(render_line("a\x07b\x08c\x1b[2Kd\tx").text, "abcd\tx");
        // Cursor movement and other CSI sequences vanish; broken UTF-8 cannot occur in a &str.
        assert_eq!(render_line("\x1b[1A\x1b[?25lhi").html, "hi");
    }

    #[test]
    fn search_hits_are_marked_case_insensitively() {
        assert_eq!(
            highlight("Error <here> and error", "error"),
            "<mark>Error</mark> &lt;here&gt; and <mark>error</mark>"
        );
        assert_eq!(highlight("a<b", "<"), "a<mark>&lt;</mark>b");
        assert_eq!(highlight("abc", ""), "abc");
    }
}
