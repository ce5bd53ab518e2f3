//! Serving HTTP/1.1 on a listener: Kiln's own accept loop on hyper, so that no client can hold the
//! server's connections or file descriptors, and so that every answer, hyper's own protocol errors
//! included, is the Cloudflare envelope (DESIGN.md §2).
//!
//! * At most [`HttpConfig::max_connections`] connections are open at once. Further clients wait in the
//!   listen backlog: the accept loop takes a free slot before it accepts, so it never fails for want of
//!   descriptors. At start the soft limit on open files is raised to the hard limit
//!   ([`raise_fd_limit`]).
//! * A connection on which no request starts within [`HttpConfig::idle_timeout`] (a new one, or one
//!   between keep-alive requests) is closed; so is one whose client reads nothing of its response for
//!   that long.
//! * A request head (request line and header fields) must arrive within
//!   [`HttpConfig::header_read_timeout`] of its first byte, else the connection is closed; a body must
//!   arrive within [`HttpConfig::body_read_timeout`] of its head, else the answer is 408.
//! * hyper answers a request it cannot parse (garbage, a URI over [`MAX_URI_BYTES`], more than
//!   [`MAX_HEADERS`] header fields, a head over [`MAX_HEAD_BYTES`]) itself, with an empty body; the
//!   connection's IO ([`ConnIo`]) replaces that answer with the envelope, stating these limits.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::api::error::ApiError;

/// Most header fields a request may have (hyper refuses more: 431).
pub const MAX_HEADERS: usize = 100;
/// Most bytes of a request head (request line and header fields together): hyper refuses a longer
/// head (431), and its read buffer is this big.
pub const MAX_HEAD_BYTES: usize = 256 * 1024;
/// Longest request URI, in bytes: the maximum of the `http` crate that hyper parses URIs with (414).
pub const MAX_URI_BYTES: usize = 65534;

/// Connection limits and timeouts of the HTTP server (`kiln serve` flags; README "Flags").
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Connections open at once; more wait in the listen backlog. Lowered to half the open-file limit
    /// when that is smaller.
    pub max_connections: usize,
    /// Time from a request's first byte to the end of its head.
    pub header_read_timeout: Duration,
    /// Time from the end of a request's head to the end of its body.
    pub body_read_timeout: Duration,
    /// Time a connection may wait for a request to start (new, or between keep-alive requests), and
    /// for its client to read some of a response.
    pub idle_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Raises the soft limit on open files (`RLIMIT_NOFILE`) to the hard limit, and returns the soft
/// limit now in force. Every connection is a descriptor, and the usual soft default (1024) is below
/// what a loaded server needs.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and keeps no reference to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass and keeps no reference to it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_max)
}

/// The soft limit on open files, if it can be read.
fn fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in raise_fd_limit.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}

/// `configured`, or half the open-file limit when that is smaller: the other half stays for the
/// store, git, the build cache and builds.
fn connection_slots(configured: usize) -> usize {
    let Some(files) = fd_limit() else {
        return configured;
    };
    let budget = usize::try_from(files / 2).unwrap_or(usize::MAX).max(1);
    if configured > budget {
        tracing::warn!(
            max_connections = configured,
            open_file_limit = files,
            using = budget,
            "the open-file limit is too low for --max-connections: using half of it"
        );
        budget
    } else {
        configured
    }
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets each open
/// connection finish the request it is handling, and returns when all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: HttpConfig,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(connection_slots(config.max_connections)));
    let config = Arc::new(config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        // A slot first: while all are taken, new clients wait in the backlog, and no descriptor is
        // spent on them.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors or memory: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed; retrying in a second");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        connections.spawn(connection(
            stream,
            peer,
            app.clone(),
            config.clone(),
            slot,
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
}

/// Errors of one incoming connection (it went away before it was accepted), not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it closes, holding its slot.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    config: Arc<HttpConfig>,
    _slot: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let exchanges = Arc::new(Exchanges::default());
    let io = TokioIo::new(ConnIo::new(
        stream,
        exchanges.clone(),
        config.idle_timeout,
        config.header_read_timeout,
    ));
    let body_timeout = config.body_read_timeout;
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let exchange = Exchange::begin(&exchanges);
        let mut request = request.map(|body| Body::new(DeadlineBody::new(body, body_timeout)));
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = app.clone().oneshot(request);
        async move {
            let response = response.await?;
            Ok::<_, Infallible>(response.map(|body| ExchangeBody {
                body,
                _exchange: exchange,
            }))
        }
    });
    let conn = http1::Builder::new()
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES)
        // ConnIo times heads and idle connections (hyper's timer would count idle time as head time).
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = async {
            // The borrow it returns must not live across the await below.
            let _ = stop.wait_for(|stop| *stop).await;
        } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// A request body not received within the body read timeout; [`crate::api`]'s body reader answers
/// 408 for it.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {}s", .0.as_secs())]
pub struct BodyTimedOut(pub Duration);

/// A request body that fails with [`BodyTimedOut`] once its deadline (set when the head arrived) passes.
/// tower-http's `RequestBodyTimeout` restarts its clock at every frame, so a body sent a byte at a time
/// would never time out; this deadline is for the whole body.
struct DeadlineBody {
    body: Incoming,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(body: Incoming, timeout: Duration) -> Self {
        DeadlineBody {
            body,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(self.deadline.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// How many requests of a connection were handed to the router, and how many of their responses were
/// written (their bodies dropped). The service and the connection's IO share it, on one task.
#[derive(Debug, Default)]
struct Exchanges {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Exchanges {
    fn started(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    fn all_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst) == self.started()
    }
}

/// One request being handled: finished when dropped, with the response body that carries it (or
/// with the handler when the connection goes first).
struct Exchange(Arc<Exchanges>);

impl Exchange {
    fn begin(exchanges: &Arc<Exchanges>) -> Self {
        exchanges.started.fetch_add(1, Ordering::SeqCst);
        Exchange(exchanges.clone())
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::SeqCst);
    }
}

/// A response body carrying its [`Exchange`].
struct ExchangeBody {
    body: Body,
    _exchange: Exchange,
}

impl http_body::Body for ExchangeBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Where a connection is, as its IO sees it.
#[derive(Debug)]
enum Phase {
    /// No request started since this instant (the connection's start or the end of a response).
    Idle(Instant),
    /// A request head has been arriving since this instant (its first byte).
    Head(Instant),
    /// The router has a request; hyper reads its body and writes its response.
    Exchange,
    /// hyper is answering a request it could not parse: what it writes is swallowed (`seen` keeps its
    /// status line) and `answer` (the envelope, and how much of it is written) goes out instead.
    Refusing {
        seen: Vec<u8>,
        answer: Option<(Vec<u8>, usize)>,
    },
}

/// Longest status line looked for in hyper's own answer.
const STATUS_LINE_MAX: usize = 64;

/// The connection's IO under hyper: it closes idle connections and heads that take too long (reads
/// fail with `TimedOut`), and writes that wait too long for the client to read, and it turns hyper's
/// own bodiless error answers into envelopes.
///
/// hyper writes a response of its own only for a request it failed to parse, that is after the
/// previous response was flushed (hyper reads no new head before) and before the router got a new
/// request. [`Exchanges`] tells the two apart: a write while no exchange started since the last
/// flushed response is hyper's own.
struct ConnIo<T> {
    inner: T,
    exchanges: Arc<Exchanges>,
    idle_timeout: Duration,
    header_timeout: Duration,
    phase: Phase,
    /// `exchanges.started()` when last looked at.
    seen_started: u64,
    /// Since when a write has been waiting for the client.
    write_waiting_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    timer_deadline: Instant,
}

impl<T> ConnIo<T> {
    fn new(
        inner: T,
        exchanges: Arc<Exchanges>,
        idle_timeout: Duration,
        header_timeout: Duration,
    ) -> Self {
        let now = Instant::now();
        ConnIo {
            inner,
            exchanges,
            idle_timeout,
            header_timeout,
            phase: Phase::Idle(now),
            seen_started: 0,
            write_waiting_since: None,
            timer: Box::pin(tokio::time::sleep_until(now)),
            timer_deadline: now,
        }
    }

    /// Notices a request handed to the router since the last call.
    fn sync(&mut self) {
        let started = self.exchanges.started();
        if started != self.seen_started {
            self.seen_started = started;
            if !matches!(self.phase, Phase::Refusing { .. }) {
                self.phase = Phase::Exchange;
            }
        }
    }

    /// Whether `deadline` has passed; otherwise the task is woken when it does.
    fn passed(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        if self.timer_deadline != deadline {
            self.timer.as_mut().reset(deadline);
            self.timer_deadline = deadline;
        }
        self.timer.as_mut().poll(cx).is_ready()
    }

    /// A write's outcome, failing it once the client has read nothing for the idle timeout.
    fn write_timed<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match poll {
            Poll::Pending => {
                let since = *self.write_waiting_since.get_or_insert_with(Instant::now);
                if self.passed(cx, since + self.idle_timeout) {
                    Poll::Ready(Err(timed_out("the client reads nothing of the response")))
                } else {
                    Poll::Pending
                }
            }
            ready => {
                self.write_waiting_since = None;
                ready
            }
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl<T: AsyncWrite + Unpin> ConnIo<T> {
    /// Writes the envelope that replaces hyper's own answer.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Phase::Refusing { seen, answer } = &mut self.phase else {
                return Poll::Ready(Ok(()));
            };
            let (bytes, written) = answer.get_or_insert_with(|| refusal(seen));
            if *written == bytes.len() {
                return Poll::Ready(Ok(()));
            }
            let poll = Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]);
            let n = ready!(self.write_timed(cx, poll))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if let Phase::Refusing {
                answer: Some((_, written)),
                ..
            } = &mut self.phase
            {
                *written += n;
            }
        }
    }
}

/// The envelope answer for hyper's own answer that starts with `seen` (its status line).
fn refusal(seen: &[u8]) -> (Vec<u8>, usize) {
    let status = std::str::from_utf8(seen)
        .ok()
        .and_then(|head| head.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok());
    let error = match status {
        Some(414) => ApiError::UriTooLong,
        Some(431) => ApiError::HeadersTooLarge,
        _ => ApiError::MalformedRequest,
    };
    let (status, envelope) = error.status_and_body();
    let body = serde_json::to_vec(&envelope).unwrap_or_default();
    let mut bytes = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&body);
    (bytes, 0)
}

impl<T: AsyncRead + Unpin> AsyncRead for ConnIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.sync();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before
                    && let Phase::Idle(_) = this.phase
                {
                    this.phase = Phase::Head(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let deadline = match this.phase {
                    Phase::Idle(since) => Some((since + this.idle_timeout, "no request started")),
                    Phase::Head(since) => Some((
                        since + this.header_timeout,
                        "the request head did not arrive in time",
                    )),
                    Phase::Exchange | Phase::Refusing { .. } => None,
                };
                match deadline {
                    Some((deadline, what)) if this.passed(cx, deadline) => {
                        Poll::Ready(Err(timed_out(what)))
                    }
                    _ => Poll::Pending,
                }
            }
            failed => failed,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ConnIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.sync();
        if let Phase::Idle(_) | Phase::Head(_) = this.phase {
            this.phase = Phase::Refusing {
                seen: Vec::new(),
                answer: None,
            };
        }
        if let Phase::Refusing { seen, answer } = &mut this.phase {
            if answer.is_none() && !seen.contains(&b'\n') {
                let room = STATUS_LINE_MAX.saturating_sub(seen.len());
                seen.extend_from_slice(&buf[..buf.len().min(room)]);
            }
            return Poll::Ready(Ok(buf.len()));
        }
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write_timed(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.sync();
        if let Phase::Exchange = this.phase {
            let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            return this.write_timed(cx, poll);
        }
        // hyper's own answer: one buffer at a time.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        Pin::new(this).poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.sync();
        ready!(this.poll_answer(cx))?;
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        ready!(this.write_timed(cx, poll))?;
        // hyper flushes a response whole before it reads the next head.
        if let Phase::Exchange = this.phase
            && this.exchanges.all_finished()
        {
            let now = Instant::now();
            this.phase = Phase::Idle(now);
            // hyper may not read again until woken: the idle deadline must wake it.
            let _ = this.passed(cx, now + this.idle_timeout);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_answers_become_envelopes_with_their_status() {
        for (hyper_head, status) in [
            (
                &b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n"[..],
                414,
            ),
            (b"HTTP/1.1 431 Request Header Fields Too Large\r\n", 431),
            (b"HTTP/1.1 400 Bad Request\r\n", 400),
            (b"", 400),
        ] {
            let (bytes, _) = refusal(hyper_head);
            let text = String::from_utf8(bytes).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
            assert!(head.contains(&format!("content-length: {}", body.len())));
            let envelope: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(envelope["success"], false);
            assert_eq!(envelope["errors"][0]["code"], 12002);
        }
    }
}
