//! Counters of SSO decisions, kept here so the metrics endpoint can expose
//! them: decisions by flow and outcome, their latency, and cards seen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::flows::Flow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The bot (or token service) took the token; the card was removed.
    Success,
    /// The bot or token service refused the token; or the exchange call failed.
    Rejected,
    /// The provider has no token for this user.
    NoToken,
    /// The provider could not answer.
    ProviderError,
    /// No decision within `sso.timeout_ms`.
    Timeout,
    /// The card's `sasUrl` host is not allowed.
    NotAllowed,
    /// The conversation token or the user id needed for the invoke is unknown.
    NoContext,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Success,
        Outcome::Rejected,
        Outcome::NoToken,
        Outcome::ProviderError,
        Outcome::Timeout,
        Outcome::NotAllowed,
        Outcome::NoContext,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Rejected => "rejected",
            Outcome::NoToken => "no_token",
            Outcome::ProviderError => "provider_error",
            Outcome::Timeout => "timeout",
            Outcome::NotAllowed => "not_allowed",
            Outcome::NoContext => "no_context",
        }
    }

    fn index(self) -> usize {
        Outcome::ALL
            .iter()
            .position(|o| *o == self)
            .unwrap_or_default()
    }
}

/// Upper bounds of the decision latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Default)]
pub struct SsoMetrics {
    decisions: [[AtomicU64; Outcome::ALL.len()]; 2],
    cards_seen: AtomicU64,
    /// Cumulative per bucket, plus the +Inf bucket last.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_micros_sum: AtomicU64,
}

fn flow_index(flow: Flow) -> usize {
    match flow {
        Flow::Invoke => 0,
        Flow::TokenPost => 1,
    }
}

impl SsoMetrics {
    pub fn card_seen(&self) {
        self.cards_seen.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record(&self, flow: Flow, outcome: Outcome, latency: Duration) {
        self.decisions[flow_index(flow)][outcome.index()].fetch_add(1, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        for (bucket, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_buckets[LATENCY_BUCKETS.len()].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_micros_sum.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn decisions(&self, flow: Flow, outcome: Outcome) -> u64 {
        self.decisions[flow_index(flow)][outcome.index()].load(Ordering::Relaxed)
    }

    pub fn cards_seen(&self) -> u64 {
        self.cards_seen.load(Ordering::Relaxed)
    }

    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`], then +Inf.
    pub fn latency_buckets(&self) -> Vec<u64> {
        self.latency_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    pub fn latency_sum(&self) -> Duration {
        Duration::from_micros(self.latency_micros_sum.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_counted_by_flow_and_outcome_with_latency() {
        let metrics = SsoMetrics::default();
        metrics.record(Flow::Invoke, Outcome::Success, Duration::from_millis(20));
        metrics.record(Flow::Invoke, Outcome::Success, Duration::from_millis(700));
        metrics.record(Flow::TokenPost, Outcome::NotAllowed, Duration::from_secs(9));
        assert_eq!(metrics.decisions(Flow::Invoke, Outcome::Success), 2);
        assert_eq!(metrics.decisions(Flow::TokenPost, Outcome::NotAllowed), 1);
        assert_eq!(metrics.decisions(Flow::TokenPost, Outcome::Success), 0);
        let buckets = metrics.latency_buckets();
        assert_eq!(buckets[2], 1, "20 ms is within 25 ms");
        assert_eq!(buckets[7], 2, "two within 1 s");
        assert_eq!(*buckets.last().expect("+Inf"), 3);
        assert_eq!(metrics.latency_sum(), Duration::from_millis(9720));
    }
}
