//! The connection layer under REST and gRPC: how connections are accepted, bounded,
//! timed out and closed.
//!
//! * At most `max_connections` are open per listener; past that, new ones wait in the
//!   kernel's backlog until one closes.
//! * A connection with no request in flight is ended after `idle_timeout` (HTTP/2 with
//!   GOAWAY); once the first byte of an HTTP/1 request's head has come, the whole head
//!   must come within `header_read_timeout` (a client sending headers at a byte a second
//!   is cut off), and its body within `body_read_timeout` of its first read plus a second
//!   per 64 KiB (408 otherwise). HTTP/2 streams are bounded by flow control instead: a
//!   gRPC stream lasts as long as its client wants.
//! * On shutdown the listener closes first; for a short grace every HTTP/1 answer says
//!   `Connection: close`, so busy keep-alive connections end after an answer rather than
//!   under a request the client has just sent; then idle connections are closed and every
//!   request already read is answered (HTTP/2 gets GOAWAY).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Version, header};
use bytes::{Buf, Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prism_config::ConnectionLimits;
use prism_protocol::grpc::flow;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// How long busy HTTP/1 connections get, after shutdown begins, to take one more answer
/// (which closes them) before idle ones are closed.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Serves `router` on `listener` under `limits` until `stop`; then closes the listener,
/// lets busy connections end after their answers, and waits for every request already
/// read to be answered.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let closing = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown) = watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        // What a call's body holds is still bounded by `max_request_bytes`; the windows
        // only say how much may be in flight.
        .initial_stream_window_size(flow::STREAM_WINDOW)
        .initial_connection_window_size(flow::CONNECTION_WINDOW)
        .max_frame_size(flow::MAX_FRAME);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut stop => break,
        };
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Answers are small and latency matters: never wait to coalesce writes.
        let _ = tcp.set_nodelay(true);
        let conn = Arc::new(Conn::new());
        let io = TokioIo::new(Watched::new(tcp, Arc::clone(&conn), limits));
        let service = hyper::service::service_fn({
            let (router, closing, conn) = (router.clone(), Arc::clone(&closing), Arc::clone(&conn));
            move |request: Request<Incoming>| {
                let in_flight = InFlight::begin(Arc::clone(&conn));
                let http1 = request.version() < Version::HTTP_2;
                if !http1 {
                    conn.http2.store(true, Ordering::Relaxed);
                }
                // HTTP/1 bodies are bounded in time; HTTP/2 streams (a gRPC stream may
                // last as long as its client wants) by flow control.
                let request = request.map(|b| match http1 {
                    true => Body::new(Deadline::new(b, limits.body_read_timeout)),
                    false => Body::new(b),
                });
                let (router, closing) = (router.clone(), Arc::clone(&closing));
                async move {
                    let Ok(mut response) = router.oneshot(request).await;
                    if http1 && closing.load(Ordering::Acquire) {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(response.map(|body| Tracked {
                        body,
                        _in_flight: in_flight,
                    }))
                }
            }
        });
        let connection = builder.serve_connection_with_upgrades(io, service).into_owned();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            // An idle connection, or all at shutdown, end gracefully: HTTP/1 closes once
            // its answer is written, HTTP/2 sends GOAWAY and finishes its streams.
            let mut ending = false;
            let result = loop {
                tokio::select! {
                    result = connection.as_mut() => break result,
                    () = conn.idle.notified(), if !ending => {
                        ending = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    _ = shutdown.wait_for(|s| *s), if !ending => {
                        ending = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    closing.store(true, Ordering::Release);
    if permits.available_permits() < limits.max_connections {
        tokio::time::sleep(CLOSE_GRACE).await;
    }
    let _ = shutdown_tx.send(true);
    // Every connection has ended once every permit is back.
    let all = u32::try_from(limits.max_connections).expect("max_connections fits u32 (checked by the config)");
    let _ = permits.acquire_many(all).await;
    Ok(())
}

/// What one connection's requests and its reads share.
struct Conn {
    /// Requests (HTTP/2: streams) whose answers are not yet written.
    in_flight: AtomicUsize,
    times: Mutex<Times>,
    /// The client spoke HTTP/2 (its preface came first): only the idle rule applies.
    http2: AtomicBool,
    /// Signalled once the connection has been idle for `idle_timeout`.
    idle: Notify,
}

struct Times {
    /// Since when no request has been in flight.
    idle_since: Instant,
    /// When the first byte of the next request's head came, if it has.
    head_started: Option<Instant>,
    /// The connection's read, waiting while a request is in flight.
    reader: Option<std::task::Waker>,
}

impl Conn {
    fn new() -> Self {
        Conn {
            in_flight: AtomicUsize::new(0),
            times: Mutex::new(Times {
                idle_since: Instant::now(),
                head_started: None,
                reader: None,
            }),
            http2: AtomicBool::new(false),
            idle: Notify::new(),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request in flight on its connection, until its answer's body is written (or
/// dropped).
struct InFlight(Arc<Conn>);

impl InFlight {
    fn begin(conn: Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.times().head_started = None;
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut t = self.0.times();
            t.idle_since = Instant::now();
            t.head_started = None;
            if let Some(reader) = t.reader.take() {
                reader.wake();
            }
        }
    }
}

/// HTTP/2's connection preface: a connection that starts with it speaks HTTP/2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// A TCP stream that watches its connection's clocks: a read fails with `TimedOut` once a
/// request's head has taken longer than `header_read_timeout`, and the connection is
/// asked to end gracefully (`Conn::idle`) once it has been idle for `idle_timeout`.
struct Watched {
    tcp: TcpStream,
    conn: Arc<Conn>,
    limits: ConnectionLimits,
    timer: Pin<Box<Sleep>>,
    /// The first bytes, until they tell HTTP/1 from HTTP/2.
    sniffed: Option<Vec<u8>>,
    /// The idle timeout has fired: the connection is ending.
    expired: bool,
    /// What the socket held beyond the last small read (see [`ReadAhead`]).
    ahead: ReadAhead,
}

/// How much a small read takes from the socket at once.
const READ_AHEAD: usize = 32 * 1024;

/// Bytes read from the socket beyond what the protocol asked for. HTTP/2 asks for a few
/// KiB at a time (what is left of its frame buffer), so a connection carrying many calls
/// made a `recvfrom` for every 5 KiB or so, and a second one whenever the ask was filled;
/// a small ask now takes all the socket holds (up to [`READ_AHEAD`]) in one call and is
/// served from here until it is drained. Asks of `READ_AHEAD` or more (HTTP/1 bodies)
/// read straight into the caller's buffer. The buffer is let go whenever the socket has
/// nothing more, so an idle connection holds none.
#[derive(Default)]
struct ReadAhead(BytesMut);

impl ReadAhead {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Hands out as much of what is pending as `out` takes.
    fn take_into(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.0.len());
        out.put_slice(&self.0[..n]);
        self.0.advance(n);
    }

    /// One read of up to [`READ_AHEAD`] bytes from `tcp` into the (empty) buffer.
    fn fill(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        debug_assert!(self.is_empty());
        self.0.reserve(READ_AHEAD);
        let polled = tokio_util::io::poll_read_buf(Pin::new(tcp), cx, &mut self.0).map_ok(|_| ());
        if self.0.is_empty() {
            self.0 = BytesMut::new();
        }
        polled
    }
}

impl Watched {
    fn new(tcp: TcpStream, conn: Arc<Conn>, limits: ConnectionLimits) -> Self {
        Watched {
            tcp,
            conn,
            limits,
            timer: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            sniffed: Some(Vec::with_capacity(H2_PREFACE.len())),
            expired: false,
            ahead: ReadAhead::default(),
        }
    }

    /// Reads of `got` bytes: the protocol, while unknown, and the start of a head.
    fn saw(&mut self, got: &[u8]) {
        if let Some(sniffed) = &mut self.sniffed {
            let take = (H2_PREFACE.len() - sniffed.len()).min(got.len());
            sniffed.extend_from_slice(&got[..take]);
            if !H2_PREFACE.starts_with(sniffed) {
                self.sniffed = None; // HTTP/1
            } else if sniffed.len() == H2_PREFACE.len() {
                self.sniffed = None;
                self.conn.http2.store(true, Ordering::Relaxed);
                self.conn.times().head_started = None;
                return;
            }
        }
        if !self.conn.http2.load(Ordering::Relaxed) && self.conn.in_flight.load(Ordering::Acquire) == 0 {
            self.conn.times().head_started.get_or_insert_with(Instant::now);
        }
    }

    /// When the connection is to be closed if nothing changes, and whether that is the
    /// head's deadline; `None` while a request is in flight.
    fn deadline(&self) -> Option<(Instant, bool)> {
        if self.conn.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let t = self.conn.times();
        Some(match t.head_started {
            Some(started) => (started + self.limits.header_read_timeout, true),
            None => (t.idle_since + self.limits.idle_timeout, false),
        })
    }
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = if !this.ahead.is_empty() {
            Poll::Ready(Ok(()))
        } else if buf.remaining() >= READ_AHEAD {
            Pin::new(&mut this.tcp).poll_read(cx, buf)
        } else {
            this.ahead.fill(&mut this.tcp, cx)
        };
        if let Poll::Ready(result) = polled {
            this.ahead.take_into(buf);
            if buf.filled().len() > before {
                this.saw(&buf.filled()[before..]);
            }
            return Poll::Ready(result);
        }
        if this.expired {
            return Poll::Pending;
        }
        let Some((deadline, head)) = this.deadline() else {
            // The clock starts when the last answer is written: that wakes this read.
            this.conn.times().reader = Some(cx.waker().clone());
            if this.conn.in_flight.load(Ordering::Acquire) == 0 {
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        };
        if this.timer.deadline() != deadline {
            this.timer.as_mut().reset(deadline);
        }
        ready!(this.timer.as_mut().poll(cx));
        if head {
            // A head trickling in is cut off at once, not waited for.
            tracing::debug!("closing a connection: a request's head took longer than server.header_read_timeout_s");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "a request's head took longer than server.header_read_timeout_s",
            )));
        }
        tracing::debug!("ending a connection idle for server.idle_timeout_s");
        this.expired = true;
        this.conn.idle.notify_one();
        Poll::Pending
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The request body came too slowly: not within `server.body_read_timeout_s` (plus a
/// second per 64 KiB that came).
#[derive(Debug, thiserror::Error)]
#[error("the request body came too slowly (server.body_read_timeout_s of {0:?}, then at least 64 KiB/s)")]
pub struct BodyTimedOut(pub Duration);

/// Whether `e` (a body read's error, or what wraps it) is a [`BodyTimedOut`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut e = Some(e);
    while let Some(err) = e {
        if let Some(t) = err.downcast_ref::<BodyTimedOut>() {
            return Some(t.0);
        }
        e = err.source();
    }
    None
}

/// Bytes of body that earn one more second to read the rest: a body must come at least
/// this fast once its first allowance (`body_read_timeout`) is spent.
const BODY_BYTES_PER_SECOND: u64 = 64 << 10;

/// A request body that must arrive within `timeout` of its first read, plus a second for
/// each [`BODY_BYTES_PER_SECOND`] that have come: a large upload at any useful rate goes
/// through, a body trickling in is cut off.
struct Deadline {
    body: Incoming,
    /// Started at the first read (the handler may wait for room before it reads).
    timer: Option<Pin<Box<Sleep>>>,
    started: Instant,
    timeout: Duration,
    received: u64,
}

impl Deadline {
    fn new(body: Incoming, timeout: Duration) -> Self {
        Deadline {
            body,
            timer: None,
            started: Instant::now(),
            timeout,
            received: 0,
        }
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.timer.is_none() {
            this.started = Instant::now();
            this.timer = Some(Box::pin(tokio::time::sleep(this.timeout)));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref))
                && let Some(data) = data
            {
                this.received += data.len() as u64;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let earned = Duration::from_secs_f64(this.received as f64 / BODY_BYTES_PER_SECOND as f64);
        let deadline = this.started + this.timeout + earned;
        let timer = this.timer.as_mut().expect("started above");
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An answer's body that keeps its request in flight until it is written.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback connection: the server's side, watched, and the client's.
    async fn pair() -> (Watched, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let watched = Watched::new(server, Arc::new(Conn::new()), ConnectionLimits::default());
        (watched, client)
    }

    #[tokio::test]
    async fn reads_small_and_large_hand_out_every_byte_in_order_and_hold_nothing_when_drained() {
        let (mut watched, mut client) = pair().await;
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = tokio::spawn({
            let sent = sent.clone();
            async move {
                // Uneven writes, so reads find partial bursts.
                for chunk in sent.chunks(7_001) {
                    client.write_all(chunk).await.unwrap();
                }
                client
            }
        });
        let mut got = Vec::new();
        // Asks below READ_AHEAD (served from the read-ahead) and above it (straight).
        let asks = [3_000, 100, READ_AHEAD + 1, 9_000, 1];
        let mut small_reads_ahead = 0;
        for ask in asks.iter().cycle() {
            if got.len() == sent.len() {
                break;
            }
            let mut buf = vec![0u8; *ask];
            let n = watched.read(&mut buf).await.unwrap();
            assert!(n > 0, "no EOF before the peer closes");
            got.extend_from_slice(&buf[..n]);
            small_reads_ahead += usize::from(*ask < READ_AHEAD && !watched.ahead.is_empty());
        }
        assert_eq!(got, sent, "every byte, in order");
        assert!(small_reads_ahead > 0, "small asks were served from bytes read ahead");
        assert!(watched.ahead.is_empty());
        // Nothing more on the socket: the read waits, and the buffer is let go.
        let mut buf = [0u8; 100];
        let waited = tokio::time::timeout(Duration::from_millis(50), watched.read(&mut buf)).await;
        assert!(waited.is_err(), "nothing to read yet");
        assert_eq!(
            watched.ahead.0.capacity(),
            0,
            "an idle connection holds no read-ahead buffer"
        );
        // The peer closing reads as EOF.
        drop(writer.await.unwrap());
        assert_eq!(watched.read(&mut buf).await.unwrap(), 0);
    }
}
