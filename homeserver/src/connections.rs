//! Bounds on the listeners' connections: how many may be open at once, how long a client may
//! take to send a request's head, and how long a kept-alive connection may sit idle.
//!
//! poem 3.1 builds hyper's connection without a timer, so hyper's own `header_read_timeout`
//! never fires, and poem's `idle_timeout` counts any silence — a five-minute `/sync` long-poll
//! is silent — as idleness. Hence this wrapper around the accepted socket, which watches the
//! bytes go by: a request's head ends at the first blank line; a response begins with the
//! server's first write. Bodies are bounded elsewhere (see [`BodyDeadline`]) because only the
//! endpoint knows whether it still wants one.
//!
//! HTTP/2 connections (federation peers may negotiate it) carry many requests interleaved, so
//! they get no deadlines here; the connection cap still bounds them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// How long to wait before accepting again after `accept` failed: out of file descriptors, it
/// fails at once, and poem would retry in a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The deadlines a connection lives by.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// From accepting a connection (TLS handshake included), or from the first byte of a later
    /// request, to the end of that request's head.
    pub head: Duration,
    /// From the end of a response's last write to the first byte of the next request.
    pub idle: Duration,
}

/// Open connections of all listeners together, at most `max`.
#[derive(Clone, Debug)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    deadlines: Deadlines,
}

impl ConnectionLimit {
    /// A limit of `max` connections with `deadlines` for each.
    pub fn new(max: usize, deadlines: Deadlines) -> Self {
        Self { permits: Arc::new(Semaphore::new(max)), deadlines }
    }

    /// Wraps `acceptor`: it accepts only while fewer than `max` connections are open (the rest
    /// wait in the kernel's backlog) and hands out connections that keep the deadlines.
    pub fn bound<A: Acceptor>(&self, acceptor: A) -> Bounded<A> {
        Bounded { inner: acceptor, limit: self.clone() }
    }
}

/// An acceptor whose connections count against a [`ConnectionLimit`].
pub struct Bounded<A> {
    inner: A,
    limit: ConnectionLimit,
}

impl<A: Acceptor> Acceptor for Bounded<A> {
    type Io = Guarded<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        let permit = self.limit.permits.clone().acquire_owned().await.map_err(io::Error::other)?;
        loop {
            match self.inner.accept().await {
                Ok((io, local, remote, scheme)) => {
                    return Ok((Guarded::new(io, permit, self.limit.deadlines), local, remote, scheme));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

/// Where a connection is in its request/response cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading a request's head; the head deadline runs.
    Head,
    /// The head is in: the body, the endpoint and the response are someone else's concern.
    Serving,
    /// A response was written; the idle deadline runs until the next request's first byte.
    Idle,
    /// HTTP/2: no per-request deadlines.
    Multiplexed,
}

/// The first bytes of an HTTP/2 connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// An accepted connection holding its place under the limit until dropped.
pub struct Guarded<Io> {
    io: Io,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
    deadlines: Deadlines,
    phase: Phase,
    /// Bytes of the connection matched against the HTTP/2 preface so far.
    preface: usize,
    /// Whether the last head byte was a line feed (a carriage return after it is skipped).
    after_newline: bool,
    /// When a response was last written to, while idle.
    written_at: Instant,
}

impl<Io> Guarded<Io> {
    fn new(io: Io, permit: OwnedSemaphorePermit, deadlines: Deadlines) -> Self {
        let now = Instant::now();
        Self {
            io,
            deadline: Box::pin(tokio::time::sleep_until(now + deadlines.head)),
            _permit: permit,
            deadlines,
            phase: Phase::Head,
            preface: 0,
            after_newline: false,
            written_at: now,
        }
    }

    /// Follows the bytes a client sent.
    fn received(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.after_newline = false;
            self.deadline.as_mut().reset(Instant::now() + self.deadlines.head);
        }
        if self.preface < H2_PREFACE.len() {
            let n = bytes.len().min(H2_PREFACE.len() - self.preface);
            if bytes[..n] == H2_PREFACE[self.preface..self.preface + n] {
                self.preface += n;
                if self.preface == H2_PREFACE.len() {
                    self.phase = Phase::Multiplexed;
                }
            } else {
                // Not HTTP/2; never matched again.
                self.preface = usize::MAX;
            }
        }
        if self.phase != Phase::Head {
            return;
        }
        for &byte in bytes {
            match byte {
                // A head ends at an empty line; HTTP/1 parsers accept bare line feeds too.
                b'\n' if self.after_newline => {
                    self.phase = Phase::Serving;
                    return;
                }
                b'\n' => self.after_newline = true,
                b'\r' => {}
                _ => self.after_newline = false,
            }
        }
    }

    /// Follows the bytes the server wrote.
    fn wrote(&mut self, first: &[u8], cx: &mut Context<'_>) {
        match self.phase {
            // "100 Continue" asks for the body: the request is still coming.
            Phase::Serving if first.starts_with(b"HTTP/1.1 1") => {}
            Phase::Idle => self.written_at = Instant::now(),
            Phase::Head | Phase::Serving => {
                self.phase = Phase::Idle;
                self.written_at = Instant::now();
                // hyper may have polled the read side before this write and will not poll it
                // again until woken: the deadline has to be able to wake the connection's task.
                // (Later writes only move `written_at`; the deadline is pushed back when it fires.)
                self.deadline.as_mut().reset(self.written_at + self.deadlines.idle);
                let _ = self.deadline.as_mut().poll(cx);
            }
            Phase::Multiplexed => {}
        }
    }

    /// Whether the running deadline has passed (and if not, a wake-up when it does).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        match self.phase {
            Phase::Head => self.deadline.as_mut().poll(cx).is_ready(),
            Phase::Idle => {
                let due = self.written_at + self.deadlines.idle;
                if self.deadline.deadline() != due {
                    self.deadline.as_mut().reset(due);
                }
                self.deadline.as_mut().poll(cx).is_ready()
            }
            Phase::Serving | Phase::Multiplexed => false,
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Guarded<Io> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.received(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending if this.expired(cx) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection deadline passed")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Guarded<Io> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        if written > 0 {
            this.wrote(buf, cx);
        }
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        if written > 0 {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            this.wrote(first, cx);
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request body that fails when the client sends nothing for `timeout`: a body trickled
/// byte by byte would otherwise hold its connection and its endpoint for ever.
pub struct BodyDeadline<S> {
    inner: S,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> BodyDeadline<S> {
    /// Wraps `inner`, allowing `timeout` between chunks.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout, deadline: Box::pin(tokio::time::sleep(timeout)) }
    }
}

impl<S: Stream<Item = io::Result<Bytes>> + Unpin> Stream for BodyDeadline<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(item) => {
                let next = Instant::now() + self.timeout;
                self.deadline.as_mut().reset(next);
                Poll::Ready(item)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client sent nothing for {} s", self.timeout.as_secs_f32()),
                )))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// The most connections this process can hold, given its file descriptor limit: the soft limit
/// is raised to the hard one first (as Go's runtime and nginx's `worker_rlimit_nofile` do), then
/// `reserve` descriptors stay for the database, media files and outgoing federation.
pub fn descriptor_budget(reserve: u64) -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit.saturating_sub(reserve)),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the file descriptor limit");
            None
        }
    }
}
