//! Every rule the domain enforces fails with its own variant, and every variant has a stable
//! snake_case code so the wire layer maps errors without matching on strings.

use crate::protocol::ErrorCode;

/// A broken domain rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("user id must be 1 to 64 characters of A-Z a-z 0-9 _ . : @ -")]
    InvalidUserId,
    #[error("room id must be 1 to 64 characters of A-Z a-z 0-9 _ -")]
    InvalidRoomId,
    #[error("client_msg_id must be 1 to 64 characters with no control characters")]
    InvalidClientMsgId,
    #[error("req must be a string of 1 to 64 characters")]
    InvalidReq,
    #[error("sequence numbers are whole numbers from 1 to 9223372036854775807 (2^63-1)")]
    InvalidSeq,
    #[error("message body is empty or blank")]
    BodyEmpty,
    #[error("message body is longer than 160 characters")]
    BodyTooLong,
    #[error("message body contains a control character other than newline")]
    BodyInvalid,
    #[error(
        "message body has an unpaired bidirectional control character (U+202A-U+202E, U+2066-U+2069)"
    )]
    BodyUnpairedBidi,
    #[error("a room needs two distinct members")]
    SameMembers,
    #[error("user is not a member of this room")]
    NotAMember,
    #[error("room is closed")]
    RoomClosed,
    #[error("only the recipient can mark a message seen")]
    OwnMessage,
    #[error("before_seq and after_seq cannot be used together")]
    ConflictingCursors,
    #[error("timestamp out of range")]
    InvalidTimestamp,
    #[error("only the sender of a message can unsend it")]
    NotYourMessage,
    #[error("the unsend window of this message has passed")]
    UnsendWindowPassed,
    #[error("no message with this seq in the room")]
    NoSuchMessage,
}

impl DomainError {
    /// The stable code of this rule, for logs, APIs and tests.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUserId => "invalid_user_id",
            Self::InvalidRoomId => "invalid_room_id",
            Self::InvalidClientMsgId => "invalid_client_msg_id",
            Self::InvalidReq => "invalid_req",
            Self::InvalidSeq => "invalid_seq",
            Self::BodyEmpty => "body_empty",
            Self::BodyTooLong => "body_too_long",
            Self::BodyInvalid => "body_invalid",
            Self::BodyUnpairedBidi => "body_unpaired_bidi",
            Self::SameMembers => "same_members",
            Self::NotAMember => "not_a_member",
            Self::RoomClosed => "room_closed",
            Self::OwnMessage => "own_message",
            Self::ConflictingCursors => "conflicting_cursors",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::NotYourMessage => "not_your_message",
            Self::UnsendWindowPassed => "unsend_window_passed",
            Self::NoSuchMessage => "no_such_message",
        }
    }

    /// The WebSocket error code a client sees for this rule. Rules without a code of their
    /// own on the wire are malformed input: `invalid_frame`.
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            Self::BodyEmpty => ErrorCode::BodyEmpty,
            Self::BodyTooLong => ErrorCode::BodyTooLong,
            Self::BodyInvalid | Self::BodyUnpairedBidi => ErrorCode::BodyInvalid,
            Self::NotAMember | Self::OwnMessage => ErrorCode::NotAMember,
            Self::RoomClosed => ErrorCode::RoomClosed,
            Self::NotYourMessage | Self::UnsendWindowPassed => ErrorCode::NotAllowed,
            Self::InvalidUserId
            | Self::InvalidRoomId
            | Self::InvalidClientMsgId
            | Self::InvalidReq
            | Self::InvalidSeq
            | Self::SameMembers
            | Self::ConflictingCursors
            | Self::InvalidTimestamp
            | Self::NoSuchMessage => ErrorCode::InvalidFrame,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_snake_case_and_distinct() {
        let all = [
            DomainError::InvalidUserId,
            DomainError::InvalidRoomId,
            DomainError::InvalidClientMsgId,
            DomainError::InvalidReq,
            DomainError::InvalidSeq,
            DomainError::BodyEmpty,
            DomainError::BodyTooLong,
            DomainError::BodyInvalid,
            DomainError::BodyUnpairedBidi,
            DomainError::SameMembers,
            DomainError::NotAMember,
            DomainError::RoomClosed,
            DomainError::OwnMessage,
            DomainError::ConflictingCursors,
            DomainError::InvalidTimestamp,
            DomainError::NotYourMessage,
            DomainError::UnsendWindowPassed,
            DomainError::NoSuchMessage,
        ];
        let mut seen = std::collections::HashSet::new();
        for e in &all {
            let code = e.code();
            assert!(
                code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{code}"
            );
            assert!(seen.insert(code), "duplicate code {code}");
        }
    }

    #[test]
    fn body_rules_keep_their_own_wire_codes() {
        assert_eq!(DomainError::BodyEmpty.wire_code(), ErrorCode::BodyEmpty);
        assert_eq!(DomainError::BodyTooLong.wire_code(), ErrorCode::BodyTooLong);
        assert_eq!(DomainError::BodyInvalid.wire_code(), ErrorCode::BodyInvalid);
        assert_eq!(DomainError::RoomClosed.wire_code(), ErrorCode::RoomClosed);
        assert_eq!(
            DomainError::ConflictingCursors.wire_code(),
            ErrorCode::InvalidFrame
        );
    }
}
