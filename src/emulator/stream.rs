//! The WebSocket stream: `GET /conversations/{id}/stream?t=...&watermark=W`
//! and `.../stream/multimodal`.
//!
//! The handshake is authorised by the `t=` stream token (403 if unknown,
//! expired or for another conversation); without `t=`, an `Authorization`
//! bearer (secret or that conversation's token) is accepted too. After the
//! 101, the stream replays the activities after W as one ActivitySet, then
//! sends each new activity as its own ActivitySet, plus `""` keep-alives.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::activity;
use super::auth::{self, TokenKind};
use super::conversation::{Conversation, Outbound};
use super::error::ApiError;
use super::respond::{self, Body, query_param};
use super::rough;
use super::state::{EmulatorState, lock};

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// What an accepted handshake hands to the socket task.
struct Accepted {
    conversation: Arc<Conversation>,
    multimodal: bool,
    bound_user: Option<String>,
    /// The stream's slot in the conversation, installed before the 101 so
    /// that nothing appended after the handshake can be missed.
    generation: u64,
}

type Outbox = mpsc::UnboundedReceiver<Outbound>;

/// Checks the handshake and answers 101, or an error body before upgrading.
pub fn handshake(
    state: &Arc<EmulatorState>,
    parts: Parts,
    conversation_id: &str,
    multimodal: bool,
) -> Response<Body> {
    let query = parts.uri.query().map(str::to_string);
    let extension = state
        .config
        .rough
        .then(|| rough::extension_answer(&parts.headers))
        .flatten();
    let checked = check_upgrade(&parts.headers).and_then(|key| {
        let bound_user = authorise(state, &parts.headers, query.as_deref(), conversation_id)?;
        let conversation = state
            .conversation(conversation_id)
            .ok_or_else(|| ApiError::not_found("Conversation not found"))?;
        let watermark = respond::watermark(query.as_deref())?;
        let (tx, outbox) = mpsc::unbounded_channel();
        let generation = conversation.attach_stream(tx, watermark);
        let accepted = Accepted {
            conversation,
            multimodal,
            bound_user,
            generation,
        };
        Ok((key, accepted, outbox))
    });
    let (key, accepted, outbox) = match checked {
        Ok(ok) => ok,
        Err(err) => return respond::error(&err),
    };
    let request = Request::from_parts(parts, ());
    spawn_socket(state, request, accepted, outbox);
    let mut response = switching_protocols(&key);
    if let Some(extension) = extension {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_EXTENSIONS, extension);
    }
    response
}

/// The `Sec-WebSocket-Key` of a valid upgrade request.
fn check_upgrade(headers: &HeaderMap) -> Result<String, ApiError> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(ApiError::bad_argument(
            "This endpoint only accepts WebSocket upgrades",
        ));
    }
    if !has(header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(ApiError::bad_argument("Unsupported WebSocket version"));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_argument("Missing Sec-WebSocket-Key"))
}

/// Authorises the handshake; returns the user id bound to the credential.
fn authorise(
    state: &EmulatorState,
    headers: &HeaderMap,
    query: Option<&str>,
    conversation_id: &str,
) -> Result<Option<String>, ApiError> {
    let Some(token) = query_param(query, "t") else {
        let tokens = lock(&state.tokens);
        let caller = auth::authenticate(headers, &state.config.secret, &tokens)?;
        caller.check_conversation(conversation_id)?;
        return Ok(caller.bound_user().map(str::to_string));
    };
    let tokens = lock(&state.tokens);
    let grant = tokens
        .lookup(&token)
        .filter(|g| g.kind == TokenKind::Stream)
        .ok_or_else(|| ApiError::forbidden("Unknown stream token"))?;
    if grant.is_expired() {
        return Err(ApiError::token_expired());
    }
    if grant.conversation_id != conversation_id {
        return Err(ApiError::forbidden(
            "Stream token is not valid for this conversation",
        ));
    }
    Ok(grant.user_id.clone())
}

fn switching_protocols(key: &str) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

fn spawn_socket(
    state: &Arc<EmulatorState>,
    mut request: Request<()>,
    accepted: Accepted,
    outbox: Outbox,
) {
    let state_for_task = state.clone();
    let task = async move {
        let Ok(upgraded) = hyper::upgrade::on(&mut request).await else {
            accepted.conversation.detach_stream(accepted.generation);
            return;
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        run(state_for_task, socket, accepted, outbox).await;
    };
    let mut tasks = lock(&state.stream_tasks);
    while tasks.try_join_next().is_some() {}
    tasks.spawn(task);
}

/// Serves one socket until either side closes it or it is aborted.
async fn run(state: Arc<EmulatorState>, socket: Socket, accepted: Accepted, mut outbox: Outbox) {
    let conversation = accepted.conversation.clone();
    let (mut sink, mut source) = socket.split();
    let mut keepalive = state.config.keepalive_interval.map(keepalive_timer);
    loop {
        tokio::select! {
            outbound = outbox.recv() => match outbound {
                Some(Outbound::Send(message, ack)) => {
                    let ok = sink.send(message).await.is_ok();
                    if let Some(ack) = ack {
                        let _ = ack.send(ok);
                    }
                    if !ok {
                        break;
                    }
                }
                Some(Outbound::Abort) | None => break,
            },
            incoming = source.next() => match incoming {
                Some(Ok(message)) => on_client_message(&state, &accepted, message),
                Some(Err(_)) | None => break,
            },
            () = tick(&mut keepalive) => {
                if sink.send(Message::text("")).await.is_err() {
                    break;
                }
            }
        }
    }
    conversation.detach_stream(accepted.generation);
}

fn keepalive_timer(period: Duration) -> Interval {
    let period = period.max(Duration::from_millis(1));
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// Waits for the next keep-alive tick, or forever when keep-alives are off.
async fn tick(timer: &mut Option<Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Records what the client sent; on `/stream/multimodal`, a text message
/// holding an activity is posted like a REST POST. Empty text is ignored.
fn on_client_message(state: &Arc<EmulatorState>, accepted: &Accepted, message: Message) {
    let conversation = &accepted.conversation;
    conversation.record_received(message.clone());
    let Message::Text(text) = message else { return };
    if !accepted.multimodal || text.trim().is_empty() {
        return;
    }
    let Ok(activity) = activity::parse(text.as_bytes()) else {
        tracing::debug!(conversation = %conversation.id, "ignoring a non-activity text message");
        return;
    };
    let state = state.clone();
    let conversation = conversation.clone();
    let bound_user = accepted.bound_user.clone();
    tokio::spawn(async move {
        let _ = activity::post(&state, &conversation, activity, bound_user.as_deref()).await;
    });
}
