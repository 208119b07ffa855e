//! Arbitrary bytes as a client's WebSocket text frame, parsed as the server parses it
//! (`serde_json` into `ClientFrame`, see crates/chat-domain/src/protocol.rs), after reading
//! its envelope's `req` (`protocol::request_id`), which must agree with the JSON. What parses
//! re-serialises to JSON that parses back to the same frame, its ids are valid by
//! construction, and the rules the server applies next (history cursors, the body rule)
//! never panic and keep their contracts.

#![no_main]

use chat_domain::protocol::{ClientFrame, MAX_FRAME_BYTES, request_id};
use chat_domain::{
    Body, ClientMsgId, DomainError, HISTORY_WINDOW, HistoryPage, Req, RoomId, Seq, Timestamp,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The `req` rule, read off the whole JSON object.
fn expected_req(text: &str) -> Result<Option<String>, DomainError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(envelope)) => match envelope.get("req") {
            None => Ok(None),
            Some(Value::String(req)) if (1..=64).contains(&req.chars().count()) => {
                Ok(Some(req.clone()))
            }
            Some(_) => Err(DomainError::InvalidReq),
        },
        _ => Ok(None),
    }
}

fuzz_target!(|data: &[u8]| {
    // The server closes the connection (1009) before parsing anything bigger.
    if data.len() > MAX_FRAME_BYTES {
        return;
    }
    let parsed = serde_json::from_slice::<ClientFrame>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        // A text frame is UTF-8, and the server parses it with `from_str`: both agree.
        let from_str = serde_json::from_str::<ClientFrame>(text);
        assert_eq!(from_str.as_ref().ok(), parsed.as_ref().ok(), "{text:?}");
        // The envelope's `req`, read first, is exactly what the JSON object holds under the
        // key "req" (however the key is spelled): a string of 1..=64 characters, or refused.
        let req = request_id(text);
        assert_eq!(
            req.as_ref()
                .map(|r| r.as_ref().map(Req::as_str))
                .map_err(Clone::clone),
            expected_req(text)
                .as_ref()
                .map(Option::as_deref)
                .map_err(Clone::clone),
            "{text:?}"
        );
    }
    let Ok(frame) = parsed else {
        return;
    };

    // Re-serialising gives JSON that parses back to the same frame, twice over.
    let json = serde_json::to_string(&frame).expect("a parsed frame serialises");
    let back: ClientFrame = serde_json::from_str(&json).expect("its JSON parses back");
    assert_eq!(back, frame, "{json}");
    assert_eq!(serde_json::to_string(&back).ok().as_deref(), Some(&*json));

    match frame {
        // Any string is a token here; the `token` target verifies them.
        ClientFrame::Auth { .. } => assert!(json.starts_with(r#"{"type":"auth""#)),
        ClientFrame::History {
            room_id,
            before_seq,
            after_seq,
            limit,
        } => {
            assert_eq!(RoomId::new(room_id.as_str()), Ok(room_id.clone()));
            if let Some(seq) = before_seq {
                assert_eq!(Seq::new(seq.get()), Ok(seq));
            }
            match HistoryPage::from_cursors(before_seq, after_seq, limit) {
                Ok(page) => {
                    assert!(before_seq.is_none() || after_seq.is_none());
                    assert!((1..=HISTORY_WINDOW).contains(&page.limit()));
                    if let Some(l) = limit.filter(|l| (1..=HISTORY_WINDOW).contains(l)) {
                        assert_eq!(page.limit(), l);
                    }
                    let kind_ok = match page {
                        HistoryPage::Latest { .. } => before_seq.is_none() && after_seq.is_none(),
                        HistoryPage::Before { before, .. } => before_seq == Some(before),
                        HistoryPage::After { after, .. } => after_seq == Some(after),
                    };
                    assert!(kind_ok, "{page:?}");
                }
                Err(e) => {
                    assert_eq!(e, DomainError::ConflictingCursors);
                    assert!(before_seq.is_some() && after_seq.is_some());
                }
            }
        }
        ClientFrame::Send {
            room_id,
            client_msg_id,
            body,
        } => {
            assert_eq!(RoomId::new(room_id.as_str()), Ok(room_id.clone()));
            assert_eq!(
                ClientMsgId::new(client_msg_id.as_str()),
                Ok(client_msg_id.clone())
            );
            // The server answers a bad body with its own body_* code.
            match Body::new(body.as_str()) {
                Ok(b) => assert_eq!(b.as_str(), body),
                Err(e) => assert!(e.wire_code().as_str().starts_with("body_"), "{e:?}"),
            }
        }
        ClientFrame::Seen { room_id, up_to_seq }
        | ClientFrame::Received { room_id, up_to_seq } => {
            assert_eq!(RoomId::new(room_id.as_str()), Ok(room_id.clone()));
            assert!((1..=i64::MAX as u64).contains(&up_to_seq.get()));
        }
        ClientFrame::Delete { room_id, seq } => {
            assert_eq!(RoomId::new(room_id.as_str()), Ok(room_id.clone()));
            assert!((1..=i64::MAX as u64).contains(&seq.get()));
        }
        ClientFrame::Typing { room_id } => {
            assert_eq!(RoomId::new(room_id.as_str()), Ok(room_id.clone()));
        }
        ClientFrame::Rooms {
            before_activity_at,
            before_room_id,
        } => {
            assert_eq!(RoomId::new(before_room_id.as_str()), Ok(before_room_id.clone()));
            // The cursor's time is a valid timestamp that prints and parses back.
            let text = before_activity_at.to_rfc3339();
            assert_eq!(Timestamp::parse_rfc3339(&text), Ok(before_activity_at));
        }
    }
});
