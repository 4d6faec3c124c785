//! The token post endpoint behind `tokenPostResource.sasUrl`:
//! `POST /sas/{id}` with `{"token":"<user token>"}` signs the user in.
//!
//! Answers: 200 `{}` when signed in (the bot says so on the conversation);
//! 404 for an unknown URL, which includes a prompt already satisfied (the
//! Omnichannel widget reads 404 as "already signed in"); 400 for a body
//! without a string `token`; 401 for a token the bot does not accept.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::bot;
use super::error::ApiError;
use super::respond::{self, Body};
use super::state::{EmulatorState, lock};

/// Handles `POST /sas/{sas_id}`; `path_and_query` is what gets recorded.
pub fn token_post(
    state: &Arc<EmulatorState>,
    sas_id: &str,
    path_and_query: &str,
    body: &Bytes,
) -> Response<Body> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let recorded = parsed
        .clone()
        .unwrap_or_else(|| json!(String::from_utf8_lossy(body)));
    lock(&state.token_posts).push((path_and_query.to_string(), recorded));
    match complete(state, sas_id, parsed) {
        Ok(()) => respond::json(StatusCode::OK, &json!({})),
        Err(err) => respond::error(&err),
    }
}

fn complete(state: &EmulatorState, sas_id: &str, body: Option<Value>) -> Result<(), ApiError> {
    let unknown = || ApiError::not_found("Unknown or already used token post URL");
    let conversation_id = lock(&state.sas).get(sas_id).cloned().ok_or_else(unknown)?;
    let conversation = state.conversation(&conversation_id).ok_or_else(unknown)?;
    let prompt = conversation.prompt_by_sas(sas_id).ok_or_else(unknown)?;
    let token = body
        .as_ref()
        .and_then(|b| b["token"].as_str())
        .ok_or_else(|| ApiError::bad_argument("The body must be {\"token\": \"...\"}"))?;
    if !state.config.accepted_sso_tokens.iter().any(|t| t == token) {
        return Err(ApiError::unauthorized("The token was not accepted"));
    }
    if !bot::sign_in_by_post(state, &conversation, &prompt) {
        return Err(unknown());
    }
    Ok(())
}
