//! Hot reload of the TLS certificate and `[sso]`, without dropping open
//! connections; invalid configs are rejected and the old one keeps running.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use directline_proxy::config::{Config, ProviderKind};
use directline_proxy::emulator::{Emulator, OAUTH_CARD};
use http::{Method, StatusCode};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::common::process::ProxyProcess;
use crate::common::{
    Conversation, Http, Stack, activities_until, eventually, metric, quiet_emulator, repo_path,
    ws_connect,
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
    broken.sso.provider = ProviderKind::Static;
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

/// A config for the real binary in front of `emulator`, on a port of its
/// choosing (the `proxy listening` line names it), reloading only on SIGHUP.
fn binary_config(emulator: &Emulator, extra: &str) -> String {
    format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[reload]\nwatch_interval_ms = 0\n{extra}",
        emulator.base_url()
    )
}

#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let emulator = Emulator::start(quiet_emulator()).await.expect("emulator");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, binary_config(&emulator, "")).expect("write");
    let mut process = ProxyProcess::spawn(&path);
    let base = process.listening().await;
    let http = Http::plain();
    assert!(
        card_reaches_client(&http, &base, emulator.secret()).await,
        "SSO is off at first"
    );

    std::fs::write(&path, binary_config(&emulator, STATIC_SSO)).expect("write");
    process.signal("HUP").await;
    process
        .wait_for_log("config reloaded: TLS certificate and [sso] applied")
        .await;
    let applied = "directline_proxy_config_reloads_total{outcome=\"applied\"}";
    assert_eq!(metric(&http, &base, applied).await, 1.0);
    assert!(
        !card_reaches_client(&http, &base, emulator.secret()).await,
        "SSO is on after SIGHUP"
    );
    emulator.shutdown().await;
}

/// SIGHUP's default action kills a process. The handler is installed before
/// the port is bound, so a SIGHUP sent the moment the proxy says it listens
/// (as a config manager reacting to the new pod would) reloads instead.
#[tokio::test]
async fn sighup_the_moment_the_binary_listens_reloads_instead_of_killing_it() {
    let emulator = Emulator::start(quiet_emulator()).await.expect("emulator");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, binary_config(&emulator, STATIC_SSO)).expect("write");
    let mut process = ProxyProcess::spawn(&path);
    let base = process.listening().await;
    process.signal("HUP").await;
    process
        .wait_for_log("config reloaded: TLS certificate and [sso] applied")
        .await;
    assert!(process.is_running(), "SIGHUP did not kill the proxy");
    let http = Http::plain();
    let applied = "directline_proxy_config_reloads_total{outcome=\"applied\"}";
    assert_eq!(metric(&http, &base, applied).await, 1.0);
    assert!(!card_reaches_client(&http, &base, emulator.secret()).await);
    emulator.shutdown().await;
}

async fn start_status(stack: &Stack, origin: &str) -> StatusCode {
    let auth = format!("Bearer {}", stack.secret());
    let headers = [("authorization", auth.as_str()), ("origin", origin)];
    let url = stack.proxy_url("/v3/directline/conversations");
    stack
        .http
        .send(Method::POST, &url, &headers, Bytes::new())
        .await
        .status
}

#[tokio::test]
async fn after_a_reload_requests_are_checked_against_the_new_origins_not_the_old() {
    const OLD: &str = "https://old.contoso.com";
    const NEW: &str = "https://new.contoso.com";
    let stack = Stack::start_with(quiet_emulator(), |c| {
        c.listen.allowed_origins = vec![OLD.into()];
    })
    .await;
    assert_eq!(start_status(&stack, OLD).await, StatusCode::CREATED);
    assert_eq!(start_status(&stack, NEW).await, StatusCode::FORBIDDEN);

    let mut reloaded = crate::common::proxy_config(&stack.emulator.base_url());
    reloaded.listen.allowed_origins = vec![NEW.into()];
    stack.proxy.reload(reloaded).expect("reloaded");
    assert_eq!(start_status(&stack, NEW).await, StatusCode::CREATED);
    assert_eq!(start_status(&stack, OLD).await, StatusCode::FORBIDDEN);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_reloaded_change_to_a_restart_only_section_does_not_take_effect() {
    let stack = Stack::start().await;
    let metrics_url = stack.proxy_url("/metrics");
    assert_eq!(
        stack.http.get(&metrics_url, "").await.status,
        StatusCode::OK
    );

    let mut reloaded = crate::common::proxy_config(&stack.emulator.base_url());
    reloaded.metrics.enabled = false;
    stack.proxy.reload(reloaded.clone()).expect("reloaded");
    assert_eq!(
        stack.http.get(&metrics_url, "").await.status,
        StatusCode::OK,
        "[metrics] needs a restart"
    );
    // A second reload of the same file still leaves the running section.
    stack.proxy.reload(reloaded).expect("reloaded again");
    assert_eq!(
        stack.http.get(&metrics_url, "").await.status,
        StatusCode::OK
    );
    stack.shutdown().await;
}
