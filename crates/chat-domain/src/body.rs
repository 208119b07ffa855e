//! The message body rule: 1..=160 Unicode scalar values, at least one visible character, no
//! control characters but `\n`, and no unpaired bidirectional controls.
//!
//! *Visible* means: not White_Space and not one of [`INVISIBLE`] (zero-width and format
//! characters, fillers, variation selectors). A body of U+200B alone shows as nothing, so it
//! is `body_empty` like a blank one. Those characters stay allowed beside visible ones: emoji
//! sequences need U+200D.
//!
//! *Bidi controls* (U+202A–U+202E, U+2066–U+2069) must be paired inside the body, and inside
//! each line: an embedding or override closed by U+202C, an isolate by U+2069. An unpaired
//! one would reorder whatever the page shows after the body (`safe\u{202E}gnp.exe` displays
//! as `safeexe.png`), so it is `body_invalid`. A paired override still reorders text *inside*
//! the body, so the page also shows every body isolated (`dir="auto"`, `unicode-bidi:
//! isolate`): a body can never reorder the text around it.
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
        if !text.chars().any(is_visible) {
            return Err(DomainError::BodyEmpty);
        }
        // Checked before counting so a huge input fails fast on its first 161 characters.
        if text.chars().nth(MAX_BODY_CHARS).is_some() {
            return Err(DomainError::BodyTooLong);
        }
        if text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(DomainError::BodyInvalid);
        }
        if !bidi_controls_paired(&text) {
            return Err(DomainError::BodyUnpairedBidi);
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

/// Characters that display as nothing, beside White_Space: format characters (general
/// category Cf, such as U+200B–U+200F, U+2060–U+206F, U+FEFF), fillers (U+115F, U+1160,
/// U+3164, U+FFA0, U+2800), and variation selectors. The page (`web/chat-rules.js`) holds
/// the same list; a test in `tests/browser` checks that both refuse the same bodies.
pub const INVISIBLE: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{2800}', '\u{2800}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E007F}'),
    ('\u{E0100}', '\u{E01EF}'),
];

/// True when `c` shows something on screen.
pub fn is_visible(c: char) -> bool {
    !c.is_whitespace() && !INVISIBLE.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// The two kinds of bidi scope, each with its own closer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BidiScope {
    /// LRE, RLE, LRO, RLO: closed by PDF (U+202C).
    Embedding,
    /// LRI, RLI, FSI: closed by PDI (U+2069).
    Isolate,
}

/// True when every bidi opener is closed, innermost first, by its own kind of closer on the
/// same line, and no closer stands without an opener.
fn bidi_controls_paired(text: &str) -> bool {
    let mut open: Vec<BidiScope> = Vec::new();
    for c in text.chars() {
        match c {
            '\u{202A}' | '\u{202B}' | '\u{202D}' | '\u{202E}' => open.push(BidiScope::Embedding),
            '\u{2066}' | '\u{2067}' | '\u{2068}' => open.push(BidiScope::Isolate),
            '\u{202C}' if open.pop() != Some(BidiScope::Embedding) => return false,
            '\u{2069}' if open.pop() != Some(BidiScope::Isolate) => return false,
            '\n' if !open.is_empty() => return false,
            _ => {}
        }
    }
    open.is_empty()
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
    fn bodies_with_no_visible_character_are_empty() {
        for invisible in [
            "\u{200B}",
            "\u{200D}\u{FEFF}",
            " \u{2060} ",
            "\u{3164}",
            "\u{FE0F}\n",
        ] {
            assert_eq!(
                Body::new(invisible),
                Err(DomainError::BodyEmpty),
                "{invisible:?}"
            );
        }
        // Beside a visible character they stay: a family emoji is joined with U+200D.
        assert!(Body::new("\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}").is_ok());
        assert!(Body::new("a\u{200B}").is_ok());
    }

    #[test]
    fn unpaired_bidi_controls_are_refused() {
        for spoof in [
            "safe\u{202E}gnp.exe",
            "a\u{2067}b",
            "a\u{202C}",
            "a\u{2069}",
            "\u{2066}a\u{202C}",
            "\u{202B}a\u{2067}b\u{202C}\u{2069}",
            "\u{202E}a\nb\u{202C}",
        ] {
            assert_eq!(
                Body::new(spoof),
                Err(DomainError::BodyUnpairedBidi),
                "{spoof:?}"
            );
        }
        for paired in [
            "a\u{2067}b\u{2069}",
            "\u{202B}a\u{2066}b\u{2069}\u{202C}",
            "x\u{202E}y\u{202C}\nz",
        ] {
            assert!(Body::new(paired).is_ok(), "{paired:?}");
        }
        assert_eq!(
            DomainError::BodyUnpairedBidi.wire_code(),
            crate::protocol::ErrorCode::BodyInvalid
        );
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
            let blank = !s.chars().any(is_visible);
            match Body::new(s.clone()) {
                Ok(b) => {
                    prop_assert!(!blank && n <= 160);
                    prop_assert_eq!(b.char_count(), n);
                }
                Err(DomainError::BodyEmpty) => prop_assert!(blank),
                Err(DomainError::BodyTooLong) => prop_assert!(!blank && n > 160),
                Err(DomainError::BodyUnpairedBidi) => prop_assert!(!bidi_controls_paired(&s)),
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }
    }
}
