//! Conformance cases of protocol 1.1's storage: room list pages with last messages and
//! watermarks, delivered watermarks, tombstones (unsend and moderation), presence rows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chat_domain::{Deleter, DomainError, Presence, RoomsCursor};
use chat_store::testing::TestStore;
use chat_store::{Appended, DeleteOutcome, StoreError, StoreEvent};

use crate::support::*;

fn member(name: &str, window_secs: u64) -> Deleter {
    Deleter::Member {
        user: user(name),
        window_secs,
    }
}

pub async fn rooms_page_orders_by_activity_and_pages_with_a_cursor(s: &TestStore) {
    let repo = &*s.repo;
    // Five rooms of alice's, created at t(1)..t(5); a message in the oldest moves it first.
    let mut rooms = Vec::new();
    for (i, peer) in ["bob", "carol", "dave", "erin", "frank"].iter().enumerate() {
        rooms.push(open(repo, "alice", peer, t(i as i64 + 1)).await);
    }
    let m = send(repo, &rooms[0].id, "bob", "b1", t(10)).await;
    let page = repo.rooms_page(&user("alice"), None, 2).await.unwrap();
    let ids: Vec<_> = page.rooms.iter().map(|r| r.room_id.clone()).collect();
    assert_eq!(ids, vec![rooms[0].id.clone(), rooms[4].id.clone()]);
    assert!(page.more);
    assert_eq!(page.rooms[0].last_activity_at, t(10));
    assert_eq!(page.rooms[0].last_message.as_ref(), Some(&m));
    assert_eq!(page.rooms[0].unread, 1);
    assert_eq!(
        page.rooms[1].last_activity_at,
        t(5),
        "no message: creation time"
    );
    assert_eq!(page.rooms[1].last_message, None);
    assert_eq!(page.rooms[0].peer, None, "presence is the server's to fill");

    let next = repo
        .rooms_page(&user("alice"), Some(page.rooms[1].cursor()), 2)
        .await
        .unwrap();
    let ids: Vec<_> = next.rooms.iter().map(|r| r.room_id.clone()).collect();
    assert_eq!(ids, vec![rooms[3].id.clone(), rooms[2].id.clone()]);
    assert!(next.more);
    let last = repo
        .rooms_page(&user("alice"), Some(next.rooms[1].cursor()), 2)
        .await
        .unwrap();
    assert_eq!(last.rooms.len(), 1);
    assert!(!last.more, "the last page says so");
    assert_eq!(last.rooms[0].room_id, rooms[1].id);

    // Rooms with the same activity time are ordered by id, descending, and the cursor
    // splits between them.
    let same: Vec<_> = [
        open(repo, "gina", "hal", t(20)).await,
        open(repo, "gina", "ivan", t(20)).await,
    ]
    .to_vec();
    let mut expected: Vec<_> = same.iter().map(|r| r.id.clone()).collect();
    expected.sort();
    expected.reverse();
    let first = repo.rooms_page(&user("gina"), None, 1).await.unwrap();
    assert_eq!(first.rooms[0].room_id, expected[0]);
    let second = repo
        .rooms_page(&user("gina"), Some(first.rooms[0].cursor()), 1)
        .await
        .unwrap();
    assert_eq!(second.rooms[0].room_id, expected[1]);
    assert!(!second.more);
    let none = repo
        .rooms_page(
            &user("gina"),
            Some(RoomsCursor {
                before_activity_at: t(0),
                before_room_id: room_id("zzz"),
            }),
            5,
        )
        .await
        .unwrap();
    assert!(none.rooms.is_empty() && !none.more);
}

pub async fn received_moves_the_delivered_watermark_forward_only(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    send(repo, &room.id, "alice", "a1", t(2)).await;
    send(repo, &room.id, "alice", "a2", t(2)).await;
    send(repo, &room.id, "bob", "b3", t(2)).await;
    let mut rx = repo.events().subscribe();
    // Clamped to the room, and to the other member's messages: bob's own seq 3 does not count.
    let moved = repo
        .mark_received(&room.id, &user("bob"), seq(99), t(3))
        .await
        .unwrap();
    assert_eq!(moved, Some(seq(2)));
    assert_eq!(
        drain(&mut rx),
        vec![StoreEvent::DeliveredMarked {
            room_id: room.id.clone(),
            members: room.members.clone(),
            reader: user("bob"),
            up_to: seq(2),
            delivered_at: t(3),
        }]
    );
    // Backwards, or the same again: nothing moves, nothing is published.
    for up_to in [1, 2, 3] {
        assert_eq!(
            repo.mark_received(&room.id, &user("bob"), seq(up_to), t(4))
                .await,
            Ok(None)
        );
    }
    assert_eq!(drain(&mut rx), Vec::new());
    // Alice has received nothing of bob's until she says so.
    let alice_view = repo.room_summary(&room.id, &user("bob")).await.unwrap();
    assert_eq!(alice_view.peer_delivered_up_to, 0);
    let bob_view = repo.room_summary(&room.id, &user("alice")).await.unwrap();
    assert_eq!(
        (bob_view.peer_delivered_up_to, bob_view.peer_seen_up_to),
        (2, 0)
    );
    // Seen raises delivered with it; the summary shows both.
    repo.mark_seen(&room.id, &user("alice"), seq(3), t(5))
        .await
        .unwrap();
    let events = drain(&mut rx);
    assert!(
        matches!(&events[..], [StoreEvent::DeliveredMarked { up_to, .. }, StoreEvent::SeenMarked { .. }] if *up_to == seq(3)),
        "{events:?}"
    );
    let view = repo.room_summary(&room.id, &user("bob")).await.unwrap();
    assert_eq!((view.peer_seen_up_to, view.peer_delivered_up_to), (3, 3));
    // Rules: a non-member, an unknown room; a closed room still records.
    expect_err(
        repo.mark_received(&room.id, &user("eve"), seq(1), t(6))
            .await,
        StoreError::Rule(DomainError::NotAMember),
    );
    expect_err(
        repo.mark_received(&room_id("nope"), &user("bob"), seq(1), t(6))
            .await,
        StoreError::UnknownRoom,
    );
    send(repo, &room.id, "alice", "a4", t(7)).await;
    repo.close_room(&room.id, t(8)).await.unwrap();
    assert_eq!(
        repo.mark_received(&room.id, &user("bob"), seq(4), t(9))
            .await,
        Ok(Some(seq(4)))
    );
}

pub async fn delete_leaves_a_tombstone_and_follows_the_unsend_rules(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    let m1 = send(repo, &room.id, "alice", "a1", t(2)).await;
    send(repo, &room.id, "bob", "b2", t(3)).await;
    let mut rx = repo.events().subscribe();

    // Someone else's message, a non-member, an unknown room, a seq that does not exist.
    expect_err(
        repo.delete_message(&room.id, seq(2), member("alice", 0), t(4))
            .await,
        StoreError::Rule(DomainError::NotYourMessage),
    );
    expect_err(
        repo.delete_message(&room.id, seq(1), member("eve", 0), t(4))
            .await,
        StoreError::Rule(DomainError::NotAMember),
    );
    expect_err(
        repo.delete_message(&room_id("nope"), seq(1), member("alice", 0), t(4))
            .await,
        StoreError::UnknownRoom,
    );
    expect_err(
        repo.delete_message(&room.id, seq(9), member("alice", 0), t(4))
            .await,
        StoreError::Rule(DomainError::NoSuchMessage),
    );
    // Past the window.
    expect_err(
        repo.delete_message(&room.id, seq(1), member("alice", 1), t(4))
            .await,
        StoreError::Rule(DomainError::UnsendWindowPassed),
    );
    assert_eq!(drain(&mut rx), Vec::new(), "refusals publish nothing");

    // Within it: erased, one event.
    assert_eq!(
        repo.delete_message(&room.id, seq(1), member("alice", 60), t(4))
            .await,
        Ok(DeleteOutcome::Deleted { deleted_at: t(4) })
    );
    assert_eq!(
        drain(&mut rx),
        vec![StoreEvent::MessageDeleted {
            room_id: room.id.clone(),
            members: room.members.clone(),
            seq: seq(1),
            deleted_at: t(4),
        }]
    );
    let stored = all_history(repo, &room.id, "bob").await;
    assert_eq!(seqs(&stored), vec![1, 2], "seqs stay gapless");
    assert_eq!(stored[0].body, None);
    assert_eq!(stored[0].deleted_at, Some(t(4)));
    assert_eq!(stored[0].sent_at, m1.sent_at);
    // Again, whatever the window: a no-op with no event. Someone else: still refused.
    assert_eq!(
        repo.delete_message(&room.id, seq(1), member("alice", 1), t(100))
            .await,
        Ok(DeleteOutcome::AlreadyDeleted)
    );
    expect_err(
        repo.delete_message(&room.id, seq(1), member("bob", 0), t(100))
            .await,
        StoreError::Rule(DomainError::NotYourMessage),
    );
    assert_eq!(drain(&mut rx), Vec::new());
    // A retried send of the deleted message returns the tombstone, never a new row.
    match repo
        .append(new_msg(&room.id, "alice", "a1", "again"), t(5))
        .await
    {
        Ok(Appended::Duplicate(m)) => {
            assert_eq!(
                (m.seq, m.body.clone(), m.deleted_at),
                (seq(1), None, Some(t(4)))
            );
        }
        other => panic!("expected the tombstone, got {other:?}"),
    }
    // A tombstone is not unread, and is still the room's last message when it is the newest.
    let bob_view = repo.room_summary(&room.id, &user("bob")).await.unwrap();
    assert_eq!(bob_view.unread, 0);
    let m3 = send(repo, &room.id, "alice", "a3", t(6)).await;
    repo.close_room(&room.id, t(7)).await.unwrap();
    // Unsend works in a closed room.
    assert!(matches!(
        repo.delete_message(&room.id, m3.seq, member("alice", 0), t(8))
            .await,
        Ok(DeleteOutcome::Deleted { .. })
    ));
    let page = repo.rooms_page(&user("bob"), None, 10).await.unwrap();
    let last = page.rooms[0].last_message.clone().unwrap();
    assert_eq!(
        (last.seq, last.body, last.deleted_at),
        (seq(3), None, Some(t(8)))
    );
    assert_eq!(page.rooms[0].unread, 0);
    // A moderator deletes anyone's message at any age.
    assert!(matches!(
        repo.delete_message(&room.id, seq(2), Deleter::Moderator, t(1_000_000))
            .await,
        Ok(DeleteOutcome::Deleted { .. })
    ));
    assert_eq!(
        repo.delete_message(&room.id, seq(2), Deleter::Moderator, t(1_000_001))
            .await,
        Ok(DeleteOutcome::AlreadyDeleted)
    );
}

pub async fn presence_rows_follow_nodes_and_connections(s: &TestStore) {
    let repo = &*s.repo;
    let (alice, bob) = (user("alice"), user("bob"));
    let of = |presence: Vec<(chat_domain::UserId, Presence)>, who: &str| {
        presence
            .into_iter()
            .find(|(u, _)| u.as_str() == who)
            .map(|(_, p)| p)
            .unwrap()
    };
    // Never seen: offline, never active.
    let now = repo.presence_of(std::slice::from_ref(&alice), t(0)).await.unwrap();
    assert_eq!(of(now, "alice"), Presence::default());

    repo.presence_beat("n1", t(0)).await.unwrap();
    repo.presence_beat("n2", t(0)).await.unwrap();
    assert_eq!(
        repo.presence_connect("n1", &alice, true, t(1)).await,
        Ok(false)
    );
    let shown = repo.presence_of(std::slice::from_ref(&alice), t(1)).await.unwrap();
    assert_eq!(
        of(shown, "alice"),
        Presence {
            online: true,
            last_active_at: Some(t(1))
        }
    );
    // A second node sees her online already.
    assert_eq!(
        repo.presence_connect("n2", &alice, true, t(2)).await,
        Ok(true)
    );
    assert_eq!(
        repo.presence_disconnect("n1", &alice, t(3)).await,
        Ok(false)
    );
    assert_eq!(repo.presence_disconnect("n2", &alice, t(4)).await, Ok(true));
    let gone = repo.presence_of(std::slice::from_ref(&alice), t(4)).await.unwrap();
    assert_eq!(
        of(gone, "alice"),
        Presence {
            online: false,
            last_active_at: Some(t(4))
        }
    );
    // Hiding: connected, yet offline with no time.
    repo.presence_connect("n1", &bob, false, t(5))
        .await
        .unwrap();
    let hidden = repo.presence_of(std::slice::from_ref(&bob), t(5)).await.unwrap();
    assert_eq!(of(hidden, "bob"), Presence::HIDDEN);
    assert_eq!(repo.presence_disconnect("n1", &bob, t(6)).await, Ok(false));

    // A node that stops beating: its users count offline at once for readers, and the
    // reaper (another node) removes them and names who went offline, once.
    repo.presence_beat("n2", t(10)).await.unwrap();
    repo.presence_connect("n2", &alice, true, t(10))
        .await
        .unwrap();
    repo.presence_beat("n3", t(30)).await.unwrap();
    let stale = repo.presence_of(std::slice::from_ref(&alice), t(30)).await.unwrap();
    assert!(!of(stale, "alice").online);
    let reaped = repo.presence_reap("n3", t(30)).await.unwrap();
    assert_eq!(reaped, vec![(alice.clone(), t(10))]);
    assert_eq!(repo.presence_reap("n3", t(31)).await, Ok(Vec::new()));
    let after = repo.presence_of(std::slice::from_ref(&alice), t(31)).await.unwrap();
    assert_eq!(
        of(after, "alice"),
        Presence {
            online: false,
            last_active_at: Some(t(10))
        }
    );
    // Who hears of a user's presence: the other members of their open rooms only.
    open(repo, "alice", "bob", t(40)).await;
    open(repo, "alice", "carol", t(41)).await;
    let r3 = open(repo, "alice", "dave", t(42)).await;
    repo.close_room(&r3.id, t(43)).await.unwrap();
    let mut peers = repo.open_peers(&alice).await.unwrap();
    peers.sort();
    assert_eq!(peers, vec![user("bob"), user("carol")]);
    // A room opened now carries both members' presence.
    let mut rx = repo.events().subscribe();
    repo.presence_beat("n3", t(50)).await.unwrap();
    repo.presence_connect("n3", &user("erin"), true, t(50))
        .await
        .unwrap();
    repo.open_room(&pair("erin", "fred"), t(50)).await.unwrap();
    match drain(&mut rx).as_slice() {
        [StoreEvent::RoomOpened { presence, .. }] => {
            let erin = presence
                .iter()
                .find(|(u, _)| u.as_str() == "erin")
                .unwrap()
                .1;
            let fred = presence
                .iter()
                .find(|(u, _)| u.as_str() == "fred")
                .unwrap()
                .1;
            assert!(erin.online && !fred.online);
        }
        other => panic!("{other:?}"),
    }
}
