//! What the REST and WebSocket relays read, and nothing more: built once at
//! start-up and handed to them by the router, so a relay never reaches into
//! the router's state. Every setting here belongs to a section only a
//! restart changes; what a reload changes (the SSO filter) comes with each
//! request.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Uri};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::credentials::ServerCredentials;
use super::filter::{ActivityFilter, Requester};
use super::relay::FrameLimits;
use super::stream_url::PublicBase;
use crate::config::Config;
use crate::directline::quota::{self, Quotas};
use crate::header_hygiene::ClientInfo;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// The handles a WebSocket relay shares with the server: its place among
/// the connections, and the shutdown that closes it.
#[derive(Clone)]
pub struct StreamLifecycle {
    /// Client connections and open relays share this bound.
    pub connection_slots: Arc<Semaphore>,
    /// Open relays, so shutdown can wait for their close.
    pub streams: TaskTracker,
    /// Cancelled at shutdown: relays close both sides with 1001.
    pub shutdown: CancellationToken,
}

pub struct RelayState {
    pub(super) upstream: Arc<Upstream>,
    pub(super) metrics: Arc<Metrics>,
    /// The server-held Direct Line secret, when configured.
    pub(super) credentials: Option<ServerCredentials>,
    pub(super) quotas: Quotas,
    pub(super) lifecycle: StreamLifecycle,
    pub(super) configured_public_base: Option<PublicBase>,
    pub(super) tls: bool,
    pub(super) trust_forwarded_headers: bool,
    pub(super) max_request_body_bytes: u64,
    pub(super) max_rewrite_body_bytes: usize,
    pub(super) close_timeout: Duration,
    pub(super) frame_limits: FrameLimits,
}

impl RelayState {
    pub fn new(
        config: &Config,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        credentials: Option<ServerCredentials>,
        tls: bool,
        lifecycle: StreamLifecycle,
    ) -> RelayState {
        RelayState {
            upstream,
            metrics,
            credentials,
            quotas: Quotas::new(&config.limits),
            lifecycle,
            configured_public_base: config
                .listen
                .public_url
                .as_ref()
                .and_then(PublicBase::from_config),
            tls,
            trust_forwarded_headers: config.listen.trust_forwarded_headers,
            max_request_body_bytes: config.limits.max_request_body_bytes,
            max_rewrite_body_bytes: config.limits.max_rewrite_body_bytes,
            close_timeout: config.websocket.close_timeout,
            frame_limits: FrameLimits::from_config(&config.websocket),
        }
    }

    /// Headers of the user's request the proxy itself consumes (the SSO
    /// provider's inputs, the authenticated-user header): the user's
    /// credentials for the proxy, never forwarded to Direct Line.
    /// `Authorization` is Direct Line's own and always forwarded.
    pub(super) fn consumed_headers(
        &self,
        sso: Option<&Arc<dyn ActivityFilter>>,
    ) -> Vec<HeaderName> {
        let mut names = sso.map(|sso| sso.consumed_headers()).unwrap_or_default();
        if let Some(credentials) = &self.credentials {
            names.extend(credentials.user_id_header().cloned());
        }
        names.retain(|name| name != http::header::AUTHORIZATION);
        names
    }

    /// Who a client is for quotas: the bound user, else its address.
    pub(super) fn client_key(&self, headers: &HeaderMap, client: &ClientInfo) -> String {
        let bound = match self.requester(headers) {
            Requester::Bound(user) => user,
            Requester::Anonymous => None,
        };
        quota::client_key(
            bound.as_deref(),
            headers,
            client,
            self.trust_forwarded_headers,
        )
    }

    /// Who sent a request, as far as the proxy knows its users: the bound
    /// id of `directline.user_id_header`'s value when binding is on.
    pub(super) fn requester(&self, headers: &HeaderMap) -> Requester {
        match &self.credentials {
            Some(credentials) if credentials.user_id_header().is_some() => {
                Requester::Bound(credentials.user_id_of(headers))
            }
            _ => Requester::Anonymous,
        }
    }

    /// Where clients reach this proxy, for rewritten `streamUrl`s.
    pub(super) fn public_base(&self, uri: &Uri, headers: &HeaderMap) -> Option<PublicBase> {
        if let Some(base) = &self.configured_public_base {
            return Some(base.clone());
        }
        let base = PublicBase::from_request(uri, headers, self.tls, self.trust_forwarded_headers);
        if base.is_none() {
            tracing::warn!("no usable Host header: streamUrl left pointing upstream");
        }
        base
    }
}
