//! The WebSocket relay (`directline::relay::run`) between in-memory sockets,
//! with arbitrary bytes from the bot and from the client.
//!
//! The bot sends well-formed text messages (fragmented at arbitrary byte
//! boundaries), then arbitrary bytes. The client is either a well-behaved
//! WebSocket, which must receive every one of those messages unchanged and
//! in order, or arbitrary bytes. Either way the relay must end: the clock is
//! paused, so a relay that would wait forever fails at once.
//!
//! The relay reads in chunks of an arbitrary size (down to one byte), so
//! frames and headers are split at every point the input chooses.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use directline_proxy::directline::inspect::Inspector;
use directline_proxy::directline::relay::{self, FrameLimits, RelaySettings};
use directline_proxy::metrics::Metrics;
use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

/// Smallest frame limit the config allows, so oversized frames are reached.
const MAX_FRAME_BYTES: usize = 1024;
const SOCKET_BUFFER: usize = 4096;
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// On the paused clock: reached only when every task waits on nothing.
const HANG: Duration = Duration::from_secs(600);

#[derive(Arbitrary, Debug)]
struct Exchange {
    bot_texts: Vec<String>,
    /// Payload bytes per frame of a text message (1 to the frame limit).
    fragment: u16,
    /// The relay's read chunk (1 to 2048 bytes).
    read_chunk: u16,
    /// Sent by the bot after its texts: frames of any kind, or garbage.
    bot_tail: Vec<u8>,
    /// Empty: the client is a well-behaved WebSocket. Else what it sends.
    client_bytes: Vec<u8>,
}

fuzz_target!(|exchange: Exchange| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        tokio::time::timeout(HANG, relay_exchange(exchange))
            .await
            .expect("the relay never ended");
    });
});

async fn relay_exchange(exchange: Exchange) {
    let (client_end, client_far) = tokio::io::duplex(SOCKET_BUFFER);
    let (bot_end, bot_far) = tokio::io::duplex(SOCKET_BUFFER);
    let settings = RelaySettings {
        close_timeout: CLOSE_TIMEOUT,
        shutdown: CancellationToken::new(),
        inspector: Inspector::default(),
        counters: Metrics::new().relay_counters(),
        limits: FrameLimits {
            max_frame_bytes: MAX_FRAME_BYTES as u64,
            max_message_bytes: 2 * 1024 * 1024,
            read_chunk_bytes: usize::from(exchange.read_chunk) % 2048 + 1,
        },
    };
    let chunk = usize::from(exchange.fragment) % MAX_FRAME_BYTES + 1;
    let mut from_bot = Vec::new();
    for text in &exchange.bot_texts {
        encode_text(&mut from_bot, text.as_bytes(), chunk);
    }
    from_bot.extend_from_slice(&exchange.bot_tail);
    let relay = relay::run(client_end, bot_end, settings);
    let bot = exchange_raw(bot_far, &from_bot);
    if exchange.client_bytes.is_empty() {
        let (_, _, received) = tokio::join!(relay, bot, texts_received(client_far));
        assert!(
            received.starts_with(&exchange.bot_texts),
            "the client got {received:?}, not the bot's {:?} first",
            exchange.bot_texts
        );
    } else {
        tokio::join!(relay, bot, exchange_raw(client_far, &exchange.client_bytes));
    }
}

/// A server's (unmasked) text message, in frames of `chunk` payload bytes.
fn encode_text(out: &mut Vec<u8>, text: &[u8], chunk: usize) {
    const TEXT: u8 = 0x1;
    const CONTINUATION: u8 = 0x0;
    const FIN: u8 = 0x80;
    let pieces: Vec<&[u8]> = if text.is_empty() {
        vec![text]
    } else {
        text.chunks(chunk).collect()
    };
    for (index, piece) in pieces.iter().enumerate() {
        let opcode = if index == 0 { TEXT } else { CONTINUATION };
        let fin = if index + 1 == pieces.len() { FIN } else { 0 };
        out.push(fin | opcode);
        match piece.len() {
            length @ 0..=125 => out.push(length as u8),
            length => {
                out.push(126);
                out.extend_from_slice(&(length as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(piece);
    }
}

/// Sends `bytes` and ends the write side, reading (and dropping) whatever
/// comes back until the relay lets go of the socket.
async fn exchange_raw(socket: DuplexStream, bytes: &[u8]) {
    let (mut read, mut write) = tokio::io::split(socket);
    let send = async {
        let _ = write.write_all(bytes).await;
        let _ = write.shutdown().await;
    };
    tokio::join!(send, drain(&mut read));
}

async fn drain(read: &mut (impl AsyncRead + Unpin)) {
    let mut buffer = [0u8; 1024];
    while matches!(read.read(&mut buffer).await, Ok(n) if n > 0) {}
}

/// A well-behaved client: reads until the stream ends, answering the close
/// handshake, and returns the texts it got.
async fn texts_received(socket: impl AsyncRead + AsyncWrite + Unpin) -> Vec<String> {
    let mut client = WebSocketStream::from_raw_socket(socket, Role::Client, None).await;
    let mut texts = Vec::new();
    while let Some(Ok(message)) = client.next().await {
        if let Message::Text(text) = message {
            texts.push(text.to_string());
        }
    }
    texts
}
