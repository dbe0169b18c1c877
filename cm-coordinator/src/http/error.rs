//! The API's errors: a status and one clear sentence, as `{"error": "..."}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::Denied;

/// An API error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ccds\""),
            );
        }
        response
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        Self::new(StatusCode::FORBIDDEN, d.to_string())
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        tracing::error!(error = %e, "database error serving an API request");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<crate::auth::TokenError> for ApiError {
    fn from(e: crate::auth::TokenError) -> Self {
        match e {
            crate::auth::TokenError::Db(e) => e.into(),
            other => Self::bad_request(other.to_string()),
        }
    }
}

/// Errors of the coordinator's commands: storage faults are the server's (500), anything else
/// is about the request (an unknown ID is 404, the rest 400).
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        let message = format!("{e:#}");
        if e.downcast_ref::<crate::db::DbError>().is_some()
            || e.downcast_ref::<sqlx::Error>().is_some()
            || e.downcast_ref::<std::io::Error>().is_some()
        {
            tracing::error!(error = %message, "API request failed");
            return Self::new(StatusCode::INTERNAL_SERVER_ERROR, message);
        }
        if message.starts_with("unknown ") {
            Self::not_found(message)
        } else {
            Self::bad_request(message)
        }
    }
}

/// A JSON answer or an API error.
pub type ApiResult<T = Json<serde_json::Value>> = Result<T, ApiError>;
