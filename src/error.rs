//! Every error the proxy answers a client with itself, and the one table
//! that turns each into a status, a Direct Line error code and a message.
//!
//! Answers are in Direct Line's shape, `{"error":{"code":..,"message":..}}`,
//! so clients handle them like the service's own. Messages never carry a
//! token, a host or the underlying error: that goes to the log, through
//! `source()`.

use std::borrow::Cow;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use thiserror::Error;

use crate::body::{ProxyBody, json_response};
use crate::upstream::UpstreamError;

#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("origin not in listen.allowed_origins")]
    OriginRefused,
    #[error("path outside Direct Line 3.0")]
    NotDirectLine,
    #[error("path refused: {0}")]
    BadPath(&'static str),
    #[error("Host header invalid")]
    BadHost,
    #[error("WebSocket version other than 13")]
    WebSocketVersion,
    #[error("WebSocket handshake invalid")]
    BadHandshake,
    #[error("request body over limits.max_request_body_bytes")]
    BodyTooLarge,
    #[error("token request without the user header")]
    NoUser,
    #[error("token request body is not a JSON object")]
    BadTokenRequest,
    #[error("over a quota: {message}")]
    OverQuota {
        retry_after: Duration,
        message: &'static str,
    },
    #[error("at listen.max_connections")]
    AtConnectionLimit,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream response unreadable")]
    UnreadableResponse,
    #[error("upstream WebSocket handshake invalid")]
    StreamHandshake,
    #[error("no token could be minted")]
    MintFailed,
    #[error("no token from the token endpoint")]
    TokenEndpointFailed,
}

impl ProxyError {
    /// The table: what the client is told. The README's error table lists
    /// the same (status, code) pairs, which a test checks.
    pub fn answer(&self) -> (StatusCode, &'static str, Cow<'static, str>) {
        let (status, code, message): (_, _, Cow<'static, str>) = match self {
            ProxyError::OriginRefused => (
                StatusCode::FORBIDDEN,
                "Forbidden",
                "This origin is not allowed to use the proxy.".into(),
            ),
            ProxyError::NotDirectLine => (
                StatusCode::NOT_FOUND,
                "NotFound",
                "Only Direct Line 3.0 paths are served here.".into(),
            ),
            ProxyError::BadPath(reason) => {
                (StatusCode::BAD_REQUEST, "BadArgument", (*reason).into())
            }
            ProxyError::BadHost => (
                StatusCode::BAD_REQUEST,
                "BadArgument",
                "The Host header is not a valid host.".into(),
            ),
            ProxyError::WebSocketVersion => (
                StatusCode::UPGRADE_REQUIRED,
                "BadArgument",
                "Only WebSocket version 13 is supported.".into(),
            ),
            ProxyError::BadHandshake => (
                StatusCode::BAD_REQUEST,
                "BadArgument",
                "Invalid WebSocket handshake.".into(),
            ),
            ProxyError::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "MessageSizeTooBig",
                "The request body is larger than the proxy allows.".into(),
            ),
            ProxyError::NoUser => (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "The request carries no authenticated user.".into(),
            ),
            ProxyError::BadTokenRequest => (
                StatusCode::BAD_REQUEST,
                "BadArgument",
                "The request body is not a JSON object.".into(),
            ),
            ProxyError::OverQuota { message, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                (*message).into(),
            ),
            ProxyError::AtConnectionLimit => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The proxy is at its connection limit.".into(),
            ),
            ProxyError::Upstream(UpstreamError::Timeout(_)) => (
                StatusCode::GATEWAY_TIMEOUT,
                "GatewayTimeout",
                "The Direct Line service did not answer in time.".into(),
            ),
            ProxyError::Upstream(UpstreamError::Unreachable(_) | UpstreamError::Failed(_)) => (
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                "The Direct Line service could not be reached.".into(),
            ),
            ProxyError::Upstream(UpstreamError::BadUrl(_)) => (
                StatusCode::BAD_REQUEST,
                "BadArgument",
                "Invalid request path.".into(),
            ),
            ProxyError::UnreadableResponse => (
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                "The Direct Line response could not be read.".into(),
            ),
            ProxyError::StreamHandshake => (
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                "The Direct Line stream handshake failed.".into(),
            ),
            ProxyError::MintFailed => (
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                "A token for the user could not be obtained from Direct Line.".into(),
            ),
            ProxyError::TokenEndpointFailed => (
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                "The agent's token endpoint did not give a token or a Direct Line base.".into(),
            ),
        };
        (status, code, message)
    }

    /// The Direct Line error body.
    pub fn body(&self) -> String {
        let (_, code, message) = self.answer();
        serde_json::json!({ "error": { "code": code, "message": message } }).to_string()
    }

    /// The response, with the headers some answers need: `Retry-After`
    /// (whole seconds, at least 1) and, for 426, the version spoken.
    pub fn into_response(self) -> Response<ProxyBody> {
        let (status, _, _) = self.answer();
        let mut response = json_response(status, self.body());
        let headers = response.headers_mut();
        match self {
            ProxyError::OverQuota { retry_after, .. } => {
                let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            ProxyError::WebSocketVersion => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            _ => {}
        }
        response
    }

    /// One of each kind, for the table's tests.
    #[cfg(test)]
    fn every_kind() -> Vec<ProxyError> {
        vec![
            ProxyError::OriginRefused,
            ProxyError::NotDirectLine,
            ProxyError::BadPath("Invalid request path."),
            ProxyError::BadHost,
            ProxyError::WebSocketVersion,
            ProxyError::BadHandshake,
            ProxyError::BodyTooLarge,
            ProxyError::NoUser,
            ProxyError::BadTokenRequest,
            ProxyError::OverQuota {
                retry_after: Duration::from_millis(1500),
                message: "slow down",
            },
            ProxyError::AtConnectionLimit,
            ProxyError::Upstream(UpstreamError::Timeout(Duration::from_secs(1))),
            ProxyError::Upstream(UpstreamError::Unreachable("refused".into())),
            ProxyError::Upstream(UpstreamError::Failed("reset".into())),
            ProxyError::Upstream(UpstreamError::BadUrl("bad".into())),
            ProxyError::UnreadableResponse,
            ProxyError::StreamHandshake,
            ProxyError::MintFailed,
            ProxyError::TokenEndpointFailed,
        ]
    }
}

impl From<ProxyError> for Response<ProxyBody> {
    fn from(error: ProxyError) -> Self {
        error.into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// (status, code) pairs of the README's "Errors the proxy makes" table.
    fn readme_table() -> BTreeSet<(u16, String)> {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let section = readme
            .split("\n## Errors the proxy makes")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("the errors section");
        section
            .lines()
            .filter_map(|line| {
                let mut cells = line.split('|').map(str::trim).skip(1);
                let status = cells.next()?.parse().ok()?;
                let code = cells.next()?.trim_matches('`').to_owned();
                Some((status, code))
            })
            .collect()
    }

    #[test]
    fn the_readme_error_table_is_the_proxys() {
        let answered: BTreeSet<(u16, String)> = ProxyError::every_kind()
            .iter()
            .map(|error| {
                let (status, code, _) = error.answer();
                (status.as_u16(), code.to_owned())
            })
            .collect();
        assert_eq!(answered, readme_table());
    }

    #[test]
    fn answers_are_direct_line_errors_with_the_headers_they_need() {
        for error in ProxyError::every_kind() {
            let (status, code, message) = error.answer();
            let body: serde_json::Value = serde_json::from_str(&error.body()).expect("JSON");
            assert_eq!(body["error"]["code"], code);
            assert_eq!(body["error"]["message"], message.as_ref());
            assert!(!message.contains("refused") && !message.contains("reset"));
            let response = error.into_response();
            assert_eq!(response.status(), status);
        }
        let over = ProxyError::OverQuota {
            retry_after: Duration::from_millis(1500),
            message: "slow down",
        }
        .into_response();
        assert_eq!(over.headers()[header::RETRY_AFTER], "2");
        let version = ProxyError::WebSocketVersion.into_response();
        assert_eq!(version.headers()[header::SEC_WEBSOCKET_VERSION], "13");
    }
}
