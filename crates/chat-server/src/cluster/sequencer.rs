//! Per-room order across nodes: the node's view of which seq of each room it has forwarded,
//! and what it must read from the database before it may forward more.
//!
//! Pure state (no I/O): the registry feeds it local commits, notices from other nodes,
//! snapshots from `ready`, fetch results and sweep results, and carries out the [`Step`]s it
//! returns. Invariant per tracked room: messages are forwarded in seq order, each once, with
//! no gap. A message that arrives ahead of a missing one (a local commit of seq N while seq
//! N-1, committed on another node, is still on its way) is held until the gap is filled from
//! the database, where N-1 is already committed: seqs are assigned under the room's row lock,
//! so N exists only after N-1 committed.

use std::collections::{BTreeMap, HashMap};

use chat_domain::{Members, Message, RoomId, Seq, UserId};

/// What the registry must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Forward this message to the local connections of the room's members.
    Deliver(Members, Message),
    /// Read the room's messages after seq `after` (as `reader`, a member) and hand them to
    /// [`Sequencer::fetched`].
    Fetch {
        room: RoomId,
        reader: UserId,
        after: u64,
    },
}

#[derive(Debug)]
struct Track {
    members: Members,
    /// The next seq to forward.
    next: u64,
    /// The highest seq known to be committed.
    known: u64,
    /// Messages that arrived ahead of `next`.
    held: BTreeMap<u64, Message>,
    /// A fetch is under way.
    fetching: bool,
}

impl Track {
    fn new(members: Members, next: u64) -> Self {
        Self {
            members,
            next,
            known: next.saturating_sub(1),
            held: BTreeMap::new(),
            fetching: false,
        }
    }
}

/// The rooms this node serves (a member has a connection here) and their cursors.
#[derive(Debug, Default)]
pub struct Sequencer {
    tracks: HashMap<RoomId, Track>,
}

impl Sequencer {
    /// A connection's `ready` showed the room at `last_seq`: start tracking it there if it is
    /// not tracked yet (so a lost notice right after is noticed by the sweep).
    pub fn snapshot(&mut self, room: RoomId, members: Members, last_seq: u64) {
        self.tracks
            .entry(room)
            .or_insert_with(|| Track::new(members, last_seq + 1));
    }

    /// This node committed `message`.
    pub fn committed(&mut self, members: Members, message: Message) -> Vec<Step> {
        let room = message.room_id.clone();
        let seq = message.seq.get();
        let track = self
            .tracks
            .entry(room.clone())
            .or_insert_with(|| Track::new(members, seq));
        track.known = track.known.max(seq);
        if seq >= track.next {
            track.held.insert(seq, message);
        }
        self.advance(&room)
    }

    /// Another node committed messages `first..=last` of a room; `rows` are those of them
    /// the notice carried (possibly none: then they are read).
    pub fn announced(
        &mut self,
        room: RoomId,
        members: Members,
        (first, last): (u64, u64),
        rows: Vec<Message>,
    ) -> Vec<Step> {
        let track = self
            .tracks
            .entry(room.clone())
            .or_insert_with(|| Track::new(members, first));
        track.known = track.known.max(last);
        for message in rows {
            let seq = message.seq.get();
            if seq >= track.next && message.room_id == room {
                track.held.entry(seq).or_insert(message);
            }
        }
        self.advance(&room)
    }

    /// The database's answer to a [`Step::Fetch`]: the room's messages after the cursor,
    /// oldest first (or `None` when the read failed: the next sweep tries again).
    pub fn fetched(&mut self, room: &RoomId, messages: Option<Vec<Message>>) -> Vec<Step> {
        let Some(track) = self.tracks.get_mut(room) else {
            return Vec::new();
        };
        track.fetching = false;
        // A failed read is not retried at once (a database that is down would make that a
        // hot loop): the next notice of the room or the next sweep asks again.
        let Some(messages) = messages else {
            return Vec::new();
        };
        for message in messages {
            let seq = message.seq.get();
            track.known = track.known.max(seq);
            if seq >= track.next {
                track.held.entry(seq).or_insert(message);
            }
        }
        self.advance(room)
    }

    /// The sweep's reading of `last_seq` for tracked rooms.
    pub fn swept(&mut self, last_seqs: Vec<(RoomId, Seq)>) -> Vec<Step> {
        let mut steps = Vec::new();
        for (room, last) in last_seqs {
            if let Some(track) = self.tracks.get_mut(&room) {
                track.known = track.known.max(last.get());
                steps.extend(self.advance(&room));
            }
        }
        steps
    }

    /// Forwards what can be forwarded in order; asks for a fetch when something is missing.
    fn advance(&mut self, room: &RoomId) -> Vec<Step> {
        let Some(track) = self.tracks.get_mut(room) else {
            return Vec::new();
        };
        let mut steps = Vec::new();
        // Held messages behind the cursor are duplicates.
        while let Some(entry) = track.held.first_entry() {
            if *entry.key() < track.next {
                entry.remove();
                continue;
            }
            if *entry.key() != track.next {
                break;
            }
            let message = entry.remove();
            track.next += 1;
            steps.push(Step::Deliver(track.members.clone(), message));
        }
        if track.next <= track.known && !track.fetching {
            track.fetching = true;
            steps.push(Step::Fetch {
                room: room.clone(),
                reader: track.members.first().clone(),
                after: track.next - 1,
            });
        }
        steps
    }

    /// True when the room is tracked.
    pub fn tracks(&self, room: &RoomId) -> bool {
        self.tracks.contains_key(room)
    }

    /// The rooms tracked now (for the sweep).
    pub fn rooms(&self) -> Vec<RoomId> {
        self.tracks.keys().cloned().collect()
    }

    /// Stops tracking rooms none of whose members is served here any more.
    pub fn retain(&mut self, served: impl Fn(&UserId) -> bool) {
        self.tracks
            .retain(|_, track| track.members.as_slice().iter().any(&served));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_domain::{Body, ClientMsgId, Timestamp};

    fn members() -> Members {
        Members::new(UserId::new("alice").unwrap(), UserId::new("bob").unwrap()).unwrap()
    }

    fn room() -> RoomId {
        RoomId::new("r1").unwrap()
    }

    fn message(seq: u64) -> Message {
        Message {
            room_id: room(),
            seq: Seq::new(seq).unwrap(),
            sender_id: UserId::new("alice").unwrap(),
            body: Some(Body::new("hi").unwrap()),
            sent_at: Timestamp::from_unix_micros(1).unwrap(),
            seen_at: None,
            client_msg_id: ClientMsgId::new(format!("c{seq}")).unwrap(),
            deleted_at: None,
        }
    }

    fn delivered(steps: &[Step]) -> Vec<u64> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Deliver(_, m) => Some(m.seq.get()),
                Step::Fetch { .. } => None,
            })
            .collect()
    }

    fn fetch(steps: &[Step]) -> Option<u64> {
        steps.iter().find_map(|s| match s {
            Step::Fetch { after, .. } => Some(*after),
            Step::Deliver(..) => None,
        })
    }

    #[test]
    fn local_commits_in_order_go_straight_through() {
        let mut s = Sequencer::default();
        s.snapshot(room(), members(), 0);
        assert_eq!(delivered(&s.committed(members(), message(1))), vec![1]);
        assert_eq!(delivered(&s.committed(members(), message(2))), vec![2]);
        assert!(
            delivered(&s.committed(members(), message(2))).is_empty(),
            "a duplicate"
        );
    }

    #[test]
    fn a_local_commit_never_overtakes_a_remote_one() {
        let mut s = Sequencer::default();
        s.snapshot(room(), members(), 4);
        // Seq 5 was committed on another node; its notice is late. Our own 6 arrives first.
        let steps = s.committed(members(), message(6));
        assert!(delivered(&steps).is_empty(), "6 must wait for 5");
        assert_eq!(fetch(&steps), Some(4));
        // The fetch returns 5 and 6; 5 then 6 go out, once each.
        let steps = s.fetched(&room(), Some(vec![message(5), message(6)]));
        assert_eq!(delivered(&steps), vec![5, 6]);
        // The late notice of 5 changes nothing.
        assert!(s.announced(room(), members(), (5, 5), vec![]).is_empty());
    }

    #[test]
    fn remote_notices_fetch_once_and_a_lost_one_is_found_by_the_sweep() {
        let mut s = Sequencer::default();
        s.snapshot(room(), members(), 0);
        let steps = s.announced(room(), members(), (1, 3), vec![]);
        assert_eq!(fetch(&steps), Some(0));
        assert!(
            s.announced(room(), members(), (4, 4), vec![]).is_empty(),
            "one fetch at a time"
        );
        let steps = s.fetched(&room(), Some(vec![message(1), message(2), message(3)]));
        assert_eq!(delivered(&steps), vec![1, 2, 3]);
        assert_eq!(fetch(&steps), Some(3), "4 is known and still missing");
        let steps = s.fetched(&room(), Some(vec![message(4)]));
        assert_eq!(delivered(&steps), vec![4]);
        // The notice of 5 is lost; the sweep sees last_seq 5.
        let steps = s.swept(vec![(room(), Seq::new(5).unwrap())]);
        assert_eq!(fetch(&steps), Some(4));
        assert_eq!(
            delivered(&s.fetched(&room(), Some(vec![message(5)]))),
            vec![5]
        );
        assert!(s.swept(vec![(room(), Seq::new(5).unwrap())]).is_empty());
    }

    #[test]
    fn a_failed_fetch_is_retried_by_the_sweep() {
        let mut s = Sequencer::default();
        s.snapshot(room(), members(), 0);
        assert_eq!(
            fetch(&s.announced(room(), members(), (1, 1), vec![])),
            Some(0)
        );
        assert!(s.fetched(&room(), None).is_empty());
        assert_eq!(
            fetch(&s.swept(vec![(room(), Seq::new(1).unwrap())])),
            Some(0)
        );
    }

    #[test]
    fn carried_rows_are_forwarded_without_a_read() {
        let mut s = Sequencer::default();
        s.snapshot(room(), members(), 0);
        let steps = s.announced(room(), members(), (1, 2), vec![message(1), message(2)]);
        assert_eq!(delivered(&steps), vec![1, 2]);
        assert_eq!(fetch(&steps), None, "nothing to read");
        // Rows that skip one: 3 is missing, so 4 waits and 3.. is read.
        let steps = s.announced(room(), members(), (4, 4), vec![message(4)]);
        assert!(delivered(&steps).is_empty());
        assert_eq!(fetch(&steps), Some(2));
    }

    #[test]
    fn rooms_nobody_here_is_in_are_dropped() {
        let mut s = Sequencer::default();
        s.snapshot(room(), members(), 0);
        s.retain(|u| u.as_str() == "carol");
        assert!(s.rooms().is_empty());
    }
}
