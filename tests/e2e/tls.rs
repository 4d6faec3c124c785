//! TLS on both legs with the development certificates in `certs/`.

use std::sync::Arc;

use http::StatusCode;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::{
    Conversation, Http, activities_until, proxy_config, quiet_emulator, repo_path,
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

#[tokio::test]
async fn upstream_with_an_untrusted_certificate_gives_502() {
    let emulator = Emulator::start(quiet_emulator()).await.expect("emulator");
    let mut inner = proxy_config(&emulator.base_url());
    with_dev_certificate(&mut inner);
    let inner = directline_proxy::start(inner).await.expect("inner proxy");
    let outer = proxy_config(&format!("https://localhost:{}", inner.local_addr().port()));
    let outer = directline_proxy::start(outer).await.expect("outer proxy");
    let reply = Http::plain()
        .post_json(
            &format!("{}/v3/directline/conversations", outer.base_url()),
            emulator.secret(),
            &Value::Null,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    outer.shutdown().await;
    inner.shutdown().await;
    emulator.shutdown().await;
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
