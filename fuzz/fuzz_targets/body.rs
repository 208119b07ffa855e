//! Arbitrary UTF-8 text through `Body::new`: a body that is accepted keeps every documented
//! invariant, and the error of one that is refused is the one an independent reading of the
//! rule (crates/chat-domain/src/body.rs) expects, in the order the rule checks them.

#![no_main]

use chat_domain::body::INVISIBLE;
use chat_domain::{Body, DomainError, MAX_BODY_CHARS};
use libfuzzer_sys::fuzz_target;

/// General category Cc, spelled out rather than through `char::is_control`.
fn is_cc(c: char) -> bool {
    matches!(c as u32, 0x00..=0x1F | 0x7F..=0x9F)
}

/// Shows something: not White_Space and outside every range of the documented table.
fn shows(c: char) -> bool {
    !c.is_whitespace()
        && INVISIBLE
            .iter()
            .all(|&(lo, hi)| (c as u32) < (lo as u32) || (c as u32) > (hi as u32))
}

/// Every line's bidi controls nest: an embedding or override closed by PDF, an isolate by
/// PDI, innermost first, nothing left open at the end of a line.
fn bidi_nested(text: &str) -> bool {
    text.split('\n').all(|line| {
        let mut open = String::new();
        for c in line.chars() {
            match c {
                '\u{202A}' | '\u{202B}' | '\u{202D}' | '\u{202E}' => open.push('E'),
                '\u{2066}'..='\u{2068}' => open.push('I'),
                '\u{202C}' if open.pop() != Some('E') => return false,
                '\u{2069}' if open.pop() != Some('I') => return false,
                _ => {}
            }
        }
        open.is_empty()
    })
}

fn expected(text: &str) -> Result<usize, DomainError> {
    let n = text.chars().count();
    if !text.chars().any(shows) {
        Err(DomainError::BodyEmpty)
    } else if n > MAX_BODY_CHARS {
        Err(DomainError::BodyTooLong)
    } else if text.chars().any(|c| is_cc(c) && c != '\n') {
        Err(DomainError::BodyInvalid)
    } else if !bidi_nested(text) {
        Err(DomainError::BodyUnpairedBidi)
    } else {
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    // The longest valid UTF-8 prefix, so no input is wasted.
    let text = match std::str::from_utf8(data) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).unwrap_or_default(),
    };
    let got = Body::new(text);
    assert_eq!(
        got.as_ref().map(Body::char_count).map_err(Clone::clone),
        expected(text),
        "{text:?}"
    );
    match got {
        Ok(body) => {
            let n = body.char_count();
            assert!((1..=MAX_BODY_CHARS).contains(&n));
            assert_eq!(body.as_str(), text, "kept as written");
            assert!(body.as_str().chars().any(shows));
            assert!(body.as_str().chars().all(|c| !is_cc(c) || c == '\n'));
            assert_eq!(body.to_string(), text);
            // The wire form round-trips and the rule applies on the way back in.
            let json = serde_json::to_string(&body).expect("a body serialises");
            assert_eq!(serde_json::from_str::<Body>(&json).ok(), Some(body.clone()));
            assert_eq!(Body::try_from(String::from(body.clone())), Ok(body));
        }
        Err(e) => {
            // Every refusal has a body_* wire code, and deserialising refuses it too.
            assert!(e.code().starts_with("body_"));
            assert!(e.wire_code().as_str().starts_with("body_"));
            if let Ok(json) = serde_json::to_string(text) {
                assert!(serde_json::from_str::<Body>(&json).is_err());
            }
        }
    }
});
