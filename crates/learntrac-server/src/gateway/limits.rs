//! Limits the gateway puts on clients: token buckets for request rates,
//! open connections per address, idle connections, and the shape of the
//! request path.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::settings::Bucket;

/// Most buckets kept before full ones are forgotten.
const MAX_BUCKETS: usize = 200_000;

/// The key a bucket counts requests under.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum BucketKey {
    Address(IpAddr),
    /// A signed-in user, by id.
    User(i64),
    Auth(IpAddr),
}

struct Level {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by key. A request takes one token; tokens come back at
/// the bucket's rate up to its burst.
#[derive(Default)]
pub struct TokenBuckets {
    levels: Mutex<HashMap<BucketKey, Level>>,
}

impl TokenBuckets {
    /// Takes a token for `key`, or returns the whole seconds until one is
    /// available.
    pub fn take(&self, key: BucketKey, bucket: Bucket, now: Instant) -> Result<(), u64> {
        let mut levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        if levels.len() >= MAX_BUCKETS {
            forget_full(&mut levels, bucket, now);
        }
        let burst = f64::from(bucket.burst);
        let level = levels.entry(key).or_insert(Level { tokens: burst, updated: now });
        let elapsed = now.saturating_duration_since(level.updated).as_secs_f64();
        level.tokens = (level.tokens + elapsed * bucket.per_second).min(burst);
        level.updated = now;
        if level.tokens >= 1.0 {
            level.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - level.tokens) / bucket.per_second;
        Err(wait.ceil().max(1.0) as u64)
    }
}

/// Drops the buckets that would be full by now, which hold no state worth
/// keeping; if none would be, drops them all.
fn forget_full(levels: &mut HashMap<BucketKey, Level>, bucket: Bucket, now: Instant) {
    let refill = Duration::from_secs_f64(f64::from(bucket.burst) / bucket.per_second);
    levels.retain(|_, level| now.saturating_duration_since(level.updated) < refill);
    if levels.len() >= MAX_BUCKETS {
        levels.clear();
    }
}

/// Counts open connections per client address.
#[derive(Clone, Default)]
pub struct ConnectionCounter {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Holds one connection's place; dropping it frees the place.
pub struct ConnectionPermit {
    counter: ConnectionCounter,
    ip: IpAddr,
}

impl ConnectionCounter {
    /// Returns a permit, or `None` when `ip` already has `limit` open.
    pub fn acquire(&self, ip: IpAddr, limit: usize) -> Option<ConnectionPermit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ConnectionPermit { counter: self.clone(), ip })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.counter.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A stream that fails with `TimedOut` when neither side has moved a byte
/// for its idle time, and that holds a connection permit while it lives.
/// Each read or write only notes the time, and the timer is moved only when
/// it fires early, so that the timer wheel stays out of every I/O call.
pub struct IdleStream<S> {
    inner: S,
    idle: Duration,
    last_activity: tokio::time::Instant,
    deadline: Pin<Box<tokio::time::Sleep>>,
    _permit: ConnectionPermit,
}

impl<S> IdleStream<S> {
    pub fn new(inner: S, idle: Duration, permit: ConnectionPermit) -> IdleStream<S> {
        let now = tokio::time::Instant::now();
        IdleStream {
            inner,
            idle,
            last_activity: now,
            deadline: Box::pin(tokio::time::sleep_until(now + idle)),
            _permit: permit,
        }
    }

    fn touch(&mut self) {
        self.last_activity = tokio::time::Instant::now();
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.deadline.as_mut().poll(cx).is_ready() {
            let due = self.last_activity + self.idle;
            if due <= tokio::time::Instant::now() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long"));
            }
            self.deadline.as_mut().reset(due);
        }
        Ok(())
    }
}

impl<S> IdleStream<S> {
    /// Notes activity when `moved`, and turns a pending call into a
    /// `TimedOut` error once the connection has been idle too long.
    fn track<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>, moved: bool) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                if moved {
                    self.touch();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.check(cx) {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let moved = buf.filled().len() > before;
        self.track(cx, poll, moved)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(cx, poll, true)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(cx, poll, true)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The reason a request path was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum PathProblem {
    Traversal,
    Malformed,
}

/// Checks a raw request path and returns it with repeated slashes
/// collapsed. A `.` or `..` segment, plain or percent-encoded once or
/// several times, an encoded slash or backslash, a backslash, a control
/// character or a malformed escape is refused.
pub fn normalise_path(raw: &str) -> Result<String, PathProblem> {
    if !raw.starts_with('/') {
        return Err(PathProblem::Malformed);
    }
    let mut layer = raw.to_string();
    for _ in 0..4 {
        if layer.contains('\\') {
            return Err(PathProblem::Traversal);
        }
        if layer.chars().any(|c| c.is_control()) {
            return Err(PathProblem::Malformed);
        }
        if layer.split('/').any(|segment| segment == "." || segment == "..") {
            return Err(PathProblem::Traversal);
        }
        if !layer.contains('%') {
            break;
        }
        let decoded = super::waf::percent_decode(&layer).ok_or(PathProblem::Malformed)?;
        if decoded.contains('/') && decoded.matches('/').count() != layer.matches('/').count() {
            // An encoded slash would change the segments after routing.
            return Err(PathProblem::Traversal);
        }
        if decoded == layer {
            break;
        }
        layer = decoded;
    }
    let mut normalised = String::with_capacity(raw.len());
    let mut previous_slash = false;
    for c in raw.chars() {
        if c == '/' && previous_slash {
            continue;
        }
        previous_slash = c == '/';
        normalised.push(c);
    }
    Ok(normalised)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_allow_a_burst_then_the_rate() {
        let buckets = TokenBuckets::default();
        let bucket = Bucket { per_second: 1.0, burst: 3 };
        let key = BucketKey::Address("192.0.2.1".parse().expect("ip"));
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(buckets.take(key, bucket, start), Ok(()));
        }
        assert_eq!(buckets.take(key, bucket, start), Err(1));
        let other = BucketKey::Address("192.0.2.2".parse().expect("ip"));
        assert_eq!(buckets.take(other, bucket, start), Ok(()));
        assert_eq!(buckets.take(key, bucket, start + Duration::from_millis(1100)), Ok(()));
        let slow = Bucket { per_second: 0.1, burst: 1 };
        let key = BucketKey::Auth("192.0.2.3".parse().expect("ip"));
        assert_eq!(buckets.take(key, slow, start), Ok(()));
        assert_eq!(buckets.take(key, slow, start), Err(10));
    }

    #[test]
    fn connection_permits_are_counted_per_address() {
        let counter = ConnectionCounter::default();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let first = counter.acquire(ip, 2).expect("first");
        let _second = counter.acquire(ip, 2).expect("second");
        assert!(counter.acquire(ip, 2).is_none());
        assert!(counter.acquire("192.0.2.9".parse().expect("ip"), 2).is_some());
        drop(first);
        assert!(counter.acquire(ip, 2).is_some());
    }

    #[test]
    fn traversal_in_any_encoding_is_refused() {
        for path in [
            "/wiki/../etc/passwd",
            "/wiki/%2e%2e/etc/passwd",
            "/wiki/%2E%2E/x",
            "/wiki/%252e%252e/x",
            "/wiki/%25252e%25252e/x",
            "/wiki/.%2e/x",
            "/wiki/./x",
            "/wiki/..",
            "/wiki/%2e%2e%2fetc",
            "/wiki/..%5cetc",
            "/wiki\\..\\etc",
        ] {
            assert_eq!(normalise_path(path), Err(PathProblem::Traversal), "{path}");
        }
        for path in ["/wiki/%zz", "/wiki/%2", "wiki", "/wiki/%00"] {
            assert_eq!(normalise_path(path), Err(PathProblem::Malformed), "{path}");
        }
    }

    #[test]
    fn ordinary_paths_are_kept() {
        assert_eq!(normalise_path("/wiki/WikiStart").as_deref(), Ok("/wiki/WikiStart"));
        assert_eq!(normalise_path("//api///v1/me").as_deref(), Ok("/api/v1/me"));
        assert_eq!(normalise_path("/wiki/Caf%C3%A9").as_deref(), Ok("/wiki/Caf%C3%A9"));
        assert_eq!(normalise_path("/wiki/a.b..c").as_deref(), Ok("/wiki/a.b..c"));
    }
}
