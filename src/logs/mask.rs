//! Secret masking: every occurrence of a build's secret values in its output becomes `***`.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use anyhow::Context;

/// Shortest secret value, in bytes, that is masked. Shorter values (`1`, `yes`) would garble ordinary
/// output while hiding little; the runner warns about them instead (see [`Masker::skipped`]).
pub const MIN_MASKED_SECRET_LEN: usize = 4;

/// What a secret occurrence is replaced with.
pub const MASK: &str = "***";

/// Replaces a build's secret values (secret environment variables and the build token) with [`MASK`].
///
/// Matching is leftmost-longest, so when one secret is a prefix of another the longer one is hidden
/// whole. A multi-line secret is masked whole and, because logs are masked one line at a time, each of
/// its lines (with a trailing `\r` removed) of at least [`MIN_MASKED_SECRET_LEN`] bytes is also masked
/// wherever it appears.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
    max_len: usize,
    skipped: Vec<String>,
}

impl Masker {
    /// A masker for `(name, value)` pairs. Values shorter than [`MIN_MASKED_SECRET_LEN`] bytes are not
    /// masked and their names are listed by [`Masker::skipped`], as are multi-line values none of
    /// whose lines is that long (masked whole in [`Masker::mask_str`], but not in line-by-line logs);
    /// empty values are ignored.
    pub fn new<N, V>(secrets: impl IntoIterator<Item = (N, V)>) -> anyhow::Result<Masker>
    where
        N: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut skipped = Vec::new();
        for (name, value) in secrets {
            let value = value.as_ref();
            if value.is_empty() {
                continue;
            }
            if value.len() < MIN_MASKED_SECRET_LEN {
                skipped.push(name.as_ref().to_owned());
                continue;
            }
            patterns.push(value.to_vec());
            let mut masked_line = !value.contains(&b'\n');
            for line in value.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.len() >= MIN_MASKED_SECRET_LEN && line.len() < value.len() {
                    patterns.push(line.to_vec());
                    masked_line = true;
                }
            }
            if !masked_line {
                // Logs are masked a line at a time: a secret whose lines are all short shows there.
                skipped.push(name.as_ref().to_owned());
            }
        }
        skipped.sort();
        skipped.dedup();
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Ok(Masker {
                skipped,
                ..Masker::default()
            });
        }
        let max_len = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .context("building the secret matcher")?;
        Ok(Masker {
            matcher: Some(matcher),
            max_len,
            skipped,
        })
    }

    /// A masker that masks nothing.
    pub fn disabled() -> Masker {
        Masker::default()
    }

    /// Names of the secrets too short to be masked (sorted, without duplicates), for a warning.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Length in bytes of the longest masked value (0 when nothing is masked).
    pub fn max_secret_len(&self) -> usize {
        self.max_len
    }

    /// Whether this masker masks nothing.
    pub fn is_disabled(&self) -> bool {
        self.matcher.is_none()
    }

    /// `input` with every secret replaced by [`MASK`]; borrowed when nothing matched.
    pub fn mask_bytes<'a>(&self, input: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(matcher) = &self.matcher else {
            return Cow::Borrowed(input);
        };
        let mut out: Option<Vec<u8>> = None;
        let mut pos = 0;
        for m in matcher.find_iter(input) {
            let buf = out.get_or_insert_with(|| Vec::with_capacity(input.len()));
            buf.extend_from_slice(&input[pos..m.start()]);
            buf.extend_from_slice(MASK.as_bytes());
            pos = m.end();
        }
        match out {
            None => Cow::Borrowed(input),
            Some(mut buf) => {
                buf.extend_from_slice(&input[pos..]);
                Cow::Owned(buf)
            }
        }
    }

    /// `input` with every secret replaced by [`MASK`], for text the runner writes itself (system
    /// lines, error messages). Secrets that are not valid UTF-8 cannot occur in a `str` whole.
    pub fn mask_str<'a>(&self, input: &'a str) -> Cow<'a, str> {
        match self.mask_bytes(input.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(input),
            Cow::Owned(bytes) => Cow::Owned(bytes_to_string(bytes)),
        }
    }

    /// Masks the first `cut` bytes' worth of `input` for a streaming caller that has not seen what
    /// follows `input`: only matches starting before `cut` are replaced, which is exact as long as
    /// `cut + max_secret_len - 1 <= input.len()`. Returns the masked text and how many input bytes it
    /// covers (at least `cut`, more when the last match runs past it).
    pub(crate) fn mask_prefix(&self, input: &[u8], cut: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(cut);
        let mut pos = 0;
        if let Some(matcher) = &self.matcher {
            // A match starting before `cut` ends before `cut + max_len - 1`; scanning further is waste.
            let end = input.len().min(cut + self.max_len.saturating_sub(1));
            for m in matcher.find_iter(&input[..end]) {
                if m.start() >= cut {
                    break;
                }
                out.extend_from_slice(&input[pos..m.start()]);
                out.extend_from_slice(MASK.as_bytes());
                pos = m.end();
            }
        }
        let covered = cut.max(pos).min(input.len());
        out.extend_from_slice(&input[pos.min(covered)..covered]);
        (out, covered)
    }
}

/// Bytes as text, replacing invalid UTF-8 with U+FFFD, without copying valid input.
pub(crate) fn bytes_to_string(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(secrets: &[(&str, &str)]) -> Masker {
        Masker::new(secrets.iter().copied()).expect("masker")
    }

    #[test]
    fn masks_every_occurrence() {
        let m = masker(&[("TOKEN", "s3cr3t-token"), ("PW", "hunter2")]);
        assert_eq!(
            m.mask_str("a s3cr3t-token b hunter2hunter2 s3cr3t-token"),
            "a *** b ****** ***"
        );
        assert_eq!(m.max_secret_len(), "s3cr3t-token".len());
        assert!(matches!(m.mask_str("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn longest_secret_wins_when_one_is_a_prefix_of_another() {
        let m = masker(&[("A", "abcd"), ("B", "abcdefgh")]);
        assert_eq!(m.mask_str("xabcdefghx abcdx"), "x***x ***x");
    }

    #[test]
    fn short_secrets_are_skipped_and_named() {
        let m = masker(&[
            ("SHORT", "abc"),
            ("EMPTY", ""),
            ("OK", "abcd"),
            ("ONE", "1"),
        ]);
        assert_eq!(m.skipped(), ["ONE", "SHORT"]);
        assert_eq!(m.mask_str("abc abcd 1"), "abc *** 1");
        let none = masker(&[("X", "ab")]);
        assert!(none.is_disabled());
        assert_eq!(none.skipped(), ["X"]);
    }

    #[test]
    fn multi_line_secrets_are_masked_whole_and_per_line() {
        let key = "-----BEGIN KEY-----\r\nMIIEvQIBADAN\nab\nend-of-key\n";
        let m = masker(&[("KEY", key)]);
        assert_eq!(m.mask_str(&format!("<{key}>")), "<***>");
        assert_eq!(m.mask_str("line MIIEvQIBADAN"), "line ***");
        assert_eq!(m.mask_str("-----BEGIN KEY-----"), "***");
        // Lines shorter than the minimum are left alone.
        assert_eq!(m.mask_str("ab"), "ab");
        assert!(m.skipped().is_empty());
        // A multi-line secret of short lines only cannot be masked in logs: it is reported.
        let m = masker(&[("PAIR", "ab\ncd")]);
        assert_eq!(m.skipped(), ["PAIR"]);
        assert_eq!(m.mask_str("<ab\ncd>"), "<***>");
    }

    #[test]
    fn arbitrary_bytes_are_masked() {
        let m = Masker::new([("BIN", &[0xff_u8, 0x00, 0xfe, 0x41][..])]).expect("masker");
        assert_eq!(
            m.mask_bytes(&[1, 0xff, 0x00, 0xfe, 0x41, 2]).as_ref(),
            b"\x01***\x02"
        );
    }

    #[test]
    fn mask_prefix_defers_matches_starting_at_or_after_the_cut() {
        let m = masker(&[("S", "secret")]);
        // "secret" starts at 3 < cut 4: masked whole, covering past the cut.
        let (out, covered) = m.mask_prefix(b"abcsecretxyz", 4);
        assert_eq!((out.as_slice(), covered), (&b"abc***"[..], 9));
        // Starts at 4 == cut: left for the next piece.
        let (out, covered) = m.mask_prefix(b"abcdsecretxy", 4);
        assert_eq!((out.as_slice(), covered), (&b"abcd"[..], 4));
    }
}
