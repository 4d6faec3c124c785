//! One conversation: its activity log with watermarks, its open stream, and
//! what the tests want to inspect afterwards.
//!
//! Watermarks: every activity gets the next sequence number `n` and the id
//! `"{conversationId}|{n:07}"`; the watermark of a logged activity is `n` as
//! a decimal string, and "after W" means `n > W`. Typing activities take a
//! number too (ids stay unique) but are not logged: they go to the stream
//! only, never to polling, and carry no watermark, so watermarks may skip
//! numbers exactly where a typing activity was sent.

use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::auth::random_id;
use super::rough::JsonStyle;

/// Close code sent to the older socket when a newer one connects.
/// Direct Line documents only the reason (`collision`), not the code.
pub const COLLISION_CLOSE_CODE: u16 = 1000;
/// Close reason sent to the older socket when a newer one connects.
pub const COLLISION_CLOSE_REASON: &str = "collision";

/// What a stream task is asked to do by the rest of the emulator.
#[derive(Debug)]
pub enum Outbound {
    /// Write this message; report on the channel whether the write worked.
    Send(Message, Option<oneshot::Sender<bool>>),
    /// Drop the socket at once, without a close frame.
    Abort,
}

/// A pending OAuth prompt of the scripted bot.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// `tokenExchangeResource.id` (or the internal id when the card has none).
    pub id: String,
    pub connection_name: String,
    /// Whether the card offered `tokenExchangeResource`.
    pub exchangeable: bool,
    /// The path segment of the `sasUrl`, when the card offered one.
    pub sas_id: Option<String>,
    /// The account the card was sent to: the one to sign in.
    pub user: Value,
}

struct StreamSlot {
    generation: u64,
    tx: mpsc::UnboundedSender<Outbound>,
}

#[derive(Default)]
struct State {
    started: bool,
    next_seq: u64,
    log: Vec<(u64, Value)>,
    user_id: Option<String>,
    stream: Option<StreamSlot>,
    generations: u64,
    received: Vec<Message>,
    invokes: Vec<Value>,
    prompts: Vec<Prompt>,
}

/// A Direct Line conversation held by the emulator.
pub struct Conversation {
    pub id: String,
    pub session_id: String,
    /// How ActivitySets are written on the stream.
    json: JsonStyle,
    state: Mutex<State>,
}

impl Conversation {
    pub fn new(id: String, json: JsonStyle) -> Self {
        Conversation {
            id,
            session_id: random_id(24),
            json,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the conversation started; false if it already was.
    pub fn start(&self, user_id: Option<String>) -> bool {
        let mut state = self.state();
        if state.started {
            return false;
        }
        state.started = true;
        state.user_id = user_id;
        true
    }

    /// The user id given when the conversation was started, if any.
    pub fn user_id(&self) -> Option<String> {
        self.state().user_id.clone()
    }

    /// Assigns id, timestamp and conversation fields, logs the activity
    /// (unless typing) and sends it on the open stream, all under one lock
    /// so log order and stream order are the same. Returns the activity as
    /// logged (with its id).
    pub fn append(&self, mut activity: Value) -> Value {
        let mut state = self.state();
        let seq = state.next_seq;
        state.next_seq += 1;
        let id = format!("{}|{seq:07}", self.id);
        stamp(&mut activity, &id, &self.id);
        let typing = activity["type"] == "typing";
        let set = if typing {
            json!({ "activities": [&activity] })
        } else {
            json!({ "activities": [&activity], "watermark": seq.to_string() })
        };
        if !typing {
            state.log.push((seq, activity.clone()));
        }
        send_text(&state, self.json, &set);
        activity
    }

    /// Logged activities after the watermark, and the watermark to report
    /// (the last logged sequence number; `None` while the log is empty).
    pub fn activities_after(&self, watermark: Option<u64>) -> (Vec<Value>, Option<u64>) {
        let state = self.state();
        activities_after(&state, watermark)
    }

    /// Installs a new stream, closing the previous one with `collision`, and
    /// queues the replay of what came after the watermark (if anything).
    pub fn attach_stream(
        &self,
        tx: mpsc::UnboundedSender<Outbound>,
        watermark: Option<u64>,
    ) -> u64 {
        let mut state = self.state();
        if let Some(old) = state.stream.take() {
            let frame = CloseFrame {
                code: CloseCode::from(COLLISION_CLOSE_CODE),
                reason: COLLISION_CLOSE_REASON.into(),
            };
            let _ = old
                .tx
                .send(Outbound::Send(Message::Close(Some(frame)), None));
        }
        state.generations += 1;
        let generation = state.generations;
        state.stream = Some(StreamSlot { generation, tx });
        let (activities, last) = activities_after(&state, watermark);
        if !activities.is_empty() {
            let set = json!({ "activities": activities, "watermark": last.map(|n| n.to_string()) });
            send_text(&state, self.json, &set);
        }
        generation
    }

    /// Forgets the stream if it is still the current one.
    pub fn detach_stream(&self, generation: u64) {
        let mut state = self.state();
        if state
            .stream
            .as_ref()
            .is_some_and(|s| s.generation == generation)
        {
            state.stream = None;
        }
    }

    /// Queues a raw message on the open stream; `None` if there is none.
    pub fn send_raw(&self, message: Message) -> Option<oneshot::Receiver<bool>> {
        let state = self.state();
        let slot = state.stream.as_ref()?;
        let (ack, done) = oneshot::channel();
        slot.tx.send(Outbound::Send(message, Some(ack))).ok()?;
        Some(done)
    }

    /// Drops the open stream without a close frame.
    pub fn abort_stream(&self) {
        if let Some(slot) = self.state().stream.take() {
            let _ = slot.tx.send(Outbound::Abort);
        }
    }

    pub fn record_received(&self, message: Message) {
        self.state().received.push(message);
    }

    pub fn received(&self) -> Vec<Message> {
        self.state().received.clone()
    }

    pub fn record_invoke(&self, activity: Value) {
        self.state().invokes.push(activity);
    }

    pub fn invokes(&self) -> Vec<Value> {
        self.state().invokes.clone()
    }

    pub fn add_prompt(&self, prompt: Prompt) {
        self.state().prompts.push(prompt);
    }

    pub fn has_prompts(&self) -> bool {
        !self.state().prompts.is_empty()
    }

    /// The pending prompt with this id.
    pub fn prompt(&self, id: &str) -> Option<Prompt> {
        self.state().prompts.iter().find(|p| p.id == id).cloned()
    }

    /// The pending prompt posted to through this `sasUrl` path segment.
    pub fn prompt_by_sas(&self, sas_id: &str) -> Option<Prompt> {
        let state = self.state();
        let found = state
            .prompts
            .iter()
            .find(|p| p.sas_id.as_deref() == Some(sas_id));
        found.cloned()
    }

    /// Removes a prompt once it is satisfied; false if it was already gone
    /// (so two concurrent sign-ins cannot both succeed).
    pub fn take_prompt(&self, id: &str) -> bool {
        let mut state = self.state();
        let before = state.prompts.len();
        state.prompts.retain(|p| p.id != id);
        state.prompts.len() != before
    }
}

fn activities_after(state: &State, watermark: Option<u64>) -> (Vec<Value>, Option<u64>) {
    let activities = state
        .log
        .iter()
        .filter(|(seq, _)| watermark.is_none_or(|w| *seq > w))
        .map(|(_, activity)| activity.clone())
        .collect();
    (activities, state.log.last().map(|(seq, _)| *seq))
}

fn send_text(state: &State, json: JsonStyle, set: &Value) {
    if let Some(slot) = &state.stream {
        let text = json.write(set);
        let _ = slot.tx.send(Outbound::Send(Message::text(text), None));
    }
}

/// The fields Direct Line itself sets on every activity it relays.
fn stamp(activity: &mut Value, id: &str, conversation_id: &str) {
    if !activity.is_object() {
        *activity = json!({});
    }
    activity["id"] = json!(id);
    activity["timestamp"] = json!(now_rfc3339());
    activity["channelId"] = json!("directline");
    activity["conversation"] = json!({ "id": conversation_id });
}

/// The current UTC time as `2024-01-31T12:34:56.789Z` (Direct Line's format,
/// with milliseconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let stamp = now_rfc3339();
        assert_eq!(stamp.len(), "2024-01-31T12:34:56.789Z".len(), "{stamp}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{stamp}"
        );
        assert_eq!(stamp.as_bytes()[19], b'.', "{stamp}");
    }

    #[test]
    fn watermarks_skip_typing() {
        let conversation = Conversation::new("c".into(), JsonStyle::Compact);
        conversation.append(json!({"type":"message"}));
        conversation.append(json!({"type":"typing"}));
        let last_activity = conversation.append(json!({"type":"message"}));
        assert_eq!(last_activity["id"], "c|0000002");
        let (all, last) = conversation.activities_after(None);
        assert_eq!((all.len(), last), (2, Some(2)));
        let (after, _) = conversation.activities_after(Some(0));
        assert_eq!(after[0]["id"], "c|0000002");
    }
}
