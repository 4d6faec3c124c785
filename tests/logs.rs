//! Logs of a full conversation never contain a token or a secret, and the
//! binary's JSON logs are one object per line. Its own test binary: it
//! installs the process-wide log subscriber.

/// Read by `common`: the compliant emulator.
const ROUGH_EMULATOR: bool = false;

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::SinkExt;
use http::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use common::process::ProxyProcess;
use common::{
    Conversation, EmulatorConfig, Http, Stack, activities_until, ws_connect, ws_connect_with_header,
};
use directline_proxy::config::{ProviderKind, StaticProviderConfig};
use directline_proxy::emulator::Emulator;

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
        c.sso.provider = ProviderKind::Static;
        c.sso.static_token = Some(StaticProviderConfig {
            token: USER_TOKEN.into(),
        });
        let upstream = c.upstream.url.to_string();
        let sas = format!("{}/sas/", upstream.trim_end_matches('/'));
        c.sso
            .token_post_allow_hosts
            .push(sas.parse().expect("an entry"));
        // The proxy also holds the secret and binds tokens to the user.
        c.directline.secret_file = Some(common::scratch_file("logs-secret", "emulator-secret\n"));
        c.directline.user_id_header = Some(http::HeaderName::from_static("x-forwarded-user"));
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

/// `log.format = "json"` in the real binary (the process helper sets it by
/// `DLPROXY_LOG__FORMAT`): every line is one JSON object with the time,
/// level, target and message, the event's fields at the top level and the
/// request's span beside them.
#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_events_fields_and_span() {
    let emulator = Emulator::start(EmulatorConfig {
        keepalive_interval: None,
        ..Default::default()
    })
    .await
    .expect("emulator");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("config.toml");
    let config = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[reload]\nwatch_interval_ms = 0\n[sso]\nprovider = \"static\"\n[sso.static]\ntoken = \"demo-user-token\"\n",
        emulator.base_url()
    );
    std::fs::write(&path, config).expect("write");
    let mut process = ProxyProcess::spawn(&path);
    let base = process.listening().await;
    let http = Http::plain();
    let conv = Conversation::start(&http, &base, emulator.secret()).await;
    let mut ws = ws_connect(&conv.stream_url).await;
    conv.say(&http, "signin exchange").await;
    activities_until(&mut ws, directline_proxy::emulator::SIGNED_IN).await;
    ws.send(Message::Close(None)).await.expect("close");
    process.wait_for_log("stream closed").await;
    process.signal("TERM").await;
    assert_eq!(process.exit_status().await.code(), Some(0));

    let lines: Vec<Value> = process
        .whole_log()
        .await
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(
            ["ERROR", "WARN", "INFO"].contains(&line["level"].as_str().unwrap_or_default()),
            "{line}"
        );
        assert!(line["target"].is_string(), "{line}");
        assert!(line["message"].is_string(), "{line}");
    }
    let find = |message: &str, matches: &dyn Fn(&Value) -> bool| {
        lines
            .iter()
            .find(|l| l["message"] == message && matches(l))
            .unwrap_or_else(|| panic!("no {message:?} line in {lines:#?}"))
    };
    let listening = find("proxy listening", &|_| true);
    assert_eq!(
        listening["local_addr"].as_str(),
        base.strip_prefix("http://")
    );
    assert_eq!(listening["tls"], false);
    assert_eq!(listening["sso"], "static");
    let started = find("request done", &|l| {
        l["span"]["route"] == "start_conversation"
    });
    assert_eq!(started["status"], 201);
    assert!(started["elapsed_ms"].is_u64(), "{started}");
    assert_eq!(started["span"]["method"], "POST");
    let decision = find("sso decision", &|_| true);
    assert_eq!(decision["conversation_id"], conv.id.as_str());
    assert_eq!(decision["flow"], "invoke");
    assert_eq!(decision["outcome"], "success");
    assert_eq!(decision["provider"], "static");
    let closed = find("stream closed", &|_| true);
    assert_eq!(closed["span"]["conversation_id"], conv.id.as_str());
    assert_eq!(lines.last().map(|l| &l["message"]), Some(&json!("stopped")));
    emulator.shutdown().await;
}
