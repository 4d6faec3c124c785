//! `streamUrl` points at the proxy, and reconnecting through it loses and
//! duplicates nothing.

use std::collections::HashSet;

use futures_util::SinkExt;
use http::Method;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Conversation, Stack, activities_until, quiet_emulator, ws_connect};

fn query_of(url: &str) -> String {
    url.split_once('?')
        .map(|(_, q)| q.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn stream_url_is_derived_from_the_request_host() {
    let stack = Stack::start().await;
    let conv = stack.start_conversation().await;
    let expected_prefix = format!(
        "ws://{}/v3/directline/conversations/{}/stream?",
        stack.proxy.local_addr(),
        conv.id
    );
    assert!(
        conv.stream_url.starts_with(&expected_prefix),
        "{}",
        conv.stream_url
    );
    let query = query_of(&conv.stream_url);
    assert!(query.contains("t="), "stream token kept: {query}");
    assert!(query.contains("watermark="), "watermark kept: {query}");
    stack.shutdown().await;
}

#[tokio::test]
async fn stream_url_uses_the_configured_public_url() {
    let stack = Stack::start_with(quiet_emulator(), |c| {
        c.listen.public_url = Some(http::Uri::from_static("https://chat.example.com/bot/"));
    })
    .await;
    let conv = stack.start_conversation().await;
    let expected = format!(
        "wss://chat.example.com/bot/v3/directline/conversations/{}/stream?",
        conv.id
    );
    assert!(
        conv.stream_url.starts_with(&expected),
        "{}",
        conv.stream_url
    );
    stack.shutdown().await;
}

/// A rough Direct Line indents its answers with CRLF and writes `/` as
/// `\/`: the rewrite changes the `streamUrl` value and no other byte.
#[tokio::test]
async fn a_pretty_conversation_answer_keeps_every_byte_but_the_stream_url() {
    let rough = crate::common::EmulatorConfig {
        rough: true,
        ..quiet_emulator()
    };
    let stack = Stack::start_with(rough, |_| {}).await;
    let auth = format!("Bearer {}", stack.secret());
    let reply = stack
        .http
        .send(
            Method::POST,
            &stack.proxy_url("/v3/directline/conversations"),
            &[("authorization", &auth)],
            bytes::Bytes::new(),
        )
        .await;
    let mut answer = reply.json();
    let stream_url = answer["streamUrl"].as_str().expect("streamUrl").to_string();
    assert!(stream_url.starts_with(&format!("ws://{}/", stack.proxy.local_addr())));
    let written = serde_json::to_string(&stream_url).expect("json");
    let body = reply.text().replacen(&written, "\"<url>\"", 1);
    answer["streamUrl"] = Value::from("<url>");
    let upstream_style = serde_json::to_string_pretty(&answer)
        .expect("json")
        .replace('/', "\\/")
        .replace('\n', "\r\n");
    assert_eq!(body, upstream_style);
    stack.shutdown().await;
}

async fn stream_url_with_forwarded_headers(stack: &Stack) -> String {
    let auth = format!("Bearer {}", stack.secret());
    let reply = stack
        .http
        .send(
            Method::POST,
            &stack.proxy_url("/v3/directline/conversations"),
            &[
                ("authorization", &auth),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "public.example.com"),
            ],
            bytes::Bytes::new(),
        )
        .await;
    reply.json()["streamUrl"]
        .as_str()
        .expect("streamUrl")
        .to_string()
}

#[tokio::test]
async fn forwarded_headers_set_the_stream_url_only_when_trusted() {
    let untrusted = Stack::start().await;
    let url = stream_url_with_forwarded_headers(&untrusted).await;
    assert!(
        url.starts_with(&format!("ws://{}/", untrusted.proxy.local_addr())),
        "{url}"
    );
    untrusted.shutdown().await;

    let trusted = Stack::start_with(quiet_emulator(), |c| {
        c.listen.trust_forwarded_headers = true
    })
    .await;
    let url = stream_url_with_forwarded_headers(&trusted).await;
    assert!(
        url.starts_with("wss://public.example.com/v3/directline/"),
        "{url}"
    );
    trusted.shutdown().await;
}

fn ids(activities: &[Value]) -> Vec<String> {
    activities
        .iter()
        .filter(|a| a["type"] != "typing")
        .filter_map(|a| a["id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn reconnect_with_watermark_loses_and_duplicates_nothing() {
    let stack = Stack::start().await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(conv.say(&stack.http, "one").await.status, 200);
    let first_part = activities_until(&mut ws, "You said: one").await;
    let watermark = stack
        .http
        .get(&conv.url("/activities"), &conv.token)
        .await
        .json()["watermark"]
        .as_str()
        .expect("watermark")
        .to_string();
    ws.send(Message::Close(None)).await.expect("close");
    drop(ws);

    assert_eq!(conv.say(&stack.http, "two").await.status, 200);
    assert_eq!(conv.say(&stack.http, "three").await.status, 200);

    let reconnect = stack
        .http
        .get(&conv.url(&format!("?watermark={watermark}")), &conv.token)
        .await;
    assert_eq!(reconnect.status, 200, "{}", reconnect.text());
    let resumed = Conversation {
        token: reconnect.json()["token"].as_str().expect("token").into(),
        stream_url: reconnect.json()["streamUrl"]
            .as_str()
            .expect("streamUrl")
            .into(),
        ..conv.clone()
    };
    assert!(
        resumed
            .stream_url
            .starts_with(&format!("ws://{}/", stack.proxy.local_addr()))
    );
    assert!(query_of(&resumed.stream_url).contains(&format!("watermark={watermark}")));
    let mut ws = ws_connect(&resumed.stream_url).await;
    let second_part = activities_until(&mut ws, "You said: three").await;

    let mut seen = ids(&first_part);
    seen.extend(ids(&second_part));
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "no activity delivered twice: {seen:?}"
    );
    let everything = stack
        .http
        .get(&resumed.url("/activities"), &resumed.token)
        .await
        .json();
    let all_ids = ids(everything["activities"].as_array().expect("activities"));
    assert_eq!(
        seen, all_ids,
        "stream delivered exactly what polling knows, in order"
    );
    stack.shutdown().await;
}
