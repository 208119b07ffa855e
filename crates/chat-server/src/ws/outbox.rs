//! What one connection has to write, bounded in bytes, and a measure of how much of it the
//! peer has really taken.
//!
//! Why: actix-ws's `Session` is a channel of 32 frames into the response body, and the HTTP
//! dispatcher pulls from that body only while its own write buffer (32 KiB) has room. A peer
//! that stops reading fills the kernel's buffers, then the dispatcher's, then the channel,
//! and from then on `session.text(..).await` waits forever. Before this module a connection
//! awaited that write inside its `select!` loop, so it stopped noticing kicks, token expiry
//! and the idle timeout, and every reply it had queued (history pages of up to ~250 KB)
//! stayed in memory: 35 MB for one such client was measured (issue 8, D1).
//!
//! Now a connection never waits on the socket inside its loop:
//! - Frames wait in an [`Outbox`]. The loop stops taking new work (requests from the socket,
//!   events from its mailbox) while the outbox holds more than [`SOFT_LIMIT`] bytes, so what
//!   one connection queues is bounded: `SOFT_LIMIT` + the replies of the requests already in
//!   flight (at most [`super::connection::MAX_HISTORY_IN_FLIGHT`] history pages and
//!   [`super::connection::MAX_IN_FLIGHT`] small replies) + one mailbox frame. About 1.3 MB at
//!   the very worst; a stuck client measured far less (see `docs/architecture.md`).
//! - A frame is handed to the session only while fewer than [`IN_FLIGHT_LIMIT`] bytes sit
//!   between the session and the dispatcher. [`CountedBody`] wraps the response body and
//!   counts the bytes the dispatcher pulls, so that window is measured, not guessed.
//! - When output is pending and the dispatcher has pulled nothing for the write timeout, the
//!   connection is closed as `slow_consumer` ([`Outbox::stalled`]).
//! - The TCP socket itself is given `TCP_USER_TIMEOUT` (see `crate::tcp`), so the kernel
//!   drops a peer that acknowledges nothing, and the dispatcher's buffers go with it.
//! - [`Flow`] is shared by the body and the connection task and keeps the connection's
//!   registry slot: the slot is freed only when both the task and the socket are gone, so a
//!   connection that was kicked but whose socket lingers still counts against the per-user
//!   cap (D2).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::web::Bytes;
use actix_ws::Session;
use bytestring::ByteString;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::registry::RegistrationGuard;

/// Above this many queued bytes a connection takes no new work until the peer reads.
pub const SOFT_LIMIT: usize = 256 * 1024;
/// Bytes handed to the session but not yet pulled by the HTTP dispatcher, at most (one frame
/// may go over it).
pub const IN_FLIGHT_LIMIT: u64 = 64 * 1024;

/// Shared by a connection task and its response body.
#[derive(Default)]
pub struct Flow {
    /// Bytes of encoded frames the dispatcher has taken from the body.
    pulled: AtomicU64,
    /// Woken whenever `pulled` grows.
    progress: Notify,
    /// The connection's registry slot, released when the last of task and body is gone.
    slot: Mutex<Option<RegistrationGuard>>,
}

impl Flow {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Keeps `guard` until both the connection task and its socket are gone.
    pub fn hold(&self, guard: RegistrationGuard) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(guard);
        }
    }

    fn pulled(&self) -> u64 {
        self.pulled.load(Ordering::Acquire)
    }
}

/// The WebSocket response body, counting what the dispatcher pulls from it.
pub struct CountedBody {
    inner: BoxBody,
    flow: Arc<Flow>,
}

impl CountedBody {
    pub fn new(inner: BoxBody, flow: Arc<Flow>) -> Self {
        Self { inner, flow }
    }
}

impl MessageBody for CountedBody {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        let next = Pin::new(&mut this.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(bytes))) = &next {
            this.flow
                .pulled
                .fetch_add(bytes.len() as u64, Ordering::AcqRel);
            this.flow.progress.notify_one();
        }
        next
    }
}

/// One frame waiting to be written.
pub enum Frame {
    Text(ByteString),
    Ping,
    Pong(Bytes),
}

impl Frame {
    fn payload_len(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Ping => 0,
            Self::Pong(bytes) => bytes.len(),
        }
    }

    /// Its size on the wire: a server frame is not masked, so the header is 2 bytes, 4 with a
    /// 16-bit length, 10 with a 64-bit one (RFC 6455 §5.2). Exact, so the window never drifts.
    fn wire_len(&self) -> u64 {
        let n = self.payload_len();
        let header = match n {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        };
        (n + header) as u64
    }
}

/// Why a write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailed {
    /// The socket is gone.
    Closed,
    /// The peer took nothing for the write timeout.
    Stalled,
}

/// A connection's frames waiting for the socket.
pub struct Outbox {
    /// Frames, each with the time it was queued (for the outbox-wait histogram).
    frames: VecDeque<(Frame, Instant)>,
    /// Payload bytes in `frames`.
    queued: usize,
    /// Wire bytes handed to the session so far.
    handed: u64,
    /// `flow.pulled` when last looked at, and when it last moved.
    seen_pulled: u64,
    last_progress: Instant,
    flow: Arc<Flow>,
    write_timeout: Duration,
}

impl Outbox {
    pub fn new(flow: Arc<Flow>, write_timeout: Duration) -> Self {
        Self {
            frames: VecDeque::new(),
            queued: 0,
            handed: 0,
            seen_pulled: 0,
            last_progress: Instant::now(),
            flow,
            write_timeout,
        }
    }

    pub fn push(&mut self, frame: Frame) {
        if !self.output_pending() {
            // Waiting starts now, not when the connection last wrote something.
            self.last_progress = Instant::now();
        }
        self.queued += frame.payload_len();
        self.frames.push_back((frame, Instant::now()));
    }

    pub fn push_text(&mut self, text: impl Into<ByteString>) {
        self.push(Frame::Text(text.into()));
    }

    /// True while the connection may take more work.
    pub fn has_room(&self) -> bool {
        self.queued < SOFT_LIMIT
    }

    pub fn has_frames(&self) -> bool {
        !self.frames.is_empty()
    }

    fn in_flight(&self) -> u64 {
        self.handed.saturating_sub(self.flow.pulled())
    }

    fn output_pending(&self) -> bool {
        !self.frames.is_empty() || self.in_flight() > 0
    }

    fn note_progress(&mut self) {
        let pulled = self.flow.pulled();
        if pulled != self.seen_pulled {
            self.seen_pulled = pulled;
            self.last_progress = Instant::now();
        }
    }

    /// When the connection counts as stalled if the peer takes nothing before then; `None`
    /// while nothing waits to be written.
    pub fn stall_deadline(&mut self) -> Option<Instant> {
        self.note_progress();
        self.output_pending()
            .then(|| self.last_progress + self.write_timeout)
    }

    /// True when output has waited the whole write timeout without the peer taking a byte.
    pub fn stalled(&mut self) -> bool {
        self.stall_deadline()
            .is_some_and(|deadline| deadline <= Instant::now())
    }

    /// Resolves once the window between session and dispatcher has room.
    pub async fn window_open(&self) {
        while self.in_flight() >= IN_FLIGHT_LIMIT {
            // `notify_one` leaves a permit when nobody waits, so a pull between the check and
            // this await is not missed.
            self.flow.progress.notified().await;
        }
    }

    /// Hands the next frame to the session. Call after [`Self::window_open`]. The session's
    /// own channel may still be full (32 small frames): that wait is bounded by the write
    /// timeout too.
    pub async fn write_next(&mut self, session: &mut Session) -> Result<(), WriteFailed> {
        let Some((frame, queued_at)) = self.frames.pop_front() else {
            return Ok(());
        };
        if self.frames.is_empty() {
            // An idle connection keeps no queue: its frames were 224 bytes of every idle
            // connection (heaptrack, 4,000 connections), and an empty `VecDeque` costs nothing.
            self.frames = VecDeque::new();
        }
        metrics::histogram!(crate::metrics::OUTBOX_WAIT_SECONDS)
            .record(queued_at.elapsed().as_secs_f64());
        self.queued -= frame.payload_len();
        self.handed += frame.wire_len();
        let write = async {
            match frame {
                Frame::Text(text) => session.text(text).await,
                Frame::Ping => session.ping(b"").await,
                Frame::Pong(bytes) => session.pong(&bytes).await,
            }
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteFailed::Closed),
            Err(_) => Err(WriteFailed::Stalled),
        }
    }

    /// Writes what is queued, within the write timeout in total: used before a polite close.
    pub async fn flush(&mut self, session: &mut Session) -> Result<(), WriteFailed> {
        let deadline = Instant::now() + self.write_timeout;
        while self.has_frames() {
            tokio::time::timeout_at(deadline, self.window_open())
                .await
                .map_err(|_| WriteFailed::Stalled)?;
            self.write_next(session).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_lengths_follow_rfc_6455_headers() {
        assert_eq!(Frame::Ping.wire_len(), 2);
        assert_eq!(Frame::Text("a".repeat(125).into()).wire_len(), 127);
        assert_eq!(Frame::Text("a".repeat(126).into()).wire_len(), 130);
        assert_eq!(Frame::Text("a".repeat(65_536).into()).wire_len(), 65_546);
    }

    #[tokio::test]
    async fn room_follows_queued_bytes_and_stalls_need_pending_output() {
        tokio::time::pause();
        let mut outbox = Outbox::new(Flow::new(), Duration::from_secs(2));
        assert!(outbox.stall_deadline().is_none(), "nothing to write");
        outbox.push_text("x".repeat(SOFT_LIMIT));
        assert!(!outbox.has_room());
        assert!(!outbox.stalled());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(outbox.stalled(), "nothing was taken for the whole timeout");
    }
}
