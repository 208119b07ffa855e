//! Rooms and tokens through the service API (`POST /api/rooms`, `POST /api/tokens`), with
//! blocking `ureq` clients on a few threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chat_domain::RoomId;
use chat_domain::protocol::api::{CreateRoom, IssueToken, RoomCreated, TokenIssued};

/// Token lifetime: long enough for any run.
const TOKEN_TTL_SECS: u64 = 6 * 3600;

/// A user of a room and its token.
#[derive(Debug, Clone)]
pub struct Member {
    pub user: String,
    pub token: String,
}

/// A room and its two members, in the order they were named (`a`, then `b`).
#[derive(Debug, Clone)]
pub struct Pair {
    pub room_id: RoomId,
    pub members: [Member; 2],
}

pub struct Service {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl Service {
    pub fn new(base: &str, key: &str, threads: usize) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .max_idle_connections(threads.max(1) * 2)
            .max_idle_connections_per_host(threads.max(1) * 2)
            .build();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            auth: format!("Bearer {key}"),
            agent: config.into(),
        }
    }

    pub fn create_room(&self, a: &str, b: &str) -> Result<RoomCreated, String> {
        let body = CreateRoom {
            members: vec![a.to_owned(), b.to_owned()],
        };
        self.agent
            .post(format!("{}/api/rooms", self.base))
            .header("Authorization", &self.auth)
            .send_json(&body)
            .and_then(|mut r| r.body_mut().read_json::<RoomCreated>())
            .map_err(|e| format!("POST /api/rooms: {e}"))
    }

    pub fn issue_token(&self, user: &str) -> Result<String, String> {
        let body = IssueToken {
            user_id: user.to_owned(),
            ttl_seconds: Some(TOKEN_TTL_SECS),
            presence: None,
        };
        self.agent
            .post(format!("{}/api/tokens", self.base))
            .header("Authorization", &self.auth)
            .send_json(&body)
            .and_then(|mut r| r.body_mut().read_json::<TokenIssued>())
            .map(|t| t.token)
            .map_err(|e| format!("POST /api/tokens: {e}"))
    }
}

/// The user ids of room `i` of run `run_id`.
pub fn users_of(run_id: &str, i: usize) -> [String; 2] {
    [format!("{run_id}-{i}-a"), format!("{run_id}-{i}-b")]
}

/// Opens `rooms` rooms of two fresh users each and issues a token for every user, on
/// `threads` threads, printing progress to stderr once a second.
pub fn pairs(
    service: &Service,
    run_id: &str,
    rooms: usize,
    threads: usize,
) -> Result<Vec<Pair>, String> {
    let started = Instant::now();
    let done = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, rooms.max(1));
    let mut out: Vec<Option<Pair>> = vec![None; rooms];
    let results: Vec<Result<Vec<(usize, Pair)>, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= rooms {
                            return Ok(mine);
                        }
                        let [a, b] = users_of(run_id, i);
                        let room = service.create_room(&a, &b)?;
                        let ta = service.issue_token(&a)?;
                        let tb = service.issue_token(&b)?;
                        mine.push((
                            i,
                            Pair {
                                room_id: room.room_id,
                                members: [
                                    Member { user: a, token: ta },
                                    Member { user: b, token: tb },
                                ],
                            },
                        ));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut last_report = Instant::now();
        while workers.iter().any(|w| !w.is_finished()) {
            std::thread::park_timeout(Duration::from_millis(100));
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                eprintln!(
                    "[provision] {:>5.1}s rooms+tokens {}/{}",
                    started.elapsed().as_secs_f64(),
                    done.load(Ordering::Relaxed),
                    rooms
                );
            }
        }
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("a provisioning thread panicked".to_owned()))
            })
            .collect()
    });
    for result in results {
        for (i, pair) in result? {
            out[i] = Some(pair);
        }
    }
    eprintln!(
        "[provision] {} rooms and {} tokens in {:.1}s",
        rooms,
        rooms * 2,
        started.elapsed().as_secs_f64()
    );
    out.into_iter()
        .map(|p| p.ok_or_else(|| "a room was not provisioned".to_owned()))
        .collect()
}
