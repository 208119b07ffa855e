//! Server configuration: every setting is an environment variable and a `--flag` of the same
//! meaning (`chat-server --help` lists them). The parsed [`Config`] is passed in to whatever
//! needs it; there is no global settings singleton.

use std::time::Duration;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-server",
    version,
    about = "matchchat: a realtime 1:1 chat server for matched users"
)]
pub struct Config {
    /// Address to listen on. Use port 0 for any free port (the chosen address is printed).
    #[arg(long, env = "CHAT_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,

    /// `sqlite://PATH` (or a plain file path) for the embedded SQLite store, or
    /// `postgres://USER:PASS@HOST:PORT/DB`. The SQLite file and its folder are created on first start.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "sqlite://./data/chat.db"
    )]
    pub database_url: String,

    /// How nodes of a cluster tell each other about commits: `local` (one node), `postgres`
    /// (LISTEN/NOTIFY on the database of DATABASE_URL) or `nats` (core NATS at
    /// CHAT_NATS_URL). A cluster needs PostgreSQL: SQLite is one node's file.
    #[arg(long = "bus", env = "CHAT_BUS", value_enum, default_value = "local")]
    pub bus: crate::cluster::BusKind,

    /// NATS server for `CHAT_BUS=nats`.
    #[arg(
        long = "nats-url",
        env = "CHAT_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// NATS subject of this cluster's notices. Default: `matchchat.notices.<hash of the
    /// database's host, port and name>`, so every cluster on a shared NATS server has its own.
    #[arg(long = "nats-subject", env = "CHAT_NATS_SUBJECT")]
    pub nats_subject: Option<String>,

    /// Milliseconds between a cluster node's sweeps of the rooms it serves, which find
    /// messages whose notice was lost. Bounds how late a lost notice makes delivery.
    #[arg(
        long = "bus-sweep-ms",
        env = "CHAT_BUS_SWEEP_MS",
        default_value_t = 1000
    )]
    pub bus_sweep_ms: u64,

    /// Seconds after a message's `sent_at` during which its sender may unsend it (protocol
    /// 1.1 `delete`); 0 = no limit.
    #[arg(
        long = "unsend-window-secs",
        env = "CHAT_UNSEND_WINDOW_SECS",
        default_value_t = 86_400
    )]
    pub unsend_window_secs: u64,

    /// Days after which message bodies are erased by a background task (tombstones, in
    /// small batches, hourly). Unset: kept for ever.
    #[arg(long = "retention-days", env = "CHAT_RETENTION_DAYS")]
    pub retention_days: Option<u64>,

    /// Presence of matches (protocol 1.1): `on`, or `off` to turn the feature off entirely
    /// (no `peer` in room summaries, no `presence` frames, nothing recorded).
    #[arg(long = "presence", env = "CHAT_PRESENCE", default_value = "on", value_parser = ["on", "off"])]
    pub presence: String,

    /// The host app's key for the service API (`Authorization: Bearer KEY`).
    #[arg(long = "service-key", env = "CHAT_SERVICE_KEY", hide_env_values = true)]
    pub service_key: Option<String>,

    /// HS256 secret shared with the host app, used to sign and check user tokens.
    #[arg(long = "jwt-secret", env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Comma-separated exact origins (e.g. `https://app.example.com`) allowed to open a
    /// WebSocket. Same-origin pages and clients that send no Origin are always allowed.
    #[arg(
        long = "allowed-origins",
        env = "CHAT_ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub allowed_origins: Vec<String>,

    /// Comma-separated origins allowed to embed the page in a frame (CSP `frame-ancestors`)
    /// and to hand it a token by `postMessage`. Default: the allowed origins. The page's own
    /// origin always may.
    #[arg(
        long = "frame-ancestors",
        env = "CHAT_FRAME_ANCESTORS",
        value_delimiter = ','
    )]
    pub frame_ancestors: Option<Vec<String>>,

    /// Sustained per-user send rate, messages per second.
    #[arg(long = "rate-per-sec", env = "CHAT_RATE_PER_SEC", default_value_t = 5)]
    pub rate_per_sec: u32,

    /// Per-user burst of sends allowed above the sustained rate.
    #[arg(long = "rate-burst", env = "CHAT_RATE_BURST", default_value_t = 20)]
    pub rate_burst: u32,

    /// Sustained per-user rate of each other request type (history, seen), per second.
    #[arg(
        long = "request-rate-per-sec",
        env = "CHAT_REQUEST_RATE_PER_SEC",
        default_value_t = 20
    )]
    pub request_rate_per_sec: u32,

    /// Per-user burst of each other request type (history, seen).
    #[arg(
        long = "request-rate-burst",
        env = "CHAT_REQUEST_RATE_BURST",
        default_value_t = 200
    )]
    pub request_rate_burst: u32,

    /// Longest lifetime a user token may have, in seconds (`exp - iat`, or `exp - now` when
    /// the token has no `iat`); longer ones are refused. Also the most `POST /api/tokens` issues.
    #[arg(
        long = "max-token-ttl-secs",
        env = "CHAT_MAX_TOKEN_TTL_SECS",
        default_value_t = crate::auth::MAX_TOKEN_TTL_SECS
    )]
    pub max_token_ttl_secs: u64,

    /// Most simultaneous WebSocket connections one user may hold.
    #[arg(
        long = "max-connections-per-user",
        env = "CHAT_MAX_CONNECTIONS_PER_USER",
        default_value_t = 16
    )]
    pub max_connections_per_user: usize,

    /// Database connections in the pool.
    #[arg(long = "db-pool-size", env = "CHAT_DB_POOL_SIZE")]
    pub db_pool_size: Option<usize>,

    /// Group-commit writers (each owns a share of the rooms). Default: 4 on PostgreSQL, 1 on SQLite.
    #[arg(long = "writers", env = "CHAT_WRITERS")]
    pub writers: Option<usize>,

    /// Most messages committed in one group-commit transaction.
    #[arg(long = "max-batch", env = "CHAT_MAX_BATCH", default_value_t = 512)]
    pub max_batch: usize,

    /// HTTP worker threads. Default: one per CPU core.
    #[arg(long = "workers", env = "CHAT_WORKERS")]
    pub workers: Option<usize>,

    /// Seconds between server pings on an idle WebSocket.
    #[arg(long = "ping-secs", env = "CHAT_PING_SECS", default_value_t = 15)]
    pub ping_secs: u64,

    /// Seconds of silence from a client after which its WebSocket is closed.
    #[arg(
        long = "idle-timeout-secs",
        env = "CHAT_IDLE_TIMEOUT_SECS",
        default_value_t = 45
    )]
    pub idle_timeout_secs: u64,

    /// Seconds a WebSocket may have output waiting without the client reading any of it;
    /// then it is closed (1008 `slow_consumer`), and the TCP connection is dropped by the
    /// kernel (`TCP_USER_TIMEOUT`) if the client acknowledges nothing.
    #[arg(
        long = "write-timeout-secs",
        env = "CHAT_WRITE_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub write_timeout_secs: u64,

    /// Seconds a new WebSocket has to send its `auth` frame.
    #[arg(
        long = "auth-timeout-secs",
        env = "CHAT_AUTH_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub auth_timeout_secs: u64,

    /// Address of a separate listener for `GET /metrics` (Prometheus), open without a key:
    /// bind it where only the monitoring network reaches. Unset: `/metrics` is served on the
    /// public port and needs the service key.
    #[arg(long = "metrics-bind", env = "CHAT_METRICS_BIND")]
    pub metrics_bind: Option<String>,

    /// Log format: `plain` (no colour escapes unless stderr is a terminal) or `json` (one
    /// object per line, for log shippers).
    #[arg(
        long = "log-format",
        env = "CHAT_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    pub log_format: LogFormat,

    /// Where to POST `message.unseen` webhooks (`https://...`; with CHAT_WEBHOOK_SECRET).
    /// Unset: no webhooks.
    #[arg(long = "webhook-url", env = "CHAT_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Secret that signs webhooks (`X-Matchchat-Signature`), at least 32 bytes; required
    /// with CHAT_WEBHOOK_URL.
    #[arg(
        long = "webhook-secret",
        env = "CHAT_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,

    /// Seconds a recipient may leave a burst of messages unseen before its webhook (connected
    /// or not). 0: at commit, and only for recipients with no connection on any node.
    #[arg(
        long = "notify-after-secs",
        env = "CHAT_NOTIFY_AFTER_SECS",
        default_value_t = 10
    )]
    pub notify_after_secs: u64,

    /// Put the body of the latest unseen message in webhooks (`true`/`false`).
    #[arg(
        long = "webhook-include-body",
        env = "CHAT_WEBHOOK_INCLUDE_BODY",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub webhook_include_body: bool,

    /// Seconds after a webhook was made when its retries stop and it is kept as failed.
    #[arg(
        long = "webhook-give-up-secs",
        env = "CHAT_WEBHOOK_GIVE_UP_SECS",
        default_value_t = 86_400
    )]
    pub webhook_give_up_secs: u64,

    /// Demo mode: creates users alice and bob and their room, and lets the page log in as
    /// either without a host app. Never use in production.
    #[arg(long, env = "CHAT_DEMO")]
    pub demo: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Why the server will not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set: the host app needs it (or start with --demo to try the server out)")]
    Missing(&'static str),
    #[error("{0}")]
    Invalid(String),
}

/// Shortest secret accepted for `CHAT_SERVICE_KEY` and `CHAT_JWT_SECRET`: 256 bits, the size
/// of HS256's own key, and what `openssl rand -hex 32` prints half of.
pub const MIN_SECRET_BYTES: usize = 32;

impl Config {
    /// True unless `CHAT_PRESENCE=off`.
    pub fn presence_enabled(&self) -> bool {
        self.presence != "off"
    }

    /// Checks what clap cannot: secrets present outside demo mode, sane numbers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.demo {
            if self.service_key.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::Missing("CHAT_SERVICE_KEY"));
            }
            if self.jwt_secret.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::Missing("CHAT_JWT_SECRET"));
            }
        }
        // Demo mode generates whichever is missing; one that is given must be strong.
        for (name, secret) in [
            ("CHAT_SERVICE_KEY", &self.service_key),
            ("CHAT_JWT_SECRET", &self.jwt_secret),
        ] {
            if secret
                .as_deref()
                .is_some_and(|s| !s.is_empty() && s.len() < MIN_SECRET_BYTES)
            {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be at least {MIN_SECRET_BYTES} bytes (try: openssl rand -hex 32)"
                )));
            }
        }
        if self.service_key.is_some() && self.service_key == self.jwt_secret {
            return Err(ConfigError::Invalid(
                "CHAT_SERVICE_KEY and CHAT_JWT_SECRET must differ: whoever holds the service key must not be able to sign tokens".into(),
            ));
        }
        self.validate_webhooks()?;
        if self.rate_per_sec == 0 || self.rate_burst == 0 {
            return Err(ConfigError::Invalid(
                "CHAT_RATE_PER_SEC and CHAT_RATE_BURST must be at least 1".into(),
            ));
        }
        if self.request_rate_per_sec == 0 || self.request_rate_burst == 0 {
            return Err(ConfigError::Invalid(
                "CHAT_REQUEST_RATE_PER_SEC and CHAT_REQUEST_RATE_BURST must be at least 1".into(),
            ));
        }
        if self.bus != crate::cluster::BusKind::Local
            && !(self.database_url.starts_with("postgres://")
                || self.database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid(
                "CHAT_BUS=postgres or nats makes a cluster, and a cluster needs a PostgreSQL DATABASE_URL: an SQLite file belongs to one node (use CHAT_BUS=local)".into(),
            ));
        }
        if self.bus_sweep_ms == 0 {
            return Err(ConfigError::Invalid(
                "CHAT_BUS_SWEEP_MS must be at least 1".into(),
            ));
        }
        if self.write_timeout_secs == 0 || self.max_token_ttl_secs == 0 {
            return Err(ConfigError::Invalid(
                "CHAT_WRITE_TIMEOUT_SECS and CHAT_MAX_TOKEN_TTL_SECS must be at least 1".into(),
            ));
        }
        if self.retention_days == Some(0) {
            return Err(ConfigError::Invalid(
                "CHAT_RETENTION_DAYS must be at least 1 (unset it to keep messages)".into(),
            ));
        }
        if self.max_connections_per_user == 0 || self.max_batch == 0 {
            return Err(ConfigError::Invalid(
                "CHAT_MAX_CONNECTIONS_PER_USER and CHAT_MAX_BATCH must be at least 1".into(),
            ));
        }
        if self.ping_secs == 0 || self.idle_timeout_secs <= self.ping_secs {
            return Err(ConfigError::Invalid(
                "CHAT_IDLE_TIMEOUT_SECS must be greater than CHAT_PING_SECS".into(),
            ));
        }
        Ok(())
    }

    /// `CHAT_WEBHOOK_URL` and `CHAT_WEBHOOK_SECRET` go together; the secret is as strong as
    /// the others and none of them.
    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let url = self
            .webhook_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty());
        let secret = self.webhook_secret.as_deref().filter(|s| !s.is_empty());
        match (url, secret) {
            (None, None) => return Ok(()),
            (Some(_), None) => {
                return Err(ConfigError::Invalid(
                    "CHAT_WEBHOOK_URL needs CHAT_WEBHOOK_SECRET (webhooks are signed)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "CHAT_WEBHOOK_SECRET is set without CHAT_WEBHOOK_URL".into(),
                ));
            }
            (Some(url), Some(secret)) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(ConfigError::Invalid(format!(
                        "CHAT_WEBHOOK_URL must be an http:// or https:// URL, not {:?}",
                        chat_store::redact_url(url)
                    )));
                }
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(ConfigError::Invalid(format!(
                        "CHAT_WEBHOOK_SECRET must be at least {MIN_SECRET_BYTES} bytes (try: openssl rand -hex 32)"
                    )));
                }
                if Some(secret) == self.service_key.as_deref()
                    || Some(secret) == self.jwt_secret.as_deref()
                {
                    return Err(ConfigError::Invalid(
                        "CHAT_WEBHOOK_SECRET must differ from CHAT_SERVICE_KEY and CHAT_JWT_SECRET: the webhook receiver must not be able to call the API or sign tokens".into(),
                    ));
                }
            }
        }
        if self.webhook_give_up_secs == 0 {
            return Err(ConfigError::Invalid(
                "CHAT_WEBHOOK_GIVE_UP_SECS must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs(self.auth_timeout_secs)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs)
    }

    /// Allowed origins, trimmed, without empty entries.
    pub fn origins(&self) -> Vec<String> {
        clean_origins(&self.allowed_origins)
    }

    /// Origins that may frame the page: `CHAT_FRAME_ANCESTORS`, else the allowed origins.
    pub fn frame_ancestors(&self) -> Vec<String> {
        match &self.frame_ancestors {
            Some(list) => clean_origins(list),
            None => self.origins(),
        }
    }
}

/// Origins trimmed, lower-case, without a trailing slash or empty entries.
fn clean_origins(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
        .filter(|o| !o.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut full = vec!["chat-server"];
        full.extend_from_slice(args);
        Config::try_parse_from(full).unwrap()
    }

    #[test]
    fn refuses_to_start_without_secrets_unless_demo() {
        // Flags only: the test must not depend on this process's environment.
        let c = parse(&["--service-key", KEY]);
        if std::env::var_os("CHAT_JWT_SECRET").is_none() {
            assert!(matches!(
                c.validate(),
                Err(ConfigError::Missing("CHAT_JWT_SECRET"))
            ));
        }
        let c = parse(&["--jwt-secret", SECRET]);
        if std::env::var_os("CHAT_SERVICE_KEY").is_none() {
            assert!(matches!(
                c.validate(),
                Err(ConfigError::Missing("CHAT_SERVICE_KEY"))
            ));
        }
        assert!(parse(&["--demo"]).validate().is_ok());
        assert!(
            parse(&["--service-key", KEY, "--jwt-secret", SECRET])
                .validate()
                .is_ok()
        );
    }

    const KEY: &str = "a-service-key-of-32-bytes-or-more-0123";
    const SECRET: &str = "a-jwt-secret-of-32-bytes-or-more-01234";

    #[test]
    fn a_cluster_bus_needs_postgres() {
        let lite =
            parse(&["--demo", "--bus", "nats", "--database-url", "sqlite://x.db"]).validate();
        assert!(
            matches!(&lite, Err(ConfigError::Invalid(m)) if m.contains("PostgreSQL")),
            "{lite:?}"
        );
        let pg = parse(&[
            "--demo",
            "--bus",
            "postgres",
            "--database-url",
            "postgres://u@h/db",
        ]);
        assert!(pg.validate().is_ok());
    }

    #[test]
    fn weak_or_shared_secrets_are_refused() {
        let one_byte = parse(&["--service-key", "k", "--jwt-secret", SECRET]).validate();
        assert!(
            matches!(&one_byte, Err(ConfigError::Invalid(m)) if m.contains("CHAT_SERVICE_KEY")),
            "{one_byte:?}"
        );
        let short_jwt = parse(&["--service-key", KEY, "--jwt-secret", &SECRET[..31]]).validate();
        assert!(
            matches!(&short_jwt, Err(ConfigError::Invalid(m)) if m.contains("CHAT_JWT_SECRET")),
            "{short_jwt:?}"
        );
        let same = parse(&["--service-key", KEY, "--jwt-secret", KEY]).validate();
        assert!(
            matches!(&same, Err(ConfigError::Invalid(m)) if m.contains("differ")),
            "{same:?}"
        );
        assert!(
            parse(&["--demo", "--service-key", "short"])
                .validate()
                .is_err(),
            "a key given in demo mode must be strong too"
        );
    }

    #[test]
    fn short_secrets_and_zero_rates_are_refused() {
        assert!(
            parse(&["--demo", "--jwt-secret", "short"])
                .validate()
                .is_err()
        );
        assert!(
            parse(&["--demo", "--rate-per-sec", "0"])
                .validate()
                .is_err()
        );
        assert!(parse(&["--demo", "--ping-secs", "50"]).validate().is_err());
    }

    #[test]
    fn webhook_url_and_secret_go_together() {
        const HOOK: &str = "a-webhook-secret-of-32-bytes-or-more-0";
        let base = ["--service-key", KEY, "--jwt-secret", SECRET];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            parse(&args).validate()
        };
        assert!(with(&[]).is_ok());
        let url_only = with(&["--webhook-url", "https://h.example/hook"]);
        assert!(
            matches!(&url_only, Err(ConfigError::Invalid(m)) if m.contains("CHAT_WEBHOOK_SECRET")),
            "{url_only:?}"
        );
        let secret_only = with(&["--webhook-secret", HOOK]);
        assert!(
            matches!(&secret_only, Err(ConfigError::Invalid(m)) if m.contains("CHAT_WEBHOOK_URL")),
            "{secret_only:?}"
        );
        let short = with(&[
            "--webhook-url",
            "https://h.example/hook",
            "--webhook-secret",
            &HOOK[..31],
        ]);
        assert!(
            matches!(&short, Err(ConfigError::Invalid(m)) if m.contains("32 bytes")),
            "{short:?}"
        );
        let reused = with(&[
            "--webhook-url",
            "https://h.example/hook",
            "--webhook-secret",
            KEY,
        ]);
        assert!(
            matches!(&reused, Err(ConfigError::Invalid(m)) if m.contains("differ")),
            "{reused:?}"
        );
        let not_http = with(&["--webhook-url", "ftp://h.example", "--webhook-secret", HOOK]);
        assert!(not_http.is_err());
        let ok = parse(&[
            "--service-key",
            KEY,
            "--jwt-secret",
            SECRET,
            "--webhook-url",
            "http://127.0.0.1:9/hook",
            "--webhook-secret",
            HOOK,
            "--webhook-include-body",
            "true",
        ]);
        assert!(ok.validate().is_ok());
        assert!(ok.webhook_include_body);
        assert_eq!(
            (ok.notify_after_secs, ok.webhook_give_up_secs),
            (10, 86_400)
        );
    }

    #[test]
    fn origins_are_trimmed() {
        let c = parse(&[
            "--demo",
            "--allowed-origins",
            "https://a.example/, ,http://b.example:8080",
        ]);
        assert_eq!(
            c.origins(),
            vec!["https://a.example", "http://b.example:8080"]
        );
        assert_eq!(
            c.frame_ancestors(),
            c.origins(),
            "default: the allowed origins"
        );
        let framed = parse(&["--demo", "--frame-ancestors", "https://Host.example/"]);
        assert_eq!(framed.frame_ancestors(), vec!["https://host.example"]);
    }
}
