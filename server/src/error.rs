//! The crate's one error type. It is also the HTTP error: `IntoResponse` maps each variant to a
//! status and a JSON body `{"error": ..., "message": ..., "key_path"?: ...}`. Server-side
//! failures are logged with their cause and answered with a generic message, so a 5xx body never
//! leaks SQL, paths or internals.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The embedded PostgreSQL could not be found, created, started or stopped.
    #[error("{0}")]
    Postgres(String),
    #[error("training failed: {0}")]
    Trainer(#[from] ifp_trainer::TrainerError),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("not found")]
    NotFound,
    /// A request that is well-formed but cannot be accepted (bad field, bad config).
    #[error("{message}")]
    Invalid {
        key_path: Option<String>,
        message: String,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// A request refused whoever makes it (a forged form, a path outside the upload store).
    #[error("{0}")]
    Forbidden(String),
    /// A client error with its own status (413, 415, ...).
    #[error("{message}")]
    Status { status: StatusCode, message: String },
    /// Too many expensive requests at once: try again after this many seconds (503).
    #[error("the server is busy with other requests; try again in {retry_after_secs} s")]
    Busy { retry_after_secs: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub fn invalid(key_path: Option<&str>, message: impl Into<String>) -> Error {
        Error::Invalid {
            key_path: key_path.map(str::to_string),
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The body of every error response.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code: `unauthorized`, `not_found`, `invalid`, `bad_request`, `internal`, ...
    pub error: String,
    pub message: String,
    /// For `invalid`: the field or config key at fault (`TRAIN.BASE_LR`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_path: Option<String>,
}

impl Error {
    /// The HTTP status, stable code, message and key path a client is told. Server-side
    /// failures are logged here with their cause and get a generic message.
    pub fn public(&self) -> (StatusCode, &'static str, String, Option<String>) {
        match self {
            Error::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                self.to_string(),
                None,
            ),
            Error::NotFound => (StatusCode::NOT_FOUND, "not_found", self.to_string(), None),
            Error::Invalid { key_path, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                message.clone(),
                key_path.clone(),
            ),
            Error::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone(), None),
            Error::Conflict(m) => (StatusCode::CONFLICT, "conflict", m.clone(), None),
            Error::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone(), None),
            Error::Busy { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                self.to_string(),
                None,
            ),
            Error::Status { status, message } => {
                let code = match status.as_u16() {
                    413 => "payload_too_large",
                    415 => "unsupported_media_type",
                    _ => "client_error",
                };
                (*status, code, message.clone(), None)
            }
            Error::Db(_)
            | Error::Migrate(_)
            | Error::Io { .. }
            | Error::Postgres(_)
            | Error::Trainer(_)
            | Error::Internal(_) => {
                tracing::error!(error = %self, "request failed");
                let status = match self {
                    Error::Db(sqlx::Error::PoolTimedOut) => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (
                    status,
                    "internal",
                    "internal server error".to_string(),
                    None,
                )
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code, message, key_path) = self.public();
        let body = ErrorBody {
            error: code.to_string(),
            message,
            key_path,
        };
        let mut resp = (status, Json(body)).into_response();
        if let Error::Busy { retry_after_secs } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        resp
    }
}
