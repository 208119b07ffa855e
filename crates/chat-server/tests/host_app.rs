//! What a host app has around the chat: moderation reads and the privacy export, over real
//! HTTP against the real binary, on both backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Database, Db, SERVICE_KEY, Server};
use serde_json::{Value, json};

fn seqs(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

both_backends!(moderators_page_through_any_room, |db: Db| async move {
    let db = Database::new(db);
    let server = Server::start_with(
        &db,
        &[("CHAT_RATE_PER_SEC", "1000"), ("CHAT_RATE_BURST", "1000")],
    );
    let room = server.room("alice", "bob");
    let (mut alice, _) = server.connect("alice").await;
    for i in 1..=5 {
        alice
            .send_message(&room, &format!("c{i}"), &format!("message {i}"))
            .await;
        alice.recv_type("message").await;
    }
    let path = format!("/api/rooms/{room}/messages");
    assert_eq!(server.http().get_text(&path, None).0, 401);

    let (status, page) = server.get_json(&path);
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["members"], json!(["alice", "bob"]));
    assert_eq!(page["closed"], false);
    assert_eq!(seqs(&page["messages"]), vec![1, 2, 3, 4, 5]);
    assert_eq!(page["messages"][0]["body"], "message 1");
    let (_, back) = server.get_json(&format!("{path}?before_seq=4&limit=2"));
    assert_eq!(seqs(&back["messages"]), vec![2, 3]);
    let (_, after) = server.get_json(&format!("{path}?after_seq=3"));
    assert_eq!(seqs(&after["messages"]), vec![4, 5]);

    // A closed room is still readable.
    assert_eq!(
        server
            .http()
            .delete(&format!("/api/rooms/{room}"), Some(SERVICE_KEY))
            .0,
        204
    );
    let (_, closed) = server.get_json(&path);
    assert_eq!(
        (closed["closed"].as_bool(), seqs(&closed["messages"]).len()),
        (Some(true), 5)
    );

    // Errors keep the JSON shape.
    let (status, error) = server.get_json("/api/rooms/no-such-room/messages");
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("unknown_room"))
    );
    let (status, error) = server.get_json(&format!("{path}?before_seq=2&after_seq=1"));
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("conflicting_cursors"))
    );
    let (status, error) = server.get_json(&format!("{path}?limit=many"));
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
});

both_backends!(
    an_export_holds_every_room_and_message_of_the_user,
    |db: Db| async move {
        let db = Database::new(db);
        let server = Server::start_with(
            &db,
            &[("CHAT_RATE_PER_SEC", "10000"), ("CHAT_RATE_BURST", "10000")],
        );
        let busy = server.room("alice", "bob");
        let quiet = server.room("carol", "alice");
        let (mut alice, _) = server.connect("alice").await;
        let (mut bob, _) = server.connect("bob").await;
        // More than one page (300) in one room, from both members.
        for i in 1..=350u64 {
            let (sender, id) = if i % 2 == 0 {
                (&mut bob, format!("b{i}"))
            } else {
                (&mut alice, format!("a{i}"))
            };
            sender.send_message(&busy, &id, "x").await;
        }
        alice
            .recv_until(|f| f["type"] == "message" && f["message"]["seq"] == 350)
            .await;
        bob.send(json!({"type": "seen", "room_id": busy, "up_to_seq": 3}))
            .await;
        bob.recv_type("seen").await;
        let (mut carol, _) = server.connect("carol").await;
        carol.send_message(&quiet, "c1", "hello alice").await;
        carol.recv_type("message").await;

        let (status, export) = server.get_json("/api/users/alice/export");
        assert_eq!(status, 200);
        assert_eq!(export["user_id"], "alice");
        assert!(export["exported_at"].is_string());
        let rooms = export["rooms"].as_array().unwrap();
        assert_eq!(rooms.len(), 2, "{export}");
        let room = |id: &str| rooms.iter().find(|r| r["room_id"] == id).unwrap().clone();
        let busy_room = room(&busy);
        assert_eq!(seqs(&busy_room["messages"]), (1..=350).collect::<Vec<_>>());
        assert_eq!(busy_room["members"], json!(["alice", "bob"]));
        assert!(busy_room["created_at"].is_string());
        // Seen marks are there: alice's 1 and 3 were seen by bob.
        assert!(busy_room["messages"][0]["seen_at"].is_string());
        assert!(busy_room["messages"][4]["seen_at"].is_null());
        assert_eq!(room(&quiet)["messages"][0]["body"], "hello alice");

        let (status, nobody) = server.get_json("/api/users/nobody/export");
        assert_eq!((status, nobody["rooms"].clone()), (200, json!([])));
        let (status, error) = server.get_json("/api/users/no%20spaces/export");
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (422, Some("invalid_user_id"))
        );
    }
);
