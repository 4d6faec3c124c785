//! Moving WebSocket frames between the client and the upstream.
//!
//! Frames are relayed as the bytes they came as: each frame header is read
//! (RFC 6455 section 5.2) to find its end, check the limits and see closes,
//! and whole frames go on unchanged, client frames still masked as the
//! client masked them. Only a text message from the bot that may hold an
//! OAuth card (see [`Inspector::wants`]) is taken apart: it is held whole,
//! inspected, and sent on as it came or as one rewritten text frame.
//!
//! Both directions run in one task over the two sockets, so neither socket
//! is split behind a lock. Each direction reads into a buffer lent by
//! [`read_pool`] for as long as data keeps coming, and gives it back when a
//! read finds nothing: an idle stream keeps at most a partial frame's bytes.
//! A direction writes out what it read before it reads again, so a slow
//! reader on one side pauses reading from the other (bounded buffering)
//! without stopping the opposite direction. Only whole frames are ever
//! written, so the proxy can always add its own close frame.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::frame::{self, FrameError, Header, Opcode};
use super::inspect::{Inspection, Inspector};
use super::read_pool;
use crate::metrics::RelayCounters;

/// RFC 6455 section 7.4.1 close codes the proxy sends itself.
const GOING_AWAY: u16 = 1001;
const INTERNAL_ERROR: u16 = 1011;
const MESSAGE_TOO_BIG: u16 = 1009;
/// Smallest step by which a partial frame's buffer grows.
const MIN_GROWTH: usize = 512;
/// A partial frame up to this long is read on in a lent chunk: copying it
/// costs less than reading in small steps, even once per read.
const SHORT_PARTIAL: usize = 4096;

pub struct RelaySettings {
    /// How long the second half of a close handshake may take.
    pub close_timeout: Duration,
    /// Cancelled when the proxy shuts down: both sides get 1001.
    pub shutdown: CancellationToken,
    /// What every text message from the bot passes through.
    pub inspector: Inspector,
    pub counters: RelayCounters,
    pub limits: FrameLimits,
}

#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Larger frames close both sides with 1009.
    pub max_frame_bytes: u64,
    /// Larger messages (all fragments together) close both sides with 1009.
    pub max_message_bytes: u64,
    /// Size of the buffer lent for reading while data keeps coming.
    pub read_chunk_bytes: usize,
}

impl FrameLimits {
    pub fn from_config(config: &crate::config::WebSocketConfig) -> FrameLimits {
        FrameLimits {
            max_frame_bytes: config.max_frame_bytes as u64,
            max_message_bytes: config.max_message_bytes as u64,
            read_chunk_bytes: config.read_buffer_bytes,
        }
    }
}

/// How a relayed stream ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    ClientClosed,
    UpstreamClosed,
    ClientLost,
    UpstreamLost,
    /// A frame or message over `websocket.max_frame_bytes` or
    /// `max_message_bytes`: closed with 1009 on both sides.
    TooBig,
    Shutdown,
}

impl StreamEnd {
    /// Whether a side vanished without a close handshake.
    pub fn lost(self) -> bool {
        matches!(self, StreamEnd::ClientLost | StreamEnd::UpstreamLost)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToUpstream,
    ToClient,
}

impl Direction {
    /// RFC 6455 section 5.1: clients mask every frame, servers none.
    fn source_masks(self) -> bool {
        self == Direction::ToUpstream
    }

    /// A frame the proxy writes towards this direction's destination: masked
    /// towards the upstream, where the proxy is the client.
    fn close_frame(self, code: u16, reason: &str) -> Vec<u8> {
        let mask = (self == Direction::ToUpstream).then(frame::fresh_mask);
        frame::close(code, reason, mask)
    }

    /// Sent on when this direction's source vanished or broke the protocol,
    /// so the other side knows to reconnect.
    fn lost_frame(self) -> Vec<u8> {
        match self {
            Direction::ToUpstream => self.close_frame(GOING_AWAY, "client connection lost"),
            Direction::ToClient => self.close_frame(INTERNAL_ERROR, "upstream connection lost"),
        }
    }

    fn source_ended(self, cleanly: bool) -> StreamEnd {
        match (self, cleanly) {
            (Direction::ToUpstream, true) => StreamEnd::ClientClosed,
            (Direction::ToUpstream, false) => StreamEnd::ClientLost,
            (Direction::ToClient, true) => StreamEnd::UpstreamClosed,
            (Direction::ToClient, false) => StreamEnd::UpstreamLost,
        }
    }

    fn destination_lost(self) -> StreamEnd {
        match self {
            Direction::ToUpstream => StreamEnd::UpstreamLost,
            Direction::ToClient => StreamEnd::ClientLost,
        }
    }

    fn count(self, counters: &RelayCounters, frames: u64, bytes: u64) {
        let (frame_counter, byte_counter) = match self {
            Direction::ToClient => (&counters.frames_to_client, &counters.bytes_to_client),
            Direction::ToUpstream => (&counters.frames_to_bot, &counters.bytes_to_bot),
        };
        frame_counter.inc_by(frames);
        byte_counter.inc_by(bytes);
    }
}

/// Relays until one side closes or is lost, then lets the other side finish
/// its close handshake within the close timeout.
pub async fn run<C, U>(mut client: C, mut upstream: U, settings: RelaySettings) -> StreamEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let chunk = settings.limits.read_chunk_bytes;
    let mut to_upstream = Half::new(Direction::ToUpstream, chunk);
    let mut to_client = Half::new(Direction::ToClient, chunk);
    let settings = &settings;
    let first = {
        let both = poll_fn(|cx| {
            if let Poll::Ready(outcome) = to_upstream.poll(cx, &mut client, &mut upstream, settings)
            {
                return Poll::Ready((outcome, Direction::ToUpstream));
            }
            to_client
                .poll(cx, &mut upstream, &mut client, settings)
                .map(|outcome| (outcome, Direction::ToClient))
        });
        tokio::select! {
            ended = both => Some(ended),
            () = settings.shutdown.cancelled() => None,
        }
    };
    let Some((outcome, ended)) = first else {
        to_upstream.go_away();
        to_client.go_away();
        let (mut upstream_done, mut client_done) = (false, false);
        let both_closed = poll_fn(|cx| {
            upstream_done = upstream_done
                || to_upstream
                    .poll(cx, &mut client, &mut upstream, settings)
                    .is_ready();
            client_done = client_done
                || to_client
                    .poll(cx, &mut upstream, &mut client, settings)
                    .is_ready();
            if upstream_done && client_done {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let _ = tokio::time::timeout(settings.close_timeout, both_closed).await;
        return StreamEnd::Shutdown;
    };
    let the_other = poll_fn(|cx| match ended {
        Direction::ToUpstream => to_client.poll(cx, &mut upstream, &mut client, settings),
        Direction::ToClient => to_upstream.poll(cx, &mut client, &mut upstream, settings),
    });
    let _ = tokio::time::timeout(settings.close_timeout, the_other).await;
    outcome
}

/// What waits to be written to a direction's destination, in order.
enum Out {
    /// Bytes `start..end` of the half's buffer, whole frames as they came.
    Run { start: usize, end: usize },
    /// A frame the proxy wrote, or a held message sent on.
    Owned { bytes: Vec<u8>, written: usize },
}

/// The fragments of a text message from the bot, held until its last one
/// so the whole message can be inspected.
#[derive(Default)]
struct Held {
    frames: Vec<u8>,
    payload: Vec<u8>,
}

/// A message in progress: data frames seen and their payload so far.
#[derive(Clone, Copy)]
struct OpenMessage {
    payload_bytes: u64,
}

/// Why a frame stops the relay.
enum Refusal {
    Broken(FrameError),
    WrongMasking,
    UnexpectedContinuation,
    UnfinishedMessage,
    TooBig,
}

impl Refusal {
    fn reason(&self) -> String {
        match self {
            Refusal::Broken(error) => error.to_string(),
            Refusal::WrongMasking => "wrong masking".to_owned(),
            Refusal::UnexpectedContinuation => "continuation outside a message".to_owned(),
            Refusal::UnfinishedMessage => "new message inside a fragmented one".to_owned(),
            Refusal::TooBig => "over the size limit".to_owned(),
        }
    }
}

enum Mode {
    Relaying,
    /// Shutting down: the source's frames are read and dropped until its
    /// close arrives.
    Draining,
}

/// One direction: reads frames from its source, writes to its destination.
struct Half {
    direction: Direction,
    /// Size of the buffers lent by the pool.
    chunk: usize,
    mode: Mode,
    /// Bytes read and not yet relayed; empty without capacity while idle.
    buffer: BytesMut,
    /// Whether `buffer` is lent by the pool (else it holds only the bytes
    /// of a partial frame, or one frame larger than a chunk).
    pooled: bool,
    /// Bytes at the start of `buffer` already parsed into frames.
    parsed: usize,
    out: VecDeque<Out>,
    open: Option<OpenMessage>,
    held: Option<Held>,
    inspection: Option<(Inspection, Vec<u8>)>,
    /// Set when this direction stops once `out` is written.
    end: Option<StreamEnd>,
    unflushed: bool,
}

impl Half {
    fn new(direction: Direction, chunk: usize) -> Half {
        Half {
            direction,
            chunk,
            mode: Mode::Relaying,
            buffer: BytesMut::new(),
            pooled: false,
            parsed: 0,
            out: VecDeque::new(),
            open: None,
            held: None,
            inspection: None,
            end: None,
            unflushed: false,
        }
    }

    fn poll<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        source: &mut S,
        destination: &mut D,
        settings: &RelaySettings,
    ) -> Poll<StreamEnd>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        loop {
            if ready!(self.poll_write_out(cx, destination)).is_err() {
                return Poll::Ready(self.finish(self.direction.destination_lost()));
            }
            if let Some(outcome) = self.end {
                let _ = ready!(Pin::new(&mut *destination).poll_flush(cx));
                return Poll::Ready(self.finish(outcome));
            }
            if let Some((inspection, _)) = &mut self.inspection {
                let Poll::Ready(rewritten) = inspection.as_mut().poll(cx) else {
                    return self.pending(cx, destination);
                };
                if let Some((_, frames)) = self.inspection.take() {
                    let bytes = match rewritten {
                        Some(text) => frame::encode(Opcode::Text, &text, None),
                        None => frames,
                    };
                    self.out.push_back(Out::Owned { bytes, written: 0 });
                }
                continue;
            }
            if self.relay_parsed(settings) {
                continue;
            }
            match self.poll_fill(cx, source) {
                Poll::Pending => return self.pending(cx, destination),
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false) | Err(_)) => self.source_lost(),
            }
        }
    }

    /// Before waiting, what was written goes out: a burst is flushed once,
    /// a lone frame at once.
    fn pending<D: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        destination: &mut D,
    ) -> Poll<StreamEnd> {
        if self.unflushed {
            match Pin::new(destination).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => {
                    return Poll::Ready(self.finish(self.direction.destination_lost()));
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Ends this direction for good: the buffer goes back to the pool and
    /// later polls return the same outcome.
    fn finish(&mut self, outcome: StreamEnd) -> StreamEnd {
        self.release_buffer();
        self.out.clear();
        self.held = None;
        self.inspection = None;
        self.end = Some(outcome);
        outcome
    }

    fn poll_write_out<D: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        destination: &mut D,
    ) -> Poll<io::Result<()>> {
        while let Some(front) = self.out.front_mut() {
            let (pending, advance): (&[u8], &mut usize) = match front {
                Out::Run { start, end } => (&self.buffer[*start..*end], start),
                Out::Owned { bytes, written } => (&bytes[*written..], written),
            };
            if pending.is_empty() {
                self.out.pop_front();
                continue;
            }
            let written = ready!(Pin::new(&mut *destination).poll_write(cx, pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *advance += written;
            self.unflushed = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more into the buffer; `Ok(false)` at the end of the stream.
    fn poll_fill<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        source: &mut S,
    ) -> Poll<io::Result<bool>> {
        self.make_room();
        match tokio_util::io::poll_read_buf(Pin::new(source), cx, &mut self.buffer) {
            Poll::Pending => {
                self.keep_only_partial_frame();
                Poll::Pending
            }
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(true)),
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
        }
    }

    /// Drops the relayed bytes and makes room for a read. Without a partial
    /// frame, or with a short one (the tail of a busy read, usually): a
    /// lent chunk, so reads stay chunk-sized under load. A longer partial
    /// frame's buffer grows with the bytes that arrived (about doubling, at
    /// most a chunk at a time), never with the length a header announces:
    /// a few bytes claiming a 2 MiB frame get no 2 MiB buffer, and a frame
    /// trickled a byte at a time is copied a logarithmic number of times.
    fn make_room(&mut self) {
        let chunk = self.chunk;
        self.buffer.advance(self.parsed);
        self.parsed = 0;
        let partial = self.buffer.len();
        if partial <= SHORT_PARTIAL.min(chunk / 2) {
            self.room_for_a_chunk();
            return;
        }
        let growth = partial.clamp(MIN_GROWTH.min(chunk), chunk);
        if self.buffer.capacity() - partial < growth {
            self.buffer.reserve(growth);
        }
    }

    /// A lent chunk holding the (short) partial frame, with a chunk's room.
    fn room_for_a_chunk(&mut self) {
        let chunk = self.chunk;
        if !self.pooled {
            let mut lent = read_pool::take(chunk);
            lent.extend_from_slice(&self.buffer);
            self.buffer = lent;
            self.pooled = true;
        }
        if self.buffer.capacity() - self.buffer.len() < chunk / 2 {
            // Unshared, this moves the partial frame to the front in place;
            // shared with frames still being written, it allocates.
            self.buffer.reserve(chunk);
        }
    }

    /// While waiting for the source, keep only a partial frame's bytes.
    fn keep_only_partial_frame(&mut self) {
        if !self.pooled {
            return;
        }
        let partial = BytesMut::from(&self.buffer[self.parsed..]);
        self.release_buffer();
        self.buffer = partial;
    }

    fn release_buffer(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        self.parsed = 0;
        if std::mem::take(&mut self.pooled) {
            read_pool::give(buffer, self.chunk);
        }
    }

    /// Parses the frames read so far and queues what goes out. `false` when
    /// nothing can go on without more bytes.
    fn relay_parsed(&mut self, settings: &RelaySettings) -> bool {
        let mut run_start = self.parsed;
        let mut frames = 0u64;
        let mut payload_bytes = 0u64;
        let stopped = loop {
            let rest = &self.buffer[self.parsed..];
            let header = match Header::parse(rest) {
                Ok(Some(header)) => header,
                Ok(None) => break false,
                Err(error) => {
                    self.push_run(run_start, self.parsed);
                    self.refuse(Refusal::Broken(error));
                    break true;
                }
            };
            if let Err(refusal) = self.admit(&header, &settings.limits) {
                self.push_run(run_start, self.parsed);
                self.refuse(refusal);
                break true;
            }
            let frame_len = header.frame_len() as usize;
            if rest.len() < frame_len {
                break false;
            }
            let frame_start = self.parsed;
            self.parsed += frame_len;
            if header.opcode != Opcode::Close {
                frames += 1;
                payload_bytes += header.payload_len;
            }
            if matches!(self.mode, Mode::Draining) {
                if header.opcode == Opcode::Close {
                    self.end = Some(StreamEnd::Shutdown);
                    break true;
                }
                run_start = self.parsed;
                continue;
            }
            if header.opcode == Opcode::Close {
                self.push_run(run_start, frame_start);
                self.send_held();
                self.push_run(frame_start, self.parsed);
                self.end = Some(self.direction.source_ended(true));
                break true;
            }
            self.track_message(&header);
            if self.holds(&header, &settings.inspector) {
                self.push_run(run_start, frame_start);
                run_start = self.parsed;
                if self.hold(&header, frame_start, &settings.inspector) {
                    break true;
                }
            }
        };
        if frames > 0 {
            self.direction
                .count(&settings.counters, frames, payload_bytes);
        }
        if !stopped {
            self.push_run(run_start, self.parsed);
        }
        stopped || !self.out.is_empty() || frames > 0
    }

    /// Checks a frame by its header alone, before its payload is read.
    fn admit(&self, header: &Header, limits: &FrameLimits) -> Result<(), Refusal> {
        if header.payload_len > limits.max_frame_bytes {
            return Err(Refusal::TooBig);
        }
        if matches!(self.mode, Mode::Draining) {
            return Ok(());
        }
        if header.mask.is_some() != self.direction.source_masks() {
            return Err(Refusal::WrongMasking);
        }
        match (header.opcode, self.open) {
            (Opcode::Continuation, None) => Err(Refusal::UnexpectedContinuation),
            (Opcode::Continuation, Some(open))
                if open.payload_bytes.saturating_add(header.payload_len)
                    > limits.max_message_bytes =>
            {
                Err(Refusal::TooBig)
            }
            (Opcode::Text | Opcode::Binary, Some(_)) => Err(Refusal::UnfinishedMessage),
            _ => Ok(()),
        }
    }

    /// Follows fragmentation once a whole data frame is read.
    fn track_message(&mut self, header: &Header) {
        if header.opcode.is_control() {
            return;
        }
        let so_far = self.open.map_or(0, |open| open.payload_bytes);
        self.open = (!header.fin).then_some(OpenMessage {
            payload_bytes: so_far + header.payload_len,
        });
    }

    /// Whether the frame is part of a bot text message that must be seen
    /// whole before it goes on.
    fn holds(&self, header: &Header, inspector: &Inspector) -> bool {
        if self.direction != Direction::ToClient || !inspector.active() {
            return false;
        }
        match header.opcode {
            Opcode::Text => true,
            Opcode::Continuation => self.held.is_some(),
            _ => false,
        }
    }

    /// Adds a frame to the held message; when it was the last, sends the
    /// message on or starts its inspection (`true`: wait for it).
    fn hold(&mut self, header: &Header, frame_start: usize, inspector: &Inspector) -> bool {
        let frame_bytes = &self.buffer[frame_start..self.parsed];
        let payload = &frame_bytes[header.header_len..];
        if header.fin && self.held.is_none() {
            // A whole message in one frame, the usual case: copied only
            // when it may hold a card.
            if inspector.wants(payload) {
                self.inspection = Some((inspector.inspect(payload.to_vec()), frame_bytes.to_vec()));
                return true;
            }
            self.push_run(frame_start, self.parsed);
            return false;
        }
        let held = self.held.get_or_insert_with(Held::default);
        held.frames.extend_from_slice(frame_bytes);
        held.payload.extend_from_slice(payload);
        if !header.fin {
            return false;
        }
        let Some(held) = self.held.take() else {
            return false;
        };
        if inspector.wants(&held.payload) {
            self.inspection = Some((inspector.inspect(held.payload), held.frames));
            return true;
        }
        self.out.push_back(Out::Owned {
            bytes: held.frames,
            written: 0,
        });
        false
    }

    /// Sends on the fragments of an unfinished held message as they came.
    fn send_held(&mut self) {
        if let Some(held) = self.held.take() {
            self.out.push_back(Out::Owned {
                bytes: held.frames,
                written: 0,
            });
        }
    }

    fn push_run(&mut self, start: usize, end: usize) {
        if start >= end {
            return;
        }
        if let Some(Out::Run { end: last_end, .. }) = self.out.back_mut()
            && *last_end == start
        {
            *last_end = end;
            return;
        }
        self.out.push_back(Out::Run { start, end });
    }

    fn refuse(&mut self, refusal: Refusal) {
        if matches!(self.mode, Mode::Draining) {
            self.end = Some(StreamEnd::Shutdown);
            return;
        }
        let direction = self.direction;
        match refusal {
            Refusal::TooBig => {
                tracing::info!(
                    ?direction,
                    "WebSocket message over the limit: closing with 1009"
                );
                self.send_held();
                self.out.push_back(Out::Owned {
                    bytes: direction.close_frame(MESSAGE_TOO_BIG, "message too big"),
                    written: 0,
                });
                self.end = Some(StreamEnd::TooBig);
            }
            broken => {
                let reason = broken.reason();
                tracing::debug!(?direction, %reason, "WebSocket frame breaks RFC 6455");
                self.source_lost();
            }
        }
    }

    /// The source is gone (or broke the protocol): what it sent whole goes
    /// on, then a close frame that tells the destination to reconnect.
    fn source_lost(&mut self) {
        if matches!(self.mode, Mode::Draining) {
            self.end = Some(StreamEnd::Shutdown);
            return;
        }
        self.inspection = None;
        self.send_held();
        self.out.push_back(Out::Owned {
            bytes: self.direction.lost_frame(),
            written: 0,
        });
        self.end = Some(self.direction.source_ended(false));
    }

    /// Shutdown: the destination gets 1001 after what is already on its
    /// way, then the source is read until its close reply. A direction that
    /// is already ending (a close on its way) keeps its course.
    fn go_away(&mut self) {
        if self.end.is_some() {
            return;
        }
        self.inspection = None;
        self.held = None;
        self.out.push_back(Out::Owned {
            bytes: self
                .direction
                .close_frame(GOING_AWAY, "proxy shutting down"),
            written: 0,
        });
        self.mode = Mode::Draining;
    }
}

impl Drop for Half {
    fn drop(&mut self) {
        self.release_buffer();
    }
}

#[cfg(test)]
mod tests;
