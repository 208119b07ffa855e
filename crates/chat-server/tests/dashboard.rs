//! Keeps the Grafana dashboard (`docs/grafana/matchchat-dashboard.json`) honest: it is a
//! dashboard Grafana can import; every `matchchat_` metric its queries use is one the server
//! defines (`src/metrics.rs`) and `docs/host-app.md` documents, grouped only by labels the
//! docs give that metric; every metric the server defines has a panel; and the real server,
//! after a little real traffic, serves every one of them, except those that only exist after
//! an event this test does not cause (listed in [`ONLY_AFTER`], each with its reason).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Database, Db, SERVICE_KEY, Server, WAIT};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DASHBOARD: &str = include_str!("../../../docs/grafana/matchchat-dashboard.json");
const HOST_APP: &str = include_str!("../../../docs/host-app.md");
const METRICS_RS: &str = include_str!("../src/metrics.rs");

/// Metrics that appear in a scrape only once something happened that this test does not
/// make happen (the exporter prints a metric from its first recording on).
const ONLY_AFTER: &[(&str, &str)] = &[
    (
        "matchchat_slow_consumer_closes_total",
        "a connection kicked as slow_consumer (tests/security.rs makes those)",
    ),
    (
        "matchchat_bus_reconnects_total",
        "the cluster bus losing its connection and getting it back",
    ),
    (
        "matchchat_bus_publish_failures_total",
        "the cluster bus refusing a publish",
    ),
    (
        "matchchat_bus_notices_received_total",
        "a notice from another node: the cluster test below",
    ),
    (
        "matchchat_bus_lag_seconds",
        "a notice from another node: the cluster test below",
    ),
    (
        "matchchat_webhook_given_up_total",
        "a webhook given up after CHAT_WEBHOOK_GIVE_UP_SECS (tests/webhooks.rs does that)",
    ),
];

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("the dashboard is JSON")
}

/// Every panel with queries (rows have none), with its targets' expressions.
fn query_panels(dashboard: &Value) -> Vec<&Value> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

/// The `matchchat_` metric names in a PromQL expression, a histogram's `_bucket`, `_sum` and
/// `_count` series counted as the histogram.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("matchchat_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every metric name the dashboard's queries use.
fn dashboard_metrics() -> BTreeSet<String> {
    let d = dashboard();
    query_panels(&d)
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets").iter())
        .flat_map(|t| metric_names(t["expr"].as_str().expect("expr")))
        .collect()
}

/// The labels of every `by (...)` clause of an expression.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let tail = &rest[at + 4..];
        let end = tail.find(')').expect("a closed by (...)");
        labels.extend(
            tail[..end]
                .split(',')
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty()),
        );
        rest = &tail[end..];
    }
    labels
}

/// The metrics table of docs/host-app.md: name -> (type, label names).
fn documented() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut table = BTreeMap::new();
    for line in HOST_APP.lines() {
        if !line.starts_with("| `matchchat_") {
            continue;
        }
        // | `name` | type | labels | what |
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_owned();
        let kind = cells.get(2).expect("a type column").to_string();
        // Label names are the backticked words outside parentheses (inside: their values).
        let mut labels = BTreeSet::new();
        let mut depth = 0;
        let mut word: Option<String> = None;
        for c in cells.get(3).expect("a labels column").chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                '`' if depth == 0 => match word.take() {
                    Some(w) => {
                        labels.insert(w);
                    }
                    None => word = Some(String::new()),
                },
                c => {
                    if let Some(w) = word.as_mut() {
                        w.push(c);
                    }
                }
            }
        }
        table.insert(name, (kind, labels));
    }
    assert!(
        table.len() >= 19,
        "found only {} rows of the metrics table in docs/host-app.md: {table:?}",
        table.len()
    );
    table
}

/// The names `src/metrics.rs` defines (`pub const X: &str = "matchchat_...";`).
fn defined() -> BTreeSet<String> {
    METRICS_RS
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const") && l.contains("&str"))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|n| n.starts_with("matchchat_"))
        .map(str::to_owned)
        .collect()
}

/// The sample names of a scrape, a histogram's series counted as the histogram.
fn scraped(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .flat_map(|l| metric_names(l.split([' ', '{']).next().unwrap_or("")))
        .collect()
}

#[test]
fn the_dashboard_is_an_importable_grafana_dashboard() {
    let d = dashboard();
    assert!(d["title"].is_string() && d["uid"].is_string());
    assert!(d["schemaVersion"].as_u64().expect("schemaVersion") >= 36);
    // One Prometheus datasource input, asked for at import and used by every query.
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert_eq!(inputs.len(), 1, "{inputs:?}");
    assert_eq!(inputs[0]["name"], "DS_PROMETHEUS");
    assert_eq!(inputs[0]["pluginId"], "prometheus");
    let datasource = json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});

    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() >= 20, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels {
        let id = p["id"].as_u64().expect("a numeric panel id");
        assert!(ids.insert(id), "panel id {id} used twice");
        let title = p["title"].as_str().expect("a title");
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        });
        assert!(w >= 1 && h >= 1 && x + w <= 24, "{title}: gridPos {g}");
        // No two panels on one grid cell.
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(
            ["timeseries", "stat"].contains(&p["type"].as_str().unwrap_or("")),
            "{title}: type {}",
            p["type"]
        );
        assert_eq!(p["datasource"], datasource, "{title}");
        assert!(
            p["fieldConfig"]["defaults"]["unit"].is_string(),
            "{title}: a unit"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}");
            assert_eq!(t["datasource"], datasource, "{title}");
            assert!(!metric_names(expr).is_empty(), "{title}: {expr}");
            // Every node or the ones picked: the `instance` variable filters every selector.
            assert_eq!(
                expr.matches("matchchat_").count(),
                expr.matches(r#"{instance=~"$instance"}"#).count(),
                "{title}: a selector without the instance filter: {expr}"
            );
            // Rates over Grafana's own interval, never a fixed window shorter than 4 scrapes.
            if expr.contains("rate(") {
                assert!(
                    expr.contains("[$__rate_interval]"),
                    "{title}: a rate not over [$__rate_interval]: {expr}"
                );
            }
            // A legend names only labels the query keeps.
            let legend = t["legendFormat"].as_str().unwrap_or("");
            let kept = grouping_labels(expr);
            for part in legend.split("{{").skip(1) {
                let label = part.split("}}").next().unwrap_or("").trim();
                assert!(
                    kept.contains(label),
                    "{title}: legend {{{{{label}}}}} but the query keeps only {kept:?}: {expr}"
                );
            }
        }
    }
    // The instance variable the queries use.
    let vars = d["templating"]["list"].as_array().expect("templating");
    let instance = vars
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an instance variable");
    assert_eq!(instance["includeAll"], true);
    assert_eq!(instance["allValue"], ".*");
}

#[test]
fn every_metric_of_the_dashboard_is_defined_and_documented_and_every_metric_has_a_panel() {
    let used = dashboard_metrics();
    let docs = documented();
    let defined = defined();
    assert!(defined.len() >= 19, "{defined:?}");
    for name in &used {
        assert!(
            defined.contains(name),
            "{name}: the dashboard queries it but src/metrics.rs does not define it"
        );
        assert!(
            docs.contains_key(name),
            "{name}: the dashboard queries it but docs/host-app.md's metrics table does not list it"
        );
    }
    for name in &defined {
        assert!(
            used.contains(name),
            "{name}: defined in src/metrics.rs but no panel of the dashboard shows it"
        );
    }
    // Histograms are queried as histograms (buckets, sum, count), the others are not.
    let d = dashboard();
    for p in query_panels(&d) {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for name in metric_names(expr) {
                let Some((kind, _)) = docs.get(&name) else {
                    continue;
                };
                let as_histogram = [
                    format!("{name}_bucket"),
                    format!("{name}_sum"),
                    format!("{name}_count"),
                ]
                .iter()
                .any(|s| expr.contains(s.as_str()));
                assert_eq!(
                    kind == "histogram",
                    as_histogram,
                    "{}: {name} is a {kind}: {expr}",
                    p["title"]
                );
                // Grouped only by documented labels (or le, instance, which every series has).
                for label in grouping_labels(expr) {
                    if label == "instance" || (label == "le" && kind == "histogram") {
                        continue;
                    }
                    let labelled = metric_names(expr)
                        .iter()
                        .any(|n| docs.get(n).is_some_and(|(_, l)| l.contains(&label)));
                    assert!(
                        labelled,
                        "{}: by ({label}) but docs/host-app.md gives no such label: {expr}",
                        p["title"]
                    );
                }
            }
        }
    }
}

/// A webhook receiver on 127.0.0.1 that answers every request `204` (HTTP/1.1, one request
/// per connection). Returns its URL; it runs until the test's runtime ends.
async fn webhook_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then as much body as Content-Length says.
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if request.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    url
}

/// One node on SQLite with webhooks to a local receiver: a room, two users, a message, a seen,
/// a send over the rate limit and a message to a user who is offline; then every metric of
/// the dashboard is in the scrape but those of [`ONLY_AFTER`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_every_metric_of_the_dashboard_after_a_little_traffic() {
    let db = Database::new(Db::Sqlite);
    let url = webhook_receiver().await;
    let env = [
        // One send allowed at once: the second is refused as rate_limited.
        ("CHAT_RATE_PER_SEC", "1"),
        ("CHAT_RATE_BURST", "1"),
        ("CHAT_WEBHOOK_URL", url.as_str()),
        (
            "CHAT_WEBHOOK_SECRET",
            "dashboard-webhook-secret-0123456789abcdef",
        ),
        // At commit, for a recipient with no connection.
        ("CHAT_NOTIFY_AFTER_SECS", "0"),
    ];
    let server = Server::start_with(&db, &env);
    let room = server.room("alice", "bob");
    let (mut alice, _) = server.connect("alice").await;
    let (mut bob, _) = server.connect("bob").await;
    alice.send_message(&room, "m1", "hello").await;
    let seq = bob.recv_type("message").await["message"]["seq"].clone();
    assert!(seq.is_u64(), "{seq}");
    assert_eq!(alice.recv_type("message").await["message"]["seq"], seq);
    bob.send(json!({"type": "seen", "room_id": room, "up_to_seq": seq}))
        .await;
    assert_eq!(alice.recv_type("seen").await["reader_id"], "bob");
    alice.send_message(&room, "m2", "again").await;
    assert_eq!(alice.recv_type("error").await["code"], "rate_limited");
    // Carol never connects: a webhook for her.
    let carol = server.room("bob", "carol");
    bob.send_message(&carol, "c1", "are you there?").await;
    assert_eq!(
        bob.recv_type("message").await["message"]["body"],
        "are you there?"
    );

    let only_after: BTreeMap<&str, &str> = ONLY_AFTER.iter().copied().collect();
    let expected: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|n| !only_after.contains_key(n.as_str()))
        .collect();
    // Webhooks are sent from threads of their own, a little after the commit: poll (bounded).
    let deadline = std::time::Instant::now() + WAIT;
    let (text, served) = loop {
        let (status, text) = server.http().get_text("/metrics", Some(SERVICE_KEY));
        assert_eq!(status, 200, "{text}");
        let served = scraped(&text);
        let missing: Vec<&String> = expected.iter().filter(|n| !served.contains(*n)).collect();
        if missing.is_empty() {
            break (text, served);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard queries {missing:?} but the server does not serve them:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    // The exemptions are all still needed: none of them is in the scrape.
    for (name, reason) in ONLY_AFTER {
        eprintln!("{name}: not checked in this scrape; it needs {reason}");
        assert!(
            !served.contains(*name),
            "{name} is served now: take it out of ONLY_AFTER"
        );
    }
    // The labels the panels group by are there with the values the legends show.
    for sample in [
        r#"matchchat_frames_in_total{type="send"}"#,
        r#"matchchat_frames_in_total{type="seen"}"#,
        r#"matchchat_frames_out_total{type="message"}"#,
        r#"matchchat_rate_limited_total{request="send"}"#,
        r#"matchchat_db_pool_connections{state="in_use"}"#,
        r#"matchchat_db_pool_connections{state="idle"}"#,
        r#"matchchat_webhook_attempts_total{outcome="delivered"}"#,
    ] {
        assert!(text.contains(sample), "no {sample} in:\n{text}");
    }
}

/// Two nodes on one PostgreSQL database with `CHAT_BUS=postgres`: a message from a member on
/// one node to a member on the other brings the bus metrics the dashboard charts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_the_bus_metrics_of_the_dashboard() {
    let db = Database::new(Db::Postgres);
    let a = Server::start_with(&db, &[("CHAT_BUS", "postgres")]);
    let b = Server::start_with(&db, &[("CHAT_BUS", "postgres")]);
    let room = a.room("alice", "bob");
    let (mut alice, _) = a.connect("alice").await;
    let (mut bob, _) = b.connect("bob").await;
    alice.send_message(&room, "m1", "across").await;
    assert_eq!(bob.recv_type("message").await["message"]["body"], "across");

    let (status, text) = b.http().get_text("/metrics", Some(SERVICE_KEY));
    assert_eq!(status, 200, "{text}");
    let served = scraped(&text);
    for name in [
        "matchchat_bus_notices_received_total",
        "matchchat_bus_lag_seconds",
    ] {
        assert!(
            dashboard_metrics().contains(name),
            "the dashboard charts {name}"
        );
        assert!(
            served.contains(name),
            "node b does not serve {name}:\n{text}"
        );
    }
}
