//! One WebSocket connection: a task that owns its socket and a bounded mailbox from the
//! registry, in one `select!` loop with a heartbeat.
//!
//! Life of a connection: `auth` within the deadline, then register with the registry (which
//! starts filling the mailbox), then `ready` with the user's rooms, then serve. Requests
//! (send, seen, history) run concurrently, at most [`MAX_IN_FLIGHT`] at once; past that the
//! task stops reading the socket until one finishes, so a fast client is slowed by TCP rather
//! than buffered in memory.
//!
//! A successful send is not answered here: the sender's copy comes back through the
//! registry like everyone else's, after the commit. Only errors and de-duplicated retries
//! are answered directly.

use std::sync::Arc;
use std::time::Duration;

use actix_ws::{
    AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError, Session,
};
use bytestring::ByteString;
use chat_domain::protocol::{ClientFrame, ErrorCode, ServerFrame, close};
use chat_domain::{Body, ClientMsgId, HistoryPage, Message, NewMessage, RoomId, Seq, UserId};
use chat_store::Appended;
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::auth::{AuthError, Verified};
use crate::error::ServerError;
use crate::registry::{Kick, RegisterError, Registration};
use crate::state::{AppState, now};

/// Requests of one connection being processed at once.
pub const MAX_IN_FLIGHT: usize = 64;

/// How a connection ends, and what the client is told.
struct Closing {
    code: u16,
    reason: &'static str,
}

impl Closing {
    fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

enum Done {
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
}

pub async fn run(state: Arc<AppState>, mut session: Session, mut stream: AggregatedMessageStream) {
    let verified = match authenticate(&state, &mut session, &mut stream).await {
        Ok(verified) => verified,
        Err(closing) => {
            finish(session, closing).await;
            return;
        }
    };
    let user = verified.user.clone();
    let registration = match state.registry.register(user.clone()).await {
        Ok(registration) => registration,
        Err(RegisterError::TooManyConnections) => {
            let frame = ServerFrame::error(
                ErrorCode::RateLimited,
                "too many connections for this user",
                None,
            );
            let _ = session.text(frame.to_json()).await;
            finish(
                session,
                Closing::new(close::TRY_AGAIN_LATER, "too_many_connections"),
            )
            .await;
            return;
        }
        Err(RegisterError::ShuttingDown) => {
            finish(session, Closing::new(close::GOING_AWAY, "server_shutdown")).await;
            return;
        }
    };
    let rooms_user = user.clone();
    let rooms = match state
        .store_call(|store| async move { store.rooms_of(&rooms_user).await })
        .await
    {
        Ok(rooms) => rooms,
        Err(error) => {
            let frame = ServerFrame::error(error.wire_code(), error.to_string(), None);
            let _ = session.text(frame.to_json()).await;
            finish(session, Closing::new(1011, "internal")).await;
            return;
        }
    };
    tracing::info!(user = %user, conn = registration.id, rooms = rooms.len(), "connection ready");
    if session
        .text(
            ServerFrame::Ready {
                user_id: user.clone(),
                rooms,
            }
            .to_json(),
        )
        .await
        .is_err()
    {
        return;
    }
    let conn_id = registration.id;
    let mut connection = Connection {
        state,
        session,
        user,
        pending: FuturesUnordered::new(),
    };
    let closing = connection
        .serve(&mut stream, registration, verified.expires_at)
        .await;
    tracing::info!(user = %connection.user, conn = conn_id, code = closing.as_ref().map(|c| c.code), reason = closing.as_ref().map(|c| c.reason), "connection closed");
    if let Some(closing) = closing {
        finish(connection.session, closing).await;
    }
}

async fn finish(session: Session, closing: Closing) {
    let reason = CloseReason {
        code: CloseCode::from(closing.code),
        description: Some(closing.reason.to_owned()),
    };
    let _ = session.close(Some(reason)).await;
}

async fn send_frame(session: &mut Session, frame: &ServerFrame) -> bool {
    session.text(frame.to_json()).await.is_ok()
}

/// Waits for the `auth` frame. Anything else first, a bad token, or the deadline closes the
/// connection with 1008.
async fn authenticate(
    state: &AppState,
    session: &mut Session,
    stream: &mut AggregatedMessageStream,
) -> Result<Verified, Closing> {
    let deadline = tokio::time::sleep(state.config.auth_timeout());
    tokio::pin!(deadline);
    loop {
        let message = tokio::select! {
            _ = &mut deadline => {
                tracing::info!("auth deadline passed");
                let frame = ServerFrame::error(ErrorCode::Unauthorized, "no auth frame in time", None);
                let _ = send_frame(session, &frame).await;
                return Err(Closing::new(close::POLICY_VIOLATION, "auth_timeout"));
            }
            message = stream.recv() => message,
        };
        let text = match message {
            None | Some(Ok(AggregatedMessage::Close(_))) => return Err(Closing::new(1000, "bye")),
            Some(Err(ProtocolError::Overflow)) => {
                return Err(Closing::new(close::MESSAGE_TOO_BIG, "frame_too_big"));
            }
            Some(Err(_)) => return Err(Closing::new(1002, "protocol_error")),
            Some(Ok(AggregatedMessage::Ping(bytes))) => {
                let _ = session.pong(&bytes).await;
                continue;
            }
            Some(Ok(AggregatedMessage::Pong(_))) => continue,
            Some(Ok(AggregatedMessage::Binary(_))) => None,
            Some(Ok(AggregatedMessage::Text(text))) => Some(text),
        };
        let token = match text.as_deref().map(serde_json::from_str::<ClientFrame>) {
            Some(Ok(ClientFrame::Auth { token })) => token,
            _ => {
                tracing::info!("first frame was not auth");
                let frame = ServerFrame::error(
                    ErrorCode::Unauthorized,
                    "the first frame must be auth",
                    None,
                );
                let _ = send_frame(session, &frame).await;
                return Err(Closing::new(close::POLICY_VIOLATION, "unauthorized"));
            }
        };
        return match state.tokens.verify(&token) {
            Ok(verified) => Ok(verified),
            Err(error) => {
                tracing::info!(%error, "auth failed");
                let reason = if error == AuthError::Expired {
                    "token_expired"
                } else {
                    "unauthorized"
                };
                let frame = ServerFrame::error(ErrorCode::Unauthorized, error.to_string(), None);
                let _ = send_frame(session, &frame).await;
                Err(Closing::new(close::POLICY_VIOLATION, reason))
            }
        };
    }
}

struct Connection {
    state: Arc<AppState>,
    session: Session,
    user: UserId,
    pending: FuturesUnordered<LocalBoxFuture<'static, Done>>,
}

impl Connection {
    /// Serves until the connection ends; returns how to close it (None: already gone).
    async fn serve(
        &mut self,
        stream: &mut AggregatedMessageStream,
        registration: Registration,
        expires_at: i64,
    ) -> Option<Closing> {
        let Registration {
            mut mailbox,
            mut kicked,
            guard: _guard,
            ..
        } = registration;
        let ping_every = self.state.config.ping_interval();
        let idle_limit = self.state.config.idle_timeout();
        let mut heartbeat = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let left = expires_at.saturating_sub(now().unix_seconds()).max(0);
        let expiry = tokio::time::sleep(Duration::from_secs(u64::try_from(left).unwrap_or(0)));
        tokio::pin!(expiry);

        loop {
            tokio::select! {
                biased;
                kick = &mut kicked => {
                    let why = kick.unwrap_or(Kick::Shutdown);
                    return Some(Closing::new(why.close_code(), why.reason()));
                }
                _ = &mut expiry => {
                    return Some(Closing::new(close::POLICY_VIOLATION, "token_expired"));
                }
                frame = mailbox.recv() => match frame {
                    Some(text) => if self.session.text(text).await.is_err() { return None },
                    None => return Some(Closing::new(close::POLICY_VIOLATION, Kick::SlowConsumer.reason())),
                },
                Some(done) = self.pending.next() => {
                    if !self.on_done(done).await { return None }
                }
                message = stream.recv(), if self.pending.len() < MAX_IN_FLIGHT => {
                    last_heard = Instant::now();
                    match message {
                        None => return None,
                        Some(Ok(AggregatedMessage::Close(_))) => return Some(Closing::new(1000, "bye")),
                        Some(Err(ProtocolError::Overflow)) => {
                            tracing::info!(user = %self.user, "frame over the size limit");
                            return Some(Closing::new(close::MESSAGE_TOO_BIG, "frame_too_big"));
                        }
                        Some(Err(error)) => {
                            tracing::info!(user = %self.user, %error, "protocol error");
                            return Some(Closing::new(1002, "protocol_error"));
                        }
                        Some(Ok(AggregatedMessage::Ping(bytes))) => {
                            if self.session.pong(&bytes).await.is_err() { return None }
                        }
                        Some(Ok(AggregatedMessage::Pong(_))) => {}
                        Some(Ok(AggregatedMessage::Binary(_))) => {
                            if !self.error(ErrorCode::InvalidFrame, "binary frames are not supported; send JSON text", None).await {
                                return None;
                            }
                        }
                        Some(Ok(AggregatedMessage::Text(text))) => {
                            if !self.on_text(&text).await { return None }
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() >= idle_limit {
                        return Some(Closing::new(close::GOING_AWAY, "idle_timeout"));
                    }
                    if self.session.ping(b"").await.is_err() { return None }
                }
            }
        }
    }

    async fn error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        reference: Option<String>,
    ) -> bool {
        send_frame(
            &mut self.session,
            &ServerFrame::error(code, message, reference),
        )
        .await
    }

    /// Handles one text frame; false when the socket is gone.
    async fn on_text(&mut self, text: &ByteString) -> bool {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => frame,
            Err(error) => {
                let reference = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| {
                        v.get("client_msg_id")
                            .and_then(|c| c.as_str())
                            .map(str::to_owned)
                    });
                return self
                    .error(
                        ErrorCode::InvalidFrame,
                        format!("invalid frame: {error}"),
                        reference,
                    )
                    .await;
            }
        };
        match frame {
            ClientFrame::Auth { .. } => {
                self.error(ErrorCode::InvalidFrame, "already authenticated", None)
                    .await
            }
            ClientFrame::Send {
                room_id,
                client_msg_id,
                body,
            } => self.on_send(room_id, client_msg_id, body).await,
            ClientFrame::Seen { room_id, up_to_seq } => {
                self.on_seen(room_id, up_to_seq);
                true
            }
            ClientFrame::History {
                room_id,
                before_seq,
                after_seq,
                limit,
            } => match HistoryPage::from_cursors(before_seq, after_seq, limit) {
                Ok(page) => {
                    self.on_history(room_id, page);
                    true
                }
                Err(rule) => {
                    self.error(ErrorCode::InvalidFrame, rule.to_string(), None)
                        .await
                }
            },
        }
    }

    async fn on_send(&mut self, room_id: RoomId, client_msg_id: ClientMsgId, body: String) -> bool {
        let reference = Some(client_msg_id.to_string());
        let body = match Body::new(body) {
            Ok(body) => body,
            Err(rule) => {
                return self
                    .error(rule.wire_code(), rule.to_string(), reference)
                    .await;
            }
        };
        if !self.state.limiter.check(&self.user) {
            tracing::debug!(user = %self.user, room = %room_id, "send rate limited");
            return self
                .error(
                    ErrorCode::RateLimited,
                    "sending too fast; retry shortly",
                    reference,
                )
                .await;
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
                self.pending.push(Box::pin(async move {
                    let result = receipt.committed().await.map_err(ServerError::from);
                    Done::Sent {
                        reference: client_msg_id,
                        result,
                    }
                }));
                true
            }
            Err(error) => {
                let error = ServerError::from(error);
                self.error(error.wire_code(), error.to_string(), reference)
                    .await
            }
        }
    }

    fn on_seen(&mut self, room_id: RoomId, up_to: Seq) {
        let state = self.state.clone();
        let user = self.user.clone();
        self.pending.push(Box::pin(async move {
            let room = room_id.clone();
            let result = state
                .store_call(
                    |store| async move { store.mark_seen(&room, &user, up_to, now()).await },
                )
                .await
                .map(|_| ());
            Done::Seen {
                room: room_id,
                result,
            }
        }));
    }

    fn on_history(&mut self, room_id: RoomId, page: HistoryPage) {
        let state = self.state.clone();
        let user = self.user.clone();
        self.pending.push(Box::pin(async move {
            let room = room_id.clone();
            let result = state
                .store_call(|store| async move { store.history(&room, &user, page).await })
                .await;
            Done::History {
                room: room_id,
                result,
            }
        }));
    }

    /// Answers a finished request; false when the socket is gone.
    async fn on_done(&mut self, done: Done) -> bool {
        match done {
            // The committed message reaches this connection through the registry.
            Done::Sent {
                result: Ok(Appended::New(_)),
                ..
            } => true,
            // A retry: the stored message goes to the retrying connection only.
            Done::Sent {
                result: Ok(Appended::Duplicate(message)),
                ..
            } => {
                let frame = ServerFrame::Message {
                    room_id: message.room_id.clone(),
                    message,
                };
                send_frame(&mut self.session, &frame).await
            }
            Done::Sent {
                reference,
                result: Err(error),
            } => {
                tracing::info!(user = %self.user, code = error.wire_code().as_str(), "send refused");
                self.error(
                    error.wire_code(),
                    error.to_string(),
                    Some(reference.to_string()),
                )
                .await
            }
            Done::Seen { result: Ok(()), .. } => true,
            Done::Seen {
                room,
                result: Err(error),
            } => {
                tracing::info!(user = %self.user, room = %room, code = error.wire_code().as_str(), "seen refused");
                self.error(error.wire_code(), error.to_string(), None).await
            }
            Done::History {
                room,
                result: Ok(messages),
            } => {
                send_frame(
                    &mut self.session,
                    &ServerFrame::History {
                        room_id: room,
                        messages,
                    },
                )
                .await
            }
            Done::History {
                room,
                result: Err(error),
            } => {
                tracing::info!(user = %self.user, room = %room, code = error.wire_code().as_str(), "history refused");
                self.error(error.wire_code(), error.to_string(), None).await
            }
        }
    }
}
