//! Privacy-law requests (GDPR/CCPA), for the host app (service key): everything stored about
//! a user, as one JSON document. (Erasure comes with tombstones, protocol 1.1.)
//!
//! The export is streamed: rooms one after another, each room's messages read 300 at a time,
//! so a user with 100k messages costs the server one page of memory, not the whole export.

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use chat_domain::protocol::api::ExportedRoom;
use chat_domain::{HISTORY_WINDOW, HistoryPage, UserId};
use chat_store::Repository;
use tokio::sync::mpsc;

use crate::api::{parse_user, require_service_key};
use crate::error::ServerError;
use crate::state::AppState;

/// `GET /api/users/{user_id}/export`:
/// `{"user_id":U,"exported_at":T,"rooms":[{"room_id","members","created_at","closed_at",
/// "messages":[M...]}...]}`. A user the server never saw gets `"rooms":[]`.
pub async fn export(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ServerError> {
    require_service_key(&req, &state)?;
    let user = parse_user(&path.into_inner())?;
    let rooms = state.store.rooms_of(&user).await?;
    let head = serde_json::json!({"user_id": user, "exported_at": state.clock.now()});
    let head = head.to_string();
    // `{"user_id":..,"exported_at":..` then `,"rooms":[` ... `]}`
    let opening = format!("{},\"rooms\":[", head.trim_end_matches('}'));
    let (tx, rx) = mpsc::channel::<Result<Bytes, ServerError>>(4);
    let store = state.store.clone();
    tracing::info!(user = %user, rooms = rooms.len(), "export started");
    actix_web::rt::spawn(async move {
        if tx.send(Ok(Bytes::from(opening))).await.is_err() {
            return;
        }
        for (i, summary) in rooms.into_iter().enumerate() {
            let separator = if i == 0 { "" } else { "," };
            if let Err(error) =
                export_room(store.as_ref(), &user, &summary.room_id, separator, &tx).await
            {
                // The response has started: the stream is cut, and the client sees a
                // truncated document rather than a complete-looking wrong one.
                let _ = tx.send(Err(error)).await;
                return;
            }
        }
        let _ = tx.send(Ok(Bytes::from_static(b"]}"))).await;
        tracing::info!(user = %user, "export finished");
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body))
}

/// Writes one room: its fields, then its messages a page (300) at a time, by seq.
async fn export_room(
    store: &dyn Repository,
    user: &UserId,
    room_id: &chat_domain::RoomId,
    separator: &str,
    tx: &mpsc::Sender<Result<Bytes, ServerError>>,
) -> Result<(), ServerError> {
    let room = store.room(room_id).await?;
    let fields = ExportedRoom {
        room_id: room.id.clone(),
        members: room.members.as_slice().to_vec(),
        created_at: room.created_at,
        closed_at: room.closed_at,
        messages: Vec::new(),
    };
    // The room's fields with an open `messages` array: `{...,"messages":[`.
    let fields = serde_json::to_string(&fields).map_err(|_| ServerError::Internal)?;
    let opening = format!("{separator}{}", fields.trim_end_matches("]}"));
    send(tx, opening).await?;
    let mut after = 0u64;
    let mut first = true;
    loop {
        let page = HistoryPage::from_cursors(None, Some(after), Some(HISTORY_WINDOW))?;
        let batch = store.history(room_id, user, page).await?;
        let full = batch.len() == HISTORY_WINDOW as usize;
        let mut chunk = String::new();
        for message in &batch {
            if !first {
                chunk.push(',');
            }
            first = false;
            chunk.push_str(&serde_json::to_string(message).map_err(|_| ServerError::Internal)?);
            after = message.seq.get();
        }
        send(tx, chunk).await?;
        if !full {
            break;
        }
    }
    send(tx, "]}".to_owned()).await
}

/// Hands a chunk to the response; the client going away ends the export.
async fn send(
    tx: &mpsc::Sender<Result<Bytes, ServerError>>,
    chunk: String,
) -> Result<(), ServerError> {
    tx.send(Ok(Bytes::from(chunk)))
        .await
        .map_err(|_| ServerError::Unavailable)
}
