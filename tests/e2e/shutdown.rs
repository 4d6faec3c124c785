//! Graceful shutdown: in-flight requests finish while nothing new is
//! accepted, readiness says 503 on the admin listener, WebSockets get 1001,
//! and a second signal exits at once.

use std::net::SocketAddr;

use bytes::Bytes;
use directline_proxy::RunningProxy;
use directline_proxy::config::Config;
use http::{Method, StatusCode};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::endpoint::Endpoint;
use crate::common::process::ProxyProcess;
use crate::common::{
    Http, Reply, Stack, WAIT, eventually, next_activity_set, next_message, proxy_config, ws_connect,
};

const HELD_POLL: &str = "/v3/directline/conversations/held/activities";
const HELD_ANSWER: &str = "{\"activities\":[],\"watermark\":\"0\"}";

/// A proxy in front of an upstream that holds every request until the
/// returned gate opens, with one such request in flight.
struct HeldRequest {
    upstream: Endpoint,
    release: watch::Sender<bool>,
    proxy: RunningProxy,
    in_flight: JoinHandle<Reply>,
}

impl HeldRequest {
    async fn start(adjust: impl FnOnce(&mut Config)) -> HeldRequest {
        let (upstream, release) =
            Endpoint::gated(|_| (StatusCode::OK, HELD_ANSWER.to_string())).await;
        let mut config = proxy_config(&upstream.url(""));
        adjust(&mut config);
        let proxy = directline_proxy::start(config).await.expect("proxy starts");
        let in_flight = {
            let url = format!("{}{HELD_POLL}", proxy.base_url());
            tokio::spawn(async move { Http::plain().get(&url, "token").await })
        };
        eventually("the request reaches the upstream", async || {
            !upstream.seen().is_empty()
        })
        .await;
        HeldRequest {
            upstream,
            release,
            proxy,
            in_flight,
        }
    }

    /// Opens the gate; the held request must then get the upstream's answer
    /// (released after the drain began, so the drain waited for it), and
    /// the proxy stops.
    async fn release_and_stop(self) {
        assert!(!self.in_flight.is_finished(), "the request is still held");
        assert_eq!(self.upstream.seen().len(), 1);
        self.release.send(true).expect("release");
        let reply = tokio::time::timeout(WAIT, self.in_flight)
            .await
            .expect("in-flight request finishes")
            .expect("task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.text(),
            HELD_ANSWER,
            "the upstream's answer, not a cut-off"
        );
        tokio::time::timeout(WAIT, self.proxy.wait())
            .await
            .expect("proxy stops in time");
    }
}

#[tokio::test]
async fn shutdown_finishes_an_in_flight_request_and_accepts_no_new_connection() {
    let held = HeldRequest::start(|_| {}).await;
    held.proxy.stop_token().cancel();
    let addr = held.proxy.local_addr();
    eventually("the listener is closed", async || {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    held.release_and_stop().await;
}

/// The admin listener stays open through the drain, so a readiness probe
/// sees the replica leave (503) while liveness still holds.
#[tokio::test]
async fn readyz_on_the_admin_listener_says_503_while_a_request_drains() {
    let held =
        HeldRequest::start(|c| c.admin.addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)))).await;
    let admin = format!(
        "http://{}",
        held.proxy.admin_addr().expect("admin listener")
    );
    let http = Http::plain();
    let probe = async |path: &str| {
        http.send(Method::GET, &format!("{admin}{path}"), &[], Bytes::new())
            .await
    };
    assert_eq!(probe("/readyz").await.status, StatusCode::OK);

    held.proxy.stop_token().cancel();
    eventually("readiness goes", async || {
        probe("/readyz").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert_eq!(probe("/readyz").await.text(), "draining\n");
    assert_eq!(
        probe("/healthz").await.status,
        StatusCode::OK,
        "still alive"
    );
    let admin_addr = held.proxy.admin_addr().expect("admin listener");
    held.release_and_stop().await;
    eventually("the admin listener stops with the proxy", async || {
        tokio::net::TcpStream::connect(admin_addr).await.is_err()
    })
    .await;
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
