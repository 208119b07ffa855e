//! What the engines' tests share: node ids, notices, and bounded waits on an engine's
//! channel. Each engine's tests run against a real server (PostgreSQL, nats-server).

use std::time::Duration;

use chat_domain::{RoomId, Seq, UserId};
use tokio::sync::mpsc;

use super::{Engine, Incoming, Item, Notice};

/// Every wait in the engines' tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(15);

/// A node id of its own per test: tests share the servers.
pub fn node(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4())
}

/// A notice of `node` announcing messages `i..=i+1` of one room per `i` in `rooms`.
pub fn notice(node: &str, rooms: std::ops::RangeInclusive<u64>) -> Notice {
    Notice {
        node: node.to_string(),
        items: rooms
            .map(|i| Item::Messages {
                room: RoomId::new(format!("0b6c3f2e-8f3e-4a7e-9d59-{i:012}")).unwrap(),
                members: [UserId::new("alice").unwrap(), UserId::new("bob").unwrap()],
                first: Seq::new(i).unwrap(),
                last: Seq::new(i + 1).unwrap(),
                messages: Vec::new(),
            })
            .collect(),
    }
}

/// The next `Reconnected`, or notice of one of `from`, within [`WAIT`] (other tests may
/// publish on the same server).
pub async fn next(rx: &mut mpsc::Receiver<Incoming>, from: &[&str]) -> Incoming {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let incoming = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing from {from:?} within {WAIT:?}"))
            .expect("the engine closed its channel");
        match &incoming {
            Incoming::Notice(n) if !from.contains(&n.node.as_str()) => continue,
            _ => return incoming,
        }
    }
}

pub async fn next_notice(rx: &mut mpsc::Receiver<Incoming>, from: &[&str]) -> Notice {
    match next(rx, from).await {
        Incoming::Notice(n) => n,
        Incoming::Reconnected => panic!("unexpected Reconnected"),
    }
}

pub async fn reconnected(rx: &mut mpsc::Receiver<Incoming>) {
    match next(rx, &[]).await {
        Incoming::Reconnected => {}
        Incoming::Notice(n) => panic!("expected Reconnected, got {n:?}"),
    }
}

/// A notice from A reaches B; A never gets its own back (A sees B's notice next, though it
/// published its own first). The engines' shared routing check.
pub async fn routes_to_the_other_node_only(
    a: &str,
    engine_a: &mut Engine,
    b: &str,
    engine_b: &mut Engine,
) {
    let sent = notice(a, 1..=3);
    engine_a.bus.publish(&sent).await.unwrap();
    assert_eq!(next_notice(&mut engine_b.incoming, &[a, b]).await, sent);
    let marker = notice(b, 7..=7);
    engine_b.bus.publish(&marker).await.unwrap();
    assert_eq!(next_notice(&mut engine_a.incoming, &[a, b]).await, marker);
}

/// A notice too large for one payload arrives whole and in order.
pub async fn a_large_notice_arrives_whole(a: &str, engine_a: &Engine, engine_b: &mut Engine) {
    let sent = notice(a, 1..=600);
    assert!(
        sent.to_payloads().len() > 3,
        "the notice should need several payloads"
    );
    engine_a.bus.publish(&sent).await.unwrap();
    let mut items = Vec::new();
    while items.len() < sent.items.len() {
        items.extend(next_notice(&mut engine_b.incoming, &[a]).await.items);
    }
    assert_eq!(items, sent.items);
}
