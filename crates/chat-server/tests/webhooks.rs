//! Webhooks for unseen messages, end to end: real chat-server processes POST to a real HTTP
//! receiver that this test runs on 127.0.0.1 (a few lines of HTTP/1.1 over tokio, so it can
//! answer 500, or hang, on demand). Every webhook's signature is checked the way
//! docs/host-app.md tells a host app to.
//!
//! `CHAT_NOTIFY_AFTER_SECS=1` keeps the tests short: a burst is due one second after its first
//! message, and the scheduler looks every second. Waits are bounded polls; the "nothing more
//! arrives" checks are quiet windows after a webhook that was due later than the one that
//! must not come, as in tests/cluster.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Database, Db, SERVICE_KEY, Server, WAIT};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "test-webhook-secret-0123456789abcdef01";

/// What the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// This status to every request.
    Always(u16),
    /// This status to the first `n` requests, then 200.
    FailFirst(usize, u16),
    /// Reads the request and never answers.
    Hang,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    at: Instant,
    signature: String,
    delivery_header: String,
    body: String,
    json: Value,
    answered: Option<u16>,
}

#[derive(Debug)]
struct Shared {
    plan: Plan,
    hits: Vec<Hit>,
}

/// A webhook receiver on 127.0.0.1 and a free port.
struct Receiver {
    url: String,
    shared: Arc<Mutex<Shared>>,
}

impl Receiver {
    async fn start(plan: Plan) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/matchchat", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Shared {
            plan,
            hits: Vec::new(),
        }));
        let state = shared.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, state.clone()));
            }
        });
        Self { url, shared }
    }

    fn set_plan(&self, plan: Plan) {
        self.shared.lock().unwrap().plan = plan;
    }

    fn hits(&self) -> Vec<Hit> {
        self.shared.lock().unwrap().hits.clone()
    }

    /// Waits (bounded by `within`) until `n` requests came, and returns them all.
    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "{n} webhook requests expected in {within:?}, got {}: {:#?}",
                hits.len(),
                hits.iter().map(|h| &h.json).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a request matching `pick` came; returns it.
    async fn wait_until(&self, within: Duration, pick: impl Fn(&Hit) -> bool) -> Hit {
        let deadline = Instant::now() + within;
        loop {
            if let Some(hit) = self.hits().into_iter().find(|h| pick(h)) {
                return hit;
            }
            assert!(
                Instant::now() < deadline,
                "no matching webhook request in {within:?}: {:#?}",
                self.hits().iter().map(|h| &h.json).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Serves one connection: one request, one answer, close.
async fn serve(mut socket: TcpStream, state: Arc<Mutex<Shared>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, content_length) = loop {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length = header(&head, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + content_length {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let body = String::from_utf8_lossy(&buf[head_end..head_end + content_length]).to_string();
    let answer = {
        let mut shared = state.lock().unwrap();
        let answer = match shared.plan {
            Plan::Always(status) => Some(status),
            Plan::FailFirst(n, status) if shared.hits.len() < n => Some(status),
            Plan::FailFirst(..) => Some(200),
            Plan::Hang => None,
        };
        shared.hits.push(Hit {
            at: Instant::now(),
            signature: header(&head, "x-matchchat-signature").unwrap_or_default(),
            delivery_header: header(&head, "x-matchchat-delivery").unwrap_or_default(),
            json: serde_json::from_str(&body).unwrap_or(Value::Null),
            body,
            answered: answer,
        });
        answer
    };
    match answer {
        Some(status) => {
            let response = format!(
                "HTTP/1.1 {status} Whatever\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
        None => {
            // Hold the connection open, answering nothing, for longer than any test.
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Checks `X-Matchchat-Signature` as docs/host-app.md says a receiver should: HMAC-SHA256 of
/// "t.body" with the secret, and a recent `t`.
fn assert_signed(hit: &Hit) {
    let mut t = None;
    let mut v1 = None;
    for part in hit.signature.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value.to_owned()),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => {}
        }
    }
    let (t, v1) = (t.expect("t="), v1.expect("v1="));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", hit.body).as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected, "signature of {}", hit.body);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t: i64 = t.parse().unwrap();
    assert!((now - t).abs() < 60, "t={t} is recent (now {now})");
    assert_eq!(
        hit.delivery_header,
        hit.json["delivery_id"].as_str().unwrap_or_default(),
        "X-Matchchat-Delivery names the delivery"
    );
}

/// The environment of a server with webhooks to `receiver`.
fn hooks_env<'a>(receiver: &'a Receiver, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("CHAT_WEBHOOK_URL", receiver.url.as_str()),
        ("CHAT_WEBHOOK_SECRET", SECRET),
        ("CHAT_NOTIFY_AFTER_SECS", "1"),
        ("CHAT_RATE_PER_SEC", "1000"),
        ("CHAT_RATE_BURST", "1000"),
    ];
    env.extend_from_slice(extra);
    env
}

async fn send(client: &mut common::Client, room: &str, cmid: &str, body: &str) -> Value {
    client.send_message(room, cmid, body).await;
    client
        .recv_until(|f| f["type"] == "message" && f["message"]["client_msg_id"] == cmid)
        .await
}

async fn mark_seen(client: &mut common::Client, room: &str, up_to: u64) {
    client
        .send(json!({"type": "seen", "room_id": room, "up_to_seq": up_to}))
        .await;
    client.recv_type("seen").await;
}

/// Lets the scheduler run a few more passes (the quiet window after a sync point).
async fn quiet(window: Duration) {
    tokio::time::sleep(window).await;
}

/// The value of one metric line (`name{labels} value`) in the Prometheus text.
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

both_backends!(
    a_burst_makes_one_signed_webhook_and_the_next_burst_starts_after_seen,
    |db: Db| async move {
        let db = Database::new(db);
        let receiver = Receiver::start(Plan::Always(200)).await;
        let server = Server::start_with(
            &db,
            &hooks_env(&receiver, &[("CHAT_WEBHOOK_INCLUDE_BODY", "true")]),
        );
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        let first = send(&mut alice, &room, "a1", "hi bob").await;
        send(&mut alice, &room, "a2", "are you there?").await;
        send(&mut alice, &room, "a3", "hello?").await;

        let hits = receiver.wait_for(1, WAIT).await;
        let hit = &hits[0];
        assert_signed(hit);
        let p = &hit.json;
        assert_eq!(p["type"], "message.unseen");
        assert!(
            p["delivery_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{p}"
        );
        assert_eq!(
            (&p["room_id"], &p["recipient_id"], &p["sender_id"]),
            (&json!(room), &json!("bob"), &json!("alice"))
        );
        assert_eq!(
            (&p["unseen_count"], &p["last_seq"]),
            (&json!(3), &json!(3)),
            "{p}"
        );
        assert_eq!(
            p["body"], "hello?",
            "the latest message's body (CHAT_WEBHOOK_INCLUDE_BODY)"
        );
        let last_sent_at = p["last_sent_at"].as_str().expect("RFC 3339 string");
        assert!(
            last_sent_at.ends_with('Z') && last_sent_at.contains('T'),
            "{last_sent_at}"
        );
        assert!(
            last_sent_at >= first["message"]["sent_at"].as_str().unwrap(),
            "the latest message's time"
        );
        // More messages before bob looks: the same burst, no second webhook.
        send(&mut alice, &room, "a4", "still there?").await;
        quiet(Duration::from_millis(2500)).await;
        assert_eq!(
            receiver.hits().len(),
            1,
            "one webhook per burst: {:?}",
            receiver.hits()
        );

        // bob sees everything; alice writes again: a new burst, a new delivery.
        let (mut bob, _) = server.connect("bob").await;
        mark_seen(&mut bob, &room, 4).await;
        send(&mut alice, &room, "a5", "ok, later then").await;
        let hits = receiver.wait_for(2, WAIT).await;
        let second = &hits[1].json;
        assert_signed(&hits[1]);
        assert_eq!(
            (&second["unseen_count"], &second["last_seq"]),
            (&json!(1), &json!(5))
        );
        assert_ne!(second["delivery_id"], p["delivery_id"]);
        assert_eq!(second["body"], "ok, later then");
        quiet(Duration::from_millis(1500)).await;
        assert_eq!(receiver.hits().len(), 2);
    }
);

both_backends!(messages_seen_in_time_make_no_webhook, |db: Db| async move {
    let db = Database::new(db);
    let receiver = Receiver::start(Plan::Always(204)).await;
    let server = Server::start_with(
        &db,
        &hooks_env(&receiver, &[("CHAT_NOTIFY_AFTER_SECS", "2")]),
    );
    let seen_room = server.room("alice", "bob");
    let unseen_room = server.room("carol", "bob");
    let (mut alice, _) = server.connect("alice").await;
    let (mut carol, _) = server.connect("carol").await;
    let (mut bob, _) = server.connect("bob").await;
    send(&mut alice, &seen_room, "a1", "hi").await;
    send(&mut alice, &seen_room, "a2", "hi again").await;
    mark_seen(&mut bob, &seen_room, 2).await;
    // Sent after alice's: its webhook is due after hers would have been.
    send(&mut carol, &unseen_room, "c1", "hey").await;

    let hit = receiver
        .wait_until(WAIT, |h| h.json["room_id"] == json!(unseen_room))
        .await;
    assert_signed(&hit);
    assert_eq!(hit.json["sender_id"], "carol");
    assert!(
        hit.json.get("body").is_none(),
        "no body unless asked: {}",
        hit.json
    );
    quiet(Duration::from_millis(1500)).await;
    let rooms: Vec<Value> = receiver
        .hits()
        .iter()
        .map(|h| h.json["room_id"].clone())
        .collect();
    assert_eq!(
        rooms,
        vec![json!(unseen_room)],
        "bob saw alice's messages in time"
    );
});

both_backends!(
    a_failing_receiver_gets_retries_until_it_answers,
    |db: Db| async move {
        let db = Database::new(db);
        let receiver = Receiver::start(Plan::FailFirst(2, 500)).await;
        let server = Server::start_with(&db, &hooks_env(&receiver, &[]));
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        send(&mut alice, &room, "a1", "hi").await;

        let hits = receiver.wait_for(3, Duration::from_secs(30)).await;
        let ids: Vec<&Value> = hits.iter().map(|h| &h.json["delivery_id"]).collect();
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "one delivery, retried: {ids:?}"
        );
        for hit in &hits {
            assert_signed(hit);
            assert_eq!(hit.json, hits[0].json, "the same payload every time");
        }
        assert_eq!(
            hits.iter().map(|h| h.answered).collect::<Vec<_>>(),
            vec![Some(500), Some(500), Some(200)]
        );
        let first_retry = hits[1].at - hits[0].at;
        assert!(
            first_retry < Duration::from_secs(5),
            "first retry within 5 s: {first_retry:?}"
        );
        quiet(Duration::from_millis(3000)).await;
        assert_eq!(receiver.hits().len(), 3, "delivered: no more attempts");

        let (status, text) = server.http().get_text("/metrics", Some(SERVICE_KEY));
        assert_eq!(status, 200);
        assert_eq!(
            metric(
                &text,
                "matchchat_webhook_attempts_total{outcome=\"refused\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            metric(
                &text,
                "matchchat_webhook_attempts_total{outcome=\"delivered\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(&text, "matchchat_webhook_deliveries_created_total"),
            Some(1.0)
        );
        assert!(metric(&text, "matchchat_webhook_delivery_seconds_count").is_some());
    }
);

both_backends!(
    a_delivery_is_given_up_and_listed_as_failed,
    |db: Db| async move {
        let db = Database::new(db);
        let receiver = Receiver::start(Plan::Always(503)).await;
        let server = Server::start_with(
            &db,
            &hooks_env(&receiver, &[("CHAT_WEBHOOK_GIVE_UP_SECS", "3")]),
        );
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        send(&mut alice, &room, "a1", "hi").await;

        let http = server.http();
        assert_eq!(http.get_text("/api/webhooks/failed", None).0, 401);
        let deadline = Instant::now() + Duration::from_secs(30);
        let failed = loop {
            let (status, text) = http.get_text("/api/webhooks/failed", Some(SERVICE_KEY));
            assert_eq!(status, 200, "{text}");
            let body: Value = serde_json::from_str(&text).unwrap();
            if let Some(first) = body["failed"].as_array().and_then(|a| a.first()) {
                break first.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no failed delivery listed: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let hits = receiver.hits();
        assert!(hits.len() >= 2, "retried before giving up: {}", hits.len());
        assert_eq!(failed["delivery_id"], hits[0].json["delivery_id"]);
        assert_eq!(
            (
                &failed["room_id"],
                &failed["recipient_id"],
                &failed["unseen_count"]
            ),
            (&json!(room), &json!("bob"), &json!(1))
        );
        assert_eq!(failed["last_error"], "HTTP 503");
        assert!(failed["attempts"].as_u64().unwrap() >= 2, "{failed}");
        assert!(failed["failed_at"].is_string() && failed["created_at"].is_string());
        let attempts = hits.len();
        quiet(Duration::from_millis(2500)).await;
        assert_eq!(
            receiver.hits().len(),
            attempts,
            "a failed delivery is not tried again"
        );

        let (_, text) = http.get_text("/metrics", Some(SERVICE_KEY));
        assert_eq!(
            metric(&text, "matchchat_webhook_given_up_total"),
            Some(1.0),
            "{text}"
        );
        let (status, _) = http.get_text("/api/webhooks/failed?limit=0", Some(SERVICE_KEY));
        assert_eq!(status, 400);
    }
);

both_backends!(a_crash_and_restart_lose_no_delivery, |db: Db| async move {
    let db = Database::new(db);
    let receiver = Receiver::start(Plan::Always(500)).await;
    let mut server = Server::start_with(&db, &hooks_env(&receiver, &[]));
    let waiting = server.room("alice", "bob");
    let not_yet_due = server.room("carol", "dave");
    let (mut alice, _) = server.connect("alice").await;
    let (mut carol, _) = server.connect("carol").await;
    send(&mut alice, &waiting, "a1", "hi").await;
    // Two failed attempts: the delivery is in the outbox, waiting for its next retry (at
    // least a second away), not in flight.
    receiver.wait_for(2, Duration::from_secs(20)).await;
    let delivery_id = receiver.hits()[0].json["delivery_id"].clone();
    // carol's message is not due for a second: only the database knows it must be notified.
    send(&mut carol, &not_yet_due, "c1", "hello dave").await;
    server.kill();
    drop((alice, carol));

    receiver.set_plan(Plan::Always(200));
    server.restart();
    let delivered = receiver
        .wait_until(WAIT, |h| {
            h.answered == Some(200) && h.json["delivery_id"] == delivery_id
        })
        .await;
    assert_eq!(delivered.json["room_id"], json!(waiting));
    let late = receiver
        .wait_until(WAIT, |h| h.json["room_id"] == json!(not_yet_due))
        .await;
    assert_signed(&late);
    assert_eq!(
        (&late.json["recipient_id"], &late.json["unseen_count"]),
        (&json!("dave"), &json!(1))
    );

    // A graceful stop with a delivery pending keeps it too.
    receiver.set_plan(Plan::Always(500));
    let (mut alice, _) = server.connect("alice").await;
    let (mut bob, _) = server.connect("bob").await;
    mark_seen(&mut bob, &waiting, 1).await;
    send(&mut alice, &waiting, "a2", "again").await;
    let pending = receiver
        .wait_until(WAIT, |h| h.json["last_seq"] == json!(2))
        .await;
    assert!(
        server.terminate().is_some_and(|s| s.success()),
        "a clean stop"
    );
    drop((alice, bob));
    receiver.set_plan(Plan::Always(200));
    server.restart();
    receiver
        .wait_until(WAIT, |h| {
            h.answered == Some(200) && h.json["delivery_id"] == pending.json["delivery_id"]
        })
        .await;
});

both_backends!(
    a_hanging_receiver_does_not_slow_the_chat,
    |db: Db| async move {
        let db = Database::new(db);
        let receiver = Receiver::start(Plan::Hang).await;
        let server = Server::start_with(&db, &hooks_env(&receiver, &[]));
        let (mut bob, _) = server.connect("bob").await;
        // More bursts than the sender's POSTs in flight (8): all of them hang.
        let mut rooms = Vec::new();
        for i in 0..10 {
            let sender = format!("u{i}");
            let room = server.room(&sender, "nobody");
            let (mut client, _) = server.connect(&sender).await;
            send(&mut client, &room, "m1", "anyone?").await;
            rooms.push(room);
        }
        receiver.wait_for(8, WAIT).await;
        // Meanwhile the chat goes on at full speed.
        let room = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        for i in 0..20 {
            let started = Instant::now();
            let cmid = format!("a{i}");
            alice.send_message(&room, &cmid, "ping").await;
            bob.recv_until(|f| f["type"] == "message" && f["message"]["client_msg_id"] == cmid)
                .await;
            let took = started.elapsed();
            assert!(
                took < Duration::from_millis(500),
                "message {i} took {took:?}"
            );
        }
        assert_eq!(
            receiver.hits().len(),
            8,
            "at most 8 POSTs in flight per node"
        );
    }
);

// `CHAT_NOTIFY_AFTER_SECS=0`: at commit, and only for a recipient with no connection on any
// node (protocol 1.1's presence rows; a connection that hides presence is a connection too).
both_backends!(
    zero_delay_notifies_offline_recipients_at_commit,
    |db: Db| async move {
        let db = Database::new(db);
        let receiver = Receiver::start(Plan::Always(200)).await;
        let server = Server::start_with(
            &db,
            &hooks_env(&receiver, &[("CHAT_NOTIFY_AFTER_SECS", "0")]),
        );
        let offline = server.room("alice", "bob");
        let (mut alice, _) = server.connect("alice").await;
        let started = Instant::now();
        send(&mut alice, &offline, "a1", "hi").await;
        let hit = receiver
            .wait_until(WAIT, |h| h.json["room_id"] == json!(offline))
            .await;
        assert_signed(&hit);
        let took = hit.at - started;
        assert!(
            took < Duration::from_millis(1500),
            "at commit, not after a delay: {took:?}"
        );

        // Connected: dave, and gina through a token that hides her presence (still a
        // connection). The presence service records changes in order, so once dave shows as
        // online in carol's `ready`, gina's connection is recorded too.
        let online = server.room("carol", "dave");
        let hidden = server.room("henry", "gina");
        let (_gina, _) = connect_hidden(&server, "gina").await;
        let (_dave, _) = server.connect("dave").await;
        let deadline = Instant::now() + WAIT;
        let mut carol = loop {
            let (carol, ready) = server.connect("carol").await;
            let peer = ready["rooms"]
                .as_array()
                .and_then(|rooms| rooms.iter().find(|r| r["room_id"] == json!(online)))
                .map(|r| r["peer"]["online"].clone());
            if peer == Some(json!(true)) {
                break carol;
            }
            assert!(
                Instant::now() < deadline,
                "dave never showed as online: {ready}"
            );
            drop(carol);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (mut henry, _) = server.connect("henry").await;
        send(&mut henry, &hidden, "h1", "hi gina").await;
        send(&mut carol, &online, "c1", "hi dave").await;
        // A sync point committed after carol's message: a webhook for erin, who is offline.
        let sync = server.room("frank", "erin");
        let (mut frank, _) = server.connect("frank").await;
        send(&mut frank, &sync, "f1", "erin?").await;
        receiver
            .wait_until(WAIT, |h| h.json["room_id"] == json!(sync))
            .await;
        quiet(Duration::from_millis(1500)).await;
        assert!(
            receiver
                .hits()
                .iter()
                .all(|h| h.json["room_id"] != json!(online) && h.json["room_id"] != json!(hidden)),
            "dave and gina are connected: no webhook at commit: {:?}",
            receiver.hits().iter().map(|h| &h.json).collect::<Vec<_>>()
        );
    }
);

/// Connects `user` with a token whose `presence` claim hides them (protocol 1.1).
async fn connect_hidden(server: &Server, user: &str) -> (common::Client, Value) {
    let (status, body) = server.http().post(
        "/api/tokens",
        json!({"user_id": user, "ttl_seconds": 3600, "presence": false}),
        Some(SERVICE_KEY),
    );
    assert_eq!(status, 200, "{body}");
    let mut client = common::Client::connect(&server.ws_url(), None)
        .await
        .expect("websocket connects");
    client
        .send(json!({"type": "auth", "token": body["token"]}))
        .await;
    let ready = client.recv_type("ready").await;
    (client, ready)
}

/// Two nodes on one PostgreSQL database (cluster bus over LISTEN/NOTIFY), both scanning and
/// both sending: every burst makes one delivery, sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_send_each_delivery_once() {
    let db = Database::new(Db::Postgres);
    let receiver = Receiver::start(Plan::Always(200)).await;
    let env = hooks_env(&receiver, &[("CHAT_BUS", "postgres")]);
    let a = Server::start_with(&db, &env);
    let b = Server::start_with(&db, &env);
    let rooms: Vec<String> = (0..20)
        .map(|i| a.room(&format!("s{i}"), &format!("r{i}")))
        .collect();
    for (i, room) in rooms.iter().enumerate() {
        // Each burst's messages through both nodes.
        let (mut on_a, _) = a.connect(&format!("s{i}")).await;
        let (mut on_b, _) = b.connect(&format!("s{i}")).await;
        send(&mut on_a, room, "m1", "one").await;
        send(&mut on_b, room, "m2", "two").await;
    }
    let hits = receiver.wait_for(20, Duration::from_secs(30)).await;
    quiet(Duration::from_millis(3000)).await;
    let hits_after = receiver.hits();
    assert_eq!(
        hits_after.len(),
        hits.len(),
        "nothing more after the quiet window"
    );
    let mut per_room: Vec<String> = hits_after
        .iter()
        .map(|h| h.json["room_id"].as_str().unwrap().to_owned())
        .collect();
    per_room.sort();
    let mut expected = rooms.clone();
    expected.sort();
    assert_eq!(per_room, expected, "one webhook per room, none twice");
    for hit in &hits_after {
        assert_signed(hit);
        assert_eq!(hit.json["unseen_count"], 2, "{}", hit.json);
    }
    // Each node counts what it did: together, 20 made and 20 sent.
    let counted = |name: &str| -> Vec<f64> {
        [&a, &b]
            .iter()
            .map(|node| {
                let (_, text) = node.http().get_text("/metrics", Some(SERVICE_KEY));
                metric(&text, name).unwrap_or(0.0)
            })
            .collect()
    };
    let made = counted("matchchat_webhook_deliveries_created_total");
    let sent = counted("matchchat_webhook_attempts_total{outcome=\"delivered\"}");
    eprintln!("deliveries made per node {made:?}, sent per node {sent:?}");
    assert_eq!(made.iter().sum::<f64>(), 20.0, "{made:?}");
    assert_eq!(sent.iter().sum::<f64>(), 20.0, "{sent:?}");
}

/// The server refuses to start with a webhook URL and no secret, or a short one.
#[tokio::test]
async fn webhook_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("chat.db").display());
    for (env, says) in [
        (
            vec![("CHAT_WEBHOOK_URL", "http://127.0.0.1:9/hook")],
            "CHAT_WEBHOOK_SECRET",
        ),
        (vec![("CHAT_WEBHOOK_SECRET", SECRET)], "CHAT_WEBHOOK_URL"),
        (
            vec![
                ("CHAT_WEBHOOK_URL", "http://127.0.0.1:9/hook"),
                ("CHAT_WEBHOOK_SECRET", "short"),
            ],
            "32 bytes",
        ),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CHAT_BIND", "127.0.0.1:0")
            .env("DATABASE_URL", &url)
            .env("CHAT_SERVICE_KEY", SERVICE_KEY)
            .env("CHAT_JWT_SECRET", common::JWT_SECRET)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("chat-server starts");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chat-server with {env:?} kept running");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let output = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!status.success(), "{env:?} refused");
        assert!(
            stderr.contains(says),
            "{env:?}: the error names {says}: {stderr}"
        );
    }
}
