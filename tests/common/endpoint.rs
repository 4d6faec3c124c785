//! A scripted HTTP endpoint for tests: an auth API or an OAuth token
//! endpoint. It records every request and answers with a closure.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct Seen {
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    /// The form fields of an `application/x-www-form-urlencoded` body.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    pub fn form_value(&self, key: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

type Responder = dyn Fn(&Seen) -> (StatusCode, String) + Send + Sync;

pub struct Endpoint {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Endpoint {
    /// Answers every request with `respond`, after `delay`.
    pub async fn start(
        delay: Duration,
        respond: impl Fn(&Seen) -> (StatusCode, String) + Send + Sync + 'static,
    ) -> Endpoint {
        let (_open, gate) = watch::channel(true);
        Endpoint::start_gated(delay, gate, HeaderMap::new(), respond).await
    }

    /// Answers only once the returned gate is opened (`send(true)`), so a
    /// test can look at the world while a request is held.
    pub async fn gated(
        respond: impl Fn(&Seen) -> (StatusCode, String) + Send + Sync + 'static,
    ) -> (Endpoint, watch::Sender<bool>) {
        let (open, gate) = watch::channel(false);
        (
            Endpoint::start_gated(Duration::ZERO, gate, HeaderMap::new(), respond).await,
            open,
        )
    }

    /// Always answers `status` with `body` and `headers` (besides its
    /// `Content-Type: application/json`).
    pub async fn answering_with_headers(
        status: StatusCode,
        body: &str,
        headers: &[(&'static str, &'static str)],
    ) -> Endpoint {
        let (_open, gate) = watch::channel(true);
        let headers = headers
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect();
        let body = body.to_string();
        Endpoint::start_gated(Duration::ZERO, gate, headers, move |_| {
            (status, body.clone())
        })
        .await
    }

    async fn start_gated(
        delay: Duration,
        gate: watch::Receiver<bool>,
        headers: HeaderMap,
        respond: impl Fn(&Seen) -> (StatusCode, String) + Send + Sync + 'static,
    ) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let respond: Arc<Responder> = Arc::new(respond);
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let record = record.clone();
                let respond = respond.clone();
                let gate = gate.clone();
                let headers = headers.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let record = record.clone();
                        let respond = respond.clone();
                        let mut gate = gate.clone();
                        let headers = headers.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let seen = Seen {
                                path_and_query: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: parts.headers,
                                body,
                            };
                            record.lock().expect("lock").push(seen.clone());
                            tokio::time::sleep(delay).await;
                            let _ = gate.wait_for(|open| *open).await;
                            let (status, body) = respond(&seen);
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = status;
                            *response.headers_mut() = headers;
                            response
                                .headers_mut()
                                .insert("content-type", "application/json".parse().expect("value"));
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Endpoint { addr, seen, task }
    }

    /// Always answers `status` with `body`.
    pub async fn answering(status: StatusCode, body: &str) -> Endpoint {
        let body = body.to_string();
        Endpoint::start(Duration::ZERO, move |_| (status, body.clone())).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}
