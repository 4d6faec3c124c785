//! Relay benchmark: the proxy's memory per idle conversation, and its
//! bot-to-client throughput and latency, next to nginx proxying the same
//! WebSocket traffic when nginx is installed.
//!
//! `cargo bench --bench relay` (release build). Settings by environment:
//! `BENCH_CONVERSATIONS` (default 4000; each costs the proxy two file
//! descriptors), `BENCH_MESSAGES` (default 20000, 1 KiB each),
//! `BENCH_STREAMS` (conversations carrying them, default 50), `NGINX`
//! (path of the nginx binary; default `nginx` on PATH; `none` skips it).
//! The emulator runs in this process; the proxy and nginx run as child
//! processes so their resident memory can be read from /proc.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use directline_proxy::emulator::{Emulator, EmulatorConfig};
use futures_util::{StreamExt, stream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Settings {
    conversations: usize,
    messages: usize,
    streams: usize,
    nginx: Option<String>,
}

impl Settings {
    fn from_env() -> Settings {
        let number = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let nginx = match std::env::var("NGINX") {
            Ok(value) if value == "none" => None,
            Ok(path) => Some(path),
            Err(_) => which("nginx"),
        };
        Settings {
            conversations: number("BENCH_CONVERSATIONS", 4000),
            messages: number("BENCH_MESSAGES", 20_000),
            streams: number("BENCH_STREAMS", 50).max(1),
            nginx,
        }
    }
}

fn which(program: &str) -> Option<String> {
    let paths = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&format!("{paths}:/usr/sbin:/usr/local/sbin"))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .map(|p| p.display().to_string())
}

/// A child process killed when dropped.
struct Server {
    name: &'static str,
    base: String,
    child: Child,
}

impl Drop for Server {
    /// SIGTERM first, so nginx's master takes its workers down with it.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Resident memory of the process and its children (nginx workers), KiB.
    fn rss_kib(&self) -> u64 {
        let pid = self.child.id();
        let mut pids = vec![pid];
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        pids.iter().map(|p| vm_rss(*p)).sum()
    }
}

fn vm_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_proxy(dir: &Path, upstream: &str) -> Result<Server, BoxError> {
    let port = free_port()?;
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\n[upstream]\nurl = \"{upstream}\"\n[reload]\nwatch_interval_ms = 0\n"
        ),
    )?;
    let child = Command::new(env!("CARGO_BIN_EXE_directline-proxy"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    Ok(Server {
        name: "directline-proxy",
        base: format!("http://127.0.0.1:{port}"),
        child,
    })
}

fn start_nginx(nginx: &str, dir: &Path, upstream: &str) -> Result<Server, BoxError> {
    let port = free_port()?;
    let upstream = upstream.trim_start_matches("http://");
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr warn;
worker_rlimit_nofile 30000;
events {{ worker_connections 30000; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 3600s;
            proxy_buffering off;
        }}
    }}
}}
"#,
            dir = dir.display()
        ),
    )?;
    let child = Command::new(nginx)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .spawn()?;
    Ok(Server {
        name: "nginx",
        base: format!("http://127.0.0.1:{port}"),
        child,
    })
}

async fn wait_listening(base: &str) -> Result<(), BoxError> {
    let addr = base.trim_start_matches("http://").to_string();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{base} never listened").into())
}

/// Starts a conversation through `base` and opens its stream through `base`
/// too (nginx does not rewrite `streamUrl`, so its host is replaced).
async fn open_conversation(
    http: &reqwest_like::Client,
    base: &str,
    secret: &str,
) -> Result<(String, WsStream), BoxError> {
    let body = http.start_conversation(base, secret).await?;
    let id = body["conversationId"]
        .as_str()
        .ok_or("no conversationId")?
        .to_string();
    let stream_url = body["streamUrl"].as_str().ok_or("no streamUrl")?;
    let path = stream_url
        .splitn(4, '/')
        .nth(3)
        .ok_or("streamUrl without a path")?;
    let url = format!("{}/{path}", base.replacen("http://", "ws://", 1));
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
    Ok((id, ws))
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A tiny HTTP/1.1 client over hyper, enough to start conversations.
mod reqwest_like {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client as Hyper;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    use super::BoxError;

    pub struct Client(Hyper<HttpConnector, Full<Bytes>>);

    impl Client {
        pub fn new() -> Client {
            Client(Hyper::builder(TokioExecutor::new()).build_http())
        }

        pub async fn start_conversation(
            &self,
            base: &str,
            secret: &str,
        ) -> Result<serde_json::Value, BoxError> {
            let request = http::Request::post(format!("{base}/v3/directline/conversations"))
                .header("authorization", format!("Bearer {secret}"))
                .body(Full::new(Bytes::new()))?;
            let response = self.0.request(request).await?;
            let body = response.into_body().collect().await?.to_bytes();
            Ok(serde_json::from_slice(&body)?)
        }
    }
}

struct Measurement {
    rss_idle_kib: u64,
    rss_open_kib: u64,
    conversations: usize,
    messages_per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn measure(
    server: &Server,
    emulator: &Arc<Emulator>,
    settings: &Settings,
) -> Result<Measurement, BoxError> {
    wait_listening(&server.base).await?;
    let http = Arc::new(reqwest_like::Client::new());
    // Warm up allocator pools and the upstream connection pool.
    for _ in 0..20 {
        let (_, mut ws) = open_conversation(&http, &server.base, emulator.secret()).await?;
        let _ = ws.close(None).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle_kib = server.rss_kib();

    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let opened: Vec<Result<(String, WsStream), BoxError>> = stream::iter(0..settings.conversations)
        .map(|_| {
            let http = http.clone();
            let base = server.base.clone();
            let secret = emulator.secret().to_string();
            async move { open_conversation(&http, &base, &secret).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut ids = Vec::new();
    for (index, result) in opened.into_iter().enumerate() {
        let (id, mut ws) = result?;
        ids.push(id);
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Text(text) = message
                    && text.starts_with("bench ")
                {
                    let _ = tx.send((index, Instant::now()));
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_open_kib = server.rss_kib();

    let started = Instant::now();
    let per_stream = settings.messages / settings.streams;
    let payload = "x".repeat(1000);
    let mut senders = Vec::new();
    for id in ids.iter().take(settings.streams) {
        let id = id.clone();
        let emulator = emulator.clone();
        let payload = payload.clone();
        senders.push(tokio::spawn(async move {
            let mut sent = Vec::with_capacity(per_stream);
            for n in 0..per_stream {
                sent.push(Instant::now());
                let text = format!("bench {n} {payload}");
                emulator
                    .send_stream_message(&id, Message::Text(text.into()))
                    .await;
            }
            sent
        }));
    }
    let total = per_stream * settings.streams.min(ids.len());
    let mut received = Vec::with_capacity(total);
    while received.len() < total {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(arrival)) => received.push(arrival),
            _ => return Err(format!("only {} of {total} messages arrived", received.len()).into()),
        }
    }
    let elapsed = started.elapsed();
    let mut sent_times = Vec::new();
    for sender in senders {
        sent_times.push(sender.await?);
    }
    let mut next = vec![0usize; settings.conversations];
    let mut latencies: Vec<Duration> = received
        .iter()
        .filter_map(|(stream, at)| {
            let n = next[*stream];
            next[*stream] += 1;
            sent_times
                .get(*stream)?
                .get(n)
                .map(|sent| at.duration_since(*sent))
        })
        .collect();
    latencies.sort();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64) * p) as usize)
            .copied()
            .unwrap_or_default()
    };
    Ok(Measurement {
        rss_idle_kib,
        rss_open_kib,
        conversations: settings.conversations,
        messages_per_second: total as f64 / elapsed.as_secs_f64(),
        p50: percentile(0.50),
        p99: percentile(0.99),
    })
}

fn report(name: &str, m: &Measurement) {
    let per_conversation =
        (m.rss_open_kib.saturating_sub(m.rss_idle_kib)) as f64 / m.conversations as f64;
    println!(
        "{name:<17} {:>6} conv  RSS {:>7} -> {:>7} KiB  {:>6.1} KiB/conv  {:>9.0} msg/s  p50 {:>8.3} ms  p99 {:>8.3} ms",
        m.conversations,
        m.rss_idle_kib,
        m.rss_open_kib,
        per_conversation,
        m.messages_per_second,
        m.p50.as_secs_f64() * 1000.0,
        m.p99.as_secs_f64() * 1000.0,
    );
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return Ok(()); // `cargo test --benches` only builds it
    }
    let settings = Settings::from_env();
    let dir = tempfile::tempdir()?;
    let mut targets: Vec<Server> = Vec::new();
    let emulator = Arc::new(Emulator::start(EmulatorConfig::default()).await?);
    targets.push(start_proxy(dir.path(), &emulator.base_url())?);
    if let Some(nginx) = &settings.nginx {
        match start_nginx(nginx, dir.path(), &emulator.base_url()) {
            Ok(server) => targets.push(server),
            Err(error) => eprintln!("nginx skipped: {error}"),
        }
    }
    println!(
        "relay benchmark: {} idle conversations each, {} messages of 1 KiB over {} streams",
        settings.conversations, settings.messages, settings.streams
    );
    for server in &targets {
        match measure(server, &emulator, &settings).await {
            Ok(measurement) => report(server.name, &measurement),
            Err(error) => println!("{:<17} failed: {error}", server.name),
        }
    }
    Ok(())
}
