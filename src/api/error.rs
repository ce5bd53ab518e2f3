//! The response envelope and the one API error type, mapped to HTTP status and Cloudflare error codes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;

use super::observe::current_request_id;
use crate::domain::Invalid;
use crate::store::{StoreCondition, store_condition};

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
/// Kiln's storage (its database or the disk under it) is full: 507 Insufficient Storage.
pub const CODE_STORAGE_FULL: u32 = 10507;
/// Kiln's database is busy or unreachable: 503 Service Unavailable.
pub const CODE_STORAGE_UNAVAILABLE: u32 = 10503;
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

/// `result_info` of paginated lists (DESIGN.md §2).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ResultInfo {
    /// The page returned, from 1.
    pub page: u32,
    /// Items per page: the requested `per_page`, lowered when the list's items are so large that a
    /// full page would exceed the response size bound (every page of the list then uses it).
    pub per_page: u32,
    /// Items on this page.
    pub count: u32,
    /// Items in the whole list.
    pub total_count: i64,
    /// Pages of `per_page` items in the whole list.
    pub total_pages: i64,
    /// Whether a later page exists: a boolean, never a number or null (Cloudflare's Workers Builds
    /// client rejects anything else).
    pub next_page: bool,
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

/// A `201 Created` answer with `result` (`createWorkerBuild`, API-REFERENCE §6.12).
pub struct Created<T>(pub T);

impl<T: Serialize> IntoResponse for Created<T> {
    fn into_response(self) -> Response {
        let mut resp = Success(self.0, None).into_response();
        *resp.status_mut() = StatusCode::CREATED;
        resp
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
    /// The body is longer than the route's limit (`limit`, in bytes).
    #[error("Request body is larger than {}, the limit of this endpoint", human_bytes(*limit))]
    PayloadTooLarge { limit: usize },
    /// The body did not arrive within the body read timeout (DESIGN.md §2: a slow client cannot hold a
    /// connection).
    #[error("Request body was not received within {}s", timeout.as_secs())]
    BodyTimeout { timeout: std::time::Duration },
    /// hyper could not parse the request line or a header field (the answer is written by
    /// [`crate::listen`], not by a handler).
    #[error("Malformed HTTP request: the request line or a header field could not be parsed")]
    MalformedRequest,
    /// The request target is longer than the `http` crate's maximum.
    #[error("URI too long: at most {} bytes", crate::listen::MAX_URI_BYTES)]
    UriTooLong,
    /// Too many header fields, or a request head over the buffer.
    #[error(
        "Request header fields too large: at most {} header fields, and at most {} for the request line and header fields together",
        crate::listen::MAX_HEADERS,
        human_bytes(crate::listen::MAX_HEAD_BYTES)
    )]
    HeadersTooLarge,
    #[error("Authentication error")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("Not found")]
    NotFound,
    /// Something the caller may know of is missing (a branch of its own repository): 404 saying what.
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Conflict(String),
    #[error("Rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    /// A quota is used up: build minutes (until a known time), or the live log streams of a node.
    #[error("{message}")]
    QuotaExceeded {
        message: String,
        retry_after_secs: u64,
    },
    #[error("No route for the URI")]
    NoRoute,
    #[error("Method not allowed for this route")]
    MethodNotAllowed,
    /// The store or the disk under it is full ([`StoreCondition::Full`]): nothing was changed.
    #[error("Storage is full: free disk space on the Kiln server, then retry")]
    StorageFull,
    /// The database is busy or unreachable ([`StoreCondition::Unavailable`]).
    #[error("Storage is unavailable: retry shortly")]
    StorageUnavailable,
    /// A bug or an unexpected failure. A store condition inside is answered as the variant above
    /// that names it (see [`ApiError::classified`]).
    #[error("Internal server error")]
    Internal(#[from] anyhow::Error),
}

/// `Retry-After` of a 507, in seconds: space comes back when an operator frees it.
const STORAGE_FULL_RETRY_SECS: u64 = 30;
/// `Retry-After` of a 503, in seconds.
const STORAGE_UNAVAILABLE_RETRY_SECS: u64 = 5;

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::BadRequest(e.0)
    }
}

impl ApiError {
    /// An internal error whose cause is a [`StoreCondition`] becomes the variant for it: a full
    /// disk or an unreachable database is a state of the server, not a bug, and says so.
    pub(crate) fn classified(self) -> ApiError {
        match &self {
            ApiError::Internal(e) => match store_condition(e) {
                Some(StoreCondition::Full) => {
                    tracing::error!(
                        request_id = current_request_id().as_deref(),
                        error = format!("{e:#}"),
                        "storage is full"
                    );
                    ApiError::StorageFull
                }
                Some(StoreCondition::Unavailable) => {
                    tracing::error!(
                        request_id = current_request_id().as_deref(),
                        error = format!("{e:#}"),
                        "storage is unavailable"
                    );
                    ApiError::StorageUnavailable
                }
                None => self,
            },
            _ => self,
        }
    }

    /// The HTTP status of the answer and the JSON envelope it carries.
    pub fn status_and_body(&self) -> (StatusCode, Envelope<()>) {
        let (status, code) = self.status_and_code();
        let body = Envelope {
            success: false,
            errors: vec![ErrorItem {
                code,
                message: self.to_string(),
            }],
            messages: vec![],
            result: None,
            result_info: None,
        };
        (status, body)
    }

    fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, CODE_INVALID),
            ApiError::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, CODE_INVALID),
            ApiError::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, CODE_INVALID),
            ApiError::MalformedRequest => (StatusCode::BAD_REQUEST, CODE_INVALID),
            ApiError::UriTooLong => (StatusCode::URI_TOO_LONG, CODE_INVALID),
            ApiError::HeadersTooLarge => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, CODE_INVALID)
            }
            ApiError::Unauthenticated => (StatusCode::UNAUTHORIZED, CODE_AUTH),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, CODE_AUTH),
            ApiError::NotFound | ApiError::Missing(_) => (StatusCode::NOT_FOUND, CODE_NOT_FOUND),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, CODE_CONFLICT),
            ApiError::RateLimited { .. } | ApiError::QuotaExceeded { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, CODE_RATE_LIMITED)
            }
            ApiError::NoRoute => (StatusCode::NOT_FOUND, CODE_NO_ROUTE),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, CODE_METHOD),
            ApiError::StorageFull => (StatusCode::INSUFFICIENT_STORAGE, CODE_STORAGE_FULL),
            ApiError::StorageUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, CODE_STORAGE_UNAVAILABLE)
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, CODE_INTERNAL),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = self.classified();
        if let ApiError::Internal(e) = &this {
            // The chain goes to the log only; the client sees a fixed message.
            tracing::error!(
                request_id = current_request_id().as_deref(),
                error = format!("{e:#}"),
                "internal error"
            );
        }
        let (status, body) = this.status_and_body();
        if status.is_client_error() {
            // Refusals are the client's business: logged for debugging only, by their code (the
            // message may repeat what the client sent).
            tracing::debug!(
                request_id = current_request_id().as_deref(),
                status = status.as_u16(),
                code = body.errors.first().map(|e| e.code),
                "request refused"
            );
        }
        let mut resp = (status, axum::Json(body)).into_response();
        let retry_after = match this {
            ApiError::RateLimited { retry_after_secs }
            | ApiError::QuotaExceeded {
                retry_after_secs, ..
            } => Some(retry_after_secs),
            ApiError::StorageFull => Some(STORAGE_FULL_RETRY_SECS),
            ApiError::StorageUnavailable => Some(STORAGE_UNAVAILABLE_RETRY_SECS),
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

/// A byte count for messages: `25 MiB`, `256 KiB`, `1000 bytes`.
pub fn human_bytes(n: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}
