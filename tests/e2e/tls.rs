//! TLS on both legs with the development certificates in `certs/`.

use std::sync::Arc;

use http::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::{
    Conversation, Http, WAIT, activities_until, eventually, metric, proxy_config, quiet_emulator,
    repo_path,
};
use directline_proxy::emulator::Emulator;

fn with_dev_certificate(config: &mut directline_proxy::config::Config) {
    config.listen.tls_cert = Some(repo_path("certs/server.pem"));
    config.listen.tls_key = Some(repo_path("certs/server.key"));
}

#[tokio::test]
async fn tls_listener_and_tls_upstream_carry_rest_and_websocket() {
    let emulator = Emulator::start(quiet_emulator()).await.expect("emulator");
    // Inner proxy: a TLS server standing in for a TLS Direct Line.
    let mut inner = proxy_config(&emulator.base_url());
    with_dev_certificate(&mut inner);
    let inner = directline_proxy::start(inner).await.expect("inner proxy");
    let inner_url = format!("https://localhost:{}", inner.local_addr().port());
    // Outer proxy: TLS listener, TLS upstream trusting the development CA.
    let mut outer = proxy_config(&inner_url);
    with_dev_certificate(&mut outer);
    outer.upstream.ca_file = Some(repo_path("certs/ca.pem"));
    let outer = directline_proxy::start(outer).await.expect("outer proxy");
    let outer_url = format!("https://localhost:{}", outer.local_addr().port());

    let http = Http::trusting_dev_ca();
    let conv = Conversation::start(&http, &outer_url, emulator.secret()).await;
    let expected = format!(
        "wss://localhost:{}/v3/directline/conversations/",
        outer.local_addr().port()
    );
    assert!(
        conv.stream_url.starts_with(&expected),
        "{}",
        conv.stream_url
    );

    let ca = repo_path("certs/ca.pem");
    let tls = directline_proxy::tls::client_config(Some(&ca)).expect("tls");
    let tcp = TcpStream::connect(outer.local_addr()).await.expect("tcp");
    let server_name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .expect("tls handshake");
    let request = conv
        .stream_url
        .as_str()
        .into_client_request()
        .expect("request");
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("wss through both proxies");
    assert_eq!(conv.say(&http, "over tls").await.status, StatusCode::OK);
    activities_until(&mut ws, "You said: over tls").await;

    outer.shutdown().await;
    inner.shutdown().await;
    emulator.shutdown().await;
}

/// The upstream's certificate is signed by the development CA, which the
/// proxy does not trust: the handshake fails at the proxy's certificate
/// check, so the upstream counts a failed handshake and never sees the call.
#[tokio::test]
async fn upstream_with_an_untrusted_certificate_gives_502_from_the_failed_handshake() {
    let emulator = Emulator::start(quiet_emulator()).await.expect("emulator");
    let mut inner = proxy_config(&emulator.base_url());
    with_dev_certificate(&mut inner);
    let inner = directline_proxy::start(inner).await.expect("inner proxy");
    let inner_url = format!("https://localhost:{}", inner.local_addr().port());
    let outer = directline_proxy::start(proxy_config(&inner_url))
        .await
        .expect("outer proxy");
    let http = Http::plain();
    let reply = http
        .post_json(
            &format!("{}/v3/directline/conversations", outer.base_url()),
            emulator.secret(),
            &Value::Null,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.json(),
        json!({"error": {"code": "BadGateway", "message": "The Direct Line service could not be reached."}})
    );
    let outer_base = outer.base_url();
    let errors = |kind: &str| format!("directline_proxy_errors_total{{kind=\"{kind}\"}}");
    assert_eq!(
        metric(&http, &outer_base, &errors("upstream_unreachable")).await,
        1.0,
        "the connection to the upstream failed"
    );
    let trusting = Http::trusting_dev_ca();
    eventually("the upstream counts a failed TLS handshake", async || {
        metric(&trusting, &inner_url, &errors("tls_handshake")).await == 1.0
    })
    .await;
    assert!(
        emulator.requests().is_empty(),
        "no request got through the upstream"
    );
    outer.shutdown().await;
    inner.shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_client_sending_garbage_to_the_tls_listener_is_counted_as_a_failed_handshake() {
    let mut config = proxy_config("http://127.0.0.1:9");
    with_dev_certificate(&mut config);
    let proxy = directline_proxy::start(config).await.expect("proxy");
    let mut tcp = TcpStream::connect(proxy.local_addr()).await.expect("tcp");
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    // The listener answers with an alert at most, then closes.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("the listener closes the connection");
    assert!(!answer.starts_with(b"HTTP/"), "no plain HTTP answer");
    let base = format!("https://localhost:{}", proxy.local_addr().port());
    let kind = "directline_proxy_errors_total{kind=\"tls_handshake\"}";
    let http = Http::trusting_dev_ca();
    eventually("the failed handshake is counted", async || {
        metric(&http, &base, kind).await == 1.0
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn missing_certificate_file_is_a_clear_start_error() {
    let mut config = proxy_config("http://127.0.0.1:9");
    config.listen.tls_cert = Some(repo_path("certs/does-not-exist.pem"));
    config.listen.tls_key = Some(repo_path("certs/server.key"));
    let error = directline_proxy::start(config)
        .await
        .err()
        .expect("start fails");
    assert!(error.to_string().contains("does-not-exist.pem"), "{error}");
}
