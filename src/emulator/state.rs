//! What the emulator knows, shared by every request handler and socket task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use serde_json::Value;
use tokio::task::JoinSet;

use super::EmulatorConfig;
use super::RecordedRequest;
use super::auth::TokenStore;
use super::conversation::Conversation;
use super::rough::JsonStyle;

/// Recorded request bodies are cut at this size to bound test memory.
pub const MAX_RECORDED_BODY: usize = 4 * 1024 * 1024;

/// An uploaded file served back at `/v3/directline/attachments/{id}`.
#[derive(Debug, Clone)]
pub struct StoredAttachment {
    pub content_type: String,
    pub bytes: Bytes,
}

/// Everything the emulator knows, behind one `Arc`.
pub struct EmulatorState {
    pub config: EmulatorConfig,
    pub addr: SocketAddr,
    pub tokens: Mutex<TokenStore>,
    pub conversations: Mutex<HashMap<String, Arc<Conversation>>>,
    pub requests: Mutex<Vec<RecordedRequest>>,
    pub token_posts: Mutex<Vec<(String, Value)>>,
    /// `sasUrl` path segment to conversation id.
    pub sas: Mutex<HashMap<String, String>>,
    pub attachments: Mutex<HashMap<String, StoredAttachment>>,
    /// Open WebSocket tasks, so shutdown can wait for their close handshakes.
    pub stream_tasks: Mutex<JoinSet<()>>,
    /// Whether HTTP requests are recorded. Off in standalone mode, where the
    /// emulator serves demos and load tests and nobody reads the record.
    pub recording: bool,
}

/// Locks a mutex, ignoring poisoning: a panicked handler must not take the
/// whole emulator down with it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EmulatorState {
    pub fn new(config: EmulatorConfig, addr: SocketAddr, recording: bool) -> Self {
        EmulatorState {
            config,
            addr,
            tokens: Mutex::default(),
            conversations: Mutex::default(),
            requests: Mutex::default(),
            token_posts: Mutex::default(),
            sas: Mutex::default(),
            attachments: Mutex::default(),
            stream_tasks: Mutex::new(JoinSet::new()),
            recording,
        }
    }

    pub fn conversation(&self, id: &str) -> Option<Arc<Conversation>> {
        lock(&self.conversations).get(id).cloned()
    }

    /// Creates a conversation with a fresh random id.
    pub fn new_conversation(&self) -> Arc<Conversation> {
        let id = super::auth::random_id(22);
        let json = JsonStyle::new(self.config.rough);
        let conversation = Arc::new(Conversation::new(id.clone(), json));
        lock(&self.conversations).insert(id, conversation.clone());
        conversation
    }

    pub fn all_conversations(&self) -> Vec<Arc<Conversation>> {
        lock(&self.conversations).values().cloned().collect()
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn record_request(&self, request: RecordedRequest) {
        if self.recording {
            lock(&self.requests).push(request);
        }
    }
}
