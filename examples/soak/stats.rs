//! Counters shared by every part of the soak, and the first failures in
//! words.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// How many failure descriptions are kept (the counters count them all).
const KEPT_FAILURES: usize = 40;

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Event counters; all start at zero.
        #[derive(Default)]
        pub struct Counters { $(pub $name: AtomicU64,)* }

        /// A copy of [`Counters`] at one moment.
        #[derive(Default, Clone, Copy, Debug)]
        pub struct Snapshot { $(pub $name: u64,)* }

        impl Counters {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    // conversations
    conversations_started,
    conversations_live,
    conversations_verified,
    conversations_interrupted,
    stream_conversations,
    polling_conversations,
    reconnects,
    // traffic
    messages_posted,
    messages_verified,
    activities_verified,
    polls,
    // SSO
    signins,
    cards_shown,
    signins_ambiguous,
    provider_requests,
    provider_tokens,
    // faults
    upstream_kills,
    outages_503,
    outages_refused,
    outages_hang,
    // failures
    lost,
    duplicated,
    reordered,
    unexpected,
    invoke_leaks,
    cards_changed,
    cards_while_up,
    provider_mismatches,
    request_errors,
    stream_errors,
}

#[derive(Default)]
pub struct Stats {
    pub counters: Counters,
    failures: Mutex<Vec<String>>,
    more_failures: AtomicBool,
}

impl Stats {
    pub fn add(&self, counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn inc(&self, counter: &AtomicU64) {
        self.add(counter, 1);
    }

    pub fn dec(&self, counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        self.counters.snapshot()
    }

    /// Records a failure in words: the first [`KEPT_FAILURES`] are printed
    /// at once and listed in the summary.
    pub fn fail(&self, what: String) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() < KEPT_FAILURES {
            eprintln!("FAILURE: {what}");
            failures.push(what);
        } else if !self.more_failures.swap(true, Ordering::Relaxed) {
            eprintln!("FAILURE: (more failures are counted, not printed)");
        }
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Snapshot {
    /// Failures that make the soak fail, whatever the resource figures.
    pub fn activity_failures(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.reordered
            + self.unexpected
            + self.invoke_leaks
            + self.cards_changed
            + self.cards_while_up
            + self.provider_mismatches
            + self.request_errors
            + self.stream_errors
    }
}
