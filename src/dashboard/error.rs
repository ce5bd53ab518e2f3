//! Errors of dashboard pages, answered as HTML pages with the status the API would give (an
//! `ApiError` inside is mapped as the API maps it), or as a redirect to the sign-in page.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::view::{self, Layout};
use crate::api::error::ApiError;
use crate::domain::Invalid;

/// Why a dashboard request failed.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// No session, an expired one, or one whose token is gone. A page read (`GET`) is sent to the
    /// sign-in page, which comes back to `next` afterwards; a form is refused with 401.
    #[error("Sign in to continue")]
    SignIn { next: Option<String> },
    /// A form that does not come from this dashboard's pages of the current session (no or another
    /// CSRF token, a foreign `Origin`): 403, nothing is changed.
    #[error("{0}")]
    Csrf(&'static str),
    /// Anything the API would answer the same way (its status and message).
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        PageError::Api(ApiError::Internal(e))
    }
}

impl From<Invalid> for PageError {
    fn from(e: Invalid) -> Self {
        PageError::Api(e.into())
    }
}

/// `Result` of dashboard handlers.
pub type PageResult<T = Response> = Result<T, PageError>;

/// The page shown for an error.
#[derive(askama::Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    status: u16,
    heading: &'static str,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::SignIn { next: Some(next) } => {
                let target = format!("/sign-in?next={}", view::encode_query(&next));
                let mut resp = Redirect::to(&target).into_response();
                super::session::clear_session_cookie(resp.headers_mut());
                resp
            }
            PageError::SignIn { next: None } => {
                let mut resp = error_page(
                    StatusCode::UNAUTHORIZED,
                    "Signed out",
                    "Your session has ended. Sign in again, then retry.".into(),
                );
                super::session::clear_session_cookie(resp.headers_mut());
                resp
            }
            PageError::Csrf(why) => error_page(StatusCode::FORBIDDEN, "Refused", why.into()),
            PageError::Api(e) => {
                let e = e.classified();
                if let ApiError::Internal(inner) = &e {
                    tracing::error!(
                        request_id = crate::api::observe::current_request_id().as_deref(),
                        error = format!("{inner:#}"),
                        "internal error on a dashboard page"
                    );
                }
                let (status, body) = e.status_and_body();
                let message = body
                    .errors
                    .into_iter()
                    .next()
                    .map(|e| e.message)
                    .unwrap_or_default();
                let heading = match status {
                    StatusCode::NOT_FOUND => "Not found",
                    StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => "Not allowed",
                    StatusCode::CONFLICT => "Conflict",
                    StatusCode::TOO_MANY_REQUESTS => "Too many requests",
                    StatusCode::METHOD_NOT_ALLOWED => "Method not allowed",
                    s if s.is_client_error() => "Bad request",
                    _ => "Server error",
                };
                let mut resp = error_page(status, heading, message);
                let retry_after = match e {
                    ApiError::RateLimited { retry_after_secs }
                    | ApiError::QuotaExceeded {
                        retry_after_secs, ..
                    } => Some(retry_after_secs),
                    _ => None,
                };
                if let Some(secs) = retry_after {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                }
                resp
            }
        }
    }
}

/// An HTML error page with `status` (without the session's navigation: the error may be that
/// there is no session).
pub fn error_page(status: StatusCode, heading: &'static str, message: String) -> Response {
    let page = ErrorPage {
        layout: Layout::bare(heading),
        status: status.as_u16(),
        heading,
        message,
    };
    view::render(status, &page)
}
