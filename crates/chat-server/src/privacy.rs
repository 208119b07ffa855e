//! Privacy-law requests (GDPR/CCPA), for the host app (service key): everything stored about
//! a user, as one JSON document; erasure of a user; and retention (`CHAT_RETENTION_DAYS`).
//!
//! The export is streamed: rooms one after another, each room's messages read 300 at a time,
//! so a user with 100k messages costs the server one page of memory, not the whole export.
//!
//! Erasure and retention erase bodies in transactions of at most [`ERASE_BATCH`] rows of one
//! room (tombstones, like unsend), so no lock is held for long whatever the user's history:
//! the chat goes on while a user with 100k messages is erased.

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use chat_domain::protocol::api::ExportedRoom;
use chat_domain::{Clock, HISTORY_WINDOW, HistoryPage, Timestamp, UserId};
use chat_store::Repository;
use tokio::sync::mpsc;

use crate::api::{parse_user, require_service_key};
use crate::error::ServerError;
use crate::state::AppState;

/// Bodies erased per transaction (erasure, retention).
pub const ERASE_BATCH: u32 = 1_000;

/// `DELETE /api/users/{user_id}`: erasure. Every body the user sent is erased (tombstones:
/// `body` null, `deleted_at` set), their open rooms are closed (`room_closed` live to the
/// other members), their connections on every node are closed with 1008
/// `account_deleted`, their presence goes, and so do their webhook deliveries (pending or
/// failed, as recipient or sender). Idempotent; answers with counts:
/// `{"user_id","messages_erased","rooms_closed","webhooks_deleted"}` (a second call: zeros). A user the server
/// never saw: zeros, not an error.
pub async fn erase(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ServerError> {
    require_service_key(&req, &state)?;
    let user = parse_user(&path.into_inner())?;
    let rooms = state.store.rooms_of_member(&user).await?;
    tracing::info!(user = %user, rooms = rooms.len(), "erasure started");
    // Connections first: nothing new is sent under the user's name while the rest goes.
    state.registry.erase_user(user.clone()).await;
    let mut erased = 0u64;
    for room in &rooms {
        erased += in_batches(|| {
            state
                .store
                .erase_sent(&room.id, &user, state.clock.now(), ERASE_BATCH)
        })
        .await?;
        if erased > 0 {
            tracing::info!(user = %user, erased, "erasure in progress");
        }
    }
    let mut closed = 0u64;
    for room in rooms.iter().filter(|r| !r.is_closed()) {
        state.store.close_room(&room.id, state.clock.now()).await?;
        closed += 1;
    }
    state.store.forget_presence(&user).await?;
    let webhooks = match &state.webhooks {
        Some(hooks) => hooks.forget_user(&user).await?,
        None => 0,
    };
    tracing::info!(user = %user, messages_erased = erased, rooms_closed = closed, webhooks_deleted = webhooks, "erasure finished");
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "user_id": user,
        "messages_erased": erased,
        "rooms_closed": closed,
        "webhooks_deleted": webhooks,
    })))
}

/// Retention (`CHAT_RETENTION_DAYS`): every hour, a pass over every room erases the bodies
/// sent before the cutoff, [`ERASE_BATCH`] at a time, logging its progress. Several nodes may
/// run it at once: erasing is idempotent.
pub fn spawn_retention(
    store: std::sync::Arc<dyn Repository>,
    clock: std::sync::Arc<dyn Clock>,
    days: u64,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = clock.now();
            let age = i64::try_from(days.saturating_mul(86_400_000_000)).unwrap_or(i64::MAX);
            let Ok(cutoff) = Timestamp::from_unix_micros(now.unix_micros().saturating_sub(age))
            else {
                continue;
            };
            match retention_pass(store.as_ref(), clock.as_ref(), cutoff).await {
                Ok((rooms, erased)) => {
                    tracing::info!(rooms, erased, days, "retention pass finished");
                }
                Err(error) => tracing::warn!(%error, "retention pass failed; the next one retries"),
            }
        }
    })
}

/// Calls `batch` (one transaction erasing at most [`ERASE_BATCH`] bodies) until a call
/// erases fewer; returns the total.
async fn in_batches<F, Fut>(mut batch: F) -> Result<u64, chat_store::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, chat_store::StoreError>>,
{
    let mut total = 0;
    loop {
        let n = batch().await?;
        total += n;
        if n < u64::from(ERASE_BATCH) {
            return Ok(total);
        }
    }
}

/// One pass: every room, by id, its old bodies erased. Returns (rooms seen, bodies erased).
pub async fn retention_pass(
    store: &dyn Repository,
    clock: &dyn Clock,
    cutoff: Timestamp,
) -> Result<(u64, u64), chat_store::StoreError> {
    let (mut seen, mut erased) = (0u64, 0u64);
    let mut after = None;
    loop {
        let ids = store.room_ids_after(after.clone(), 500).await?;
        let Some(last) = ids.last().cloned() else {
            return Ok((seen, erased));
        };
        for id in &ids {
            erased +=
                in_batches(|| store.erase_older_than(id, cutoff, clock.now(), ERASE_BATCH)).await?;
        }
        seen += ids.len() as u64;
        if seen % 10_000 < ids.len() as u64 {
            tracing::info!(rooms = seen, erased, "retention pass in progress");
        }
        after = Some(last);
    }
}

/// `GET /api/users/{user_id}/export`:
/// `{"user_id":U,"exported_at":T,"rooms":[{"room_id","members","created_at","closed_at",
/// "seen_up_to","delivered_up_to","peer_seen_up_to","peer_delivered_up_to",
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
    // The user's own marks are what the other member sees as "peer" marks.
    let mine = store.room_summary(room_id, user).await?;
    let other = room.members.other(user)?;
    let theirs = store.room_summary(room_id, other).await?;
    let fields = ExportedRoom {
        room_id: room.id.clone(),
        members: room.members.as_slice().to_vec(),
        created_at: room.created_at,
        closed_at: room.closed_at,
        seen_up_to: theirs.peer_seen_up_to,
        delivered_up_to: theirs.peer_delivered_up_to,
        peer_seen_up_to: mine.peer_seen_up_to,
        peer_delivered_up_to: mine.peer_delivered_up_to,
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
