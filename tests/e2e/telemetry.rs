//! OpenTelemetry traces through the real binary: the test is the OTLP/HTTP
//! collector (an endpoint on 127.0.0.1 whose requests are decoded with the
//! opentelemetry-proto types), the emulator is Direct Line, and the
//! proxy's spans, their links and the `traceparent` it sends on are checked
//! against each other.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use directline_proxy::emulator::{Emulator, SIGNED_IN};
use http::{HeaderMap, Method, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::endpoint::Endpoint;
use crate::common::process::ProxyProcess;
use crate::common::{
    Conversation, Http, Stack, WAIT, activities_until, eventually, quiet_emulator, scratch_file,
};

/// The client's trace and span, as a browser's instrumentation would send.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const CLIENT_STATE: &str = "vendor=opaque-value";

const USER_TOKEN: &str = "demo-user-token";
const SESSION_COOKIE: &str = "session=user-session-secret";
const PAGE_ORIGIN: &str = "https://chat.contoso.test";

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// A span as the collector received it, with its service's name.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    span: Span,
}

impl Exported {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    fn attribute(&self, key: &str) -> Option<String> {
        find(&self.span.attributes, key)
    }

    /// Asserts each `(key, value)` attribute, naming the span when one is
    /// missing or differs.
    fn assert_attributes(&self, expected: &[(&str, &str)]) {
        for (key, value) in expected {
            assert_eq!(
                self.attribute(key).as_deref(),
                Some(*value),
                "{key} of span {}",
                self.span.name
            );
        }
    }

    fn has_event(&self, name: &str) -> bool {
        self.span.events.iter().any(|event| event.name == name)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        other => format!("{other:?}"),
    }
}

fn find(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(text)
}

/// Every span in every export the collector received.
fn exported(collector: &Endpoint) -> Vec<Exported> {
    let mut spans = Vec::new();
    for request in collector.seen() {
        assert_eq!(request.path_and_query, "/v1/traces");
        assert_eq!(
            request.headers["content-type"], "application/x-protobuf",
            "OTLP/HTTP protobuf"
        );
        let export = ExportTraceServiceRequest::decode(request.body).expect("an OTLP export");
        for resource in export.resource_spans {
            let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
            let service = find(&attributes, "service.name").unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| Exported {
                    service: service.clone(),
                    span,
                }));
            }
        }
    }
    spans
}

/// The one exported span named `name` that `pick` accepts, once exported.
async fn span_named(
    collector: &Endpoint,
    name: &str,
    pick: impl Fn(&Exported) -> bool,
) -> Exported {
    let matching = || {
        exported(collector)
            .into_iter()
            .filter(|s| s.span.name == name && pick(s))
            .collect::<Vec<_>>()
    };
    eventually(&format!("a {name} span is exported"), async || {
        !matching().is_empty()
    })
    .await;
    let mut spans = matching();
    assert_eq!(spans.len(), 1, "one {name} span: {spans:#?}");
    spans.remove(0)
}

/// `(trace id, parent span id)` of a `traceparent` value.
fn trace_and_parent(headers: &HeaderMap) -> (String, String) {
    let value = headers
        .get("traceparent")
        .expect("a traceparent")
        .to_str()
        .expect("ASCII");
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    (parts[1].to_string(), parts[2].to_string())
}

fn config_file(name: &str, emulator: &Emulator, extra: &str) -> PathBuf {
    scratch_file(
        name,
        &format!(
            "[listen]\naddr = \"127.0.0.1:0\"\ndrain_timeout_ms = 500\nallowed_origins = [\"{PAGE_ORIGIN}\"]\n\
             [upstream]\nurl = \"{}\"\n[reload]\nwatch_interval_ms = 0\n{extra}",
            emulator.base_url()
        ),
    )
}

fn telemetry_section(collector: &Endpoint) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"proxy-under-test\"\n",
        collector.url("")
    )
}

/// The proxy with telemetry on, exporting every 50 ms.
async fn traced_proxy(name: &str, emulator: &Emulator, extra: &str) -> (ProxyProcess, String) {
    let config = config_file(name, emulator, extra);
    let mut proxy = ProxyProcess::spawn_with_env(&config, &[("OTEL_BSP_SCHEDULE_DELAY", "50")]);
    let base = proxy.listening().await;
    (proxy, base)
}

async fn stop(mut proxy: ProxyProcess) {
    proxy.signal("TERM").await;
    assert!(proxy.exit_status().await.success());
}

async fn start_conversation(http: &Http, base: &str, secret: &str, headers: &[(&str, &str)]) {
    let auth = format!("Bearer {secret}");
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    let reply = http
        .send(
            Method::POST,
            &format!("{base}/v3/directline/conversations"),
            &all,
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
}

#[tokio::test]
async fn a_rest_call_joins_the_clients_trace_with_the_upstream_call_as_its_child() {
    let emulator = Emulator::start(quiet_emulator()).await.expect("emulator");
    let collector = Endpoint::answering(StatusCode::OK, "").await;
    let (proxy, base) =
        traced_proxy("otel-rest.toml", &emulator, &telemetry_section(&collector)).await;
    let client_parent = traceparent(CLIENT_TRACE, CLIENT_SPAN);
    start_conversation(
        &Http::plain(),
        &base,
        emulator.secret(),
        &[
            ("traceparent", &client_parent),
            ("tracestate", CLIENT_STATE),
        ],
    )
    .await;

    let request = span_named(&collector, "POST start_conversation", |_| true).await;
    assert_eq!(request.service, "proxy-under-test");
    assert_eq!(request.span.kind, SpanKind::Server as i32);
    assert_eq!(request.trace_id(), CLIENT_TRACE, "the client's trace");
    assert_eq!(
        request.parent_id(),
        CLIENT_SPAN,
        "the client's span is the parent"
    );
    assert_eq!(
        request.attribute("http.response.status_code").as_deref(),
        Some("201")
    );
    assert!(request.has_event("request done"));
    let upstream = span_named(&collector, "upstream", |s| s.trace_id() == CLIENT_TRACE).await;
    assert_eq!(upstream.span.kind, SpanKind::Client as i32);
    assert_eq!(
        upstream.parent_id(),
        request.span_id(),
        "a child of the request"
    );
    upstream.assert_attributes(&[
        ("route", "start_conversation"),
        ("url.path", "/v3/directline/conversations"),
        ("http.response.status_code", "201"),
    ]);

    let start = emulator
        .requests()
        .into_iter()
        .find(|r| r.method == Method::POST && r.path_and_query == "/v3/directline/conversations")
        .expect("the start reached the emulator");
    assert_eq!(
        trace_and_parent(&start.headers),
        (CLIENT_TRACE.to_string(), upstream.span_id()),
        "Direct Line sees the client's trace, with the proxy's call as the parent"
    );
    assert_eq!(start.headers["tracestate"], CLIENT_STATE, "tracestate kept");
    stop(proxy).await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn an_sso_decision_on_a_stream_has_the_provider_and_invoke_as_children() {
    let emulator = Emulator::start(quiet_emulator()).await.expect("emulator");
    let collector = Endpoint::answering(StatusCode::OK, "").await;
    let provider =
        Endpoint::answering(StatusCode::OK, &json!({"token": USER_TOKEN}).to_string()).await;
    let sso = format!(
        "[sso]\nprovider = \"http\"\n[sso.http]\nurl = \"{}\"\n{}",
        provider.url("/bot-token"),
        telemetry_section(&collector)
    );
    let (proxy, base) = traced_proxy("otel-sso.toml", &emulator, &sso).await;
    let http = Http::plain();
    let conv = Conversation::start(&http, &base, emulator.secret()).await;
    let mut request = conv
        .stream_url
        .as_str()
        .into_client_request()
        .expect("request");
    let client_parent = traceparent(CLIENT_TRACE, CLIENT_SPAN);
    let headers = request.headers_mut();
    headers.insert("traceparent", client_parent.parse().expect("value"));
    headers.insert("cookie", SESSION_COOKIE.parse().expect("value"));
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("in time")
        .expect("the stream opens");
    assert_eq!(
        conv.say(&http, "signin exchange").await.status,
        StatusCode::OK
    );
    activities_until(&mut ws, SIGNED_IN).await;
    ws.close(None).await.expect("close");

    let in_trace = |s: &Exported| s.trace_id() == CLIENT_TRACE;
    let opening = span_named(&collector, "GET stream", in_trace).await;
    assert_eq!(opening.parent_id(), CLIENT_SPAN);
    assert!(opening.has_event("stream opened"), "{opening:#?}");
    let decision = span_named(&collector, "sso.decision", in_trace).await;
    assert_eq!(
        decision.parent_id(),
        opening.span_id(),
        "part of the stream's trace"
    );
    decision.assert_attributes(&[
        ("sso.outcome", "success"),
        ("sso.flow", "invoke"),
        ("sso.provider", "http"),
    ]);
    let provider_call = span_named(&collector, "sso.provider", in_trace).await;
    assert_eq!(provider_call.parent_id(), decision.span_id());
    assert_eq!(
        provider_call.attribute("sso.provider.outcome").as_deref(),
        Some("token")
    );
    let invoke = span_named(&collector, "sso.invoke", in_trace).await;
    assert_eq!(invoke.parent_id(), decision.span_id());
    let invoke_call = span_named(&collector, "upstream", |s| {
        in_trace(s) && s.attribute("route").as_deref() == Some("sso_invoke")
    })
    .await;
    assert_eq!(invoke_call.parent_id(), invoke.span_id());
    let closed = span_named(&collector, "stream.closed", in_trace).await;
    assert_eq!(closed.parent_id(), opening.span_id());
    assert!(closed.has_event("stream closed"), "{closed:#?}");
    assert!(closed.attribute("stream.lifetime_ms").is_some());
    assert!(
        opening.span.end_time_unix_nano <= decision.span.start_time_unix_nano,
        "the handshake's span ends with the handshake, not with the stream"
    );

    let handshake = span_named(&collector, "upstream", |s| {
        in_trace(s) && s.attribute("route").as_deref() == Some("stream")
    })
    .await;
    assert_eq!(handshake.parent_id(), opening.span_id());
    let upgraded = emulator
        .requests()
        .into_iter()
        .find(|r| r.path_and_query.contains("/stream"))
        .expect("the handshake reached the emulator");
    assert_eq!(
        trace_and_parent(&upgraded.headers),
        (CLIENT_TRACE.to_string(), handshake.span_id()),
        "the WebSocket handshake carries the trace on"
    );

    let asked = provider.seen();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        trace_and_parent(&asked[0].headers),
        (CLIENT_TRACE.to_string(), provider_call.span_id()),
        "the provider sees the trace, with the proxy's call as the parent"
    );
    let invoked = emulator
        .requests()
        .into_iter()
        .find(|r| {
            r.path_and_query.ends_with("/activities") && r.body.windows(6).any(|w| w == b"invoke")
        })
        .expect("the invoke reached the emulator");
    assert_eq!(
        trace_and_parent(&invoked.headers),
        (CLIENT_TRACE.to_string(), invoke_call.span_id())
    );

    let (_, stream_token) = crate::common::without_query_param(&conv.stream_url, "t");
    let (_, sealed) = crate::common::without_query_param(&conv.stream_url, "dlpx");
    let secrets = [
        USER_TOKEN.to_string(),
        emulator.secret().to_string(),
        conv.token.clone(),
        stream_token.expect("a stream token"),
        sealed.expect("a sealed context"),
        "user-session-secret".to_string(),
        "Bearer".to_string(),
    ];
    assert_no_secret_recorded(&exported(&collector), &secrets);
    stop(proxy).await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_token_post_is_a_child_of_its_decision_and_carries_the_trace() {
    let emulator = Emulator::start(quiet_emulator()).await.expect("emulator");
    let collector = Endpoint::answering(StatusCode::OK, "").await;
    let sso = format!(
        "[sso]\nprovider = \"static\"\nflows = [\"token_post\"]\ntoken_post_allow_hosts = [\"{}/sas/\"]\n\
         [sso.static]\ntoken = \"{USER_TOKEN}\"\n{}",
        emulator.base_url(),
        telemetry_section(&collector)
    );
    let (proxy, base) = traced_proxy("otel-post.toml", &emulator, &sso).await;
    let http = Http::plain();
    let conv = Conversation::start(&http, &base, emulator.secret()).await;
    let client_parent = traceparent(CLIENT_TRACE, CLIENT_SPAN);
    let mut ws =
        crate::common::ws_connect_with_header(&conv.stream_url, "traceparent", &client_parent)
            .await;
    assert_eq!(conv.say(&http, "signin post").await.status, StatusCode::OK);
    activities_until(&mut ws, SIGNED_IN).await;

    let in_trace = |s: &Exported| s.trace_id() == CLIENT_TRACE;
    let decision = span_named(&collector, "sso.decision", in_trace).await;
    decision.assert_attributes(&[
        ("sso.flow", "token_post"),
        ("sso.outcome", "success"),
        ("sso.provider", "static"),
    ]);
    let post = span_named(&collector, "sso.token_post", in_trace).await;
    assert_eq!(post.parent_id(), decision.span_id());
    assert_eq!(post.span.kind, SpanKind::Client as i32);
    let path = post.attribute("url.path").expect("the path");
    assert!(path.starts_with("/sas/") && !path.contains('?'), "{path}");
    let posted = emulator
        .requests()
        .into_iter()
        .find(|r| r.path_and_query.starts_with("/sas/"))
        .expect("the token post reached the emulator");
    assert_eq!(
        trace_and_parent(&posted.headers),
        (CLIENT_TRACE.to_string(), post.span_id())
    );
    stop(proxy).await;
    emulator.shutdown().await;
}

/// Every name and attribute value of every span, event and resource.
fn assert_no_secret_recorded(spans: &[Exported], secrets: &[String]) {
    assert!(!spans.is_empty());
    for exported in spans {
        let span = &exported.span;
        let mut recorded = vec![span.name.clone(), exported.service.clone()];
        let mut values = |attributes: &[KeyValue]| {
            for kv in attributes {
                recorded.push(kv.key.clone());
                recorded.extend(kv.value.as_ref().map(text));
            }
        };
        values(&span.attributes);
        for event in &span.events {
            values(&event.attributes);
        }
        recorded.extend(span.events.iter().map(|e| e.name.clone()));
        for secret in secrets {
            for value in &recorded {
                assert!(
                    !value.contains(secret.as_str()),
                    "{secret:?} recorded in {span:#?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn spans_still_queued_are_sent_at_shutdown() {
    let emulator = Emulator::start(quiet_emulator()).await.expect("emulator");
    let collector = Endpoint::answering(StatusCode::OK, "").await;
    let config = config_file("otel-flush.toml", &emulator, &telemetry_section(&collector));
    // Batches every 10 minutes: only the shutdown's flush can send this one.
    let mut proxy = ProxyProcess::spawn_with_env(&config, &[("OTEL_BSP_SCHEDULE_DELAY", "600000")]);
    let base = proxy.listening().await;
    start_conversation(&Http::plain(), &base, emulator.secret(), &[]).await;
    assert!(
        collector.seen().is_empty(),
        "nothing exported before the batch is due"
    );
    stop(proxy).await;
    let names: Vec<String> = exported(&collector)
        .into_iter()
        .map(|s| s.span.name)
        .collect();
    assert!(
        names.contains(&"POST start_conversation".to_string()),
        "{names:?}"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_collector_that_never_answers_does_not_hold_requests() {
    let emulator = Emulator::start(quiet_emulator()).await.expect("emulator");
    let (collector, _gate) = Endpoint::gated(|_| (StatusCode::OK, String::new())).await;
    let (proxy, base) =
        traced_proxy("otel-stuck.toml", &emulator, &telemetry_section(&collector)).await;
    let http = Http::plain();
    let started = tokio::time::Instant::now();
    for _ in 0..20 {
        start_conversation(&http, &base, emulator.secret(), &[]).await;
    }
    eventually("an export is under way", async || {
        !collector.seen().is_empty()
    })
    .await;
    start_conversation(&http, &base, emulator.secret(), &[]).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "requests waited for the collector: {:?}",
        started.elapsed()
    );
    stop(proxy).await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn with_telemetry_off_trace_headers_pass_through_unchanged() {
    let stack = Stack::start().await;
    let client_parent = traceparent(CLIENT_TRACE, CLIENT_SPAN);
    start_conversation(
        &stack.http,
        &stack.proxy.base_url(),
        stack.emulator.secret(),
        &[
            ("traceparent", &client_parent),
            ("tracestate", CLIENT_STATE),
        ],
    )
    .await;
    let start = stack
        .emulator
        .requests()
        .into_iter()
        .find(|r| r.method == Method::POST)
        .expect("the start reached the emulator");
    assert_eq!(start.headers["traceparent"], client_parent.as_str());
    assert_eq!(start.headers["tracestate"], CLIENT_STATE);
    stack.shutdown().await;
}
