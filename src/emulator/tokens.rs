//! Issuing Direct Line tokens: one place for `tokens/generate`, starts,
//! refreshes, stream URLs and the Copilot Studio agent endpoint alike.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::auth::{Grant, STREAM_TOKEN_TTL, TokenKind};
use super::state::{EmulatorState, lock};

/// A token for `conversation_id` (and `user_id`, when bound), kept by the
/// emulator until it expires.
pub fn issue(
    state: &EmulatorState,
    conversation_id: &str,
    user_id: Option<String>,
    kind: TokenKind,
) -> String {
    let ttl = match kind {
        TokenKind::Conversation => state.config.token_ttl,
        TokenKind::Stream => STREAM_TOKEN_TTL,
    };
    let grant = Grant {
        conversation_id: conversation_id.to_string(),
        user_id,
        expires: expiry(ttl),
        kind,
    };
    lock(&state.tokens).issue(grant)
}

/// `now + ttl`, saturating at about a century for absurd TTLs.
fn expiry(ttl: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(ttl)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

pub fn token_answer(state: &EmulatorState, conversation_id: &str, token: &str) -> Value {
    json!({
        "conversationId": conversation_id,
        "token": token,
        "expires_in": state.config.token_ttl.as_secs(),
    })
}
