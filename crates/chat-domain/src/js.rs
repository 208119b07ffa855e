//! The page's copy of the protocol's constants, generated from the Rust types so the two
//! never drift: `web/protocol.js` is this module's [`constants_module`] output, checked in.
//! A test fails when the checked-in file is stale; to regenerate it, run
//! `UPDATE_PROTOCOL_JS=1 cargo test -p chat-domain js::` and commit the result.

use std::fmt::Write;

use crate::limits::{HISTORY_WINDOW, MAX_BODY_CHARS, MAX_ID_CHARS};
use crate::protocol::{ApiErrorCode, Close, ErrorCode, MAX_FRAME_BYTES};

/// `FooBar` → `FOO_BAR`.
fn constant_name(variant: &str) -> String {
    let mut name = String::new();
    for (i, c) in variant.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

fn codes<T: Copy + std::fmt::Debug>(
    out: &mut String,
    name: &str,
    all: &[T],
    text: fn(T) -> &'static str,
) {
    let _ = writeln!(out, "export const {name} = Object.freeze({{");
    for &item in all {
        let _ = writeln!(
            out,
            "  {}: \"{}\",",
            constant_name(&format!("{item:?}")),
            text(item)
        );
    }
    let _ = writeln!(out, "}});\n");
}

/// The text of `web/protocol.js`.
pub fn constants_module() -> String {
    let mut out = String::from(
        "// matchchat protocol constants. GENERATED from crates/chat-domain (src/js.rs): do not edit.\n\
         // Regenerate: UPDATE_PROTOCOL_JS=1 cargo test -p chat-domain js::\n\n",
    );
    let _ = writeln!(
        out,
        "/** A body holds at most this many Unicode scalar values (JS `[...s].length`). */"
    );
    let _ = writeln!(out, "export const MAX_BODY_CHARS = {MAX_BODY_CHARS};");
    let _ = writeln!(
        out,
        "/** The history window: a room keeps at most this many stored messages. */"
    );
    let _ = writeln!(out, "export const HISTORY_WINDOW = {HISTORY_WINDOW};");
    let _ = writeln!(
        out,
        "/** Ids (user, room, client_msg_id) are at most this many characters. */"
    );
    let _ = writeln!(out, "export const MAX_ID_CHARS = {MAX_ID_CHARS};");
    let _ = writeln!(
        out,
        "/** Largest frame the server accepts, in bytes (close 1009 beyond). */"
    );
    let _ = writeln!(out, "export const MAX_FRAME_BYTES = {MAX_FRAME_BYTES};\n");
    let _ = writeln!(out, "/** Codes of `error` frames. */");
    codes(&mut out, "ERROR_CODES", ErrorCode::ALL, ErrorCode::as_str);
    let _ = writeln!(out, "/** Codes of service API errors. */");
    codes(
        &mut out,
        "API_ERROR_CODES",
        ApiErrorCode::ALL,
        ApiErrorCode::as_str,
    );
    let _ = writeln!(
        out,
        "/** Why the server closes a WebSocket: close code and reason. */"
    );
    let _ = writeln!(out, "export const CLOSE = Object.freeze({{");
    for &close in Close::ALL {
        let _ = writeln!(
            out,
            "  {}: Object.freeze({{ code: {}, reason: \"{}\" }}),",
            constant_name(&format!("{close:?}")),
            close.code(),
            close.reason()
        );
    }
    let _ = writeln!(out, "}});");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_screaming_snake_case() {
        assert_eq!(constant_name("NotAMember"), "NOT_A_MEMBER");
        assert_eq!(constant_name("Bye"), "BYE");
    }

    /// The checked-in `web/protocol.js` is what the Rust types generate.
    #[test]
    fn web_protocol_js_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/protocol.js");
        let generated = constants_module();
        if std::env::var_os("UPDATE_PROTOCOL_JS").is_some() {
            std::fs::write(path, &generated).unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "web/protocol.js is stale: run UPDATE_PROTOCOL_JS=1 cargo test -p chat-domain js:: and commit it"
        );
    }
}
