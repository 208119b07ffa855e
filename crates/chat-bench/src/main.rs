//! `chat-bench`: a load generator for matchchat that speaks the real protocol over real
//! WebSockets against any running server.
//!
//! It provisions rooms and user tokens through the service API, connects both members of
//! every room, and runs one of five modes (`throughput`, `latency`, `connections`,
//! `history`, `soak`). Every mode prints a progress line to stderr about once a second
//! (`soak`: once per `--interval`), a table to stderr at the end, and exactly one JSON line
//! on stdout. The exit code is 0 when nothing was lost, duplicated or out of order and no
//! request failed (`soak`: when its verdict passed), 1 when the run found such a problem,
//! and 2 when the run could not be carried out (bad flags, server unreachable).
//!
//! See `docs/benchmarks.md` for how to run it and what the budget is.

mod breakdown;
mod check;
mod cli;
mod conn;
mod engine;
mod modes;
mod nodes;
mod procstat;
mod provision;
mod report;
mod soak;

use std::process::ExitCode;

use crate::cli::{Cli, Mode};

fn main() -> ExitCode {
    let cli = match Cli::parse_all() {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("chat-bench: {error}");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(report) => {
            report.print();
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("chat-bench: {error}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<report::Report, String> {
    let nofile = raise_nofile_limit();
    let threads = cli
        .common
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("chat-bench")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let nodes = nodes::Nodes::parse(&cli.common.urls)?;
    check_server_pids(&cli.common.server_pids, nodes.len())?;
    if nodes.len() > 1 {
        eprintln!(
            "[chat-bench] {} nodes: {} (rooms and tokens from the first; the members of every \
             room on two different nodes)",
            nodes.len(),
            nodes.urls().join(", ")
        );
    }
    let ctx = modes::Ctx {
        common: cli.common.clone(),
        nodes: std::sync::Arc::new(nodes),
        nofile,
    };
    let mut report = match cli.mode {
        Mode::Throughput(args) => modes::throughput::run(&runtime, &ctx, &args)?,
        Mode::Latency(args) => modes::latency::run(&runtime, &ctx, &args)?,
        Mode::Connections(args) => modes::connections::run(&runtime, &ctx, &args)?,
        Mode::History(args) => modes::history::run(&runtime, &ctx, &args)?,
        Mode::Soak(args) => modes::soak::run(&runtime, &ctx, &args)?,
    };
    report.set(
        "label",
        ctx.common
            .label
            .clone()
            .map_or(serde_json::Value::Null, serde_json::Value::from),
    );
    report.set("client_threads", threads);
    report.nodes = ctx.nodes.len();
    report.set("nodes", ctx.nodes.len());
    report.set("urls", ctx.nodes.urls());
    let connected = ctx.nodes.connected();
    report.row(
        "connections per node",
        connected
            .iter()
            .zip(ctx.nodes.urls())
            .map(|(c, url)| format!("{url}: {c}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    report.set("connections_per_node", connected);
    report.set("server_pids", ctx.common.server_pids.clone());
    // Tasks still parked on closed sockets must not hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(report)
}

/// `--server-pid`s: each process once (summing one twice would double its figures). One per
/// node is expected; another count is allowed (e.g. only some nodes are local) but said.
fn check_server_pids(pids: &[u32], nodes: usize) -> Result<(), String> {
    for (i, pid) in pids.iter().enumerate() {
        if pids[..i].contains(pid) {
            return Err(format!("--server-pid {pid} is given twice"));
        }
    }
    if !pids.is_empty() && pids.len() != nodes {
        eprintln!(
            "chat-bench: {} --server-pid for {nodes} node(s): server CPU and memory cover only \
             the processes given",
            pids.len()
        );
    }
    Ok(())
}

/// Raises the open-file soft limit to the hard limit: every connection is a socket, and the
/// default soft limit (often 1024) is far below a `connections` run. Returns the soft limit in
/// force afterwards.
fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            eprintln!("chat-bench: could not raise the open-file limit: {error}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
        }
    }
}
