//! The conformance cases. Each takes a fresh store and asserts one rule of the
//! `Repository` contract; `conformance.rs` runs every case against SQLite and PostgreSQL.

// Test code that is not a `#[test]` function (clippy.toml exempts only those): a failed
// unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;

use chat_domain::{DomainError, HistoryPage, Message, Timestamp};
use chat_store::testing::TestStore;
use chat_store::{Appended, Repository, StoreConfig, StoreError, StoreEvent};

use crate::support::*;

fn rule(e: DomainError) -> StoreError {
    StoreError::Rule(e)
}

pub async fn ping_answers(s: &TestStore) {
    s.repo.ping().await.expect("ping");
}

pub async fn open_room_is_idempotent_in_either_order(s: &TestStore) {
    let repo = &*s.repo;
    let mut rx = repo.events().subscribe();
    let first = repo.open_room(&pair("alice", "bob"), t(1)).await.unwrap();
    assert!(first.created);
    assert_eq!(first.room.members, pair("bob", "alice"));
    assert_eq!(first.room.created_at, t(1));
    assert_eq!(first.room.closed_at, None);
    assert!(
        uuid::Uuid::parse_str(first.room.id.as_str()).is_ok(),
        "room ids are UUIDs"
    );

    let again = repo.open_room(&pair("bob", "alice"), t(2)).await.unwrap();
    assert!(!again.created);
    assert_eq!(
        again.room, first.room,
        "the same room, unchanged (created_at stays)"
    );
    let third = repo.open_room(&pair("alice", "bob"), t(3)).await.unwrap();
    assert_eq!(third.room.id, first.room.id);

    assert_eq!(
        drain(&mut rx),
        vec![StoreEvent::RoomOpened {
            presence: never_seen(&first.room),
            room: first.room.clone()
        }],
        "one event, for the creation"
    );
    assert_eq!(repo.room(&first.room.id).await, Ok(first.room.clone()));

    let other = repo.open_room(&pair("alice", "carol"), t(4)).await.unwrap();
    assert!(other.created);
    assert_ne!(other.room.id, first.room.id, "another pair, another room");
}

pub async fn concurrent_open_room_returns_one_room(s: &TestStore) {
    let mut rx = s.repo.events().subscribe();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let repo = s.repo.clone();
        let members = if i % 2 == 0 {
            pair("alice", "bob")
        } else {
            pair("bob", "alice")
        };
        tasks.spawn(async move { repo.open_room(&members, t(i)).await });
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    while let Some(joined) = tasks.join_next().await {
        let opened = joined.unwrap().expect("open_room");
        ids.insert(opened.room.id.clone());
        created += usize::from(opened.created);
    }
    assert_eq!(ids.len(), 1, "every caller got the same room");
    assert_eq!(created, 1, "exactly one caller created it");
    assert_eq!(drain(&mut rx).len(), 1, "one RoomOpened event");
}

pub async fn closed_pair_gets_a_new_room(s: &TestStore) {
    let repo = &*s.repo;
    let old = open(repo, "alice", "bob", t(1)).await;
    send(repo, &old.id, "alice", "c1", t(2)).await;
    repo.close_room(&old.id, t(3)).await.unwrap();

    let mut rx = repo.events().subscribe();
    let new = repo.open_room(&pair("bob", "alice"), t(4)).await.unwrap();
    assert!(new.created);
    assert_ne!(new.room.id, old.id);
    assert_eq!(
        drain(&mut rx),
        vec![StoreEvent::RoomOpened {
            presence: never_seen(&new.room),
            room: new.room.clone()
        }]
    );
    // The closed room keeps its history; the new one starts empty at seq 1.
    assert_eq!(seqs(&all_history(repo, &old.id, "bob").await), vec![1]);
    assert_eq!(
        send(repo, &new.room.id, "bob", "c1", t(5)).await.seq,
        seq(1)
    );
    let again = repo.open_room(&pair("alice", "bob"), t(6)).await.unwrap();
    assert_eq!((again.room.id, again.created), (new.room.id.clone(), false));

    let listed = repo.rooms_of(&user("alice")).await.unwrap();
    let listed: Vec<_> = listed
        .iter()
        .map(|r| (r.room_id.clone(), r.closed))
        .collect();
    assert_eq!(
        listed,
        vec![(new.room.id, false), (old.id, true)],
        "newest first, closed ones too"
    );
}

pub async fn close_room_is_idempotent(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    let mut rx = repo.events().subscribe();
    let closed = repo.close_room(&room.id, t(5)).await.unwrap();
    assert_eq!(closed.closed_at, Some(t(5)));
    assert_eq!(closed.id, room.id);
    let again = repo.close_room(&room.id, t(9)).await.unwrap();
    assert_eq!(again.closed_at, Some(t(5)), "the first close time stays");
    assert_eq!(
        drain(&mut rx),
        vec![StoreEvent::RoomClosed {
            room: closed.clone()
        }],
        "one event"
    );
    assert_eq!(repo.room(&room.id).await, Ok(closed));
    expect_err(
        repo.close_room(&room_id("no-such-room"), t(9)).await,
        StoreError::UnknownRoom,
    );
}

pub async fn closed_room_refuses_append_but_allows_history_and_mark_seen(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    send(repo, &room.id, "alice", "c1", t(2)).await;
    send(repo, &room.id, "alice", "c2", t(3)).await;
    repo.close_room(&room.id, t(4)).await.unwrap();

    let mut rx = repo.events().subscribe();
    expect_err(
        repo.append(new_msg(&room.id, "bob", "c3", "too late"), t(5))
            .await,
        rule(DomainError::RoomClosed),
    );
    // A non-member still learns nothing about the room's state.
    expect_err(
        repo.append(new_msg(&room.id, "eve", "c3", "hi"), t(5))
            .await,
        rule(DomainError::NotAMember),
    );
    assert_eq!(drain(&mut rx), vec![]);

    assert_eq!(seqs(&all_history(repo, &room.id, "bob").await), vec![1, 2]);
    let seen = repo
        .mark_seen(&room.id, &user("bob"), seq(2), t(6))
        .await
        .unwrap();
    assert_eq!(seen.marked, vec![seq(1), seq(2)]);
    let summary = repo.room_summary(&room.id, &user("bob")).await.unwrap();
    assert_eq!(
        (summary.closed, summary.last_seq, summary.unread),
        (true, 2, 0)
    );
}

pub async fn append_assigns_gapless_seq(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    let other = open(repo, "alice", "carol", t(1)).await;
    for i in 1..=5u64 {
        let sender = if i % 2 == 0 { "bob" } else { "alice" };
        let m = send(repo, &room.id, sender, &format!("c{i}"), t(i as i64 + 1)).await;
        assert_eq!(m.seq, seq(i));
        assert_eq!(m.sent_at, t(i as i64 + 1), "sent_at is the store's now");
        assert_eq!(m.seen_at, None);
        assert_eq!(m.room_id, room.id);
    }
    // Seqs are per room.
    assert_eq!(send(repo, &other.id, "carol", "c1", t(9)).await.seq, seq(1));
    let stored = all_history(repo, &room.id, "alice").await;
    assert_eq!(seqs(&stored), vec![1, 2, 3, 4, 5]);
    assert_eq!(stored[2].text(), "message c3");
    assert_eq!(
        stored[2].sent_at,
        t(4),
        "microseconds survive the round trip"
    );
    let summary = repo.room_summary(&room.id, &user("alice")).await.unwrap();
    assert_eq!(summary.last_seq, 5);
}

pub async fn last_seqs_reports_rooms_with_messages(s: &TestStore) {
    let repo = &*s.repo;
    let busy = open(repo, "alice", "bob", t(1)).await;
    let quiet = open(repo, "alice", "carol", t(1)).await;
    for i in 1..=3u64 {
        send(repo, &busy.id, "alice", &format!("c{i}"), t(i as i64 + 1)).await;
    }
    let mut found = repo
        .last_seqs(&[busy.id.clone(), quiet.id.clone(), room_id("nope")])
        .await
        .unwrap();
    found.sort();
    // The quiet room (no messages) and the unknown one are left out.
    assert_eq!(found, vec![(busy.id.clone(), seq(3))]);
    assert!(repo.last_seqs(&[]).await.unwrap().is_empty());
}

pub async fn duplicate_append_returns_the_stored_row_without_an_event(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    let other = open(repo, "alice", "carol", t(1)).await;
    let first = send(repo, &room.id, "alice", "same", t(2)).await;

    let mut rx = repo.events().subscribe();
    let retry = repo
        .append(new_msg(&room.id, "alice", "same", "edited on retry"), t(3))
        .await;
    assert_eq!(
        retry,
        Ok(Appended::Duplicate(first.clone())),
        "the stored row, unchanged"
    );
    assert_eq!(drain(&mut rx), vec![], "no event for a duplicate");
    assert_eq!(
        all_history(repo, &room.id, "bob").await,
        vec![first.clone()],
        "no second row"
    );

    // The key is (room, sender, client_msg_id): another sender or room with the same id is new.
    assert_eq!(send(repo, &room.id, "bob", "same", t(4)).await.seq, seq(2));
    assert_eq!(
        send(repo, &other.id, "alice", "same", t(4)).await.seq,
        seq(1)
    );
    // A retry after the room closed still finds its message.
    repo.close_room(&room.id, t(5)).await.unwrap();
    let late_retry = repo
        .append(new_msg(&room.id, "alice", "same", "x"), t(6))
        .await;
    assert_eq!(late_retry, Ok(Appended::Duplicate(first)));
}

pub async fn append_batch_reports_each_message_in_input_order(s: &TestStore) {
    let repo = &*s.repo;
    let r1 = open(repo, "alice", "bob", t(1)).await;
    let r2 = open(repo, "carol", "dave", t(1)).await;
    let closed = open(repo, "alice", "erin", t(1)).await;
    repo.close_room(&closed.id, t(2)).await.unwrap();
    let earlier = send(repo, &r1.id, "bob", "b0", t(2)).await;

    let mut rx = repo.events().subscribe();
    let results = repo
        .append_batch(
            vec![
                new_msg(&r1.id, "alice", "a1", "one"),
                new_msg(&r1.id, "eve", "e1", "not a member"),
                new_msg(&room_id("missing"), "alice", "m1", "unknown room"),
                new_msg(&closed.id, "alice", "x1", "closed"),
                new_msg(&r2.id, "carol", "c1", "other room"),
                new_msg(&r1.id, "alice", "a1", "duplicate within the batch"),
                new_msg(&r1.id, "bob", "b0", "duplicate of a stored one"),
                new_msg(&r1.id, "bob", "b1", "two"),
            ],
            t(3),
        )
        .await
        .expect("append_batch");
    assert_eq!(results.len(), 8);
    let new_a1 = match &results[0] {
        Ok(Appended::New(m)) => m.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (new_a1.seq, new_a1.sent_at, new_a1.text()),
        (seq(2), t(3), "one")
    );
    assert_eq!(results[1], Err(rule(DomainError::NotAMember)));
    assert_eq!(results[2], Err(StoreError::UnknownRoom));
    assert_eq!(results[3], Err(rule(DomainError::RoomClosed)));
    assert!(matches!(&results[4], Ok(Appended::New(m)) if m.seq == seq(1) && m.room_id == r2.id));
    assert_eq!(results[5], Ok(Appended::Duplicate(new_a1.clone())));
    assert_eq!(results[6], Ok(Appended::Duplicate(earlier)));
    assert!(matches!(&results[7], Ok(Appended::New(m)) if m.seq == seq(3)));

    let events = drain(&mut rx);
    let committed: Vec<(String, u64)> = events
        .iter()
        .map(|e| match e {
            StoreEvent::MessageCommitted { members, message } => {
                assert!(members.contains(&message.sender_id));
                (message.room_id.to_string(), message.seq.get())
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        committed,
        vec![
            (r1.id.to_string(), 2),
            (r2.id.to_string(), 1),
            (r1.id.to_string(), 3)
        ],
        "one event per new message, in seq order per room"
    );
    assert_eq!(
        seqs(&all_history(repo, &r1.id, "alice").await),
        vec![1, 2, 3]
    );
    let s1 = repo.room_summary(&r1.id, &user("alice")).await.unwrap();
    assert_eq!(s1.last_seq, 3);
    assert_eq!(repo.append_batch(Vec::new(), t(4)).await, Ok(Vec::new()));
}

pub async fn events_are_published_after_commit(s: &TestStore) {
    let repo = &*s.repo;
    let mut rx = repo.events().subscribe();
    let room = open(repo, "alice", "bob", t(1)).await;
    let m = send(repo, &room.id, "alice", "c1", t(2)).await;
    let seen = repo
        .mark_seen(&room.id, &user("bob"), seq(1), t(3))
        .await
        .unwrap();
    let closed = repo.close_room(&room.id, t(4)).await.unwrap();
    let events = drain(&mut rx);
    assert_eq!(
        events,
        vec![
            StoreEvent::RoomOpened {
                presence: never_seen(&room),
                room: room.clone(),
            },
            StoreEvent::MessageCommitted {
                members: room.members.clone(),
                message: m.clone()
            },
            // A seen raises the delivered watermark with it, and says so first.
            StoreEvent::DeliveredMarked {
                room_id: room.id.clone(),
                members: room.members.clone(),
                reader: user("bob"),
                up_to: seq(1),
                delivered_at: t(3),
            },
            StoreEvent::SeenMarked {
                room_id: room.id.clone(),
                members: room.members.clone(),
                reader: user("bob"),
                up_to: seq(1),
                seen_at: seen.seen_at,
            },
            StoreEvent::RoomClosed { room: closed },
        ]
    );
    // Each event describes committed state: what it announced is readable right away.
    assert_eq!(
        all_history(repo, &room.id, "bob")
            .await
            .first()
            .map(|x| x.seq),
        Some(m.seq)
    );
    // Calls that change nothing publish nothing.
    repo.open_room(&pair("carol", "dave"), t(5)).await.unwrap();
    drain(&mut rx);
    let _ = repo
        .append(new_msg(&room.id, "alice", "c1", "dup"), t(6))
        .await;
    let _ = repo.mark_seen(&room.id, &user("bob"), seq(1), t(6)).await;
    let _ = repo.close_room(&room.id, t(6)).await;
    let _ = repo.append(new_msg(&room.id, "eve", "c9", "x"), t(6)).await;
    assert_eq!(drain(&mut rx), vec![]);
}

pub async fn history_pages(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    let batch = (1..=310)
        .map(|i| {
            new_msg(
                &room.id,
                if i % 3 == 0 { "bob" } else { "alice" },
                &format!("c{i}"),
                &format!("m{i}"),
            )
        })
        .collect();
    let results = repo.append_batch(batch, t(2)).await.unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(Appended::New(_)))));

    let id = &room.id;
    let page = |p: HistoryPage| async move {
        seqs(
            &repo
                .history(id, &user("bob"), p)
                .await
                .unwrap_or_else(|e| panic!("history {p:?}: {e}")),
        )
    };
    let range = |a: u64, b: u64| (a..=b).collect::<Vec<_>>();
    assert_eq!(
        page(HistoryPage::latest()).await,
        range(11, 310),
        "the newest 300, oldest first"
    );
    assert_eq!(
        page(HistoryPage::Latest { limit: 5 }).await,
        range(306, 310)
    );
    assert_eq!(
        page(HistoryPage::Latest { limit: 10_000 }).await.len(),
        300,
        "never more than the window"
    );
    assert_eq!(
        page(HistoryPage::Before {
            before: seq(11),
            limit: 300
        })
        .await,
        range(1, 10)
    );
    assert_eq!(
        page(HistoryPage::Before {
            before: seq(100),
            limit: 5
        })
        .await,
        range(95, 99)
    );
    assert_eq!(
        page(HistoryPage::Before {
            before: seq(1),
            limit: 300
        })
        .await,
        Vec::<u64>::new()
    );
    assert_eq!(
        page(HistoryPage::After {
            after: 0,
            limit: 300
        })
        .await,
        range(1, 300)
    );
    assert_eq!(
        page(HistoryPage::After {
            after: 300,
            limit: 300
        })
        .await,
        range(301, 310)
    );
    assert_eq!(
        page(HistoryPage::After {
            after: 305,
            limit: 2
        })
        .await,
        range(306, 307)
    );
    assert_eq!(
        page(HistoryPage::After {
            after: 310,
            limit: 300
        })
        .await,
        Vec::<u64>::new()
    );
    assert_eq!(
        page(HistoryPage::After {
            after: u64::MAX,
            limit: 300
        })
        .await,
        Vec::<u64>::new()
    );

    let full = repo
        .history(
            &room.id,
            &user("alice"),
            HistoryPage::After {
                after: 41,
                limit: 1,
            },
        )
        .await;
    let m = full.unwrap().pop().expect("message 42");
    assert_eq!(
        (m.text(), m.sender_id.as_str(), m.client_msg_id.as_str()),
        ("m42", "bob", "c42")
    );

    let empty = open(repo, "carol", "dave", t(1)).await;
    let none = repo
        .history(&empty.id, &user("carol"), HistoryPage::latest())
        .await;
    assert_eq!(none, Ok(Vec::new()));
}

pub async fn unread_counts(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    for i in 1..=3 {
        send(repo, &room.id, "alice", &format!("a{i}"), t(2)).await;
    }
    send(repo, &room.id, "bob", "b1", t(3)).await;
    send(repo, &room.id, "bob", "b2", t(3)).await;

    let id = &room.id;
    let unread = |who: &'static str| async move {
        let listed = repo.rooms_of(&user(who)).await.unwrap();
        let summary = repo.room_summary(id, &user(who)).await.unwrap();
        assert_eq!(
            listed,
            vec![summary.clone()],
            "rooms_of and room_summary agree"
        );
        assert_eq!(summary.last_seq, 5);
        assert_eq!(summary.members, vec![user("alice"), user("bob")]);
        summary.unread
    };
    assert_eq!(unread("bob").await, 3, "alice's messages bob has not seen");
    assert_eq!(unread("alice").await, 2);
    repo.mark_seen(&room.id, &user("bob"), seq(2), t(4))
        .await
        .unwrap();
    assert_eq!(unread("bob").await, 1);
    assert_eq!(
        unread("alice").await,
        2,
        "marking by bob changes nothing for alice"
    );
    repo.mark_seen(&room.id, &user("alice"), seq(5), t(4))
        .await
        .unwrap();
    assert_eq!(unread("alice").await, 0);
    assert_eq!(repo.rooms_of(&user("nobody")).await, Ok(Vec::new()));
}

pub async fn rooms_of_lists_newest_first(s: &TestStore) {
    let repo = &*s.repo;
    let r1 = open(repo, "alice", "bob", t(1)).await;
    let r3 = open(repo, "alice", "dave", t(3)).await;
    let r2 = open(repo, "alice", "carol", t(2)).await;
    open(repo, "bob", "carol", t(4)).await;
    repo.close_room(&r2.id, t(5)).await.unwrap();
    let listed = repo.rooms_of(&user("alice")).await.unwrap();
    let ids: Vec<_> = listed.iter().map(|r| r.room_id.clone()).collect();
    assert_eq!(ids, vec![r3.id, r2.id, r1.id]);
    assert_eq!(
        listed.iter().map(|r| r.closed).collect::<Vec<_>>(),
        vec![false, true, false]
    );
    assert!(
        listed
            .iter()
            .all(|r| r.members.contains(&user("alice")) && r.unread == 0 && r.last_seq == 0)
    );
    assert_eq!(repo.rooms_of(&user("carol")).await.map(|l| l.len()), Ok(2));
}

pub async fn mark_seen_marks_only_the_other_members_messages(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    send(repo, &room.id, "alice", "a1", t(2)).await;
    send(repo, &room.id, "alice", "a2", t(2)).await;
    send(repo, &room.id, "bob", "b3", t(2)).await;
    send(repo, &room.id, "alice", "a4", t(2)).await;

    let mut rx = repo.events().subscribe();
    let out = repo
        .mark_seen(&room.id, &user("bob"), seq(3), t(10))
        .await
        .unwrap();
    assert_eq!(out.up_to, seq(3));
    assert_eq!(out.marked, vec![seq(1), seq(2)]);
    assert_eq!(out.seen_at, t(10));
    assert_eq!(
        drain(&mut rx),
        vec![
            StoreEvent::DeliveredMarked {
                room_id: room.id.clone(),
                members: room.members.clone(),
                reader: user("bob"),
                // Only the other member's messages count: bob's own seq 3 is not delivered to him.
                up_to: seq(2),
                delivered_at: t(10),
            },
            StoreEvent::SeenMarked {
                room_id: room.id.clone(),
                members: room.members.clone(),
                reader: user("bob"),
                up_to: seq(3),
                seen_at: t(10),
            }
        ]
    );
    let seen: Vec<Option<Timestamp>> = all_history(repo, &room.id, "alice")
        .await
        .iter()
        .map(|m| m.seen_at)
        .collect();
    assert_eq!(
        seen,
        vec![Some(t(10)), Some(t(10)), None, None],
        "bob's own message and seq 4 stay unseen"
    );

    // A reader's own messages are never marked by them.
    let own = repo
        .mark_seen(&room.id, &user("alice"), seq(2), t(11))
        .await
        .unwrap();
    assert_eq!(
        own.marked,
        vec![],
        "alice sent 1 and 2: nothing for her to mark"
    );
    let own = repo
        .mark_seen(&room.id, &user("alice"), seq(4), t(12))
        .await
        .unwrap();
    assert_eq!(own.marked, vec![seq(3)]);
}

pub async fn mark_seen_sets_seen_at_once(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    send(repo, &room.id, "alice", "a1", t(2)).await;
    send(repo, &room.id, "alice", "a2", t(2)).await;
    let first = repo
        .mark_seen(&room.id, &user("bob"), seq(2), t(10))
        .await
        .unwrap();
    assert!(first.changed());

    let mut rx = repo.events().subscribe();
    let again = repo
        .mark_seen(&room.id, &user("bob"), seq(2), t(20))
        .await
        .unwrap();
    assert_eq!(again.marked, vec![]);
    assert_eq!(again.up_to, seq(2));
    let backwards = repo
        .mark_seen(&room.id, &user("bob"), seq(1), t(30))
        .await
        .unwrap();
    assert_eq!(
        backwards.marked,
        vec![],
        "a watermark going backwards marks nothing"
    );
    assert_eq!(backwards.up_to, seq(1));
    assert_eq!(drain(&mut rx), vec![], "nothing new, nothing published");
    let seen: Vec<_> = all_history(repo, &room.id, "bob")
        .await
        .iter()
        .map(|m| m.seen_at)
        .collect();
    assert_eq!(
        seen,
        vec![Some(t(10)), Some(t(10))],
        "the first seen_at stays"
    );

    // A later message is marked by a later watermark, with its own time.
    send(repo, &room.id, "alice", "a3", t(40)).await;
    let later = repo
        .mark_seen(&room.id, &user("bob"), seq(3), t(50))
        .await
        .unwrap();
    assert_eq!(later.marked, vec![seq(3)]);
    let seen: Vec<_> = all_history(repo, &room.id, "bob")
        .await
        .iter()
        .map(|m| m.seen_at)
        .collect();
    assert_eq!(seen, vec![Some(t(10)), Some(t(10)), Some(t(50))]);
}

pub async fn mark_seen_clamps_to_the_last_seq(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    let mut rx = repo.events().subscribe();
    let empty = repo
        .mark_seen(&room.id, &user("bob"), seq(7), t(2))
        .await
        .unwrap();
    assert_eq!(
        (empty.up_to, empty.marked.len()),
        (seq(7), 0),
        "no message yet: nothing to clamp to"
    );
    assert_eq!(drain(&mut rx), vec![]);

    send(repo, &room.id, "alice", "a1", t(2)).await;
    send(repo, &room.id, "alice", "a2", t(2)).await;
    let out = repo
        .mark_seen(&room.id, &user("bob"), seq(1000), t(3))
        .await
        .unwrap();
    assert_eq!(out.up_to, seq(2));
    assert_eq!(out.marked, vec![seq(1), seq(2)]);
    // Messages sent after the clamped watermark are not covered by it.
    send(repo, &room.id, "alice", "a3", t(4)).await;
    let summary = repo.room_summary(&room.id, &user("bob")).await.unwrap();
    assert_eq!(summary.unread, 1);
}

pub async fn seen_at_is_never_before_sent_at(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    send(repo, &room.id, "alice", "a1", t(10)).await;
    send(repo, &room.id, "alice", "a2", t(30)).await;
    // The reader's clock is behind the sender's (clock skew between nodes).
    let out = repo
        .mark_seen(&room.id, &user("bob"), seq(2), t(20))
        .await
        .unwrap();
    assert_eq!(out.marked, vec![seq(1), seq(2)]);
    assert_eq!(
        out.seen_at,
        t(30),
        "the outcome carries the latest seen_at stored"
    );
    let stored = all_history(repo, &room.id, "bob").await;
    let pairs: Vec<_> = stored.iter().map(|m| (m.sent_at, m.seen_at)).collect();
    assert_eq!(pairs, vec![(t(10), Some(t(20))), (t(30), Some(t(30)))]);
    assert!(stored.iter().all(|m| m.seen_at >= Some(m.sent_at)));
}

pub async fn non_member_is_refused_everywhere(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    send(repo, &room.id, "alice", "a1", t(2)).await;
    let mut rx = repo.events().subscribe();
    let eve = user("eve");
    expect_err(
        repo.append(new_msg(&room.id, "eve", "e1", "hi"), t(3))
            .await,
        rule(DomainError::NotAMember),
    );
    expect_err(
        repo.history(&room.id, &eve, HistoryPage::latest()).await,
        rule(DomainError::NotAMember),
    );
    expect_err(
        repo.mark_seen(&room.id, &eve, seq(1), t(3)).await,
        rule(DomainError::NotAMember),
    );
    expect_err(
        repo.room_summary(&room.id, &eve).await,
        rule(DomainError::NotAMember),
    );
    assert_eq!(repo.rooms_of(&eve).await, Ok(Vec::new()));
    assert_eq!(drain(&mut rx), vec![]);
    let stored = all_history(repo, &room.id, "bob").await;
    assert_eq!(
        (seqs(&stored), stored[0].seen_at),
        (vec![1], None),
        "nothing changed"
    );
}

pub async fn unknown_room_is_reported_everywhere(s: &TestStore) {
    let repo = &*s.repo;
    let missing = room_id("0193b7c2-5d1e-4a7b-9f00-aa11bb22cc33");
    expect_err(repo.room(&missing).await, StoreError::UnknownRoom);
    expect_err(
        repo.append(new_msg(&missing, "alice", "c1", "hi"), t(1))
            .await,
        StoreError::UnknownRoom,
    );
    expect_err(
        repo.history(&missing, &user("alice"), HistoryPage::latest())
            .await,
        StoreError::UnknownRoom,
    );
    expect_err(
        repo.mark_seen(&missing, &user("alice"), seq(1), t(1)).await,
        StoreError::UnknownRoom,
    );
    expect_err(
        repo.room_summary(&missing, &user("alice")).await,
        StoreError::UnknownRoom,
    );
    expect_err(
        repo.close_room(&missing, t(1)).await,
        StoreError::UnknownRoom,
    );
}

pub async fn bodies_are_counted_in_characters(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    // 160 emoji are 640 bytes; combining marks count on their own. Both backends' CHECK
    // constraints count characters as the domain does.
    for (i, text) in [
        "😀".repeat(160),
        "e\u{0301}".repeat(80),
        "line one\nline two".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        let m = repo
            .append(new_msg(&room.id, "alice", &format!("c{i}"), text), t(2))
            .await;
        let m = m.unwrap().into_message();
        assert_eq!(m.text(), text.as_str());
    }
    let stored: Vec<String> = all_history(repo, &room.id, "bob")
        .await
        .iter()
        .map(|m| m.text().to_owned())
        .collect();
    assert_eq!(
        stored,
        vec![
            "😀".repeat(160),
            "e\u{0301}".repeat(80),
            "line one\nline two".to_owned()
        ]
    );
}

pub async fn database_constraints_back_the_rules(s: &TestStore) {
    let repo = &*s.repo;
    let room = open(repo, "alice", "bob", t(1)).await;
    let closed = open(repo, "alice", "carol", t(1)).await;
    repo.close_room(&closed.id, t(2)).await.unwrap();
    let id = room.id.as_str();
    let insert = |room: &str, seq: i64, sender: &str, cmid: &str, body: &str, seen: &str| {
        format!(
            "INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, sent_at, seen_at) \
             VALUES ('{room}', {seq}, '{sender}', '{cmid}', '{body}', 100, {seen})"
        )
    };
    // Writers other than the store are held to the rules too.
    let refused = [
        ("non-member sender", insert(id, 1, "eve", "x", "hi", "NULL")),
        ("closed room", insert(closed.id.as_str(), 1, "alice", "x", "hi", "NULL")),
        ("unknown room", insert("nope", 1, "alice", "x", "hi", "NULL")),
        ("seq 0", insert(id, 0, "alice", "x", "hi", "NULL")),
        ("empty body", insert(id, 1, "alice", "x", "", "NULL")),
        ("161 characters", insert(id, 1, "alice", "x", &"é".repeat(161), "NULL")),
        ("seen before sent", insert(id, 1, "alice", "x", "hi", "99")),
        (
            "members out of order",
            "INSERT INTO rooms (id, member_a, member_b, created_at, last_seq) VALUES ('r', 'bob', 'alice', 1, 0)".into(),
        ),
        (
            "a second open room for a pair",
            "INSERT INTO rooms (id, member_a, member_b, created_at, last_seq) VALUES ('r', 'alice', 'bob', 1, 0)".into(),
        ),
    ];
    for (what, sql) in refused {
        assert!(
            exec_raw(&s.url, &sql).await.is_err(),
            "the database accepted: {what}"
        );
    }
    exec_raw(
        &s.url,
        &insert(id, 1, "alice", "x", &"é".repeat(160), "NULL"),
    )
    .await
    .expect("a valid row was refused");
    exec_raw(&s.url, &insert(id, 2, "bob", "x", "hi", "NULL"))
        .await
        .unwrap();
    assert!(
        exec_raw(&s.url, &insert(id, 3, "alice", "x", "again", "NULL"))
            .await
            .is_err(),
        "dedupe key"
    );
    assert!(
        exec_raw(&s.url, &insert(id, 2, "alice", "y", "same seq", "NULL"))
            .await
            .is_err(),
        "seq key"
    );
}

pub async fn corrupt_rows_are_reported(s: &TestStore) {
    let repo = &*s.repo;
    let good = open(repo, "alice", "bob", t(1)).await;
    exec_raw(
        &s.url,
        "INSERT INTO rooms (id, member_a, member_b, created_at, last_seq) VALUES ('bad-room', 'alice', 'not valid!', 1, 0)",
    )
    .await
    .unwrap();
    match repo.rooms_of(&user("alice")).await {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("bad-room"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        repo.room(&room_id("bad-room")).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(
        repo.room(&good.id).await,
        Ok(good),
        "other rows still read fine"
    );
}

pub async fn reopening_keeps_the_data(s: &TestStore) {
    let room = open(&*s.repo, "alice", "bob", t(1)).await;
    let m = send(&*s.repo, &room.id, "alice", "c1", t(2)).await;
    // A second store on the same database (a restart, or a second server): migrations are
    // already applied and the data is there.
    let config = StoreConfig::new(&s.url).unwrap();
    let again = chat_store::open(&config).await.expect("reopen");
    assert_eq!(all_history(&*again, &room.id, "bob").await, vec![m]);
    assert_eq!(send(&*again, &room.id, "bob", "c2", t(3)).await.seq, seq(2));
    assert_eq!(
        seqs(&all_history(&*s.repo, &room.id, "bob").await),
        vec![1, 2]
    );
}

/// 8 tasks append 200 messages each to one room at once.
pub async fn concurrent_appends_to_one_room(s: &TestStore) {
    const TASKS: usize = 8;
    const EACH: usize = 200;
    let room = open(&*s.repo, "alice", "bob", t(1)).await;
    let mut rx = s.repo.events().subscribe();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let repo: Arc<dyn Repository> = s.repo.clone();
        let room = room.id.clone();
        tasks.spawn(async move {
            let sender = if task % 2 == 0 { "alice" } else { "bob" };
            let mut mine = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let m = send(&*repo, &room, sender, &format!("t{task}-{i}"), t(2)).await;
                mine.push(m.seq.get());
            }
            (task, mine)
        });
    }
    let mut all = Vec::with_capacity(TASKS * EACH);
    while let Some(joined) = tasks.join_next().await {
        let (task, mine) = joined.unwrap();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "task {task}'s seqs increase: {mine:?}"
        );
        all.extend(mine);
    }
    all.sort_unstable();
    let expected: Vec<u64> = (1..=(TASKS * EACH) as u64).collect();
    assert_eq!(
        all, expected,
        "seqs are exactly 1..=1600: no gap, no duplicate"
    );
    assert_eq!(
        seqs(&all_history(&*s.repo, &room.id, "alice").await),
        expected
    );

    let published: Vec<u64> = drain(&mut rx)
        .iter()
        .map(|e| match e {
            StoreEvent::MessageCommitted { message, .. } => message.seq.get(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        published, expected,
        "events are published in seq (commit) order"
    );
}

/// Batches that touch the same rooms in different orders run concurrently without deadlock
/// and without losing a message.
pub async fn concurrent_batches_over_shared_rooms(s: &TestStore) {
    const TASKS: usize = 4;
    const ROUNDS: usize = 15;
    let mut rooms = Vec::new();
    for other in ["b", "c", "d", "e", "f"] {
        rooms.push(open(&*s.repo, "a", other, t(1)).await.id);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let repo = s.repo.clone();
        let mut order = rooms.clone();
        if task % 2 == 1 {
            order.reverse();
        }
        order.rotate_left(task);
        tasks.spawn(async move {
            for round in 0..ROUNDS {
                let batch = order
                    .iter()
                    .flat_map(|r| {
                        (0..2).map(move |k| new_msg(r, "a", &format!("{task}-{round}-{k}"), "hi"))
                    })
                    .collect();
                let results = repo.append_batch(batch, t(2)).await.expect("batch");
                assert!(
                    results.iter().all(|r| matches!(r, Ok(Appended::New(_)))),
                    "{results:?}"
                );
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let expected: Vec<u64> = (1..=(TASKS * ROUNDS * 2) as u64).collect();
    for room in &rooms {
        let history: Vec<Message> = all_history(&*s.repo, room, "a").await;
        assert_eq!(seqs(&history), expected);
    }
}

/// A batch larger than one multi-row INSERT (SQLite: 500 rows; PostgreSQL binds arrays) is
/// still one all-or-nothing batch.
pub async fn large_batches_span_several_inserts(s: &TestStore) {
    let repo = &*s.repo;
    let rooms = [
        open(repo, "alice", "bob", t(1)).await.id,
        open(repo, "alice", "carol", t(1)).await.id,
        open(repo, "alice", "dave", t(1)).await.id,
    ];
    let batch: Vec<_> = (0..2_500)
        .map(|i| new_msg(&rooms[i % 3], "alice", &format!("c{i}"), &format!("m{i}")))
        .collect();
    let mut rx = repo.events().subscribe();
    let results = repo.append_batch(batch.clone(), t(2)).await.unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(Appended::New(_)))));
    assert_eq!(drain(&mut rx).len(), 2_500);
    for (k, room) in rooms.iter().enumerate() {
        let expected = if k == 0 { 834 } else { 833 };
        assert_eq!(
            seqs(&all_history(repo, room, "alice").await),
            (1..=expected).collect::<Vec<u64>>()
        );
    }
    // The same batch again: every message is a duplicate, nothing is stored or published.
    let again = repo.append_batch(batch, t(3)).await.unwrap();
    let dup_seqs: Vec<u64> = again
        .iter()
        .map(|r| match r {
            Ok(Appended::Duplicate(m)) => m.seq.get(),
            other => panic!("expected a duplicate, got {other:?}"),
        })
        .collect();
    let first_seqs: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|a| a.message().seq.get())
        .collect();
    assert_eq!(dup_seqs, first_seqs);
    assert_eq!(drain(&mut rx), vec![]);
    let summary = repo.room_summary(&rooms[0], &user("bob")).await.unwrap();
    assert_eq!((summary.last_seq, summary.unread), (834, 834));
}

/// The presence a `RoomOpened` event carries for two users never connected.
fn never_seen(room: &chat_domain::Room) -> Vec<(chat_domain::UserId, chat_domain::Presence)> {
    room.members
        .as_slice()
        .iter()
        .map(|u| (u.clone(), chat_domain::Presence::default()))
        .collect()
}

/// Retries of one message arriving at once (a client re-sending on several connections, or
/// on a reconnect while the first send is still queued) on concurrent writers: exactly one is
/// stored, every attempt answers with it, and none fails. On PostgreSQL the dedupe read is
/// pipelined with the room lock and can run before it on a connection's first use; the
/// `messages_dedupe` constraint and the retry in `append_batch` must absorb that.
pub async fn concurrent_retries_of_one_message_store_it_once(s: &TestStore) {
    const ATTEMPTS: usize = 4;
    const MESSAGES: usize = 40;
    let room = open(&*s.repo, "alice", "bob", t(1)).await;
    let mut rx = s.repo.events().subscribe();
    for i in 0..MESSAGES {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..ATTEMPTS {
            let repo = s.repo.clone();
            let room = room.id.clone();
            tasks.spawn(async move {
                repo.append(new_msg(&room, "alice", &format!("r{i}"), "again"), t(2))
                    .await
            });
        }
        let mut new = Vec::new();
        let mut seqs_seen = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined.unwrap() {
                Ok(Appended::New(m)) => {
                    seqs_seen.push(m.seq.get());
                    new.push(m);
                }
                Ok(Appended::Duplicate(m)) => seqs_seen.push(m.seq.get()),
                Err(e) => panic!("attempt at r{i} failed: {e:?}"),
            }
        }
        assert_eq!(new.len(), 1, "r{i} is stored exactly once");
        assert!(
            seqs_seen.iter().all(|&q| q == (i + 1) as u64),
            "every attempt at r{i} answers with seq {}: {seqs_seen:?}",
            i + 1
        );
    }
    let expected: Vec<u64> = (1..=MESSAGES as u64).collect();
    assert_eq!(
        seqs(&all_history(&*s.repo, &room.id, "alice").await),
        expected
    );
    assert_eq!(
        drain(&mut rx).len(),
        MESSAGES,
        "one event per stored message"
    );
}
