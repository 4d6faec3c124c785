//! WebSocket frames cross the proxy unchanged, in order, both ways.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::{
    EmulatorConfig, Stack, WAIT, activities_until, next_activity_set, next_message, ws_connect,
};

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    }))
}

/// A text of `chars` characters, mixing one- to four-byte UTF-8.
fn large_text(chars: usize) -> String {
    let pattern = ['a', '\u{e9}', '\u{20ac}', '\u{1f600}', ' ', '"'];
    let body: String = (0..chars).map(|i| pattern[i % pattern.len()]).collect();
    json!({"activities": [{"type": "message", "text": body}], "watermark": "99"}).to_string()
}

#[tokio::test]
async fn bot_frames_of_every_kind_reach_the_client_unchanged_and_in_order() {
    let stack = Stack::start().await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    next_activity_set(&mut ws).await; // the replay of what the bot said first

    let sent = vec![
        Message::Text("".into()),
        Message::Text("{ \"activities\" : [ ], \"watermark\":\"7\" }".into()),
        Message::Binary(vec![0u8, 1, 2, 254, 255].into()),
        Message::Ping(b"ping-from-bot".to_vec().into()),
        Message::Pong(b"unsolicited-pong".to_vec().into()),
        Message::Text(large_text(250_000).into()),
        Message::Text("".into()),
    ];
    for message in &sent {
        assert!(
            stack
                .emulator
                .send_stream_message(&conv.id, message.clone())
                .await
        );
    }
    for expected in &sent {
        let got = next_message(&mut ws).await;
        assert_eq!(&got, expected);
    }
    assert!(
        stack
            .emulator
            .send_stream_message(&conv.id, close(4001, "bot says bye"))
            .await
    );
    assert_eq!(next_message(&mut ws).await, close(4001, "bot says bye"));
    stack.shutdown().await;
}

#[tokio::test]
async fn client_frames_of_every_kind_reach_the_bot_unchanged_and_in_order() {
    let stack = Stack::start().await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    next_activity_set(&mut ws).await;

    let sent = vec![
        Message::Text("".into()),
        Message::Text("{\"not\":\"an activity\"}".into()),
        Message::Binary(vec![9u8, 8, 7, 0].into()),
        Message::Ping(b"ping-from-client".to_vec().into()),
        Message::Pong(b"pong-from-client".to_vec().into()),
        Message::Text(large_text(250_000).into()),
        close(4002, "client says bye"),
    ];
    for message in &sent {
        ws.send(message.clone()).await.expect("send");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let received = stack.emulator.stream_messages_received(&conv.id);
        if received.len() >= sent.len() {
            assert_eq!(received, sent);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bot got only {received:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn keep_alive_messages_are_relayed() {
    let emulator = EmulatorConfig {
        keepalive_interval: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let stack = Stack::start_with(emulator, |_| {}).await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    let mut keep_alives = 0;
    while keep_alives < 2 {
        if next_message(&mut ws).await == Message::Text("".into()) {
            keep_alives += 1;
        }
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn bot_conversation_over_the_stream_including_a_large_activity() {
    let stack = Stack::start().await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    let reply = conv.say(&stack.http, "hello proxy").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let posted_id = reply.json()["id"].as_str().expect("id").to_string();
    let seen = activities_until(&mut ws, "You said: hello proxy").await;
    assert!(
        seen.iter()
            .any(|a| a["id"] == posted_id.as_str() && a["text"] == "hello proxy"),
        "the user's echo carries the POST's id"
    );

    let reply = conv.say(&stack.http, "large").await;
    assert_eq!(reply.status, 200);
    let large = loop {
        let set = next_activity_set(&mut ws).await;
        let activities = set["activities"].as_array().cloned().unwrap_or_default();
        if let Some(big) = activities
            .into_iter()
            .find(|a| a.to_string().len() > 200_000)
        {
            break big;
        }
    };
    let size = large.to_string().chars().count();
    assert!(
        (200_000..262_144).contains(&size),
        "large activity has {size} characters"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn multimodal_stream_path_is_relayed_both_ways() {
    let stack = Stack::start().await;
    let conv = stack.start_conversation().await;
    let url = conv
        .stream_url
        .replacen("/stream?", "/stream/multimodal?", 1);
    assert_ne!(url, conv.stream_url);
    let mut ws = ws_connect(&url).await;
    let activity = json!({"type": "message", "from": {"id": "dl_voice"}, "text": "spoken words"});
    ws.send(Message::Text(activity.to_string().into()))
        .await
        .expect("send");
    let seen = activities_until(&mut ws, "You said: spoken words").await;
    assert!(seen.iter().any(|a: &Value| a["text"] == "spoken words"));
    stack.shutdown().await;
}

#[tokio::test]
async fn a_second_socket_gets_the_first_closed_as_upstream_decides() {
    let stack = Stack::start().await;
    let conv = stack.start_conversation().await;
    let mut first = ws_connect(&conv.stream_url).await;
    next_activity_set(&mut first).await;
    let reconnect = stack.http.get(&conv.url(""), &conv.token).await;
    let second_url = reconnect.json()["streamUrl"]
        .as_str()
        .expect("streamUrl")
        .to_string();
    let _second = ws_connect(&second_url).await;
    let closed = loop {
        match next_message(&mut first).await {
            Message::Close(frame) => break frame,
            _ => continue,
        }
    };
    let frame = closed.expect("close frame with a reason");
    assert_eq!(frame.reason.as_str(), "collision");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_pauses_the_upstream_and_loses_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MESSAGES: usize = 100;
    const SIZE: usize = 1024 * 1024;
    let stack = Arc::new(Stack::start().await);
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    next_activity_set(&mut ws).await;

    let written = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (stack, written, id) = (stack.clone(), written.clone(), conv.id.clone());
        tokio::spawn(async move {
            for n in 0..MESSAGES {
                let text = format!("{n:>8}{}", "x".repeat(SIZE - 8));
                if !stack
                    .emulator
                    .send_stream_message(&id, Message::Text(text.into()))
                    .await
                {
                    return;
                }
                written.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // The upstream's writes stop making progress while nobody reads:
    // the proxy holds at most a message, the rest waits in socket buffers.
    let mut last = usize::MAX;
    let mut unchanged = 0;
    while unchanged < 5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = written.load(Ordering::SeqCst);
        assert!(
            now < MESSAGES,
            "all {MESSAGES} MiB were taken while the client read nothing"
        );
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
    }
    for n in 0..MESSAGES {
        match next_message(&mut ws).await {
            Message::Text(text) => {
                assert_eq!(text.len(), SIZE);
                assert_eq!(text[..8].trim(), n.to_string(), "in order");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    sender.await.expect("sender");
    assert_eq!(written.load(Ordering::SeqCst), MESSAGES);
}

/// Browsers offer `permessage-deflate`; the proxy reads frames, so it never
/// lets the offer reach Direct Line (a rough emulator would accept it) nor
/// an extension reach the client, and frames still flow both ways.
#[tokio::test]
async fn a_compression_offer_is_never_negotiated() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let rough = EmulatorConfig {
        rough: true,
        ..crate::common::quiet_emulator()
    };
    let stack = Stack::start_with(rough, |_| {}).await;
    let conv = stack.start_conversation().await;
    let mut request = conv
        .stream_url
        .as_str()
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits"
            .parse()
            .expect("value"),
    );
    let (mut ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert!(!response.headers().contains_key("sec-websocket-extensions"));
    let handshake = stack
        .emulator
        .requests()
        .into_iter()
        .find(|r| r.path_and_query.contains("/stream?"))
        .expect("the handshake reached the emulator");
    assert!(!handshake.headers.contains_key("sec-websocket-extensions"));

    next_activity_set(&mut ws).await; // bot to client
    let from_client = Message::Text("from the client".into());
    ws.send(from_client.clone()).await.expect("send");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !stack
        .emulator
        .stream_messages_received(&conv.id)
        .contains(&from_client)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client's frame never reached the emulator"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stack.shutdown().await;
}
