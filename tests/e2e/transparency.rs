//! The proxy changes nothing a client can observe on the REST API.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Conversation, EmulatorConfig, Reply, Stack, quiet_emulator};

/// Values that differ between two otherwise identical calls (fresh ids and
/// tokens); everything else must match exactly.
const VOLATILE_KEYS: [&str; 6] = [
    "token",
    "conversationId",
    "streamUrl",
    "id",
    "timestamp",
    "eTag",
];

fn normalised(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if VOLATILE_KEYS.contains(&k.as_str()) && v.is_string() {
                        json!("<volatile>")
                    } else {
                        normalised(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalised).collect()),
        Value::String(s) if s.len() > 40 && !s.contains(' ') => json!("<volatile>"),
        other => other.clone(),
    }
}

/// Response headers a client can see, minus the ones that legitimately
/// differ per response or per connection.
fn end_to_end_headers(reply: &Reply) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &reply.headers {
        if [
            "date",
            "content-length",
            "connection",
            "keep-alive",
            "transfer-encoding",
        ]
        .contains(&name.as_str())
        {
            continue;
        }
        map.entry(name.to_string())
            .or_default()
            .push(value.to_str().unwrap_or("<binary>").to_string());
    }
    map
}

fn assert_same_reply(direct: &Reply, proxied: &Reply, what: &str) {
    assert_eq!(direct.status, proxied.status, "{what}: status");
    assert_eq!(
        end_to_end_headers(direct),
        end_to_end_headers(proxied),
        "{what}: headers"
    );
    match serde_json::from_slice::<Value>(&direct.body) {
        Ok(direct_json) => assert_eq!(
            normalised(&direct_json),
            normalised(&proxied.json()),
            "{what}: body"
        ),
        Err(_) => assert_eq!(direct.body, proxied.body, "{what}: body"),
    }
}

/// The proxy rewrites conversation answers (their `streamUrl`), so it asks
/// for them uncompressed, errors included (it cannot know the status in
/// advance): the one header in which they may differ.
fn without_content_encoding(reply: Reply) -> Reply {
    let mut headers = reply.headers;
    headers.remove("content-encoding");
    Reply { headers, ..reply }
}

#[tokio::test]
async fn rest_endpoints_answer_the_same_through_the_proxy() {
    let stack = Stack::start().await;
    let secret = stack.secret();
    let both = |path: &str| (stack.direct_url(path), stack.proxy_url(path));

    let (direct, proxied) = both("/v3/directline/tokens/generate");
    let body = json!({"user": {"id": "dl_same"}});
    let d = stack.http.post_json(&direct, &secret, &body).await;
    let p = stack.http.post_json(&proxied, &secret, &body).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_same_reply(&d, &p, "tokens/generate");
    let token_direct = d.json()["token"].as_str().expect("token").to_string();
    let token_proxied = p.json()["token"].as_str().expect("token").to_string();

    let (direct, proxied) = both("/v3/directline/tokens/refresh");
    let d = stack
        .http
        .post_json(&direct, &token_direct, &Value::Null)
        .await;
    let p = stack
        .http
        .post_json(&proxied, &token_proxied, &Value::Null)
        .await;
    assert_eq!(d.status, StatusCode::OK);
    assert_same_reply(&d, &p, "tokens/refresh");

    let direct_conv = Conversation::start(&stack.http, &stack.emulator.base_url(), &secret).await;
    let proxied_conv = stack.start_conversation().await;

    let d = direct_conv.say(&stack.http, "hello").await;
    let p = proxied_conv.say(&stack.http, "hello").await;
    assert_eq!(d.status, StatusCode::OK);
    assert_same_reply(&d, &p, "post activity");

    let d = stack
        .http
        .get(&direct_conv.url("?watermark=1"), &direct_conv.token)
        .await;
    let p = stack
        .http
        .get(&proxied_conv.url("?watermark=1"), &proxied_conv.token)
        .await;
    assert_eq!(d.status, StatusCode::OK);
    assert_same_reply(&without_content_encoding(d), &p, "reconnect");

    // Same conversation, same watermark: the poll must match byte for byte.
    let same_poll_direct = proxied_conv
        .url("/activities?watermark=0")
        .replace(&stack.proxy.base_url(), &stack.emulator.base_url());
    let d = stack.http.get(&same_poll_direct, &proxied_conv.token).await;
    let p = proxied_conv.poll(&stack.http, Some("0")).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(end_to_end_headers(&d), end_to_end_headers(&p));
    assert_eq!(d.body, p.body, "poll bodies are byte-identical");

    let d = direct_conv.say(&stack.http, "fail").await;
    let p = proxied_conv.say(&stack.http, "fail").await;
    assert_eq!(d.status, StatusCode::BAD_GATEWAY);
    assert_same_reply(&d, &p, "bot error");

    let upload = |conv: &Conversation| {
        let url = conv.url("/upload?userId=dl_test-user");
        let auth = format!("Bearer {}", conv.token);
        let http = &stack.http;
        async move {
            http.send(
                Method::POST,
                &url,
                &[("authorization", &auth), ("content-type", "text/plain")],
                "file contents",
            )
            .await
        }
    };
    let d = upload(&direct_conv).await;
    let p = upload(&proxied_conv).await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.text());
    assert_same_reply(&d, &p, "upload");

    let (direct, proxied) = both("/v3/directline/session/getsessionid");
    let d = stack.http.get(&direct, &direct_conv.token).await;
    let p = stack.http.get(&proxied, &proxied_conv.token).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(
        end_to_end_headers(&d),
        end_to_end_headers(&p),
        "session id: headers"
    );
    let (d_id, p_id) = (d.json(), p.json());
    assert!(
        d_id.is_string() && p_id.is_string(),
        "session ids are JSON strings"
    );
    assert_eq!(d_id.to_string().len(), p_id.to_string().len());

    let (direct, proxied) = both("/v3/directline/no/such/call?x=1");
    let d = stack.http.get(&direct, &direct_conv.token).await;
    let p = stack.http.get(&proxied, &proxied_conv.token).await;
    assert_eq!(d.status, StatusCode::NOT_FOUND);
    assert_same_reply(&d, &p, "unknown path");

    let (direct, proxied) = both("/v3/directline/conversations");
    let d = stack
        .http
        .send(Method::POST, &direct, &[], Bytes::new())
        .await;
    let p = stack
        .http
        .send(Method::POST, &proxied, &[], Bytes::new())
        .await;
    assert_eq!(d.status, StatusCode::UNAUTHORIZED);
    assert_same_reply(&without_content_encoding(d), &p, "missing auth");

    let d = stack
        .http
        .post_json(&direct, "not-a-token", &Value::Null)
        .await;
    let p = stack
        .http
        .post_json(&proxied, "not-a-token", &Value::Null)
        .await;
    assert_eq!(d.status, StatusCode::FORBIDDEN);
    assert_same_reply(&without_content_encoding(d), &p, "bad token");

    stack.shutdown().await;
}

#[tokio::test]
async fn a_gzip_answer_passes_through_and_only_rewritten_answers_come_uncompressed() {
    let rough = EmulatorConfig {
        rough: true,
        ..quiet_emulator()
    };
    let stack = Stack::start_with(rough, |_| {}).await;
    let secret = format!("Bearer {}", stack.secret());
    let start = stack
        .http
        .send(
            Method::POST,
            &stack.proxy_url("/v3/directline/conversations"),
            &[("authorization", &secret), ("accept-encoding", "gzip")],
            Bytes::new(),
        )
        .await;
    assert_eq!(start.status, StatusCode::CREATED, "{}", start.text());
    assert!(!start.headers.contains_key("content-encoding"));
    let started = last_request_to(&stack, "/v3/directline/conversations");
    assert!(
        !started.headers.contains_key("accept-encoding"),
        "a rewritten answer is asked for uncompressed"
    );

    let conversation_id = start.json()["conversationId"]
        .as_str()
        .expect("id")
        .to_string();
    let poll = format!("/v3/directline/conversations/{conversation_id}/activities?watermark=-");
    let token = format!("Bearer {}", start.json()["token"].as_str().expect("token"));
    let headers = [
        ("authorization", token.as_str()),
        ("accept-encoding", "gzip"),
    ];
    let d = stack
        .http
        .send(
            Method::GET,
            &stack.direct_url(&poll),
            &headers,
            Bytes::new(),
        )
        .await;
    let p = stack
        .http
        .send(Method::GET, &stack.proxy_url(&poll), &headers, Bytes::new())
        .await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(p.headers["content-encoding"], "gzip");
    assert_eq!(end_to_end_headers(&d), end_to_end_headers(&p));
    assert_eq!(
        d.headers["content-length"], p.headers["content-length"],
        "the compressed bytes are the upstream's"
    );
    assert_eq!(d.body, p.body);
    assert_eq!(
        last_request_to(&stack, &poll).headers["accept-encoding"],
        "gzip"
    );
    stack.shutdown().await;
}

fn last_request_to(
    stack: &Stack,
    path_and_query: &str,
) -> directline_proxy::emulator::RecordedRequest {
    stack
        .emulator
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path_and_query == path_and_query)
        .unwrap_or_else(|| panic!("upstream saw no request to {path_and_query}"))
}

#[tokio::test]
async fn post_and_upload_bodies_arrive_upstream_unchanged() {
    let stack = Stack::start().await;
    let conv = stack.start_conversation().await;
    let auth = format!("Bearer {}", conv.token);

    let activity = "{ \"type\":\"message\",  \"from\":{\"id\":\"dl_u\"}, \"text\":\"h\u{e9}llo \u{1f600} \\u00e9\" }";
    let reply = stack
        .http
        .send(
            Method::POST,
            &conv.url("/activities"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            activity,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = last_request_to(
        &stack,
        &format!("/v3/directline/conversations/{}/activities", conv.id),
    );
    assert_eq!(seen.body, Bytes::from(activity));

    let boundary = "----dlproxy-boundary";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n\u{0}\u{1}binary\u{ff}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"activity\"\r\nContent-Type: application/vnd.microsoft.activity\r\n\r\n{{\"type\":\"message\",\"from\":{{\"id\":\"dl_u\"}}}}\r\n--{boundary}--\r\n"
    );
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let path = format!(
        "/v3/directline/conversations/{}/upload?userId=dl_u",
        conv.id
    );
    let reply = stack
        .http
        .send(
            Method::POST,
            &stack.proxy_url(&path),
            &[("authorization", &auth), ("content-type", &content_type)],
            multipart.clone(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = last_request_to(&stack, &path);
    assert_eq!(
        seen.body,
        Bytes::from(multipart),
        "multipart body unchanged"
    );
    assert_eq!(seen.headers["content-type"], content_type.as_str());
    stack.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_forwarded_headers_added() {
    let stack = Stack::start().await;
    let secret = format!("Bearer {}", stack.secret());
    let path = "/v3/directline/tokens/generate?probe=1&x=%20y";
    let reply = stack
        .http
        .send(
            Method::POST,
            &stack.proxy_url(path),
            &[
                ("authorization", &secret),
                ("connection", "x-private"),
                ("x-private", "connection-scoped"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic cHJveHk="),
                ("te", "trailers"),
                ("x-end-to-end", "kept"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-host", "spoofed.example"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = last_request_to(&stack, path);
    for dropped in ["x-private", "keep-alive", "proxy-authorization", "te"] {
        assert!(
            !seen.headers.contains_key(dropped),
            "{dropped} was forwarded"
        );
    }
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    assert_eq!(seen.headers["authorization"], secret.as_str());
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(
        seen.headers["x-forwarded-host"],
        stack.proxy.local_addr().to_string().as_str()
    );
    let upstream_host = stack.emulator.addr().to_string();
    assert_eq!(seen.headers["host"], upstream_host.as_str());
    stack.shutdown().await;
}

#[tokio::test]
async fn paths_outside_direct_line_get_404_and_are_not_relayed() {
    let stack = Stack::start().await;
    let before = stack.emulator.requests().len();
    for path in [
        "/",
        "/v3/directlinex/conversations",
        "/v4/directline/conversations",
        "/sas/x",
        "/admin",
    ] {
        let reply = stack
            .http
            .send(Method::GET, &stack.proxy_url(path), &[], Bytes::new())
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.json()["error"]["code"], "NotFound", "{path}");
    }
    for path in [
        "/v3/directline/../v3/directline/conversations",
        "/v3/directline/%2e%2e/admin",
    ] {
        let reply = stack
            .http
            .send(Method::GET, &stack.proxy_url(path), &[], Bytes::new())
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
    }
    assert_eq!(
        stack.emulator.requests().len(),
        before,
        "nothing reached the upstream"
    );
    for path in ["/healthz", "/readyz"] {
        let reply = stack
            .http
            .send(Method::GET, &stack.proxy_url(path), &[], Bytes::new())
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn request_body_over_the_limit_gets_413_without_reaching_upstream() {
    let stack = Stack::start_with(crate::common::quiet_emulator(), |c| {
        c.limits.max_request_body_bytes = 4096;
    })
    .await;
    let conv = stack.start_conversation().await;
    let before = stack.emulator.requests().len();
    let auth = format!("Bearer {}", conv.token);
    let reply = stack
        .http
        .send(
            Method::POST,
            &conv.url("/upload?userId=dl_u"),
            &[
                ("authorization", &auth),
                ("content-type", "application/octet-stream"),
            ],
            vec![7u8; 10_000],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["error"]["code"], "MessageSizeTooBig");
    assert_eq!(stack.emulator.requests().len(), before);
    stack.shutdown().await;
}
