//! Issue 11: a slow-consumer storm. In each of [`STUCK_ROOMS`] rooms one member stops
//! reading while the other keeps sending; meanwhile [`HEALTHY_PAIRS`] pairs of ordinary
//! clients keep talking and time the round trip of their own messages (send → own copy back,
//! which the server sends only after the commit). What must hold, against the real binary
//! over real sockets:
//!
//! - every stuck recipient is closed: 1008 `slow_consumer` (the connection's write timeout
//!   or its full mailbox), or its socket simply gone (the kernel's `TCP_USER_TIMEOUT`, set to
//!   the same 2 s, runs from the moment the peer's window closed and so usually drops it
//!   first); no other connection is closed;
//! - the server's resident memory stays under a bound derived from the per-connection limits
//!   and what the store caches (see [`rss_bound_kib`]);
//! - the healthy pairs are not stuck behind the slow ones: their p99 round trip during the
//!   storm stays under [`HEALTHY_P99_BOUND`] (a correctness bound on a loaded 2-core debug
//!   build, not a speed claim: speed is for `chat-bench`), and they never miss, duplicate or
//!   reorder a message.
//!
//! With `CHAT_WRITE_TIMEOUT_SECS=2` a stuck recipient is gone 2–4 s after it stopped
//! reading, so what is addressed to it meanwhile is small (a few dozen messages); the memory
//! bound is what the per-connection limits allow whatever the rate, and `security.rs` D1 is
//! the sharp test of one stuck client asking for far more than that.
//!
//! Every wait has a deadline; the storm ends when the server's metrics show every stuck
//! connection gone, not after a fixed time. The SQLite and PostgreSQL cases take turns (a
//! lock), so each has the machine's two cores to itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Client, Database, Db, Next, SERVICE_KEY, Server, WAIT};
use serde_json::json;

/// Rooms with a recipient that stops reading and a sender that keeps sending.
const STUCK_ROOMS: usize = 40;
/// Pairs of clients that read everything and measure their round trips.
const HEALTHY_PAIRS: usize = 4;
/// A storm sender sends one of the largest messages this often: 40 rooms × 5/s, busy rooms
/// whose total (with the healthy pairs') stays well within what a debug build on a shared
/// 2-core machine commits (a few hundred messages per second at worst, measured), so the
/// healthy pairs' latency shows head-of-line blocking behind the stuck clients, not a
/// server simply overloaded by the test's own traffic.
const SENDER_PACE: Duration = Duration::from_millis(200);
/// A healthy member sends one message this often.
const HEALTHY_PACE: Duration = Duration::from_millis(50);
/// p99 of a healthy member's round trip during the storm, at most.
const HEALTHY_P99_BOUND: Duration = Duration::from_millis(500);
/// The whole storm (until every stuck connection is gone), at most.
const STORM_LIMIT: Duration = Duration::from_secs(30);

/// The storm's cases take turns: each measures memory and latency, and two storms on two
/// cores at once would measure each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The largest message: 160 four-byte characters (a ~900-byte frame), so a stuck socket
/// fills with few messages.
fn heavy_body() -> String {
    "😀".repeat(160)
}

/// The bound on the server's RSS during the storm, in KiB above the baseline (all clients
/// connected, nothing sent yet), for `messages` sent in all:
///
/// - per stuck connection, what `ws/outbox.rs` and `ws/connection.rs` let it hold: the
///   outbox's 256 KiB soft limit (past it the connection takes no new work, mailbox
///   included), 64 KiB between the session and the HTTP dispatcher, the dispatcher's 32 KiB
///   write buffer, and a full mailbox of 256 frames of ~1 KiB (a stuck client sends no
///   requests, so no replies are in flight): ~610 KiB, counted as 1 MiB for the
///   allocator's rounding;
/// - on SQLite, the store's page cache, which fills with the pages the storm writes: at
///   most `cache_size` (32 MiB, `chat-store/src/sqlite.rs`), and at most ~4 pages of 4 KiB
///   per message (`docs/benchmarks.md` measured 4.2 WAL pages written per message, which
///   bounds the distinct pages it touches); PostgreSQL caches in its own processes;
/// - 16 MiB for what the storm touches once: tokio and actix buffers of the 88 busy
///   connections, blocking-pool threads, the metrics scrapes, allocator arenas (`security.rs`
///   D1 saw +4.3 MB for a single stuck client, most of it such one-off growth).
///
/// So about 40 + 16 MiB, plus the page cache on SQLite.
fn rss_bound_kib(db: Db, messages: u64) -> u64 {
    let per_stuck = 1024;
    let store_cache = match db {
        Db::Sqlite => (messages * 4 * 4).min(32 * 1024),
        Db::Postgres => 0,
    };
    STUCK_ROOMS as u64 * per_stuck + store_cache + 16 * 1024
}

/// The sum of the samples of `name` (any labels) in a Prometheus text exposition.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                &rest[rest.find('}')? + 1..]
            } else {
                rest
            };
            // `name_other` is another metric.
            if !value.starts_with(' ') {
                return None;
            }
            value.trim().parse::<f64>().ok()
        })
        .fold(0.0, |sum, v| sum + v)
}

/// What a healthy member saw.
struct Healthy {
    who: String,
    round_trips: Vec<Duration>,
    sent: u64,
    peer_received: u64,
}

/// One member of a healthy pair: sends `{me}-{k}` every [`HEALTHY_PACE`] until `stop`, then
/// `{me}-end`; reads everything; returns once its own end marker and its peer's are back.
/// Checks as it goes that the room's seqs are gapless from 1, that its own copies and its
/// peer's messages come in the order they were sent with nothing missing, and that no error
/// frame or close comes.
async fn healthy_member(
    mut client: Client,
    room: String,
    me: String,
    peer: String,
    stop: Arc<AtomicBool>,
) -> Healthy {
    let deadline = Instant::now() + STORM_LIMIT + WAIT;
    let mut next_due = Instant::now();
    let mut sent: u64 = 0;
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut round_trips = Vec::new();
    let mut last_seq = 0u64;
    let mut peer_next = 0u64;
    let (mut end_sent, mut own_end, mut peer_end) = (false, false, false);
    let own_end_id = format!("{me}-end");
    let peer_end_id = format!("{peer}-end");
    while !(own_end && peer_end) {
        let now = Instant::now();
        assert!(
            now < deadline,
            "{me}: the storm's traffic did not end in time ({sent} sent, {} unconfirmed, own end {own_end}, peer end {peer_end})",
            in_flight.len()
        );
        if !end_sent && stop.load(Ordering::Acquire) {
            client.send_message(&room, &own_end_id, "bye").await;
            end_sent = true;
            continue;
        }
        if !end_sent && now >= next_due {
            client
                .send_message(&room, &format!("{me}-{sent}"), "are you there?")
                .await;
            in_flight.push_back((sent, now));
            sent += 1;
            next_due = (next_due + HEALTHY_PACE).max(now);
            continue;
        }
        let wait = if end_sent {
            deadline.saturating_duration_since(now)
        } else {
            next_due.saturating_duration_since(now)
        };
        let frame = match client.next_within(wait).await {
            Next::Timeout => continue,
            Next::Ended(why) => panic!("{me}: a healthy connection ended during the storm: {why}"),
            Next::Frame(frame) => frame,
        };
        match frame["type"].as_str() {
            Some("message") => {}
            Some("error") => panic!("{me}: error frame during the storm: {frame}"),
            _ => continue,
        }
        let message = &frame["message"];
        assert_eq!(message["room_id"], room.as_str(), "{me}: {frame}");
        let seq = message["seq"].as_u64().expect("seq");
        assert_eq!(
            seq,
            last_seq + 1,
            "{me}: seq gap or reorder: {seq} after {last_seq}"
        );
        last_seq = seq;
        let id = message["client_msg_id"].as_str().expect("client_msg_id");
        if id == own_end_id {
            assert!(
                in_flight.is_empty(),
                "{me}: own end marker before {in_flight:?}"
            );
            own_end = true;
        } else if id == peer_end_id {
            peer_end = true;
        } else if let Some(k) = id.strip_prefix(&format!("{me}-")) {
            let k: u64 = k.parse().expect("own message number");
            let (want, at) = in_flight
                .pop_front()
                .unwrap_or_else(|| panic!("{me}: own copy {id} that was not in flight"));
            assert_eq!(k, want, "{me}: own copies out of order");
            round_trips.push(at.elapsed());
        } else if let Some(k) = id.strip_prefix(&format!("{peer}-")) {
            assert!(!peer_end, "{me}: {id} after the peer's end marker");
            let k: u64 = k.parse().expect("peer message number");
            assert_eq!(
                k, peer_next,
                "{me}: the peer's messages missed or reordered"
            );
            peer_next += 1;
        } else {
            panic!("{me}: a message from nobody in this room: {frame}");
        }
    }
    Healthy {
        who: me,
        round_trips,
        sent,
        peer_received: peer_next,
    }
}

/// One storm room: `sender` sends a heavy message every [`SENDER_PACE`] until `stop`, reading
/// its own copies back (it is not slow itself); `stuck` reads nothing. Returns the stuck
/// client (for the caller to see how it ended) and the messages sent.
async fn storm_room(
    mut sender: Client,
    stuck: Client,
    room: String,
    stop: Arc<AtomicBool>,
) -> (Client, u64) {
    let deadline = Instant::now() + STORM_LIMIT + WAIT;
    let body = heavy_body();
    let mut sent = 0u64;
    let mut next_due = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        assert!(now < deadline, "a storm sender outlived the storm");
        if now >= next_due {
            sender
                .send_message(&room, &format!("s-{sent}"), &body)
                .await;
            sent += 1;
            next_due = (next_due + SENDER_PACE).max(now);
            continue;
        }
        match sender.next_within(next_due - now).await {
            Next::Ended(why) => panic!("a storm sender was closed: {why}"),
            Next::Frame(frame) if frame["type"] == "error" => {
                panic!("a storm sender got an error: {frame}")
            }
            Next::Timeout | Next::Frame(_) => {}
        }
    }
    (stuck, sent)
}

/// How a stuck client's connection ended, read once the storm is over: through whatever its
/// socket still held, to a close frame or the connection's end (bounded).
async fn how_it_ended(client: &mut Client) -> String {
    let deadline = Instant::now() + WAIT;
    for _ in 0..1_000_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_within(left).await {
            Next::Frame(_) => {}
            Next::Timeout => return "still open".into(),
            Next::Ended(why) => return why,
        }
    }
    "still sending".into()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn scrape(server: &Server) -> String {
    let http = server.http();
    let (status, text) =
        tokio::task::spawn_blocking(move || http.get_text("/metrics", Some(SERVICE_KEY)))
            .await
            .expect("scrape task");
    assert_eq!(status, 200, "{text}");
    text
}

async fn storm(db_kind: Db) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let db = Database::new(db_kind);
    let server = Server::start_with(
        &db,
        &[
            ("CHAT_WRITE_TIMEOUT_SECS", "2"),
            ("CHAT_RATE_PER_SEC", "100000"),
            ("CHAT_RATE_BURST", "100000"),
            ("CHAT_REQUEST_RATE_PER_SEC", "100000"),
            ("CHAT_REQUEST_RATE_BURST", "100000"),
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));

    // Everyone connects and is ready before anything is sent.
    let mut rooms = Vec::new();
    for i in 0..STUCK_ROOMS {
        let (sender_id, stuck_id) = (format!("storm{i}-sender"), format!("storm{i}-stuck"));
        let room = server.room(&sender_id, &stuck_id);
        let (sender, _) = server.connect(&sender_id).await;
        let mut stuck = Client::connect_slow_reader(&server).await;
        stuck
            .send(json!({"type": "auth", "token": server.token(&stuck_id)}))
            .await;
        assert_eq!(stuck.recv().await["type"], "ready");
        // From here on `stuck` reads nothing until the storm is over.
        rooms.push((sender, stuck, room));
    }
    let mut pairs = Vec::new();
    for i in 0..HEALTHY_PAIRS {
        let (a, b) = (format!("calm{i}a"), format!("calm{i}b"));
        let room = server.room(&a, &b);
        let (ca, _) = server.connect(&a).await;
        let (cb, _) = server.connect(&b).await;
        pairs.push((room, a, ca, b, cb));
    }
    let connections = |text: &str| metric_sum(text, "matchchat_connections");
    let before = scrape(&server).await;
    assert_eq!(
        connections(&before) as usize,
        2 * STUCK_ROOMS + 2 * HEALTHY_PAIRS
    );
    let baseline = server.rss_kib();

    let started = Instant::now();
    let mut healthy = Vec::new();
    for (room, a, ca, b, cb) in pairs {
        healthy.push(tokio::spawn(healthy_member(
            ca,
            room.clone(),
            a.clone(),
            b.clone(),
            stop.clone(),
        )));
        healthy.push(tokio::spawn(healthy_member(cb, room, b, a, stop.clone())));
    }
    let mut senders = Vec::new();
    for (sender, stuck, room) in rooms {
        senders.push(tokio::spawn(storm_room(sender, stuck, room, stop.clone())));
    }

    // The storm lasts until every stuck connection is gone from the server (the gauge counts
    // a closed connection until its socket is gone): only the senders and the healthy pairs
    // remain. A stuck one goes in one of two ways, whichever comes first: its task finds the
    // peer took nothing for the write timeout and closes it as `slow_consumer` (counted), or
    // the kernel's `TCP_USER_TIMEOUT` (the same 2 s, `tcp.rs`), which runs from the moment
    // the peer's window closed and so usually first, drops the socket under it.
    let mut peak = baseline;
    let mut slow_closes;
    let mut last_metrics;
    loop {
        peak = peak.max(server.rss_kib());
        last_metrics = scrape(&server).await;
        slow_closes = metric_sum(&last_metrics, "matchchat_slow_consumer_closes_total");
        let open = connections(&last_metrics) as usize;
        if open == STUCK_ROOMS + 2 * HEALTHY_PAIRS {
            break;
        }
        let finished =
            senders.iter().any(|t| t.is_finished()) || healthy.iter().any(|t| t.is_finished());
        assert!(
            !finished && started.elapsed() < STORM_LIMIT,
            "after {:?}: {slow_closes} slow-consumer closes, {open} connections open \
             (a task ended early: {finished})",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let storm_took = started.elapsed();
    peak = peak.max(server.rss_kib());
    stop.store(true, Ordering::Release);

    let mut healthy_results = Vec::new();
    for task in healthy {
        healthy_results.push(task.await.expect("healthy member"));
    }
    let mut sent_to_stuck = 0;
    let mut endings = Vec::new();
    for task in senders {
        let (mut stuck, sent) = task.await.expect("storm room");
        sent_to_stuck += sent;
        endings.push(how_it_ended(&mut stuck).await);
    }

    let mut all: Vec<Duration> = healthy_results
        .iter()
        .flat_map(|h| h.round_trips.iter().copied())
        .collect();
    all.sort_unstable();
    let (p50, p99, max) = (
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or_default(),
    );
    let after = server.rss_kib();
    let messages = sent_to_stuck + healthy_results.iter().map(|h| h.sent + 1).sum::<u64>();
    let bound = rss_bound_kib(db_kind, messages);
    let mut ended = std::collections::BTreeMap::<&str, usize>::new();
    for ending in &endings {
        *ended.entry(ending.as_str()).or_default() += 1;
    }
    eprintln!(
        "storm ({db_kind:?}): {STUCK_ROOMS} stuck recipients closed after {storm_took:?} \
         ({slow_closes} slow-consumer closes: write {} / mailbox {}); {sent_to_stuck} messages \
         sent into their rooms; stuck clients saw: {ended:?}; healthy round trips n={} p50 {p50:?} p99 {p99:?} max {max:?}; \
         RSS baseline {baseline} KiB, peak {peak} KiB (+{} KiB, bound +{} KiB), after {after} KiB",
        metric_sum(
            &last_metrics,
            r#"matchchat_slow_consumer_closes_total{cause="write"}"#
        ),
        metric_sum(
            &last_metrics,
            r#"matchchat_slow_consumer_closes_total{cause="mailbox"}"#
        ),
        all.len(),
        peak.saturating_sub(baseline),
        bound,
    );

    // Every stuck recipient was closed (above: gone from the server; here: as its client saw
    // it), and no other connection was closed as slow.
    assert!(slow_closes as usize <= STUCK_ROOMS, "{last_metrics}");
    for (i, ending) in endings.iter().enumerate() {
        let closed_as_slow = ending.contains("closed by the server")
            && ending.contains("slow_consumer")
            && ending.contains("Policy");
        let socket_gone = ending.contains("connection failed") || ending == "stream ended";
        assert!(
            closed_as_slow || socket_gone,
            "stuck recipient {i} ended as {ending:?}"
        );
    }
    // Memory stayed bounded.
    assert!(
        peak <= baseline + bound,
        "RSS peaked at +{} KiB over the baseline, bound +{bound} KiB",
        peak - baseline,
    );
    // The healthy pairs kept their latency and lost nothing (each member checked order and
    // gaps as it went; here: everything sent arrived at the other member).
    assert!(
        all.len() >= 2 * HEALTHY_PAIRS,
        "too few round trips: {}",
        all.len()
    );
    assert!(
        p99 <= HEALTHY_P99_BOUND,
        "healthy round trips during the storm: p99 {p99:?} (p50 {p50:?}, max {max:?}, n={})",
        all.len()
    );
    for pair in healthy_results.chunks(2) {
        let [a, b] = pair else { unreachable!() };
        assert_eq!(a.peer_received, b.sent, "{} missed messages", a.who);
        assert_eq!(b.peer_received, a.sent, "{} missed messages", b.who);
    }
    // The server still serves: a fresh pair talks.
    let room = server.room("after-a", "after-b");
    let (mut a, _) = server.connect("after-a").await;
    let (mut b, _) = server.connect("after-b").await;
    a.send_message(&room, "after-1", "still there?").await;
    let got = b.recv_type("message").await;
    assert_eq!(got["message"]["client_msg_id"], "after-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_slow_consumer_storm_stays_bounded_and_spares_the_others() {
    storm(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_slow_consumer_storm_stays_bounded_and_spares_the_others() {
    storm(Db::Postgres).await;
}
