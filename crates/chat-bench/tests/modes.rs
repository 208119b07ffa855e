//! Each mode at tiny scale against the real `chat-server` binary on SQLite in a temp dir.
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

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("server.log")) {
            let _ = f.read_to_string(&mut text);
        }
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or_default().to_owned()
    }

    /// Runs `chat-bench` against this server; returns its exit code and JSON line.
    fn bench(&self, key: &str, args: &[&str]) -> (Option<i32>, Option<Value>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
            .args([
                "--url",
                &self.url,
                "--service-key",
                key,
                "--server-pid",
                &self.pid().to_string(),
            ])
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
