//! The demo's Web Chat page: `/` (the page), `/demo.js` (what renders Web
//! Chat against the proxy) and, with `--webchat-bundle`, `/webchat.js`.
//!
//! The script is a file of its own, not inline, so the page runs under a
//! Content-Security-Policy without `'unsafe-inline'` for scripts: scripts
//! from the page's server (and the Web Chat CDN), connections only to the
//! proxy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

const INDEX_HTML: &str = include_str!("index.html");
const DEMO_JS: &str = include_str!("demo.js");

/// Web Chat's official CDN, "latest" channel.
pub const WEBCHAT_CDN: &str = "https://cdn.botframework.com/botframework-webchat/latest/webchat.js";
const WEBCHAT_CDN_ORIGIN: &str = "https://cdn.botframework.com";

#[derive(Debug, Error)]
pub enum PageError {
    #[error("--webchat-bundle {path}: {source}")]
    Bundle {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the page listener's address: {0}")]
    LocalAddr(std::io::Error),
}

/// Where the browser gets Web Chat from.
#[derive(Debug, Clone, Default)]
pub enum WebChatSource {
    /// The official CDN (the browser needs the internet).
    #[default]
    Cdn,
    /// A local `webchat.js` (e.g. `botframework-webchat`'s
    /// `dist/webchat.js` from npm), served at `/webchat.js`.
    Bundle(PathBuf),
}

/// Web Chat as the page loads it: a URL, or the bundle's bytes.
pub enum WebChat {
    Cdn,
    Bundle(Bytes),
}

impl WebChatSource {
    /// Reads the bundle, so a wrong path fails the start, not the page.
    pub async fn load(&self) -> Result<WebChat, PageError> {
        match self {
            WebChatSource::Cdn => Ok(WebChat::Cdn),
            WebChatSource::Bundle(path) => tokio::fs::read(path)
                .await
                .map(|bytes| WebChat::Bundle(bytes.into()))
                .map_err(|source| PageError::Bundle {
                    path: path.clone(),
                    source,
                }),
        }
    }
}

/// Everything the page server answers with, built once.
pub struct Page {
    html: Bytes,
    csp: HeaderValue,
    bundle: Option<Bytes>,
}

impl Page {
    /// The page for the proxy at `proxy_url` (`http://host:port`).
    pub fn new(proxy_url: &str, sso: bool, webchat: WebChat) -> Page {
        let (script, script_origin, bundle) = match webchat {
            WebChat::Cdn => (WEBCHAT_CDN, Some(WEBCHAT_CDN_ORIGIN), None),
            WebChat::Bundle(bytes) => ("/webchat.js", None, Some(bytes)),
        };
        let sso_note = if sso {
            "Server-side SSO is on: type <kbd>signin</kbd> and the proxy signs you in, no card."
        } else {
            "Server-side SSO is off (<code>--no-sso</code>): <kbd>signin</kbd> shows the bot's sign-in card."
        };
        let html = INDEX_HTML
            .replace(
                "{{DIRECTLINE}}",
                &escape(&format!("{proxy_url}/v3/directline")),
            )
            .replace("{{WEBCHAT_SCRIPT}}", &escape(script))
            .replace("{{SSO}}", if sso { "on" } else { "off" })
            .replace("{{SSO_NOTE}}", sso_note);
        Page {
            html: html.into(),
            csp: content_security_policy(proxy_url, script_origin),
            bundle,
        }
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match request.uri().path() {
            "/" | "/index.html" => {
                let mut response = asset(self.html.clone(), "text/html; charset=utf-8");
                response
                    .headers_mut()
                    .insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
                response
            }
            "/demo.js" => asset(Bytes::from_static(DEMO_JS.as_bytes()), JAVASCRIPT),
            "/webchat.js" => match &self.bundle {
                Some(bundle) => asset(bundle.clone(), JAVASCRIPT),
                None => plain(StatusCode::NOT_FOUND, "Web Chat comes from its CDN\n"),
            },
            _ => plain(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// Scripts only from this server (and the CDN when used), connections only
/// to the proxy (REST and its WebSocket). Web Chat sets inline styles, and
/// shows images and files from `data:` and `blob:` URLs.
fn content_security_policy(proxy_url: &str, script_origin: Option<&str>) -> HeaderValue {
    let websocket = proxy_url.replacen("http", "ws", 1);
    let scripts = script_origin.map_or(String::new(), |origin| format!(" {origin}"));
    let policy = format!(
        "default-src 'none'; script-src 'self'{scripts}; connect-src {proxy_url} {websocket}; \
         style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; media-src data: blob:; \
         font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"))
}

fn asset(body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = asset(Bytes::from_static(text.as_bytes()), "text/plain");
    *response.status_mut() = status;
    response
}

/// Text safe inside an HTML attribute or element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, PageError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| PageError::Bind { addr, source })
}

pub fn local_addr(listener: &TcpListener) -> Result<SocketAddr, PageError> {
    listener.local_addr().map_err(PageError::LocalAddr)
}

/// The page server, running until [`PageServer::shutdown`].
pub struct PageServer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl PageServer {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

pub fn serve(listener: TcpListener, page: Page) -> PageServer {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, Arc::new(page), stopped));
    PageServer { stop, task }
}

async fn accept_loop(listener: TcpListener, page: Arc<Page>, mut stopped: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, page.clone()));
                }
                Err(err) => tracing::warn!(%err, "demo page: accept failed"),
            },
            _ = stopped.wait_for(|stop| *stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
}

async fn serve_connection(stream: tokio::net::TcpStream, page: Arc<Page>) {
    let service = service_fn(move |request| {
        let page = page.clone();
        async move { Ok::<_, Infallible>(page.answer(&request)) }
    });
    if let Err(err) = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%err, "demo page: connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(webchat: WebChat) -> Page {
        Page::new("http://127.0.0.1:8080", true, webchat)
    }

    #[test]
    fn the_page_points_web_chat_at_the_proxy() {
        let html = String::from_utf8(page(WebChat::Cdn).html.to_vec()).unwrap();
        assert!(html.contains(r#"data-directline="http://127.0.0.1:8080/v3/directline""#));
        assert!(html.contains(&format!(r#"src="{WEBCHAT_CDN}""#)));
        assert!(!html.contains("{{"), "a placeholder was left: {html}");
    }

    #[test]
    fn a_bundle_is_served_from_the_page_and_the_cdn_is_not_allowed() {
        let page = page(WebChat::Bundle(Bytes::from_static(b"window.WebChat={}")));
        let html = String::from_utf8(page.html.to_vec()).unwrap();
        assert!(html.contains(r#"src="/webchat.js""#));
        let csp = page.csp.to_str().unwrap();
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(!csp.contains("cdn.botframework.com"), "{csp}");
    }

    #[test]
    fn the_policy_allows_scripts_from_the_cdn_and_connections_to_the_proxy_only() {
        let csp = page(WebChat::Cdn).csp.to_str().unwrap().to_string();
        assert!(
            csp.contains("script-src 'self' https://cdn.botframework.com;"),
            "{csp}"
        );
        assert!(
            csp.contains("connect-src http://127.0.0.1:8080 ws://127.0.0.1:8080;"),
            "{csp}"
        );
        assert!(!csp.contains("'unsafe-eval'"), "{csp}");
    }

    #[test]
    fn attribute_values_are_escaped() {
        assert_eq!(escape(r#"a"<b>&'"#), "a&quot;&lt;b&gt;&amp;&#39;");
    }
}
