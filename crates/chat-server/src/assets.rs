//! The chat page and its assets, embedded in the binary so one file deploys. (In debug
//! builds rust-embed reads `web/` from disk, so editing the page needs no rebuild.)

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use rust_embed::RustEmbed;
use serde::Serialize;

use crate::state::AppState;

#[derive(RustEmbed)]
#[folder = "../../web/"]
struct Web;

/// A strict policy: the page loads only its own scripts and styles and talks only to this
/// server, so an injected message body could never run code; and only this server's own
/// origin and `CHAT_FRAME_ANCESTORS` may frame it (it was `*`, issue 8, D9).
pub fn content_security_policy(frame_ancestors: &[String]) -> String {
    let mut ancestors = String::from("'self'");
    for origin in frame_ancestors {
        ancestors.push(' ');
        ancestors.push_str(origin);
    }
    format!(
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors {ancestors}; base-uri 'none'; form-action 'none'"
    )
}

#[derive(Serialize)]
struct EmbedConfig<'a> {
    frame_ancestors: &'a [String],
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::api::resource("/embed-config").route(web::get().to(embed_config)));
}

/// `GET /embed-config`: the origins that may frame the page and hand it a token by
/// `postMessage` (the page's own origin always may). `web/app.js` reads it.
async fn embed_config(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(EmbedConfig {
            frame_ancestors: &state.frame_ancestors,
        })
}

pub async fn serve(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let path = req.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    match Web::get(path) {
        Some(file) => {
            let mime = mime_guess::from_path(path).first_or_octet_stream();
            let cache = if path.ends_with(".html") {
                "no-cache"
            } else {
                "public, max-age=300"
            };
            HttpResponse::Ok()
                .content_type(mime.as_ref())
                .insert_header((header::CACHE_CONTROL, cache))
                .insert_header((header::CONTENT_SECURITY_POLICY, state.page_csp.as_str()))
                .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                .body(file.data.into_owned())
        }
        None => HttpResponse::NotFound()
            .content_type("text/plain")
            .body("not found"),
    }
}
