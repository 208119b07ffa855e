//! The store of webhooks (`chat_store::webhooks`) on both backends: when a burst is due,
//! that a burst makes one delivery (also with two stores racing on one PostgreSQL database),
//! the presence rule of `CHAT_NOTIFY_AFTER_SECS=0`, claims and leases, and the sweep.
//! Times are passed in (the store reads no clock), so nothing here sleeps.
//!
//! PostgreSQL tests need `DATABASE_URL` (see `chat_store::testing`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "conformance/support.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use chat_domain::{RoomId, Timestamp};
use chat_store::Repository;
use chat_store::testing::TestStore;
use chat_store::webhooks::{BurstKey, Candidate, DueBurst, DueRule, WebhookStore};
use support::*;

const N: DueRule = DueRule {
    notify_after: Duration::from_secs(10),
    offline_only: false,
};
const AT_COMMIT: DueRule = DueRule {
    notify_after: Duration::ZERO,
    offline_only: true,
};

/// The store and its store of webhooks, opened together (on SQLite: one store).
async fn open_both(store: &TestStore) -> (Arc<dyn Repository>, Arc<dyn WebhookStore>) {
    chat_store::open_with_webhooks(&store.config())
        .await
        .expect("open the store with its store of webhooks")
}

fn candidate(room: &RoomId, sender: &str) -> Candidate {
    Candidate {
        room_id: room.clone(),
        sender_id: user(sender),
    }
}

fn burst(room: &RoomId, sender: &str, recipient: &str) -> DueBurst {
    DueBurst {
        room_id: room.clone(),
        sender_id: user(sender),
        recipient_id: user(recipient),
    }
}

/// Micros of a test time, for raw SQL.
fn us(at: Timestamp) -> i64 {
    at.unix_micros()
}

macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(TestStore::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(TestStore::postgres().await).await;
                }
            )*
        }
    };
}

both_backends!(
    a_burst_is_due_after_n_and_makes_one_delivery,
    the_next_burst_starts_once_the_last_is_seen,
    messages_seen_in_time_make_no_burst,
    deleted_messages_and_closed_rooms_are_left_out,
    at_commit_only_recipients_without_a_live_connection,
    the_scan_finds_rooms_with_unseen_messages,
    claims_lease_and_record_outcomes,
    the_sweep_finds_open_bursts_and_prunes_seen_ones,
    the_scan_cursor_only_moves_forward,
);

async fn a_burst_is_due_after_n_and_makes_one_delivery(store: TestStore) {
    let (repo, hooks) = open_both(&store).await;
    let room = open(repo.as_ref(), "alice", "bob", t(0)).await.id;
    for (i, at) in [1, 2, 3].into_iter().enumerate() {
        send(repo.as_ref(), &room, "alice", &format!("a{i}"), t(at)).await;
    }
    // bob's own message is not his to be notified of.
    send(repo.as_ref(), &room, "bob", "b1", t(4)).await;
    let c = [candidate(&room, "alice"), candidate(&room, "bob")];

    assert!(hooks.due(&c, t(10), N).await.unwrap().is_empty(), "not yet");
    let due = hooks.due(&c, t(11), N).await.unwrap();
    let ab = burst(&room, "alice", "bob");
    assert_eq!(due, vec![ab.clone()], "alice's first message is 10 s old");

    let delivery = hooks
        .open_burst(&ab, t(12), N)
        .await
        .unwrap()
        .expect("a delivery");
    assert_eq!(
        (
            delivery.unseen_count,
            u64::from(delivery.last_seq),
            delivery.last_sent_at,
            delivery.created_at,
            delivery.attempts,
        ),
        (3, 3, t(3), t(12), 0)
    );
    assert_eq!(delivery.recipient_id, user("bob"));
    assert_eq!(delivery.sender_id, user("alice"));
    assert!(
        hooks.open_burst(&ab, t(12), N).await.unwrap().is_none(),
        "one delivery per burst"
    );
    assert!(hooks.due(&c, t(13), N).await.unwrap().is_empty());
    // More messages in the same burst (nothing seen yet) make no second delivery.
    send(repo.as_ref(), &room, "alice", "a9", t(14)).await;
    // (bob's message to alice is a burst of its own.)
    assert_eq!(
        hooks.due(&c, t(60), N).await.unwrap(),
        vec![burst(&room, "bob", "alice")]
    );
    assert_eq!(hooks.counts().await.unwrap().pending, 1);
}

async fn the_next_burst_starts_once_the_last_is_seen(store: TestStore) {
    let (repo, hooks) = open_both(&store).await;
    let room = open(repo.as_ref(), "alice", "bob", t(0)).await.id;
    let ab = burst(&room, "alice", "bob");
    let c = [candidate(&room, "alice")];
    send(repo.as_ref(), &room, "alice", "a1", t(1)).await;
    send(repo.as_ref(), &room, "alice", "a2", t(2)).await;
    hooks.open_burst(&ab, t(11), N).await.unwrap().unwrap();
    // A third message while the first two are unseen: same burst.
    send(repo.as_ref(), &room, "alice", "a3", t(15)).await;
    assert!(hooks.due(&c, t(40), N).await.unwrap().is_empty());
    // bob marks the notified ones seen (not the third): a new burst, due N after that mark.
    repo.mark_seen(&room, &user("bob"), seq(2), t(50))
        .await
        .unwrap();
    assert!(hooks.due(&c, t(59), N).await.unwrap().is_empty());
    assert_eq!(hooks.due(&c, t(60), N).await.unwrap(), vec![ab.clone()]);
    let second = hooks.open_burst(&ab, t(60), N).await.unwrap().unwrap();
    assert_eq!((second.unseen_count, u64::from(second.last_seq)), (1, 3));
    // Everything seen, then a new message: a third burst, N after that message.
    repo.mark_seen(&room, &user("bob"), seq(3), t(61))
        .await
        .unwrap();
    send(repo.as_ref(), &room, "alice", "a4", t(70)).await;
    assert!(hooks.due(&c, t(79), N).await.unwrap().is_empty());
    let third = hooks.open_burst(&ab, t(80), N).await.unwrap().unwrap();
    assert_eq!((third.unseen_count, u64::from(third.last_seq)), (1, 4));
}

async fn messages_seen_in_time_make_no_burst(store: TestStore) {
    let (repo, hooks) = open_both(&store).await;
    let room = open(repo.as_ref(), "alice", "bob", t(0)).await.id;
    send(repo.as_ref(), &room, "alice", "a1", t(1)).await;
    send(repo.as_ref(), &room, "alice", "a2", t(2)).await;
    repo.mark_seen(&room, &user("bob"), seq(2), t(5))
        .await
        .unwrap();
    let c = [candidate(&room, "alice")];
    assert!(hooks.due(&c, t(100), N).await.unwrap().is_empty());
    assert!(
        hooks
            .open_burst(&burst(&room, "alice", "bob"), t(100), N)
            .await
            .unwrap()
            .is_none()
    );
}

async fn deleted_messages_and_closed_rooms_are_left_out(store: TestStore) {
    let (repo, hooks) = open_both(&store).await;
    let room = open(repo.as_ref(), "alice", "bob", t(0)).await.id;
    send(repo.as_ref(), &room, "alice", "a1", t(1)).await;
    send(repo.as_ref(), &room, "alice", "a2", t(2)).await;
    // Protocol 1.1's tombstone: the body goes, deleted_at is set.
    exec_raw(
        &store.url,
        &format!(
            "UPDATE messages SET body = NULL, deleted_at = {} WHERE room_id = '{room}' AND seq = 2",
            us(t(3))
        ),
    )
    .await
    .unwrap();
    let d = hooks
        .open_burst(&burst(&room, "alice", "bob"), t(20), N)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.unseen_count, u64::from(d.last_seq)), (1, 1));
    assert_eq!(
        hooks.message_body(&room, seq(1)).await.unwrap().as_deref(),
        Some("message a1")
    );
    assert_eq!(hooks.message_body(&room, seq(2)).await.unwrap(), None);

    let closed = open(repo.as_ref(), "carol", "dave", t(0)).await.id;
    send(repo.as_ref(), &closed, "carol", "c1", t(1)).await;
    repo.close_room(&closed, t(2)).await.unwrap();
    assert!(
        hooks
            .due(&[candidate(&closed, "carol")], t(60), N)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn at_commit_only_recipients_without_a_live_connection(store: TestStore) {
    let (repo, hooks) = open_both(&store).await;
    let room = open(repo.as_ref(), "alice", "bob", t(0)).await.id;
    send(repo.as_ref(), &room, "alice", "a1", t(100)).await;
    let c = [candidate(&room, "alice")];
    let ab = burst(&room, "alice", "bob");
    // bob connected on a node that beat 5 s ago: no webhook at commit.
    exec_raw(
        &store.url,
        &format!(
            "INSERT INTO presence_nodes (node_id, heartbeat_at) VALUES ('n1', {}); \
             INSERT INTO presence_connections (node_id, user_id, visible) VALUES ('n1', 'bob', {});",
            us(t(95)),
            if store.url.starts_with("postgres") { "false" } else { "0" }
        ),
    )
    .await
    .unwrap();
    assert!(hooks.due(&c, t(100), AT_COMMIT).await.unwrap().is_empty());
    // With N > 0 a connection does not matter (a phone in a pocket is connected).
    assert_eq!(hooks.due(&c, t(110), N).await.unwrap(), vec![ab.clone()]);
    // The node stopped beating 20 s ago: bob counts as offline.
    assert_eq!(
        hooks.due(&c, t(116), AT_COMMIT).await.unwrap(),
        vec![ab.clone()]
    );
    // bob connected elsewhere, on a live node: not due; gone from there: due at once.
    exec_raw(
        &store.url,
        &format!(
            "INSERT INTO presence_nodes (node_id, heartbeat_at) VALUES ('n2', {}); \
             INSERT INTO presence_connections (node_id, user_id, visible) VALUES ('n2', 'bob', {});",
            us(t(114)),
            if store.url.starts_with("postgres") { "true" } else { "1" }
        ),
    )
    .await
    .unwrap();
    assert!(hooks.due(&c, t(116), AT_COMMIT).await.unwrap().is_empty());
    assert!(
        hooks
            .open_burst(&ab, t(116), AT_COMMIT)
            .await
            .unwrap()
            .is_none()
    );
    exec_raw(
        &store.url,
        "DELETE FROM presence_connections WHERE user_id = 'bob'",
    )
    .await
    .unwrap();
    let d = hooks
        .open_burst(&ab, t(116), AT_COMMIT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.unseen_count, 1);
}

async fn the_scan_finds_rooms_with_unseen_messages(store: TestStore) {
    let (repo, hooks) = open_both(&store).await;
    let r1 = open(repo.as_ref(), "alice", "bob", t(0)).await.id;
    let r2 = open(repo.as_ref(), "carol", "dave", t(0)).await.id;
    send(repo.as_ref(), &r1, "alice", "a1", t(1)).await;
    send(repo.as_ref(), &r1, "alice", "a2", t(2)).await;
    send(repo.as_ref(), &r2, "dave", "d1", t(3)).await;
    send(repo.as_ref(), &r1, "bob", "b1", t(4)).await;
    send(repo.as_ref(), &r2, "carol", "c1", t(5)).await;
    repo.mark_seen(&r2, &user("dave"), seq(2), t(6))
        .await
        .unwrap();

    let mut found = hooks.unseen_between(t(0), t(10)).await.unwrap();
    found.sort();
    let mut expected = vec![
        candidate(&r1, "alice"),
        candidate(&r1, "bob"),
        candidate(&r2, "dave"),
    ];
    expected.sort();
    assert_eq!(
        found, expected,
        "carol's message was seen; alice's two count once"
    );
    // (after, up_to]: both ends as documented.
    let mut window = hooks.unseen_between(t(1), t(3)).await.unwrap();
    window.sort();
    let mut expected = vec![candidate(&r1, "alice"), candidate(&r2, "dave")];
    expected.sort();
    assert_eq!(window, expected);
    assert!(hooks.unseen_between(t(5), t(10)).await.unwrap().is_empty());
}

async fn claims_lease_and_record_outcomes(store: TestStore) {
    let (repo, hooks) = open_both(&store).await;
    let mut ids = Vec::new();
    for (a, b) in [("u1", "v1"), ("u2", "v2"), ("u3", "v3")] {
        let room = open(repo.as_ref(), a, b, t(0)).await.id;
        send(repo.as_ref(), &room, a, "m", t(1)).await;
        let d = hooks
            .open_burst(&burst(&room, a, b), t(20), N)
            .await
            .unwrap()
            .unwrap();
        ids.push(d.delivery_id);
    }
    assert!(
        hooks.claim(t(19), t(80), 10).await.unwrap().is_empty(),
        "not due before"
    );
    let first = hooks.claim(t(20), t(80), 2).await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(
        first
            .iter()
            .all(|d| d.attempts == 1 && d.locked_until == Some(t(80)))
    );
    let second = hooks.claim(t(21), t(81), 10).await.unwrap();
    assert_eq!(second.len(), 1, "the claimed ones are leased");
    assert!(hooks.claim(t(22), t(82), 10).await.unwrap().is_empty());

    let (a, b) = (&first[0], &first[1]);
    let c = &second[0];
    hooks
        .delivered(std::slice::from_ref(&a.delivery_id))
        .await
        .unwrap();
    assert!(
        !hooks
            .retry_at(&b.delivery_id, t(999), t(30), "500")
            .await
            .unwrap(),
        "a lease that is not the delivery's records nothing"
    );
    assert!(
        hooks
            .retry_at(&b.delivery_id, t(80), t(30), "HTTP 500")
            .await
            .unwrap()
    );
    assert!(
        hooks
            .give_up(&c.delivery_id, t(81), t(40), "timed out")
            .await
            .unwrap()
    );
    let counts = hooks.counts().await.unwrap();
    assert_eq!((counts.pending, counts.failed), (1, 1));

    // The retry is due at its time, with its error kept; the failed one never again.
    assert!(hooks.claim(t(29), t(90), 10).await.unwrap().is_empty());
    let retried = hooks.claim(t(30), t(90), 10).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].delivery_id, b.delivery_id);
    assert_eq!(retried[0].attempts, 2);
    assert_eq!(retried[0].last_error.as_deref(), Some("HTTP 500"));
    // A sender that died: its lease ends and another claims the delivery again.
    let reclaimed = hooks.claim(t(90), t(150), 10).await.unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].attempts, 3);

    let failed = hooks.failed(10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].delivery_id, c.delivery_id);
    assert_eq!(failed[0].failed_at, Some(t(40)));
    assert_eq!(failed[0].last_error.as_deref(), Some("timed out"));
    assert!(ids.contains(&failed[0].delivery_id));
}

async fn the_sweep_finds_open_bursts_and_prunes_seen_ones(store: TestStore) {
    let (repo, hooks) = open_both(&store).await;
    let r1 = open(repo.as_ref(), "alice", "bob", t(0)).await.id;
    let r2 = open(repo.as_ref(), "carol", "dave", t(0)).await.id;
    send(repo.as_ref(), &r1, "alice", "a1", t(1)).await;
    send(repo.as_ref(), &r2, "carol", "c1", t(1)).await;
    hooks
        .open_burst(&burst(&r1, "alice", "bob"), t(20), N)
        .await
        .unwrap()
        .unwrap();
    hooks
        .open_burst(&burst(&r2, "carol", "dave"), t(20), N)
        .await
        .unwrap()
        .unwrap();
    repo.mark_seen(&r2, &user("dave"), seq(1), t(30))
        .await
        .unwrap();

    let mut open_ones = Vec::new();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = hooks.burst_page(after, 1).await.unwrap();
        open_ones.extend(page.open);
        seen.extend(page.seen);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(open_ones, vec![candidate(&r1, "alice")]);
    let dave = BurstKey {
        room_id: r2.clone(),
        recipient_id: user("dave"),
    };
    assert_eq!(seen, vec![dave.clone()]);
    let bob = BurstKey {
        room_id: r1.clone(),
        recipient_id: user("bob"),
    };
    assert_eq!(
        hooks.prune_bursts(&[dave, bob]).await.unwrap(),
        1,
        "bob still has an unseen message: his row stays"
    );
    // Pruned: carol's next message is a new burst from notified 0.
    send(repo.as_ref(), &r2, "carol", "c2", t(40)).await;
    let d = hooks
        .open_burst(&burst(&r2, "carol", "dave"), t(50), N)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.unseen_count, u64::from(d.last_seq)), (1, 2));
}

async fn the_scan_cursor_only_moves_forward(store: TestStore) {
    let (_repo, hooks) = open_both(&store).await;
    assert_eq!(hooks.scan_cursor().await.unwrap(), None);
    hooks.save_scan_cursor(t(10)).await.unwrap();
    hooks.save_scan_cursor(t(5)).await.unwrap();
    assert_eq!(hooks.scan_cursor().await.unwrap(), Some(t(10)));
    hooks.save_scan_cursor(t(12)).await.unwrap();
    assert_eq!(hooks.scan_cursor().await.unwrap(), Some(t(12)));
}

/// Two nodes (two stores, two pools) on one PostgreSQL database find the same bursts at the
/// same moment and race to open them, in batches given in opposite orders: each burst makes
/// exactly one delivery (and the batches' row locks, taken in key order, never deadlock), and
/// concurrent claims never hand one delivery to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_nodes_racing_make_one_delivery_per_burst() {
    let store = TestStore::postgres().await;
    let (repo, a) = open_both(&store).await;
    let (_, b) = open_both(&store).await;
    let mut bursts = Vec::new();
    for i in 0..120 {
        let (s, r) = (format!("s{i}"), format!("r{i}"));
        let room = open(repo.as_ref(), &s, &r, t(0)).await.id;
        send(repo.as_ref(), &room, &s, "m1", t(1)).await;
        send(repo.as_ref(), &room, &s, "m2", t(2)).await;
        bursts.push(burst(&room, &s, &r));
    }
    let race = |hooks: Arc<dyn WebhookStore>, bursts: Vec<DueBurst>, batch: usize| {
        tokio::spawn(async move {
            let mut made = Vec::new();
            for chunk in bursts.chunks(batch) {
                made.extend(hooks.open_bursts(chunk, t(20), N).await.unwrap());
            }
            made
        })
    };
    let mut reversed = bursts.clone();
    reversed.reverse();
    let (x, y) = (
        race(a.clone(), bursts.clone(), 120),
        race(b.clone(), reversed, 7),
    );
    let (x, y) = (x.await.unwrap(), y.await.unwrap());
    assert_eq!(
        x.len() + y.len(),
        120,
        "one delivery per burst: {} + {}",
        x.len(),
        y.len()
    );
    assert!(x.iter().chain(&y).all(|d| d.unseen_count == 2));
    assert_eq!(a.counts().await.unwrap().pending, 120);

    let claim = |hooks: Arc<dyn WebhookStore>| {
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = hooks.claim(t(21), t(90), 3).await.unwrap();
                if got.is_empty() {
                    break mine;
                }
                mine.extend(got.into_iter().map(|d| d.delivery_id));
            }
        })
    };
    let (x, y) = (claim(a.clone()), claim(b.clone()));
    let (mut x, y) = (x.await.unwrap(), y.await.unwrap());
    assert_eq!(
        x.len() + y.len(),
        120,
        "every delivery claimed once: {} + {}",
        x.len(),
        y.len()
    );
    x.extend(y);
    x.sort();
    x.dedup();
    assert_eq!(x.len(), 120, "no delivery claimed by both");
    a.delivered(&x).await.unwrap();
    assert_eq!(a.counts().await.unwrap().pending, 0);
}
