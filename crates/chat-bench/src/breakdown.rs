//! `latency --breakdown`: where a message's time goes inside the server, per hop.
//!
//! The server keeps a histogram per hop of a message (`crates/chat-server/src/metrics.rs`,
//! `docs/host-app.md` "Metrics"). This module scrapes its `GET /metrics` (Prometheus text
//! format) right before and right after the measured window, takes the difference of each
//! histogram's cumulative bucket counts, `_sum` and `_count`, and estimates quantiles from
//! those deltas the way Prometheus' `histogram_quantile` does: find the bucket the rank falls
//! in and interpolate linearly inside it. They are **bucket estimates**, only as fine as the
//! buckets; the mean (`_sum` / `_count`) is exact.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value, json};

/// The hops, in a message's path order: (short name, metric, what it is).
pub const HOPS: &[(&str, &str, &str)] = &[
    (
        "writer_queue",
        "matchchat_writer_queue_seconds",
        "send queued -> its batch starts",
    ),
    (
        "commit",
        "matchchat_commit_seconds",
        "one group commit (per batch)",
    ),
    (
        "commit_to_mailbox",
        "matchchat_commit_to_mailbox_seconds",
        "batch start -> frame in mailboxes (incl. commit)",
    ),
    (
        "mailbox_wait",
        "matchchat_mailbox_wait_seconds",
        "frame waiting in a connection's mailbox",
    ),
    (
        "outbox_wait",
        "matchchat_outbox_wait_seconds",
        "frame waiting in the outbox for the socket",
    ),
];

/// Messages per group commit.
pub const BATCH_SIZE: &str = "matchchat_batch_size";

/// One histogram: cumulative counts per upper bound (ascending, `+Inf` last when present),
/// with its `_sum` and `_count`. Label sets other than `le` are added together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

/// Every histogram of one scrape, by base name (without `_bucket`, `_sum`, `_count`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub histograms: BTreeMap<String, Histogram>,
}

/// A quantile estimated from buckets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Estimate {
    /// Inside a finite bucket (interpolated).
    Within(f64),
    /// In the `+Inf` bucket: above the largest finite bound, which is given.
    Above(f64),
}

impl Estimate {
    pub fn value(self) -> f64 {
        match self {
            Self::Within(v) | Self::Above(v) => v,
        }
    }
}

/// Splits `name{labels} value [timestamp]` into name, labels (without braces) and value.
pub(crate) fn split_sample(line: &str) -> Option<(&str, &str, f64)> {
    let (series, rest) = match line.find('{') {
        Some(open) => {
            let close = open + line[open..].find('}')?;
            ((&line[..open], &line[open + 1..close]), &line[close + 1..])
        }
        None => {
            let space = line.find(char::is_whitespace)?;
            ((&line[..space], ""), &line[space..])
        }
    };
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some((series.0.trim(), series.1, value))
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// The value of label `le` in `labels` (`a="x",le="0.5"`).
fn le_of(labels: &str) -> Option<f64> {
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        if key.trim() == "le" {
            parse_value(value.trim().trim_matches('"'))
        } else {
            None
        }
    })
}

/// Parses the histograms out of a Prometheus text exposition; other samples, comments and
/// lines that do not parse are skipped.
pub fn parse(text: &str) -> Snapshot {
    let mut histograms: BTreeMap<String, Histogram> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value)) = split_sample(line) else {
            continue;
        };
        if let Some(base) = name.strip_suffix("_bucket") {
            let Some(le) = le_of(labels) else { continue };
            let h = histograms.entry(base.to_owned()).or_default();
            match h.buckets.iter_mut().find(|(bound, _)| *bound == le) {
                Some((_, count)) => *count += value,
                None => h.buckets.push((le, value)),
            }
        } else if let Some(base) = name.strip_suffix("_sum") {
            histograms.entry(base.to_owned()).or_default().sum += value;
        } else if let Some(base) = name.strip_suffix("_count") {
            histograms.entry(base.to_owned()).or_default().count += value;
        }
    }
    // `_sum`/`_count` of a summary (no buckets) are not histograms.
    histograms.retain(|_, h| !h.buckets.is_empty());
    for h in histograms.values_mut() {
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Snapshot { histograms }
}

impl Snapshot {
    /// Adds another node's histograms to these (a cluster's figures are the nodes' sums).
    pub fn add(&mut self, other: &Snapshot) {
        for (name, h) in &other.histograms {
            let mine = self.histograms.entry(name.clone()).or_default();
            for &(le, count) in &h.buckets {
                match mine.buckets.iter_mut().find(|(bound, _)| *bound == le) {
                    Some((_, c)) => *c += count,
                    None => mine.buckets.push((le, count)),
                }
            }
            mine.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            mine.sum += h.sum;
            mine.count += h.count;
        }
    }

    /// What was recorded between `before` and this scrape. A histogram the server had not
    /// rendered yet (nothing recorded) counts as empty before.
    pub fn since(&self, before: &Snapshot) -> Snapshot {
        let empty = Histogram::default();
        let histograms = self
            .histograms
            .iter()
            .map(|(name, after)| {
                let b = before.histograms.get(name).unwrap_or(&empty);
                let buckets = after
                    .buckets
                    .iter()
                    .map(|&(le, count)| {
                        let was = b
                            .buckets
                            .iter()
                            .find(|(bound, _)| *bound == le)
                            .map_or(0.0, |(_, c)| *c);
                        (le, (count - was).max(0.0))
                    })
                    .collect();
                let delta = Histogram {
                    buckets,
                    sum: (after.sum - b.sum).max(0.0),
                    count: (after.count - b.count).max(0.0),
                };
                (name.clone(), delta)
            })
            .collect();
        Snapshot { histograms }
    }
}

impl Histogram {
    /// Observations: the `+Inf` bucket's count (the last bucket's), else `_count`.
    pub fn total(&self) -> f64 {
        match self.buckets.last() {
            Some(&(le, count)) if le.is_infinite() => count,
            _ => self.count,
        }
    }

    /// The mean, from `_sum` / `_count` (exact, not a bucket estimate).
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// Quantile `q` (0..=1) estimated as Prometheus' `histogram_quantile` does: the bucket
    /// holding rank `q * total`, interpolated linearly between its lower bound (the previous
    /// bucket's, 0 for the first) and its upper bound. `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<Estimate> {
        let total = self.total();
        if total <= 0.0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total;
        let mut lower = 0.0_f64;
        let mut below = 0.0_f64;
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank && cumulative > below {
                if le.is_infinite() {
                    return Some(Estimate::Above(lower));
                }
                let upper = le;
                let start = if lower > upper { 0.0 } else { lower };
                let fraction = (rank - below) / (cumulative - below);
                return Some(Estimate::Within(start + (upper - start) * fraction));
            }
            lower = le;
            below = cumulative;
        }
        // Buckets without `+Inf` that end below the rank (not what the exporter writes).
        Some(Estimate::Above(lower))
    }

    /// Quantile `q` as the upper bound of the bucket it falls in: for counts such as the
    /// batch size, whose buckets (1, 2, 4, ...) hold whole numbers, "at most this many".
    pub fn quantile_bound(&self, q: f64) -> Option<Estimate> {
        let total = self.total();
        if total <= 0.0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total;
        let mut lower = 0.0_f64;
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank && cumulative > 0.0 {
                return Some(if le.is_infinite() {
                    Estimate::Above(lower)
                } else {
                    Estimate::Within(le)
                });
            }
            lower = le;
        }
        Some(Estimate::Above(lower))
    }
}

/// Reads `/metrics` of every node (summed).
pub struct Scraper {
    agent: ureq::Agent,
    /// URL and `Authorization` header value, if any.
    targets: Vec<(String, Option<String>)>,
}

impl Scraper {
    /// `GET {base}/metrics` with the service key for each of `bases`, or each of
    /// `metrics_urls` without a key when there are any (the servers' `CHAT_METRICS_BIND`).
    pub fn new(bases: &[String], key: Option<&str>, metrics_urls: &[String]) -> Self {
        let targets = if metrics_urls.is_empty() {
            bases
                .iter()
                .map(|b| {
                    (
                        format!("{}/metrics", b.trim_end_matches('/')),
                        key.map(|k| format!("Bearer {k}")),
                    )
                })
                .collect()
        } else {
            metrics_urls
                .iter()
                .map(|u| {
                    let u = u.trim().trim_end_matches('/');
                    let url = if u.ends_with("/metrics") {
                        u.to_owned()
                    } else {
                        format!("{u}/metrics")
                    };
                    (url, None)
                })
                .collect()
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Self { agent, targets }
    }

    /// One scrape of every node, summed.
    pub fn scrape(&self) -> Result<Snapshot, String> {
        let mut total = Snapshot::default();
        for text in self.texts()? {
            total.add(&parse(&text));
        }
        Ok(total)
    }

    /// Every node's exposition, as text.
    pub fn texts(&self) -> Result<Vec<String>, String> {
        let mut texts = Vec::with_capacity(self.targets.len());
        for (url, auth) in &self.targets {
            let mut request = self.agent.get(url);
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            let text = request
                .call()
                .and_then(|mut r| r.body_mut().with_config().limit(64 << 20).read_to_string())
                .map_err(|e| {
                    format!(
                        "GET {url}: {e} (--breakdown reads the server's metrics: on the public \
                         port with the service key, or give --metrics-url when the server \
                         sets CHAT_METRICS_BIND)"
                    )
                })?;
            texts.push(text);
        }
        Ok(texts)
    }
}

/// One hop's figures, in seconds (bucket estimates but the mean).
#[derive(Debug, Clone, PartialEq)]
pub struct HopFigures {
    pub name: &'static str,
    pub metric: &'static str,
    pub what: &'static str,
    pub count: f64,
    pub p50: Option<Estimate>,
    pub p90: Option<Estimate>,
    pub p99: Option<Estimate>,
    pub mean: Option<f64>,
}

/// The hops' figures from the window's deltas, in path order; a hop the server never
/// recorded has a count of 0.
pub fn hops(delta: &Snapshot) -> Vec<HopFigures> {
    let empty = Histogram::default();
    HOPS.iter()
        .map(|&(name, metric, what)| {
            let h = delta.histograms.get(metric).unwrap_or(&empty);
            HopFigures {
                name,
                metric,
                what,
                count: h.total(),
                p50: h.quantile(0.50),
                p90: h.quantile(0.90),
                p99: h.quantile(0.99),
                mean: h.mean(),
            }
        })
        .collect()
}

/// Seconds as milliseconds with three decimals (µs resolution).
fn ms(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e3
}

/// An estimate for the table: `0.123`, or `>5000.000` above the largest bucket.
fn cell(e: Option<Estimate>) -> String {
    match e {
        None => "-".to_owned(),
        Some(Estimate::Within(v)) => format!("{:.3}", ms(v)),
        Some(Estimate::Above(v)) => format!(">{:.3}", ms(v)),
    }
}

/// A count (summed from the exporter's floats) as an integer.
fn count(c: f64) -> u64 {
    if c.is_finite() && c > 0.0 {
        c.round() as u64
    } else {
        0
    }
}

fn estimate_json(e: Option<Estimate>) -> Value {
    e.map_or(Value::Null, |e| Value::from(ms(e.value())))
}

/// The table's rows (name, text): a header, one row per hop, the batch size.
pub fn rows(delta: &Snapshot) -> Vec<(String, String)> {
    let mut out = vec![(
        "where the time goes (server, per hop)".to_owned(),
        format!(
            "{:>9} {:>9} {:>9} {:>9} {:>9}  ms; p50/p90/p99 are bucket estimates, mean exact",
            "count", "p50", "p90", "p99", "mean"
        ),
    )];
    for h in hops(delta) {
        out.push((
            format!("  {:<17} {}", h.name, h.what),
            format!(
                "{:>9} {:>9} {:>9} {:>9} {:>9}",
                h.count,
                cell(h.p50),
                cell(h.p90),
                cell(h.p99),
                h.mean.map_or("-".to_owned(), |m| format!("{:.3}", ms(m)))
            ),
        ));
    }
    if let Some(b) = delta.histograms.get(BATCH_SIZE) {
        let n = |e: Option<Estimate>| match e {
            None => "-".to_owned(),
            Some(Estimate::Within(v)) => format!("<={v:.0}"),
            Some(Estimate::Above(v)) => format!(">{v:.0}"),
        };
        out.push((
            format!("  {:<17} {}", "batch_size", "messages per group commit"),
            format!(
                "{:>9} {:>9} {:>9} {:>9} {:>9}",
                b.total(),
                n(b.quantile_bound(0.5)),
                n(b.quantile_bound(0.9)),
                n(b.quantile_bound(0.99)),
                b.mean().map_or("-".to_owned(), |m| format!("{m:.1}"))
            ),
        ));
    }
    out
}

/// The breakdown for the JSON line: per hop `count`, `p50_ms`, `p90_ms`, `p99_ms` (bucket
/// estimates; `above_top_bucket` lists those beyond the largest bound, given as that bound)
/// and `mean_ms`, and the batch size (its percentiles as their buckets' upper bounds).
pub fn to_json(delta: &Snapshot) -> Value {
    let mut hops_json = Map::new();
    for h in hops(delta) {
        let above: Vec<&str> = [("p50", h.p50), ("p90", h.p90), ("p99", h.p99)]
            .into_iter()
            .filter(|(_, e)| matches!(e, Some(Estimate::Above(_))))
            .map(|(name, _)| name)
            .collect();
        let mut hop = json!({
            "metric": h.metric,
            "count": count(h.count),
            "p50_ms": estimate_json(h.p50),
            "p90_ms": estimate_json(h.p90),
            "p99_ms": estimate_json(h.p99),
            "mean_ms": h.mean.map_or(Value::Null, |m| Value::from(ms(m))),
        });
        if !above.is_empty()
            && let Some(map) = hop.as_object_mut()
        {
            map.insert("above_top_bucket".into(), json!(above));
        }
        hops_json.insert(h.name.to_owned(), hop);
    }
    let batch = delta.histograms.get(BATCH_SIZE).map_or(Value::Null, |b| {
        json!({
            "count": count(b.total()),
            "p50_at_most": b.quantile_bound(0.5).map(Estimate::value),
            "p90_at_most": b.quantile_bound(0.9).map(Estimate::value),
            "p99_at_most": b.quantile_bound(0.99).map(Estimate::value),
            "mean": b.mean(),
        })
    });
    json!({
        "estimated_from": "server /metrics histogram bucket deltas over the measured window and the drain; quantiles interpolated linearly inside a bucket",
        "hops": Value::Object(hops_json),
        "batch_size": batch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `metrics-exporter-prometheus` writes, cut down: two histograms, a counter, a
    /// gauge, and a labelled histogram.
    const BEFORE: &str = r#"# TYPE matchchat_connections gauge
matchchat_connections 4

# TYPE matchchat_frames_in_total counter
matchchat_frames_in_total{type="send"} 10

# TYPE matchchat_commit_seconds histogram
matchchat_commit_seconds_bucket{le="0.0001"} 0
matchchat_commit_seconds_bucket{le="0.0005"} 2
matchchat_commit_seconds_bucket{le="0.001"} 4
matchchat_commit_seconds_bucket{le="0.005"} 5
matchchat_commit_seconds_bucket{le="+Inf"} 5
matchchat_commit_seconds_sum 0.004
matchchat_commit_seconds_count 5

# TYPE matchchat_batch_size histogram
matchchat_batch_size_bucket{le="1"} 5
matchchat_batch_size_bucket{le="2"} 5
matchchat_batch_size_bucket{le="+Inf"} 5
matchchat_batch_size_sum 5
matchchat_batch_size_count 5
"#;

    const AFTER: &str = r#"# TYPE matchchat_connections gauge
matchchat_connections 4
# TYPE matchchat_commit_seconds histogram
matchchat_commit_seconds_bucket{le="0.0001"} 0
matchchat_commit_seconds_bucket{le="0.0005"} 52
matchchat_commit_seconds_bucket{le="0.001"} 94
matchchat_commit_seconds_bucket{le="0.005"} 104
matchchat_commit_seconds_bucket{le="+Inf"} 105
matchchat_commit_seconds_sum 0.104
matchchat_commit_seconds_count 105
# TYPE matchchat_batch_size histogram
matchchat_batch_size_bucket{le="1"} 55
matchchat_batch_size_bucket{le="2"} 105
matchchat_batch_size_bucket{le="+Inf"} 105
matchchat_batch_size_sum 155
matchchat_batch_size_count 105
# TYPE matchchat_mailbox_wait_seconds histogram
matchchat_mailbox_wait_seconds_bucket{le="0.00001"} 100
matchchat_mailbox_wait_seconds_bucket{le="0.000025"} 300
matchchat_mailbox_wait_seconds_bucket{le="+Inf"} 400
matchchat_mailbox_wait_seconds_sum 1.5e-2
matchchat_mailbox_wait_seconds_count 400
# TYPE matchchat_labelled_seconds histogram
matchchat_labelled_seconds_bucket{cause="a",le="1"} 1
matchchat_labelled_seconds_bucket{cause="a",le="+Inf"} 1
matchchat_labelled_seconds_bucket{cause="b",le="1"} 2
matchchat_labelled_seconds_bucket{cause="b",le="+Inf"} 3
matchchat_labelled_seconds_sum{cause="a"} 0.5
matchchat_labelled_seconds_sum{cause="b"} 7
matchchat_labelled_seconds_count{cause="a"} 1
matchchat_labelled_seconds_count{cause="b"} 3
"#;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn parses_histograms_and_skips_everything_else() {
        let s = parse(BEFORE);
        assert_eq!(
            s.histograms.keys().collect::<Vec<_>>(),
            ["matchchat_batch_size", "matchchat_commit_seconds"]
        );
        let c = &s.histograms["matchchat_commit_seconds"];
        assert_eq!(
            c.buckets,
            vec![
                (0.0001, 0.0),
                (0.0005, 2.0),
                (0.001, 4.0),
                (0.005, 5.0),
                (f64::INFINITY, 5.0)
            ]
        );
        assert!(close(c.sum, 0.004));
        assert!(close(c.count, 5.0));
        // Label sets other than `le` are added up; exponents parse.
        let after = parse(AFTER);
        let l = &after.histograms["matchchat_labelled_seconds"];
        assert_eq!(l.buckets, vec![(1.0, 3.0), (f64::INFINITY, 4.0)]);
        assert!(close(l.sum, 7.5) && close(l.count, 4.0));
        assert!(close(
            after.histograms["matchchat_mailbox_wait_seconds"].sum,
            0.015
        ));
    }

    #[test]
    fn odd_lines_are_skipped_not_fatal() {
        let s = parse(
            "garbage\nx_bucket{le=\"oops\"} 1\nx_bucket{le=\"1\"} nope\n\
             y_bucket{le=\"1\"} 2 1700000000000\ny_bucket{le=\"+Inf\"} 2\ny_count 2\ny_sum 1\n\
             # HELP y_sum not a sample\nsummary_sum 3\nsummary_count 1\n",
        );
        assert_eq!(s.histograms.keys().collect::<Vec<_>>(), ["y"]);
        assert_eq!(
            s.histograms["y"].buckets,
            vec![(1.0, 2.0), (f64::INFINITY, 2.0)]
        );
    }

    #[test]
    fn the_window_is_the_difference_and_new_histograms_start_from_zero() {
        let d = parse(AFTER).since(&parse(BEFORE));
        let c = &d.histograms["matchchat_commit_seconds"];
        assert_eq!(
            c.buckets,
            vec![
                (0.0001, 0.0),
                (0.0005, 50.0),
                (0.001, 90.0),
                (0.005, 99.0),
                (f64::INFINITY, 100.0)
            ]
        );
        assert!(close(c.sum, 0.1) && close(c.count, 100.0));
        assert_eq!(c.mean(), Some(0.001));
        // Not in the first scrape: the whole of the second.
        let m = &d.histograms["matchchat_mailbox_wait_seconds"];
        assert!(close(m.total(), 400.0));
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let d = parse(AFTER).since(&parse(BEFORE));
        let c = &d.histograms["matchchat_commit_seconds"];
        // Rank 50 of 100: the end of the (0.1 ms, 0.5 ms] bucket, which holds 50.
        assert_eq!(c.quantile(0.5), Some(Estimate::Within(0.0005)));
        // Rank 25: halfway through that bucket.
        let p25 = c.quantile(0.25).map(Estimate::value).unwrap_or(f64::NAN);
        assert!(close(p25, 0.0003), "{p25}");
        // Rank 90: the end of (0.5 ms, 1 ms] (cumulative 90).
        let p90 = c.quantile(0.9).map(Estimate::value).unwrap_or(f64::NAN);
        assert!(close(p90, 0.001), "{p90}");
        // Rank 70: half of the 40 in (0.5, 1] ms.
        let p70 = c.quantile(0.7).map(Estimate::value).unwrap_or(f64::NAN);
        assert!(close(p70, 0.00075), "{p70}");
        // Rank 99: the 9th of the 9 in (1, 5] ms: its top.
        let p99 = c.quantile(0.99).map(Estimate::value).unwrap_or(f64::NAN);
        assert!(close(p99, 0.005), "{p99}");
        // Rank 99.5: in +Inf, so only "above 5 ms".
        assert_eq!(c.quantile(0.995), Some(Estimate::Above(0.005)));
        // The first bucket interpolates from 0: 100 of 400 below 10 µs; rank 50 is half.
        let m = &d.histograms["matchchat_mailbox_wait_seconds"];
        let p = m.quantile(0.125).map(Estimate::value).unwrap_or(f64::NAN);
        assert!(close(p, 0.000005), "{p}");
        // Nothing recorded: no estimate.
        assert_eq!(Histogram::default().quantile(0.5), None);
        assert_eq!(Histogram::default().mean(), None);
    }

    #[test]
    fn nodes_add_up_and_hops_come_in_path_order() {
        let mut two = parse(AFTER);
        two.add(&parse(AFTER));
        let c = &two.histograms["matchchat_commit_seconds"];
        assert!(close(c.total(), 210.0) && close(c.sum, 0.208));
        let d = parse(AFTER).since(&parse(BEFORE));
        let h = hops(&d);
        assert_eq!(
            h.iter().map(|h| h.name).collect::<Vec<_>>(),
            [
                "writer_queue",
                "commit",
                "commit_to_mailbox",
                "mailbox_wait",
                "outbox_wait"
            ]
        );
        assert!(close(h[1].count, 100.0));
        assert!(close(h[0].count, 0.0) && h[0].p50.is_none());
        let v = to_json(&d);
        assert_eq!(v["hops"]["commit"]["count"], 100);
        assert_eq!(v["hops"]["commit"]["p50_ms"], 0.5);
        assert_eq!(v["hops"]["commit"]["mean_ms"], 1.0);
        assert_eq!(v["hops"]["mailbox_wait"]["count"], 400);
        assert_eq!(
            v["hops"]["mailbox_wait"]["above_top_bucket"],
            json!(["p90", "p99"])
        );
        assert_eq!(v["hops"]["writer_queue"]["p99_ms"], Value::Null);
        assert_eq!(v["batch_size"]["count"], 100);
        assert_eq!(v["batch_size"]["mean"], 1.5);
        // Half the batches were of 1, the rest of 2: whole numbers, given as bucket bounds.
        assert_eq!(v["batch_size"]["p50_at_most"], 1.0);
        assert_eq!(v["batch_size"]["p90_at_most"], 2.0);
        let table = rows(&d);
        assert_eq!(table.len(), 1 + HOPS.len() + 1);
        assert!(table[0].1.contains("bucket estimates"));
        assert!(table[4].1.contains(">0.025"), "{:?}", table[4]);
        assert!(
            table[6].1.contains("<=1") && table[6].1.contains("<=2"),
            "{:?}",
            table[6]
        );
    }
}
