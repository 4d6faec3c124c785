//! Posting a user activity, the way Direct Line does it: validate, stamp,
//! log, echo on the stream, hand to the bot, and answer only once the bot
//! has answered.

use std::sync::Arc;

use serde_json::{Value, json};

use super::bot;
use super::conversation::Conversation;
use super::error::ApiError;
use super::state::EmulatorState;

/// Direct Line's limit on one serialised activity, in characters (256K).
pub const MAX_ACTIVITY_CHARS: usize = 256 * 1024;

/// Parses and checks a posted activity body. Over 256K characters is 413
/// `MessageSizeTooBig`; anything that is not a JSON object with a string
/// `type` is 400 `BadArgument`.
pub fn parse(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_argument("The activity is not valid UTF-8"))?;
    if text.chars().count() > MAX_ACTIVITY_CHARS {
        return Err(ApiError::too_big(
            "The activity exceeds the 256K character limit",
        ));
    }
    let activity: Value = serde_json::from_str(text)
        .map_err(|err| ApiError::bad_argument(format!("Malformed activity JSON: {err}")))?;
    check(&activity)?;
    Ok(activity)
}

/// An activity must be an object with a non-empty string `type`.
pub fn check(activity: &Value) -> Result<(), ApiError> {
    if !activity.is_object() {
        return Err(ApiError::bad_argument("The activity must be a JSON object"));
    }
    match activity["type"].as_str() {
        Some(kind) if !kind.is_empty() => Ok(()),
        _ => Err(ApiError::bad_argument("The activity must have a type")),
    }
}

/// Logs and echoes the user's activity, runs the bot, and turns its answer
/// into the HTTP answer body (`{"id"}` unless the bot returned a body).
pub async fn post(
    state: &Arc<EmulatorState>,
    conversation: &Arc<Conversation>,
    mut activity: Value,
    bound_user: Option<&str>,
) -> Result<Value, ApiError> {
    set_accounts(&mut activity, conversation, bound_user);
    let logged = conversation.append(activity);
    if logged["type"] == "invoke" {
        conversation.record_invoke(logged.clone());
    }
    match bot::on_activity(state, conversation, &logged).await {
        Ok(Some(body)) => Ok(body),
        Ok(None) => Ok(json!({ "id": logged["id"] })),
        Err(failure) => Err(ApiError::bot_error(failure.status, failure.message)),
    }
}

/// `recipient` is the bot; `from.id` is forced to the token's user when the
/// token was generated with one, and defaulted when the client sent none.
fn set_accounts(activity: &mut Value, conversation: &Conversation, bound_user: Option<&str>) {
    activity["recipient"] = bot::bot_account();
    if !activity["from"].is_object() {
        activity["from"] = json!({});
    }
    if let Some(user) = bound_user {
        activity["from"]["id"] = json!(user);
    } else if !activity["from"]["id"].is_string() {
        let user = conversation.user_id().unwrap_or_else(|| "anonymous".into());
        activity["from"]["id"] = json!(user);
    }
}
