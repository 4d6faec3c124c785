//! The SSO trust model, tried as an attacker would: a user's token only
//! ever goes into a conversation that same user owns. Each test has an
//! attacker and a victim and asserts the invariant itself: no provider call
//! with the victim's inputs, no invoke and no token post carrying the
//! victim's token.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use directline_proxy::config::{
    Config, Flow, Grant, HttpProviderConfig, OAuth2ProviderConfig, ProviderKind,
};
use directline_proxy::emulator::{EXCHANGE_URI, OAUTH_CARD, SIGNED_IN};
use futures_util::SinkExt;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::endpoint::{Endpoint, Seen};
use crate::common::{
    Conversation, Stack, WAIT, Ws, activities_until, next_activity_set, next_message,
    quiet_emulator, ws_connect,
};
use crate::sso::{PAGE_ORIGIN, static_provider};

pub const VICTIM_COOKIE: &str = "session=victim";
pub const ATTACKER_COOKIE: &str = "session=attacker";
pub const VICTIM_TOKEN: &str = "victim-token";
const ATTACKER_TOKEN: &str = "attacker-token";
const EVIL_ORIGIN: &str = "https://evil.example";
const USER_HEADER: &str = "x-forwarded-user";

/// The site's auth API: each session cookie has its own user's token.
pub async fn auth_api() -> Endpoint {
    Endpoint::start(Duration::ZERO, |seen: &Seen| {
        let cookie = seen
            .headers
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let token = match cookie {
            VICTIM_COOKIE => VICTIM_TOKEN,
            ATTACKER_COOKIE => ATTACKER_TOKEN,
            _ => return (StatusCode::UNAUTHORIZED, "{}".into()),
        };
        (StatusCode::OK, json!({ "token": token }).to_string())
    })
    .await
}

/// `provider = "http"` with the session cookie, and the page's origin listed.
pub fn cookie_provider(config: &mut Config, auth_url: String) {
    config.sso.provider = ProviderKind::Http;
    config.sso.http = Some(HttpProviderConfig {
        url: auth_url.parse().expect("the auth API's URL"),
        forward_headers: vec![http::header::COOKIE],
    });
    config.listen.allowed_origins = vec![PAGE_ORIGIN.into()];
}

/// [`cookie_provider`], the Direct Line secret held by the proxy and
/// shared seal keys.
fn cookie_sso(config: &mut Config, auth_url: String) {
    cookie_provider(config, auth_url);
    config.sso.seal_keys = vec![base64::engine::general_purpose::STANDARD.encode([9u8; 32])];
    let secret = crate::common::scratch_file(
        &format!(
            "trust-secret-{}",
            config.upstream.url.to_string().replace([':', '/'], "_")
        ),
        "emulator-secret\n",
    );
    config.directline.secret_file = Some(secret);
}

fn with_binding(config: &mut Config) {
    config.directline.user_id_header = Some(http::HeaderName::from_static(USER_HEADER));
}

async fn trust_stack(adjust: impl FnOnce(&mut Config)) -> Stack {
    Stack::start_with(quiet_emulator(), adjust).await
}

/// Opens `url` with extra headers; the handshake's status on refusal.
pub async fn ws_open(url: &str, headers: &[(&str, &str)]) -> Result<Ws, StatusCode> {
    let mut request = url.into_client_request().expect("ws request");
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status()),
        Err(other) => panic!("handshake failed: {other}"),
    }
}

pub fn is_oauth_card(activity: &Value) -> bool {
    activity["attachments"]
        .as_array()
        .is_some_and(|a| a.iter().any(|a| a["contentType"] == OAUTH_CARD))
}

/// Reads the stream until an activity holding an OAuth card arrives.
async fn card_arrives(ws: &mut Ws) -> Value {
    loop {
        let set = next_activity_set(ws).await;
        let activities = set["activities"].as_array().cloned().unwrap_or_default();
        if let Some(card) = activities.into_iter().find(is_oauth_card) {
            return card;
        }
    }
}

/// The invariant: the victim's inputs never reached the provider, and the
/// victim's token never reached any conversation or token endpoint.
fn assert_victim_untouched(stack: &Stack, provider: &Endpoint, conversation_id: &str) {
    for call in provider.seen() {
        assert_ne!(
            call.headers.get("cookie").and_then(|v| v.to_str().ok()),
            Some(VICTIM_COOKIE),
            "the provider was asked with the victim's cookie"
        );
    }
    for invoke in stack.emulator.invokes_received(conversation_id) {
        assert_ne!(
            invoke["value"]["token"], VICTIM_TOKEN,
            "the victim's token went into the attacker's conversation"
        );
    }
    for (_, body) in stack.emulator.token_posts_received() {
        assert_ne!(body["token"], VICTIM_TOKEN, "the victim's token was posted");
    }
}

/// The value of `directline_proxy_sso_decisions_total` for `outcome`, summed over flows.
async fn decisions_counted(stack: &Stack, outcome: &str) -> u64 {
    let text = stack
        .http
        .send(Method::GET, &stack.proxy_url("/metrics"), &[], Bytes::new())
        .await
        .text();
    let needle = format!("outcome=\"{outcome}\"");
    text.lines()
        .filter(|l| l.starts_with("directline_proxy_sso_decisions_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `frame` from the bot and checks it reaches the client as it was.
async fn frame_passes_unchanged(stack: &Stack, conversation_id: &str, ws: &mut Ws, frame: String) {
    let sent = stack
        .emulator
        .send_stream_message(conversation_id, Message::Text(frame.clone().into()))
        .await;
    assert!(sent, "the emulator had no open stream");
    assert_eq!(next_message(ws).await, Message::Text(frame.into()));
}

/// The card went out unchanged, nobody's credentials were spent on it, and
/// the refusal was counted as a principal mismatch.
async fn assert_refused_for_the_victim(stack: &Stack, provider: &Endpoint, conversation_id: &str) {
    assert!(provider.seen().is_empty(), "no provider call");
    assert_victim_untouched(stack, provider, conversation_id);
    assert_eq!(decisions_counted(stack, "principal_mismatch").await, 1);
}

/// The cookie SSO stack whose bot accepts the victim's token: for tests
/// where the rightful owner signs in.
async fn victim_signs_in_stack(provider: &Endpoint, adjust: impl FnOnce(&mut Config)) -> Stack {
    let emulator = directline_proxy::emulator::EmulatorConfig {
        accepted_sso_tokens: vec![VICTIM_TOKEN.into()],
        ..quiet_emulator()
    };
    let url = provider.url("/bot-token");
    Stack::start_with(emulator, move |c| {
        cookie_sso(c, url);
        adjust(c);
    })
    .await
}

/// The victim's browser, on an allowed page, opens `stream_url` with the
/// victim's cookie; then `command` makes the bot send a card to the
/// attacker's conversation, and the victim's socket receives it.
async fn victim_page_sees_the_card(
    stack: &Stack,
    attacker: &Conversation,
    stream_url: &str,
    command: &str,
) {
    let mut victim = ws_open(
        stream_url,
        &[("origin", PAGE_ORIGIN), ("cookie", VICTIM_COOKIE)],
    )
    .await
    .expect("handshake");
    say(stack, attacker, command).await;
    card_arrives(&mut victim).await;
}

/// The victim starts a conversation and opens its stream from the page,
/// both with their cookie: the sign-in happens, with no card.
async fn the_cookie_owner_signs_in(stack: &Stack) {
    let owner = stack
        .start_conversation_as(&[("cookie", VICTIM_COOKIE)])
        .await;
    let mut ws = ws_open(
        &owner.stream_url,
        &[("origin", PAGE_ORIGIN), ("cookie", VICTIM_COOKIE)],
    )
    .await
    .expect("stream");
    say(stack, &owner, "signin exchange").await;
    let seen = activities_until(&mut ws, SIGNED_IN).await;
    assert!(!seen.iter().any(is_oauth_card));
    assert_eq!(stack.emulator.invokes_received(&owner.id).len(), 1);
}

async fn say(stack: &Stack, conv: &Conversation, text: &str) {
    assert_eq!(conv.say(&stack.http, text).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_foreign_page_cannot_open_the_attackers_stream_with_the_victims_cookie() {
    let provider = auth_api().await;
    let stack = trust_stack(|c| cookie_sso(c, provider.url("/bot-token"))).await;
    let attacker = stack.start_conversation_as(&[]).await;
    say(&stack, &attacker, "signin exchange").await;

    let victim_browser = ws_open(
        &attacker.stream_url,
        &[("origin", EVIL_ORIGIN), ("cookie", VICTIM_COOKIE)],
    )
    .await;
    assert_eq!(victim_browser.err(), Some(StatusCode::FORBIDDEN));
    assert!(
        !stack
            .emulator
            .requests()
            .iter()
            .any(|r| r.path_and_query.contains("/stream")),
        "the refused handshake never reached Direct Line"
    );
    assert!(provider.seen().is_empty(), "no provider call at all");
    assert_victim_untouched(&stack, &provider, &attacker.id);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_foreign_page_cannot_poll_the_attackers_conversation_with_the_victims_cookie() {
    let provider = auth_api().await;
    let stack = trust_stack(|c| cookie_sso(c, provider.url("/bot-token"))).await;
    let attacker = stack.start_conversation_as(&[]).await;
    say(&stack, &attacker, "signin exchange").await;
    let auth = format!("Bearer {}", attacker.token);
    let requests_before = stack.emulator.requests().len();
    let poll = stack
        .http
        .send(
            Method::GET,
            &attacker.url("/activities"),
            &[
                ("authorization", &auth),
                ("origin", EVIL_ORIGIN),
                ("cookie", VICTIM_COOKIE),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(poll.status, StatusCode::FORBIDDEN);
    assert_eq!(poll.json()["error"]["code"], "Forbidden");
    assert_eq!(
        stack.emulator.requests().len(),
        requests_before,
        "nothing reached Direct Line"
    );
    assert!(provider.seen().is_empty());
    assert_victim_untouched(&stack, &provider, &attacker.id);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_cors_preflight_from_a_foreign_page_is_refused_and_a_listed_page_is_named() {
    let provider = auth_api().await;
    let stack = trust_stack(|c| cookie_sso(c, provider.url("/bot-token"))).await;
    let preflight = |origin: &'static str| {
        let url = stack.proxy_url("/v3/directline/conversations");
        let http = &stack.http;
        async move {
            http.send(
                Method::OPTIONS,
                &url,
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", "authorization"),
                ],
                Bytes::new(),
            )
            .await
        }
    };
    let foreign = preflight(EVIL_ORIGIN).await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    assert!(!foreign.headers.contains_key("access-control-allow-origin"));
    let listed = preflight(PAGE_ORIGIN).await;
    assert!(listed.status.is_success(), "{:?}", listed.status);
    assert_eq!(listed.headers["access-control-allow-origin"], PAGE_ORIGIN);
    stack.shutdown().await;
}

/// With binding, the victim's socket on the attacker's conversation gets the
/// card unchanged: the victim is neither the owner nor the card's user.
async fn victim_on_attackers_stream(keep_sealed_context: bool) {
    let provider = auth_api().await;
    let stack = trust_stack(|c| {
        cookie_sso(c, provider.url("/bot-token"));
        with_binding(c);
    })
    .await;
    let attacker = stack
        .start_conversation_as(&[
            (USER_HEADER, "attacker@example.com"),
            ("cookie", ATTACKER_COOKIE),
        ])
        .await;
    let url = if keep_sealed_context {
        attacker.stream_url.clone()
    } else {
        crate::common::without_query_param(&attacker.stream_url, "dlpx").0
    };
    // No Origin: the one case the origin check lets through.
    let mut victim = ws_open(
        &url,
        &[
            (USER_HEADER, "victim@example.com"),
            ("cookie", VICTIM_COOKIE),
        ],
    )
    .await
    .expect("the handshake itself is allowed");
    // Both resources: without the sealed context the token post could stand in.
    say(&stack, &attacker, "signin").await;
    card_arrives(&mut victim).await;
    assert!(provider.seen().is_empty(), "no provider call");
    assert!(stack.emulator.invokes_received(&attacker.id).is_empty());
    assert_victim_untouched(&stack, &provider, &attacker.id);
    assert_eq!(decisions_counted(&stack, "principal_mismatch").await, 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn with_binding_the_victims_stream_on_the_attackers_conversation_decides_nothing() {
    victim_on_attackers_stream(true).await;
}

#[tokio::test]
async fn with_binding_a_stream_stripped_of_its_context_still_decides_nothing_for_the_victim() {
    victim_on_attackers_stream(false).await;
}

#[tokio::test]
async fn with_binding_the_victims_poll_of_the_attackers_conversation_decides_nothing() {
    let provider = auth_api().await;
    let stack = trust_stack(|c| {
        cookie_sso(c, provider.url("/bot-token"));
        with_binding(c);
    })
    .await;
    let attacker = stack
        .start_conversation_as(&[(USER_HEADER, "attacker@example.com")])
        .await;
    say(&stack, &attacker, "signin exchange").await;
    let auth = format!("Bearer {}", attacker.token);
    let poll = stack
        .http
        .send(
            Method::GET,
            &attacker.url("/activities"),
            &[
                ("authorization", &auth),
                (USER_HEADER, "victim@example.com"),
                ("cookie", VICTIM_COOKIE),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(poll.status, StatusCode::OK);
    let activities = poll.json()["activities"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(activities.iter().any(is_oauth_card), "the card is shown");
    assert_refused_for_the_victim(&stack, &provider, &attacker.id).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn with_binding_the_owner_still_signs_in_on_stream_and_poll() {
    let provider = auth_api().await;
    let stack = victim_signs_in_stack(&provider, with_binding).await;
    let user = [
        (USER_HEADER, "victim@example.com"),
        ("cookie", VICTIM_COOKIE),
    ];
    let conv = stack.start_conversation_as(&user).await;
    let mut ws = ws_open(
        &conv.stream_url,
        &[("origin", PAGE_ORIGIN), user[0], user[1]],
    )
    .await
    .expect("stream");
    say(&stack, &conv, "signin exchange").await;
    let seen = activities_until(&mut ws, SIGNED_IN).await;
    assert!(!seen.iter().any(is_oauth_card));
    let invokes = stack.emulator.invokes_received(&conv.id);
    assert_eq!(invokes.len(), 1);
    assert_eq!(invokes[0]["value"]["token"], VICTIM_TOKEN);
    stack.shutdown().await;
}

#[tokio::test]
async fn without_binding_the_start_fingerprint_keeps_another_cookie_out() {
    let provider = auth_api().await;
    let stack = trust_stack(|c| cookie_sso(c, provider.url("/bot-token"))).await;
    // The attacker starts with their own session; the victim's browser, on
    // an allowed page, is made to open the attacker's stream.
    let attacker = stack
        .start_conversation_as(&[("cookie", ATTACKER_COOKIE)])
        .await;
    victim_page_sees_the_card(&stack, &attacker, &attacker.stream_url, "signin exchange").await;
    assert_refused_for_the_victim(&stack, &provider, &attacker.id).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn without_binding_the_same_cookie_on_start_and_stream_signs_in() {
    let provider = auth_api().await;
    let stack = victim_signs_in_stack(&provider, |_| {}).await;
    the_cookie_owner_signs_in(&stack).await;
    stack.shutdown().await;
}

/// A conversation whose token is not bound (the client brought the
/// secret), so its user can post activities that look like the bot's.
async fn post_forged_card(stack: &Stack, conv: &Conversation, content: Value) {
    let forged = json!({
        "type": "message",
        "from": { "id": "bot-lookalike", "role": "bot" },
        "attachments": [{ "contentType": OAUTH_CARD, "content": content }],
    });
    let reply = stack
        .http
        .post_json(&conv.url("/activities"), &conv.token, &forged)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn a_forged_card_cannot_choose_the_audience_of_an_oauth2_exchange() {
    let token_endpoint = Endpoint::start(Duration::ZERO, |_| {
        (
            StatusCode::OK,
            json!({"access_token": "graph-token-of-the-victim", "expires_in": 3600}).to_string(),
        )
    })
    .await;
    let secret = crate::common::scratch_file("trust-oauth2-secret", "client-secret\n");
    let url = token_endpoint.url("/token");
    let stack = trust_stack(|c| {
        c.sso.provider = ProviderKind::Oauth2;
        c.sso.oauth2 = Some(OAuth2ProviderConfig {
            token_url: url.parse().expect("the token endpoint's URL"),
            grant: Grant::OnBehalfOf,
            client_id: "proxy-client".into(),
            client_secret_env: None,
            client_secret_file: Some(secret),
            header: http::HeaderName::from_static("x-forwarded-access-token"),
            allowed_resources: vec![EXCHANGE_URI.into()],
        });
        c.listen.allowed_origins = vec![PAGE_ORIGIN.into()];
    })
    .await;
    let attacker = stack.start_conversation().await;
    // The victim's incoming token is on the stream the card is decided for.
    let mut victim = ws_open(
        &attacker.stream_url,
        &[("x-forwarded-access-token", "victims-incoming-token")],
    )
    .await
    .expect("stream");
    post_forged_card(
        &stack,
        &attacker,
        json!({
            "connectionName": "AAD",
            "tokenExchangeResource": { "id": "forged", "uri": "https://graph.microsoft.com" },
        }),
    )
    .await;
    let card = card_arrives(&mut victim).await;
    assert_eq!(
        card["attachments"][0]["content"]["tokenExchangeResource"]["uri"],
        "https://graph.microsoft.com",
        "the card passes unchanged"
    );
    assert!(
        token_endpoint.seen().is_empty(),
        "no exchange for an audience the operator did not list"
    );
    for invoke in stack.emulator.invokes_received(&attacker.id) {
        assert_ne!(invoke["value"]["token"], "graph-token-of-the-victim");
    }
    assert_eq!(decisions_counted(&stack, "resource_not_allowed").await, 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_card_with_a_huge_id_is_not_decided() {
    let provider = auth_api().await;
    let stack = trust_stack(|c| {
        cookie_sso(c, provider.url("/bot-token"));
        c.sso.flows = vec![Flow::Invoke];
    })
    .await;
    let attacker = stack.start_conversation_as(&[]).await;
    let mut ws = ws_open(&attacker.stream_url, &[("cookie", VICTIM_COOKIE)])
        .await
        .expect("stream");
    next_activity_set(&mut ws).await;
    let huge_id = "x".repeat(240 * 1024);
    let frame = json!({
        "activities": [{
            "type": "message", "id": "a|1",
            "recipient": {"id": "dl_user"},
            "attachments": [{"contentType": OAUTH_CARD, "content": {
                "connectionName": "AAD",
                "tokenExchangeResource": {"id": huge_id, "uri": EXCHANGE_URI},
            }}],
        }],
        "watermark": "5",
    })
    .to_string();
    frame_passes_unchanged(&stack, &attacker.id, &mut ws, frame).await;
    assert!(provider.seen().is_empty(), "no provider call");
    assert!(stack.emulator.invokes_received(&attacker.id).is_empty());
    assert_eq!(decisions_counted(&stack, "over_limit").await, 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn many_cards_in_one_set_start_only_a_few_decisions() {
    let provider = auth_api().await;
    let stack = trust_stack(|c| {
        cookie_sso(c, provider.url("/bot-token"));
        c.sso.flows = vec![Flow::Invoke];
    })
    .await;
    let conv = stack
        .start_conversation_as(&[("cookie", VICTIM_COOKIE)])
        .await;
    let mut ws = ws_open(&conv.stream_url, &[("cookie", VICTIM_COOKIE)])
        .await
        .expect("stream");
    next_activity_set(&mut ws).await;
    let cards: Vec<Value> = (0..1500)
        .map(|i| {
            json!({
                "type": "message", "id": format!("a|{i}"),
                "recipient": {"id": "dl_user"},
                "attachments": [{"contentType": OAUTH_CARD, "content": {
                    "connectionName": "AAD",
                    "tokenExchangeResource": {"id": format!("card-{i}"), "uri": EXCHANGE_URI},
                }}],
            })
        })
        .collect();
    let frame = json!({ "activities": cards, "watermark": "9" }).to_string();
    frame_passes_unchanged(&stack, &conv.id, &mut ws, frame).await;
    let per_set = directline_proxy::sso::limits::PER_SET;
    assert_eq!(provider.seen().len(), per_set);
    assert_eq!(stack.emulator.invokes_received(&conv.id).len(), per_set);
    assert_eq!(
        decisions_counted(&stack, "over_limit").await,
        (1500 - per_set) as u64
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_conversation_runs_only_a_few_decisions_at_once_across_its_polls() {
    let (provider, release) =
        Endpoint::gated(|_| (StatusCode::OK, json!({"token": VICTIM_TOKEN}).to_string())).await;
    let stack = trust_stack(|c| {
        cookie_sso(c, provider.url("/held"));
        c.sso.flows = vec![Flow::Invoke];
        c.sso.timeout = Duration::from_secs(60);
        // The conversation is started with the secret below: unbound, so
        // its user can post card-shaped activities.
        c.directline.secret_file = None;
    })
    .await;
    let conv = stack.start_conversation().await;
    for i in 0..6 {
        post_forged_card(
            &stack,
            &conv,
            json!({"connectionName": "AAD", "tokenExchangeResource": {"id": format!("c{i}"), "uri": EXCHANGE_URI}}),
        )
        .await;
    }
    let poll = |conv: &Conversation| {
        let url = conv.url("/activities");
        let auth = format!("Bearer {}", conv.token);
        tokio::spawn(async move {
            crate::common::Http::plain()
                .send(
                    Method::GET,
                    &url,
                    &[("authorization", &auth), ("cookie", VICTIM_COOKIE)],
                    Bytes::new(),
                )
                .await
        })
    };
    // The first poll's set starts its budget and refuses the rest...
    let first = poll(&conv);
    let per_set = directline_proxy::sso::limits::PER_SET;
    assert_eq!(per_set, directline_proxy::sso::limits::PER_CONVERSATION);
    wait_until(|| provider.seen().len() >= per_set).await;
    // ...and a second poll, whose own set has room, gets no place either
    // while the conversation's decisions are held.
    let second = poll(&conv);
    let refused = 2 * (6 - per_set) as u64;
    let deadline = tokio::time::Instant::now() + WAIT;
    while decisions_counted(&stack, "over_limit").await < refused {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second poll never decided"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(provider.seen().len(), per_set, "no call beyond the budget");
    release.send(true).expect("release");
    for poll in [first, second] {
        let reply = poll.await.expect("poll task");
        assert_eq!(reply.status, StatusCode::OK);
        let polled = reply.json()["activities"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(polled.iter().filter(|a| is_oauth_card(a)).count(), 6);
    }
    assert_eq!(decisions_counted(&stack, "over_limit").await, refused);
    stack.shutdown().await;
}

/// Whether any request Direct Line received still names the sealed context.
fn dlpx_reached_upstream(stack: &Stack) -> bool {
    stack.emulator.requests().iter().any(|r| {
        let decoded = percent_encoding::percent_decode_str(&r.path_and_query)
            .decode_utf8_lossy()
            .to_ascii_lowercase();
        decoded.contains("dlpx")
    })
}

async fn dlpx_never_reaches_upstream(sso_on: bool) {
    let stack = Stack::start_with(quiet_emulator(), |c| {
        if sso_on {
            static_provider(c, "demo-user-token");
        }
    })
    .await;
    let conv = stack.start_conversation().await;
    let sealed = "dlpx=c2VhbGVk";
    let auth = format!("Bearer {}", conv.token);
    let get = |url: String| {
        let http = &stack.http;
        let auth = auth.clone();
        async move {
            http.send(Method::GET, &url, &[("authorization", &auth)], Bytes::new())
                .await
        }
    };
    // A non-upgrade GET of the stream path, polls with one, two and
    // disguised parameters, a POST, a reconnect.
    get(conv.url(&format!("/stream?t=x&{sealed}"))).await;
    get(conv.url(&format!("/activities?{sealed}&DLPX=a&%64lpx=b"))).await;
    get(conv.url(&format!("?watermark=-&{sealed}"))).await;
    stack
        .http
        .send(
            Method::POST,
            &conv.url(&format!("/activities?{sealed}")),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            json!({"type": "message", "text": "hi", "from": {"id": "u"}}).to_string(),
        )
        .await;
    // HTTP/2 (prior knowledge), which never counts as a WebSocket upgrade.
    h2_get(&stack, &conv.url(&format!("/activities?{sealed}")), &auth).await;
    // The WebSocket itself, with two contexts.
    let (without, _) = crate::common::without_query_param(&conv.stream_url, "dlpx");
    let twice = format!("{without}&{sealed}&{sealed}");
    let mut ws = ws_connect(&twice).await;
    ws.send(Message::Close(None)).await.expect("close");
    assert!(
        !dlpx_reached_upstream(&stack),
        "{:?}",
        stack.emulator.requests()
    );
    stack.shutdown().await;
}

async fn h2_get(stack: &Stack, url: &str, authorization: &str) {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let request = http::Request::get(url)
        .header("authorization", authorization)
        .body(http_body_util::Empty::new())
        .expect("request");
    let response = tokio::time::timeout(WAIT, client.request(request))
        .await
        .expect("in time")
        .expect("h2 response");
    assert_eq!(response.version(), http::Version::HTTP_2);
    let _ = stack;
}

#[tokio::test]
async fn the_sealed_context_never_reaches_direct_line_with_sso_on() {
    dlpx_never_reaches_upstream(true).await;
}

#[tokio::test]
async fn the_sealed_context_never_reaches_direct_line_with_sso_off() {
    dlpx_never_reaches_upstream(false).await;
}

#[tokio::test]
async fn an_encoded_conversation_id_does_not_get_a_card_exchanged_twice() {
    let stack =
        Stack::start_with(quiet_emulator(), |c| static_provider(c, "demo-user-token")).await;
    let conv = stack.start_conversation().await;
    let first = conv.id.chars().next().expect("an id");
    let encoded_id = format!("%{:02X}{}", first as u32, &conv.id[first.len_utf8()..]);
    let encoded_stream = conv
        .stream_url
        .replace(&format!("/{}/", conv.id), &format!("/{encoded_id}/"));
    assert_ne!(encoded_stream, conv.stream_url);
    let mut ws = ws_connect(&encoded_stream).await;
    say(&stack, &conv, "signin exchange").await;
    let seen = activities_until(&mut ws, SIGNED_IN).await;
    assert!(!seen.iter().any(is_oauth_card));
    // Polls through both spellings replay the card: stripped, never exchanged again.
    let encoded = Conversation {
        id: encoded_id,
        ..conv.clone()
    };
    for spelling in [&conv, &encoded] {
        let polled = spelling.poll(&stack.http, None).await.json();
        let activities = polled["activities"].as_array().cloned().unwrap_or_default();
        assert!(!activities.iter().any(is_oauth_card), "the card reappeared");
    }
    assert_eq!(stack.emulator.invokes_received(&conv.id).len(), 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_token_post_goes_nowhere_but_the_allowed_port_and_path() {
    let internal = Endpoint::answering(StatusCode::OK, "{}").await;
    let stack = Stack::start_with(quiet_emulator(), |c| {
        static_provider(c, "demo-user-token");
        c.sso.flows = vec![Flow::TokenPost];
    })
    .await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    next_activity_set(&mut ws).await;
    // Same loopback host as the allowed emulator entry, another port and path.
    for sas in [
        internal.url("/internal/admin"),
        format!("{}/internal/admin", stack.emulator.base_url()),
        format!("{}/sas/../internal/admin", stack.emulator.base_url()),
    ] {
        let frame = json!({
            "activities": [{
                "type": "message", "id": "x|1", "recipient": {"id": "dl_user"},
                "attachments": [{"contentType": OAUTH_CARD, "content": {
                    "tokenPostResource": {"sasUrl": sas},
                }}],
            }],
        })
        .to_string();
        frame_passes_unchanged(&stack, &conv.id, &mut ws, frame).await;
    }
    assert!(
        internal.seen().is_empty(),
        "nothing was posted to another port"
    );
    assert!(
        stack.emulator.token_posts_received().is_empty(),
        "nothing was posted outside the allowed path"
    );
    assert!(
        !stack
            .emulator
            .requests()
            .iter()
            .any(|r| r.path_and_query.contains("internal")),
    );
    assert_eq!(decisions_counted(&stack, "not_allowed").await, 3);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_client_chosen_forwarded_host_does_not_redirect_the_stream() {
    let stack = Stack::start_with(quiet_emulator(), |c| {
        c.listen.trust_forwarded_headers = true;
    })
    .await;
    // The client prepends its own entry; the ingress appends the real one.
    let reply = stack
        .http
        .send(
            Method::POST,
            &stack.proxy_url("/v3/directline/conversations"),
            &[
                ("authorization", &format!("Bearer {}", stack.secret())),
                ("x-forwarded-host", "evil.example, chat.contoso.test"),
                ("x-forwarded-proto", "http, https"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let stream_url = reply.json()["streamUrl"].as_str().expect("url").to_string();
    assert!(
        stream_url.starts_with("wss://chat.contoso.test/v3/directline/"),
        "{stream_url}"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_host_with_userinfo_is_refused_before_direct_line() {
    let stack = Stack::start().await;
    for host in ["user@evil.example", "evil.example/x", "a b"] {
        let reply = stack
            .http
            .send(
                Method::POST,
                &stack.proxy_url("/v3/directline/conversations"),
                &[
                    ("host", host),
                    ("authorization", &format!("Bearer {}", stack.secret())),
                ],
                Bytes::new(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{host}");
        assert!(!reply.text().contains("evil.example"));
    }
    assert!(stack.emulator.requests().is_empty());
    stack.shutdown().await;
}

async fn mint_for(stack: &Stack, chosen: &str) -> (String, String) {
    let reply = stack
        .http
        .send(
            Method::POST,
            &stack.proxy_url("/v3/directline/tokens/generate"),
            &[("content-type", "application/json")],
            json!({"user": {"id": chosen}}).to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let minted = stack
        .emulator
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path_and_query == "/v3/directline/tokens/generate")
        .expect("minted upstream");
    let body: Value = serde_json::from_slice(&minted.body).expect("json");
    (
        reply.json()["token"].as_str().expect("token").to_string(),
        body["user"]["id"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn a_client_cannot_mint_a_token_for_the_victims_user_id() {
    let stack = trust_stack(|c| {
        let secret = crate::common::scratch_file("trust-mint-secret", "emulator-secret\n");
        c.directline.secret_file = Some(secret);
    })
    .await;
    let (token, bound) = mint_for(&stack, "dl_victim").await;
    assert_ne!(bound, "dl_victim");
    assert!(bound.starts_with("dl_") && bound.len() == 35, "{bound}");
    let (_, again) = mint_for(&stack, "dl_victim").await;
    assert_ne!(again, bound, "a fresh id each time");
    // Speaking with the token: Direct Line sets from.id to the minted id.
    let conv = Conversation::start(&stack.http, &stack.proxy.base_url(), &token).await;
    let mut ws = ws_connect(&conv.stream_url).await;
    let spoof = json!({"type": "message", "text": "as victim", "from": {"id": "dl_victim"}});
    let reply = stack
        .http
        .post_json(&conv.url("/activities"), &conv.token, &spoof)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = activities_until(&mut ws, "as victim").await;
    let echo = seen
        .iter()
        .find(|a| a["text"] == "as victim")
        .expect("echo");
    assert_eq!(echo["from"]["id"], bound.as_str());
    stack.shutdown().await;
}

#[tokio::test]
async fn allow_client_user_id_keeps_the_chosen_id() {
    let stack = trust_stack(|c| {
        let secret = crate::common::scratch_file("trust-mint-chosen", "emulator-secret\n");
        c.directline.secret_file = Some(secret);
        c.directline.allow_client_user_id = true;
    })
    .await;
    let (_, bound) = mint_for(&stack, "dl_chosen").await;
    assert_eq!(bound, "dl_chosen");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_turns_on_a_cookie_provider_brings_its_allowed_origins_along() {
    let provider = auth_api().await;
    let stack = Stack::start().await;
    let poll_from = |origin: &'static str| {
        let url = stack.proxy_url("/v3/directline/conversations/c/activities");
        let http = &stack.http;
        async move {
            http.send(Method::GET, &url, &[("origin", origin)], Bytes::new())
                .await
                .status
        }
    };
    assert_ne!(
        poll_from(EVIL_ORIGIN).await,
        StatusCode::FORBIDDEN,
        "no list yet"
    );
    let mut reloaded = crate::common::proxy_config(&stack.emulator.base_url());
    cookie_sso(&mut reloaded, provider.url("/bot-token"));
    reloaded.directline.secret_file = None;
    stack.proxy.reload(reloaded).expect("reload applies");
    assert_eq!(poll_from(EVIL_ORIGIN).await, StatusCode::FORBIDDEN);
    assert_ne!(poll_from(PAGE_ORIGIN).await, StatusCode::FORBIDDEN);
    assert!(provider.seen().is_empty());
    stack.shutdown().await;
}

/// The id the proxy binds `user` to: `dl_` and the first 16 bytes of
/// HMAC-SHA256(secret, user) in hex.
fn bound_id(user: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"emulator-secret");
    let tag = ring::hmac::sign(&key, user.as_bytes());
    let hex: String = tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("dl_{hex}")
}

#[tokio::test]
async fn with_binding_a_stream_whose_context_names_no_owner_decides_nothing() {
    let provider = auth_api().await;
    let stack = trust_stack(|c| {
        cookie_sso(c, provider.url("/bot-token"));
        with_binding(c);
    })
    .await;
    // Started with a token the attacker brought, without the user header:
    // the sealed context names no owner.
    let attacker = stack.start_conversation().await;
    let mut victim = ws_open(
        &attacker.stream_url,
        &[
            (USER_HEADER, "victim@example.com"),
            ("cookie", VICTIM_COOKIE),
        ],
    )
    .await
    .expect("handshake");
    next_activity_set(&mut victim).await;
    // A card addressed to the victim's bound id, as the bot would send it
    // to a user id the attacker claimed on an unbound token.
    let frame = json!({
        "activities": [{
            "type": "message", "id": "a|1",
            "recipient": {"id": bound_id("victim@example.com")},
            "attachments": [{"contentType": OAUTH_CARD, "content": {
                "connectionName": "AAD",
                "tokenExchangeResource": {"id": "prompt-1", "uri": EXCHANGE_URI},
            }}],
        }],
    })
    .to_string();
    frame_passes_unchanged(&stack, &attacker.id, &mut victim, frame).await;
    assert_refused_for_the_victim(&stack, &provider, &attacker.id).await;
    stack.shutdown().await;
}

fn require_owner(config: &mut Config) {
    config.sso.require_owner = true;
}

#[tokio::test]
async fn with_require_owner_a_start_without_the_cookie_leaves_the_stream_deciding_nothing() {
    let provider = auth_api().await;
    let stack = trust_stack(|c| {
        cookie_sso(c, provider.url("/bot-token"));
        require_owner(c);
    })
    .await;
    // The attacker starts without any cookie, so no owner is sealed.
    let attacker = stack.start_conversation_as(&[]).await;
    victim_page_sees_the_card(&stack, &attacker, &attacker.stream_url, "signin").await;
    assert_refused_for_the_victim(&stack, &provider, &attacker.id).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn with_require_owner_stripping_the_context_does_not_fall_back_to_a_token_post() {
    let provider = auth_api().await;
    let stack = trust_stack(|c| {
        cookie_sso(c, provider.url("/bot-token"));
        crate::sso::allow_emulator_token_post(c);
        require_owner(c);
    })
    .await;
    let attacker = stack
        .start_conversation_as(&[("cookie", ATTACKER_COOKIE)])
        .await;
    let (stripped, _) = crate::common::without_query_param(&attacker.stream_url, "dlpx");
    victim_page_sees_the_card(&stack, &attacker, &stripped, "signin").await;
    assert!(stack.emulator.token_posts_received().is_empty());
    assert_refused_for_the_victim(&stack, &provider, &attacker.id).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn with_require_owner_a_poll_without_binding_decides_nothing_and_the_owner_still_signs_in() {
    let provider = auth_api().await;
    let stack = victim_signs_in_stack(&provider, require_owner).await;
    let attacker = stack
        .start_conversation_as(&[("cookie", ATTACKER_COOKIE)])
        .await;
    say(&stack, &attacker, "signin exchange").await;
    let auth = format!("Bearer {}", attacker.token);
    let poll = stack
        .http
        .send(
            Method::GET,
            &attacker.url("/activities"),
            &[("authorization", &auth), ("cookie", VICTIM_COOKIE)],
            Bytes::new(),
        )
        .await;
    let activities = poll.json()["activities"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(activities.iter().any(is_oauth_card), "the card is shown");
    assert!(provider.seen().is_empty(), "no provider call");
    assert_victim_untouched(&stack, &provider, &attacker.id);

    // The owner's own stream, with the cookie it started with, signs in.
    the_cookie_owner_signs_in(&stack).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn a_repeated_user_header_names_nobody() {
    let provider = auth_api().await;
    let stack = trust_stack(|c| {
        cookie_sso(c, provider.url("/bot-token"));
        with_binding(c);
    })
    .await;
    // An ingress that appends instead of replacing: the client's value first.
    let status = stack
        .http
        .send(
            Method::POST,
            &stack.proxy_url("/v3/directline/tokens/generate"),
            &[
                (USER_HEADER, "victim@example.com"),
                (USER_HEADER, "attacker@example.com"),
            ],
            Bytes::new(),
        )
        .await
        .status;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(stack.emulator.requests().is_empty(), "nothing was minted");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_token_post_that_may_have_gone_out_is_not_tried_again_by_a_poll() {
    let stack = Stack::start_with(quiet_emulator(), |c| {
        // The bot's token endpoint refuses this token: the post goes out
        // and fails.
        static_provider(c, "not-accepted");
    })
    .await;
    let conv = stack.start_conversation().await;
    let (without, _) = crate::common::without_query_param(&conv.stream_url, "dlpx");
    let mut ws = ws_connect(&without).await;
    say(&stack, &conv, "signin").await;
    card_arrives(&mut ws).await;
    assert_eq!(stack.emulator.token_posts_received().len(), 1);
    // A poll could invoke (it has the conversation token), but the card
    // was decided once a token left the proxy.
    let polled = conv.poll(&stack.http, None).await.json();
    let activities = polled["activities"].as_array().cloned().unwrap_or_default();
    assert!(activities.iter().any(is_oauth_card), "the card is shown");
    assert!(stack.emulator.invokes_received(&conv.id).is_empty());
    assert_eq!(stack.emulator.token_posts_received().len(), 1);
    stack.shutdown().await;
}
