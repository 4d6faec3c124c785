//! Direct Line 3.0: routing, the REST relay, the WebSocket relay.

pub mod activity;
pub mod credentials;
pub mod filter;
pub mod frame;
pub mod inspect;
pub mod quota;
pub mod read_pool;
pub mod relay;
pub mod rest;
pub mod route;
pub mod state;
pub mod stream;
pub mod stream_url;
pub mod token_endpoint;

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::header_hygiene::ClientInfo;
use crate::metrics::Transport;
use credentials::ServerCredentials;
use filter::ActivityFilter;
use route::Route;
use state::RelayState;

/// Serves one request under `/v3/directline/` whose path the router
/// accepted: the route's quota, then the WebSocket or the REST relay.
/// `sealed` is the request's `dlpx` value, already taken out of the URI;
/// `sso` is the sign-in filter the request started with.
pub async fn serve(
    state: &RelayState,
    sso: Option<&Arc<dyn ActivityFilter>>,
    sealed: Option<String>,
    request: Request<Incoming>,
    client: &ClientInfo,
) -> Response<ProxyBody> {
    let route = Route::classify(request.method(), request.uri().path());
    let client_key = || state.client_key(request.headers(), client);
    if let Some(over) = state.quotas.admit(&route, client_key, &state.metrics) {
        return over.into_response();
    }
    // A Copilot Studio agent is served by the regional base its token
    // endpoint's host names, looked up now and then (boxed: rare).
    if let Some(endpoint) = state
        .credentials
        .as_ref()
        .and_then(ServerCredentials::token_endpoint)
        && Box::pin(endpoint.use_regional_base(&state.upstream))
            .await
            .is_err()
    {
        return ProxyError::TokenEndpointFailed.into_response();
    }
    // The query is never logged: it can carry the stream token `t=`.
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        route = route.name(),
        conversation_id = route.conversation_id().unwrap_or(""),
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let traces = state.upstream.traces();
    if traces.on() {
        let name = format!("{} {}", request.method(), route.name());
        traces.join_client(&span, &name, request.headers());
    }
    async move {
        let started = Instant::now();
        let response = match route {
            Route::Stream {
                ref conversation_id,
            } if stream::is_upgrade(&request) => {
                // Counted as a WebSocket relay once the upgrade completes.
                let sealed = sealed.as_deref();
                // Boxed: the upgrade's state is large and rare; inline, it
                // would grow every REST request's future (moved whole by
                // hyper) by kilobytes.
                Box::pin(stream::upgrade(
                    state,
                    sso,
                    conversation_id,
                    sealed,
                    request,
                    client,
                ))
                .await
            }
            _ => {
                let transport = match route {
                    Route::Poll { .. } => Transport::Polling,
                    _ => Transport::Rest,
                };
                let _active = state.metrics.connection(transport);
                rest::relay(state, sso, &route, request, client).await
            }
        };
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request done"
        );
        if traces.on() {
            traces.record_status(&tracing::Span::current(), response.status().as_u16());
        }
        response
    }
    .instrument(span)
    .await
}

/// Whether `bytes` hold a JSON object rather than another value, judged by
/// the first byte after whitespace. Needed beside serde's derived structs:
/// they read an array as well, positionally (`[[...]]` as
/// `{"activities":[...]}`), and only an object is a Direct Line body.
fn is_json_object(bytes: &[u8]) -> bool {
    bytes.trim_ascii_start().first() == Some(&b'{')
}

/// `text` split at every ASCII `separator` (so every piece is whole UTF-8),
/// found with `memchr`: several times cheaper per request than `str::split`
/// with a `char` (issue 9), for the path and query checks every request gets.
fn split_at_byte(text: &str, separator: u8) -> impl Iterator<Item = &str> {
    let ends = memchr::memchr_iter(separator, text.as_bytes()).chain([text.len()]);
    let mut start = 0;
    ends.map(move |end| {
        let piece = text.get(start..end).unwrap_or_default();
        start = end + 1;
        piece
    })
}
