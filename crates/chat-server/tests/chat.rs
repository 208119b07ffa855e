//! End-to-end: the real server binary, a real database (SQLite file and PostgreSQL), real
//! WebSockets. Each test runs against both backends (`sqlite` and `postgres` in the names).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, Database, Db, SERVICE_KEY, Server};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

both_backends!(
    two_users_chat_and_every_tab_gets_each_message,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start(&db);
        let room = server.room("alice", "bob");
        let (mut alice, ready) = server.connect("alice").await;
        assert_eq!(ready["user_id"], "alice");
        assert_eq!(ready["rooms"][0]["room_id"], room.as_str());
        assert_eq!(ready["rooms"][0]["members"], json!(["alice", "bob"]));
        let (mut alice_tab2, _) = server.connect("alice").await;
        let (mut bob, _) = server.connect("bob").await;

        alice.send_message(&room, "a1", "hi bob 👋").await;
        for client in [&mut alice, &mut alice_tab2, &mut bob] {
            let frame = client.recv_type("message").await;
            assert_eq!(frame["room_id"], room.as_str());
            let m = &frame["message"];
            assert_eq!(m["seq"], 1);
            assert_eq!(m["sender_id"], "alice");
            assert_eq!(m["body"], "hi bob 👋");
            assert_eq!(m["client_msg_id"], "a1");
            assert!(m["seen_at"].is_null());
            assert!(
                m["sent_at"]
                    .as_str()
                    .is_some_and(|t| t.ends_with('Z') && t.len() >= 24),
                "{m}"
            );
        }
        bob.send_message(&room, "b1", "hey alice").await;
        for client in [&mut alice, &mut alice_tab2, &mut bob] {
            let frame = client.recv_type("message").await;
            assert_eq!(frame["message"]["seq"], 2);
            assert_eq!(frame["message"]["sender_id"], "bob");
        }
    }
);

both_backends!(
    a_delivered_message_survives_a_crash,
    |db_kind: Db| async move {
        // Stored first, then delivered: once any connection has seen the message, killing the
        // server (SIGKILL, no shutdown) cannot lose it.
        let db = Database::new(db_kind);
        let mut server = Server::start(&db);
        let room = server.room("alice", "bob");
        let (mut bob, _) = server.connect("bob").await;
        let (mut alice, _) = server.connect("alice").await;
        alice.send_message(&room, "c1", "durable?").await;
        let delivered = bob.recv_type("message").await;
        if db_kind == Db::Postgres {
            // Looked up from outside the server the moment bob has it: already committed.
            assert_eq!(
                db.psql("SELECT count(*) FROM messages WHERE client_msg_id = 'c1'"),
                "1"
            );
        }
        server.kill();
        server.restart();
        let (mut alice, _) = server.connect("alice").await;
        let history = alice
            .history(json!({"type": "history", "room_id": room}))
            .await;
        assert_eq!(history.len(), 1);
        assert_eq!(history[0], delivered["message"]);
    }
);

both_backends!(
    seen_receipts_reach_the_sender_and_are_stored,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start(&db);
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        let (mut bob, _) = server.connect("bob").await;
        for i in 1..=3 {
            alice.send_message(&room, &format!("a{i}"), "msg").await;
            bob.recv_type("message").await;
        }
        bob.send_message(&room, "b1", "mine").await;
        alice
            .recv_until(|f| f["type"] == "message" && f["message"]["seq"] == 4)
            .await;
        bob.recv_until(|f| f["type"] == "message" && f["message"]["seq"] == 4)
            .await;

        // Alice marking "seen" covers only bob's messages: nothing of hers changes.
        bob.send(json!({"type": "seen", "room_id": room, "up_to_seq": 2}))
            .await;
        for client in [&mut alice, &mut bob] {
            let seen = client.recv_type("seen").await;
            assert_eq!(seen["reader_id"], "bob");
            assert_eq!(seen["up_to_seq"], 2);
            assert!(seen["seen_at"].as_str().is_some());
        }
        let history = alice
            .history(json!({"type": "history", "room_id": room}))
            .await;
        let seen_at: Vec<bool> = history.iter().map(|m| !m["seen_at"].is_null()).collect();
        assert_eq!(seen_at, vec![true, true, false, false]);

        // A watermark that marks nothing new is not broadcast; one beyond the end is clamped.
        bob.send(json!({"type": "seen", "room_id": room, "up_to_seq": 1}))
            .await;
        bob.send(json!({"type": "seen", "room_id": room, "up_to_seq": 999}))
            .await;
        let seen = alice.recv_type("seen").await;
        assert_eq!(
            seen["up_to_seq"], 4,
            "clamped to the last seq, and the backwards watermark sent nothing"
        );
        let history = bob
            .history(json!({"type": "history", "room_id": room}))
            .await;
        assert!(history[2]["seen_at"].is_string());
        assert!(
            history[3]["seen_at"].is_null(),
            "bob's own message is not marked by bob"
        );
        let first_seen = history[0]["seen_at"].clone();
        // seen_at never moves.
        bob.send(json!({"type": "seen", "room_id": room, "up_to_seq": 4}))
            .await;
        let again = bob
            .history(json!({"type": "history", "room_id": room}))
            .await;
        assert_eq!(again[0]["seen_at"], first_seen);
        // Unread counts follow: alice has bob's one unseen message, bob none.
        let (_, ready) = server.connect("alice").await;
        assert_eq!(ready["rooms"][0]["unread"], 1);
        assert_eq!(ready["rooms"][0]["last_seq"], 4);
        let (_, ready) = server.connect("bob").await;
        assert_eq!(ready["rooms"][0]["unread"], 0);
    }
);

both_backends!(
    history_is_a_300_message_window_with_cursors,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start_with(
            &db,
            &[
                ("CHAT_RATE_PER_SEC", "100000"),
                ("CHAT_RATE_BURST", "100000"),
            ],
        );
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        for i in 1..=310 {
            alice
                .send_message(&room, &format!("m{i}"), &format!("message {i}"))
                .await;
        }
        alice
            .recv_until(|f| f["type"] == "message" && f["message"]["seq"] == 310)
            .await;

        let latest = alice
            .history(json!({"type": "history", "room_id": room}))
            .await;
        assert_eq!(
            seqs(&latest),
            (11..=310).collect::<Vec<_>>(),
            "latest 300, oldest first"
        );
        let before = alice
            .history(json!({"type": "history", "room_id": room, "before_seq": 11}))
            .await;
        assert_eq!(seqs(&before), (1..=10).collect::<Vec<_>>());
        let before = alice
            .history(json!({"type": "history", "room_id": room, "before_seq": 200, "limit": 5}))
            .await;
        assert_eq!(seqs(&before), (195..=199).collect::<Vec<_>>());
        let after = alice
            .history(json!({"type": "history", "room_id": room, "after_seq": 0}))
            .await;
        assert_eq!(
            seqs(&after),
            (1..=300).collect::<Vec<_>>(),
            "catch-up pages hold at most 300"
        );
        let after = alice
            .history(json!({"type": "history", "room_id": room, "after_seq": 300}))
            .await;
        assert_eq!(seqs(&after), (301..=310).collect::<Vec<_>>());
        let clamped = alice
            .history(json!({"type": "history", "room_id": room, "after_seq": 0, "limit": 100000}))
            .await;
        assert_eq!(clamped.len(), 300);
    }
);

both_backends!(
    a_retried_send_is_stored_and_delivered_once,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start(&db);
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        let (mut alice_tab2, _) = server.connect("alice").await;
        let (mut bob, _) = server.connect("bob").await;
        alice.send_message(&room, "same-id", "once").await;
        let first = alice.recv_type("message").await;
        alice_tab2.recv_type("message").await;
        bob.recv_type("message").await;

        alice.send_message(&room, "same-id", "once").await;
        let retry = alice.recv_type("message").await;
        assert_eq!(retry, first, "the retry gets the stored message back");
        // Nobody else hears of the retry: their next message frame is the next real message.
        alice.send_message(&room, "next", "after").await;
        for client in [&mut bob, &mut alice_tab2] {
            let next = client.recv_type("message").await;
            assert_eq!(next["message"]["seq"], 2, "{next}");
            assert_eq!(next["message"]["client_msg_id"], "next");
        }
        let history = bob
            .history(json!({"type": "history", "room_id": room}))
            .await;
        assert_eq!(seqs(&history), vec![1, 2], "one row per client_msg_id");
    }
);

both_backends!(
    every_error_code_leaves_the_connection_open,
    |db: Db| async move {
        let db = Database::new(db);
        let server =
            Server::start_with(&db, &[("CHAT_RATE_PER_SEC", "1"), ("CHAT_RATE_BURST", "5")]);
        let room = server.room("alice", "bob");
        let other_room = server.room("bob", "carol");
        let (mut alice, _) = server.connect("alice").await;

        async fn expect_error(
            client: &mut Client,
            frame: Value,
            code: &str,
            reference: Value,
            room: &str,
        ) {
            client.send(frame.clone()).await;
            let error = client.recv_type("error").await;
            assert_eq!(error["code"], code, "{frame} -> {error}");
            assert_eq!(error["ref"], reference, "{frame} -> {error}");
            assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
            client.assert_alive(room).await;
        }

        let send = |id: &str, body: Value| json!({"type": "send", "room_id": room, "client_msg_id": id, "body": body});
        let unknown = "00000000-0000-0000-0000-000000000000";
        // (frame, expected code, expected ref); after each, the connection must still serve.
        let cases: Vec<(Value, &str, Value)> = vec![
            (send("e1", json!("")), "body_empty", json!("e1")),
            (send("e2", json!("   \n ")), "body_empty", json!("e2")),
            (
                send("e3", json!("x".repeat(161))),
                "body_too_long",
                json!("e3"),
            ),
            (
                send("e4", json!("bad\rreturn")),
                "body_invalid",
                json!("e4"),
            ),
            (send("e5", json!(5)), "invalid_frame", json!("e5")),
            (
                json!({"type": "send", "room_id": room, "body": "no id"}),
                "invalid_frame",
                Value::Null,
            ),
            (
                json!({"type": "send", "room_id": room, "client_msg_id": "", "body": "x"}),
                "invalid_frame",
                json!(""),
            ),
            (json!({"type": "dance"}), "invalid_frame", Value::Null),
            (
                json!({"type": "history", "room_id": room, "before_seq": 5, "after_seq": 1}),
                "invalid_frame",
                Value::Null,
            ),
            (
                json!({"type": "seen", "room_id": room, "up_to_seq": 0}),
                "invalid_frame",
                Value::Null,
            ),
            (
                json!({"type": "auth", "token": "again"}),
                "invalid_frame",
                Value::Null,
            ),
            (
                json!({"type": "send", "room_id": unknown, "client_msg_id": "u1", "body": "hi"}),
                "unknown_room",
                json!("u1"),
            ),
            (
                json!({"type": "history", "room_id": unknown}),
                "unknown_room",
                Value::Null,
            ),
            (
                json!({"type": "seen", "room_id": unknown, "up_to_seq": 1}),
                "unknown_room",
                Value::Null,
            ),
            // Not a member: alice can neither send to, read nor mark seen in bob and carol's room.
            (
                json!({"type": "send", "room_id": other_room, "client_msg_id": "n1", "body": "hi"}),
                "not_a_member",
                json!("n1"),
            ),
            (
                json!({"type": "history", "room_id": other_room}),
                "not_a_member",
                Value::Null,
            ),
            (
                json!({"type": "seen", "room_id": other_room, "up_to_seq": 1}),
                "not_a_member",
                Value::Null,
            ),
        ];
        for (frame, code, reference) in cases {
            expect_error(&mut alice, frame, code, reference, &room).await;
        }
        alice.send_raw(WsMessage::text("{not json")).await;
        assert_eq!(alice.recv_type("error").await["code"], "invalid_frame");
        alice.send_raw(WsMessage::binary(vec![1u8, 2, 3])).await;
        assert_eq!(alice.recv_type("error").await["code"], "invalid_frame");
        alice.assert_alive(&room).await;
        // Closed room (a second room, so the first stays usable).
        let closed_room = server.room("alice", "dave");
        assert_eq!(
            alice.recv_type("room_opened").await["room"]["room_id"],
            closed_room.as_str()
        );
        let (status, _) = server
            .http()
            .delete(&format!("/api/rooms/{closed_room}"), Some(SERVICE_KEY));
        assert_eq!(status, 204);
        assert_eq!(
            alice.recv_type("room_closed").await["room_id"],
            closed_room.as_str()
        );
        expect_error(&mut alice, json!({"type": "send", "room_id": closed_room, "client_msg_id": "z1", "body": "hello?"}), "room_closed", json!("z1"), &room).await;

        // Rate limit: a burst of 5 (three sends above used theirs), then refused.
        let mut codes = Vec::new();
        for i in 0..4 {
            alice.send_message(&room, &format!("r{i}"), "fast").await;
        }
        for _ in 0..4 {
            let frame = alice
                .recv_until(|f| f["type"] == "message" || f["type"] == "error")
                .await;
            codes.push(if frame["type"] == "error" {
                frame["code"].as_str().unwrap_or("").to_owned()
            } else {
                "ok".into()
            });
        }
        assert!(
            codes.iter().filter(|c| *c == "ok").count() >= 1,
            "{codes:?}"
        );
        assert!(codes.iter().any(|c| c == "rate_limited"), "{codes:?}");
        alice.assert_alive(&room).await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_failing_database_is_internal_and_the_connection_survives() {
    let db = Database::new(Db::Postgres);
    let server = Server::start(&db);
    let room = server.room("alice", "bob");
    let (mut alice, _) = server.connect("alice").await;
    db.psql("ALTER TABLE messages ADD CONSTRAINT refuse_everything CHECK (false) NOT VALID");
    alice.send_message(&room, "x1", "will fail").await;
    let error = alice.recv_type("error").await;
    assert_eq!(error["code"], "internal");
    assert_eq!(error["ref"], "x1");
    db.psql("ALTER TABLE messages DROP CONSTRAINT refuse_everything");
    // The same client_msg_id retried after the failure stores the message once.
    alice.send_message(&room, "x1", "will fail").await;
    let frame = alice.recv_type("message").await;
    assert_eq!(frame["message"]["seq"], 1);
}

both_backends!(
    tokens_and_origins_are_checked_at_the_door,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start_with(&db, &[("CHAT_ALLOWED_ORIGINS", "https://app.example")]);
        let room = server.room("alice", "bob");

        // Forged token.
        let mut client = Client::connect(&server.ws_url(), None).await.unwrap();
        client.send(json!({"type": "auth", "token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.c2lnbmF0dXJl"})).await;
        assert_eq!(client.recv().await["code"], "unauthorized");
        assert_eq!(client.closed().await.code, 1008);

        // Expired token, signed with the real secret.
        let expired = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "alice", "exp": 1_000_000_000}),
            &jsonwebtoken::EncodingKey::from_secret(common::JWT_SECRET.as_bytes()),
        )
        .unwrap();
        let mut client = Client::connect(&server.ws_url(), None).await.unwrap();
        client.send(json!({"type": "auth", "token": expired})).await;
        assert_eq!(client.recv().await["code"], "unauthorized");
        let closed = client.closed().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (1008, "token_expired")
        );

        // Anything before auth.
        let mut client = Client::connect(&server.ws_url(), None).await.unwrap();
        client
            .send(json!({"type": "history", "room_id": room}))
            .await;
        assert_eq!(client.recv().await["code"], "unauthorized");
        assert_eq!(client.closed().await.code, 1008);

        // A token that expires while connected closes the connection at its exp.
        let (status, body) = server.http().post(
            "/api/tokens",
            json!({"user_id": "alice", "ttl_seconds": 1}),
            Some(SERVICE_KEY),
        );
        assert_eq!(status, 200);
        let mut client = Client::connect(&server.ws_url(), None).await.unwrap();
        client
            .send(json!({"type": "auth", "token": body["token"]}))
            .await;
        assert_eq!(client.recv().await["type"], "ready");
        let closed = client.closed().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (1008, "token_expired")
        );

        // Origins: listed, same-origin and absent are allowed; another site is refused.
        assert!(
            Client::connect(&server.ws_url(), Some("https://app.example"))
                .await
                .is_ok()
        );
        assert!(
            Client::connect(&server.ws_url(), Some(&format!("http://{}", server.addr)))
                .await
                .is_ok()
        );
        match Client::connect(&server.ws_url(), Some("https://evil.example")).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403)
            }
            other => panic!(
                "a foreign origin must be refused with 403, got {:?}",
                other.map(|_| ())
            ),
        }
    }
);

both_backends!(limits_a_hostile_client_meets, |db: Db| async move {
    let db = Database::new(db);
    let server = Server::start_with(
        &db,
        &[
            ("CHAT_AUTH_TIMEOUT_SECS", "1"),
            ("CHAT_MAX_CONNECTIONS_PER_USER", "2"),
        ],
    );
    let room = server.room("alice", "bob");

    // No auth frame in time.
    let mut client = Client::connect(&server.ws_url(), None).await.unwrap();
    assert_eq!(client.recv().await["code"], "unauthorized");
    let closed = client.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "auth_timeout")
    );

    // A frame over 8 KiB.
    let (mut alice, _) = server.connect("alice").await;
    alice.send_message(&room, "big", &"x".repeat(9000)).await;
    assert_eq!(alice.closed().await.code, 1009);

    // A cap on connections per user.
    let (_a1, _) = server.connect("alice").await;
    let (_a2, _) = server.connect("alice").await;
    let mut third = Client::connect(&server.ws_url(), None).await.unwrap();
    third
        .send(json!({"type": "auth", "token": server.token("alice")}))
        .await;
    let error = third.recv().await;
    assert_eq!(error["code"], "rate_limited", "{error}");
    assert_eq!(third.closed().await.code, 1013);
});

both_backends!(rooms_open_and_close_live, |db: Db| async move {
    let db = Database::new(db);
    let server = Server::start(&db);
    let first = server.room("alice", "bob");
    assert_eq!(
        server.room("bob", "alice"),
        first,
        "idempotent, either order"
    );
    let (mut alice, _) = server.connect("alice").await;
    let (mut bob, _) = server.connect("bob").await;

    let carol_room = server.room("carol", "alice");
    let opened = alice.recv_type("room_opened").await;
    assert_eq!(opened["room"]["room_id"], carol_room.as_str());
    assert_eq!(opened["room"]["members"], json!(["alice", "carol"]));
    assert_eq!(opened["room"]["closed"], false);

    alice.send_message(&first, "m1", "before unmatch").await;
    bob.recv_type("message").await;
    let (status, _) = server
        .http()
        .delete(&format!("/api/rooms/{first}"), Some(SERVICE_KEY));
    assert_eq!(status, 204);
    assert_eq!(
        bob.recv_type("room_closed").await["room_id"],
        first.as_str()
    );
    bob.send_message(&first, "m2", "after").await;
    assert_eq!(bob.recv_type("error").await["code"], "room_closed");
    // History and seen still work on a closed room.
    assert_eq!(
        bob.history(json!({"type": "history", "room_id": first}))
            .await
            .len(),
        1
    );
    bob.send(json!({"type": "seen", "room_id": first, "up_to_seq": 1}))
        .await;
    assert_eq!(bob.recv_type("seen").await["up_to_seq"], 1);
    let (_, ready) = server.connect("bob").await;
    assert_eq!(ready["rooms"][0]["closed"], true);

    // The pair matches again: a new room; the closed one keeps its history.
    let second = server.room("alice", "bob");
    assert_ne!(second, first);
    assert_eq!(
        bob.recv_type("room_opened").await["room"]["room_id"],
        second.as_str()
    );
    let (status, body) = server
        .http()
        .delete("/api/rooms/no-such-room", Some(SERVICE_KEY));
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_room");
});

both_backends!(
    service_api_refuses_bad_calls_with_clear_errors,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start(&db);
        let http = server.http();
        assert_eq!(http.get("/healthz").0, 200);
        assert_eq!(http.get("/readyz").0, 200);
        let (status, body) = http.post("/api/rooms", json!({"members": ["a", "b"]}), None);
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized"))
        );
        let (status, _) = http.post("/api/rooms", json!({"members": ["a", "b"]}), Some("wrong"));
        assert_eq!(status, 401);
        let (status, body) = http.post_raw("/api/rooms", "{nope", Some(SERVICE_KEY));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_json"))
        );
        for members in [json!(["a"]), json!(["a", "a"]), json!(["a", "b", "c"])] {
            let (status, body) =
                http.post("/api/rooms", json!({"members": members}), Some(SERVICE_KEY));
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (422, Some("invalid_members")),
                "{members}"
            );
        }
        let (status, body) = http.post(
            "/api/rooms",
            json!({"members": ["ok", "not ok"]}),
            Some(SERVICE_KEY),
        );
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("invalid_user_id"))
        );
        let (status, body) = http.post(
            "/api/tokens",
            json!({"user_id": "alice", "ttl_seconds": 0}),
            Some(SERVICE_KEY),
        );
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("invalid_ttl"))
        );
        let (status, body) = http.post(
            "/api/tokens",
            json!({"user_id": "alice"}),
            Some(SERVICE_KEY),
        );
        assert_eq!(status, 200);
        assert!(
            body["expires_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        let (status, _) = http.delete("/api/rooms/whatever", None);
        assert_eq!(status, 401);
    }
);

both_backends!(
    sigterm_closes_sockets_with_1001_and_keeps_every_write,
    |db: Db| async move {
        let db = Database::new(db);
        let mut server = Server::start(&db);
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        let (mut bob, _) = server.connect("bob").await;
        alice.send_message(&room, "s1", "before shutdown").await;
        bob.recv_type("message").await;
        let status = server.terminate().expect("server exits after SIGTERM");
        assert!(status.success(), "{status:?}");
        assert_eq!(alice.closed().await.code, 1001);
        assert_eq!(bob.closed().await.code, 1001);
        server.restart();
        let (mut alice, _) = server.connect("alice").await;
        assert_eq!(
            alice
                .history(json!({"type": "history", "room_id": room}))
                .await
                .len(),
            1
        );
    }
);

both_backends!(
    a_silent_client_is_closed_after_the_idle_timeout,
    |db: Db| async move {
        // A raw socket that completes the handshake and then never answers pings.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let db = Database::new(db);
        let server = Server::start_with(
            &db,
            &[("CHAT_PING_SECS", "1"), ("CHAT_IDLE_TIMEOUT_SECS", "2")],
        );
        let token = server.token("alice");
        let mut socket = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
        let handshake = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.addr
        );
        socket.write_all(handshake.as_bytes()).await.unwrap();
        // One masked text frame: the auth.
        let auth = json!({"type": "auth", "token": token})
            .to_string()
            .into_bytes();
        let mut frame = vec![
            0x81u8,
            0x80 | 126,
            (auth.len() >> 8) as u8,
            auth.len() as u8,
            0,
            0,
            0,
            0,
        ];
        frame.extend_from_slice(&auth);
        socket.write_all(&frame).await.unwrap();
        // Read everything until the server hangs up; it must end with a close frame, code 1001.
        let mut received = Vec::new();
        let read = tokio::time::timeout(common::WAIT, socket.read_to_end(&mut received)).await;
        assert!(read.is_ok(), "the server closes a silent connection");
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        assert!(text.contains("\"type\":\"ready\""), "authenticated first");
        let close = received
            .windows(4)
            .rposition(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xE9);
        assert!(
            close.is_some(),
            "a close frame with code 1001 (idle_timeout) was sent"
        );
        assert!(received.contains(&0x89), "pings were sent before giving up");
    }
);

both_backends!(
    one_connections_sends_commit_in_the_order_they_were_sent,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start_with(
            &db,
            &[
                ("CHAT_RATE_PER_SEC", "100000"),
                ("CHAT_RATE_BURST", "100000"),
            ],
        );
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        let (mut bob, _) = server.connect("bob").await;
        // Fired back to back, without waiting for any copy: up to 64 are in flight at once.
        for i in 0..200 {
            alice
                .send_message(&room, &format!("o{i:03}"), &format!("n{i}"))
                .await;
        }
        for i in 0..200u64 {
            let frame = bob.recv_type("message").await;
            assert_eq!(frame["message"]["seq"], i + 1);
            assert_eq!(
                frame["message"]["client_msg_id"],
                format!("o{i:03}"),
                "seq order is send order"
            );
        }
    }
);
