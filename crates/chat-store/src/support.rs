//! Internal plumbing shared by both backends: database error classification, the error type
//! used inside transactions, running store calls as detached tasks, and URL redaction.

use std::future::Future;

use diesel::result::{ConnectionError, DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::PoolError as ManagerError;
use diesel_async::pooled_connection::deadpool::PoolError;

use crate::error::StoreError;

/// The error inside a transaction closure: a database error (which rolls back) or a store
/// error found while working (a corrupt row, ...), which rolls back too.
#[derive(Debug)]
pub(crate) enum TxError {
    Db(DieselError),
    Store(StoreError),
}

impl From<DieselError> for TxError {
    fn from(e: DieselError) -> Self {
        Self::Db(e)
    }
}

impl From<chat_domain::DomainError> for TxError {
    fn from(e: chat_domain::DomainError) -> Self {
        Self::Store(e.into())
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<TxError> for StoreError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Db(e) => db_error(e),
            TxError::Store(e) => e,
        }
    }
}

/// Messages (PostgreSQL SQLSTATE classes 08, 53, 57; SQLite BUSY/LOCKED) that say the
/// database, not the statement, is the problem: nothing was committed and a retry may work.
const UNAVAILABLE_MESSAGES: &[&str] = &[
    "terminating connection",
    "connection to server",
    "server closed the connection",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "too many clients",
    "too many connections",
    "remaining connection slots are reserved",
    "canceling statement due to conflict with recovery",
    "deadlock detected",
    "could not serialize access",
    "database is locked",
    "database is busy",
    "database table is locked",
    "connection closed",
    "connection reset",
    "broken pipe",
];

fn looks_unavailable(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    UNAVAILABLE_MESSAGES.iter().any(|m| message.contains(m))
}

/// Classifies a Diesel error: `Unavailable` when the connection or the server is the problem
/// (closed connection, server shutting down, too many connections, lock timeouts, deadlock
/// or serialization failures: retryable, nothing committed), `Database` otherwise.
pub(crate) fn db_error(e: DieselError) -> StoreError {
    match &e {
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::SerializationFailure,
            _,
        ) => StoreError::Unavailable(e.to_string()),
        DieselError::DatabaseError(_, info) if looks_unavailable(info.message()) => {
            StoreError::Unavailable(e.to_string())
        }
        DieselError::BrokenTransactionManager => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Database(e.to_string()),
    }
}

/// Classifies a failed migration run (either backend): a database error keeps its class
/// (`Unavailable` stays retryable), anything else is `Database`.
pub(crate) fn migration_error(e: Box<dyn std::error::Error + Send + Sync>) -> StoreError {
    match e.downcast::<DieselError>() {
        Ok(e) => match db_error(*e) {
            StoreError::Database(msg) => StoreError::Database(format!("migration failed: {msg}")),
            other => other,
        },
        Err(e) => StoreError::Database(format!("migration failed: {e}")),
    }
}

/// Classifies a failure to open a connection.
pub(crate) fn connection_error(e: ConnectionError) -> StoreError {
    match e {
        ConnectionError::InvalidConnectionUrl(msg) => {
            StoreError::Config(format!("invalid database URL: {msg}"))
        }
        ConnectionError::CouldntSetupConfiguration(inner) => match db_error(inner) {
            StoreError::Database(msg) if !looks_permanent(&msg) => StoreError::Unavailable(msg),
            other => other,
        },
        ConnectionError::BadConnection(msg) => StoreError::Unavailable(msg),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Connection failures that retrying will not fix (a wrong password, a missing database).
fn looks_permanent(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "password authentication failed",
        "does not exist",
        "no pg_hba.conf entry",
        "permission denied",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// Classifies a pool failure: timeouts and unreachable servers are `Unavailable`.
pub(crate) fn pool_error(e: PoolError) -> StoreError {
    use deadpool::managed::PoolError as P;
    match e {
        P::Timeout(kind) => StoreError::Unavailable(format!("database pool timed out ({kind:?})")),
        P::Backend(ManagerError::ConnectionError(e)) => connection_error(e),
        P::Backend(ManagerError::QueryError(e)) => match db_error(e) {
            StoreError::Database(msg) => StoreError::Unavailable(msg),
            other => other,
        },
        P::Closed => StoreError::Unavailable("database pool is closed".into()),
        P::NoRuntimeSpecified => StoreError::Config("database pool has no async runtime".into()),
        P::PostCreateHook(e) => {
            StoreError::Unavailable(format!("new database connection refused: {e}"))
        }
    }
}

/// Runs a store call as its own task on the store's runtime and waits for it.
///
/// **The runtime rule.** A store is opened on one multi-threaded Tokio runtime (see
/// [`crate::open_on`]) and every call runs there, as a task of its own, whatever runtime
/// awaits it: the pool's connections (their sockets, deadpool's timers, SQLite's blocking
/// threads) belong to that runtime and must never be driven from another one, such as one
/// of actix-web's single-threaded workers. Callers just `.await` a `Repository` method.
///
/// Being a task of its own, the call also finishes when the caller's future is dropped (a
/// request timeout, a client that went away): a transaction is never abandoned half-way,
/// and events for a commit are always published. SQLite work runs on the runtime's blocking
/// pool through `SyncConnectionWrapper`, whose futures must not be dropped while running.
pub(crate) async fn detached<T, F>(
    runtime: &tokio::runtime::Handle,
    work: F,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    match runtime.spawn(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(StoreError::Database(format!("store task panicked: {e}"))),
        Err(e) => Err(StoreError::Unavailable(format!(
            "store task was cancelled: {e}"
        ))),
    }
}

/// A database URL safe to log: the password (in the user-info part or a `password=`
/// parameter) is replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    out.push_str(&authority);
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(&q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("postgresql://u:p@ss@h/db?sslmode=disable&password=x"),
            "postgresql://u:***@h/db?sslmode=disable&password=***"
        );
        assert_eq!(
            redact_url("sqlite://./data/chat.db"),
            "sqlite://./data/chat.db"
        );
    }

    #[test]
    fn connection_problems_are_retryable() {
        let closed = DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("gone".to_owned()),
        );
        assert!(db_error(closed).is_retryable());
        let locked = DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("database is locked".to_owned()),
        );
        assert!(db_error(locked).is_retryable());
        let check = DieselError::DatabaseError(
            DatabaseErrorKind::CheckViolation,
            Box::new("bad".to_owned()),
        );
        assert!(matches!(db_error(check), StoreError::Database(_)));
        assert!(matches!(
            db_error(DieselError::NotFound),
            StoreError::Database(_)
        ));
    }
}
