//! What every request handler and connection shares.

use std::sync::Arc;

use chat_store::Repository;

use crate::auth::{ServiceKey, TokenKeys};
use crate::config::Config;
use crate::origin::OriginPolicy;
use crate::ratelimit::{KeyFailures, RequestLimiter, SendLimiter};
use crate::registry::RegistryHandle;
use crate::writer::WriterHandle;

pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Repository>,
    pub writer: WriterHandle,
    pub registry: RegistryHandle,
    pub tokens: TokenKeys,
    pub service_key: ServiceKey,
    pub limiter: SendLimiter,
    /// Budgets of the other request types, per user.
    pub requests: RequestLimiter,
    /// Failed service-key attempts, per client address.
    pub key_failures: Arc<KeyFailures>,
    /// Origins that may frame the page (`CHAT_FRAME_ANCESTORS`), and the page's CSP.
    pub frame_ancestors: Vec<String>,
    pub page_csp: String,
    pub origins: OriginPolicy,
    /// The core runtime: store calls, writers and the registry run there, so database
    /// connections live on one multi-threaded runtime whatever HTTP worker asked for them.
    pub core: tokio::runtime::Handle,
    pub demo_users: Option<Vec<chat_domain::UserId>>,
}

impl AppState {
    /// Runs a future on the core runtime and waits for it from an HTTP worker.
    pub async fn on_core<F, T>(&self, future: F) -> Result<T, crate::error::ServerError>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.core.spawn(future).await.map_err(|error| {
            tracing::error!(%error, "core task failed");
            crate::error::ServerError::Internal
        })
    }
}

impl AppState {
    /// Calls the store on the core runtime: `state.store_call(|store| async move { store.x().await })`.
    pub async fn store_call<F, Fut, T>(&self, call: F) -> Result<T, crate::error::ServerError>
    where
        F: FnOnce(Arc<dyn Repository>) -> Fut,
        Fut: std::future::Future<Output = Result<T, chat_store::StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        self.on_core(call(self.store.clone()))
            .await?
            .map_err(Into::into)
    }
}

pub fn now() -> chat_domain::Timestamp {
    chat_domain::Timestamp::from_datetime(time::OffsetDateTime::now_utc())
}
