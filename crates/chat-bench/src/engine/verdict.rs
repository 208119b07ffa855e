//! What a finished run found, added up over all rooms: the counters that decide whether the
//! run was clean (exit code 0) and that every report prints.
//!
//! Losses are counted from both ends: a message sent is lost once if its own copy never came
//! back and once more if it never reached the other member. The two members' views of a room
//! are compared seq by seq at the end.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::note;
use super::reader::ReaderOutcome;
use super::stats::MemberStats;
use crate::check;

/// What a finished run found, added up over all rooms.
#[derive(Debug, Default, Clone, Copy)]
pub struct Verdict {
    pub sent: u64,
    pub confirmed: u64,
    pub delivered: u64,
    /// Copies that never arrived: own copies missing at the sender plus copies missing at the
    /// other member.
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Seq positions where the two members of a room saw different messages.
    pub disagreements: u64,
    /// Frames that were not ours or not this room's.
    pub foreign: u64,
    pub bad_history: u64,
    pub error_frames: u64,
    pub closed_connections: u64,
    pub history_sent: u64,
    pub history_answered: u64,
    pub history_bytes: u64,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.disagreements == 0
            && self.foreign == 0
            && self.bad_history == 0
            && self.error_frames == 0
            && self.closed_connections == 0
            && self.history_answered == self.history_sent
    }

    pub fn add(&mut self, other: &Verdict) {
        self.sent += other.sent;
        self.confirmed += other.confirmed;
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.disagreements += other.disagreements;
        self.foreign += other.foreign;
        self.bad_history += other.bad_history;
        self.error_frames += other.error_frames;
        self.closed_connections += other.closed_connections;
        self.history_sent += other.history_sent;
        self.history_answered += other.history_answered;
        self.history_bytes += other.history_bytes;
    }

    /// Adds up the readers' outcomes, in room/side order, with the members' counters; notes
    /// closed connections and the readers' errors in `errors`.
    pub(super) fn of_rooms(
        outcomes: &[ReaderOutcome],
        stats: &[[Arc<MemberStats>; 2]],
        errors: &mut Vec<String>,
    ) -> Self {
        let mut v = Self::default();
        for (room, pair) in outcomes.chunks(2).zip(stats) {
            let [a, b] = room else { continue };
            for (side, o) in [a, b].into_iter().enumerate() {
                let me = &pair[side];
                let peer = &pair[1 - side];
                let sent = me.sent.load(Ordering::Acquire);
                let confirmed = me.confirmed.load(Ordering::Acquire);
                let delivered_to_peer = peer.delivered.load(Ordering::Acquire);
                v.sent += sent;
                v.confirmed += confirmed;
                v.delivered += delivered_to_peer;
                v.lost += sent.saturating_sub(confirmed) + sent.saturating_sub(delivered_to_peer);
                // More distinct messages than were sent: the server invented some.
                v.foreign +=
                    confirmed.saturating_sub(sent) + delivered_to_peer.saturating_sub(sent);
                v.duplicated += o.check.duplicates;
                v.out_of_order += o.check.out_of_order;
                v.foreign += o.foreign;
                v.bad_history += o.bad_history;
                v.history_bytes += o.history_bytes;
                v.error_frames += me.errors.load(Ordering::Acquire);
                v.history_sent += me.history_sent.load(Ordering::Acquire);
                v.history_answered += me.history_answered.load(Ordering::Acquire);
                if let Some(why) = &o.closed {
                    v.closed_connections += 1;
                    note(errors, format!("connection closed: {why}"));
                }
                for e in &o.errors {
                    note(errors, e.clone());
                }
            }
            v.disagreements += check::disagreements(&a.check, &b.check);
        }
        v
    }
}
