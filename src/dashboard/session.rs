//! Signing in and out of the dashboard, the session cookie, and the checks every form passes.
//!
//! * Sign-in takes a Kiln API token, checked as the API checks a Bearer token
//!   ([`crate::api::token_by_secret`]) and throttled with the API's failed-authentication buckets
//!   ([`crate::api::throttle`]). It opens a session: a random id in an HTTP-only, `SameSite=Strict`,
//!   `Path=/` cookie (`Secure` when the request came over https or [`DashboardConfig::secure_cookies`]
//!   says so); the store keeps only the id's SHA-256, the token's id and the session's CSRF secret.
//! * Every request reads the session and its token again ([`Viewer`]): a revoked token or an expired
//!   session is signed out. A session ends [`DashboardConfig::session_idle`] after its last use, and
//!   [`DashboardConfig::session_lifetime`] after sign-in whatever its use.
//! * Every request that is not a read ([`guard_forms`]) must come from this dashboard: its
//!   `Origin` (else its `Referer`), when present, is this server, and its form carries the session's
//!   CSRF token (compared in constant time); the sign-in form carries the one of its sign-in cookie.
//!   Handlers that change something also ask for [`WriteAccess`], which checks the token's write
//!   permission on the account whatever the page showed.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::error::{PageError, PageResult};
use super::view::{self, Layout};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::throttle::client_key;
use crate::crypto::{hash_credential, new_credential};
use crate::domain::{AccountId, ApiToken, Permission, Timestamp};
use crate::store::DashboardSession;

/// The session cookie.
pub const SESSION_COOKIE: &str = "kiln_session";
/// The cookie of the sign-in form's CSRF token (set by the sign-in page, checked by its form).
pub const SIGN_IN_COOKIE: &str = "kiln_sign_in";
/// The cookie holding a message for the next page (see [`redirect_with_flash`]).
pub const FLASH_COOKIE: &str = "kiln_flash";
/// The form field every form posts its CSRF token in.
pub const CSRF_FIELD: &str = "csrf";
/// A session's use is recorded at most this often, in milliseconds (each record is a write).
const TOUCH_EVERY_MS: i64 = 60_000;
/// Longest flash message kept, in bytes.
const MAX_FLASH_BYTES: usize = 200;

/// How dashboard sessions behave (`kiln serve` flags; README "Dashboard").
#[derive(Debug, Clone, Copy)]
pub struct DashboardConfig {
    /// Mark cookies `Secure` on every response, not only on requests that came over https (set it
    /// when a TLS proxy in front of Kiln does not send `X-Forwarded-Proto: https`).
    pub secure_cookies: bool,
    /// A session ends this long after its last use.
    pub session_idle: Duration,
    /// A session ends this long after sign-in, however it is used.
    pub session_lifetime: Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            secure_cookies: false,
            session_idle: Duration::from_secs(2 * 3600),
            session_lifetime: Duration::from_secs(12 * 3600),
        }
    }
}

/// A signed-in browser: its session and the token the session was opened with, read again for
/// this request. Extracting it from a request without a live session fails with
/// [`PageError::SignIn`].
#[derive(Debug, Clone)]
pub struct Viewer {
    pub token: ApiToken,
    /// The session's CSRF token, for the page's forms ([`Layout::csrf`]).
    pub csrf: String,
    /// The message the previous request left for this page.
    pub flash: Option<String>,
    session_hash: String,
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Whether the request came over https (directly, or through a proxy that says so), or cookies are
/// `Secure` anyway.
fn secure(app: &AppState, headers: &HeaderMap) -> bool {
    app.dashboard.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value with the dashboard's attributes.
fn set_cookie(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> HeaderValue {
    let mut text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(secs) = max_age {
        text.push_str(&format!("; Max-Age={secs}"));
    }
    if secure {
        text.push_str("; Secure");
    }
    // Names are constants and values are base64url or percent-encoded.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Adds a `Set-Cookie` that deletes the session cookie.
pub fn clear_session_cookie(headers: &mut HeaderMap) {
    headers.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", Some(0), false),
    );
}

/// Adds a `Set-Cookie` that deletes the flash message.
pub fn clear_flash_cookie(headers: &mut HeaderMap) {
    headers.append(
        header::SET_COOKIE,
        set_cookie(FLASH_COOKIE, "", Some(0), false),
    );
}

/// A `303 See Other` to `location` (a path of this dashboard) that shows `message` on the next page.
pub fn redirect_with_flash(location: &str, message: &str) -> Response {
    let mut message = message.to_owned();
    while message.len() > MAX_FLASH_BYTES {
        message.pop();
    }
    let mut resp = Redirect::to(location).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(FLASH_COOKIE, &view::encode_query(&message), Some(60), false),
    );
    resp
}

/// The flash message of a request, if any.
fn flash(headers: &HeaderMap) -> Option<String> {
    let raw = cookie(headers, FLASH_COOKIE)?;
    let text: String = form_urlencoded::parse(format!("m={raw}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())?;
    (!text.is_empty()).then_some(text)
}

/// Where a page read without a session comes back to after sign-in: its path and query (`None`
/// for other methods).
fn come_back_to(parts: &Parts) -> Option<String> {
    (parts.method == Method::GET || parts.method == Method::HEAD).then(|| {
        parts
            .uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned())
    })
}

impl Viewer {
    async fn load(parts: &Parts, app: &AppState) -> PageResult<Viewer> {
        let signed_out = || PageError::SignIn {
            next: come_back_to(parts),
        };
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE).filter(|v| !v.is_empty()) else {
            return Err(signed_out());
        };
        let hash = hash_credential(id);
        let now = Timestamp::now();
        let Some(session) = app.store.get_dashboard_session(&hash, now).await? else {
            return Err(signed_out());
        };
        let Some(token) = app.store.get_api_token(&session.token_id).await? else {
            // The token was revoked: its sessions end.
            app.store.delete_dashboard_session(&hash).await?;
            return Err(signed_out());
        };
        if now.millis() - session.last_seen_on.millis() >= TOUCH_EVERY_MS {
            let expires = expiry(&app.dashboard, session.created_on, now);
            app.store
                .touch_dashboard_session(&hash, now, expires)
                .await?;
        }
        Ok(Viewer {
            token,
            csrf: session.csrf_secret,
            flash: flash(&parts.headers),
            session_hash: hash,
        })
    }

    /// Whether the viewer's token may act on `account` with `needed`.
    pub fn permits(&self, account: &AccountId, needed: Permission) -> bool {
        self.token.permits(account, needed)
    }
}

/// When a session used at `now` ends: [`DashboardConfig::session_idle`] later, but never after
/// [`DashboardConfig::session_lifetime`] from its start.
fn expiry(config: &DashboardConfig, created: Timestamp, now: Timestamp) -> Timestamp {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
    Timestamp::from_millis(
        (now.millis() + ms(config.session_idle))
            .min(created.millis() + ms(config.session_lifetime)),
    )
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> PageResult<Viewer> {
        if let Some(viewer) = parts.extensions.get::<Viewer>() {
            return Ok(viewer.clone());
        }
        let viewer = Viewer::load(parts, app).await?;
        parts.extensions.insert(viewer.clone());
        Ok(viewer)
    }
}

/// A signed-in viewer on a page of one account (the route's `{account_id}`), which its token may
/// read; 403 otherwise.
#[derive(Debug, Clone)]
pub struct AccountAccess {
    pub viewer: Viewer,
    pub account: AccountId,
    /// Whether the token may change things in the account (pages show editing controls only then).
    pub can_write: bool,
}

impl FromRequestParts<AppState> for AccountAccess {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> PageResult<AccountAccess> {
        let viewer = Viewer::from_request_parts(parts, app).await?;
        let params = RawPathParams::from_request_parts(parts, app)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))?;
        let raw = params
            .iter()
            .find(|(k, _)| *k == "account_id")
            .map(|(_, v)| v.to_owned())
            .ok_or_else(|| anyhow::anyhow!("a dashboard route without account_id"))?;
        let account = AccountId::parse(&raw)?;
        if !viewer.permits(&account, Permission::Read) {
            return Err(ApiError::Forbidden("this token is not valid for this account").into());
        }
        let can_write = viewer.permits(&account, Permission::Write);
        Ok(AccountAccess {
            viewer,
            account,
            can_write,
        })
    }
}

/// [`AccountAccess`] of a token that may change things in the account (403 otherwise, whatever
/// the page showed): every handler that changes something takes it.
#[derive(Debug, Clone)]
pub struct WriteAccess(pub AccountAccess);

impl FromRequestParts<AppState> for WriteAccess {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> PageResult<WriteAccess> {
        let access = AccountAccess::from_request_parts(parts, app).await?;
        if !access.can_write {
            return Err(ApiError::Forbidden(
                "this token can only read: it lacks the Workers CI Write permission",
            )
            .into());
        }
        Ok(WriteAccess(access))
    }
}

/// A form body (`application/x-www-form-urlencoded`) read into `T` (400 page when it does not fit).
/// Its CSRF token was checked by [`guard_forms`] before the handler ran; `T` ignores the field.
pub struct Form<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Form<T> {
    type Rejection = PageError;

    async fn from_request(req: Request, _: &AppState) -> PageResult<Form<T>> {
        let bytes = crate::api::read_body(req).await?;
        serde_urlencoded::from_bytes(&bytes)
            .map(Form)
            .map_err(|e| ApiError::BadRequest(format!("invalid form: {e}")).into())
    }
}

/// Path parameters read into `T` (a tuple of the route's parameters, or a struct), as axum's
/// `Path` reads them but refused with the HTML 400 page.
pub struct PagePath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for PagePath<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> PageResult<PagePath<T>> {
        axum::extract::Path::<T>::from_request_parts(parts, app)
            .await
            .map(|p| PagePath(p.0))
            .map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())).into())
    }
}

/// Query parameters read into `T`, as axum's `Query` reads them but refused with the HTML 400 page.
pub struct PageQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for PageQuery<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> PageResult<PageQuery<T>> {
        axum::extract::Query::<T>::from_request_parts(parts, app)
            .await
            .map(|q| PageQuery(q.0))
            .map_err(|e| {
                ApiError::BadRequest(format!("invalid query string: {}", e.body_text())).into()
            })
    }
}

/// Whether `value` (an `Origin`, or a `Referer` URL) names this server, as the `Host` header does.
fn same_origin(value: &str, host: &str) -> bool {
    let Ok(url) = url::Url::parse(value) else {
        return false;
    };
    let Some(their_host) = url.host_str() else {
        return false;
    };
    let theirs = match url.port() {
        Some(port) => format!("{their_host}:{port}"),
        None => their_host.to_owned(),
    };
    matches!(url.scheme(), "http" | "https") && theirs.eq_ignore_ascii_case(host)
}

/// Refuses a request whose `Origin` (else `Referer`) is present and not this server.
fn check_origin(headers: &HeaderMap) -> PageResult<()> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let foreign = |name: header::HeaderName| {
        headers.get(name).map(|v| {
            v.to_str()
                .map_or(true, |value| host.is_empty() || !same_origin(value, host))
        })
    };
    match foreign(header::ORIGIN).or_else(|| foreign(header::REFERER)) {
        Some(true) => Err(PageError::Csrf(
            "This form was sent from another site: nothing was changed",
        )),
        _ => Ok(()),
    }
}

/// Whether `given` is `expected`, in time independent of where they differ.
fn tokens_match(given: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// Middleware of every dashboard route: a request that is not a read (`GET`/`HEAD`) must pass
/// [`check_origin`] and carry the CSRF token of its session (of its sign-in cookie for the sign-in
/// form) in its form's [`CSRF_FIELD`]; otherwise it is refused with 403 (401 without a session)
/// before any handler runs. The body is read here (within the route's limit) and handed on.
pub async fn guard_forms(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    match checked(&app, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn checked(app: &AppState, req: Request) -> PageResult<Request> {
    check_origin(req.headers())?;
    let (mut parts, body) = req.into_parts();
    // The body alone, with what the limit is read from.
    let mut only_body = Request::new(body);
    if let Some(limit) = parts.extensions.get::<crate::api::BodyLimit>() {
        only_body.extensions_mut().insert(*limit);
    }
    if let Some(length) = parts.headers.get(header::CONTENT_LENGTH) {
        only_body
            .headers_mut()
            .insert(header::CONTENT_LENGTH, length.clone());
    }
    let bytes = crate::api::read_body(only_body).await?;
    let given: String = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == CSRF_FIELD)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let expected = if parts.uri.path() == SIGN_IN_PATH {
        cookie(&parts.headers, SIGN_IN_COOKIE)
            .unwrap_or_default()
            .to_owned()
    } else {
        Viewer::from_request_parts(&mut parts, app).await?.csrf
    };
    if !tokens_match(&given, &expected) {
        return Err(PageError::Csrf(
            "This form has expired or did not come from this dashboard: reload the page and try again. Nothing was changed.",
        ));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// Path of the sign-in page and form.
pub const SIGN_IN_PATH: &str = "/sign-in";

/// The sign-in page.
#[derive(askama::Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    layout: Layout,
    next: String,
    error: Option<String>,
}

/// `?next=` of the sign-in page: a path of this server to come back to.
#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// `next` if it is a path of this server (not `//host/…` nor `/\host`, which browsers read as
/// another site), else `/`.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && !p.chars().any(char::is_control) =>
        {
            p.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// The sign-in page with a fresh sign-in cookie, `status` and an error message if any.
fn sign_in_page(
    app: &AppState,
    headers: &HeaderMap,
    next: &str,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let csrf = new_credential("");
    let mut layout = Layout::bare("Sign in");
    layout.csrf = csrf.clone();
    // "Signed out", after sign-out.
    layout.flash = flash(headers);
    let page = SignInPage {
        layout,
        next: next.to_owned(),
        error,
    };
    let mut resp = view::render(status, &page);
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SIGN_IN_COOKIE, &csrf, None, secure(app, headers)),
    );
    if page.layout.flash.is_some() {
        clear_flash_cookie(resp.headers_mut());
    }
    resp
}

/// `GET /sign-in?next=`
pub async fn show_sign_in(
    State(app): State<AppState>,
    headers: HeaderMap,
    PageQuery(query): PageQuery<NextQuery>,
) -> Response {
    let next = local_path(query.next.as_deref());
    sign_in_page(&app, &headers, &next, StatusCode::OK, None)
}

/// Fields of the sign-in form.
#[derive(Deserialize)]
pub struct SignInForm {
    token: String,
    next: Option<String>,
}

/// `POST /sign-in`: opens a session for a valid API token and goes to `next`; a wrong token shows
/// the form again (401), a client that guessed too often is refused (429).
pub async fn sign_in(
    State(app): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Form(form): Form<SignInForm>,
) -> PageResult {
    let next = local_path(form.next.as_deref());
    let client = client_key(&extensions);
    if let Some(retry_after_secs) = client.and_then(|c| app.auth_throttle.check(c)) {
        return Err(ApiError::RateLimited { retry_after_secs }.into());
    }
    let token = match crate::api::token_by_secret(&app.store, &form.token).await {
        Ok(token) => token,
        Err(ApiError::Unauthenticated) => {
            if let Some(c) = client.filter(|_| !form.token.trim().is_empty()) {
                app.auth_throttle.record_failure(c);
            }
            return Ok(sign_in_page(
                &app,
                &headers,
                &next,
                StatusCode::UNAUTHORIZED,
                Some("This token is not valid: check it and try again.".into()),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let id = new_credential("");
    let now = Timestamp::now();
    let session = DashboardSession {
        id_hash: hash_credential(&id),
        token_id: token.id,
        csrf_secret: new_credential(""),
        created_on: now,
        last_seen_on: now,
        expires_on: expiry(&app.dashboard, now, now),
    };
    app.store.insert_dashboard_session(&session).await?;
    let mut resp = Redirect::to(&next).into_response();
    let secure = secure(&app, &headers);
    let headers = resp.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &id, None, secure),
    );
    headers.append(
        header::SET_COOKIE,
        set_cookie(SIGN_IN_COOKIE, "", Some(0), secure),
    );
    Ok(resp)
}

/// `POST /sign-out`: ends the session (its cookie no longer works) and shows the sign-in page.
pub async fn sign_out(State(app): State<AppState>, viewer: Viewer) -> PageResult {
    app.store
        .delete_dashboard_session(&viewer.session_hash)
        .await?;
    let mut resp = redirect_with_flash(SIGN_IN_PATH, "Signed out");
    clear_session_cookie(resp.headers_mut());
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_compared_with_the_host() {
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same_origin("https://kiln.example.com", "kiln.example.com"));
        assert!(same_origin(
            "http://127.0.0.1:8080/accounts/x/builds?q=1",
            "127.0.0.1:8080"
        ));
        assert!(!same_origin("http://evil.example", "127.0.0.1:8080"));
        assert!(!same_origin("http://127.0.0.1:8081", "127.0.0.1:8080"));
        assert!(!same_origin("null", "127.0.0.1:8080"));
        assert!(!same_origin("file:///x", "x"));
    }

    #[test]
    fn only_local_paths_are_come_back_to() {
        assert_eq!(
            local_path(Some("/accounts/a/workers?x=1")),
            "/accounts/a/workers?x=1"
        );
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example",
            "",
            "x",
        ] {
            assert_eq!(local_path(Some(bad)), "/", "{bad}");
        }
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; kiln_session=abc"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("kiln_flash=Build%20cancelled"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(flash(&h).as_deref(), Some("Build cancelled"));
        assert_eq!(cookie(&h, "kiln"), None);
    }

    #[test]
    fn sessions_end_when_idle_or_at_their_lifetime() {
        let config = DashboardConfig {
            secure_cookies: false,
            session_idle: Duration::from_secs(10),
            session_lifetime: Duration::from_secs(100),
        };
        let start = Timestamp::from_millis(0);
        assert_eq!(expiry(&config, start, start).millis(), 10_000);
        assert_eq!(
            expiry(&config, start, Timestamp::from_millis(95_000)).millis(),
            100_000
        );
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abd", "abc"));
        assert!(!tokens_match("", ""));
    }
}
