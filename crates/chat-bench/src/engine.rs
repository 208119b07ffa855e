//! What the message modes share: connecting both members of every room, one reader task and
//! one writer task per connection, open-loop schedules, waiting for the last messages, and
//! adding up what arrived.
//!
//! Every connection reads everything the server sends it and checks its room's stream (seq
//! gapless and in order, every message once). A member counts its own messages coming back
//! (`confirmed`: committed and fanned out) and the other member's arriving (`delivered`).
//! When sending is over, each member's `final_sent` is published; the run then waits until
//! every member has all of its own messages back and the other member has them too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_domain::protocol::{ClientFrame, ServerFrame};
use chat_domain::{ClientMsgId, HISTORY_WINDOW, Message, RoomId};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::check::{self, Key, RoomCheck, Seen};
use crate::conn::{self, Authed, Gate, Out, Stamps, Target};
use crate::provision::Pair;

/// Not published yet.
const UNSET: u64 = u64::MAX;

/// Live counters of one member, read by the progress line and the drain.
#[derive(Debug)]
pub struct MemberStats {
    /// Messages handed to the writer.
    pub sent: AtomicU64,
    /// Own messages come back (distinct).
    pub confirmed: AtomicU64,
    /// The other member's messages received (distinct).
    pub delivered: AtomicU64,
    /// What `sent` ends at, once this member sends no more.
    pub final_sent: AtomicU64,
    pub history_sent: AtomicU64,
    pub history_answered: AtomicU64,
    pub history_final: AtomicU64,
    pub errors: AtomicU64,
    pub pings: AtomicU64,
    pub closed: AtomicBool,
}

impl MemberStats {
    pub fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            final_sent: AtomicU64::new(UNSET),
            history_sent: AtomicU64::new(0),
            history_answered: AtomicU64::new(0),
            history_final: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    pub fn publish_final(&self) {
        self.final_sent
            .store(self.sent.load(Ordering::Acquire), Ordering::Release);
    }
}

/// An HDR histogram of microseconds, shared by the reader tasks.
pub struct Hist(Mutex<Histogram<u64>>);

impl Hist {
    pub fn new() -> Self {
        // Auto-resizing, 3 significant digits: 1 µs .. whatever is seen.
        Self(Mutex::new(
            Histogram::new(3).unwrap_or_else(|e| panic!("histogram: {e}")),
        ))
    }

    pub fn record(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        if let Ok(mut h) = self.0.lock() {
            let _ = h.record(micros);
        }
    }

    pub fn snapshot(&self) -> Histogram<u64> {
        self.0
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Takes the contents, leaving it empty (for per-second progress figures).
    pub fn take(&self) -> Histogram<u64> {
        match self.0.lock() {
            Ok(mut h) => {
                let out = h.clone();
                h.reset();
                out
            }
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Latency histograms of a run.
pub struct Hists {
    /// Scheduled send time -> arrival at the other member (open loop).
    pub from_schedule: Hist,
    /// Actual write -> arrival at the other member.
    pub from_write: Hist,
    /// Write -> own copy back (commit + fan-out), closed loop.
    pub confirm: Hist,
    /// History request: scheduled time -> response.
    pub history: Hist,
    /// History request: actual write -> response.
    pub history_from_write: Hist,
    /// The last second of `from_schedule`, for progress lines.
    pub recent: Hist,
    /// The last second of `history`, for progress lines.
    pub recent_history: Hist,
}

impl Hists {
    pub fn new() -> Self {
        Self {
            from_schedule: Hist::new(),
            from_write: Hist::new(),
            confirm: Hist::new(),
            history: Hist::new(),
            history_from_write: Hist::new(),
            recent: Hist::new(),
            recent_history: Hist::new(),
        }
    }
}

/// The open-loop clock of a scheduled run: message `i` is due at `t0 + i / rate`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub t0: Instant,
    pub rate: f64,
    /// Only what was scheduled at or after this is measured.
    pub measure_from: Instant,
}

impl Clock {
    pub fn at(&self, i: u64) -> Instant {
        if self.rate > 0.0 && self.rate.is_finite() {
            self.t0 + Duration::from_secs_f64(i as f64 / self.rate)
        } else {
            self.t0
        }
    }
}

/// Runs `dispatch(i, due)` for i = 0.. at `clock`'s times on the calling thread (a plain
/// thread sleeps with microsecond precision; tokio's timer has 1 ms granularity) until
/// `count` or `stop`. A late dispatch is not skipped or re-timed: its lateness counts in the
/// measured latency. Returns how many were dispatched.
pub fn run_schedule(
    clock: Clock,
    count: u64,
    stop: &AtomicBool,
    mut dispatch: impl FnMut(u64, Instant),
) -> u64 {
    for i in 0..count {
        let due = clock.at(i);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if stop.load(Ordering::Relaxed) {
            return i;
        }
        dispatch(i, due);
    }
    count
}

/// One member's connection, ready to run.
pub struct Live {
    pub authed: Authed,
    pub room_idx: usize,
    pub side: usize,
}

/// Connects every token (index, token) with at most `concurrency` connects in flight and
/// source addresses spread per `per_source_ip`. Prints progress to stderr.
pub async fn connect_all(
    target: &Target,
    tokens: Vec<(usize, String)>,
    concurrency: usize,
    per_source_ip: usize,
    label: &str,
) -> Vec<(usize, Result<Authed, String>)> {
    let total = tokens.len();
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut pending: FuturesUnordered<_> = tokens
        .into_iter()
        .map(|(n, token)| {
            let permits = permits.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                (
                    n,
                    conn::open(&target, target.source_for(n, per_source_ip), &token).await,
                )
            })
        })
        .collect();
    let mut out = Vec::with_capacity(total);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        tokio::select! {
            next = pending.next() => match next {
                Some(Ok(result)) => out.push(result),
                Some(Err(e)) => out.push((usize::MAX, Err(format!("connect task: {e}")))),
                None => break,
            },
            _ = tick.tick() => {
                eprintln!("[{label}] {:>5.1}s connected {}/{}", started.elapsed().as_secs_f64(), out.len(), total);
            }
        }
    }
    out
}

/// Connects both members of every room. Any failure fails the run (it cannot measure what it
/// cannot connect).
pub async fn connect_pairs(
    target: &Target,
    pairs: &[Pair],
    concurrency: usize,
    per_source_ip: usize,
) -> Result<Vec<Live>, String> {
    let tokens = pairs
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            [
                (2 * i, p.members[0].token.clone()),
                (2 * i + 1, p.members[1].token.clone()),
            ]
        })
        .collect();
    let results = connect_all(target, tokens, concurrency, per_source_ip, "connect").await;
    let mut live = Vec::with_capacity(results.len());
    for (n, result) in results {
        let authed = result.map_err(|e| format!("connection {n}: {e}"))?;
        live.push(Live {
            authed,
            room_idx: n / 2,
            side: n % 2,
        });
    }
    live.sort_by_key(|l| (l.room_idx, l.side));
    Ok(live)
}

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

/// The send frame of message `number` with `tag` to `room`.
pub fn send_frame(room: &RoomId, tag: u8, number: u64, body: &str) -> Result<String, String> {
    let client_msg_id =
        ClientMsgId::new(check::client_msg_id(tag, number)).map_err(|e| e.to_string())?;
    serde_json::to_string(&ClientFrame::Send {
        room_id: room.clone(),
        client_msg_id,
        body: body.to_owned(),
    })
    .map_err(|e| e.to_string())
}

/// The history frame for the latest page of `room`.
pub fn history_frame(room: &RoomId) -> Result<String, String> {
    serde_json::to_string(&ClientFrame::History {
        room_id: room.clone(),
        before_seq: None,
        after_seq: None,
        limit: None,
    })
    .map_err(|e| e.to_string())
}

/// Reads one connection until `finish` or the socket ends.
pub async fn reader(mut stream: conn::WsStream, mut setup: ReaderSetup) -> ReaderOutcome {
    let mut out = ReaderOutcome {
        check: RoomCheck::starting_after(setup.base_seq),
        ..ReaderOutcome::default()
    };
    let mut written: HashMap<u64, Instant> = HashMap::new();
    let mut sent: u64 = 0;
    let mut final_published = false;

    // Throughput: the first window.
    if let Some(refill) = setup.refill.as_ref() {
        let first = refill
            .quota
            .map_or(refill.window as u64, |q| q.min(refill.window as u64));
        for _ in 0..first {
            sent += 1;
            if let Err(e) = queue_send(&setup, refill, sent, &mut written) {
                out.errors.push(e);
            }
        }
        setup.me.sent.store(sent, Ordering::Release);
        if refill.quota.is_some_and(|q| sent >= q) {
            setup.me.publish_final();
            final_published = true;
        }
    }
    let mut stop = setup.refill.as_ref().map(|r| r.stop.clone());

    loop {
        let armed = !final_published;
        let stop_rx = stop.as_mut();
        let stop_changed = async move {
            match stop_rx {
                Some(rx) if armed => rx.changed().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = setup.finish.changed() => break,
            _ = stop_changed => {
                setup.me.publish_final();
                final_published = true;
                continue;
            }
            frame = stream.next() => {
                let at = Instant::now();
                let text = match frame {
                    Some(Ok(WsMessage::Text(text))) => text,
                    Some(Ok(WsMessage::Ping(_))) => {
                        setup.me.pings.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        out.closed = Some(format!("closed by server: {frame:?}"));
                        break;
                    }
                    Some(Ok(WsMessage::Binary(_))) => {
                        out.foreign += 1;
                        continue;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        out.closed = Some(format!("read error: {e}"));
                        break;
                    }
                    None => {
                        out.closed = Some("connection ended".to_owned());
                        break;
                    }
                };
                let frame = match serde_json::from_str::<ServerFrame>(&text) {
                    Ok(frame) => frame,
                    Err(e) => {
                        out.foreign += 1;
                        note(&mut out.errors, format!("unreadable frame: {e}"));
                        continue;
                    }
                };
                match frame {
                    ServerFrame::Message { room_id, message } => {
                        let own = message.sender_id.as_str() == setup.my_user;
                        let Some(key) = on_message(&mut out, &setup, &room_id, &message) else { continue };
                        if let Some(gate) = setup.gate.as_ref() {
                            gate.last_seq.store(out.check.last_seq(), Ordering::Release);
                        }
                        let number = key & ((1 << 56) - 1);
                        if own {
                            setup.me.confirmed.fetch_add(1, Ordering::Relaxed);
                            let wrote = written.remove(&number).or_else(|| {
                                setup.stamps.as_ref().and_then(|s| s.written_at(usize::try_from(number).unwrap_or(usize::MAX)))
                            });
                            if let Some(w) = wrote {
                                setup.hists.confirm.record(at.saturating_duration_since(w));
                            }
                            if let Some(refill) = setup.refill.as_ref() {
                                let stopped = final_published || *refill.stop.borrow();
                                if !stopped && refill.quota.is_none_or(|q| sent < q) {
                                    sent += 1;
                                    if let Err(e) = queue_send(&setup, refill, sent, &mut written) {
                                        note(&mut out.errors, e);
                                    }
                                    setup.me.sent.store(sent, Ordering::Release);
                                }
                                if !final_published && refill.quota.is_some_and(|q| sent >= q) {
                                    setup.me.publish_final();
                                    final_published = true;
                                }
                            }
                        } else {
                            setup.me.delivered.fetch_add(1, Ordering::Relaxed);
                            if let Some(clock) = setup.clock {
                                let due = clock.at(number);
                                if due >= clock.measure_from {
                                    setup.hists.from_schedule.record(at.saturating_duration_since(due));
                                    setup.hists.recent.record(at.saturating_duration_since(due));
                                    if let Some(w) = setup.stamps.as_ref().and_then(|s| s.written_at(usize::try_from(number).unwrap_or(usize::MAX))) {
                                        setup.hists.from_write.record(at.saturating_duration_since(w));
                                    }
                                }
                            }
                        }
                    }
                    ServerFrame::History { room_id, messages } => {
                        on_history(&mut out, &setup, &room_id, &messages, at, text.len());
                    }
                    ServerFrame::Error { code, message, reference } => {
                        setup.me.errors.fetch_add(1, Ordering::Relaxed);
                        note(&mut out.errors, format!("error frame: {} {message} (ref {reference:?})", code.as_str()));
                    }
                    ServerFrame::Ready { .. } | ServerFrame::RoomOpened { .. } | ServerFrame::RoomClosed { .. } | ServerFrame::Seen { .. } => {}
                }
            }
        }
    }
    if out.closed.is_some() {
        setup.me.closed.store(true, Ordering::Release);
    }
    out
}

/// Keeps the first few error texts.
fn note(errors: &mut Vec<String>, e: String) {
    if errors.len() < 5 {
        errors.push(e);
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

/// Checks a message frame; returns its key when it is a new message of this room.
fn on_message(
    out: &mut ReaderOutcome,
    setup: &ReaderSetup,
    room_id: &RoomId,
    message: &Message,
) -> Option<Key> {
    if *room_id != setup.room_id || message.room_id != setup.room_id {
        out.foreign += 1;
        return None;
    }
    let Some((tag, number)) = check::parse_client_msg_id(message.client_msg_id.as_str()) else {
        out.foreign += 1;
        return None;
    };
    let key = check::key(tag, number);
    match out.check.observe(message.seq.get(), key) {
        Seen::New => Some(key),
        Seen::Duplicate => None,
    }
}

fn on_history(
    out: &mut ReaderOutcome,
    setup: &ReaderSetup,
    room_id: &RoomId,
    messages: &[Message],
    at: Instant,
    bytes: usize,
) {
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

/// Has every member all of its messages back and at the other member, and every history
/// request an answer?
pub fn drained(stats: &[[Arc<MemberStats>; 2]]) -> bool {
    stats.iter().all(|pair| {
        (0..2).all(|side| {
            let me = &pair[side];
            let peer = &pair[1 - side];
            let fin = me.final_sent.load(Ordering::Acquire);
            fin != UNSET
                && me.confirmed.load(Ordering::Relaxed) >= fin
                && peer.delivered.load(Ordering::Relaxed) >= fin
                && me.history_answered.load(Ordering::Relaxed)
                    >= me.history_final.load(Ordering::Acquire)
        })
    })
}

pub fn any_closed(stats: &[[Arc<MemberStats>; 2]]) -> bool {
    stats
        .iter()
        .flatten()
        .any(|m| m.closed.load(Ordering::Acquire))
}

/// Sums of the live counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub sent: u64,
    pub confirmed: u64,
    pub delivered: u64,
    pub errors: u64,
    pub history_sent: u64,
    pub history_answered: u64,
    pub pings: u64,
}

pub fn totals(stats: &[[Arc<MemberStats>; 2]]) -> Totals {
    let mut t = Totals::default();
    for m in stats.iter().flatten() {
        t.sent += m.sent.load(Ordering::Relaxed);
        t.confirmed += m.confirmed.load(Ordering::Relaxed);
        t.delivered += m.delivered.load(Ordering::Relaxed);
        t.errors += m.errors.load(Ordering::Relaxed);
        t.history_sent += m.history_sent.load(Ordering::Relaxed);
        t.history_answered += m.history_answered.load(Ordering::Relaxed);
        t.pings += m.pings.load(Ordering::Relaxed);
    }
    t
}

/// A running set of rooms: both members' reader and writer tasks.
pub struct Running {
    pub stats: Vec<[Arc<MemberStats>; 2]>,
    pub hists: Arc<Hists>,
    /// Per room, per side: the channel to the writer (scheduled modes send through it).
    pub senders: Vec<[mpsc::UnboundedSender<Out>; 2]>,
    readers: Vec<JoinHandle<ReaderOutcome>>,
    writers: Vec<JoinHandle<Result<(), String>>>,
    finish: watch::Sender<bool>,
}

/// Window-limited sending: the window, optional per-room per-member quotas, and the stop
/// signal.
pub struct WindowPlan {
    pub window: usize,
    pub quotas: Option<Vec<[u64; 2]>>,
    pub stop: watch::Receiver<bool>,
}

/// How to start the rooms' tasks.
pub struct StartOptions {
    pub clock: Option<Clock>,
    pub stamps: Option<Arc<Stamps>>,
    /// Throughput: window refill; `None` for scheduled modes.
    pub refill: Option<WindowPlan>,
    /// History: side 0 of every room gets a gate.
    pub gates: bool,
    pub body: Arc<str>,
}

/// Starts reader and writer tasks for every connection. `live` is sorted by room then side.
pub fn start(pairs: &[Pair], live: Vec<Live>, opts: StartOptions) -> Result<Running, String> {
    let hists = Arc::new(Hists::new());
    let (finish_tx, finish_rx) = watch::channel(false);
    let stats: Vec<[Arc<MemberStats>; 2]> = pairs
        .iter()
        .map(|_| [Arc::new(MemberStats::new()), Arc::new(MemberStats::new())])
        .collect();
    let gates: Vec<Arc<Gate>> = pairs.iter().map(|_| Arc::new(Gate::new())).collect();
    let mut senders: Vec<Vec<mpsc::UnboundedSender<Out>>> =
        pairs.iter().map(|_| Vec::with_capacity(2)).collect();
    let mut readers = Vec::with_capacity(live.len());
    let mut writers = Vec::with_capacity(live.len());
    for l in live {
        let pair = pairs
            .get(l.room_idx)
            .ok_or("connection for an unknown room")?;
        let base_seq = l
            .authed
            .rooms
            .iter()
            .find(|r| r.room_id == pair.room_id)
            .map(|r| r.last_seq)
            .ok_or_else(|| {
                format!(
                    "ready of {} does not list room {}",
                    l.authed.user_id, pair.room_id
                )
            })?;
        let (sink, stream) = l.authed.ws.split();
        let (tx, rx) = mpsc::unbounded_channel();
        let gate = (opts.gates && l.side == 0).then(|| gates[l.room_idx].clone());
        if let Some(g) = gate.as_ref() {
            g.last_seq.store(base_seq, Ordering::Release);
        }
        writers.push(conn::spawn_writer(
            sink,
            rx,
            opts.stamps.clone(),
            gate.clone(),
        ));
        senders[l.room_idx].push(tx.clone());
        let refill = opts.refill.as_ref().map(|plan| Refill {
            window: plan.window,
            quota: plan.quotas.as_ref().map(|q| q[l.room_idx][l.side]),
            stop: plan.stop.clone(),
            tag: if l.side == 0 { b'a' } else { b'b' },
            body: opts.body.clone(),
        });
        let setup = ReaderSetup {
            room_id: pair.room_id.clone(),
            my_user: pair.members[l.side].user.clone(),
            base_seq,
            me: stats[l.room_idx][l.side].clone(),
            hists: hists.clone(),
            clock: opts.clock,
            stamps: opts.stamps.clone(),
            gate,
            refill,
            tx,
            finish: finish_rx.clone(),
        };
        readers.push(tokio::spawn(reader(stream, setup)));
    }
    let senders = senders
        .into_iter()
        .map(|v| {
            <[mpsc::UnboundedSender<Out>; 2]>::try_from(v)
                .map_err(|_| "a room is missing a member".to_owned())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Running {
        stats,
        hists,
        senders,
        readers,
        writers,
        finish: finish_tx,
    })
}

/// What a finished run found, added up over all rooms.
#[derive(Debug, Default, Clone, Copy)]
pub struct Verdict {
    pub sent: u64,
    pub confirmed: u64,
    pub delivered: u64,
    /// Copies that never arrived: own copies missing at the sender plus copies missing at the
    /// other member.
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Seq positions where the two members of a room saw different messages.
    pub disagreements: u64,
    /// Frames that were not ours or not this room's.
    pub foreign: u64,
    pub bad_history: u64,
    pub error_frames: u64,
    pub closed_connections: u64,
    pub history_sent: u64,
    pub history_answered: u64,
    pub history_bytes: u64,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.disagreements == 0
            && self.foreign == 0
            && self.bad_history == 0
            && self.error_frames == 0
            && self.closed_connections == 0
            && self.history_answered == self.history_sent
    }

    pub fn add(&mut self, other: &Verdict) {
        self.sent += other.sent;
        self.confirmed += other.confirmed;
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.disagreements += other.disagreements;
        self.foreign += other.foreign;
        self.bad_history += other.bad_history;
        self.error_frames += other.error_frames;
        self.closed_connections += other.closed_connections;
        self.history_sent += other.history_sent;
        self.history_answered += other.history_answered;
        self.history_bytes += other.history_bytes;
    }
}

impl Running {
    /// Waits (up to `drain`) for everything in flight, printing progress; returns whether
    /// everything arrived.
    pub async fn drain(&self, drain: Duration, label: &str) -> bool {
        let started = Instant::now();
        let mut last_print = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if drained(&self.stats) {
                return true;
            }
            if any_closed(&self.stats) || started.elapsed() >= drain {
                return false;
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                let t = totals(&self.stats);
                eprintln!(
                    "[{label}] draining {:>4.1}s: sent {} back {} delivered {} history {}/{}",
                    started.elapsed().as_secs_f64(),
                    t.sent,
                    t.confirmed,
                    t.delivered,
                    t.history_answered,
                    t.history_sent
                );
            }
        }
    }

    /// Stops every task, closes the sockets and adds up what each member saw.
    pub async fn finish(self, errors: &mut Vec<String>) -> Verdict {
        let _ = self.finish.send(true);
        drop(self.senders);
        let mut outcomes = Vec::with_capacity(self.readers.len());
        for handle in self.readers {
            match handle.await {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => {
                    errors.push(format!("reader task: {e}"));
                    outcomes.push(ReaderOutcome {
                        closed: Some("task failed".into()),
                        ..ReaderOutcome::default()
                    });
                }
            }
        }
        // A writer ends once its reader dropped the last sender; bounded anyway.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for handle in self.writers {
            match tokio::time::timeout_at(deadline, handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => note(errors, format!("writer: {e}")),
                Ok(Err(e)) => note(errors, format!("writer task: {e}")),
                Err(_) => note(errors, "a writer did not finish in 5 s".to_owned()),
            }
        }
        let mut v = Verdict::default();
        // `readers` were spawned in room/side order.
        for (room, pair) in outcomes.chunks(2).zip(&self.stats) {
            let [a, b] = room else { continue };
            for (side, o) in [a, b].into_iter().enumerate() {
                let me = &pair[side];
                let peer = &pair[1 - side];
                let sent = me.sent.load(Ordering::Acquire);
                let confirmed = me.confirmed.load(Ordering::Acquire);
                let delivered_to_peer = peer.delivered.load(Ordering::Acquire);
                v.sent += sent;
                v.confirmed += confirmed;
                v.delivered += delivered_to_peer;
                v.lost += sent.saturating_sub(confirmed) + sent.saturating_sub(delivered_to_peer);
                // More distinct messages than were sent: the server invented some.
                v.foreign +=
                    confirmed.saturating_sub(sent) + delivered_to_peer.saturating_sub(sent);
                v.duplicated += o.check.duplicates;
                v.out_of_order += o.check.out_of_order;
                v.foreign += o.foreign;
                v.bad_history += o.bad_history;
                v.history_bytes += o.history_bytes;
                v.error_frames += me.errors.load(Ordering::Acquire);
                v.history_sent += me.history_sent.load(Ordering::Acquire);
                v.history_answered += me.history_answered.load(Ordering::Acquire);
                if let Some(why) = &o.closed {
                    v.closed_connections += 1;
                    note(errors, format!("connection closed: {why}"));
                }
                for e in &o.errors {
                    note(errors, e.clone());
                }
            }
            v.disagreements += check::disagreements(&a.check, &b.check);
        }
        v
    }
}

/// A message body of `len` characters that passes the server's rule.
pub fn body(len: usize) -> Result<Arc<str>, String> {
    if !(1..=chat_domain::MAX_BODY_CHARS).contains(&len) {
        return Err(format!(
            "--body-len must be 1..={}",
            chat_domain::MAX_BODY_CHARS
        ));
    }
    let text: String = "matchchat bench ".chars().cycle().take(len).collect();
    let text = if text.trim().is_empty() {
        "x".repeat(len)
    } else {
        text
    };
    chat_domain::Body::new(text.clone()).map_err(|e| e.to_string())?;
    Ok(Arc::from(text))
}
