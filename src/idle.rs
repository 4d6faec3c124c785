//! When a connection has had no request in flight for too long: the clock
//! that closes idle keep-alive and h2 connections, and connections whose
//! first request never came.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

pub struct Idle {
    state: Mutex<State>,
    changed: Notify,
    timeout: Duration,
}

struct State {
    in_flight: usize,
    /// When the connection may be closed; `None` while a request runs.
    deadline: Option<Instant>,
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
            state: Mutex::new(State {
                in_flight: 0,
                deadline: Some(first_request_by),
            }),
            changed: Notify::new(),
            timeout,
        }
    }

    pub fn begin(self: &Arc<Self>) -> Busy {
        let mut state = self.lock();
        state.in_flight += 1;
        state.deadline = None;
        drop(state);
        self.changed.notify_waiters();
        Busy { idle: self.clone() }
    }

    fn end(&self) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.deadline = Some(Instant::now() + self.timeout);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Resolves once the connection has been without a request until its
    /// deadline.
    pub async fn expired(&self) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let Some(deadline) = self.lock().deadline else {
                changed.await;
                continue;
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if self.lock().deadline == Some(deadline) {
                        return;
                    }
                }
                () = changed => {}
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
}
