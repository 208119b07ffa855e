//! The wire protocol: WebSocket frames (JSON text, internally tagged by `"type"`) and the
//! service API's bodies. Names and fields are a public contract; `docs/protocol.md` is the
//! reference that explains them.
//!
//! Client frames keep `body` as raw text so the server can answer a bad body with its own
//! code (`body_empty`, `body_too_long`, `body_invalid`) instead of a generic `invalid_frame`.

use serde::{Deserialize, Serialize};

use crate::ids::{ClientMsgId, RoomId, Seq, UserId};
use crate::message::Message;
use crate::room::RoomSummary;
use crate::timestamp::Timestamp;

/// Largest text frame the server accepts; bigger ones close the connection with 1009.
pub const MAX_FRAME_BYTES: usize = 8 * 1024;

/// WebSocket close codes the server uses.
pub mod close {
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Auth failed, auth deadline passed, token expired, or a client too slow to read.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// Frame over [`super::MAX_FRAME_BYTES`].
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Too many connections for this user; try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
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
}

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Ready {
        user_id: UserId,
        rooms: Vec<RoomSummary>,
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
    Error {
        code: ErrorCode,
        message: String,
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
}

impl ServerFrame {
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

/// The error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    NotAMember,
    UnknownRoom,
    BodyEmpty,
    BodyTooLong,
    BodyInvalid,
    InvalidFrame,
    RateLimited,
    RoomClosed,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::NotAMember => "not_a_member",
            Self::UnknownRoom => "unknown_room",
            Self::BodyEmpty => "body_empty",
            Self::BodyTooLong => "body_too_long",
            Self::BodyInvalid => "body_invalid",
            Self::InvalidFrame => "invalid_frame",
            Self::RateLimited => "rate_limited",
            Self::RoomClosed => "room_closed",
            Self::Internal => "internal",
        }
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
    }

    /// Reply of `POST /api/tokens`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TokenIssued {
        pub token: String,
        pub expires_at: Timestamp,
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
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(f, ClientFrame::Send { ref body, .. } if body == "hi"));
        let f: ClientFrame = serde_json::from_value(
            json!({"type":"history","room_id":"r1","before_seq":5,"limit":10}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
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
            serde_json::from_value(json!({"type":"history","room_id":"r1","after_seq":0}))
                .unwrap_or_else(|e| panic!("{e}"));
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
        let v: serde_json::Value =
            serde_json::from_str(&f.to_json()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            v,
            json!({"type":"error","code":"body_too_long","message":"too long","ref":"c1"})
        );
        let f = ServerFrame::RoomClosed {
            room_id: RoomId::new("r1").unwrap_or_else(|e| panic!("{e}")),
        };
        assert_eq!(f.to_json(), r#"{"type":"room_closed","room_id":"r1"}"#);
    }

    #[test]
    fn error_code_strings_match_serde() {
        for code in [
            ErrorCode::Unauthorized,
            ErrorCode::NotAMember,
            ErrorCode::UnknownRoom,
            ErrorCode::BodyEmpty,
            ErrorCode::BodyTooLong,
            ErrorCode::BodyInvalid,
            ErrorCode::InvalidFrame,
            ErrorCode::RateLimited,
            ErrorCode::RoomClosed,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_value(code).ok(), Some(json!(code.as_str())));
        }
    }
}
