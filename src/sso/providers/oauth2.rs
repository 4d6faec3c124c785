//! `oauth2`: exchanges the user's incoming token (from a header set by the
//! ingress) at an OAuth 2.0 token endpoint for one whose audience is the
//! card's resource: RFC 8693 token exchange, or Microsoft Entra ID's
//! on-behalf-of flow. Results are cached per (user token, resource) until
//! shortly before they expire; concurrent requests for the same pair share
//! one exchange, and a failed exchange is not remembered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use moka::Expiry;
use moka::future::Cache;
use serde::Deserialize;

use super::header::token_from;
use super::{ProviderError, ProviderSetupError, TokenProvider, TokenRequest};
use crate::body::full;
use crate::config::{Grant, OAuth2ProviderConfig};
use crate::telemetry;
use crate::upstream::HttpClient;

pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
/// A cached token is dropped this long before it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
const MAX_ANSWER_BYTES: usize = 256 * 1024;
const CACHE_CAPACITY: u64 = 10_000;

impl TokenProvider for OAuth2Provider {
    fn name(&self) -> &'static str {
        "oauth2"
    }

    fn consumed_headers(&self) -> Vec<HeaderName> {
        vec![self.header().clone()]
    }

    /// Only `sso.oauth2.allowed_resources`: this provider mints tokens for
    /// the audience the card names.
    fn allows_resource(&self, resource: Option<&str>) -> bool {
        self.permits_resource(resource)
    }

    fn token<'a>(
        &'a self,
        request: &'a TokenRequest<'a>,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(self.cached_token(request))
    }
}

pub struct OAuth2Provider {
    token_url: Uri,
    grant: Grant,
    client_id: String,
    client_secret: String,
    header: HeaderName,
    /// The only `tokenExchangeResource.uri` values exchanged for: the card
    /// comes from the conversation, so it must not choose the audience.
    allowed_resources: Vec<String>,
    client: HttpClient,
    /// Keyed by a digest of (incoming token, resource): the raw incoming
    /// token is not kept.
    cache: Cache<Vec<u8>, Exchanged>,
}

/// A token from the endpoint and how long it may be reused.
#[derive(Clone)]
struct Exchanged {
    token: String,
    reusable_for: Duration,
}

impl Exchanged {
    /// A token without a lifetime (or one shorter than the margin) is given
    /// only to the requests that waited for this exchange, never reused.
    fn new(token: String, lifetime: Option<Duration>) -> Exchanged {
        let reusable_for = lifetime
            .and_then(|lifetime| lifetime.checked_sub(EXPIRY_MARGIN))
            .unwrap_or(Duration::ZERO);
        Exchanged {
            token,
            reusable_for,
        }
    }
}

/// Each cached token expires shortly before the endpoint said it would.
struct UntilShortlyBeforeExpiry;

impl Expiry<Vec<u8>, Exchanged> for UntilShortlyBeforeExpiry {
    fn expire_after_create(
        &self,
        _key: &Vec<u8>,
        value: &Exchanged,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.reusable_for)
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: Option<String>,
}

impl OAuth2Provider {
    pub fn new(
        config: &OAuth2ProviderConfig,
        client: HttpClient,
    ) -> Result<OAuth2Provider, ProviderSetupError> {
        let setup = |source_name: &str, message: String| ProviderSetupError::ClientSecret {
            source_name: source_name.to_string(),
            message,
        };
        let client_secret = match (&config.client_secret_env, &config.client_secret_file) {
            (Some(var), _) => std::env::var(var)
                .map_err(|_| setup(&format!("environment variable {var}"), "not set".into()))?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| setup(&path.display().to_string(), e.to_string()))?,
            (None, None) => return Err(setup("the config", "no client secret source".into())),
        };
        let client_secret = client_secret.trim().to_string();
        if client_secret.is_empty() {
            return Err(setup("the configured source", "the secret is empty".into()));
        }
        Ok(OAuth2Provider {
            token_url: config.token_url.clone(),
            grant: config.grant,
            client_id: config.client_id.clone(),
            client_secret,
            header: config.header.clone(),
            allowed_resources: config.allowed_resources.clone(),
            client,
            cache: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .expire_after(UntilShortlyBeforeExpiry)
                .build(),
        })
    }

    fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Whether the card's resource is one the operator listed (exact match).
    fn permits_resource(&self, resource: Option<&str>) -> bool {
        resource.is_some_and(|uri| self.allowed_resources.iter().any(|r| r == uri))
    }

    async fn cached_token(&self, request: &TokenRequest<'_>) -> Result<String, ProviderError> {
        let incoming = token_from(request.user_headers, &self.header)?;
        let resource = request.resource_uri.ok_or_else(|| {
            ProviderError::NoToken("the card names no resource to exchange for".into())
        })?;
        let exchange = async {
            let (token, lifetime) = self.exchange(&incoming, resource).await?;
            Ok(Exchanged::new(token, lifetime))
        };
        self.cache
            .try_get_with(cache_key(&incoming, resource), exchange)
            .await
            .map(|exchanged| exchanged.token)
            .map_err(|error: Arc<ProviderError>| (*error).clone())
    }

    async fn exchange(
        &self,
        incoming: &str,
        resource: &str,
    ) -> Result<(String, Option<Duration>), ProviderError> {
        let (form, basic_auth) = self.form(incoming, resource);
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.token_url.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .header(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(basic_auth) = basic_auth {
            request = request.header(header::AUTHORIZATION, basic_auth);
        }
        let mut request = request
            .body(full(form))
            .map_err(|e| ProviderError::Failed(e.to_string()))?;
        telemetry::inject_current(request.headers_mut());
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| ProviderError::Failed(format!("token endpoint unreachable: {e}")))?;
        let status = response.status();
        let body: Bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| ProviderError::Failed(format!("token endpoint answer unreadable: {e}")))?
            .to_bytes();
        interpret(status, &body)
    }

    /// The form body and, for RFC 8693, the client's Basic credentials.
    fn form(&self, incoming: &str, resource: &str) -> (String, Option<String>) {
        let mut form = form_urlencoded::Serializer::new(String::new());
        match self.grant {
            Grant::TokenExchange => {
                form.append_pair("grant_type", GRANT_TOKEN_EXCHANGE)
                    .append_pair("subject_token", incoming)
                    .append_pair("subject_token_type", TOKEN_TYPE_ACCESS)
                    .append_pair("requested_token_type", TOKEN_TYPE_ACCESS)
                    .append_pair("audience", resource);
                (form.finish(), Some(self.basic_auth()))
            }
            Grant::OnBehalfOf => {
                form.append_pair("grant_type", GRANT_JWT_BEARER)
                    .append_pair("client_id", &self.client_id)
                    .append_pair("client_secret", &self.client_secret)
                    .append_pair("assertion", incoming)
                    .append_pair("scope", &entra_scope(resource))
                    .append_pair("requested_token_use", "on_behalf_of");
                (form.finish(), None)
            }
        }
    }

    /// client_secret_basic (RFC 6749 section 2.3.1): both parts form-encoded.
    fn basic_auth(&self) -> String {
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = format!(
            "{}:{}",
            encode(&self.client_id),
            encode(&self.client_secret)
        );
        format!("Basic {}", STANDARD.encode(pair))
    }
}

fn cache_key(incoming: &str, resource: &str) -> Vec<u8> {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(incoming.as_bytes());
    context.update(b"\0");
    context.update(resource.as_bytes());
    context.finish().as_ref().to_vec()
}

/// Entra ID scopes: an application ID URI alone (`api://app`,
/// `https://graph.microsoft.com`) becomes `<uri>/.default`; a URI that
/// already names a scope (`api://app/access_as_user`, `.../.default`) is
/// used as it is.
pub fn entra_scope(resource: &str) -> String {
    let resource = resource.trim_end_matches('/');
    let after_scheme = resource
        .split_once("://")
        .map_or(resource, |(_, rest)| rest);
    if after_scheme.contains('/') {
        resource.to_string()
    } else {
        format!("{resource}/.default")
    }
}

fn interpret(status: StatusCode, body: &[u8]) -> Result<(String, Option<Duration>), ProviderError> {
    if status == StatusCode::OK {
        return match serde_json::from_slice::<TokenAnswer>(body) {
            Ok(TokenAnswer {
                access_token: Some(token),
                expires_in,
            }) if !token.is_empty() => Ok((token, expires_in.map(Duration::from_secs))),
            _ => Err(ProviderError::Failed(
                "token endpoint answered without an access_token".into(),
            )),
        };
    }
    let error = serde_json::from_slice::<ErrorAnswer>(body)
        .ok()
        .and_then(|e| e.error)
        .unwrap_or_default();
    // The user's token cannot be exchanged (expired, consent missing...):
    // the user signs in by hand. Anything else is the provider's problem.
    if status == StatusCode::BAD_REQUEST
        && matches!(
            error.as_str(),
            "invalid_grant" | "interaction_required" | "consent_required"
        )
    {
        Err(ProviderError::NoToken(format!("token endpoint: {error}")))
    } else {
        Err(ProviderError::Failed(format!(
            "token endpoint answered {status} {error}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entra_scope_follows_the_default_rules() {
        assert_eq!(entra_scope("api://botid-123"), "api://botid-123/.default");
        assert_eq!(entra_scope("api://botid-123/"), "api://botid-123/.default");
        assert_eq!(
            entra_scope("https://graph.microsoft.com"),
            "https://graph.microsoft.com/.default"
        );
        assert_eq!(
            entra_scope("api://app/access_as_user"),
            "api://app/access_as_user"
        );
        assert_eq!(entra_scope("api://app/.default"), "api://app/.default");
    }

    #[test]
    fn token_endpoint_answers_are_classified() {
        let ok =
            interpret(StatusCode::OK, br#"{"access_token":"x","expires_in":3600}"#).expect("token");
        assert_eq!(ok, ("x".to_string(), Some(Duration::from_secs(3600))));
        assert!(matches!(
            interpret(StatusCode::OK, b"{}"),
            Err(ProviderError::Failed(_))
        ));
        assert!(matches!(
            interpret(StatusCode::BAD_REQUEST, br#"{"error":"invalid_grant"}"#),
            Err(ProviderError::NoToken(_))
        ));
        assert!(matches!(
            interpret(StatusCode::UNAUTHORIZED, br#"{"error":"invalid_client"}"#),
            Err(ProviderError::Failed(_))
        ));
    }

    #[test]
    fn cache_keys_differ_by_user_and_resource_and_hide_the_token() {
        let a = cache_key("user-token", "api://a");
        assert_ne!(a, cache_key("user-token", "api://b"));
        assert_ne!(a, cache_key("other", "api://a"));
        assert!(!String::from_utf8_lossy(&a).contains("user-token"));
    }
}
