//! A running set of rooms: starting a reader and a writer task for every connection, waiting
//! for the last messages in flight (the drain), and stopping every task at the end.
//!
//! When sending is over, each member's `final_sent` is published; the drain then waits until
//! every member has all of its own messages back and the other member has them too. What
//! has not arrived when the drain limit is reached counts as lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::connect::Live;
use super::note;
use super::reader::{ReaderOutcome, ReaderSetup, Refill, reader};
use super::schedule::Clock;
use super::stats::{Hists, MemberStats, any_closed, drained, totals};
use super::verdict::Verdict;
use crate::conn::{self, Gate, Out, Stamps};
use crate::provision::Pair;

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
        // `readers` were spawned in room/side order.
        Verdict::of_rooms(&outcomes, &self.stats, errors)
    }
}
