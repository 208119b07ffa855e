//! The server's one error type, mapped once to HTTP statuses and WebSocket error codes.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use chat_domain::DomainError;
use chat_domain::protocol::api::{ApiError, ApiErrorBody};
use chat_domain::protocol::{ApiErrorCode, ErrorCode};
use chat_store::StoreError;

use crate::writer::WriteError;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("missing or wrong service key")]
    Unauthorized,
    #[error("{message}")]
    BadRequest { code: ApiErrorCode, message: String },
    #[error("{message}")]
    Unprocessable { code: ApiErrorCode, message: String },
    #[error("{0}")]
    OriginNotAllowed(&'static str),
    #[error("unknown room")]
    UnknownRoom,
    #[error("not found")]
    NotFound,
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    #[error("request body over 16 KiB")]
    PayloadTooLarge,
    #[error(transparent)]
    Rule(#[from] DomainError),
    #[error("rate limited")]
    RateLimited,
    #[error("storage unavailable, retry")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl From<StoreError> for ServerError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Rule(rule) => Self::Rule(rule),
            StoreError::UnknownRoom => Self::UnknownRoom,
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "store unavailable");
                Self::Unavailable
            }
            other => {
                tracing::error!(error = %other, "store error");
                Self::Internal
            }
        }
    }
}

impl From<WriteError> for ServerError {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::Store(e) => e.into(),
            WriteError::Stopped => Self::Unavailable,
        }
    }
}

impl ServerError {
    /// The code of an `error` frame on the WebSocket.
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            Self::Unauthorized => ErrorCode::Unauthorized,
            Self::BadRequest { .. }
            | Self::Unprocessable { .. }
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::PayloadTooLarge => ErrorCode::InvalidFrame,
            Self::OriginNotAllowed(_) => ErrorCode::Unauthorized,
            Self::UnknownRoom => ErrorCode::UnknownRoom,
            Self::Rule(rule) => rule.wire_code(),
            Self::RateLimited => ErrorCode::RateLimited,
            Self::Unavailable | Self::Internal => ErrorCode::Internal,
        }
    }

    /// The `code` of a service API error body: a domain rule's own code, else the API's.
    fn api_code(&self) -> &'static str {
        let code = match self {
            Self::Rule(rule) => return rule.code(),
            Self::Unauthorized => ApiErrorCode::Unauthorized,
            Self::BadRequest { code, .. } | Self::Unprocessable { code, .. } => *code,
            Self::OriginNotAllowed(_) => ApiErrorCode::OriginNotAllowed,
            Self::UnknownRoom => ApiErrorCode::UnknownRoom,
            Self::NotFound => ApiErrorCode::NotFound,
            Self::MethodNotAllowed => ApiErrorCode::MethodNotAllowed,
            Self::PayloadTooLarge => ApiErrorCode::PayloadTooLarge,
            Self::RateLimited => ApiErrorCode::RateLimited,
            Self::Unavailable => ApiErrorCode::Unavailable,
            Self::Internal => ApiErrorCode::Internal,
        };
        code.as_str()
    }
}

impl ResponseError for ServerError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unprocessable { .. } | Self::Rule(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnknownRoom | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let body = ApiError {
            error: ApiErrorBody {
                code: self.api_code().to_owned(),
                message: self.to_string(),
            },
        };
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, Self::Unauthorized) {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response.json(body)
    }
}
