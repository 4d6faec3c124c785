//! Copilot Studio agents hand out Direct Line tokens from a token endpoint
//! (`[directline] token_endpoint`) instead of from a secret, and are served
//! by a regional Direct Line base that Power Platform names.
//!
//! A token is fetched with a plain `GET` of the endpoint, which answers
//! `{token, expires_in, conversationId}`. The regional base is
//! `channelUrlsById.directline` of `/powervirtualagents/regionalchannelsettings`
//! on the endpoint's host; it is kept for [`REGIONAL_BASE_TTL`] and then
//! looked up again, so any replica finds it by itself and a move of the
//! agent to another region is followed within minutes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::json;
use thiserror::Error;

use crate::body::empty;
use crate::config::DirectLineConfig;
use crate::metrics::Metrics;
use crate::upstream::{HttpClient, Upstream};

/// How long a looked-up regional base is used before it is looked up again.
pub const REGIONAL_BASE_TTL: Duration = Duration::from_secs(300);

/// After a failed lookup, how long the last known base is used before the
/// next try: a Power Platform outage must not add a lookup to every request.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// The API version of the regional settings when the endpoint names none.
const DEFAULT_API_VERSION: &str = "2022-03-01-preview";

/// A token or settings answer larger than this is not one.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum TokenEndpointError {
    #[error("directline.token_endpoint is not a usable URL")]
    BadUrl,
    #[error("the token endpoint did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the token endpoint could not be reached: {0}")]
    Transport(String),
    #[error("the token endpoint answered {0}")]
    Status(StatusCode),
    #[error("the token endpoint's answer has no usable {0}")]
    BadAnswer(&'static str),
    #[error("no regional base: the last lookup failed moments ago")]
    RecentlyFailed,
}

/// What the endpoint hands out: a Direct Line token for a new conversation.
#[derive(Debug, Deserialize)]
pub struct EndpointToken {
    pub token: String,
    #[serde(rename = "conversationId")]
    pub conversation_id: Option<String>,
    pub expires_in: Option<u64>,
}

impl EndpointToken {
    /// The answer Direct Line's own `tokens/generate` gives.
    pub fn generate_answer(&self) -> String {
        json!({
            "conversationId": self.conversation_id,
            "token": self.token,
            "expires_in": self.expires_in,
        })
        .to_string()
    }
}

#[derive(Deserialize)]
struct RegionalSettings {
    #[serde(rename = "channelUrlsById")]
    channel_urls_by_id: ChannelUrls,
}

#[derive(Deserialize)]
struct ChannelUrls {
    directline: String,
}

/// The last lookup's outcome: a base (the last known one after a failure),
/// or none when no lookup has succeeded yet.
struct Regional {
    base: Option<Uri>,
    good_until: Instant,
}

/// What the cache says before a lookup.
enum Cached {
    Fresh,
    RecentlyFailed,
    Expired,
}

pub struct TokenEndpoint {
    token_url: Uri,
    settings_url: Uri,
    /// `directline.token_endpoint_hosts`: the only hosts a regional base
    /// may name over plain http.
    http_hosts: Vec<String>,
    client: HttpClient,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// [`REGIONAL_BASE_TTL`]; shorter in tests.
    regional_ttl: Duration,
    regional: Mutex<Option<Regional>>,
    /// One lookup at a time; the others wait for its result.
    lookup: tokio::sync::Mutex<()>,
}

impl TokenEndpoint {
    /// `None` without `directline.token_endpoint`. Calls go through the
    /// upstream's connection pool, bounded by its request timeout.
    pub fn from_config(
        config: &DirectLineConfig,
        upstream: &Upstream,
    ) -> Result<Option<TokenEndpoint>, TokenEndpointError> {
        let Some(token_url) = config.token_endpoint.clone() else {
            return Ok(None);
        };
        Ok(Some(TokenEndpoint {
            settings_url: settings_url(&token_url)?,
            token_url,
            http_hosts: config.token_endpoint_hosts.clone(),
            client: upstream.client(),
            metrics: upstream.metrics(),
            timeout: upstream.request_timeout(),
            regional_ttl: REGIONAL_BASE_TTL,
            regional: Mutex::new(None),
            lookup: tokio::sync::Mutex::new(()),
        }))
    }

    /// A fresh token from the endpoint.
    pub async fn token(&self) -> Result<EndpointToken, TokenEndpointError> {
        let body = self.get(&self.token_url, "token_endpoint").await?;
        let token: EndpointToken =
            serde_json::from_slice(&body).map_err(|_| TokenEndpointError::BadAnswer("token"))?;
        if token.token.is_empty() {
            return Err(TokenEndpointError::BadAnswer("token"));
        }
        Ok(token)
    }

    /// Points `upstream` at the agent's regional base, looked up when the
    /// last lookup is older than [`REGIONAL_BASE_TTL`]. A failed lookup
    /// keeps the last known base; without one, requests fail at once for
    /// [`RETRY_AFTER_FAILURE`] rather than each waiting for a lookup of
    /// its own.
    pub async fn use_regional_base(&self, upstream: &Upstream) -> Result<(), TokenEndpointError> {
        if self.still_decided()? {
            return Ok(());
        }
        let _lookup = self.lookup.lock().await;
        if self.still_decided()? {
            return Ok(());
        }
        let known = self.known();
        match self.regional_base().await {
            Ok(base) => {
                tracing::info!(%base, "Direct Line regional base from the token endpoint's host");
                upstream.set_base(base.clone());
                self.remember(Some(base), self.regional_ttl);
                Ok(())
            }
            Err(error) if known.is_some() => {
                tracing::warn!(%error, "regional base lookup failed: the last one is kept");
                self.remember(known, RETRY_AFTER_FAILURE);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, "no Direct Line regional base");
                self.remember(None, RETRY_AFTER_FAILURE);
                Err(error)
            }
        }
    }

    /// `true` while the cached base is good, an error while a recent
    /// failure stands, `false` when a lookup is due.
    fn still_decided(&self) -> Result<bool, TokenEndpointError> {
        match self.cached() {
            Cached::Fresh => Ok(true),
            Cached::RecentlyFailed => Err(TokenEndpointError::RecentlyFailed),
            Cached::Expired => Ok(false),
        }
    }

    fn cached(&self) -> Cached {
        let Ok(regional) = self.regional.lock() else {
            return Cached::Expired;
        };
        match regional.as_ref() {
            Some(r) if Instant::now() < r.good_until => match r.base {
                Some(_) => Cached::Fresh,
                None => Cached::RecentlyFailed,
            },
            _ => Cached::Expired,
        }
    }

    /// The last base looked up, however old.
    fn known(&self) -> Option<Uri> {
        let regional = self.regional.lock().ok()?;
        regional.as_ref().and_then(|r| r.base.clone())
    }

    fn remember(&self, base: Option<Uri>, good_for: Duration) {
        if let Ok(mut regional) = self.regional.lock() {
            *regional = Some(Regional {
                base,
                good_until: Instant::now() + good_for,
            });
        }
    }

    async fn regional_base(&self) -> Result<Uri, TokenEndpointError> {
        let body = self.get(&self.settings_url, "regional_settings").await?;
        let settings: RegionalSettings = serde_json::from_slice(&body)
            .map_err(|_| TokenEndpointError::BadAnswer("channelUrlsById.directline"))?;
        let base: Uri = settings
            .channel_urls_by_id
            .directline
            .parse()
            .map_err(|_| TokenEndpointError::BadAnswer("channelUrlsById.directline"))?;
        let host = base.host().unwrap_or_default();
        let scheme_ok = match base.scheme_str() {
            Some("https") => true,
            Some("http") => self.http_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)),
            _ => false,
        };
        if !scheme_ok || host.is_empty() || base.query().is_some() {
            return Err(TokenEndpointError::BadAnswer("channelUrlsById.directline"));
        }
        Ok(base)
    }

    /// The body of a 2xx answer to `GET url`, all within the timeout;
    /// counted as an upstream call on `route`.
    async fn get(&self, url: &Uri, route: &'static str) -> Result<Bytes, TokenEndpointError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(url.clone())
            .header(header::ACCEPT, "application/json")
            .body(empty())
            .map_err(|_| TokenEndpointError::BadUrl)?;
        let timed_out = || TokenEndpointError::Timeout(self.timeout);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let started = Instant::now();
        let head = tokio::time::timeout_at(deadline, self.client.request(request)).await;
        let status = match &head {
            Ok(Ok(response)) => Some(response.status()),
            _ => None,
        };
        self.metrics
            .upstream_request(route, status, head.is_err(), started.elapsed());
        let response = head
            .map_err(|_| timed_out())?
            .map_err(|e| TokenEndpointError::Transport(e.to_string()))?;
        if !response.status().is_success() {
            return Err(TokenEndpointError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect();
        tokio::time::timeout_at(deadline, body)
            .await
            .map_err(|_| timed_out())?
            .map(|collected| collected.to_bytes())
            .map_err(|e| TokenEndpointError::Transport(e.to_string()))
    }
}

/// `/powervirtualagents/regionalchannelsettings` on the token endpoint's
/// host, with its `api-version`.
fn settings_url(token_url: &Uri) -> Result<Uri, TokenEndpointError> {
    let api_version = form_urlencoded::parse(token_url.query().unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "api-version")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_else(|| DEFAULT_API_VERSION.to_string());
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("api-version", &api_version)
        .finish();
    let mut parts = token_url.clone().into_parts();
    parts.path_and_query = Some(
        format!("/powervirtualagents/regionalchannelsettings?{query}")
            .parse()
            .map_err(|_| TokenEndpointError::BadUrl)?,
    );
    Uri::from_parts(parts).map_err(|_| TokenEndpointError::BadUrl)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::UpstreamConfig;
    use crate::metrics::Metrics;

    /// Answers one request with `body`, then stops listening.
    async fn answers_once(body: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 4096];
            let _ = tcp.read(&mut request).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(answer.as_bytes()).await;
        });
        format!("http://{addr}/powervirtualagents/botsbyschema/s/directline/token")
    }

    fn endpoint(url: String, upstream: &Upstream, ttl: Duration) -> TokenEndpoint {
        let config = DirectLineConfig {
            token_endpoint: Some(url.parse().expect("a URL")),
            token_endpoint_hosts: vec!["127.0.0.1".into(), "regional.test".into()],
            ..DirectLineConfig::default()
        };
        let mut endpoint = TokenEndpoint::from_config(&config, upstream)
            .expect("valid")
            .expect("configured");
        endpoint.regional_ttl = ttl;
        endpoint
    }

    #[tokio::test]
    async fn a_failed_lookup_keeps_the_last_regional_base_and_without_one_fails_fast() {
        let upstream =
            Upstream::new(&UpstreamConfig::default(), Arc::new(Metrics::new())).expect("upstream");
        let url =
            answers_once(r#"{"channelUrlsById":{"directline":"http://regional.test/"}}"#).await;
        let expired_at_once = endpoint(url.clone(), &upstream, Duration::ZERO);
        expired_at_once
            .use_regional_base(&upstream)
            .await
            .expect("looked up");
        assert_eq!(upstream.base().to_string(), "http://regional.test/");
        // The settings host is gone now: the next lookup fails.
        expired_at_once
            .use_regional_base(&upstream)
            .await
            .expect("the last base is kept");
        assert_eq!(upstream.base().to_string(), "http://regional.test/");
        let never_looked_up = endpoint(url, &upstream, REGIONAL_BASE_TTL);
        assert!(matches!(
            never_looked_up.use_regional_base(&upstream).await,
            Err(TokenEndpointError::Transport(_))
        ));
        // Later requests fail at once instead of each trying again.
        assert!(matches!(
            never_looked_up.use_regional_base(&upstream).await,
            Err(TokenEndpointError::RecentlyFailed)
        ));
    }

    #[test]
    fn the_regional_settings_are_on_the_token_endpoints_host_with_its_api_version() {
        let token: Uri = "https://e.environment.api.powerplatform.com/powervirtualagents/botsbyschema/s/directline/token?api-version=2022-03-01-preview"
            .parse()
            .expect("uri");
        assert_eq!(
            settings_url(&token).expect("url").to_string(),
            "https://e.environment.api.powerplatform.com/powervirtualagents/regionalchannelsettings?api-version=2022-03-01-preview"
        );
        let bare: Uri = "http://127.0.0.1:9/powervirtualagents/botsbyschema/s/directline/token"
            .parse()
            .expect("uri");
        assert_eq!(
            settings_url(&bare).expect("url").to_string(),
            format!(
                "http://127.0.0.1:9/powervirtualagents/regionalchannelsettings?api-version={DEFAULT_API_VERSION}"
            )
        );
    }

    #[test]
    fn the_generate_answer_has_direct_lines_shape() {
        let token: EndpointToken = serde_json::from_str(
            r#"{"token":"t","expires_in":3600,"conversationId":"c","extra":1}"#,
        )
        .expect("json");
        let answer: serde_json::Value =
            serde_json::from_str(&token.generate_answer()).expect("json");
        assert_eq!(
            answer,
            json!({"conversationId": "c", "token": "t", "expires_in": 3600})
        );
    }
}
