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
///
/// A marker counts however the JSON spells it: any character may be written
/// as an escape (`application\/vnd...`, `\u0061pplication...`), as the real
/// service's serialiser does with `/`. A frame without a backslash cannot
/// hold an escaped marker, so most frames cost one literal search and one
/// `memchr`; only frames with escapes get the escape-aware scan. A hit may
/// be a false positive (an escaped backslash before `u002f`, a marker in
/// text): the parse that follows decides.
pub struct Markers {
    oauth: Marker,
    proxy_invoke: Marker,
}

impl Default for Markers {
    fn default() -> Self {
        Markers {
            oauth: Marker::new(OAUTH_CARD),
            proxy_invoke: Marker::new(PROXY_INVOKE_MARKER),
        }
    }
}

impl Markers {
    pub fn present(&self, bytes: &[u8]) -> bool {
        if self.oauth.literal(bytes) || self.proxy_invoke.literal(bytes) {
            return true;
        }
        memchr::memchr(b'\\', bytes).is_some()
            && (self.oauth.escaped(bytes) || self.proxy_invoke.escaped(bytes))
    }
}

/// One ASCII marker and its literal searcher.
struct Marker {
    text: &'static [u8],
    finder: Finder<'static>,
}

impl Marker {
    fn new(text: &'static str) -> Marker {
        Marker {
            text: text.as_bytes(),
            finder: Finder::new(text.as_bytes()).into_owned(),
        }
    }

    fn literal(&self, bytes: &[u8]) -> bool {
        self.finder.find(bytes).is_some()
    }

    /// Whether the marker appears with at least one character escaped.
    /// Linear in `bytes` times the marker's length: a match can only start
    /// at the marker's first character or at a backslash.
    fn escaped(&self, bytes: &[u8]) -> bool {
        let Some(&first) = self.text.first() else {
            return false;
        };
        memchr::memchr2_iter(first, b'\\', bytes)
            .any(|start| spelled_at(&bytes[start..], self.text))
    }
}

/// Whether `bytes` starts with `text`, each character written as itself or
/// as a JSON string escape of it.
fn spelled_at(mut bytes: &[u8], text: &[u8]) -> bool {
    for &expected in text {
        match json_char(bytes) {
            Some((decoded, used)) if decoded == expected => bytes = &bytes[used..],
            _ => return false,
        }
    }
    true
}

/// The ASCII character a JSON string's next bytes stand for, and how many
/// bytes that took; `None` for anything that is not one ASCII character.
fn json_char(bytes: &[u8]) -> Option<(u8, usize)> {
    match bytes {
        [b'\\', b'u', digits @ ..] => {
            let hex = std::str::from_utf8(digits.get(..4)?).ok()?;
            let code = u8::try_from(u16::from_str_radix(hex, 16).ok()?).ok()?;
            code.is_ascii().then_some((code, 6))
        }
        [b'\\', escaped @ (b'/' | b'\\' | b'"'), ..] => Some((*escaped, 2)),
        [b'\\', ..] => None,
        [byte, ..] => Some((*byte, 1)),
        [] => None,
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
/// otherwise aim the proxy at a `sasUrl` of their choosing). Best effort:
/// `dl_` is the prefix reserved for user ids embedded in tokens (the proxy's
/// own binding always uses it), but sites bind ids of any shape; Web Chat
/// marks what it posts with `role: "user"` and a `clientActivityID`, other
/// clients may not. Where it matters, binding decides: a card is decided
/// only for the bound user it is addressed to.
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
/// activities, the whitespace and commas between those that stay, and
/// everything outside the array keep their bytes (pretty-printed sets stay
/// pretty; a changed activity is written compactly).
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
    let bytes = set.bytes;
    let offset = |raw: &RawValue| raw.get().as_ptr() as usize - bytes.as_ptr() as usize;
    // Just after `[`, and at `]`.
    let (open, close) = (set.array.start + 1, set.array.end - 1);
    let leading = set
        .activities
        .first()
        .map_or(open..open, |raw| open..offset(raw));
    let trailing = set
        .activities
        .last()
        .map_or(close..close, |raw| offset(raw) + raw.get().len()..close);
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..open]);
    let mut previous_end = open;
    let mut kept_any = false;
    for (index, raw) in set.activities.iter().enumerate() {
        let start = offset(raw);
        let separator = previous_end..start;
        previous_end = start + raw.get().len();
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
                Some(kept) => match serde_json::to_vec(&kept) {
                    Ok(kept) => std::borrow::Cow::Owned(kept),
                    Err(_) => std::borrow::Cow::Borrowed(raw.get().as_bytes()),
                },
                None => continue,
            },
            _ => std::borrow::Cow::Borrowed(raw.get().as_bytes()),
        };
        let before = if kept_any { separator } else { leading.clone() };
        out.extend_from_slice(&bytes[before]);
        out.extend_from_slice(&kept);
        kept_any = true;
    }
    if kept_any {
        out.extend_from_slice(&bytes[trailing]);
    }
    out.extend_from_slice(&bytes[close..]);
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

/// A polled set with one OAuth card (`card_id`) between two messages, for
/// the tests of every module that removes cards.
#[cfg(test)]
pub(crate) fn card_set(card_id: &str) -> String {
    serde_json::json!({"activities": [
        {"type": "message", "id": "a1", "from": {"id": "bot"}, "text": "before"},
        {"type": "message", "id": "a2", "from": {"id": "bot"}, "recipient": {"id": "u1"},
         "attachments": [{"contentType": OAUTH_CARD, "content": {
            "text": "Please sign in", "connectionName": "AAD",
            "tokenExchangeResource": {"id": card_id, "uri": "api://bot/scope"}}}]},
        {"type": "message", "id": "a3", "from": {"id": "bot"}, "text": "after"}
    ], "watermark": "3"})
    .to_string()
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
    fn escaped_markers_are_found() {
        let markers = Markers::default();
        for spelled in [
            "application\\/vnd.microsoft.card.oauth",
            "application\\u002fvnd.microsoft.card.oauth",
            "application\\u002Fvnd.microsoft.card.oauth",
            "\\u0061pplication/vnd.microsoft.card.oauth",
            "application/vnd.microsoft.card.o\\u0061ut\\u0068",
            "\\u0064lproxy\\u002dsso\\u002d",
        ] {
            let frame = format!("{{\"contentType\":\"{spelled}\"}}");
            assert!(markers.present(frame.as_bytes()), "{spelled}");
        }
    }

    #[test]
    fn escapes_alone_do_not_leave_the_fast_path() {
        let markers = Markers::default();
        for frame in [
            "{\"text\":\"a \\\"quote\\\" and a \\n newline\"}",
            "{\"contentType\":\"application\\/vnd.microsoft.card.hero\"}",
            "{\"contentType\":\"application\\/vnd.microsoft.card.oaut\\u00",
            "{\"contentType\":\"application\\u00e9vnd.microsoft.card.oauth\"}",
            "\\",
        ] {
            assert!(!markers.present(frame.as_bytes()), "{frame}");
        }
    }

    #[test]
    fn a_pretty_printed_card_with_escaped_slashes_is_found() {
        let card = card_activity("c", vec![oauth(Some("ex"), Some("https://h/s"))]);
        let pretty = serde_json::to_string_pretty(&json!({"activities": [card], "watermark": "3"}))
            .expect("json")
            .replace('/', "\\/");
        assert!(!pretty.contains(OAUTH_CARD));
        let found = findings(pretty.as_bytes());
        assert_eq!(found.cards.len(), 1);
        assert_eq!(found.cards[0].sas_url.as_deref(), Some("https://h/s"));
    }

    #[test]
    fn an_escaped_proxy_invoke_echo_is_recognised() {
        let echo =
            "{\"type\":\"invoke\",\"channelData\":{\"clientActivityID\":\"dlproxy\\u002Dsso-7\"}}";
        let bytes = format!("{{\"activities\":[{echo}]}}");
        assert_eq!(findings(bytes.as_bytes()).proxy_invokes, vec![0]);
    }

    #[test]
    fn removing_a_card_from_a_pretty_set_keeps_every_other_byte() {
        let pretty = |value: &Value| serde_json::to_string_pretty(value).expect("json");
        let indent = |text: String| text.replace('\n', "\n    ");
        let first = indent(pretty(
            &json!({"type": "message", "id": "a", "text": "before"}),
        ));
        let card = indent(pretty(&card_activity("c", vec![oauth(Some("ex"), None)])));
        let last = indent(pretty(
            &json!({"type": "message", "id": "b", "text": "after"}),
        ));
        let set = |items: &[&str]| {
            format!(
                "{{\n  \"activities\": [\n    {}\n  ],\n  \"watermark\": \"7\"\n}}",
                items.join(",\n    ")
            )
        };
        for (items, expected) in [
            (vec![&first, &card, &last], vec![&first, &last]),
            (vec![&card, &last], vec![&last]),
            (vec![&first, &card], vec![&first]),
        ] {
            let items: Vec<&str> = items.iter().map(|s| s.as_str()).collect();
            let expected: Vec<&str> = expected.iter().map(|s| s.as_str()).collect();
            let bytes = set(&items);
            let parsed = ActivitySet::parse(bytes.as_bytes()).expect("set");
            let found = scan(&parsed, &Markers::default());
            let out = rewrite(&parsed, &found, &found.cards.iter().collect::<Vec<_>>());
            assert_eq!(String::from_utf8(out).expect("utf8"), set(&expected));
        }
    }

    #[test]
    fn a_pretty_set_whose_only_activity_goes_keeps_its_watermark() {
        let card = card_activity("c", vec![oauth(Some("ex"), None)]);
        let bytes = serde_json::to_string_pretty(&json!({"activities": [card], "watermark": "7"}))
            .expect("json");
        let set = ActivitySet::parse(bytes.as_bytes()).expect("set");
        let found = scan(&set, &Markers::default());
        let out = rewrite(&set, &found, &found.cards.iter().collect::<Vec<_>>());
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "{\n  \"activities\": [],\n  \"watermark\": \"7\"\n}"
        );
    }

    #[test]
    fn a_changed_activity_is_the_only_one_rewritten_in_a_pretty_set() {
        let hero = json!({"contentType": "application/vnd.microsoft.card.hero", "content": {"title": "t"}});
        let sibling =
            "{\n      \"type\": \"message\",\n      \"text\": \"caf\\u00e9 \\/ bar\"\n    }";
        let card = card_activity("c", vec![oauth(Some("ex"), None), hero.clone()]);
        let bytes = format!(
            "{{\n  \"activities\": [\n    {sibling},\n    {}\n  ]\n}}",
            serde_json::to_string_pretty(&card).expect("json")
        );
        let set = ActivitySet::parse(bytes.as_bytes()).expect("set");
        let found = scan(&set, &Markers::default());
        let out = rewrite(&set, &found, &found.cards.iter().collect::<Vec<_>>());
        let mut expected_card = card.clone();
        expected_card["attachments"] = json!([hero]);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            format!("{{\n  \"activities\": [\n    {sibling},\n    {expected_card}\n  ]\n}}")
        );
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
