//! `connections --count C`: C authenticated connections (one user each, users paired into
//! rooms), opened with bounded concurrency and held idle. Reports the connect+auth rate and,
//! given `--server-pid`, the server's resident memory per connection (VmRSS after minus
//! before, over C) and its CPU while every connection sits idle, which is the cost of the
//! server's heartbeats (the client answers each ping with a pong, as a browser does).
//!
//! With several `--url`s, connection `2 i + side` (member `side` of room `i`) goes to the node
//! it would in the message modes (see [`crate::nodes`]), which spreads them evenly; with
//! several `--server-pid`s the memory and CPU figures are sums over the processes and
//! `server_nodes` in the JSON line holds each one's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::ConnectionsArgs;
use crate::conn::{self, Authed};
use crate::modes::Ctx;
use crate::procstat::{self, Sample, Servers};
use crate::report::{Report, hist_json, hist_row, round1, round3};

/// Live counters of the held connections.
#[derive(Default)]
struct Held {
    connected: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    pings: AtomicU64,
}

pub fn run(rt: &Runtime, ctx: &Ctx, args: &ConnectionsArgs) -> Result<Report, String> {
    if args.count == 0 {
        return Err("--count must be at least 1".into());
    }
    ctx.check_sockets(args.count)?;
    let pairs = ctx.provision(args.count.div_ceil(2))?;
    let tokens: Vec<String> = pairs
        .iter()
        .flat_map(|p| p.members.iter().map(|m| m.token.clone()))
        .take(args.count)
        .collect();
    drop(pairs);
    rt.block_on(async move {
        let held = Arc::new(Held::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<Result<Duration, String>>();
        let permits = Arc::new(Semaphore::new(ctx.common.connect_concurrency.max(1)));
        let rss_before = ctx.server_sample();
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(tokens.len());
        for (n, token) in tokens.into_iter().enumerate() {
            let permits = permits.clone();
            let nodes = ctx.nodes.clone();
            let per_source_ip = ctx.common.per_source_ip;
            let held = held.clone();
            let lat_tx = lat_tx.clone();
            let stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let permit = permits.acquire_owned().await;
                let began = Instant::now();
                let (node, target) = nodes.of_connection(n);
                let opened = conn::open(target, target.source_for(n, per_source_ip), &token).await;
                drop(permit);
                match opened {
                    Ok(authed) => {
                        nodes.note_connected(node);
                        held.connected.fetch_add(1, Ordering::Relaxed);
                        let _ = lat_tx.send(Ok(began.elapsed()));
                        drop(lat_tx);
                        hold(authed, stop, &held).await;
                    }
                    Err(e) => {
                        held.failed.fetch_add(1, Ordering::Relaxed);
                        let _ = lat_tx.send(Err(e));
                    }
                }
            }));
        }
        drop(lat_tx);

        // Connect phase: until every connection has reported in.
        let mut connect = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
        let mut errors: Vec<String> = Vec::new();
        let total = tasks.len() as u64;
        let mut reported = 0u64;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
        let mut last = (Instant::now(), 0u64);
        while reported < total {
            tokio::select! {
                r = lat_rx.recv() => match r {
                    Some(Ok(d)) => {
                        reported += 1;
                        let _ = connect.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
                    }
                    Some(Err(e)) => {
                        reported += 1;
                        if errors.len() < 5 { errors.push(e); }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    let c = held.connected.load(Ordering::Relaxed);
                    let dt = last.0.elapsed().as_secs_f64();
                    eprintln!(
                        "[connections] {:>5.1}s connected {}/{} ({:.0}/s) failed {}",
                        started.elapsed().as_secs_f64(), c, total, (c - last.1) as f64 / dt, held.failed.load(Ordering::Relaxed)
                    );
                    last = (Instant::now(), c);
                }
            }
        }
        let connect_secs = started.elapsed().as_secs_f64();
        let connected = held.connected.load(Ordering::Relaxed);
        let rss_connected = ctx.server_sample();

        // Idle phase: measure, do nothing.
        eprintln!("[connections] {connected} connections open; idle for {:.0} s", args.idle_secs);
        let idle_server_0 = ctx.server_sample();
        let idle_client_0 = Sample::of_self();
        let pings_0 = held.pings.load(Ordering::Relaxed);
        let idle_started = Instant::now();
        let idle_for = Duration::from_secs_f64(args.idle_secs.max(0.0));
        while idle_started.elapsed() < idle_for {
            let left = idle_for.saturating_sub(idle_started.elapsed());
            tokio::time::sleep(left.min(Duration::from_secs(5))).await;
            eprintln!(
                "[connections] idle {:>5.1}s: open {} dropped {} pings {}",
                idle_started.elapsed().as_secs_f64(),
                connected - held.dropped.load(Ordering::Relaxed),
                held.dropped.load(Ordering::Relaxed),
                held.pings.load(Ordering::Relaxed) - pings_0
            );
        }
        let idle_server_1 = ctx.server_sample();
        let idle_window = idle_started.elapsed().as_secs_f64().max(1e-9);
        let idle_client_1 = Sample::of_self();
        let pings = held.pings.load(Ordering::Relaxed) - pings_0;
        let dropped = held.dropped.load(Ordering::Relaxed);

        // Close everything.
        let _ = stop_tx.send(true);
        for t in tasks {
            if tokio::time::timeout(Duration::from_secs(10), t).await.is_err() {
                errors.push("a connection did not close in 10 s".into());
                break;
            }
        }

        let failed = held.failed.load(Ordering::Relaxed);
        let mut report = Report::new("connections");
        report.ok = failed == 0 && dropped == 0 && connected == total;
        report.set("count", total);
        report.set("connected", connected);
        report.set("failed", failed);
        report.set("dropped", dropped);
        report.set("lost", failed + dropped);
        report.set("duplicated", 0);
        report.set("out_of_order", 0);
        report.set("connect_secs", round3(connect_secs));
        report.set("connects_per_sec", round1(connected as f64 / connect_secs.max(1e-9)));
        report.set("connect_latency", hist_json(&connect));
        report.set("idle_secs", round1(args.idle_secs));
        report.set("pings_received", pings);
        report.set("nofile_limit", ctx.nofile);
        report.row("connections", format!("{connected}/{total} (failed {failed}, dropped while idle {dropped})"));
        report.row("connect + auth", format!("{:.1} s, {:.0}/s", connect_secs, connected as f64 / connect_secs.max(1e-9)));
        report.row("connect + auth latency", hist_row(&connect));
        report.row("pings answered while idle", pings.to_string());

        let summed = if ctx.common.server_pids.len() > 1 {
            format!(" ({} processes summed)", ctx.common.server_pids.len())
        } else {
            String::new()
        };
        let rss0 = rss_before.as_ref().and_then(Servers::rss_kib);
        let rss1 = rss_connected.as_ref().and_then(Servers::rss_kib);
        let rss2 = idle_server_1.as_ref().and_then(Servers::rss_kib);
        report.set("server_nodes", per_process(
            rss_before.as_ref(),
            rss_connected.as_ref(),
            idle_server_0.as_ref(),
            idle_server_1.as_ref(),
        ));
        let per_conn = |after: Option<u64>| {
            rss0.zip(after).filter(|_| connected > 0).map(|(a, b)| (b as f64 - a as f64) / connected as f64)
        };
        report.set("server_rss_before_kib", rss0);
        report.set("server_rss_connected_kib", rss1);
        report.set("server_rss_after_idle_kib", rss2);
        report.set("server_kib_per_connection", per_conn(rss1).map(round1));
        report.set("server_kib_per_connection_after_idle", per_conn(rss2).map(round1));
        if let (Some(a), Some(b)) = (rss0, rss1) {
            report.row(&format!("server RSS before / connected / after idle{summed}"), format!(
                "{:.1} / {:.1} / {} MiB",
                a as f64 / 1024.0,
                b as f64 / 1024.0,
                rss2.map_or("?".into(), |c| format!("{:.1}", c as f64 / 1024.0))
            ));
        }
        if let Some(k) = per_conn(rss1) {
            report.row("server memory per connection", format!(
                "{k:.1} KiB (after idle: {})",
                per_conn(rss2).map_or("?".into(), |k| format!("{k:.1} KiB"))
            ));
        }
        let idle_cpu = idle_server_0.zip(idle_server_1).and_then(|(a, b)| b.cpu_percent_since(&a));
        report.set("server_idle_cpu_percent", idle_cpu.map(|p| (p * 100.0).round() / 100.0));
        report.set("clock_ticks_per_sec", procstat::clock_ticks_per_sec());
        if let Some(p) = idle_cpu {
            report.row(&format!("server CPU while idle (% of one core){summed}"), format!("{p:.2}"));
        }
        let idle_measured = idle_window;
        report.set("pings_per_sec", round1(pings as f64 / idle_measured));
        if let Some(p) = idle_cpu.filter(|_| pings > 0) {
            // CPU time over the window divided by the pings answered in it.
            let micros = p / 100.0 * idle_measured * 1e6 / pings as f64;
            report.set("server_cpu_us_per_ping", round1(micros));
            report.row("server CPU per ping (idle)", format!("{micros:.1} µs ({:.0} pings/s)", pings as f64 / idle_measured));
        }
        let client_cpu = idle_client_1.cpu_percent_since(&idle_client_0);
        report.set("client_idle_cpu_percent", client_cpu.map(|p| (p * 100.0).round() / 100.0));
        if ctx.common.server_pids.is_empty() {
            report.set("server_kib_per_connection", Value::Null);
            report.row("server memory / CPU", "not measured (no --server-pid)");
        }
        report.errors(&errors);
        Ok(report)
    })
}

/// Each server process's figures (one per `--server-pid`): resident memory before connecting,
/// once connected and after the idle window, and CPU over the idle window.
fn per_process(
    before: Option<&Servers>,
    connected: Option<&Servers>,
    idle_0: Option<&Servers>,
    idle_1: Option<&Servers>,
) -> Value {
    let Some(after) = idle_1 else {
        return Value::Array(Vec::new());
    };
    let rss =
        |s: Option<&Servers>, pid: u32| s.and_then(|s| s.sample_of(pid)).and_then(|x| x.rss_kib);
    after
        .each
        .iter()
        .map(|(pid, end)| {
            let cpu = idle_0
                .and_then(|s| s.sample_of(*pid))
                .and_then(|start| end.cpu_percent_since(start));
            json!({
                "pid": pid,
                "rss_before_kib": rss(before, *pid),
                "rss_connected_kib": rss(connected, *pid),
                "rss_after_idle_kib": end.rss_kib,
                "idle_cpu_percent": cpu.map(|p| (p * 100.0).round() / 100.0),
            })
        })
        .collect()
}

/// Holds one connection open until `stop`, answering pings (tungstenite queues the pong and
/// sends it on the next read) and counting them.
async fn hold(authed: Authed, mut stop: watch::Receiver<bool>, held: &Held) {
    let mut ws = authed.ws;
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
                return;
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Ping(_))) => { held.pings.fetch_add(1, Ordering::Relaxed); }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    if !*stop.borrow() {
                        held.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    }
}
