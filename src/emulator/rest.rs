//! The HTTP side: routing every request, recording it, and the REST calls
//! of Direct Line 3.0 under `/v3/directline` (plus `/sas/{id}` for token
//! posts). Unknown paths are 404 and known paths with another method 405,
//! both with Direct Line error bodies.

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::RecordedRequest;
use super::activity;
use super::auth::{self, Caller, TokenKind};
use super::bot;
use super::conversation::Conversation;
use super::copilot;
use super::error::ApiError;
use super::respond::{self, Body, optional_json, query_param, watermark};
use super::rough;
use super::sas;
use super::state::{EmulatorState, MAX_RECORDED_BODY, lock};
use super::stream;
use super::tokens::{issue, token_answer};
use super::upload;

/// Every endpoint the emulator serves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Generate,
    Refresh,
    Start,
    Reconnect(String),
    Poll(String),
    Post(String),
    Upload(String),
    Stream(String, bool),
    SessionId,
    Attachment(String),
    TokenPost(String),
    AgentToken,
    RegionalChannelSettings,
}

/// Serves one HTTP request, with CORS like the real service (browsers
/// talk to Direct Line directly, so preflights must succeed).
pub async fn handle(
    state: Arc<EmulatorState>,
    request: hyper::Request<Incoming>,
) -> Response<Body> {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let rough_request = state.config.rough.then(|| request.headers().clone());
    let mut response = if request.method() == Method::OPTIONS {
        let (parts, _) = request.into_parts();
        record(&state, &parts, &Bytes::new());
        preflight(&parts)
    } else {
        serve(state, request).await
    };
    if let Some(origin) = origin {
        allow_origin(&mut response, origin);
    }
    match rough_request {
        Some(headers) if response.status() != StatusCode::SWITCHING_PROTOCOLS => {
            rough::finish(response, &headers).await
        }
        _ => response,
    }
}

/// Answers a CORS preflight: every method and requested header is allowed.
fn preflight(parts: &Parts) -> Response<Body> {
    let mut response = Response::new(Body::default());
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    if let Some(requested) = parts.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

/// Echoes the origin with credentials allowed (`getsessionid` is sent with
/// credentials, which rules out `*`).
fn allow_origin(response: &mut Response<Body>, origin: HeaderValue) {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}

async fn serve(state: Arc<EmulatorState>, request: hyper::Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let route = match route(&parts.method, parts.uri.path()) {
        Ok(route) => route,
        Err(err) => {
            let body = respond::read_body(body).await.unwrap_or_default();
            record(&state, &parts, &body);
            return respond::error(&err);
        }
    };
    if let Endpoint::Stream(id, multimodal) = &route {
        record(&state, &parts, &Bytes::new());
        return stream::handshake(&state, parts, id, *multimodal);
    }
    let body = match respond::read_body(body).await {
        Ok(body) => body,
        Err(err) => {
            record(&state, &parts, &Bytes::new());
            return respond::error(&err);
        }
    };
    record(&state, &parts, &body);
    dispatch(&state, route, &parts, body)
        .await
        .unwrap_or_else(|err| respond::error(&err))
}

fn record(state: &EmulatorState, parts: &Parts, body: &Bytes) {
    let path_and_query = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    state.record_request(RecordedRequest {
        method: parts.method.clone(),
        path_and_query,
        headers: parts.headers.clone(),
        body: body.slice(..body.len().min(MAX_RECORDED_BODY)),
    });
}

/// Maps method and path to a route: 404 for unknown paths, 405 for a known
/// path with the wrong method.
fn route(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
    let segments: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|segment| {
            percent_encoding::percent_decode_str(segment)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let candidates: Vec<(Method, Endpoint)> = match segments.as_slice() {
        ["sas", id] if !id.is_empty() => vec![(Method::POST, Endpoint::TokenPost(id.to_string()))],
        ["v3", "directline", rest @ ..] => directline_routes(rest),
        [
            "powervirtualagents",
            "botsbyschema",
            schema,
            "directline",
            "token",
        ] if !schema.is_empty() => {
            vec![(Method::GET, Endpoint::AgentToken)]
        }
        ["powervirtualagents", "regionalchannelsettings"] => {
            vec![(Method::GET, Endpoint::RegionalChannelSettings)]
        }
        _ => vec![],
    };
    if candidates.is_empty() {
        return Err(ApiError::not_found(format!("No such resource: {path}")));
    }
    candidates
        .into_iter()
        .find(|(allowed, _)| allowed == method)
        .map(|(_, route)| route)
        .ok_or_else(ApiError::method_not_allowed)
}

fn directline_routes(segments: &[&str]) -> Vec<(Method, Endpoint)> {
    let id = |id: &str| id.to_string();
    match segments {
        ["tokens", "generate"] => vec![(Method::POST, Endpoint::Generate)],
        ["tokens", "refresh"] => vec![(Method::POST, Endpoint::Refresh)],
        ["conversations"] => vec![(Method::POST, Endpoint::Start)],
        ["conversations", c] if !c.is_empty() => vec![(Method::GET, Endpoint::Reconnect(id(c)))],
        ["conversations", c, "activities"] if !c.is_empty() => vec![
            (Method::GET, Endpoint::Poll(id(c))),
            (Method::POST, Endpoint::Post(id(c))),
        ],
        ["conversations", c, "upload"] if !c.is_empty() => {
            vec![(Method::POST, Endpoint::Upload(id(c)))]
        }
        ["conversations", c, "stream"] if !c.is_empty() => {
            vec![(Method::GET, Endpoint::Stream(id(c), false))]
        }
        ["conversations", c, "stream", "multimodal"] if !c.is_empty() => {
            vec![(Method::GET, Endpoint::Stream(id(c), true))]
        }
        ["session", "getsessionid"] => vec![(Method::GET, Endpoint::SessionId)],
        ["attachments", a, ..] if !a.is_empty() => vec![(Method::GET, Endpoint::Attachment(id(a)))],
        _ => vec![],
    }
}

async fn dispatch(
    state: &Arc<EmulatorState>,
    route: Endpoint,
    parts: &Parts,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let query = parts.uri.query();
    match route {
        Endpoint::TokenPost(id) => {
            let path = parts.uri.path_and_query().map_or("", |pq| pq.as_str());
            return Ok(sas::token_post(state, &id, path, &body));
        }
        Endpoint::Attachment(id) => return attachment(state, &id),
        Endpoint::AgentToken => return Ok(copilot::agent_token(state)),
        Endpoint::RegionalChannelSettings => return Ok(copilot::regional_channel_settings(state)),
        _ => {}
    }
    let caller = {
        let tokens = lock(&state.tokens);
        auth::authenticate(&parts.headers, &state.config.secret, &tokens)?
    };
    match route {
        Endpoint::Generate => generate(state, &caller, &body),
        Endpoint::Refresh => refresh(state, &caller),
        Endpoint::Start => start(state, &caller, &body),
        Endpoint::Reconnect(id) => reconnect(state, &caller, &id, query),
        Endpoint::Poll(id) => poll(state, &caller, &id, query),
        Endpoint::Post(id) => post(state, &caller, &id, &body).await,
        Endpoint::Upload(id) => {
            let conversation = conversation_for(state, &caller, &id)?;
            let user = query_param(query, "userId");
            let answer =
                upload::upload(state, &conversation, &caller, user, &parts.headers, body).await?;
            Ok(respond::json(StatusCode::OK, &answer))
        }
        Endpoint::SessionId => Ok(session_id(state, &caller)),
        Endpoint::Stream(..)
        | Endpoint::Attachment(_)
        | Endpoint::TokenPost(_)
        | Endpoint::AgentToken
        | Endpoint::RegionalChannelSettings => Err(ApiError::not_found("No such resource")),
    }
}

/// The conversation the caller may use; 403 for another conversation's
/// token, 404 when it does not exist.
fn conversation_for(
    state: &EmulatorState,
    caller: &Caller,
    id: &str,
) -> Result<Arc<Conversation>, ApiError> {
    caller.check_conversation(id)?;
    state
        .conversation(id)
        .ok_or_else(|| ApiError::not_found("Conversation not found"))
}

/// The `user.id` of an optional request body.
fn body_user(body: &Bytes) -> Result<Option<String>, ApiError> {
    let parsed = optional_json(body)?;
    Ok(parsed.and_then(|b| b["user"]["id"].as_str().map(str::to_string)))
}

/// `POST /tokens/generate`: secret only; creates the conversation id but
/// starts nothing.
fn generate(
    state: &EmulatorState,
    caller: &Caller,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    if !matches!(caller, Caller::Secret) {
        return Err(ApiError::forbidden(
            "Generating a token requires the secret",
        ));
    }
    let user = body_user(body)?;
    let conversation = state.new_conversation();
    let token = issue(state, &conversation.id, user, TokenKind::Conversation);
    Ok(respond::json(
        StatusCode::OK,
        &token_answer(state, &conversation.id, &token),
    ))
}

/// `POST /tokens/refresh`: token only; same conversation and user.
fn refresh(state: &EmulatorState, caller: &Caller) -> Result<Response<Body>, ApiError> {
    let Caller::Token { grant, .. } = caller else {
        return Err(ApiError::forbidden(
            "Refreshing requires a token, not the secret",
        ));
    };
    let token = issue(
        state,
        &grant.conversation_id,
        grant.user_id.clone(),
        TokenKind::Conversation,
    );
    Ok(respond::json(
        StatusCode::OK,
        &token_answer(state, &grant.conversation_id, &token),
    ))
}

/// `POST /conversations`: 201 when this call started the conversation (the
/// bot's welcome message is then already logged), 200 when the token's
/// conversation was already started.
fn start(state: &EmulatorState, caller: &Caller, body: &Bytes) -> Result<Response<Body>, ApiError> {
    let body_user = body_user(body)?;
    let (conversation, token) = match caller {
        Caller::Secret => {
            let conversation = state.new_conversation();
            let token = issue(state, &conversation.id, None, TokenKind::Conversation);
            (conversation, token)
        }
        Caller::Token { token, grant } => {
            let conversation = conversation_for(state, caller, &grant.conversation_id)?;
            (conversation, token.clone())
        }
    };
    let user = caller
        .bound_user()
        .map(str::to_string)
        .or(body_user)
        .or_else(|| state.config.rough.then(rough::guid));
    let started_now = conversation.start(user);
    if started_now {
        bot::welcome(&conversation);
    }
    let status = if started_now {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let answer = conversation_answer(state, caller, &conversation.id, &token, None);
    Ok(respond::json(status, &answer))
}

/// The Conversation object with a fresh `streamUrl`.
fn conversation_answer(
    state: &EmulatorState,
    caller: &Caller,
    conversation_id: &str,
    token: &str,
    watermark: Option<&str>,
) -> Value {
    let user = caller.bound_user().map(str::to_string);
    let stream_token = issue(state, conversation_id, user, TokenKind::Stream);
    let stream_url = format!(
        "ws://{}/v3/directline/conversations/{conversation_id}/stream?watermark={}&t={stream_token}",
        state.addr,
        watermark.unwrap_or("-"),
    );
    let mut answer = token_answer(state, conversation_id, token);
    answer["streamUrl"] = json!(stream_url);
    answer
}

/// `GET /conversations/{id}?watermark=W`: a fresh token and a `streamUrl`
/// that carries the watermark.
fn reconnect(
    state: &EmulatorState,
    caller: &Caller,
    id: &str,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let conversation = conversation_for(state, caller, id)?;
    let mark = watermark(query)?.map(|w| w.to_string());
    let user = caller.bound_user().map(str::to_string);
    let token = issue(state, &conversation.id, user, TokenKind::Conversation);
    let answer = conversation_answer(state, caller, &conversation.id, &token, mark.as_deref());
    Ok(respond::json(StatusCode::OK, &answer))
}

/// `GET /conversations/{id}/activities?watermark=W`: logged activities
/// after W (never typing); the watermark is the last one's, or W again.
fn poll(
    state: &EmulatorState,
    caller: &Caller,
    id: &str,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let conversation = conversation_for(state, caller, id)?;
    let after = watermark(query)?;
    let (activities, last) = conversation.activities_after(after);
    let mark = last.or(after).map(|w| w.to_string());
    let answer = json!({ "activities": activities, "watermark": mark });
    Ok(respond::json(StatusCode::OK, &answer))
}

/// `POST /conversations/{id}/activities`: answers once the bot has.
async fn post(
    state: &Arc<EmulatorState>,
    caller: &Caller,
    id: &str,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let conversation = conversation_for(state, caller, id)?;
    let parsed = activity::parse(body)?;
    let answer = activity::post(state, &conversation, parsed, caller.bound_user()).await?;
    Ok(respond::json(StatusCode::OK, &answer))
}

/// `GET /session/getsessionid`: a JSON string, per conversation for tokens.
fn session_id(state: &EmulatorState, caller: &Caller) -> Response<Body> {
    let session = match caller {
        Caller::Token { grant, .. } => state
            .conversation(&grant.conversation_id)
            .map(|c| c.session_id.clone()),
        Caller::Secret => None,
    };
    let session = session.unwrap_or_else(|| auth::random_id(24));
    respond::json(StatusCode::OK, &json!(session))
}

/// `GET /v3/directline/attachments/{id}`: an uploaded file's bytes.
fn attachment(state: &EmulatorState, id: &str) -> Result<Response<Body>, ApiError> {
    let stored = lock(&state.attachments)
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("No such attachment"))?;
    Ok(respond::raw(
        StatusCode::OK,
        &stored.content_type,
        stored.bytes,
    ))
}
