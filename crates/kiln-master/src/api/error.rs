//! The API's errors: one JSON shape (`kiln_api::ErrorBody`: `{"code",
//! "error"}`) and the status that tells the client what it can do about it
//! (ARCHITECTURE.md, error policy).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_api::{ErrorBody, ErrorCode};

/// An error answer: its status, its code and its message.
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// The HTTP status it answers with.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
    /// What it says.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }
    pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    }
}

impl From<kiln_store::StoreError> for ApiError {
    fn from(e: kiln_store::StoreError) -> Self {
        match e {
            kiln_store::StoreError::NotFound(m) => ApiError::not_found(m),
            kiln_store::StoreError::Invalid(m) => ApiError::bad(m),
            e @ (kiln_store::StoreError::CommitFailed(_) | kiln_store::StoreError::Closed) => {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    e.to_string(),
                )
            }
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            error: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A failure of the master's own disk, as a client sees it: a full disk
/// says so, with 507; anything else is a 500.
pub(crate) fn disk_error(e: std::io::Error) -> ApiError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::NoSpace,
            "no space left on device on the master; nothing was kept, retry once there is room",
        )
    } else {
        ApiError::internal(format!("writing the upload: {e}"))
    }
}

impl From<crate::submit::SubmitError> for ApiError {
    fn from(e: crate::submit::SubmitError) -> Self {
        use crate::submit::SubmitError as E;
        match e {
            E::Bad(m) => ApiError::bad(m),
            E::BlobMissing => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::BlobMissing, e.to_string())
            }
            E::Store(s) => s.into(),
            E::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, m)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_store::StoreError;

    fn status(e: ApiError) -> (StatusCode, ErrorCode) {
        (e.status, e.code)
    }

    #[test]
    fn store_errors_tell_the_client_whose_fault_it_is() {
        assert_eq!(
            status(StoreError::Invalid("x".into()).into()),
            (StatusCode::BAD_REQUEST, ErrorCode::BadRequest)
        );
        assert_eq!(
            status(StoreError::NotFound("x".into()).into()),
            (StatusCode::NOT_FOUND, ErrorCode::NotFound)
        );
        // A commit that failed (disk full, I/O error) is not the request's
        // fault: 503, retry later.
        let e: ApiError = StoreError::CommitFailed("database or disk is full".into()).into();
        assert!(e.message.contains("could not commit"), "{}", e.message);
        assert_eq!(
            status(e),
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
        );
        assert_eq!(
            status(StoreError::Closed.into()),
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
        );
        assert_eq!(
            status(StoreError::Internal("thread".into()).into()),
            (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
        );
    }

    #[test]
    fn a_full_disk_is_507_and_says_so() {
        let e = disk_error(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(e.message.contains("no space left on device"));
        assert_eq!(
            status(e),
            (StatusCode::INSUFFICIENT_STORAGE, ErrorCode::NoSpace)
        );
    }
}
