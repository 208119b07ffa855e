//! The product's fixed limits. They are named once here so the store, the server, the page
//! (through `docs/protocol.md`) and load tools agree on them.

/// A message body holds at most this many Unicode scalar values (what Rust's
/// `chars().count()` and JavaScript's `[...s].length` count): 160 emoji fit.
pub const MAX_BODY_CHARS: usize = 160;

/// The history window: a page shows, and a history request returns, at most this many
/// messages.
pub const HISTORY_WINDOW: u32 = 300;

/// User ids, room ids and client message ids are at most this many characters.
pub const MAX_ID_CHARS: usize = 64;

/// A room list page (`ready`, `rooms`) holds at most this many rooms: 1,000 rooms made a
/// 122 KB `ready` frame, and some WebSocket clients refuse frames over 1 MiB.
pub const ROOMS_PAGE: usize = 200;
