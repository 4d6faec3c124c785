//! The SSO provider (`[sso.http] url`): answers 200 `{"token":...}` to the
//! proxy while up, and can be taken down in three ways: 503, refused
//! connections (listener closed, open connections dropped), or a hang past
//! the proxy's `sso.timeout_ms`. It remembers which conversations got a
//! token, and when its state changed, so the clients know what to expect.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::stats::Stats;

/// The token the emulator's bot accepts.
pub const USER_TOKEN: &str = "demo-user-token";
/// How long a hanging provider waits before answering (the proxy gives up
/// after `sso.timeout_ms` = 3 s).
const HANG: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Up,
    Fail503,
    Refuse,
    Hang,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Up => "up",
            Mode::Fail503 => "503",
            Mode::Refuse => "refused",
            Mode::Hang => "hang",
        }
    }
}

struct Inner {
    addr: SocketAddr,
    stats: Arc<Stats>,
    mode: Mutex<Mode>,
    /// Every change: when it took effect (outages are stamped before they
    /// start, recoveries after they are complete) and the new mode.
    timeline: Mutex<Vec<(Instant, Mode)>>,
    /// Conversations a token was given for.
    granted: Mutex<HashSet<String>>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

impl Provider {
    pub async fn start(stats: Arc<Stats>) -> Result<Provider, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("provider bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("{e}"))?;
        let inner = Arc::new(Inner {
            addr,
            stats,
            mode: Mutex::new(Mode::Up),
            timeline: Mutex::new(vec![(Instant::now(), Mode::Up)]),
            granted: Mutex::new(HashSet::new()),
            acceptor: Mutex::new(None),
        });
        let acceptor = tokio::spawn(accept(listener, inner.clone()));
        *lock(&inner.acceptor) = Some(acceptor);
        Ok(Provider { inner })
    }

    pub fn url(&self) -> String {
        format!("http://{}/bot-token", self.inner.addr)
    }

    pub fn mode(&self) -> Mode {
        *lock(&self.inner.mode)
    }

    /// Switches to `mode`: refusing closes the listener and every open
    /// connection; leaving it binds the same port again.
    pub async fn set_mode(&self, mode: Mode) -> Result<(), String> {
        let was = self.mode();
        if mode != Mode::Up {
            lock(&self.inner.timeline).push((Instant::now(), mode));
        }
        *lock(&self.inner.mode) = mode;
        if mode == Mode::Refuse {
            if let Some(acceptor) = lock(&self.inner.acceptor).take() {
                acceptor.abort();
            }
        } else if was == Mode::Refuse {
            let listener = bind_again(self.inner.addr).await?;
            let acceptor = tokio::spawn(accept(listener, self.inner.clone()));
            *lock(&self.inner.acceptor) = Some(acceptor);
        }
        if mode == Mode::Up {
            lock(&self.inner.timeline).push((Instant::now(), mode));
        }
        Ok(())
    }

    pub fn granted(&self, conversation_id: &str) -> bool {
        lock(&self.inner.granted).contains(conversation_id)
    }

    /// The mode throughout `from..=to`, if it did not change in between.
    pub fn steady_mode(&self, from: Instant, to: Instant) -> Option<Mode> {
        let timeline = lock(&self.inner.timeline);
        let mut at_start = Mode::Up;
        for &(when, mode) in timeline.iter() {
            if when <= from {
                at_start = mode;
            } else if when <= to {
                return None;
            }
        }
        Some(at_start)
    }
}

async fn bind_again(addr: SocketAddr) -> Result<TcpListener, String> {
    let mut last = String::new();
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("provider cannot bind {addr} again: {last}"))
}

/// Serves until aborted; aborting drops the listener and, with the join
/// set, every connection.
async fn accept(listener: TcpListener, inner: Arc<Inner>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        let inner = inner.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(answer(&inner, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn answer(inner: &Inner, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let stats = &inner.stats;
    stats.inc(&stats.counters.provider_requests);
    let cookie = request
        .headers()
        .get(http::header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match Limited::new(request.into_body(), 64 * 1024).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, "{}"),
    };
    let mode = *lock(&inner.mode);
    match mode {
        Mode::Up => {}
        Mode::Hang => {
            tokio::time::sleep(HANG).await;
            return reply(StatusCode::SERVICE_UNAVAILABLE, "{}");
        }
        Mode::Fail503 | Mode::Refuse => return reply(StatusCode::SERVICE_UNAVAILABLE, "{}"),
    }
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let conversation = json["conversationId"].as_str().unwrap_or_default();
    let user = json["userId"].as_str().unwrap_or_default();
    // The proxy must forward the cookie of the conversation's own user.
    let expected = format!("soak_user={user}");
    if user.is_empty() || cookie.as_deref() != Some(expected.as_str()) {
        stats.inc(&stats.counters.provider_mismatches);
        stats.fail(format!(
            "provider: conversation {conversation} asked for user {user:?} with cookie {cookie:?}"
        ));
        return reply(StatusCode::FORBIDDEN, "{}");
    }
    lock(&inner.granted).insert(conversation.to_string());
    stats.inc(&stats.counters.provider_tokens);
    reply(
        StatusCode::OK,
        &serde_json::json!({ "token": USER_TOKEN }).to_string(),
    )
}
