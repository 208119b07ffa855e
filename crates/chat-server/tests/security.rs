//! Issue 8's findings, each over a real socket against the real binary: a client that stops
//! reading (D1, D2), request budgets (D3), the Origin check (D4), token rules (D5), secrets
//! and key guessing (D6), invisible and spoofing bodies (D7), errors as documented (D8), and
//! the page's embedding policy (D9).
//!
//! These run on SQLite only: what they test sits in front of the store, and the store's
//! behaviour is proven on both backends by `chat.rs` and the conformance suite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, Database, Db, JWT_SECRET, SERVICE_KEY, Server, WAIT};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// A body of 160 four-byte characters: the largest message, ~250 KB per 300-message page.
fn heavy_body() -> String {
    "😀".repeat(160)
}

/// Fills a room with 300 of the largest messages, as alice.
async fn fill_room(server: &Server, room: &str) {
    let (mut alice, _) = server.connect("alice").await;
    for i in 0..300 {
        alice
            .send_message(room, &format!("m{i}"), &heavy_body())
            .await;
    }
    alice
        .recv_until(|f| f["type"] == "message" && f["message"]["seq"] == 300)
        .await;
}

/// Tries to connect `user` until the server accepts (answers `ready`), polling a condition
/// that only the server's and the kernel's timeouts can change; bounded by [`WAIT`].
/// Returns how long it took.
async fn accepted_within(server: &Server, user: &str) -> Duration {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        let mut client = Client::connect(&server.ws_url(), None).await.unwrap();
        client
            .send(json!({"type": "auth", "token": server.token(user)}))
            .await;
        let reply = client.recv().await;
        if reply["type"] == "ready" {
            return start.elapsed();
        }
        assert_eq!(reply["code"], "rate_limited", "{reply}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{user} was never accepted again within {WAIT:?}");
}

/// A server whose only limits in play are the write timeout and the per-user cap, with a
/// room of alice and bob full of the largest messages.
async fn server_with_a_full_room(
    db: &Database,
    write_timeout: &str,
    cap: &str,
) -> (Server, String) {
    let server = Server::start_with(
        db,
        &[
            ("CHAT_WRITE_TIMEOUT_SECS", write_timeout),
            ("CHAT_MAX_CONNECTIONS_PER_USER", cap),
            ("CHAT_RATE_PER_SEC", "10000"),
            ("CHAT_RATE_BURST", "10000"),
            ("CHAT_REQUEST_RATE_PER_SEC", "10000"),
            ("CHAT_REQUEST_RATE_BURST", "10000"),
        ],
    );
    let room = server.room("alice", "bob");
    fill_room(&server, &room).await;
    (server, room)
}

/// Connects bob with a small receive buffer, asks for `pages` full history pages and
/// returns the client, which the caller then never reads.
async fn stuck_bob(server: &Server, room: &str, pages: usize) -> Client {
    let mut bob = Client::connect_slow_reader(server).await;
    bob.send(json!({"type": "auth", "token": server.token("bob")}))
        .await;
    assert_eq!(bob.recv().await["type"], "ready");
    for _ in 0..pages {
        bob.send(json!({"type": "history", "room_id": room})).await;
    }
    bob
}

async fn refused_by_cap(server: &Server, user: &str) {
    let mut client = Client::connect(&server.ws_url(), None).await.unwrap();
    client
        .send(json!({"type": "auth", "token": server.token(user)}))
        .await;
    let error = client.recv().await;
    assert_eq!(error["code"], "rate_limited", "{error}");
    let closed = client.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1013, "too_many_connections")
    );
}

/// D1: a client that asks for 200 full history pages and stops reading is closed within the
/// write timeout plus the kernel's `TCP_USER_TIMEOUT` (both `CHAT_WRITE_TIMEOUT_SECS`), and
/// what the server holds for it stays small. Before the fix it held ~35 MB and never ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_a_client_that_stops_reading_is_closed_and_its_memory_freed() {
    let db = Database::new(Db::Sqlite);
    let (server, room) = server_with_a_full_room(&db, "2", "1").await;
    {
        let (mut bob, _) = server.connect("bob").await;
        assert_eq!(
            bob.history(json!({"type": "history", "room_id": room}))
                .await
                .len(),
            300
        );
    }
    // The slot of that first connection is free once its socket is gone.
    accepted_within(&server, "bob").await;
    let baseline = server.rss_kib();

    let mut stuck = Client::connect_slow_reader(&server).await;
    stuck
        .send(json!({"type": "auth", "token": server.token("bob")}))
        .await;
    assert_eq!(stuck.recv().await["type"], "ready");
    for _ in 0..200 {
        stuck
            .send(json!({"type": "history", "room_id": room}))
            .await;
    }
    // From here on `stuck` is never read. While its socket lives it holds bob's only slot.
    let stopped_reading = Instant::now();
    refused_by_cap(&server, "bob").await;
    let mut peak = server.rss_kib();
    let start = Instant::now();
    let freed = loop {
        assert!(
            start.elapsed() < WAIT,
            "the stuck connection was never closed"
        );
        peak = peak.max(server.rss_kib());
        let mut probe = Client::connect(&server.ws_url(), None).await.unwrap();
        probe
            .send(json!({"type": "auth", "token": server.token("bob")}))
            .await;
        if probe.recv().await["type"] == "ready" {
            break stopped_reading.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let after = server.rss_kib();
    let threads = server.threads();
    eprintln!(
        "D1: closed after {freed:?}; RSS baseline {baseline} KiB, peak {peak} KiB (+{}), after {after} KiB; {threads} threads",
        peak.saturating_sub(baseline)
    );
    // D9: 2 core workers + at most 16 blocking threads + 2 HTTP workers + the actix system,
    // signal and timer threads.
    assert!(
        threads <= 28,
        "{threads} threads: the blocking pool is not bounded"
    );
    // Write timeout (2 s) for the task, then up to 2 s more for the kernel to drop the
    // socket, plus the polling step and scheduling slack.
    assert!(
        freed < Duration::from_secs(8),
        "closed only after {freed:?}"
    );
    assert!(
        peak < baseline + 16 * 1024,
        "the server held {} KiB for one stuck client",
        peak - baseline
    );
    assert!(
        after < baseline + 16 * 1024,
        "memory did not return: {after} KiB vs {baseline} KiB"
    );
    drop(stuck);
}

/// D2: connections the registry kicked (their mailbox filled because the client stopped
/// reading) keep counting against the per-user cap while their sockets are open, and free
/// their slots once the sockets are gone. Before the fix, each kick freed a slot at once and
/// a user held 18 live connections under a cap of 16.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_kicked_connections_count_against_the_cap_until_their_sockets_go() {
    let db = Database::new(Db::Sqlite);
    // A write timeout long enough that neither the task's deadline nor the kernel ends the
    // stuck sockets during the test: only the registry's kick does.
    let (server, room) = server_with_a_full_room(&db, "120", "2").await;
    // Each asks for enough to fill its socket and its outbox, so its mailbox backs up.
    let stuck = vec![
        stuck_bob(&server, &room, 20).await,
        stuck_bob(&server, &room, 20).await,
    ];
    // Alice talks until the registry has kicked both (the log says so; bounded).
    let (mut alice, _) = server.connect("alice").await;
    let mut n = 0;
    while server.log_lines_with("mailbox full; closing slow connection") < 2 {
        assert!(n < 5_000, "the stuck connections were never kicked");
        alice
            .send_message(&room, &format!("k{n}"), "are you there?")
            .await;
        alice.recv_type("message").await;
        n += 1;
    }
    // Kicked, but their sockets are open: the cap still holds.
    refused_by_cap(&server, "bob").await;
    refused_by_cap(&server, "bob").await;
    drop(stuck);
    accepted_within(&server, "bob").await;
}

/// D3: history and seen have per-user budgets of their own, answered `rate_limited`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_history_and_seen_have_budgets_of_their_own() {
    let db = Database::new(Db::Sqlite);
    let server = Server::start_with(
        &db,
        &[
            ("CHAT_REQUEST_RATE_PER_SEC", "1"),
            ("CHAT_REQUEST_RATE_BURST", "3"),
        ],
    );
    let room = server.room("alice", "bob");
    let (mut alice, _) = server.connect("alice").await;
    alice.send_message(&room, "c1", "hi").await;
    alice.recv_type("message").await;
    let (mut bob, _) = server.connect("bob").await;
    for _ in 0..3 {
        bob.send(json!({"type": "history", "room_id": room, "limit": 1}))
            .await;
    }
    bob.send(json!({"type": "history", "room_id": room, "limit": 1}))
        .await;
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(bob.recv().await);
    }
    let limited: Vec<&Value> = replies.iter().filter(|f| f["type"] == "error").collect();
    assert_eq!(limited.len(), 1, "{replies:?}");
    assert_eq!(limited[0]["code"], "rate_limited");
    assert_eq!(replies.iter().filter(|f| f["type"] == "history").count(), 3);
    // Seen has a budget of its own: not spent by the history reads.
    bob.send(json!({"type": "seen", "room_id": room, "up_to_seq": 1}))
        .await;
    // Protocol 1.1: the seen raises bob's delivered watermark too, announced first.
    let delivered = bob.recv().await;
    assert_eq!(delivered["type"], "delivered", "{delivered}");
    let seen = bob.recv().await;
    assert_eq!(seen["type"], "seen", "{seen}");
    // Another user's budget is untouched.
    alice.assert_alive(&room).await;
}

/// D4: an Origin that is not visible ASCII, or two Origin headers, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_unparseable_or_repeated_origins_are_refused() {
    let db = Database::new(Db::Sqlite);
    let server = Server::start_with(&db, &[("CHAT_ALLOWED_ORIGINS", "https://app.example")]);
    let handshake = |origins: Vec<&'static [u8]>| {
        let mut request = server.ws_url().into_client_request().unwrap();
        for origin in origins {
            request.headers_mut().append(
                "Origin",
                tokio_tungstenite::tungstenite::http::HeaderValue::from_bytes(origin).unwrap(),
            );
        }
        request
    };
    for origins in [
        vec![&b"https://evil.example\xe9"[..]],
        vec![&b"https://app.example"[..], &b"https://evil.example"[..]],
    ] {
        let refused = tokio_tungstenite::connect_async(handshake(origins.clone())).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{origins:?}");
            }
            other => panic!("{origins:?} was not refused: {:?}", other.map(|_| ())),
        }
    }
    let allowed = tokio_tungstenite::connect_async(handshake(vec![b"https://app.example"])).await;
    assert!(allowed.is_ok(), "one listed Origin is allowed");
}

fn mint(header: jsonwebtoken::Header, claims: Value) -> String {
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

async fn auth_refused(server: &Server, token: String) -> common::Closed {
    let mut client = Client::connect(&server.ws_url(), None).await.unwrap();
    client.send(json!({"type": "auth", "token": token})).await;
    let error = client.recv().await;
    assert_eq!(error["code"], "unauthorized", "{error}");
    client.closed().await
}

/// D5: `nbf` in the future, a `crit` header, and a token that lives longer than
/// `CHAT_MAX_TOKEN_TTL_SECS` are refused; the API issues no longer token either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_tokens_are_checked_as_the_rfc_says() {
    let db = Database::new(Db::Sqlite);
    let server = Server::start_with(&db, &[("CHAT_MAX_TOKEN_TTL_SECS", "3600")]);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let plain = jsonwebtoken::Header::default();
    let not_yet = mint(
        plain.clone(),
        json!({"sub": "alice", "exp": now + 600, "nbf": now + 300}),
    );
    assert_eq!(auth_refused(&server, not_yet).await.code, 1008);
    let mut critical = plain.clone();
    critical.crit = Some(vec!["exp".into()]);
    let crit = mint(critical, json!({"sub": "alice", "exp": now + 600}));
    assert_eq!(auth_refused(&server, crit).await.reason, "unauthorized");
    let forever = mint(plain.clone(), json!({"sub": "alice", "exp": i64::MAX}));
    assert_eq!(auth_refused(&server, forever).await.reason, "unauthorized");
    let too_long = mint(
        plain.clone(),
        json!({"sub": "alice", "exp": now + 7200, "iat": now}),
    );
    assert_eq!(auth_refused(&server, too_long).await.reason, "unauthorized");
    // Within the limit, the same shape is accepted.
    let fine = mint(
        plain,
        json!({"sub": "alice", "exp": now + 3000, "iat": now, "nbf": now - 1}),
    );
    let mut client = Client::connect(&server.ws_url(), None).await.unwrap();
    client.send(json!({"type": "auth", "token": fine})).await;
    assert_eq!(client.recv().await["type"], "ready");
    let (status, body) = server.http().post(
        "/api/tokens",
        json!({"user_id": "alice", "ttl_seconds": 3601}),
        Some(SERVICE_KEY),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_ttl"))
    );
}

/// D6: weak or shared secrets stop the server at start; guessing the service key is
/// throttled per address (even the right key is refused while throttled), and logged as a
/// summary, not a line per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d6_weak_keys_refused_and_guessing_throttled() {
    let db = Database::new(Db::Sqlite);
    for (key, secret, says) in [
        (
            "k",
            JWT_SECRET,
            "CHAT_SERVICE_KEY must be at least 32 bytes",
        ),
        (
            SERVICE_KEY,
            "short-secret",
            "CHAT_JWT_SECRET must be at least 32 bytes",
        ),
        (JWT_SECRET, JWT_SECRET, "must differ"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .env_clear()
            .env("CHAT_BIND", "127.0.0.1:0")
            .env("DATABASE_URL", &db.url)
            .env("CHAT_SERVICE_KEY", key)
            .env("CHAT_JWT_SECRET", secret)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }

    let server = Server::start(&db);
    let http = server.http();
    let wrong = "a-wrong-key-that-is-long-enough-0123456789";
    for _ in 0..20 {
        let (status, _) = http.post("/api/rooms", json!({"members": ["a", "b"]}), Some(wrong));
        assert_eq!(status, 401);
    }
    let (status, body) = http.post("/api/rooms", json!({"members": ["a", "b"]}), Some(wrong));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    let (status, _) = http.post(
        "/api/rooms",
        json!({"members": ["a", "b"]}),
        Some(SERVICE_KEY),
    );
    assert_eq!(
        status, 429,
        "a throttled address gets no answer about any key"
    );
    assert_eq!(
        server.log_lines_with("service API calls with a missing or wrong key"),
        1,
        "22 refusals, one summary line"
    );
}

/// D7: bodies with nothing visible are `body_empty`; unpaired bidi controls `body_invalid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d7_invisible_and_spoofing_bodies_are_refused() {
    let db = Database::new(Db::Sqlite);
    let server = Server::start(&db);
    let room = server.room("alice", "bob");
    let (mut alice, _) = server.connect("alice").await;
    for (i, (body, code)) in [
        ("\u{200B}", "body_empty"),
        ("\u{200D}\u{FEFF}", "body_empty"),
        ("safe\u{202E}gnp.exe", "body_invalid"),
        ("a\u{2067}b", "body_invalid"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("bad{i}");
        alice.send_message(&room, &id, body).await;
        let error = alice.recv().await;
        assert_eq!(
            (error["code"].as_str(), error["ref"].as_str()),
            (Some(code), Some(id.as_str()))
        );
    }
    alice.send_message(&room, "ok", "a\u{2067}b\u{2069}").await;
    let stored = alice.recv_type("message").await;
    assert_eq!(stored["message"]["body"], "a\u{2067}b\u{2069}");
    assert_eq!(stored["message"]["seq"], 1, "nothing refused was stored");
}

/// D8: a fragmented message over 8 KiB is 1009; API errors keep the JSON shape; an
/// `up_to_seq` past 2^63-1 says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d8_errors_are_what_the_docs_say() {
    let db = Database::new(Db::Sqlite);
    let server = Server::start(&db);
    let room = server.room("alice", "bob");
    let http = server.http();

    let big = format!(r#"{{"members":["alice","{}"]}}"#, "b".repeat(17 * 1024));
    let (status, body) = http.post_raw("/api/rooms", &big, Some(SERVICE_KEY));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    let (status, body) = http.get("/api/rooms");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed")),
        "{body}"
    );
    let (status, body) = http.get("/api/nothing-here");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );

    let (mut alice, _) = server.connect("alice").await;
    alice
        .send(json!({"type": "seen", "room_id": room, "up_to_seq": 9_223_372_036_854_775_808u64}))
        .await;
    let error = alice.recv().await;
    assert_eq!(error["code"], "invalid_frame");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("9223372036854775807"), "{message}");
    alice.assert_alive(&room).await;

    // Three fragments of 3 KiB each: every frame is under 8 KiB, the message is not.
    let part = "x".repeat(3 * 1024);
    alice
        .send_raw(WsMessage::Frame(Frame::message(
            part.clone(),
            OpCode::Data(Data::Text),
            false,
        )))
        .await;
    alice
        .send_raw(WsMessage::Frame(Frame::message(
            part.clone(),
            OpCode::Data(Data::Continue),
            false,
        )))
        .await;
    alice
        .send_raw(WsMessage::Frame(Frame::message(
            part,
            OpCode::Data(Data::Continue),
            true,
        )))
        .await;
    let closed = alice.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1009, "frame_too_big")
    );
}

/// D9: only the listed origins may frame the page, and the page learns them from
/// `/embed-config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d9_the_page_may_be_framed_only_by_listed_origins() {
    let db = Database::new(Db::Sqlite);
    let default = Server::start(&db);
    let (status, body) = default.http().get("/embed-config");
    assert_eq!((status, body), (200, json!({"frame_ancestors": []})));
    let csp = page_csp(&default);
    assert!(csp.contains("frame-ancestors 'self';"), "{csp}");
    drop(default);

    let listed = Server::start_with(
        &db,
        &[
            ("CHAT_ALLOWED_ORIGINS", "https://app.example"),
            (
                "CHAT_FRAME_ANCESTORS",
                "https://embed.example/,https://other.example",
            ),
        ],
    );
    let (_, body) = listed.http().get("/embed-config");
    assert_eq!(
        body,
        json!({"frame_ancestors": ["https://embed.example", "https://other.example"]})
    );
    let csp = page_csp(&listed);
    assert!(
        csp.contains("frame-ancestors 'self' https://embed.example https://other.example;"),
        "{csp}"
    );
    assert!(!csp.contains('*'), "{csp}");
}

fn page_csp(server: &Server) -> String {
    let response = ureq::get(format!("http://{}/", server.addr))
        .call()
        .unwrap();
    response
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_owned()
}
