//! What a connection checks about its room's stream of `message` frames: seq gapless and in
//! order, and each message (named by its `client_msg_id`) exactly once.
//!
//! The bench names its messages `<tag><number>` (`a17`, `b3`, `L1042`), so a message's
//! identity packs into a `u64` key and the two members' views of a room can be compared
//! cheaply at the end.

use std::collections::HashSet;

/// A message's identity: its tag byte in the top 8 bits, its number below.
pub type Key = u64;

const NUMBER_BITS: u32 = 56;

pub fn key(tag: u8, number: u64) -> Key {
    (u64::from(tag) << NUMBER_BITS) | (number & ((1 << NUMBER_BITS) - 1))
}

/// `"a17"` -> (b'a', 17). Anything else is not one of ours.
pub fn parse_client_msg_id(id: &str) -> Option<(u8, u64)> {
    let (&tag, digits) = id.as_bytes().split_first()?;
    if !tag.is_ascii_alphabetic() || digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((tag, number))
}

/// The client_msg_id of message `number` with `tag`.
pub fn client_msg_id(tag: u8, number: u64) -> String {
    format!("{}{number}", char::from(tag))
}

/// One connection's view of one room.
#[derive(Debug, Default)]
pub struct RoomCheck {
    /// The seq the stream started after (the room's `last_seq` in `ready`).
    pub base_seq: u64,
    last_seq: u64,
    seen: HashSet<Key>,
    /// Keys in the order they arrived; index `i` holds seq `base_seq + 1 + i` when in order.
    pub order: Vec<Key>,
    pub duplicates: u64,
    pub out_of_order: u64,
}

/// What one `message` frame was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
}

impl RoomCheck {
    pub fn starting_after(base_seq: u64) -> Self {
        Self {
            base_seq,
            last_seq: base_seq,
            ..Self::default()
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Records a message frame. A seq other than the next one counts as out of order (a gap or
    /// a step back); a key seen before counts as a duplicate.
    pub fn observe(&mut self, seq: u64, key: Key) -> Seen {
        if seq == self.last_seq + 1 {
            self.last_seq = seq;
        } else {
            self.out_of_order += 1;
            self.last_seq = self.last_seq.max(seq);
        }
        if self.seen.insert(key) {
            self.order.push(key);
            Seen::New
        } else {
            self.duplicates += 1;
            Seen::Duplicate
        }
    }

    /// Whether the message `key` was seen (at any seq).
    pub fn contains(&self, key: Key) -> bool {
        self.seen.contains(&key)
    }

    #[cfg(test)]
    pub fn distinct(&self) -> usize {
        self.seen.len()
    }
}

/// Compares what the two members of a room saw: the same messages in the same seq order.
/// Returns the number of positions where they differ (0 when they agree). Only the messages
/// sent during the run are compared; both views start after their own `ready`.
pub fn disagreements(a: &RoomCheck, b: &RoomCheck) -> u64 {
    // Both connections were ready before the first send of the run, so both streams start at
    // the same seq; if not, align on the later start.
    let start = a.base_seq.max(b.base_seq);
    let skip_a = usize::try_from(start - a.base_seq).unwrap_or(usize::MAX);
    let skip_b = usize::try_from(start - b.base_seq).unwrap_or(usize::MAX);
    let xs = a.order.get(skip_a..).unwrap_or_default();
    let ys = b.order.get(skip_b..).unwrap_or_default();
    let differing = xs.iter().zip(ys).filter(|(x, y)| x != y).count();
    let extra = xs.len().abs_diff(ys.len());
    u64::try_from(differing + extra).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        assert_eq!(
            parse_client_msg_id(&client_msg_id(b'a', 17)),
            Some((b'a', 17))
        );
        assert_eq!(parse_client_msg_id("L0"), Some((b'L', 0)));
        assert_eq!(parse_client_msg_id("a"), None);
        assert_eq!(parse_client_msg_id("17"), None);
        assert_eq!(parse_client_msg_id("a1x"), None);
        assert_ne!(key(b'a', 1), key(b'b', 1));
    }

    #[test]
    fn gapless_in_order_stream_is_clean() {
        let mut c = RoomCheck::starting_after(300);
        for (i, seq) in (301..=310).enumerate() {
            assert_eq!(c.observe(seq, key(b'a', i as u64)), Seen::New);
        }
        assert_eq!((c.duplicates, c.out_of_order, c.distinct()), (0, 0, 10));
        assert_eq!(c.last_seq(), 310);
    }

    #[test]
    fn gaps_steps_back_and_repeats_are_counted() {
        let mut c = RoomCheck::starting_after(0);
        c.observe(1, key(b'a', 1));
        c.observe(3, key(b'a', 3)); // gap
        c.observe(2, key(b'a', 2)); // step back
        assert_eq!(c.observe(4, key(b'a', 3)), Seen::Duplicate);
        assert_eq!((c.duplicates, c.out_of_order), (1, 2));
    }

    #[test]
    fn views_are_compared_position_by_position() {
        let mut a = RoomCheck::starting_after(0);
        let mut b = RoomCheck::starting_after(0);
        for (seq, k) in [(1, key(b'a', 1)), (2, key(b'b', 1)), (3, key(b'a', 2))] {
            a.observe(seq, k);
            b.observe(seq, k);
        }
        assert_eq!(disagreements(&a, &b), 0);
        b.observe(4, key(b'b', 2));
        assert_eq!(disagreements(&a, &b), 1);
        a.observe(4, key(b'a', 3));
        assert_eq!(disagreements(&a, &b), 1);
    }
}
