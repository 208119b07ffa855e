//! `soak --duration D`: a long mixed workload against a running server, to see whether it
//! stays steady (no loss, no stall, no memory growth) rather than how fast it is.
//!
//! Every member of `--rooms` rooms is one long-lived client ([`crate::soak::member`]): a
//! steady `--rate` of new messages spread over all members, latest-page history reads,
//! seen marks, a `--churn` of clients reconnecting (and catching up and re-sending), a few
//! `--slow` readers and a few `--abrupt` clients that drop the TCP connection without a close
//! frame. Once per `--interval` (a minute) it prints one line: the server's RSS, latency
//! percentiles of that interval, messages sent and delivered, errors by code, reconnects and
//! whether progress was made. At the end it drains (no new sends; everything unacknowledged
//! is re-sent until acknowledged and delivered, up to `--drain-secs`) and judges the run by
//! the rules of [`crate::soak::rules`]; the exit code is 1 when one of them failed.
//!
//! The server's database pool is read from its `/metrics` once a second
//! ([`crate::soak::pool`]): each line has the pool's use, its largest use and queue in the
//! interval, and the seconds in which callers waited while connections sat idle (the stall
//! signature issue 11 describes). With no service key or metrics URL it is left unread, and
//! the output says why.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::runtime::Runtime;
use tokio::sync::{Semaphore, watch};

use crate::cli::SoakArgs;
use crate::modes::Ctx;
use crate::report::{Report, hist_json, hist_row, mib, round1};
use crate::soak::Shared;
use crate::soak::member::{self, End, Kind, Live, Member, Phase, Plan, Setup};
use crate::soak::pool::{PoolInterval, PoolWatch};
use crate::soak::rules::{self, Delivery, Interval, Memory};

/// Readings of the shared counters, to make one interval's figures from two of them.
#[derive(Debug, Clone, Default)]
struct Counters {
    sent: u64,
    delivered: u64,
    resent: u64,
    reconnects: u64,
    connect_failures: u64,
    errors: std::collections::BTreeMap<String, u64>,
}

impl Counters {
    fn read(s: &Shared) -> Self {
        Self {
            sent: s.sent.load(Ordering::Relaxed),
            delivered: s.delivered.load(Ordering::Relaxed),
            resent: s.resent.load(Ordering::Relaxed),
            // Every connection after a member's first is a reconnect.
            reconnects: s
                .connects
                .load(Ordering::Relaxed)
                .saturating_sub(s.ready.load(Ordering::Relaxed)),
            connect_failures: s.connect_failures.load(Ordering::Relaxed),
            errors: s.errors_snapshot(),
        }
    }
}

fn secs(name: &str, x: f64) -> Result<Duration, String> {
    if x > 0.0 && x.is_finite() {
        Ok(Duration::from_secs_f64(x))
    } else {
        Err(format!("--{name} must be positive"))
    }
}

pub fn run(rt: &Runtime, ctx: &Ctx, args: &SoakArgs) -> Result<Report, String> {
    let duration = rules::parse_duration(&args.duration).map_err(|e| format!("--duration {e}"))?;
    if args.rooms == 0 {
        return Err("--rooms must be at least 1".into());
    }
    if !(args.rate >= 0.0 && args.history_rate >= 0.0 && args.rate.is_finite()) {
        return Err("--rate and --history-rate must not be negative".into());
    }
    if !(0.0..=1.0).contains(&args.churn) {
        return Err("--churn is a fraction, 0..=1".into());
    }
    let members = args.rooms * 2;
    if args.slow + args.abrupt > members {
        return Err(format!(
            "--slow + --abrupt ({}) is more than the {members} clients",
            args.slow + args.abrupt
        ));
    }
    let interval = secs("interval", args.interval)?;
    crate::engine::body(ctx.common.body_len)?;
    ctx.check_sockets(members)?;
    // Per member: rate / members messages per second.
    let per_member =
        |total: f64| (total > 0.0).then(|| Duration::from_secs_f64(members as f64 / total));
    let plan = Arc::new(Plan {
        t0: Instant::now(),
        send_every: per_member(args.rate),
        history_every: per_member(args.history_rate),
        seen_every: secs("seen-secs", args.seen_secs)?,
        churn_every: (args.churn > 0.0)
            .then(|| secs("churn-secs", args.churn_secs / args.churn))
            .transpose()?,
        abrupt_every: secs("abrupt-secs", args.abrupt_secs)?,
        slow_pause: secs("slow-pause", args.slow_pause)?,
        resend_after: secs("resend-secs", args.resend_secs)?,
        body_len: ctx.common.body_len,
        per_source_ip: ctx.common.per_source_ip,
    });
    let pairs = ctx.provision(args.rooms)?;
    eprintln!(
        "[soak] {} rooms, {members} clients ({} slow, {} abrupt), {:.0} msg/s, {:.0} history/s, \
         churn {:.0} % per {:.0} s, for {:.0} s",
        args.rooms,
        args.slow,
        args.abrupt,
        args.rate,
        args.history_rate,
        args.churn * 100.0,
        args.churn_secs,
        duration.as_secs_f64()
    );
    // The pool is read through /metrics: with the service key on the public port, or on the
    // servers' CHAT_METRICS_BIND addresses given with --metrics-url.
    let pool_watch = if ctx.common.service_key.is_some() || !args.metrics_urls.is_empty() {
        Some(PoolWatch::start(ctx.scraper(&args.metrics_urls)?))
    } else {
        eprintln!("[soak] no --service-key or --metrics-url: the server's pool is not watched");
        None
    };
    rt.block_on(async move {
        let shared = Arc::new(Shared::new());
        let (phase_tx, phase_rx) = watch::channel(Phase::Run);
        let first_connects = Arc::new(Semaphore::new(ctx.common.connect_concurrency.max(1)));
        let mut lives: Vec<[Arc<Live>; 2]> = Vec::with_capacity(pairs.len());
        let mut tasks = Vec::with_capacity(members);
        for (i, pair) in pairs.iter().enumerate() {
            let live = [Arc::new(Live::default()), Arc::new(Live::default())];
            for (side, (who, live)) in pair.members.iter().zip(&live).enumerate() {
                let n = 2 * i + side;
                // The first clients misbehave; which ones does not matter, every room is alike.
                let kind = if n < args.slow {
                    Kind::Slow
                } else if n < args.slow + args.abrupt {
                    Kind::Abrupt
                } else {
                    Kind::Normal
                };
                let m = Member::new(Setup {
                    room: pair.room_id.clone(),
                    side,
                    token: who.token.clone(),
                    n,
                    kind,
                    plan: plan.clone(),
                    shared: shared.clone(),
                    live: live.clone(),
                    nodes: ctx.nodes.clone(),
                    first_connects: first_connects.clone(),
                });
                tasks.push(tokio::spawn(m.run(phase_rx.clone())));
            }
            lives.push(live);
        }
        // Everyone connected once before the clock starts.
        let connect_deadline = Instant::now() + Duration::from_secs(120);
        while shared.ready.load(Ordering::Relaxed) < members as u64 {
            if Instant::now() > connect_deadline {
                let _ = phase_tx.send(Phase::Finish);
                return Err(format!(
                    "only {} of {members} clients connected in 120 s",
                    shared.ready.load(Ordering::Relaxed)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let start = Instant::now();
        let end_at = start + duration;
        let s_start = ctx.server_sample();
        shared.recent.take();
        if let Some(w) = &pool_watch {
            w.take();
        }
        eprintln!(
            "[soak] {members} clients connected; one line every {:.0} s",
            interval.as_secs_f64()
        );

        // 1. The soak proper, one line per interval.
        let mut intervals: Vec<Interval> = Vec::new();
        let mut pools: Vec<PoolInterval> = Vec::new();
        let mut before = Counters::read(&shared);
        let mut k = 1u32;
        loop {
            let due = (start + interval * k).min(end_at);
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            let now = Counters::read(&shared);
            let recent = shared.recent.take();
            let pct =
                |q: f64| (!recent.is_empty()).then(|| recent.value_at_quantile(q) as f64 / 1000.0);
            let iv = Interval {
                at_secs: due.duration_since(start).as_secs_f64(),
                secs: due.duration_since(start + interval * (k - 1)).as_secs_f64(),
                rss_kib: ctx.server_sample().and_then(|s| s.rss_kib()),
                sent: now.sent - before.sent,
                delivered: now.delivered - before.delivered,
                resent: now.resent - before.resent,
                errors: now
                    .errors
                    .iter()
                    .map(|(c, n)| (c.clone(), n - before.errors.get(c).copied().unwrap_or(0)))
                    .filter(|(_, n)| *n > 0)
                    .collect(),
                reconnects: now.reconnects - before.reconnects,
                connect_failures: now.connect_failures - before.connect_failures,
                p50_ms: pct(0.5),
                p99_ms: pct(0.99),
                max_ms: (!recent.is_empty()).then(|| recent.max() as f64 / 1000.0),
            };
            let unacked = member::unacked(&lives);
            let pool = pool_watch.as_ref().map(PoolWatch::take).unwrap_or_default();
            let pool_text = if pool_watch.is_some() {
                format!(" | {}", pool.summary())
            } else {
                String::new()
            };
            eprintln!("[soak] {}{pool_text}", line(&iv, unacked));
            intervals.push(iv);
            pools.push(pool);
            before = now;
            if due >= end_at {
                break;
            }
            k += 1;
        }
        let s_end = ctx.server_sample();

        // 2. Drain: no new sends, no planned trouble; wait for everything to arrive.
        let _ = phase_tx.send(Phase::Drain);
        let drain_start = Instant::now();
        let drain_limit = Duration::from_secs_f64(ctx.common.drain_secs.max(0.0));
        let mut last_print = Instant::now();
        let drained = loop {
            if member::drained(&lives) {
                break true;
            }
            if drain_start.elapsed() >= drain_limit {
                break false;
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                eprintln!(
                    "[soak] draining {:.0}s: {} unacknowledged",
                    drain_start.elapsed().as_secs_f64(),
                    member::unacked(&lives)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let drain_secs = drain_start.elapsed().as_secs_f64();
        let _ = phase_tx.send(Phase::Finish);
        let mut ends: Vec<End> = Vec::with_capacity(members);
        let mut task_errors = Vec::new();
        for t in tasks {
            match tokio::time::timeout(Duration::from_secs(15), t).await {
                Ok(Ok(end)) => ends.push(end),
                Ok(Err(e)) => task_errors.push(format!("member task: {e}")),
                Err(_) => task_errors.push("a member did not finish in 15 s".to_owned()),
            }
        }
        if !task_errors.is_empty() {
            return Err(task_errors.join("; "));
        }

        // 3. The verdict.
        let mut delivery = Delivery::default();
        for room in ends.chunks(2) {
            if let [a, b] = room {
                delivery.add(&member::room_delivery(a, b));
            }
        }
        let out_of_step: Vec<String> = ends.iter().filter_map(|e| e.state.clone()).collect();
        let base = rules::baseline(&intervals, args.baseline_secs);
        let end_rss = s_end.as_ref().and_then(|s| s.rss_kib());
        let memory = Memory::judge(base.map(|(_, k)| k), end_rss, args.max_rss_growth);
        let failures = rules::failures(
            &delivery,
            &intervals,
            &memory,
            drained,
            interval.as_secs_f64() / 2.0,
        );

        Ok(report(ReportInput {
            args,
            duration,
            members,
            shared: &shared,
            intervals: &intervals,
            pools: pool_watch.is_some().then_some(&pools[..]),
            delivery: &delivery,
            memory: &memory,
            baseline_at: base.map(|(i, _)| intervals[i].at_secs),
            failures: &failures,
            out_of_step: &out_of_step,
            drained,
            drain_secs,
            cpu: s_start
                .zip(s_end)
                .and_then(|(a, b)| b.cpu_percent_since(&a)),
        }))
    })
}

/// One interval's line.
fn line(iv: &Interval, unacked: u64) -> String {
    let t = iv.at_secs.round() as u64;
    let rss = iv
        .rss_kib
        .map_or_else(|| "?".to_owned(), |k| format!("{:.1} MiB", mib(k)));
    let lat = match (iv.p50_ms, iv.p99_ms, iv.max_ms) {
        (Some(a), Some(b), Some(c)) => format!("p50 {a:.1} p99 {b:.1} max {c:.0} ms"),
        _ => "no deliveries".to_owned(),
    };
    let errors = if iv.errors.is_empty() {
        "none".to_owned()
    } else {
        iv.errors
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "{:02}:{:02} rss {rss} | {lat} | sent {} delivered {} resent {} | errors {errors} | \
         reconnects {} (failed connects {}) | unacked {unacked} | progress {}",
        t / 60,
        t % 60,
        iv.sent,
        iv.delivered,
        iv.resent,
        iv.reconnects,
        iv.connect_failures,
        if iv.progress(unacked) { "yes" } else { "NO" }
    )
}

struct ReportInput<'a> {
    args: &'a SoakArgs,
    duration: Duration,
    members: usize,
    shared: &'a Shared,
    intervals: &'a [Interval],
    /// One per interval, when the pool was watched.
    pools: Option<&'a [PoolInterval]>,
    delivery: &'a Delivery,
    memory: &'a Memory,
    baseline_at: Option<f64>,
    failures: &'a [String],
    /// Members not in step at the end (unacknowledged messages, a gap, no catch-up).
    out_of_step: &'a [String],
    drained: bool,
    drain_secs: f64,
    cpu: Option<f64>,
}

fn report(r: ReportInput<'_>) -> Report {
    let s = r.shared;
    let d = r.delivery;
    let mut rep = Report::new("soak");
    rep.ok = r.failures.is_empty();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let latency = s.latency.snapshot();
    rep.set("duration_secs", round1(r.duration.as_secs_f64()));
    rep.set("rooms", r.args.rooms);
    rep.set("clients", r.members);
    rep.set("slow_clients", r.args.slow);
    rep.set("abrupt_clients", r.args.abrupt);
    rep.set("rate", r.args.rate);
    rep.set("history_rate", r.args.history_rate);
    rep.set("churn", r.args.churn);
    rep.set("churn_secs", r.args.churn_secs);
    rep.set("sent", load(&s.sent));
    rep.set("resent", load(&s.resent));
    rep.set("acked", d.acked);
    rep.set("delivered", load(&s.delivered));
    rep.set("lost", d.lost);
    rep.set("duplicated", d.duplicated);
    rep.set("out_of_order", d.live_out_of_order);
    rep.set("disagreements", d.disagreements);
    rep.set("conflicting", d.conflicting);
    rep.set("gaps", d.gaps);
    rep.set("unacked", d.unacked);
    rep.set("bad_history", d.bad_history);
    rep.set("history_sent", load(&s.history_sent));
    rep.set("history_answered", load(&s.history_answered));
    rep.set("history_failed", load(&s.history_failed));
    rep.set("catch_ups", load(&s.catch_ups));
    rep.set("catch_up_pages", load(&s.catch_up_pages));
    rep.set("seen_sent", load(&s.seen_sent));
    rep.set("seen_events", load(&s.seen_events));
    rep.set("connects", load(&s.connects));
    rep.set("connect_failures", load(&s.connect_failures));
    rep.set("planned_reconnects", load(&s.planned_closes));
    rep.set("abrupt_drops", load(&s.abrupt_drops));
    rep.set("server_closes", json!(s.server_closes_snapshot()));
    rep.set("error_frames", json!(s.errors_snapshot()));
    rep.set("latency", hist_json(&latency));
    rep.set("drained", r.drained);
    rep.set("drain_secs", round1(r.drain_secs));
    rep.set(
        "stalls",
        r.intervals.iter().filter(|iv| iv.stalled()).count(),
    );
    rep.set(
        "intervals",
        r.intervals
            .iter()
            .map(|iv| {
                json!({
                    "at_secs": round1(iv.at_secs),
                    "rss_kib": iv.rss_kib,
                    "sent": iv.sent,
                    "delivered": iv.delivered,
                    "resent": iv.resent,
                    "errors": iv.errors,
                    "reconnects": iv.reconnects,
                    "connect_failures": iv.connect_failures,
                    "p50_ms": iv.p50_ms,
                    "p99_ms": iv.p99_ms,
                    "max_ms": iv.max_ms,
                    "stalled": iv.stalled(),
                })
            })
            .collect::<Vec<_>>(),
    );
    let memory_json = match *r.memory {
        Memory::NotJudged(why) => json!({"judged": false, "why": why}),
        Memory::Judged {
            baseline_kib,
            end_kib,
            growth_percent,
            limit_percent,
        } => json!({
            "judged": true,
            "baseline_kib": baseline_kib,
            "baseline_at_secs": r.baseline_at.map(round1),
            "end_kib": end_kib,
            "growth_percent": round1(growth_percent),
            "limit_percent": limit_percent,
            "grew": r.memory.grew(),
        }),
    };
    rep.set("memory", memory_json);
    rep.set("server_cpu_percent", r.cpu.map(round1));
    let pool_summary = r.pools.map(|pools| {
        let max = |f: fn(&PoolInterval) -> f64| pools.iter().map(f).fold(0.0, f64::max);
        (
            max(|p| p.max_in_use),
            max(|p| p.max_waiting),
            pools.iter().map(|p| p.starved).sum::<u64>(),
            pools.iter().map(|p| p.failed).sum::<u64>(),
        )
    });
    rep.set(
        "server_pool",
        match (r.pools, pool_summary) {
            (Some(pools), Some((in_use, waiting, starved, failed))) => json!({
                "max_in_use": in_use,
                "max_waiting": waiting,
                "starved_secs": starved,
                "failed_scrapes": failed,
                "intervals": pools.iter().map(PoolInterval::json).collect::<Vec<_>>(),
            }),
            _ => json!("not watched: no --service-key or --metrics-url"),
        },
    );
    rep.set("failures", r.failures.to_vec());
    rep.set(
        "out_of_step",
        r.out_of_step.iter().take(20).cloned().collect::<Vec<_>>(),
    );
    let notes = s.notes.lock().map(|n| n.clone()).unwrap_or_default();
    rep.set("notes", notes.clone());

    rep.row(
        "load",
        format!(
            "{} rooms, {} clients ({} slow, {} abrupt), {:.0} msg/s, {:.0} history/s, churn {:.0} % / {:.0} s",
            r.args.rooms,
            r.members,
            r.args.slow,
            r.args.abrupt,
            r.args.rate,
            r.args.history_rate,
            r.args.churn * 100.0,
            r.args.churn_secs
        ),
    );
    rep.row(
        "messages sent / re-sent / acknowledged / delivered",
        format!(
            "{} / {} / {} / {}",
            load(&s.sent),
            load(&s.resent),
            d.acked,
            load(&s.delivered)
        ),
    );
    rep.row(
        "lost / duplicated / disagreeing / gaps / unacked",
        format!(
            "{} / {} / {} / {} / {}",
            d.lost, d.duplicated, d.disagreements, d.gaps, d.unacked
        ),
    );
    rep.row(
        "conflicting / live out of order / bad pages",
        format!(
            "{} / {} / {}",
            d.conflicting, d.live_out_of_order, d.bad_history
        ),
    );
    rep.row("send -> other member (whole run)", hist_row(&latency));
    rep.row(
        "history pages answered / asked / failed",
        format!(
            "{} / {} / {}",
            load(&s.history_answered),
            load(&s.history_sent),
            load(&s.history_failed)
        ),
    );
    rep.row(
        "catch-up requests / pages answered",
        format!("{} / {}", load(&s.catch_ups), load(&s.catch_up_pages)),
    );
    rep.row(
        "reconnects: planned / abrupt / server-ended / failed connects",
        format!(
            "{} / {} / {} / {}",
            load(&s.planned_closes),
            load(&s.abrupt_drops),
            s.server_closes_snapshot().values().sum::<u64>(),
            load(&s.connect_failures)
        ),
    );
    let errs = s.errors_snapshot();
    rep.row(
        "error frames",
        if errs.is_empty() {
            "none".to_owned()
        } else {
            errs.iter()
                .map(|(c, n)| format!("{c}={n}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    rep.row(
        "server memory",
        match *r.memory {
            Memory::NotJudged(why) => format!("not judged: {why}"),
            Memory::Judged {
                baseline_kib,
                end_kib,
                growth_percent,
                limit_percent,
            } => format!(
                "{:.1} MiB at {:.0} s -> {:.1} MiB at the end ({growth_percent:+.1} %, limit +{limit_percent} %)",
                mib(baseline_kib),
                r.baseline_at.unwrap_or(0.0),
                mib(end_kib)
            ),
        },
    );
    rep.row(
        "server pool use / waiters",
        match pool_summary {
            Some((in_use, waiting, starved, failed)) => format!(
                "largest use {in_use}, largest queue {waiting}, {starved} s with callers waiting \
                 while connections sat idle, {failed} failed scrapes"
            ),
            None => "not watched: no --service-key or --metrics-url".to_owned(),
        },
    );
    rep.row(
        "drain",
        format!(
            "{} in {:.1} s",
            if r.drained { "complete" } else { "INCOMPLETE" },
            r.drain_secs
        ),
    );
    if r.failures.is_empty() {
        rep.row("verdict", "PASS");
    } else {
        for f in r.failures {
            rep.row("verdict: FAIL", f.clone());
        }
    }
    for m in r.out_of_step.iter().take(5) {
        rep.row("out of step at the end", m.clone());
    }
    for n in notes.iter().take(5) {
        rep.row("note", n.clone());
    }
    rep
}
