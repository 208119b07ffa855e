//! Unsend (protocol 1.1): who may delete a message, and when.
//!
//! The sender may delete their own message within the unsend window of its `sent_at`
//! (`CHAT_UNSEND_WINDOW_SECS`, 0 = no limit), in an open or a closed room: taking words back
//! is always allowed. A moderator (the service API) may delete any message at any age.
//! Deleting a deleted message is a no-op for its sender whatever the window, and still
//! refused to anyone else.

use crate::error::DomainError;
use crate::ids::UserId;
use crate::message::Message;
use crate::timestamp::Timestamp;

/// Who asks to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleter {
    /// A member, over the WebSocket, with the window in seconds (0 = no limit).
    Member { user: UserId, window_secs: u64 },
    /// The host app's moderation (service API).
    Moderator,
}

/// What a delete does to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsend {
    /// Erase the body now.
    Erase,
    /// Already deleted: nothing to do, no event.
    AlreadyDeleted,
}

/// Decides a delete of `message` by `by` at `now`.
pub fn decide(message: &Message, by: &Deleter, now: Timestamp) -> Result<Unsend, DomainError> {
    match by {
        Deleter::Moderator => Ok(if message.is_deleted() {
            Unsend::AlreadyDeleted
        } else {
            Unsend::Erase
        }),
        Deleter::Member { user, window_secs } => {
            if &message.sender_id != user {
                return Err(DomainError::NotYourMessage);
            }
            if message.is_deleted() {
                return Ok(Unsend::AlreadyDeleted);
            }
            let age_micros = now
                .unix_micros()
                .saturating_sub(message.sent_at.unix_micros());
            let window_micros = i64::try_from(*window_secs)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000);
            if *window_secs != 0 && age_micros > window_micros {
                return Err(DomainError::UnsendWindowPassed);
            }
            Ok(Unsend::Erase)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Body, ClientMsgId, RoomId, Seq};

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_micros(secs * 1_000_000).unwrap()
    }

    fn message(deleted: bool) -> Message {
        Message {
            room_id: RoomId::new("r").unwrap(),
            seq: Seq::new(1).unwrap(),
            sender_id: user("alice"),
            body: (!deleted).then(|| Body::new("hi").unwrap()),
            sent_at: at(100),
            seen_at: None,
            client_msg_id: ClientMsgId::new("c").unwrap(),
            deleted_at: deleted.then(|| at(150)),
        }
    }

    fn member(name: &str, window_secs: u64) -> Deleter {
        Deleter::Member {
            user: user(name),
            window_secs,
        }
    }

    #[test]
    fn the_sender_may_unsend_within_the_window_only() {
        assert_eq!(
            decide(&message(false), &member("alice", 60), at(160)),
            Ok(Unsend::Erase)
        );
        assert_eq!(
            decide(&message(false), &member("alice", 60), at(161)),
            Err(DomainError::UnsendWindowPassed)
        );
        assert_eq!(
            decide(&message(false), &member("alice", 0), at(1_000_000)),
            Ok(Unsend::Erase)
        );
    }

    #[test]
    fn someone_elses_message_is_refused_even_when_deleted() {
        for deleted in [false, true] {
            assert_eq!(
                decide(&message(deleted), &member("bob", 0), at(100)),
                Err(DomainError::NotYourMessage)
            );
        }
    }

    #[test]
    fn a_deleted_message_is_a_no_op_for_its_sender_whatever_the_window() {
        assert_eq!(
            decide(&message(true), &member("alice", 1), at(10_000)),
            Ok(Unsend::AlreadyDeleted)
        );
        assert_eq!(
            decide(&message(true), &Deleter::Moderator, at(0)),
            Ok(Unsend::AlreadyDeleted)
        );
        assert_eq!(
            decide(&message(false), &Deleter::Moderator, at(10_000)),
            Ok(Unsend::Erase)
        );
    }
}
