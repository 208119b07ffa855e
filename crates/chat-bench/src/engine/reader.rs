//! One reader task per connection: it reads everything the server sends that connection and
//! checks its room's stream (seq gapless and in order, every message once).
//!
//! A member counts its own messages coming back (`confirmed`: committed and fanned out) and
//! the other member's arriving (`delivered`), records their latencies, checks history pages
//! against what it had already seen, and in `throughput` sends the next message each time
//! one of its own comes back (the window). The task's loop only waits; each kind of frame
//! is handled by a method of [`Reader`] named for it.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use chat_domain::protocol::ServerFrame;
use chat_domain::{HISTORY_WINDOW, Message, RoomId};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use super::frames::send_frame;
use super::note;
use super::schedule::Clock;
use super::stats::{Hists, MemberStats};
use crate::check::{self, Key, RoomCheck, Seen};
use crate::conn::{self, Gate, Out, Stamps};

/// A throughput member's own sending: keep `window` messages unconfirmed until `stop` or
/// `quota`.
pub struct Refill {
    pub window: usize,
    pub quota: Option<u64>,
    pub stop: watch::Receiver<bool>,
    pub tag: u8,
    pub body: Arc<str>,
}

/// How a reader task is set up.
pub struct ReaderSetup {
    pub room_id: RoomId,
    pub my_user: String,
    pub base_seq: u64,
    pub me: Arc<MemberStats>,
    pub hists: Arc<Hists>,
    pub clock: Option<Clock>,
    pub stamps: Option<Arc<Stamps>>,
    pub gate: Option<Arc<Gate>>,
    pub refill: Option<Refill>,
    pub tx: mpsc::UnboundedSender<Out>,
    pub finish: watch::Receiver<bool>,
}

/// What a reader found.
#[derive(Default)]
pub struct ReaderOutcome {
    pub check: RoomCheck,
    /// Frames that were not this room's or not ours.
    pub foreign: u64,
    /// History responses that were not a gapless, oldest-first page ending at or after what
    /// the connection had already seen.
    pub bad_history: u64,
    pub history_bytes: u64,
    pub errors: Vec<String>,
    pub closed: Option<String>,
}

/// Reads one connection until `finish` or the socket ends.
pub async fn reader(mut stream: conn::WsStream, setup: ReaderSetup) -> ReaderOutcome {
    let mut r = Reader::new(setup);
    r.send_first_window();
    let mut stop = r.setup.refill.as_ref().map(|refill| refill.stop.clone());
    loop {
        let stop_changed = stop_changed(stop.as_mut(), !r.final_published);
        tokio::select! {
            biased;
            _ = r.setup.finish.changed() => break,
            _ = stop_changed => r.publish_final(),
            frame = stream.next() => {
                if r.on_ws_message(frame).is_break() {
                    break;
                }
            }
        }
    }
    r.into_outcome()
}

/// Resolves when the throughput stop signal changes (or its sender is gone); never without
/// a stop signal or once `armed` is false (the final count is published already).
async fn stop_changed(stop: Option<&mut watch::Receiver<bool>>, armed: bool) {
    match stop {
        Some(rx) if armed => {
            let _ = rx.changed().await;
        }
        _ => std::future::pending().await,
    }
}

/// A reader task's state between frames.
struct Reader {
    setup: ReaderSetup,
    out: ReaderOutcome,
    /// Throughput: when each of this member's unconfirmed messages was queued, by number.
    written: HashMap<u64, Instant>,
    /// Throughput: how many messages this member has queued.
    sent: u64,
    final_published: bool,
}

impl Reader {
    fn new(setup: ReaderSetup) -> Self {
        Self {
            out: ReaderOutcome {
                check: RoomCheck::starting_after(setup.base_seq),
                ..ReaderOutcome::default()
            },
            setup,
            written: HashMap::new(),
            sent: 0,
            final_published: false,
        }
    }

    fn into_outcome(self) -> ReaderOutcome {
        if self.out.closed.is_some() {
            self.setup.me.closed.store(true, Ordering::Release);
        }
        self.out
    }

    fn publish_final(&mut self) {
        self.setup.me.publish_final();
        self.final_published = true;
    }

    /// Throughput: the first window.
    fn send_first_window(&mut self) {
        let Some(refill) = self.setup.refill.as_ref() else {
            return;
        };
        let first = refill
            .quota
            .map_or(refill.window as u64, |q| q.min(refill.window as u64));
        for _ in 0..first {
            self.sent += 1;
            if let Err(e) = queue_send(&self.setup, refill, self.sent, &mut self.written) {
                self.out.errors.push(e);
            }
        }
        self.setup.me.sent.store(self.sent, Ordering::Release);
        if refill.quota.is_some_and(|q| self.sent >= q) {
            self.publish_final();
        }
    }

    /// Throughput: an own message came back, so the next one may go, unless sending has
    /// stopped or the quota is reached.
    fn send_next(&mut self) {
        let Some(refill) = self.setup.refill.as_ref() else {
            return;
        };
        let stopped = self.final_published || *refill.stop.borrow();
        if !stopped && refill.quota.is_none_or(|q| self.sent < q) {
            self.sent += 1;
            if let Err(e) = queue_send(&self.setup, refill, self.sent, &mut self.written) {
                note(&mut self.out.errors, e);
            }
            self.setup.me.sent.store(self.sent, Ordering::Release);
        }
        if !self.final_published && refill.quota.is_some_and(|q| self.sent >= q) {
            self.publish_final();
        }
    }

    /// One WebSocket message (or the end of the stream); breaks when the connection is over.
    fn on_ws_message(&mut self, frame: Option<Result<WsMessage, WsError>>) -> ControlFlow<()> {
        let at = Instant::now();
        let text = match frame {
            Some(Ok(WsMessage::Text(text))) => text,
            Some(Ok(WsMessage::Ping(_))) => {
                self.setup.me.pings.fetch_add(1, Ordering::Relaxed);
                return ControlFlow::Continue(());
            }
            Some(Ok(WsMessage::Close(frame))) => {
                return self.closed(format!("closed by server: {frame:?}"));
            }
            Some(Ok(WsMessage::Binary(_))) => {
                self.out.foreign += 1;
                return ControlFlow::Continue(());
            }
            Some(Ok(_)) => return ControlFlow::Continue(()),
            Some(Err(e)) => return self.closed(format!("read error: {e}")),
            None => return self.closed("connection ended".to_owned()),
        };
        self.on_text(&text, at);
        ControlFlow::Continue(())
    }

    fn closed(&mut self, why: String) -> ControlFlow<()> {
        self.out.closed = Some(why);
        ControlFlow::Break(())
    }

    /// One text frame, received at `at`.
    fn on_text(&mut self, text: &str, at: Instant) {
        let frame = match serde_json::from_str::<ServerFrame>(text) {
            Ok(frame) => frame,
            Err(e) => {
                self.out.foreign += 1;
                note(&mut self.out.errors, format!("unreadable frame: {e}"));
                return;
            }
        };
        match frame {
            ServerFrame::Message { room_id, message } => self.on_message(&room_id, &message, at),
            ServerFrame::History { room_id, messages } => {
                self.on_history(&room_id, &messages, at, text.len());
            }
            ServerFrame::Error {
                code,
                message,
                reference,
            } => {
                self.setup.me.errors.fetch_add(1, Ordering::Relaxed);
                note(
                    &mut self.out.errors,
                    format!(
                        "error frame: {} {message} (ref {reference:?})",
                        code.as_str()
                    ),
                );
            }
            // Protocol 1.1's frames are not part of what the engine measures.
            ServerFrame::Ready { .. }
            | ServerFrame::Rooms { .. }
            | ServerFrame::RoomOpened { .. }
            | ServerFrame::RoomClosed { .. }
            | ServerFrame::Seen { .. }
            | ServerFrame::Typing { .. }
            | ServerFrame::Delivered { .. }
            | ServerFrame::MessageDeleted { .. }
            | ServerFrame::Presence { .. } => {}
        }
    }

    fn on_message(&mut self, room_id: &RoomId, message: &Message, at: Instant) {
        let own = message.sender_id.as_str() == self.setup.my_user;
        let Some(key) = self.check_message(room_id, message) else {
            return;
        };
        if let Some(gate) = self.setup.gate.as_ref() {
            gate.last_seq
                .store(self.out.check.last_seq(), Ordering::Release);
        }
        let number = key & ((1 << 56) - 1);
        if own {
            self.on_own_copy(number, at);
        } else {
            self.on_delivered(number, at);
        }
    }

    /// Checks a message frame; returns its key when it is a new message of this room.
    fn check_message(&mut self, room_id: &RoomId, message: &Message) -> Option<Key> {
        if *room_id != self.setup.room_id || message.room_id != self.setup.room_id {
            self.out.foreign += 1;
            return None;
        }
        let Some((tag, number)) = check::parse_client_msg_id(message.client_msg_id.as_str()) else {
            self.out.foreign += 1;
            return None;
        };
        let key = check::key(tag, number);
        match self.out.check.observe(message.seq.get(), key) {
            Seen::New => Some(key),
            Seen::Duplicate => None,
        }
    }

    /// This member's own message `number` came back: committed and fanned out.
    fn on_own_copy(&mut self, number: u64, at: Instant) {
        self.setup.me.confirmed.fetch_add(1, Ordering::Relaxed);
        let wrote = self
            .written
            .remove(&number)
            .or_else(|| self.stamped(number));
        if let Some(w) = wrote {
            self.setup
                .hists
                .confirm
                .record(at.saturating_duration_since(w));
        }
        self.send_next();
    }

    /// The other member's message `number` arrived; in scheduled modes its latency counts
    /// from its due time once the warm-up is over.
    fn on_delivered(&self, number: u64, at: Instant) {
        self.setup.me.delivered.fetch_add(1, Ordering::Relaxed);
        let Some(clock) = self.setup.clock else {
            return;
        };
        let due = clock.at(number);
        if due < clock.measure_from {
            return;
        }
        let hists = &self.setup.hists;
        hists
            .from_schedule
            .record(at.saturating_duration_since(due));
        hists.recent.record(at.saturating_duration_since(due));
        if let Some(w) = self.stamped(number) {
            hists.from_write.record(at.saturating_duration_since(w));
        }
    }

    /// When scheduled message `number` was handed to the socket, if it was stamped.
    fn stamped(&self, number: u64) -> Option<Instant> {
        self.setup
            .stamps
            .as_ref()
            .and_then(|s| s.written_at(usize::try_from(number).unwrap_or(usize::MAX)))
    }

    fn on_history(&mut self, room_id: &RoomId, messages: &[Message], at: Instant, bytes: usize) {
        let setup = &self.setup;
        let out = &mut self.out;
        setup.me.history_answered.fetch_add(1, Ordering::Relaxed);
        out.history_bytes += bytes as u64;
        let Some(gate) = setup.gate.as_ref() else {
            out.foreign += 1;
            return;
        };
        let request = gate.inflight.lock().ok().and_then(|mut q| q.pop_front());
        gate.permits.add_permits(1);
        let Some((due, written, seen_before)) = request else {
            out.foreign += 1;
            return;
        };
        if let Some(clock) = setup.clock
            && due >= clock.measure_from
        {
            setup
                .hists
                .history
                .record(at.saturating_duration_since(due));
            setup
                .hists
                .recent_history
                .record(at.saturating_duration_since(due));
            setup
                .hists
                .history_from_write
                .record(at.saturating_duration_since(written));
        }
        let gapless = messages
            .windows(2)
            .all(|w| w[1].seq.get() == w[0].seq.get() + 1);
        let last = messages.last().map_or(0, |m| m.seq.get());
        let expected_len = usize::try_from(last.min(u64::from(HISTORY_WINDOW))).unwrap_or(0);
        let ours = *room_id == setup.room_id && messages.iter().all(|m| m.room_id == setup.room_id);
        if !(gapless && ours && messages.len() == expected_len && last >= seen_before) {
            out.bad_history += 1;
            note(
                &mut out.errors,
                format!(
                    "bad history page: {} messages, last seq {last}, gapless {gapless}, seen before {seen_before}",
                    messages.len()
                ),
            );
        }
    }
}

fn queue_send(
    setup: &ReaderSetup,
    refill: &Refill,
    number: u64,
    written: &mut HashMap<u64, Instant>,
) -> Result<(), String> {
    let text = send_frame(&setup.room_id, refill.tag, number, &refill.body)?;
    written.insert(number, Instant::now());
    setup
        .tx
        .send(Out::plain(text))
        .map_err(|_| "writer gone".to_owned())
}
