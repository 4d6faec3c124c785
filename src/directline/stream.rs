//! The WebSocket relay: the client's upgrade opens the matching upstream
//! stream, then frames flow both ways until either side closes.
//!
//! Sequence (as in rust-rpxy): take the client's upgrade handle, forward the
//! handshake upstream, check the upstream's 101, answer the client with it,
//! then turn both upgraded connections into tungstenite streams.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use opentelemetry::Context;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::Instrument;

use super::filter::ActivityFilter;
use super::inspect::Inspector;
use super::relay;
use super::state::RelayState;
use crate::body::{BoxError, ProxyBody, empty};
use crate::directline::quota::OpenStream;
use crate::error::ProxyError;
use crate::header_hygiene::{ClientInfo, add_forwarded_headers, strip_hop_by_hop};
use crate::metrics::{ErrorKind, Metrics, Transport};
use crate::telemetry::Traces;
use crate::upstream::UpstreamError;

/// Whether the request asks for a WebSocket upgrade (RFC 6455 section 4.2.1).
pub fn is_upgrade(request: &Request<Incoming>) -> bool {
    let headers = request.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    request.version() == Version::HTTP_11
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
}

/// RFC 6455 section 4.2.1: version 13 (else 426 naming it, section 4.2.2)
/// and a key that is the base64 of 16 bytes (else 400), answered by the
/// proxy before the upstream is contacted.
fn handshake_refusal(headers: &http::HeaderMap) -> Option<Response<ProxyBody>> {
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    if !version_ok {
        return Some(ProxyError::WebSocketVersion.into_response());
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key_ok = match (keys.next(), keys.next()) {
        (Some(key), None) => STANDARD
            .decode(key.as_bytes())
            .is_ok_and(|bytes| bytes.len() == 16),
        _ => false,
    };
    (!key_ok).then(|| ProxyError::BadHandshake.into_response())
}

/// Forwards the handshake; on the upstream's 101 answers the client with 101
/// and spawns the relay, otherwise passes the upstream's answer through.
/// `sealed` is the stream's `dlpx` value, already taken out of the URI.
pub async fn upgrade(
    state: &RelayState,
    sso: Option<&Arc<dyn ActivityFilter>>,
    conversation_id: &str,
    sealed: Option<&str>,
    mut request: Request<Incoming>,
    client: &ClientInfo,
) -> Response<ProxyBody> {
    if let Some(refusal) = handshake_refusal(request.headers()) {
        return refusal;
    }
    let inspector = inspector_for(state, sso, conversation_id, sealed, &request);
    let Some(websocket_key) = request.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return ProxyError::BadHandshake.into_response();
    };
    let Ok(slot) = state.lifecycle.connection_slots.clone().try_acquire_owned() else {
        state.metrics.error(ErrorKind::ConnectionLimit);
        return ProxyError::AtConnectionLimit.into_response();
    };
    let client_key = || state.client_key(request.headers(), client);
    let open_stream = match state.quotas.open_stream(client_key, &state.metrics) {
        Ok(open) => open,
        Err(over) => return over.into_response(),
    };
    let client_upgrade = hyper::upgrade::on(&mut request);
    let upstream_request = match upstream_handshake(state, sso, request, client) {
        Ok(req) => req,
        Err(error) => return ProxyError::from(error).into_response(),
    };
    let mut upstream_response = match state
        .upstream
        .send_upgrade(upstream_request, "stream")
        .await
    {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%error, "upstream WebSocket handshake failed");
            return ProxyError::from(error).into_response();
        }
    };
    if upstream_response.status() != StatusCode::SWITCHING_PROTOCOLS {
        tracing::info!(status = %upstream_response.status(), "upstream refused the WebSocket");
        let (mut parts, body) = upstream_response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        return Response::from_parts(parts, body.map_err(BoxError::from).boxed());
    }
    if !accept_key_matches(&websocket_key, &upstream_response) {
        tracing::warn!("upstream answered the WebSocket handshake with a wrong accept key");
        state.metrics.error(ErrorKind::WebsocketHandshake);
        return ProxyError::StreamHandshake.into_response();
    }
    if upstream_response
        .headers()
        .contains_key(header::SEC_WEBSOCKET_EXTENSIONS)
    {
        // The proxy never offers one (RFC 6455 section 4.1: the client must
        // then fail the connection), and could not read compressed frames.
        tracing::warn!("upstream accepted a WebSocket extension the proxy never offered");
        state.metrics.error(ErrorKind::WebsocketHandshake);
        return ProxyError::StreamHandshake.into_response();
    }
    let upstream_upgrade = hyper::upgrade::on(&mut upstream_response);
    let response = client_switching_protocols(upstream_response);
    let held = Held {
        _slot: slot,
        _open_stream: open_stream,
    };
    spawn_relay(
        state,
        client_upgrade,
        upstream_upgrade,
        held,
        inspector,
        conversation_id,
    );
    response
}

/// With SSO on: what the stream needs to act for its user, from the sealed
/// context and the handshake's headers.
fn inspector_for(
    state: &RelayState,
    sso: Option<&Arc<dyn ActivityFilter>>,
    conversation_id: &str,
    sealed: Option<&str>,
    request: &Request<Incoming>,
) -> Inspector {
    let Some(sso) = sso.cloned() else {
        return Inspector::default();
    };
    let requester = state.requester(request.headers());
    Inspector::new(sso.for_stream(conversation_id, sealed, request.headers(), requester))
}

/// The upstream's `Sec-WebSocket-Accept` answers the client's key: the
/// client checks it too, so a mismatch would fail there anyway.
fn accept_key_matches(client_key: &HeaderValue, upstream: &Response<Incoming>) -> bool {
    let expected = derive_accept_key(client_key.as_bytes());
    upstream
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes())
}

fn upstream_handshake(
    state: &RelayState,
    sso: Option<&Arc<dyn ActivityFilter>>,
    request: Request<Incoming>,
    client: &ClientInfo,
) -> Result<Request<ProxyBody>, UpstreamError> {
    let (mut parts, _body) = request.into_parts();
    parts.uri = state.upstream.url_for(&parts.uri)?;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    for consumed in state.consumed_headers(sso) {
        parts.headers.remove(consumed);
    }
    // Frames must stay readable: no compression extension is negotiated.
    parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    add_forwarded_headers(&mut parts.headers, client, state.trust_forwarded_headers);
    Ok(Request::from_parts(parts, empty()))
}

fn client_switching_protocols(upstream: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, _body) = upstream.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    Response::from_parts(parts, empty())
}

/// What an open relay holds for its lifetime: its place among
/// `listen.max_connections` and among its client's streams.
struct Held {
    _slot: OwnedSemaphorePermit,
    _open_stream: Option<OpenStream>,
}

fn spawn_relay(
    state: &RelayState,
    client: OnUpgrade,
    upstream: OnUpgrade,
    held: Held,
    inspector: Inspector,
    conversation_id: &str,
) {
    let settings = relay::RelaySettings {
        close_timeout: state.close_timeout,
        shutdown: state.lifecycle.shutdown.clone(),
        inspector,
        counters: state.metrics.relay_counters(),
        limits: state.frame_limits,
    };
    let metrics = state.metrics.clone();
    let traces = state.upstream.traces();
    let opening = tracing::Span::current();
    let lifetime = traces.stream_lifetime(opening.clone(), conversation_id);
    let task = async move {
        // The handshake's span ends with the upgrade; with traces on, the
        // relay then runs in a log-only span of its own.
        let Some((client, upstream, parent)) = complete_upgrade(client, upstream, &metrics, traces)
            .instrument(opening)
            .await
        else {
            return;
        };
        let started = Instant::now();
        let active = metrics.connection(Transport::Websocket);
        let outcome = relay::run(TokioIo::new(client), TokioIo::new(upstream), settings)
            .instrument(lifetime.clone())
            .await;
        if outcome.lost() {
            metrics.error(ErrorKind::WebsocketLost);
        }
        let closing = traces.stream_closed(parent.as_ref(), started.elapsed());
        lifetime.in_scope(|| closing.in_scope(|| tracing::info!(?outcome, "stream closed")));
        drop(active);
        drop(held);
    };
    state.lifecycle.streams.spawn(task);
}

/// Both upgraded connections, and the handshake span's trace context for
/// what happens later on the stream; `None` when an upgrade failed.
async fn complete_upgrade(
    client: OnUpgrade,
    upstream: OnUpgrade,
    metrics: &Metrics,
    traces: Traces,
) -> Option<(Upgraded, Upgraded, Option<Context>)> {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            tracing::info!("stream opened");
            Some((client, upstream, traces.current()))
        }
        Err(error) => {
            metrics.error(ErrorKind::WebsocketHandshake);
            tracing::warn!(%error, "WebSocket upgrade did not complete");
            None
        }
    }
}
