//! Keep-alive HTTP/1.1 connections to Direct Line and the other hosts the
//! proxy calls (token providers, token posts, a Copilot Studio token
//! endpoint), each driven by the task that is using it.
//!
//! hyper-util's pooled client runs every connection in a task of its own and
//! passes each request and response across to it. On the REST hot path those
//! hand-offs (a channel each way, a wake-up of the other task, often on the
//! other worker thread) cost more than the HTTP work itself. Here the
//! request's own task polls the connection while it waits for the response
//! head and while its client reads the body, and gives the connection back
//! for the next request once the body has ended.
//!
//! An idle connection is polled by nobody, so one the upstream closed in the
//! meantime is noticed only when it is next taken out: it is then dropped,
//! and a request that it failed before writing is sent again on another
//! connection. Nothing else is ever sent twice.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::body::{BoxError, ProxyBody};

type Driver = http1::Connection<MaybeHttpsStream<TokioIo<TcpStream>>, ProxyBody>;

#[derive(Debug, Error)]
pub enum SendError {
    #[error("{0}")]
    Connect(BoxError),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Idle connections, each to the origin (scheme, host and port) it was
/// opened to: the base can change (a Copilot Studio agent's regional base),
/// and a connection only serves requests for its own origin.
pub struct Connections {
    connector: HttpsConnector<HttpConnector>,
    idle: Mutex<VecDeque<Box<Connection>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Connections {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Connections {
        Connections {
            connector,
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout,
        }
    }

    /// Sends `request` (an absolute URI) on an idle connection to its
    /// origin, or a new one, and returns the response once its head is in.
    /// The body carries the connection.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let origin = Origin::of(request.uri())?;
        to_origin_form(&mut request);
        while let Some(mut connection) = self.take_idle(&origin) {
            match connection.exchange(request).await {
                Ok(response) => return Ok(self.attach(response, connection)),
                Err(mut error) => match error.take_message() {
                    // Closed by the upstream before our request was written.
                    Some(unsent) => request = unsent,
                    None => return Err(error.into_error().into()),
                },
            }
        }
        let mut connection = self.connect(origin).await?;
        match connection.exchange(request).await {
            Ok(response) => Ok(self.attach(response, connection)),
            Err(error) => Err(error.into_error().into()),
        }
    }

    /// Boxed: hyper's connection state is several kilobytes, and the
    /// futures that hold it are moved whole more than once per request.
    async fn connect(&self, origin: Origin) -> Result<Box<Connection>, SendError> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::Connect)?;
        let io = connector
            .call(origin.uri()?)
            .await
            .map_err(SendError::Connect)?;
        let (sender, driver) = http1::Builder::new().handshake(io).await?;
        Ok(Box::new(Connection {
            sender,
            driver,
            host: origin.host_header(),
            origin,
            closed: false,
            idle_since: Instant::now(),
        }))
    }

    fn attach(
        self: &Arc<Self>,
        response: Response<Incoming>,
        connection: Box<Connection>,
    ) -> Response<UpstreamBody> {
        response.map(|body| {
            let mut body = UpstreamBody {
                body,
                connection: Some(connection),
                home: self.clone(),
            };
            // hyper never polls a body that is already at its end (204, a
            // zero length): give the connection back now.
            if body.body.is_end_stream() {
                body.give_back();
            }
            body
        })
    }

    /// The most recently used idle connection to `origin` that can still
    /// take a request; the unusable ones found on the way are dropped.
    fn take_idle(&self, origin: &Origin) -> Option<Box<Connection>> {
        loop {
            let mut connection = {
                let mut idle = self.lock();
                let at = idle.iter().rposition(|c| c.origin == *origin)?;
                idle.remove(at)?
            };
            if connection.idle_since.elapsed() < self.idle_timeout && connection.is_usable() {
                return Some(connection);
            }
        }
    }

    fn put(&self, mut connection: Box<Connection>) {
        connection.idle_since = Instant::now();
        let mut idle = self.lock();
        while idle
            .front()
            .is_some_and(|oldest| oldest.idle_since.elapsed() >= self.idle_timeout)
        {
            idle.pop_front();
        }
        idle.push_back(connection);
        while idle.len() > self.max_idle {
            idle.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Box<Connection>>> {
        // A panic elsewhere cannot leave the queue half-updated.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.lock().len()
    }
}

/// Where a connection goes: the scheme and authority of a request's URI.
/// Cloning one only bumps reference counts, so it is taken per request.
#[derive(Clone, PartialEq)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
}

impl Origin {
    fn of(uri: &Uri) -> Result<Origin, SendError> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(SendError::Connect(
                "the upstream URI is not absolute".into(),
            ));
        };
        Ok(Origin {
            scheme: scheme.clone(),
            authority: authority.clone(),
        })
    }

    /// What the connector dials.
    fn uri(&self) -> Result<Uri, SendError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|error| SendError::Connect(error.into()))
    }

    /// `host[:port]`, the port left out when it is the scheme's default.
    fn host_header(&self) -> Option<HeaderValue> {
        let host = self.authority.host();
        let default_port = if self.scheme == Scheme::HTTPS {
            443
        } else {
            80
        };
        match self.authority.port_u16() {
            Some(port) if port != default_port => {
                HeaderValue::from_str(&format!("{host}:{port}")).ok()
            }
            _ => HeaderValue::from_str(host).ok(),
        }
    }
}

/// The request target goes on the wire as its path and query.
fn to_origin_form(request: &mut Request<ProxyBody>) {
    let target = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(target);
}

struct Connection {
    sender: http1::SendRequest<ProxyBody>,
    driver: Driver,
    origin: Origin,
    /// The `Host` a request without one gets (what the pooled client did
    /// for its callers), made once per connection.
    host: Option<HeaderValue>,
    closed: bool,
    idle_since: Instant,
}

impl Connection {
    /// Sends the request and drives the connection until the response head
    /// is in.
    async fn exchange(
        &mut self,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ProxyBody>>> {
        if let Some(host) = &self.host
            && !request.headers().contains_key(header::HOST)
        {
            request.headers_mut().insert(header::HOST, host.clone());
        }
        let mut response = std::pin::pin!(self.sender.try_send_request(request));
        poll_fn(|cx| {
            loop {
                if let Poll::Ready(result) = response.as_mut().poll(cx) {
                    return Poll::Ready(result);
                }
                // Once the connection is gone the response resolves (with
                // the error) on the next poll.
                if self.closed || self.drive(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        })
        .await
    }

    /// Lets the connection read and write; ready when it has closed.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.closed && Pin::new(&mut self.driver).poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.closed = true;
        Poll::Ready(())
    }

    /// Whether it can take another request: not closed by the upstream,
    /// and done with the last exchange.
    fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.drive(&mut cx).is_pending() && !self.sender.is_closed() && self.sender.is_ready()
    }
}

/// An upstream response body that drives its connection while it is read
/// and gives it back when it ends. Dropped before its end, the connection
/// is closed with it.
pub struct UpstreamBody {
    body: Incoming,
    connection: Option<Box<Connection>>,
    home: Arc<Connections>,
}

impl UpstreamBody {
    fn give_back(&mut self) {
        if let Some(connection) = self.connection.take()
            && !connection.closed
        {
            self.home.put(connection);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(connection) = &mut this.connection {
            // Ready means closed; the body then ends or fails on its own.
            let _ = connection.drive(cx);
        }
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => this.give_back(),
            Some(Ok(_)) if this.body.is_end_stream() => this.give_back(),
            Some(Err(_)) => this.connection = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
