//! Command-line flags. Flags common to every mode may be given before or after the mode.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chat-bench",
    version,
    about = "Load generator for matchchat: throughput, latency, connections and history over the real protocol",
    long_about = "Load generator for matchchat. Provisions rooms and tokens through the service API, \
connects both members of each room over real WebSockets, and runs one mode. Prints progress to \
stderr once a second, a table to stderr at the end and one JSON line on stdout. Exits 0 when \
nothing was lost, duplicated or out of order, 1 when something was, 2 when the run could not \
be carried out."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Base URL of the server (the WebSocket is `ws://HOST:PORT/ws`).
    #[arg(
        long,
        global = true,
        env = "CHAT_BENCH_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,

    /// The server's service key (CHAT_SERVICE_KEY), used to open rooms and issue tokens.
    #[arg(long, global = true, env = "CHAT_SERVICE_KEY", hide_env_values = true)]
    pub service_key: Option<String>,

    /// PID of the server process: its CPU time and resident memory (from /proc) are reported.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,

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
    /// at the other member, measured from each message's scheduled send time.
    Latency(LatencyArgs),
    /// Many idle authenticated connections; reports connect+auth rate and, with
    /// --server-pid, the server's memory per connection and its CPU while idle (heartbeats).
    Connections(ConnectionsArgs),
    /// Seeds rooms with messages, then fetches the latest page of rooms on an open-loop
    /// schedule while other messages are being sent; reports history fetch latency.
    History(HistoryArgs),
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
