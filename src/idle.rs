//! When a connection has had no request in flight for too long: the clock
//! that closes idle keep-alive and h2 connections, and connections whose
//! first request never came.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A request's start and end only touch atomics: nothing is woken per
/// request. The clock's own timer checks them when it fires, and sleeps on
/// to the real deadline when a request came in between, so a busy
/// connection costs a timer wake-up per `timeout`, not two per request.
pub struct Idle {
    /// When the first request must have started by.
    first_request_by: Instant,
    /// What `last_end` counts from: when the clock was made.
    started: Instant,
    timeout: Duration,
    in_flight: AtomicUsize,
    begun: AtomicBool,
    /// When the last request ended, as nanoseconds after `started`.
    last_end: AtomicU64,
}

/// A request in flight; the idle clock restarts when the last one ends.
pub struct Busy {
    idle: Arc<Idle>,
}

impl Idle {
    /// `first_request_by` bounds the wait for the first request; after
    /// that, each quiet spell may last `timeout`.
    pub fn new(first_request_by: Instant, timeout: Duration) -> Idle {
        Idle {
            first_request_by,
            started: Instant::now(),
            timeout,
            in_flight: AtomicUsize::new(0),
            begun: AtomicBool::new(false),
            last_end: AtomicU64::new(0),
        }
    }

    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.begun.store(true, Ordering::Release);
        Busy { idle: self.clone() }
    }

    fn end(&self) {
        let since = Instant::now().saturating_duration_since(self.started);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        self.last_end.fetch_max(nanos, Ordering::AcqRel);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Resolves when the connection has been idle too long, or its first
    /// request never came.
    pub async fn expired(&self) {
        // The first look comes no later than one `timeout` in, so a first
        // request that ends early is timed from its end.
        let mut wake_at = self.first_request_by.min(self.started + self.timeout);
        loop {
            tokio::time::sleep_until(wake_at).await;
            let now = Instant::now();
            wake_at = match self.deadline() {
                Some(deadline) if deadline <= now => return,
                Some(deadline) => deadline,
                None => now + self.timeout,
            };
        }
    }

    /// When the connection may be closed; `None` while a request runs.
    fn deadline(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.begun.load(Ordering::Acquire) {
            return Some(self.first_request_by);
        }
        let last_end = Duration::from_nanos(self.last_end.load(Ordering::Acquire));
        Some(self.started + last_end + self.timeout)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.idle.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn without_a_first_request_the_deadline_expires() {
        let idle = Idle::new(Instant::now() + SECOND, 10 * SECOND);
        let started = Instant::now();
        idle.expired().await;
        assert_eq!(started.elapsed(), SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_never_expires_and_its_end_restarts_the_clock() {
        let idle = Arc::new(Idle::new(Instant::now() + SECOND, 3 * SECOND));
        let busy = idle.begin();
        let waiting = tokio::time::timeout(60 * SECOND, idle.expired()).await;
        assert!(waiting.is_err(), "busy for a minute and not expired");
        let ended = Instant::now();
        drop(busy);
        idle.expired().await;
        assert_eq!(ended.elapsed(), 3 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_requests_keep_it_busy_until_the_last_ends() {
        let idle = Arc::new(Idle::new(Instant::now() + SECOND, SECOND));
        let first = idle.begin();
        let second = idle.begin();
        drop(first);
        let waiting = tokio::time::timeout(10 * SECOND, idle.expired()).await;
        assert!(waiting.is_err(), "one request still runs");
        drop(second);
        idle.expired().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_ends_early_starts_the_clock_when_it_ends() {
        let idle = Arc::new(Idle::new(Instant::now() + 10 * SECOND, 3 * SECOND));
        tokio::time::advance(SECOND).await;
        drop(idle.begin());
        let started = Instant::now();
        idle.expired().await;
        assert_eq!(started.elapsed(), 3 * SECOND);
    }
}
