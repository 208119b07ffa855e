//! What the bench writes: `send` frames of numbered messages, `history` frames for a room's
//! latest page, and message bodies the server accepts.
//!
//! A message is named `<tag><number>` (see `check`), so the reader can tell from the
//! `client_msg_id` alone whose it is and when it was due.

use std::sync::Arc;

use chat_domain::protocol::ClientFrame;
use chat_domain::{ClientMsgId, RoomId};

use crate::check;

/// The send frame of message `number` with `tag` to `room`.
pub fn send_frame(room: &RoomId, tag: u8, number: u64, body: &str) -> Result<String, String> {
    let client_msg_id =
        ClientMsgId::new(check::client_msg_id(tag, number)).map_err(|e| e.to_string())?;
    serde_json::to_string(&ClientFrame::Send {
        room_id: room.clone(),
        client_msg_id,
        body: body.to_owned(),
    })
    .map_err(|e| e.to_string())
}

/// The history frame for the latest page of `room`.
pub fn history_frame(room: &RoomId) -> Result<String, String> {
    serde_json::to_string(&ClientFrame::History {
        room_id: room.clone(),
        before_seq: None,
        after_seq: None,
        limit: None,
    })
    .map_err(|e| e.to_string())
}

/// A message body of `len` characters that passes the server's rule.
pub fn body(len: usize) -> Result<Arc<str>, String> {
    if !(1..=chat_domain::MAX_BODY_CHARS).contains(&len) {
        return Err(format!(
            "--body-len must be 1..={}",
            chat_domain::MAX_BODY_CHARS
        ));
    }
    let text: String = "matchchat bench ".chars().cycle().take(len).collect();
    let text = if text.trim().is_empty() {
        "x".repeat(len)
    } else {
        text
    };
    chat_domain::Body::new(text.clone()).map_err(|e| e.to_string())?;
    Ok(Arc::from(text))
}
