//! `GET /ws`: the handshake (Origin check, frame limits) and one task per connection.

pub mod connection;

use actix_web::{HttpRequest, HttpResponse, web};
use chat_domain::protocol::MAX_FRAME_BYTES;

use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(handshake));
}

async fn handshake(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let origin = req.headers().get("origin").and_then(|v| v.to_str().ok());
    let host = req.headers().get("host").and_then(|v| v.to_str().ok());
    if !state.origins.allows(origin, host) {
        tracing::warn!(origin = origin.unwrap_or(""), peer = ?req.peer_addr(), "WebSocket refused: origin not allowed");
        return Ok(HttpResponse::Forbidden().json(serde_json::json!({
            "error": {"code": "origin_not_allowed", "message": "this Origin may not open a WebSocket here"}
        })));
    }
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(MAX_FRAME_BYTES)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME_BYTES);
    let state = state.into_inner();
    actix_web::rt::spawn(connection::run(state, session, stream));
    Ok(response)
}
