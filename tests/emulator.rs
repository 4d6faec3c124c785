//! The Direct Line emulator over real sockets: REST, stream and the
//! scripted bot, each test one behaviour.

use std::time::{Duration, Instant};

use bytes::Bytes;
use directline_proxy::emulator::{
    COLLISION_CLOSE_CODE, Emulator, EmulatorConfig, OAUTH_CARD, SIGNED_IN, WELCOME,
};
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(5);

struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

async fn emulator() -> Emulator {
    emulator_with(EmulatorConfig::default()).await
}

async fn emulator_with(config: EmulatorConfig) -> Emulator {
    Emulator::start(config).await.expect("emulator starts")
}

async fn call(
    em: &Emulator,
    method: Method,
    path: &str,
    auth: Option<&str>,
    content_type: Option<&str>,
    body: Bytes,
) -> Answer {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", em.base_url()));
    if let Some(auth) = auth {
        request = request.header(header::AUTHORIZATION, format!("Bearer {auth}"));
    }
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let response = client
        .request(request.body(Full::new(body)).unwrap())
        .await
        .expect("request");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer { status, body }
}

async fn get(em: &Emulator, path: &str, auth: Option<&str>) -> Answer {
    call(em, Method::GET, path, auth, None, Bytes::new()).await
}

async fn post(em: &Emulator, path: &str, auth: Option<&str>, body: &Value) -> Answer {
    let bytes = Bytes::from(body.to_string());
    call(
        em,
        Method::POST,
        path,
        auth,
        Some("application/json"),
        bytes,
    )
    .await
}

/// A started conversation: id, token and stream URL.
struct Conversation {
    id: String,
    token: String,
    stream_url: String,
}

async fn start(em: &Emulator) -> Conversation {
    let answer = post(
        em,
        "/v3/directline/conversations",
        Some(em.secret()),
        &json!({}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let body = answer.json();
    Conversation {
        id: body["conversationId"].as_str().unwrap().to_string(),
        token: body["token"].as_str().unwrap().to_string(),
        stream_url: body["streamUrl"].as_str().unwrap().to_string(),
    }
}

fn activities_path(conversation: &Conversation) -> String {
    format!(
        "/v3/directline/conversations/{}/activities",
        conversation.id
    )
}

async fn say(em: &Emulator, conversation: &Conversation, text: &str) -> Answer {
    let activity = json!({ "type": "message", "from": { "id": "dl_user" }, "text": text });
    post(
        em,
        &activities_path(conversation),
        Some(&conversation.token),
        &activity,
    )
    .await
}

async fn poll(em: &Emulator, conversation: &Conversation, watermark: Option<&str>) -> Value {
    let mut path = activities_path(conversation);
    if let Some(watermark) = watermark {
        path = format!("{path}?watermark={watermark}");
    }
    let answer = get(em, &path, Some(&conversation.token)).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.json()
}

fn texts(set: &Value) -> Vec<String> {
    set["activities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["text"].as_str().map(str::to_string))
        .collect()
}

async fn connect(url: &str) -> Ws {
    let (ws, response) = connect_async(url).await.expect("websocket connects");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// The next ActivitySet on the stream, skipping empty keep-alives.
async fn next_set(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a stream message in time")
            .expect("stream open")
            .expect("stream ok");
        match message {
            Message::Text(text) if text.is_empty() => continue,
            Message::Text(text) => return serde_json::from_str(&text).expect("ActivitySet JSON"),
            other => panic!("unexpected stream message {other:?}"),
        }
    }
}

/// The bot's OAuth card for `command`, as seen by polling.
async fn oauth_activity(em: &Emulator, conversation: &Conversation, command: &str) -> Value {
    assert_eq!(say(em, conversation, command).await.status, StatusCode::OK);
    let set = poll(em, conversation, None).await;
    set["activities"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

fn invoke(conversation_card: &Value, token: &str) -> Value {
    let content = &conversation_card["attachments"][0]["content"];
    json!({
        "type": "invoke",
        "name": "signin/tokenExchange",
        "from": { "id": "dl_user" },
        "value": {
            "id": content["tokenExchangeResource"]["id"],
            "connectionName": content["connectionName"],
            "token": token,
        }
    })
}

#[tokio::test]
async fn missing_or_malformed_authorization_is_401_with_directline_body() {
    let em = emulator().await;
    let answer = post(&em, "/v3/directline/conversations", None, &json!({})).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.json()["error"]["message"].is_string());
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("{}/v3/directline/conversations", em.base_url()))
        .header(header::AUTHORIZATION, format!("Basic {}", em.secret()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_token_and_other_conversation_token_are_403() {
    let em = emulator().await;
    let answer = post(
        &em,
        "/v3/directline/conversations",
        Some("nope"),
        &json!({}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(!answer.error_code().is_empty());
    let first = start(&em).await;
    let second = start(&em).await;
    let answer = get(&em, &activities_path(&second), Some(&first.token)).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn expired_token_is_403_token_expired() {
    let config = EmulatorConfig {
        token_ttl: Duration::ZERO,
        ..EmulatorConfig::default()
    };
    let em = emulator_with(config).await;
    let generated = post(
        &em,
        "/v3/directline/tokens/generate",
        Some(em.secret()),
        &json!({}),
    )
    .await;
    let token = generated.json()["token"].as_str().unwrap().to_string();
    let refreshed = post(
        &em,
        "/v3/directline/tokens/refresh",
        Some(&token),
        &json!({}),
    )
    .await;
    assert_eq!(refreshed.status, StatusCode::FORBIDDEN);
    assert_eq!(refreshed.error_code(), "TokenExpired");
}

#[tokio::test]
async fn generate_refresh_then_start_is_201_then_200() {
    let em = emulator().await;
    let generated = post(
        &em,
        "/v3/directline/tokens/generate",
        Some(em.secret()),
        &json!({}),
    )
    .await;
    assert_eq!(generated.status, StatusCode::OK);
    let body = generated.json();
    assert!(body["streamUrl"].is_null());
    assert_eq!(body["expires_in"], 1800);
    let conversation_id = body["conversationId"].as_str().unwrap();
    let token = body["token"].as_str().unwrap();

    let refreshed = post(
        &em,
        "/v3/directline/tokens/refresh",
        Some(token),
        &json!({}),
    )
    .await;
    assert_eq!(refreshed.status, StatusCode::OK);
    let refreshed = refreshed.json();
    assert_eq!(refreshed["conversationId"], conversation_id);
    let new_token = refreshed["token"].as_str().unwrap();
    assert_ne!(new_token, token);

    let path = "/v3/directline/conversations";
    let first = post(&em, path, Some(new_token), &json!({"user": {"id": "dl_a"}})).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.json()["conversationId"], conversation_id);
    assert!(
        first.json()["streamUrl"]
            .as_str()
            .unwrap()
            .starts_with("ws://")
    );
    let again = post(&em, path, Some(token), &json!({})).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["conversationId"], conversation_id);

    let with_token = post(
        &em,
        "/v3/directline/tokens/generate",
        Some(token),
        &json!({}),
    )
    .await;
    assert_eq!(with_token.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn token_generated_for_a_user_overwrites_from_id() {
    let em = emulator().await;
    let body = json!({ "user": { "id": "dl_bound" } });
    let generated = post(
        &em,
        "/v3/directline/tokens/generate",
        Some(em.secret()),
        &body,
    )
    .await;
    let token = generated.json()["token"].as_str().unwrap().to_string();
    let started = post(
        &em,
        "/v3/directline/conversations",
        Some(&token),
        &json!({}),
    )
    .await;
    let conversation = Conversation {
        id: started.json()["conversationId"]
            .as_str()
            .unwrap()
            .to_string(),
        token,
        stream_url: String::new(),
    };
    assert_eq!(say(&em, &conversation, "hi").await.status, StatusCode::OK);
    let set = poll(&em, &conversation, None).await;
    let user_activity = &set["activities"][1];
    assert_eq!(user_activity["from"]["id"], "dl_bound");
    assert_eq!(set["activities"][2]["recipient"]["id"], "dl_bound");
}

#[tokio::test]
async fn stream_token_is_rejected_on_rest_calls() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let stream_token = conversation.stream_url.split("t=").nth(1).unwrap();
    let answer = get(&em, &activities_path(&conversation), Some(stream_token)).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn start_logs_the_welcome_message() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let set = poll(&em, &conversation, None).await;
    assert_eq!(texts(&set), vec![WELCOME.to_string()]);
    assert_eq!(set["watermark"], "0");
    assert_eq!(
        set["activities"][0]["id"],
        format!("{}|0000000", conversation.id)
    );
}

#[tokio::test]
async fn polling_uses_string_watermarks_and_never_returns_typing() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let first = poll(&em, &conversation, None).await;
    let mark = first["watermark"].as_str().unwrap().to_string();
    assert_eq!(
        say(&em, &conversation, "sequence").await.status,
        StatusCode::OK
    );
    let after = poll(&em, &conversation, Some(&mark)).await;
    let activities = after["activities"].as_array().unwrap();
    assert!(activities.iter().all(|a| a["type"] != "typing"));
    assert_eq!(
        activities.len(),
        7,
        "the user's message and six bot messages"
    );
    assert_eq!(activities[2]["textFormat"], "markdown");
    assert!(
        activities[5]["attachments"][0]["contentType"]
            .as_str()
            .unwrap()
            .contains("adaptive")
    );
    assert!(activities[6]["suggestedActions"]["actions"].is_array());
    let last = after["watermark"].as_str().unwrap();
    let nothing_new = poll(&em, &conversation, Some(last)).await;
    assert_eq!(nothing_new["activities"], json!([]));
    assert_eq!(nothing_new["watermark"], last);
}

#[tokio::test]
async fn post_answers_only_after_the_bot_answered() {
    let config = EmulatorConfig {
        bot_delay: Duration::from_millis(300),
        ..EmulatorConfig::default()
    };
    let em = emulator_with(config).await;
    let conversation = start(&em).await;
    let began = Instant::now();
    let answer = say(&em, &conversation, "Hello there").await;
    assert!(began.elapsed() >= Duration::from_millis(300));
    assert_eq!(answer.status, StatusCode::OK);
    let id = answer.json()["id"].as_str().unwrap().to_string();
    assert_eq!(id, format!("{}|0000001", conversation.id));
    let set = poll(&em, &conversation, Some("0")).await;
    assert_eq!(texts(&set), vec!["Hello there", "You said: Hello there"]);
    assert_eq!(set["activities"][1]["replyToId"], id);
}

#[tokio::test]
async fn failing_bot_is_502_bot_error_with_its_status() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let answer = say(&em, &conversation, " FAIL ").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error_code(), "BotError");
    assert_eq!(answer.json()["httpStatusCode"], 500);
}

#[tokio::test]
async fn malformed_and_oversized_activities_are_rejected() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let path = activities_path(&conversation);
    let token = Some(conversation.token.as_str());
    let json_type = Some("application/json");
    let malformed = call(
        &em,
        Method::POST,
        &path,
        token,
        json_type,
        Bytes::from("{nope"),
    )
    .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.error_code(), "BadArgument");
    let huge = json!({ "type": "message", "text": "x".repeat(300_000) });
    let too_big = post(&em, &path, token, &huge).await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_big.error_code(), "MessageSizeTooBig");
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let em = emulator().await;
    let answer = get(&em, "/v3/directline/nothing/here", Some(em.secret())).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(!answer.error_code().is_empty());
    let answer = get(&em, "/v3/directline/conversations", Some(em.secret())).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!answer.error_code().is_empty());
}

#[tokio::test]
async fn large_reply_is_just_under_256k_characters() {
    let em = emulator().await;
    let conversation = start(&em).await;
    assert_eq!(
        say(&em, &conversation, "large").await.status,
        StatusCode::OK
    );
    let set = poll(&em, &conversation, Some("1")).await;
    let size = set["activities"][0].to_string().chars().count();
    assert!((245_000..256 * 1024).contains(&size), "size {size}");
}

#[tokio::test]
async fn oauth_card_is_shaped_like_botbuilders_oauth_prompt() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let card = oauth_activity(&em, &conversation, "signin").await;
    assert!(card.get("text").is_none());
    assert_eq!(card["inputHint"], "acceptingInput");
    assert!(card["replyToId"].is_string());
    let attachment = &card["attachments"][0];
    assert_eq!(attachment["contentType"], OAUTH_CARD);
    let content = &attachment["content"];
    assert_eq!(content["connectionName"], "AAD");
    assert_eq!(content["buttons"][0]["type"], "signin");
    assert!(content["buttons"][0].get("value").is_none());
    assert!(content["tokenExchangeResource"]["id"].is_string());
    assert_eq!(
        content["tokenExchangeResource"]["uri"],
        "api://emulator-bot/access_as_user"
    );
    let sas_url = content["tokenPostResource"]["sasUrl"].as_str().unwrap();
    assert!(sas_url.starts_with(&format!("{}/sas/", em.base_url())));

    let plain = oauth_activity(&em, &conversation, "signin plain").await;
    let content = &plain["attachments"][0]["content"];
    assert!(content.get("tokenExchangeResource").is_none());
    assert!(content.get("tokenPostResource").is_none());
    let link = content["buttons"][0]["value"].as_str().unwrap();
    assert!(link.starts_with("https://token.botframework.com/api/oauth/signin?signin="));

    let two = oauth_activity(&em, &conversation, "signin two").await;
    assert_eq!(two["attachments"].as_array().unwrap().len(), 2);
    let hero = oauth_activity(&em, &conversation, "signin hero").await;
    assert_eq!(
        hero["attachments"][1]["contentType"],
        "application/vnd.microsoft.card.hero"
    );
    let exchange = oauth_activity(&em, &conversation, "signin exchange").await;
    assert!(
        exchange["attachments"][0]["content"]
            .get("tokenPostResource")
            .is_none()
    );
    let text = oauth_activity(&em, &conversation, "signin text").await;
    assert!(text["attachments"].is_null());
    assert!(text["text"].as_str().unwrap().contains(OAUTH_CARD));
}

#[tokio::test]
async fn accepted_token_exchange_is_200_and_signs_in() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let card = oauth_activity(&em, &conversation, "signin").await;
    let exchange = invoke(&card, "demo-user-token");
    let answer = post(
        &em,
        &activities_path(&conversation),
        Some(&conversation.token),
        &exchange,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["id"], exchange["value"]["id"]);
    assert_eq!(body["connectionName"], "AAD");
    let set = poll(&em, &conversation, None).await;
    assert_eq!(texts(&set).last().unwrap(), SIGNED_IN);
    let invokes = em.invokes_received(&conversation.id);
    assert_eq!(invokes.len(), 1);
    assert_eq!(invokes[0]["value"]["token"], "demo-user-token");

    let again = post(
        &em,
        &activities_path(&conversation),
        Some(&conversation.token),
        &exchange,
    )
    .await;
    assert_eq!(again.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        again.json()["httpStatusCode"],
        501,
        "no prompt is waiting any more"
    );
}

#[tokio::test]
async fn rejected_token_exchange_is_502_with_412_and_keeps_the_prompt() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let path = activities_path(&conversation);
    let token = Some(conversation.token.as_str());
    let no_prompt = post(&em, &path, token, &invoke(&json!({}), "demo-user-token")).await;
    assert_eq!(no_prompt.json()["httpStatusCode"], 501);

    let card = oauth_activity(&em, &conversation, "signin").await;
    let rejected = post(&em, &path, token, &invoke(&card, "someone-else")).await;
    assert_eq!(rejected.status, StatusCode::BAD_GATEWAY);
    assert_eq!(rejected.error_code(), "BotError");
    assert_eq!(rejected.json()["httpStatusCode"], 412);

    let mut wrong_connection = invoke(&card, "demo-user-token");
    wrong_connection["value"]["connectionName"] = json!("Other");
    let answer = post(&em, &path, token, &wrong_connection).await;
    assert_eq!(answer.json()["httpStatusCode"], 400);

    let mut other_user = invoke(&card, "demo-user-token");
    other_user["from"]["id"] = json!("dl_someone_else");
    let answer = post(&em, &path, token, &other_user).await;
    assert_eq!(
        answer.json()["httpStatusCode"],
        412,
        "the wrong user is not signed in"
    );

    let accepted = post(&em, &path, token, &invoke(&card, "demo-user-token")).await;
    assert_eq!(accepted.status, StatusCode::OK);
}

#[tokio::test]
async fn token_post_signs_in_once() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let card = oauth_activity(&em, &conversation, "signin post").await;
    let sas_url = card["attachments"][0]["content"]["tokenPostResource"]["sasUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let sas_path = sas_url.strip_prefix(&em.base_url()).unwrap();

    let bad = post(&em, sas_path, None, &json!({ "token": "wrong" })).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    let missing = post(&em, sas_path, None, &json!({})).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let good = post(&em, sas_path, None, &json!({ "token": "demo-user-token" })).await;
    assert_eq!(good.status, StatusCode::OK);
    let set = poll(&em, &conversation, None).await;
    assert_eq!(texts(&set).last().unwrap(), SIGNED_IN);
    let again = post(&em, sas_path, None, &json!({ "token": "demo-user-token" })).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let unknown = post(
        &em,
        "/sas/unknown",
        None,
        &json!({ "token": "demo-user-token" }),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let posts = em.token_posts_received();
    assert_eq!(posts.len(), 5);
    assert_eq!(
        posts[2],
        (sas_path.to_string(), json!({ "token": "demo-user-token" }))
    );
}

#[tokio::test]
async fn stream_echoes_the_posted_activity_with_the_post_id() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let mut ws = connect(&conversation.stream_url).await;
    let replay = next_set(&mut ws).await;
    assert_eq!(texts(&replay), vec![WELCOME.to_string()]);
    let activity = json!({
        "type": "message", "from": {"id": "dl_user"}, "text": "ping",
        "channelData": { "clientActivityID": "client-1" }
    });
    let answer = post(
        &em,
        &activities_path(&conversation),
        Some(&conversation.token),
        &activity,
    )
    .await;
    let id = answer.json()["id"].clone();
    let echo = next_set(&mut ws).await;
    assert_eq!(echo["activities"][0]["id"], id);
    assert_eq!(
        echo["activities"][0]["channelData"]["clientActivityID"],
        "client-1"
    );
    assert_eq!(echo["activities"][0]["recipient"]["id"], "emulator-bot");
    assert_eq!(echo["watermark"], "1");
    let reply = next_set(&mut ws).await;
    assert_eq!(texts(&reply), vec!["You said: ping"]);
    assert_eq!(reply["watermark"], "2");
}

#[tokio::test]
async fn stream_sends_typing_without_a_watermark() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let mut ws = connect(&conversation.stream_url).await;
    next_set(&mut ws).await;
    say(&em, &conversation, "sequence").await;
    next_set(&mut ws).await; // the echo
    let typing = next_set(&mut ws).await;
    assert_eq!(typing["activities"][0]["type"], "typing");
    assert!(typing.get("watermark").is_none());
}

#[tokio::test]
async fn stream_replays_only_what_follows_the_watermark() {
    let em = emulator().await;
    let conversation = start(&em).await;
    say(&em, &conversation, "one").await;
    let reconnect_path = format!(
        "/v3/directline/conversations/{}?watermark=0",
        conversation.id
    );
    let reconnect = get(&em, &reconnect_path, Some(&conversation.token)).await;
    assert_eq!(reconnect.status, StatusCode::OK);
    let body = reconnect.json();
    assert!(body["token"].is_string());
    let stream_url = body["streamUrl"].as_str().unwrap();
    assert!(stream_url.contains("watermark=0"));
    let mut ws = connect(stream_url).await;
    let replay = next_set(&mut ws).await;
    assert_eq!(texts(&replay), vec!["one", "You said: one"]);
    assert_eq!(replay["watermark"], "2");
}

#[tokio::test]
async fn stream_rejects_unknown_tokens_before_upgrading() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let bad = format!(
        "ws://{}/v3/directline/conversations/{}/stream?t=bogus",
        em.addr(),
        conversation.id
    );
    match connect_async(bad).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    let other = start(&em).await;
    let foreign = conversation.stream_url.replace(&conversation.id, &other.id);
    assert!(connect_async(foreign).await.is_err());
}

#[tokio::test]
async fn newer_socket_closes_the_older_with_collision() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let mut first = connect(&conversation.stream_url).await;
    next_set(&mut first).await;
    let mut second = connect(&conversation.stream_url).await;
    let closed = tokio::time::timeout(WAIT, first.next()).await.unwrap();
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), COLLISION_CLOSE_CODE);
            assert_eq!(frame.reason.as_str(), "collision");
        }
        other => panic!("expected a collision close, got {other:?}"),
    }
    assert_eq!(
        texts(&next_set(&mut second).await),
        vec![WELCOME.to_string()]
    );
}

#[tokio::test]
async fn stream_sends_empty_keepalives() {
    let config = EmulatorConfig {
        keepalive_interval: Some(Duration::from_millis(50)),
        ..EmulatorConfig::default()
    };
    let em = emulator_with(config).await;
    let conversation = start(&em).await;
    let mut ws = connect(&conversation.stream_url).await;
    let mut empties = 0;
    while empties < 2 {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) if text.is_empty() => empties += 1,
            Some(Ok(Message::Text(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn client_messages_are_recorded_and_raw_messages_can_be_pushed() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let mut ws = connect(&conversation.stream_url).await;
    next_set(&mut ws).await;
    ws.send(Message::text("")).await.unwrap();
    ws.send(Message::Ping(Bytes::from_static(b"hi")))
        .await
        .unwrap();
    ws.send(Message::Binary(Bytes::from_static(b"\x01")))
        .await
        .unwrap();
    match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
        Some(Ok(Message::Pong(payload))) => assert_eq!(&payload[..], b"hi"),
        other => panic!("expected a pong, got {other:?}"),
    }
    let received = em.stream_messages_received(&conversation.id);
    assert_eq!(received[0], Message::text(""));
    assert_eq!(received[1], Message::Ping(Bytes::from_static(b"hi")));
    assert_eq!(received[2], Message::Binary(Bytes::from_static(b"\x01")));

    let pushed = Message::text("{\"unknown\":true}");
    assert!(
        em.send_stream_message(&conversation.id, pushed.clone())
            .await
    );
    assert_eq!(ws.next().await.unwrap().unwrap(), pushed);
    assert!(!em.send_stream_message("no-such-conversation", pushed).await);
}

#[tokio::test]
async fn drop_streams_closes_without_a_close_frame() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let mut ws = connect(&conversation.stream_url).await;
    next_set(&mut ws).await;
    em.drop_streams();
    match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
        None | Some(Err(_)) => {}
        Some(Ok(message)) => panic!("expected an abrupt end, got {message:?}"),
    }
    assert!(
        !em.send_stream_message(&conversation.id, Message::text("x"))
            .await
    );
}

#[tokio::test]
async fn multimodal_stream_posts_activities_sent_by_the_client() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let url = conversation
        .stream_url
        .replace("/stream?", "/stream/multimodal?");
    let mut ws = connect(&url).await;
    next_set(&mut ws).await;
    let activity = json!({ "type": "message", "from": {"id": "dl_user"}, "text": "voice" });
    ws.send(Message::text(activity.to_string())).await.unwrap();
    assert_eq!(texts(&next_set(&mut ws).await), vec!["voice"]);
    assert_eq!(texts(&next_set(&mut ws).await), vec!["You said: voice"]);
}

#[tokio::test]
async fn raw_upload_becomes_an_attachment() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let path = format!(
        "/v3/directline/conversations/{}/upload?userId=dl_user",
        conversation.id
    );
    let token = Some(conversation.token.as_str());
    let answer = call(
        &em,
        Method::POST,
        &path,
        token,
        Some("text/plain"),
        Bytes::from("hello"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.json()["id"].is_string());
    let set = poll(&em, &conversation, Some("0")).await;
    let uploaded = &set["activities"][0];
    assert_eq!(uploaded["from"]["id"], "dl_user");
    let attachment = &uploaded["attachments"][0];
    assert_eq!(attachment["contentType"], "text/plain");
    let url = attachment["contentUrl"].as_str().unwrap();
    let file = get(&em, url.strip_prefix(&em.base_url()).unwrap(), None).await;
    assert_eq!(&file.body[..], b"hello");
    assert_eq!(texts(&set), vec!["Received 1 attachment(s): file1"]);
}

#[tokio::test]
async fn multipart_upload_carries_the_activity_and_files() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let path = format!(
        "/v3/directline/conversations/{}/upload?userId=dl_user",
        conversation.id
    );
    let body = "--BOUNDARY\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
Content-Type: text/plain\r\n\r\nalpha\r\n\
--BOUNDARY\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"b.bin\"\r\n\
Content-Type: application/octet-stream\r\n\r\n\x00\x01\r\n\
--BOUNDARY\r\n\
Content-Disposition: form-data; name=\"activity\"\r\n\
Content-Type: application/vnd.microsoft.activity\r\n\r\n\
{\"type\":\"message\",\"from\":{\"id\":\"dl_user\"},\"text\":\"two files\"}\r\n\
--BOUNDARY--\r\n";
    let content_type = Some("multipart/form-data; boundary=BOUNDARY");
    let token = Some(conversation.token.as_str());
    let answer = call(
        &em,
        Method::POST,
        &path,
        token,
        content_type,
        Bytes::from(body),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let set = poll(&em, &conversation, Some("0")).await;
    let uploaded = &set["activities"][0];
    assert_eq!(uploaded["text"], "two files");
    let names: Vec<&str> = uploaded["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a.txt", "b.bin"]);
    assert_eq!(texts(&set)[1], "You said: two files");
}

#[tokio::test]
async fn session_id_is_a_json_string() {
    let em = emulator().await;
    let conversation = start(&em).await;
    let answer = get(
        &em,
        "/v3/directline/session/getsessionid",
        Some(&conversation.token),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.json().is_string());
}

#[tokio::test]
async fn every_request_is_recorded_in_order() {
    let em = emulator().await;
    let conversation = start(&em).await;
    say(&em, &conversation, "hi").await;
    let requests = em.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].path_and_query, "/v3/directline/conversations");
    assert_eq!(requests[1].method, Method::POST);
    let body: Value = serde_json::from_slice(&requests[1].body).unwrap();
    assert_eq!(body["text"], "hi");
    assert!(requests[1].headers.contains_key(header::AUTHORIZATION));
    em.shutdown().await;
}

#[tokio::test]
async fn cors_preflight_and_origin_are_answered() {
    let em = emulator().await;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = Request::builder()
        .method(Method::OPTIONS)
        .uri(format!("{}/v3/directline/conversations", em.base_url()))
        .header(header::ORIGIN, "http://chat.example")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "http://chat.example"
    );
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_HEADERS],
        "authorization"
    );
}

#[tokio::test]
async fn shutdown_closes_open_streams_and_stops_listening() {
    let em = emulator().await;
    let addr = em.addr();
    let conversation = start(&em).await;
    let mut ws = connect(&conversation.stream_url).await;
    next_set(&mut ws).await;
    let closing = tokio::spawn(async move {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(frame)))) => u16::from(frame.code),
            other => panic!("expected a close frame, got {other:?}"),
        }
    });
    em.shutdown().await;
    assert_eq!(closing.await.unwrap(), 1001);
    assert!(TcpStream::connect(addr).await.is_err());
}

fn rough() -> EmulatorConfig {
    EmulatorConfig {
        rough: true,
        keepalive_interval: None,
        ..EmulatorConfig::default()
    }
}

/// A request with extra headers; the answer's headers and raw body.
async fn raw_call(
    em: &Emulator,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (http::HeaderMap, Bytes) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", em.base_url()))
        .header(header::AUTHORIZATION, format!("Bearer {}", em.secret()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body.to_string())));
    let response = client.request(request.unwrap()).await.expect("request");
    let headers = response.headers().clone();
    (
        headers,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn rough_answers_are_indented_with_escaped_slashes() {
    let em = emulator_with(rough()).await;
    let (headers, body) =
        raw_call(&em, Method::POST, "/v3/directline/conversations", &[], "").await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.starts_with("{\r\n  \""), "{text}");
    assert!(text.contains("\"streamUrl\": \"ws:\\/\\/"), "{text}");
    assert!(!text.contains("ws://"), "{text}");
    assert!(!headers.contains_key(header::CONTENT_ENCODING));
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert!(answer["streamUrl"].as_str().unwrap().starts_with("ws://"));
}

#[tokio::test]
async fn a_compliant_emulator_answers_on_one_line() {
    let em = emulator().await;
    let (_, body) = raw_call(
        &em,
        Method::POST,
        "/v3/directline/conversations",
        &[("accept-encoding", "gzip")],
        "",
    )
    .await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.starts_with("{\"") && text.contains("ws://") && !text.contains('\n'));
}

#[tokio::test]
async fn rough_answers_are_gzipped_only_when_the_client_accepts_it() {
    use std::io::Read;
    let em = emulator_with(rough()).await;
    let path = "/v3/directline/tokens/generate";
    let (headers, body) =
        raw_call(&em, Method::POST, path, &[("accept-encoding", "gzip")], "").await;
    assert_eq!(headers[header::CONTENT_ENCODING], "gzip");
    assert_eq!(headers[header::VARY], "Accept-Encoding");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .expect("a gzip body");
    assert!(text.starts_with("{\r\n"), "{text}");
    assert!(serde_json::from_str::<Value>(&text).unwrap()["token"].is_string());

    let (headers, body) = raw_call(
        &em,
        Method::POST,
        path,
        &[("accept-encoding", "gzip;q=0")],
        "",
    )
    .await;
    assert!(!headers.contains_key(header::CONTENT_ENCODING));
    assert!(serde_json::from_slice::<Value>(&body).is_ok());
}

#[tokio::test]
async fn a_rough_stream_writes_the_oauth_content_type_escaped() {
    let em = emulator_with(rough()).await;
    let conversation = start(&em).await;
    let mut ws = connect(&conversation.stream_url).await;
    next_set(&mut ws).await;
    assert_eq!(
        say(&em, &conversation, "signin").await.status,
        StatusCode::OK
    );
    let card_text = loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("stream ok");
        let Message::Text(text) = message else {
            panic!("unexpected {message:?}")
        };
        if text.contains("card.oauth") {
            break text.to_string();
        }
    };
    assert!(card_text.contains("\"contentType\": \"application\\/vnd.microsoft.card.oauth\""));
    assert!(!card_text.contains(OAUTH_CARD));
    assert!(
        card_text.starts_with("{\r\n  \"activities\": [\r\n"),
        "{card_text}"
    );
}

#[tokio::test]
async fn a_rough_handshake_accepts_permessage_deflate_only_when_offered() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let em = emulator_with(rough()).await;
    let conversation = start(&em).await;
    let mut request = conversation
        .stream_url
        .as_str()
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_EXTENSIONS,
        "permessage-deflate; client_max_window_bits"
            .parse()
            .unwrap(),
    );
    let (_, response) = connect_async(request).await.expect("websocket connects");
    assert_eq!(
        response.headers()[header::SEC_WEBSOCKET_EXTENSIONS],
        "permessage-deflate"
    );

    let reconnect = get(
        &em,
        &format!("/v3/directline/conversations/{}", conversation.id),
        Some(&conversation.token),
    )
    .await;
    let url = reconnect.json()["streamUrl"].as_str().unwrap().to_string();
    let (_, response) = connect_async(url).await.expect("websocket connects");
    assert!(
        !response
            .headers()
            .contains_key(header::SEC_WEBSOCKET_EXTENSIONS)
    );
}

#[tokio::test]
async fn a_rough_conversation_started_without_a_user_gets_a_guid() {
    let em = emulator_with(rough()).await;
    let conversation = start(&em).await;
    let anonymous = json!({ "type": "message", "text": "who am I" });
    let path = activities_path(&conversation);
    let answer = post(&em, &path, Some(&conversation.token), &anonymous).await;
    assert_eq!(answer.status, StatusCode::OK);
    let set = poll(&em, &conversation, None).await;
    let welcome_to = set["activities"][0]["recipient"]["id"].as_str().unwrap();
    let sent_by = set["activities"][1]["from"]["id"].as_str().unwrap();
    assert_eq!(welcome_to, sent_by);
    assert_eq!(sent_by.len(), 36, "{sent_by}");
    assert!(!sent_by.starts_with("dl_"), "{sent_by}");
}
