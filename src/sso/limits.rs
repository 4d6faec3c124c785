//! How many decisions may run at once. A bot's activity set can carry any
//! number of cards, and without binding a client can post card-shaped
//! activities; each decision is a provider call and an invoke, so a set, a
//! conversation and the process each get a small budget. A card over the
//! budget passes unchanged (the user can still sign in by hand).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::decisions::Key;

/// Decisions one activity set may start.
pub const PER_SET: usize = 4;
/// Decisions running at once for one conversation (stream and polls together).
pub const PER_CONVERSATION: usize = 4;
/// Decisions running at once in the whole process.
pub const PER_PROCESS: usize = 256;

/// Decisions started by one activity set so far.
#[derive(Default)]
pub struct SetBudget {
    started: AtomicUsize,
}

impl SetBudget {
    fn take(&self) -> bool {
        self.started
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < PER_SET).then_some(n + 1)
            })
            .is_ok()
    }
}

/// Decisions in flight, by conversation.
#[derive(Default)]
pub struct InFlight {
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_conversation: HashMap<Key, usize>,
}

/// Held while a decision runs; frees its place when dropped.
pub struct Slot<'a> {
    in_flight: &'a InFlight,
    conversation: Key,
}

impl InFlight {
    /// A place for one more decision of `conversation` (a digest of its
    /// id), if the set, the conversation and the process have room.
    pub fn enter<'a>(&'a self, conversation: Key, set: &SetBudget) -> Option<Slot<'a>> {
        let mut counts = self.lock();
        let running = counts
            .by_conversation
            .get(&conversation)
            .copied()
            .unwrap_or(0);
        if counts.total >= PER_PROCESS || running >= PER_CONVERSATION || !set.take() {
            return None;
        }
        counts.total += 1;
        *counts.by_conversation.entry(conversation).or_insert(0) += 1;
        Some(Slot {
            in_flight: self,
            conversation,
        })
    }

    fn leave(&self, conversation: &Key) {
        let mut counts = self.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(running) = counts.by_conversation.get_mut(conversation) {
            *running -= 1;
            if *running == 0 {
                counts.by_conversation.remove(conversation);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn conversations(&self) -> usize {
        self.lock().by_conversation.len()
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.in_flight.leave(&self.conversation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(byte: u8) -> Key {
        [byte; 32]
    }

    #[test]
    fn a_set_starts_at_most_its_budget() {
        let in_flight = InFlight::default();
        let set = SetBudget::default();
        let mut slots = Vec::new();
        for i in 0..10u8 {
            if let Some(slot) = in_flight.enter(conversation(i), &set) {
                slots.push(slot);
            }
        }
        assert_eq!(slots.len(), PER_SET);
    }

    #[test]
    fn a_conversation_runs_at_most_its_budget_and_frees_places() {
        let in_flight = InFlight::default();
        let slots: Vec<Slot<'_>> = (0..PER_CONVERSATION)
            .map(|_| {
                in_flight
                    .enter(conversation(1), &SetBudget::default())
                    .expect("room")
            })
            .collect();
        assert!(
            in_flight
                .enter(conversation(1), &SetBudget::default())
                .is_none()
        );
        assert!(
            in_flight
                .enter(conversation(2), &SetBudget::default())
                .is_some(),
            "other conversations are not affected"
        );
        drop(slots);
        assert_eq!(in_flight.conversations(), 0, "nothing left behind");
        assert!(
            in_flight
                .enter(conversation(1), &SetBudget::default())
                .is_some()
        );
    }

    #[test]
    fn the_process_runs_at_most_its_budget() {
        let in_flight = InFlight::default();
        let slots: Vec<Slot<'_>> = (0..PER_PROCESS)
            .filter_map(|i| {
                let key = ring::digest::digest(&ring::digest::SHA256, &i.to_be_bytes());
                let mut conversation = [0u8; 32];
                conversation.copy_from_slice(key.as_ref());
                in_flight.enter(conversation, &SetBudget::default())
            })
            .collect();
        assert_eq!(slots.len(), PER_PROCESS);
        assert!(
            in_flight
                .enter(conversation(9), &SetBudget::default())
                .is_none()
        );
    }
}
