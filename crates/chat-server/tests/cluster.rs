//! A cluster end to end: several real chat-server processes on ONE PostgreSQL database, telling
//! each other about commits over a real bus, with real WebSocket clients on different nodes.
//! Every test runs once per engine (`postgres`: LISTEN/NOTIFY; `nats`: a real nats-server),
//! which the names show (`…::postgres`, `…::nats`), except one NATS-only test
//! (`nats_a_late_notice_…`) that needs to hold notices back, which only NATS allows from
//! outside.
//!
//! The NATS engine needs `NATS_URL` (scripts/test.sh starts a throwaway nats-server and sets
//! it); without it a NATS test fails and says so, it never skips. The tests that restart or
//! pause NATS start a nats-server of their own (scripts/nats-tmp.sh), so that doing it disturbs
//! no other test running at the same time, and stop it by its folder (the script signals only
//! the PID of that folder's server).
//!
//! What every connection receives is checked as it arrives: within a room, the next `message`
//! frame must carry exactly the next seq (so a gap, a duplicate or an overtaking message fails
//! at once, naming the connection), unless the connection is a reconnected client that also
//! reads history and re-sends (then only the union is checked, as such a client de-duplicates
//! by seq). Waits are bounded (`common::WAIT` per frame); the quiet windows at the ends of
//! tests check that nothing more (a late duplicate) arrives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Client, Database, Db, JWT_SECRET, Next, SERVICE_KEY, Server, WAIT};
use serde_json::{Value, json};
use tokio::sync::watch;

/// No per-user send limit in the way of bursts (the default is a burst of 20, then 5/s).
const UNLIMITED: [(&str, &str); 2] = [
    ("CHAT_RATE_PER_SEC", "100000"),
    ("CHAT_RATE_BURST", "100000"),
];

/// User ids of one test's own: tests run at the same time on one NATS server, and a
/// notice reaches every node subscribed there, so two tests with the same user ids would see
/// each other's events (see `two_clusters_on_one_nats_server_do_not_see_each_other`).
struct Who {
    alice: String,
    bob: String,
    carol: String,
    dave: String,
}

impl Who {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tag = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        Self {
            alice: format!("alice-{tag}"),
            bob: format!("bob-{tag}"),
            carol: format!("carol-{tag}"),
            dave: format!("dave-{tag}"),
        }
    }
}

const NATS_HELP: &str = "the NATS engine's cluster tests need NATS_URL=nats://127.0.0.1:PORT naming a \
     running nats-server: run scripts/test.sh (it starts a throwaway one), or first \
     eval \"$(scripts/nats-tmp.sh start)\"";

/// The engine carrying notices between the nodes of a test.
#[derive(Debug, Clone)]
enum Bus {
    Postgres,
    Nats { url: String },
}

impl Bus {
    /// The NATS engine on the server in `NATS_URL`; fails the test without one.
    fn nats() -> Self {
        match std::env::var("NATS_URL") {
            Ok(url) if url.starts_with("nats://") => Bus::Nats { url },
            Ok(other) => panic!("NATS_URL is {other:?}, not a nats:// URL: {NATS_HELP}"),
            Err(_) => panic!("NATS_URL is not set: {NATS_HELP}"),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Bus::Postgres => "postgres",
            Bus::Nats { .. } => "nats",
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        match self {
            Bus::Postgres => vec![("CHAT_BUS".into(), "postgres".into())],
            Bus::Nats { url } => vec![
                ("CHAT_BUS".into(), "nats".into()),
                ("CHAT_NATS_URL".into(), url.clone()),
            ],
        }
    }
}

/// Runs a test body once per engine: `both_engines!(name, |bus: Bus| async move { ... })`
/// makes the tests `name::postgres` and `name::nats`.
macro_rules! both_engines {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)(Bus::Postgres).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                ($body)(Bus::nats()).await;
            }
        }
    };
}

/// Starts one node of the cluster on `db`, with the engine's settings and `extra`.
fn node(db: &Database, bus: &Bus, extra: &[(&str, &str)]) -> Server {
    let mut env = bus.env();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start_with(db, &env)
}

/// One received `message`, with when it arrived.
#[derive(Debug, Clone)]
struct Arrival {
    message: Value,
    at: Instant,
}

/// A connection and everything it received, checked as it arrives.
struct Conn {
    name: String,
    user: String,
    client: Client,
    ready: Value,
    /// Strict: per room, each `message` frame carries exactly the next seq.
    strict: bool,
    /// Per room, the seq the stream continues after (`ready`'s `last_seq`, then each message).
    last: HashMap<String, u64>,
    /// Per room, the `message` frames in arrival order.
    messages: HashMap<String, Vec<Arrival>>,
    /// Per room, every seq this client has (messages and history replies).
    have: HashMap<String, BTreeSet<u64>>,
    /// Every frame other than `message`, in arrival order.
    events: Vec<Value>,
}

impl Conn {
    /// Connects and authenticates `user` on `server`; strict checking from `ready` on.
    async fn open(server: &Server, user: &str, name: &str) -> Self {
        let (client, ready) = server.connect(user).await;
        Self::ready_on(client, ready, user, name)
    }

    /// A connection that has its `ready`.
    fn ready_on(client: Client, ready: Value, user: &str, name: &str) -> Self {
        assert_eq!(ready["type"], "ready", "{name}: {ready}");
        assert_eq!(ready["user_id"], user, "{name}: {ready}");
        let last = ready["rooms"]
            .as_array()
            .expect("ready rooms")
            .iter()
            .map(|r| {
                (
                    r["room_id"].as_str().expect("room_id").to_owned(),
                    r["last_seq"].as_u64().expect("last_seq"),
                )
            })
            .collect();
        Self {
            name: name.to_owned(),
            user: user.to_owned(),
            client,
            ready,
            strict: true,
            last,
            messages: HashMap::new(),
            have: HashMap::new(),
            events: Vec::new(),
        }
    }

    /// A reconnected client: it reads history and re-sends, so a seq may reach it twice.
    async fn open_loose(server: &Server, user: &str, name: &str) -> Self {
        let mut conn = Self::open(server, user, name).await;
        conn.strict = false;
        conn
    }

    fn record(&mut self, frame: &Value) {
        match frame["type"].as_str() {
            Some("message") => {
                let message = &frame["message"];
                let room = frame["room_id"].as_str().expect("room_id").to_owned();
                assert_eq!(message["room_id"], room.as_str(), "{}: {frame}", self.name);
                let seq = message["seq"].as_u64().expect("seq");
                let last = self.last.entry(room.clone()).or_insert(0);
                if self.strict {
                    assert_eq!(
                        seq,
                        *last + 1,
                        "{}: got seq {seq} of room {room} when seq {} was due: out of order, \
                         a duplicate or a gap (a sender's own copy must not overtake an \
                         earlier seq committed on another node either); frame {frame}",
                        self.name,
                        *last + 1
                    );
                }
                *last = (*last).max(seq);
                self.have.entry(room.clone()).or_default().insert(seq);
                self.messages.entry(room).or_default().push(Arrival {
                    message: message.clone(),
                    at: Instant::now(),
                });
            }
            // Errors are only ever expected through `expect_error`.
            Some("error") => panic!("{}: unexpected error frame {frame}", self.name),
            _ => self.events.push(frame.clone()),
        }
    }

    /// The next frame (recorded), or a failure naming this connection and what it awaited.
    async fn next(&mut self, awaiting: &str) -> Value {
        match self.client.next_within(WAIT).await {
            Next::Frame(frame) => {
                self.record(&frame);
                frame
            }
            Next::Timeout => panic!(
                "{}: nothing within {WAIT:?} while waiting for {awaiting}; last seqs {:?}",
                self.name, self.last
            ),
            Next::Ended(why) => panic!(
                "{}: connection ended ({why}) while waiting for {awaiting}",
                self.name
            ),
        }
    }

    /// Reads (and records) frames until one matches.
    async fn until(&mut self, awaiting: &str, mut matches: impl FnMut(&Value) -> bool) -> Value {
        for _ in 0..10_000 {
            let frame = self.next(awaiting).await;
            if matches(&frame) {
                return frame;
            }
        }
        panic!("{}: no {awaiting} in 10000 frames", self.name);
    }

    /// Like `until`, but gives up (`None`) when nothing matching came within `within`.
    async fn until_within(
        &mut self,
        within: Duration,
        mut matches: impl FnMut(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        for _ in 0..10_000 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.client.next_within(left).await {
                Next::Frame(frame) => {
                    self.record(&frame);
                    if matches(&frame) {
                        return Some(frame);
                    }
                }
                Next::Timeout => return None,
                Next::Ended(why) => panic!("{}: connection ended ({why})", self.name),
            }
        }
        panic!("{}: 10000 frames and no match", self.name);
    }

    /// Reads until this client has every seq `1..=seq` of `room`.
    async fn until_has(&mut self, room: &str, seq: u64) {
        let awaiting = format!("seqs up to {seq} of room {room}");
        for _ in 0..10_000 {
            if self.has_all(room, seq) {
                return;
            }
            self.next(&awaiting).await;
        }
        panic!("{}: no {awaiting} in 10000 frames", self.name);
    }

    /// A reconnected client already has `1..=up_to` of `room` (from its previous connection).
    fn had_before(&mut self, room: &str, up_to: u64) {
        self.have
            .entry(room.to_owned())
            .or_default()
            .extend(1..=up_to);
    }

    /// Strict: the `message` frames reached `seq` (they come gapless, checked on arrival).
    /// Loose: messages and history replies together hold every seq `1..=seq`.
    fn has_all(&self, room: &str, seq: u64) -> bool {
        if self.strict {
            self.last.get(room).copied().unwrap_or(0) >= seq
        } else {
            let have = self.have.get(room);
            (1..=seq).all(|s| have.is_some_and(|h| h.contains(&s)))
        }
    }

    async fn send(&mut self, room: &str, client_msg_id: &str, body: &str) {
        self.client.send_message(room, client_msg_id, body).await;
    }

    /// Sends, and waits for this connection's copy (the acknowledgement); returns its seq.
    async fn send_acked(&mut self, room: &str, client_msg_id: &str, body: &str) -> u64 {
        self.send(room, client_msg_id, body).await;
        let user = self.user.clone();
        let ack = self
            .until(&format!("the copy of {client_msg_id}"), |f| {
                f["type"] == "message"
                    && f["message"]["client_msg_id"] == client_msg_id
                    && f["message"]["sender_id"] == user.as_str()
            })
            .await;
        ack["message"]["seq"].as_u64().expect("seq")
    }

    /// A `history` request; the reply's messages (oldest first). Adds them to what this
    /// client has.
    async fn history(&mut self, request: Value) -> Vec<Value> {
        let room = request["room_id"].as_str().expect("room_id").to_owned();
        self.client.send(request).await;
        let reply = self
            .until("a history reply", |f| f["type"] == "history")
            .await;
        assert_eq!(reply["room_id"], room.as_str(), "{}: {reply}", self.name);
        let messages = reply["messages"].as_array().expect("messages").clone();
        let have = self.have.entry(room).or_default();
        have.extend(messages.iter().map(|m| m["seq"].as_u64().expect("seq")));
        messages
    }

    /// The whole room from seq 1, page by page (`after_seq`) until a short page.
    async fn full_history(&mut self, room: &str, after: u64) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = after;
        for _ in 0..1000 {
            let page = self
                .history(json!({"type": "history", "room_id": room, "after_seq": after}))
                .await;
            let short = page.len() < 300;
            if let Some(last) = page.last() {
                after = last["seq"].as_u64().expect("seq");
            }
            all.extend(page);
            if short {
                return all;
            }
        }
        panic!("{}: history of {room} did not end in 1000 pages", self.name);
    }

    /// Waits for an `error` frame; asserts its code and ref.
    async fn expect_error(&mut self, code: &str, reference: &str) {
        let frame = match self.client.next_within(WAIT).await {
            Next::Frame(frame) => frame,
            other => panic!("{}: expected an error {code}, got {other:?}", self.name),
        };
        assert_eq!(frame["type"], "error", "{}: {frame}", self.name);
        assert_eq!(frame["code"], code, "{}: {frame}", self.name);
        assert_eq!(frame["ref"], reference, "{}: {frame}", self.name);
    }

    /// The seqs of `room` in the order their `message` frames arrived.
    fn seqs(&self, room: &str) -> Vec<u64> {
        self.messages
            .get(room)
            .map(|m| {
                m.iter()
                    .map(|a| a.message["seq"].as_u64().expect("seq"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `message` objects of `room` in arrival order.
    fn message_values(&self, room: &str) -> Vec<Value> {
        self.messages
            .get(room)
            .map(|m| m.iter().map(|a| a.message.clone()).collect())
            .unwrap_or_default()
    }

    /// How many frames of `kind` (not `message`) for `room` arrived.
    fn count(&self, kind: &str, room: &str) -> usize {
        self.events
            .iter()
            .filter(|f| f["type"] == kind && (f["room_id"] == room || f["room"]["room_id"] == room))
            .count()
    }

    /// Nothing at all arrives for `window` (a late duplicate would), and the connection stays
    /// open.
    async fn quiet(&mut self, window: Duration) {
        match self.client.next_within(window).await {
            Next::Timeout => {}
            Next::Frame(frame) => panic!(
                "{}: a frame arrived after everything was delivered: {frame}",
                self.name
            ),
            Next::Ended(why) => panic!("{}: connection ended ({why})", self.name),
        }
    }
}

/// Checks that several connections stay quiet for `window`, all at the same time.
async fn all_quiet(conns: &mut [&mut Conn], window: Duration) {
    futures_util::future::join_all(conns.iter_mut().map(|c| c.quiet(window))).await;
}

/// Messages with `seen_at` cleared: what a live `message` frame carried before a `seen`.
fn unseen(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m["seen_at"] = Value::Null;
            m
        })
        .collect()
}

fn seqs_of(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

fn client_msg_ids(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            m["client_msg_id"]
                .as_str()
                .expect("client_msg_id")
                .to_owned()
        })
        .collect()
}

/// `(count, distinct (sender, client_msg_id), min seq, max seq)` of a room, from the database
/// itself.
fn stored(db: &Database, room: &str) -> (u64, u64, u64, u64) {
    let row = db.psql(&format!(
        "SELECT count(*), count(DISTINCT (sender_id, client_msg_id)), coalesce(min(seq), 0), \
         coalesce(max(seq), 0) FROM messages WHERE room_id = '{room}'"
    ));
    let fields: Vec<u64> = row
        .split('|')
        .map(|f| f.parse().expect("a number"))
        .collect();
    assert_eq!(fields.len(), 4, "{row}");
    (fields[0], fields[1], fields[2], fields[3])
}

// ---------------------------------------------------------------------------------------------
// 1. Three nodes, one room.
// ---------------------------------------------------------------------------------------------

both_engines!(
    three_nodes_every_connection_gets_every_event_once_in_order,
    |bus: Bus| async move {
        let db = Database::new(Db::Postgres);
        let who = Who::new();
        let (alice, bob) = (who.alice.as_str(), who.bob.as_str());
        // A short sweep: a node that forwards a message twice (notice and sweep racing) would
        // do it within the quiet window at the end.
        let settings = [UNLIMITED[0], UNLIMITED[1], ("CHAT_BUS_SWEEP_MS", "200")];
        let nodes = [
            node(&db, &bus, &settings),
            node(&db, &bus, &settings),
            node(&db, &bus, &settings),
        ];
        let room = nodes[0].room(alice, bob);
        let mut alice1 = Conn::open(&nodes[0], alice, "alice@node1").await;
        let mut bob2 = Conn::open(&nodes[1], bob, "bob@node2").await;
        let mut alice3 = Conn::open(&nodes[2], alice, "alice@node3").await;
        for conn in [&alice1, &bob2, &alice3] {
            assert_eq!(
                conn.ready["rooms"][0]["room_id"],
                room.as_str(),
                "{}",
                conn.name
            );
            assert_eq!(conn.ready["rooms"][0]["last_seq"], 0, "{}", conn.name);
        }
        // client_msg_id → sender, for every message sent.
        let mut sent: BTreeMap<String, &str> = BTreeMap::new();

        // Ping-pong: each message reaches all three connections before the answer is sent.
        let mut total = 0;
        for i in 0..5 {
            let id = format!("pa{i}");
            alice1.send(&room, &id, &format!("alice {i}")).await;
            sent.insert(id, alice);
            total += 1;
            for conn in [&mut alice1, &mut bob2, &mut alice3] {
                conn.until_has(&room, total).await;
            }
            let id = format!("pb{i}");
            bob2.send(&room, &id, &format!("bob {i}")).await;
            sent.insert(id, bob);
            total += 1;
            for conn in [&mut alice1, &mut bob2, &mut alice3] {
                conn.until_has(&room, total).await;
            }
        }

        // Bursts from two nodes at once, nobody waiting: commits interleave across nodes, so a
        // sender's own copy of seq N is ready on its node while N-1 (the other node's) is not
        // delivered there yet. It must wait: the strict check fails on any overtaking.
        for i in 0..10 {
            let (a, b) = (format!("ba{i:02}"), format!("bb{i:02}"));
            alice1.send(&room, &a, &format!("burst alice {i}")).await;
            bob2.send(&room, &b, &format!("burst bob {i}")).await;
            sent.insert(a, alice);
            sent.insert(b, bob);
        }
        total += 20;
        // Alice's other tab (node 3) and bob (node 2) burst together.
        for i in 0..10 {
            let id = format!("ca{i:02}");
            alice3.send(&room, &id, &format!("tab alice {i}")).await;
            sent.insert(id, alice);
        }
        for i in 0..10 {
            let id = format!("cb{i:02}");
            bob2.send(&room, &id, &format!("more bob {i}")).await;
            sent.insert(id, bob);
        }
        total += 20;
        for conn in [&mut alice1, &mut bob2, &mut alice3] {
            conn.until_has(&room, total).await;
            assert_eq!(
                conn.seqs(&room),
                (1..=total).collect::<Vec<_>>(),
                "{}: every seq once, in order",
                conn.name
            );
        }
        let reference = alice1.message_values(&room);
        assert_eq!(
            bob2.message_values(&room),
            reference,
            "the same messages on every node"
        );
        assert_eq!(
            alice3.message_values(&room),
            reference,
            "the same messages on every node"
        );
        let mut ids = client_msg_ids(&reference);
        // One connection's sends commit in the order they were sent.
        for prefix in ["ba", "bb", "ca", "cb"] {
            let order: Vec<&String> = ids.iter().filter(|id| id.starts_with(prefix)).collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(order, sorted, "{prefix}: commit order is send order");
        }
        ids.sort();
        assert_eq!(
            ids,
            sent.keys().cloned().collect::<Vec<_>>(),
            "each message exactly once"
        );
        for m in &reference {
            let id = m["client_msg_id"].as_str().unwrap();
            assert_eq!(m["sender_id"], sent[id], "{m}");
        }

        // Seen receipts cross nodes: bob (node 2) marks everything seen.
        bob2.client
            .send(json!({"type": "seen", "room_id": room, "up_to_seq": total}))
            .await;
        let mut seen_frames = Vec::new();
        for conn in [&mut alice1, &mut bob2, &mut alice3] {
            let seen = conn.until("seen", |f| f["type"] == "seen").await;
            assert_eq!(seen["room_id"], room.as_str(), "{}: {seen}", conn.name);
            assert_eq!(seen["reader_id"], bob, "{}: {seen}", conn.name);
            assert_eq!(seen["up_to_seq"], total, "{}: {seen}", conn.name);
            seen_frames.push(seen);
        }
        assert_eq!(
            seen_frames[0], seen_frames[1],
            "the same seen frame everywhere"
        );
        assert_eq!(
            seen_frames[0], seen_frames[2],
            "the same seen frame everywhere"
        );
        // A marker after it: a second `seen` would have arrived before it.
        sent.insert("after-seen".into(), bob);
        bob2.send(&room, "after-seen", "after the receipt").await;
        total += 1;
        for conn in [&mut alice1, &mut bob2, &mut alice3] {
            conn.until_has(&room, total).await;
            assert_eq!(conn.count("seen", &room), 1, "{}: seen once", conn.name);
        }

        // History reads the same on every node, seen times included.
        let mut histories = Vec::new();
        for conn in [&mut alice1, &mut bob2, &mut alice3] {
            histories.push(conn.full_history(&room, 0).await);
        }
        assert_eq!(seqs_of(&histories[0]), (1..=total).collect::<Vec<_>>());
        assert_eq!(histories[1], histories[0], "history on node 2 = node 1");
        assert_eq!(histories[2], histories[0], "history on node 3 = node 1");
        assert_eq!(
            unseen(&histories[0]),
            alice1.message_values(&room),
            "history holds what was delivered"
        );
        for m in &histories[0] {
            let marked = m["sender_id"] == alice;
            assert_eq!(m["seen_at"].is_string(), marked, "{m}");
        }

        // Closing the room on node 3 reaches every node; a send to it is then refused.
        let (status, body) = nodes[2]
            .http()
            .delete(&format!("/api/rooms/{room}"), Some(SERVICE_KEY));
        assert_eq!(status, 204, "{body}");
        for conn in [&mut alice1, &mut bob2, &mut alice3] {
            conn.until("room_closed", |f| {
                f["type"] == "room_closed" && f["room_id"] == room.as_str()
            })
            .await;
        }
        alice1.send(&room, "too-late", "closed?").await;
        alice1.expect_error("room_closed", "too-late").await;
        // Opening the pair's new room on node 2 reaches every node.
        let room2 = nodes[1].room(bob, alice);
        assert_ne!(room2, room);
        for conn in [&mut alice1, &mut bob2, &mut alice3] {
            let opened = conn
                .until("room_opened", |f| f["type"] == "room_opened")
                .await;
            let summary = &opened["room"];
            assert_eq!(
                summary["room_id"],
                room2.as_str(),
                "{}: {opened}",
                conn.name
            );
            assert_eq!(summary["members"], json!([alice, bob]), "{}", conn.name);
            assert_eq!(summary["last_seq"], 0, "{}", conn.name);
            assert_eq!(summary["unread"], 0, "{}", conn.name);
            assert_eq!(summary["closed"], false, "{}", conn.name);
        }
        // And the new room works across nodes; it is also the marker for "once" above.
        alice3.send(&room2, "new-1", "new room").await;
        for conn in [&mut alice1, &mut bob2, &mut alice3] {
            conn.until_has(&room2, 1).await;
            assert_eq!(conn.seqs(&room2), vec![1], "{}", conn.name);
            assert_eq!(
                conn.count("room_closed", &room),
                1,
                "{}: closed once",
                conn.name
            );
            assert_eq!(
                conn.count("room_opened", &room2),
                1,
                "{}: opened once",
                conn.name
            );
            assert_eq!(conn.count("seen", &room), 1, "{}: seen once", conn.name);
            assert_eq!(conn.seqs(&room).len() as u64, total, "{}", conn.name);
        }

        // A fresh connection reads the same state on every node.
        let mut readies = Vec::new();
        for server in &nodes {
            let (_, ready) = server.connect(alice).await;
            readies.push(ready);
        }
        assert_eq!(readies[0]["rooms"][0]["room_id"], room2.as_str());
        assert_eq!(readies[0]["rooms"][1]["room_id"], room.as_str());
        assert_eq!(readies[0]["rooms"][1]["last_seq"], total);
        assert_eq!(readies[0]["rooms"][1]["closed"], true);
        assert_eq!(readies[1], readies[0], "ready on node 2 = node 1");
        assert_eq!(readies[2], readies[0], "ready on node 3 = node 1");
        let (count, distinct, min, max) = stored(&db, &room);
        assert_eq!((count, distinct, min, max), (total, total, 1, total));

        // Nothing late: no duplicate from a sweep, no second receipt or room event.
        all_quiet(
            &mut [&mut alice1, &mut bob2, &mut alice3],
            Duration::from_millis(1000),
        )
        .await;
    }
);

// ---------------------------------------------------------------------------------------------
// Load: a connection that sends with a window of unacknowledged messages, and records.
// ---------------------------------------------------------------------------------------------

/// What a sender did.
#[derive(Debug, Default)]
struct SendLog {
    /// `client_msg_id`, body and when it was sent, in send order.
    sent: Vec<(String, String, Instant)>,
    /// `client_msg_id` → the seq of this connection's copy.
    acked: BTreeMap<String, u64>,
    /// Why the connection ended, if it did.
    ended: Option<String>,
}

#[derive(Debug)]
struct Counts {
    limit: usize,
    sent: usize,
}

/// How a sender sends.
#[derive(Clone)]
struct Load {
    room: String,
    prefix: &'static str,
    /// At most this many sends without their copy back.
    window: usize,
    /// At most one send per this interval (load pacing, not synchronisation).
    every: Duration,
    /// How many to send, and how many were sent (or are being sent): one lock, so that
    /// `stop` and `more` know exactly how many the sender will have sent.
    counts: Arc<Mutex<Counts>>,
    /// Keeps reading (and recording) until the connection has every seq up to this;
    /// `u64::MAX`: until this is lowered.
    read_until: Arc<AtomicU64>,
}

impl Load {
    fn new(room: &str, prefix: &'static str, window: usize, every_ms: u64, limit: usize) -> Self {
        Self {
            room: room.to_owned(),
            prefix,
            window,
            every: Duration::from_millis(every_ms),
            counts: Arc::new(Mutex::new(Counts { limit, sent: 0 })),
            read_until: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Keeps the connection read until told the total (`read_until`).
    fn reading(self) -> Self {
        self.read_until.store(u64::MAX, Ordering::SeqCst);
        self
    }

    /// Stops sending (the connection is still read); returns how many it sent.
    fn stop(&self) -> usize {
        let mut counts = self.counts.lock().unwrap();
        counts.limit = counts.sent;
        counts.sent
    }

    /// Sends `n` more after what was sent; returns the new total.
    fn more(&self, n: usize) -> usize {
        let mut counts = self.counts.lock().unwrap();
        counts.limit = counts.sent + n;
        counts.limit
    }

    /// Takes the next send if the limit allows: its number.
    fn take(&self) -> Option<usize> {
        let mut counts = self.counts.lock().unwrap();
        (counts.sent < counts.limit).then(|| {
            counts.sent += 1;
            counts.sent - 1
        })
    }

    fn limit(&self) -> usize {
        self.counts.lock().unwrap().limit
    }

    fn id(&self, n: usize) -> String {
        format!("{}{n:04}", self.prefix)
    }
}

/// Sends `load` on `conn` while recording everything it receives; returns when every send
/// up to the limit has its copy back and the connection has every seq up to `read_until`,
/// or when the connection ended (a killed node). `acks` counts the copies back.
async fn run_sender(mut conn: Conn, load: Load, acks: watch::Sender<usize>) -> (Conn, SendLog) {
    let mut log = SendLog::default();
    let mut tick = tokio::time::interval(load.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = Instant::now();
    for _ in 0..10_000_000 {
        let limit = load.limit();
        let read_until = load.read_until.load(Ordering::SeqCst);
        let in_flight = log.sent.len() - log.acked.len();
        if log.sent.len() >= limit && in_flight == 0 && conn.has_all(&load.room, read_until) {
            return (conn, log);
        }
        let awaiting = in_flight > 0 || read_until != u64::MAX;
        assert!(
            !awaiting || progress.elapsed() < WAIT,
            "{}: nothing within {WAIT:?} while {in_flight} sends await their copy and seqs up \
             to {read_until} are due; last seqs {:?}",
            conn.name,
            conn.last
        );
        let can_send = log.sent.len() < limit && in_flight < load.window;
        // Short reads, so that changes of `limit` and `read_until` are seen soon.
        tokio::select! {
            _ = tick.tick(), if can_send => {
                let Some(n) = load.take() else { continue };
                assert_eq!(n, log.sent.len());
                let id = load.id(n);
                let body = format!("{} says {}", conn.user, log.sent.len());
                let frame = json!({"type": "send", "room_id": load.room, "client_msg_id": id, "body": body});
                let at = Instant::now();
                if !conn.client.try_send(frame).await {
                    log.ended = Some("send failed".into());
                    return (conn, log);
                }
                log.sent.push((id, body, at));
                progress = Instant::now();
            }
            next = conn.client.next_within(Duration::from_millis(50)) => match next {
                Next::Frame(frame) => {
                    progress = Instant::now();
                    conn.record(&frame);
                    let m = &frame["message"];
                    if frame["type"] == "message"
                        && m["sender_id"] == conn.user.as_str()
                        && m["client_msg_id"].as_str().is_some_and(|id| id.starts_with(load.prefix))
                    {
                        let id = m["client_msg_id"].as_str().unwrap().to_owned();
                        let seq = m["seq"].as_u64().expect("seq");
                        assert!(
                            log.sent.iter().any(|(s, _, _)| *s == id),
                            "{}: a copy of {id}, never sent here", conn.name
                        );
                        let before = log.acked.insert(id.clone(), seq);
                        assert!(before.is_none(), "{}: two copies of {id}", conn.name);
                        let _ = acks.send(log.acked.len());
                    }
                }
                Next::Timeout => {}
                Next::Ended(why) => {
                    log.ended = Some(why);
                    return (conn, log);
                }
            }
        }
    }
    panic!("{}: the sender did not finish", conn.name);
}

/// Starts `run_sender` as a task; returns it, the load and the count of copies back.
fn spawn_sender(
    conn: Conn,
    load: Load,
) -> (
    tokio::task::JoinHandle<(Conn, SendLog)>,
    watch::Receiver<usize>,
) {
    let (acks_tx, acks_rx) = watch::channel(0);
    (tokio::spawn(run_sender(conn, load, acks_tx)), acks_rx)
}

async fn join<T>(task: tokio::task::JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task cancelled: {e}"),
    }
}

async fn wait_acks(acks: &mut watch::Receiver<usize>, at_least: usize, who: &str) {
    tokio::time::timeout(WAIT, acks.wait_for(|n| *n >= at_least))
        .await
        .unwrap_or_else(|_| panic!("{who}: fewer than {at_least} copies back within {WAIT:?}"))
        .expect("the sender task ended early (its panic is above)");
}

// ---------------------------------------------------------------------------------------------
// 2. A node is killed while its clients send.
// ---------------------------------------------------------------------------------------------

both_engines!(
    a_node_killed_under_load_loses_nothing_acknowledged,
    |bus: Bus| async move {
        let db = Database::new(Db::Postgres);
        let who = Who::new();
        let (alice, bob) = (who.alice.as_str(), who.bob.as_str());
        let settings = [UNLIMITED[0], UNLIMITED[1], ("CHAT_BUS_SWEEP_MS", "300")];
        let mut doomed = node(&db, &bus, &settings);
        let node_b = node(&db, &bus, &settings);
        let node_c = node(&db, &bus, &settings);
        let room = node_b.room(alice, bob);

        let alice_a = Conn::open(&doomed, alice, "alice@doomed").await;
        let bob_b = Conn::open(&node_b, bob, "bob@B").await;
        let mut alice_c = Conn::open(&node_c, alice, "alice@C").await;
        let mut bob_c = Conn::open(&node_c, bob, "bob@C").await;

        const ALICE_TOTAL: usize = 60;
        const BOB_TOTAL: usize = 40;
        let alice_load = Load::new(&room, "a", 8, 4, ALICE_TOTAL);
        let bob_load = Load::new(&room, "b", 8, 8, BOB_TOTAL);
        let (alice_task, mut alice_acks) = spawn_sender(alice_a, alice_load.clone());
        let (bob_task, mut bob_acks) = spawn_sender(bob_b, bob_load.clone());
        wait_acks(&mut alice_acks, 15, "alice@doomed").await;
        wait_acks(&mut bob_acks, 3, "bob@B").await;
        doomed.kill();
        let (alice_a, alice_log) = join(alice_task).await;
        assert!(
            alice_log.ended.is_some(),
            "alice's connection to the killed node ended"
        );
        let alice_sent = alice_log.sent.len();
        assert!(
            alice_sent < ALICE_TOTAL,
            "the node was killed while alice was still sending ({alice_sent} sent)"
        );
        // Alice's last seq: her connection got every seq in order up to it.
        let last = alice_a.last.get(&room).copied().unwrap_or(0);
        println!(
            "[{}] killed the node after alice sent {alice_sent}, {} acknowledged, last seq {last}",
            bus.name(),
            alice_log.acked.len()
        );

        // Alice reconnects to node B, catches up, re-sends what never came back.
        let mut alice_b = Conn::open_loose(&node_b, alice, "alice@B (reconnected)").await;
        alice_b.had_before(&room, last);
        let caught_up = alice_b.full_history(&room, last).await;
        let came_back: BTreeMap<String, u64> = alice_log
            .acked
            .iter()
            .map(|(id, seq)| (id.clone(), *seq))
            .chain(
                caught_up
                    .iter()
                    .chain(alice_b.message_values(&room).iter())
                    .filter(|m| m["sender_id"] == alice)
                    .map(|m| {
                        (
                            m["client_msg_id"].as_str().unwrap().to_owned(),
                            m["seq"].as_u64().unwrap(),
                        )
                    }),
            )
            .collect();
        let mut resent = 0;
        for (id, body, _) in &alice_log.sent {
            if !came_back.contains_key(id) {
                alice_b.send_acked(&room, id, body).await;
                resent += 1;
            }
        }
        // And sends the rest of what she meant to.
        for n in alice_sent..ALICE_TOTAL {
            let id = alice_load.id(n);
            alice_b
                .send_acked(&room, &id, &format!("alice says {n} (after the crash)"))
                .await;
        }
        let (mut bob_b, bob_log) = join(bob_task).await;
        assert!(bob_log.ended.is_none(), "bob@B: {:?}", bob_log.ended);
        assert_eq!(bob_log.acked.len(), BOB_TOTAL);
        println!(
            "[{}] alice re-sent {resent} unacknowledged messages after catching up {} from history",
            bus.name(),
            caught_up.len()
        );

        // Every message exactly once, gapless; every acknowledged one where it was acknowledged.
        let total = (ALICE_TOTAL + BOB_TOTAL) as u64;
        assert_eq!(stored(&db, &room), (total, total, 1, total));
        let history = alice_c.full_history(&room, 0).await;
        assert_eq!(seqs_of(&history), (1..=total).collect::<Vec<_>>());
        let by_id: HashMap<String, u64> = history
            .iter()
            .map(|m| {
                (
                    m["client_msg_id"].as_str().unwrap().to_owned(),
                    m["seq"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(by_id.len() as u64, total, "no client_msg_id twice");
        for n in 0..ALICE_TOTAL {
            assert!(
                by_id.contains_key(&alice_load.id(n)),
                "{} stored",
                alice_load.id(n)
            );
        }
        for n in 0..BOB_TOTAL {
            assert!(
                by_id.contains_key(&bob_load.id(n)),
                "{} stored",
                bob_load.id(n)
            );
        }
        for (id, seq) in alice_log.acked.iter().chain(bob_log.acked.iter()) {
            assert_eq!(by_id.get(id), Some(seq), "acknowledged {id} kept its seq");
        }

        // Every surviving connection saw every seq once, in order; the reconnected one has
        // them all (history and live together).
        for conn in [&mut bob_b, &mut alice_c, &mut bob_c] {
            conn.until_has(&room, total).await;
            assert_eq!(
                conn.seqs(&room),
                (1..=total).collect::<Vec<_>>(),
                "{}",
                conn.name
            );
            assert_eq!(
                unseen(&history),
                conn.message_values(&room),
                "{}: what was delivered is what is stored",
                conn.name
            );
        }
        alice_b.until_has(&room, total).await;
        all_quiet(
            &mut [&mut bob_b, &mut alice_c, &mut bob_c],
            Duration::from_millis(1000),
        )
        .await;
    }
);

// ---------------------------------------------------------------------------------------------
// 3. The bus connection is lost under load.
// ---------------------------------------------------------------------------------------------

/// A nats-server of one test's own (scripts/nats-tmp.sh), stopped when dropped.
struct OwnNats {
    dir: String,
    url: String,
    pid: u32,
}

fn nats_script() -> String {
    format!("{}/../../scripts/nats-tmp.sh", env!("CARGO_MANIFEST_DIR"))
}

impl OwnNats {
    fn start() -> Self {
        let out = std::process::Command::new(nats_script())
            .arg("start")
            .output()
            .expect("scripts/nats-tmp.sh runs");
        assert!(
            out.status.success(),
            "scripts/nats-tmp.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let value = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("nats-tmp.sh printed no {name}: {stdout}"))
                .to_owned()
        };
        Self {
            dir: value("MATCHCHAT_NATS_DIR"),
            url: value("NATS_URL"),
            pid: value("MATCHCHAT_NATS_PID").parse().expect("a PID"),
        }
    }
}

/// Stops the nats-server of `dir`, waits `down_secs`, starts it again on the same port.
fn restart_nats(dir: &str, down_secs: u32) {
    let out = std::process::Command::new(nats_script())
        .args(["restart", dir, &down_secs.to_string()])
        .output()
        .expect("scripts/nats-tmp.sh runs");
    assert!(
        out.status.success(),
        "scripts/nats-tmp.sh restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        // A server left stopped (SIGSTOP) by a failed test could not take the script's SIGTERM.
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&format!("{}/nats.conf", self.dir)) {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &self.pid.to_string()])
                .status();
        }
        let _ = std::process::Command::new(nats_script())
            .args(["stop", &self.dir])
            .status();
    }
}

/// The backends of this test's database holding a LISTEN connection of the engine (off the
/// async workers: the clients' tasks keep running meanwhile).
async fn listeners(db: &Database) -> Vec<String> {
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        common::psql(
            &url,
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'matchchat-listen-%' \
             AND datname = current_database() ORDER BY pid",
        )
        .lines()
        .map(str::to_owned)
        .collect()
    })
    .await
    .unwrap()
}

/// Milliseconds from `origin` to `t`, negative when `t` is earlier.
fn offset_ms(t: Instant, origin: Instant) -> i128 {
    if t >= origin {
        t.duration_since(origin).as_millis() as i128
    } else {
        -(origin.duration_since(t).as_millis() as i128)
    }
}

both_engines!(
    delivery_resumes_after_the_bus_connection_is_lost,
    |bus: Bus| async move {
        let db = Database::new(Db::Postgres);
        let who = Who::new();
        let (alice, bob) = (who.alice.as_str(), who.bob.as_str());
        let own_nats = matches!(bus, Bus::Nats { .. }).then(OwnNats::start);
        let bus = match &own_nats {
            Some(nats) => Bus::Nats {
                url: nats.url.clone(),
            },
            None => bus,
        };
        // The periodic sweep is made too slow to matter: what arrives must come through the
        // reconnected bus (and the sweep a node runs when its engine reconnects).
        let settings = [UNLIMITED[0], UNLIMITED[1], ("CHAT_BUS_SWEEP_MS", "60000")];
        let node1 = node(&db, &bus, &settings);
        let node2 = node(&db, &bus, &settings);
        let room = node1.room(alice, bob);
        let alice1 = Conn::open(&node1, alice, "alice@node1").await;
        let bob2 = Conn::open(&node2, bob, "bob@node2").await;
        let old_listeners = match bus {
            Bus::Postgres => {
                let old = listeners(&db).await;
                assert_eq!(old.len(), 2, "one LISTEN connection per node: {old:?}");
                old
            }
            Bus::Nats { .. } => Vec::new(),
        };

        // Both send about 80 messages a second each, 4 at most in flight; both connections
        // are read all along (arrival times are measured).
        let alice_load = Load::new(&room, "a", 4, 12, usize::MAX).reading();
        let bob_load = Load::new(&room, "b", 4, 12, usize::MAX).reading();
        let (alice_task, mut alice_acks) = spawn_sender(alice1, alice_load.clone());
        let (bob_task, mut bob_acks) = spawn_sender(bob2, bob_load.clone());
        wait_acks(&mut alice_acks, 30, "alice@node1").await;
        wait_acks(&mut bob_acks, 30, "bob@node2").await;
        // Then only alice sends: bob's node has no commit of its own that would reveal a gap
        // (and fill it from the database), so what reaches bob now came through the bus (or
        // the sweep a node runs when its engine reconnects).
        let bob_sent = bob_load.stop();
        wait_acks(&mut bob_acks, bob_sent, "bob@node2").await;

        let lost_at = Instant::now();
        match &bus {
            Bus::Postgres => {
                let terminated = tokio::task::spawn_blocking({
                    let url = db.url.clone();
                    move || {
                        common::psql(
                            &url,
                            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
                             FROM pg_stat_activity WHERE application_name LIKE \
                             'matchchat-listen-%' AND datname = current_database()",
                        )
                    }
                })
                .await
                .unwrap();
                assert_eq!(terminated, "2", "both nodes' LISTEN connections terminated");
                // Bounded wait for an external condition: both engines have listened again.
                let deadline = Instant::now() + WAIT;
                loop {
                    let now = listeners(&db).await;
                    if now.len() == 2 && now.iter().all(|pid| !old_listeners.contains(pid)) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the LISTEN connections did not come back within {WAIT:?}: {now:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Bus::Nats { .. } => {
                let dir = own_nats.as_ref().unwrap().dir.clone();
                tokio::task::spawn_blocking(move || restart_nats(&dir, 1))
                    .await
                    .unwrap();
            }
        }
        let back_at = Instant::now();
        // 40 more from alice after the bus is back (to bob only through the bus), then 40
        // from bob alone (to alice's node only through the bus).
        let alice_sent = alice_load.more(40);
        wait_acks(&mut alice_acks, alice_sent, "alice@node1").await;
        let bob_sent = bob_load.more(40);
        wait_acks(&mut bob_acks, bob_sent, "bob@node2").await;
        let total = (alice_sent + bob_sent) as u64;
        for load in [&alice_load, &bob_load] {
            load.read_until.store(total, Ordering::SeqCst);
        }
        let (mut alice1, alice_log) = join(alice_task).await;
        let (mut bob2, bob_log) = join(bob_task).await;
        assert!(alice_log.ended.is_none(), "{:?}", alice_log.ended);
        assert!(bob_log.ended.is_none(), "{:?}", bob_log.ended);
        assert_eq!(
            (alice_log.sent.len(), bob_log.sent.len()),
            (alice_sent, bob_sent)
        );
        for conn in [&alice1, &bob2] {
            assert_eq!(
                conn.seqs(&room),
                (1..=total).collect::<Vec<_>>(),
                "{}: every seq once, in order",
                conn.name
            );
        }
        assert_eq!(stored(&db, &room), (total, total, 1, total));
        assert_eq!(
            alice1.message_values(&room),
            bob2.message_values(&room),
            "both nodes delivered the same messages"
        );

        // How long crossing nodes took: each message from its send on one node to its arrival
        // on the other node's connection.
        let mut crossings = Vec::new();
        for (log, receiver) in [(&alice_log, &bob2), (&bob_log, &alice1)] {
            let arrived: HashMap<&str, Instant> = receiver.messages[&room]
                .iter()
                .map(|a| (a.message["client_msg_id"].as_str().unwrap(), a.at))
                .collect();
            for (id, _, sent_at) in &log.sent {
                let at = arrived[id.as_str()];
                crossings.push((at.duration_since(*sent_at), id.clone(), *sent_at));
            }
        }
        crossings.sort();
        let (longest, longest_id, longest_sent) = crossings.last().cloned().unwrap();
        let median = crossings[crossings.len() / 2].0;
        let sent_while_down = crossings
            .iter()
            .filter(|(_, _, sent)| *sent >= lost_at && *sent <= back_at)
            .count();
        let longest_after = crossings
            .iter()
            .filter(|(_, _, sent)| *sent > back_at)
            .map(|(d, _, _)| *d)
            .max()
            .unwrap_or_default();
        println!(
            "[{}] cross-node latency: bus connection lost at +0 ms, back (as the test saw it) at \
             +{} ms; {} messages crossed nodes, {sent_while_down} of them sent while it was \
             down; longest send->delivery gap {} ms ({longest_id}, sent at {:+} ms); median {} \
             ms; longest for messages sent after it was back {} ms",
            bus.name(),
            back_at.duration_since(lost_at).as_millis(),
            crossings.len(),
            longest.as_millis(),
            offset_ms(longest_sent, lost_at),
            median.as_millis(),
            longest_after.as_millis(),
        );
        all_quiet(&mut [&mut alice1, &mut bob2], Duration::from_millis(500)).await;
        drop((node1, node2));
        drop(own_nats);
    }
);

// ---------------------------------------------------------------------------------------------
// 4. A node started later.
// ---------------------------------------------------------------------------------------------

both_engines!(
    a_node_started_later_serves_the_past_then_live_messages,
    |bus: Bus| async move {
        let db = Database::new(Db::Postgres);
        let who = Who::new();
        let (alice, bob, carol) = (who.alice.as_str(), who.bob.as_str(), who.carol.as_str());
        let node1 = node(&db, &bus, &UNLIMITED);
        let room = node1.room(alice, bob);
        let mut alice1 = Conn::open(&node1, alice, "alice@node1").await;
        let mut bob1 = Conn::open(&node1, bob, "bob@node1").await;
        // 12 messages, alice's on odd seqs; bob marks up to 6 seen (alice's 1, 3, 5).
        for i in 1..=12u64 {
            let (sender, id) = if i % 2 == 1 {
                (&mut alice1, format!("a{i}"))
            } else {
                (&mut bob1, format!("b{i}"))
            };
            assert_eq!(sender.send_acked(&room, &id, &format!("old {i}")).await, i);
        }
        bob1.client
            .send(json!({"type": "seen", "room_id": room, "up_to_seq": 6}))
            .await;
        alice1.until("seen", |f| f["type"] == "seen").await;

        let node2 = node(&db, &bus, &UNLIMITED);
        // Node 2 serves nobody yet; three more are sent on node 1 meanwhile.
        for i in 13..=15u64 {
            assert_eq!(
                alice1
                    .send_acked(&room, &format!("a{i}"), &format!("old {i}"))
                    .await,
                i
            );
        }
        let mut bob2 = Conn::open(&node2, bob, "bob@node2").await;
        let summary = &bob2.ready["rooms"][0];
        assert_eq!(summary["room_id"], room.as_str(), "{}", bob2.ready);
        assert_eq!(summary["last_seq"], 15, "{}", bob2.ready);
        assert_eq!(
            summary["unread"], 6,
            "alice's 7, 9, 11, 13, 14, 15: {}",
            bob2.ready
        );
        let on_node2 = bob2.full_history(&room, 0).await;
        let on_node1 = bob1.full_history(&room, 0).await;
        assert_eq!(seqs_of(&on_node2), (1..=15).collect::<Vec<_>>());
        assert_eq!(on_node2, on_node1, "history on the new node = the old node");

        // Then live messages, both ways.
        alice1.send(&room, "live-a", "live from node 1").await;
        bob2.until_has(&room, 16).await;
        bob2.send(&room, "live-b", "live from node 2").await;
        for conn in [&mut alice1, &mut bob1, &mut bob2] {
            conn.until_has(&room, 17).await;
        }
        assert_eq!(
            bob2.seqs(&room),
            vec![16, 17],
            "node 2 forwards from its ready on"
        );
        assert_eq!(alice1.seqs(&room), (1..=17).collect::<Vec<_>>());
        assert_eq!(bob1.seqs(&room), (1..=17).collect::<Vec<_>>());
        let live = &bob2.message_values(&room);
        assert_eq!(client_msg_ids(live), vec!["live-a", "live-b"]);
        assert_eq!(&alice1.message_values(&room)[15..], &live[..]);
        // A room opened on the new node reaches the old one's connections.
        let room2 = node2.room(alice, carol);
        let opened = alice1
            .until("room_opened", |f| f["type"] == "room_opened")
            .await;
        assert_eq!(opened["room"]["room_id"], room2.as_str());
        all_quiet(
            &mut [&mut alice1, &mut bob1, &mut bob2],
            Duration::from_millis(500),
        )
        .await;
    }
);

both_engines!(
    a_node_just_started_announces_its_first_events,
    |bus: Bus| async move {
        // A node serves the API as soon as it says it is listening (a rolling deploy sends it
        // traffic then): what it commits from that moment on must reach the other nodes.
        let db = Database::new(Db::Postgres);
        let who = Who::new();
        let (alice, bob) = (who.alice.as_str(), who.bob.as_str());
        let node1 = node(&db, &bus, &UNLIMITED);
        let mut alice1 = Conn::open(&node1, alice, "alice@node1").await;
        let mut bob1 = Conn::open(&node1, bob, "bob@node1").await;

        let node2 = node(&db, &bus, &UNLIMITED);
        let room = node2.room(alice, bob);
        for conn in [&mut alice1, &mut bob1] {
            let opened = conn
                .until("room_opened from the node just started", |f| {
                    f["type"] == "room_opened"
                })
                .await;
            assert_eq!(opened["room"]["room_id"], room.as_str(), "{opened}");
        }
        let node3 = node(&db, &bus, &UNLIMITED);
        let (status, body) = node3
            .http()
            .delete(&format!("/api/rooms/{room}"), Some(SERVICE_KEY));
        assert_eq!(status, 204, "{body}");
        for conn in [&mut alice1, &mut bob1] {
            conn.until("room_closed from the node just started", |f| {
                f["type"] == "room_closed" && f["room_id"] == room.as_str()
            })
            .await;
        }
        all_quiet(&mut [&mut alice1, &mut bob1], Duration::from_millis(300)).await;
    }
);

/// Holds `LOCK TABLE rooms IN ACCESS EXCLUSIVE MODE` in a psql session of its own until
/// released (or dropped: the psql process is then killed, by its handle).
struct RoomsLock {
    psql: std::process::Child,
}

const LOCK_APP: &str = "matchchat-test-lock";

impl RoomsLock {
    async fn take(db: &Database) -> Self {
        use std::io::Write;
        let mut psql = std::process::Command::new("psql")
            .args([db.url.as_str(), "-v", "ON_ERROR_STOP=1", "-q"])
            .env("PGAPPNAME", LOCK_APP)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("psql starts");
        let stdin = psql.stdin.as_mut().expect("psql stdin");
        stdin
            .write_all(b"BEGIN;\nLOCK TABLE rooms IN ACCESS EXCLUSIVE MODE;\n")
            .expect("write to psql");
        stdin.flush().expect("flush psql");
        let lock = Self { psql };
        wait_for(
            db,
            "the rooms lock to be granted",
            &format!(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = '{LOCK_APP}' AND l.relation = 'rooms'::regclass \
             AND l.mode = 'AccessExclusiveLock' AND l.granted"
            ),
        )
        .await;
        lock
    }

    fn release(mut self) {
        use std::io::Write;
        let mut stdin = self.psql.stdin.take().expect("psql stdin");
        stdin.write_all(b"COMMIT;\n").expect("write to psql");
        drop(stdin);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.psql.try_wait() {
                assert!(status.success(), "psql holding the lock: {status:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("psql holding the lock did not end after COMMIT");
    }
}

impl Drop for RoomsLock {
    fn drop(&mut self) {
        if let Ok(None) = self.psql.try_wait() {
            let _ = self.psql.kill();
            let _ = self.psql.wait();
        }
    }
}

/// Bounded polling of an external condition: until `count_sql` (one count) is at least 1.
async fn wait_for(db: &Database, what: &str, count_sql: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let url = db.url.clone();
        let sql = count_sql.to_owned();
        let count: u64 = tokio::task::spawn_blocking(move || common::psql(&url, &sql))
            .await
            .unwrap()
            .parse()
            .expect("a count");
        if count >= 1 {
            return;
        }
        assert!(Instant::now() < deadline, "no {what} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `signal` (STOP or CONT) to the nats-server of `nats`, after checking that the PID
/// still is that server (the one this test started).
fn signal_nats(nats: &OwnNats, signal: &str) {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", nats.pid)).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        cmdline.contains(&format!("{}/nats.conf", nats.dir)),
        "PID {} is not our nats-server any more: {cmdline}",
        nats.pid
    );
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &nats.pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {}", nats.pid);
}

/// The race between a connection's start and a late notice, made certain. On a node, a
/// connection registers, then reads its rooms for `ready`, then the node starts tracking each
/// room at its `last_seq`. A notice that reaches the node in between, about messages committed
/// before the connection even opened, must not make the node forward them to that connection
/// after its `ready` (which counted them already). NATS only: the notice is held back by
/// stopping the test's own nats-server (SIGSTOP, then SIGCONT); PostgreSQL's NOTIFY cannot be
/// held back from outside. The connection's room read is held by a lock on `rooms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_late_notice_is_not_forwarded_behind_a_ready_that_counted_it() {
    let _ = Bus::nats();
    let nats = OwnNats::start();
    let bus = Bus::Nats {
        url: nats.url.clone(),
    };
    let db = Database::new(Db::Postgres);
    let who = Who::new();
    let (alice, bob, carol, dave) = (
        who.alice.as_str(),
        who.bob.as_str(),
        who.carol.as_str(),
        who.dave.as_str(),
    );
    // No periodic sweep during the test (it would wait on the lock too).
    let settings = [UNLIMITED[0], UNLIMITED[1], ("CHAT_BUS_SWEEP_MS", "60000")];
    let node1 = node(&db, &bus, &settings);
    let node2 = node(&db, &bus, &settings);
    let room = node1.room(alice, bob);
    let side = node1.room(carol, dave);
    let mut alice1 = Conn::open(&node1, alice, "alice@node1").await;
    let mut dave1 = Conn::open(&node1, dave, "dave@node1").await;
    let mut carol2 = Conn::open(&node2, carol, "carol@node2").await;
    // Both nodes are on the bus: a message from each reaches the other node. (With no
    // periodic sweep, it arrives through the node's subscription, or through the sweep the
    // node runs once that subscription is live.)
    carol2.send(&side, "c1", "hello dave").await;
    dave1.until_has(&side, 1).await;
    dave1.send(&side, "d2", "hello carol").await;
    carol2.until_has(&side, 2).await;
    dave1.until_has(&side, 2).await;

    signal_nats(&nats, "STOP");
    // Committed and acknowledged on node 1; their notices wait in the stopped nats-server.
    for i in 1..=3 {
        assert_eq!(
            alice1
                .send_acked(&room, &format!("a{i}"), &format!("before bob connects {i}"))
                .await,
            i
        );
    }
    // Then a receipt in the other room: its notice comes after those, and carol (node 2)
    // seeing it shows that node 2 has handled everything before it.
    dave1
        .client
        .send(json!({"type": "seen", "room_id": side, "up_to_seq": 1}))
        .await;
    dave1
        .until("dave's own seen", |f| f["type"] == "seen")
        .await;

    let (url, token) = (node2.ws_url(), node2.token(bob));
    let lock = RoomsLock::take(&db).await;
    let connecting = tokio::spawn(async move {
        let mut client = Client::connect(&url, None).await.expect("connects");
        client.send(json!({"type": "auth", "token": token})).await;
        let ready = client.recv().await;
        (client, ready)
    });
    // Bob's connection is registered on node 2 and waits for its rooms.
    wait_for(
        &db,
        "connection waiting for the rooms lock",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock'",
    )
    .await;
    signal_nats(&nats, "CONT");
    // Carol getting the receipt means node 2 handled the notice of alice's messages while
    // bob's connection was between its registration and its ready: the race, for certain.
    // (A node may instead hold notices back while a connection starts; then the receipt comes
    // only after the lock is released, and this bounded wait just ends.)
    let held_back = carol2
        .until_within(Duration::from_secs(2), |f| f["type"] == "seen")
        .await
        .is_none();
    lock.release();
    if held_back {
        carol2
            .until("the receipt once the lock is released", |f| {
                f["type"] == "seen"
            })
            .await;
    }
    assert_eq!(carol2.count("seen", &side), 1, "carol: one receipt");

    let (client, ready) = join(connecting).await;
    let mut bob2 = Conn::ready_on(client, ready, bob, "bob@node2");
    let summary = bob2.ready["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == room.as_str())
        .cloned()
        .expect("bob's room in ready");
    assert_eq!(summary["last_seq"], 3, "{}", bob2.ready);
    // The next message is the first bob's connection may get live.
    alice1.send(&room, "a4", "after bob connected").await;
    bob2.until_has(&room, 4).await;
    assert_eq!(bob2.seqs(&room), vec![4]);
    all_quiet(&mut [&mut bob2], Duration::from_millis(300)).await;
    drop((node1, node2));
    drop(nats);
}

both_engines!(
    two_clusters_on_one_bus_server_do_not_see_each_other,
    |bus: Bus| async move {
        // Two clusters (two databases) on one PostgreSQL server or one NATS server, with the
        // same user ids (two deployments, or two tests at once): nothing of one may reach the
        // other's connections.
        let who = Who::new();
        let (alice, bob, carol) = (who.alice.as_str(), who.bob.as_str(), who.carol.as_str());
        let db_a = Database::new(Db::Postgres);
        let db_b = Database::new(Db::Postgres);
        let logs = [("RUST_LOG", "warn,chat_server::cluster::nats=info")];
        let a1 = node(&db_a, &bus, &logs);
        let a2 = node(&db_a, &bus, &logs);
        let b1 = node(&db_b, &bus, &logs);
        for server in [&a1, &a2, &b1] {
            bus_up(server, &bus).await;
        }
        let mut alice_a = Conn::open(&a1, alice, "alice@A1").await;
        // Cluster A's own bus works: a room opened on A2 reaches A1.
        let room_a = a2.room(alice, carol);
        let opened = alice_a
            .until("cluster A's room_opened", |f| f["type"] == "room_opened")
            .await;
        assert_eq!(opened["room"]["room_id"], room_a.as_str(), "{opened}");

        // Cluster B: the same pair opens a room, chats, marks seen, closes it.
        let room_b = b1.room(alice, bob);
        let mut alice_b = Conn::open(&b1, alice, "alice@B1").await;
        let mut bob_b = Conn::open(&b1, bob, "bob@B1").await;
        alice_b.send_acked(&room_b, "x1", "in cluster B").await;
        bob_b.until_has(&room_b, 1).await;
        bob_b
            .client
            .send(json!({"type": "seen", "room_id": room_b, "up_to_seq": 1}))
            .await;
        alice_b.until("B's seen", |f| f["type"] == "seen").await;
        let (status, _) = b1
            .http()
            .delete(&format!("/api/rooms/{room_b}"), Some(SERVICE_KEY));
        assert_eq!(status, 204);
        alice_b
            .until("B's room_closed", |f| f["type"] == "room_closed")
            .await;

        // Then cluster A closes its room through A2: alice on A1 gets that, and nothing of B.
        let (status, _) = a2
            .http()
            .delete(&format!("/api/rooms/{room_a}"), Some(SERVICE_KEY));
        assert_eq!(status, 204);
        alice_a
            .until("cluster A's room_closed", |f| {
                f["type"] == "room_closed" && f["room_id"] == room_a.as_str()
            })
            .await;
        alice_a.quiet(Duration::from_millis(1000)).await;
        let foreign: Vec<&Value> = alice_a
            .events
            .iter()
            .filter(|f| f["room_id"] != room_a.as_str() && f["room"]["room_id"] != room_a.as_str())
            .collect();
        assert!(
            foreign.is_empty() && alice_a.messages.is_empty(),
            "alice on cluster A got cluster B's events: {foreign:?}, messages {:?}",
            alice_a.message_values(&room_b)
        );
    }
);

/// Waits (bounded polling of the node's log) until a NATS node is connected to NATS; a
/// PostgreSQL node is connected when it listens.
async fn bus_up(server: &Server, bus: &Bus) {
    if let Bus::Nats { .. } = bus {
        let deadline = Instant::now() + WAIT;
        while server.log_lines_with("cluster bus: connected to NATS") == 0 {
            assert!(
                Instant::now() < deadline,
                "the node did not connect to NATS within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. A cluster bus on SQLite.
// ---------------------------------------------------------------------------------------------

both_engines!(
    a_cluster_bus_on_sqlite_refuses_to_start,
    |bus: Bus| async move {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("chat.db").display());
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CHAT_BIND", "127.0.0.1:0")
            .env("DATABASE_URL", &url)
            .env("CHAT_SERVICE_KEY", SERVICE_KEY)
            .env("CHAT_JWT_SECRET", JWT_SECRET)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in bus.env() {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("chat-server starts");
        // Bounded wait for its exit; a server that keeps running is killed (it is ours).
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chat-server with CHAT_BUS={} on SQLite kept running",
                    bus.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let output = child.wait_with_output().expect("output");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!status.success(), "refused: {status:?}");
        assert!(!stdout.contains("listening"), "{stdout}");
        assert!(
            stderr.contains("PostgreSQL"),
            "the error says a cluster needs PostgreSQL: {stderr}"
        );
        assert!(
            stderr.contains("CHAT_BUS"),
            "and names the setting: {stderr}"
        );
    }
);
