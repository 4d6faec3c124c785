//! Graceful shutdown: in-flight requests finish while nothing new is
//! accepted, WebSockets get 1001, and a second signal exits at once.

use http::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::endpoint::Endpoint;
use crate::common::process::ProxyProcess;
use crate::common::{
    Http, Stack, WAIT, eventually, next_activity_set, next_message, proxy_config, ws_connect,
};

const HELD_POLL: &str = "/v3/directline/conversations/held/activities";

/// The upstream answers the held request only after the test has seen the
/// drain begin, so the answer reaching the client proves the drain waited.
#[tokio::test]
async fn shutdown_finishes_an_in_flight_request_and_accepts_no_new_connection() {
    let body = json!({"activities": [], "watermark": "0"}).to_string();
    let (upstream, release) = {
        let body = body.clone();
        Endpoint::gated(move |_| (StatusCode::OK, body.clone())).await
    };
    let proxy = directline_proxy::start(proxy_config(&upstream.url("")))
        .await
        .expect("proxy starts");
    let in_flight = {
        let url = format!("{}{HELD_POLL}", proxy.base_url());
        tokio::spawn(async move { Http::plain().get(&url, "token").await })
    };
    eventually("the request reaches the upstream", async || {
        !upstream.seen().is_empty()
    })
    .await;

    proxy.stop_token().cancel();
    let addr = proxy.local_addr();
    eventually("the listener is closed", async || {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(!in_flight.is_finished(), "the request is still held");

    release.send(true).expect("release");
    let reply = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("in-flight request finishes")
        .expect("task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), body, "the upstream's answer, not a cut-off");
    tokio::time::timeout(WAIT, proxy.wait())
        .await
        .expect("proxy stops in time");
}

#[tokio::test]
async fn shutdown_closes_open_streams_with_1001() {
    let stack = Stack::start().await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    next_activity_set(&mut ws).await;

    stack.proxy.stop_token().cancel();
    let frame = loop {
        if let Message::Close(frame) = next_message(&mut ws).await {
            break frame.expect("close frame");
        }
    };
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(frame.reason.as_str(), "proxy shutting down");
    tokio::time::timeout(WAIT, stack.proxy.wait())
        .await
        .expect("proxy stops in time");
    stack.emulator.shutdown().await;
}

/// With a request held longer than the test waits and a drain timeout longer
/// still, only the second SIGTERM can make the process exit in time.
#[tokio::test]
async fn a_second_sigterm_exits_at_once_without_waiting_for_the_drain() {
    let (upstream, _never_released) = Endpoint::gated(|_| (StatusCode::OK, "{}".to_string())).await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("config.toml");
    let config = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\ndrain_timeout_ms = 600000\n[upstream]\nurl = \"{}\"\n[reload]\nwatch_interval_ms = 0\n",
        upstream.url("")
    );
    std::fs::write(&path, config).expect("write");
    let mut process = ProxyProcess::spawn(&path);
    let base = process.listening().await;
    let held = {
        let url = format!("{base}{HELD_POLL}");
        tokio::spawn(async move { Http::plain().get(&url, "token").await })
    };
    eventually("the request reaches the upstream", async || {
        !upstream.seen().is_empty()
    })
    .await;

    process.signal("TERM").await;
    process.wait_for_log("shutting down: draining").await;
    assert!(process.is_running(), "the first signal drains");
    process.signal("TERM").await;
    let status = process.exit_status().await;
    assert_eq!(status.code(), Some(130), "{status}");
    held.abort();
    let log = process.whole_log().await;
    assert!(
        log.iter().any(|l| l.contains("second signal: exiting now")),
        "{log:#?}"
    );
}
