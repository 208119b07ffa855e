//! `GET /ws`: the handshake (Origin check, frame limits) and one task per connection.

pub mod connection;
pub mod outbox;

use actix_web::{HttpRequest, HttpResponse, web};
use chat_domain::protocol::MAX_FRAME_BYTES;

use crate::error::ServerError;
use crate::origin::OriginRefusal;
use crate::state::AppState;
use outbox::{CountedBody, Flow};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::api::resource("/ws").route(web::get().to(handshake)));
}

async fn handshake(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    if let Err(refusal) = state.origins.check(req.headers()) {
        let origin = req
            .headers()
            .get("origin")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        tracing::warn!(?refusal, origin, peer = ?req.peer_addr(), "WebSocket refused: origin not allowed");
        let message = match refusal {
            OriginRefusal::Several => "send one Origin header",
            OriginRefusal::Unparseable => "the Origin header is not a valid origin",
            OriginRefusal::NotAllowed => "this Origin may not open a WebSocket here",
        };
        return Err(ServerError::OriginNotAllowed(message).into());
    }
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(MAX_FRAME_BYTES)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME_BYTES);
    let flow = Flow::new();
    let response = response
        .map_body(|_, body| CountedBody::new(body, flow.clone()))
        .map_into_boxed_body();
    let state = state.into_inner();
    actix_web::rt::spawn(connection::run(state, session, stream, flow));
    Ok(response)
}
