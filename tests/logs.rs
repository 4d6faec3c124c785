//! Logs of a full conversation never contain a token or a secret. Its own
//! test binary: it installs the process-wide log subscriber.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::SinkExt;
use http::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use common::{Stack, activities_until, ws_connect};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut lines) = self.0.lock() {
            lines.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

fn capture_all_logs() -> Captured {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(true)
        // Everything the proxy and its libraries log. Off: the emulator (the
        // test's upstream) and tungstenite's client handshake, which only the
        // test's own WebSocket client runs (the proxy relays the handshake
        // through hyper).
        .with_env_filter("trace,directline_proxy::emulator=off,tungstenite::handshake::client=off")
        .with_writer(move || writer.clone())
        .init();
    captured
}

#[tokio::test]
async fn logs_of_a_full_conversation_contain_no_token_or_secret() {
    let logs = capture_all_logs();
    let stack = Stack::start().await;
    let secret = stack.secret();
    let generated = stack
        .http
        .post_json(
            &stack.proxy_url("/v3/directline/tokens/generate"),
            &secret,
            &json!({"user": {"id": "dl_logged"}}),
        )
        .await
        .json();
    let generated_token = generated["token"].as_str().expect("token").to_string();
    let refreshed = stack
        .http
        .post_json(
            &stack.proxy_url("/v3/directline/tokens/refresh"),
            &generated_token,
            &Value::Null,
        )
        .await
        .json();
    let refreshed_token = refreshed["token"].as_str().expect("token").to_string();

    let conv = stack.start_conversation().await;
    let stream_token = conv
        .stream_url
        .split("t=")
        .nth(1)
        .expect("t=")
        .split('&')
        .next()
        .expect("t")
        .to_string();
    let mut ws = ws_connect(&conv.stream_url).await;
    conv.say(&stack.http, "hello").await;
    activities_until(&mut ws, "You said: hello").await;
    conv.poll(&stack.http, None).await;
    let cookie = "session=cookie-value-that-must-not-leak";
    let auth = format!("Bearer {}", conv.token);
    stack
        .http
        .send(
            Method::POST,
            &conv.url("/upload?userId=dl_logged"),
            &[
                ("authorization", &auth),
                ("cookie", cookie),
                ("content-type", "text/plain"),
            ],
            Bytes::from_static(b"attachment"),
        )
        .await;
    let reconnect = stack
        .http
        .get(&conv.url("?watermark=0"), &conv.token)
        .await
        .json();
    let reconnect_token = reconnect["token"].as_str().expect("token").to_string();
    ws.send(Message::Close(None)).await.expect("close");
    stack.shutdown().await;

    let text = logs.text();
    assert!(text.contains("request done"), "requests are logged at all");
    assert!(text.contains(&conv.id), "lines carry the conversation id");
    for (what, secret_value) in [
        ("secret", secret.as_str()),
        ("generated token", generated_token.as_str()),
        ("refreshed token", refreshed_token.as_str()),
        ("conversation token", conv.token.as_str()),
        ("stream token", stream_token.as_str()),
        ("reconnect token", reconnect_token.as_str()),
        ("cookie", "cookie-value-that-must-not-leak"),
    ] {
        let leak = text.lines().find(|line| line.contains(secret_value));
        assert!(leak.is_none(), "the {what} appears in the logs: {leak:?}");
    }
}
