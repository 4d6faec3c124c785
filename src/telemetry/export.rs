//! The HTTP client spans are exported with: the proxy's own hyper and
//! rustls stack behind opentelemetry-http's `HttpClient` trait, so traces
//! need no second HTTP client (reqwest) in the binary.
//!
//! The SDK's batch processor exports from a thread of its own, outside the
//! Tokio runtime, by blocking on the export's future. hyper needs the
//! runtime, so each export is spawned onto it and only its result is
//! awaited on that thread.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::{HttpClient, HttpError};
use tokio::runtime::Handle;

use crate::tls::{self, TlsError};

/// A collector's answer is a small status message; more is not read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Sends OTLP requests on the runtime it was built in, each bounded by
/// `timeout` (connect, send and the answer's body together).
#[derive(Debug, Clone)]
pub struct Exporter {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: Handle,
    timeout: Duration,
}

impl Exporter {
    /// Trusts the platform's roots, as the upstream client does.
    pub fn new(runtime: Handle, timeout: Duration) -> Result<Exporter, TlsError> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls::client_config(None)?)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Exporter {
            client: Client::builder(TokioExecutor::new()).build(connector),
            runtime,
            timeout,
        })
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let exchange = async move {
            let response = client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES).collect().await?;
            Ok::<_, HttpError>(Response::from_parts(parts, body.to_bytes()))
        };
        let timeout = self.timeout;
        self.runtime
            .spawn(async move {
                tokio::time::timeout(timeout, exchange)
                    .await
                    .map_err(|_| HttpError::from(format!("no answer within {timeout:?}")))?
            })
            .await?
    }
}

#[async_trait]
impl HttpClient for Exporter {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        self.send(request).await
    }
}
