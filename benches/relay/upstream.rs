//! A minimal, fast Direct Line-shaped upstream (`relay upstream`), so the
//! benchmark measures the hop and not the bot service behind it.
//!
//! - `POST /v3/directline/conversations`: `201 {conversationId, token,
//!   expires_in, streamUrl}`, the `streamUrl` a `ws://` URL at this process;
//! - `GET .../activities?watermark=`: a small fixed ActivitySet;
//! - `POST .../activities`: `{id}`; `signin` asks for an OAuth card on the
//!   stream, a `signin/tokenExchange` invoke is answered and followed by a
//!   `bench signed in` message on the stream;
//! - `GET .../stream?t=..&mode=..`: the WebSocket stream, whose behaviour the
//!   load generator picks: `echo` (every frame back), `firehose&n=N` (after
//!   the client's first frame, N text frames of 600 bytes shaped like
//!   ActivitySets), `idle` (nothing), `sso` (frames on request, as above);
//! - `POST /bot-token`: the token provider the proxy's `http` provider calls;
//! - `GET /bench/sso`: and resets what the SSO workload measured here.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::BoxError;

/// Size of each firehose frame, bytes.
pub const FIREHOSE_FRAME_BYTES: usize = 600;
/// The text of the activity that ends a sign-in.
pub const SIGNED_IN: &str = "bench signed in";
/// The token the provider hands out.
const USER_TOKEN: &str = "bench-user-token";
/// The conversation's user, the recipient of the bot's cards.
pub const USER_ID: &str = "bench-user";

const OAUTH_CARD: &str = "application/vnd.microsoft.card.oauth";

/// What a conversation in `sso` mode needs: its stream, and when its
/// current card went out.
struct SsoConversation {
    stream: mpsc::UnboundedSender<Outbound>,
    card_sent: Option<Instant>,
    provider_time: std::time::Duration,
    cards: u64,
}

enum Outbound {
    Card(Message),
    Plain(Message),
}

#[derive(Default)]
struct State {
    port: u16,
    next: AtomicU64,
    sso: Mutex<HashMap<String, SsoConversation>>,
    /// Card sent to invoke received, minus the provider's handling, µs.
    decision_us: Mutex<Vec<u64>>,
    provider_us: Mutex<Vec<u64>>,
}

type Body = Full<Bytes>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Serves until stdin closes (the harness went away) and prints
/// `listening PORT` first.
pub async fn run() -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let state = Arc::new(State {
        port,
        ..State::default()
    });
    println!("listening {port}");
    crate::exit_when_stdin_closes();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// The fixed answer to every poll: two short activities.
fn poll_body() -> Bytes {
    static BODY: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BODY.get_or_init(|| {
        let activity = |n: u32, text: &str| {
            json!({
                "type": "message", "id": format!("bench|{n:07}"),
                "timestamp": "2026-01-01T00:00:00.0000000Z", "channelId": "directline",
                "from": {"id": "bench-bot", "name": "Bench Bot", "role": "bot"},
                "conversation": {"id": "bench"}, "replyToId": "bench|0000000",
                "text": text,
            })
        };
        let set = json!({
            "activities": [activity(1, "Hello from the bench bot."), activity(2, "How can I help?")],
            "watermark": "2",
        });
        Bytes::from(set.to_string())
    })
    .clone()
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    if method == Method::GET && path == "/bench/sso" {
        let decision = std::mem::take(&mut *lock(&state.decision_us));
        let provider = std::mem::take(&mut *lock(&state.provider_us));
        let body = json!({"decision_us": decision, "provider_us": provider});
        return json_response(StatusCode::OK, body.to_string());
    }
    if method == Method::POST && path == "/bot-token" {
        return provider(&state, request).await;
    }
    let Some(rest) = path.strip_prefix("/v3/directline/conversations") else {
        return json_response(StatusCode::NOT_FOUND, "{}");
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (&method, segments.as_slice()) {
        (&Method::POST, []) => start(&state),
        (&Method::GET, [_, "activities"]) => json_response(StatusCode::OK, poll_body()),
        (&Method::POST, [id, "activities"]) => {
            let id = id.to_string();
            post_activity(&state, &id, request).await
        }
        (&Method::GET, [id, "stream"]) => {
            let id = id.to_string();
            stream(state, &id, request)
        }
        _ => json_response(StatusCode::NOT_FOUND, "{}"),
    }
}

fn start(state: &State) -> Response<Body> {
    let n = state.next.fetch_add(1, Ordering::Relaxed);
    let id = format!("bench{n:08}");
    let body = json!({
        "conversationId": id,
        "token": format!("conversation-token-{id}"),
        "expires_in": 3600,
        "streamUrl": format!(
            "ws://127.0.0.1:{}/v3/directline/conversations/{id}/stream?t=stream-token-{id}",
            state.port
        ),
        "referenceGrammarId": "bench",
    });
    json_response(StatusCode::CREATED, body.to_string())
}

async fn provider(state: &State, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let Ok(body) = request.into_body().collect().await else {
        return json_response(StatusCode::BAD_REQUEST, "{}");
    };
    let conversation = serde_json::from_slice::<Value>(&body.to_bytes())
        .ok()
        .and_then(|v| v["conversationId"].as_str().map(str::to_string))
        .unwrap_or_default();
    let response = json_response(StatusCode::OK, json!({ "token": USER_TOKEN }).to_string());
    let took = started.elapsed();
    if let Some(conversation) = lock(&state.sso).get_mut(&conversation) {
        conversation.provider_time += took;
    }
    lock(&state.provider_us).push(took.as_micros() as u64);
    response
}

async fn post_activity(state: &State, id: &str, request: Request<Incoming>) -> Response<Body> {
    let received = Instant::now();
    let Ok(body) = request.into_body().collect().await else {
        return json_response(StatusCode::BAD_REQUEST, "{}");
    };
    let activity: Value = serde_json::from_slice(&body.to_bytes()).unwrap_or(Value::Null);
    let mut conversations = lock(&state.sso);
    if let Some(conversation) = conversations.get_mut(id) {
        if activity["name"] == "signin/tokenExchange" {
            if let Some(sent) = conversation.card_sent.take() {
                let waited = received.saturating_duration_since(sent);
                let decision =
                    waited.saturating_sub(std::mem::take(&mut conversation.provider_time));
                lock(&state.decision_us).push(decision.as_micros() as u64);
            }
            let done = activity_set(
                id,
                conversation.cards,
                json!({"type": "message", "text": SIGNED_IN}),
            );
            let _ = conversation.stream.send(Outbound::Plain(done));
        } else if activity["text"] == "signin" {
            conversation.cards += 1;
            let card = oauth_card(id, conversation.cards);
            let _ = conversation.stream.send(Outbound::Card(card));
        }
    }
    drop(conversations);
    json_response(
        StatusCode::OK,
        json!({ "id": format!("{id}|post") }).to_string(),
    )
}

/// One bot activity in a set, as Direct Line frames it.
fn activity_set(id: &str, n: u64, mut activity: Value) -> Message {
    activity["id"] = json!(format!("{id}|{n:07}"));
    activity["channelId"] = json!("directline");
    activity["from"] = json!({"id": "bench-bot", "name": "Bench Bot", "role": "bot"});
    activity["recipient"] = json!({"id": USER_ID});
    activity["conversation"] = json!({"id": id});
    let set = json!({"activities": [activity], "watermark": n.to_string()});
    Message::Text(set.to_string().into())
}

/// An OAuth card as botbuilder's OAuthPrompt sends it, with a fresh id so
/// that every sign-in is decided (the proxy exchanges a card id once).
fn oauth_card(id: &str, n: u64) -> Message {
    let card_id = format!("{id}-card-{n}");
    activity_set(
        id,
        n,
        json!({
            "type": "message",
            "attachments": [{
                "contentType": OAUTH_CARD,
                "content": {
                    "text": "Please sign in to continue.",
                    "connectionName": "AAD",
                    "buttons": [{
                        "type": "signin", "title": "Sign in",
                        "value": format!("https://token.botframework.com/api/oauth/signin?signin={card_id}"),
                    }],
                    "tokenExchangeResource": {
                        "id": card_id,
                        "uri": "api://bench-bot/access_as_user",
                        "providerId": "30dd229c-58e3-4a48-bdfd-91ec48eb906c",
                    },
                },
            }],
        }),
    )
}

/// The firehose's frames: ActivitySets of exactly [`FIREHOSE_FRAME_BYTES`],
/// made once; frame `n` is `frames[n % len]`.
pub fn firehose_frames() -> Vec<Message> {
    (0..64)
        .map(|n| {
            let head = format!(
                r#"{{"activities":[{{"type":"message","id":"bench|{n:07}","channelId":"directline","from":{{"id":"bench-bot","role":"bot"}},"text":""#
            );
            let tail = format!(r#""}}],"watermark":"{n:07}"}}"#);
            let pad = FIREHOSE_FRAME_BYTES - head.len() - tail.len();
            Message::Text(format!("{head}{}{tail}", "x".repeat(pad)).into())
        })
        .collect()
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn stream(state: Arc<State>, id: &str, mut request: Request<Incoming>) -> Response<Body> {
    let Some(key) = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return json_response(StatusCode::BAD_REQUEST, "{}");
    };
    let query = request.uri().query().unwrap_or_default().to_string();
    let mode = query_param(&query, "mode").unwrap_or("idle").to_string();
    let frames: u64 = query_param(&query, "n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let id = id.to_string();
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        match mode.as_str() {
            "echo" => echo(ws).await,
            "firehose" => firehose(ws, frames).await,
            "sso" => sso(state, id, ws).await,
            _ => idle(ws).await,
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

async fn echo(mut ws: Socket) {
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            return;
        }
    }
}

async fn firehose(mut ws: Socket, frames: u64) {
    let pool = firehose_frames();
    // Wait for the client's go.
    match ws.next().await {
        Some(Ok(message)) if message.is_text() => {}
        _ => return,
    }
    for n in 0..frames {
        if ws
            .feed(pool[(n % pool.len() as u64) as usize].clone())
            .await
            .is_err()
        {
            return;
        }
    }
    if ws.flush().await.is_err() {
        return;
    }
    idle(ws).await;
}

async fn idle(mut ws: Socket) {
    while let Some(Ok(_)) = ws.next().await {}
}

async fn sso(state: Arc<State>, id: String, ws: Socket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    lock(&state.sso).insert(
        id.clone(),
        SsoConversation {
            stream: tx,
            card_sent: None,
            provider_time: std::time::Duration::ZERO,
            cards: 0,
        },
    );
    let (mut sink, mut source) = ws.split();
    let reader = async { while let Some(Ok(_)) = source.next().await {} };
    let writer = async {
        while let Some(outbound) = rx.recv().await {
            let message = match outbound {
                Outbound::Card(message) => {
                    if let Some(conversation) = lock(&state.sso).get_mut(&id) {
                        conversation.card_sent = Some(Instant::now());
                        conversation.provider_time = std::time::Duration::ZERO;
                    }
                    message
                }
                Outbound::Plain(message) => message,
            };
            if sink.send(message).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
    lock(&state.sso).remove(&id);
}
