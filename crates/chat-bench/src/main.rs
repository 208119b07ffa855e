//! `chat-bench`: a load generator for matchchat that speaks the real protocol over real
//! WebSockets against any running server.
//!
//! It provisions rooms and user tokens through the service API, connects both members of
//! every room, and runs one of four modes (`throughput`, `latency`, `connections`,
//! `history`). Every mode prints a progress line to stderr about once a second, a table to
//! stderr at the end, and exactly one JSON line on stdout. The exit code is 0 when nothing was
//! lost, duplicated or out of order and no request failed, 1 when the run found such a
//! problem, and 2 when the run could not be carried out (bad flags, server unreachable).
//!
//! See `docs/benchmarks.md` for how to run it and what the budget is.

mod check;
mod cli;
mod conn;
mod engine;
mod modes;
mod procstat;
mod provision;
mod report;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Mode};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let target = conn::Target::parse(&cli.common.url)?;
    let ctx = modes::Ctx {
        common: cli.common.clone(),
        target,
        nofile,
    };
    let mut report = match cli.mode {
        Mode::Throughput(args) => modes::throughput::run(&runtime, &ctx, &args)?,
        Mode::Latency(args) => modes::latency::run(&runtime, &ctx, &args)?,
        Mode::Connections(args) => modes::connections::run(&runtime, &ctx, &args)?,
        Mode::History(args) => modes::history::run(&runtime, &ctx, &args)?,
    };
    report.set(
        "label",
        ctx.common
            .label
            .clone()
            .map_or(serde_json::Value::Null, serde_json::Value::from),
    );
    report.set("client_threads", threads);
    // Tasks still parked on closed sockets must not hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(report)
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
