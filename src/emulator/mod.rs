//! A local Direct Line 3.0 emulator with a scripted bot.
//!
//! It speaks the REST API and the WebSocket stream of Direct Line 3.0 (see
//! `docs/protocol.md`) closely enough that the proxy's tests can compare answers
//! through the proxy with direct ones, and it records everything it receives
//! so tests can assert on what the proxy sent upstream.
//!
//! Decisions where real Direct Line is not documented:
//! - Starting a conversation appends the bot's welcome message (watermark
//!   "0"); no `conversationUpdate` is shown to the client, as with real
//!   Direct Line, which delivers those to the bot only.
//! - Watermarks are sequence numbers; typing activities take a number but
//!   are stream-only, so watermarks can skip (see `conversation`).
//! - A stream replay is sent only when something follows the watermark.
//! - An older socket is closed by a newer one with code
//!   [`COLLISION_CLOSE_CODE`] (1000) and reason `collision`.
//! - An activity over 256K characters is 413 `MessageSizeTooBig`.
//! - A successful `signin/tokenExchange` POST answers 200 with the bot's
//!   invoke body `{id, connectionName, failureDetail: null}` (the `id` is
//!   the exchange id), as observed with botbuilder; other activities answer
//!   `{id}` with the activity id.
//! - Token post (`/sas/{id}`): 200 signed in, 404 unknown or already used,
//!   400 no `token` in the body, 401 token not accepted.
//! - Invokes are logged like any user activity: echoed on the stream and
//!   returned by polling, with the id the POST would otherwise return.
//! - Uploaded files are served back, without auth, from
//!   `/v3/directline/attachments/{id}` (their `contentUrl`).
//! - CORS: preflights get 200 and every answer to a request with `Origin`
//!   echoes it with credentials allowed.
//! - A Copilot Studio agent's token endpoint and regional channel settings
//!   are served too (see `copilot`), naming this emulator as the regional
//!   base.

mod activity;
mod auth;
mod bot;
mod cards;
mod conversation;
mod copilot;
mod error;
mod multipart;
mod respond;
mod rest;
mod rough;
mod sas;
mod server;
mod state;
mod stream;
mod tokens;
mod upload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub use bot::{BOT_ID, BOT_NAME, SIGNED_IN, WELCOME};
pub use cards::{CONNECTION_NAME, EXCHANGE_URI, OAUTH_CARD, PROVIDER_ID};
pub use conversation::{COLLISION_CLOSE_CODE, COLLISION_CLOSE_REASON};
pub use copilot::AGENT_TOKEN_PATH;
pub use error::EmulatorError;

use state::{EmulatorState, lock};

/// How the emulator listens and behaves.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen; `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// The Direct Line secret the emulator accepts.
    pub secret: String,
    /// Lifetime of conversation tokens (`expires_in`).
    pub token_ttl: Duration,
    /// Empty `""` text messages on every open stream; `None` = off.
    pub keepalive_interval: Option<Duration>,
    /// User tokens the bot accepts in `signin/tokenExchange` and token post.
    pub accepted_sso_tokens: Vec<String>,
    /// How long the bot "thinks" before answering a message.
    pub bot_delay: Duration,
    /// Behave like the real service's rougher edges rather than the
    /// compliant minimum: indented JSON with `\/` escapes in REST answers
    /// and stream messages, gzip when the request accepts it,
    /// `permessage-deflate` accepted when a handshake offers it, and GUID
    /// user ids for conversations started without one (see `rough`).
    pub rough: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret: "emulator-secret".into(),
            token_ttl: Duration::from_secs(1800),
            keepalive_interval: Some(Duration::from_secs(15)),
            accepted_sso_tokens: vec!["demo-user-token".into()],
            bot_delay: Duration::ZERO,
            rough: false,
        }
    }
}

/// One HTTP request as the emulator received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: http::Method,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    /// The body, cut at 4 MiB.
    pub body: Bytes,
}

/// A running emulator. Dropping it stops the listener too.
pub struct Emulator {
    state: Arc<EmulatorState>,
    shutdown: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Binds the listener and starts serving in the background.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        Self::start_with(config, true).await
    }

    async fn start_with(
        config: EmulatorConfig,
        recording: bool,
    ) -> Result<Emulator, EmulatorError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| EmulatorError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(EmulatorError::LocalAddr)?;
        let state = Arc::new(EmulatorState::new(config, addr, recording));
        let (shutdown, stop) = watch::channel(false);
        let server = tokio::spawn(server::serve(listener, state.clone(), stop));
        Ok(Emulator {
            state,
            shutdown,
            server: Some(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        self.state.base_url()
    }

    pub fn secret(&self) -> &str {
        &self.state.config.secret
    }

    /// Every HTTP request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// Every WebSocket message clients sent on this conversation's streams.
    pub fn stream_messages_received(&self, conversation_id: &str) -> Vec<Message> {
        self.state
            .conversation(conversation_id)
            .map(|c| c.received())
            .unwrap_or_default()
    }

    /// Sends a raw message on the conversation's open socket; false if none
    /// is open or the write failed.
    pub async fn send_stream_message(&self, conversation_id: &str, msg: Message) -> bool {
        let Some(done) = self
            .state
            .conversation(conversation_id)
            .and_then(|c| c.send_raw(msg))
        else {
            return false;
        };
        done.await.unwrap_or(false)
    }

    /// Drops every open socket without a close frame, like a dying upstream.
    pub fn drop_streams(&self) {
        for conversation in self.state.all_conversations() {
            conversation.abort_stream();
        }
    }

    /// The invoke activities posted on this conversation, in order.
    pub fn invokes_received(&self, conversation_id: &str) -> Vec<serde_json::Value> {
        self.state
            .conversation(conversation_id)
            .map(|c| c.invokes())
            .unwrap_or_default()
    }

    /// Every token post: path and query, and the body (as JSON, or as a JSON
    /// string when it was not JSON).
    pub fn token_posts_received(&self) -> Vec<(String, serde_json::Value)> {
        lock(&self.state.token_posts).clone()
    }

    /// Stops listening and closes every socket (with a 1001 close frame,
    /// aborting those that do not finish within a second).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        let away = || CloseFrame {
            code: CloseCode::Away,
            reason: "shutdown".into(),
        };
        for conversation in self.state.all_conversations() {
            let _ = conversation.send_raw(Message::Close(Some(away())));
        }
        let mut tasks = std::mem::take(&mut *lock(&self.state.stream_tasks));
        let all_done = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(1), all_done)
            .await
            .is_err()
        {
            tasks.abort_all();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        lock(&self.state.stream_tasks).abort_all();
    }
}

/// Runs the emulator until ctrl-c; used by `directline-proxy emulator
/// --listen ADDR`. Prints the base URL and the secret to stdout. HTTP
/// requests are not recorded here (nobody can read them, and load tests
/// would make the record grow without bound).
pub async fn run_standalone(config: EmulatorConfig) -> Result<(), EmulatorError> {
    let emulator = Emulator::start_with(config, false).await?;
    println!("Direct Line emulator listening on {}", emulator.base_url());
    println!("Direct Line secret: {}", emulator.secret());
    println!("Direct Line domain: {}/v3/directline", emulator.base_url());
    let waited = tokio::signal::ctrl_c().await;
    emulator.shutdown().await;
    waited.map_err(EmulatorError::Signal)
}
