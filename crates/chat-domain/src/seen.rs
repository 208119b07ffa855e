//! Seen receipts.
//!
//! - Only the member who did not send a message can mark it seen.
//! - Marking is by watermark: "everything the other member sent up to seq N".
//! - `seen_at` is set once and never moves; a watermark at or below one already applied marks
//!   nothing new (and so is not broadcast).
//! - `seen_at >= sent_at`: a reader's clock reading earlier than the send (clock skew between
//!   nodes) is raised to `sent_at`.
//! - A watermark beyond the room's last seq is clamped to it.

use crate::error::DomainError;
use crate::ids::{Seq, UserId};
use crate::message::Message;
use crate::room::Room;
use crate::timestamp::Timestamp;

/// "Everything the other member sent up to `up_to`, read by `reader`."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub reader: UserId,
    pub up_to: Seq,
}

/// What applying a watermark changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenOutcome {
    /// The watermark after clamping to the room's last seq.
    pub up_to: Seq,
    /// The seqs that became seen, ascending. Empty means nothing new: no broadcast.
    pub marked: Vec<Seq>,
    /// The `seen_at` stored on them (the latest when clocks made them differ).
    pub seen_at: Timestamp,
}

impl SeenOutcome {
    pub fn changed(&self) -> bool {
        !self.marked.is_empty()
    }
}

/// Clamps a watermark to the room's last seq; `None` when the room has no message yet.
pub fn clamp_watermark(up_to: Seq, last_seq: Option<Seq>) -> Option<Seq> {
    last_seq.map(|last| up_to.min(last))
}

/// The `seen_at` to store for a message: the reader's time, never earlier than `sent_at`.
pub fn seen_time(sent_at: Timestamp, now: Timestamp) -> Timestamp {
    now.max(sent_at)
}

/// Whether `reader` may mark `message` seen: a member, and not its sender.
pub fn ensure_can_mark(room: &Room, message: &Message, reader: &UserId) -> Result<(), DomainError> {
    room.ensure_member(reader)?;
    if &message.sender_id == reader {
        return Err(DomainError::OwnMessage);
    }
    Ok(())
}

/// Marks one message seen. `Ok(false)` when it was seen already: the first `seen_at` stays.
pub fn mark_seen(
    room: &Room,
    message: &mut Message,
    reader: &UserId,
    now: Timestamp,
) -> Result<bool, DomainError> {
    ensure_can_mark(room, message, reader)?;
    if message.seen_at.is_some() {
        return Ok(false);
    }
    message.seen_at = Some(seen_time(message.sent_at, now));
    Ok(true)
}

/// Applies a watermark to a room's messages (any order). This is the reference the stores'
/// SQL follows; it is used directly by tests and by anything holding messages in memory.
pub fn apply_watermark(
    room: &Room,
    messages: &mut [Message],
    watermark: &Watermark,
    now: Timestamp,
) -> Result<SeenOutcome, DomainError> {
    room.ensure_member(&watermark.reader)?;
    let last = messages.iter().map(|m| m.seq).max();
    let up_to = clamp_watermark(watermark.up_to, last).unwrap_or(watermark.up_to);
    let mut marked = Vec::new();
    let mut seen_at = now;
    for m in messages.iter_mut() {
        if m.seq <= up_to && m.sender_id != watermark.reader && m.seen_at.is_none() {
            let at = seen_time(m.sent_at, now);
            m.seen_at = Some(at);
            seen_at = seen_at.max(at);
            marked.push(m.seq);
        }
    }
    marked.sort();
    Ok(SeenOutcome {
        up_to,
        marked,
        seen_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;
    use crate::ids::{ClientMsgId, RoomId};
    use crate::room::Members;
    use proptest::prelude::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }
    fn ts(micros: i64) -> Timestamp {
        Timestamp::from_unix_micros(micros).unwrap()
    }
    fn seq(n: u64) -> Seq {
        Seq::new(n).unwrap()
    }
    fn room() -> Room {
        Room {
            id: RoomId::new("r").unwrap(),
            members: Members::new(user("alice"), user("bob")).unwrap(),
            created_at: ts(0),
            closed_at: None,
        }
    }
    fn msg(n: u64, sender: &str, sent: i64) -> Message {
        Message {
            room_id: RoomId::new("r").unwrap(),
            seq: seq(n),
            sender_id: user(sender),
            body: Some(Body::new("hi").unwrap()),
            sent_at: ts(sent),
            seen_at: None,
            client_msg_id: ClientMsgId::new(format!("c{n}")).unwrap(),
            deleted_at: None,
        }
    }
    fn wm(reader: &str, n: u64) -> Watermark {
        Watermark {
            reader: user(reader),
            up_to: seq(n),
        }
    }

    #[test]
    fn a_sender_cannot_mark_its_own_message() {
        let mut m = msg(1, "alice", 10);
        assert_eq!(
            mark_seen(&room(), &mut m, &user("alice"), ts(20)),
            Err(DomainError::OwnMessage)
        );
        assert_eq!(m.seen_at, None);
    }

    #[test]
    fn a_non_member_cannot_mark() {
        let mut m = msg(1, "alice", 10);
        assert_eq!(
            mark_seen(&room(), &mut m, &user("eve"), ts(20)),
            Err(DomainError::NotAMember)
        );
        let mut ms = vec![msg(1, "alice", 10)];
        assert_eq!(
            apply_watermark(&room(), &mut ms, &wm("eve", 1), ts(20)),
            Err(DomainError::NotAMember)
        );
    }

    #[test]
    fn seen_at_is_set_once() {
        let mut m = msg(1, "alice", 10);
        assert_eq!(mark_seen(&room(), &mut m, &user("bob"), ts(20)), Ok(true));
        assert_eq!(mark_seen(&room(), &mut m, &user("bob"), ts(99)), Ok(false));
        assert_eq!(m.seen_at, Some(ts(20)));
    }

    #[test]
    fn seen_at_is_never_before_sent_at() {
        let mut m = msg(1, "alice", 50);
        assert_eq!(mark_seen(&room(), &mut m, &user("bob"), ts(20)), Ok(true));
        assert_eq!(m.seen_at, Some(ts(50)));
    }

    #[test]
    fn watermark_marks_only_the_other_members_messages_up_to_n() {
        let mut ms = vec![
            msg(1, "alice", 1),
            msg(2, "bob", 2),
            msg(3, "alice", 3),
            msg(4, "alice", 4),
        ];
        let out = apply_watermark(&room(), &mut ms, &wm("bob", 3), ts(10)).unwrap();
        assert_eq!(out.marked, vec![seq(1), seq(3)]);
        assert_eq!(out.up_to, seq(3));
        assert!(ms[1].seen_at.is_none(), "bob's own message stays unseen");
        assert!(ms[3].seen_at.is_none(), "beyond the watermark stays unseen");
    }

    #[test]
    fn a_watermark_that_goes_backwards_marks_nothing() {
        let mut ms = vec![msg(1, "alice", 1), msg(2, "alice", 2)];
        let first = apply_watermark(&room(), &mut ms, &wm("bob", 2), ts(10)).unwrap();
        assert!(first.changed());
        let back = apply_watermark(&room(), &mut ms, &wm("bob", 1), ts(30)).unwrap();
        assert!(!back.changed());
        assert!(ms.iter().all(|m| m.seen_at == Some(ts(10))));
    }

    #[test]
    fn a_watermark_beyond_the_last_seq_is_clamped() {
        let mut ms = vec![msg(1, "alice", 1), msg(2, "alice", 2)];
        let out = apply_watermark(&room(), &mut ms, &wm("bob", 1000), ts(10)).unwrap();
        assert_eq!(out.up_to, seq(2));
        assert_eq!(out.marked.len(), 2);
        assert_eq!(clamp_watermark(seq(9), None), None);
        assert_eq!(clamp_watermark(seq(9), Some(seq(4))), Some(seq(4)));
        assert_eq!(clamp_watermark(seq(3), Some(seq(4))), Some(seq(3)));
    }

    proptest! {
        /// Whatever watermarks arrive in whatever order, a seen_at never changes once set,
        /// is never before sent_at, and the sender's own messages stay unseen by it.
        #[test]
        fn seen_at_never_moves(
            senders in proptest::collection::vec(prop::bool::ANY, 1..40),
            marks in proptest::collection::vec((1u64..50, 0i64..1000), 1..20),
        ) {
            let mut ms: Vec<Message> = senders.iter().enumerate()
                .map(|(i, alice)| msg(i as u64 + 1, if *alice { "alice" } else { "bob" }, 500))
                .collect();
            let mut first_seen: Vec<Option<Timestamp>> = vec![None; ms.len()];
            for (up_to, now) in marks {
                let out = apply_watermark(&room(), &mut ms, &wm("bob", up_to), ts(now))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(out.up_to.get() <= ms.len() as u64);
                for (i, m) in ms.iter().enumerate() {
                    if let Some(prev) = first_seen[i] {
                        prop_assert_eq!(m.seen_at, Some(prev));
                    }
                    first_seen[i] = m.seen_at;
                    if let Some(at) = m.seen_at {
                        prop_assert!(at >= m.sent_at);
                        prop_assert_eq!(m.sender_id.as_str(), "alice");
                    }
                }
            }
        }
    }
}
