//! Privacy-law requests (issue 12, section 3): erasure (`DELETE /api/users/{id}`), the export's
//! marks, and retention (`CHAT_RETENTION_DAYS`). Over real HTTP and WebSockets against the real
//! binary, on both backends, and erasure across two nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Database, Db, SERVICE_KEY, Server};
use serde_json::{Value, json};

fn erase(server: &Server, user: &str) -> Value {
    let (status, body) = server
        .http()
        .delete(&format!("/api/users/{user}"), Some(SERVICE_KEY));
    assert_eq!(status, 200, "{body}");
    body
}

both_backends!(
    erasure_tombstones_closes_and_disconnects,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start_with(
            &db,
            &[("CHAT_RATE_PER_SEC", "1000"), ("CHAT_RATE_BURST", "1000")],
        );
        let room = server.room("alice", "bob");
        let other = server.room("alice", "carol");
        let (mut alice, _) = server.connect("alice").await;
        let (mut alice_tab, _) = server.connect("alice").await;
        let (mut bob, _) = server.connect("bob").await;
        for i in 0..3 {
            alice
                .send_message(&room, &format!("a{i}"), "from alice")
                .await;
        }
        bob.send_message(&room, "b0", "from bob").await;
        bob.recv_until(|f| f["type"] == "message" && f["message"]["seq"] == 4)
            .await;

        let counts = erase(&server, "alice");
        assert_eq!(
            counts,
            json!({"user_id": "alice", "messages_erased": 3, "rooms_closed": 2, "webhooks_deleted": 0})
        );
        // Her connections close with 1008 account_deleted; bob hears the room close.
        for client in [&mut alice, &mut alice_tab] {
            let closed = client.closed().await;
            assert_eq!(
                (closed.code, closed.reason.as_str()),
                (1008, "account_deleted")
            );
        }
        let closed = bob.recv_type("room_closed").await;
        assert_eq!(closed["room_id"], room.as_str());
        bob.assert_alive(&room).await;
        // Her words are gone; bob's stay; the seqs stay.
        let (_, page) = server.get_json(&format!("/api/rooms/{room}/messages"));
        let messages = page["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 4);
        for m in messages {
            let hers = m["sender_id"] == "alice";
            assert_eq!(m["body"].is_null(), hers, "{m}");
            assert_eq!(m["deleted_at"].is_string(), hers, "{m}");
        }
        assert_eq!(page["closed"], true);
        // Idempotent, and a user the server never saw is not an error.
        assert_eq!(
            erase(&server, "alice"),
            json!({"user_id": "alice", "messages_erased": 0, "rooms_closed": 0, "webhooks_deleted": 0})
        );
        assert_eq!(
            erase(&server, "nobody"),
            json!({"user_id": "nobody", "messages_erased": 0, "rooms_closed": 0, "webhooks_deleted": 0})
        );
        let (status, body) = server
            .http()
            .delete("/api/users/not%20valid", Some(SERVICE_KEY));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("invalid_user_id"))
        );
        let (status, _) = server.http().delete("/api/users/alice", None);
        assert_eq!(status, 401);
        // Her export now holds tombstones only for what she sent.
        let (_, export) = server.get_json("/api/users/alice/export");
        let rooms = export["rooms"].as_array().unwrap();
        assert_eq!(rooms.len(), 2);
        let r = rooms
            .iter()
            .find(|r| r["room_id"] == room.as_str())
            .unwrap();
        assert!(
            r["messages"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["sender_id"] != "alice" || m["body"].is_null())
        );
        let _ = other;
    }
);

both_backends!(
    the_export_carries_seen_and_delivered_marks,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start(&db);
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        let (mut bob, _) = server.connect("bob").await;
        alice.send_message(&room, "a1", "one").await;
        alice.send_message(&room, "a2", "two").await;
        // Seqs 1 and 2 are alice's before bob writes seq 3.
        bob.recv_until(|f| f["type"] == "message" && f["message"]["seq"] == 2)
            .await;
        bob.send_message(&room, "b3", "three").await;
        alice
            .recv_until(|f| f["type"] == "message" && f["message"]["seq"] == 3)
            .await;
        bob.send(json!({"type": "seen", "room_id": room, "up_to_seq": 1}))
            .await;
        bob.send(json!({"type": "received", "room_id": room, "up_to_seq": 2}))
            .await;
        alice
            .recv_until(|f| f["type"] == "delivered" && f["up_to_seq"] == 2)
            .await;
        let (status, export) = server.get_json("/api/users/bob/export");
        assert_eq!(status, 200);
        let r = &export["rooms"][0];
        assert_eq!(
            (
                r["seen_up_to"].as_u64(),
                r["delivered_up_to"].as_u64(),
                r["peer_seen_up_to"].as_u64(),
                r["peer_delivered_up_to"].as_u64()
            ),
            (Some(1), Some(2), Some(0), Some(0))
        );
        assert!(r["messages"][0]["seen_at"].is_string());
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_erases_old_bodies_in_the_background() {
    let db = Database::new(Db::Postgres);
    let mut server = Server::start(&db);
    let room = server.room("alice", "bob");
    let (mut alice, _) = server.connect("alice").await;
    for i in 0..3 {
        alice.send_message(&room, &format!("a{i}"), "words").await;
    }
    alice
        .recv_until(|f| f["type"] == "message" && f["message"]["seq"] == 3)
        .await;
    drop(alice);
    // Age the first two messages by 40 days, then start with a 30-day retention: the first
    // pass runs at start.
    db.psql(&format!(
        "UPDATE messages SET sent_at = sent_at - 40 * 86400000000::bigint \
         WHERE room_id = '{room}' AND seq <= 2"
    ));
    server.terminate();
    let server = Server::start_with(&db, &[("CHAT_RETENTION_DAYS", "30"), ("RUST_LOG", "info")]);
    server.wait_for_log("retention pass finished");
    let (_, page) = server.get_json(&format!("/api/rooms/{room}/messages"));
    let bodies: Vec<Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].clone())
        .collect();
    assert_eq!(bodies, vec![Value::Null, Value::Null, json!("words")]);
    assert!(page["messages"][0]["deleted_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_closes_connections_on_every_node() {
    let db = Database::new(Db::Postgres);
    let a = Server::start_with(&db, &[("CHAT_BUS", "postgres")]);
    let b = Server::start_with(&db, &[("CHAT_BUS", "postgres")]);
    a.room("alice", "bob");
    let (mut on_b, _) = b.connect("alice").await;
    let (mut on_a, _) = a.connect("alice").await;
    erase(&a, "alice");
    for client in [&mut on_a, &mut on_b] {
        let closed = client.closed().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (1008, "account_deleted")
        );
    }
}

both_backends!(
    erasure_removes_the_users_webhook_deliveries,
    |db: Db| async move {
        let db = Database::new(db);
        // A receiver that refuses connections: the delivery stays pending, retried.
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{closed_port}/hook");
        let server = Server::start_with(
            &db,
            &[
                ("CHAT_WEBHOOK_URL", url.as_str()),
                (
                    "CHAT_WEBHOOK_SECRET",
                    "webhook-secret-0123456789abcdef0123456789",
                ),
                ("CHAT_NOTIFY_AFTER_SECS", "1"),
            ],
        );
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        alice.send_message(&room, "a1", "unseen by bob").await;
        alice.recv_type("message").await;
        // Wait (bounded) until the delivery for bob was attempted once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (_, text) = server.http().get_text("/metrics", Some(SERVICE_KEY));
            if text
                .lines()
                .any(|l| l.starts_with("matchchat_webhook_attempts_total") && !l.ends_with(" 0"))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no webhook attempt: {text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(erase(&server, "bob")["webhooks_deleted"], 1);
        assert_eq!(erase(&server, "bob")["webhooks_deleted"], 0);
    }
);
