//! The load generator (`relay load WORKLOAD BASE key=value...`), one process
//! per run. It sets up (conversations, streams, connections), prints
//! `ready`, waits for `go` on stdin, runs the workload and prints
//! `result {json}`; for `idle` it holds its conversations open until stdin
//! says anything or closes. The harness reads the hop's CPU time between
//! `go` and the result, and its memory while `idle` is ready.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::BoxError;
use crate::upstream::{FIREHOSE_FRAME_BYTES, SIGNED_IN, USER_ID};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;
type Http = Client<HttpConnector, Full<Bytes>>;

/// The page the SSO proxy allows, sent as `Origin` like a browser would.
pub const PAGE_ORIGIN: &str = "https://chat.bench.test";

/// Everything a run needs, from `key=value` arguments.
struct Args {
    base: String,
    values: HashMap<String, String>,
}

impl Args {
    fn number(&self, key: &str, default: usize) -> usize {
        self.values
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
}

pub async fn run(mut argv: impl Iterator<Item = String>) -> Result<(), BoxError> {
    let workload = argv.next().ok_or("load: which workload?")?;
    let base = argv.next().ok_or("load: which base URL?")?;
    let values = argv
        .filter_map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let args = Args { base, values };
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let limit = Duration::from_secs(args.number("timeout_secs", 600) as u64);
    let result = tokio::time::timeout(limit, async {
        match workload.as_str() {
            "rtt" => rtt(&args, &mut stdin).await,
            "latency" => latency(&args, &mut stdin).await,
            "firehose" => firehose(&args, &mut stdin).await,
            "poll" => poll(&args, &mut stdin).await,
            "idle" => idle(&args, &mut stdin).await,
            "sso" => sso(&args, &mut stdin).await,
            other => Err(format!("load: unknown workload {other}").into()),
        }
    })
    .await
    .map_err(|_| format!("load: {workload} took over {limit:?}"))??;
    println!("result {result}");
    Ok(())
}

type Stdin = tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>;

/// Says `ready` and waits for the harness's `go`.
async fn ready(stdin: &mut Stdin) -> Result<Instant, BoxError> {
    println!("ready");
    match stdin.next_line().await? {
        Some(line) if line == "go" => Ok(Instant::now()),
        _ => Err("load: the harness went away".into()),
    }
}

fn http_client() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn send(
    http: &Http,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(StatusCode, Bytes), BoxError> {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if !body.is_empty() {
        request = request.header("content-type", "application/json");
    }
    let response = http.request(request.body(Full::new(body))?).await?;
    let status = response.status();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

struct Conversation {
    id: String,
    token: String,
    /// The `streamUrl` at the target (a hop that does not rewrite it, like
    /// nginx, hands out the upstream's), with its query.
    stream_url: String,
}

async fn start(
    http: &Http,
    base: &str,
    headers: &[(&str, &str)],
) -> Result<Conversation, BoxError> {
    let mut all = vec![("authorization", "Bearer bench-secret")];
    all.extend_from_slice(headers);
    let url = format!("{base}/v3/directline/conversations");
    let (status, body) = send(http, Method::POST, &url, &all, Bytes::new()).await?;
    if !status.is_success() {
        return Err(format!("start: {status} {}", String::from_utf8_lossy(&body)).into());
    }
    let body: Value = serde_json::from_slice(&body)?;
    let field = |name: &str| -> Result<String, BoxError> {
        Ok(body[name]
            .as_str()
            .ok_or_else(|| format!("start: no {name} in {body}"))?
            .to_string())
    };
    let stream_url = field("streamUrl")?;
    let path = stream_url
        .splitn(4, '/')
        .nth(3)
        .ok_or("streamUrl without a path")?;
    Ok(Conversation {
        id: field("conversationId")?,
        token: field("token")?,
        stream_url: format!("{}/{path}", base.replacen("http://", "ws://", 1)),
    })
}

async fn connect(
    conversation: &Conversation,
    mode: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, BoxError> {
    let mut request = format!("{}&mode={mode}", conversation.stream_url).into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes())?,
            value.parse()?,
        );
    }
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
    Ok(ws)
}

/// `count` conversations with open streams in `mode`, `parallel` at a time.
async fn open_streams(
    base: &str,
    count: usize,
    mode: &str,
    parallel: usize,
) -> Result<Vec<(Conversation, Ws)>, BoxError> {
    let http = http_client();
    let opened: Vec<Result<(Conversation, Ws), BoxError>> = stream::iter(0..count)
        .map(|_| {
            let http = &http;
            async move {
                let conversation = start(http, base, &[]).await?;
                let ws = connect(&conversation, mode, &[]).await?;
                Ok((conversation, ws))
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    opened.into_iter().collect()
}

fn payload() -> String {
    "x".repeat(FIREHOSE_FRAME_BYTES)
}

/// One round trip: a text frame out, its echo back.
async fn round_trip(ws: &mut Ws, text: &str) -> Result<(), BoxError> {
    ws.send(Message::Text(text.into())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(_))) => return Ok(()),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error.into()),
            None => return Err("the stream closed".into()),
        }
    }
}

async fn rtt(args: &Args, stdin: &mut Stdin) -> Result<Value, BoxError> {
    let streams = args.number("streams", 50);
    let messages = args.number("messages", 2000);
    let mut opened = open_streams(&args.base, streams, "echo", 16).await?;
    let text = payload();
    for (_, ws) in &mut opened {
        round_trip(ws, &text).await?;
    }
    let started = ready(stdin).await?;
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|(_, mut ws)| {
            let text = text.clone();
            tokio::spawn(async move {
                for _ in 0..messages {
                    round_trip(&mut ws, &text).await?;
                }
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(json!({"count": streams * messages, "secs": secs}))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

async fn latency(args: &Args, stdin: &mut Stdin) -> Result<Value, BoxError> {
    let messages = args.number("messages", 5000);
    let mut opened = open_streams(&args.base, 1, "echo", 1).await?;
    let (_, ws) = opened.pop().ok_or("no stream")?;
    let mut ws = ws;
    let text = payload();
    for _ in 0..200 {
        round_trip(&mut ws, &text).await?;
    }
    let started = ready(stdin).await?;
    let mut times = Vec::with_capacity(messages);
    for _ in 0..messages {
        let sent = Instant::now();
        round_trip(&mut ws, &text).await?;
        times.push(sent.elapsed().as_nanos() as u64);
    }
    let secs = started.elapsed().as_secs_f64();
    times.sort_unstable();
    Ok(json!({
        "count": messages, "secs": secs,
        "p50_us": percentile(&times, 0.50) as f64 / 1000.0,
        "p99_us": percentile(&times, 0.99) as f64 / 1000.0,
    }))
}

async fn firehose(args: &Args, stdin: &mut Stdin) -> Result<Value, BoxError> {
    let streams = args.number("streams", 20);
    let frames = args.number("frames", 50_000);
    let mode = format!("firehose&n={frames}");
    let opened = open_streams(&args.base, streams, &mode, 16).await?;
    let started = ready(stdin).await?;
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|(_, mut ws)| {
            tokio::spawn(async move {
                ws.send(Message::Text("go".into())).await?;
                let mut received = 0;
                while received < frames {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) => {
                            if text.len() != FIREHOSE_FRAME_BYTES {
                                return Err(format!("a frame of {} bytes", text.len()).into());
                            }
                            received += 1;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(error)) => return Err(BoxError::from(error)),
                        None => return Err(format!("closed after {received} frames").into()),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(json!({"count": streams * frames, "secs": secs}))
}

async fn poll(args: &Args, stdin: &mut Stdin) -> Result<Value, BoxError> {
    let connections = args.number("connections", 50);
    let requests = args.number("requests", 2000);
    let conversation = start(&http_client(), &args.base, &[]).await?;
    let authority = args.base.trim_start_matches("http://").to_string();
    let uri = format!(
        "/v3/directline/conversations/{}/activities?watermark=1",
        conversation.id
    );
    let authorization = format!("Bearer {}", conversation.token);
    let mut senders = Vec::new();
    for _ in 0..connections {
        let tcp = tokio::net::TcpStream::connect(&authority).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        senders.push(sender);
    }
    for sender in &mut senders {
        get(sender, &uri, &authority, &authorization).await?;
    }
    let started = ready(stdin).await?;
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let (uri, authority, authorization) =
                (uri.clone(), authority.clone(), authorization.clone());
            tokio::spawn(async move {
                for _ in 0..requests {
                    get(&mut sender, &uri, &authority, &authorization).await?;
                }
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(json!({"count": connections * requests, "secs": secs}))
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    uri: &str,
    host: &str,
    authorization: &str,
) -> Result<(), BoxError> {
    sender.ready().await?;
    let request = Request::get(uri)
        .header("host", host)
        .header("authorization", authorization)
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    if response.status() != StatusCode::OK {
        return Err(format!("poll: {}", response.status()).into());
    }
    response.into_body().collect().await?;
    Ok(())
}

async fn idle(args: &Args, stdin: &mut Stdin) -> Result<Value, BoxError> {
    let count = args.number("conversations", 9900);
    let started = Instant::now();
    let opened = open_streams(&args.base, count, "idle", 32).await?;
    let secs = started.elapsed().as_secs_f64();
    // The start requests' keep-alive connections are gone with the client;
    // only the streams stay open.
    println!("ready");
    let _ = stdin.next_line().await;
    drop(opened);
    Ok(json!({"count": count, "secs": secs}))
}

async fn sso(args: &Args, stdin: &mut Stdin) -> Result<Value, BoxError> {
    let conversations = args.number("conversations", 50);
    let signins = args.number("signins", 40);
    let upstream = args
        .values
        .get("upstream")
        .ok_or("sso: upstream=URL needed")?
        .clone();
    let http = Arc::new(http_client());
    let mut opened = Vec::new();
    for n in 0..conversations {
        let cookie = format!("session=bench-{n}");
        let headers = [("cookie", cookie.as_str()), ("origin", PAGE_ORIGIN)];
        let conversation = start(&http, &args.base, &headers).await?;
        if !conversation.stream_url.contains("dlpx=") {
            return Err("sso: the proxy sealed no context into streamUrl (is SSO on?)".into());
        }
        let ws = connect(&conversation, "sso", &headers).await?;
        opened.push((conversation, ws, cookie));
    }
    // One sign-in each first: connections warm, the flow checked.
    for (conversation, ws, cookie) in &mut opened {
        sign_in(&http, &args.base, conversation, ws, cookie).await?;
    }
    let stats_url = format!("{upstream}/bench/sso");
    send(&http, Method::GET, &stats_url, &[], Bytes::new()).await?;
    // One at a time first: what a decision costs without queueing.
    let unloaded = args.number("unloaded", 200);
    let (conversation, ws, cookie) = opened.first_mut().ok_or("sso: no conversation")?;
    let mut alone = Vec::with_capacity(unloaded);
    for _ in 0..unloaded {
        let took = sign_in(&http, &args.base, conversation, ws, cookie).await?;
        alone.push(took.as_nanos() as u64);
    }
    alone.sort_unstable();
    let alone_decision = decisions(&http, &stats_url, unloaded).await?.0;
    // Every conversation at once, at an offered rate below saturation: the
    // decision's own time, not the queue that a closed loop at full speed
    // builds in front of every process on the machine.
    let paced_rate = args.number("paced_rate", 1000).max(1);
    let opened = paced(&http, &args.base, opened, signins, paced_rate).await?;
    let paced_decision = decisions(&http, &stats_url, conversations * signins)
        .await?
        .0;
    let started = ready(stdin).await?;
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|(conversation, mut ws, cookie)| {
            let http = http.clone();
            let base = args.base.clone();
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(signins);
                for _ in 0..signins {
                    let took = sign_in(&http, &base, &conversation, &mut ws, &cookie).await?;
                    times.push(took.as_nanos() as u64);
                }
                Ok::<_, BoxError>(times)
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    times.sort_unstable();
    let (decision, provider) = decisions(&http, &stats_url, conversations * signins).await?;
    Ok(json!({
        "count": conversations * signins, "secs": secs,
        "p50_us": percentile(&times, 0.50) as f64 / 1000.0,
        "p99_us": percentile(&times, 0.99) as f64 / 1000.0,
        "decision_p50_us": percentile(&decision, 0.50),
        "decision_p99_us": percentile(&decision, 0.99),
        "provider_p99_us": percentile(&provider, 0.99),
        "alone_p99_us": percentile(&alone, 0.99) as f64 / 1000.0,
        "alone_decision_p50_us": percentile(&alone_decision, 0.50),
        "alone_decision_p99_us": percentile(&alone_decision, 0.99),
        "paced_rate": paced_rate,
        "paced_decision_p50_us": percentile(&paced_decision, 0.50),
        "paced_decision_p99_us": percentile(&paced_decision, 0.99),
    }))
}

type Opened = (Conversation, Ws, String);

/// Each conversation signs in `signins` times on a fixed schedule, all of
/// them together offering `rate` sign-ins per second, their schedules
/// spread evenly; a sign-in that runs late does not push the next one.
async fn paced(
    http: &Arc<Http>,
    base: &str,
    opened: Vec<Opened>,
    signins: usize,
    rate: usize,
) -> Result<Vec<Opened>, BoxError> {
    let count = opened.len().max(1);
    let interval = Duration::from_secs_f64(count as f64 / rate as f64);
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(n, (conversation, mut ws, cookie))| {
            let http = http.clone();
            let base = base.to_string();
            let offset = interval.mul_f64(n as f64 / count as f64);
            tokio::spawn(async move {
                for k in 0..signins {
                    tokio::time::sleep_until(start + offset + interval.mul_f64(k as f64)).await;
                    sign_in(&http, &base, &conversation, &mut ws, &cookie).await?;
                }
                Ok::<_, BoxError>((conversation, ws, cookie))
            })
        })
        .collect();
    let mut back = Vec::with_capacity(count);
    for task in tasks {
        back.push(task.await??);
    }
    Ok(back)
}

/// The decision times (card out to invoke in, minus the provider) and the
/// provider's handling times the upstream measured since the last call,
/// sorted; `expected` decisions, or an error.
async fn decisions(
    http: &Http,
    stats_url: &str,
    expected: usize,
) -> Result<(Vec<u64>, Vec<u64>), BoxError> {
    let (_, stats) = send(http, Method::GET, stats_url, &[], Bytes::new()).await?;
    let stats: Value = serde_json::from_slice(&stats)?;
    let sorted = |name: &str| {
        let mut values: Vec<u64> = stats[name]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        values.sort_unstable();
        values
    };
    let decision = sorted("decision_us");
    if decision.len() != expected {
        return Err(format!(
            "sso: {} decisions measured at the upstream, {expected} sign-ins made",
            decision.len()
        )
        .into());
    }
    Ok((decision, sorted("provider_us")))
}

/// Asks the bot for a card and waits until the proxy has signed the user
/// in: the card never arrives, the bot's `signed in` does.
async fn sign_in(
    http: &Http,
    base: &str,
    conversation: &Conversation,
    ws: &mut Ws,
    cookie: &str,
) -> Result<Duration, BoxError> {
    let url = format!(
        "{base}/v3/directline/conversations/{}/activities",
        conversation.id
    );
    let authorization = format!("Bearer {}", conversation.token);
    let body = json!({"type": "message", "from": {"id": USER_ID}, "text": "signin"});
    let started = Instant::now();
    let headers = [
        ("authorization", authorization.as_str()),
        ("origin", PAGE_ORIGIN),
        ("cookie", cookie),
    ];
    let (status, _) = send(http, Method::POST, &url, &headers, body.to_string().into()).await?;
    if !status.is_success() {
        return Err(format!("sso: posting signin: {status}").into());
    }
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if text.contains("application/vnd.microsoft.card.oauth") {
                    return Err("sso: the card reached the client (not decided)".into());
                }
                if text.contains(SIGNED_IN) {
                    return Ok(started.elapsed());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
            None => return Err("sso: the stream closed".into()),
        }
    }
}
