//! The two ways a token reaches the bot: the `signin/tokenExchange` invoke
//! posted to the conversation, and the token post to the card's `sasUrl`.

use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::BodyExt;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;
use thiserror::Error;

use crate::body::full;
use crate::directline::activity::{OAuthCard, PROXY_INVOKE_MARKER};
use crate::upstream::{HttpClient, Upstream};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    Invoke,
    TokenPost,
}

impl Flow {
    pub fn parse(name: &str) -> Option<Flow> {
        match name {
            "invoke" => Some(Flow::Invoke),
            "token_post" => Some(Flow::TokenPost),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Invoke => "invoke",
            Flow::TokenPost => "token_post",
        }
    }

    /// Whether the card offers what this flow needs.
    pub fn fits(self, card: &OAuthCard) -> bool {
        match self {
            Flow::Invoke => card.exchange.is_some(),
            Flow::TokenPost => card.sas_url.is_some(),
        }
    }
}

#[derive(Debug, Error)]
pub enum ExchangeError {
    /// The bot (or token service) answered, and not with success.
    #[error("refused with {0}")]
    Rejected(String),
    /// No answer: network error or malformed request.
    #[error("{0}")]
    Transport(String),
}

/// What the invoke needs besides the card and the token.
pub struct InvokeTarget<'a> {
    pub conversation_id: &'a str,
    pub conversation_token: &'a str,
    pub user_id: &'a str,
}

/// Posts `signin/tokenExchange` as the conversation's user; 2xx is success.
pub async fn invoke(
    upstream: &Upstream,
    target: &InvokeTarget<'_>,
    card: &OAuthCard,
    user_token: &str,
) -> Result<(), ExchangeError> {
    let exchange_id = card
        .exchange
        .as_ref()
        .map(|e| e.id.as_str())
        .unwrap_or_default();
    let activity = json!({
        "type": "invoke",
        "name": "signin/tokenExchange",
        "value": {
            "id": exchange_id,
            "connectionName": card.connection_name.as_deref().unwrap_or_default(),
            "token": user_token,
        },
        "from": { "id": target.user_id },
        "channelData": { "clientActivityID": client_activity_id() },
    });
    let path = format!(
        "/v3/directline/conversations/{}/activities",
        target.conversation_id
    );
    let uri: Uri = path
        .parse()
        .map_err(|_| ExchangeError::Transport("conversation id is not URL-safe".into()))?;
    let uri = upstream
        .url_for(&uri)
        .map_err(|e| ExchangeError::Transport(e.to_string()))?;
    let authorization = HeaderValue::from_str(&format!("Bearer {}", target.conversation_token))
        .map_err(|_| ExchangeError::Transport("conversation token is not a header value".into()))?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::AUTHORIZATION, authorization)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .body(full(activity.to_string()))
        .map_err(|e| ExchangeError::Transport(e.to_string()))?;
    let response = upstream
        .send(request, "sso_invoke")
        .await
        .map_err(|e| ExchangeError::Transport(e.to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Err(ExchangeError::Rejected(describe_refusal(status, &body)))
}

/// Direct Line wraps the bot's own status in a 502 `BotError` body.
fn describe_refusal(status: StatusCode, body: &[u8]) -> String {
    let bot_status = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["httpStatusCode"].as_u64());
    match bot_status {
        Some(bot) => format!("{status} (bot answered {bot})"),
        None => status.to_string(),
    }
}

/// Marks the proxy's invoke so its echo is recognised and never shown.
fn client_activity_id() -> String {
    let mut random = [0u8; 12];
    let _ = SystemRandom::new().fill(&mut random);
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{PROXY_INVOKE_MARKER}{hex}")
}

/// Posts `{"token"}` to the card's `sasUrl`. 200 is success, and so are 202
/// and 404 (already signed in), as the Omnichannel widget treats them.
pub async fn token_post(
    client: &HttpClient,
    sas_url: &Uri,
    user_token: &str,
) -> Result<(), ExchangeError> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(sas_url.clone())
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .body(full(json!({ "token": user_token }).to_string()))
        .map_err(|e| ExchangeError::Transport(e.to_string()))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| ExchangeError::Transport(format!("token post failed: {e}")))?;
    match response.status() {
        StatusCode::OK | StatusCode::ACCEPTED | StatusCode::NOT_FOUND => Ok(()),
        other => Err(ExchangeError::Rejected(other.to_string())),
    }
}

/// Hosts a `sasUrl` may point at.
pub struct AllowList {
    exact: Vec<String>,
    suffixes: Vec<String>,
}

impl AllowList {
    pub fn new(hosts: &[String]) -> AllowList {
        let (wild, exact): (Vec<&String>, Vec<&String>) =
            hosts.iter().partition(|h| h.starts_with("*."));
        AllowList {
            exact: exact.iter().map(|h| h.to_ascii_lowercase()).collect(),
            suffixes: wild.iter().map(|h| h[1..].to_ascii_lowercase()).collect(),
        }
    }

    /// `*.example.com` allows `a.example.com`, not `example.com` itself.
    /// The token travels only over https, except to a loopback address
    /// (local development and tests).
    pub fn permits(&self, url: &Uri) -> bool {
        let Some(host) = url.host().map(str::to_ascii_lowercase) else {
            return false;
        };
        let secure = url.scheme_str() == Some("https") || is_loopback(&host);
        let listed =
            self.exact.contains(&host) || self.suffixes.iter().any(|s| host.ends_with(s.as_str()));
        secure && listed
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(hosts: &[&str]) -> AllowList {
        AllowList::new(&hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
    }

    fn uri(s: &str) -> Uri {
        s.parse().expect("uri")
    }

    #[test]
    fn allow_list_matches_exact_hosts_and_subdomain_wildcards() {
        let list = allow(&["token.botframework.com", "*.example.com"]);
        assert!(list.permits(&uri("https://token.botframework.com/api/x")));
        assert!(list.permits(&uri("https://TOKEN.botframework.com:443/x")));
        assert!(list.permits(&uri("https://a.example.com/x")));
        assert!(list.permits(&uri("https://b.a.example.com/x")));
        assert!(!list.permits(&uri("https://example.com/x")));
        assert!(!list.permits(&uri("https://evil-example.com/x")));
        assert!(!list.permits(&uri("https://token.botframework.com.evil.io/x")));
        assert!(!list.permits(&uri("/relative")));
    }

    #[test]
    fn the_token_goes_over_https_only_except_to_loopback() {
        let list = allow(&["token.botframework.com", "127.0.0.1", "localhost"]);
        assert!(!list.permits(&uri("http://token.botframework.com/x")));
        assert!(list.permits(&uri("http://127.0.0.1:3978/sas/x")));
        assert!(list.permits(&uri("http://localhost/sas/x")));
    }

    #[test]
    fn refusals_name_the_bots_own_status() {
        let body = br#"{"error":{"code":"BotError"},"httpStatusCode":412}"#;
        assert_eq!(
            describe_refusal(StatusCode::BAD_GATEWAY, body),
            "502 Bad Gateway (bot answered 412)"
        );
        assert_eq!(
            describe_refusal(StatusCode::BAD_REQUEST, b""),
            "400 Bad Request"
        );
    }

    #[test]
    fn proxy_invokes_carry_the_marker() {
        assert!(client_activity_id().starts_with(PROXY_INVOKE_MARKER));
        assert_ne!(client_activity_id(), client_activity_id());
    }
}
