//! The connection layer under REST and gRPC: how connections are accepted, bounded,
//! timed out and closed.
//!
//! * At most `max_connections` are open per listener; past that, new ones wait in the
//!   kernel's backlog until one closes.
//! * A connection with no request in flight is closed after `idle_timeout`; once the
//!   first byte of a request's head has come, the whole head must come within
//!   `header_read_timeout` (a client sending headers at a byte a second is cut off), and
//!   its body within `body_read_timeout` of the head (408 otherwise).
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
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prism_config::ConnectionLimits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().timer(TokioTimer::new());
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
            let (router, closing) = (router.clone(), Arc::clone(&closing));
            move |request: Request<Incoming>| {
                let in_flight = InFlight::begin(Arc::clone(&conn));
                let http1 = request.version() < Version::HTTP_2;
                let request = request.map(|b| Body::new(Deadline::new(b, limits.body_read_timeout)));
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
        let connection = graceful.watch(builder.serve_connection_with_upgrades(io, service).into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
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
    graceful.shutdown().await;
    Ok(())
}

/// What one connection's requests and its reads share.
struct Conn {
    /// Requests (HTTP/2: streams) whose answers are not yet written.
    in_flight: AtomicUsize,
    times: Mutex<Times>,
    /// The client spoke HTTP/2 (its preface came first): only the idle rule applies.
    http2: AtomicBool,
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

/// A TCP stream whose reads fail with `TimedOut` once the connection has been idle for
/// `idle_timeout`, or a request's head has taken longer than `header_read_timeout`.
struct Watched {
    tcp: TcpStream,
    conn: Arc<Conn>,
    limits: ConnectionLimits,
    timer: Pin<Box<Sleep>>,
    first_read: bool,
}

impl Watched {
    fn new(tcp: TcpStream, conn: Arc<Conn>, limits: ConnectionLimits) -> Self {
        Watched {
            tcp,
            conn,
            limits,
            timer: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            first_read: true,
        }
    }

    /// When the connection is to be closed if nothing changes; `None` while a request
    /// is in flight.
    fn deadline(&self) -> Option<Instant> {
        if self.conn.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let t = self.conn.times();
        Some(match t.head_started {
            Some(started) if !self.conn.http2.load(Ordering::Relaxed) => started + self.limits.header_read_timeout,
            _ => t.idle_since + self.limits.idle_timeout,
        })
    }
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if let Poll::Ready(result) = Pin::new(&mut this.tcp).poll_read(cx, buf) {
            let got = &buf.filled()[before..];
            if !got.is_empty() {
                if std::mem::take(&mut this.first_read) && got.starts_with(b"PRI * HTTP/2.0") {
                    this.conn.http2.store(true, Ordering::Relaxed);
                }
                if this.conn.in_flight.load(Ordering::Acquire) == 0 {
                    this.conn.times().head_started.get_or_insert_with(Instant::now);
                }
            }
            return Poll::Ready(result);
        }
        let Some(deadline) = this.deadline() else {
            // The clock starts when the last answer is written: that wakes this read.
            this.conn.times().reader = Some(cx.waker().clone());
            if this.conn.in_flight.load(Ordering::Acquire) > 0 {
                return Poll::Pending;
            }
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        if this.timer.deadline() != deadline {
            this.timer.as_mut().reset(deadline);
        }
        ready!(this.timer.as_mut().poll(cx));
        let what = if this.conn.times().head_started.is_some() && !this.conn.http2.load(Ordering::Relaxed) {
            "a request's head took longer than server.header_read_timeout_s"
        } else {
            "the connection was idle for server.idle_timeout_s"
        };
        tracing::debug!(reason = what, "closing a connection");
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
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

/// The request body read did not finish within `server.body_read_timeout_s`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (server.body_read_timeout_s)")]
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

/// A request body that must arrive whole within a time of the request's head.
struct Deadline {
    body: Incoming,
    timer: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl Deadline {
    fn new(body: Incoming, timeout: Duration) -> Self {
        Deadline {
            body,
            timer: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(this.timer.as_mut().poll(cx));
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
