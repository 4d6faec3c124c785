//! `GET /metrics` counts what happened, with bounded labels.

use bytes::Bytes;
use directline_proxy::config::{ProviderKind, StaticProviderConfig};
use directline_proxy::emulator::SIGNED_IN;
use http::{Method, StatusCode};
use serde_json::Value;

use crate::common::{Http, Stack, activities_until, proxy_config, quiet_emulator, ws_connect};

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

#[tokio::test]
async fn metrics_count_connections_frames_upstream_calls_and_sso_decisions() {
    let stack = Stack::start_with(quiet_emulator(), |c| {
        c.sso.provider = ProviderKind::Static;
        c.sso.static_token = Some(StaticProviderConfig {
            token: "demo-user-token".into(),
        });
    })
    .await;
    let conv = stack.start_conversation().await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(&stack.http, "signin exchange").await.status,
        StatusCode::OK
    );
    activities_until(&mut ws, SIGNED_IN).await;
    assert_eq!(conv.poll(&stack.http, None).await.status, StatusCode::OK);

    let reply = stack
        .http
        .send(Method::GET, &stack.proxy_url("/metrics"), &[], Bytes::new())
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4")
    );
    let text = reply.text();
    let p = "directline_proxy_";
    assert_eq!(
        value(
            &text,
            &format!("{p}connections_total{{transport=\"websocket\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("{p}connections_active{{transport=\"websocket\"}}")
        ),
        1.0
    );
    assert!(
        value(
            &text,
            &format!("{p}connections_total{{transport=\"rest\"}}")
        ) >= 2.0
    );
    assert_eq!(
        value(
            &text,
            &format!("{p}connections_total{{transport=\"polling\"}}")
        ),
        1.0
    );
    assert!(
        value(
            &text,
            &format!("{p}websocket_frames_total{{direction=\"to_client\"}}")
        ) >= 3.0
    );
    assert!(
        value(
            &text,
            &format!("{p}websocket_payload_bytes_total{{direction=\"to_client\"}}")
        ) > 100.0
    );
    assert_eq!(
        value(
            &text,
            &format!(
                "{p}upstream_requests_total{{route=\"start_conversation\",status_class=\"2xx\"}}"
            )
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("{p}upstream_requests_total{{route=\"sso_invoke\",status_class=\"2xx\"}}")
        ),
        1.0
    );
    assert!(value(&text, &format!("{p}oauth_cards_total")) >= 1.0);
    assert_eq!(
        value(
            &text,
            &format!("{p}sso_decisions_total{{flow=\"invoke\",outcome=\"success\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("{p}provider_calls_total{{provider=\"static\",outcome=\"token\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("{p}sso_decision_duration_seconds_count{{flow=\"invoke\"}}")
        ),
        1.0
    );
    assert!(text.contains(&format!(
        "{p}build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(!text.contains(&conv.id), "no conversation id as a label");
    stack.shutdown().await;
}

#[tokio::test]
async fn upstream_failures_are_counted_by_kind() {
    let dead = crate::common::dead_address().await;
    let proxy = directline_proxy::start(proxy_config(&dead))
        .await
        .expect("proxy");
    let http = Http::plain();
    let reply = http
        .post_json(
            &format!("{}/v3/directline/conversations", proxy.base_url()),
            "s",
            &Value::Null,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let text = http
        .send(
            Method::GET,
            &format!("{}/metrics", proxy.base_url()),
            &[],
            Bytes::new(),
        )
        .await
        .text();
    assert_eq!(
        value(
            &text,
            "directline_proxy_errors_total{kind=\"upstream_unreachable\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "directline_proxy_upstream_requests_total{route=\"start_conversation\",status_class=\"error\"}"
        ),
        1.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn metrics_can_be_switched_off() {
    let stack = Stack::start_with(quiet_emulator(), |c| c.metrics.enabled = false).await;
    let reply = stack
        .http
        .send(Method::GET, &stack.proxy_url("/metrics"), &[], Bytes::new())
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    stack.shutdown().await;
}
