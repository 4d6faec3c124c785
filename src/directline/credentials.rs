//! The Direct Line secret stays on the server.
//!
//! With `[directline] secret_file` or `secret_env` set, token minting
//! (`POST /tokens/generate`) and a start-conversation without credentials
//! are sent upstream with the secret; the client never needs or sees it,
//! and no other route ever carries it. With `user_id_header`, the token is
//! bound to the user the ingress authenticated: `user.id` becomes
//! `dl_` + an HMAC of the header value (stable across replicas, not
//! reversible), whatever the client asked for. Without it, each minted
//! token gets a fresh random `dl_` id (unless `allow_client_user_id`), so a
//! client never speaks as a user id of its choosing. Minting is rate limited
//! per client.
//!
//! With `[directline] token_endpoint` instead (a Copilot Studio agent), the
//! same two requests get a token from that endpoint (see
//! [`super::token_endpoint`]): a token request is answered with it by the
//! proxy, a start is sent upstream with it. Such tokens carry no user id,
//! so user binding needs a secret; the rate limit applies the same.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use ring::hmac;
use serde_json::{Value, json};
use thiserror::Error;

use super::route::Route;
use super::token_endpoint::{TokenEndpoint, TokenEndpointError};
use crate::body::{BoxError, ProxyBody, full, json_response};
use crate::config::DirectLineConfig;
use crate::directline::quota::{KeyedRate, client_key};
use crate::error::ProxyError;
use crate::header_hygiene::ClientInfo;
use crate::header_values::{bearer_value, single_value};
use crate::upstream::Upstream;

/// A mint request body larger than this is not a Direct Line token request.
const MAX_MINT_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum CredentialsError {
    #[error("directline.secret_env: environment variable {0} is not set or empty")]
    MissingEnv(String),
    #[error("directline.secret_file: cannot read {path}: {message}")]
    File { path: String, message: String },
    #[error("the Direct Line secret is not a valid header value")]
    Malformed,
    #[error(transparent)]
    TokenEndpoint(#[from] TokenEndpointError),
}

/// Why a mint request is answered by the proxy itself.
#[derive(Debug)]
pub enum Refusal {
    NoUser,
    BadBody,
    TooMany(Duration),
    MintFailed,
    TokenEndpointFailed,
}

impl From<Refusal> for ProxyError {
    fn from(refusal: Refusal) -> ProxyError {
        match refusal {
            Refusal::NoUser => ProxyError::NoUser,
            Refusal::BadBody => ProxyError::BadTokenRequest,
            Refusal::TooMany(retry_after) => ProxyError::OverQuota {
                retry_after,
                message: "Too many token requests; retry later.",
            },
            Refusal::MintFailed => ProxyError::MintFailed,
            Refusal::TokenEndpointFailed => ProxyError::TokenEndpointFailed,
        }
    }
}

impl Refusal {
    pub fn into_response(self) -> Response<ProxyBody> {
        ProxyError::from(self).into_response()
    }
}

pub struct ServerCredentials {
    source: TokenSource,
    binding: Option<UserBinding>,
    allow_client_user_id: bool,
    limiter: KeyedRate,
}

/// Where the tokens the proxy hands out come from.
enum TokenSource {
    /// `Bearer <secret>`: minted by Direct Line, bound to a user id.
    Secret(HeaderValue),
    /// A Copilot Studio token endpoint.
    Endpoint(Box<TokenEndpoint>),
}

/// `directline.user_id_header`, and the key its values are hashed with.
struct UserBinding {
    header: HeaderName,
    key: hmac::Key,
}

/// What becomes of a request the credentials apply to.
pub enum Applied {
    /// Sent upstream, now with the server's credentials.
    Forward(Request<ProxyBody>),
    /// Answered by the proxy itself (a token from a token endpoint).
    Answer(Response<ProxyBody>),
}

impl ServerCredentials {
    /// `None` when neither a secret nor a token endpoint is configured.
    /// `env` looks up `secret_env` (the process environment in production,
    /// a fixed table in tests).
    pub fn from_config(
        config: &DirectLineConfig,
        env: impl Fn(&str) -> Option<String>,
        upstream: &Upstream,
    ) -> Result<Option<ServerCredentials>, CredentialsError> {
        let limiter = || KeyedRate::new(config.mint_rate_per_minute, config.mint_burst);
        if let Some(endpoint) = TokenEndpoint::from_config(config, upstream)? {
            return Ok(Some(ServerCredentials {
                source: TokenSource::Endpoint(Box::new(endpoint)),
                binding: None,
                allow_client_user_id: config.allow_client_user_id,
                limiter: limiter(),
            }));
        }
        let secret = match (&config.secret_env, &config.secret_file) {
            (Some(var), _) => env(var)
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| CredentialsError::MissingEnv(var.clone()))?,
            (None, Some(path)) => {
                std::fs::read_to_string(path).map_err(|e| CredentialsError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?
            }
            (None, None) => return Ok(None),
        };
        let secret = secret.trim();
        let mut authorization = HeaderValue::from_str(&format!("Bearer {secret}"))
            .map_err(|_| CredentialsError::Malformed)?;
        authorization.set_sensitive(true);
        let binding = config.user_id_header.clone().map(|header| UserBinding {
            header,
            // Keyed by the secret: the same on every replica, and unknown
            // to clients, so user ids cannot be precomputed or reversed.
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        });
        Ok(Some(ServerCredentials {
            source: TokenSource::Secret(authorization),
            binding,
            allow_client_user_id: config.allow_client_user_id,
            limiter: limiter(),
        }))
    }

    /// The Copilot Studio token endpoint, when it is the token source: its
    /// regional base is then the upstream.
    pub fn token_endpoint(&self) -> Option<&TokenEndpoint> {
        match &self.source {
            TokenSource::Endpoint(endpoint) => Some(endpoint),
            TokenSource::Secret(_) => None,
        }
    }

    /// Whether this request gets the secret: minting always, starting a
    /// conversation only when the client brought no credentials.
    pub fn applies(route: &Route, headers: &HeaderMap) -> bool {
        match route {
            Route::GenerateToken => true,
            Route::StartConversation => !headers.contains_key(header::AUTHORIZATION),
            _ => false,
        }
    }

    /// The header carrying the authenticated user, if binding is on; the
    /// proxy consumes it and does not forward it.
    pub fn user_id_header(&self) -> Option<&HeaderName> {
        self.binding.as_ref().map(|binding| &binding.header)
    }

    /// The bound id of the user a request comes from: `None` when binding
    /// is off or the request lacks the header.
    pub fn user_id_of(&self, headers: &HeaderMap) -> Option<String> {
        bound_user_id(self.binding.as_ref()?, headers).ok()
    }

    /// Puts the secret (and the user id) on the request, or answers the
    /// client directly (401 without the user header, 429 over the rate).
    ///
    /// The user id is the bound one with binding on; otherwise a fresh
    /// random one, unless `allow_client_user_id`. A start without
    /// credentials is started with a token minted for that id instead of
    /// the secret: Direct Line binds `user.id` only when minting, so a
    /// secret start would let the client speak as anyone.
    ///
    /// With a token endpoint, the token comes from there instead.
    pub async fn apply(
        &self,
        route: &Route,
        request: Request<ProxyBody>,
        client: &ClientInfo,
        trust_forwarded: bool,
        upstream: &Upstream,
    ) -> Result<Applied, Refusal> {
        let bound = match &self.binding {
            Some(binding) => Some(bound_user_id(binding, request.headers())?),
            None => None,
        };
        let limit_key = client_key(bound.as_deref(), request.headers(), client, trust_forwarded);
        self.limiter.check(&limit_key).map_err(Refusal::TooMany)?;
        let authorization = match &self.source {
            TokenSource::Secret(authorization) => authorization,
            TokenSource::Endpoint(endpoint) => {
                return from_endpoint(endpoint, route, request).await;
            }
        };
        let user_id = match bound {
            Some(bound) => Some(bound),
            None if self.allow_client_user_id => None,
            None => Some(random_user_id().ok_or(Refusal::MintFailed)?),
        };
        let (mut parts, body) = request.into_parts();
        // The body is checked before anything is minted.
        let body = match &user_id {
            Some(user_id) => {
                let bound = bind_user(body, user_id).await?;
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                full(bound)
            }
            None => body,
        };
        let authorization = match (&user_id, route) {
            (Some(user_id), Route::StartConversation) => {
                mint_bound(authorization, upstream, user_id).await?
            }
            _ => authorization.clone(),
        };
        parts.headers.insert(header::AUTHORIZATION, authorization);
        Ok(Applied::Forward(Request::from_parts(parts, body)))
    }
}

/// A token from the endpoint: the answer to a token request, or the
/// credential a start is sent upstream with.
async fn from_endpoint(
    endpoint: &TokenEndpoint,
    route: &Route,
    request: Request<ProxyBody>,
) -> Result<Applied, Refusal> {
    let token = endpoint.token().await.map_err(|error| {
        tracing::warn!(%error, "no token from the token endpoint");
        Refusal::TokenEndpointFailed
    })?;
    if matches!(route, Route::GenerateToken) {
        return Ok(Applied::Answer(json_response(
            http::StatusCode::OK,
            token.generate_answer(),
        )));
    }
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.token))
        .map_err(|_| Refusal::TokenEndpointFailed)?;
    authorization.set_sensitive(true);
    let (mut parts, body) = request.into_parts();
    parts.headers.insert(header::AUTHORIZATION, authorization);
    Ok(Applied::Forward(Request::from_parts(parts, body)))
}

/// `Bearer <token>` of a token minted for `user_id` with the secret.
async fn mint_bound(
    secret: &HeaderValue,
    upstream: &Upstream,
    user_id: &str,
) -> Result<HeaderValue, Refusal> {
    let uri: http::Uri = "/v3/directline/tokens/generate"
        .parse()
        .map_err(|_| Refusal::MintFailed)?;
    let request = Request::builder()
        .method(http::Method::POST)
        .uri(upstream.url_for(&uri).map_err(|_| Refusal::MintFailed)?)
        .header(header::AUTHORIZATION, secret.clone())
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .body(full(json!({"user": {"id": user_id}}).to_string()))
        .map_err(|_| Refusal::MintFailed)?;
    let response = upstream
        .send(request, "generate_token")
        .await
        .map_err(|_| Refusal::MintFailed)?;
    if !response.status().is_success() {
        tracing::warn!(status = %response.status(), "minting a bound token for a start failed");
        return Err(Refusal::MintFailed);
    }
    let body = response.into_body().map_err(BoxError::from).boxed();
    let body = tokio::time::timeout(upstream.request_timeout(), read_small(body))
        .await
        .ok()
        .flatten()
        .ok_or(Refusal::MintFailed)?;
    let token = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_string))
        .ok_or(Refusal::MintFailed)?;
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Refusal::MintFailed)?;
    value.set_sensitive(true);
    Ok(value)
}

fn bound_user_id(binding: &UserBinding, headers: &HeaderMap) -> Result<String, Refusal> {
    // Exactly one: an ingress that appends rather than replaces must not
    // let a client-sent value through.
    let user = single_value(headers, &binding.header)
        .and_then(bearer_value)
        .ok_or(Refusal::NoUser)?;
    let tag = hmac::sign(&binding.key, user.as_bytes());
    Ok(format!("dl_{}", hex(&tag.as_ref()[..16])))
}

/// `dl_` and 32 random hex digits: a user id no client chose.
fn random_user_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(format!("dl_{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The client's JSON body with `user.id` replaced; other fields are kept.
async fn bind_user(body: ProxyBody, user_id: &str) -> Result<Bytes, Refusal> {
    let bad = || Refusal::BadBody;
    let bytes = read_small(body).await.ok_or_else(bad)?;
    let mut value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&bytes).map_err(|_| bad())?
    };
    let object = value.as_object_mut().ok_or_else(bad)?;
    let user = object.entry("user").or_insert_with(|| json!({}));
    if !user.is_object() {
        *user = json!({});
    }
    user["id"] = json!(user_id);
    Ok(Bytes::from(value.to_string()))
}

/// The whole body, or `None` past [`MAX_MINT_BODY_BYTES`] or on a read error.
async fn read_small(mut body: ProxyBody) -> Option<Bytes> {
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if bytes.len() + data.len() > MAX_MINT_BODY_BYTES {
                return None;
            }
            bytes.extend_from_slice(&data);
        }
    }
    Some(bytes.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binding_replaces_the_user_id_and_keeps_other_fields() {
        let body = full(r#"{"user":{"id":"dl_chosen","name":"x"},"trustedOrigins":["https://a"]}"#);
        let bound: Value =
            serde_json::from_slice(&bind_user(body, "dl_bound").await.expect("ok")).expect("json");
        assert_eq!(bound["user"]["id"], "dl_bound");
        assert_eq!(bound["user"]["name"], "x");
        assert_eq!(bound["trustedOrigins"][0], "https://a");
        let empty: Value =
            serde_json::from_slice(&bind_user(full(""), "dl_b").await.expect("ok")).expect("json");
        assert_eq!(empty, json!({"user": {"id": "dl_b"}}));
        assert!(bind_user(full("[1]"), "dl_b").await.is_err());
        assert!(bind_user(full("{not json"), "dl_b").await.is_err());
    }

    #[test]
    fn random_user_ids_are_direct_line_ids_and_differ() {
        let a = random_user_id().expect("randomness");
        assert!(a.starts_with("dl_") && a.len() == 35, "{a}");
        assert_ne!(Some(a), random_user_id());
    }

    fn upstream() -> Upstream {
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        Upstream::new(&crate::config::UpstreamConfig::default(), metrics).expect("upstream")
    }

    #[test]
    fn the_secret_comes_from_the_named_environment_variable() {
        let env = |var: &str| (var == "DL_SECRET").then(|| " the-secret\n".to_string());
        let config = DirectLineConfig {
            secret_env: Some("DL_SECRET".into()),
            ..DirectLineConfig::default()
        };
        let upstream = upstream();
        let credentials = ServerCredentials::from_config(&config, env, &upstream)
            .expect("loads")
            .expect("configured");
        assert!(
            matches!(&credentials.source, TokenSource::Secret(secret) if secret == "Bearer the-secret")
        );
        let missing = DirectLineConfig {
            secret_env: Some("DL_SECRET_NOT_SET".into()),
            ..DirectLineConfig::default()
        };
        let error = ServerCredentials::from_config(&missing, env, &upstream)
            .err()
            .expect("error");
        assert_eq!(
            error.to_string(),
            "directline.secret_env: environment variable DL_SECRET_NOT_SET is not set or empty"
        );
    }
}
