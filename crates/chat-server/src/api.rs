//! The service API, for the host app: open rooms, close rooms, issue user tokens; and the
//! health endpoints. Every `/api` call needs `Authorization: Bearer <CHAT_SERVICE_KEY>`.

use actix_web::{HttpRequest, HttpResponse, web};
use chat_domain::protocol::api::{CreateRoom, IssueToken, RoomCreated, TokenIssued};
use chat_domain::{Members, RoomId, Timestamp, UserId};
use serde::de::DeserializeOwned;

use crate::auth::DEFAULT_TOKEN_TTL_SECS;
use chat_domain::protocol::ApiErrorCode;

use crate::error::ServerError;
use crate::state::AppState;

/// Largest request body the API reads (`413 payload_too_large` beyond).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Every route is a resource whose other methods answer `405 method_not_allowed`, and an
/// unknown path under `/api` answers `404 not_found`, both in the API's JSON error shape
/// (actix's defaults are plain text; issue 8, D8).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz").route(web::get().to(healthz)))
        .service(resource("/readyz").route(web::get().to(readyz)))
        .service(resource("/metrics").route(web::get().to(metrics_on_public_port)))
        .service(
            web::scope("/api")
                .service(resource("/rooms").route(web::post().to(create_room)))
                .service(resource("/rooms/{room_id}").route(web::delete().to(close_room)))
                .service(resource("/tokens").route(web::post().to(issue_token)))
                .service(
                    resource("/rooms/{room_id}/messages")
                        .route(web::get().to(crate::moderation::room_messages)),
                )
                .service(
                    resource("/rooms/{room_id}/messages/{seq}")
                        .route(web::delete().to(crate::moderation::delete_message)),
                )
                .service(
                    resource("/users/{user_id}/export")
                        .route(web::get().to(crate::privacy::export)),
                )
                .default_service(web::to(not_found)),
        );
}

/// A resource whose unrouted methods are `405 method_not_allowed`.
pub fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

async fn method_not_allowed() -> Result<HttpResponse, ServerError> {
    Err(ServerError::MethodNotAllowed)
}

async fn not_found() -> Result<HttpResponse, ServerError> {
    Err(ServerError::NotFound)
}

/// Checks the service key. An address that has failed too often is refused without its key
/// being looked at (see `ratelimit::KeyFailures`).
pub fn require_service_key(req: &HttpRequest, state: &AppState) -> Result<(), ServerError> {
    let address = req.peer_addr().map(|a| a.ip());
    if address.is_some_and(|a| state.key_failures.blocked(a)) {
        metrics::counter!(crate::metrics::RATE_LIMITED, "request" => "service_key").increment(1);
        if let Some(address) = address {
            state.key_failures.record(address);
        }
        return Err(ServerError::RateLimited);
    }
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if state.service_key.check_header(header) {
        Ok(())
    } else {
        if let Some(address) = address {
            state.key_failures.record(address);
        }
        Err(ServerError::Unauthorized)
    }
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`], with our own error shape.
pub async fn read_json<T: DeserializeOwned>(payload: web::Payload) -> Result<T, ServerError> {
    let body = payload
        .to_bytes_limited(MAX_BODY_BYTES)
        .await
        .map_err(|_| ServerError::PayloadTooLarge)?
        .map_err(|e| ServerError::BadRequest {
            code: ApiErrorCode::InvalidJson,
            message: e.to_string(),
        })?;
    serde_json::from_slice(&body).map_err(|e| ServerError::BadRequest {
        code: ApiErrorCode::InvalidJson,
        message: e.to_string(),
    })
}

pub fn parse_user(raw: &str) -> Result<UserId, ServerError> {
    UserId::new(raw).map_err(|e| ServerError::Unprocessable {
        code: ApiErrorCode::InvalidUserId,
        message: format!("{raw:?}: {e}"),
    })
}

/// `GET /metrics` on the public port: behind the service key, and only when no separate
/// `CHAT_METRICS_BIND` listener serves it.
async fn metrics_on_public_port(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ServerError> {
    if state.config.metrics_bind.is_some() {
        return Err(ServerError::NotFound);
    }
    require_service_key(&req, &state)?;
    metrics_text(&state)
}

/// The Prometheus text format, with the pool's state read now.
pub fn metrics_text(state: &AppState) -> Result<HttpResponse, ServerError> {
    let handle = state.metrics.as_ref().ok_or(ServerError::NotFound)?;
    crate::metrics::record_pool(state.store.pool_status());
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle.render()))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ServerError> {
    state.store.ping().await?;
    Ok(HttpResponse::Ok().content_type("text/plain").body("ready"))
}

async fn create_room(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ServerError> {
    require_service_key(&req, &state)?;
    let request: CreateRoom = read_json(body).await?;
    let [a, b] = request.members.as_slice() else {
        return Err(ServerError::Unprocessable {
            code: ApiErrorCode::InvalidMembers,
            message: "members must name exactly two users".into(),
        });
    };
    let members =
        Members::new(parse_user(a)?, parse_user(b)?).map_err(|_| ServerError::Unprocessable {
            code: ApiErrorCode::InvalidMembers,
            message: "members must be two distinct users".into(),
        })?;
    let opened = state.store.open_room(&members, state.clock.now()).await?;
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
    let room = state.store.close_room(&room_id, state.clock.now()).await?;
    tracing::info!(room = %room.id, "room closed");
    Ok(HttpResponse::NoContent().finish())
}

async fn issue_token(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ServerError> {
    require_service_key(&req, &state)?;
    let request: IssueToken = read_json(body).await?;
    let user = parse_user(&request.user_id)?;
    let ttl = request.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    let max = state.config.max_token_ttl_secs;
    if ttl == 0 || ttl > max {
        return Err(ServerError::Unprocessable {
            code: ApiErrorCode::InvalidTtl,
            message: format!("ttl_seconds must be between 1 and {max} (CHAT_MAX_TOKEN_TTL_SECS)"),
        });
    }
    Ok(HttpResponse::Ok().json(token_for(&state, &user, ttl, request.presence)?))
}

/// Signs a token for `user`; `presence: Some(false)` hides the user's presence.
pub fn token_for(
    state: &AppState,
    user: &UserId,
    ttl: u64,
    presence: Option<bool>,
) -> Result<TokenIssued, ServerError> {
    let (token, exp) = state
        .tokens
        .issue_with(user, state.clock.now(), ttl, presence)
        .map_err(|_| ServerError::Internal)?;
    let expires_at = Timestamp::from_unix_micros(exp.saturating_mul(1_000_000))
        .map_err(|_| ServerError::Internal)?;
    Ok(TokenIssued { token, expires_at })
}
