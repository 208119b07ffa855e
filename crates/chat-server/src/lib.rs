//! matchchat's realtime server: actix-web + actix-ws in front, a core runtime behind.
//!
//! See `docs/architecture.md` for the path of a message. In short: a connection task
//! validates a send and hands it to a group-commit writer (`writer.rs`); the writer commits it
//! with others in one transaction; the store publishes the committed event; the registry
//! (`registry.rs`) fans it out to every connection of both members.

pub mod api;
pub mod assets;
pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod origin;
pub mod ratelimit;
pub mod registry;
pub mod state;
pub mod tcp;
pub mod writer;
pub mod ws;

use std::io::Write;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use chat_domain::Members;
use chat_store::{Backend, StoreConfig};

use crate::auth::{ServiceKey, TokenKeys, random_secret};
use crate::config::Config;
use crate::origin::OriginPolicy;
use crate::ratelimit::{KeyFailures, RequestLimiter, SendLimiter};
use crate::registry::{RegistryConfig, RegistryHandle};
use crate::state::{AppState, now};
use crate::writer::WriterHandle;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("store: {0}")]
    Store(#[from] chat_store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Frames a connection's mailbox holds before the connection counts as too slow.
const MAILBOX_CAPACITY: usize = 256;
/// Jobs a writer queue holds before senders wait.
const WRITER_QUEUE: usize = 8192;
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
    let open_config = store_config.clone();
    let store = on_core(&core, async move { chat_store::open(&open_config).await }).await?;

    let demo_users = if config.demo {
        tracing::warn!(
            "DEMO MODE: anyone can log in as alice or bob. Never run this in production."
        );
        if config.jwt_secret.is_none() {
            config.jwt_secret = Some(random_secret());
        }
        if config.service_key.is_none() {
            config.service_key = Some(random_secret());
            tracing::warn!("demo mode: no CHAT_SERVICE_KEY set, the service API uses a random key");
        }
        let users = demo::users();
        if let [a, b] = users.as_slice() {
            let members =
                Members::new(a.clone(), b.clone()).map_err(chat_store::StoreError::Rule)?;
            let demo_store = store.clone();
            on_core(
                &core,
                async move { demo_store.open_room(&members, now()).await },
            )
            .await?;
        }
        Some(users)
    } else {
        None
    };

    let _enter = core.enter();
    let (registry, registry_task) = RegistryHandle::spawn(
        RegistryConfig {
            max_connections_per_user: config.max_connections_per_user,
            mailbox_capacity: MAILBOX_CAPACITY,
        },
        store.events().subscribe(),
    );
    let (writer, writer_tasks) =
        WriterHandle::spawn(store.clone(), writers, config.max_batch, WRITER_QUEUE);
    let limiter = SendLimiter::new(config.rate_per_sec, config.rate_burst);
    let requests = RequestLimiter::new(config.request_rate_per_sec, config.request_rate_burst);
    let key_failures = std::sync::Arc::new(KeyFailures::default());
    let housekeeping = ratelimit::spawn_housekeeping(&limiter, &requests, &key_failures);
    drop(_enter);

    let frame_ancestors = config.frame_ancestors();
    let state = web::Data::new(AppState {
        tokens: TokenKeys::new(
            config.jwt_secret.as_deref().unwrap_or_default().as_bytes(),
            config.max_token_ttl_secs,
        ),
        service_key: ServiceKey::new(config.service_key.as_deref().unwrap_or_default()),
        origins: OriginPolicy::new(config.origins()),
        limiter,
        requests,
        key_failures,
        page_csp: assets::content_security_policy(&frame_ancestors),
        frame_ancestors,
        registry: registry.clone(),
        writer,
        store: store.clone(),
        core: core.clone(),
        demo_users,
        config: config.clone(),
    });

    let app_state = state.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
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

    let shutdown_registry = registry.clone();
    actix_web::rt::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: closing sockets, finishing writes");
        shutdown_registry.shutdown().await;
        let left = shutdown_registry.drained(Duration::from_secs(5)).await;
        if left > 0 {
            tracing::warn!(left, "connections still open at shutdown");
        }
        handle.stop(true).await;
    });
    server.await?;

    // The HTTP side is gone; dropping the last writer handles lets the writers commit what is
    // queued and stop.
    drop(state);
    for task in writer_tasks {
        if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
            tracing::warn!("a writer did not finish in time");
        }
    }
    housekeeping.abort();
    registry_task.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Runs a store call on the core runtime during start-up (before `AppState` exists).
async fn on_core<T: Send + 'static>(
    core: &tokio::runtime::Handle,
    call: impl std::future::Future<Output = Result<T, chat_store::StoreError>> + Send + 'static,
) -> Result<T, StartError> {
    let joined = core
        .spawn(call)
        .await
        .map_err(|e| StartError::Runtime(std::io::Error::other(e)))?;
    Ok(joined?)
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
