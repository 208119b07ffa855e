//! Identifiers. Each is validated once, at construction, so a value that exists is valid and
//! can be stored, logged and put in a URL without another check.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::limits::MAX_ID_CHARS;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $allowed:expr, $err:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, DomainError> {
                let value = value.into();
                let len = value.chars().count();
                let allowed: fn(char) -> bool = $allowed;
                if len == 0 || len > MAX_ID_CHARS || !value.chars().all(allowed) {
                    return Err($err);
                }
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A user, as the host app names it: 1..=64 characters of `[A-Za-z0-9_.:@-]`.
    UserId,
    |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-'),
    DomainError::InvalidUserId
);

string_id!(
    /// A room: 1..=64 characters of `[A-Za-z0-9_-]` (the server mints UUIDs).
    RoomId,
    |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'),
    DomainError::InvalidRoomId
);

string_id!(
    /// The sender's own id for a message, unique per room and sender, that makes a retried
    /// send idempotent: 1..=64 characters, none of them control characters.
    ClientMsgId,
    |c| !c.is_control(),
    DomainError::InvalidClientMsgId
);

string_id!(
    /// A request id a client puts on a frame (`"req"`): 1..=64 characters. Every `error` frame
    /// caused by that frame, and the `history` reply to it, carry it back.
    Req,
    |_| true,
    DomainError::InvalidReq
);

/// A message's place in its room: starts at 1, gapless, strictly increasing in commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Seq(u64);

impl Seq {
    pub const FIRST: Seq = Seq(1);

    pub fn new(value: u64) -> Result<Self, DomainError> {
        if value == 0 || value > i64::MAX as u64 {
            return Err(DomainError::InvalidSeq);
        }
        Ok(Self(value))
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The seq after this one.
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }
}

impl TryFrom<u64> for Seq {
    type Error = DomainError;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<i64> for Seq {
    type Error = DomainError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        u64::try_from(value)
            .map_err(|_| DomainError::InvalidSeq)
            .and_then(Self::new)
    }
}

impl From<Seq> for u64 {
    fn from(value: Seq) -> u64 {
        value.0
    }
}

impl From<Seq> for i64 {
    fn from(value: Seq) -> i64 {
        // `Seq::new` keeps the value within i64.
        value.0 as i64
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn user_ids() {
        assert!(UserId::new("alice").is_ok());
        assert!(UserId::new("user:42@host.example-1_x").is_ok());
        assert_eq!(UserId::new(""), Err(DomainError::InvalidUserId));
        assert_eq!(UserId::new("a b"), Err(DomainError::InvalidUserId));
        assert_eq!(UserId::new("é"), Err(DomainError::InvalidUserId));
        assert!(UserId::new("a".repeat(64)).is_ok());
        assert_eq!(UserId::new("a".repeat(65)), Err(DomainError::InvalidUserId));
    }

    #[test]
    fn room_and_client_ids() {
        assert!(RoomId::new("0193b7c2-5d1e-4a7b-9f00-aa11bb22cc33").is_ok());
        assert_eq!(RoomId::new("a/b"), Err(DomainError::InvalidRoomId));
        assert!(ClientMsgId::new("c1").is_ok());
        assert!(ClientMsgId::new("ünïcode ok 🙂").is_ok());
        assert_eq!(ClientMsgId::new(""), Err(DomainError::InvalidClientMsgId));
        assert_eq!(
            ClientMsgId::new("a\nb"),
            Err(DomainError::InvalidClientMsgId)
        );
        assert_eq!(
            ClientMsgId::new("🙂".repeat(65)),
            Err(DomainError::InvalidClientMsgId)
        );
    }

    #[test]
    fn ids_deserialize_with_validation() {
        assert!(serde_json::from_str::<UserId>("\"bob\"").is_ok());
        assert!(serde_json::from_str::<UserId>("\"no spaces\"").is_err());
        assert!(serde_json::from_str::<Seq>("0").is_err());
        assert!(serde_json::from_str::<Seq>("-1").is_err());
        assert_eq!(serde_json::from_str::<Seq>("7").ok(), Seq::new(7).ok());
    }

    #[test]
    fn seq_starts_at_one() {
        assert_eq!(Seq::new(0), Err(DomainError::InvalidSeq));
        assert_eq!(Seq::FIRST.get(), 1);
        assert_eq!(Seq::FIRST.next().get(), 2);
        assert_eq!(Seq::try_from(-5i64), Err(DomainError::InvalidSeq));
        assert_eq!(Seq::new(u64::MAX), Err(DomainError::InvalidSeq));
    }

    proptest! {
        #[test]
        fn valid_user_ids_round_trip(s in "[A-Za-z0-9_.:@-]{1,64}") {
            let id = UserId::new(s.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(id.as_str(), s.as_str());
            let json = serde_json::to_string(&id).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: UserId = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, id);
        }

        #[test]
        fn seq_round_trips_through_i64(n in 1u64..=(i64::MAX as u64)) {
            let seq = Seq::new(n).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let as_i64: i64 = seq.into();
            prop_assert_eq!(Seq::try_from(as_i64), Ok(seq));
        }
    }
}
