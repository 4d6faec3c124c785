//! The listener and the input, tried as an attacker would: sockets that
//! hold a slot without asking for anything, a full listener, paths and
//! handshakes an upstream could read differently, oversized frames, and
//! clients that ask too often.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use directline_proxy::config::Config;
use futures_util::SinkExt;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::{Stack, WAIT, next_message, quiet_emulator, ws_connect};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty h2 SETTINGS frame.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

async fn stack_with(adjust: impl FnOnce(&mut Config)) -> Stack {
    Stack::start_with(quiet_emulator(), adjust).await
}

fn short_deadlines(config: &mut Config) {
    config.listen.header_read_timeout = Duration::from_millis(300);
    config.listen.idle_timeout = Duration::from_millis(300);
}

/// Reads until the peer closes; fails the test if it does not within WAIT.
async fn closed_by_the_proxy(mut socket: TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, socket.read_to_end(&mut received)).await;
    match read {
        Ok(_) => received,
        Err(_) => panic!("the proxy kept the connection open"),
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

#[tokio::test]
async fn a_socket_that_sends_nothing_is_closed_at_the_header_deadline() {
    let stack = stack_with(short_deadlines).await;
    let silent = connect(stack.proxy.local_addr()).await;
    assert!(closed_by_the_proxy(silent).await.is_empty());
    stack.shutdown().await;
}

#[tokio::test]
async fn a_partial_h2_preface_is_closed_at_the_header_deadline() {
    let stack = stack_with(short_deadlines).await;
    let mut partial = connect(stack.proxy.local_addr()).await;
    partial.write_all(&H2_PREFACE[..10]).await.expect("write");
    closed_by_the_proxy(partial).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn an_h2_connection_that_never_asks_is_closed() {
    let stack = stack_with(short_deadlines).await;
    let mut quiet = connect(stack.proxy.local_addr()).await;
    quiet.write_all(H2_PREFACE).await.expect("preface");
    quiet.write_all(H2_SETTINGS).await.expect("settings");
    let received = closed_by_the_proxy(quiet).await;
    // The proxy's SETTINGS, then a GOAWAY frame (type 7) before the close.
    assert!(
        received
            .windows(4)
            .any(|w| w[3] == 7 && w[..3] == [0, 0, 8]),
        "no GOAWAY in {received:?}"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed() {
    let stack = stack_with(short_deadlines).await;
    let mut client = connect(stack.proxy.local_addr()).await;
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: proxy\r\n\r\n")
        .await
        .expect("request");
    let received = closed_by_the_proxy(client).await;
    assert!(received.starts_with(b"HTTP/1.1 200"), "{received:?}");
    stack.shutdown().await;
}

#[tokio::test]
async fn an_idle_h2_connection_over_tls_is_closed_after_its_request() {
    let stack = stack_with(|c| {
        short_deadlines(c);
        c.listen.tls_cert = Some(crate::common::repo_path("certs/server.pem"));
        c.listen.tls_key = Some(crate::common::repo_path("certs/server.key"));
    })
    .await;
    let tls = h2_tls_client().await;
    let tcp = connect(stack.proxy.local_addr()).await;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tls.connect(name, tcp).await.expect("TLS");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let request = http::Request::get("https://localhost/healthz")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    let ended = tokio::time::timeout(WAIT, connection).await;
    assert!(ended.is_ok(), "the idle h2 connection stayed open");
    stack.shutdown().await;
}

async fn h2_tls_client() -> tokio_rustls::TlsConnector {
    let ca = crate::common::repo_path("certs/ca.pem");
    let mut config = directline_proxy::tls::client_config(Some(&ca)).expect("tls config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn over_the_connection_limit_a_client_gets_503_at_once_and_the_loop_goes_on() {
    let stack = stack_with(|c| c.listen.max_connections = 2).await;
    let addr = stack.proxy.local_addr();
    let held = [connect(addr).await, connect(addr).await];
    let mut third = connect(addr).await;
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: p\r\n\r\n")
        .await;
    let answer = closed_by_the_proxy(third).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("ServiceUnavailable"), "{answer}");
    drop(held);
    // Slots come back as soon as the held connections go.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = crate::common::Http::plain()
            .send(Method::GET, &stack.proxy_url("/healthz"), &[], Bytes::new())
            .await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slots never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn probes_answer_on_the_admin_listener_while_the_public_one_is_full() {
    let stack = stack_with(|c| {
        c.listen.max_connections = 2;
        c.admin.addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let addr = stack.proxy.local_addr();
    let _held = [connect(addr).await, connect(addr).await];
    let admin = stack.proxy.admin_addr().expect("admin listener");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let reply = stack
            .http
            .send(
                Method::GET,
                &format!("http://{admin}{path}"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn with_an_admin_listener_the_public_one_serves_no_metrics_or_probes() {
    let stack = stack_with(|c| c.admin.addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)))).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let reply = stack
            .http
            .send(Method::GET, &stack.proxy_url(path), &[], Bytes::new())
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
    }
    let admin = stack.proxy.admin_addr().expect("admin");
    let other = stack
        .http
        .send(
            Method::GET,
            &format!("http://{admin}/v3/directline/conversations/x/activities"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND, "no relay on admin");
    assert!(stack.emulator.requests().is_empty());
    stack.shutdown().await;
}

/// Sends a raw request line (the path as written, not normalised by a client).
async fn raw_status(addr: SocketAddr, request: &str) -> String {
    let mut socket = connect(addr).await;
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut head = vec![0u8; 12];
    tokio::time::timeout(WAIT, socket.read_exact(&mut head))
        .await
        .expect("an answer in time")
        .expect("read");
    String::from_utf8_lossy(&head[9..12]).into_owned()
}

#[tokio::test]
async fn paths_an_upstream_could_decode_differently_get_400_and_never_reach_it() {
    let stack = Stack::start().await;
    for path in [
        "/v3/directline/conversations/..%2F..%2Fetc%2Fpasswd",
        "/v3/directline/conversations/abc%5Cdef/activities",
        "/v3/directline/..\\..\\x",
        "/v3/directline/conversations/abc%00/activities",
        "/v3/directline/conversations/abc%252F/activities",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n");
        assert_eq!(
            raw_status(stack.proxy.local_addr(), &request).await,
            "400",
            "{path}"
        );
    }
    assert!(
        stack.emulator.requests().is_empty(),
        "nothing reached Direct Line"
    );
    stack.shutdown().await;
}

fn upgrade_request(path: &str, version: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nhost: p\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: {version}\r\nsec-websocket-key: {key}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_websocket_version_other_than_13_gets_426_naming_13() {
    let stack = Stack::start().await;
    let conv = stack.start_conversation().await;
    let before = stack.emulator.requests().len();
    let path = format!("/v3/directline/conversations/{}/stream?t=x", conv.id);
    let mut socket = connect(stack.proxy.local_addr()).await;
    let request = upgrade_request(&path, "8", "dGhlIHNhbXBsZSBub25jZQ==");
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut head = vec![0u8; 512];
    let read = tokio::time::timeout(WAIT, socket.read(&mut head))
        .await
        .expect("in time")
        .expect("read");
    let head = String::from_utf8_lossy(&head[..read]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 426"), "{head}");
    assert!(head.contains("sec-websocket-version: 13"), "{head}");
    assert_eq!(
        stack.emulator.requests().len(),
        before,
        "no upstream contact"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_websocket_key_that_is_not_16_bytes_gets_400() {
    let stack = Stack::start().await;
    let conv = stack.start_conversation().await;
    let before = stack.emulator.requests().len();
    let path = format!("/v3/directline/conversations/{}/stream?t=x", conv.id);
    for key in [
        "c2hvcnQ=",
        "not base64!",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let request = upgrade_request(&path, "13", key);
        assert_eq!(
            raw_status(stack.proxy.local_addr(), &request).await,
            "400",
            "{key}"
        );
    }
    assert_eq!(
        stack.emulator.requests().len(),
        before,
        "no upstream contact"
    );
    stack.shutdown().await;
}

fn close_code(message: &Message) -> Option<CloseCode> {
    match message {
        Message::Close(Some(frame)) => Some(frame.code),
        _ => None,
    }
}

#[tokio::test]
async fn an_oversized_frame_from_the_client_closes_both_sides_with_1009() {
    let stack = stack_with(|c| {
        c.websocket.max_frame_bytes = 4096;
    })
    .await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    next_message(&mut ws).await;
    ws.send(Message::Text("x".repeat(8192).into()))
        .await
        .expect("send");
    let closing = next_message(&mut ws).await;
    assert_eq!(close_code(&closing), Some(CloseCode::Size), "{closing:?}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let received = stack.emulator.stream_messages_received(&conv.id);
        if received
            .iter()
            .any(|m| close_code(m) == Some(CloseCode::Size))
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{received:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn an_oversized_message_from_the_bot_closes_the_client_with_1009() {
    let stack = stack_with(|c| {
        c.websocket.max_message_bytes = 1024 * 1024;
        c.websocket.max_frame_bytes = 1024 * 1024;
    })
    .await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    next_message(&mut ws).await;
    let big = "y".repeat(1024 * 1024 + 1);
    assert!(
        stack
            .emulator
            .send_stream_message(&conv.id, Message::Text(big.into()))
            .await
    );
    let closing = next_message(&mut ws).await;
    assert_eq!(close_code(&closing), Some(CloseCode::Size), "{closing:?}");
    stack.shutdown().await;
}

async fn start_status(
    stack: &Stack,
    extra: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let auth = format!("Bearer {}", stack.secret());
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    let reply = stack
        .http
        .send(
            Method::POST,
            &stack.proxy_url("/v3/directline/conversations"),
            &headers,
            Bytes::new(),
        )
        .await;
    (reply.status, reply.headers.clone(), reply.text())
}

async fn quota_rejections(stack: &Stack, quota: &str) -> u64 {
    let text = stack
        .http
        .send(Method::GET, &stack.proxy_url("/metrics"), &[], Bytes::new())
        .await
        .text();
    let needle = format!("directline_proxy_quota_rejections_total{{quota=\"{quota}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn conversation_starts_over_the_quota_get_429_with_retry_after() {
    let stack = stack_with(|c| c.limits.conversations_per_minute_per_client = 2).await;
    for _ in 0..2 {
        assert_eq!(start_status(&stack, &[]).await.0, StatusCode::CREATED);
    }
    let starts_before = stack.emulator.requests().len();
    let (status, headers, body) = start_status(&stack, &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    assert!(body.contains("TooManyRequests"), "{body}");
    assert_eq!(
        stack.emulator.requests().len(),
        starts_before,
        "not forwarded"
    );
    assert_eq!(quota_rejections(&stack, "conversations").await, 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn ipv6_clients_share_the_quota_of_their_64() {
    let stack = stack_with(|c| {
        c.limits.conversations_per_minute_per_client = 2;
        c.listen.trust_forwarded_headers = true;
    })
    .await;
    // Behind the ingress: one subscriber's /64, three different addresses.
    for (address, expected) in [
        ("2001:db8:1:2::1", StatusCode::CREATED),
        ("2001:db8:1:2::2", StatusCode::CREATED),
        ("2001:db8:1:2:abcd::3", StatusCode::TOO_MANY_REQUESTS),
        ("2001:db8:1:3::1", StatusCode::CREATED),
    ] {
        let (status, _, body) = start_status(&stack, &[("x-forwarded-for", address)]).await;
        assert_eq!(status, expected, "{address}: {body}");
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn activities_over_the_conversation_quota_get_429() {
    let stack = stack_with(|c| c.limits.activities_per_minute_per_conversation = 2).await;
    let conv = stack.start_conversation().await;
    for text in ["one", "two"] {
        assert_eq!(conv.say(&stack.http, text).await.status, StatusCode::OK);
    }
    let third = conv.say(&stack.http, "three").await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers.contains_key("retry-after"));
    let other = stack.start_conversation().await;
    assert_eq!(
        other.say(&stack.http, "elsewhere").await.status,
        StatusCode::OK,
        "other conversations keep their own quota"
    );
    assert_eq!(quota_rejections(&stack, "activities").await, 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn streams_over_the_client_quota_get_429_and_free_their_place_on_close() {
    let stack = stack_with(|c| c.limits.max_streams_per_client = 1).await;
    let conv = stack.start_conversation().await;
    let mut first = ws_connect(&conv.stream_url).await;
    let second = stack.start_conversation().await;
    let refused = tokio_tungstenite::connect_async(second.stream_url.as_str()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS)
        }
        other => panic!("expected 429, got {other:?}"),
    }
    first.send(Message::Close(None)).await.expect("close");
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio_tungstenite::connect_async(second.stream_url.as_str()).await {
            Ok(_) => break,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("the place was never freed: {error}"),
        }
    }
    assert!(quota_rejections(&stack, "streams").await >= 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn wire_level_logs_are_capped_even_when_rust_log_asks_for_them() {
    let emulator = directline_proxy::emulator::Emulator::start(quiet_emulator())
        .await
        .expect("emulator");
    let port = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        free.local_addr().expect("addr").port()
    };
    let config = crate::common::scratch_file(
        "log-cap.toml",
        &format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\n[upstream]\nurl = \"{}\"\n[sso]\nprovider = \"static\"\n[sso.static]\ntoken = \"demo-user-token\"\n[reload]\nwatch_interval_ms = 0\n",
            emulator.base_url()
        ),
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_directline-proxy"))
        .args(["--config"])
        .arg(&config)
        .env(
            "RUST_LOG",
            "info,tungstenite::protocol=trace,h2=trace,hyper=trace",
        )
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let base = format!("http://127.0.0.1:{port}");
    let http = crate::common::Http::plain();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::timeout(
        Duration::from_millis(200),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_or(true, |c| c.is_err())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let conv = crate::common::Conversation::start(&http, &base, emulator.secret()).await;
    let mut ws = ws_connect(&conv.stream_url).await;
    conv.say(&http, "signin exchange").await;
    crate::common::activities_until(&mut ws, directline_proxy::emulator::SIGNED_IN).await;
    ws.send(Message::Close(None)).await.expect("close");
    child.start_kill().expect("kill");
    let output = child.wait_with_output().await.expect("output");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(
        logs.contains("they stay at info"),
        "the cap is announced: {logs}"
    );
    assert!(!logs.contains("demo-user-token"), "the user's token leaked");
    assert!(!logs.contains("TRACE"), "a wire-level line got through");
    emulator.shutdown().await;
}
