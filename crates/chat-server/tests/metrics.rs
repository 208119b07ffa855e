//! `GET /metrics` (Prometheus text format): behind the service key on the public port, or
//! open on `CHAT_METRICS_BIND`; counters and histograms that move with the traffic a test
//! makes. Against the real binary, over real HTTP and WebSockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Database, Db, Http, SERVICE_KEY, Server};

/// The value of the sample line `name` (with its labels exactly as written), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_port_serves_metrics_behind_the_service_key_and_they_follow_the_traffic() {
    let db = Database::new(Db::Sqlite);
    let server = Server::start(&db);
    let http = server.http();
    assert_eq!(http.get_text("/metrics", None).0, 401);
    let room = server.room("alice", "bob");
    let (mut alice, _) = server.connect("alice").await;
    let (mut bob, _) = server.connect("bob").await;
    for i in 0..3 {
        alice.send_message(&room, &format!("c{i}"), "hi").await;
        bob.recv_type("message").await;
    }
    alice.send_message(&room, "bad", "").await;
    assert_eq!(alice.recv_type("error").await["code"], "body_empty");

    let (status, text) = http.get_text("/metrics", Some(SERVICE_KEY));
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        sample(&text, "matchchat_messages_committed_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"matchchat_frames_in_total{type="send"}"#),
        Some(4.0)
    );
    assert_eq!(sample(&text, "matchchat_connections"), Some(2.0));
    // Each message went to both members' connections; plus one error frame.
    assert_eq!(
        sample(&text, r#"matchchat_frames_out_total{type="message"}"#),
        Some(6.0)
    );
    assert_eq!(
        sample(&text, r#"matchchat_frames_out_total{type="error"}"#),
        Some(1.0)
    );
    // Real histograms (buckets), not summaries.
    assert!(
        text.contains(r#"matchchat_commit_seconds_bucket{le="0.005"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"matchchat_batch_size_bucket{le="1"}"#),
        "{text}"
    );
    assert!(
        text.contains("matchchat_commit_to_mailbox_seconds_count"),
        "{text}"
    );
    assert!(sample(&text, "matchchat_db_pool_max_connections").is_some_and(|n| n >= 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_metrics_listener_serves_them_without_a_key() {
    let db = Database::new(Db::Sqlite);
    let server = Server::start_with(&db, &[("CHAT_METRICS_BIND", "127.0.0.1:0")]);
    let url = server.metrics_url();
    let base = url.trim_end_matches("/metrics").to_owned();
    let (status, text) = Http { base }.get_text("/metrics", None);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("matchchat_db_pool_max_connections"), "{text}");
    // The public port no longer serves them, key or not.
    assert_eq!(server.http().get_text("/metrics", Some(SERVICE_KEY)).0, 404);
}

/// `CHAT_LOG_FORMAT=json` writes one JSON object per line; plain logs written to a pipe carry
/// no colour escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_on_request_and_never_coloured_in_a_pipe() {
    let db = Database::new(Db::Sqlite);
    let json = Server::start_with(&db, &[("CHAT_LOG_FORMAT", "json"), ("RUST_LOG", "info")]);
    json.room("alice", "bob");
    json.wait_for_log("room opened");
    let lines = json.log_lines();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value["level"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("listening")), "{lines:?}");
    drop(json);
    let plain = Server::start_with(&db, &[("RUST_LOG", "info")]);
    plain.room("alice", "carol");
    plain.wait_for_log("room opened");
    let lines = plain.log_lines();
    assert!(lines.iter().any(|l| l.contains("listening")), "{lines:?}");
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "colour escapes: {lines:?}"
    );
    drop(plain);
}
