//! `http`: the customer's own auth API. The proxy POSTs what it knows of
//! the card and copies only the configured headers of the user's request
//! (typically the session cookie); 200 `{"token": "..."}` is a token.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};

use super::{ProviderError, TokenProvider, TokenRequest};
use crate::body::full;
use crate::config::HttpProviderConfig;
use crate::telemetry;
use crate::upstream::HttpClient;

/// An auth API answer larger than this is not a token.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What the provider is asked, serialized straight from borrowed fields
/// (absent ones as `null`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProviderQuestion<'a> {
    conversation_id: &'a str,
    user_id: &'a str,
    connection_name: &'a str,
    resource_uri: Option<&'a str>,
    provider_id: Option<&'a str>,
}

impl<'a> ProviderQuestion<'a> {
    fn of(request: &TokenRequest<'a>) -> ProviderQuestion<'a> {
        ProviderQuestion {
            conversation_id: request.conversation_id,
            user_id: request.user_id,
            connection_name: request.connection_name,
            resource_uri: request.resource_uri,
            provider_id: request.provider_id,
        }
    }
}

pub struct HttpProvider {
    url: Uri,
    forward_headers: Vec<HeaderName>,
    client: HttpClient,
}

impl TokenProvider for HttpProvider {
    fn name(&self) -> &'static str {
        "http"
    }

    fn consumed_headers(&self) -> Vec<HeaderName> {
        self.forward_headers.clone()
    }

    fn token<'a>(
        &'a self,
        request: &'a TokenRequest<'a>,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(self.call(request))
    }
}

#[derive(Deserialize)]
struct Answer {
    token: Option<String>,
}

impl HttpProvider {
    pub fn new(config: &HttpProviderConfig, client: HttpClient) -> HttpProvider {
        HttpProvider {
            url: config.url.clone(),
            forward_headers: config.forward_headers.clone(),
            client,
        }
    }

    async fn call(&self, request: &TokenRequest<'_>) -> Result<String, ProviderError> {
        let body = serde_json::to_vec(&ProviderQuestion::of(request))
            .map_err(|e| ProviderError::Failed(format!("provider request: {e}")))?;
        let mut outgoing = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .body(full(body))
            .map_err(|e| ProviderError::Failed(e.to_string()))?;
        for name in &self.forward_headers {
            for value in request.user_headers.get_all(name) {
                outgoing.headers_mut().append(name.clone(), value.clone());
            }
        }
        telemetry::inject_current(outgoing.headers_mut());
        let response = self
            .client
            .request(outgoing)
            .await
            .map_err(|e| ProviderError::Failed(format!("auth API unreachable: {e}")))?;
        let status = response.status();
        let bytes: Bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| ProviderError::Failed(format!("auth API answer unreadable: {e}")))?
            .to_bytes();
        interpret(status, &bytes)
    }
}

fn interpret(status: StatusCode, body: &[u8]) -> Result<String, ProviderError> {
    if status.is_server_error() {
        return Err(ProviderError::Failed(format!("auth API answered {status}")));
    }
    if status != StatusCode::OK {
        return Err(ProviderError::NoToken(format!(
            "auth API answered {status}"
        )));
    }
    match serde_json::from_slice::<Answer>(body) {
        Ok(Answer { token: Some(token) }) if !token.is_empty() => Ok(token),
        Ok(_) => Err(ProviderError::NoToken(
            "auth API answered without a token".into(),
        )),
        Err(_) => Err(ProviderError::Failed("auth API answer is not JSON".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_200_with_a_token_is_a_token() {
        assert_eq!(
            interpret(StatusCode::OK, br#"{"token":"t"}"#)
                .ok()
                .as_deref(),
            Some("t")
        );
        assert!(matches!(
            interpret(StatusCode::OK, br#"{"token":""}"#),
            Err(ProviderError::NoToken(_))
        ));
        assert!(matches!(
            interpret(StatusCode::OK, br#"{}"#),
            Err(ProviderError::NoToken(_))
        ));
        assert!(matches!(
            interpret(StatusCode::OK, b"<html>"),
            Err(ProviderError::Failed(_))
        ));
        assert!(matches!(
            interpret(StatusCode::UNAUTHORIZED, b""),
            Err(ProviderError::NoToken(_))
        ));
        assert!(matches!(
            interpret(StatusCode::NO_CONTENT, b""),
            Err(ProviderError::NoToken(_))
        ));
        assert!(matches!(
            interpret(StatusCode::BAD_GATEWAY, b""),
            Err(ProviderError::Failed(_))
        ));
    }
}
