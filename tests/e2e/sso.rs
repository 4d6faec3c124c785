//! Server-side SSO end to end: the emulator's bot sends OAuth cards, the
//! proxy exchanges the user's token and removes them, or fails open.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use directline_proxy::config::{
    Config, Flow, Grant, HeaderProviderConfig, HttpProviderConfig, OAuth2ProviderConfig,
    ProviderKind, StaticProviderConfig,
};
use directline_proxy::emulator::{EXCHANGE_URI, OAUTH_CARD, PROVIDER_ID, SIGNED_IN};
use directline_proxy::sso::seal::{Sealer, StreamContext};
use futures_util::SinkExt;
use http::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::endpoint::Endpoint;
use crate::common::{
    Conversation, Stack, TEST_USER, WAIT, activities_until, eventually, metric, next_activity_set,
    next_message, quiet_emulator, ws_connect, ws_connect_with_header,
};

/// The token the emulator's bot accepts by default.
const USER_TOKEN: &str = "demo-user-token";

/// The page that embeds the chat in these tests.
pub const PAGE_ORIGIN: &str = "https://chat.contoso.test";

/// The emulator's token-post endpoints (plain http on loopback, its port).
pub fn allow_emulator_token_post(config: &mut Config) {
    let upstream = config.upstream.url.to_string();
    let sas = format!("{}/sas/", upstream.trim_end_matches('/'));
    config
        .sso
        .token_post_allow_hosts
        .push(sas.parse().expect("an entry"));
}

pub fn static_provider(config: &mut Config, token: &str) {
    config.sso.provider = ProviderKind::Static;
    config.sso.static_token = Some(StaticProviderConfig {
        token: token.into(),
    });
    allow_emulator_token_post(config);
}

/// A provider that reads the user's request needs the page's origin listed.
pub fn http_provider(config: &mut Config, url: String) {
    config.sso.provider = ProviderKind::Http;
    config.sso.http = Some(HttpProviderConfig {
        url: url.parse().expect("the provider's URL"),
        forward_headers: vec![http::header::COOKIE],
    });
    config.listen.allowed_origins = vec![PAGE_ORIGIN.into()];
}

async fn sso_stack(adjust: impl FnOnce(&mut Config)) -> Stack {
    Stack::start_with(quiet_emulator(), adjust).await
}

fn is_oauth_card(activity: &Value) -> bool {
    activity["attachments"]
        .as_array()
        .is_some_and(|a| a.iter().any(|a| a["contentType"] == OAUTH_CARD))
}

fn assert_no_card_and_no_invoke(activities: &[Value]) {
    for activity in activities {
        assert!(
            !is_oauth_card(activity),
            "an OAuth card reached the client: {activity}"
        );
        assert_ne!(
            activity["type"], "invoke",
            "the proxy's invoke reached the client: {activity}"
        );
    }
}

/// Reads stream activities until the bot's echo of `marker`, which the test
/// sends after the interesting part, so everything before it has arrived.
async fn activities_through(
    stack: &Stack,
    conv: &Conversation,
    ws: &mut crate::common::Ws,
    marker: &str,
) -> Vec<Value> {
    assert_eq!(conv.say(&stack.http, marker).await.status, StatusCode::OK);
    activities_until(ws, &format!("You said: {marker}")).await
}

/// The `dlpx` value of a rewritten `streamUrl`, which must carry exactly
/// one `t=` and one `dlpx`.
fn the_one_sealed_context(conv: &Conversation) -> String {
    let (_, query) = conv.stream_url.split_once('?').expect("a query");
    let values = |name: &str| -> Vec<String> {
        form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .collect()
    };
    assert_eq!(values("t").len(), 1, "{}", conv.stream_url);
    let mut sealed = values("dlpx");
    assert_eq!(sealed.len(), 1, "{}", conv.stream_url);
    sealed.pop().expect("one")
}

#[tokio::test]
async fn invoke_flow_on_the_stream_signs_in_and_removes_the_card() {
    let stack = sso_stack(|c| static_provider(c, USER_TOKEN)).await;
    let conv = stack.start_conversation().await;
    let sealed = the_one_sealed_context(&conv);
    assert!(
        !sealed.contains(&conv.token),
        "the sealed context does not show the conversation token"
    );
    let opaque = URL_SAFE_NO_PAD.decode(&sealed).expect("base64url");
    assert!(
        !opaque
            .windows(conv.token.len())
            .any(|w| w == conv.token.as_bytes()),
        "the conversation token is encrypted, not just encoded"
    );
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    let seen = activities_until(&mut ws, SIGNED_IN).await;
    assert_no_card_and_no_invoke(&seen);

    let invokes = stack.emulator.invokes_received(&conv.id);
    assert_eq!(invokes.len(), 1, "exactly one invoke");
    let invoke = &invokes[0];
    assert_eq!(invoke["type"], "invoke");
    assert_eq!(invoke["name"], "signin/tokenExchange");
    assert_eq!(invoke["value"]["token"], USER_TOKEN);
    assert_eq!(invoke["value"]["connectionName"], "AAD");
    assert_eq!(invoke["from"]["id"], TEST_USER, "the conversation's user");
    let posted = stack
        .emulator
        .requests()
        .into_iter()
        .filter(|r| r.body.windows(20).any(|w| w == b"signin/tokenExchange"))
        .collect::<Vec<_>>();
    assert_eq!(posted.len(), 1);
    let auth = format!("Bearer {}", conv.token);
    assert_eq!(
        posted[0].headers["authorization"],
        auth.as_str(),
        "the conversation token, not t="
    );
    let upgrade = stack
        .emulator
        .requests()
        .into_iter()
        .find(|r| r.path_and_query.contains("/stream?"))
        .expect("the stream handshake reached the upstream");
    assert!(
        !upgrade.path_and_query.contains("dlpx"),
        "the sealed context never goes upstream"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn token_post_flow_on_the_stream_signs_in_and_removes_the_card() {
    let stack = sso_stack(|c| static_provider(c, USER_TOKEN)).await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(&stack.http, "signin post").await.status,
        StatusCode::OK
    );
    let seen = activities_until(&mut ws, SIGNED_IN).await;
    assert_no_card_and_no_invoke(&seen);
    let posts = stack.emulator.token_posts_received();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].1, json!({"token": USER_TOKEN}));
    assert!(stack.emulator.invokes_received(&conv.id).is_empty());
    stack.shutdown().await;
}

async fn poll_until_signed_in(stack: &Stack, conv: &Conversation) -> Vec<Value> {
    let mut all = Vec::new();
    let mut watermark: Option<String> = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = conv.poll(&stack.http, watermark.as_deref()).await;
        assert_eq!(reply.status, StatusCode::OK);
        let set = reply.json();
        let content_length: usize = reply.headers["content-length"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("number");
        assert_eq!(
            content_length,
            reply.body.len(),
            "Content-Length matches the rewritten body"
        );
        all.extend(set["activities"].as_array().cloned().unwrap_or_default());
        if let Some(w) = set["watermark"].as_str() {
            watermark = Some(w.to_string());
        }
        if all.iter().any(|a| a["text"] == SIGNED_IN) {
            return all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never signed in: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn invoke_flow_on_the_polling_path() {
    let stack = sso_stack(|c| static_provider(c, USER_TOKEN)).await;
    let conv = stack.start_conversation().await;
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    let seen = poll_until_signed_in(&stack, &conv).await;
    assert_no_card_and_no_invoke(&seen);
    assert_eq!(stack.emulator.invokes_received(&conv.id).len(), 1);
    // A poll from the start replays the card: stripped again, no second invoke.
    let again = conv.poll(&stack.http, None).await.json();
    assert_no_card_and_no_invoke(again["activities"].as_array().expect("activities"));
    assert_eq!(stack.emulator.invokes_received(&conv.id).len(), 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn token_post_flow_on_the_polling_path() {
    let stack = sso_stack(|c| {
        static_provider(c, USER_TOKEN);
        c.sso.flows = vec![Flow::TokenPost];
    })
    .await;
    let conv = stack.start_conversation().await;
    assert_eq!(conv.say(&stack.http, "signin").await.status, StatusCode::OK);
    let seen = poll_until_signed_in(&stack, &conv).await;
    assert_no_card_and_no_invoke(&seen);
    assert_eq!(stack.emulator.token_posts_received().len(), 1);
    assert!(stack.emulator.invokes_received(&conv.id).is_empty());
    stack.shutdown().await;
}

#[tokio::test]
async fn a_refused_exchange_delivers_the_card_byte_identical() {
    let stack = sso_stack(|c| static_provider(c, USER_TOKEN)).await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    next_activity_set(&mut ws).await;
    // A card for a prompt the bot is not waiting on: the bot refuses (502).
    let frame = format!(
        "{{\"activities\":[{{\"type\":\"message\",\"id\":\"{}|x\",\"recipient\":{{\"id\":\"dl_test-user\"}},\"attachments\":[{{\"contentType\":\"{OAUTH_CARD}\",\"content\":{{\"connectionName\":\"AAD\",\"tokenExchangeResource\":{{\"id\":\"no-such-prompt\",\"uri\":\"api://x\"}}}}}}]}}],\"watermark\":\"41\"}}",
        conv.id
    );
    assert!(
        stack
            .emulator
            .send_stream_message(&conv.id, Message::Text(frame.clone().into()))
            .await
    );
    assert_eq!(next_message(&mut ws).await, Message::Text(frame.into()));
    let invokes = stack.emulator.invokes_received(&conv.id);
    assert_eq!(invokes.len(), 1, "the exchange was tried");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_token_the_bot_rejects_with_412_keeps_the_card_and_the_conversation_goes_on() {
    let stack = sso_stack(|c| static_provider(c, "not-accepted")).await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    let seen = activities_through(&stack, &conv, &mut ws, "after the card").await;
    assert_eq!(
        seen.iter().filter(|a| is_oauth_card(a)).count(),
        1,
        "the card arrives"
    );
    assert!(!seen.iter().any(|a| a["type"] == "invoke"));
    assert_eq!(stack.emulator.invokes_received(&conv.id).len(), 1);
    stack.shutdown().await;
}

async fn card_survives_provider(provider_url: String, sso_timeout_ms: u64) -> Stack {
    let stack = sso_stack(|c| {
        http_provider(c, provider_url);
        c.sso.timeout = Duration::from_millis(sso_timeout_ms);
    })
    .await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    let seen = activities_through(&stack, &conv, &mut ws, "still talking").await;
    assert_eq!(
        seen.iter().filter(|a| is_oauth_card(a)).count(),
        1,
        "the card arrives"
    );
    assert!(
        stack.emulator.invokes_received(&conv.id).is_empty(),
        "no token, no invoke"
    );
    stack
}

#[tokio::test]
async fn provider_answering_401_keeps_the_card() {
    let provider = Endpoint::answering(StatusCode::UNAUTHORIZED, "{}").await;
    let stack = card_survives_provider(provider.url("/token"), 3_000).await;
    assert_eq!(provider.seen().len(), 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn provider_refusing_connections_keeps_the_card() {
    let dead = format!("{}/token", crate::common::dead_address().await);
    card_survives_provider(dead, 3_000).await.shutdown().await;
}

#[tokio::test]
async fn provider_slower_than_the_timeout_keeps_the_card() {
    let provider = Endpoint::start(Duration::from_secs(5), |_| {
        (StatusCode::OK, json!({"token": USER_TOKEN}).to_string())
    })
    .await;
    let started = tokio::time::Instant::now();
    let stack = card_survives_provider(provider.url("/token"), 300).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the card did not wait for the provider"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn http_provider_gets_the_card_context_and_only_the_configured_headers() {
    let provider =
        Endpoint::answering(StatusCode::OK, &json!({"token": USER_TOKEN}).to_string()).await;
    let stack = sso_stack(|c| http_provider(c, provider.url("/bot-token"))).await;
    let conv = stack.start_conversation().await;
    let mut request = conv
        .stream_url
        .as_str()
        .into_client_request()
        .expect("request");
    let headers = request.headers_mut();
    headers.insert("cookie", "session=user-session".parse().expect("value"));
    headers.insert("x-other", "not-forwarded".parse().expect("value"));
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("ws");
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    assert_no_card_and_no_invoke(&activities_until(&mut ws, SIGNED_IN).await);
    let seen = provider.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["cookie"], "session=user-session");
    assert!(!seen[0].headers.contains_key("x-other"));
    let body = seen[0].json();
    assert_eq!(body["conversationId"], conv.id.as_str());
    assert_eq!(body["userId"], TEST_USER);
    assert_eq!(body["connectionName"], "AAD");
    assert_eq!(body["resourceUri"], EXCHANGE_URI);
    assert_eq!(body["providerId"], PROVIDER_ID, "as the card names it");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_card_without_resources_passes_unchanged() {
    let stack = sso_stack(|c| static_provider(c, USER_TOKEN)).await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(&stack.http, "signin plain").await.status,
        StatusCode::OK
    );
    let seen = activities_through(&stack, &conv, &mut ws, "next").await;
    assert_eq!(seen.iter().filter(|a| is_oauth_card(a)).count(), 1);
    assert!(stack.emulator.invokes_received(&conv.id).is_empty());
    assert!(stack.emulator.token_posts_received().is_empty());
    stack.shutdown().await;
}

#[tokio::test]
async fn a_hero_card_beside_the_oauth_card_stays() {
    let stack = sso_stack(|c| static_provider(c, USER_TOKEN)).await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(&stack.http, "signin hero").await.status,
        StatusCode::OK
    );
    let seen = activities_until(&mut ws, SIGNED_IN).await;
    assert_no_card_and_no_invoke(&seen);
    let hero = seen
        .iter()
        .find(|a| a["attachments"].as_array().is_some_and(|a| !a.is_empty()))
        .expect("the activity with the hero card is still delivered");
    assert_eq!(hero["attachments"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        hero["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.hero"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn the_content_type_in_text_changes_nothing() {
    let provider =
        Endpoint::answering(StatusCode::OK, &json!({"token": USER_TOKEN}).to_string()).await;
    let stack = sso_stack(|c| http_provider(c, provider.url("/t"))).await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(&stack.http, "signin text").await.status,
        StatusCode::OK
    );
    let seen = activities_until(&mut ws, OAUTH_CARD).await;
    assert!(
        seen.iter()
            .any(|a| a["text"].as_str().is_some_and(|t| t.contains(OAUTH_CARD)))
    );
    assert!(provider.seen().is_empty(), "no decision was made");
    stack.shutdown().await;
}

#[tokio::test]
async fn two_cards_in_one_activity_are_both_exchanged() {
    let stack = sso_stack(|c| static_provider(c, USER_TOKEN)).await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(&stack.http, "signin two").await.status,
        StatusCode::OK
    );
    let seen = activities_through(&stack, &conv, &mut ws, "after two").await;
    assert_no_card_and_no_invoke(&seen);
    assert_eq!(stack.emulator.invokes_received(&conv.id).len(), 2);
    assert_eq!(seen.iter().filter(|a| a["text"] == SIGNED_IN).count(), 2);
    stack.shutdown().await;
}

#[tokio::test]
async fn an_emptied_set_still_delivers_its_watermark() {
    let stack = sso_stack(|c| static_provider(c, USER_TOKEN)).await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    let mut emptied = 0;
    loop {
        let set = next_activity_set(&mut ws).await;
        let activities = set["activities"].as_array().expect("activities array");
        if activities.is_empty() {
            assert!(
                set["watermark"].is_string(),
                "the watermark survives: {set}"
            );
            emptied += 1;
        }
        if activities.iter().any(|a| a["text"] == SIGNED_IN) {
            break;
        }
    }
    assert!(emptied >= 1, "the card's set arrived emptied");
    stack.shutdown().await;
}

/// The provider refuses only once the bot has answered all five messages
/// upstream, so the card goes out unchanged after the decision: a proxy that
/// let later frames pass the card would deliver the answers before it.
#[tokio::test]
async fn frames_after_a_card_wait_for_its_decision_and_keep_their_order() {
    let (provider, release) =
        Endpoint::gated(|_| (StatusCode::UNAUTHORIZED, "{}".to_string())).await;
    let stack = sso_stack(|c| {
        http_provider(c, provider.url("/held"));
        c.sso.timeout = Duration::from_secs(60);
    })
    .await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    for n in 1..=5 {
        assert_eq!(
            conv.say(&stack.http, &format!("message {n}")).await.status,
            StatusCode::OK
        );
    }
    let direct_poll = conv
        .url("/activities")
        .replace(&stack.proxy.base_url(), &stack.emulator.base_url());
    let upstream_ids = async || -> Vec<String> {
        let direct = stack.http.get(&direct_poll, &conv.token).await.json();
        direct["activities"]
            .as_array()
            .expect("activities")
            .iter()
            .filter_map(|a| a["id"].as_str().map(str::to_string))
            .collect()
    };
    eventually("the bot answers all five upstream", async || {
        stack
            .http
            .get(&direct_poll, &conv.token)
            .await
            .text()
            .contains("You said: message 5")
    })
    .await;
    eventually("the card is being decided", async || {
        !provider.seen().is_empty()
    })
    .await;
    release.send(true).expect("release");
    let seen = activities_until(&mut ws, "You said: message 5").await;
    assert_eq!(seen.iter().filter(|a| is_oauth_card(a)).count(), 1);
    let ids: Vec<String> = seen
        .iter()
        .filter_map(|a| a["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids, upstream_ids().await, "nothing lost, nothing reordered");
    stack.shutdown().await;
}

/// While the provider holds the card's decision, a frame from the client
/// still reaches the bot.
#[tokio::test]
async fn the_client_to_bot_direction_never_waits_for_a_decision() {
    let (provider, release) =
        Endpoint::gated(|_| (StatusCode::OK, json!({"token": USER_TOKEN}).to_string())).await;
    let stack = sso_stack(|c| {
        http_provider(c, provider.url("/held"));
        c.sso.timeout = Duration::from_secs(60);
    })
    .await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    next_activity_set(&mut ws).await;
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    eventually("the card is being decided", async || {
        !provider.seen().is_empty()
    })
    .await;
    ws.send(Message::Text("client frame".into()))
        .await
        .expect("send");
    eventually("the client's frame reaches the bot", async || {
        stack
            .emulator
            .stream_messages_received(&conv.id)
            .contains(&Message::Text("client frame".into()))
    })
    .await;
    assert!(
        stack.emulator.invokes_received(&conv.id).is_empty(),
        "while the decision is still held"
    );
    release.send(true).expect("release");
    assert_no_card_and_no_invoke(&activities_until(&mut ws, SIGNED_IN).await);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_replay_after_reconnect_is_stripped_without_a_second_invoke() {
    let stack = sso_stack(|c| static_provider(c, USER_TOKEN)).await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    assert_no_card_and_no_invoke(&activities_until(&mut ws, SIGNED_IN).await);
    ws.send(Message::Close(None)).await.expect("close");
    drop(ws);

    let reconnect = stack
        .http
        .get(&conv.url("?watermark=-"), &conv.token)
        .await
        .json();
    let url = reconnect["streamUrl"].as_str().expect("streamUrl");
    let mut ws = ws_connect(url).await;
    let replay = next_activity_set(&mut ws).await;
    let replayed = replay["activities"].as_array().expect("activities");
    assert!(
        replayed.iter().any(|a| a["text"] == SIGNED_IN),
        "the whole history was replayed"
    );
    assert_no_card_and_no_invoke(replayed);
    assert_eq!(
        stack.emulator.invokes_received(&conv.id).len(),
        1,
        "exactly one invoke"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_sas_url_on_a_host_not_allowed_is_never_posted_to() {
    let stack = sso_stack(|c| {
        static_provider(c, USER_TOKEN);
        c.sso.token_post_allow_hosts = vec!["token.botframework.com".parse().expect("an entry")];
        c.sso.flows = vec![Flow::TokenPost];
    })
    .await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(&stack.http, "signin post").await.status,
        StatusCode::OK
    );
    let seen = activities_through(&stack, &conv, &mut ws, "later").await;
    assert_eq!(seen.iter().filter(|a| is_oauth_card(a)).count(), 1);
    assert!(stack.emulator.token_posts_received().is_empty());
    stack.shutdown().await;
}

#[tokio::test]
async fn a_conversation_started_on_one_replica_gets_sso_on_another() {
    let key = STANDARD.encode([7u8; 32]);
    let replicas = |c: &mut Config| {
        static_provider(c, USER_TOKEN);
        c.sso.seal_keys = vec![key.clone()];
    };
    let stack = sso_stack(replicas).await;
    let mut other = crate::common::proxy_config(&stack.emulator.base_url());
    replicas(&mut other);
    let replica_b = directline_proxy::start(other).await.expect("replica B");

    let conv = stack.start_conversation().await; // through replica A
    let via_b = conv.stream_url.replace(
        &stack.proxy.local_addr().to_string(),
        &replica_b.local_addr().to_string(),
    );
    assert_ne!(via_b, conv.stream_url);
    let mut ws = ws_connect(&via_b).await;
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    assert_no_card_and_no_invoke(&activities_until(&mut ws, SIGNED_IN).await);
    assert_eq!(stack.emulator.invokes_received(&conv.id).len(), 1);
    replica_b.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn header_provider_takes_the_token_from_the_users_request() {
    let stack = sso_stack(|c| {
        c.sso.provider = ProviderKind::Header;
        c.sso.header = Some(HeaderProviderConfig {
            name: http::HeaderName::from_static("x-forwarded-access-token"),
        });
        c.listen.allowed_origins = vec![PAGE_ORIGIN.into()];
    })
    .await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect_with_header(
        &conv.stream_url,
        "x-forwarded-access-token",
        &format!("Bearer {USER_TOKEN}"),
    )
    .await;
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    assert_no_card_and_no_invoke(&activities_until(&mut ws, SIGNED_IN).await);
    assert_eq!(
        stack.emulator.invokes_received(&conv.id)[0]["value"]["token"],
        USER_TOKEN
    );
    stack.shutdown().await;
}

async fn oauth2_stack(grant: Grant, token_endpoint: &Endpoint, secret_var: &str) -> Stack {
    let secret_file = crate::common::scratch_file(secret_var, "client-secret-value\n");
    let url = token_endpoint.url("/oauth2/token");
    sso_stack(move |c| {
        c.sso.provider = ProviderKind::Oauth2;
        c.sso.oauth2 = Some(OAuth2ProviderConfig {
            token_url: url.parse().expect("the token endpoint's URL"),
            grant,
            client_id: "proxy-client".into(),
            client_secret_env: None,
            client_secret_file: Some(secret_file),
            header: http::HeaderName::from_static("x-forwarded-access-token"),
            allowed_resources: vec![EXCHANGE_URI.into()],
        });
        c.listen.allowed_origins = vec![PAGE_ORIGIN.into()];
    })
    .await
}

async fn sign_in_with_incoming_token(stack: &Stack, incoming: &str, signins: usize) {
    let conv = stack.start_conversation().await;
    let mut ws =
        ws_connect_with_header(&conv.stream_url, "x-forwarded-access-token", incoming).await;
    for _ in 0..signins {
        assert_eq!(
            conv.say(&stack.http, "signin exchange").await.status,
            StatusCode::OK
        );
        assert_no_card_and_no_invoke(&activities_until(&mut ws, SIGNED_IN).await);
    }
}

fn token_answer(_: &crate::common::endpoint::Seen) -> (StatusCode, String) {
    (
        StatusCode::OK,
        json!({"access_token": USER_TOKEN, "token_type": "Bearer", "expires_in": 3600}).to_string(),
    )
}

#[tokio::test]
async fn oauth2_token_exchange_sends_an_rfc_8693_request_and_caches_the_result() {
    let endpoint = Endpoint::start(Duration::ZERO, token_answer).await;
    let stack = oauth2_stack(Grant::TokenExchange, &endpoint, "TEST_DL_RFC8693_SECRET").await;
    sign_in_with_incoming_token(&stack, "incoming-user-token", 2).await;
    let seen = endpoint.seen();
    assert_eq!(
        seen.len(),
        1,
        "the second card of the same user and resource used the cache"
    );
    let request = &seen[0];
    assert_eq!(
        request.form_value("grant_type").as_deref(),
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
    );
    assert_eq!(
        request.form_value("subject_token").as_deref(),
        Some("incoming-user-token")
    );
    assert_eq!(
        request.form_value("subject_token_type").as_deref(),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert_eq!(
        request.form_value("audience").as_deref(),
        Some(EXCHANGE_URI)
    );
    use base64::Engine;
    let basic =
        base64::engine::general_purpose::STANDARD.encode("proxy-client:client-secret-value");
    assert_eq!(
        request.headers["authorization"],
        format!("Basic {basic}").as_str()
    );
    assert_eq!(
        request.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn oauth2_on_behalf_of_sends_the_entra_request_shape() {
    let endpoint = Endpoint::start(Duration::ZERO, token_answer).await;
    let stack = oauth2_stack(Grant::OnBehalfOf, &endpoint, "TEST_DL_OBO_SECRET").await;
    sign_in_with_incoming_token(&stack, "Bearer incoming-jwt", 1).await;
    let request = &endpoint.seen()[0];
    assert_eq!(
        request.form_value("grant_type").as_deref(),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    assert_eq!(
        request.form_value("assertion").as_deref(),
        Some("incoming-jwt")
    );
    assert_eq!(
        request.form_value("requested_token_use").as_deref(),
        Some("on_behalf_of")
    );
    assert_eq!(
        request.form_value("client_id").as_deref(),
        Some("proxy-client")
    );
    assert_eq!(
        request.form_value("client_secret").as_deref(),
        Some("client-secret-value")
    );
    assert_eq!(
        request.form_value("scope").as_deref(),
        Some(EXCHANGE_URI),
        "a URI naming a scope is kept"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn oauth2_a_token_without_a_lifetime_is_not_reused() {
    let endpoint = Endpoint::start(Duration::ZERO, |_| {
        let answer = json!({"access_token": USER_TOKEN, "token_type": "Bearer"});
        (StatusCode::OK, answer.to_string())
    })
    .await;
    let stack = oauth2_stack(
        Grant::TokenExchange,
        &endpoint,
        "TEST_DL_NO_LIFETIME_SECRET",
    )
    .await;
    sign_in_with_incoming_token(&stack, "incoming-user-token", 2).await;
    assert_eq!(endpoint.seen().len(), 2, "each card asked the endpoint");
    stack.shutdown().await;
}

#[tokio::test]
async fn oauth2_a_failed_exchange_is_not_remembered() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let endpoint = Endpoint::start(Duration::ZERO, move |seen| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"temporarily_unavailable"}"#.into(),
            )
        } else {
            token_answer(seen)
        }
    })
    .await;
    let stack = oauth2_stack(Grant::TokenExchange, &endpoint, "TEST_DL_RETRY_SECRET").await;
    let conv = stack.start_conversation().await;
    let mut ws =
        ws_connect_with_header(&conv.stream_url, "x-forwarded-access-token", "incoming").await;
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    let seen = activities_through(&stack, &conv, &mut ws, "then").await;
    assert_eq!(seen.iter().filter(|a| is_oauth_card(a)).count(), 1);
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    assert_no_card_and_no_invoke(&activities_until(&mut ws, SIGNED_IN).await);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the failure was asked again"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn oauth2_concurrent_cards_of_one_user_and_resource_share_one_exchange() {
    let endpoint = Endpoint::start(Duration::from_millis(500), token_answer).await;
    let stack = oauth2_stack(Grant::TokenExchange, &endpoint, "TEST_DL_SHARED_SECRET").await;
    tokio::join!(
        sign_in_with_incoming_token(&stack, "incoming-user-token", 1),
        sign_in_with_incoming_token(&stack, "incoming-user-token", 1),
    );
    assert_eq!(
        endpoint.seen().len(),
        1,
        "the second card waited for the first"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn oauth2_invalid_grant_keeps_the_card() {
    let endpoint =
        Endpoint::answering(StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#).await;
    let stack = oauth2_stack(Grant::OnBehalfOf, &endpoint, "TEST_DL_OBO_FAIL_SECRET").await;
    let conv = stack.start_conversation().await;
    let mut ws =
        ws_connect_with_header(&conv.stream_url, "x-forwarded-access-token", "expired").await;
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    let seen = activities_through(&stack, &conv, &mut ws, "then").await;
    assert_eq!(seen.iter().filter(|a| is_oauth_card(a)).count(), 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_stream_without_its_sealed_context_falls_back_to_token_post() {
    let stack = sso_stack(|c| static_provider(c, USER_TOKEN)).await;
    let conv = stack.start_conversation().await;
    let (without, _) = crate::common::without_query_param(&conv.stream_url, "dlpx");
    let mut ws = ws_connect(&without).await;
    assert_eq!(conv.say(&stack.http, "signin").await.status, StatusCode::OK);
    assert_no_card_and_no_invoke(&activities_until(&mut ws, SIGNED_IN).await);
    assert!(stack.emulator.invokes_received(&conv.id).is_empty());
    assert_eq!(stack.emulator.token_posts_received().len(), 1);
    stack.shutdown().await;
}

/// A `dlpx` the proxy cannot use, sealed with a key it does not hold
/// (forged) or with its own key but expired, is refused and counted as
/// `stream_context_rejected`; the stream is relayed all the same.
#[tokio::test]
async fn forged_and_expired_sealed_contexts_are_counted_as_rejected() {
    let key = STANDARD.encode([7u8; 32]);
    let stack = sso_stack(|c| {
        static_provider(c, USER_TOKEN);
        c.sso.seal_keys = vec![key.clone()];
    })
    .await;
    let conv = stack.start_conversation().await;
    let context = StreamContext {
        token: conv.token.clone(),
        owner: None,
    };
    let sealed_with = |key: String, lifetime: Duration| {
        Sealer::new(&[key], lifetime)
            .expect("sealer")
            .seal(&conv.id, &context)
            .expect("sealed")
    };
    let forged = sealed_with(STANDARD.encode([8u8; 32]), Duration::from_secs(3600));
    let expired = sealed_with(key.clone(), Duration::ZERO);
    let (without, _) = crate::common::without_query_param(&conv.stream_url, "dlpx");
    let rejected = "directline_proxy_errors_total{kind=\"stream_context_rejected\"}";
    let base = stack.proxy.base_url();

    let streams = [
        (conv.stream_url.clone(), 0.0),
        (format!("{without}&dlpx={forged}"), 1.0),
        (format!("{without}&dlpx={expired}"), 2.0),
    ];
    for (url, rejections) in streams {
        let mut ws = ws_connect(&url).await;
        next_activity_set(&mut ws).await;
        assert_eq!(metric(&stack.http, &base, rejected).await, rejections);
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn a_card_the_user_posts_is_never_acted_on() {
    let stack = sso_stack(|c| static_provider(c, USER_TOKEN)).await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    let sas = format!("{}/sas/chosen-by-the-user", stack.emulator.base_url());
    let activity = json!({
        "type": "message",
        "from": {"id": TEST_USER, "role": "user"},
        "attachments": [{"contentType": OAUTH_CARD, "content": {"tokenPostResource": {"sasUrl": sas}}}],
    });
    let reply = stack
        .http
        .post_json(&conv.url("/activities"), &conv.token, &activity)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = activities_through(&stack, &conv, &mut ws, "after my card").await;
    assert_eq!(
        seen.iter().filter(|a| is_oauth_card(a)).count(),
        1,
        "the echo is unchanged"
    );
    assert!(
        stack.emulator.token_posts_received().is_empty(),
        "no token went anywhere"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn the_users_credentials_for_the_proxy_never_reach_direct_line() {
    let stack = sso_stack(|c| {
        c.sso.provider = ProviderKind::Header;
        c.sso.header = Some(HeaderProviderConfig {
            name: http::HeaderName::from_static("x-forwarded-access-token"),
        });
        c.listen.allowed_origins = vec![PAGE_ORIGIN.into()];
    })
    .await;
    let conv = stack.start_conversation().await;
    let mut ws =
        ws_connect_with_header(&conv.stream_url, "x-forwarded-access-token", USER_TOKEN).await;
    let auth = format!("Bearer {}", conv.token);
    let polled = stack
        .http
        .send(
            http::Method::GET,
            &conv.url("/activities"),
            &[
                ("authorization", &auth),
                ("x-forwarded-access-token", USER_TOKEN),
            ],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(polled.status, StatusCode::OK);
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    activities_until(&mut ws, SIGNED_IN).await;
    for request in stack.emulator.requests() {
        assert!(
            !request.headers.contains_key("x-forwarded-access-token"),
            "{} carried the user's token upstream",
            request.path_and_query
        );
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn a_failed_fallback_on_a_stream_leaves_the_card_for_a_poll_that_can_invoke() {
    let stack = sso_stack(|c| {
        static_provider(c, USER_TOKEN);
        // Token post to the emulator is not allowed: the fallback fails.
        c.sso.token_post_allow_hosts = vec!["token.botframework.com".parse().expect("an entry")];
    })
    .await;
    let conv = stack.start_conversation().await;
    let (without, _) = crate::common::without_query_param(&conv.stream_url, "dlpx");
    let mut ws = ws_connect(&without).await;
    assert_eq!(conv.say(&stack.http, "signin").await.status, StatusCode::OK);
    let seen = activities_through(&stack, &conv, &mut ws, "card shown").await;
    assert_eq!(
        seen.iter().filter(|a| is_oauth_card(a)).count(),
        1,
        "the stream shows the card"
    );
    let polled = conv.poll(&stack.http, None).await.json();
    assert_no_card_and_no_invoke(polled["activities"].as_array().expect("activities"));
    assert_eq!(
        stack.emulator.invokes_received(&conv.id).len(),
        1,
        "the poll exchanged it"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn messages_before_a_card_are_not_held_back_by_its_decision() {
    let (provider, release) =
        Endpoint::gated(|_| (StatusCode::OK, json!({"token": USER_TOKEN}).to_string())).await;
    let stack = sso_stack(|c| {
        http_provider(c, provider.url("/held"));
        c.sso.timeout = Duration::from_secs(60);
    })
    .await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    next_activity_set(&mut ws).await;
    let before = "{\"activities\":[{\"type\":\"message\",\"id\":\"x|1\",\"text\":\"before the card\"}],\"watermark\":\"1\"}";
    assert!(
        stack
            .emulator
            .send_stream_message(&conv.id, Message::Text(before.into()))
            .await
    );
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    // The echo of "signin exchange" and the message above arrive while the
    // provider still holds the card's decision.
    assert_eq!(next_message(&mut ws).await, Message::Text(before.into()));
    activities_until(&mut ws, "signin exchange").await;
    eventually("the provider is asked", async || {
        !provider.seen().is_empty()
    })
    .await;
    assert!(
        stack.emulator.invokes_received(&conv.id).is_empty(),
        "and not decided yet"
    );
    release.send(true).expect("release");
    assert_no_card_and_no_invoke(&activities_until(&mut ws, SIGNED_IN).await);
    stack.shutdown().await;
}
