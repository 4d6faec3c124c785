//! The frame relay over in-memory sockets: byte fidelity under any
//! chunking, the card path, limits, protocol breaks, and idle memory.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::BoxFuture;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::directline::activity::{self, ActivitySet, Markers, OAUTH_CARD, card_set};
use crate::directline::filter::ConversationFilter;
use crate::metrics::{Metrics, RelayCounters};

const EXCHANGED_CARD: &str = "card-exchanged";
/// Far beyond what an in-memory relay needs; reached only if it hangs.
const PATIENCE: Duration = Duration::from_secs(10);

fn limits(read_chunk_bytes: usize) -> FrameLimits {
    FrameLimits {
        max_frame_bytes: 4096,
        max_message_bytes: 1024 * 1024,
        read_chunk_bytes,
    }
}

/// A filter that removes the card `EXCHANGED_CARD` (as sign-in does once
/// it exchanged that card) and leaves every other set unchanged: the relay
/// is tested against the filter contract; the real sign-in filter is tested
/// in `sso::filter` and end to end.
struct RemovesExchangedCard {
    markers: Markers,
}

impl ConversationFilter for RemovesExchangedCard {
    fn wants(&self, set: &[u8]) -> bool {
        self.markers.present(set)
    }

    fn filter<'a>(&'a self, bytes: &'a [u8]) -> BoxFuture<'a, Option<Vec<u8>>> {
        let rewritten = ActivitySet::parse(bytes).and_then(|set| {
            let findings = activity::scan(&set, &self.markers);
            let exchanged: Vec<_> = findings
                .cards
                .iter()
                .filter(|card| card.id() == Some(EXCHANGED_CARD))
                .collect();
            (!exchanged.is_empty()).then(|| activity::rewrite(&set, &findings, &exchanged))
        });
        Box::pin(std::future::ready(rewritten))
    }
}

fn sso_inspector() -> Inspector {
    Inspector::new(Arc::new(RemovesExchangedCard {
        markers: Markers::default(),
    }))
}

struct Wires {
    client: DuplexStream,
    bot: DuplexStream,
    shutdown: CancellationToken,
    relay: JoinHandle<StreamEnd>,
}

fn start(inspector: Inspector, limits: FrameLimits) -> Wires {
    start_counted(inspector, limits, Metrics::new().relay_counters())
}

fn start_counted(inspector: Inspector, limits: FrameLimits, counters: RelayCounters) -> Wires {
    let (client_end, client) = tokio::io::duplex(64 * 1024);
    let (bot_end, bot) = tokio::io::duplex(64 * 1024);
    let shutdown = CancellationToken::new();
    let settings = RelaySettings {
        close_timeout: Duration::from_secs(1),
        shutdown: shutdown.clone(),
        inspector,
        counters,
        limits,
    };
    let relay = tokio::spawn(run(client_end, bot_end, settings));
    Wires {
        client,
        bot,
        shutdown,
        relay,
    }
}

/// Reads exactly `len` bytes, or fails the test when they do not come.
async fn read_exactly(socket: &mut DuplexStream, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    tokio::time::timeout(PATIENCE, socket.read_exact(&mut bytes))
        .await
        .expect("the bytes arrive in time")
        .expect("the socket stays open");
    bytes
}

/// Reads until the relay lets go of the socket.
async fn read_to_end(socket: &mut DuplexStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    tokio::time::timeout(PATIENCE, socket.read_to_end(&mut bytes))
        .await
        .expect("the socket is closed in time")
        .expect("a clean end");
    bytes
}

/// Writes `bytes` in pieces split at `splits`, letting the relay read
/// between pieces.
async fn write_split(socket: &mut DuplexStream, bytes: &[u8], splits: &[usize]) {
    let mut from = 0;
    for &at in splits.iter().chain([&bytes.len()]) {
        let at = at.clamp(from, bytes.len());
        socket.write_all(&bytes[from..at]).await.expect("write");
        tokio::task::yield_now().await;
        from = at;
    }
}

fn text(payload: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    frame::encode(Opcode::Text, payload.as_bytes(), mask)
}

/// A frame with any FIN bit and opcode, as a peer may send it.
fn raw_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut bytes = frame::encode(Opcode::Binary, payload, mask);
    bytes[0] = if fin { 0x80 } else { 0 } | opcode;
    bytes
}

/// The whole frames at the start of `bytes`, payloads unmasked.
fn parse_frames(mut bytes: &[u8]) -> Vec<(Opcode, Vec<u8>)> {
    let mut frames = Vec::new();
    while let Ok(Some(header)) = Header::parse(bytes) {
        let end = header.frame_len() as usize;
        if end > bytes.len() {
            break;
        }
        let mut payload = bytes[header.header_len..end].to_vec();
        if let Some(mask) = header.mask {
            frame::apply_mask(&mut payload, mask);
        }
        frames.push((header.opcode, payload));
        bytes = &bytes[end..];
    }
    frames
}

fn close_code(frames: &[(Opcode, Vec<u8>)]) -> Option<u16> {
    frames
        .iter()
        .find(|(opcode, _)| *opcode == Opcode::Close)
        .map(|(_, payload)| u16::from_be_bytes([payload[0], payload[1]]))
}

/// Bot frames of every kind: short and extended lengths, a fragmented
/// binary with a ping inside, a pong, and a close at the end.
fn bot_sequence() -> Vec<u8> {
    let mut bytes = text(r#"{"activities":[{"type":"typing"}]}"#, None);
    bytes.extend(text(&"x".repeat(300), None));
    bytes.extend(raw_frame(false, 0x2, &[1, 2, 3], None));
    bytes.extend(raw_frame(true, 0x9, b"ping", None));
    bytes.extend(raw_frame(true, 0x0, &[4, 5], None));
    bytes.extend(raw_frame(true, 0xA, b"", None));
    bytes.extend(frame::close(1000, "bye", None));
    bytes
}

#[tokio::test]
async fn every_split_point_of_bot_frames_arrives_byte_identical() {
    let sequence = bot_sequence();
    for chunk in [1, 7, 4096] {
        for split in 0..=sequence.len() {
            let mut wires = start(Inspector::default(), limits(chunk));
            write_split(&mut wires.bot, &sequence, &[split]).await;
            let got = read_exactly(&mut wires.client, sequence.len()).await;
            assert_eq!(got, sequence, "split at {split}, chunk {chunk}");
        }
    }
}

#[tokio::test]
async fn frames_and_their_payload_bytes_are_counted_closes_not() {
    let metrics = Metrics::new();
    let mut wires = start_counted(Inspector::default(), limits(7), metrics.relay_counters());
    let sequence = bot_sequence();
    write_split(&mut wires.bot, &sequence, &[]).await;
    read_exactly(&mut wires.client, sequence.len()).await;
    let counters = metrics.relay_counters();
    // Two texts, a fragmented binary (2 frames), a ping and a pong.
    assert_eq!(counters.frames_to_client.get(), 6);
    let payloads = r#"{"activities":[{"type":"typing"}]}"#.len() + 300 + 3 + 4 + 2;
    assert_eq!(counters.bytes_to_client.get(), payloads as u64);
}

#[tokio::test]
async fn with_sso_on_frames_without_a_card_arrive_byte_identical_at_every_split() {
    let sequence = bot_sequence();
    for split in 0..=sequence.len() {
        let mut wires = start(sso_inspector(), limits(5));
        write_split(&mut wires.bot, &sequence, &[split]).await;
        let got = read_exactly(&mut wires.client, sequence.len()).await;
        assert_eq!(got, sequence, "split at {split}");
    }
}

#[tokio::test]
async fn masked_client_frames_go_on_with_the_clients_mask() {
    let mask = [0xA1, 0xB2, 0xC3, 0xD4];
    let mut sequence = text("hello bot", Some(mask));
    sequence.extend(raw_frame(false, 0x1, b"frag", Some([9, 8, 7, 6])));
    sequence.extend(raw_frame(true, 0x0, b"ment", Some([1, 1, 1, 1])));
    for split in 0..=sequence.len() {
        let mut wires = start(Inspector::default(), limits(3));
        write_split(&mut wires.client, &sequence, &[split]).await;
        let got = read_exactly(&mut wires.bot, sequence.len()).await;
        assert_eq!(got, sequence, "split at {split}");
    }
}

#[tokio::test]
async fn a_card_split_across_fragments_and_reads_is_removed() {
    let set = card_set(EXCHANGED_CARD);
    let marker_at = set.find(OAUTH_CARD).expect("the marker") + 10;
    // Three fragments, the second boundary inside the marker.
    let pieces = [&set[..20], &set[20..marker_at], &set[marker_at..]];
    let mut bytes = raw_frame(false, 0x1, pieces[0].as_bytes(), None);
    bytes.extend(raw_frame(false, 0x0, pieces[1].as_bytes(), None));
    bytes.extend(raw_frame(true, 0x0, pieces[2].as_bytes(), None));
    let after = text(r#"{"activities":[],"watermark":"4"}"#, None);
    bytes.extend(&after);
    let mut wires = start(sso_inspector(), limits(1));
    let splits: Vec<usize> = (1..bytes.len()).step_by(13).collect();
    write_split(&mut wires.bot, &bytes, &splits).await;
    wires.bot.shutdown().await.expect("end");
    let frames = parse_frames(&read_to_end(&mut wires.client).await);
    let (opcode, payload) = &frames[0];
    assert_eq!(*opcode, Opcode::Text);
    let rewritten = String::from_utf8(payload.clone()).expect("utf-8");
    assert!(!rewritten.contains(OAUTH_CARD), "{rewritten}");
    assert!(rewritten.contains("before") && rewritten.contains("after"));
    assert_eq!(frames[1], (Opcode::Text, after[2..].to_vec()), "order kept");
}

#[tokio::test]
async fn the_marker_split_across_reads_of_one_frame_is_found() {
    let set = card_set(EXCHANGED_CARD);
    let bytes = text(&set, None);
    let in_marker = bytes.len() - set.len() + set.find(OAUTH_CARD).expect("marker") + 5;
    let mut wires = start(sso_inspector(), limits(4096));
    write_split(&mut wires.bot, &bytes, &[in_marker]).await;
    wires.bot.shutdown().await.expect("end");
    let frames = parse_frames(&read_to_end(&mut wires.client).await);
    let payload = String::from_utf8(frames[0].1.clone()).expect("utf-8");
    assert!(!payload.contains(OAUTH_CARD), "{payload}");
}

#[tokio::test]
async fn a_card_that_was_not_exchanged_goes_on_byte_identical() {
    // The invoke finds no upstream: the decision fails open.
    let bytes = text(&card_set("never-exchanged"), None);
    let mut wires = start(sso_inspector(), limits(64));
    write_split(&mut wires.bot, &bytes, &[]).await;
    let got = read_exactly(&mut wires.client, bytes.len()).await;
    assert_eq!(got, bytes);
}

#[tokio::test]
async fn invalid_utf8_from_the_bot_goes_on_as_it_came() {
    let mut payload = br#"{"activities":[{"text":""#.to_vec();
    payload.extend([0xFF, 0xFE]);
    payload.extend(OAUTH_CARD.as_bytes());
    payload.extend(br#""}]}"#);
    let bytes = frame::encode(Opcode::Text, &payload, None);
    for inspector in [Inspector::default(), sso_inspector()] {
        let mut wires = start(inspector, limits(64));
        write_split(&mut wires.bot, &bytes, &[]).await;
        assert_eq!(read_exactly(&mut wires.client, bytes.len()).await, bytes);
    }
}

#[tokio::test]
async fn with_sso_on_a_ping_inside_a_held_message_goes_first() {
    let mut bytes = raw_frame(false, 0x1, br#"{"activities":"#, None);
    let ping = raw_frame(true, 0x9, b"p", None);
    bytes.extend(&ping);
    bytes.extend(raw_frame(true, 0x0, br#"[]}"#, None));
    let mut wires = start(sso_inspector(), limits(4096));
    write_split(&mut wires.bot, &bytes, &[]).await;
    let got = read_exactly(&mut wires.client, bytes.len()).await;
    let frames = parse_frames(&got);
    assert_eq!(frames[0], (Opcode::Ping, b"p".to_vec()));
    assert_eq!(frames[1].0, Opcode::Text);
    assert_eq!(frames[2].0, Opcode::Continuation);
}

#[tokio::test]
async fn a_close_inside_a_fragmented_message_follows_its_fragments() {
    let mut bytes = raw_frame(false, 0x1, b"part", None);
    bytes.extend(frame::close(1000, "", None));
    for inspector in [Inspector::default(), sso_inspector()] {
        let mut wires = start(inspector, limits(4096));
        write_split(&mut wires.bot, &bytes, &[]).await;
        assert_eq!(read_exactly(&mut wires.client, bytes.len()).await, bytes);
        wires.client.shutdown().await.expect("end");
        drop(wires.client);
        assert_eq!(wires.relay.await.expect("relay"), StreamEnd::UpstreamClosed);
    }
}

#[tokio::test]
async fn an_oversized_frame_from_the_bot_is_closed_with_1009() {
    let mut wires = start(Inspector::default(), limits(4096));
    let header_only = &frame::encode(Opcode::Binary, &[0u8; 5000], None)[..4];
    wires.bot.write_all(header_only).await.expect("write");
    let got = read_to_end_after_close_echo(&mut wires.client).await;
    assert_eq!(close_code(&parse_frames(&got)), Some(1009));
    assert_eq!(parse_frames(&got).len(), 1, "nothing of the frame went on");
    assert_eq!(wires.relay.await.expect("relay"), StreamEnd::TooBig);
}

/// Reads the relay's frames to the client until its close, then lets the
/// socket go (the relay waits for the other side up to its close timeout).
async fn read_to_end_after_close_echo(client: &mut DuplexStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buffer = [0u8; 256];
    while close_code(&parse_frames(&got)).is_none() {
        let read = tokio::time::timeout(PATIENCE, client.read(&mut buffer))
            .await
            .expect("a frame in time")
            .expect("read");
        assert!(read > 0, "closed before a close frame: {got:?}");
        got.extend_from_slice(&buffer[..read]);
    }
    client
        .write_all(&frame::close(1009, "", Some([1, 2, 3, 4])))
        .await
        .expect("echo");
    got
}

#[tokio::test]
async fn an_oversized_message_in_small_fragments_is_closed_with_1009() {
    let limits = FrameLimits {
        max_message_bytes: 10_000,
        ..limits(4096)
    };
    let mut wires = start(Inspector::default(), limits);
    let mut bytes = raw_frame(false, 0x2, &[0u8; 4000], None);
    bytes.extend(raw_frame(false, 0x0, &[0u8; 4000], None));
    bytes.extend(raw_frame(true, 0x0, &[0u8; 4000], None));
    wires.bot.write_all(&bytes).await.expect("write");
    let got = read_to_end_after_close_echo(&mut wires.client).await;
    let frames = parse_frames(&got);
    assert_eq!(frames.len(), 3, "two fragments, then the close");
    assert_eq!(close_code(&frames), Some(1009));
    assert_eq!(wires.relay.await.expect("relay"), StreamEnd::TooBig);
}

#[tokio::test]
async fn an_oversized_frame_from_the_client_reaches_the_bot_as_a_masked_1009() {
    let mut wires = start(Inspector::default(), limits(4096));
    let frame = frame::encode(Opcode::Text, &[b'a'; 5000], Some([1, 2, 3, 4]));
    wires.client.write_all(&frame[..8]).await.expect("write");
    let got = read_exactly(&mut wires.bot, 2 + 4 + 2 + "message too big".len()).await;
    let header = Header::parse(&got).expect("valid").expect("whole");
    assert!(header.mask.is_some(), "frames to the bot are masked");
    assert_eq!(close_code(&parse_frames(&got)), Some(1009));
}

#[tokio::test]
async fn an_unmasked_client_frame_ends_the_stream_as_lost() {
    let mut wires = start(Inspector::default(), limits(4096));
    wires
        .client
        .write_all(&text("not masked", None))
        .await
        .expect("write");
    let got = read_to_end(&mut wires.bot).await;
    assert_eq!(close_code(&parse_frames(&got)), Some(1001));
    assert_eq!(parse_frames(&got).len(), 1);
    assert_eq!(wires.relay.await.expect("relay"), StreamEnd::ClientLost);
}

#[tokio::test]
async fn a_bot_lost_mid_frame_gets_the_client_1011_and_no_partial_frame() {
    let mut wires = start(Inspector::default(), limits(4096));
    let whole = text("whole", None);
    let cut = text("cut short", None);
    wires.bot.write_all(&whole).await.expect("write");
    wires.bot.write_all(&cut[..5]).await.expect("write");
    drop(wires.bot);
    let got = read_to_end(&mut wires.client).await;
    let frames = parse_frames(&got);
    assert_eq!(frames[0], (Opcode::Text, b"whole".to_vec()));
    assert_eq!(close_code(&frames), Some(1011));
    assert_eq!(frames.len(), 2);
    assert_eq!(wires.relay.await.expect("relay"), StreamEnd::UpstreamLost);
}

#[tokio::test]
async fn shutdown_sends_1001_both_ways() {
    let mut wires = start(Inspector::default(), limits(4096));
    let partial = text("half", None);
    wires.bot.write_all(&partial[..3]).await.expect("write");
    tokio::task::yield_now().await;
    wires.shutdown.cancel();
    let to_client = read_exactly(&mut wires.client, 2 + 2 + "proxy shutting down".len()).await;
    assert_eq!(close_code(&parse_frames(&to_client)), Some(1001));
    let to_bot = read_exactly(&mut wires.bot, 2 + 4 + 2 + "proxy shutting down".len()).await;
    assert_eq!(close_code(&parse_frames(&to_bot)), Some(1001));
    assert_eq!(wires.relay.await.expect("relay"), StreamEnd::Shutdown);
}

#[tokio::test]
async fn an_idle_stream_holds_no_read_buffer() {
    let mut wires = start(sso_inspector(), limits(16 * 1024));
    for round in 0..3 {
        let frame = text(&format!("message {round}"), None);
        wires.bot.write_all(&frame).await.expect("write");
        read_exactly(&mut wires.client, frame.len()).await;
        let from_client = text("hi", Some([1, 2, 3, 4]));
        wires.client.write_all(&from_client).await.expect("write");
        read_exactly(&mut wires.bot, from_client.len()).await;
        // Both directions wait on their sockets now; the relay runs on
        // this thread, whose pool counts what it lent.
        tokio::task::yield_now().await;
        assert_eq!(read_pool::lent(), 0, "round {round}");
    }
    // A partial frame keeps only its own bytes, not a lent buffer.
    wires
        .bot
        .write_all(&text("partial", None)[..4])
        .await
        .expect("write");
    tokio::task::yield_now().await;
    assert_eq!(read_pool::lent(), 0, "partial frame");
}

/// Frames a bot may send without a card: any kind, any fragmentation, text
/// without markers.
fn cardless_frames() -> impl Strategy<Value = Vec<u8>> {
    let text_message = ("[a-z {}\":,]{0,300}", 1usize..4).prop_map(|(text, pieces)| {
        let bytes = text.into_bytes();
        let size = bytes.len().div_ceil(pieces).max(1);
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[]]
        } else {
            bytes.chunks(size).collect()
        };
        let last = chunks.len() - 1;
        let mut out = Vec::new();
        for (index, chunk) in chunks.iter().enumerate() {
            let opcode = if index == 0 { 0x1 } else { 0x0 };
            out.extend(raw_frame(index == last, opcode, chunk, None));
        }
        out
    });
    let binary = prop::collection::vec(any::<u8>(), 0..3000)
        .prop_map(|bytes| frame::encode(Opcode::Binary, &bytes, None));
    let control =
        (prop::bool::ANY, prop::collection::vec(any::<u8>(), 0..125)).prop_map(|(ping, bytes)| {
            frame::encode(if ping { Opcode::Ping } else { Opcode::Pong }, &bytes, None)
        });
    prop::collection::vec(prop_oneof![text_message, binary, control], 1..12)
        .prop_map(|frames| frames.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn frames_without_a_card_arrive_byte_identical_under_any_chunking(
        sequence in cardless_frames(),
        splits in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        chunk in 1usize..600,
        sso in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let got = runtime.block_on(async {
            let inspector = if sso { sso_inspector() } else { Inspector::default() };
            let mut wires = start(inspector, limits(chunk));
            let mut splits: Vec<usize> =
                splits.iter().map(|index| index.index(sequence.len() + 1)).collect();
            splits.sort_unstable();
            write_split(&mut wires.bot, &sequence, &splits).await;
            read_exactly(&mut wires.client, sequence.len()).await
        });
        prop_assert_eq!(got, sequence);
    }
}

/// Polls one direction once, as the relay's task would on a wake-up.
async fn poll_once(
    half: &mut Half,
    source: &mut (impl tokio::io::AsyncRead + Unpin),
    destination: &mut DuplexStream,
    settings: &RelaySettings,
) {
    std::future::poll_fn(|cx| {
        let _ = half.poll(cx, source, destination, settings);
        Poll::Ready(())
    })
    .await;
}

#[tokio::test]
async fn a_partial_frame_is_held_in_a_buffer_the_size_of_what_arrived() {
    // A client announces a 1 MB frame and trickles it a byte at a time: the
    // buffer follows what arrived, not what the header claims.
    let settings = RelaySettings {
        close_timeout: Duration::from_secs(1),
        shutdown: CancellationToken::new(),
        inspector: Inspector::default(),
        counters: Metrics::new().relay_counters(),
        limits: FrameLimits {
            max_frame_bytes: 2 * 1024 * 1024,
            max_message_bytes: 2 * 1024 * 1024,
            read_chunk_bytes: 16 * 1024,
        },
    };
    let (mut client, mut source) = tokio::io::duplex(64 * 1024);
    let (mut destination, _bot) = tokio::io::duplex(64 * 1024);
    let mut half = Half::new(Direction::ToUpstream, settings.limits.read_chunk_bytes);
    let frame = frame::encode(Opcode::Binary, &[7u8; 1_000_000], Some([1, 2, 3, 4]));
    client.write_all(&frame[..14]).await.expect("write");
    poll_once(&mut half, &mut source, &mut destination, &settings).await;
    assert!(half.buffer.capacity() < 1024, "{}", half.buffer.capacity());
    assert_eq!(read_pool::lent(), 0);
    for sent in 1..=3000 {
        client
            .write_all(&frame[13 + sent..14 + sent])
            .await
            .expect("write");
        poll_once(&mut half, &mut source, &mut destination, &settings).await;
    }
    let held = 14 + 3000;
    assert_eq!(half.buffer.len(), held);
    assert!(
        half.buffer.capacity() <= 4 * held,
        "{} bytes of capacity for {held} bytes",
        half.buffer.capacity()
    );
    assert_eq!(read_pool::lent(), 0);
}

/// A source that counts the reads made of it.
struct CountedReads {
    inner: DuplexStream,
    reads: usize,
}

impl tokio::io::AsyncRead for CountedReads {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.reads += 1;
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[tokio::test]
async fn a_busy_stream_is_read_in_chunks_not_frame_by_frame() {
    // Bursts of 600-byte frames whose ends do not line up with the bursts:
    // between bursts the source has nothing (the relay keeps only the
    // partial frame), and the next burst must still be read in one go, not
    // in steps the size of the partial frame.
    let settings = RelaySettings {
        close_timeout: Duration::from_secs(1),
        shutdown: CancellationToken::new(),
        inspector: Inspector::default(),
        counters: Metrics::new().relay_counters(),
        limits: limits(16 * 1024),
    };
    let frames: Vec<u8> = (0..400)
        .flat_map(|i| text(&format!("{i:0>600}"), None))
        .collect();
    let (mut bot, source) = tokio::io::duplex(frames.len() * 2);
    let (mut destination, mut client) = tokio::io::duplex(frames.len() * 2);
    let mut source = CountedReads {
        inner: source,
        reads: 0,
    };
    let mut half = Half::new(Direction::ToClient, settings.limits.read_chunk_bytes);
    let mut relayed = vec![0u8; frames.len()];
    let mut received = 0;
    const BURST: usize = 7000;
    for burst in frames.chunks(BURST) {
        bot.write_all(burst).await.expect("write");
        poll_once(&mut half, &mut source, &mut destination, &settings).await;
        while let Ok(Ok(read)) = tokio::time::timeout(
            Duration::from_millis(1),
            client.read(&mut relayed[received..]),
        )
        .await
        {
            received += read;
            if read == 0 || received == frames.len() {
                break;
            }
        }
    }
    assert_eq!(&relayed[..received], &frames[..]);
    // One read for the burst, one that finds nothing more; a little slack.
    let bursts = frames.len().div_ceil(BURST);
    assert!(
        source.reads <= 3 * bursts,
        "{} reads for {bursts} bursts",
        source.reads
    );
}
