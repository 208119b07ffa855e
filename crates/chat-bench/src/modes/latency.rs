//! `latency --rate R`: an open-loop schedule of R sends per second in total, round-robin
//! over the rooms, alternating the sending member. Message `i` is due at `t0 + i / R`; its
//! latency is measured at the other member from that due time, not from when the client
//! got around to writing it, so a server that falls behind cannot hide its queueing.
//!
//! `--breakdown` adds where the time goes inside the server: its `/metrics` are scraped when
//! the measured window opens and again once everything has arrived (before the sockets
//! close), and the per-hop histograms' differences are shown next to the end-to-end figures
//! (see [`crate::breakdown`]).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use crate::breakdown::{self, Snapshot};
use crate::cli::LatencyArgs;
use crate::engine::{self, Clock};
use crate::modes::open_loop::{self, Progress};
use crate::modes::{Ctx, pair_of};
use crate::report::{Report, hist_json, hist_row, round1};

pub fn run(rt: &Runtime, ctx: &Ctx, args: &LatencyArgs) -> Result<Report, String> {
    if !(args.rate > 0.0 && args.rate.is_finite()) || args.rooms == 0 || args.duration <= 0.0 {
        return Err("--rate and --duration must be positive and --rooms at least 1".into());
    }
    let body = engine::body(ctx.common.body_len)?;
    ctx.check_sockets(args.rooms * 2)?;
    let pairs = ctx.provision(args.rooms)?;
    // A first scrape now: a server whose metrics cannot be read is a setup error, found
    // before anything is sent.
    let scraper = if args.breakdown {
        Some(Arc::new(ctx.scraper(&args.metrics_urls)?))
    } else {
        None
    };
    rt.block_on(async move {
        let live = engine::connect_pairs(
            &ctx.nodes,
            &pairs,
            ctx.common.connect_concurrency,
            ctx.common.per_source_ip,
        )
        .await?;
        let total = (args.rate * (args.warmup.max(0.0) + args.duration)).ceil() as u64;
        // A moment for the scheduler thread to start before the first due time.
        let t0 = Instant::now() + Duration::from_millis(50);
        let clock = Clock {
            t0,
            rate: args.rate,
            measure_from: t0 + Duration::from_secs_f64(args.warmup.max(0.0)),
        };
        let running = open_loop::start(&pairs, live, clock, total, false, body.clone())?;
        // The "before" scrape, when the measured window opens.
        let before = scraper.clone().map(|scraper| {
            let at = tokio::time::Instant::from_std(clock.measure_from);
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                tokio::task::spawn_blocking(move || scraper.scrape())
                    .await
                    .map_err(|e| format!("the scrape task failed: {e}"))?
            })
        });

        let stop = Arc::new(AtomicBool::new(false));
        let scheduler = {
            let senders = running.senders.clone();
            let stats = running.stats.clone();
            let rooms: Vec<_> = pairs.iter().map(|p| p.room_id.clone()).collect();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("bench-schedule".into())
                .spawn(move || {
                    let p = rooms.len() as u64;
                    let mut failed = None;
                    let n = engine::run_schedule(clock, total, &stop, |i, _due| {
                        let room = usize::try_from(i % p).unwrap_or(0);
                        let side = usize::try_from((i / p) % 2).unwrap_or(0);
                        let sent = open_loop::send_scheduled(
                            &rooms[room],
                            &senders[room][side],
                            &stats[room][side],
                            i,
                            &body,
                        );
                        if let Err(e) = sent {
                            failed = Some(e);
                        }
                    });
                    for m in stats.iter().flatten() {
                        m.publish_final();
                    }
                    (n, failed)
                })
                .map_err(|e| format!("scheduler thread: {e}"))?
        };

        let progress = Progress {
            label: "latency",
            t0,
            measure_from: clock.measure_from,
            recent: &running.hists.recent,
            rates: |t, p, dt| {
                format!(
                    "sent {:>6.0}/s delivered {:>6.0}/s",
                    (t.sent - p.sent) as f64 / dt,
                    (t.delivered - p.delivered) as f64 / dt
                )
            },
        };
        let (window_start, end) =
            open_loop::follow(ctx, &running, &stop, &progress, || scheduler.is_finished()).await;
        let (dispatched, failed) = scheduler
            .join()
            .map_err(|_| "the scheduler thread panicked".to_owned())?;
        let drained = running
            .drain(Duration::from_secs_f64(ctx.common.drain_secs), "latency")
            .await;
        // The "after" scrape: everything measured has passed every hop by now.
        let window: Option<Result<Snapshot, String>> = match (scraper, before) {
            (Some(scraper), Some(before)) => {
                let after = tokio::task::spawn_blocking(move || scraper.scrape())
                    .await
                    .map_err(|e| format!("the scrape task failed: {e}"))
                    .and_then(|r| r);
                let before = before
                    .await
                    .map_err(|e| format!("the scrape task failed: {e}"))
                    .and_then(|r| r);
                Some(before.and_then(|b| after.map(|a| a.since(&b))))
            }
            _ => None,
        };
        let from_schedule = running.hists.from_schedule.snapshot();
        let from_write = running.hists.from_write.snapshot();
        let confirm = running.hists.confirm.snapshot();
        let mut errors = Vec::new();
        if let Some(e) = failed {
            errors.push(format!("building a frame: {e}"));
        }
        let verdict = running.finish(&mut errors).await;
        if !drained {
            errors.push(
                "not everything in flight arrived before the drain limit (see lost)".to_owned(),
            );
        }
        let (s_at, s_srv, s_cli) = window_start.unwrap_or((t0, None, end.2));
        let elapsed = end.0.saturating_duration_since(t0).as_secs_f64().max(1e-9);

        let mut report = Report::new("latency");
        report.set("rate", args.rate);
        report.set("rooms", args.rooms);
        report.set(
            "measured_secs",
            round1(end.0.saturating_duration_since(s_at).as_secs_f64()),
        );
        report.set("achieved_rate", round1(dispatched as f64 / elapsed));
        report.set("latency", hist_json(&from_schedule));
        report.set("latency_from_write", hist_json(&from_write));
        report.set("confirm_latency", hist_json(&confirm));
        report.row(
            "rate x rooms",
            format!("{} msg/s over {} rooms", args.rate, args.rooms),
        );
        report.row(
            "achieved send rate",
            format!("{:.0} msg/s", dispatched as f64 / elapsed),
        );
        report.row("scheduled send -> other member", hist_row(&from_schedule));
        report.row("written -> other member", hist_row(&from_write));
        report.row("written -> own copy back", hist_row(&confirm));
        match window {
            Some(Ok(delta)) => {
                let mut json = breakdown::to_json(&delta);
                let end_to_end = |h: &hdrhistogram::Histogram<u64>| {
                    let ms = |q| h.value_at_quantile(q) as f64 / 1000.0;
                    (!h.is_empty()).then(|| (ms(0.5), ms(0.99)))
                };
                let mut e2e = serde_json::Map::new();
                for (key, name, h) in [
                    (
                        "scheduled_send_to_other_member",
                        "scheduled send -> other member",
                        &from_schedule,
                    ),
                    (
                        "written_to_other_member",
                        "written -> other member",
                        &from_write,
                    ),
                ] {
                    if let Some((p50, p99)) = end_to_end(h) {
                        e2e.insert(
                            key.to_owned(),
                            serde_json::json!({"p50_ms": p50, "p99_ms": p99}),
                        );
                        report.row(
                            &format!("end to end (bench): {name}"),
                            format!("p50 {p50:.3}  p99 {p99:.3} ms"),
                        );
                    }
                }
                if let Some(map) = json.as_object_mut() {
                    map.insert("end_to_end".into(), serde_json::Value::Object(e2e));
                }
                for (name, text) in breakdown::rows(&delta) {
                    report.row(&name, text);
                }
                report.set("breakdown", json);
            }
            Some(Err(e)) => {
                errors.push(format!("--breakdown: {e}"));
                report.set("breakdown", serde_json::json!({"error": e}));
            }
            None => {}
        }
        report.verdict(&verdict, drained);
        if verdict.sent == 0 || from_schedule.is_empty() {
            report.ok = false;
            report.row("error", "no latency samples");
        }
        report.resources(pair_of(s_srv, end.1), (s_cli, end.2));
        report.errors(&errors);
        Ok(report)
    })
}
