//! The REST relay: every call under `/v3/directline/` goes to the upstream
//! with path and query intact. Two kinds of answer are read whole and
//! rewritten: conversation responses (their `streamUrl` points at the proxy)
//! and, with SSO on, polled ActivitySets (the inspection pipeline).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::credentials::{Applied, Refusal, ServerCredentials};
use super::filter::{ActivityFilter, ConversationFilter, Requester, SEALED_PARAM};
use super::route::Route;
use super::state::RelayState;
use super::stream_url::{self, PublicBase};
use crate::body::{BoxError, ProxyBody, full, limited};
use crate::error::ProxyError;
use crate::header_hygiene::{ClientInfo, add_forwarded_headers, strip_hop_by_hop};
use crate::metrics::ErrorKind;
use crate::upstream::{UpstreamBody, UpstreamError};

/// What happens to the upstream's answer.
enum Treatment {
    Pass,
    RewriteStreamUrl(PublicBase, Option<Sealing>),
    InspectPoll(Arc<dyn ConversationFilter>),
}

/// With SSO on, what a rewritten `streamUrl` carries sealed: taken from the
/// start or reconnect request before its headers are consumed.
struct Sealing {
    sso: Arc<dyn ActivityFilter>,
    requester: Requester,
    captured: HeaderMap,
}

impl Treatment {
    fn reads_body(&self) -> bool {
        !matches!(self, Treatment::Pass)
    }
}

pub async fn relay(
    state: &RelayState,
    sso: Option<&Arc<dyn ActivityFilter>>,
    route: &Route,
    request: Request<Incoming>,
    client: &ClientInfo,
) -> Response<ProxyBody> {
    let client_version = request.version();
    if let Some(response) = reject_oversized(state, request.headers()) {
        return response;
    }
    let treatment = treatment(state, sso, route, &request);
    let body_limit = state.max_request_body_bytes;
    let mut request = request.map(|body| limited(body, body_limit));
    if let Some(credentials) = &state.credentials
        && ServerCredentials::applies(route, request.headers())
    {
        let trust = state.trust_forwarded_headers;
        // Boxed, like the other rare branches below: kept out of the
        // plain relay's future, which hyper moves whole per request.
        request = match Box::pin(credentials.apply(route, request, client, trust, &state.upstream))
            .await
        {
            Ok(Applied::Forward(request)) => request,
            Ok(Applied::Answer(response)) => return response,
            Err(refusal) => {
                if matches!(refusal, Refusal::TooMany(_)) {
                    state.metrics.quota_rejected("mint");
                }
                return refusal.into_response();
            }
        };
    }
    let upstream_request = match upstream_request(state, sso, &treatment, request, client) {
        Ok(req) => req,
        Err(error) => return ProxyError::from(error).into_response(),
    };
    let response = match state.upstream.send(upstream_request, route.name()).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%error, "upstream request failed");
            return ProxyError::from(error).into_response();
        }
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = client_version;
    if !treatment.reads_body() || !parts.status.is_success() {
        return Response::from_parts(parts, body.map_err(BoxError::from).boxed());
    }
    let bytes = match read_whole(state, body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let rewritten = match &treatment {
        Treatment::RewriteStreamUrl(public, sealing) => {
            rewrite_stream_url(state, &bytes, public, sealing.as_ref())
        }
        Treatment::InspectPoll(filter) => filter.filter(&bytes).await,
        Treatment::Pass => None,
    };
    let body = match rewritten {
        Some(rewritten) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            full(rewritten)
        }
        None => full(bytes),
    };
    Response::from_parts(parts, body)
}

fn treatment<B>(
    state: &RelayState,
    sso: Option<&Arc<dyn ActivityFilter>>,
    route: &Route,
    request: &Request<B>,
) -> Treatment {
    let headers = request.headers();
    match (route, sso.cloned()) {
        (Route::StartConversation | Route::Reconnect { .. }, sso) => {
            let Some(public) = state.public_base(request.uri(), headers) else {
                return Treatment::Pass;
            };
            let sealing = sso.map(|sso| Sealing {
                requester: state.requester(headers),
                captured: sso.capture(headers),
                sso,
            });
            Treatment::RewriteStreamUrl(public, sealing)
        }
        (Route::Poll { conversation_id }, Some(sso)) => {
            Treatment::InspectPoll(sso.for_poll(conversation_id, headers, state.requester(headers)))
        }
        _ => Treatment::Pass,
    }
}

fn reject_oversized(state: &RelayState, headers: &HeaderMap) -> Option<Response<ProxyBody>> {
    let length: u64 = headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    (length > state.max_request_body_bytes).then(|| {
        state.metrics.error(ErrorKind::RequestTooLarge);
        ProxyError::BodyTooLarge.into_response()
    })
}

fn upstream_request(
    state: &RelayState,
    sso: Option<&Arc<dyn ActivityFilter>>,
    treatment: &Treatment,
    request: Request<ProxyBody>,
    client: &ClientInfo,
) -> Result<Request<ProxyBody>, UpstreamError> {
    let (mut parts, body) = request.into_parts();
    parts.uri = state.upstream.url_for(&parts.uri)?;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    for consumed in state.consumed_headers(sso) {
        parts.headers.remove(consumed);
    }
    if treatment.reads_body() {
        // The body is read and rewritten, so it must arrive uncompressed.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    add_forwarded_headers(&mut parts.headers, client, state.trust_forwarded_headers);
    Ok(Request::from_parts(parts, body))
}

async fn read_whole(state: &RelayState, body: UpstreamBody) -> Result<Bytes, Response<ProxyBody>> {
    let limit = state.max_rewrite_body_bytes;
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => {
            tracing::warn!(%error, "upstream response could not be read whole");
            state.metrics.error(ErrorKind::ResponseUnreadable);
            Err(ProxyError::UnreadableResponse.into_response())
        }
    }
}

/// `streamUrl` pointed at the proxy; with SSO on it also carries the sealed
/// conversation token the stream relay needs for the invoke flow, and the
/// conversation's owner.
fn rewrite_stream_url(
    state: &RelayState,
    bytes: &[u8],
    public: &PublicBase,
    sealing: Option<&Sealing>,
) -> Option<Vec<u8>> {
    let sealed = sealing.and_then(|sealing| {
        let (conversation_id, token) = stream_url::conversation_and_token(bytes)?;
        sealing.sso.seal(
            &conversation_id,
            token,
            &sealing.requester,
            &sealing.captured,
        )
    });
    let extra = sealed.as_deref().map(|value| (SEALED_PARAM, value));
    let upstream_base = state.upstream.base();
    match stream_url::rewrite(bytes, public, upstream_base.path(), extra) {
        Ok(rewritten) => rewritten,
        Err(error) => {
            tracing::warn!(%error, "streamUrl left unchanged");
            None
        }
    }
}
