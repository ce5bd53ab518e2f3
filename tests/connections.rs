//! Connections a client holds open: idle ones, heads and bodies sent a byte at a time, more than the
//! connection limit. The server closes each after its timeout and keeps answering the others.

mod common;

use std::time::Duration;

use common::*;
use kiln::listen::HttpConfig;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Short timeouts, so that the slow clients below are closed quickly.
const TIMEOUT: Duration = Duration::from_millis(800);
/// Bound for what should take about [`TIMEOUT`] or a few of them: generous for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(90);

fn short_timeouts(max_connections: usize) -> HttpConfig {
    HttpConfig {
        max_connections,
        header_read_timeout: TIMEOUT,
        body_read_timeout: TIMEOUT,
        idle_timeout: TIMEOUT,
    }
}

/// How a slow client behaves.
#[derive(Debug, Clone, Copy)]
enum Slow {
    /// Connects and sends nothing.
    Idle,
    /// Sends a request head one byte at a time.
    Head,
    /// Sends a whole head, then its body one byte at a time.
    Body,
}

/// What a slow client saw: everything the server sent, and when the server closed the connection
/// (`None` when it was still open after [`PATIENCE`]).
struct Seen {
    kind: Slow,
    answer: Vec<u8>,
    closed_after: Option<Duration>,
}

/// A slow client of `kind` on `addr`, trickling a byte every 200 ms of a head or a body that never
/// ends.
async fn slow_client(addr: std::net::SocketAddr, kind: Slow) -> Seen {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let body_head = format!(
        "POST /client/v4/accounts/023e105f4ecef8ad9ca31a8372d0c353/builds/tokens HTTP/1.1\r\n\
         Host: kiln\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    );
    let (head, trickle): (&[u8], &[u8]) = match kind {
        Slow::Idle => (b"", b""),
        Slow::Head => (
            b"",
            b"GET /client/v4/openapi.json HTTP/1.1\r\nHost: kiln\r\nX-Padding: ",
        ),
        Slow::Body => (body_head.as_bytes(), b"{\"build_token_name\": \""),
    };
    stream.write_all(head).await.expect("write head");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let mut sent = 0;
    let deadline = started + PATIENCE;
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    return Seen { kind, answer, closed_after: Some(started.elapsed()) };
                }
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if Instant::now() > deadline {
                    return Seen { kind, answer, closed_after: None };
                }
                if matches!(kind, Slow::Idle) {
                    continue;
                }
                // The prefix, then padding that never ends the head or the body.
                let byte = trickle.get(sent).copied().unwrap_or(b'a');
                if stream.write_all(&[byte]).await.is_ok() {
                    sent += 1;
                }
            }
        }
    }
}

#[tokio::test]
async fn slow_clients_are_closed_after_the_timeouts_and_a_normal_request_is_answered() {
    let app = TestApp::spawn_with(|c| c.http = short_timeouts(24)).await;
    let addr = app.server.as_ref().expect("server").addr;

    // Five times as many slow clients as there are connection slots.
    let mut clients = Vec::new();
    for i in 0..120 {
        let kind = [Slow::Idle, Slow::Head, Slow::Body][i % 3];
        clients.push(tokio::spawn(slow_client(addr, kind)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A normal request waits for a slot (slow clients are closed one timeout after they are
    // accepted) and is answered.
    let started = Instant::now();
    let (status, doc) = tokio::time::timeout(
        PATIENCE,
        app.call(reqwest::Method::GET, "/openapi.json", None, None),
    )
    .await
    .expect("the normal request was not answered while slow clients held connections");
    assert_eq!(status, 200, "{doc}");
    assert!(doc["paths"].is_object());
    let answered_after = started.elapsed();

    for client in clients {
        let seen = client.await.expect("slow client task");
        let closed_after = seen.closed_after.unwrap_or_else(|| {
            panic!(
                "a {:?} client was still connected after {PATIENCE:?}: {:?}",
                seen.kind,
                String::from_utf8_lossy(&seen.answer)
            )
        });
        // The timeout runs from the connection's accept (or its head's first byte, or the end of
        // the head), all after the connect.
        assert!(
            closed_after >= TIMEOUT,
            "a {:?} client was closed after {closed_after:?}, before the timeout",
            seen.kind
        );
        match seen.kind {
            // Nothing to answer: the request never started, or its head never ended.
            Slow::Idle | Slow::Head => assert!(
                seen.answer.is_empty(),
                "{:?}: {}",
                seen.kind,
                String::from_utf8_lossy(&seen.answer)
            ),
            // The body did not arrive in time: 408, in the envelope.
            Slow::Body => {
                let (status, body) = split_answer(&seen.answer);
                assert_eq!(status, 408, "{body}");
                assert_eq!(body["success"], false);
                assert_eq!(body["errors"][0]["code"], 12002);
                assert!(
                    body["errors"][0]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("not received within"),
                    "{body}"
                );
            }
        }
    }
    eprintln!("normal request answered after {answered_after:?}");
    // Nothing was stored by the bodies that never arrived.
    let (_, tokens) = app.get(&app.acct("/tokens")).await;
    assert_eq!(tokens["result"], serde_json::json!([]), "{tokens}");
    app.stop().await;
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_once_idle() {
    let app = TestApp::spawn_with(|c| c.http = short_timeouts(8)).await;
    let addr = app.server.as_ref().expect("server").addr;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    for _ in 0..2 {
        stream
            .write_all(b"GET /client/v4/nope HTTP/1.1\r\nHost: kiln\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.expect("read");
        let (status, body) = split_answer(&buf[..n]);
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["errors"][0]["code"], 7003);
    }
    let idle_since = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("an idle keep-alive connection stayed open")
        .ok();
    assert!(idle_since.elapsed() >= TIMEOUT);
    assert!(rest.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    let app = TestApp::spawn_with(|c| {
        c.http = HttpConfig {
            max_connections: 2,
            idle_timeout: Duration::from_secs(600),
            ..HttpConfig::default()
        }
    })
    .await;
    let addr = app.server.as_ref().expect("server").addr;
    let holders = [
        TcpStream::connect(addr).await.expect("connect"),
        TcpStream::connect(addr).await.expect("connect"),
    ];
    // Both slots are held by connections that stay idle: the third waits.
    let waiting = tokio::spawn({
        let url = format!("{}/client/v4/openapi.json", app.base);
        async move {
            let client = reqwest::Client::builder().no_proxy().build()?;
            client.get(url).send().await.map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "a third connection was served");
    // A slot frees up: it is served.
    let [first, _second] = holders;
    drop(first);
    let status = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiting request was not served once a slot was free")
        .expect("task")
        .expect("request");
    assert_eq!(status, 200);
    app.stop().await;
}

/// The status and the JSON body of one HTTP/1.1 answer.
pub fn split_answer(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (status, body)
}
