//! Graceful shutdown: in-flight requests finish, WebSockets get 1001.

use std::time::Duration;

use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::{EmulatorConfig, Stack, WAIT, next_activity_set, next_message, ws_connect};

#[tokio::test]
async fn shutdown_drains_an_in_flight_request_and_closes_streams_with_1001() {
    let emulator = EmulatorConfig {
        keepalive_interval: None,
        bot_delay: Duration::from_millis(800),
        ..Default::default()
    };
    let stack = Stack::start_with(emulator, |_| {}).await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    next_activity_set(&mut ws).await;

    let in_flight = {
        let conv = conv.clone();
        let http = crate::common::Http::plain();
        tokio::spawn(async move { conv.say(&http, "still answered").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stop = stack.proxy.stop_token();
    stop.cancel();

    let frame = loop {
        if let Message::Close(frame) = next_message(&mut ws).await {
            break frame.expect("close frame");
        }
    };
    assert_eq!(frame.code, CloseCode::Away);

    let reply = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("in-flight request finishes")
        .expect("task");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    let addr = stack.proxy.local_addr();
    tokio::time::timeout(WAIT, stack.proxy.wait())
        .await
        .expect("proxy stops in time");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
    stack.emulator.shutdown().await;
}
