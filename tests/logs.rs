//! The log pipeline end to end: a property test of splitting and masking over random secrets, text and
//! read boundaries, and a real child process pumped into a real store and read back over the API.

mod common;

use std::sync::Arc;

use common::{TestApp, s};
use kiln::domain::{BuildId, Timestamp};
use kiln::logs::{LineSplitter, LogSink, MIN_MASKED_SECRET_LEN, Masker, pump};
use proptest::prelude::*;
use reqwest::Method;
use serde_json::json;

/// One piece of generated output.
#[derive(Debug, Clone)]
enum Segment {
    /// The secret with this index (modulo the number of secrets).
    Secret(usize),
    /// Arbitrary bytes, newlines and `*` included.
    Bytes(Vec<u8>),
    Newline,
    CrLf,
    /// A long run of one byte, to make long lines.
    Run(u8, usize),
}

fn printable_secret() -> impl Strategy<Value = Vec<u8>> {
    // Printable ASCII without `*`: a mask next to other text must not spell a secret.
    "[ -)+-~]{4,40}".prop_map(String::into_bytes)
}

fn byte_secret() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>().prop_filter("no *", |b| *b != b'*'), 4..=40)
}

/// Several secrets, some derived from others: prefixes, and overlaps (a suffix of one continued).
fn secrets() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let base = prop::collection::vec(prop_oneof![printable_secret(), byte_secret()], 1..=4);
    let derive = prop::collection::vec((any::<prop::sample::Index>(), 0..3u8, 0..40usize), 0..=3);
    (base, derive, byte_secret()).prop_map(|(mut secrets, derive, extension)| {
        for (index, kind, n) in derive {
            let from = index.get(&secrets).clone();
            let derived = match kind {
                // A prefix (never shorter than the minimum).
                0 => from[..MIN_MASKED_SECRET_LEN + n % (from.len() - MIN_MASKED_SECRET_LEN + 1)]
                    .to_vec(),
                // A suffix continued by other bytes: overlaps `from` when both are in the text.
                1 => {
                    let start = n % (from.len() - 1) + 1;
                    [&from[start..], &extension[..]].concat()
                }
                // `from` continued: `from` is its prefix.
                _ => [&from[..], &extension[..n % extension.len() + 1]].concat(),
            };
            secrets.push(derived);
        }
        secrets
    })
}

fn segments() -> impl Strategy<Value = Vec<Segment>> {
    let segment = prop_oneof![
        4 => (0..16usize).prop_map(Segment::Secret),
        3 => prop::collection::vec(any::<u8>(), 0..12).prop_map(Segment::Bytes),
        2 => Just(Segment::Newline),
        1 => Just(Segment::CrLf),
        1 => (any::<u8>(), 0..300usize).prop_map(|(b, n)| Segment::Run(b, n)),
    ];
    prop::collection::vec(segment, 0..60)
}

fn build_text(segments: &[Segment], secrets: &[Vec<u8>]) -> Vec<u8> {
    let mut text = Vec::new();
    for segment in segments {
        match segment {
            Segment::Secret(i) => text.extend_from_slice(&secrets[i % secrets.len()]),
            Segment::Bytes(b) => text.extend_from_slice(b),
            Segment::Newline => text.push(b'\n'),
            Segment::CrLf => text.extend_from_slice(b"\r\n"),
            Segment::Run(b, n) => text.extend(std::iter::repeat_n(*b, *n)),
        }
    }
    text
}

/// `text` cut at the given points (taken modulo its length), as a pipe might deliver it.
fn chunks<'a>(text: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
    at.push(0);
    at.push(text.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &text[w[0]..w[1]]).collect()
}

/// What each line should become: masked whole, then its trailing `\r` removed.
fn expected_lines(text: &[u8], masker: &Masker) -> Vec<Vec<u8>> {
    let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
        .into_iter()
        .map(|line| {
            let mut masked = masker.mask_line(line).into_owned();
            if masked.last() == Some(&b'\r') {
                masked.pop();
            }
            masked
        })
        .collect()
}

/// Groups emitted pieces back into lines of the lengths expected; `None` if they do not add up.
fn regroup(pieces: &[Vec<u8>], expected: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    let mut pieces = pieces.iter();
    let mut lines = Vec::new();
    for want in expected {
        let mut line = pieces.next()?.clone();
        if line.is_empty() && !want.is_empty() {
            return None;
        }
        while line.len() < want.len() {
            let piece = pieces.next()?;
            if piece.is_empty() {
                return None;
            }
            line.extend_from_slice(piece);
        }
        lines.push(line);
    }
    pieces.next().is_none().then_some(lines)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The byte strings that must never appear in an emitted line: each secret, or for a multi-line one
/// each of its lines long enough to be masked.
fn needles(secrets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for secret in secrets {
        if !secret.contains(&b'\n') {
            out.push(secret.clone());
        }
        for line in secret.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() >= MIN_MASKED_SECRET_LEN {
                out.push(line.to_vec());
            }
        }
    }
    out
}

proptest! {
    // Failures print their minimal input; no regression file is written into the source tree.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_secret_survives_splitting_and_masking(
        secrets in secrets(),
        segments in segments(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
        max_line in prop_oneof![Just(kiln::logs::MAX_LINE_BYTES), 4..120usize],
    ) {
        let text = build_text(&segments, &secrets);
        let masker = Arc::new(
            Masker::new(secrets.iter().enumerate().map(|(i, v)| (format!("S{i}"), v))).unwrap(),
        );
        let mut splitter = LineSplitter::with_max_line_bytes(masker.clone(), max_line);
        let mut pieces = Vec::new();
        for chunk in chunks(&text, &cuts) {
            splitter.feed_bytes(chunk, &mut pieces);
        }
        splitter.finish_bytes(&mut pieces);

        for piece in &pieces {
            prop_assert!(!piece.contains(&b'\n'));
            for needle in needles(&secrets) {
                prop_assert!(!contains(piece, &needle), "{needle:?} in {piece:?}");
            }
        }
        // Pieces of a long line, put back together, are the line masked whole: no secret was cut.
        let expected = expected_lines(&text, &masker);
        let lines = regroup(&pieces, &expected);
        prop_assert_eq!(lines.as_ref(), Some(&expected));

        // The text API is the same lines, decoded.
        let mut splitter = LineSplitter::with_max_line_bytes(masker, max_line);
        let mut decoded = Vec::new();
        for chunk in chunks(&text, &cuts) {
            splitter.feed(chunk, &mut decoded);
        }
        splitter.finish(&mut decoded);
        let lossy: Vec<String> =
            pieces.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        prop_assert_eq!(decoded, lossy);
    }

    #[test]
    fn without_secrets_lines_are_the_input_split_on_newlines(
        lines in prop::collection::vec("[^\r\n\u{fffd}]{0,40}", 0..30),
        trailing_newline in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
        max_line in prop_oneof![Just(kiln::logs::MAX_LINE_BYTES), 4..60usize],
    ) {
        let mut text = lines.join("\n");
        if trailing_newline && !lines.is_empty() {
            text.push('\n');
        }
        let mut splitter = LineSplitter::with_max_line_bytes(Arc::new(Masker::disabled()), max_line);
        let mut out = Vec::new();
        for chunk in chunks(text.as_bytes(), &cuts) {
            splitter.feed(chunk, &mut out);
        }
        splitter.finish(&mut out);
        // Characters split across reads or pieces survive.
        prop_assert!(out.iter().all(|l| !l.contains(char::REPLACEMENT_CHARACTER)), "{:?}", out);
        let mut want: Vec<String> = text.split('\n').map(str::to_owned).collect();
        if text.is_empty() || text.ends_with('\n') {
            want.pop();
        }
        if max_line == kiln::logs::MAX_LINE_BYTES {
            prop_assert_eq!(out, want);
        } else {
            let pieces: Vec<Vec<u8>> = out.into_iter().map(String::into_bytes).collect();
            let want: Vec<Vec<u8>> = want.into_iter().map(String::into_bytes).collect();
            let lines = regroup(&pieces, &want);
            prop_assert_eq!(lines.as_ref(), Some(&want));
        }
    }
}

#[tokio::test]
async fn a_child_process_is_pumped_masked_into_the_store() {
    let app = TestApp::spawn().await;
    let f = app.fixture("pumped-worker").await;
    let b = app
        .ok(
            Method::POST,
            &app.acct(&format!("/triggers/{}/builds", f.trigger)),
            Some(json!({"branch": "main"})),
        )
        .await;
    let build = s(&b["build_uuid"]);
    let id = BuildId::parse("b", &build).expect("build id");

    let token = "cf-build-token-Zq9xK2";
    let secret = "hunter2-but-longer";
    let version = "5a3b6c7d-1e2f-4a5b-9c8d-7e6f5a4b3c2d";
    let masker = Masker::new([
        ("CLOUDFLARE_API_TOKEN", token),
        ("DB_PASSWORD", secret),
        ("FLAG", "1"),
    ])
    .expect("masker");
    assert_eq!(masker.skipped(), ["FLAG"]);
    let sink = LogSink::new((app.store().clone(), id));
    sink.push(Timestamp::now(), "Initializing build environment...")
        .await
        .expect("push");
    let script = r#"
        printf 'token=%s\n' "$CLOUDFLARE_API_TOKEN"
        printf 'to stderr: %s\n' "$DB_PASSWORD" >&2
        printf 'nul:\000:end\n'
        i=0
        while [ $i -lt 2500 ]; do echo "line $i"; i=$((i+1)); done
        printf '\033[32mCurrent Version ID: %s\033[0m\r\n' "$VERSION"
        printf 'no newline at the end'
    "#;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("CLOUDFLARE_API_TOKEN", token)
        .env("DB_PASSWORD", secret)
        .env("VERSION", version)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    pump(stdout, stderr, Arc::new(masker), &sink)
        .await
        .expect("pump");
    assert!(child.wait().await.expect("wait").success());
    sink.push(Timestamp::now(), "Success: Build command completed")
        .await
        .expect("push");
    let summary = sink.finish().await.expect("finish");
    assert_eq!(summary.version_id.as_deref(), Some(version));
    assert_eq!(summary.lines_seen, 2507);
    assert_eq!(summary.lines_stored, 2507);

    // Read back through the API, page by page.
    let mut got: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => app.acct(&format!("/builds/{build}/logs?cursor={c}")),
            None => app.acct(&format!("/builds/{build}/logs")),
        };
        let r = app.ok(Method::GET, &path, None).await;
        for l in r["lines"].as_array().expect("lines") {
            got.push(s(&l[1]));
        }
        cursor = Some(s(&r["cursor"]));
        if r["truncated"] == json!(false) {
            break;
        }
    }
    assert_eq!(got.len(), 2507);
    assert!(
        got.iter()
            .all(|l| !l.contains(token) && !l.contains(secret))
    );
    // stderr's line may come anywhere after the first line; everything else keeps its order.
    let stderr_at = got
        .iter()
        .position(|l| l == "to stderr: ***")
        .expect("the stderr line");
    assert!(stderr_at > 0);
    got.remove(stderr_at);
    let mut want = vec![
        "Initializing build environment...".to_owned(),
        "token=***".to_owned(),
        // PostgreSQL text cannot hold NUL: it is replaced.
        "nul:\u{fffd}:end".to_owned(),
    ];
    want.extend((0..2500).map(|i| format!("line {i}")));
    want.push(format!("\u{1b}[32mCurrent Version ID: {version}\u{1b}[0m"));
    want.push("no newline at the end".to_owned());
    want.push("Success: Build command completed".to_owned());
    assert_eq!(got, want);
    app.stop().await;
}

/// A secret printed through `base64` (alone, in a Basic `user:secret` header, long enough to wrap),
/// the output delivered a few bytes at a time, is masked in the lines stored and served.
#[tokio::test]
async fn base64_encoded_secrets_are_masked_across_reads() {
    let app = TestApp::spawn().await;
    let f = app.fixture("base64-worker").await;
    let b = app
        .ok(
            Method::POST,
            &app.acct(&format!("/triggers/{}/builds", f.trigger)),
            Some(json!({"branch": "main"})),
        )
        .await;
    let build = s(&b["build_uuid"]);
    let id = BuildId::parse("b", &build).expect("build id");

    let secret = "s3cr3t-Pa55word-0f9a";
    let long =
        "a-much-longer-secret-that-base64-wraps-over-the-76-column-limit-of-coreutils-0123456789";
    let script = r#"
        printf %s "$SECRET" | base64
        printf "user:%s" "$SECRET" | base64
        printf "ab%s" "$SECRET" | base64
        printf %s "$LONG" | base64
        printf "x%s" "$LONG" | base64
        echo done
    "#;
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("SECRET", secret)
        .env("LONG", long)
        .output()
        .await
        .expect("run sh");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout.clone()).expect("base64 is ASCII");
    // Sanity: the raw output does hold the encoded secrets (and wrapped lines).
    assert!(printed.lines().any(|l| l.len() == 76), "{printed}");

    let masker = Masker::new([("SECRET", secret), ("LONG", long)]).expect("masker");
    let sink = LogSink::new((app.store().clone(), id));
    let (mut out_w, out_r) = tokio::io::duplex(8);
    let (err_w, err_r) = tokio::io::duplex(8);
    let feed = async move {
        use tokio::io::AsyncWriteExt;
        for chunk in out.stdout.chunks(3) {
            out_w.write_all(chunk).await.expect("write");
        }
        drop(out_w);
        drop(err_w);
    };
    let (pumped, ()) = tokio::join!(pump(out_r, err_r, Arc::new(masker), &sink), feed);
    pumped.expect("pump");
    sink.finish().await.expect("finish");

    let logs = common::all_logs(&app, &build).await;
    assert_eq!(logs.last().map(String::as_str), Some("done"), "{logs:?}");
    let joined = logs.concat();
    for secret in [secret, long] {
        for fragment in kiln::logs::base64_fragments(secret.as_bytes()) {
            let fragment = String::from_utf8(fragment).unwrap();
            assert!(!joined.contains(&fragment), "{fragment} in {logs:?}");
        }
    }
    assert!(
        logs.iter().filter(|l| l.contains("***")).count() >= 5,
        "{logs:?}"
    );
    app.stop().await;
}

/// Resident memory of this process (the test server runs in it), in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// The issue's input: 1,000 lines of 64 KiB made one page of about 64 MB, and 16 concurrent reads by a
/// read-only token grew the server by over 1 GB. Pages are now bounded by bytes as well as lines, and
/// paging through them still returns every line once, in order.
#[tokio::test]
async fn log_pages_are_bounded_by_bytes_and_lose_no_line() {
    let app = TestApp::spawn().await;
    let f = app.fixture("big-log-worker").await;
    let b = app
        .ok(
            Method::POST,
            &app.acct(&format!("/triggers/{}/builds", f.trigger)),
            Some(json!({"branch": "main"})),
        )
        .await;
    let build = s(&b["build_uuid"]);
    let id = BuildId::parse("b", &build).expect("build id");
    let line = |i: usize| format!("{i:06} {}", "x".repeat(64 * 1024 - 7));
    for batch in 0..10 {
        let lines: Vec<(Timestamp, String)> = (batch * 100..(batch + 1) * 100)
            .map(|i| (Timestamp::now(), line(i)))
            .collect();
        app.store()
            .append_build_logs(id, &lines)
            .await
            .expect("append");
    }
    // Short lines after the long ones, and a line with characters JSON escapes.
    let tail: Vec<(Timestamp, String)> = (0..1500)
        .map(|i| (Timestamp::now(), format!("short {i} \u{1}\"")))
        .collect();
    app.store()
        .append_build_logs(id, &tail)
        .await
        .expect("append");

    let reader = app
        .mint_token(Some(&[common::ACCOUNT]), kiln::domain::Permission::Read)
        .await;
    let page_limit = kiln::api::MAX_PAGE_BYTES + 64 * 1024;
    let fetch = |cursor: Option<String>| {
        let url = match cursor {
            Some(c) => app.url(&app.acct(&format!("/builds/{build}/logs?cursor={c}"))),
            None => app.url(&app.acct(&format!("/builds/{build}/logs"))),
        };
        let req = app.client.get(url).bearer_auth(&reader);
        async move {
            let resp = req.send().await.expect("send");
            assert_eq!(resp.status(), 200);
            let body = resp.bytes().await.expect("body");
            assert!(body.len() <= page_limit, "a page of {} bytes", body.len());
            serde_json::from_slice::<serde_json::Value>(&body).expect("json")
        }
    };

    let mut got: Vec<String> = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let v = fetch(cursor.clone()).await;
        let r = &v["result"];
        let lines = r["lines"].as_array().expect("lines");
        assert!(!lines.is_empty() || r["truncated"] == json!(false), "{r}");
        got.extend(lines.iter().map(|l| s(&l[1])));
        cursor = Some(s(&r["cursor"]));
        pages += 1;
        if r["truncated"] == json!(false) {
            break;
        }
        assert!(pages < 200, "cursor does not advance");
    }
    let want: Vec<String> = (0..1000)
        .map(line)
        .chain(tail.iter().map(|(_, m)| m.clone()))
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "lines lost, repeated or reordered");
    assert!(pages > 1000 / 16, "{pages} pages");

    // 16 concurrent first-page reads: each bounded, and the server does not balloon.
    let before = resident_bytes();
    let reads: Vec<_> = (0..16).map(|_| tokio::spawn(fetch(None))).collect();
    for read in reads {
        let v = read.await.expect("read task");
        assert_eq!(v["result"]["truncated"], true);
    }
    let grown = resident_bytes().saturating_sub(before);
    assert!(grown < 256 * 1024 * 1024, "grew by {grown} bytes");
    app.stop().await;
}
