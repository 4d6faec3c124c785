//! Exchange once: what was decided for a card is remembered (bounded, with
//! a TTL), and a card being decided is decided once even when the stream
//! and a poll see it at the same time.
//!
//! Hand-written, not a cache crate's "get or compute": a decision whose
//! future is dropped mid-exchange is recorded as a failure (a token post
//! may already have gone out), where such a crate lets a waiting caller run
//! the exchange again.
//!
//! Keys are SHA-256 digests of (conversation id, card id), so an entry costs
//! the same whatever the ids' length: memory is bounded in bytes by the
//! capacity (about [`BYTES_PER_ENTRY`] each).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// A digest of the conversation id and the card id.
pub type Key = [u8; 32];

/// An upper estimate of one remembered decision: the map entry, its slot in
/// the expiry queue and the tables' spare room.
pub const BYTES_PER_ENTRY: usize = 160;

/// The key of one card of one conversation (its canonical id).
pub fn key(conversation_id: &str, card_id: &str) -> Key {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(&(conversation_id.len() as u64).to_be_bytes());
    context.update(conversation_id.as_bytes());
    context.update(card_id.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(context.finish().as_ref());
    key
}

enum Entry {
    Pending(watch::Receiver<Option<bool>>),
    Done { success: bool, at: Instant },
}

pub enum Begin<'a> {
    /// Decided before: `true` when the exchange succeeded.
    Decided(bool),
    /// Someone else is deciding; the receiver yields their result.
    Wait(watch::Receiver<Option<bool>>),
    /// The caller decides and must report through the guard.
    Lead(Lead<'a>),
}

pub struct Decisions {
    inner: Mutex<Inner>,
    ttl: Duration,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    order: VecDeque<(Key, Instant)>,
}

impl Decisions {
    pub fn new(ttl: Duration, capacity: usize) -> Decisions {
        Decisions {
            inner: Mutex::new(Inner::default()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    pub fn begin(&self, key: Key) -> Begin<'_> {
        let mut inner = self.lock();
        let now = Instant::now();
        match inner.entries.get(&key) {
            Some(Entry::Done { success, at }) if now.duration_since(*at) < self.ttl => {
                return Begin::Decided(*success);
            }
            Some(Entry::Pending(receiver)) => return Begin::Wait(receiver.clone()),
            _ => {}
        }
        let (sender, receiver) = watch::channel(None);
        inner.entries.insert(key, Entry::Pending(receiver));
        Begin::Lead(Lead {
            decisions: self,
            key,
            sender,
            finished: false,
        })
    }

    /// What was decided for `key`, if it was and is still remembered; never
    /// starts a decision.
    pub fn peek(&self, key: &Key) -> Option<bool> {
        match self.lock().entries.get(key) {
            Some(Entry::Done { success, at }) if at.elapsed() < self.ttl => Some(*success),
            _ => None,
        }
    }

    fn finish(&self, key: &Key, success: bool) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.entries.insert(*key, Entry::Done { success, at: now });
        inner.order.push_back((*key, now));
        self.evict(&mut inner, now);
    }

    /// Drops expired entries, then the oldest while over capacity.
    fn evict(&self, inner: &mut Inner, now: Instant) {
        while let Some(&(key, at)) = inner.order.front() {
            let expired = now.duration_since(at) >= self.ttl;
            if !expired && inner.order.len() <= self.capacity {
                break;
            }
            inner.order.pop_front();
            // Only remove the entry if it is the one this queue slot records.
            if matches!(inner.entries.get(&key), Some(Entry::Done { at: done, .. }) if *done == at)
            {
                inner.entries.remove(&key);
            }
        }
    }

    fn forget(&self, key: &Key) {
        let mut inner = self.lock();
        if matches!(inner.entries.get(key), Some(Entry::Pending(_))) {
            inner.entries.remove(key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// The right and duty to decide one card. Dropped without a result (the
/// decision was cancelled, e.g. by the timeout) it records a failure, so the
/// card is not retried in a loop.
pub struct Lead<'a> {
    decisions: &'a Decisions,
    key: Key,
    sender: watch::Sender<Option<bool>>,
    finished: bool,
}

impl Lead<'_> {
    pub fn finish(mut self, success: bool) {
        self.record(success);
    }

    /// Gives the decision up without a verdict: the next asker decides.
    /// Anyone waiting meanwhile sees a failure (the card is shown to them).
    pub fn abandon(mut self) {
        self.finished = true;
        self.decisions.forget(&self.key);
        let _ = self.sender.send(Some(false));
    }

    fn record(&mut self, success: bool) {
        if !self.finished {
            self.finished = true;
            self.decisions.finish(&self.key, success);
            let _ = self.sender.send(Some(success));
        }
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.record(false);
    }
}

/// Waits for another decider's result; a vanished decider counts as failure.
pub async fn wait(mut receiver: watch::Receiver<Option<bool>>) -> bool {
    match receiver.wait_for(Option::is_some).await {
        Ok(result) => result.unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(card: &str) -> Key {
        super::key("conv", card)
    }

    #[test]
    fn a_success_is_remembered_within_the_ttl() {
        let decisions = Decisions::new(Duration::from_secs(60), 10);
        let Begin::Lead(lead) = decisions.begin(key("a")) else {
            panic!("first is the lead")
        };
        lead.finish(true);
        assert!(matches!(decisions.begin(key("a")), Begin::Decided(true)));
        assert!(matches!(
            decisions.begin(super::key("other", "a")),
            Begin::Lead(_)
        ));
    }

    #[test]
    fn peeking_shows_what_was_decided_and_starts_nothing() {
        let decisions = Decisions::new(Duration::from_secs(60), 10);
        assert_eq!(decisions.peek(&key("a")), None);
        assert_eq!(decisions.len(), 0, "a peek does not start a decision");
        let Begin::Lead(lead) = decisions.begin(key("a")) else {
            panic!("lead")
        };
        assert_eq!(decisions.peek(&key("a")), None, "pending is not decided");
        lead.finish(true);
        assert_eq!(decisions.peek(&key("a")), Some(true));
    }

    #[test]
    fn a_cancelled_decision_counts_as_failure() {
        let decisions = Decisions::new(Duration::from_secs(60), 10);
        let Begin::Lead(lead) = decisions.begin(key("a")) else {
            panic!("lead")
        };
        drop(lead);
        assert!(matches!(decisions.begin(key("a")), Begin::Decided(false)));
    }

    #[tokio::test]
    async fn a_second_asker_waits_for_the_first() {
        let decisions = Decisions::new(Duration::from_secs(60), 10);
        let Begin::Lead(lead) = decisions.begin(key("a")) else {
            panic!("lead")
        };
        let Begin::Wait(receiver) = decisions.begin(key("a")) else {
            panic!("wait")
        };
        lead.finish(true);
        assert!(wait(receiver).await);
    }

    #[test]
    fn an_abandoned_decision_is_decided_again_by_the_next_asker() {
        let decisions = Decisions::new(Duration::from_secs(60), 10);
        let Begin::Lead(lead) = decisions.begin(key("a")) else {
            panic!("lead")
        };
        lead.abandon();
        assert!(matches!(decisions.begin(key("a")), Begin::Lead(_)));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let decisions = Decisions::new(Duration::ZERO, 10);
        let Begin::Lead(lead) = decisions.begin(key("a")) else {
            panic!("lead")
        };
        lead.finish(true);
        assert!(matches!(decisions.begin(key("a")), Begin::Lead(_)));
    }

    #[test]
    fn capacity_bounds_the_memory() {
        let decisions = Decisions::new(Duration::from_secs(60), 3);
        for card in ["a", "b", "c", "d", "e"] {
            let Begin::Lead(lead) = decisions.begin(key(card)) else {
                panic!("lead")
            };
            lead.finish(true);
        }
        assert_eq!(decisions.len(), 3);
        assert!(
            matches!(decisions.begin(key("a")), Begin::Lead(_)),
            "oldest evicted"
        );
        assert!(matches!(decisions.begin(key("e")), Begin::Decided(true)));
    }

    #[test]
    fn keys_are_fixed_size_and_do_not_collide_across_the_boundary() {
        assert_eq!(super::key("ab", "c").len(), 32);
        assert_ne!(super::key("ab", "c"), super::key("a", "bc"));
        assert_eq!(super::key("a", &"x".repeat(100_000)).len(), 32);
    }
}
