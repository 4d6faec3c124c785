//! `[listen]`: where clients connect, and how long they may take.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

use super::{ConfigError, value};

#[derive(Debug, Clone, PartialEq, SmartDefault, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Socket address to bind.
    #[default(SocketAddr::from(([127, 0, 0, 1], 8080)))]
    #[serde(deserialize_with = "value::socket_addr")]
    pub addr: SocketAddr,
    /// PEM certificate chain; with `tls_key` turns on TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// Base URL clients reach the proxy at, used for rewritten `streamUrl`s.
    #[serde(
        deserialize_with = "value::some_public_url",
        serialize_with = "value::some_display",
        skip_serializing_if = "Option::is_none"
    )]
    pub public_url: Option<Uri>,
    /// Honour `X-Forwarded-Proto/-Host/-For` from the client (only behind a
    /// trusted ingress).
    pub trust_forwarded_headers: bool,
    /// Exact origins (`https://www.contoso.com`) of the pages allowed to use
    /// the proxy; a request with another `Origin` gets 403. Empty: no check.
    pub allowed_origins: Vec<String>,
    #[default(20_000)]
    #[serde(deserialize_with = "value::within::<1, 10_000_000, _, _>")]
    pub max_connections: usize,
    /// From accept: the first request's headers (first byte, TLS handshake
    /// and preface included); then each request's headers.
    #[default(Duration::from_secs(10))]
    #[serde(
        rename = "header_read_timeout_ms",
        deserialize_with = "value::millis::<100, 600_000, _>",
        serialize_with = "value::as_millis"
    )]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long
    /// (HTTP/1 keep-alive and HTTP/2 alike).
    #[default(Duration::from_secs(60))]
    #[serde(
        rename = "idle_timeout_ms",
        deserialize_with = "value::millis::<100, 3_600_000, _>",
        serialize_with = "value::as_millis"
    )]
    pub idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests before exiting.
    #[default(Duration::from_secs(10))]
    #[serde(
        rename = "drain_timeout_ms",
        deserialize_with = "value::millis::<0, 3_600_000, _>",
        serialize_with = "value::as_millis"
    )]
    pub drain_timeout: Duration,
}

impl ListenConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "listen.tls_key",
                    "",
                    "must be set when listen.tls_cert is set (PEM private key path)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "listen.tls_cert",
                    "",
                    "must be set when listen.tls_key is set (PEM certificate chain path)",
                ));
            }
            _ => {}
        }
        for origin in &self.allowed_origins {
            if crate::origin::normalize(origin).is_none() {
                return Err(ConfigError::invalid(
                    "listen.allowed_origins",
                    origin,
                    "expected an exact origin: scheme (http or https), host and optional port, without path or wildcard, e.g. \"https://www.contoso.com\"",
                ));
            }
        }
        Ok(())
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some()
    }
}
