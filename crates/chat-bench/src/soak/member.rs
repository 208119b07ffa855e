//! One soak member: a client that lives for the whole run across many connections.
//!
//! It does what `docs/protocol.md` asks of a real client after a drop: auth again, catch up
//! with `history` `after_seq` = the last seq it holds until a page is shorter than the
//! window, then re-send every message it never saw come back, with the same
//! `client_msg_id`. Between reconnects it sends on a steady schedule, reads the latest page
//! now and then, and marks what it received as seen.
//!
//! Its room's stream is kept across connections: every message, whether it came live, in a
//! catch-up page, in a latest page or as the answer to a re-send, goes through
//! [`Member::ingest`], which applies messages strictly in seq order (holding back those that
//! arrive ahead of a gap) and feeds them to a [`RoomCheck`]. So one room's two members end
//! with two complete views that can be compared seq by seq, and every acknowledged message
//! can be looked for at the other member.
//!
//! Three kinds of member exercise three kinds of trouble: `Normal` ones reconnect now and
//! then with a close frame (churn), `Slow` ones stop reading for a few seconds at a time
//! (late, not never: below the server's write timeout), and `Abrupt` ones drop the TCP
//! connection without a close frame and come back a moment later.
//!
//! Each message body carries its first send time (microseconds after the run's start), so
//! the other member can measure send -> delivery without sharing a table with the sender; a
//! re-send keeps the original time, so the latency of a message that needed a reconnect
//! includes the reconnect.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_domain::protocol::{ClientFrame, ServerFrame};
use chat_domain::{HISTORY_WINDOW, Message, RoomId, Seq};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, watch};
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::rules::Delivery;
use super::{Jitter, Shared};
use crate::check::{self, Key, RoomCheck, Seen};
use crate::conn::{self, Target, WsSink, WsStream};
use crate::nodes::Nodes;

/// How a member misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reconnects now and then with a close frame (when `--churn` > 0).
    Normal,
    /// Stops reading for `--slow-pause` seconds, reads for as long, and so on.
    Slow,
    /// Drops the TCP connection without a close frame every `--abrupt-secs` or so.
    Abrupt,
}

/// Where the run is. Members watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The soak proper: every kind of traffic and trouble.
    Run,
    /// No new sends, no planned drops, no pauses: reconnect if needed, catch up, re-send
    /// until everything is acknowledged and delivered.
    Drain,
    /// Close and report.
    Finish,
}

/// What every member shares: the schedule of its traffic.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The run's clock; bodies carry microseconds after it.
    pub t0: Instant,
    /// One new message per member every this long (None: no sends).
    pub send_every: Option<Duration>,
    /// One latest-page read per member every this long.
    pub history_every: Option<Duration>,
    /// A `seen` mark per member every this long (when something new arrived).
    pub seen_every: Duration,
    /// Mean time between planned reconnects of a `Normal` member (None: never).
    pub churn_every: Option<Duration>,
    /// Mean time between drops of an `Abrupt` member.
    pub abrupt_every: Duration,
    /// A `Slow` member's pause (and its reading time between pauses).
    pub slow_pause: Duration,
    /// An unacknowledged message is sent again after this long.
    pub resend_after: Duration,
    pub body_len: usize,
    pub per_source_ip: usize,
}

/// Live figures of one member, read by the drain.
#[derive(Debug, Default)]
pub struct Live {
    /// Own messages sent and not yet acknowledged.
    pub pending: AtomicU64,
    /// Own messages acknowledged (own copy seen).
    pub acked: AtomicU64,
    /// The other member's messages received (distinct).
    pub delivered: AtomicU64,
    /// Messages held back behind a gap, or a catch-up still going on.
    pub behind: AtomicBool,
}

/// One member's setup.
pub struct Setup {
    pub room: RoomId,
    /// 0 = `a`, 1 = `b`.
    pub side: usize,
    pub token: String,
    /// Connection number `2 room + side` (its node and source address).
    pub n: usize,
    pub kind: Kind,
    pub plan: Arc<Plan>,
    pub shared: Arc<Shared>,
    pub live: Arc<Live>,
    pub nodes: Arc<Nodes>,
    /// Bounds the first connects of all members together.
    pub first_connects: Arc<Semaphore>,
}

/// What a member found, for the end of the run.
pub struct End {
    pub tag: u8,
    pub view: RoomCheck,
    pub acked: HashSet<u64>,
    pub unacked: u64,
    /// Seqs held back behind a gap that never closed.
    pub gaps: u64,
    pub conflicting: u64,
    pub live_out_of_order: u64,
    pub bad_history: u64,
    /// Where the member stood when the run ended, when it was not in step (for the report).
    pub state: Option<String>,
}

/// The exactly-once check of one room, from its two members' ends (in side order).
pub fn room_delivery(a: &End, b: &End) -> Delivery {
    let mut d = Delivery::default();
    for (me, peer) in [(a, b), (b, a)] {
        d.acked += me.acked.len() as u64;
        d.lost += me
            .acked
            .iter()
            .filter(|&&n| !peer.view.contains(check::key(me.tag, n)))
            .count() as u64;
        d.duplicated += me.view.duplicates;
        d.conflicting += me.conflicting;
        d.live_out_of_order += me.live_out_of_order;
        d.gaps += me.gaps;
        d.unacked += me.unacked;
        d.bad_history += me.bad_history;
    }
    d.disagreements += check::disagreements(&a.view, &b.view);
    d
}

/// A message sent and not acknowledged yet.
struct Pending {
    /// First send, microseconds after `t0` (carried in the body).
    micros: u64,
    /// Last time it was written on a connection.
    last_sent: Instant,
}

/// The history request in flight on the current connection (replies carry no request id,
/// so there is at most one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    CatchUp,
    Latest,
}

/// Why a connection ended.
enum Ended {
    Planned,
    Abrupt,
    Lost(String),
    Finish,
}

pub struct Member {
    s: Setup,
    tag: u8,
    peer_tag: u8,
    target: Target,
    node: usize,
    source: Option<IpAddr>,
    jitter: Jitter,
    /// Connections opened so far.
    connections: u64,
    next_number: u64,
    pending: BTreeMap<u64, Pending>,
    acked: HashSet<u64>,
    view: Option<RoomCheck>,
    /// Messages ahead of a gap: seq -> (key, first-send micros).
    ahead: BTreeMap<u64, (Key, Option<u64>)>,
    conflicting: u64,
    live_out_of_order: u64,
    bad_history: u64,
    // Per connection.
    caught_up: bool,
    asked: Option<(Asked, Instant)>,
    catch_up_retry: Option<Instant>,
    resent_here: HashSet<u64>,
    live_last: u64,
    seen_marked: u64,
    // Schedules, across connections.
    next_send: Instant,
    next_history: Instant,
    next_seen: Instant,
    next_sweep: Instant,
}

/// A planned end of a connection further away than any run.
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);
/// A connect (TCP, upgrade, auth, `ready`) that takes longer is given up and tried again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A history request without an answer for this long is given up.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(20);

impl Member {
    pub fn new(s: Setup) -> Self {
        let (node, target) = s.nodes.of_connection(s.n);
        let target = target.clone();
        let source = target.source_for(s.n, s.plan.per_source_ip);
        let mut jitter = Jitter::new(s.n as u64 + 1);
        let now = Instant::now();
        // Spread each member's schedule over its period so the total is steady.
        let phase = |every: Option<Duration>, j: &mut Jitter| {
            every.map_or(now + FAR, |d| now + d.mul_f64(j.unit()))
        };
        let next_send = phase(s.plan.send_every, &mut jitter);
        let next_history = phase(s.plan.history_every, &mut jitter);
        let next_seen = phase(Some(s.plan.seen_every), &mut jitter);
        let (tag, peer_tag) = if s.side == 0 {
            (b'a', b'b')
        } else {
            (b'b', b'a')
        };
        Self {
            tag,
            peer_tag,
            target,
            node,
            source,
            jitter,
            connections: 0,
            next_number: 0,
            pending: BTreeMap::new(),
            acked: HashSet::new(),
            view: None,
            ahead: BTreeMap::new(),
            conflicting: 0,
            live_out_of_order: 0,
            bad_history: 0,
            caught_up: false,
            asked: None,
            catch_up_retry: None,
            resent_here: HashSet::new(),
            live_last: 0,
            seen_marked: 0,
            next_send,
            next_history,
            next_seen,
            next_sweep: now,
            s,
        }
    }

    /// Connects, runs connections one after the other until [`Phase::Finish`], and returns
    /// what the member found.
    pub async fn run(mut self, mut phase: watch::Receiver<Phase>) -> End {
        let mut first = true;
        let mut backoff = Duration::from_millis(500);
        loop {
            if *phase.borrow() == Phase::Finish {
                break;
            }
            let opened = {
                let _permit = if first {
                    self.s.first_connects.acquire().await.ok()
                } else {
                    None
                };
                // Bounded: a server that accepts and never answers must not hold the member.
                tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    conn::open(&self.target, self.source, &self.s.token),
                )
                .await
                .unwrap_or_else(|_| Err(format!("no ready within {CONNECT_TIMEOUT:?}")))
            };
            let authed = match opened {
                Ok(a) => a,
                Err(e) => {
                    Shared::bump(&self.s.shared.connect_failures);
                    self.note(format!("connect: {e}"));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = phase.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(500);
            self.s.nodes.note_connected(self.node);
            self.connections += 1;
            Shared::bump(&self.s.shared.connects);
            if first {
                first = false;
                Shared::bump(&self.s.shared.ready);
            }
            let room_last = authed
                .rooms
                .iter()
                .find(|r| r.room_id == self.s.room)
                .map_or(0, |r| r.last_seq);
            let ended = self.connection(authed.ws, room_last, &mut phase).await;
            let pause = match ended {
                Ended::Finish => break,
                Ended::Planned => {
                    Shared::bump(&self.s.shared.planned_closes);
                    Duration::from_millis(200 + (self.jitter.unit() * 800.0) as u64)
                }
                Ended::Abrupt => {
                    Shared::bump(&self.s.shared.abrupt_drops);
                    Duration::from_millis(1000 + (self.jitter.unit() * 2000.0) as u64)
                }
                Ended::Lost(why) => {
                    self.s.shared.count_server_close(&why);
                    self.note(format!("connection lost: {why}"));
                    Duration::from_millis(500)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = phase.changed() => {}
            }
        }
        self.end()
    }

    fn end(self) -> End {
        let gaps = self.ahead.len() as u64;
        let state = (gaps > 0 || !self.pending.is_empty() || !self.caught_up).then(|| {
            format!(
                "member {}: last seq {}, held ahead {:?}, unacked {}, caught up {}, asked {:?}, connections {}",
                self.s.n,
                self.last_seq(),
                self.ahead.keys().take(5).collect::<Vec<_>>(),
                self.pending.len(),
                self.caught_up,
                self.asked.map(|(a, at)| (a, at.elapsed())),
                self.connections
            )
        });
        End {
            tag: self.tag,
            view: self.view.unwrap_or_default(),
            acked: self.acked,
            unacked: self.pending.len() as u64,
            gaps,
            conflicting: self.conflicting,
            live_out_of_order: self.live_out_of_order,
            bad_history: self.bad_history,
            state,
        }
    }

    fn note(&self, text: String) {
        let at = self.s.plan.t0.elapsed().as_secs_f64();
        self.s
            .shared
            .note(format!("{at:.1}s member {}: {text}", self.s.n));
    }

    fn publish(&self) {
        let live = &self.s.live;
        live.pending
            .store(self.pending.len() as u64, Ordering::Release);
        live.behind
            .store(!self.ahead.is_empty() || !self.caught_up, Ordering::Release);
    }

    /// One connection, from `ready` until it ends.
    async fn connection(
        &mut self,
        ws: conn::Ws,
        room_last: u64,
        phase: &mut watch::Receiver<Phase>,
    ) -> Ended {
        let (mut sink, mut stream) = ws.split();
        if self.view.is_none() {
            self.view = Some(RoomCheck::starting_after(room_last));
        }
        self.caught_up = false;
        self.asked = None;
        self.catch_up_retry = None;
        self.resent_here.clear();
        self.live_last = room_last;
        self.publish();
        let plan = self.s.plan.clone();
        // A connection lives 0.5..1.5 times the mean; the first one 0..1 times, or nobody
        // would reconnect before half the mean had passed and the churn would start in a burst.
        let first = self.connections == 1;
        let spread = if first {
            self.jitter.unit()
        } else {
            0.5 + self.jitter.unit()
        };
        let lifetime = match self.s.kind {
            Kind::Normal => plan.churn_every.map(|d| d.mul_f64(spread)),
            Kind::Abrupt => Some(plan.abrupt_every.mul_f64(spread)),
            Kind::Slow => None,
        };
        let drop_at = lifetime.map_or(Instant::now() + FAR, |d| Instant::now() + d);
        // A slow member reads for `slow_pause`, then stops for as long.
        let mut pause_toggle = Instant::now() + plan.slow_pause;
        let mut paused = false;
        if let Err(e) = self.ask_catch_up(&mut sink).await {
            return Ended::Lost(e);
        }
        loop {
            let now = Instant::now();
            let ph = *phase.borrow();
            if ph == Phase::Finish {
                self.goodbye(sink, stream).await;
                return Ended::Finish;
            }
            if ph == Phase::Run && now >= drop_at {
                if self.s.kind == Kind::Abrupt {
                    // No close frame: both halves dropped, the socket closes under the server.
                    drop(sink);
                    drop(stream);
                    return Ended::Abrupt;
                }
                self.goodbye(sink, stream).await;
                return Ended::Planned;
            }
            if self.s.kind == Kind::Slow {
                if ph != Phase::Run {
                    paused = false;
                } else if now >= pause_toggle {
                    paused = !paused;
                    pause_toggle = now + plan.slow_pause;
                }
            }
            if let Err(e) = self.due_work(&mut sink, ph, now).await {
                return Ended::Lost(e);
            }
            self.publish();
            let mut wake = [self.next_sweep, drop_at]
                .into_iter()
                .chain((ph == Phase::Run).then_some(self.next_send))
                .chain((ph == Phase::Run).then_some(self.next_history))
                .chain((ph == Phase::Run).then_some(self.next_seen))
                .chain(self.catch_up_retry)
                .chain(self.asked.map(|(_, at)| at + HISTORY_TIMEOUT))
                .min()
                .unwrap_or(now + Duration::from_secs(1));
            if self.s.kind == Kind::Slow && ph == Phase::Run {
                wake = wake.min(pause_toggle);
            }
            let wake = tokio::time::Instant::from_std(wake.max(now));
            tokio::select! {
                biased;
                _ = phase.changed() => {}
                frame = stream.next(), if !paused => {
                    match frame {
                        Some(Ok(WsMessage::Text(text))) => {
                            if let Err(e) = self.on_text(&text, &mut sink).await {
                                return Ended::Lost(e);
                            }
                        }
                        Some(Ok(WsMessage::Close(frame))) => {
                            let why = frame.map_or_else(
                                || "close without a reason".to_owned(),
                                |f| format!("close {} {}", u16::from(f.code), f.reason),
                            );
                            return Ended::Lost(why);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Ended::Lost(format!("read: {e}")),
                        None => return Ended::Lost("connection ended".to_owned()),
                    }
                }
                _ = sleep_until(wake) => {}
            }
        }
    }

    /// Sends a close frame and reads what is still coming (up to 2 s), so a planned close
    /// loses nothing the server had already written.
    async fn goodbye(&mut self, mut sink: WsSink, mut stream: WsStream) {
        let _ = sink.close().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, stream.next()).await {
            if let WsMessage::Text(text) = frame
                && let Ok(ServerFrame::Message { room_id, message }) =
                    serde_json::from_str::<ServerFrame>(&text)
                && room_id == self.s.room
            {
                self.on_message(&message, false, false);
            }
        }
        self.publish();
    }

    /// Whatever is due now: a new send, a latest-page read, a seen mark, re-sends, a catch-up
    /// retry, a history request given up.
    async fn due_work(&mut self, sink: &mut WsSink, ph: Phase, now: Instant) -> Result<(), String> {
        let plan = self.s.plan.clone();
        if let Some((what, at)) = self.asked
            && now >= at + HISTORY_TIMEOUT
        {
            Shared::bump(&self.s.shared.history_failed);
            self.note(format!(
                "history ({what:?}) unanswered for {HISTORY_TIMEOUT:?}"
            ));
            self.asked = None;
            if what == Asked::CatchUp {
                self.catch_up_retry = Some(now);
            }
        }
        if self.catch_up_retry.is_some_and(|at| now >= at) && self.asked.is_none() {
            self.ask_catch_up(sink).await?;
        }
        if let Some(every) = plan.send_every
            && now >= self.next_send
        {
            // Open loop per member; a tick missed while disconnected is skipped.
            self.next_send = (self.next_send + every).max(now);
            if ph == Phase::Run && self.caught_up {
                self.send_new(sink).await?;
            }
        }
        if self.caught_up && now >= self.next_sweep {
            // Re-sends need no history answer: only a finished catch-up (what came back
            // during it is not re-sent).
            self.next_sweep = now + Duration::from_secs(1);
            let stale: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, p)| now.duration_since(p.last_sent) >= plan.resend_after)
                .map(|(&n, _)| n)
                .collect();
            for n in stale {
                self.resend(sink, n).await?;
            }
        }
        if !self.caught_up || self.asked.is_some() {
            return Ok(());
        }
        if ph == Phase::Run {
            if let Some(every) = plan.history_every
                && now >= self.next_history
            {
                self.next_history = (self.next_history + every).max(now);
                let text = frame(&ClientFrame::History {
                    room_id: self.s.room.clone(),
                    before_seq: None,
                    after_seq: None,
                    limit: None,
                })?;
                write(sink, text).await?;
                self.asked = Some((Asked::Latest, now));
                Shared::bump(&self.s.shared.history_sent);
                return Ok(());
            }
            if now >= self.next_seen {
                self.next_seen = (self.next_seen + plan.seen_every).max(now);
                let last = self.last_seq();
                if last > self.seen_marked
                    && let Ok(up_to) = Seq::new(last)
                {
                    write(
                        sink,
                        frame(&ClientFrame::Seen {
                            room_id: self.s.room.clone(),
                            up_to_seq: up_to,
                        })?,
                    )
                    .await?;
                    self.seen_marked = last;
                    Shared::bump(&self.s.shared.seen_sent);
                }
            }
        }
        Ok(())
    }

    fn last_seq(&self) -> u64 {
        self.view.as_ref().map_or(0, RoomCheck::last_seq)
    }

    async fn ask_catch_up(&mut self, sink: &mut WsSink) -> Result<(), String> {
        let text = frame(&ClientFrame::History {
            room_id: self.s.room.clone(),
            before_seq: None,
            after_seq: Some(self.last_seq()),
            limit: None,
        })?;
        write(sink, text).await?;
        Shared::bump(&self.s.shared.catch_ups);
        self.asked = Some((Asked::CatchUp, Instant::now()));
        self.catch_up_retry = None;
        Ok(())
    }

    fn body(&self, micros: u64) -> String {
        let mut text = format!("soak {micros} ");
        let fill = "matchchat soak ";
        let want = self
            .s
            .plan
            .body_len
            .max(text.len())
            .min(chat_domain::MAX_BODY_CHARS);
        text.extend(fill.chars().cycle().take(want.saturating_sub(text.len())));
        text.trim_end().to_owned()
    }

    fn send_frame(&self, number: u64, micros: u64) -> Result<String, String> {
        crate::engine::send_frame(&self.s.room, self.tag, number, &self.body(micros))
    }

    async fn send_new(&mut self, sink: &mut WsSink) -> Result<(), String> {
        let number = self.next_number;
        self.next_number += 1;
        let micros = u64::try_from(self.s.plan.t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        let text = self.send_frame(number, micros)?;
        self.pending.insert(
            number,
            Pending {
                micros,
                last_sent: Instant::now(),
            },
        );
        Shared::bump(&self.s.shared.sent);
        write(sink, text).await
    }

    async fn resend(&mut self, sink: &mut WsSink, number: u64) -> Result<(), String> {
        let Some(p) = self.pending.get_mut(&number) else {
            return Ok(());
        };
        p.last_sent = Instant::now();
        let micros = p.micros;
        let text = self.send_frame(number, micros)?;
        self.resent_here.insert(number);
        Shared::bump(&self.s.shared.resent);
        write(sink, text).await
    }

    async fn on_text(&mut self, text: &str, sink: &mut WsSink) -> Result<(), String> {
        let Ok(frame) = serde_json::from_str::<ServerFrame>(text) else {
            self.conflicting += 1;
            self.note(format!("unreadable frame: {text}"));
            return Ok(());
        };
        match frame {
            ServerFrame::Message { room_id, message } => {
                if room_id != self.s.room {
                    self.conflicting += 1;
                } else {
                    self.on_message(&message, true, true);
                }
            }
            ServerFrame::History { room_id, messages } => {
                self.on_history(&room_id, &messages, sink).await?;
            }
            ServerFrame::Seen { .. } => Shared::bump(&self.s.shared.seen_events),
            ServerFrame::Error {
                code,
                message,
                reference,
            } => {
                self.s.shared.count_error(code.as_str());
                let own = reference
                    .as_deref()
                    .and_then(check::parse_client_msg_id)
                    .is_some_and(|(tag, n)| tag == self.tag && self.pending.contains_key(&n));
                if !own && let Some((what, _)) = self.asked.take() {
                    // Not a send's error: the history request's (seen marks are never
                    // sent while one is out, so nothing else is waiting for an answer).
                    Shared::bump(&self.s.shared.history_failed);
                    if what == Asked::CatchUp {
                        self.catch_up_retry = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
                if code.as_str() != "internal" && code.as_str() != "rate_limited" {
                    self.note(format!(
                        "error {} {message} ref {reference:?}",
                        code.as_str()
                    ));
                }
                // A failed send is sent again by the sweep after --resend-secs.
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_history(
        &mut self,
        room_id: &RoomId,
        messages: &[Message],
        sink: &mut WsSink,
    ) -> Result<(), String> {
        let whole = room_id == &self.s.room
            && messages.iter().all(|m| m.room_id == self.s.room)
            && messages
                .windows(2)
                .all(|w| w[1].seq.get() == w[0].seq.get() + 1);
        if !whole {
            self.bad_history += 1;
        }
        let room = self.s.room.clone();
        for m in messages.iter().filter(|m| m.room_id == room) {
            self.on_message(m, false, false);
        }
        let asked = self.asked.take();
        match asked {
            Some((Asked::Latest, _)) => Shared::bump(&self.s.shared.history_answered),
            Some((Asked::CatchUp, _)) => Shared::bump(&self.s.shared.catch_up_pages),
            None => {}
        }
        if asked.map(|(a, _)| a) == Some(Asked::CatchUp) {
            if messages.len() >= HISTORY_WINDOW as usize {
                // More pages: ask again after what is held now.
                return self.ask_catch_up(sink).await;
            }
            if !self.ahead.is_empty() {
                // A gap the page did not close: ask again in a moment (not in a tight loop).
                self.catch_up_retry = Some(Instant::now() + Duration::from_secs(1));
                return Ok(());
            }
            if !self.caught_up {
                self.caught_up = true;
                // Re-send everything never acknowledged, with its client_msg_id.
                let numbers: Vec<u64> = self.pending.keys().copied().collect();
                for n in numbers {
                    self.resend(sink, n).await?;
                }
            }
        }
        Ok(())
    }

    /// One `message`: live (`live`), or from a page or a re-send's answer.
    fn on_message(&mut self, m: &Message, live: bool, check_order: bool) {
        let Some((tag, number)) = check::parse_client_msg_id(m.client_msg_id.as_str()) else {
            self.conflicting += 1;
            return;
        };
        if tag != self.tag && tag != self.peer_tag {
            self.conflicting += 1;
            return;
        }
        let seq = m.seq.get();
        let own_resent = tag == self.tag && self.resent_here.contains(&number);
        if live && check_order && !own_resent {
            // A re-send's answer is an old message sent to this connection only; any other
            // live message must come after the last one.
            if seq <= self.live_last {
                self.live_out_of_order += 1;
            }
            self.live_last = self.live_last.max(seq);
        }
        let micros = m
            .text()
            .split_whitespace()
            .nth(1)
            .and_then(|t| t.parse().ok());
        self.ingest(seq, check::key(tag, number), micros);
    }

    /// Applies messages strictly in seq order; those ahead of a gap wait in `ahead`.
    fn ingest(&mut self, seq: u64, key: Key, micros: Option<u64>) {
        let Some(view) = self.view.as_ref() else {
            return;
        };
        let last = view.last_seq();
        if seq <= last {
            // Had already: it must be the same message.
            let at = usize::try_from(seq.saturating_sub(view.base_seq + 1)).unwrap_or(usize::MAX);
            if seq > view.base_seq && view.order.get(at) != Some(&key) {
                self.conflicting += 1;
            }
            return;
        }
        match self.ahead.get(&seq) {
            Some((k, _)) if *k != key => self.conflicting += 1,
            Some(_) => {}
            None => {
                self.ahead.insert(seq, (key, micros));
            }
        }
        loop {
            let Some(view) = self.view.as_mut() else {
                return;
            };
            let next = view.last_seq() + 1;
            let Some((k, micros)) = self.ahead.remove(&next) else {
                break;
            };
            if view.observe(next, k) == Seen::New {
                self.on_new(k, micros);
            }
        }
    }

    fn on_new(&mut self, key: Key, micros: Option<u64>) {
        let tag = u8::try_from(key >> 56).unwrap_or(0);
        let number = key & ((1 << 56) - 1);
        if tag == self.tag {
            if number >= self.next_number {
                self.conflicting += 1;
                return;
            }
            self.pending.remove(&number);
            if self.acked.insert(number) {
                Shared::bump(&self.s.shared.acked);
                self.s.live.acked.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            Shared::bump(&self.s.shared.delivered);
            self.s.live.delivered.fetch_add(1, Ordering::Relaxed);
            if let Some(micros) = micros {
                let sent = self.s.plan.t0 + Duration::from_micros(micros);
                let d = sent.elapsed();
                self.s.shared.latency.record(d);
                self.s.shared.recent.record(d);
            }
        }
    }
}

fn frame(f: &ClientFrame) -> Result<String, String> {
    serde_json::to_string(f).map_err(|e| e.to_string())
}

async fn write(sink: &mut WsSink, text: String) -> Result<(), String> {
    sink.send(WsMessage::text(text))
        .await
        .map_err(|e| format!("write: {e}"))
}

/// Members of all rooms and their live figures: has everything sent been acknowledged and
/// reached the other member, and is no member behind?
pub fn drained(lives: &[[Arc<Live>; 2]]) -> bool {
    lives.iter().all(|pair| {
        (0..2).all(|side| {
            let me = &pair[side];
            let peer = &pair[1 - side];
            me.pending.load(Ordering::Acquire) == 0
                && !me.behind.load(Ordering::Acquire)
                && peer.delivered.load(Ordering::Acquire) >= me.acked.load(Ordering::Acquire)
        })
    })
}

/// Sum of every member's unacknowledged messages.
pub fn unacked(lives: &[[Arc<Live>; 2]]) -> u64 {
    lives
        .iter()
        .flatten()
        .map(|l| l.pending.load(Ordering::Relaxed))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(tag: u8, seqs: &[(u64, u8, u64)], acked: &[u64]) -> End {
        let mut view = RoomCheck::starting_after(0);
        for &(seq, t, n) in seqs {
            view.observe(seq, check::key(t, n));
        }
        End {
            tag,
            view,
            acked: acked.iter().copied().collect(),
            unacked: 0,
            gaps: 0,
            conflicting: 0,
            live_out_of_order: 0,
            bad_history: 0,
            state: None,
        }
    }

    #[test]
    fn every_acknowledged_message_must_be_at_the_other_member_once() {
        let stream = [(1, b'a', 0), (2, b'b', 0), (3, b'a', 1)];
        let a = end(b'a', &stream, &[0, 1]);
        let b = end(b'b', &stream, &[0]);
        assert_eq!(
            room_delivery(&a, &b),
            Delivery {
                acked: 3,
                ..Delivery::default()
            }
        );
        // b missed a1: lost, and the views disagree.
        let b_short = end(b'b', &stream[..2], &[0]);
        let d = room_delivery(&a, &b_short);
        assert_eq!((d.lost, d.disagreements), (1, 1), "{d:?}");
        // b saw a0 twice (stored twice).
        let b_dup = end(
            b'b',
            &[(1, b'a', 0), (2, b'b', 0), (3, b'a', 1), (4, b'a', 0)],
            &[0],
        );
        let d = room_delivery(&a, &b_dup);
        assert_eq!((d.lost, d.duplicated), (0, 1), "{d:?}");
    }
}
