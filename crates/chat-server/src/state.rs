//! What every request handler and connection shares.

use std::sync::Arc;

use chat_store::Repository;

use crate::auth::{ServiceKey, TokenKeys};
use crate::config::Config;
use crate::origin::OriginPolicy;
use crate::ratelimit::{KeyFailures, RequestLimiter, SendLimiter, TypingLimiter};
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
    /// Typing notices forwarded per user and room (one per second).
    pub typing: TypingLimiter,
    /// Failed service-key attempts, per client address.
    pub key_failures: Arc<KeyFailures>,
    /// Origins that may frame the page (`CHAT_FRAME_ANCESTORS`), and the page's CSP.
    pub frame_ancestors: Vec<String>,
    pub page_csp: String,
    pub origins: OriginPolicy,
    /// The time of day (the system clock; tests of pure logic pass a fixed one).
    pub clock: Arc<dyn chat_domain::Clock>,
    pub demo_users: Option<Vec<chat_domain::UserId>>,
    /// The outbox of webhooks, when `CHAT_WEBHOOK_URL` is set (`GET /api/webhooks/failed`).
    pub webhooks: Option<Arc<dyn chat_store::WebhookStore>>,
    /// Renders `/metrics`; `None` when another recorder was installed first (tests).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}
