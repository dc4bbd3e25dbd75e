//! Errors: [`RegistryError`] for the embedding program (opening the store, garbage
//! collection), and [`ApiError`], the distribution-spec error a client receives as
//! `{"errors":[{"code":…,"message":…,"detail":…}]}` with the matching HTTP status.

use std::path::PathBuf;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What kept the registry from opening or from finishing a maintenance task.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry storage at {path}: {action}: {error}")]
    Io {
        path: PathBuf,
        action: &'static str,
        error: std::io::Error,
    },
    #[error("blob storage {location}: {reason}")]
    Storage { location: String, reason: String },
    #[error("a garbage collection is already running; wait for it to finish")]
    Busy,
    #[error("registry storage at {path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl RegistryError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        error: std::io::Error,
    ) -> Self {
        RegistryError::Io {
            path: path.into(),
            action,
            error,
        }
    }
}

/// The error codes of the distribution spec (and `TOOMANYREQUESTS`-style extras we use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    RangeInvalid,
    TagInvalid,
    PaginationNumberInvalid,
    /// Storage failure on our side (500).
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => StatusCode::NOT_FOUND,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error response. `challenge` is the `WWW-Authenticate` value of 401s.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub status: StatusCode,
    pub challenge: Option<String>,
    /// Extra headers (e.g. `Range` and `Docker-Upload-UUID` on a 416).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            status: code.status(),
            challenge: None,
            headers: Vec::new(),
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }

    /// A storage failure: logged in full, reported to the client without paths.
    pub fn internal(action: &str, error: impl std::fmt::Display) -> ApiError {
        tracing::error!("registry: {action}: {error}");
        ApiError::new(
            ErrorCode::Unknown,
            format!("internal storage error while {action}; see the server log"),
        )
    }

    pub fn unauthorized(message: impl Into<String>, challenge: String) -> ApiError {
        let mut e = ApiError::new(ErrorCode::Unauthorized, message);
        e.challenge = Some(challenge);
        e
    }
}

impl From<std::io::Error> for ApiError {
    fn from(error: std::io::Error) -> ApiError {
        ApiError::internal("accessing storage", error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "code": self.code.as_str(), "message": self.message, "detail": null }]
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(challenge) = self.challenge
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        response
    }
}
