//! The REST relay: every call under `/v3/directline/` goes to the upstream
//! with path and query intact; conversation responses get their
//! `streamUrl` pointed at the proxy.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::route::Route;
use super::stream_url;
use crate::body::{BoxError, ProxyBody, directline_error, full};
use crate::forward::{ClientInfo, add_forwarded_headers, strip_hop_by_hop};
use crate::proxy::Shared;
use crate::upstream::UpstreamError;

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
    let public_base = route
        .returns_stream_url()
        .then(|| shared.public_base(request.uri(), request.headers()))
        .flatten();
    let upstream_request = match upstream_request(shared, route, request, client) {
        Ok(req) => req,
        Err(error) => return error.to_response(),
    };
    let response = match shared.upstream.send(upstream_request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%error, "upstream request failed");
            return error.to_response();
        }
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = client_version;
    match public_base {
        Some(public) if parts.status.is_success() => {
            let body = rewrite_stream_url(shared, body, &public, &mut parts.headers).await;
            match body {
                Ok(body) => Response::from_parts(parts, body),
                Err(response) => response,
            }
        }
        _ => Response::from_parts(parts, body.map_err(BoxError::from).boxed()),
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
        directline_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MessageSizeTooBig",
            "The request body is larger than the proxy allows.",
        )
    })
}

fn upstream_request(
    shared: &Shared,
    route: &Route,
    request: Request<Incoming>,
    client: &ClientInfo,
) -> Result<Request<ProxyBody>, UpstreamError> {
    let (mut parts, body) = request.into_parts();
    parts.uri = shared.upstream.url_for(&parts.uri)?;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    if route.returns_stream_url() {
        // The body is read and rewritten, so it must arrive uncompressed.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    add_forwarded_headers(
        &mut parts.headers,
        client,
        shared.config.listen.trust_forwarded_headers,
    );
    let limit = usize::try_from(shared.config.limits.max_request_body_bytes).unwrap_or(usize::MAX);
    let body = Limited::new(body, limit).boxed();
    Ok(Request::from_parts(parts, body))
}

async fn rewrite_stream_url(
    shared: &Shared,
    body: Incoming,
    public: &stream_url::PublicBase,
    headers: &mut HeaderMap,
) -> Result<ProxyBody, Response<ProxyBody>> {
    let limit = shared.config.limits.max_rewrite_body_bytes;
    let bytes: Bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::warn!(%error, "conversation response could not be read");
            return Err(directline_error(
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                "The Direct Line response could not be read.",
            ));
        }
    };
    let upstream_path = shared.upstream.base().path();
    match stream_url::rewrite(&bytes, public, upstream_path) {
        Ok(Some(rewritten)) => {
            headers.remove(header::CONTENT_LENGTH);
            Ok(full(rewritten))
        }
        Ok(None) => Ok(full(bytes)),
        Err(error) => {
            tracing::warn!(%error, "streamUrl left unchanged");
            Ok(full(bytes))
        }
    }
}
