//! `throughput`: both members of every room send as fast as a window of unconfirmed messages
//! allows. A message is confirmed when its sender's own copy comes back, which the server
//! sends only after the commit, so "persisted" is the rate of own copies back and "delivered"
//! the rate of copies arriving at the other member.

use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::cli::ThroughputArgs;
use crate::engine::{self, StartOptions, Totals, WindowPlan};
use crate::modes::{Ctx, pair_of};
use crate::procstat::{Sample, Servers};
use crate::provision::Pair;
use crate::report::{Report, hist_json, hist_row, round1};

/// Splits `total` messages over `rooms` x 2 members as evenly as possible.
pub fn quotas(total: u64, rooms: usize) -> Vec<[u64; 2]> {
    let members = (rooms as u64) * 2;
    let base = total / members.max(1);
    let extra = total % members.max(1);
    (0..rooms as u64)
        .map(|r| {
            [
                base + u64::from(2 * r < extra),
                base + u64::from(2 * r + 1 < extra),
            ]
        })
        .collect()
}

/// What a message run measured.
pub struct Measured {
    pub verdict: engine::Verdict,
    pub drained: bool,
    pub errors: Vec<String>,
    pub window_secs: f64,
    pub persisted_in_window: u64,
    pub delivered_in_window: u64,
    pub confirm: hdrhistogram::Histogram<u64>,
    pub server: Option<(Servers, Servers)>,
    pub client: (Sample, Sample),
}

/// Runs window-limited sending over already provisioned rooms. Used by `throughput` and by
/// `history` to seed rooms.
pub async fn run_window(
    ctx: &Ctx,
    pairs: &[Pair],
    window: usize,
    duration: Option<f64>,
    messages: Option<u64>,
    warmup: f64,
    label: &str,
) -> Result<Measured, String> {
    let body = engine::body(ctx.common.body_len)?;
    let live = engine::connect_pairs(
        &ctx.nodes,
        pairs,
        ctx.common.connect_concurrency,
        ctx.common.per_source_ip,
    )
    .await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let quotas = messages.map(|m| quotas(m, pairs.len()));
    let t0 = Instant::now();
    let running = engine::start(
        pairs,
        live,
        StartOptions {
            clock: None,
            stamps: None,
            refill: Some(WindowPlan {
                window,
                quotas,
                stop: stop_rx,
            }),
            gates: false,
            body,
        },
    )?;
    let warmup_end = t0 + Duration::from_secs_f64(warmup.max(0.0));
    let send_end = duration.map(|d| warmup_end + Duration::from_secs_f64(d.max(0.0)));

    let mut start: Option<(Instant, Totals, Option<Servers>, Sample)> = None;
    let mut end: Option<(Instant, Totals, Option<Servers>, Sample)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut last_print = (Instant::now(), Totals::default());
    let drain_for = Duration::from_secs_f64(ctx.common.drain_secs);
    // With --messages alone the run ends when everything has arrived; when every member has
    // sent its share and nothing more arrives for --drain-secs, what is missing is lost (it
    // does not wait for ever).
    let mut last_progress = (Instant::now(), 0u64);
    let mut stalled = false;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let t = engine::totals(&running.stats);
        if t.confirmed + t.delivered != last_progress.1 {
            last_progress = (now, t.confirmed + t.delivered);
        }
        if start.is_none() && now >= warmup_end {
            start = Some((now, t, ctx.server_sample(), Sample::of_self()));
        }
        if send_end.is_some_and(|e| now >= e) {
            let _ = stop_tx.send(true);
            end = Some((now, t, ctx.server_sample(), Sample::of_self()));
            break;
        }
        if messages.is_some() && engine::drained(&running.stats) {
            end = Some((now, t, ctx.server_sample(), Sample::of_self()));
            break;
        }
        if engine::any_closed(&running.stats) {
            break;
        }
        if messages.is_some()
            && engine::all_final(&running.stats)
            && now.duration_since(last_progress.0) >= drain_for
        {
            eprintln!(
                "[{label}] everything is sent and nothing arrived for {:.0} s: giving up",
                drain_for.as_secs_f64()
            );
            stalled = true;
            break;
        }
        if now.duration_since(last_print.0) >= Duration::from_secs(1) {
            let dt = now.duration_since(last_print.0).as_secs_f64();
            let p = last_print.1;
            eprintln!(
                "[{label}] {:>5.1}s persisted {:>7.0}/s delivered {:>7.0}/s in flight {:>6} total {} errors {}",
                now.duration_since(t0).as_secs_f64(),
                (t.confirmed - p.confirmed) as f64 / dt,
                (t.delivered - p.delivered) as f64 / dt,
                t.sent.saturating_sub(t.confirmed),
                t.confirmed,
                t.errors
            );
            last_print = (now, t);
        }
    }
    let _ = stop_tx.send(true);
    // A stalled run has waited its --drain-secs already.
    let drained = running
        .drain(if stalled { Duration::ZERO } else { drain_for }, label)
        .await;
    let confirm = running.hists.confirm.snapshot();
    let mut errors = Vec::new();
    let verdict = running.finish(&mut errors).await;
    if !drained {
        errors
            .push("not everything in flight arrived before the drain limit (see lost)".to_owned());
    }
    let zero = (t0, Totals::default(), None, Sample::of_self());
    let (s_at, s_tot, s_srv, s_cli) = start.unwrap_or(zero);
    let (e_at, e_tot, e_srv, e_cli) = end.unwrap_or_else(|| {
        (
            Instant::now(),
            Totals::default(),
            ctx.server_sample(),
            Sample::of_self(),
        )
    });
    Ok(Measured {
        verdict,
        drained,
        errors,
        window_secs: e_at.saturating_duration_since(s_at).as_secs_f64(),
        persisted_in_window: e_tot.confirmed.saturating_sub(s_tot.confirmed),
        delivered_in_window: e_tot.delivered.saturating_sub(s_tot.delivered),
        confirm,
        server: pair_of(s_srv, e_srv),
        client: (s_cli, e_cli),
    })
}

pub fn run(rt: &Runtime, ctx: &Ctx, args: &ThroughputArgs) -> Result<Report, String> {
    if args.rooms == 0 || args.window == 0 {
        return Err("--rooms and --window must be at least 1".into());
    }
    let duration = match (args.duration, args.messages) {
        (None, None) => Some(10.0),
        (d, _) => d,
    };
    ctx.check_sockets(args.rooms * 2)?;
    let pairs = ctx.provision(args.rooms)?;
    let m = rt.block_on(run_window(
        ctx,
        &pairs,
        args.window,
        duration,
        args.messages,
        args.warmup,
        "throughput",
    ))?;

    let mut report = Report::new("throughput");
    let secs = m.window_secs.max(1e-9);
    let persisted_rate = m.persisted_in_window as f64 / secs;
    let delivered_rate = m.delivered_in_window as f64 / secs;
    report.set("rooms", args.rooms);
    report.set("window", args.window);
    report.set("body_len", ctx.common.body_len);
    report.set("measured_secs", round1(m.window_secs));
    report.set("persisted_per_sec", round1(persisted_rate));
    report.set("delivered_per_sec", round1(delivered_rate));
    report.set("confirm_latency", hist_json(&m.confirm));
    report.row(
        "rooms x window",
        format!("{} x {}", args.rooms, args.window),
    );
    report.row("measured window", format!("{:.1} s", m.window_secs));
    report.row(
        "persisted (own copy back)",
        format!("{persisted_rate:.0} msg/s"),
    );
    report.row(
        "delivered to the other member",
        format!("{delivered_rate:.0} msg/s"),
    );
    report.row("send -> own copy (closed loop)", hist_row(&m.confirm));
    report.verdict(&m.verdict, m.drained);
    if m.verdict.sent == 0 {
        report.ok = false;
        report.row("error", "nothing was sent");
    }
    report.resources(m.server, m.client);
    report.errors(&m.errors);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_add_up_and_differ_by_at_most_one() {
        for (total, rooms) in [(0, 3), (5, 3), (600, 2), (1001, 500)] {
            let q = quotas(total, rooms);
            assert_eq!(q.iter().flatten().sum::<u64>(), total);
            let max = q.iter().flatten().max().copied().unwrap_or(0);
            let min = q.iter().flatten().min().copied().unwrap_or(0);
            assert!(max - min <= 1);
        }
    }
}
