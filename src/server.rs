//! The listener: accept loop, optional TLS, HTTP/1.1 and h2 with upgrades,
//! and the graceful drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::forward::ClientInfo;
use crate::metrics::ErrorKind;
use crate::proxy::{Shared, handle};
use crate::reload::SharedAcceptor;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

pub struct Listener {
    pub tcp: TcpListener,
    /// Read for every connection, so a reload applies to new ones.
    pub tls: Option<SharedAcceptor>,
}

/// Runs the accept loop until `stop` is cancelled, then drains.
pub fn spawn(listener: Listener, shared: Arc<Shared>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        accept_loop(&listener, &shared, &stop, &graceful).await;
        drop(listener);
        drain(&shared, graceful).await;
    })
}

async fn accept_loop(
    listener: &Listener,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    graceful: &GracefulShutdown,
) {
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => return,
            slot = shared.connection_slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.tcp.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let tls = listener
            .tls
            .as_ref()
            .map(|current| current.read().unwrap_or_else(|p| p.into_inner()).clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            serve_connection(tcp, peer, tls, shared, watcher).await;
            drop(slot);
        });
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    watcher: Watcher,
) {
    let header_timeout = shared.config.listen.header_read_timeout();
    match tls {
        None => serve_http(TokioIo::new(tcp), peer, "http", shared, watcher).await,
        Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => {
                serve_http(TokioIo::new(stream), peer, "https", shared, watcher).await
            }
            Ok(Err(error)) => {
                shared.metrics.error(ErrorKind::TlsHandshake);
                tracing::debug!(%peer, %error, "TLS handshake failed");
            }
            Err(_) => {
                shared.metrics.error(ErrorKind::TlsHandshake);
                tracing::debug!(%peer, "TLS handshake timed out");
            }
        },
    }
}

async fn serve_http<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    proto: &'static str,
    shared: Arc<Shared>,
    watcher: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.listen.header_read_timeout());
    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let client = ClientInfo {
            ip: peer.ip(),
            proto,
            host: request
                .headers()
                .get(http::header::HOST)
                .cloned()
                .or_else(|| {
                    let authority = request.uri().authority()?;
                    http::HeaderValue::from_str(authority.as_str()).ok()
                }),
        };
        handle(shared.clone(), request, client)
    });
    let connection = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%peer, error = %error, "connection ended with an error");
    }
}

/// Stops taking new work: readiness goes false, open WebSockets get 1001,
/// in-flight requests get until the drain timeout.
async fn drain(shared: &Shared, graceful: GracefulShutdown) {
    shared.ready.store(false, Ordering::Relaxed);
    shared.shutdown.cancel();
    shared.streams.close();
    let drain_timeout = shared.config.listen.drain_timeout();
    let requests = async {
        if tokio::time::timeout(drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain_timeout,
                "in-flight requests cut off at the drain timeout"
            );
        }
    };
    let streams = async {
        if tokio::time::timeout(drain_timeout, shared.streams.wait())
            .await
            .is_err()
        {
            tracing::warn!("WebSocket close handshakes cut off at the drain timeout");
        }
    };
    tokio::join!(requests, streams);
}
