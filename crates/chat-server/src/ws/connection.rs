//! One WebSocket connection: a task that owns its socket, an [`Outbox`] of frames to write,
//! and a bounded mailbox from the registry, in one `select!` loop with a heartbeat.
//!
//! Life of a connection: `auth` within the deadline, then register with the registry (which
//! starts filling the mailbox), then `ready` with the user's rooms, then serve. Requests
//! (send, seen, history) run concurrently, at most [`MAX_IN_FLIGHT`] at once (of which at
//! most [`MAX_HISTORY_IN_FLIGHT`] history reads); past that, or while the outbox is full, the
//! task stops reading the socket until one finishes, so a fast client is slowed by TCP rather
//! than buffered in memory.
//!
//! The loop never waits on the socket: writes go through the outbox (see `outbox.rs` for why
//! and for the bounds), so kicks, token expiry, the heartbeat and the write deadline are
//! always noticed, also when the peer stops reading.
//!
//! A successful send is not answered here: the sender's copy comes back through the
//! registry like everyone else's, after the commit. Only errors and de-duplicated retries
//! are answered directly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, ProtocolError, Session};
use bytestring::ByteString;
use chat_domain::protocol::{
    ClientFrame, Close, ErrorCode, PROTOCOL_VERSION, Reply, ServerFrame, request_id,
};
use chat_domain::{
    Body, ClientMsgId, Deleter, HistoryPage, Message, NewMessage, ROOMS_PAGE, Req, RoomId,
    RoomsCursor, RoomsPage, Seq, UserId,
};
use chat_store::Appended;
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;
use tracing::Instrument;

use super::outbox::{Flow, Frame, Outbox, WriteFailed};
use crate::auth::{AuthError, Verified};
use crate::error::ServerError;
use crate::ratelimit::RequestKind;
use crate::registry::{ConnId, Kick, Mail, RegisterError, Registration};
use crate::state::AppState;

/// Requests of one connection being processed at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// History reads of one connection being processed at once: each reply may be ~250 KB, so
/// this, not [`MAX_IN_FLIGHT`], bounds what finished reads can queue.
pub const MAX_HISTORY_IN_FLIGHT: usize = 4;
/// How long a close frame may wait for the socket once the connection is ending.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A finished request, with the `req` it came with.
struct Done {
    req: Option<Req>,
    outcome: Outcome,
}

enum Outcome {
    Sent {
        reference: ClientMsgId,
        result: Result<Appended, ServerError>,
    },
    Seen {
        room: RoomId,
        result: Result<(), ServerError>,
    },
    History {
        room: RoomId,
        result: Result<Vec<Message>, ServerError>,
    },
    /// A request answered only when it fails (received, delete, typing).
    Quiet {
        kind: RequestKind,
        room: RoomId,
        result: Result<(), ServerError>,
    },
    Rooms(Result<RoomsPage, ServerError>),
}

pub async fn run(
    state: Arc<AppState>,
    mut session: Session,
    mut stream: AggregatedMessageStream,
    flow: Arc<Flow>,
) {
    let mut outbox = Outbox::new(flow.clone(), state.config.write_timeout());
    let verified = match authenticate(&state, &mut outbox, &mut session, &mut stream).await {
        Ok(verified) => verified,
        Err(close) => {
            finish(session, outbox, close).await;
            return;
        }
    };
    let user = verified.user.clone();
    let registration = match state
        .registry
        .register(user.clone(), !verified.hide_presence)
        .await
    {
        Ok(registration) => registration,
        Err(RegisterError::TooManyConnections) => {
            outbox.push_text(
                ServerFrame::error(
                    ErrorCode::RateLimited,
                    "too many connections for this user",
                    None,
                )
                .to_json(),
            );
            finish(session, outbox, Close::TooManyConnections).await;
            return;
        }
        Err(RegisterError::ShuttingDown) => {
            finish(session, outbox, Close::ServerShutdown).await;
            return;
        }
    };
    let Registration {
        id,
        mailbox,
        kicked,
        guard,
    } = registration;
    // The slot is released when both this task and the socket are gone (outbox.rs).
    flow.hold(guard);
    let connection = Connection {
        id,
        ready_seqs: HashMap::new(),
        state,
        session,
        user: verified.user,
        outbox,
        pending: FuturesUnordered::new(),
        history_in_flight: 0,
    };
    // One span per connection: every log line below carries its user and id.
    let span = tracing::info_span!("conn", user = %connection.user, conn = id);
    let Some(connection) = connection.ready().instrument(span.clone()).await else {
        return;
    };
    // The rest of the connection's life is a task of its own, so what lives while it is idle
    // is only what serving needs: a task's memory is the size of its future, which is the
    // largest of all its states, and the handshake, auth, registration and `ready` states
    // (with everything the compiler keeps across their awaits) made this task 3,840 bytes
    // (heaptrack, 4,000 idle connections); now it is the serving future, 1,264 bytes, of
    // which the test `an_idle_connection_task_stays_small` keeps watch.
    actix_web::rt::spawn(
        connection
            .serve_until_closed(stream, mailbox, kicked, verified.expires_at)
            .instrument(span),
    );
}

/// Writes what is queued (unless the peer is too slow to read it), then the close frame, each
/// within a deadline: ending a connection never waits on its peer for long.
async fn finish(mut session: Session, mut outbox: Outbox, close: Close) {
    if close != Close::SlowConsumer && outbox.flush(&mut session).await.is_err() {
        return;
    }
    let reason = actix_ws::CloseReason {
        code: CloseCode::from(close.code()),
        description: Some(close.reason().to_owned()),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, session.close(Some(reason))).await;
}

/// Waits for the `auth` frame. Anything else first, a bad token, or the deadline closes the
/// connection with 1008.
async fn authenticate(
    state: &AppState,
    outbox: &mut Outbox,
    session: &mut Session,
    stream: &mut AggregatedMessageStream,
) -> Result<Verified, Close> {
    let deadline = tokio::time::sleep(state.config.auth_timeout());
    tokio::pin!(deadline);
    let refuse = |outbox: &mut Outbox, req: Option<&Req>, message: String, close: Close| {
        let frame = ServerFrame::error(ErrorCode::Unauthorized, message, None);
        outbox.push_text(Reply { frame: &frame, req }.to_json());
        Err(close)
    };
    loop {
        let message = tokio::select! {
            _ = &mut deadline => {
                tracing::info!("auth deadline passed");
                return refuse(outbox, None, "no auth frame in time".into(), Close::AuthTimeout);
            }
            // Pongs to a client's pings: the only writes before auth, bounded like any other.
            _ = outbox.window_open(), if outbox.has_frames() => {
                match outbox.write_next(session).await {
                    Ok(()) => continue,
                    Err(WriteFailed::Closed) => return Err(Close::Bye),
                    Err(WriteFailed::Stalled) => return Err(Close::SlowConsumer),
                }
            }
            message = stream.recv(), if outbox.has_room() => message,
        };
        let text = match message {
            None | Some(Ok(AggregatedMessage::Close(_))) => return Err(Close::Bye),
            Some(Err(error)) => return Err(protocol_failure(&error)),
            Some(Ok(AggregatedMessage::Ping(bytes))) => {
                outbox.push(Frame::Pong(bytes));
                continue;
            }
            Some(Ok(AggregatedMessage::Pong(_))) => continue,
            Some(Ok(AggregatedMessage::Binary(_))) => None,
            Some(Ok(AggregatedMessage::Text(text))) => Some(text),
        };
        let req = text.as_deref().and_then(|t| request_id(t).ok().flatten());
        let req = req.as_ref();
        let token = match text.as_deref().map(serde_json::from_str::<ClientFrame>) {
            Some(Ok(ClientFrame::Auth { token })) => token,
            _ => {
                tracing::info!("first frame was not auth");
                return refuse(
                    outbox,
                    req,
                    "the first frame must be auth".into(),
                    Close::Unauthorized,
                );
            }
        };
        return match state.tokens.verify(&token, state.clock.now()) {
            Ok(verified) => Ok(verified),
            Err(error) => {
                tracing::info!(%error, "auth failed");
                let close = if error == AuthError::Expired {
                    Close::TokenExpired
                } else {
                    Close::Unauthorized
                };
                refuse(outbox, req, error.to_string(), close)
            }
        };
    }
}

/// The close for a stream error. An over-long frame, or a fragmented message whose parts add
/// up to more than the limit, is 1009 `frame_too_big`: actix-ws reports the second case as a
/// generic error with its own wording, so both are recognised here.
fn protocol_failure(error: &ProtocolError) -> Close {
    let too_big = matches!(error, ProtocolError::Overflow)
        || matches!(error, ProtocolError::Io(io) if io.to_string().contains("continuation") && io.to_string().contains("size"));
    if too_big {
        tracing::info!("frame over the size limit");
        Close::FrameTooBig
    } else {
        tracing::info!(%error, "protocol error");
        Close::ProtocolError
    }
}

struct Connection {
    id: ConnId,
    /// Per room, the `last_seq` this connection's `ready` showed: live messages up to it are
    /// dropped (it has them), so after `ready` the next message of a room is `last_seq + 1`.
    /// An entry goes once a later message passed, and the whole map at the first heartbeat
    /// (15 s): what `ready` counted was committed before it, so its events come within the
    /// bus's delay, not minutes later; a user with many quiet rooms keeps no map.
    ready_seqs: HashMap<RoomId, u64>,
    state: Arc<AppState>,
    session: Session,
    user: UserId,
    outbox: Outbox,
    pending: FuturesUnordered<LocalBoxFuture<'static, Done>>,
    history_in_flight: usize,
}

impl Connection {
    /// Sends `ready` with the user's rooms. `None` when that failed and the connection was
    /// closed.
    async fn ready(mut self) -> Option<Self> {
        let page = match self.rooms_page(None).await {
            Ok(page) => page,
            Err(error) => {
                self.error(None, error.wire_code(), error.to_string(), None);
                finish(self.session, self.outbox, Close::Internal).await;
                return None;
            }
        };
        let (rooms, more_rooms) = (page.rooms, page.more);
        tracing::info!(rooms = rooms.len(), more_rooms, "connection ready");
        let mut tracked = Vec::with_capacity(rooms.len());
        for room in &rooms {
            if let [a, b] = room.members.as_slice()
                && let Ok(members) = chat_domain::Members::new(a.clone(), b.clone())
            {
                tracked.push((room.room_id.clone(), members, room.last_seq));
            }
            if room.last_seq > 0 {
                self.ready_seqs.insert(room.room_id.clone(), room.last_seq);
            }
        }
        self.state
            .registry
            .track(self.user.clone(), self.id, tracked)
            .await;
        self.reply(
            None,
            &ServerFrame::Ready {
                protocol: PROTOCOL_VERSION.to_owned(),
                user_id: self.user.clone(),
                rooms,
                more_rooms,
            },
        );
        Some(self)
    }

    /// Serves until the connection ends, then closes it.
    ///
    /// A plain fn returning an `async move` block, not an `async fn`: an `async fn` moves its
    /// arguments into locals of its own, and the compiler keeps room for both (the
    /// connection and its stream twice, about 450 bytes of every idle connection's task).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold its arguments twice (see above)"
    )]
    fn serve_until_closed(
        mut self,
        mut stream: AggregatedMessageStream,
        mailbox: tokio::sync::mpsc::Receiver<Mail>,
        kicked: tokio::sync::oneshot::Receiver<Kick>,
        expires_at: i64,
    ) -> impl std::future::Future<Output = ()> {
        async move {
            let close = self.serve(&mut stream, mailbox, kicked, expires_at).await;
            tracing::info!(
                code = close.map(Close::code),
                reason = close.map(Close::reason),
                "connection closed"
            );
            if let Some(close) = close {
                // Boxed: the closing handshake is a state of its own, and inline it would
                // add its size to every idle connection's task.
                let closing = Box::pin(finish(self.session, self.outbox, close));
                closing.await;
            }
        }
    }

    /// Serves until the connection ends; returns how to close it (None: already gone).
    async fn serve(
        &mut self,
        stream: &mut AggregatedMessageStream,
        mut mailbox: tokio::sync::mpsc::Receiver<Mail>,
        mut kicked: tokio::sync::oneshot::Receiver<Kick>,
        expires_at: i64,
    ) -> Option<Close> {
        let ping_every = self.state.config.ping_interval();
        let idle_limit = self.state.config.idle_timeout();
        let mut heartbeat = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let left = expires_at
            .saturating_sub(self.state.clock.now().unix_seconds())
            .max(0);
        let expiry = tokio::time::sleep(Duration::from_secs(u64::try_from(left).unwrap_or(0)));
        tokio::pin!(expiry);

        loop {
            let stall = self.outbox.stall_deadline();
            let reading = self.pending.len() < MAX_IN_FLIGHT
                && self.history_in_flight < MAX_HISTORY_IN_FLIGHT
                && self.outbox.has_room();
            tokio::select! {
                biased;
                kick = &mut kicked => {
                    return Some(kick.unwrap_or(Kick::Shutdown).close());
                }
                _ = &mut expiry => return Some(Close::TokenExpired),
                _ = tokio::time::sleep_until(stall.unwrap_or_else(Instant::now)), if stall.is_some() => {
                    if self.outbox.stalled() {
                        tracing::info!("peer took nothing for the write timeout; closing");
                        metrics::counter!(crate::metrics::SLOW_CONSUMER_CLOSES, "cause" => "write")
                            .increment(1);
                        return Some(Close::SlowConsumer);
                    }
                }
                _ = self.outbox.window_open(), if self.outbox.has_frames() => {
                    // Boxed, like `on_text` below: inline, their states would be part of
                    // every idle connection's task (480 and 896 bytes).
                    match Box::pin(self.outbox.write_next(&mut self.session)).await {
                        Ok(()) => {}
                        Err(WriteFailed::Closed) => return None,
                        Err(WriteFailed::Stalled) => return Some(Close::SlowConsumer),
                    }
                }
                frame = mailbox.recv(), if self.outbox.has_room() => match frame {
                    Some(delivery) => self.on_delivery(delivery),
                    None => return Some(Close::SlowConsumer),
                },
                Some(done) = self.pending.next() => self.on_done(done),
                message = stream.recv(), if reading => {
                    last_heard = Instant::now();
                    match message {
                        None => return None,
                        Some(Ok(AggregatedMessage::Close(_))) => return Some(Close::Bye),
                        Some(Err(error)) => return Some(protocol_failure(&error)),
                        Some(Ok(AggregatedMessage::Ping(bytes))) => self.outbox.push(Frame::Pong(bytes)),
                        Some(Ok(AggregatedMessage::Pong(_))) => {}
                        Some(Ok(AggregatedMessage::Binary(_))) => {
                            self.error(None, ErrorCode::InvalidFrame, "binary frames are not supported; send JSON text", None);
                        }
                        Some(Ok(AggregatedMessage::Text(text))) => Box::pin(self.on_text(&text)).await,
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() >= idle_limit {
                        return Some(Close::IdleTimeout);
                    }
                    self.ready_seqs = HashMap::new();
                    self.outbox.push(Frame::Ping);
                }
            }
        }
    }

    /// A page of this user's rooms, with the peers' presence when presence is on.
    async fn rooms_page(&self, cursor: Option<RoomsCursor>) -> Result<RoomsPage, ServerError> {
        rooms_page(&self.state, &self.user, cursor).await
    }

    /// A frame from the registry: written, unless it is a message `ready` already counted.
    fn on_delivery(&mut self, delivery: Mail) {
        if let Some(at) = delivery.at {
            metrics::histogram!(crate::metrics::MAILBOX_WAIT_SECONDS)
                .record(at.elapsed().as_secs_f64());
        }
        if let Some(key) = &delivery.message {
            let (room, seq) = key.as_ref();
            if let Some(&ready) = self.ready_seqs.get(room) {
                if *seq <= ready {
                    return;
                }
                self.ready_seqs.remove(room);
            }
        }
        self.outbox.push_text(delivery.text.clone());
    }

    /// An `error` frame answering the request `req` came with (if any).
    fn error(
        &mut self,
        req: Option<&Req>,
        code: ErrorCode,
        message: impl Into<String>,
        reference: Option<String>,
    ) {
        self.reply(req, &ServerFrame::error(code, message, reference));
    }

    /// A frame answering a request, with its `req`. Broadcast frames go through the registry
    /// and never carry one.
    fn reply(&mut self, req: Option<&Req>, frame: &ServerFrame) {
        metrics::counter!(crate::metrics::FRAMES_OUT, "type" => frame.kind()).increment(1);
        self.outbox.push_text(Reply { frame, req }.to_json());
    }

    /// Handles one text frame.
    async fn on_text(&mut self, text: &ByteString) {
        // The `req` first: a malformed one makes the frame `invalid_frame`, answered without.
        let req = match request_id(text) {
            Ok(req) => req,
            Err(rule) => return self.error(None, ErrorCode::InvalidFrame, rule.to_string(), None),
        };
        let req = req.as_ref();
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => {
                metrics::counter!(crate::metrics::FRAMES_IN, "type" => frame.kind()).increment(1);
                frame
            }
            Err(error) => {
                metrics::counter!(crate::metrics::FRAMES_IN, "type" => "invalid").increment(1);
                let reference = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| {
                        v.get("client_msg_id")
                            .and_then(|c| c.as_str())
                            .map(str::to_owned)
                    });
                return self.error(
                    req,
                    ErrorCode::InvalidFrame,
                    format!("invalid frame: {error}"),
                    reference,
                );
            }
        };
        match frame {
            ClientFrame::Auth { .. } => {
                self.error(req, ErrorCode::InvalidFrame, "already authenticated", None);
            }
            ClientFrame::Send {
                room_id,
                client_msg_id,
                body,
            } => self.on_send(req, room_id, client_msg_id, body).await,
            ClientFrame::Seen { room_id, up_to_seq } => {
                if self.within_budget(req, RequestKind::Seen) {
                    self.on_seen(req, room_id, up_to_seq);
                }
            }
            ClientFrame::Typing { room_id } => {
                // One per second per user and room goes on; the rest are dropped silently
                // (before any other check: a typing storm costs nothing).
                if self
                    .state
                    .typing
                    .check(&(self.user.clone(), room_id.clone()))
                    && self.within_budget(req, RequestKind::Typing)
                {
                    self.on_typing(req, room_id);
                }
            }
            ClientFrame::Received { room_id, up_to_seq } => {
                if self.within_budget(req, RequestKind::Received) {
                    self.on_received(req, room_id, up_to_seq);
                }
            }
            ClientFrame::Delete { room_id, seq } => {
                if self.within_budget(req, RequestKind::Delete) {
                    self.on_delete(req, room_id, seq);
                }
            }
            ClientFrame::Rooms {
                before_activity_at,
                before_room_id,
            } => {
                if self.within_budget(req, RequestKind::Rooms) {
                    let cursor = RoomsCursor {
                        before_activity_at,
                        before_room_id,
                    };
                    let (state, user, req) = (self.state.clone(), self.user.clone(), req.cloned());
                    self.history_in_flight += 1;
                    self.pending.push(Box::pin(async move {
                        let result = rooms_page(&state, &user, Some(cursor)).await;
                        Done {
                            req,
                            outcome: Outcome::Rooms(result),
                        }
                    }));
                }
            }
            ClientFrame::History {
                room_id,
                before_seq,
                after_seq,
                limit,
            } => match HistoryPage::from_cursors(before_seq, after_seq, limit) {
                Ok(page) => {
                    if self.within_budget(req, RequestKind::History) {
                        self.on_history(req, room_id, page);
                    }
                }
                Err(rule) => self.error(req, ErrorCode::InvalidFrame, rule.to_string(), None),
            },
        }
    }

    /// Checks the user's budget for a request that is not a send; answers `rate_limited`
    /// when it is spent.
    fn within_budget(&mut self, req: Option<&Req>, kind: RequestKind) -> bool {
        if self.state.requests.check(&(self.user.clone(), kind)) {
            return true;
        }
        tracing::debug!(request = kind.name(), "request rate limited");
        metrics::counter!(crate::metrics::RATE_LIMITED, "request" => kind.name()).increment(1);
        self.error(
            req,
            ErrorCode::RateLimited,
            format!("too many {} requests; retry shortly", kind.name()),
            None,
        );
        false
    }

    async fn on_send(
        &mut self,
        req: Option<&Req>,
        room_id: RoomId,
        client_msg_id: ClientMsgId,
        body: String,
    ) {
        let reference = Some(client_msg_id.to_string());
        let body = match Body::new(body) {
            Ok(body) => body,
            Err(rule) => return self.error(req, rule.wire_code(), rule.to_string(), reference),
        };
        if !self.state.limiter.check(&self.user) {
            tracing::debug!(room = %room_id, "send rate limited");
            metrics::counter!(crate::metrics::RATE_LIMITED, "request" => "send").increment(1);
            return self.error(
                req,
                ErrorCode::RateLimited,
                "sending too fast; retry shortly",
                reference,
            );
        }
        let message = NewMessage {
            room_id,
            sender_id: self.user.clone(),
            client_msg_id: client_msg_id.clone(),
            body,
        };
        // Queued here, in the order the frames arrived, so one connection's sends to a room
        // commit in the order they were sent; only the wait for the commit runs concurrently.
        match self.state.writer.enqueue(message).await {
            Ok(receipt) => {
                let req = req.cloned();
                self.pending.push(Box::pin(async move {
                    let result = receipt.committed().await.map_err(ServerError::from);
                    Done {
                        req,
                        outcome: Outcome::Sent {
                            reference: client_msg_id,
                            result,
                        },
                    }
                }));
            }
            Err(error) => {
                let error = ServerError::from(error);
                self.error(req, error.wire_code(), error.to_string(), reference);
            }
        }
    }

    fn on_seen(&mut self, req: Option<&Req>, room_id: RoomId, up_to: Seq) {
        let (state, user, req) = (self.state.clone(), self.user.clone(), req.cloned());
        self.pending.push(Box::pin(async move {
            let result = state
                .store
                .mark_seen(&room_id, &user, up_to, state.clock.now())
                .await
                .map(|_| ())
                .map_err(ServerError::from);
            Done {
                req,
                outcome: Outcome::Seen {
                    room: room_id,
                    result,
                },
            }
        }));
    }

    /// Checks membership and an open room, then hands the typing notice to the other
    /// member's connections (through the registry, on every node). Never stored.
    fn on_typing(&mut self, req: Option<&Req>, room_id: RoomId) {
        let (state, user) = (self.state.clone(), self.user.clone());
        let room_key = room_id.clone();
        self.quiet(req, RequestKind::Typing, room_id, async move {
            let room = state.store.room(&room_key).await?;
            room.ensure_can_send(&user)?;
            let other = room.members.other(&user)?.clone();
            let frame = ServerFrame::Typing {
                room_id: room_key,
                user_id: user,
            };
            state.registry.ephemeral(vec![other], frame.to_json()).await;
            Ok::<(), ServerError>(())
        });
    }

    fn on_received(&mut self, req: Option<&Req>, room_id: RoomId, up_to: Seq) {
        let (state, user) = (self.state.clone(), self.user.clone());
        let room = room_id.clone();
        self.quiet(req, RequestKind::Received, room_id, async move {
            state
                .store
                .mark_received(&room, &user, up_to, state.clock.now())
                .await
                .map(|_| ())
        });
    }

    fn on_delete(&mut self, req: Option<&Req>, room_id: RoomId, seq: Seq) {
        let state = self.state.clone();
        let by = Deleter::Member {
            user: self.user.clone(),
            window_secs: state.config.unsend_window_secs,
        };
        let room = room_id.clone();
        self.quiet(req, RequestKind::Delete, room_id, async move {
            state
                .store
                .delete_message(&room, seq, by, state.clock.now())
                .await
                .map(|_| ())
        });
    }

    /// Runs a store call whose success is answered by its broadcast only (no reply of its
    /// own); a failure is answered with an `error` carrying `req`.
    fn quiet<E>(
        &mut self,
        req: Option<&Req>,
        kind: RequestKind,
        room: RoomId,
        call: impl std::future::Future<Output = Result<(), E>> + 'static,
    ) where
        ServerError: From<E>,
    {
        let req = req.cloned();
        self.pending.push(Box::pin(async move {
            let result = call.await.map_err(ServerError::from);
            Done {
                req,
                outcome: Outcome::Quiet { kind, room, result },
            }
        }));
    }

    fn on_history(&mut self, req: Option<&Req>, room_id: RoomId, page: HistoryPage) {
        let (state, user, req) = (self.state.clone(), self.user.clone(), req.cloned());
        self.history_in_flight += 1;
        self.pending.push(Box::pin(async move {
            let result = state
                .store
                .history(&room_id, &user, page)
                .await
                .map_err(ServerError::from);
            Done {
                req,
                outcome: Outcome::History {
                    room: room_id,
                    result,
                },
            }
        }));
    }

    /// Answers a finished request.
    fn on_done(&mut self, done: Done) {
        let req = done.req.as_ref();
        match done.outcome {
            // The committed message reaches this connection through the registry.
            Outcome::Sent {
                result: Ok(Appended::New(_)),
                ..
            } => {}
            // A retry: the stored message goes to the retrying connection only.
            Outcome::Sent {
                result: Ok(Appended::Duplicate(message)),
                ..
            } => self.reply(
                None,
                &ServerFrame::Message {
                    room_id: message.room_id.clone(),
                    message,
                },
            ),
            Outcome::Sent {
                reference,
                result: Err(error),
            } => {
                tracing::info!(code = %error.wire_code(), "send refused");
                self.error(
                    req,
                    error.wire_code(),
                    error.to_string(),
                    Some(reference.to_string()),
                );
            }
            Outcome::Seen { result: Ok(()), .. } => {}
            Outcome::Seen {
                room,
                result: Err(error),
            } => {
                tracing::info!(room = %room, code = %error.wire_code(), "seen refused");
                self.error(req, error.wire_code(), error.to_string(), None);
            }
            Outcome::Quiet { result: Ok(()), .. } => {}
            Outcome::Quiet {
                kind,
                room,
                result: Err(error),
            } => {
                tracing::info!(room = %room, request = kind.name(), code = %error.wire_code(), "request refused");
                self.error(req, error.wire_code(), error.to_string(), None);
            }
            Outcome::Rooms(result) => {
                self.history_in_flight -= 1;
                match result {
                    Ok(page) => self.reply(
                        req,
                        &ServerFrame::Rooms {
                            rooms: page.rooms,
                            more_rooms: page.more,
                        },
                    ),
                    Err(error) => {
                        tracing::info!(code = %error.wire_code(), "rooms refused");
                        self.error(req, error.wire_code(), error.to_string(), None);
                    }
                }
            }
            Outcome::History { room, result } => {
                self.history_in_flight -= 1;
                match result {
                    Ok(messages) => self.reply(
                        req,
                        &ServerFrame::History {
                            room_id: room,
                            messages,
                        },
                    ),
                    Err(error) => {
                        tracing::info!(room = %room, code = %error.wire_code(), "history refused");
                        self.error(req, error.wire_code(), error.to_string(), None);
                    }
                }
            }
        }
    }
}

/// A page of `user`'s rooms ([`ROOMS_PAGE`] at most), with the peers' presence filled in
/// unless presence is off.
async fn rooms_page(
    state: &AppState,
    user: &UserId,
    cursor: Option<RoomsCursor>,
) -> Result<RoomsPage, ServerError> {
    let mut page = state.store.rooms_page(user, cursor, ROOMS_PAGE).await?;
    if state.config.presence_enabled() {
        crate::presence::fill_peers(
            state.store.as_ref(),
            user,
            &mut page.rooms,
            state.clock.now(),
        )
        .await;
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The serving future's size at most, in bytes.
    const SERVING_FUTURE_MAX: usize = 1_400;

    /// The size of the future `f` returns.
    fn future_size<F, A, B, C, D, E, R>(_: &F) -> usize
    where
        F: FnOnce(A, B, C, D, E) -> R,
    {
        std::mem::size_of::<R>()
    }

    #[test]
    fn an_idle_connection_task_stays_small() {
        // What an idle connection's task holds: 1,264 bytes when this was written (the
        // handshake-to-`ready` task it replaced was 3,648, plus tokio's task header). Growing
        // it costs that much per connection, 19,000 at a time: box the cold states instead.
        let serving = future_size(&Connection::serve_until_closed);
        assert!(
            serving <= SERVING_FUTURE_MAX,
            "serving future is {serving} bytes"
        );
    }
}
