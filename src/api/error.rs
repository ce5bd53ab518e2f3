//! The response envelope and the one API error type, mapped to HTTP status and Cloudflare error codes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;

use crate::domain::Invalid;

/// Body-validation failure (DESIGN.md §2).
pub const CODE_INVALID: u32 = 12002;
/// Unknown resource.
pub const CODE_NOT_FOUND: u32 = 12000;
/// Conflict with the stored state.
pub const CODE_CONFLICT: u32 = 12009;
/// Rate limit exceeded.
pub const CODE_RATE_LIMITED: u32 = 12051;
/// Missing, unknown or insufficient credentials.
pub const CODE_AUTH: u32 = 10000;
/// Internal error.
pub const CODE_INTERNAL: u32 = 10001;
/// No route matches the URI.
pub const CODE_NO_ROUTE: u32 = 7003;
/// The route exists but not for this method.
pub const CODE_METHOD: u32 = 7001;

/// One entry of `errors`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ErrorItem {
    pub code: u32,
    pub message: String,
}

/// `result_info` of paginated lists.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ResultInfo {
    pub page: u32,
    pub per_page: u32,
    pub count: u32,
    pub total_count: i64,
    pub total_pages: i64,
    pub next_page: Option<u32>,
}

/// The Cloudflare v4 envelope around every response.
#[derive(Debug, Serialize)]
pub struct Envelope<T> {
    pub success: bool,
    pub errors: Vec<ErrorItem>,
    pub messages: Vec<String>,
    pub result: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_info: Option<ResultInfo>,
}

/// A successful answer: `result` in the envelope, with `result_info` for paginated lists.
pub struct Success<T>(pub T, pub Option<ResultInfo>);

impl<T: Serialize> IntoResponse for Success<T> {
    fn into_response(self) -> Response {
        let body = Envelope {
            success: true,
            errors: vec![],
            messages: vec![],
            result: Some(self.0),
            result_info: self.1,
        };
        axum::Json(body).into_response()
    }
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<Success<T>, ApiError>;

/// A successful answer with `result`.
pub fn ok<T>(result: T) -> ApiResult<T> {
    Ok(Success(result, None))
}

/// A successful answer with `result: null`.
pub fn ok_empty() -> ApiResult<()> {
    Ok(Success((), None))
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Request body is larger than 1 MiB")]
    PayloadTooLarge,
    #[error("Authentication error")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("Not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("Rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    /// A quota (such as build minutes) is used up until a known time.
    #[error("{message}")]
    QuotaExceeded {
        message: String,
        retry_after_secs: u64,
    },
    #[error("No route for the URI")]
    NoRoute,
    #[error("Method not allowed for this route")]
    MethodNotAllowed,
    #[error("Internal server error")]
    Internal(#[from] anyhow::Error),
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::BadRequest(e.0)
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, CODE_INVALID),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, CODE_INVALID),
            ApiError::Unauthenticated => (StatusCode::UNAUTHORIZED, CODE_AUTH),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, CODE_AUTH),
            ApiError::NotFound => (StatusCode::NOT_FOUND, CODE_NOT_FOUND),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, CODE_CONFLICT),
            ApiError::RateLimited { .. } | ApiError::QuotaExceeded { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, CODE_RATE_LIMITED)
            }
            ApiError::NoRoute => (StatusCode::NOT_FOUND, CODE_NO_ROUTE),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, CODE_METHOD),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, CODE_INTERNAL),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            // The chain goes to the log only; the client sees a fixed message.
            tracing::error!(error = format!("{e:#}"), "internal error");
        }
        let (status, code) = self.status_and_code();
        let body: Envelope<()> = Envelope {
            success: false,
            errors: vec![ErrorItem {
                code,
                message: self.to_string(),
            }],
            messages: vec![],
            result: None,
            result_info: None,
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let ApiError::RateLimited { retry_after_secs }
        | ApiError::QuotaExceeded {
            retry_after_secs, ..
        } = self
        {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs.max(1)),
            );
        }
        resp
    }
}
