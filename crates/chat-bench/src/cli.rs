//! Command-line flags. Flags common to every mode may be given before or after the mode.

use clap::{ArgAction, Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chat-bench",
    version,
    about = "Load generator for matchchat: throughput, latency, connections and history over the real protocol",
    long_about = "Load generator for matchchat. Provisions rooms and tokens through the service API, \
connects both members of each room over real WebSockets, and runs one mode. Prints progress to \
stderr once a second, a table to stderr at the end and one JSON line on stdout. Exits 0 when \
nothing was lost, duplicated or out of order, 1 when something was, 2 when the run could not \
be carried out.\n\n\
Several nodes of one cluster: give --url once per node (or a comma-separated list). Member a \
of room i then connects to node i % N and member b to node (i + 1) % N, so every message \
crosses from one node to another; `connections` spreads its connections the same way. Rooms \
and tokens are always asked of the first URL. Give --server-pid once per node (any order) to \
sum their CPU and memory; the JSON line keeps each node's figures."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub mode: Mode,
}

impl Cli {
    /// Parses the command line. Like `Cli::parse`, and then every `--url` and `--server-pid`
    /// counts, wherever it was given: clap keeps only the values given on one side of the mode
    /// when a global flag is given both before and after it.
    pub fn parse_all() -> Result<Self, String> {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let mut cli = Self::parse_from(&args);
        cli.common.merge_repeated(&args)?;
        Ok(cli)
    }
}

/// Every value of `--flag V` and `--flag=V` in `args` (none after a bare `--`), split at
/// commas; `None` when the flag is not there (then clap's value, from the environment or
/// the default, stands).
fn values_of_flag(args: &[std::ffi::OsString], flag: &str) -> Option<Vec<String>> {
    let mut out: Option<Vec<String>> = None;
    let mut words = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(word) = words.next() {
        if word == "--" {
            break;
        }
        let value = if word == flag {
            words.next().map(|v| v.into_owned())
        } else {
            word.strip_prefix(flag)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        };
        if let Some(value) = value {
            out.get_or_insert_with(Vec::new)
                .extend(value.split(',').map(str::to_owned));
        }
    }
    out
}

impl Common {
    /// See [`Cli::parse_all`].
    fn merge_repeated(&mut self, args: &[std::ffi::OsString]) -> Result<(), String> {
        if let Some(urls) = values_of_flag(args, "--url") {
            self.urls = urls;
        }
        if let Some(pids) = values_of_flag(args, "--server-pid") {
            self.server_pids = pids
                .iter()
                .map(|p| {
                    p.trim()
                        .parse()
                        .map_err(|e| format!("--server-pid {p:?}: {e}"))
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Base URL of the server (the WebSocket is `ws://HOST:PORT/ws`). Repeat the flag, or give
    /// a comma-separated list, for several nodes of one cluster: the two members of every room
    /// then connect to different nodes (room i: node i % N and node (i + 1) % N), and rooms
    /// and tokens are asked of the first URL.
    #[arg(
        long = "url",
        value_name = "URL",
        global = true,
        env = "CHAT_BENCH_URL",
        hide_env_values = true,
        action = ArgAction::Append,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub urls: Vec<String>,

    /// The server's service key (CHAT_SERVICE_KEY), used to open rooms and issue tokens.
    #[arg(long, global = true, env = "CHAT_SERVICE_KEY", hide_env_values = true)]
    pub service_key: Option<String>,

    /// PID of the server process: its CPU time and resident memory (from /proc) are reported.
    /// With several nodes, repeat it once per node (any order, or a comma-separated list):
    /// the figures are summed over the processes, and the JSON line keeps each one's.
    #[arg(
        long = "server-pid",
        value_name = "PID",
        global = true,
        action = ArgAction::Append,
        value_delimiter = ','
    )]
    pub server_pids: Vec<u32>,

    /// Free-form label copied into the JSON line (e.g. `sqlite` or `postgres`).
    #[arg(long, global = true)]
    pub label: Option<String>,

    /// Client runtime worker threads. Default: one per CPU core.
    #[arg(long, global = true)]
    pub threads: Option<usize>,

    /// Seconds to wait, after sending stops, for every message in flight to arrive; what has
    /// not arrived by then counts as lost.
    #[arg(long, global = true, default_value_t = 30.0)]
    pub drain_secs: f64,

    /// Parallel HTTP clients used to open rooms and issue tokens.
    #[arg(long, global = true, default_value_t = 8)]
    pub provision_threads: usize,

    /// WebSocket connects (TCP + upgrade + auth) in progress at once.
    #[arg(long, global = true, default_value_t = 128)]
    pub connect_concurrency: usize,

    /// Connections per loopback source address: connection N binds to 127.0.0.(1 + N / this)
    /// before connecting, so more connections fit than one address has ephemeral ports.
    /// Only used when the server is on a 127.x.x.x address; 0 never binds.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub per_source_ip: usize,

    /// Characters in each message body (1..=160).
    #[arg(long, global = true, default_value_t = 64)]
    pub body_len: usize,

    /// Prefix of the user ids this run creates. Default: `bench-<unix millis>-<pid>`, so runs
    /// against the same database never share users.
    #[arg(long, global = true)]
    pub run_id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Both members of every room send as fast as a window of unconfirmed messages allows;
    /// reports messages/s persisted and delivered and checks every message arrived exactly
    /// once at both members with gapless seq.
    Throughput(ThroughputArgs),
    /// An open-loop schedule of sends at a fixed total rate; reports send-to-delivery latency
    /// at the other member, measured from each message's scheduled send time. With
    /// --breakdown, also where the time goes inside the server, per hop (from its /metrics).
    Latency(LatencyArgs),
    /// Many idle authenticated connections; reports connect+auth rate and, with
    /// --server-pid, the server's memory per connection and its CPU while idle (heartbeats).
    /// With several --url, the connections are spread over the nodes as the members of rooms
    /// are in the other modes.
    Connections(ConnectionsArgs),
    /// Seeds rooms with messages, then fetches the latest page of rooms on an open-loop
    /// schedule while other messages are being sent; reports history fetch latency.
    History(HistoryArgs),
    /// A long mixed workload for a set time: steady sends over many rooms, history reads,
    /// seen marks, clients reconnecting (catching up and re-sending what was never
    /// acknowledged), slow readers and abrupt disconnects. Prints one line per interval
    /// (server RSS, latency, sent/delivered, errors, reconnects, progress) and fails on any
    /// loss or duplicate, a stalled interval, or server memory growth.
    Soak(SoakArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ThroughputArgs {
    /// Rooms (each with two connected members).
    #[arg(long, default_value_t = 500)]
    pub rooms: usize,
    /// Unconfirmed messages each member may have in flight.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Seconds of sending (measured after the warm-up). Ignored when only --messages is given.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Total messages to send, spread evenly over all members; the run ends when they are all
    /// delivered (or --duration passes first).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds of sending before the measured window starts.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
}

#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    /// Messages per second, in total over all rooms.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Rooms (each with two connected members); sends go round-robin over them.
    #[arg(long, default_value_t = 500)]
    pub rooms: usize,
    /// Seconds of measured sending.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds of sending on the same schedule before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Also show where the time goes inside the server, per hop: scrapes the server's
    /// `/metrics` right before the measured window and again once everything has arrived,
    /// and from the difference of its per-hop histograms (writer queue, commit, commit to
    /// mailbox, mailbox wait, outbox wait, batch size) prints each hop's count, p50, p90,
    /// p99 and mean next to the end-to-end latency, in the table and in the JSON line
    /// (`breakdown`). The percentiles are estimates from the histogram buckets (linear
    /// inside a bucket); the means are exact. `/metrics` is read on each --url with the
    /// service key, or on --metrics-url.
    #[arg(long)]
    pub breakdown: bool,
    /// With --breakdown: where each node's `/metrics` is, when the server serves it on a
    /// listener of its own (`CHAT_METRICS_BIND`, e.g. `http://127.0.0.1:9100`), read without
    /// the service key. Repeat it (or a comma-separated list) for several nodes; the nodes'
    /// histograms are added up.
    #[arg(
        long = "metrics-url",
        value_name = "URL",
        action = ArgAction::Append,
        value_delimiter = ',',
        requires = "breakdown"
    )]
    pub metrics_urls: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    /// Connections to open and hold (one user each, paired into rooms).
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Seconds to hold the connections idle while measuring the server's CPU; cover at least
    /// one server ping interval (CHAT_PING_SECS, 15 by default) to see heartbeat cost.
    #[arg(long, default_value_t = 35.0)]
    pub idle_secs: f64,
}

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Rooms to seed and read.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Messages to put in each room before measuring (at least the 300-message window).
    #[arg(long, default_value_t = 300)]
    pub seed: u64,
    /// Window of unconfirmed messages per member while seeding.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// History requests per second, in total, on an open-loop schedule over the rooms.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Concurrent load: messages per second sent into the same rooms while reading.
    #[arg(long, default_value_t = 1000.0)]
    pub send_rate: f64,
    /// Seconds of measured reading.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds of reading on the same schedule before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
}

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// How long to run: seconds (`1800`) or with a unit (`90s`, `30m`, `1h`).
    #[arg(long, default_value = "30m")]
    pub duration: String,
    /// Rooms (each with two members, each member one client).
    #[arg(long, default_value_t = 200)]
    pub rooms: usize,
    /// New messages per second, in total, spread evenly over every member.
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Latest-page history reads per second, in total.
    #[arg(long, default_value_t = 10.0)]
    pub history_rate: f64,
    /// Each member marks what it received as seen every this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seen_secs: f64,
    /// Fraction of the (normal) clients that reconnect, with a close frame, per
    /// --churn-secs; each then catches up and re-sends what was never acknowledged.
    #[arg(long, default_value_t = 0.1)]
    pub churn: f64,
    /// The period of --churn.
    #[arg(long, default_value_t = 60.0)]
    pub churn_secs: f64,
    /// Clients that read slowly: they stop reading for --slow-pause seconds, read for as
    /// long, and so on.
    #[arg(long, default_value_t = 4)]
    pub slow: usize,
    /// A slow client's pause in seconds (keep it under the server's write timeout, 10 s by
    /// default, or the server rightly drops it).
    #[arg(long, default_value_t = 5.0)]
    pub slow_pause: f64,
    /// Clients that drop the TCP connection without a close frame now and then, and come
    /// back.
    #[arg(long, default_value_t = 4)]
    pub abrupt: usize,
    /// Mean seconds between an abrupt client's drops.
    #[arg(long, default_value_t = 30.0)]
    pub abrupt_secs: f64,
    /// A message not acknowledged after this many seconds is sent again (same
    /// client_msg_id).
    #[arg(long, default_value_t = 5.0)]
    pub resend_secs: f64,
    /// Seconds per progress line (and per stall check).
    #[arg(long, default_value_t = 60.0)]
    pub interval: f64,
    /// The memory baseline is the server's RSS at the end of the first interval ending at or
    /// after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub baseline_secs: f64,
    /// Allowed growth of the server's RSS from the baseline to the end, in percent.
    #[arg(long, default_value_t = 10.0)]
    pub max_rss_growth: f64,
    /// The servers' `CHAT_METRICS_BIND` address(es), where the pool gauges are read without
    /// the service key; without it they are read on the public port with `--service-key`.
    #[arg(
        long = "metrics-url",
        value_name = "URL",
        action = ArgAction::Append,
        value_delimiter = ','
    )]
    pub metrics_urls: Vec<String>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// As `Cli::parse_all` does, from `args`.
    fn parse(args: &[&str]) -> Common {
        let args: Vec<std::ffi::OsString> = std::iter::once("chat-bench")
            .chain(args.iter().copied())
            .map(Into::into)
            .collect();
        let mut common = Cli::try_parse_from(&args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .common;
        common
            .merge_repeated(&args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        common
    }

    #[test]
    fn one_url_or_the_default() {
        if std::env::var_os("CHAT_BENCH_URL").is_none() {
            assert_eq!(parse(&["throughput"]).urls, ["http://127.0.0.1:8080"]);
        }
        let c = parse(&["--url", "http://127.0.0.1:9", "throughput"]);
        assert_eq!(c.urls, ["http://127.0.0.1:9"]);
        assert!(c.server_pids.is_empty());
    }

    #[test]
    fn several_urls_repeated_or_comma_separated_before_or_after_the_mode() {
        let want = [
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
        ];
        for args in [
            &[
                "--url",
                "http://127.0.0.1:1",
                "--url",
                "http://127.0.0.1:2",
                "--url",
                "http://127.0.0.1:3",
                "latency",
            ][..],
            &[
                "--url",
                "http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3",
                "latency",
            ][..],
            &[
                "latency",
                "--url",
                "http://127.0.0.1:1,http://127.0.0.1:2",
                "--url",
                "http://127.0.0.1:3",
            ][..],
            &[
                "--url=http://127.0.0.1:1",
                "latency",
                "--url",
                "http://127.0.0.1:2",
                "--url=http://127.0.0.1:3",
            ][..],
            &[
                "--url",
                "http://127.0.0.1:1",
                "--label",
                "x",
                "latency",
                "--rate",
                "5",
                "--url",
                "http://127.0.0.1:2,http://127.0.0.1:3",
            ][..],
        ] {
            assert_eq!(parse(args).urls, want, "{args:?}");
        }
    }

    #[test]
    fn server_pids_repeat() {
        let c = parse(&["--server-pid", "10", "connections", "--server-pid", "11,12"]);
        assert_eq!(c.server_pids, [10, 11, 12]);
    }
}
