//! Moderation, for the host app's trust-and-safety team (service key): read a room's
//! messages to review a report, whoever sent them and whether the room is open or closed.
//! (Removing a message comes with unsend, protocol 1.1.)

use actix_web::{HttpRequest, HttpResponse, web};
use chat_domain::protocol::ApiErrorCode;
use chat_domain::protocol::api::RoomMessages;
use chat_domain::{HistoryPage, RoomId, Seq};
use serde::Deserialize;

use crate::api::require_service_key;
use crate::error::ServerError;
use crate::state::AppState;

/// The query of `GET /api/rooms/{room_id}/messages`: the WebSocket `history` cursors.
#[derive(Debug, Deserialize)]
struct PageQuery {
    before_seq: Option<u64>,
    after_seq: Option<u64>,
    limit: Option<u32>,
}

/// `GET /api/rooms/{room_id}/messages?before_seq=&after_seq=&limit=`: the same pages as the
/// WebSocket `history` (no cursor: the latest; `limit` 1..=300, default 300).
pub async fn room_messages(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ServerError> {
    require_service_key(&req, &state)?;
    let room_id = RoomId::new(path.into_inner()).map_err(|_| ServerError::UnknownRoom)?;
    let query = web::Query::<PageQuery>::from_query(req.query_string()).map_err(|e| {
        ServerError::BadRequest {
            code: ApiErrorCode::InvalidQuery,
            message: e.to_string(),
        }
    })?;
    let before = query.before_seq.map(Seq::new).transpose()?;
    let page = HistoryPage::from_cursors(before, query.after_seq, query.limit)?;
    let room = state.store.room(&room_id).await?;
    // The store reads history as a member; the moderator reads as the room's first.
    let messages = state
        .store
        .history(&room_id, room.members.first(), page)
        .await?;
    Ok(HttpResponse::Ok().json(RoomMessages {
        room_id,
        members: room.members.as_slice().to_vec(),
        closed: room.is_closed(),
        messages,
    }))
}
