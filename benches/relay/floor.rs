//! The floor (`relay floor PORT UPSTREAM`): the least a hop built on the proxy's
//! own stack (tokio, hyper 1's HTTP/1 on both sides) can cost, so the
//! benchmark can tell what the proxy's own work adds from what the stack
//! costs before the proxy does anything.
//!
//! It does nothing but relay: each client connection gets one upstream
//! connection, driven in the same task as the client's (as the proxy's
//! in-task connections are); each request goes on as it came, headers
//! untouched, no checks, no logging, no metrics, no timeouts; an upgrade
//! becomes `tokio::io::copy_bidirectional` of the two sockets, bytes copied
//! with no WebSocket framing looked at. A hop that does this much is not a
//! proxy anyone should deploy; it is the yardstick the targets of issue 9
//! are read against.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::BoxError;

pub async fn run(mut argv: impl Iterator<Item = String>) -> Result<(), BoxError> {
    let (Some(port), Some(upstream)) = (argv.next(), argv.next()) else {
        return Err("usage: relay floor PORT UPSTREAM_HOST:PORT".into());
    };
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Err(error) = serve(client, &upstream).await {
                eprintln!("floor: {error}");
            }
        });
    }
}

/// One client connection and its upstream connection, in one task.
async fn serve(client: TcpStream, upstream: &str) -> Result<(), BoxError> {
    let server_side = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server_side.set_nodelay(true)?;
    let (sender, upstream_connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(server_side)).await?;
    let sender = Arc::new(Mutex::new(sender));
    let service = service_fn(move |request| forward(Arc::clone(&sender), request));
    let client_connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .with_upgrades();
    // The service holds the only sender, so the upstream connection ends
    // when the client's does.
    let (client_result, upstream_result) =
        tokio::join!(client_connection, upstream_connection.with_upgrades());
    client_result?;
    upstream_result?;
    Ok(())
}

async fn forward(
    sender: Arc<Mutex<SendRequest<Incoming>>>,
    mut request: Request<Incoming>,
) -> Result<Response<Incoming>, hyper::Error> {
    let client_upgrade = hyper::upgrade::on(&mut request);
    let answer = {
        let mut sender = sender.lock().await;
        sender.ready().await?;
        sender.send_request(request)
    };
    let mut response = answer.await?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(
                &mut TokioIo::new(client),
                &mut TokioIo::new(upstream),
            )
            .await;
        });
    }
    Ok(response)
}
