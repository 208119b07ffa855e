//! The message body rule: 1..=160 Unicode scalar values, not blank, and no control characters
//! but `\n`.
//!
//! Counting scalar values (not bytes, not UTF-16 units, not grapheme clusters) is what both
//! Rust's `chars().count()` and JavaScript's `[...s].length` do, so the page's counter and the
//! server agree exactly: 160 emoji fit, a combining mark counts on its own.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::limits::MAX_BODY_CHARS;

/// A valid message body. One that exists has passed the rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Body(String);

impl Body {
    /// Checks the rule. The text is kept as given: the server never trims or rewrites what a
    /// user wrote.
    pub fn new(text: impl Into<String>) -> Result<Self, DomainError> {
        let text = text.into();
        if text.trim().is_empty() {
            return Err(DomainError::BodyEmpty);
        }
        // Checked before counting so a huge input fails fast on its first 161 characters.
        if text.chars().nth(MAX_BODY_CHARS).is_some() {
            return Err(DomainError::BodyTooLong);
        }
        if text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(DomainError::BodyInvalid);
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The length as the rule counts it.
    pub fn char_count(&self) -> usize {
        self.0.chars().count()
    }
}

impl TryFrom<String> for Body {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Body> for String {
    fn from(value: Body) -> String {
        value.0
    }
}

impl fmt::Display for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exactly_160_characters_fit_and_161_do_not() {
        assert!(Body::new("a".repeat(160)).is_ok());
        assert_eq!(Body::new("a".repeat(161)), Err(DomainError::BodyTooLong));
    }

    #[test]
    fn emoji_count_as_one_scalar_each() {
        let emoji = "😀".repeat(160);
        assert_eq!(emoji.encode_utf16().count(), 320);
        let body = Body::new(emoji).map(|b| b.char_count());
        assert_eq!(body, Ok(160));
        assert_eq!(Body::new("😀".repeat(161)), Err(DomainError::BodyTooLong));
    }

    #[test]
    fn combining_marks_count_on_their_own() {
        // "e" + COMBINING ACUTE ACCENT is one grapheme but two scalar values.
        let e_acute = "e\u{0301}";
        assert!(Body::new(e_acute.repeat(80)).is_ok());
        assert_eq!(
            Body::new(format!("{}x", e_acute.repeat(80))),
            Err(DomainError::BodyTooLong)
        );
    }

    #[test]
    fn blank_and_empty_bodies_are_refused() {
        assert_eq!(Body::new(""), Err(DomainError::BodyEmpty));
        assert_eq!(Body::new("   "), Err(DomainError::BodyEmpty));
        assert_eq!(Body::new("\n\n"), Err(DomainError::BodyEmpty));
        assert_eq!(Body::new("\u{3000}"), Err(DomainError::BodyEmpty));
    }

    #[test]
    fn control_characters_other_than_newline_are_refused() {
        assert!(Body::new("line one\nline two").is_ok());
        assert_eq!(Body::new("a\rb"), Err(DomainError::BodyInvalid));
        assert_eq!(Body::new("a\r\nb"), Err(DomainError::BodyInvalid));
        assert_eq!(Body::new("tab\there"), Err(DomainError::BodyInvalid));
        assert_eq!(Body::new("nul\0"), Err(DomainError::BodyInvalid));
        assert_eq!(Body::new("del\u{7f}"), Err(DomainError::BodyInvalid));
    }

    #[test]
    fn the_text_is_kept_as_written() {
        let body = Body::new("  hi  ").map(String::from);
        assert_eq!(body.as_deref(), Ok("  hi  "));
    }

    #[test]
    fn deserializing_applies_the_rule() {
        assert!(serde_json::from_str::<Body>("\"hi\"").is_ok());
        assert!(serde_json::from_str::<Body>("\"\"").is_err());
    }

    proptest! {
        #[test]
        fn accepted_iff_within_rule(s in "\\PC{0,200}") {
            let n = s.chars().count();
            let blank = s.trim().is_empty();
            match Body::new(s.clone()) {
                Ok(b) => {
                    prop_assert!(!blank && n <= 160);
                    prop_assert_eq!(b.char_count(), n);
                }
                Err(DomainError::BodyEmpty) => prop_assert!(blank),
                Err(DomainError::BodyTooLong) => prop_assert!(!blank && n > 160),
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }
    }
}
