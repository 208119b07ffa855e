//! Demo mode (`--demo`): two users, alice and bob, with a room, and a token endpoint the page
//! can call without a host app. Off unless asked for; the server says so loudly.

use actix_web::{HttpResponse, web};
use chat_domain::{Members, Timestamp, UserId};
use chat_store::{Repository, StoreError};
use serde::{Deserialize, Serialize};

use crate::api::{parse_user, read_json, resource, token_for};
use crate::auth::random_secret;
use crate::config::Config;
use chat_domain::protocol::ApiErrorCode;

use crate::error::ServerError;
use crate::state::AppState;

pub const DEMO_USERS: [&str; 2] = ["alice", "bob"];
const DEMO_TOKEN_TTL_SECS: u64 = 24 * 3600;

#[derive(Serialize)]
struct DemoConfig<'a> {
    demo: bool,
    users: &'a [UserId],
}

#[derive(Deserialize)]
struct DemoLogin {
    user_id: String,
    /// As in `POST /api/tokens`: `false` hides the user's presence.
    #[serde(default)]
    presence: Option<bool>,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/demo/config").route(web::get().to(config)))
        .service(resource("/demo/token").route(web::post().to(token)));
}

fn users() -> Vec<UserId> {
    DEMO_USERS
        .iter()
        .filter_map(|u| UserId::new(*u).ok())
        .collect()
}

/// Turns demo mode on: says so loudly, generates whichever secret is missing, and opens the
/// room of alice and bob (idempotent). Returns the demo users.
pub async fn prepare(
    config: &mut Config,
    store: &dyn Repository,
    now: Timestamp,
) -> Result<Vec<UserId>, StoreError> {
    tracing::warn!("DEMO MODE: anyone can log in as alice or bob. Never run this in production.");
    if config.jwt_secret.is_none() {
        config.jwt_secret = Some(random_secret());
    }
    if config.service_key.is_none() {
        config.service_key = Some(random_secret());
        tracing::warn!("demo mode: no CHAT_SERVICE_KEY set, the service API uses a random key");
    }
    let users = users();
    if let [a, b] = users.as_slice() {
        let members = Members::new(a.clone(), b.clone()).map_err(StoreError::Rule)?;
        store.open_room(&members, now).await?;
    }
    Ok(users)
}

async fn config(state: web::Data<AppState>) -> Result<HttpResponse, ServerError> {
    let users = state.demo_users.as_deref().ok_or(ServerError::NotFound)?;
    Ok(HttpResponse::Ok().json(DemoConfig { demo: true, users }))
}

async fn token(
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ServerError> {
    let users = state.demo_users.as_deref().ok_or(ServerError::NotFound)?;
    let login: DemoLogin = read_json(body).await?;
    let user = parse_user(&login.user_id)?;
    if !users.contains(&user) {
        return Err(ServerError::Unprocessable {
            code: ApiErrorCode::NotADemoUser,
            message: "demo users are alice and bob".into(),
        });
    }
    Ok(HttpResponse::Ok().json(token_for(
        &state,
        &user,
        DEMO_TOKEN_TTL_SECS,
        login.presence,
    )?))
}
