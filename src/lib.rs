//! directline-proxy: a transparent reverse proxy for Direct Line 3.0.
//!
//! [`start`] is the whole product behind one call: the binary, the demo and
//! the integration tests all start the proxy through it.

pub mod body;
pub mod config;
#[cfg(feature = "emulator")]
pub mod demo;
pub mod directline;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod error;
pub mod header_hygiene;
pub mod header_values;
pub mod idle;
pub mod logging;
pub mod metrics;
pub mod origin;
pub mod outcome;
pub mod reload;
pub mod router;
pub mod server;
pub mod sso;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod when_woken;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::directline::credentials::ServerCredentials;
use crate::directline::state::{RelayState, StreamLifecycle};
use crate::metrics::Metrics;
use crate::reload::{ReloadError, Reloader};
use crate::sso::decisions::Decisions;
use crate::state::{Settings, Shared};
use crate::upstream::{Upstream, UpstreamSetupError};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("listener TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("upstream client: {0}")]
    Upstream(#[from] UpstreamSetupError),
    #[error("sso: {0}")]
    Sso(#[from] sso::SsoSetupError),
    #[error("{0}")]
    Credentials(#[from] directline::credentials::CredentialsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A proxy that is listening. Dropping it does not stop it; call
/// [`RunningProxy::shutdown`].
pub struct RunningProxy {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    tls: bool,
    stop: CancellationToken,
    task: JoinHandle<()>,
    reloader: Arc<Reloader>,
}

impl RunningProxy {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served, when `[admin]
    /// addr` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// `http://addr` or `https://addr`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// Applies a new config's TLS certificate and `[sso]` settings.
    pub fn reload(&self, config: Config) -> Result<(), ReloadError> {
        self.reloader.apply(config)
    }

    /// A handle for reloading from a file (SIGHUP) while the proxy runs.
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Reloads whenever `path` or the certificate files change, checking
    /// every `interval`, until the proxy stops.
    pub fn watch(&self, path: std::path::PathBuf, interval: std::time::Duration) {
        self.reloader
            .clone()
            .watch(path, interval, self.stop.clone());
    }

    /// A handle that starts the graceful shutdown when cancelled.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops accepting, closes WebSockets with 1001, waits for in-flight
    /// requests up to the drain timeout.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.wait().await;
    }

    /// Waits until the proxy has stopped (after its stop token was cancelled).
    pub async fn wait(self) {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "proxy task ended abnormally");
        }
    }
}

async fn bind_admin(config: &Config) -> Result<Option<TcpListener>, StartError> {
    let Some(addr) = config.admin.addr else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| StartError::Bind { addr, source })
}

/// Validates `config`, binds the listener and starts serving.
pub async fn start(config: Config) -> Result<RunningProxy, StartError> {
    config.validate()?;
    let addr = config.listen.addr;
    let tls = match (&config.listen.tls_cert, &config.listen.tls_key) {
        (Some(cert), Some(key)) => {
            Some(TlsAcceptor::from(Arc::new(tls::server_config(cert, key)?)))
        }
        _ => None,
    };
    let metrics = Arc::new(Metrics::new());
    let traces = telemetry::Traces::new(&config.telemetry);
    let upstream = Arc::new(Upstream::new(&config.upstream, metrics.clone())?.with_traces(traces));
    let credentials = ServerCredentials::from_config(
        &config.directline,
        |var| std::env::var(var).ok(),
        &upstream,
    )?;
    let decisions = Arc::new(Decisions::new(
        config.sso.decision_ttl,
        config.sso.decision_capacity,
    ));
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local_addr = tcp
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let admin = bind_admin(&config).await?;
    let admin_addr = admin.as_ref().and_then(|admin| admin.local_addr().ok());
    let lifecycle = StreamLifecycle {
        connection_slots: Arc::new(Semaphore::new(config.listen.max_connections)),
        streams: TaskTracker::new(),
        shutdown: CancellationToken::new(),
    };
    let tls_on = tls.is_some();
    let relays = RelayState::new(
        &config,
        upstream.clone(),
        metrics.clone(),
        credentials,
        tls_on,
        lifecycle.clone(),
    );
    let sso_provider = config.sso.provider.name();
    let settings = Settings::new(config, upstream.clone(), metrics.clone(), decisions)?;
    let settings = Arc::new(settings);
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        metrics,
        relays,
        lifecycle,
        ready: AtomicBool::new(true),
    });
    let stop = CancellationToken::new();
    let tls = tls.map(|acceptor| Arc::new(ArcSwap::from_pointee(acceptor)));
    let reloader = Arc::new(Reloader::new(settings, tls.clone()));
    let served = server::spawn(server::Listener { tcp, tls }, shared.clone(), stop.clone());
    let admin_stop = CancellationToken::new();
    if let Some(admin) = admin {
        server::spawn_admin(admin, shared.clone(), admin_stop.clone());
    }
    // The admin listener answers through the drain (`/readyz` says 503).
    let task = tokio::spawn(async move {
        if let Err(error) = served.await {
            tracing::error!(%error, "proxy task ended abnormally");
        }
        admin_stop.cancel();
    });
    tracing::info!(
        %local_addr,
        admin_addr = admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        tls = tls_on,
        upstream = %upstream.base(),
        sso = sso_provider,
        "proxy listening"
    );
    Ok(RunningProxy {
        local_addr,
        admin_addr,
        tls: tls_on,
        stop,
        task,
        reloader,
    })
}
