//! Turning a child's output, read in arbitrary chunks, into masked text lines.

use std::borrow::Cow;
use std::sync::Arc;

use super::mask::{Masker, bytes_to_string};

/// Longest line emitted, in bytes of raw output; longer lines are emitted in pieces of about this size.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Splits a byte stream into lines and masks them.
///
/// Fed chunks as they are read from a pipe: a line, a secret or a multi-byte UTF-8 character may be
/// split across chunks, so bytes are joined before anything is masked or decoded. Each line is emitted
/// without its `\n` and without a trailing `\r`, with invalid UTF-8 replaced by U+FFFD. A line longer
/// than the limit is emitted in pieces before its end arrives; the cut never splits a secret (masking
/// looks past the cut and bytes that could start a secret stay buffered for the next piece).
#[derive(Debug)]
pub struct LineSplitter {
    masker: Arc<Masker>,
    /// Raw bytes of the current line not yet emitted.
    buf: Vec<u8>,
    max_line: usize,
    /// Part of the current line was already emitted as a piece.
    continued: bool,
}

impl LineSplitter {
    /// A splitter with the [`MAX_LINE_BYTES`] limit.
    pub fn new(masker: Arc<Masker>) -> LineSplitter {
        LineSplitter::with_max_line_bytes(masker, MAX_LINE_BYTES)
    }

    /// A splitter emitting lines longer than `max_line` bytes in pieces (at least the longest secret,
    /// and at least 4 bytes, so that every piece makes progress).
    pub fn with_max_line_bytes(masker: Arc<Masker>, max_line: usize) -> LineSplitter {
        let max_line = max_line.max(masker.max_secret_len()).max(4);
        LineSplitter {
            masker,
            buf: Vec::new(),
            max_line,
            continued: false,
        }
    }

    /// Consumes one chunk of output, appending every line it completes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<String>) {
        self.feed_with(chunk, &mut |line| out.push(bytes_to_string(line)));
    }

    /// Emits the last line, if the output did not end with `\n`, to `out`.
    pub fn finish(&mut self, out: &mut Vec<String>) {
        self.finish_with(&mut |line| out.push(bytes_to_string(line)));
    }

    /// Like [`LineSplitter::feed`], with lines as masked bytes, not decoded.
    pub fn feed_bytes(&mut self, chunk: &[u8], out: &mut Vec<Vec<u8>>) {
        self.feed_with(chunk, &mut |line| out.push(line));
    }

    /// Like [`LineSplitter::finish`], with the line as masked bytes, not decoded.
    pub fn finish_bytes(&mut self, out: &mut Vec<Vec<u8>>) {
        self.finish_with(&mut |line| out.push(line));
    }

    fn feed_with(&mut self, chunk: &[u8], emit: &mut impl FnMut(Vec<u8>)) {
        let mut rest = chunk;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            if self.buf.is_empty() {
                // The common case: the whole line is in this chunk, no copy needed.
                self.complete_line(&rest[..i], emit);
            } else {
                self.buf.extend_from_slice(&rest[..i]);
                let line = std::mem::take(&mut self.buf);
                self.complete_line(&line, emit);
                // Keep the allocation for the next line.
                self.buf = line;
                self.buf.clear();
            }
            rest = &rest[i + 1..];
        }
        self.buf.extend_from_slice(rest);
        // Cut a piece only once the bytes after the cut can hold any secret that starts before it,
        // which also leaves at least one byte behind.
        let lookahead = self.masker.max_secret_len().saturating_sub(1);
        while self.buf.len() > self.max_line + lookahead {
            self.cut_piece(emit);
        }
    }

    fn finish_with(&mut self, emit: &mut impl FnMut(Vec<u8>)) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.complete_line(&line, emit);
        }
        self.continued = false;
    }

    /// Emits a line whose end is known: masked whole, without a trailing `\r`, cut if too long.
    fn complete_line(&mut self, line: &[u8], emit: &mut impl FnMut(Vec<u8>)) {
        let continued = std::mem::replace(&mut self.continued, false);
        // The `\r` goes after masking, as for pieces, where it may be masked before the line ends.
        let mut masked = self.masker.mask_line(line);
        if masked.ends_with(b"\r") {
            match &mut masked {
                Cow::Borrowed(b) => *b = &b[..b.len() - 1],
                Cow::Owned(v) => {
                    v.pop();
                }
            }
        }
        if masked.is_empty() && continued {
            // The end of a line already emitted in pieces, not an empty line.
            return;
        }
        if masked.len() <= self.max_line {
            emit(masked.into_owned());
            return;
        }
        // Cutting masked text cannot reveal a secret; at worst it splits a `***`.
        let mut rest: &[u8] = &masked;
        while rest.len() > self.max_line {
            let at = char_boundary_before(rest, self.max_line);
            emit(rest[..at].to_vec());
            rest = &rest[at..];
        }
        emit(rest.to_vec());
    }

    /// Emits about `max_line` bytes from the front of an unfinished line.
    fn cut_piece(&mut self, emit: &mut impl FnMut(Vec<u8>)) {
        let cut = char_boundary_before(&self.buf, self.max_line);
        let (masked, covered) = self.masker.mask_prefix(&self.buf, cut);
        emit(masked);
        self.buf.drain(..covered);
        self.continued = true;
    }
}

/// `at`, moved back by up to 3 bytes (never to 0) so as not to split a UTF-8 sequence in `bytes`.
fn char_boundary_before(bytes: &[u8], at: usize) -> usize {
    if at >= bytes.len() {
        return bytes.len();
    }
    (at.saturating_sub(3)..=at)
        .rev()
        .find(|&i| i > 0 && !is_continuation(bytes[i]))
        .unwrap_or(at)
}

fn is_continuation(b: u8) -> bool {
    b & 0b1100_0000 == 0b1000_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splitter(secrets: &[(&str, &str)], max_line: usize) -> LineSplitter {
        let masker = Masker::new(secrets.iter().copied()).expect("masker");
        LineSplitter::with_max_line_bytes(Arc::new(masker), max_line)
    }

    /// Feeds `chunks` and finishes, returning every emitted line.
    fn run(s: &mut LineSplitter, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        let mut s = splitter(&[], MAX_LINE_BYTES);
        let out = run(&mut s, &[b"one\ntw", b"o\n", b"", b"thr", b"ee\nfour"]);
        assert_eq!(out, ["one", "two", "three", "four"]);
    }

    #[test]
    fn keeps_empty_lines_and_strips_crlf() {
        let mut s = splitter(&[], MAX_LINE_BYTES);
        let out = run(&mut s, &[b"a\r\n\r\n\nb\r", b"\nc\rd\n"]);
        assert_eq!(out, ["a", "", "", "b", "c\rd"]);
        // A trailing newline ends the last line; it does not start an empty one.
        let mut s = splitter(&[], MAX_LINE_BYTES);
        assert_eq!(run(&mut s, &[b"x\n"]), ["x"]);
        assert!(run(&mut s, &[]).is_empty());
    }

    #[test]
    fn multi_byte_characters_split_across_reads_survive() {
        let text = "héllo → 世界 🚀\n";
        let bytes = text.as_bytes();
        for at in 0..bytes.len() {
            let mut s = splitter(&[], MAX_LINE_BYTES);
            let out = run(&mut s, &[&bytes[..at], &bytes[at..]]);
            assert_eq!(out, ["héllo → 世界 🚀"], "split at {at}");
        }
        let mut s = splitter(&[], MAX_LINE_BYTES);
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&mut s, &one_by_one), ["héllo → 世界 🚀"]);
        // Invalid bytes are replaced, not dropped.
        let mut s = splitter(&[], MAX_LINE_BYTES);
        assert_eq!(run(&mut s, &[b"a\xffb\n"]), ["a\u{fffd}b"]);
    }

    #[test]
    fn secrets_split_across_reads_are_masked() {
        let line = b"token=abcdef123456 done\n";
        for at in 0..line.len() {
            let mut s = splitter(&[("T", "abcdef123456")], MAX_LINE_BYTES);
            let out = run(&mut s, &[&line[..at], &line[at..]]);
            assert_eq!(out, ["token=*** done"], "split at {at}");
        }
    }

    #[test]
    fn long_lines_are_emitted_in_pieces() {
        let mut s = splitter(&[], 10);
        let out = run(
            &mut s,
            &[b"0123456789abcdefghij", b"KLMNOPQRST", b"uv\nnext\n"],
        );
        assert_eq!(
            out,
            ["0123456789", "abcdefghij", "KLMNOPQRST", "uv", "next"]
        );
        // A complete line in one chunk is cut the same way.
        let mut s = splitter(&[], 10);
        let out = run(&mut s, &[b"0123456789abcdefghij0123\n"]);
        assert_eq!(out, ["0123456789", "abcdefghij", "0123"]);
        // A line of exactly the limit is one line; the end of a cut line adds no empty line.
        let mut s = splitter(&[], 10);
        assert_eq!(run(&mut s, &[b"0123456789\n"]), ["0123456789"]);
        let mut s = splitter(&[], 4);
        assert_eq!(run(&mut s, &[b"abcde", b"fgh", b"\r\n"]), ["abcd", "efgh"]);
    }

    #[test]
    fn pieces_do_not_split_characters() {
        let mut s = splitter(&[], 4);
        let out = run(&mut s, &["ab€cdefgh".as_bytes()]);
        assert_eq!(out.concat(), "ab€cdefgh");
        assert!(out.iter().all(|l| !l.contains('\u{fffd}')), "{out:?}");
        let mut s = splitter(&[], 4);
        let bytes = "ab€cdefgh🚀x".as_bytes();
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        let out = run(&mut s, &chunks);
        assert_eq!(out.concat(), "ab€cdefgh🚀x");
    }

    #[test]
    fn base64_encoded_secrets_split_across_reads_are_masked() {
        use base64::Engine;
        let secret = "SECRETVALUE-0123456789";
        let fragments = super::super::mask::base64_fragments(secret.as_bytes());
        for prefix in ["", "u", "us", "user:"] {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{secret}"));
            let text = format!("Basic {encoded}\r\nnext\n");
            for chunk in [1, 2, 5, 13] {
                // A line short enough to be whole, and pieces of 16 bytes.
                for max_line in [MAX_LINE_BYTES, 16] {
                    let mut s = splitter(&[("S", secret)], max_line);
                    let chunks: Vec<&[u8]> = text.as_bytes().chunks(chunk).collect();
                    let out = run(&mut s, &chunks);
                    let joined = out.concat();
                    assert!(joined.contains("***"), "{prefix:?}, chunk {chunk}: {out:?}");
                    for f in &fragments {
                        let f = std::str::from_utf8(f).expect("ascii");
                        assert!(!joined.contains(f), "{prefix:?}, chunk {chunk}: {out:?}");
                    }
                    assert_eq!(out.last().map(String::as_str), Some("next"));
                }
            }
        }
    }

    #[test]
    fn a_secret_straddling_a_piece_boundary_is_masked() {
        let secret = "SECRETVALUE";
        for at in 0..30 {
            let text = format!("{}{secret}{}", "x".repeat(at), "y".repeat(30));
            for chunk in [1, 3, 7, 64] {
                let mut s = splitter(&[("S", secret)], 16);
                let chunks: Vec<&[u8]> = text.as_bytes().chunks(chunk).collect();
                let out = run(&mut s, &chunks);
                let joined = out.concat();
                assert!(!joined.contains(secret), "at {at}, chunk {chunk}: {out:?}");
                assert_eq!(joined, format!("{}***{}", "x".repeat(at), "y".repeat(30)));
            }
        }
    }
}
