//! A Copilot Studio agent behind the proxy: tokens come from the agent's
//! token endpoint (`[directline] token_endpoint`), and Direct Line is the
//! regional base that Power Platform names, never `upstream.url`. In every
//! test `upstream.url` points where nothing listens, so a request that went
//! there would fail.

use std::time::{Duration, Instant};

use directline_proxy::config::Config;
use directline_proxy::emulator::SIGNED_IN;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::endpoint::{Endpoint, Seen};
use crate::common::{
    Conversation, Http, Reply, Stack, WAIT, activities_until, dead_address, metric,
    next_activity_set, proxy_config, quiet_emulator, ws_connect,
};
use crate::sso::{PAGE_ORIGIN, static_provider};
use crate::sso_trust::{
    ATTACKER_COOKIE, VICTIM_COOKIE, VICTIM_TOKEN, auth_api, cookie_provider, is_oauth_card, ws_open,
};

const TOKEN_PATH: &str = directline_proxy::emulator::AGENT_TOKEN_PATH;
const SETTINGS_PATH: &str = "/powervirtualagents/regionalchannelsettings";

/// The agent's token endpoint on `power_platform` (a loopback address, so
/// listed in `token_endpoint_hosts`), and no `upstream.url` to fall back on.
fn copilot_agent(config: &mut Config, power_platform: &str, nowhere: &str) {
    let power_platform = power_platform.trim_end_matches('/');
    let endpoint = format!("{power_platform}{TOKEN_PATH}");
    config.directline.token_endpoint = Some(endpoint.parse().expect("a URL"));
    config.directline.token_endpoint_hosts = vec!["127.0.0.1".into()];
    config.upstream.url = nowhere.parse().expect("a URL");
}

/// The emulator is the agent's Power Platform host and its Direct Line.
async fn agent_stack(adjust: impl FnOnce(&mut Config)) -> Stack {
    let nowhere = dead_address().await;
    Stack::start_with(quiet_emulator(), |config| {
        adjust(config);
        let emulator = config.upstream.url.to_string();
        copilot_agent(config, &emulator, &nowhere);
    })
    .await
}

fn emulator_saw(stack: &Stack, method: Method, path_start: &str) -> Vec<http::HeaderMap> {
    stack
        .emulator
        .requests()
        .into_iter()
        .filter(|r| r.method == method && r.path_and_query.starts_with(path_start))
        .map(|r| r.headers)
        .collect()
}

/// A token for a client that brings no credentials.
async fn generate_token(stack: &Stack) -> Reply {
    let url = stack.proxy_url("/v3/directline/tokens/generate");
    stack.http.bare(Method::POST, &url).await
}

/// A conversation start with no credentials, on the proxy at `base`.
async fn start_without_credentials(http: &Http, base: &str) -> Reply {
    let url = format!("{base}/v3/directline/conversations");
    http.bare(Method::POST, &url).await
}

#[tokio::test]
async fn a_start_without_credentials_gets_an_agent_token_and_signs_in_without_a_card() {
    let stack = agent_stack(|config| static_provider(config, "demo-user-token")).await;
    let conversation = stack.start_conversation_as(&[]).await;
    assert!(
        conversation.stream_url.starts_with(&format!(
            "ws://{}/",
            stack.proxy.base_url().trim_start_matches("http://")
        )),
        "streamUrl points at the proxy: {}",
        conversation.stream_url
    );
    let starts = emulator_saw(&stack, Method::POST, "/v3/directline/conversations");
    let authorization = starts[0]["authorization"].to_str().expect("ascii");
    assert!(
        authorization.starts_with("Bearer ct."),
        "started with the agent's token, not a secret: {authorization}"
    );
    let mut ws = ws_connect(&conversation.stream_url).await;
    assert_eq!(
        conversation
            .say(&stack.http, "signin exchange")
            .await
            .status,
        StatusCode::OK
    );
    let seen = activities_until(&mut ws, SIGNED_IN).await;
    assert!(
        !seen.iter().any(is_oauth_card),
        "no card reached the client"
    );
    assert_eq!(stack.emulator.invokes_received(&conversation.id).len(), 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_token_request_is_answered_from_the_token_endpoint_and_refresh_and_reconnect_work() {
    let stack = agent_stack(|_| {}).await;
    let minted = generate_token(&stack).await;
    assert_eq!(minted.status, StatusCode::OK, "{}", minted.text());
    let minted = minted.json();
    let conversation_id = minted["conversationId"].as_str().expect("conversationId");
    assert!(minted["expires_in"].as_u64().is_some_and(|s| s > 0));
    let token = minted["token"].as_str().expect("token");
    assert_eq!(
        emulator_saw(&stack, Method::GET, "/powervirtualagents/botsbyschema/").len(),
        1
    );
    assert!(
        emulator_saw(&stack, Method::POST, "/v3/directline/tokens/generate").is_empty(),
        "nothing is minted with a secret"
    );
    let base = stack.proxy.base_url();
    for route in ["token_endpoint", "regional_settings"] {
        let series = format!(
            "directline_proxy_upstream_requests_total{{route=\"{route}\",status_class=\"2xx\"}}"
        );
        assert_eq!(metric(&stack.http, &base, &series).await, 1.0, "{series}");
    }

    let refreshed = stack
        .post_with_token("/v3/directline/tokens/refresh", token)
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text());
    assert_eq!(refreshed.json()["conversationId"], conversation_id);
    let token = refreshed.json()["token"]
        .as_str()
        .expect("token")
        .to_string();

    let started = stack
        .post_with_token("/v3/directline/conversations", &token)
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
    let conversation = Conversation::from_reply(&stack.proxy.base_url(), &started.json());
    assert_eq!(conversation.id, conversation_id);
    let reconnected = stack
        .http
        .get(&conversation.url("?watermark=-"), &conversation.token)
        .await;
    assert_eq!(reconnected.status, StatusCode::OK, "{}", reconnected.text());
    let stream_url = reconnected.json()["streamUrl"]
        .as_str()
        .expect("streamUrl")
        .to_string();
    let mut ws = ws_connect(&stream_url).await;
    assert_eq!(
        conversation.say(&stack.http, "hello").await.status,
        StatusCode::OK
    );
    let set = next_activity_set(&mut ws).await;
    assert!(set["activities"].is_array(), "{set}");
    stack.shutdown().await;
}

/// A Power Platform host of its own that names the emulator (another
/// port) as the regional base, and hands out `token`.
async fn power_platform(directline: String, token: Value) -> Endpoint {
    Endpoint::start(Duration::ZERO, move |seen: &Seen| {
        if seen.path_and_query.starts_with(SETTINGS_PATH) {
            let settings = json!({ "channelUrlsById": { "directline": directline } });
            (StatusCode::OK, settings.to_string())
        } else if seen.path_and_query == TOKEN_PATH {
            (StatusCode::OK, token.to_string())
        } else {
            (StatusCode::NOT_FOUND, "{}".into())
        }
    })
    .await
}

#[tokio::test]
async fn direct_line_is_the_regional_base_the_settings_name() {
    let emulator = crate::common::Emulator::start(quiet_emulator())
        .await
        .expect("emulator");
    let http = Http::plain();
    let token = http
        .bare(Method::GET, &format!("{}{TOKEN_PATH}", emulator.base_url()))
        .await
        .json();
    let power_platform = power_platform(format!("{}/", emulator.base_url()), token.clone()).await;
    let mut config = proxy_config(&dead_address().await);
    copilot_agent(&mut config, &power_platform.url(""), &dead_address().await);
    let proxy = directline_proxy::start(config).await.expect("proxy starts");
    let started = start_without_credentials(&http, &proxy.base_url()).await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
    assert_eq!(started.json()["conversationId"], token["conversationId"]);
    let paths: Vec<String> = power_platform
        .seen()
        .into_iter()
        .map(|s| s.path_and_query)
        .collect();
    assert_eq!(
        paths,
        [
            format!("{SETTINGS_PATH}?api-version=2022-03-01-preview"),
            TOKEN_PATH.to_string()
        ]
    );
    // Looked up once, then cached: a second start asks only for a token.
    let again = start_without_credentials(&http, &proxy.base_url()).await;
    assert_eq!(again.status, StatusCode::OK, "the same agent token again");
    assert_eq!(power_platform.seen().len(), 3);
    proxy.shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_token_endpoint_outside_power_platform_is_a_config_error() {
    for endpoint in [
        "https://127.0.0.1/powervirtualagents/botsbyschema/a/directline/token",
        "https://copilot.evil.example/powervirtualagents/botsbyschema/a/directline/token",
    ] {
        let mut config = proxy_config("https://directline.botframework.com");
        config.directline.token_endpoint = Some(endpoint.parse().expect("a URL"));
        let error = directline_proxy::start(config)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(
            error.contains("directline.token_endpoint")
                && error.contains("not a Power Platform host")
                && error.contains("directline.token_endpoint_hosts"),
            "{error}"
        );
    }
}

/// The proxy's own answer: 502 with Direct Line's `BadGateway` error.
fn assert_bad_gateway(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "BadGateway");
}

#[tokio::test]
async fn a_failing_token_endpoint_is_a_bad_gateway_and_never_a_hang() {
    let nowhere = dead_address().await;
    let (silent, _never_opened) = Endpoint::gated(|_| (StatusCode::OK, "{}".into())).await;
    let refusing = power_platform("http://127.0.0.1:9/".into(), json!({"token": ""})).await;
    let broken = Endpoint::answering(StatusCode::INTERNAL_SERVER_ERROR, "{}").await;
    for power_platform in [
        nowhere.clone(),
        silent.url(""),
        refusing.url(""),
        broken.url(""),
    ] {
        let mut config = proxy_config(&nowhere);
        copilot_agent(&mut config, &power_platform, &nowhere);
        config.upstream.request_timeout = std::time::Duration::from_millis(300);
        let proxy = directline_proxy::start(config).await.expect("proxy starts");
        let http = Http::plain();
        for path in [
            "/v3/directline/tokens/generate",
            "/v3/directline/conversations",
        ] {
            let asked = Instant::now();
            let reply = http
                .bare(Method::POST, &format!("{}{path}", proxy.base_url()))
                .await;
            assert_bad_gateway(&reply);
            assert!(asked.elapsed() < WAIT / 2, "{power_platform}{path}");
        }
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn agent_tokens_count_against_the_mint_quota() {
    let stack = agent_stack(|config| {
        config.directline.mint_burst = 1;
        config.directline.mint_rate_per_minute = 1;
    })
    .await;
    assert_eq!(generate_token(&stack).await.status, StatusCode::OK);
    let over = generate_token(&stack).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(over.headers.contains_key("retry-after"));
    assert_eq!(
        emulator_saw(&stack, Method::GET, "/powervirtualagents/botsbyschema/").len(),
        1
    );
    stack.shutdown().await;
}

/// Starts a conversation with `starter`'s session cookie, opens its stream
/// with `streamer`'s, and has the bot ask for a sign-in there.
async fn sign_in_on_stream(
    stack: &Stack,
    starter: &str,
    streamer: &str,
) -> (Conversation, crate::common::Ws) {
    let conversation = stack.start_conversation_as(&[("cookie", starter)]).await;
    let headers = [("origin", PAGE_ORIGIN), ("cookie", streamer)];
    let ws = ws_open(&conversation.stream_url, &headers)
        .await
        .expect("handshake");
    let asked = conversation.say(&stack.http, "signin exchange").await;
    assert_eq!(asked.status, StatusCode::OK);
    (conversation, ws)
}

/// An agent token is the conversation of whoever started it: the victim's
/// browser, made to open the attacker's stream, gets the card and spends
/// nothing; the victim's own conversation signs in.
#[tokio::test]
async fn an_agent_conversation_acts_only_for_the_user_who_started_it() {
    let provider = auth_api().await;
    let url = provider.url("/bot-token");
    let nowhere = dead_address().await;
    let emulator = directline_proxy::emulator::EmulatorConfig {
        accepted_sso_tokens: vec![VICTIM_TOKEN.into()],
        ..quiet_emulator()
    };
    let stack = Stack::start_with(emulator, |config| {
        cookie_provider(config, url);
        let emulator = config.upstream.url.to_string();
        copilot_agent(config, &emulator, &nowhere);
    })
    .await;

    let (attacker, mut victim_on_attackers) =
        sign_in_on_stream(&stack, ATTACKER_COOKIE, VICTIM_COOKIE).await;
    let card = loop {
        let set = next_activity_set(&mut victim_on_attackers).await;
        let activities = set["activities"].as_array().cloned().unwrap_or_default();
        if let Some(card) = activities.into_iter().find(is_oauth_card) {
            break card;
        }
    };
    assert!(is_oauth_card(&card));
    assert!(provider.seen().is_empty(), "nobody's credentials were read");
    assert!(stack.emulator.invokes_received(&attacker.id).is_empty());

    let (victim, mut own) = sign_in_on_stream(&stack, VICTIM_COOKIE, VICTIM_COOKIE).await;
    let seen = activities_until(&mut own, SIGNED_IN).await;
    assert!(!seen.iter().any(is_oauth_card));
    let invokes = stack.emulator.invokes_received(&victim.id);
    assert_eq!(invokes.len(), 1);
    assert_eq!(invokes[0]["value"]["token"], VICTIM_TOKEN);
    stack.shutdown().await;
}
