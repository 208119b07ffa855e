//! The backend-independent half of `append_batch`: given the locked room rows and the rows
//! already stored under the batch's dedupe keys, decide each message's outcome, the rows to
//! insert and each room's new `last_seq`. Both backends run exactly this, inside their
//! write transaction, so their semantics cannot drift apart.

use std::collections::{BTreeMap, HashMap};

use chat_domain::{DomainError, Members, Message, NewMessage, Room, Seq, Timestamp};

use crate::error::StoreError;
use crate::events::StoreEvent;
use crate::models::{MessageRow, NewMessageRow, RoomRow};
use crate::repository::Appended;

/// `(room_id, sender_id, client_msg_id)`: what makes a retried send the same message.
pub(crate) type DedupeKey = (String, String, String);

pub(crate) fn dedupe_key(m: &NewMessage) -> DedupeKey {
    (
        m.room_id.as_str().to_owned(),
        m.sender_id.as_str().to_owned(),
        m.client_msg_id.as_str().to_owned(),
    )
}

/// The distinct room ids of a batch, sorted: the order rooms are locked in.
pub(crate) fn sorted_room_ids(messages: &[NewMessage]) -> Vec<String> {
    let mut ids: Vec<String> = messages
        .iter()
        .map(|m| m.room_id.as_str().to_owned())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The distinct dedupe keys of a batch.
pub(crate) fn dedupe_keys(messages: &[NewMessage]) -> Vec<DedupeKey> {
    let mut keys: Vec<DedupeKey> = messages.iter().map(dedupe_key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// What a batch does, decided before anything is written.
#[derive(Debug)]
pub(crate) struct BatchPlan {
    /// One result per input message, in input order.
    pub results: Vec<Result<Appended, StoreError>>,
    /// The new rows, in input order (so in seq order per room).
    pub inserts: Vec<NewMessageRow>,
    /// `(room_id, new last_seq)` for every room that got a new message, sorted by room id;
    /// its `last_activity_at` becomes the batch's `now`.
    pub room_updates: Vec<(String, i64)>,
    /// `MessageCommitted` for every new message, in input order (seq order per room), to
    /// publish after the commit.
    pub events: Vec<StoreEvent>,
}

struct RoomState {
    room: Result<Room, StoreError>,
    last_seq: i64,
    changed: bool,
}

pub(crate) fn plan_batch(
    messages: Vec<NewMessage>,
    locked_rooms: Vec<RoomRow>,
    existing: Vec<MessageRow>,
    now: Timestamp,
) -> Result<BatchPlan, StoreError> {
    let mut rooms: BTreeMap<String, RoomState> = locked_rooms
        .into_iter()
        .map(|row| {
            let state = RoomState {
                room: row.to_room(),
                last_seq: row.last_seq,
                changed: false,
            };
            (row.id, state)
        })
        .collect();
    let mut stored: HashMap<DedupeKey, Result<Message, StoreError>> = existing
        .into_iter()
        .map(|row| {
            let key = (
                row.room_id.clone(),
                row.sender_id.clone(),
                row.client_msg_id.clone(),
            );
            (key, row.to_message())
        })
        .collect();

    let mut plan = BatchPlan {
        results: Vec::with_capacity(messages.len()),
        inserts: Vec::with_capacity(messages.len()),
        room_updates: Vec::new(),
        events: Vec::new(),
    };

    for message in messages {
        let Some(state) = rooms.get_mut(message.room_id.as_str()) else {
            plan.results.push(Err(StoreError::UnknownRoom));
            continue;
        };
        let room = match &state.room {
            Ok(room) => room,
            Err(e) => {
                plan.results.push(Err(e.clone()));
                continue;
            }
        };
        // Membership first: a non-member learns nothing about the room's messages or state.
        if let Err(e) = room.ensure_member(&message.sender_id) {
            plan.results.push(Err(e.into()));
            continue;
        }
        // A retried send of a stored message returns that message, even once the room is
        // closed: the retry asks "did my message get stored?", and it did.
        let key = dedupe_key(&message);
        if let Some(found) = stored.get(&key) {
            plan.results.push(found.clone().map(Appended::Duplicate));
            continue;
        }
        if let Err(e) = room.ensure_can_send(&message.sender_id) {
            plan.results.push(Err(e.into()));
            continue;
        }
        let next = state.last_seq.checked_add(1).ok_or_else(|| {
            StoreError::Corrupt(format!("room {}: last_seq overflows", message.room_id))
        })?;
        let seq = Seq::try_from(next).map_err(|e: DomainError| {
            StoreError::Corrupt(format!(
                "room {}: last_seq {}: {e}",
                message.room_id, state.last_seq
            ))
        })?;
        state.last_seq = next;
        state.changed = true;
        plan.inserts.push(NewMessageRow::new(&message, seq, now));
        let members: Members = room.members.clone();
        let NewMessage {
            room_id,
            sender_id,
            client_msg_id,
            body,
        } = message;
        let stored_message = Message {
            room_id,
            seq,
            sender_id,
            body: Some(body),
            sent_at: now,
            seen_at: None,
            client_msg_id,
            deleted_at: None,
        };
        plan.events.push(StoreEvent::MessageCommitted {
            members,
            message: stored_message.clone(),
        });
        stored.insert(key, Ok(stored_message.clone()));
        plan.results.push(Ok(Appended::New(stored_message)));
    }

    plan.room_updates = rooms
        .into_iter()
        .filter(|(_, state)| state.changed)
        .map(|(id, state)| (id, state.last_seq))
        .collect();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_domain::{Body, ClientMsgId, RoomId, UserId};

    fn new_message(room: &str, sender: &str, cmid: &str) -> NewMessage {
        NewMessage {
            room_id: RoomId::new(room).unwrap(),
            sender_id: UserId::new(sender).unwrap(),
            client_msg_id: ClientMsgId::new(cmid).unwrap(),
            body: Body::new("hi").unwrap(),
        }
    }

    fn room_row(id: &str, last_seq: i64, closed: bool) -> RoomRow {
        RoomRow {
            id: id.into(),
            member_a: "alice".into(),
            member_b: "bob".into(),
            created_at: 0,
            closed_at: closed.then_some(1),
            last_seq,
            last_activity_at: 0,
            a_seen_up_to: 0,
            b_seen_up_to: 0,
            a_delivered_up_to: 0,
            b_delivered_up_to: 0,
        }
    }

    #[test]
    fn plans_seqs_dedupes_and_rules_per_message() {
        let now = Timestamp::from_unix_micros(10).unwrap();
        let existing = vec![MessageRow {
            room_id: "r1".into(),
            seq: 4,
            sender_id: "bob".into(),
            client_msg_id: "old".into(),
            body: Some("earlier".into()),
            sent_at: 5,
            seen_at: None,
            deleted_at: None,
        }];
        let plan = plan_batch(
            vec![
                new_message("r1", "alice", "a1"),
                new_message("r1", "eve", "e1"),
                new_message("nope", "alice", "x"),
                new_message("r1", "bob", "old"),
                new_message("r1", "alice", "a1"),
                new_message("r2", "alice", "a1"),
                new_message("r1", "bob", "b1"),
                new_message("r3", "bob", "old3"),
            ],
            vec![
                room_row("r1", 4, false),
                room_row("r2", 0, true),
                room_row("r3", 0, false),
            ],
            existing,
            now,
        )
        .unwrap();
        let seqs: Vec<Option<u64>> = plan
            .results
            .iter()
            .map(|r| r.as_ref().ok().map(|a| a.message().seq.get()))
            .collect();
        assert_eq!(
            seqs,
            vec![
                Some(5),
                None,
                None,
                Some(4),
                Some(5),
                None,
                Some(6),
                Some(1)
            ]
        );
        assert!(matches!(plan.results[0], Ok(Appended::New(_))));
        assert_eq!(
            plan.results[1],
            Err(StoreError::Rule(DomainError::NotAMember))
        );
        assert_eq!(plan.results[2], Err(StoreError::UnknownRoom));
        assert!(matches!(&plan.results[3], Ok(Appended::Duplicate(m)) if m.text() == "earlier"));
        assert!(matches!(plan.results[4], Ok(Appended::Duplicate(_))));
        assert_eq!(
            plan.results[5],
            Err(StoreError::Rule(DomainError::RoomClosed))
        );
        assert_eq!(plan.inserts.len(), 3);
        assert_eq!(plan.events.len(), 3);
        assert_eq!(
            plan.room_updates,
            vec![("r1".to_owned(), 6), ("r3".to_owned(), 1)]
        );
    }
}
