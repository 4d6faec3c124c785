//! The two Power Platform calls a Copilot Studio client makes before it
//! speaks Direct Line, so the proxy's token endpoint support can be tried
//! and tested offline:
//! - `GET /powervirtualagents/botsbyschema/{schema}/directline/token`: a
//!   token for a new conversation, like `tokens/generate` but without a
//!   secret and without a user id (as the real endpoint for an agent
//!   without secured access);
//! - `GET /powervirtualagents/regionalchannelsettings`: names this
//!   emulator as the agent's regional Direct Line base.
//!
//! The `api-version` query parameter is accepted and not checked.

use http::{Response, StatusCode};
use serde_json::json;

use super::auth::TokenKind;
use super::respond::{self, Body};
use super::state::EmulatorState;
use super::tokens::{issue, token_answer};

/// A token endpoint path of an agent this emulator plays (any schema
/// name is served), with the `api-version` Copilot Studio gives.
pub const AGENT_TOKEN_PATH: &str = "/powervirtualagents/botsbyschema/emulated_agent/directline/token?api-version=2022-03-01-preview";

/// A fresh conversation and an unbound token for it.
pub fn agent_token(state: &EmulatorState) -> Response<Body> {
    let conversation = state.new_conversation();
    let token = issue(state, &conversation.id, None, TokenKind::Conversation);
    respond::json(
        StatusCode::OK,
        &token_answer(state, &conversation.id, &token),
    )
}

/// The regional settings: this emulator is the Direct Line base.
pub fn regional_channel_settings(state: &EmulatorState) -> Response<Body> {
    respond::json(
        StatusCode::OK,
        &json!({
            "channelUrlsById": { "directline": format!("{}/", state.base_url()) },
        }),
    )
}
