//! A dead, slow or refusing upstream gives clear Direct Line errors, and a
//! stream whose upstream dies is closed so the client reconnects.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::{Http, Stack, next_activity_set, next_message, proxy_config, ws_connect};

async fn proxy_in_front_of(
    upstream: &str,
    request_timeout_ms: u64,
) -> directline_proxy::RunningProxy {
    let mut config = proxy_config(upstream);
    config.upstream.request_timeout = Duration::from_millis(request_timeout_ms);
    directline_proxy::start(config).await.expect("proxy starts")
}

#[tokio::test]
async fn dead_upstream_gives_502_with_a_directline_error_body() {
    let dead = crate::common::dead_address().await;
    let proxy = proxy_in_front_of(&dead, 5_000).await;
    let reply = Http::plain()
        .post_json(
            &format!("{}/v3/directline/conversations", proxy.base_url()),
            "s",
            &Value::Null,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.json()["error"]["code"], "BadGateway");
    assert!(reply.json()["error"]["message"].is_string());
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_gives_504_after_the_configured_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket); // accepted, never answered
        }
    });
    let proxy = proxy_in_front_of(&silent_url, 300).await;
    let started = Instant::now();
    let reply = Http::plain()
        .get(
            &format!(
                "{}/v3/directline/conversations/c/activities",
                proxy.base_url()
            ),
            "t",
        )
        .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.json()["error"]["code"], "GatewayTimeout");
    assert!(started.elapsed() >= Duration::from_millis(300));
    proxy.shutdown().await;
    holder.abort();
}

#[tokio::test]
async fn stream_whose_upstream_dies_is_closed_and_the_client_can_reconnect() {
    let stack = Stack::start().await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    next_activity_set(&mut ws).await;
    stack.emulator.drop_streams();
    let frame = loop {
        if let Message::Close(frame) = next_message(&mut ws).await {
            break frame.expect("a close frame with a code");
        }
    };
    assert_eq!(frame.code, CloseCode::Error);
    assert_eq!(frame.reason.as_str(), "upstream connection lost");

    let reconnect = stack.http.get(&conv.url("?watermark=-"), &conv.token).await;
    assert_eq!(reconnect.status, StatusCode::OK);
    let url = reconnect.json()["streamUrl"]
        .as_str()
        .expect("streamUrl")
        .to_string();
    let mut ws = ws_connect(&url).await;
    next_activity_set(&mut ws).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn refused_stream_handshake_passes_the_upstream_status_through() {
    let stack = Stack::start().await;
    let conv = stack.start_conversation().await;
    let forged = format!(
        "{}?t=forged-stream-token",
        conv.stream_url.split('?').next().unwrap_or_default()
    );
    let error = tokio_tungstenite::connect_async(forged.as_str())
        .await
        .expect_err("the upstream refuses a forged stream token");
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn stream_upgrade_to_a_dead_upstream_gives_502() {
    let stack = Stack::start().await;
    let conv = stack.start_conversation().await;
    stack.emulator.drop_streams();
    let emulator = stack.emulator;
    emulator.shutdown().await;
    let error = tokio_tungstenite::connect_async(conv.stream_url.as_str())
        .await
        .expect_err("no upstream");
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        }
        other => panic!("expected 502, got {other}"),
    }
    stack.proxy.shutdown().await;
}

/// An upstream that answers every WebSocket handshake with 101 and
/// `permessage-deflate`, although nobody offered it.
async fn upstream_accepting_unoffered_deflate() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if socket.read_exact(&mut byte).await.is_err() {
                    break;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let key = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("sec-websocket-key")
                        .then(|| value.trim().to_string())
                })
                .unwrap_or_default();
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
            );
            let _ = socket.write_all(answer.as_bytes()).await;
            held.push(socket);
        }
    });
    (url, task)
}

#[tokio::test]
async fn an_upstream_accepting_an_extension_nobody_offered_gives_502() {
    let (upstream, task) = upstream_accepting_unoffered_deflate().await;
    let proxy = proxy_in_front_of(&upstream, 5_000).await;
    let url = format!(
        "ws://{}/v3/directline/conversations/c/stream?t=x",
        proxy.local_addr()
    );
    let error = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect_err("the handshake fails");
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        }
        other => panic!("expected 502, got {other}"),
    }
    proxy.shutdown().await;
    task.abort();
}
