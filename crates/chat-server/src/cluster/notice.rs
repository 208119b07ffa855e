//! The notice: what one node tells the others after a commit, as compact JSON.
//!
//! Routing data, not the database's job: a message batch is named by room, members and seq
//! range; the receiving node reads the messages itself, and only if it serves a member. Seen
//! and room events are small and travel whole. A notice names its node, so an engine that
//! echoes a node's own notices back (both do) lets the node drop them.

use chat_domain::{Members, RoomId, Seq, Timestamp, UserId};
use serde::{Deserialize, Serialize};

/// PostgreSQL refuses `NOTIFY` payloads of 8,000 bytes or more; notices are split below this.
pub const MAX_PAYLOAD_BYTES: usize = 7_900;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The publishing node's id (random per process).
    #[serde(rename = "n")]
    pub node: String,
    #[serde(rename = "i")]
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum Item {
    /// Messages `first..=last` of a room were committed.
    #[serde(rename = "m")]
    Messages {
        room: RoomId,
        members: [UserId; 2],
        first: Seq,
        last: Seq,
    },
    /// `reader` marked the other member's messages up to `up_to` seen.
    #[serde(rename = "s")]
    Seen {
        room: RoomId,
        members: [UserId; 2],
        reader: UserId,
        up_to: Seq,
        at: Timestamp,
    },
    /// A room was created.
    #[serde(rename = "o")]
    RoomOpened {
        room: RoomId,
        members: [UserId; 2],
        created_at: Timestamp,
    },
    /// A room was closed.
    #[serde(rename = "c")]
    RoomClosed {
        room: RoomId,
        members: [UserId; 2],
        created_at: Timestamp,
        closed_at: Timestamp,
    },
    /// A frame for some users' connections that is never stored (typing, presence).
    #[serde(rename = "e")]
    Ephemeral { users: Vec<UserId>, frame: String },
}

/// `Members` as the notice spells them.
pub fn pair(members: &Members) -> [UserId; 2] {
    members.as_slice().clone()
}

/// The notice's spelling back as `Members`; `None` for a pair that breaks the rule.
pub fn members(pair: &[UserId; 2]) -> Option<Members> {
    Members::new(pair[0].clone(), pair[1].clone()).ok()
}

impl Notice {
    /// The notice as JSON messages of at most [`MAX_PAYLOAD_BYTES`] each, items kept whole
    /// and in order. An item too large on its own (an ephemeral frame over the limit) is
    /// dropped with a warning: those are small by construction.
    pub fn to_payloads(&self) -> Vec<String> {
        let mut payloads = Vec::new();
        let mut chunk = Notice {
            node: self.node.clone(),
            items: Vec::new(),
        };
        let empty_len = chunk.json().len();
        let mut len = empty_len;
        for item in &self.items {
            let item_len = serde_json::to_string(item)
                .map(|s| s.len())
                .unwrap_or(usize::MAX);
            if empty_len.saturating_add(item_len) >= MAX_PAYLOAD_BYTES {
                tracing::warn!(item_len, "a notice item over the payload limit was dropped");
                continue;
            }
            if len + item_len + 1 >= MAX_PAYLOAD_BYTES && !chunk.items.is_empty() {
                payloads.push(chunk.json());
                chunk.items.clear();
                len = empty_len;
            }
            len += item_len + 1;
            chunk.items.push(item.clone());
        }
        if !chunk.items.is_empty() {
            payloads.push(chunk.json());
        }
        payloads
    }

    fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(payload: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn large_notices_split_below_the_limit_and_round_trip() {
        let items: Vec<Item> = (1..=500)
            .map(|i| Item::Messages {
                room: RoomId::new(format!("0b6c3f2e-8f3e-4a7e-9d59-{i:012}")).unwrap(),
                members: [user("alice"), user("bob")],
                first: Seq::new(i).unwrap(),
                last: Seq::new(i + 3).unwrap(),
            })
            .collect();
        let notice = Notice {
            node: "node-1".into(),
            items,
        };
        let payloads = notice.to_payloads();
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for payload in &payloads {
            assert!(payload.len() < MAX_PAYLOAD_BYTES, "{}", payload.len());
            let part = Notice::parse(payload).unwrap();
            assert_eq!(part.node, "node-1");
            back.extend(part.items);
        }
        assert_eq!(back, notice.items);
    }
}
