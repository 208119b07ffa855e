//! `history`: seeds every room with `--seed` messages (window-limited sending, as in
//! `throughput`), then, on fresh connections, fetches the latest page (300 messages) of the
//! rooms on an open-loop schedule of `--rate` requests per second while `--send-rate`
//! messages per second go into the same rooms.
//!
//! Member `a` of each room reads history, member `b` sends. A connection has at most one
//! history request in flight (responses carry no request id), so a request due while the
//! previous one of the same connection is still out waits, and that wait counts: latency is
//! measured from the due time. Each page is checked: 300 messages, gapless, oldest first,
//! of this room, ending at or after the newest message the connection had already received.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use crate::cli::HistoryArgs;
use crate::conn::Out;
use crate::engine::{self, Clock};
use crate::modes::open_loop::{self, Progress};
use crate::modes::throughput::run_window;
use crate::modes::{Ctx, pair_of};
use crate::report::{Report, hist_json, hist_row, round1};

pub fn run(rt: &Runtime, ctx: &Ctx, args: &HistoryArgs) -> Result<Report, String> {
    if args.rooms == 0 || args.seed == 0 || args.window == 0 {
        return Err("--rooms, --seed and --window must be at least 1".into());
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) || args.send_rate < 0.0 || args.duration <= 0.0 {
        return Err("--rate and --duration must be positive, --send-rate not negative".into());
    }
    let body = engine::body(ctx.common.body_len)?;
    ctx.check_sockets(args.rooms * 2)?;
    let pairs = ctx.provision(args.rooms)?;
    rt.block_on(async move {
        // 1. Seed: each member sends half, rounded up.
        let per_member = args.seed.div_ceil(2);
        let seed_total = per_member * 2 * args.rooms as u64;
        eprintln!(
            "[history] seeding {} rooms with {} messages each",
            args.rooms,
            per_member * 2
        );
        let seeded = run_window(
            ctx,
            &pairs,
            args.window,
            None,
            Some(seed_total),
            0.0,
            "seed",
        )
        .await?;
        eprintln!(
            "[history] seeded {} messages in {:.1} s ({} lost)",
            seeded.verdict.confirmed, seeded.window_secs, seeded.verdict.lost
        );

        // 2. Read under load, on new connections.
        let live = engine::connect_pairs(
            &ctx.nodes,
            &pairs,
            ctx.common.connect_concurrency,
            ctx.common.per_source_ip,
        )
        .await?;
        let t0 = Instant::now() + Duration::from_millis(50);
        let measure_from = t0 + Duration::from_secs_f64(args.warmup.max(0.0));
        let span = args.warmup.max(0.0) + args.duration;
        let send_clock = Clock {
            t0,
            rate: args.send_rate,
            measure_from,
        };
        let read_clock = Clock {
            t0,
            rate: args.rate,
            measure_from,
        };
        let total_sends = (args.send_rate * span).ceil() as u64;
        let total_reads = (args.rate * span).ceil() as u64;
        let running = open_loop::start(&pairs, live, send_clock, total_sends, true, body.clone())?;
        let stop = Arc::new(AtomicBool::new(false));
        let rooms: Arc<Vec<_>> = Arc::new(pairs.iter().map(|p| p.room_id.clone()).collect());
        let p = rooms.len() as u64;

        let sender = {
            let (senders, stats, rooms, stop, body) = (
                running.senders.clone(),
                running.stats.clone(),
                rooms.clone(),
                stop.clone(),
                body.clone(),
            );
            std::thread::Builder::new()
                .name("bench-sends".into())
                .spawn(move || {
                    let n = engine::run_schedule(send_clock, total_sends, &stop, |i, _| {
                        let room = usize::try_from(i % p).unwrap_or(0);
                        let _ = open_loop::send_scheduled(
                            &rooms[room],
                            &senders[room][1],
                            &stats[room][1],
                            i,
                            &body,
                        );
                    });
                    for m in stats.iter().flatten() {
                        m.publish_final();
                    }
                    n
                })
                .map_err(|e| format!("send scheduler: {e}"))?
        };
        let reader = {
            let (senders, stats, rooms, stop) = (
                running.senders.clone(),
                running.stats.clone(),
                rooms.clone(),
                stop.clone(),
            );
            std::thread::Builder::new()
                .name("bench-reads".into())
                .spawn(move || {
                    let frames: Vec<String> = rooms
                        .iter()
                        .filter_map(|r| engine::history_frame(r).ok())
                        .collect();
                    let n = engine::run_schedule(read_clock, total_reads, &stop, |j, due| {
                        let room = usize::try_from(j % p).unwrap_or(0);
                        if let Some(text) = frames.get(room) {
                            stats[room][0].history_sent.fetch_add(1, Ordering::AcqRel);
                            let _ = senders[room][0].send(Out {
                                text: text.clone(),
                                gated: Some(due),
                                stamp: None,
                            });
                        }
                    });
                    for m in stats.iter().flatten() {
                        m.history_final
                            .store(m.history_sent.load(Ordering::Acquire), Ordering::Release);
                    }
                    n
                })
                .map_err(|e| format!("read scheduler: {e}"))?
        };

        let progress = Progress {
            label: "history",
            t0,
            measure_from,
            recent: &running.hists.recent_history,
            rates: |t, p, dt| {
                format!(
                    "pages {:>5.0}/s sends {:>6.0}/s",
                    (t.history_answered - p.history_answered) as f64 / dt,
                    (t.sent - p.sent) as f64 / dt
                )
            },
        };
        let done = || sender.is_finished() && reader.is_finished();
        let (window_start, end) = open_loop::follow(ctx, &running, &stop, &progress, done).await;
        let sends = sender
            .join()
            .map_err(|_| "the send scheduler panicked".to_owned())?;
        let reads = reader
            .join()
            .map_err(|_| "the read scheduler panicked".to_owned())?;
        let drained = running
            .drain(Duration::from_secs_f64(ctx.common.drain_secs), "history")
            .await;
        let history = running.hists.history.snapshot();
        let history_from_write = running.hists.history_from_write.snapshot();
        let send_latency = running.hists.from_schedule.snapshot();
        let mut errors = seeded.errors.clone();
        let measured = running.finish(&mut errors).await;
        if !drained {
            errors.push("not everything in flight arrived before the drain limit".to_owned());
        }
        let mut verdict = seeded.verdict;
        verdict.add(&measured);
        let (s_at, s_srv, s_cli) = window_start.unwrap_or((t0, None, end.2));
        let elapsed = end.0.saturating_duration_since(t0).as_secs_f64().max(1e-9);

        let mut report = Report::new("history");
        report.set("rooms", args.rooms);
        report.set("seeded_per_room", per_member * 2);
        report.set(
            "seed_per_sec",
            round1(seeded.persisted_in_window as f64 / seeded.window_secs.max(1e-9)),
        );
        report.set("rate", args.rate);
        report.set("send_rate", args.send_rate);
        report.set(
            "measured_secs",
            round1(end.0.saturating_duration_since(s_at).as_secs_f64()),
        );
        report.set("history_requests", measured.history_sent);
        report.set("history_answered", measured.history_answered);
        report.set("bad_history", measured.bad_history);
        report.set("achieved_rate", round1(reads as f64 / elapsed));
        report.set("achieved_send_rate", round1(sends as f64 / elapsed));
        report.set(
            "history_bytes_mean",
            measured
                .history_bytes
                .checked_div(measured.history_answered)
                .unwrap_or(0),
        );
        report.set("history_latency", hist_json(&history));
        report.set("history_latency_from_write", hist_json(&history_from_write));
        report.set("send_latency", hist_json(&send_latency));
        report.row(
            "rooms, seeded",
            format!("{} rooms x {} messages", args.rooms, per_member * 2),
        );
        report.row(
            "history requests",
            format!(
                "{} answered of {} ({:.0}/s)",
                measured.history_answered,
                measured.history_sent,
                reads as f64 / elapsed
            ),
        );
        report.row(
            "concurrent sends",
            format!("{:.0} msg/s", sends as f64 / elapsed),
        );
        report.row("latest page: due -> response", hist_row(&history));
        report.row(
            "latest page: written -> response",
            hist_row(&history_from_write),
        );
        report.row("bad pages", measured.bad_history.to_string());
        report.row(
            "sends meanwhile: due -> other member",
            hist_row(&send_latency),
        );
        report.verdict(&verdict, drained && seeded.drained);
        if history.is_empty() {
            report.ok = false;
            report.row("error", "no history samples");
        }
        report.resources(pair_of(s_srv, end.1), (s_cli, end.2));
        report.errors(&errors);
        Ok(report)
    })
}
