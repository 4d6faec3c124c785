//! The rich content the scripted bot sends: cards, suggested actions and the
//! OAuth card exactly as botbuilder's `OAuthPrompt` shapes it on directline.

use serde_json::{Value, json};

/// Content type of an OAuth card attachment.
pub const OAUTH_CARD: &str = "application/vnd.microsoft.card.oauth";
/// The OAuth connection name the bot's prompt uses.
pub const CONNECTION_NAME: &str = "AAD";
/// The audience a token for `tokenExchangeResource.uri` would have.
pub const EXCHANGE_URI: &str = "api://emulator-bot/access_as_user";
/// Azure Bot Service's provider id of the "Azure AD v2" connection type.
pub const PROVIDER_ID: &str = "30dd229c-58e3-4a48-bdfd-91ec48eb906c";

pub fn hero_card() -> Value {
    json!({
        "contentType": "application/vnd.microsoft.card.hero",
        "content": {
            "title": "Emulator hero card",
            "subtitle": "A card with an image and buttons",
            "text": "Hero cards carry a title, text, images and buttons.",
            "images": [{ "url": "https://adaptivecards.io/content/cats/1.png", "alt": "A cat" }],
            "buttons": [
                { "type": "imBack", "title": "Say help", "value": "help" },
                { "type": "openUrl", "title": "Docs", "value": "https://learn.microsoft.com/azure/bot-service/" }
            ]
        }
    })
}

pub fn adaptive_card() -> Value {
    json!({
        "contentType": "application/vnd.microsoft.card.adaptive",
        "content": {
            "type": "AdaptiveCard",
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "version": "1.5",
            "body": [
                { "type": "TextBlock", "text": "Adaptive card", "weight": "Bolder", "size": "Medium" },
                { "type": "Input.Text", "id": "comment", "placeholder": "Say something" }
            ],
            "actions": [{ "type": "Action.Submit", "title": "Send", "data": { "action": "submit" } }]
        }
    })
}

pub fn suggested_actions() -> Value {
    json!({
        "to": [],
        "actions": [
            { "type": "imBack", "title": "Help", "value": "help" },
            { "type": "imBack", "title": "Sequence", "value": "sequence" },
            { "type": "imBack", "title": "Sign in", "value": "signin" }
        ]
    })
}

/// Which resources an OAuth card offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OAuthOffer {
    pub exchange: bool,
    pub post: bool,
    /// Whether the `signin` button carries a `value` link.
    pub link: bool,
}

/// An OAuth card attachment for the prompt `id`; `sas_url` is used when
/// the offer includes token post.
pub fn oauth_card(id: &str, offer: OAuthOffer, sas_url: &str) -> Value {
    let mut button = json!({ "type": "signin", "title": "Sign in" });
    if offer.link {
        button["value"] = json!(format!(
            "https://token.botframework.com/api/oauth/signin?signin={id}"
        ));
    }
    let mut content = json!({
        "text": "Please sign in to continue.",
        "connectionName": CONNECTION_NAME,
        "buttons": [button],
    });
    if offer.exchange {
        content["tokenExchangeResource"] =
            json!({ "id": id, "uri": EXCHANGE_URI, "providerId": PROVIDER_ID });
    }
    if offer.post {
        content["tokenPostResource"] = json!({ "sasUrl": sas_url });
    }
    json!({ "contentType": OAUTH_CARD, "content": content })
}
