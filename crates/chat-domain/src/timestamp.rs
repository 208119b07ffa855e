//! Points in time, kept as whole microseconds since the Unix epoch (UTC).
//!
//! Microseconds are what both PostgreSQL and SQLite store exactly as a 64-bit integer, so a
//! time read back from either backend equals the one written. On the wire a timestamp is RFC
//! 3339 in UTC with six fractional digits, e.g. `2026-11-24T21:05:03.120000Z`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::error::DomainError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(i64);

const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

impl Timestamp {
    pub fn from_unix_micros(micros: i64) -> Result<Self, DomainError> {
        // Must be representable as a date (and so formattable) to be a valid timestamp.
        let nanos = i128::from(micros) * 1_000;
        OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .map_err(|_| DomainError::InvalidTimestamp)?;
        Ok(Self(micros))
    }

    pub fn unix_micros(self) -> i64 {
        self.0
    }

    /// Truncates to whole microseconds. The caller reads the clock; the domain never does.
    pub fn from_datetime(at: OffsetDateTime) -> Self {
        let micros = at.unix_timestamp_nanos().div_euclid(1_000);
        Self(i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX }))
    }

    pub fn to_datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// RFC 3339, UTC, microseconds.
    pub fn to_rfc3339(self) -> String {
        self.to_datetime()
            .to_offset(UtcOffset::UTC)
            .format(FORMAT)
            .unwrap_or_default()
    }

    /// Accepts any RFC 3339 time (any offset, any precision); keeps microseconds.
    pub fn parse_rfc3339(s: &str) -> Result<Self, DomainError> {
        OffsetDateTime::parse(s, &Rfc3339)
            .map(Self::from_datetime)
            .map_err(|_| DomainError::InvalidTimestamp)
    }

    /// Whole seconds since the epoch, as JWT `exp` counts them.
    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_utc_with_microseconds() {
        let t = Timestamp::from_unix_micros(1_795_000_000_120_000).map(Timestamp::to_rfc3339);
        assert_eq!(t.as_deref(), Ok("2026-11-18T11:06:40.120000Z"));
    }

    #[test]
    fn parses_other_offsets_into_utc() {
        let a = Timestamp::parse_rfc3339("2026-11-24T22:00:00.5+01:00");
        let b = Timestamp::parse_rfc3339("2026-11-24T21:00:00.500000Z");
        assert!(a.is_ok());
        assert_eq!(a, b);
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }

    proptest! {
        #[test]
        fn round_trips_through_json(micros in -62_135_596_800_000_000i64..253_402_300_799_000_000i64) {
            let t = Timestamp::from_unix_micros(micros).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let json = serde_json::to_string(&t).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: Timestamp = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, t);
        }
    }
}
