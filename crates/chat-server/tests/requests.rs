//! Request ids (protocol 1.1, rule 1): any client frame may carry `"req"`, a string of 1 to 64
//! characters; every `error` frame it causes, and the `history` reply to it, carry it back;
//! broadcast frames never do; a malformed `req` makes the frame `invalid_frame`, answered
//! without `req`. Over real WebSockets against the real binary, on both backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, Database, Db, Server};
use serde_json::{Value, json};

/// The next frame that is not a live `message`/`seen` (those can interleave with replies).
async fn next_reply(client: &mut Client) -> Value {
    client
        .recv_until(|f| f["type"] != "message" && f["type"] != "seen")
        .await
}

both_backends!(
    history_replies_and_errors_carry_the_req,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start(&db);
        let room = server.room("alice", "bob");
        let strangers = server.room("carol", "dave");
        let (mut alice, _) = server.connect("alice").await;

        alice
            .send(json!({"type": "history", "room_id": room, "req": "h-1"}))
            .await;
        let reply = next_reply(&mut alice).await;
        assert_eq!(
            (reply["type"].as_str(), reply["req"].as_str()),
            (Some("history"), Some("h-1"))
        );

        // Errors of each request type: history and seen on a room alice is not in, a bad body.
        alice
            .send(json!({"type": "history", "room_id": strangers, "req": "h-2"}))
            .await;
        let error = next_reply(&mut alice).await;
        assert_eq!(
            (error["code"].as_str(), error["req"].as_str()),
            (Some("not_a_member"), Some("h-2"))
        );
        alice
            .send(json!({"type": "seen", "room_id": strangers, "up_to_seq": 1, "req": "s-1"}))
            .await;
        let error = next_reply(&mut alice).await;
        assert_eq!(
            (error["code"].as_str(), error["req"].as_str()),
            (Some("not_a_member"), Some("s-1"))
        );
        alice
        .send(json!({"type": "send", "room_id": room, "client_msg_id": "c1", "body": "", "req": "m-1"}))
        .await;
        let error = next_reply(&mut alice).await;
        assert_eq!(
            (
                error["code"].as_str(),
                error["ref"].as_str(),
                error["req"].as_str()
            ),
            (Some("body_empty"), Some("c1"), Some("m-1")),
            "ref keeps its meaning beside req"
        );
        // A frame malformed otherwise still gets its (valid) req back.
        alice.send(json!({"type": "history", "req": "h-3"})).await;
        let error = next_reply(&mut alice).await;
        assert_eq!(
            (error["code"].as_str(), error["req"].as_str()),
            (Some("invalid_frame"), Some("h-3"))
        );
        // Without req, no req field at all (1.0 clients see what they saw).
        alice
            .send(json!({"type": "history", "room_id": strangers}))
            .await;
        let error = next_reply(&mut alice).await;
        assert!(error.get("req").is_none(), "{error}");
    }
);

both_backends!(broadcast_frames_never_carry_req, |db: Db| async move {
    let db = Database::new(db);
    let server = Server::start(&db);
    let room = server.room("alice", "bob");
    let (mut alice, _) = server.connect("alice").await;
    let (mut bob, _) = server.connect("bob").await;
    alice
        .send(json!({"type": "send", "room_id": room, "client_msg_id": "c1", "body": "hi", "req": "m-1"}))
        .await;
    for client in [&mut alice, &mut bob] {
        let message = client.recv_type("message").await;
        assert!(message.get("req").is_none(), "{message}");
    }
    bob.send(json!({"type": "seen", "room_id": room, "up_to_seq": 1, "req": "s-1"}))
        .await;
    for client in [&mut alice, &mut bob] {
        let seen = client.recv_type("seen").await;
        assert!(seen.get("req").is_none(), "{seen}");
    }
    // A retried send's stored copy is a `message` too: no req.
    alice
        .send(json!({"type": "send", "room_id": room, "client_msg_id": "c1", "body": "hi", "req": "m-2"}))
        .await;
    let again = alice.recv_type("message").await;
    assert_eq!(again["message"]["seq"], 1);
    assert!(again.get("req").is_none(), "{again}");
});

both_backends!(
    a_malformed_req_is_invalid_frame_answered_without_req,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start(&db);
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        for bad in [
            json!(7),
            json!(""),
            json!("x".repeat(65)),
            json!(null),
            json!(["a"]),
        ] {
            alice
                .send(json!({"type": "history", "room_id": room, "req": bad}))
                .await;
            let error = next_reply(&mut alice).await;
            assert_eq!(error["code"], "invalid_frame", "{bad}: {error}");
            assert!(error.get("req").is_none(), "{bad}: {error}");
        }
        // 64 characters is fine; the connection stayed open throughout.
        let longest = "é".repeat(64);
        alice
            .send(json!({"type": "history", "room_id": room, "req": longest}))
            .await;
        let reply = next_reply(&mut alice).await;
        assert_eq!(reply["type"], "history");
        assert_eq!(reply["req"].as_str(), Some(longest.as_str()));
    }
);
