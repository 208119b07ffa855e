//! Each mode at tiny scale against the real `chat-server` binary on SQLite in a temp dir, and
//! how several `--url`s split the rooms' members over two servers.
//!
//! The server binary is the one cargo built next to `chat-bench` (same target dir and
//! profile: `cargo build -p chat-server` first, or run the whole workspace's tests), or the
//! one named by `CHAT_SERVER_BIN`. No assertion depends on timing: only on the JSON line's
//! counters (nothing lost, duplicated or out of order; something measured).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const SERVICE_KEY: &str = "bench-test-service-key-0123456789abcdef";

fn server_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CHAT_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let sibling = PathBuf::from(env!("CARGO_BIN_EXE_chat-bench")).with_file_name("chat-server");
    assert!(
        sibling.exists(),
        "{} does not exist: build the server first (cargo build -p chat-server) or set CHAT_SERVER_BIN",
        sibling.display()
    );
    sibling
}

/// A running server; killed (by PID) and reaped when dropped, whatever the test did.
struct Server {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(extra_env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let log = std::fs::File::create(dir.path().join("server.log"))
            .unwrap_or_else(|e| panic!("log file: {e}"));
        let db = format!("sqlite://{}", dir.path().join("chat.db").display());
        let mut command = Command::new(server_bin());
        command
            .env("CHAT_BIND", "127.0.0.1:0")
            .env("DATABASE_URL", db)
            .env("CHAT_SERVICE_KEY", SERVICE_KEY)
            .env("CHAT_JWT_SECRET", "0123456789abcdef0123456789abcdef-jwt")
            .env("CHAT_RATE_PER_SEC", "1000000")
            .env("CHAT_RATE_BURST", "1000000")
            .env("CHAT_MAX_CONNECTIONS_PER_USER", "100000")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_bin().display()));
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        // Reads the address line, then keeps draining stdout so the server never writes into
        // a closed pipe.
        std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut server = Self {
            child,
            url: String::new(),
            dir,
        };
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        match line.trim().strip_prefix("chat-server listening on ") {
            Some(url) => server.url = url.to_owned(),
            None => panic!(
                "the server did not start (stdout {line:?}); its log:\n{}",
                server.log()
            ),
        }
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's whole log, without terminal colours.
    fn full_log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("server.log")) {
            let _ = f.read_to_string(&mut text);
        }
        strip_ansi(&text)
    }

    fn log(&self) -> String {
        let text = self.full_log();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or_default().to_owned()
    }

    /// Runs `chat-bench` against this server; returns its exit code and JSON line.
    fn bench(&self, key: &str, args: &[&str]) -> (Option<i32>, Option<Value>, String) {
        bench(&[self], key, args)
    }

    /// Runs a mode that must succeed; returns its JSON line.
    fn bench_ok(&self, args: &[&str]) -> Value {
        let (code, json, stderr) = self.bench(SERVICE_KEY, args);
        let Some(json) = json else {
            panic!(
                "no JSON line from chat-bench {args:?} (exit {code:?});\nstderr:\n{stderr}\nserver log:\n{}",
                self.log()
            );
        };
        assert_eq!(
            code,
            Some(0),
            "chat-bench {args:?} failed: {json}\nstderr:\n{stderr}\nserver log:\n{}",
            self.log()
        );
        json
    }
}

/// Runs `chat-bench` with one `--url` and one `--server-pid` per server, in that order;
/// returns its exit code and JSON line.
fn bench(servers: &[&Server], key: &str, args: &[&str]) -> (Option<i32>, Option<Value>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chat-bench"));
    for server in servers {
        command.args([
            "--url",
            &server.url,
            "--server-pid",
            &server.pid().to_string(),
        ]);
    }
    let out = command
        .args(["--service-key", key])
        .args(["--drain-secs", "60", "--threads", "2"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run chat-bench: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
    (out.status.code(), json, stderr)
}

/// The users of the server's "connection ready" log lines (at `RUST_LOG=info`), whether the
/// user is a field of the line (`connection ready user=u conn=1`) or of its span
/// (`conn{user=u conn=1}: ... connection ready`).
fn ready_users(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("connection ready"))
        .filter_map(|line| {
            let rest = &line[line.find("user=")? + "user=".len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '}' || c == ',')
                .unwrap_or(rest.len());
            Some(rest[..end].trim_matches('"').to_owned())
        })
        .collect()
}

/// Removes terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{key} missing or not a count in {v}"))
}

fn assert_clean(v: &Value) {
    assert_eq!(v.get("ok"), Some(&Value::Bool(true)), "{v}");
    for key in ["lost", "duplicated", "out_of_order"] {
        assert_eq!(num(v, key), 0, "{key} in {v}");
    }
}

#[test]
fn throughput_for_a_duration_loses_nothing() {
    let server = Server::start(&[]);
    let v = server.bench_ok(&[
        "throughput",
        "--rooms",
        "3",
        "--window",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0",
    ]);
    assert_clean(&v);
    assert_eq!(v["mode"], "throughput");
    assert!(num(&v, "sent") > 0, "{v}");
    assert_eq!(num(&v, "persisted"), num(&v, "sent"), "{v}");
    assert_eq!(num(&v, "delivered"), num(&v, "sent"), "{v}");
    assert_eq!(num(&v, "disagreements"), 0, "{v}");
    assert!(
        v["delivered_per_sec"].as_f64().is_some_and(|r| r > 0.0),
        "{v}"
    );
}

#[test]
fn throughput_for_a_message_count_delivers_exactly_that_many() {
    let server = Server::start(&[]);
    let v = server.bench_ok(&[
        "throughput",
        "--rooms",
        "2",
        "--window",
        "3",
        "--messages",
        "101",
        "--warmup",
        "0",
    ]);
    assert_clean(&v);
    assert_eq!(num(&v, "sent"), 101, "{v}");
    assert_eq!(num(&v, "persisted"), 101, "{v}");
    assert_eq!(num(&v, "delivered"), 101, "{v}");
}

#[test]
fn latency_measures_every_delivery() {
    let server = Server::start(&[]);
    let v = server.bench_ok(&[
        "latency",
        "--rooms",
        "3",
        "--rate",
        "200",
        "--duration",
        "1",
        "--warmup",
        "0",
    ]);
    assert_clean(&v);
    assert!(num(&v, "sent") > 0, "{v}");
    assert_eq!(num(&v, "delivered"), num(&v, "sent"), "{v}");
    let latency = &v["latency"];
    assert!(num(latency, "count") > 0, "{v}");
    assert!(latency["p99_ms"].as_f64().is_some(), "{v}");
}

/// `latency --breakdown` reads the server's `/metrics` (public port, service key) before and
/// after the measured window: every hop a delivered message passes has counted something.
#[test]
fn latency_breakdown_shows_where_the_time_goes() {
    let server = Server::start(&[]);
    let v = server.bench_ok(&[
        "latency",
        "--rooms",
        "3",
        "--rate",
        "100",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--breakdown",
    ]);
    assert_clean(&v);
    let breakdown = &v["breakdown"];
    let hops = &breakdown["hops"];
    for hop in [
        "writer_queue",
        "commit",
        "commit_to_mailbox",
        "mailbox_wait",
        "outbox_wait",
    ] {
        assert!(hops[hop].is_object(), "{hop} missing in {breakdown}");
    }
    for hop in [
        "writer_queue",
        "commit",
        "commit_to_mailbox",
        "mailbox_wait",
    ] {
        let h = &hops[hop];
        assert!(num(h, "count") > 0, "{hop}: {breakdown}");
        for q in ["p50_ms", "p90_ms", "p99_ms", "mean_ms"] {
            assert!(h[q].as_f64().is_some(), "{hop} {q}: {breakdown}");
        }
    }
    // The counts are of the window between two scrapes, which opens a moment after the
    // measured window does: they need not equal the bench's own count (timing), only exist.
    assert!(num(&breakdown["batch_size"], "count") > 0, "{breakdown}");
    assert!(
        breakdown["end_to_end"]["scheduled_send_to_other_member"]["p99_ms"]
            .as_f64()
            .is_some(),
        "{breakdown}"
    );
}

/// A server whose metrics cannot be read (wrong `--metrics-url`) is a setup error.
#[test]
fn latency_breakdown_without_metrics_is_a_setup_error() {
    let server = Server::start(&[]);
    let (code, json, stderr) = server.bench(
        SERVICE_KEY,
        &[
            "latency",
            "--rooms",
            "1",
            "--duration",
            "1",
            "--breakdown",
            "--metrics-url",
            "http://127.0.0.1:9/",
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(json.is_none(), "{json:?}");
    assert!(stderr.contains("--metrics-url"), "{stderr}");
}

#[test]
fn connections_are_held_and_measured() {
    // Pings every second so the idle window sees heartbeats (not asserted: timing).
    let server = Server::start(&[("CHAT_PING_SECS", "1"), ("CHAT_IDLE_TIMEOUT_SECS", "30")]);
    let v = server.bench_ok(&["connections", "--count", "20", "--idle-secs", "1.5"]);
    assert_clean(&v);
    assert_eq!(num(&v, "connected"), 20, "{v}");
    assert_eq!(num(&v, "failed"), 0, "{v}");
    assert_eq!(num(&v, "dropped"), 0, "{v}");
    assert!(num(&v, "server_rss_connected_kib") > 0, "{v}");
    assert!(v["server_kib_per_connection"].is_f64(), "{v}");
    assert!(v["server_idle_cpu_percent"].is_f64(), "{v}");
}

#[test]
fn history_pages_are_whole_and_in_order() {
    let server = Server::start(&[]);
    let v = server.bench_ok(&[
        "history",
        "--rooms",
        "2",
        "--seed",
        "300",
        "--rate",
        "20",
        "--send-rate",
        "20",
        "--duration",
        "1",
        "--warmup",
        "0",
    ]);
    assert_clean(&v);
    assert_eq!(num(&v, "seeded_per_room"), 300, "{v}");
    assert!(num(&v, "history_answered") > 0, "{v}");
    assert_eq!(
        num(&v, "history_answered"),
        num(&v, "history_requests"),
        "{v}"
    );
    assert_eq!(num(&v, "bad_history"), 0, "{v}");
    assert!(num(&v["history_latency"], "count") > 0, "{v}");
}

#[test]
fn soak_reconnects_catches_up_and_judges_the_run() {
    // ~10 s: intervals of 2 s so stalls and memory are judged (the memory limit is wide:
    // 10 s of a fresh server is not a steady state), and enough churn, abrupt drops and slow
    // reading that every path runs at least once.
    let server = Server::start(&[]);
    let v = server.bench_ok(&[
        "soak",
        "--duration",
        "10s",
        "--rooms",
        "6",
        "--rate",
        "60",
        "--history-rate",
        "4",
        "--seen-secs",
        "1",
        "--churn",
        "1",
        "--churn-secs",
        "3",
        "--slow",
        "1",
        "--slow-pause",
        "1",
        "--abrupt",
        "2",
        "--abrupt-secs",
        "2",
        "--interval",
        "2",
        "--baseline-secs",
        "4",
        "--max-rss-growth",
        "200",
    ]);
    assert_eq!(v["mode"], "soak", "{v}");
    assert_eq!(v["ok"], Value::Bool(true), "{v}");
    for key in [
        "lost",
        "duplicated",
        "out_of_order",
        "disagreements",
        "conflicting",
        "gaps",
        "unacked",
        "stalls",
    ] {
        assert_eq!(num(&v, key), 0, "{key} in {v}");
    }
    assert!(num(&v, "sent") > 0, "{v}");
    assert_eq!(num(&v, "acked"), num(&v, "sent"), "{v}");
    assert_eq!(num(&v, "delivered"), num(&v, "sent"), "{v}");
    assert!(num(&v, "planned_reconnects") > 0, "{v}");
    assert!(num(&v, "abrupt_drops") > 0, "{v}");
    assert!(num(&v, "catch_ups") > num(&v, "clients"), "{v}");
    assert_eq!(v["drained"], Value::Bool(true), "{v}");
    let intervals = v["intervals"].as_array().map_or(0, Vec::len);
    assert_eq!(intervals, 5, "{v}");
    assert_eq!(v["memory"]["judged"], Value::Bool(true), "{v}");
    assert!(v["failures"].as_array().is_some_and(Vec::is_empty), "{v}");
    // The pool is read from /metrics (with the service key) once a second: every 2 s
    // interval has readings, and they carry the pool's size.
    let pool = &v["server_pool"];
    assert_eq!(num(pool, "failed_scrapes"), 0, "{pool}");
    let pools = pool["intervals"].as_array().expect("pool intervals");
    assert_eq!(pools.len(), 5, "{pool}");
    for p in pools {
        assert!(num(p, "samples") >= 1, "{p}");
        assert!(p["last"]["max"].as_f64().is_some_and(|m| m >= 1.0), "{p}");
    }
}

#[test]
fn a_soak_with_a_bad_duration_is_a_setup_error() {
    let server = Server::start(&[]);
    let (code, _, stderr) = server.bench(SERVICE_KEY, &["soak", "--duration", "10d"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--duration"), "{stderr}");
}

#[test]
fn a_wrong_service_key_is_a_setup_error() {
    let server = Server::start(&[]);
    let (code, json, stderr) = server.bench(
        "not-the-key",
        &["throughput", "--rooms", "1", "--duration", "1"],
    );
    assert_eq!(code, Some(2), "stderr:\n{stderr}");
    assert!(json.is_none());
    assert!(stderr.contains("401"), "{stderr}");
}

#[test]
fn ready_users_reads_both_log_formats() {
    let log = "2026-01-01T00:00:00Z  INFO chat_server::ws::connection: connection ready user=u-1-a conn=2 rooms=1\n\
               2026-01-01T00:00:00Z  INFO conn{user=u-1-b conn=1}: chat_server::ws::connection: connection ready rooms=1\n\
               2026-01-01T00:00:00Z  INFO conn{user=u-2-a conn=3}: chat_server::ws::connection: connection closed\n";
    assert_eq!(ready_users(log), ["u-1-a", "u-1-b"]);
}

/// Two `--url`s put the two members of every room on different servers: member `a` of room
/// `i` on node `i % 2`, member `b` on node `(i + 1) % 2`.
///
/// Two chat-server processes on the same SQLite file share rooms, users and tokens but NOT
/// live events: a message sent on one is not delivered to a connection on the other (that
/// fan-out, over PostgreSQL LISTEN/NOTIFY or NATS, is the cluster work still to come). So this
/// test runs `connections` (which sends no messages) and checks only the split, from the
/// bench's JSON line and, independently, from each server's own log of who connected to it.
/// Delivery across nodes is tested by the cluster tests.
#[test]
fn two_urls_split_every_room_across_the_nodes() {
    let shared = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let db = format!("sqlite://{}", shared.path().join("chat.db").display());
    // `info` logs "connection ready user=..." for every authenticated connection.
    let env = [("DATABASE_URL", db.as_str()), ("RUST_LOG", "info")];
    // One after the other: the second starts on a database the first has migrated.
    let first = Server::start(&env);
    let second = Server::start(&env);
    let nodes = [&first, &second];
    let run_id = format!("split-{}", std::process::id());
    let rooms = 5;
    let count = (2 * rooms).to_string();
    let args = [
        "--run-id",
        &run_id,
        "connections",
        "--count",
        &count,
        "--idle-secs",
        "0.5",
    ];
    let (code, json, stderr) = bench(&nodes, SERVICE_KEY, &args);
    let Some(v) = json else {
        panic!("no JSON line (exit {code:?});\nstderr:\n{stderr}");
    };
    assert_eq!(code, Some(0), "{v}\nstderr:\n{stderr}");
    assert_clean(&v);
    assert_eq!(num(&v, "connected"), 2 * rooms as u64, "{v}");
    assert_eq!(num(&v, "nodes"), 2, "{v}");
    assert_eq!(v["urls"], serde_json::json!([first.url, second.url]), "{v}");
    // Rooms 0, 2, 4 put a on node 0 and b on node 1; rooms 1, 3 the other way round.
    assert_eq!(v["connections_per_node"], serde_json::json!([5, 5]), "{v}");
    assert!(
        stderr.contains("chat-bench connections, 2 nodes: OK"),
        "{stderr}"
    );
    // Memory and CPU of both processes, summed, and each one's.
    let each = v["server_nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("server_nodes missing in {v}"));
    let mut pids: Vec<u64> = each.iter().map(|n| num(n, "pid")).collect();
    pids.sort_unstable();
    let mut want = vec![u64::from(first.pid()), u64::from(second.pid())];
    want.sort_unstable();
    assert_eq!(pids, want, "{v}");
    let rss: u64 = each.iter().map(|n| num(n, "rss_connected_kib")).sum();
    assert!(rss > 0, "{v}");
    assert_eq!(num(&v, "server_rss_connected_kib"), rss, "{v}");

    // What the servers saw: every member authenticated on its node, and only there.
    let ready = [
        ready_users(&first.full_log()),
        ready_users(&second.full_log()),
    ];
    for room in 0..rooms {
        for (side, member) in ["a", "b"].into_iter().enumerate() {
            let user = format!("{run_id}-{room}-{member}");
            let node = (room + side) % 2;
            assert!(
                ready[node].contains(&user),
                "member {member} of room {room} did not connect to node {node}, which saw {:?}",
                ready[node]
            );
            assert!(
                !ready[1 - node].contains(&user),
                "member {member} of room {room} also connected to node {}",
                1 - node
            );
        }
    }
    assert_eq!(ready[0].len() + ready[1].len(), 2 * rooms, "{ready:?}");
}
