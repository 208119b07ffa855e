//! What the open-loop modes (`latency`, `history`) share: starting the rooms with a clock and
//! write stamps, handing a scheduled message to its writer, and following the run while the
//! scheduler threads send.
//!
//! Following means: look at the run every 10 ms, take the server's and this process's
//! readings when the measured window opens and when the schedule is done, stop the schedule
//! as soon as a connection closes, and print a progress line about once a second with the
//! last second's latencies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chat_domain::RoomId;
use tokio::sync::mpsc;

use crate::conn::{Out, Stamps};
use crate::engine::Live;
use crate::engine::{self, Clock, Hist, MemberStats, Running, StartOptions, Totals};
use crate::modes::Ctx;
use crate::procstat::{Sample, Servers};
use crate::provision::Pair;

/// Starts the rooms' tasks for a run whose sends are due on `clock`, with a stamp slot for
/// each of the `sends` messages (to split latency into client lag and server time). `gates`:
/// side 0 of every room reads history.
pub fn start(
    pairs: &[Pair],
    live: Vec<Live>,
    clock: Clock,
    sends: u64,
    gates: bool,
    body: Arc<str>,
) -> Result<Running, String> {
    let stamps = Arc::new(Stamps::new(
        clock.t0,
        usize::try_from(sends).map_err(|e| e.to_string())?,
    ));
    engine::start(
        pairs,
        live,
        StartOptions {
            clock: Some(clock),
            stamps: Some(stamps),
            refill: None,
            gates,
            body,
        },
    )
}

/// Hands scheduled message `i` (`L<i>`, stamped when written) for `room` to a member's
/// writer and counts it as sent by that member.
pub fn send_scheduled(
    room: &RoomId,
    writer: &mpsc::UnboundedSender<Out>,
    member: &MemberStats,
    i: u64,
    body: &str,
) -> Result<(), String> {
    let text = engine::send_frame(room, b'L', i, body)?;
    member.sent.fetch_add(1, Ordering::AcqRel);
    let _ = writer.send(Out {
        text,
        gated: None,
        stamp: usize::try_from(i).ok(),
    });
    Ok(())
}

/// A moment of the run, with the server's reading (when there is a PID) and this process's.
pub type Mark = (Instant, Option<Servers>, Sample);

/// What the progress line of an open-loop mode shows.
pub struct Progress<'a> {
    /// The mode, at the start of the line.
    pub label: &'a str,
    /// The line's seconds count from here.
    pub t0: Instant,
    /// Until then the line says "(warm-up)"; the measured window opens at the first look at
    /// or after it.
    pub measure_from: Instant,
    /// The histogram whose last second the line shows (taken, so emptied, at each line).
    pub recent: &'a Hist,
    /// The mode's rates, from the totals now, at the previous line, and the seconds between.
    pub rates: fn(now: &Totals, before: &Totals, secs: f64) -> String,
}

/// Follows the run until `done()`. Returns where the measured window opened (`None` when the
/// schedule was over before `measure_from`) and where the schedule ended.
pub async fn follow(
    ctx: &Ctx,
    running: &Running,
    stop: &AtomicBool,
    progress: &Progress<'_>,
    done: impl Fn() -> bool,
) -> (Option<Mark>, Mark) {
    let mut window_start: Option<Mark> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut last_print = (Instant::now(), Totals::default());
    while !done() {
        tick.tick().await;
        let now = Instant::now();
        if window_start.is_none() && now >= progress.measure_from {
            window_start = Some((now, ctx.server_sample(), Sample::of_self()));
        }
        if engine::any_closed(&running.stats) {
            stop.store(true, Ordering::Relaxed);
        }
        if now.duration_since(last_print.0) >= Duration::from_secs(1) {
            let t = engine::totals(&running.stats);
            let dt = now.duration_since(last_print.0).as_secs_f64();
            let recent = progress.recent.take();
            eprintln!(
                "[{}] {:>5.1}s {}  last second: p50 {:.2} p99 {:.2} max {:.2} ms{}",
                progress.label,
                now.saturating_duration_since(progress.t0).as_secs_f64(),
                (progress.rates)(&t, &last_print.1, dt),
                recent.value_at_quantile(0.5) as f64 / 1000.0,
                recent.value_at_quantile(0.99) as f64 / 1000.0,
                recent.max() as f64 / 1000.0,
                if now < progress.measure_from {
                    " (warm-up)"
                } else {
                    ""
                },
            );
            last_print = (now, t);
        }
    }
    let end = (Instant::now(), ctx.server_sample(), Sample::of_self());
    (window_start, end)
}
