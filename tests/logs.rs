//! Logs of a full conversation never contain a token or a secret. Its own
//! test binary: it installs the process-wide log subscriber.

/// Read by `common`: the compliant emulator.
const ROUGH_EMULATOR: bool = false;

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::SinkExt;
use http::Method;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use common::{EmulatorConfig, Stack, activities_until, ws_connect_with_header};
use directline_proxy::config::StaticProviderConfig;

const USER_TOKEN: &str = "user-token-that-must-not-leak";

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
        // Everything the proxy logs at the most verbose level it allows.
        // Off: the emulator (the test's upstream) and tungstenite's client
        // handshake, which only the test's own WebSocket client runs.
        .with_env_filter(directline_proxy::logging::filter(
            "trace,directline_proxy::emulator=off,tungstenite::handshake::client=off",
        ))
        .with_writer(move || writer.clone())
        .init();
    captured
}

#[tokio::test]
async fn logs_of_a_full_conversation_contain_no_token_or_secret() {
    let logs = capture_all_logs();
    let emulator = EmulatorConfig {
        keepalive_interval: None,
        accepted_sso_tokens: vec![USER_TOKEN.into()],
        ..Default::default()
    };
    let stack = Stack::start_with(emulator, |c| {
        c.sso.provider = "static".into();
        c.sso.static_token = Some(StaticProviderConfig {
            token: USER_TOKEN.into(),
        });
        let sas = format!("{}/sas/", c.upstream.url);
        c.sso.token_post_allow_hosts.push(sas);
        // The proxy also holds the secret and binds tokens to the user.
        c.directline.secret_file = Some(common::scratch_file("logs-secret", "emulator-secret\n"));
        c.directline.user_id_header = Some("x-forwarded-user".into());
    })
    .await;
    let secret = stack.secret();
    let generated = stack
        .http
        .send(
            Method::POST,
            &stack.proxy_url("/v3/directline/tokens/generate"),
            &[("x-forwarded-user", "logged@example.com")],
            Bytes::new(),
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

    let user = ("x-forwarded-user", "logged@example.com");
    let conv = stack.start_conversation_as(&[user]).await;
    let stream_token = conv
        .stream_url
        .split("t=")
        .nth(1)
        .expect("t=")
        .split('&')
        .next()
        .expect("t")
        .to_string();
    let mut ws = ws_connect_with_header(&conv.stream_url, user.0, user.1).await;
    let sealed = conv
        .stream_url
        .split("dlpx=")
        .nth(1)
        .expect("sealed context")
        .to_string();
    conv.say(&stack.http, "hello").await;
    activities_until(&mut ws, "You said: hello").await;
    for card in ["signin exchange", "signin post"] {
        conv.say(&stack.http, card).await;
        activities_until(&mut ws, directline_proxy::emulator::SIGNED_IN).await;
    }
    assert_eq!(
        stack.emulator.invokes_received(&conv.id).len(),
        1,
        "SSO ran"
    );
    assert_eq!(stack.emulator.token_posts_received().len(), 1, "SSO ran");
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
    assert!(text.contains("sso decision"), "decisions are logged");
    assert!(text.contains(&conv.id), "lines carry the conversation id");
    for (what, secret_value) in [
        ("secret", secret.as_str()),
        ("authenticated user", "logged@example.com"),
        ("generated token", generated_token.as_str()),
        ("refreshed token", refreshed_token.as_str()),
        ("conversation token", conv.token.as_str()),
        ("stream token", stream_token.as_str()),
        ("reconnect token", reconnect_token.as_str()),
        ("cookie", "cookie-value-that-must-not-leak"),
        ("user token", USER_TOKEN),
        ("sealed stream context", sealed.as_str()),
    ] {
        let leak = text.lines().find(|line| line.contains(secret_value));
        assert!(leak.is_none(), "the {what} appears in the logs: {leak:?}");
    }
}
