//! Builders the end-to-end tests read as sentences with: an emulator, the
//! proxy in front of it, and HTTP and WebSocket clients at real addresses.
//!
//! Every test binary that includes this module defines `ROUGH_EMULATOR` at
//! its root. When true, the emulators it builds are rough
//! (`EmulatorConfig::rough`), and the clients behave like browsers do
//! against such a service: they accept gzip and offer `permessage-deflate`;
//! test users have ids that are not `dl_`.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use directline_proxy::RunningProxy;
use directline_proxy::config::Config;
pub use directline_proxy::emulator::{Emulator, EmulatorConfig};
use futures_util::StreamExt;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod endpoint;
pub mod process;

pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` until it holds, failing the test with `what` after [`WAIT`].
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one series (`name{labels}`) of the proxy at `base`'s
/// `/metrics`; 0 for a series not counted yet.
pub async fn metric(http: &Http, base: &str, series: &str) -> f64 {
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

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A file in the temp dir holding `contents`, named after the test that
/// needs it (secrets are passed by file: setting environment variables
/// races with other tests reading the environment).
pub fn scratch_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("dlproxy-test-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write scratch file");
    path
}

/// `url` without query parameter `name`, and its value.
pub fn without_query_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let prefix = format!("{name}=");
    let value = query
        .split('&')
        .find_map(|p| p.strip_prefix(&prefix))
        .map(str::to_string);
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.starts_with(&prefix))
        .collect();
    (format!("{base}?{}", kept.join("&")), value)
}

/// `http://127.0.0.1:PORT` where nothing listens: connections are refused.
pub async fn dead_address() -> String {
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = unused.local_addr().expect("addr");
    drop(unused);
    format!("http://{addr}")
}

/// A proxy config for tests: port 0, the given upstream, short timeouts.
pub fn proxy_config(upstream: &str) -> Config {
    let mut config = Config::default();
    config.listen.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen.drain_timeout = Duration::from_secs(5);
    config.upstream.url = upstream.parse().expect("the upstream's URL");
    config.upstream.connect_timeout = Duration::from_secs(2);
    config.upstream.request_timeout = Duration::from_secs(10);
    config.websocket.close_timeout = Duration::from_secs(2);
    config
}

/// Emulator without keep-alives, so frame sequences are exact; rough when
/// the test binary asks for it.
pub fn quiet_emulator() -> EmulatorConfig {
    EmulatorConfig {
        keepalive_interval: None,
        rough: crate::ROUGH_EMULATOR,
        ..Default::default()
    }
}

/// The id the test user posts as: Direct Line's `dl_` convention, or, with
/// the rough emulator, the kind of id a site picks for itself.
pub const TEST_USER: &str = if crate::ROUGH_EMULATOR {
    "user@contoso"
} else {
    "dl_test-user"
};

/// What a browser offers on a WebSocket handshake.
const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

pub struct Stack {
    pub emulator: Emulator,
    pub proxy: RunningProxy,
    pub http: Http,
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(quiet_emulator(), |_| {}).await
    }

    pub async fn start_with(emulator: EmulatorConfig, adjust: impl FnOnce(&mut Config)) -> Stack {
        let emulator = Emulator::start(emulator).await.expect("emulator starts");
        let mut config = proxy_config(&emulator.base_url());
        adjust(&mut config);
        let proxy = directline_proxy::start(config).await.expect("proxy starts");
        Stack {
            emulator,
            proxy,
            http: Http::plain(),
        }
    }

    pub fn proxy_url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy.base_url())
    }

    pub fn direct_url(&self, path: &str) -> String {
        format!("{}{path}", self.emulator.base_url())
    }

    pub fn secret(&self) -> String {
        self.emulator.secret().to_string()
    }

    /// `path` on the proxy, posted with `token` and no body, as clients
    /// start, refresh and reconnect.
    pub async fn post_with_token(&self, path: &str, token: &str) -> Reply {
        self.http
            .post_json(&self.proxy_url(path), token, &Value::Null)
            .await
    }

    pub async fn start_conversation(&self) -> Conversation {
        Conversation::start(&self.http, &self.proxy.base_url(), self.emulator.secret()).await
    }

    /// A conversation started through the proxy without credentials (the
    /// proxy holds the secret), with `headers` on the start request.
    pub async fn start_conversation_as(&self, headers: &[(&str, &str)]) -> Conversation {
        let reply = self
            .http
            .send(
                Method::POST,
                &self.proxy_url("/v3/directline/conversations"),
                headers,
                Bytes::new(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        Conversation::from_reply(&self.proxy.base_url(), &reply.json())
    }

    pub async fn shutdown(self) {
        self.proxy.shutdown().await;
        self.emulator.shutdown().await;
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The whole response, its body decoded as the client asked.
    async fn read(response: http::Response<hyper::body::Incoming>) -> Reply {
        let (parts, body) = response.into_parts();
        let body = decoded(
            &parts.headers,
            body.collect().await.expect("body").to_bytes(),
        );
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Http {
    pub fn plain() -> Http {
        Http::with_tls(directline_proxy::tls::client_config(None).expect("tls config"))
    }

    /// Trusts the development CA in `certs/`.
    pub fn trusting_dev_ca() -> Http {
        let ca = repo_path("certs/ca.pem");
        Http::with_tls(directline_proxy::tls::client_config(Some(&ca)).expect("tls config"))
    }

    fn with_tls(tls: rustls::ClientConfig) -> Http {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Http {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let request = client_request(Request::builder().method(method).uri(url), headers, body);
        let response = tokio::time::timeout(WAIT, self.client.request(request))
            .await
            .expect("response in time")
            .expect("response");
        Reply::read(response).await
    }

    /// No credentials, headers or body: a page, or a start or mint that the
    /// proxy's own token source answers.
    pub async fn bare(&self, method: Method, url: &str) -> Reply {
        self.send(method, url, &[], Bytes::new()).await
    }

    pub async fn get(&self, url: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.send(Method::GET, url, &[("authorization", &auth)], Bytes::new())
            .await
    }

    pub async fn post_json(&self, url: &str, token: &str, body: &Value) -> Reply {
        let auth = format!("Bearer {token}");
        self.send(
            Method::POST,
            url,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await
    }
}

/// A request with `headers` and `body`; against the rough emulator it
/// accepts gzip, as browsers do, unless `headers` choose an encoding.
fn client_request(
    mut request: http::request::Builder,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let chooses_encoding = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("accept-encoding"));
    if crate::ROUGH_EMULATOR && !chooses_encoding {
        request = request.header("accept-encoding", "gzip");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::new(body.into())).expect("request")
}

/// The body as the client reads it: a gzip `Content-Encoding` undone (the
/// header stays in [`Reply::headers`] for tests to compare).
fn decoded(headers: &HeaderMap, body: Bytes) -> Bytes {
    if headers.get("content-encoding").is_none_or(|v| v != "gzip") {
        return body;
    }
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut plain)
        .expect("a gzip body");
    Bytes::from(plain)
}

/// An HTTP/2 client on one connection: prior knowledge over TCP, or TLS
/// with ALPN h2 (trusting the development CA).
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    base: String,
}

impl H2 {
    pub async fn plain(addr: SocketAddr) -> H2 {
        let tcp = TcpStream::connect(addr).await.expect("tcp");
        H2::handshake(tcp, format!("http://{addr}")).await
    }

    /// Over TLS to `localhost:<port of addr>`; fails unless ALPN picks h2.
    pub async fn tls(addr: SocketAddr) -> H2 {
        let ca = repo_path("certs/ca.pem");
        let mut tls = directline_proxy::tls::client_config(Some(&ca)).expect("tls config");
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(addr).await.expect("tcp");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        H2::handshake(stream, format!("https://localhost:{}", addr.port())).await
    }

    async fn handshake<S>(io: S, base: String) -> H2
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .expect("h2 handshake");
        tokio::spawn(connection);
        H2 { sender, base }
    }

    /// `http://addr` or `https://localhost:port`, as the requests name it.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .version(http::Version::HTTP_2);
        let request = client_request(request, headers, body);
        let response = tokio::time::timeout(WAIT, self.sender.send_request(request))
            .await
            .expect("response in time")
            .expect("response");
        assert_eq!(response.version(), http::Version::HTTP_2);
        Reply::read(response).await
    }
}

/// A conversation as a client sees it after `POST /conversations`.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub base: String,
    pub id: String,
    pub token: String,
    pub stream_url: String,
}

impl Conversation {
    pub async fn start(http: &Http, base: &str, secret: &str) -> Conversation {
        let reply = http
            .post_json(
                &format!("{base}/v3/directline/conversations"),
                secret,
                &Value::Null,
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        Conversation::from_reply(base, &reply.json())
    }

    /// From a start-conversation answer, for a client talking to `base`.
    pub fn from_reply(base: &str, json: &Value) -> Conversation {
        Conversation {
            base: base.to_string(),
            id: json["conversationId"]
                .as_str()
                .expect("conversationId")
                .into(),
            token: json["token"].as_str().expect("token").into(),
            stream_url: json["streamUrl"].as_str().expect("streamUrl").into(),
        }
    }

    pub fn url(&self, suffix: &str) -> String {
        format!(
            "{}/v3/directline/conversations/{}{suffix}",
            self.base, self.id
        )
    }

    pub async fn say(&self, http: &Http, text: &str) -> Reply {
        let activity = serde_json::json!({
            "type": "message",
            "from": { "id": TEST_USER },
            "text": text,
        });
        http.post_json(&self.url("/activities"), &self.token, &activity)
            .await
    }

    pub async fn poll(&self, http: &Http, watermark: Option<&str>) -> Reply {
        let query = watermark
            .map(|w| format!("?watermark={w}"))
            .unwrap_or_default();
        http.get(&self.url(&format!("/activities{query}")), &self.token)
            .await
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The handshake request for `url`, offering compression in rough mode.
fn ws_request(url: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().expect("ws request");
    if crate::ROUGH_EMULATOR {
        request.headers_mut().insert(
            "sec-websocket-extensions",
            DEFLATE_OFFER.parse().expect("header value"),
        );
    }
    request
}

pub async fn ws_connect(url: &str) -> Ws {
    let request = ws_request(url);
    let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("ws connects in time")
        .expect("ws connects");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// Connects with one extra header on the upgrade, as an ingress or the
/// browser (cookies) would add.
pub async fn ws_connect_with_header(url: &str, name: &'static str, value: &str) -> Ws {
    let mut request = ws_request(url);
    request
        .headers_mut()
        .insert(name, value.parse().expect("header value"));
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("ws connects in time")
        .expect("ws connects");
    ws
}

/// The next message of any kind, failing the test after [`WAIT`].
pub async fn next_message<S>(ws: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a message in time")
        .expect("stream still open")
        .expect("message reads")
}

/// The next ActivitySet, skipping empty keep-alive messages.
pub async fn next_activity_set<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match next_message(ws).await {
            Message::Text(text) if text.is_empty() => continue,
            Message::Text(text) => return serde_json::from_str(&text).expect("ActivitySet JSON"),
            other => panic!("expected an ActivitySet, got {other:?}"),
        }
    }
}

/// Reads ActivitySets until one holds a message whose text contains `needle`;
/// returns every activity seen on the way, in order.
pub async fn activities_until<S>(ws: &mut S, needle: &str) -> Vec<Value>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut seen = Vec::new();
    loop {
        let set = next_activity_set(ws).await;
        let activities = set["activities"].as_array().cloned().unwrap_or_default();
        let found = activities
            .iter()
            .any(|a| a["text"].as_str().is_some_and(|t| t.contains(needle)));
        seen.extend(activities);
        if found {
            return seen;
        }
    }
}
