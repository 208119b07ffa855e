//! The service API, for the host app: open rooms, close rooms, issue user tokens; and the
//! health endpoints. Every `/api` call needs `Authorization: Bearer <CHAT_SERVICE_KEY>`.

use actix_web::{HttpRequest, HttpResponse, web};
use chat_domain::protocol::api::{CreateRoom, IssueToken, RoomCreated, TokenIssued};
use chat_domain::{Members, RoomId, Timestamp, UserId};
use serde::de::DeserializeOwned;

use crate::auth::{DEFAULT_TOKEN_TTL_SECS, MAX_TOKEN_TTL_SECS};
use crate::error::ServerError;
use crate::state::{AppState, now};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/api/rooms", web::post().to(create_room))
        .route("/api/rooms/{room_id}", web::delete().to(close_room))
        .route("/api/tokens", web::post().to(issue_token));
}

fn require_service_key(req: &HttpRequest, state: &AppState) -> Result<(), ServerError> {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if state.service_key.check_header(header) {
        Ok(())
    } else {
        tracing::warn!(path = req.path(), peer = ?req.peer_addr(), "service API call with a missing or wrong key");
        Err(ServerError::Unauthorized)
    }
}

/// Parses a JSON body with our own error shape (actix's default is plain text).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServerError> {
    serde_json::from_slice(body).map_err(|e| ServerError::BadRequest {
        code: "invalid_json",
        message: e.to_string(),
    })
}

pub fn parse_user(raw: &str) -> Result<UserId, ServerError> {
    UserId::new(raw).map_err(|e| ServerError::Unprocessable {
        code: "invalid_user_id",
        message: format!("{raw:?}: {e}"),
    })
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ServerError> {
    state
        .store_call(|store| async move { store.ping().await })
        .await?;
    Ok(HttpResponse::Ok().content_type("text/plain").body("ready"))
}

async fn create_room(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ServerError> {
    require_service_key(&req, &state)?;
    let request: CreateRoom = parse_json(&body)?;
    let [a, b] = request.members.as_slice() else {
        return Err(ServerError::Unprocessable {
            code: "invalid_members",
            message: "members must name exactly two users".into(),
        });
    };
    let members =
        Members::new(parse_user(a)?, parse_user(b)?).map_err(|_| ServerError::Unprocessable {
            code: "invalid_members",
            message: "members must be two distinct users".into(),
        })?;
    let opened = state
        .store_call(|store| async move { store.open_room(&members, now()).await })
        .await?;
    if opened.created {
        tracing::info!(room = %opened.room.id, "room opened");
    }
    Ok(HttpResponse::Ok().json(RoomCreated {
        room_id: opened.room.id.clone(),
        members: opened.room.members.as_slice().to_vec(),
    }))
}

async fn close_room(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ServerError> {
    require_service_key(&req, &state)?;
    let room_id = RoomId::new(path.into_inner()).map_err(|_| ServerError::UnknownRoom)?;
    let room = state
        .store_call(|store| async move { store.close_room(&room_id, now()).await })
        .await?;
    tracing::info!(room = %room.id, "room closed");
    Ok(HttpResponse::NoContent().finish())
}

async fn issue_token(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ServerError> {
    require_service_key(&req, &state)?;
    let request: IssueToken = parse_json(&body)?;
    let user = parse_user(&request.user_id)?;
    let ttl = request.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if ttl == 0 || ttl > MAX_TOKEN_TTL_SECS {
        return Err(ServerError::Unprocessable {
            code: "invalid_ttl",
            message: format!("ttl_seconds must be between 1 and {MAX_TOKEN_TTL_SECS}"),
        });
    }
    Ok(HttpResponse::Ok().json(token_for(&state, &user, ttl)?))
}

/// Signs a token for `user`.
pub fn token_for(state: &AppState, user: &UserId, ttl: u64) -> Result<TokenIssued, ServerError> {
    let (token, exp) = state
        .tokens
        .issue(user, now(), ttl)
        .map_err(|_| ServerError::Internal)?;
    let expires_at = Timestamp::from_unix_micros(exp.saturating_mul(1_000_000))
        .map_err(|_| ServerError::Internal)?;
    Ok(TokenIssued { token, expires_at })
}
