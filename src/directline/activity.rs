//! ActivitySets as the bot sends them: finding OAuth cards and the proxy's
//! own invoke echoes, and removing them while every other byte stays.
//!
//! Pure functions over bytes, so they are tested without sockets.

use std::collections::BTreeMap;

use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

pub const OAUTH_CARD: &str = "application/vnd.microsoft.card.oauth";
/// Prefix of `channelData.clientActivityID` on the proxy's own invokes, so
/// their echo is recognised by any replica.
pub const PROXY_INVOKE_MARKER: &str = "dlproxy-sso-";

/// The fast path's test: a frame containing neither marker goes out as it
/// came, without a JSON parse.
pub struct Markers {
    oauth: Finder<'static>,
    proxy_invoke: Finder<'static>,
}

impl Default for Markers {
    fn default() -> Self {
        Markers {
            oauth: Finder::new(OAUTH_CARD.as_bytes()).into_owned(),
            proxy_invoke: Finder::new(PROXY_INVOKE_MARKER.as_bytes()).into_owned(),
        }
    }
}

impl Markers {
    pub fn present(&self, bytes: &[u8]) -> bool {
        self.oauth.find(bytes).is_some() || self.proxy_invoke.find(bytes).is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeResource {
    pub id: String,
    pub uri: Option<String>,
    pub provider_id: Option<String>,
}

/// One OAuth card attachment and what it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthCard {
    pub activity: usize,
    pub attachment: usize,
    pub connection_name: Option<String>,
    pub exchange: Option<ExchangeResource>,
    pub sas_url: Option<String>,
    /// `signin=` id of the button link, when the bot included the link.
    pub sign_in_id: Option<String>,
    /// The user the card was sent to (`recipient.id`).
    pub user_id: Option<String>,
}

impl OAuthCard {
    /// What identifies the card across replays: the exchange resource id,
    /// else the sign-in id of the link, else the token post URL.
    pub fn id(&self) -> Option<&str> {
        self.exchange
            .as_ref()
            .map(|e| e.id.as_str())
            .or(self.sign_in_id.as_deref())
            .or(self.sas_url.as_deref())
    }
}

#[derive(Deserialize)]
struct SetShape<'a> {
    #[serde(borrow)]
    activities: &'a RawValue,
}

/// An ActivitySet with its activities still as their original bytes.
pub struct ActivitySet<'a> {
    bytes: &'a [u8],
    /// Byte range of the `activities` array inside `bytes`.
    array: std::ops::Range<usize>,
    pub activities: Vec<&'a RawValue>,
}

impl<'a> ActivitySet<'a> {
    /// `None` for anything that is not `{"activities":[...], ...}`: other
    /// shapes pass through untouched.
    pub fn parse(bytes: &'a [u8]) -> Option<ActivitySet<'a>> {
        if !super::is_json_object(bytes) {
            return None;
        }
        let shape: SetShape<'a> = serde_json::from_slice(bytes).ok()?;
        let activities: Vec<&'a RawValue> = serde_json::from_str(shape.activities.get()).ok()?;
        let start = shape.activities.get().as_ptr() as usize - bytes.as_ptr() as usize;
        Some(ActivitySet {
            bytes,
            array: start..start + shape.activities.get().len(),
            activities,
        })
    }
}

/// What a set holds that the proxy may act on.
#[derive(Debug, Default)]
pub struct Findings {
    pub cards: Vec<OAuthCard>,
    /// Activities that are echoes of the proxy's own invokes.
    pub proxy_invokes: Vec<usize>,
    /// The parsed activities that hold cards, by index, for the rewrite.
    parsed: Vec<(usize, Value)>,
}

impl Findings {
    pub fn is_empty(&self) -> bool {
        self.cards.is_empty() && self.proxy_invokes.is_empty()
    }
}

/// Parses only the activities whose bytes contain a marker.
pub fn scan(set: &ActivitySet<'_>, markers: &Markers) -> Findings {
    let mut findings = Findings::default();
    for (index, raw) in set.activities.iter().enumerate() {
        if !markers.present(raw.get().as_bytes()) {
            continue;
        }
        let Ok(activity) = serde_json::from_str::<Value>(raw.get()) else {
            continue;
        };
        if is_proxy_invoke(&activity) {
            findings.proxy_invokes.push(index);
            continue;
        }
        let cards = oauth_cards(index, &activity);
        if !cards.is_empty() {
            findings.cards.extend(cards);
            findings.parsed.push((index, activity));
        }
    }
    findings
}

fn is_proxy_invoke(activity: &Value) -> bool {
    activity["type"] == "invoke"
        && activity["channelData"]["clientActivityID"]
            .as_str()
            .is_some_and(|id| id.starts_with(PROXY_INVOKE_MARKER))
}

/// Whether the activity is the echo of something the user posted: cards in
/// those are the user's, not the bot's, and are never acted on (a user could
/// otherwise aim the proxy at a `sasUrl` of their choosing). Direct Line user
/// ids start with `dl_`; clients mark their own activities with
/// `role: "user"` or a `clientActivityID`.
fn sent_by_user(activity: &Value) -> bool {
    let from = &activity["from"];
    from["role"] == "user"
        || from["id"].as_str().is_some_and(|id| id.starts_with("dl_"))
        || activity["channelData"]["clientActivityID"].is_string()
}

fn oauth_cards(index: usize, activity: &Value) -> Vec<OAuthCard> {
    if sent_by_user(activity) {
        return Vec::new();
    }
    let Some(attachments) = activity["attachments"].as_array() else {
        return Vec::new();
    };
    let user_id = non_empty(&activity["recipient"]["id"]);
    attachments
        .iter()
        .enumerate()
        .filter(|(_, a)| a["contentType"] == OAUTH_CARD)
        .map(|(position, attachment)| {
            let content = &attachment["content"];
            let exchange =
                non_empty(&content["tokenExchangeResource"]["id"]).map(|id| ExchangeResource {
                    id,
                    uri: non_empty(&content["tokenExchangeResource"]["uri"]),
                    provider_id: non_empty(&content["tokenExchangeResource"]["providerId"]),
                });
            OAuthCard {
                activity: index,
                attachment: position,
                connection_name: non_empty(&content["connectionName"]),
                exchange,
                sas_url: non_empty(&content["tokenPostResource"]["sasUrl"]),
                sign_in_id: sign_in_id(content),
                user_id: user_id.clone(),
            }
        })
        .collect()
}

fn non_empty(value: &Value) -> Option<String> {
    value.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// The `signin=` query value of the first sign-in button's link.
fn sign_in_id(content: &Value) -> Option<String> {
    content["buttons"].as_array()?.iter().find_map(|button| {
        let link = button["value"].as_str()?;
        let query = link.split_once('?')?.1;
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "signin")
            .map(|(_, value)| value.into_owned())
            .filter(|v| !v.is_empty())
    })
}

/// The set with `exchanged` cards removed and `findings.proxy_invokes`
/// dropped. An activity left with nothing to show is dropped too; untouched
/// activities and everything outside the array keep their bytes.
pub fn rewrite(set: &ActivitySet<'_>, findings: &Findings, exchanged: &[&OAuthCard]) -> Vec<u8> {
    // Linear in the set: a client can fill a polled set with card-shaped
    // activities, so nothing here may be quadratic in their number.
    let mut removed: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for card in exchanged {
        removed
            .entry(card.activity)
            .or_default()
            .push(card.attachment);
    }
    let mut out = Vec::with_capacity(set.bytes.len());
    out.extend_from_slice(&set.bytes[..set.array.start]);
    out.push(b'[');
    let mut first = true;
    for (index, raw) in set.activities.iter().enumerate() {
        if findings.proxy_invokes.binary_search(&index).is_ok() {
            continue;
        }
        let parsed = findings
            .parsed
            .binary_search_by_key(&index, |(i, _)| *i)
            .ok()
            .map(|position| &findings.parsed[position].1);
        let kept = match (parsed, removed.get(&index)) {
            (Some(activity), Some(attachments)) => match without_attachments(activity, attachments)
            {
                Some(kept) => std::borrow::Cow::Owned(kept.to_string()),
                None => continue,
            },
            _ => std::borrow::Cow::Borrowed(raw.get()),
        };
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(kept.as_bytes());
    }
    out.push(b']');
    out.extend_from_slice(&set.bytes[set.array.end..]);
    out
}

/// `None` when nothing would be left to show.
fn without_attachments(activity: &Value, removed: &[usize]) -> Option<Value> {
    let mut activity = activity.clone();
    let object = activity.as_object_mut()?;
    let remaining: Vec<Value> = object
        .get("attachments")
        .and_then(Value::as_array)
        .map(|all| {
            all.iter()
                .enumerate()
                .filter(|(i, _)| !removed.contains(i))
                .map(|(_, a)| a.clone())
                .collect()
        })
        .unwrap_or_default();
    if remaining.is_empty() {
        object.remove("attachments");
    } else {
        object.insert("attachments".into(), Value::Array(remaining));
    }
    let shows_something = object.contains_key("attachments")
        || ["text", "speak"].iter().any(|k| {
            object
                .get(*k)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        })
        || object
            .get("suggestedActions")
            .is_some_and(|s| !s["actions"].as_array().is_none_or(Vec::is_empty));
    shows_something.then_some(activity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn oauth(id: Option<&str>, sas: Option<&str>) -> Value {
        let mut content = json!({"text": "Please sign in", "connectionName": "AAD",
            "buttons": [{"type": "signin", "title": "Sign in"}]});
        if let Some(id) = id {
            content["tokenExchangeResource"] =
                json!({"id": id, "uri": "api://bot/scope", "providerId": "p"});
        }
        if let Some(sas) = sas {
            content["tokenPostResource"] = json!({"sasUrl": sas});
        }
        json!({"contentType": OAUTH_CARD, "content": content})
    }

    fn card_activity(id: &str, attachments: Vec<Value>) -> Value {
        json!({"type": "message", "id": id, "from": {"id": "bot"}, "recipient": {"id": "dl_user"},
            "inputHint": "acceptingInput", "attachments": attachments})
    }

    fn set_bytes(activities: &[Value]) -> Vec<u8> {
        let items: Vec<String> = activities.iter().map(Value::to_string).collect();
        format!(
            "{{\"activities\": [{}],\n \"watermark\": \"12\"}}",
            items.join(", ")
        )
        .into_bytes()
    }

    fn findings(bytes: &[u8]) -> Findings {
        let set = ActivitySet::parse(bytes).expect("a set");
        scan(&set, &Markers::default())
    }

    fn rewritten(bytes: &[u8], exchange_all: bool) -> Value {
        let set = ActivitySet::parse(bytes).expect("a set");
        let found = scan(&set, &Markers::default());
        let exchanged: Vec<&OAuthCard> = if exchange_all {
            found.cards.iter().collect()
        } else {
            Vec::new()
        };
        serde_json::from_slice(&rewrite(&set, &found, &exchanged)).expect("json")
    }

    #[test]
    fn frames_without_markers_take_the_fast_path() {
        let markers = Markers::default();
        assert!(!markers.present(b"{\"activities\":[{\"type\":\"message\",\"text\":\"hi\"}]}"));
        assert!(!markers.present(b""));
        assert!(markers.present(OAUTH_CARD.as_bytes()));
    }

    #[test]
    fn finds_a_card_with_both_resources_and_its_user() {
        let bytes = set_bytes(&[card_activity(
            "a1",
            vec![oauth(
                Some("ex-1"),
                Some("https://token.botframework.com/x"),
            )],
        )]);
        let found = findings(&bytes);
        assert_eq!(found.cards.len(), 1);
        let card = &found.cards[0];
        assert_eq!(card.id(), Some("ex-1"));
        assert_eq!(card.connection_name.as_deref(), Some("AAD"));
        assert_eq!(
            card.sas_url.as_deref(),
            Some("https://token.botframework.com/x")
        );
        assert_eq!(card.user_id.as_deref(), Some("dl_user"));
        assert_eq!(
            card.exchange.as_ref().and_then(|e| e.uri.as_deref()),
            Some("api://bot/scope")
        );
    }

    #[test]
    fn finds_several_cards_in_several_activities_at_any_position() {
        let hero = json!({"contentType": "application/vnd.microsoft.card.hero", "content": {"title": "t"}});
        let bytes = set_bytes(&[
            card_activity("a1", vec![hero.clone(), oauth(Some("ex-1"), None)]),
            json!({"type": "message", "id": "a2", "text": "between"}),
            card_activity(
                "a3",
                vec![oauth(Some("ex-2"), None), oauth(None, Some("https://h/s"))],
            ),
        ]);
        let found = findings(&bytes);
        let positions: Vec<(usize, usize)> = found
            .cards
            .iter()
            .map(|c| (c.activity, c.attachment))
            .collect();
        assert_eq!(positions, vec![(0, 1), (2, 0), (2, 1)]);
        assert_eq!(found.cards[2].id(), Some("https://h/s"));
    }

    #[test]
    fn the_marker_in_text_or_another_card_is_not_a_card() {
        let bytes = set_bytes(&[
            json!({"type": "message", "id": "a", "text": format!("see {OAUTH_CARD}")}),
            card_activity(
                "b",
                vec![json!({"contentType": "application/vnd.microsoft.card.hero",
                "content": {"text": OAUTH_CARD}})],
            ),
        ]);
        assert!(findings(&bytes).is_empty());
    }

    #[test]
    fn cards_the_user_posted_are_not_the_bots() {
        let mut by_role = card_activity(
            "a",
            vec![oauth(None, Some("https://token.botframework.com/s"))],
        );
        by_role["from"] = json!({"id": "anyone", "role": "user"});
        let mut by_id = card_activity("b", vec![oauth(Some("ex"), None)]);
        by_id["from"] = json!({"id": "dl_someone"});
        let mut by_client_id = card_activity("c", vec![oauth(Some("ex"), None)]);
        by_client_id["channelData"] = json!({"clientActivityID": "web-chat-1"});
        let bytes = set_bytes(&[by_role, by_id, by_client_id]);
        assert!(findings(&bytes).is_empty());
    }

    #[test]
    fn sign_in_link_id_identifies_a_card_without_exchange_resource() {
        let mut attachment = oauth(None, None);
        attachment["content"]["buttons"][0]["value"] =
            json!("https://token.botframework.com/api/oauth/signin?signin=abc%3D&x=1");
        let bytes = set_bytes(&[card_activity("a", vec![attachment])]);
        assert_eq!(findings(&bytes).cards[0].id(), Some("abc="));
    }

    #[test]
    fn removing_the_only_card_drops_its_activity_and_keeps_siblings_bytes() {
        let sibling = "{ \"type\" : \"message\", \"id\":\"s\", \"text\":\"caf\\u00e9\" }";
        let card = card_activity("c", vec![oauth(Some("ex"), None)]).to_string();
        let bytes =
            format!("{{\"activities\":[{sibling},{card}],\"watermark\":\"5\"}}").into_bytes();
        let set = ActivitySet::parse(&bytes).expect("set");
        let found = scan(&set, &Markers::default());
        let out = rewrite(&set, &found, &found.cards.iter().collect::<Vec<_>>());
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            format!("{{\"activities\":[{sibling}],\"watermark\":\"5\"}}")
        );
    }

    #[test]
    fn removing_every_activity_keeps_an_empty_set_with_its_watermark() {
        let bytes = set_bytes(&[card_activity("c", vec![oauth(Some("ex"), None)])]);
        let out = rewritten(&bytes, true);
        assert_eq!(out, json!({"activities": [], "watermark": "12"}));
    }

    #[test]
    fn only_the_exchanged_card_goes_a_hero_card_beside_it_stays() {
        let hero = json!({"contentType": "application/vnd.microsoft.card.hero", "content": {"title": "t"}});
        let bytes = set_bytes(&[card_activity(
            "c",
            vec![oauth(Some("ex"), None), hero.clone()],
        )]);
        let out = rewritten(&bytes, true);
        assert_eq!(out["activities"][0]["attachments"], json!([hero]));
        assert_eq!(out["activities"][0]["id"], "c");
    }

    #[test]
    fn an_activity_with_text_stays_when_its_card_goes() {
        let mut activity = card_activity("c", vec![oauth(Some("ex"), None)]);
        activity["text"] = json!("Please sign in to continue");
        let out = rewritten(&set_bytes(&[activity]), true);
        assert_eq!(out["activities"][0]["text"], "Please sign in to continue");
        assert!(out["activities"][0].get("attachments").is_none());
    }

    #[test]
    fn nothing_exchanged_means_nothing_changes_but_proxy_echoes_go() {
        let echo = json!({"type": "invoke", "id": "e", "name": "signin/tokenExchange",
            "value": {"token": "secret"}, "channelData": {"clientActivityID": "dlproxy-sso-1"}});
        let card = card_activity("c", vec![oauth(Some("ex"), None)]);
        let bytes = set_bytes(&[echo, card.clone()]);
        let out = rewritten(&bytes, false);
        assert_eq!(out["activities"], json!([card]));
    }

    #[test]
    fn other_shapes_are_not_activity_sets() {
        assert!(ActivitySet::parse(b"").is_none());
        assert!(ActivitySet::parse(b"[1,2]").is_none());
        assert!(ActivitySet::parse(b"{\"activities\":42}").is_none());
        assert!(ActivitySet::parse(b"{\"activities\":[").is_none());
    }

    #[test]
    fn a_top_level_array_is_not_an_activity_set() {
        // serde reads a struct from an array too: `[[...]]` would be a set
        // whose `activities` is the first element.
        let card = card_activity("c", vec![oauth(Some("ex"), None)]);
        let bytes = format!("[[{card}]]").into_bytes();
        assert!(ActivitySet::parse(&bytes).is_none());
        assert!(ActivitySet::parse(b" \n{\"activities\":[]}").is_some());
    }
}
