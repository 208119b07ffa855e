//! The wire protocol: WebSocket frames (JSON text, internally tagged by `"type"`) and the
//! service API's bodies. Names and fields are a public contract; `docs/protocol.md` is the
//! reference that explains them.
//!
//! Client frames keep `body` as raw text so the server can answer a bad body with its own
//! code (`body_empty`, `body_too_long`, `body_invalid`) instead of a generic `invalid_frame`.

use serde::{Deserialize, Serialize};

use crate::ids::{ClientMsgId, Req, RoomId, Seq, UserId};
use crate::message::Message;
use crate::room::RoomSummary;
use crate::timestamp::Timestamp;

/// Largest text frame the server accepts; bigger ones close the connection with 1009.
pub const MAX_FRAME_BYTES: usize = 8 * 1024;

/// Declares a wire enum whose every variant is spelled once: serde uses that spelling,
/// `as_str` returns it, and `ALL` lists the variants (the JS constants are generated from it,
/// see [`crate::js`]).
macro_rules! wire_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)*
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// Declares the close reasons: each with its code and its reason string, named once.
macro_rules! close_reasons {
    ($($(#[$vmeta:meta])* $variant:ident = ($code:literal, $reason:literal),)*) => {
        /// Why a WebSocket closes: each close code with its reason string, named once.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Close {
            $($(#[$vmeta])* $variant,)*
        }

        impl Close {
            /// Every close reason, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// The WebSocket close code.
            pub fn code(self) -> u16 {
                match self {
                    $(Self::$variant => $code,)*
                }
            }

            /// The close frame's reason string.
            pub fn reason(self) -> &'static str {
                match self {
                    $(Self::$variant => $reason,)*
                }
            }
        }
    };
}

close_reasons! {
    /// The client closed.
    Bye = (1000, "bye"),
    /// The server is stopping; reconnect (to another node).
    ServerShutdown = (1001, "server_shutdown"),
    /// Nothing heard from the client for the idle timeout.
    IdleTimeout = (1001, "idle_timeout"),
    /// A broken WebSocket frame.
    ProtocolError = (1002, "protocol_error"),
    /// A bad token, or a first frame that was not `auth`.
    Unauthorized = (1008, "unauthorized"),
    /// No `auth` frame in time.
    AuthTimeout = (1008, "auth_timeout"),
    /// The token's `exp` passed.
    TokenExpired = (1008, "token_expired"),
    /// The client did not read what was sent to it.
    SlowConsumer = (1008, "slow_consumer"),
    /// A frame (or fragmented message) over [`MAX_FRAME_BYTES`].
    FrameTooBig = (1009, "frame_too_big"),
    /// The server could not load the user's rooms.
    Internal = (1011, "internal"),
    /// The user's account was erased (`DELETE /api/users/{id}`).
    AccountDeleted = (1008, "account_deleted"),
    /// The user holds the most connections allowed.
    TooManyConnections = (1013, "too_many_connections"),
    /// The server lost track of events; reconnect and catch up.
    Resync = (1013, "resync"),
}

/// A frame from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// First frame of every connection.
    Auth {
        token: String,
    },
    /// The latest page (no cursor), the page before `before_seq`, or the page after `after_seq`.
    History {
        room_id: RoomId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before_seq: Option<Seq>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    Send {
        room_id: RoomId,
        client_msg_id: ClientMsgId,
        body: String,
    },
    Seen {
        room_id: RoomId,
        up_to_seq: Seq,
    },
    /// Protocol 1.1: the user is composing in this room (never stored).
    Typing {
        room_id: RoomId,
    },
    /// Protocol 1.1: this device got the other member's messages up to `up_to_seq`.
    Received {
        room_id: RoomId,
        up_to_seq: Seq,
    },
    /// Protocol 1.1: unsend one's own message.
    Delete {
        room_id: RoomId,
        seq: Seq,
    },
    /// Protocol 1.1: the next page of the room list, after a cursor.
    Rooms {
        before_activity_at: Timestamp,
        before_room_id: RoomId,
    },
}

impl ClientFrame {
    /// The frame's `type`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Auth { .. } => "auth",
            Self::History { .. } => "history",
            Self::Send { .. } => "send",
            Self::Seen { .. } => "seen",
            Self::Typing { .. } => "typing",
            Self::Received { .. } => "received",
            Self::Delete { .. } => "delete",
            Self::Rooms { .. } => "rooms",
        }
    }
}

/// The protocol version a server speaks, in its `ready` frame.
pub const PROTOCOL_VERSION: &str = "1.1";

/// The request id of a client frame (`"req"`), read apart from the frame itself: it belongs
/// to the envelope, so it works the same for every frame type, and a frame that is malformed
/// in another way can still be answered with it.
///
/// `Ok(None)`: no `req`. `Err`: a `req` that is not a string of 1..=64 characters (the frame
/// is then `invalid_frame`, answered without `req`).
pub fn request_id(text: &str) -> Result<Option<Req>, crate::DomainError> {
    // Most frames carry no `req`: they pay for no second parse. A key may also spell `req`
    // with `\u` escapes (`"r\u0065q"`, no other escape writes a letter), so a frame with one
    // is parsed too.
    if !text.contains("\"req\"") && !text.contains("\\u") {
        return Ok(None);
    }
    let Ok(serde_json::Value::Object(mut envelope)) = serde_json::from_str(text) else {
        // Not a JSON object: the frame itself is refused as `invalid_frame`.
        return Ok(None);
    };
    match envelope.remove("req") {
        None => Ok(None),
        Some(serde_json::Value::String(req)) => Req::new(req).map(Some),
        Some(_) => Err(crate::DomainError::InvalidReq),
    }
}

/// A server frame answering a request: the frame, plus the request's `req` when it had one.
/// Broadcast frames (`message`, `seen`, ...) are never written through this.
#[derive(Debug, Serialize)]
pub struct Reply<'a> {
    #[serde(flatten)]
    pub frame: &'a ServerFrame,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub req: Option<&'a Req>,
}

impl Reply<'_> {
    /// Serialises the reply; like [`ServerFrame::to_json`], a failure becomes `internal`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| self.frame.to_json())
    }
}

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Ready {
        /// [`PROTOCOL_VERSION`] (protocol 1.1; absent before).
        #[serde(default)]
        protocol: String,
        user_id: UserId,
        rooms: Vec<RoomSummary>,
        /// True when the user has more rooms than this frame lists (`rooms` pages them).
        #[serde(default)]
        more_rooms: bool,
    },
    /// A page of the room list, answering a `rooms` request.
    Rooms {
        rooms: Vec<RoomSummary>,
        more_rooms: bool,
    },
    RoomOpened {
        room: RoomSummary,
    },
    RoomClosed {
        room_id: RoomId,
    },
    History {
        room_id: RoomId,
        messages: Vec<Message>,
    },
    Message {
        room_id: RoomId,
        message: Message,
    },
    Seen {
        room_id: RoomId,
        reader_id: UserId,
        up_to_seq: Seq,
        seen_at: Timestamp,
    },
    /// The other member is composing.
    Typing {
        room_id: RoomId,
        user_id: UserId,
    },
    /// `reader_id`'s devices got the other member's messages up to `up_to_seq`.
    Delivered {
        room_id: RoomId,
        reader_id: UserId,
        up_to_seq: Seq,
        delivered_at: Timestamp,
    },
    /// Message `seq` was deleted: its body is gone.
    MessageDeleted {
        room_id: RoomId,
        seq: Seq,
        deleted_at: Timestamp,
    },
    /// A user who shares an open room came online or went offline.
    Presence {
        user_id: UserId,
        online: bool,
        last_active_at: Option<Timestamp>,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
}

impl ServerFrame {
    /// The frame's `type`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ready { .. } => "ready",
            Self::RoomOpened { .. } => "room_opened",
            Self::RoomClosed { .. } => "room_closed",
            Self::History { .. } => "history",
            Self::Message { .. } => "message",
            Self::Seen { .. } => "seen",
            Self::Rooms { .. } => "rooms",
            Self::Typing { .. } => "typing",
            Self::Delivered { .. } => "delivered",
            Self::MessageDeleted { .. } => "message_deleted",
            Self::Presence { .. } => "presence",
            Self::Error { .. } => "error",
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
            reference,
        }
    }

    /// Serialises a frame. Serialising these types cannot fail (string keys, no maps with
    /// non-string keys), so a failure is reported as an `internal` error frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialization failed","ref":null}"#
                .to_owned()
        })
    }
}

wire_enum! {
    /// The error codes of `error` frames.
    pub enum ErrorCode {
        Unauthorized = "unauthorized",
        NotAMember = "not_a_member",
        UnknownRoom = "unknown_room",
        BodyEmpty = "body_empty",
        BodyTooLong = "body_too_long",
        BodyInvalid = "body_invalid",
        InvalidFrame = "invalid_frame",
        RateLimited = "rate_limited",
        RoomClosed = "room_closed",
        NotAllowed = "not_allowed",
        Internal = "internal",
    }
}

wire_enum! {
    /// The codes of service API errors (`{"error":{"code":...}}`), beside the domain rules'
    /// own codes ([`crate::DomainError::code`]).
    pub enum ApiErrorCode {
        Unauthorized = "unauthorized",
        RateLimited = "rate_limited",
        InvalidJson = "invalid_json",
        InvalidMembers = "invalid_members",
        InvalidUserId = "invalid_user_id",
        InvalidTtl = "invalid_ttl",
        UnknownRoom = "unknown_room",
        NotFound = "not_found",
        MethodNotAllowed = "method_not_allowed",
        PayloadTooLarge = "payload_too_large",
        OriginNotAllowed = "origin_not_allowed",
        InvalidQuery = "invalid_query",
        NotADemoUser = "not_a_demo_user",
        Unavailable = "unavailable",
        Internal = "internal",
    }
}

/// Bodies of the service API (host app to chat server).
pub mod api {
    use super::*;

    /// `POST /api/rooms`
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct CreateRoom {
        pub members: Vec<String>,
    }

    /// Reply of `POST /api/rooms`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RoomCreated {
        pub room_id: RoomId,
        pub members: Vec<UserId>,
    }

    /// `POST /api/tokens`
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct IssueToken {
        pub user_id: String,
        #[serde(default)]
        pub ttl_seconds: Option<u64>,
        /// `false` issues a token whose connections hide the user's presence (protocol 1.1:
        /// "hide my online status"). Default: shown.
        #[serde(default)]
        pub presence: Option<bool>,
    }

    /// Reply of `POST /api/tokens`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TokenIssued {
        pub token: String,
        pub expires_at: Timestamp,
    }

    /// Reply of `GET /api/rooms/{room_id}/messages` (moderation): a page of the room's
    /// messages, oldest first, whoever asks and whether the room is open or closed.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RoomMessages {
        pub room_id: RoomId,
        pub members: Vec<UserId>,
        pub closed: bool,
        pub messages: Vec<Message>,
    }

    /// One room in a user's export (`GET /api/users/{user_id}/export`): the room, its
    /// members and times, and every message in it, sent or received, oldest first.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ExportedRoom {
        pub room_id: RoomId,
        pub members: Vec<UserId>,
        pub created_at: Timestamp,
        pub closed_at: Option<Timestamp>,
        pub messages: Vec<Message>,
    }

    /// `{"error":{"code":"...","message":"..."}}`
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ApiError {
        pub error: ApiErrorBody,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ApiErrorBody {
        pub code: String,
        pub message: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_frames_parse_from_the_documented_json() {
        let f: ClientFrame = serde_json::from_value(
            json!({"type":"send","room_id":"r1","client_msg_id":"c1","body":"hi"}),
        )
        .unwrap();
        assert!(matches!(f, ClientFrame::Send { ref body, .. } if body == "hi"));
        let f: ClientFrame = serde_json::from_value(
            json!({"type":"history","room_id":"r1","before_seq":5,"limit":10}),
        )
        .unwrap();
        assert!(matches!(
            f,
            ClientFrame::History {
                before_seq: Some(_),
                after_seq: None,
                limit: Some(10),
                ..
            }
        ));
        let f: ClientFrame =
            serde_json::from_value(json!({"type":"history","room_id":"r1","after_seq":0})).unwrap();
        assert!(matches!(
            f,
            ClientFrame::History {
                after_seq: Some(0),
                ..
            }
        ));
        assert!(
            serde_json::from_value::<ClientFrame>(
                json!({"type":"seen","room_id":"r1","up_to_seq":0})
            )
            .is_err()
        );
        assert!(serde_json::from_value::<ClientFrame>(json!({"type":"dance"})).is_err());
    }

    #[test]
    fn server_frames_serialize_to_the_documented_json() {
        let f = ServerFrame::error(ErrorCode::BodyTooLong, "too long", Some("c1".into()));
        let v: serde_json::Value = serde_json::from_str(&f.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"type":"error","code":"body_too_long","message":"too long","ref":"c1"})
        );
        let f = ServerFrame::RoomClosed {
            room_id: RoomId::new("r1").unwrap(),
        };
        assert_eq!(f.to_json(), r#"{"type":"room_closed","room_id":"r1"}"#);
    }

    #[test]
    fn request_ids_are_read_from_the_envelope() {
        let req = |text: &str| request_id(text).map(|r| r.map(String::from));
        assert_eq!(req(r#"{"type":"history","room_id":"r"}"#), Ok(None));
        assert_eq!(
            req(r#"{"type":"history","req":"h-1"}"#),
            Ok(Some("h-1".into()))
        );
        assert_eq!(
            req(r#"{"type":"nonsense","req":"x"}"#),
            Ok(Some("x".into()))
        );
        for bad in [
            r#"{"req":""}"#,
            r#"{"req":7}"#,
            r#"{"req":null}"#,
            r#"{"req":["a"]}"#,
        ] {
            assert_eq!(req(bad), Err(crate::DomainError::InvalidReq), "{bad}");
        }
        let long = format!(r#"{{"req":"{}"}}"#, "x".repeat(65));
        assert_eq!(req(&long), Err(crate::DomainError::InvalidReq));
    }

    #[test]
    fn request_ids_are_read_however_the_key_is_spelled() {
        // Caught by the `client_frame` fuzz target's `req` check (fuzz/): an escaped key
        // skipped the rule.
        let req = |text: &str| request_id(text).map(|r| r.map(String::from));
        assert_eq!(
            req(r#"{"type":"history","room_id":"R","r\u0065q":7}"#),
            Err(crate::DomainError::InvalidReq)
        );
        assert_eq!(req(r#"{"\u0072eq":"h-2"}"#), Ok(Some("h-2".into())));
        assert_eq!(req(r#"{"body":"\u00e9"}"#), Ok(None));
    }

    #[test]
    fn replies_carry_req_only_when_there_is_one() {
        let frame = ServerFrame::error(ErrorCode::NotAMember, "no", None);
        let req = Req::new("r1").unwrap();
        let with: serde_json::Value = serde_json::from_str(
            &Reply {
                frame: &frame,
                req: Some(&req),
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            with,
            json!({"type":"error","code":"not_a_member","message":"no","ref":null,"req":"r1"})
        );
        assert_eq!(
            Reply {
                frame: &frame,
                req: None
            }
            .to_json(),
            frame.to_json()
        );
    }

    #[test]
    fn wire_spellings_match_serde_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).ok(), Some(json!(code.as_str())));
            assert!(seen.insert(code.as_str()));
        }
        for code in ApiErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).ok(), Some(json!(code.as_str())));
        }
        let reasons: std::collections::HashSet<_> = Close::ALL.iter().map(|c| c.reason()).collect();
        assert_eq!(reasons.len(), Close::ALL.len());
        assert!(Close::ALL.iter().all(|c| (1000..=4999).contains(&c.code())));
    }
}
