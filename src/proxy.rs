//! What every request handler shares, and the router in front of them.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use std::time::Instant;

use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::body::{ProxyBody, full, text_response};
use crate::config::Config;
use crate::directline::credentials::ServerCredentials;
use crate::directline::relay::FrameLimits;
use crate::directline::route::{PREFIX, Route};
use crate::directline::stream_url::{self, PublicBase};
use crate::directline::{rest, stream};
use crate::error::ProxyError;
use crate::forward::ClientInfo;
use crate::metrics::{Metrics, Transport};
use crate::origin::{OriginCheck, OriginPolicy};
use crate::quota::{self, Quotas};
use crate::sso::decisions::Decisions;
use crate::sso::{Requester, Sso, seal};
use crate::upstream::Upstream;

/// What a reload swaps as one: a request reads it once, so it never pairs
/// the origin list of one config with the SSO provider of another.
pub struct Policy {
    /// `listen.allowed_origins`: a provider that reads the user's request
    /// must never run without it.
    pub origins: OriginPolicy,
    /// Server-side sign-in; `None` when `sso.provider = "none"`. Requests
    /// and streams keep the one they started with.
    pub sso: Option<Arc<Sso>>,
}

pub struct Shared {
    pub config: Config,
    pub upstream: Arc<Upstream>,
    /// Swapped whole by a reload.
    pub policy: ArcSwap<Policy>,
    /// Exchange-once memory, kept across SSO reloads.
    pub decisions: Arc<Decisions>,
    pub metrics: Arc<Metrics>,
    /// The server-held Direct Line secret, when configured.
    pub credentials: Option<ServerCredentials>,
    pub configured_public_base: Option<PublicBase>,
    pub tls: bool,
    pub frame_limits: FrameLimits,
    /// Open WebSocket relays, so shutdown can wait for their close.
    pub streams: TaskTracker,
    /// Cancelled at shutdown: relays close both sides with 1001.
    pub shutdown: CancellationToken,
    /// Client connections and open relays share this bound.
    pub connection_slots: Arc<Semaphore>,
    /// False once draining has begun, so `/readyz` takes the replica out.
    pub ready: AtomicBool,
    pub quotas: Quotas,
}

impl Shared {
    /// Headers of the user's request the proxy itself consumes (the SSO
    /// provider's inputs, the authenticated-user header): the user's
    /// credentials for the proxy, never forwarded to Direct Line.
    /// `Authorization` is Direct Line's own and always forwarded.
    pub fn consumed_headers(&self, policy: &Policy) -> Vec<HeaderName> {
        let mut names = policy
            .sso
            .as_ref()
            .map(|sso| sso.header_names())
            .unwrap_or_default();
        if let Some(credentials) = &self.credentials {
            names.extend(credentials.user_id_header().cloned());
        }
        names.retain(|name| name != http::header::AUTHORIZATION);
        names
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Who a client is for quotas: the bound user, else its address.
    pub fn client_key(&self, headers: &HeaderMap, client: &ClientInfo) -> String {
        let bound = match self.requester(headers) {
            Requester::Bound(user) => user,
            Requester::Anonymous => None,
        };
        let trust = self.config.listen.trust_forwarded_headers;
        quota::client_key(bound.as_deref(), headers, client, trust)
    }

    /// Who sent a request, as far as the proxy knows its users: the bound
    /// id of `directline.user_id_header`'s value when binding is on.
    pub fn requester(&self, headers: &HeaderMap) -> Requester {
        match &self.credentials {
            Some(credentials) if credentials.user_id_header().is_some() => {
                Requester::Bound(credentials.user_id_of(headers))
            }
            _ => Requester::Anonymous,
        }
    }

    /// Where clients reach this proxy, for rewritten `streamUrl`s.
    pub fn public_base(&self, uri: &Uri, headers: &HeaderMap) -> Option<PublicBase> {
        if let Some(base) = &self.configured_public_base {
            return Some(base.clone());
        }
        let base = PublicBase::from_request(
            uri,
            headers,
            self.tls,
            self.config.listen.trust_forwarded_headers,
        );
        if base.is_none() {
            tracing::warn!("no usable Host header: streamUrl left pointing upstream");
        }
        base
    }
}

pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    client: ClientInfo,
) -> Result<Response<ProxyBody>, Infallible> {
    let policy = shared.policy();
    let origin = policy.origins.check(request.headers());
    if origin == OriginCheck::Refused {
        return Ok(ProxyError::OriginRefused.into_response());
    }
    if !host_is_valid(&request) {
        return Ok(ProxyError::BadHost.into_response());
    }
    let mut response = route(&shared, &policy, request, &client).await;
    policy
        .origins
        .restrict_cors(&origin, response.headers_mut());
    Ok(response)
}

/// One `Host` (or h2 `:authority`), a bare `host[:port]`: userinfo or bad
/// syntax would end up in rewritten `streamUrl`s.
fn host_is_valid<B>(request: &Request<B>) -> bool {
    let mut hosts = request.headers().get_all(http::header::HOST).iter();
    let host_ok = match (hosts.next(), hosts.next()) {
        (None, _) => true,
        (Some(host), None) => host
            .to_str()
            .ok()
            .and_then(stream_url::host_authority)
            .is_some(),
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
    policy: &Policy,
    request: Request<Incoming>,
    client: &ClientInfo,
) -> Response<ProxyBody> {
    let path = request.uri().path();
    let admin_here = shared.config.admin.addr.is_none();
    match (request.method(), path) {
        (&Method::GET, "/healthz" | "/readyz" | "/metrics") if admin_here => {
            admin(shared, &request)
        }
        (_, p) if p.starts_with(PREFIX) => match Route::refusal(p) {
            Some(reason) => ProxyError::BadPath(reason).into_response(),
            None => directline(shared, policy, request, client).await,
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
        (&Method::GET, "/metrics") if shared.config.metrics.enabled => metrics(shared),
        _ => not_found(),
    }
}

/// Takes every `dlpx` parameter out of the request, whatever the route,
/// method, version or SSO setting: the sealed context is the proxy's and
/// never reaches Direct Line. Only a single one is a stream's context.
fn take_sealed_context<B>(request: &mut Request<B>) -> Option<String> {
    let (stripped, mut values) = stream_url::take_query_params(request.uri(), seal::PARAM);
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
    policy: &Policy,
    mut request: Request<Incoming>,
    client: &ClientInfo,
) -> Response<ProxyBody> {
    let sealed = take_sealed_context(&mut request);
    let route = Route::classify(request.method(), request.uri().path());
    let client_key = || shared.client_key(request.headers(), client);
    if let Some(over) = shared.quotas.admit(&route, client_key, &shared.metrics) {
        return over.into_response();
    }
    // A Copilot Studio agent is served by the regional base its token
    // endpoint's host names, looked up now and then (boxed: rare).
    if let Some(endpoint) = shared
        .credentials
        .as_ref()
        .and_then(ServerCredentials::token_endpoint)
        && Box::pin(endpoint.use_regional_base(&shared.upstream))
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
    );
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
                    shared,
                    policy,
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
                let _active = shared.metrics.connection(transport);
                rest::relay(shared, policy, &route, request, client).await
            }
        };
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request done"
        );
        response
    }
    .instrument(span)
    .await
}
