//! The REST relay: every call under `/v3/directline/` goes to the upstream
//! with path and query intact. Two kinds of answer are read whole and
//! rewritten: conversation responses (their `streamUrl` points at the proxy)
//! and, with SSO on, polled ActivitySets (the inspection pipeline).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::credentials::ServerCredentials;
use super::route::Route;
use super::stream_url::{self, PublicBase};
use crate::body::{BoxError, ProxyBody, directline_error, full, limited};
use crate::forward::{ClientInfo, add_forwarded_headers, strip_hop_by_hop};
use crate::metrics::ErrorKind;
use crate::proxy::Shared;
use crate::sso::providers::bearer_value;
use crate::sso::{Access, Sso, seal};
use crate::upstream::UpstreamError;

/// What happens to the upstream's answer.
enum Treatment {
    Pass,
    RewriteStreamUrl(PublicBase),
    InspectPoll(Arc<Sso>, Access),
}

impl Treatment {
    fn reads_body(&self) -> bool {
        !matches!(self, Treatment::Pass)
    }
}

pub async fn relay(
    shared: &Shared,
    route: &Route,
    request: Request<Incoming>,
    client: &ClientInfo,
) -> Response<ProxyBody> {
    let client_version = request.version();
    if let Some(response) = reject_oversized(shared, request.headers()) {
        return response;
    }
    let treatment = treatment(shared, route, &request);
    let body_limit = shared.config.limits.max_request_body_bytes;
    let mut request = request.map(|body| limited(body, body_limit));
    if let Some(credentials) = &shared.credentials
        && ServerCredentials::applies(route, request.headers())
    {
        let trust = shared.config.listen.trust_forwarded_headers;
        request = match credentials
            .apply(route, request, client, trust, &shared.upstream)
            .await
        {
            Ok(request) => request,
            Err(refusal) => return refusal.into_response(),
        };
    }
    let upstream_request = match upstream_request(shared, &treatment, request, client) {
        Ok(req) => req,
        Err(error) => return error.to_response(),
    };
    let response = match shared.upstream.send(upstream_request, route.name()).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%error, "upstream request failed");
            return error.to_response();
        }
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = client_version;
    if !treatment.reads_body() || !parts.status.is_success() {
        return Response::from_parts(parts, body.map_err(BoxError::from).boxed());
    }
    let bytes = match read_whole(shared, body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let rewritten = match &treatment {
        Treatment::RewriteStreamUrl(public) => rewrite_stream_url(shared, &bytes, public),
        Treatment::InspectPoll(sso, access) => sso.process(access, &bytes).await,
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

fn treatment<B>(shared: &Shared, route: &Route, request: &Request<B>) -> Treatment {
    match (route, shared.sso()) {
        (Route::StartConversation | Route::Reconnect { .. }, _) => shared
            .public_base(request.uri(), request.headers())
            .map_or(Treatment::Pass, Treatment::RewriteStreamUrl),
        (Route::Poll { conversation_id }, Some(sso)) => {
            let token = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_value)
                .map(str::to_string);
            let user_headers = sso.capture_headers(request.headers());
            Treatment::InspectPoll(
                sso,
                Access {
                    conversation_id: conversation_id.clone(),
                    token,
                    user_headers,
                },
            )
        }
        _ => Treatment::Pass,
    }
}

fn reject_oversized(shared: &Shared, headers: &HeaderMap) -> Option<Response<ProxyBody>> {
    let length: u64 = headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    (length > shared.config.limits.max_request_body_bytes).then(|| {
        shared.metrics.error(ErrorKind::RequestTooLarge);
        directline_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MessageSizeTooBig",
            "The request body is larger than the proxy allows.",
        )
    })
}

fn upstream_request(
    shared: &Shared,
    treatment: &Treatment,
    request: Request<ProxyBody>,
    client: &ClientInfo,
) -> Result<Request<ProxyBody>, UpstreamError> {
    let (mut parts, body) = request.into_parts();
    parts.uri = shared.upstream.url_for(&parts.uri)?;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    for consumed in shared.consumed_headers() {
        parts.headers.remove(consumed);
    }
    if treatment.reads_body() {
        // The body is read and rewritten, so it must arrive uncompressed.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    add_forwarded_headers(
        &mut parts.headers,
        client,
        shared.config.listen.trust_forwarded_headers,
    );
    Ok(Request::from_parts(parts, body))
}

async fn read_whole(shared: &Shared, body: Incoming) -> Result<Bytes, Response<ProxyBody>> {
    let limit = shared.config.limits.max_rewrite_body_bytes;
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => {
            tracing::warn!(%error, "upstream response could not be read whole");
            shared.metrics.error(ErrorKind::ResponseUnreadable);
            Err(directline_error(
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                "The Direct Line response could not be read.",
            ))
        }
    }
}

/// `streamUrl` pointed at the proxy; with SSO on it also carries the sealed
/// conversation token the stream relay needs for the invoke flow.
fn rewrite_stream_url(shared: &Shared, bytes: &[u8], public: &PublicBase) -> Option<Vec<u8>> {
    let sealed = shared.sso().and_then(|sso| {
        let (conversation_id, token) = stream_url::conversation_and_token(bytes)?;
        let context = seal::StreamContext { token };
        sso.sealer()
            .seal(&conversation_id, &context)
            .inspect_err(|error| tracing::warn!(%error, "stream context not sealed"))
            .ok()
    });
    let extra = sealed.as_deref().map(|value| (seal::PARAM, value));
    let upstream_path = shared.upstream.base().path();
    match stream_url::rewrite(bytes, public, upstream_path, extra) {
        Ok(rewritten) => rewritten,
        Err(error) => {
            tracing::warn!(%error, "streamUrl left unchanged");
            None
        }
    }
}
