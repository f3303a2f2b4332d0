//! A TCP connection whose small writes leave together, once per turn of the scheduler.
//!
//! HTTP/2 (h2) writes every DATA frame over 256 bytes as its own `writev`: it keeps the
//! payload aside rather than copy it, and flushes before it takes the next frame. A
//! load generator with 32 calls of 3 KB in flight on one connection then makes a system
//! call per request (1.09 `writev`s a call were counted, most of the generator's time:
//! on loopback the sender also pays for delivering each segment). gRPC's own clients
//! gather what their calls wrote and write it at once; this does the same for h2's
//! connection:
//!
//! * a write is copied into the outbox and answers at once; a flush wakes the outbox's
//!   writer task and answers at once too. On a current-thread runtime (`prism bench`'s)
//!   the writer runs after the tasks woken before it, so the requests those calls made
//!   leave in one write (on tokio's multi-threaded one a task woken from a worker may run
//!   next, and less is gathered);
//! * a write of 64 KiB or more that finds the outbox empty goes straight to the socket,
//!   uncopied; one that finds bytes pending is copied behind them (a big body mostly is:
//!   its HEADERS frame is pending when its first DATA frame comes);
//! * the outbox holds at most [`LIMIT`] bytes: past it, writes wait for the socket;
//! * a failed socket write fails every later write and flush, with the same error kind.
//!
//! Reads are the socket's own.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The most bytes the outbox holds before a write waits.
const LIMIT: usize = 1 << 20;
/// A write this big, finding the outbox empty, goes to the socket uncopied.
const WRITE_THROUGH: usize = 64 << 10;

/// One side of a TCP connection whose writes are coalesced (see the module's doc). Its
/// writer task must be spawned on the runtime that polls it.
pub struct Coalesced {
    read: OwnedReadHalf,
    outbox: Arc<Mutex<Outbox>>,
}

struct Outbox {
    socket: OwnedWriteHalf,
    /// Bytes written and not yet on the socket.
    pending: BytesMut,
    /// The writer task, waiting for something to write.
    writer: Option<Waker>,
    /// A write waiting for room in a full outbox (or a shutdown waiting for it to empty).
    room: Option<Waker>,
    /// The connection's task as of its last write or flush: told when the socket fails.
    conn: Option<Waker>,
    /// How the socket failed, and why: every later write answers it.
    failed: Option<(io::ErrorKind, String)>,
    /// The connection is gone: the writer ends.
    closed: bool,
}

impl Outbox {
    fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Keeps the connection's task, to tell it when the socket fails.
    fn remember(&mut self, cx: &Context<'_>) {
        if !self.conn.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.conn = Some(cx.waker().clone());
        }
    }

    fn fail(&mut self, e: &io::Error) {
        self.failed = Some((e.kind(), e.to_string()));
        self.pending.clear();
        for w in [self.room.take(), self.conn.take()].into_iter().flatten() {
            w.wake();
        }
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, why)) => Err(io::Error::new(*kind, why.clone())),
            None => Ok(()),
        }
    }

    /// Writes what is pending until it is all out (`Ready`) or the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.socket).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.pending.advance(n);
                    if let Some(w) = self.room.take() {
                        w.wake();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Coalesced {
    /// The connection, and its writer task (to spawn).
    pub fn new(stream: TcpStream) -> (Coalesced, impl Future<Output = ()> + Send + 'static) {
        let (read, socket) = stream.into_split();
        let outbox = Arc::new(Mutex::new(Outbox {
            socket,
            pending: BytesMut::with_capacity(64 << 10),
            writer: None,
            room: None,
            conn: None,
            failed: None,
            closed: false,
        }));
        let writer = write_out(Arc::clone(&outbox));
        (Coalesced { read, outbox }, writer)
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // A panic while holding the lock leaves the outbox as it was between two writes.
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer task: writes what the outbox holds whenever it is woken, until the
/// connection is gone or its socket fails.
async fn write_out(outbox: Arc<Mutex<Outbox>>) {
    std::future::poll_fn(|cx| {
        let mut o = outbox.lock().unwrap_or_else(|e| e.into_inner());
        match o.poll_drain(cx) {
            Poll::Ready(Ok(())) if o.closed => Poll::Ready(()),
            Poll::Ready(Ok(())) => {
                o.writer = Some(cx.waker().clone());
                Poll::Pending
            }
            Poll::Ready(Err(e)) => {
                o.fail(&e);
                Poll::Ready(())
            }
            // The socket wakes this task when it has room.
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

impl AsyncRead for Coalesced {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalesced {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut o = self.outbox();
        o.check()?;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if o.pending.is_empty() && len >= WRITE_THROUGH {
            let written = Pin::new(&mut o.socket).poll_write_vectored(cx, bufs);
            if let Poll::Ready(Err(e)) = &written {
                o.fail(e);
            }
            return written;
        }
        o.remember(cx);
        let room = LIMIT.saturating_sub(o.pending.len());
        if room == 0 {
            o.room = Some(cx.waker().clone());
            o.wake_writer();
            return Poll::Pending;
        }
        let mut taken = 0;
        for b in bufs {
            let n = b.len().min(room - taken);
            o.pending.extend_from_slice(&b[..n]);
            taken += n;
            if taken == room {
                break;
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut o = self.outbox();
        o.check()?;
        if !o.pending.is_empty() {
            o.remember(cx);
            o.wake_writer();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut o = self.outbox();
        o.check()?;
        if !o.pending.is_empty() {
            o.room = Some(cx.waker().clone());
            o.wake_writer();
            return Poll::Pending;
        }
        Pin::new(&mut o.socket).poll_shutdown(cx)
    }
}

impl Drop for Coalesced {
    fn drop(&mut self) {
        let mut o = self.outbox();
        o.closed = true;
        o.wake_writer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (Coalesced, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (conn, writer) = Coalesced::new(client.unwrap());
        tokio::spawn(writer);
        (conn, server.unwrap().0)
    }

    /// Bytes `0..n` of a pattern that shows a lost, doubled or reordered byte.
    fn pattern(from: usize, n: usize) -> Vec<u8> {
        (from..from + n).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn small_and_big_writes_arrive_whole_and_in_order() {
        let (mut conn, mut peer) = pair().await;
        // Small writes queue in the outbox; a big one finding bytes pending is copied
        // after them (no yield between them lets the writer run); once the outbox has
        // drained, a big one goes straight out.
        let sizes = [10, 300, 3_000, 200_000, 5, 2 << 20, 7, 1];
        let total: usize = sizes.iter().sum();
        let reader = tokio::spawn(async move {
            let mut got = vec![0; total];
            peer.read_exact(&mut got).await.unwrap();
            got
        });
        let mut at = 0;
        for (i, n) in sizes.into_iter().enumerate() {
            conn.write_all(&pattern(at, n)).await.unwrap();
            conn.flush().await.unwrap();
            at += n;
            // 3,000 and 200,000 go without a yield between them; then the outbox drains.
            if i != 2 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(reader.await.unwrap(), pattern(0, total));
    }

    #[tokio::test]
    async fn writes_wait_for_a_peer_that_does_not_read_and_go_on_when_it_does() {
        let (mut conn, mut peer) = pair().await;
        // Far more than the socket buffers and the outbox hold together.
        let data = pattern(0, 64 << 20);
        let sent = data.clone();
        let writing = tokio::spawn(async move {
            for chunk in sent.chunks(1000) {
                conn.write_all(chunk).await.unwrap();
                conn.flush().await.unwrap();
            }
            conn.shutdown().await.unwrap();
            conn
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !writing.is_finished(),
            "a peer that reads nothing holds the writes back"
        );
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "{} bytes came, {} were sent", got.len(), data.len());
        writing.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_socket_fails_later_writes() {
        let (mut conn, peer) = pair().await;
        drop(peer);
        let mut failed = None;
        for _ in 0..1000 {
            let written = async {
                conn.write_all(&[1; 1000]).await?;
                conn.flush().await
            };
            if let Err(e) = written.await {
                failed = Some(e);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let e = failed.expect("writes to a closed peer fail");
        assert!(
            matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset),
            "{e:?}"
        );
    }
}
