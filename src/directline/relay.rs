//! Moving WebSocket messages between the client and the upstream.
//!
//! Written over any `Stream + Sink` of tungstenite messages, so it can be
//! tested without sockets. Each direction is a pump that awaits its send
//! before reading on: a slow reader on one side pauses reading from the
//! other (bounded buffering) without stopping the opposite direction.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use super::inspect::Inspector;
use crate::metrics::RelayCounters;

pub struct RelaySettings {
    /// How long the second half of a close handshake may take.
    pub close_timeout: Duration,
    /// Cancelled when the proxy shuts down: both sides get 1001.
    pub shutdown: CancellationToken,
    /// What every text frame from the bot passes through.
    pub inspector: Inspector,
    pub counters: RelayCounters,
}

/// How a relayed stream ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    ClientClosed,
    UpstreamClosed,
    ClientLost,
    UpstreamLost,
    /// A frame or message over `websocket.max_frame_bytes` or
    /// `max_message_bytes`: closed with 1009 on both sides.
    TooBig,
    Shutdown,
}

impl Outcome {
    /// Whether a side vanished without a close handshake.
    pub fn lost(self) -> bool {
        matches!(self, Outcome::ClientLost | Outcome::UpstreamLost)
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    ToUpstream,
    ToClient,
}

impl Direction {
    /// The close frame sent on when this direction's source vanished
    /// without a close handshake, so the other side knows to reconnect.
    fn lost_frame(self) -> CloseFrame {
        match self {
            Direction::ToUpstream => CloseFrame {
                code: CloseCode::Away,
                reason: "client connection lost".into(),
            },
            Direction::ToClient => CloseFrame {
                code: CloseCode::Error,
                reason: "upstream connection lost".into(),
            },
        }
    }

    fn outcome(self, closed_cleanly: bool) -> Outcome {
        match (self, closed_cleanly) {
            (Direction::ToUpstream, true) => Outcome::ClientClosed,
            (Direction::ToUpstream, false) => Outcome::ClientLost,
            (Direction::ToClient, true) => Outcome::UpstreamClosed,
            (Direction::ToClient, false) => Outcome::UpstreamLost,
        }
    }

    /// How the destination ended, judged by the error of a send to it: a
    /// send after that side's close handshake began is a clean end.
    fn destination_ended(self, error: &WsError) -> Outcome {
        let closed = matches!(
            error,
            WsError::AlreadyClosed
                | WsError::ConnectionClosed
                | WsError::Protocol(ProtocolError::SendAfterClosing)
        );
        match (self, closed) {
            (Direction::ToUpstream, true) => Outcome::UpstreamClosed,
            (Direction::ToUpstream, false) => Outcome::UpstreamLost,
            (Direction::ToClient, true) => Outcome::ClientClosed,
            (Direction::ToClient, false) => Outcome::ClientLost,
        }
    }

    /// Counts what arrived, before inspection: the frames the proxy relays.
    fn count(self, message: &Message, counters: &RelayCounters) {
        let (frames, bytes) = match self {
            Direction::ToClient => (&counters.frames_to_client, &counters.bytes_to_client),
            Direction::ToUpstream => (&counters.frames_to_bot, &counters.bytes_to_bot),
        };
        frames.inc();
        bytes.inc_by(message.len() as u64);
    }

    async fn prepare(self, message: Message, inspector: &Inspector) -> Message {
        match (self, message) {
            (Direction::ToClient, Message::Text(text)) => {
                Message::Text(inspector.bot_text(text).await)
            }
            (_, message) => message,
        }
    }
}

/// Relays until one side closes or is lost, then lets the other side finish
/// its close handshake within the close timeout.
pub async fn run<C, U>(client: C, upstream: U, settings: RelaySettings) -> Outcome
where
    C: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    U: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let (mut client_tx, mut client_rx) = client.split();
    let (mut upstream_tx, mut upstream_rx) = upstream.split();
    let outcome = {
        let to_upstream = pump(
            &mut client_rx,
            &mut upstream_tx,
            Direction::ToUpstream,
            &settings,
        );
        let to_client = pump(
            &mut upstream_rx,
            &mut client_tx,
            Direction::ToClient,
            &settings,
        );
        tokio::pin!(to_upstream, to_client);
        tokio::select! {
            outcome = &mut to_upstream => {
                let _ = tokio::time::timeout(settings.close_timeout, to_client).await;
                outcome
            }
            outcome = &mut to_client => {
                let _ = tokio::time::timeout(settings.close_timeout, to_upstream).await;
                outcome
            }
            () = settings.shutdown.cancelled() => Outcome::Shutdown,
        }
    };
    if outcome == Outcome::Shutdown {
        let going_away = || {
            Message::Close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "proxy shutting down".into(),
            }))
        };
        let close_both = async {
            let _ = tokio::join!(client_tx.send(going_away()), upstream_tx.send(going_away()));
            tokio::join!(drain(&mut client_rx), drain(&mut upstream_rx));
        };
        let _ = tokio::time::timeout(settings.close_timeout, close_both).await;
    }
    outcome
}

async fn pump<S, K>(
    source: &mut S,
    sink: &mut K,
    direction: Direction,
    settings: &RelaySettings,
) -> Outcome
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
    K: Sink<Message, Error = WsError> + Unpin,
{
    let mut next = source.next().await;
    loop {
        match next {
            Some(Ok(Message::Close(frame))) => {
                let _ = sink.send(Message::Close(frame)).await;
                drain(source).await;
                return direction.outcome(true);
            }
            Some(Ok(message)) => {
                direction.count(&message, &settings.counters);
                let message = match prepare_flushing(direction, message, settings, sink).await {
                    Ok(message) => message,
                    Err(error) => return direction.destination_ended(&error),
                };
                if let Err(error) = sink.feed(message).await {
                    return direction.destination_ended(&error);
                }
                // Flush only when no further message is already waiting, so a
                // burst goes out in few writes and a lone message at once.
                next = match source.next().now_or_never() {
                    Some(item) => item,
                    None => {
                        if let Err(error) = sink.flush().await {
                            return direction.destination_ended(&error);
                        }
                        source.next().await
                    }
                };
                continue;
            }
            Some(Err(WsError::Capacity(error))) => {
                tracing::info!(?direction, %error, "WebSocket message over the limit: closing with 1009");
                let _ = sink.send(Message::Close(Some(too_big_frame()))).await;
                return Outcome::TooBig;
            }
            Some(Err(error)) => {
                tracing::debug!(?direction, %error, "WebSocket read failed");
                let _ = sink
                    .send(Message::Close(Some(direction.lost_frame())))
                    .await;
                return direction.outcome(false);
            }
            None => {
                let _ = sink
                    .send(Message::Close(Some(direction.lost_frame())))
                    .await;
                return direction.outcome(false);
            }
        }
    }
}

/// RFC 6455 section 7.4.1: 1009, a message too big to process. The other
/// side hears it; the side that sent the message gets the echo of the
/// close handshake through the relay.
fn too_big_frame() -> CloseFrame {
    CloseFrame {
        code: CloseCode::Size,
        reason: "message too big".into(),
    }
}

/// Inspects `message`; when the inspection has to wait (an SSO decision),
/// what was fed before it is flushed first, so a batch never waits on it.
async fn prepare_flushing<K>(
    direction: Direction,
    message: Message,
    settings: &RelaySettings,
    sink: &mut K,
) -> Result<Message, WsError>
where
    K: Sink<Message, Error = WsError> + Unpin,
{
    let mut prepared = std::pin::pin!(direction.prepare(message, &settings.inspector));
    let first = std::future::poll_fn(|cx| Poll::Ready(prepared.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(message) => Ok(message),
        Poll::Pending => {
            sink.flush().await?;
            Ok(prepared.await)
        }
    }
}

/// Reads until the stream ends, so the close reply tungstenite queued gets
/// written.
async fn drain<S>(source: &mut S)
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    while let Some(Ok(_)) = source.next().await {}
}
