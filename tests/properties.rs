//! Properties of the activity pipeline over generated ActivitySets: the
//! transparency promises of the design, checked on many shapes of JSON
//! (compact, pretty, CRLF, `\uXXXX` and `\/` escapes, unicode, quotes,
//! backslashes) rather than on a few hand-written frames.
//!
//! - Removing a card never changes a sibling byte: every activity that is
//!   not rewritten, and everything outside the `activities` array, keeps
//!   its bytes.
//! - A set without a card the proxy may act on leaves the inspection
//!   byte-identical.

use std::sync::Arc;

use directline_proxy::config::Config;
use directline_proxy::directline::activity::{
    self, ActivitySet, Markers, OAUTH_CARD, OAuthCard, PROXY_INVOKE_MARKER,
};
use directline_proxy::directline::filter::Requester;
use directline_proxy::directline::inspect::Inspector;
use directline_proxy::metrics::Metrics;
use directline_proxy::sso::decisions::Decisions;
use directline_proxy::sso::filter::SignInConversation;
use directline_proxy::sso::{ConversationContext, Sso};
use directline_proxy::upstream::Upstream;
use proptest::prelude::*;
use serde_json::{Value, json};

/// How an activity is written: the bot's serialiser is not the proxy's.
#[derive(Debug, Clone, Copy)]
enum Style {
    Compact,
    Pretty,
    PrettyCrlf,
    /// Every non-ASCII character as `\uXXXX` (surrogate pairs above U+FFFF).
    AsciiEscaped,
    /// Every `/` as `\/`, as some .NET serialisers write it.
    SlashEscaped,
}

impl Style {
    fn write(self, value: &Value) -> String {
        let compact = value.to_string();
        match self {
            Style::Compact => compact,
            Style::Pretty => pretty(value),
            // In pretty JSON a raw newline is whitespace: strings escape theirs.
            Style::PrettyCrlf => pretty(value).replace('\n', "\r\n"),
            // Outside strings JSON is ASCII, so only string contents change.
            Style::AsciiEscaped => compact.chars().map(ascii_escaped).collect(),
            // `/` only occurs inside strings.
            Style::SlashEscaped => compact.replace('/', "\\/"),
        }
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("a Value serialises")
}

fn ascii_escaped(c: char) -> String {
    if c.is_ascii() {
        return c.to_string();
    }
    let mut units = [0u16; 2];
    c.encode_utf16(&mut units)
        .iter()
        .map(|unit| format!("\\u{unit:04x}"))
        .collect()
}

/// One activity of a generated set, and what the pipeline must do with it.
#[derive(Debug, Clone)]
enum Generated {
    /// Never touched: its bytes must come out as they went in.
    Sibling(Value, Style),
    /// A bot activity with OAuth cards; `exchanged[i]` says whether the
    /// card at attachment `i` (if it is one) is exchanged.
    WithCards {
        activity: Value,
        style: Style,
        exchanged: Vec<Option<bool>>,
    },
    /// The echo of the proxy's own invoke: always dropped.
    ProxyEcho(Value, Style),
}

impl Generated {
    fn bytes(&self) -> String {
        match self {
            Generated::Sibling(value, style) | Generated::ProxyEcho(value, style) => {
                style.write(value)
            }
            Generated::WithCards {
                activity, style, ..
            } => style.write(activity),
        }
    }
}

/// Text that tests escaping: quotes, backslashes, slashes, controls,
/// unicode inside and outside the BMP, and now and then the marker itself.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-zA-Z0-9 ]{0,8}",
        1 => Just("\"".to_string()),
        1 => Just("\\".to_string()),
        1 => Just("/".to_string()),
        1 => Just("\n\t\u{1}".to_string()),
        1 => Just("café ☃ 😀".to_string()),
        1 => Just(OAUTH_CARD.to_string()),
        1 => Just(PROXY_INVOKE_MARKER.to_string()),
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|pieces| pieces.concat())
}

fn style() -> impl Strategy<Value = Style> {
    prop_oneof![
        Just(Style::Compact),
        Just(Style::Pretty),
        Just(Style::PrettyCrlf),
        Just(Style::AsciiEscaped),
        Just(Style::SlashEscaped),
    ]
}

fn hero_card() -> impl Strategy<Value = Value> {
    text().prop_map(|title| {
        json!({"contentType": "application/vnd.microsoft.card.hero",
            "content": {"title": title, "buttons": [{"type": "imBack", "value": "help"}]}})
    })
}

fn oauth_card(id: String) -> Value {
    json!({"contentType": OAUTH_CARD, "content": {
        "text": "Please sign in", "connectionName": "AAD",
        "buttons": [{"type": "signin", "title": "Sign in",
            "value": format!("https://token.botframework.com/api/oauth/signin?signin={id}")}],
        "tokenExchangeResource": {"id": id, "uri": "api://bot/access", "providerId": "p"}}})
}

fn message(id: String, text: Option<String>, attachments: Vec<Value>, from: Value) -> Value {
    let mut activity = json!({"type": "message", "id": id, "from": from,
        "conversation": {"id": "conv|1"}, "recipient": {"id": "dl_user"}});
    if let Some(text) = text {
        activity["text"] = json!(text);
    }
    if !attachments.is_empty() {
        activity["attachments"] = Value::Array(attachments);
    }
    activity
}

fn bot() -> Value {
    json!({"id": "bot", "name": "Bot"})
}

/// Activities that are not the bot's OAuth cards: plain messages, the
/// marker in text or in another card, cards the user posted.
fn sibling() -> impl Strategy<Value = Value> {
    let from = prop_oneof![
        Just(bot()),
        Just(json!({"id": "someone", "role": "user"})),
        Just(json!({"id": "dl_someone"})),
    ];
    (
        "[a-z0-9|]{1,10}",
        prop::option::of(text()),
        prop::collection::vec(hero_card(), 0..3),
        from,
        any::<bool>(),
    )
        .prop_map(|(id, text, mut attachments, from, user_card)| {
            let user_posted = from != bot();
            if user_posted && user_card {
                attachments.push(oauth_card(format!("user-{id}")));
            }
            message(id, text, attachments, from)
        })
}

/// A bot activity with one or more OAuth cards among hero cards, some of
/// them exchanged, with or without text of its own.
fn with_cards(index: usize) -> impl Strategy<Value = Generated> {
    let slot = prop_oneof![
        hero_card().prop_map(|card| (card, None)),
        any::<bool>().prop_map(|exchanged| (Value::Null, Some(exchanged))),
    ];
    (
        prop::collection::vec(slot, 0..4),
        any::<bool>(),
        any::<prop::sample::Index>(),
        prop::option::of(text()),
        style(),
    )
        .prop_map(move |(mut slots, one_exchanged, at, text, style)| {
            // At least one OAuth card, anywhere among the attachments.
            slots.insert(
                at.index(slots.len() + 1),
                (Value::Null, Some(one_exchanged)),
            );
            let attachments = slots
                .iter()
                .enumerate()
                .map(|(position, (card, exchanged))| match exchanged {
                    Some(_) => oauth_card(format!("ex-{index}-{position}")),
                    None => card.clone(),
                })
                .collect();
            Generated::WithCards {
                activity: message(format!("c{index}"), text, attachments, bot()),
                style,
                exchanged: slots.into_iter().map(|(_, exchanged)| exchanged).collect(),
            }
        })
}

fn proxy_echo() -> impl Strategy<Value = Value> {
    "[0-9]{1,4}".prop_map(|n| {
        json!({"type": "invoke", "name": "signin/tokenExchange", "id": format!("e{n}"),
            "from": {"id": "dl_user"}, "value": {"token": "secret"},
            "channelData": {"clientActivityID": format!("{PROXY_INVOKE_MARKER}{n}")}})
    })
}

fn activity(index: usize) -> impl Strategy<Value = Generated> {
    prop_oneof![
        4 => (sibling(), style()).prop_map(|(value, style)| Generated::Sibling(value, style)),
        3 => with_cards(index),
        1 => (proxy_echo(), style()).prop_map(|(value, style)| Generated::ProxyEcho(value, style)),
    ]
}

/// The bytes around the activities: other fields before or after the
/// array, and whitespace wherever JSON allows it. `before` ends with the
/// array's `[` and `after` starts with its `]`: what lies between belongs
/// to the array.
#[derive(Debug, Clone)]
struct Frame {
    before: String,
    open: String,
    separators: Vec<String>,
    close: String,
    after: String,
}

fn frame(activities: usize) -> impl Strategy<Value = Frame> {
    let before = prop_oneof![
        Just("{\"activities\":[".to_string()),
        Just("{\r\n  \"activities\" : [".to_string()),
        Just("{ \"watermark\": \"7\", \"activities\":[".to_string()),
    ];
    let whitespace = || prop_oneof![Just(""), Just(" "), Just("\n    "), Just("\r\n  ")];
    let separator = prop_oneof![
        Just(",".to_string()),
        Just(", ".to_string()),
        Just(",\n    ".to_string()),
        Just(" ,\r\n".to_string()),
    ];
    let after = prop_oneof![
        Just("]}".to_string()),
        Just("],\"watermark\":\"12\"}".to_string()),
        Just("] ,\n  \"watermark\" : \"caf\\u00e9\"\n}\n".to_string()),
    ];
    (
        before,
        whitespace(),
        prop::collection::vec(separator, activities.saturating_sub(1)),
        whitespace(),
        after,
    )
        .prop_map(|(before, open, separators, close, after)| Frame {
            before,
            open: open.to_string(),
            separators,
            close: close.to_string(),
            after,
        })
}

fn set_with_cards() -> impl Strategy<Value = (Vec<Generated>, Frame)> {
    (1usize..6)
        .prop_flat_map(|len| (0..len).map(activity).collect::<Vec<_>>())
        .prop_flat_map(|activities| {
            let len = activities.len();
            (Just(activities), frame(len))
        })
}

fn set_without_cards() -> impl Strategy<Value = (Vec<Generated>, Frame)> {
    let activities = prop::collection::vec(
        (sibling(), style()).prop_map(|(value, style)| Generated::Sibling(value, style)),
        0..6,
    );
    activities.prop_flat_map(|activities| {
        let len = activities.len();
        (Just(activities), frame(len))
    })
}

fn set_bytes(activities: &[Generated], frame: &Frame) -> String {
    let mut out = frame.before.clone() + &frame.open;
    for (index, activity) in activities.iter().enumerate() {
        if index > 0 {
            out.push_str(&frame.separators[index - 1]);
        }
        out.push_str(&activity.bytes());
    }
    out.push_str(&frame.close);
    out.push_str(&frame.after);
    out
}

/// What must come out in place of one activity.
#[derive(Debug, PartialEq)]
enum Expected {
    SameBytes(String),
    Rewritten(Value),
}

/// The activity without its exchanged cards, or `None` when nothing is
/// left to show (no attachment, no text).
fn without_exchanged(activity: &Value, exchanged: &[Option<bool>]) -> Option<Value> {
    let mut activity = activity.clone();
    let kept: Vec<Value> = activity["attachments"]
        .as_array()
        .expect("generated with attachments")
        .iter()
        .zip(exchanged)
        .filter(|(_, exchanged)| **exchanged != Some(true))
        .map(|(attachment, _)| attachment.clone())
        .collect();
    let object = activity.as_object_mut().expect("an object");
    if kept.is_empty() {
        object.remove("attachments");
    } else {
        object.insert("attachments".into(), Value::Array(kept));
    }
    let has_text = object
        .get("text")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    (object.contains_key("attachments") || has_text).then_some(activity)
}

fn expected(activities: &[Generated]) -> Vec<Expected> {
    activities
        .iter()
        .filter_map(|generated| match generated {
            Generated::Sibling(..) => Some(Expected::SameBytes(generated.bytes())),
            Generated::ProxyEcho(..) => None,
            Generated::WithCards {
                activity,
                exchanged,
                ..
            } => {
                if exchanged.contains(&Some(true)) {
                    without_exchanged(activity, exchanged).map(Expected::Rewritten)
                } else {
                    Some(Expected::SameBytes(generated.bytes()))
                }
            }
        })
        .collect()
}

/// The cards the generator marked exchanged, as the scan found them.
fn exchanged_cards<'a>(cards: &'a [OAuthCard], activities: &[Generated]) -> Vec<&'a OAuthCard> {
    cards
        .iter()
        .filter(|card| match &activities[card.activity] {
            Generated::WithCards { exchanged, .. } => exchanged[card.attachment] == Some(true),
            _ => false,
        })
        .collect()
}

proptest! {
    #[test]
    fn removing_a_card_never_changes_a_sibling_byte((activities, frame) in set_with_cards()) {
        let bytes = set_bytes(&activities, &frame);
        let set = ActivitySet::parse(bytes.as_bytes()).expect("a generated set parses");
        let findings = activity::scan(&set, &Markers::default());
        let generated_cards: usize = activities
            .iter()
            .map(|a| match a {
                Generated::WithCards { exchanged, .. } => exchanged.iter().flatten().count(),
                _ => 0,
            })
            .sum();
        prop_assert_eq!(findings.cards.len(), generated_cards, "every bot OAuth card is found");
        let exchanged = exchanged_cards(&findings.cards, &activities);

        let out = activity::rewrite(&set, &findings, &exchanged);
        let out = String::from_utf8(out).expect("UTF-8 in, UTF-8 out");
        prop_assert!(out.starts_with(&frame.before), "bytes before the array changed: {}", out);
        prop_assert!(out.ends_with(&frame.after), "bytes after the array changed: {}", out);
        let rewritten = ActivitySet::parse(out.as_bytes()).expect("the output is a set");
        prop_assert_eq!(rewritten.activities.len(), expected(&activities).len());
        let got: Vec<Expected> = rewritten
            .activities
            .iter()
            .zip(expected(&activities))
            .map(|(raw, expected)| match expected {
                Expected::SameBytes(_) => Expected::SameBytes(raw.get().to_string()),
                Expected::Rewritten(_) => {
                    Expected::Rewritten(serde_json::from_str(raw.get()).expect("JSON"))
                }
            })
            .collect();
        prop_assert_eq!(got, expected(&activities));
    }
}

/// A proxy with SSO on (a static token, an upstream that is never reached
/// for a set without cards), inspecting one conversation's frames.
fn sso_inspector() -> Inspector {
    let config = Config::from_toml(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[sso]\nprovider = \"static\"\n[sso.static]\ntoken = \"t\"\n",
        std::path::Path::new("properties.toml"),
        Vec::new(),
    )
    .expect("config");
    let metrics = Arc::new(Metrics::new());
    let upstream = Arc::new(Upstream::new(&config.upstream, metrics.clone()).expect("upstream"));
    let decisions = Arc::new(Decisions::new(config.sso.decision_ttl, 16));
    let sso = Sso::new(&config.sso, upstream, metrics, decisions)
        .expect("sso")
        .expect("sso on");
    let access = ConversationContext {
        conversation_id: "conv|1".into(),
        token: Some("conversation-token".into()),
        user_headers: http::HeaderMap::new(),
        requester: Requester::Anonymous,
        owner_matches: true,
        trace_parent: None,
    };
    Inspector::new(Arc::new(SignInConversation::new(Arc::new(sso), access)))
}

#[test]
fn a_set_without_a_card_is_byte_identical_after_inspection() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let inspector = runtime.block_on(async { sso_inspector() });
    proptest!(|((activities, frame) in set_without_cards())| {
        let bytes = set_bytes(&activities, &frame);
        let set = ActivitySet::parse(bytes.as_bytes()).expect("a generated set parses");
        let markers = Markers::default();
        prop_assert!(
            !markers.present(bytes.as_bytes()) || activity::scan(&set, &markers).is_empty(),
            "a set without a card has findings"
        );
        // `None`: the relay sends the original bytes on.
        let inspected = runtime.block_on(inspector.inspect(bytes.into_bytes()));
        prop_assert_eq!(inspected, None);
    });
}
