//! Serving one HTTP/1.1 connection within bounds in time, and the cap on their number.
//!
//! A client that opens a connection and then sends nothing, or a header a byte at a time, must not
//! hold a socket for ever: with enough of them the process runs out of file descriptors and no
//! one else is served (Envoy's and nginx's timeouts are the model). Each connection is in one of
//! three phases, and each phase has its deadline:
//!
//! - **awaiting a request head** (from the accept, or from the first byte after an idle spell):
//!   `HTTP_HEADER_TIMEOUT_MS`. Past it the connection is closed; no answer can be parsed yet.
//! - **busy** (a request is being served): no deadline here; reading the body has its own
//!   (`HTTP_BODY_TIMEOUT_MS`, a 408 from [`crate::body`]), and the handlers bound their waits.
//! - **idle** between requests on a kept-alive connection: `HTTP_IDLE_TIMEOUT_MS`.
//!
//! A watchdog per connection sleeps until the current deadline and closes the connection when it
//! has passed in the same phase. [`ConnectionCap`] bounds how many connections are open at once
//! (`MAX_CONNECTIONS`): past it a new connection is closed at once, so the acceptor never waits
//! and never stops.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The time bounds of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

/// `MAX_CONNECTIONS`: how many connections may be open at once.
#[derive(Debug, Clone)]
pub struct ConnectionCap(Arc<Semaphore>);

/// Held by an open connection; dropping it frees its place.
pub type ConnectionSlot = OwnedSemaphorePermit;

impl ConnectionCap {
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max)))
    }

    /// A place for a new connection, or `None` when every place is taken.
    pub fn try_admit(&self) -> Option<ConnectionSlot> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// The default `MAX_CONNECTIONS`: the open-files limit less room for everything else a process
/// holds open (Redis and MongoDB connections per server thread, the listener, log files), and at
/// least 64.
pub fn default_max_connections() -> usize {
    open_files_limit().map_or(1_024, |limit| limit.saturating_sub(OTHER_FILES).max(64))
}

/// Descriptors kept for what is not a client connection.
const OTHER_FILES: usize = 256;

/// The soft `RLIMIT_NOFILE`, from `/proc/self/limits` (Linux).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

const AWAITING_HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

/// Where a connection is, and since when (ms after `base`).
#[derive(Debug)]
pub struct Phase {
    base: Instant,
    phase: AtomicU8,
    since_ms: AtomicU64,
    timeouts: Timeouts,
    /// Wakes the watchdog when the phase changes, so it sleeps to the new deadline.
    changed: Notify,
}

impl Phase {
    /// A connection just accepted: awaiting its first request head.
    pub fn new(timeouts: Timeouts) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            phase: AtomicU8::new(AWAITING_HEAD),
            since_ms: 0.into(),
            timeouts,
            changed: Notify::new(),
        })
    }

    fn set(&self, phase: u8) {
        self.since_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// A request head has been read: the request is being served.
    pub fn request_started(&self) {
        self.set(BUSY);
    }

    /// The answer is ready: the connection waits for the next request.
    pub fn request_finished(&self) {
        self.set(IDLE);
    }

    /// Bytes arrived: after an idle spell, they begin the next request head.
    fn bytes_read(&self) {
        if self.phase.load(Ordering::Relaxed) == IDLE {
            self.set(AWAITING_HEAD);
        }
    }

    /// When the current phase ends the connection, if it lasts (`None` while busy).
    fn deadline(&self) -> Option<Instant> {
        let since = self.base + Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        match self.phase.load(Ordering::Relaxed) {
            AWAITING_HEAD => Some(since + self.timeouts.header),
            IDLE => Some(since + self.timeouts.idle),
            _ => None,
        }
    }

    /// Returns once the connection has overstayed a phase: the caller closes it.
    pub async fn expired(&self) {
        loop {
            match self.deadline() {
                // Busy: no deadline until the phase changes.
                None => self.changed.notified().await,
                Some(deadline) if Instant::now() >= deadline => return,
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// A socket that tells its [`Phase`] when bytes arrive.
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    phase: Arc<Phase>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, phase: Arc<Phase>) -> Self {
        Self { inner, phase }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.phase.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_phase_has_its_deadline_and_busy_has_none() {
        let timeouts = Timeouts { header: Duration::from_secs(10), idle: Duration::from_secs(60) };
        let phase = Phase::new(timeouts);
        let started = tokio::time::Instant::now();
        phase.expired().await;
        assert_eq!(started.elapsed().as_secs(), 10, "awaiting the first head");

        phase.request_started();
        let busy = tokio::time::timeout(Duration::from_secs(600), phase.expired()).await;
        assert!(busy.is_err(), "a busy connection is not closed by its watchdog");

        phase.request_finished();
        let idle = tokio::time::Instant::now();
        phase.expired().await;
        assert_eq!(idle.elapsed().as_secs(), 60, "idle between requests");

        phase.request_finished();
        phase.bytes_read();
        let head = tokio::time::Instant::now();
        phase.expired().await;
        assert_eq!(head.elapsed().as_secs(), 10, "bytes after idle begin a head");
    }

    #[test]
    fn the_default_cap_leaves_room_for_other_files() {
        let limit = open_files_limit().expect("Linux");
        assert_eq!(default_max_connections(), limit.saturating_sub(OTHER_FILES).max(64));
    }
}
