//! The listeners: the accept loop, optional TLS, HTTP/1.1 (with upgrades)
//! and h2, every connection's deadlines, and the graceful drain.
//!
//! Deadlines run from `accept`: the first request's headers must be in
//! within `header_read_timeout_ms` (first byte, TLS handshake and h2 preface
//! included), and a connection with no request in flight is closed after
//! `idle_timeout_ms`, for HTTP/1 keep-alive and h2 alike (h2 pings only
//! detect dead peers; they do not keep an idle connection's slot). Over the
//! connection limit a new connection is accepted and closed at once, so the
//! accept loop never waits for a slot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::header_hygiene::ClientInfo;
use crate::idle::Idle;
use crate::metrics::ErrorKind;
use crate::reload::SharedAcceptor;
use crate::router::handle;
use crate::state::Shared;
use crate::when_woken::WhenWoken;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// How often a plain connection's first bytes are looked at again while an
/// h2 preface is incomplete.
const PREFACE_POLL: Duration = Duration::from_millis(10);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// h2: streams one connection may have open, and the largest header list.
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
const H2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// h2: how often an idle peer is pinged, and how long its answer may take.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Connections the admin listener serves at once.
const ADMIN_MAX_CONNECTIONS: usize = 64;

pub struct Listener {
    pub tcp: TcpListener,
    /// Read for every connection, so a reload applies to new ones.
    pub tls: Option<SharedAcceptor>,
}

/// Runs the accept loop until `stop` is cancelled, then drains.
pub fn spawn(listener: Listener, shared: Arc<Shared>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let connections = Connections::default();
        accept_loop(&listener, &shared, &stop, &connections).await;
        drop(listener);
        drain(&shared, connections).await;
    })
}

/// Serves `/healthz`, `/readyz` and `/metrics` until `stop` is cancelled.
pub fn spawn_admin(tcp: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
        let connections = Connections::default();
        loop {
            let (stream, peer) = tokio::select! {
                () = stop.cancelled() => break,
                accepted = tcp.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let shared = shared.clone();
            let closing = connections.closing.clone();
            connections.tasks.spawn(async move {
                let limits = ConnectionLimits::of(&shared);
                let service = move |request: Request<Incoming>| {
                    let shared = shared.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(crate::router::admin(&shared, &request))
                    }
                };
                serve_plain(stream, peer, limits, service, closing).await;
                drop(slot);
            });
        }
        connections.closing.cancel();
        connections.tasks.close();
    });
}

/// The connection tasks of one listener, and the signal that asks them to
/// finish gracefully.
#[derive(Default)]
struct Connections {
    tasks: TaskTracker,
    closing: CancellationToken,
}

#[derive(Clone, Copy)]
struct ConnectionLimits {
    first_request: Duration,
    header_read: Duration,
    idle: Duration,
}

impl ConnectionLimits {
    fn of(shared: &Shared) -> ConnectionLimits {
        let live = shared.live();
        let listen = &live.config.listen;
        ConnectionLimits {
            first_request: listen.header_read_timeout,
            header_read: listen.header_read_timeout,
            idle: listen.idle_timeout,
        }
    }
}

async fn accept_loop(
    listener: &Listener,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    connections: &Connections,
) {
    loop {
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
        let Ok(slot) = shared
            .lifecycle
            .connection_slots
            .clone()
            .try_acquire_owned()
        else {
            refuse_over_limit(tcp, listener.tls.is_some(), shared);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let tls = listener
            .tls
            .as_ref()
            .map(|current| TlsAcceptor::clone(&current.load()));
        let shared = shared.clone();
        let closing = connections.closing.clone();
        connections.tasks.spawn(async move {
            serve_connection(tcp, peer, tls, shared, closing, slot).await;
        });
    }
}

/// Over the limit: a plain listener answers 503 if the socket takes it at
/// once (never waiting), then the connection is closed either way.
fn refuse_over_limit(tcp: TcpStream, tls: bool, shared: &Shared) {
    shared.metrics.error(ErrorKind::ConnectionLimit);
    if !tls {
        let _ = tcp.try_write(over_limit_response().as_bytes());
    }
    tracing::debug!("connection refused: at listen.max_connections");
}

fn over_limit_response() -> String {
    let body = ProxyError::AtConnectionLimit.body();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    closing: CancellationToken,
    slot: OwnedSemaphorePermit,
) {
    let limits = ConnectionLimits::of(&shared);
    let proto = if tls.is_some() { "https" } else { "http" };
    let service = {
        let shared = shared.clone();
        let ip_value = ClientInfo::ip_value(peer.ip());
        move |request: Request<Incoming>| {
            let client = client_info(peer, &ip_value, proto, &request);
            handle(shared.clone(), request, client)
        }
    };
    match tls {
        None => serve_plain(tcp, peer, limits, service, closing).await,
        Some(acceptor) => {
            let deadline = Instant::now() + limits.first_request;
            match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let protocol = match stream.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Protocol::Http2,
                        _ => Protocol::Http1,
                    };
                    let io = TokioIo::new(stream);
                    serve_http(io, protocol, deadline, limits, service, closing).await;
                }
                Ok(Err(error)) => {
                    shared.metrics.error(ErrorKind::TlsHandshake);
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                }
                Err(_) => {
                    shared.metrics.error(ErrorKind::TlsHandshake);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
    drop(slot);
}

/// A plain connection: HTTP/1.1, or h2 with prior knowledge (its preface).
async fn serve_plain<S, F>(
    tcp: TcpStream,
    peer: SocketAddr,
    limits: ConnectionLimits,
    service: S,
    closing: CancellationToken,
) where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>> + Send + 'static,
{
    let deadline = Instant::now() + limits.first_request;
    match tokio::time::timeout_at(deadline, sniff(&tcp)).await {
        Ok(Some(protocol)) => {
            serve_http(
                TokioIo::new(tcp),
                protocol,
                deadline,
                limits,
                service,
                closing,
            )
            .await;
        }
        Ok(None) => tracing::debug!(%peer, "connection closed before a request"),
        Err(_) => tracing::debug!(%peer, "no request before the header read timeout"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Waits for the first bytes and tells h2's preface from HTTP/1; `None`
/// when the peer closes first. Peeked bytes stay in the socket for hyper.
async fn sniff(tcp: &TcpStream) -> Option<Protocol> {
    let mut start = [0u8; H2_PREFACE.len()];
    loop {
        let seen = tcp.peek(&mut start).await.ok()?;
        if seen == 0 {
            return None;
        }
        if !H2_PREFACE.starts_with(&start[..seen]) {
            return Some(Protocol::Http1);
        }
        if seen == H2_PREFACE.len() {
            return Some(Protocol::Http2);
        }
        // Part of a preface: peeking again at once would return the same
        // bytes, so wait a little (the caller's deadline bounds this).
        tokio::time::sleep(PREFACE_POLL).await;
    }
}

fn client_info(
    peer: SocketAddr,
    ip_value: &http::HeaderValue,
    proto: &'static str,
    request: &Request<Incoming>,
) -> ClientInfo {
    ClientInfo {
        ip: peer.ip(),
        ip_value: ip_value.clone(),
        proto,
        host: request
            .headers()
            .get(http::header::HOST)
            .cloned()
            .or_else(|| {
                let authority = request.uri().authority()?;
                http::HeaderValue::from_str(authority.as_str()).ok()
            }),
    }
}

/// Serves one connection until it ends, closing it gracefully when the
/// proxy drains, when the first request is late, or when it has been idle.
async fn serve_http<I, S, F>(
    io: TokioIo<I>,
    protocol: Protocol,
    first_request_by: Instant,
    limits: ConnectionLimits,
    service: S,
    closing: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>> + Send + 'static,
{
    let idle = Arc::new(Idle::new(first_request_by, limits.idle));
    let service = {
        let idle = idle.clone();
        service_fn(move |request| {
            let busy = idle.begin();
            // Boxed where it is made: the relay's future runs to kilobytes,
            // and hyper moves the request's future more than once.
            let answer = Box::pin(service(request));
            async move {
                let response = answer.await;
                drop(busy);
                response
            }
        })
    };
    match protocol {
        Protocol::Http1 => {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .serve_connection(io, service)
                .with_upgrades();
            let shutdown = hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown;
            supervise(connection, shutdown, &idle, &closing, limits.header_read).await;
        }
        Protocol::Http2 => {
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
                .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
                .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
                .max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
                .serve_connection(io, service);
            let shutdown = hyper::server::conn::http2::Connection::graceful_shutdown;
            supervise(connection, shutdown, &idle, &closing, limits.header_read).await;
        }
    }
}

/// Runs `connection` to its end; `graceful_shutdown` asks it to finish what
/// it has in flight and close. An idle connection asked to close gets
/// `grace` to do so (an h2 peer that never answers the GOAWAY's ping would
/// otherwise keep its slot), then it is dropped.
async fn supervise<C>(
    connection: C,
    graceful_shutdown: fn(std::pin::Pin<&mut C>),
    idle: &Idle,
    closing: &CancellationToken,
    grace: Duration,
) where
    C: Future<Output = hyper::Result<()>>,
{
    let mut connection = std::pin::pin!(connection);
    let mut closed = false;
    let mut dropped_at: Option<Instant> = None;
    loop {
        // Polled only when one of its timers fires, not at every read and
        // write of the connection (see `when_woken`).
        let alarm = WhenWoken::new(next_alarm(closed, dropped_at, idle, closing));
        tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            alarm = alarm => match alarm {
                Alarm::Closing => {
                    graceful_shutdown(connection.as_mut());
                    closed = true;
                }
                Alarm::Idle => {
                    tracing::debug!("connection closed: idle or no request in time");
                    graceful_shutdown(connection.as_mut());
                    closed = true;
                    dropped_at = Some(Instant::now() + grace);
                }
                Alarm::Dropped => {
                    tracing::debug!("connection dropped: it did not close in time");
                    return;
                }
            },
        }
    }
}

/// What ends a connection's wait besides the connection itself.
enum Alarm {
    /// The proxy is shutting down.
    Closing,
    /// Idle too long, or no first request in time.
    Idle,
    /// Closed gracefully, and not done by its deadline.
    Dropped,
}

/// The next alarm: shutdown or idleness while open; once closed, only the
/// drop deadline (set when it was closed for idleness).
async fn next_alarm(
    closed: bool,
    dropped_at: Option<Instant>,
    idle: &Idle,
    closing: &CancellationToken,
) -> Alarm {
    if closed {
        sleep_until_some(dropped_at).await;
        return Alarm::Dropped;
    }
    tokio::select! {
        () = closing.cancelled() => Alarm::Closing,
        () = idle.expired() => Alarm::Idle,
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Stops taking new work: readiness goes false, open WebSockets get 1001,
/// in-flight requests get until the drain timeout.
async fn drain(shared: &Shared, connections: Connections) {
    shared.ready.store(false, Ordering::Relaxed);
    shared.lifecycle.shutdown.cancel();
    shared.lifecycle.streams.close();
    connections.closing.cancel();
    connections.tasks.close();
    let drain_timeout = shared.live().config.listen.drain_timeout;
    let requests = async {
        if tokio::time::timeout(drain_timeout, connections.tasks.wait())
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
        if tokio::time::timeout(drain_timeout, shared.lifecycle.streams.wait())
            .await
            .is_err()
        {
            tracing::warn!("WebSocket close handshakes cut off at the drain timeout");
        }
    };
    tokio::join!(requests, streams);
}
