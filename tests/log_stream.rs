//! The live log stream (`…/logs/stream`, Server-Sent Events): every line once and in order through a
//! disconnect and reconnect, from the node that runs the build or another one, masked, with an end
//! event; a stalled client neither slows the build nor keeps its stream; bad positions and other
//! accounts' builds are refused.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kiln::sandbox::SandboxMode;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A build command printing `1` to `n`, a thousand lines at a time with a pause between: the stream
/// follows it while it runs.
fn counting(n: usize) -> String {
    format!(
        "i=0; while [ $i -lt {n} ]; do seq $((i+1)) $((i+1000)); i=$((i+1000)); sleep 0.05; done"
    )
}

/// Asserts that `lines` holds `1`..=`n` in order, as a contiguous run, and that it is the build's log
/// as the logs endpoint pages it.
async fn assert_whole_log(app: &TestApp, build: &str, lines: &[String], n: usize) {
    let stored = all_logs(app, build).await;
    assert_eq!(lines.len(), stored.len(), "lines missed or repeated");
    assert!(
        lines == stored,
        "the stream's lines differ from the stored log"
    );
    let first = lines
        .iter()
        .position(|l| l == "1")
        .expect("the first counted line");
    let want: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    assert!(
        lines[first..first + n] == want[..],
        "counted lines out of order"
    );
}

#[tokio::test]
async fn twenty_thousand_lines_arrive_once_in_order_through_a_reconnect() {
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let f = app.fixture("tail").await;
    commit_files(&app, "tail", &[("README.md", "x")], "init");
    set_commands(&app, &f.trigger, &counting(20_000), "").await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    // Opened while the build is queued; dropped after 7,000 lines; resumed with Last-Event-ID.
    let read = read_stream(&app, &id, Some(7_000)).await;
    assert!(read.connections >= 2);
    let end = read.end.expect("end event");
    assert_eq!(end["status"], "stopped", "{end}");
    assert_eq!(end["build_outcome"], "success", "{end}");
    assert_eq!(end["build_uuid"], id.as_str());
    let build = get_build(&app, &id).await;
    assert_eq!(build["status"], "stopped");
    assert_eq!(end["stopped_on"], build["stopped_on"]);
    assert_whole_log(&app, &id, &read.lines, 20_000).await;

    // The last id resumes after the last line: nothing but the end event.
    let response = open_stream(&app, &id, read.last_id.as_deref(), "").await;
    let mut again = SseReader::new(response);
    let event = again.next().await.expect("an event");
    assert_eq!(event.event, "end");
    assert!(again.next().await.is_none(), "the stream closes after end");
    // A getBuildLogs cursor is a position too.
    let page = app
        .ok(Method::GET, &app.acct(&format!("/builds/{id}/logs")), None)
        .await;
    let cursor = s(&page["cursor"]);
    let lines_on_page = page["lines"].as_array().unwrap().len();
    let response = open_stream(&app, &id, None, &format!("?cursor={cursor}")).await;
    let mut from_cursor = SseReader::new(response);
    let event = from_cursor.next().await.expect("an event");
    assert_eq!(event.data[1], json!(read.lines[lines_on_page]));
    app.stop().await;
}

/// Two nodes on one database: the build runs on B, the stream is read from A, which gets no
/// in-process wake-ups for B's lines and polls the store.
#[tokio::test]
async fn a_node_that_does_not_run_the_build_streams_it() {
    // One key for both nodes: either may open what the other sealed.
    let key = "11".repeat(32);
    let runner = spawn_runner(SandboxMode::None, |c| {
        c.store.secret_key = Some(key.clone());
    })
    .await;
    let database_url = runner
        .config
        .store
        .database_url
        .clone()
        .unwrap_or_else(|| kiln::store::Store::sqlite_url(&runner.data_dir()));
    let api = TestApp::spawn_with(|c| {
        c.store.database_url = Some(database_url);
        c.store.secret_key = Some(key);
    })
    .await;
    let f = api.fixture("remote").await;
    commit_files(&runner, "remote", &[("README.md", "x")], "init");
    set_commands(&api, &f.trigger, &counting(20_000), "").await;
    let id = queue(&api, &f.trigger, json!({"branch": "main"})).await;
    let read = read_stream(&api, &id, Some(12_000)).await;
    assert!(read.connections >= 2);
    let end = read.end.expect("end event");
    assert_eq!(end["build_outcome"], "success", "{end}");
    assert_whole_log(&api, &id, &read.lines, 20_000).await;
    api.stop().await;
    runner.stop().await;
}

/// A secret of the build is masked in what the stream sends, as it is, and base64-encoded.
#[tokio::test]
async fn masking_holds_in_the_stream() {
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let f = app.fixture("masked").await;
    commit_files(&app, "masked", &[("README.md", "x")], "init");
    let secret = "sup3r-s3cret-Vq81x";
    app.ok(
        Method::PATCH,
        &app.acct(&format!("/triggers/{}/environment_variables", f.trigger)),
        Some(json!({"DEPLOY_SECRET": {"is_secret": true, "value": secret}})),
    )
    .await;
    set_commands(
        &app,
        &f.trigger,
        "echo \"secret=$DEPLOY_SECRET\"; printf %s \"$DEPLOY_SECRET\" | base64; echo done",
        "",
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let read = read_stream(&app, &id, None).await;
    assert_eq!(read.end.expect("end")["build_outcome"], "success");
    assert!(
        read.lines.iter().any(|l| l == "secret=***"),
        "{:?}",
        read.lines
    );
    let joined = read.lines.concat();
    assert!(!joined.contains(secret), "{:?}", read.lines);
    for fragment in kiln::logs::base64_fragments(secret.as_bytes()) {
        let fragment = String::from_utf8(fragment).unwrap();
        assert!(
            !joined.contains(&fragment),
            "{fragment} in {:?}",
            read.lines
        );
    }
    app.stop().await;
}

/// A client that opens the stream and reads nothing: the build runs as fast as without it and
/// finishes while that client is still connected, and the client's stream is closed before its end.
#[tokio::test]
async fn a_stalled_client_does_not_slow_the_build_and_is_dropped() {
    let app = spawn_runner(SandboxMode::None, |c| {
        c.log_streams.slow_reader_timeout = Duration::from_secs(2);
        // The stalled client's stream holds the only one until it is given up on.
        c.log_streams.max_streams = 1;
        // Its connection is closed only when it has read nothing for this long.
        c.http.idle_timeout = Duration::from_secs(300);
    })
    .await;
    let f = app.fixture("stalled").await;
    commit_files(&app, "stalled", &[("README.md", "x")], "init");
    // About 10 MB of log: more than the socket buffers and the stream's own can hold.
    let pad = "x".repeat(240);
    set_commands(
        &app,
        &f.trigger,
        &format!("i=0; while [ $i -lt 40 ]; do seq -f \"%g {pad}\" $((i*1000+1)) $((i*1000+1000)); i=$((i+1)); done"),
        "",
    )
    .await;
    let duration = |b: &serde_json::Value| {
        let at = |k: &str| chrono::DateTime::parse_from_rfc3339(&s(&b[k])).unwrap();
        (at("stopped_on") - at("initializing_on")).to_std().unwrap()
    };
    // The same build without a reader, for comparison.
    let alone = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let alone = wait_stopped(&app, &alone).await;
    assert_eq!(alone["build_outcome"], "success");
    let baseline = duration(&alone);

    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small receive window, so that the server's writes block early.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket
        .connect(app.base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: kiln\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n",
        app.url(&app.acct(&format!("/builds/{id}/logs/stream")))
            .trim_start_matches(&app.base)
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    let built = wait_stopped(&app, &id).await;
    let waited = started.elapsed();
    assert_eq!(built["build_outcome"], "success");
    let with_stalled = duration(&built);
    assert!(
        with_stalled <= baseline * 3 + Duration::from_secs(10),
        "{with_stalled:?} with a stalled reader, {baseline:?} without"
    );
    // Still connected: the server closes a connection whose client reads nothing only after its
    // idle timeout, which had not passed when the build finished.
    assert!(
        waited < app.config.http.idle_timeout,
        "the build took {waited:?}"
    );

    // Its stream is given up on: its slot frees while it is still connected, and a client that
    // reads gets the whole log.
    let stored = all_logs(&app, &id).await.len();
    assert!(stored > 40_000, "{stored}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let reader = loop {
        let response = open_stream(&app, &id, None, "").await;
        if response.status() == 200 {
            break response;
        }
        assert_eq!(response.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled stream was never given up on"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(reader);
    let read = read_stream(&app, &id, None).await;
    assert_eq!(read.lines.len(), stored);

    // What the stalled client holds ends before the build's log does, without `end`.
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stalled.read_to_end(&mut received))
        .await
        .expect("the server closes the stream")
        .ok();
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    let lines = text.matches("event: line").count();
    assert!(lines < stored, "the stalled client got all {lines} lines");
    assert!(
        !text.contains("event: end"),
        "the stalled client got the end"
    );
    app.stop().await;
}

/// A build cancelled while it runs: the stream has its runner's last line, then the end.
#[tokio::test]
async fn a_cancelled_build_streams_its_last_line_before_the_end() {
    let app = spawn_runner(SandboxMode::None, |_| {}).await;
    let f = app.fixture("cancelled").await;
    commit_files(&app, "cancelled", &[("README.md", "x")], "init");
    let marker = format!("1000.{}", &uuid::Uuid::new_v4().as_u128().to_string()[..12]);
    // The command ignores SIGTERM: it ends at the cancel grace's SIGKILL.
    set_commands(
        &app,
        &f.trigger,
        &format!("trap '' TERM; echo started; sleep {marker}"),
        "",
    )
    .await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let mut stream = SseReader::new(open_stream(&app, &id, None, "").await);
    let mut lines = Vec::new();
    while !lines.iter().any(|l| l == "started") {
        let event = stream.next().await.expect("a line");
        lines.push(s(&event.data[1]));
    }
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{id}/cancel")),
        None,
    )
    .await;
    let end = loop {
        let event = stream.next().await.expect("an event");
        if event.event == "end" {
            break event.data;
        }
        lines.push(s(&event.data[1]));
    };
    assert_eq!(end["build_outcome"], "cancelled");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("Build was cancelled"),
        "{lines:?}"
    );
    assert_eq!(lines, all_logs(&app, &id).await);
    app.stop().await;
}

/// A queued build's stream sends keep-alives, and ends with its outcome once it is cancelled.
#[tokio::test]
async fn a_waiting_stream_keeps_alive_and_ends_when_the_build_is_cancelled() {
    let app = TestApp::spawn_with(|c| {
        c.log_streams.keep_alive = Duration::from_millis(100);
    })
    .await;
    let f = app.fixture("waiting").await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let response = open_stream(&app, &id, None, "").await;
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-cache")
    );
    let mut stream = SseReader::new(response);
    // The stream waits for the build, keeping the connection alive; then the build is cancelled.
    assert_eq!(stream.next_comment().await, "keep-alive");
    app.ok(
        Method::PUT,
        &app.acct(&format!("/builds/{id}/cancel")),
        None,
    )
    .await;
    let event = stream.next().await.expect("an event");
    assert_eq!(event.event, "end", "{event:?}");
    assert_eq!(event.data["build_outcome"], "cancelled");
    assert!(stream.next().await.is_none());
    app.stop().await;
}

#[tokio::test]
async fn other_accounts_builds_are_404_and_bad_positions_are_400() {
    let app = TestApp::spawn().await;
    let f = app.fixture("refused").await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let read_json = |r: reqwest::Response| async move {
        let status = r.status();
        let body: serde_json::Value = r.json().await.expect("an envelope");
        (status, body)
    };

    let other = app
        .client
        .get(app.url(&format!(
            "/accounts/{OTHER_ACCOUNT}/builds/builds/{id}/logs/stream"
        )))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let (status, body) = read_json(other).await;
    assert_error(status, &body, 404, 12000);
    let unknown = uuid::Uuid::new_v4().to_string();
    let (status, body) = read_json(open_stream(&app, &unknown, None, "").await).await;
    assert_error(status, &body, 404, 12000);
    let (status, body) = read_json(open_stream(&app, "not-a-uuid", None, "").await).await;
    assert_error(status, &body, 400, 12002);
    // A token of another account may not read it at all.
    let outsider = app
        .mint_token(Some(&[OTHER_ACCOUNT]), kiln::domain::Permission::Read)
        .await;
    let denied = app
        .client
        .get(app.url(&app.acct(&format!("/builds/{id}/logs/stream"))))
        .bearer_auth(&outsider)
        .send()
        .await
        .unwrap();
    assert!(
        matches!(denied.status().as_u16(), 403 | 404),
        "{}",
        denied.status()
    );

    let negative = base64_url(r#"{"line":-1,"timestamp":0}"#);
    for query in [
        "?cursor=!!!",
        "?cursor=bm90LWpzb24",
        &format!("?cursor={negative}"),
    ] {
        let (status, body) = read_json(open_stream(&app, &id, None, query).await).await;
        assert_error(status, &body, 400, 12002);
        assert!(
            s(&body["errors"][0]["message"]).starts_with("cursor:"),
            "{body}"
        );
    }
    for header in ["garbage", "bm90LWpzb24", negative.as_str()] {
        let (status, body) = read_json(open_stream(&app, &id, Some(header), "").await).await;
        assert_error(status, &body, 400, 12002);
        assert!(
            s(&body["errors"][0]["message"]).starts_with("Last-Event-ID:"),
            "{body}"
        );
    }
    // Not text at all.
    let binary = app
        .client
        .get(app.url(&app.acct(&format!("/builds/{id}/logs/stream"))))
        .bearer_auth(ADMIN_TOKEN)
        .header(
            "last-event-id",
            reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = read_json(binary).await;
    assert_error(status, &body, 400, 12002);
    // A bad header is refused even with a good cursor, and an empty one is no position.
    let (status, _) = read_json(open_stream(&app, &id, Some("garbage"), "?cursor=").await).await;
    assert_eq!(status, 400);
    let fine = open_stream(&app, &id, Some(""), "").await;
    assert_eq!(fine.status(), 200);
    app.stop().await;
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// Streams beyond the node's limit are refused with 429 and `Retry-After`; a closed one frees its
/// slot.
#[tokio::test]
async fn streams_beyond_the_limit_are_refused_until_one_closes() {
    let app = TestApp::spawn_with(|c| {
        c.log_streams.max_streams = 1;
    })
    .await;
    let f = app.fixture("limited").await;
    let id = queue(&app, &f.trigger, json!({"branch": "main"})).await;
    let first = open_stream(&app, &id, None, "").await;
    assert_eq!(first.status(), 200);
    let refused = open_stream(&app, &id, None, "").await;
    assert!(refused.headers().contains_key("retry-after"));
    let status = refused.status();
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_error(status, &body, 429, 12051);
    assert!(
        s(&body["errors"][0]["message"]).contains("live log streams"),
        "{body}"
    );
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let again = open_stream(&app, &id, None, "").await;
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}
