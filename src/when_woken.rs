//! A future that is polled only when it asked to be.
//!
//! A connection's task wakes for every read and write of its socket, and a
//! `select!` polls every branch at each wake-up. The branches beside the
//! connection (the shutdown signal, the idle clock, the drop deadline) are
//! timers that are nearly never ready, yet polling them at every wake-up
//! cost about 1,400 instructions per relayed request (issue 9). Wrapped in
//! [`WhenWoken`], such a future is polled once, then again only after its
//! own waker fired.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

pub struct WhenWoken<F> {
    future: Pin<Box<F>>,
    signal: Arc<Signal>,
}

/// Set by the inner future's waker; wakes the task that polls the wrapper.
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> WhenWoken<F> {
    pub fn new(future: F) -> WhenWoken<F> {
        WhenWoken {
            future: Box::pin(future),
            signal: Arc::new(Signal {
                // Polled on the first poll, so the inner future can register.
                woken: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
        }
    }
}

impl<F: Future> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the flag is read, so a wake-up in between is not lost.
        self.signal.task.register(cx.waker());
        if !self.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(self.signal.clone());
        self.future.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// Never ready; counts its polls and keeps the waker it was given.
    #[derive(Clone, Default)]
    struct Probe {
        polls: Arc<AtomicUsize>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().expect("lock") = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// The task's waker: counts its wake-ups.
    #[derive(Default)]
    struct Task {
        wakes: AtomicUsize,
    }

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_inner_future_is_polled_only_after_its_own_wake_up() {
        let probe = Probe::default();
        let mut wrapped = WhenWoken::new(probe.clone());
        let task = Arc::new(Task::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..5 {
            assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        }
        assert_eq!(
            probe.polls.load(Ordering::SeqCst),
            1,
            "polled once, to register"
        );

        let inner_waker = probe.waker.lock().expect("lock").take().expect("a waker");
        inner_waker.wake();
        assert_eq!(
            task.wakes.load(Ordering::SeqCst),
            1,
            "its wake-up wakes the task"
        );
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 2, "polled again once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrapped_timer_still_fires() {
        let started = tokio::time::Instant::now();
        WhenWoken::new(tokio::time::sleep(Duration::from_secs(30))).await;
        assert!(started.elapsed() >= Duration::from_secs(30));
    }
}
