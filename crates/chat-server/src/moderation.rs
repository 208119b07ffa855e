//! Moderation, for the host app's trust-and-safety team (service key): read a room's
//! messages to review a report, whoever sent them and whether the room is open or closed,
//! and remove a message exactly as an unsend does (tombstone, `message_deleted` live to
//! both members), whoever sent it and however old it is.

use actix_web::{HttpRequest, HttpResponse, web};
use chat_domain::protocol::ApiErrorCode;
use chat_domain::protocol::api::RoomMessages;
use chat_domain::{Deleter, DomainError, HistoryPage, RoomId, Seq};
use chat_store::StoreError;
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

/// `DELETE /api/rooms/{room_id}/messages/{seq}`: `204` when the message is deleted (now or
/// before: deleting twice is not an error, and sends no second event); `404` for an unknown
/// room or a seq that does not exist in it.
pub async fn delete_message(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ServerError> {
    require_service_key(&req, &state)?;
    let (room, seq) = path.into_inner();
    let room_id = RoomId::new(room).map_err(|_| ServerError::NotFound)?;
    let seq = seq
        .parse::<u64>()
        .ok()
        .and_then(|n| Seq::new(n).ok())
        .ok_or(ServerError::NotFound)?;
    match state
        .store
        .delete_message(&room_id, seq, Deleter::Moderator, state.clock.now())
        .await
    {
        Ok(outcome) => {
            tracing::info!(room = %room_id, seq = seq.get(), ?outcome, "message deleted by moderation");
            Ok(HttpResponse::NoContent().finish())
        }
        Err(StoreError::UnknownRoom | StoreError::Rule(DomainError::NoSuchMessage)) => {
            Err(ServerError::NotFound)
        }
        Err(error) => Err(error.into()),
    }
}
