//! The accept loop: HTTP/1.1 (with upgrades) and h2c on one listener,
//! until shutdown is signalled.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::rest;
use super::state::EmulatorState;

/// Accepts connections until `shutdown` turns true, then aborts the
/// connections still open (sockets already upgraded are closed separately).
pub async fn serve(
    listener: TcpListener,
    state: Arc<EmulatorState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(stream, state.clone()));
                }
                Err(err) => tracing::warn!(%err, "emulator accept failed"),
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
}

async fn serve_connection(stream: tokio::net::TcpStream, state: Arc<EmulatorState>) {
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(rest::handle(state, request).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(err) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%err, "emulator connection ended with an error");
    }
}
