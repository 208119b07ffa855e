//! Protocol 1.1, rules 2 to 7 (rule 1, request ids, is `requests.rs`): typing, delivered,
//! unsend, presence, the richer room summary and room list pages. Over real WebSockets
//! against the real binary, on both backends, and across two nodes on one PostgreSQL.
//!
//! Absence ("no frame") is checked with a sentinel the server must send after what it must
//! not have sent, or, where the rule is about time (presence's grace), by waiting a bounded
//! time past the deadline the rule names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, Database, Db, Next, SERVICE_KEY, Server};
use serde_json::{Value, json};

/// Connects `user` with a token whose `presence` claim is `presence`.
async fn connect_with_presence(server: &Server, user: &str, presence: bool) -> (Client, Value) {
    let (status, body) = server.http().post(
        "/api/tokens",
        json!({"user_id": user, "ttl_seconds": 3600, "presence": presence}),
        Some(SERVICE_KEY),
    );
    assert_eq!(status, 200, "{body}");
    let mut client = Client::connect(&server.ws_url(), None).await.unwrap();
    client
        .send(json!({"type": "auth", "token": body["token"]}))
        .await;
    let ready = client.recv_type("ready").await;
    (client, ready)
}

/// The next reply (an `error`, `history` or `rooms`) carrying `req`.
async fn reply_to(client: &mut Client, req: &str) -> Value {
    client.recv_until(|f| f["req"] == req).await
}

/// The summary of `room` in a `ready` or `rooms` frame.
fn summary<'a>(frame: &'a Value, room: &str) -> &'a Value {
    frame["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .find(|r| r["room_id"] == room)
        .unwrap_or_else(|| panic!("room {room} in {frame}"))
}

/// Frames until (and including) the first that matches; returns them all.
async fn frames_until(client: &mut Client, mut last: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let mut out = Vec::new();
    for _ in 0..1_000 {
        let frame = client.recv().await;
        let done = last(&frame);
        out.push(frame);
        if done {
            return out;
        }
    }
    panic!("no matching frame in 1000 frames");
}

both_backends!(
    typing_reaches_the_other_member_once_per_second,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start(&db);
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        let (mut alice_tab, _) = server.connect("alice").await;
        let (mut bob, _) = server.connect("bob").await;

        for _ in 0..5 {
            alice.send(json!({"type": "typing", "room_id": room})).await;
        }
        // The sentinel: a message after the typing storm.
        alice.send_message(&room, "c1", "hello").await;
        let frames = frames_until(&mut bob, |f| f["type"] == "message").await;
        let typing: Vec<&Value> = frames.iter().filter(|f| f["type"] == "typing").collect();
        assert_eq!(
            typing.len(),
            1,
            "one typing per second is forwarded: {frames:?}"
        );
        assert_eq!(
            typing[0],
            &json!({"type": "typing", "room_id": room, "user_id": "alice"}),
            "never stored, never carries req"
        );
        // The typer's own connections get nothing of it.
        let own = frames_until(&mut alice_tab, |f| f["type"] == "message").await;
        assert!(own.iter().all(|f| f["type"] != "typing"), "{own:?}");

        // Errors, each answered with its req, none broadcast.
        let strangers = server.room("carol", "dave");
        let closed = server.room("alice", "erin");
        let (status, _) = server
            .http()
            .delete(&format!("/api/rooms/{closed}"), Some(SERVICE_KEY));
        assert_eq!(status, 204);
        for (room, req, code) in [
            (strangers.as_str(), "t-1", "not_a_member"),
            ("no-such-room", "t-2", "unknown_room"),
            (closed.as_str(), "t-3", "room_closed"),
        ] {
            alice
                .send(json!({"type": "typing", "room_id": room, "req": req}))
                .await;
            let error = reply_to(&mut alice, req).await;
            assert_eq!(
                (error["type"].as_str(), error["code"].as_str()),
                (Some("error"), Some(code)),
                "{error}"
            );
        }
    }
);

both_backends!(
    received_and_seen_move_the_delivered_watermark,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start(&db);
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        let (mut bob, _) = server.connect("bob").await;
        alice.send_message(&room, "a1", "one").await;
        alice.send_message(&room, "a2", "two").await;
        bob.recv_until(|f| f["type"] == "message" && f["message"]["seq"] == 2)
            .await;

        // Clamped to the room's last seq; both members hear of it.
        bob.send(json!({"type": "received", "room_id": room, "up_to_seq": 99}))
            .await;
        for client in [&mut alice, &mut bob] {
            let delivered = client.recv_type("delivered").await;
            assert_eq!(delivered["reader_id"], "bob");
            assert_eq!(delivered["up_to_seq"], 2);
            assert!(delivered["delivered_at"].is_string(), "{delivered}");
            assert!(delivered.get("req").is_none());
        }
        // A seen beyond it raises delivered first, then seen.
        alice.send_message(&room, "a3", "three").await;
        bob.recv_until(|f| f["type"] == "message" && f["message"]["seq"] == 3)
            .await;
        bob.send(json!({"type": "seen", "room_id": room, "up_to_seq": 3}))
            .await;
        let frames = frames_until(&mut alice, |f| f["type"] == "seen").await;
        let kinds: Vec<&str> = frames
            .iter()
            .filter_map(|f| f["type"].as_str())
            .filter(|k| *k == "delivered" || *k == "seen")
            .collect();
        assert_eq!(kinds, vec!["delivered", "seen"], "{frames:?}");
        let delivered = frames.iter().find(|f| f["type"] == "delivered").unwrap();
        assert_eq!(delivered["up_to_seq"], 3);
        // The summary carries both watermarks, as the other member sees them.
        let (_, ready) = server.connect("alice").await;
        let s = summary(&ready, &room);
        assert_eq!(
            (
                s["peer_seen_up_to"].as_u64(),
                s["peer_delivered_up_to"].as_u64()
            ),
            (Some(3), Some(3))
        );
        assert_eq!(s["last_message"]["seq"], 3);

        // Errors: a non-member, an unknown room, up_to_seq 0.
        let strangers = server.room("carol", "dave");
        for (frame, req, code) in [
            (
                json!({"type": "received", "room_id": strangers, "up_to_seq": 1}),
                "r-1",
                "not_a_member",
            ),
            (
                json!({"type": "received", "room_id": "nope", "up_to_seq": 1}),
                "r-2",
                "unknown_room",
            ),
            (
                json!({"type": "received", "room_id": room, "up_to_seq": 0}),
                "r-3",
                "invalid_frame",
            ),
        ] {
            let mut frame = frame;
            frame["req"] = json!(req);
            bob.send(frame).await;
            let error = reply_to(&mut bob, req).await;
            assert_eq!(error["code"], code, "{error}");
        }
    }
);

both_backends!(
    unsend_erases_the_body_live_and_for_good,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start(&db);
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        let (mut bob, _) = server.connect("bob").await;
        alice.send_message(&room, "a1", "oops").await;
        // Seq 1 is alice's before bob writes seq 2.
        bob.recv_type("message").await;
        bob.send_message(&room, "b2", "hi").await;
        alice
            .recv_until(|f| f["type"] == "message" && f["message"]["seq"] == 2)
            .await;

        // Someone else's message: not_allowed; a seq that does not exist, or 0: invalid_frame.
        bob.send(json!({"type": "delete", "room_id": room, "seq": 1, "req": "d-1"}))
            .await;
        assert_eq!(reply_to(&mut bob, "d-1").await["code"], "not_allowed");
        for (seq, req) in [(json!(9), "d-2"), (json!(0), "d-3")] {
            alice
                .send(json!({"type": "delete", "room_id": room, "seq": seq, "req": req}))
                .await;
            assert_eq!(reply_to(&mut alice, req).await["code"], "invalid_frame");
        }
        let strangers = server.room("carol", "dave");
        alice
            .send(json!({"type": "delete", "room_id": strangers, "seq": 1, "req": "d-4"}))
            .await;
        assert_eq!(reply_to(&mut alice, "d-4").await["code"], "not_a_member");
        alice
            .send(json!({"type": "delete", "room_id": "nope", "seq": 1, "req": "d-5"}))
            .await;
        assert_eq!(reply_to(&mut alice, "d-5").await["code"], "unknown_room");

        // The sender's unsend: every connection of both members hears of it.
        alice
            .send(json!({"type": "delete", "room_id": room, "seq": 1}))
            .await;
        for client in [&mut alice, &mut bob] {
            let deleted = client.recv_type("message_deleted").await;
            assert_eq!(
                (deleted["room_id"].as_str(), deleted["seq"].as_u64()),
                (Some(room.as_str()), Some(1))
            );
            assert!(deleted["deleted_at"].is_string(), "{deleted}");
        }
        // Gone from the database: history and a fresh ready show the tombstone.
        let history = bob
            .history(json!({"type": "history", "room_id": room}))
            .await;
        assert_eq!(history[0]["body"], Value::Null);
        assert!(history[0]["deleted_at"].is_string());
        assert_eq!(history[1]["body"], "hi");
        assert_eq!(history[1]["deleted_at"], Value::Null);
        // Deleting it again: no error. Then a retried send of it returns the tombstone.
        alice
            .send(json!({"type": "delete", "room_id": room, "seq": 1, "req": "d-6"}))
            .await;
        alice.send(json!({"type": "send", "room_id": room, "client_msg_id": "a1", "body": "oops", "req": "s-1"})).await;
        let frames = frames_until(&mut alice, |f| {
            f["type"] == "message" && f["message"]["client_msg_id"] == "a1"
        })
        .await;
        assert!(
            frames
                .iter()
                .all(|f| f["req"] != "d-6" && f["type"] != "message_deleted"),
            "a repeated delete is answered by nothing: {frames:?}"
        );
        let retried = &frames.last().unwrap()["message"];
        assert_eq!(
            (retried["seq"].as_u64(), &retried["body"]),
            (Some(1), &Value::Null)
        );
        // The row's count is unchanged: the room's last seq is still 2.
        let (_, ready) = server.connect("bob").await;
        assert_eq!(summary(&ready, &room)["last_seq"], 2);
        assert_eq!(
            summary(&ready, &room)["unread"],
            0,
            "a tombstone is never unread"
        );

        // Unsend works in a closed room.
        alice.send_message(&room, "a3", "bye").await;
        alice
            .recv_until(|f| f["type"] == "message" && f["message"]["seq"] == 3)
            .await;
        let (status, _) = server
            .http()
            .delete(&format!("/api/rooms/{room}"), Some(SERVICE_KEY));
        assert_eq!(status, 204);
        alice
            .send(json!({"type": "delete", "room_id": room, "seq": 3}))
            .await;
        assert_eq!(bob.recv_type("message_deleted").await["seq"], 3);
    }
);

both_backends!(unsend_is_refused_past_its_window, |db: Db| async move {
    let db = Database::new(db);
    let server = Server::start_with(&db, &[("CHAT_UNSEND_WINDOW_SECS", "1")]);
    let room = server.room("alice", "bob");
    let (mut alice, _) = server.connect("alice").await;
    alice.send_message(&room, "a1", "hi").await;
    alice.recv_type("message").await;
    let sent = Instant::now();
    alice
        .send(json!({"type": "delete", "room_id": room, "seq": 1}))
        .await;
    assert_eq!(
        alice.recv_type("message_deleted").await["seq"],
        1,
        "within the window"
    );
    alice.send_message(&room, "a2", "hi again").await;
    alice
        .recv_until(|f| f["type"] == "message" && f["message"]["seq"] == 2)
        .await;
    // The rule is about time: let the one-second window pass.
    tokio::time::sleep_until((sent + Duration::from_millis(2_100)).into()).await;
    alice
        .send(json!({"type": "delete", "room_id": room, "seq": 2, "req": "late"}))
        .await;
    let error = reply_to(&mut alice, "late").await;
    assert_eq!(error["code"], "not_allowed", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("window"),
        "{error}"
    );
    // Its own deleted message stays a no-op whatever the window.
    alice
        .send(json!({"type": "delete", "room_id": room, "seq": 1, "req": "again"}))
        .await;
    alice
        .send(json!({"type": "history", "room_id": room, "req": "h"}))
        .await;
    let reply = alice
        .recv_until(|f| f["req"] == "again" || f["req"] == "h")
        .await;
    assert_eq!(
        reply["type"], "history",
        "no error for a deleted message: {reply}"
    );
});

both_backends!(
    presence_follows_connections_with_a_grace,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start(&db);
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        let (mut bob, ready) = server.connect("bob").await;
        // Bob learns alice is online: from his summary, or, when the presence service had not
        // recorded her connection yet as his `ready` was read (it records asynchronously), from
        // a `presence` frame right after, since he was registered before that read.
        let peer = &summary(&ready, &room)["peer"];
        if peer["online"] == true {
            assert!(peer["last_active_at"].is_string(), "{ready}");
        } else {
            let online = bob.recv_type("presence").await;
            assert_eq!(
                (online["user_id"].as_str(), online["online"].as_bool()),
                (Some("alice"), Some(true)),
                "{ready}"
            );
        }
        // Alice hears bob come online.
        let online = alice.recv_type("presence").await;
        assert_eq!(
            (online["user_id"].as_str(), online["online"].as_bool()),
            (Some("bob"), Some(true))
        );
        assert!(online.get("req").is_none());

        // A reconnect within the grace: no frame at all.
        drop(bob);
        let (bob2, _) = server.connect("bob").await;
        match alice.next_within(Duration::from_secs(7)).await {
            Next::Timeout => {}
            other => panic!("a reconnect within 5 s must not flap: {other:?}"),
        }
        // The last connection gone: offline after the grace (5 s, plus at most 1 s).
        let closed_at = Instant::now();
        drop(bob2);
        let offline = alice.recv_type("presence").await;
        let after = closed_at.elapsed();
        assert_eq!(
            (offline["user_id"].as_str(), offline["online"].as_bool()),
            (Some("bob"), Some(false))
        );
        assert!(offline["last_active_at"].is_string());
        assert!(
            after >= Duration::from_millis(4_900) && after <= Duration::from_millis(7_000),
            "offline after {after:?}"
        );
        // A user's own connections never hear of that user: carol opens a hiding tab, then a
        // shown one, which turns her online for dave; her hiding tab gets nothing about her.
        let carol_room = server.room("carol", "dave");
        let (mut dave, _) = server.connect("dave").await;
        let (mut carol_hidden, _) = connect_with_presence(&server, "carol", false).await;
        let (mut carol, _) = server.connect("carol").await;
        let online = dave.recv_type("presence").await;
        assert_eq!(
            (online["user_id"].as_str(), online["online"].as_bool()),
            (Some("carol"), Some(true))
        );
        dave.send_message(&carol_room, "d1", "sentinel").await;
        let frames = frames_until(&mut carol_hidden, |f| f["type"] == "message").await;
        // Dave's own coming online may reach her (he connected just before her tabs, and the
        // presence service reports it a moment later): that is about him, and allowed.
        assert!(
            frames
                .iter()
                .all(|f| !(f["type"] == "presence" && f["user_id"] == "carol")),
            "{frames:?}"
        );
        carol.recv_type("message").await;

        // Hiding presence: connected, yet offline with no time, and no frame.
        let hidden_room = server.room("gus", "erin");
        let (mut erin, _) = server.connect("erin").await;
        let (_gus, _) = connect_with_presence(&server, "gus", false).await;
        let (_, ready) = server.connect("erin").await;
        assert_eq!(
            summary(&ready, &hidden_room)["peer"],
            json!({"online": false, "last_active_at": null})
        );
        match erin.next_within(Duration::from_secs(1)).await {
            Next::Timeout => {}
            other => panic!("a hidden user sends no presence: {other:?}"),
        }
    }
);

both_backends!(presence_can_be_turned_off, |db: Db| async move {
    let db = Database::new(db);
    let server = Server::start_with(&db, &[("CHAT_PRESENCE", "off")]);
    let room = server.room("alice", "bob");
    let (mut alice, _) = server.connect("alice").await;
    let (_bob, ready) = server.connect("bob").await;
    assert!(summary(&ready, &room).get("peer").is_none(), "{ready}");
    alice
        .send(json!({"type": "history", "room_id": room, "req": "h"}))
        .await;
    let first = alice.recv().await;
    assert_eq!(first["req"], "h", "no presence frame came first: {first}");
    // Nor later: with presence on, bob's online frame reaches alice within milliseconds
    // of his connecting; here nothing arrives in 2 s.
    match alice.next_within(Duration::from_secs(2)).await {
        Next::Timeout => {}
        other => panic!("no presence frame with CHAT_PRESENCE=off: {other:?}"),
    }
});

both_backends!(ready_pages_the_room_list, |db: Db| async move {
    let db = Database::new(db);
    let server = Server::start(&db);
    let rooms: Vec<String> = (0..205)
        .map(|i| server.room("alice", &format!("u{i:03}")))
        .collect();
    // Activity in the oldest room moves it to the front.
    let (mut u0, _) = server.connect("u000").await;
    u0.send_message(&rooms[0], "c1", "first").await;
    u0.recv_type("message").await;

    let (mut alice, ready) = server.connect("alice").await;
    assert_eq!(ready["protocol"], "1.1");
    assert_eq!(ready["more_rooms"], true);
    let listed = ready["rooms"].as_array().unwrap();
    assert_eq!(listed.len(), 200);
    assert_eq!(listed[0]["room_id"], rooms[0].as_str());
    assert_eq!(listed[0]["last_message"]["body"], "first");
    for s in listed {
        for field in [
            "last_activity_at",
            "peer_seen_up_to",
            "peer_delivered_up_to",
            "last_message",
            "peer",
        ] {
            assert!(s.get(field).is_some(), "{field} in {s}");
        }
    }
    let order: Vec<(&str, &str)> = listed
        .iter()
        .map(|s| {
            (
                s["last_activity_at"].as_str().unwrap(),
                s["room_id"].as_str().unwrap(),
            )
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(order, sorted, "newest activity first, then room id");

    let last = listed.last().unwrap();
    alice.send(json!({"type": "rooms", "before_activity_at": last["last_activity_at"], "before_room_id": last["room_id"], "req": "p2"})).await;
    let page = reply_to(&mut alice, "p2").await;
    assert_eq!(page["type"], "rooms");
    assert_eq!(page["more_rooms"], false);
    let rest = page["rooms"].as_array().unwrap();
    assert_eq!(rest.len(), 5);
    let mut all: Vec<&str> = listed
        .iter()
        .chain(rest)
        .map(|s| s["room_id"].as_str().unwrap())
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 205, "every room once");
    // A malformed cursor is invalid_frame.
    alice.send(json!({"type": "rooms", "before_activity_at": "yesterday", "before_room_id": "x", "req": "p3"})).await;
    assert_eq!(reply_to(&mut alice, "p3").await["code"], "invalid_frame");
});

both_backends!(moderation_deletes_any_message, |db: Db| async move {
    let db = Database::new(db);
    let server = Server::start(&db);
    let room = server.room("alice", "bob");
    let (mut alice, _) = server.connect("alice").await;
    let (mut bob, _) = server.connect("bob").await;
    bob.send_message(&room, "b1", "something to report").await;
    alice.recv_type("message").await;
    let http = server.http();
    let (status, _) = http.delete(&format!("/api/rooms/{room}/messages/1"), Some(SERVICE_KEY));
    assert_eq!(status, 204);
    for client in [&mut alice, &mut bob] {
        assert_eq!(client.recv_type("message_deleted").await["seq"], 1);
    }
    let (status, _) = http.delete(&format!("/api/rooms/{room}/messages/1"), Some(SERVICE_KEY));
    assert_eq!(status, 204, "deleting twice is not an error");
    for path in [
        format!("/api/rooms/{room}/messages/9"),
        format!("/api/rooms/{room}/messages/0"),
        "/api/rooms/nope/messages/1".to_owned(),
    ] {
        let (status, body) = http.delete(&path, Some(SERVICE_KEY));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
    }
    let (status, _) = http.delete(&format!("/api/rooms/{room}/messages/1"), None);
    assert_eq!(status, 401);
    let (status, page) = http.get_text(&format!("/api/rooms/{room}/messages"), Some(SERVICE_KEY));
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&page).unwrap();
    assert_eq!(
        page["messages"][0]["body"],
        Value::Null,
        "tombstones included: {page}"
    );
});

/// Two nodes on one PostgreSQL with the LISTEN/NOTIFY bus.
fn node(db: &Database) -> Server {
    Server::start_with(db, &[("CHAT_BUS", "postgres")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_frames_cross_nodes() {
    let db = Database::new(Db::Postgres);
    let (a, b) = (node(&db), node(&db));
    let room = a.room("alice", "bob");
    let (mut alice, _) = a.connect("alice").await;
    let (mut bob, ready) = b.connect("bob").await;
    assert_eq!(
        summary(&ready, &room)["peer"]["online"],
        true,
        "alice is online on the other node"
    );
    assert_eq!(alice.recv_type("presence").await["online"], true);

    bob.send(json!({"type": "typing", "room_id": room})).await;
    assert_eq!(alice.recv_type("typing").await["user_id"], "bob");
    alice.send_message(&room, "a1", "hi").await;
    bob.recv_type("message").await;
    bob.send(json!({"type": "received", "room_id": room, "up_to_seq": 1}))
        .await;
    assert_eq!(alice.recv_type("delivered").await["up_to_seq"], 1);
    alice
        .send(json!({"type": "delete", "room_id": room, "seq": 1}))
        .await;
    assert_eq!(bob.recv_type("message_deleted").await["seq"], 1);
    assert_eq!(alice.recv_type("message_deleted").await["seq"], 1);

    // Bob moves to node a within the grace: no flap on either side.
    drop(bob);
    let (_bob, _) = a.connect("bob").await;
    match alice.next_within(Duration::from_secs(7)).await {
        Next::Timeout => {}
        other => panic!("moving between nodes within 5 s must not flap: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_users_go_offline_within_30_seconds() {
    let db = Database::new(Db::Postgres);
    let (a, mut b) = (node(&db), node(&db));
    let room = a.room("alice", "bob");
    let (mut alice, _) = a.connect("alice").await;
    let (_bob, _) = b.connect("bob").await;
    assert_eq!(alice.recv_type("presence").await["online"], true);
    let died = Instant::now();
    b.kill();
    // Longer than the harness's usual wait: the rule gives the cluster 30 s.
    let offline = loop {
        let left = Duration::from_secs(35).saturating_sub(died.elapsed());
        match alice.next_within(left).await {
            Next::Frame(f) if f["type"] == "presence" => break f,
            Next::Frame(_) => continue,
            other => panic!("no offline presence within 35 s: {other:?}"),
        }
    };
    assert_eq!(
        (offline["user_id"].as_str(), offline["online"].as_bool()),
        (Some("bob"), Some(false))
    );
    assert!(
        died.elapsed() <= Duration::from_secs(30),
        "offline after {:?}",
        died.elapsed()
    );
    let (_, ready) = a.connect("alice").await;
    assert_eq!(summary(&ready, &room)["peer"]["online"], false);
}
