//! The scripted bot. It reacts to the trimmed, case-insensitive text of a
//! user message (see [`HELP`]) and to `signin/tokenExchange` invokes, and
//! answers like a botbuilder bot behind Direct Line would: replies first,
//! then the turn's HTTP status.

use std::sync::Arc;

use serde_json::{Value, json};

use super::auth::random_id;
use super::cards::{self, OAuthOffer};
use super::conversation::{Conversation, Prompt};
use super::state::{EmulatorState, lock};

pub const BOT_ID: &str = "emulator-bot";
pub const BOT_NAME: &str = "Emulator Bot";

/// The bot's channel account, the `recipient` of every user activity.
pub fn bot_account() -> Value {
    json!({ "id": BOT_ID, "name": BOT_NAME })
}
/// The greeting sent when a conversation starts.
pub const WELCOME: &str = "Welcome to the Emulator Bot. Type 'help' to see what I can do.";
/// Sent when a sign-in (exchange or token post) succeeded.
pub const SIGNED_IN: &str = "You are now signed in.";
/// Target size of the `large` reply, serialised (Direct Line's limit is 256K).
pub const LARGE_CHARS: usize = 250_000;

pub const HELP: &str = "Commands: help, sequence, large, fail, signin, signin exchange, \
signin post, signin plain, signin hero, signin two, signin text. Anything else is echoed.";

/// A bot turn that did not succeed: Direct Line turns it into 502 `BotError`.
#[derive(Debug, Clone)]
pub struct BotFailure {
    pub status: u16,
    pub message: String,
}

/// `Ok(None)`: the turn succeeded with no body; `Ok(Some(body))`: an invoke
/// response body to pass back to the poster.
pub type BotResult = Result<Option<Value>, BotFailure>;

fn failure(status: u16, message: &str) -> BotFailure {
    BotFailure {
        status,
        message: format!("The bot answered {status}: {message}"),
    }
}

/// Runs one turn for an activity that was just logged.
pub async fn on_activity(
    state: &Arc<EmulatorState>,
    conversation: &Arc<Conversation>,
    activity: &Value,
) -> BotResult {
    match activity["type"].as_str() {
        Some("message") => {
            if !state.config.bot_delay.is_zero() {
                tokio::time::sleep(state.config.bot_delay).await;
            }
            on_message(state, conversation, activity)
        }
        Some("invoke") => on_invoke(state, conversation, activity),
        _ => Ok(None),
    }
}

/// The bot's greeting for a new conversation.
pub fn welcome(conversation: &Conversation) {
    let mut message = json!({
        "type": "message",
        "from": bot_account(),
        "text": WELCOME,
        "inputHint": "acceptingInput",
    });
    if let Some(user) = conversation.user_id() {
        message["recipient"] = json!({ "id": user });
    }
    conversation.append(message);
}

fn on_message(state: &EmulatorState, conversation: &Conversation, activity: &Value) -> BotResult {
    let text = activity["text"].as_str().unwrap_or_default();
    let command = text.trim().to_lowercase();
    let say = |fields: Value| {
        conversation.append(reply(activity, fields));
    };
    match command.as_str() {
        "help" => say(json!({ "text": HELP })),
        "sequence" => sequence(activity).into_iter().for_each(|a| {
            conversation.append(a);
        }),
        "large" => say(json!({ "text": large_text(activity) })),
        "fail" => return Err(failure(500, "the scripted bot failed on purpose")),
        "signin" | "signin exchange" | "signin post" | "signin plain" | "signin hero"
        | "signin two" => sign_in(state, conversation, activity, &command),
        "signin text" => say(json!({
            "text": format!("An OAuth card has the content type {}; this is only text.", cards::OAUTH_CARD)
        })),
        "" => say(json!({ "text": received(activity) })),
        _ => say(json!({ "text": format!("You said: {text}") })),
    }
    Ok(None)
}

/// A reply to `activity`, with botbuilder's defaults, plus `fields`.
pub fn reply(activity: &Value, fields: Value) -> Value {
    let mut reply = json!({
        "type": "message",
        "from": bot_account(),
        "recipient": activity["from"],
        "replyToId": activity["id"],
        "inputHint": "acceptingInput",
    });
    if let Some(locale) = activity["locale"].as_str() {
        reply["locale"] = json!(locale);
    }
    if let (Some(target), Some(extra)) = (reply.as_object_mut(), fields.as_object()) {
        target.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    reply
}

/// What the bot says to a message without text (an upload, usually).
fn received(activity: &Value) -> String {
    let names: Vec<&str> = activity["attachments"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|a| a["name"].as_str().unwrap_or("unnamed"))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return "You said: ".into();
    }
    format!(
        "Received {} attachment(s): {}",
        names.len(),
        names.join(", ")
    )
}

/// Typing, then one of each kind of content Web Chat renders.
fn sequence(activity: &Value) -> Vec<Value> {
    let mut typing = reply(activity, json!({ "type": "typing" }));
    if let Some(fields) = typing.as_object_mut() {
        fields.remove("inputHint");
    }
    vec![
        typing,
        reply(activity, json!({ "text": "This is plain text." })),
        reply(
            activity,
            json!({
                "text": "**Bold**, _italic_, `code` and a [link](https://example.com).\n\n- one\n- two",
                "textFormat": "markdown"
            }),
        ),
        reply(
            activity,
            json!({ "text": "Unicode: héllo wörld, 你好, ‏שלום‏, 😀🎉👍🏽, e\u{301}, 𝄞" }),
        ),
        reply(activity, json!({ "attachments": [cards::hero_card()] })),
        reply(activity, json!({ "attachments": [cards::adaptive_card()] })),
        reply(
            activity,
            json!({
                "text": "What next?",
                "suggestedActions": cards::suggested_actions()
            }),
        ),
    ]
}

/// Filler text sized so the whole reply serialises to about [`LARGE_CHARS`].
fn large_text(activity: &Value) -> String {
    const STAMP_ALLOWANCE: usize = 200; // id, timestamp, channelId, conversation
    let overhead = reply(activity, json!({ "text": "" })).to_string().len() + STAMP_ALLOWANCE;
    let wanted = LARGE_CHARS.saturating_sub(overhead);
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. "
        .chars()
        .cycle()
        .take(wanted)
        .collect()
}

/// Sends the OAuth card variant named by `command`, registering its prompts
/// before the card goes out so an immediate exchange finds them.
fn sign_in(state: &EmulatorState, conversation: &Conversation, activity: &Value, command: &str) {
    let full = OAuthOffer {
        exchange: true,
        post: true,
        link: false,
    };
    let attachments = match command {
        "signin exchange" => vec![prompt(
            state,
            conversation,
            activity,
            OAuthOffer {
                post: false,
                ..full
            },
        )],
        "signin post" => vec![prompt(
            state,
            conversation,
            activity,
            OAuthOffer {
                exchange: false,
                ..full
            },
        )],
        "signin plain" => vec![prompt(
            state,
            conversation,
            activity,
            OAuthOffer {
                exchange: false,
                post: false,
                link: true,
            },
        )],
        "signin hero" => vec![
            prompt(state, conversation, activity, full),
            cards::hero_card(),
        ],
        "signin two" => vec![
            prompt(state, conversation, activity, full),
            prompt(state, conversation, activity, full),
        ],
        _ => vec![prompt(state, conversation, activity, full)],
    };
    conversation.append(reply(activity, json!({ "attachments": attachments })));
}

/// Registers one pending prompt and returns its OAuth card.
fn prompt(
    state: &EmulatorState,
    conversation: &Conversation,
    activity: &Value,
    offer: OAuthOffer,
) -> Value {
    let id = random_id(24);
    let sas_id = offer.post.then(|| random_id(32));
    if let Some(sas_id) = &sas_id {
        lock(&state.sas).insert(sas_id.clone(), conversation.id.clone());
    }
    let sas_url = format!(
        "{}/sas/{}",
        state.base_url(),
        sas_id.as_deref().unwrap_or("")
    );
    conversation.add_prompt(Prompt {
        id: id.clone(),
        connection_name: cards::CONNECTION_NAME.into(),
        exchangeable: offer.exchange,
        sas_id,
        user: activity["from"].clone(),
    });
    cards::oauth_card(&id, offer, &sas_url)
}

/// `signin/tokenExchange`, answered like botbuilder's `OAuthPrompt`:
/// 501 with no prompt waiting, 400 for a malformed value or another
/// connection, 412 when the token cannot be exchanged or the invoke comes
/// from another account than the card was sent to, else 200 after the
/// "signed in" message.
fn on_invoke(state: &EmulatorState, conversation: &Conversation, activity: &Value) -> BotResult {
    if activity["name"] != "signin/tokenExchange" || !conversation.has_prompts() {
        return Err(failure(501, "no dialog is waiting for this invoke"));
    }
    let value = &activity["value"];
    let (Some(id), Some(connection), Some(token)) = (
        value["id"].as_str(),
        value["connectionName"].as_str(),
        value["token"].as_str(),
    ) else {
        return Err(failure(400, "the token exchange value is malformed"));
    };
    let prompt = conversation.prompt(id).filter(|p| p.exchangeable);
    if prompt
        .as_ref()
        .is_some_and(|p| p.connection_name != connection)
        || connection != cards::CONNECTION_NAME
    {
        return Err(failure(400, "the connection name does not match"));
    }
    let accepted = state.config.accepted_sso_tokens.iter().any(|t| t == token);
    // The bot stores the token under `from.id`: an invoke from another
    // account would sign in the wrong user, so it is refused.
    let same_user = prompt
        .as_ref()
        .is_some_and(|p| p.user["id"] == activity["from"]["id"]);
    if prompt.is_none() || !accepted || !same_user || !conversation.take_prompt(id) {
        return Err(failure(412, "the token could not be exchanged"));
    }
    forget_sas(state, prompt.as_ref().and_then(|p| p.sas_id.as_deref()));
    conversation.append(reply(activity, json!({ "text": SIGNED_IN })));
    Ok(Some(
        json!({ "id": id, "connectionName": connection, "failureDetail": null }),
    ))
}

/// Completes a prompt through its token post URL; false when the prompt was
/// already satisfied.
pub fn sign_in_by_post(
    state: &EmulatorState,
    conversation: &Conversation,
    prompt: &Prompt,
) -> bool {
    if !conversation.take_prompt(&prompt.id) {
        return false;
    }
    forget_sas(state, prompt.sas_id.as_deref());
    let message = json!({
        "type": "message",
        "from": bot_account(),
        "recipient": prompt.user,
        "text": SIGNED_IN,
        "inputHint": "acceptingInput",
    });
    conversation.append(message);
    true
}

fn forget_sas(state: &EmulatorState, sas_id: Option<&str>) {
    if let Some(sas_id) = sas_id {
        lock(&state.sas).remove(sas_id);
    }
}
