//! matchchat's realtime server: actix-web + actix-ws in front, a core runtime behind.
//!
//! See `docs/architecture.md` for the path of a message. In short: a connection task
//! validates a send and hands it to a group-commit writer (`writer.rs`); the writer commits it
//! with others in one transaction; the store publishes the committed event; the registry
//! (`registry.rs`) fans it out to every connection of both members.

// Only the configuration is public (main.rs parses it); every other module is the crate's
// own, so the compiler reports what nothing uses.
pub mod config;

/// What the fuzz targets (`fuzz/`, outside the workspace) drive: user token verification.
/// Not an API; re-exported here, instead of making `auth` public, so the rest of `auth`
/// keeps the compiler's unused-item checks.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::auth::{AuthError, MAX_TOKEN_TTL_SECS, TokenKeys, Verified};
}

mod api;
mod assets;
mod auth;
mod clock;
mod cluster;
mod demo;
mod error;
mod metrics;
mod moderation;
mod origin;
mod presence;
mod privacy;
mod ratelimit;
mod registry;
mod services;
mod state;
mod tcp;
mod webhooks;
mod writer;
mod ws;

use std::io::Write;
use std::time::Duration;

use std::sync::Arc;

use actix_web::{App, HttpServer, web};
use chat_domain::Clock;
use chat_store::{Backend, StoreConfig};

use crate::auth::{ServiceKey, TokenKeys};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::origin::OriginPolicy;
use crate::services::Services;
use crate::state::AppState;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("store: {0}")]
    Store(#[from] chat_store::StoreError),
    #[error(transparent)]
    Bus(#[from] cluster::BusError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// How long shutdown waits for sockets to close and writes to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Blocking threads of the core runtime at most. SQLite runs every statement on one
/// (diesel-async's `SyncConnectionWrapper`), as does the WAL checkpointer every 250 ms;
/// tokio's default of 512 let an abusive load leave 23 idle threads and 126 MB behind
/// (issue 8, D9). The pool (8 by default) plus the checkpointer and migrations fit.
const MAX_BLOCKING_THREADS: usize = 16;

/// Runs the server until SIGTERM or SIGINT. Blocks the calling thread.
pub fn run(config: Config) -> Result<(), StartError> {
    config.validate()?;
    let core = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_name("chat-core")
        .enable_all()
        .build()?;
    let result = actix_web::rt::System::new().block_on(serve(config, core.handle().clone()));
    core.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

async fn serve(mut config: Config, core: tokio::runtime::Handle) -> Result<(), StartError> {
    let mut store_config = StoreConfig::new(&config.database_url)?;
    if let Some(size) = config.db_pool_size {
        store_config.pool_size = size.max(1);
    }
    let writers = config.writers.unwrap_or(match store_config.backend {
        Backend::Postgres { .. } => 4,
        Backend::Sqlite { .. } => 1,
    });
    // The store runs on the core runtime and may be awaited from anywhere (chat-store's
    // runtime rule), so handlers on actix's workers call it directly.
    // With webhooks on, their store is opened with it (chat_store::webhooks).
    let webhook_settings = webhooks::Settings::from_config(&config);
    let (store, webhook_store) = match &webhook_settings {
        Some(_) => {
            let (store, hooks) =
                chat_store::open_with_webhooks_on(&store_config, core.clone()).await?;
            (store, Some(hooks))
        }
        None => (
            chat_store::open_on(&store_config, core.clone()).await?,
            None,
        ),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let demo_users = if config.demo {
        Some(demo::prepare(&mut config, store.as_ref(), clock.now()).await?)
    } else {
        None
    };

    let node = uuid::Uuid::new_v4().simple().to_string();
    let engine = cluster::start(
        config.bus,
        &config.database_url,
        &config.nats_url,
        config.nats_subject.as_deref(),
        node.clone(),
        &core,
    )
    .await?
    .map(|engine| (node.clone(), engine));
    if engine.is_some() {
        tracing::info!(bus = ?config.bus, node, "cluster node");
    }
    // One recorder per process; a second install (in-process tests) leaves /metrics off.
    let metrics = match metrics::install() {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "metrics recorder not installed; /metrics is off");
            None
        }
    };
    let upkeep = {
        let _enter = core.enter();
        metrics.clone().map(metrics::spawn_upkeep)
    };
    let (mut services, handles) = Services::start(
        &core,
        &config,
        store.clone(),
        clock.clone(),
        writers,
        &node,
        engine,
    );
    if let (Some(settings), Some(hooks)) = (webhook_settings, &webhook_store) {
        services.start_webhooks(
            &core,
            settings,
            hooks.clone(),
            store.as_ref(),
            clock.clone(),
        );
    }
    let registry = handles.registry.clone();
    let frame_ancestors = config.frame_ancestors();
    let state = web::Data::new(AppState {
        tokens: TokenKeys::new(
            config.jwt_secret.as_deref().unwrap_or_default().as_bytes(),
            config.max_token_ttl_secs,
        ),
        service_key: ServiceKey::new(config.service_key.as_deref().unwrap_or_default()),
        origins: OriginPolicy::new(config.origins()),
        limiter: handles.limiter,
        requests: handles.requests,
        typing: handles.typing,
        key_failures: handles.key_failures,
        page_csp: assets::content_security_policy(&frame_ancestors),
        frame_ancestors,
        registry: handles.registry,
        writer: handles.writer,
        store,
        clock,
        demo_users,
        metrics,
        webhooks: webhook_store,
        config: config.clone(),
    });

    let app_state = state.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            // Before `api::configure`, whose `/api` scope answers 404 for paths it lacks.
            .configure(webhooks::configure)
            .configure(api::configure)
            .configure(demo::configure)
            .configure(ws::configure)
            .configure(assets::configure)
            .default_service(web::get().to(assets::serve))
    })
    .on_connect(tcp::on_connect(config.write_timeout()))
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_GRACE.as_secs());
    if let Some(workers) = config.workers {
        server = server.workers(workers.max(1));
    }
    let server = server
        .bind(&config.bind)
        .map_err(|source| StartError::Bind {
            addr: config.bind.clone(),
            source,
        })?;
    for addr in server.addrs() {
        tracing::info!(backend = store_config.backend.name(), %addr, writers, "listening");
        // One line on stdout that scripts and tests wait for.
        println!("chat-server listening on http://{addr}");
    }
    let _ = std::io::stdout().flush();
    let server = server.run();
    let handle = server.handle();
    let metrics_server = match &config.metrics_bind {
        Some(addr) => Some(metrics_listener(state.clone(), addr)?),
        None => None,
    };

    // Shutdown, in the order `services.rs` documents.
    actix_web::rt::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: closing sockets, finishing writes");
        Services::close_connections(&registry).await;
        handle.stop(true).await;
    });
    server.await?;
    if let Some(metrics_server) = metrics_server {
        metrics_server.stop(false).await;
    }
    if let Some(upkeep) = upkeep {
        upkeep.abort();
    }
    // The HTTP side is gone; dropping the state drops the last writer handles.
    drop(state);
    services.finish().await;
    tracing::info!("stopped");
    Ok(())
}

/// A listener of its own for `GET /metrics` (`CHAT_METRICS_BIND`), one worker, no key.
fn metrics_listener(
    state: web::Data<AppState>,
    addr: &str,
) -> Result<actix_web::dev::ServerHandle, StartError> {
    let server = HttpServer::new(move || {
        App::new().app_data(state.clone()).route(
            "/metrics",
            web::get().to(|state: web::Data<AppState>| async move { api::metrics_text(&state) }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind(addr)
    .map_err(|source| StartError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    for addr in server.addrs() {
        tracing::info!(%addr, "metrics listening");
        println!("chat-server metrics on http://{addr}/metrics");
    }
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok(handle)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
