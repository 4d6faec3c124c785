//! The two ways a token reaches the bot: the `signin/tokenExchange` invoke
//! posted to the conversation, and the token post to the card's `sasUrl`.

use std::time::Duration;

use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use thiserror::Error;

use crate::body::full;
use crate::directline::activity::{OAuthCard, PROXY_INVOKE_MARKER};
use crate::telemetry;
use crate::upstream::{HttpClient, Upstream, UpstreamBody};

/// Everything but RFC 3986's unreserved characters is escaped in the
/// conversation id of the invoke's path.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub use crate::config::Flow;

impl Flow {
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
    let activity = InvokeActivity {
        kind: "invoke",
        name: "signin/tokenExchange",
        value: TokenExchange {
            id: exchange_id,
            connection_name: card.connection_name.as_deref().unwrap_or_default(),
            token: user_token,
        },
        from: From { id: target.user_id },
        channel_data: ChannelData {
            client_activity_id: client_activity_id(),
        },
    };
    let activity = serde_json::to_vec(&activity)
        .map_err(|e| ExchangeError::Transport(format!("invoke activity: {e}")))?;
    let path = format!(
        "/v3/directline/conversations/{}/activities",
        utf8_percent_encode(target.conversation_id, PATH_SEGMENT)
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
        .body(full(activity))
        .map_err(|e| ExchangeError::Transport(e.to_string()))?;
    let response = upstream
        .send(request, "sso_invoke")
        .await
        .map_err(|e| ExchangeError::Transport(e.to_string()))?;
    let status = response.status();
    // Read on success too: a body read to its end gives the upstream
    // connection back for the next request; one dropped unread closes it.
    let body = Limited::new(response.into_body(), MAX_INVOKE_ANSWER_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if status.is_success() {
        return Ok(());
    }
    Err(ExchangeError::Rejected(describe_refusal(status, &body)))
}

/// Direct Line answers an invoke with the bot's small JSON; anything larger
/// is not read whole (and not needed).
const MAX_INVOKE_ANSWER_BYTES: usize = 64 * 1024;

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

/// The `signin/tokenExchange` invoke, serialized straight from borrowed
/// fields in the order Direct Line clients write them.
#[derive(Serialize)]
struct InvokeActivity<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'static str,
    value: TokenExchange<'a>,
    from: From<'a>,
    #[serde(rename = "channelData")]
    channel_data: ChannelData,
}

#[derive(Serialize)]
struct TokenExchange<'a> {
    id: &'a str,
    #[serde(rename = "connectionName")]
    connection_name: &'a str,
    token: &'a str,
}

#[derive(Serialize)]
struct TokenPostBody<'a> {
    token: &'a str,
}

#[derive(Serialize)]
struct From<'a> {
    id: &'a str,
}

#[derive(Serialize)]
struct ChannelData {
    #[serde(rename = "clientActivityID")]
    client_activity_id: String,
}

/// Marks the proxy's invoke so its echo is recognised and never shown.
fn client_activity_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut random = [0u8; 12];
    let _ = SystemRandom::new().fill(&mut random);
    let mut id = String::with_capacity(PROXY_INVOKE_MARKER.len() + 2 * random.len());
    id.push_str(PROXY_INVOKE_MARKER);
    for byte in random {
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    id
}

/// Posts `{"token"}` to the card's `sasUrl`. 200 is success, and so are 202
/// and 404 (already signed in), as the Omnichannel widget treats them.
pub async fn token_post(
    client: &HttpClient,
    sas_url: &Uri,
    user_token: &str,
) -> Result<(), ExchangeError> {
    let body = serde_json::to_vec(&TokenPostBody { token: user_token })
        .map_err(|e| ExchangeError::Transport(format!("token post body: {e}")))?;
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(sas_url.clone())
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .body(full(body))
        .map_err(|e| ExchangeError::Transport(e.to_string()))?;
    telemetry::inject_current(request.headers_mut());
    let response = client
        .request(request)
        .await
        .map_err(|e| ExchangeError::Transport(format!("token post failed: {e}")))?;
    let status = response.status();
    // The status says how the post went. The answer is still read to its
    // end, so its connection is given back for the next post to that host
    // (one dropped unread is closed); on a task of its own, so a slow answer
    // does not hold the decision.
    tokio::spawn(drain(response.into_body()));
    match status {
        StatusCode::OK | StatusCode::ACCEPTED | StatusCode::NOT_FOUND => Ok(()),
        other => Err(ExchangeError::Rejected(other.to_string())),
    }
}

/// How much of a token post's answer is read, and for how long, before its
/// connection is closed instead of reused.
const MAX_TOKEN_POST_ANSWER_BYTES: usize = 64 * 1024;
const TOKEN_POST_ANSWER_TIME: Duration = Duration::from_secs(5);

/// Reads the answer frame by frame and keeps none: what it holds is one
/// frame, not the answer.
async fn drain(body: UpstreamBody) {
    let mut answer = Limited::new(body, MAX_TOKEN_POST_ANSWER_BYTES);
    let read_to_end = async { while let Some(Ok(_)) = answer.frame().await {} };
    let _ = tokio::time::timeout(TOKEN_POST_ANSWER_TIME, read_to_end).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::config::UpstreamConfig;
    use crate::metrics::Metrics;

    /// A `sasUrl` host answering every post with 200 and a body of
    /// `answer_bytes` on keep-alive connections; counts the connections it
    /// accepts.
    async fn token_post_target(answer_bytes: usize) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/sas", listener.local_addr().expect("addr"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer_posts(socket, answer_bytes));
            }
        });
        (url.parse().expect("uri"), accepted)
    }

    async fn answer_posts(mut socket: TcpStream, answer_bytes: usize) {
        let mut seen = Vec::new();
        let mut buffer = vec![0; 4096];
        loop {
            let Some(head_end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => seen.extend_from_slice(&buffer[..read]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&seen[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if seen.len() < head_end + 4 + length {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => seen.extend_from_slice(&buffer[..read]),
                }
                continue;
            }
            seen.drain(..head_end + 4 + length);
            let mut answer =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {answer_bytes}\r\n\r\n").into_bytes();
            answer.resize(answer.len() + answer_bytes, b'x');
            if socket.write_all(&answer).await.is_err() {
                return;
            }
        }
    }

    /// Posts `posts` times, one after another; how many connections the
    /// host accepted.
    async fn connections_for_posts(answer_bytes: usize, posts: usize) -> usize {
        let (sas_url, accepted) = token_post_target(answer_bytes).await;
        let upstream =
            Upstream::new(&UpstreamConfig::default(), Arc::new(Metrics::new())).expect("upstream");
        let client = upstream.client();
        for _ in 0..posts {
            token_post(&client, &sas_url, "user-token")
                .await
                .expect("posted");
            // The answer is read on a task of its own; let it finish.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        accepted.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn token_posts_to_one_host_reuse_its_connection() {
        let posts = 10;
        let connections = connections_for_posts(15, posts).await;
        assert!(
            connections < posts / 2,
            "{posts} token posts opened {connections} connections: answers left unread close them"
        );
    }

    #[tokio::test]
    async fn a_token_post_answer_far_over_the_limit_is_not_read_and_closes_its_connection() {
        // Far over: a last frame that crosses the limit may also hold the
        // answer's end, and then the connection is clean and reused.
        let posts = 3;
        let connections = connections_for_posts(16 * MAX_TOKEN_POST_ANSWER_BYTES, posts).await;
        assert_eq!(
            connections, posts,
            "each oversized answer closed its connection"
        );
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
