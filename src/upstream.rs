//! The clients to Direct Line and the mapping of their failures to Direct
//! Line-shaped errors.

mod connections;

pub use connections::UpstreamBody;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::Uri;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use thiserror::Error;
use tracing::Instrument;

use crate::body::ProxyBody;
use crate::config::UpstreamConfig;
use crate::metrics::{ErrorKind, Metrics};
use crate::telemetry::Traces;
use crate::tls::{self, TlsError};
use connections::{Connections, SendError};

#[derive(Debug, Error)]
pub enum UpstreamSetupError {
    #[error("upstream TLS: {0}")]
    Tls(#[from] TlsError),
}

#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    #[error("upstream request failed: {0}")]
    Failed(String),
    #[error("cannot build the upstream URL: {0}")]
    BadUrl(String),
}

impl UpstreamError {
    fn kind(&self) -> ErrorKind {
        match self {
            UpstreamError::Timeout(_) => ErrorKind::UpstreamTimeout,
            UpstreamError::Unreachable(_) => ErrorKind::UpstreamUnreachable,
            UpstreamError::Failed(_) | UpstreamError::BadUrl(_) => ErrorKind::UpstreamFailed,
        }
    }
}

/// hyper-util's pooled HTTP/1.1 client: what stream upgrades go through,
/// since the upgraded connection is handed over.
type PooledClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// Calls to hosts other than Direct Line (token providers, token posts, a
/// Copilot Studio token endpoint), on the same kind of connections as the
/// REST relay's: driven by the calling task, so a sign-in's provider call
/// and token post wait for no hand-off to another task.
#[derive(Clone)]
pub struct HttpClient {
    connections: Arc<Connections>,
}

impl HttpClient {
    /// Sends `request` (an absolute URI) and returns once the response
    /// head is in; the body drives the connection while it is read.
    pub async fn request(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        // Boxed, so the caller's future does not carry the exchange's state.
        Box::pin(self.connections.send(request)).await
    }
}

/// Direct Line behind one base URL: REST calls, and calls to other hosts
/// through [`HttpClient`], on connections driven by the calling task;
/// stream upgrades on the pooled client.
pub struct Upstream {
    client: PooledClient,
    connections: Arc<Connections>,
    /// `upstream.url`, or the regional base a Copilot Studio token endpoint
    /// names (see `directline::token_endpoint`), swapped in when known.
    base: ArcSwap<Uri>,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
    traces: Traces,
}

impl Upstream {
    pub fn new(
        config: &UpstreamConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, UpstreamSetupError> {
        let base = config.url.clone();
        let tls = tls::client_config(config.ca_file.as_deref())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let connections = Arc::new(Connections::new(
            connector.clone(),
            config.pool_max_idle_per_host,
            config.pool_idle_timeout,
        ));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(connector);
        Ok(Upstream {
            client,
            connections,
            base: ArcSwap::from_pointee(base),
            request_timeout: config.request_timeout,
            metrics,
            traces: Traces::default(),
        })
    }

    /// Traces every call (`[telemetry]` on): each gets a client span, whose
    /// context replaces the client's `traceparent`.
    pub fn with_traces(mut self, traces: Traces) -> Upstream {
        self.traces = traces;
        self
    }

    pub fn traces(&self) -> Traces {
        self.traces
    }

    /// The upstream URL for the path and query the client asked for, under
    /// the base URL's path prefix.
    pub fn url_for(&self, requested: &Uri) -> Result<Uri, UpstreamError> {
        let path_and_query = requested
            .path_and_query()
            .ok_or_else(|| UpstreamError::BadUrl("request has no path".into()))?;
        let base = self.base.load();
        let prefix = base.path().trim_end_matches('/');
        let mut parts = Uri::clone(&base).into_parts();
        parts.path_and_query = Some(if prefix.is_empty() {
            // Nothing to join: the client's, as parsed already.
            path_and_query.clone()
        } else {
            format!("{prefix}{path_and_query}")
                .parse()
                .map_err(|e: http::uri::InvalidUri| UpstreamError::BadUrl(e.to_string()))?
        });
        Uri::from_parts(parts).map_err(|e| UpstreamError::BadUrl(e.to_string()))
    }

    pub fn base(&self) -> Arc<Uri> {
        self.base.load_full()
    }

    /// Sends every later request to `base` instead.
    pub fn set_base(&self, base: Uri) {
        self.base.store(Arc::new(base));
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// A handle on the same connections, for calls to other hosts.
    pub fn client(&self) -> HttpClient {
        HttpClient {
            connections: self.connections.clone(),
        }
    }

    /// Where calls made beside `send` (the token endpoint's) are counted.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Sends `request` and waits for the response headers, at most the
    /// configured request timeout. `route` labels the metrics.
    pub async fn send(
        &self,
        mut request: Request<ProxyBody>,
        route: &'static str,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let span = self.call_span(&mut request, route);
        // Boxed, so the caller's future does not carry the exchange's state.
        let sent = Box::pin(self.connections.send(request));
        self.timed(route, span, async {
            sent.await.map_err(|error| match error {
                SendError::Connect(error) => UpstreamError::Unreachable(error_chain(&*error)),
                SendError::Http(error) => UpstreamError::Failed(error_chain(&error)),
            })
        })
        .await
    }

    /// [`Upstream::send`] for a request that upgrades the connection (the
    /// stream): the pooled client hands the upgraded connection over.
    pub async fn send_upgrade(
        &self,
        mut request: Request<ProxyBody>,
        route: &'static str,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let span = self.call_span(&mut request, route);
        let sent = self.client.request(request);
        self.timed(route, span, async {
            sent.await.map_err(|error| {
                if error.is_connect() {
                    UpstreamError::Unreachable(error_chain(&error))
                } else {
                    UpstreamError::Failed(error_chain(&error))
                }
            })
        })
        .await
    }

    /// With traces on, the call's client span, whose context `request`
    /// carries on instead of the client's; a disabled span otherwise. The
    /// query is never recorded: it can carry the stream token `t=`.
    fn call_span(&self, request: &mut Request<ProxyBody>, route: &'static str) -> tracing::Span {
        let span = self.traces.span(|| {
            tracing::info_span!(
                "upstream",
                otel.kind = "client",
                http.request.method = %request.method(),
                server.address = request.uri().host().unwrap_or_default(),
                url.path = request.uri().path(),
                route,
                http.response.status_code = tracing::field::Empty,
            )
        });
        self.traces.inject(&span, request.headers_mut());
        span
    }

    async fn timed<B>(
        &self,
        route: &'static str,
        span: tracing::Span,
        sent: impl Future<Output = Result<Response<B>, UpstreamError>>,
    ) -> Result<Response<B>, UpstreamError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.request_timeout, sent)
            .instrument(span.clone())
            .await
            .unwrap_or(Err(UpstreamError::Timeout(self.request_timeout)));
        let status = result.as_ref().ok().map(Response::status);
        if let Some(status) = status {
            self.traces.record_status(&span, status.as_u16());
        }
        let timed_out = matches!(result, Err(UpstreamError::Timeout(_)));
        self.metrics
            .upstream_request(route, status, timed_out, started.elapsed());
        if let Err(error) = &result {
            self.metrics.error(error.kind());
        }
        result
    }
}

/// The error and its sources in one line; hyper's top-level messages alone
/// ("client error (Connect)") do not say what went wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
