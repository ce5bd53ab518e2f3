//! The web dashboard, served by `kiln serve` at `/` next to the API: server-rendered HTML pages
//! (templates compiled into the binary, every value HTML-escaped), one stylesheet and small scripts
//! for the live parts, all embedded. Pages read through the store and the API's own functions and
//! permission rules, never through the HTTP API.
//!
//! * Sessions, CSRF and permissions: [`session`].
//! * Every HTML response carries a strict Content-Security-Policy (scripts and styles only from
//!   this server's files, no inline script or style, no framing), `X-Content-Type-Options: nosniff`,
//!   `Referrer-Policy: same-origin` and `Cache-Control: no-store` ([`view::render`]).
//! * A page is `GET` and works without JavaScript; a change is a `POST` form answered with a `303`
//!   redirect and a flash message; errors are HTML pages with the API's status
//!   ([`error::PageError`]).

mod ansi;
mod assets;
mod build_page;
pub mod error;
mod live;
mod pages;
pub mod session;
mod settings;
pub mod view;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{MethodRouter, get, post};

pub use session::{
    AccountAccess, DashboardConfig, Form, PagePath, PageQuery, Viewer, WriteAccess,
    redirect_with_flash,
};

use crate::api::AppState;

/// A route's handlers, answering other methods with the HTML 405 page.
fn page(route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.fallback(|| async {
        error::error_page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "This page does not take this method.".into(),
        )
    })
}

/// The dashboard's routes, to merge into the server's router. Every request that is not a read
/// passes [`session::guard_forms`] (origin and CSRF token) before its handler.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", page(get(pages::home)))
        .route(
            session::SIGN_IN_PATH,
            page(get(session::show_sign_in).post(session::sign_in)),
        )
        .route("/sign-out", page(post(session::sign_out)))
        .route("/switch", page(get(pages::switch_account)))
        .route("/accounts", page(get(pages::list_accounts)))
        .route(
            "/accounts/{account_id}/workers",
            page(get(pages::workers_overview)),
        )
        .route(
            "/accounts/{account_id}/workers/{worker}/builds",
            page(get(pages::worker_builds)),
        )
        .route(
            "/accounts/{account_id}/builds/{build_uuid}",
            page(get(build_page::show_build)),
        )
        .route(
            "/accounts/{account_id}/builds/{build_uuid}/live",
            page(get(live::stream_live_log)),
        )
        .route(
            "/accounts/{account_id}/builds/{build_uuid}/cancel",
            page(post(build_page::cancel_build)),
        )
        .route(
            "/accounts/{account_id}/builds/{build_uuid}/retry",
            page(post(build_page::retry_build)),
        )
        .route("/static/{name}", page(get(assets::get_asset)))
        .merge(settings::routes())
        .layer(from_fn_with_state(state.clone(), session::guard_forms))
        .with_state(state)
}

/// Whether a request for an unknown path should get the HTML 404 page rather than the API's
/// envelope: a browser's request (it accepts `text/html`) outside the API's paths.
pub fn wants_html(req: &Request) -> bool {
    let path = req.uri().path();
    let api = path.starts_with(crate::api::BASE) || path.starts_with("/webhooks/");
    !api && req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// The HTML 404 page.
pub fn not_found() -> Response {
    error::error_page(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no page at this address.".into(),
    )
}
