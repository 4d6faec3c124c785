//! The router: every request's first stop after the server. The origin and
//! `Host` checks, the admin endpoints, the path check, then Direct Line.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{ProxyBody, full, text_response};
use crate::directline::filter::SEALED_PARAM;
use crate::directline::route::{PREFIX, Route};
use crate::directline::{self, stream_url};
use crate::error::ProxyError;
use crate::header_hygiene::ClientInfo;
use crate::origin::OriginCheck;
use crate::state::{Live, Shared};

pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    client: ClientInfo,
) -> Result<Response<ProxyBody>, Infallible> {
    let live = shared.live();
    let origin = live.origins.check(request.headers());
    if origin == OriginCheck::Refused {
        return Ok(ProxyError::OriginRefused.into_response());
    }
    if !host_is_valid(&request) {
        return Ok(ProxyError::BadHost.into_response());
    }
    let mut response = route(&shared, &live, request, &client).await;
    live.origins.restrict_cors(&origin, response.headers_mut());
    Ok(response)
}

/// One `Host` (or h2 `:authority`), a bare `host[:port]`: userinfo or bad
/// syntax would end up in rewritten `streamUrl`s.
fn host_is_valid<B>(request: &Request<B>) -> bool {
    let mut hosts = request.headers().get_all(http::header::HOST).iter();
    let host_ok = match (hosts.next(), hosts.next()) {
        (None, _) => true,
        (Some(host), None) => stream_url::is_host_authority(host.as_bytes()),
        (Some(_), Some(_)) => false,
    };
    let authority_ok = request
        .uri()
        .authority()
        .is_none_or(|a| !a.as_str().contains('@'));
    host_ok && authority_ok
}

async fn route(
    shared: &Arc<Shared>,
    live: &Live,
    request: Request<Incoming>,
    client: &ClientInfo,
) -> Response<ProxyBody> {
    let path = request.uri().path();
    let admin_here = live.config.admin.addr.is_none();
    match (request.method(), path) {
        (&Method::GET, "/healthz" | "/readyz" | "/metrics") if admin_here => {
            admin(shared, &request)
        }
        (_, p) if p.starts_with(PREFIX) => match Route::refusal(p) {
            Some(reason) => ProxyError::BadPath(reason).into_response(),
            None => directline(shared, live, request, client).await,
        },
        _ => not_found(),
    }
}

fn not_found() -> Response<ProxyBody> {
    ProxyError::NotDirectLine.into_response()
}

/// The operational endpoints: on the main listener, or on the admin one
/// (`[admin] addr`) and then only there.
pub fn admin<B>(shared: &Shared, request: &Request<B>) -> Response<ProxyBody> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => text_response(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readiness(shared),
        (&Method::GET, "/metrics") if shared.live().config.metrics.enabled => metrics(shared),
        _ => not_found(),
    }
}

/// Takes every `dlpx` parameter out of the request, whatever the route,
/// method, version or SSO setting: the sealed context is the proxy's and
/// never reaches Direct Line. Only a single one is a stream's context.
fn take_sealed_context<B>(request: &mut Request<B>) -> Option<String> {
    if !stream_url::has_query_param(request.uri(), SEALED_PARAM) {
        return None;
    }
    let (stripped, mut values) = stream_url::take_query_params(request.uri(), SEALED_PARAM);
    if values.is_empty() {
        return None;
    }
    *request.uri_mut() = stripped;
    if values.len() > 1 {
        tracing::warn!(
            count = values.len(),
            "several sealed contexts in one request: none is used"
        );
        return None;
    }
    values.pop()
}

fn metrics(shared: &Shared) -> Response<ProxyBody> {
    let mut response = Response::new(full(shared.metrics.encode()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

fn readiness(shared: &Shared) -> Response<ProxyBody> {
    if shared.ready.load(Ordering::Relaxed) {
        text_response(StatusCode::OK, "ready\n")
    } else {
        text_response(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    }
}

async fn directline(
    shared: &Shared,
    live: &Live,
    mut request: Request<Incoming>,
    client: &ClientInfo,
) -> Response<ProxyBody> {
    let sealed = take_sealed_context(&mut request);
    directline::serve(&shared.relays, live.sso.as_ref(), sealed, request, client).await
}
