//! Secret masking: every occurrence of a build's secret values in its output, as they are or
//! base64-encoded, becomes `***`.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// Shortest secret value, in bytes, that is masked. Shorter values (`1`, `yes`) would garble ordinary
/// output while hiding little; the runner warns about them instead (see [`Masker::skipped`]).
pub const MIN_MASKED_SECRET_LEN: usize = 4;

/// What a secret occurrence is replaced with.
pub const MASK: &str = "***";

/// Shortest base64 fragment of a secret, in characters, that is masked: 36 bits, at least as much
/// as the shortest masked secret ([`MIN_MASKED_SECRET_LEN`] bytes = 32 bits).
pub const MIN_MASKED_BASE64_LEN: usize = 6;

/// The parts of a secret's base64 encodings that do not depend on the bytes around it, for each of
/// the three positions it can have in the encoded stream (its first byte at offset 0, 1 or 2 mod 3),
/// in the standard and the URL-safe alphabet: what GitHub's Actions runner masks too.
///
/// In a stream of 3-byte groups, the characters of a group that holds bytes from outside the
/// secret are not determined by the secret: the fragment for a secret starting `shift` bytes before
/// the next group boundary encodes the secret from that boundary on, minus its last character when
/// the secret's last group is partial. Fragments shorter than [`MIN_MASKED_BASE64_LEN`] are left out.
pub fn base64_fragments(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for shift in 0..3 {
        let Some(tail) = secret.get(shift..).filter(|t| !t.is_empty()) else {
            break;
        };
        for engine in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
            let mut encoded = engine.encode(tail).into_bytes();
            if tail.len() % 3 != 0 {
                // The last character mixes the secret's last bits with those of the next byte.
                encoded.pop();
            }
            if encoded.len() >= MIN_MASKED_BASE64_LEN && !out.contains(&encoded) {
                out.push(encoded);
            }
        }
    }
    out
}

/// Replaces a build's secret values (secret environment variables and the build token) with [`MASK`].
///
/// Matching is leftmost-longest, so when one secret is a prefix of another the longer one is hidden
/// whole. A multi-line secret is masked whole and, because logs are masked one line at a time, each of
/// its lines (with a trailing `\r` removed) of at least [`MIN_MASKED_SECRET_LEN`] bytes is also masked
/// wherever it appears.
///
/// Each secret's [`base64_fragments`] are masked like the secret itself (a secret printed through
/// `base64`, alone or in a Basic `user:secret` header); the one or two characters on either side of a
/// fragment, which also depend on the neighbouring bytes, stay. [`Masker::mask_line`] also masks the
/// pieces of a fragment that `base64` wrapped onto several lines (it wraps at 76 columns).
#[derive(Debug, Clone, Default)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
    max_len: usize,
    skipped: Vec<String>,
    /// Every secret's base64 fragments, for [`Masker::mask_line`].
    encoded: Vec<Vec<u8>>,
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
        let mut encoded: Vec<Vec<u8>> = Vec::new();
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
            encoded.extend(base64_fragments(value));
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
        encoded.sort();
        encoded.dedup();
        patterns.extend(encoded.iter().cloned());
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
            encoded,
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

    /// Length in bytes of the longest masked value, base64 fragments included (0 when nothing is
    /// masked).
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

    /// One whole line of output (without its `\n`) with every secret replaced by [`MASK`], as
    /// [`Masker::mask_bytes`] does, and, when the line is nothing but base64 text, also the start of
    /// a secret's base64 fragment at its end, the rest of one at its start, and a line that lies
    /// inside one: the pieces of an encoded secret that `base64` wrapped across lines.
    pub fn mask_line<'a>(&self, line: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(matcher) = &self.matcher else {
            return Cow::Borrowed(line);
        };
        // A line may still end with the `\r` of a `\r\n`.
        let text = line.strip_suffix(b"\r").unwrap_or(line);
        let wrapped = if text.len() >= MIN_MASKED_BASE64_LEN && is_base64_text(text) {
            self.wrapped_fragment_ends(text)
        } else {
            (0, 0)
        };
        if wrapped == (0, 0) {
            return self.mask_bytes(line);
        }
        let (head, tail) = wrapped;
        // Masked ranges: the wrapped ends and every match, merged where they overlap.
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        if head > 0 {
            ranges.push((0, head));
        }
        ranges.extend(matcher.find_iter(line).map(|m| (m.start(), m.end())));
        if tail > 0 {
            ranges.push((text.len() - tail, text.len()));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start < last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        let mut out = Vec::with_capacity(line.len());
        let mut pos = 0;
        for (start, end) in merged {
            out.extend_from_slice(&line[pos..start]);
            out.extend_from_slice(MASK.as_bytes());
            pos = end;
        }
        out.extend_from_slice(&line[pos..]);
        Cow::Owned(out)
    }

    /// For a line of base64 text: how many bytes at its start end a fragment (all of them when the
    /// line lies inside one) and how many at its end begin one, each at least
    /// [`MIN_MASKED_BASE64_LEN`] long or 0.
    fn wrapped_fragment_ends(&self, line: &[u8]) -> (usize, usize) {
        let (mut head, mut tail) = (0, 0);
        let first = &line[..MIN_MASKED_BASE64_LEN];
        let last = &line[line.len() - MIN_MASKED_BASE64_LEN..];
        for fragment in &self.encoded {
            for at in memchr::memmem::find_iter(fragment, first) {
                let rest = &fragment[at..];
                if rest.len() >= line.len() {
                    if rest.starts_with(line) {
                        return (line.len(), 0);
                    }
                } else if line.starts_with(rest) {
                    head = head.max(rest.len());
                }
            }
            for at in memchr::memmem::find_iter(fragment, last) {
                let start = &fragment[..at + MIN_MASKED_BASE64_LEN];
                if start.len() < line.len() && line.ends_with(start) {
                    tail = tail.max(start.len());
                }
            }
        }
        (head, tail)
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

/// Whether `bytes` are all base64 characters (either alphabet) or `=` padding.
fn is_base64_text(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"+/-_=".contains(&b))
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
        // The longest pattern is the base64 form of the longest secret.
        assert_eq!(m.max_secret_len(), "czNjcjN0LXRva2Vu".len());
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

    /// `bytes` base64-encoded as coreutils' `base64` prints them: padded, wrapped at 76 columns.
    fn coreutils_base64(bytes: &[u8]) -> String {
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        let lines: Vec<&str> = encoded
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).expect("ascii"))
            .collect();
        lines.join("\n")
    }

    #[test]
    fn base64_fragments_cover_every_alignment() {
        let secret = b"s3cr3t-token-value";
        let fragments = base64_fragments(secret);
        for prefix in ["", "a", "ab", "abc", "user:", "Authorization: Basic x"] {
            let mut text = prefix.as_bytes().to_vec();
            text.extend_from_slice(secret);
            text.extend_from_slice(b" and more");
            let encoded = base64::engine::general_purpose::STANDARD.encode(&text);
            assert!(
                fragments
                    .iter()
                    .any(|f| encoded.as_bytes().windows(f.len()).any(|w| w == f)),
                "no fragment of the secret after {prefix:?} in {encoded}"
            );
        }
        // Too short to say anything about a secret: nothing.
        assert!(
            base64_fragments(b"abcd")
                .iter()
                .all(|f| f.len() >= MIN_MASKED_BASE64_LEN)
        );
        assert!(base64_fragments(b"ab").is_empty());
    }

    #[test]
    fn base64_encoded_secrets_are_masked() {
        let secret = "hunter2-s3cr3t-value";
        let m = masker(&[("PW", secret)]);
        for prefix in ["", "u", "us", "user:", "x-api-key=", "ab:"] {
            let plain = format!("{prefix}{secret}");
            for engine in [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::URL_SAFE,
            ] {
                let encoded = engine.encode(&plain);
                let line = format!("Authorization: Basic {encoded}");
                let masked = m.mask_line(line.as_bytes()).into_owned();
                let masked = String::from_utf8(masked).expect("utf-8");
                assert!(masked.contains(MASK), "{line} -> {masked}");
                for f in base64_fragments(secret.as_bytes()) {
                    let f = std::str::from_utf8(&f).expect("ascii");
                    assert!(!masked.contains(f), "{f} left in {masked}");
                }
            }
        }
    }

    #[test]
    fn base64_wrapped_across_lines_is_masked_on_every_line() {
        let secret =
            "a-long-secret-value-that-base64-wraps-over-two-or-three-lines-0123456789-abcdefghij";
        let m = masker(&[("LONG", secret)]);
        let fragments = base64_fragments(secret.as_bytes());
        for prefix in 0..80 {
            let text = format!("{}{secret}", "p".repeat(prefix));
            let printed = coreutils_base64(text.as_bytes());
            let masked: Vec<String> = printed
                .lines()
                .map(|l| String::from_utf8(m.mask_line(l.as_bytes()).into_owned()).expect("utf-8"))
                .collect();
            // Even joined back together, no fragment of the secret is left.
            let joined = masked.concat();
            for f in &fragments {
                let f = std::str::from_utf8(f).expect("ascii");
                assert!(!joined.contains(f), "prefix {prefix}: {f} in {masked:?}");
            }
            // Lines without any of the secret are untouched.
            assert!(
                masked[0].starts_with(&printed[..(prefix * 4 / 3).saturating_sub(2).min(76)]),
                "prefix {prefix}: {masked:?}"
            );
        }
        // Ordinary base64 lines are left alone.
        let other = coreutils_base64(&[7u8; 200]);
        for l in other.lines() {
            assert_eq!(m.mask_line(l.as_bytes()), l.as_bytes());
        }
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
