//! Hot reload of the TLS certificate and `[sso]`, without dropping open
//! connections; invalid configs are rejected and the old one keeps running.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use directline_proxy::config::Config;
use directline_proxy::emulator::{Emulator, OAUTH_CARD, SIGNED_IN};
use http::{Method, StatusCode};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::common::{
    Conversation, Http, Stack, WAIT, activities_until, quiet_emulator, repo_path, ws_connect,
};

fn config_text(upstream: &str, extra: &str) -> String {
    format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n{extra}\n[upstream]\nurl = \"{upstream}\"\n[reload]\nwatch_interval_ms = 100\n"
    )
}

const STATIC_SSO: &str = "[sso]\nprovider = \"static\"\ntoken_post_allow_hosts = [\"127.0.0.1\"]\n[sso.static]\ntoken = \"demo-user-token\"\n";

fn load(path: &Path) -> Config {
    Config::load(path).expect("valid config")
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(http: &Http, base: &str, series: &str) -> f64 {
    let text = http
        .send(Method::GET, &format!("{base}/metrics"), &[], Bytes::new())
        .await
        .text();
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn card_reaches_client(stack_http: &Http, base: &str, secret: &str) -> bool {
    let conv = Conversation::start(stack_http, base, secret).await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(stack_http, "signin exchange").await.status,
        StatusCode::OK
    );
    assert_eq!(conv.say(stack_http, "marker").await.status, StatusCode::OK);
    let seen = activities_until(&mut ws, "You said: marker").await;
    seen.iter().any(|a| {
        a["attachments"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["contentType"] == OAUTH_CARD))
    })
}

#[tokio::test]
async fn sso_settings_reload_on_file_change_without_dropping_open_streams() {
    let emulator = Emulator::start(quiet_emulator()).await.expect("emulator");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_text(&emulator.base_url(), "")).expect("write");
    let proxy = directline_proxy::start(load(&path)).await.expect("proxy");
    proxy.watch(path.clone(), Duration::from_millis(100));
    let http = Http::plain();
    let base = proxy.base_url();
    assert!(
        card_reaches_client(&http, &base, emulator.secret()).await,
        "SSO is off at first"
    );

    let open = Conversation::start(&http, &base, emulator.secret()).await;
    let mut open_ws = ws_connect(&open.stream_url).await;

    std::fs::write(&path, config_text(&emulator.base_url(), STATIC_SSO)).expect("write");
    let applied = "directline_proxy_config_reloads_total{outcome=\"applied\"}";
    eventually("the reload is applied", async || {
        metric(&http, &base, applied).await == 1.0
    })
    .await;
    assert!(
        !card_reaches_client(&http, &base, emulator.secret()).await,
        "SSO is on after the reload"
    );

    assert_eq!(open.say(&http, "still here").await.status, StatusCode::OK);
    activities_until(&mut open_ws, "You said: still here").await;

    std::fs::write(
        &path,
        config_text(&emulator.base_url(), "[sso]\nprovider = \"bogus\"\n"),
    )
    .expect("write");
    let rejected = "directline_proxy_config_reloads_total{outcome=\"rejected\"}";
    eventually("the invalid config is rejected", async || {
        metric(&http, &base, rejected).await == 1.0
    })
    .await;
    assert!(
        !card_reaches_client(&http, &base, emulator.secret()).await,
        "the old settings keep running"
    );
    proxy.shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn turning_tls_on_needs_a_restart_and_is_refused() {
    let stack = Stack::start().await;
    let mut config = crate::common::proxy_config(&stack.emulator.base_url());
    config.listen.tls_cert = Some(repo_path("certs/server.pem"));
    config.listen.tls_key = Some(repo_path("certs/server.key"));
    let error = stack.proxy.reload(config).expect_err("refused");
    assert!(error.to_string().contains("restart"), "{error}");
    let mut broken = crate::common::proxy_config(&stack.emulator.base_url());
    broken.sso.provider = "static".into();
    assert!(
        stack.proxy.reload(broken).is_err(),
        "static without a token is invalid"
    );
    stack.shutdown().await;
}

async fn served_certificate(addr: std::net::SocketAddr) -> Vec<u8> {
    let ca = repo_path("certs/ca.pem");
    let tls = directline_proxy::tls::client_config(Some(&ca)).expect("tls");
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("handshake");
    let certificates = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("certificates");
    certificates[0].as_ref().to_vec()
}

fn certificate_der(file: &str) -> Vec<u8> {
    CertificateDer::pem_file_iter(repo_path(file))
        .expect("pem")
        .next()
        .expect("one")
        .expect("cert")
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn a_renewed_certificate_is_served_to_new_connections() {
    let emulator = Emulator::start(quiet_emulator()).await.expect("emulator");
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = (dir.path().join("tls.pem"), dir.path().join("tls.key"));
    std::fs::copy(repo_path("certs/server.pem"), &cert).expect("copy");
    std::fs::copy(repo_path("certs/server.key"), &key).expect("copy");
    let path = dir.path().join("config.toml");
    let tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    std::fs::write(&path, config_text(&emulator.base_url(), &tls)).expect("write");
    let proxy = directline_proxy::start(load(&path)).await.expect("proxy");
    proxy.watch(path.clone(), Duration::from_millis(100));
    assert_eq!(
        served_certificate(proxy.local_addr()).await,
        certificate_der("certs/server.pem")
    );

    let http = Http::trusting_dev_ca();
    let base = format!("https://localhost:{}", proxy.local_addr().port());
    let conv = Conversation::start(&http, &base, emulator.secret()).await;
    assert_eq!(conv.say(&http, "before").await.status, StatusCode::OK);

    std::fs::copy(repo_path("certs/server-alt.key"), &key).expect("copy");
    std::fs::copy(repo_path("certs/server-alt.pem"), &cert).expect("copy");
    let renewed = certificate_der("certs/server-alt.pem");
    eventually("the renewed certificate is served", async || {
        served_certificate(proxy.local_addr()).await == renewed
    })
    .await;
    assert_eq!(
        conv.say(&http, "after").await.status,
        StatusCode::OK,
        "pooled connections still work"
    );
    proxy.shutdown().await;
    emulator.shutdown().await;
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let emulator = Emulator::start(quiet_emulator()).await.expect("emulator");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("config.toml");
    let text = |extra: &str| {
        format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\n[upstream]\nurl = \"{}\"\n[reload]\nwatch_interval_ms = 0\n{extra}",
            emulator.base_url()
        )
    };
    std::fs::write(&path, text("")).expect("write");
    let child = Command::new(env!("CARGO_BIN_EXE_directline-proxy"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let process = Process(child);
    let http = Http::plain();
    let base = format!("http://127.0.0.1:{port}");
    eventually("the binary listens", async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    std::fs::write(&path, text(STATIC_SSO)).expect("write");
    let status = Command::new("kill")
        .args(["-HUP", &process.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let applied = "directline_proxy_config_reloads_total{outcome=\"applied\"}";
    eventually("SIGHUP applied the new config", async || {
        metric(&http, &base, applied).await == 1.0
    })
    .await;
    let conv = Conversation::start(&http, &base, emulator.secret()).await;
    let mut ws = ws_connect(&conv.stream_url).await;
    assert_eq!(
        conv.say(&http, "signin exchange").await.status,
        StatusCode::OK
    );
    let seen: Vec<Value> = activities_until(&mut ws, SIGNED_IN).await;
    assert!(
        !seen.iter().any(|a| a["attachments"].is_array()),
        "SSO is on after SIGHUP"
    );
    drop(process);
    emulator.shutdown().await;
}
