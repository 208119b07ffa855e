//! The end of a run: a table for people (stderr) and one JSON line for scripts (stdout).

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::engine::Verdict;
use crate::procstat::{Sample, Servers};

pub struct Report {
    pub mode: &'static str,
    pub ok: bool,
    /// Server nodes the run connected to (named in the title).
    pub nodes: usize,
    json: Map<String, Value>,
    rows: Vec<(String, String)>,
}

impl Report {
    pub fn new(mode: &'static str) -> Self {
        let mut json = Map::new();
        json.insert("mode".into(), Value::from(mode));
        Self {
            mode,
            ok: true,
            nodes: 1,
            json,
            rows: Vec::new(),
        }
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.json.insert(key.to_owned(), value.into());
    }

    pub fn row(&mut self, name: &str, value: impl Into<String>) {
        self.rows.push((name.to_owned(), value.into()));
    }

    /// Records the correctness counters; any non-zero one fails the run.
    pub fn verdict(&mut self, v: &Verdict, drained: bool) {
        self.ok &= v.clean() && drained;
        self.set("sent", v.sent);
        self.set("persisted", v.confirmed);
        self.set("delivered", v.delivered);
        self.set("lost", v.lost);
        self.set("duplicated", v.duplicated);
        self.set("out_of_order", v.out_of_order);
        self.set("disagreements", v.disagreements);
        self.set("foreign", v.foreign);
        self.set("error_frames", v.error_frames);
        self.set("closed_connections", v.closed_connections);
        self.set("drained", drained);
        self.row("messages sent", v.sent.to_string());
        self.row("own copies back (persisted)", v.confirmed.to_string());
        self.row("delivered to the other member", v.delivered.to_string());
        self.row(
            "lost / duplicated / out of order",
            format!("{} / {} / {}", v.lost, v.duplicated, v.out_of_order),
        );
        self.row(
            "members disagreeing / foreign / error frames / closed",
            format!(
                "{} / {} / {} / {}",
                v.disagreements, v.foreign, v.error_frames, v.closed_connections
            ),
        );
    }

    pub fn errors(&mut self, errors: &[String]) {
        self.set(
            "errors",
            errors.iter().take(10).cloned().collect::<Vec<_>>(),
        );
        for e in errors.iter().take(5) {
            self.row("error", e.clone());
        }
    }

    /// Server and client CPU and memory over a window, when readings exist. With several
    /// server processes (one per node) the figures are their sums, and `server_nodes` holds
    /// each one's.
    pub fn resources(&mut self, server: Option<(Servers, Servers)>, client: (Sample, Sample)) {
        let (c0, c1) = client;
        let client_cpu = c1.cpu_percent_since(&c0);
        self.set("client_cpu_percent", client_cpu.map(round1));
        if let Some(p) = client_cpu {
            self.row("client CPU (% of one core)", format!("{p:.1}"));
        }
        match server {
            Some((s0, s1)) => {
                let cpu = s1.cpu_percent_since(&s0);
                self.set("server_cpu_percent", cpu.map(round1));
                self.set("server_rss_kib", s1.rss_kib());
                let summed = if s1.each.len() > 1 {
                    format!(", {} processes summed", s1.each.len())
                } else {
                    String::new()
                };
                if let Some(p) = cpu {
                    self.row(
                        &format!("server CPU (% of one core{summed})"),
                        format!("{p:.1}"),
                    );
                }
                if let Some(k) = s1.rss_kib() {
                    self.row(
                        &format!("server resident memory{summed}"),
                        format!("{:.1} MiB", k as f64 / 1024.0),
                    );
                }
                let mut each = Vec::with_capacity(s1.each.len());
                for (pid, b) in &s1.each {
                    let cpu = s0.sample_of(*pid).and_then(|a| b.cpu_percent_since(a));
                    each.push(
                        json!({"pid": pid, "cpu_percent": cpu.map(round1), "rss_kib": b.rss_kib}),
                    );
                    if s1.each.len() > 1 {
                        self.row(
                            &format!("  server pid {pid}: CPU / memory"),
                            format!("{} % / {} MiB", opt1(cpu), opt1(b.rss_kib.map(mib))),
                        );
                    }
                }
                self.set("server_nodes", each);
            }
            None => {
                self.set("server_cpu_percent", Value::Null);
                self.set("server_rss_kib", Value::Null);
                self.set("server_nodes", Value::Array(Vec::new()));
            }
        }
    }

    pub fn print(&self) {
        let mut out = String::new();
        let title = format!(
            "chat-bench {}, {} node{}: {}",
            self.mode,
            self.nodes,
            if self.nodes == 1 { "" } else { "s" },
            if self.ok { "OK" } else { "FAILED" }
        );
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        out.push_str(&format!(
            "\n{title}\n{}\n",
            "-".repeat(title.len().max(width + 20))
        ));
        for (k, v) in &self.rows {
            out.push_str(&format!("{k:<width$}  {v}\n"));
        }
        eprint!("{out}");
        let mut json = self.json.clone();
        json.insert("ok".into(), Value::from(self.ok));
        println!("{}", Value::Object(json));
    }
}

/// KiB as MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A figure with one decimal, or `?` when there is none.
pub fn opt1(x: Option<f64>) -> String {
    x.map_or_else(|| "?".to_owned(), |x| format!("{x:.1}"))
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms(micros: u64) -> f64 {
    round3(micros as f64 / 1000.0)
}

/// Percentiles of a histogram of microseconds, in milliseconds.
pub fn hist_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": round3(h.mean() / 1000.0),
    })
}

pub fn hist_row(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".to_owned();
    }
    format!(
        "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  (n={})",
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        h.len()
    )
}
