//! What every page shares: the layout (header, navigation, account switcher, flash message), the
//! rendering of a template into a response, and the formatting of times, durations and statuses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::assets;
use super::session::Viewer;
use crate::api::AppState;
use crate::domain::{
    AccountId, Build, BuildOutcome, BuildStatus, Permission, Timestamp, TriggerSource,
};

/// Accounts listed in the header's switcher at most (the accounts page lists them all, paged).
const SWITCHER_ACCOUNTS: u32 = 100;

/// The header's navigation for a signed-in viewer.
pub struct Nav {
    /// The token's label, else its id.
    pub token_name: String,
    /// "read only" or "read and write".
    pub access: &'static str,
    /// The accounts of the switcher (at most [`SWITCHER_ACCOUNTS`]).
    pub accounts: Vec<AccountId>,
    /// The account the page is about.
    pub current: Option<AccountId>,
}

/// What the base template (`base.html`) needs: every page template has a `layout` field.
pub struct Layout {
    /// The page's title (the `<title>` and, in most pages, its heading).
    pub title: String,
    pub nav: Option<Nav>,
    /// The CSRF token of the session: every form posts it as `csrf`.
    pub csrf: String,
    /// A message left by the previous request (e.g. "Build cancelled").
    pub flash: Option<String>,
    /// URL of the stylesheet.
    pub css: &'static str,
}

impl Layout {
    /// The layout of a page without a session (sign-in, errors).
    pub fn bare(title: &str) -> Layout {
        Layout {
            title: title.to_owned(),
            nav: None,
            csrf: String::new(),
            flash: None,
            css: assets::css_url(),
        }
    }

    /// The layout of a signed-in viewer's page about `current` (if about one account).
    pub async fn new(
        app: &AppState,
        viewer: &Viewer,
        title: impl Into<String>,
        current: Option<&AccountId>,
    ) -> anyhow::Result<Layout> {
        let (mut accounts, _) = app
            .store
            .list_accounts(&viewer.token.scope, 1, SWITCHER_ACCOUNTS)
            .await?;
        if let Some(c) = current
            && !accounts.contains(c)
        {
            accounts.insert(0, c.clone());
        }
        let token = &viewer.token;
        Ok(Layout {
            title: title.into(),
            nav: Some(Nav {
                token_name: token.label.clone().unwrap_or_else(|| token.id.clone()),
                access: match token.permission {
                    Permission::Read => "read only",
                    Permission::Write => "read and write",
                },
                accounts,
                current: current.cloned(),
            }),
            csrf: viewer.csrf.clone(),
            flash: viewer.flash.clone(),
            css: assets::css_url(),
        })
    }
}

/// The Content-Security-Policy of every page: scripts, styles and images only from this server's
/// files (no inline script, style attribute or `eval`), live connections only to this server, forms
/// only to it, and no framing by any site.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// Renders `template` as the page's HTML with `status` and the dashboard's security headers. A
/// template that cannot render (a bug) is logged and answered with a plain 500 page.
pub fn render<T: askama::Template>(status: StatusCode, template: &T) -> Response {
    let mut resp = match template.render() {
        Ok(html) => (status, html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a dashboard page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><title>Server error</title><p>Server error</p>",
            )
                .into_response()
        }
    };
    let headers = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    resp
}

/// Renders a signed-in viewer's page (200), clearing the flash message it showed.
pub fn page<T: askama::Template>(viewer: &Viewer, template: &T) -> Response {
    let mut resp = render(StatusCode::OK, template);
    if viewer.flash.is_some() {
        super::session::clear_flash_cookie(resp.headers_mut());
    }
    resp
}

/// `text` percent-encoded for a query string value.
pub fn encode_query(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A time as `2026-11-30 18:11:19 UTC`.
pub fn when(t: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(t.millis())
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// How long ago `t` was at `now`: `just now`, `5 s ago`, `3 min ago`, `2 h ago`, `4 days ago`.
pub fn age(t: Timestamp, now: Timestamp) -> String {
    let secs = (now.millis() - t.millis()).max(0) / 1000;
    match secs {
        0..=4 => "just now".into(),
        5..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ if secs < 2 * 86_400 => "1 day ago".into(),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// A duration in milliseconds as `850 ms`, `12.3 s`, `4 min 05 s`, `1 h 02 min`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms} ms");
    }
    if ms < 60_000 {
        return format!("{:.1} s", ms as f64 / 1000.0);
    }
    let secs = ms / 1000;
    if secs < 3600 {
        return format!("{} min {:02} s", secs / 60, secs % 60);
    }
    format!("{} h {:02} min", secs / 3600, (secs % 3600) / 60)
}

/// How a build is shown: its state in words and the CSS class of its badge.
pub struct BuildState {
    pub label: &'static str,
    /// `ok`, `bad`, `live`, `wait` or `off`.
    pub class: &'static str,
}

/// The badge of a build: its outcome once stopped, else its status.
pub fn build_state(status: BuildStatus, outcome: Option<BuildOutcome>) -> BuildState {
    let (label, class) = match (status, outcome) {
        (BuildStatus::Stopped, Some(BuildOutcome::Success)) => ("success", "ok"),
        (BuildStatus::Stopped, Some(BuildOutcome::Fail)) => ("failed", "bad"),
        (BuildStatus::Stopped, Some(BuildOutcome::Terminated)) => ("terminated", "bad"),
        (BuildStatus::Stopped, Some(BuildOutcome::Cancelled)) => ("cancelled", "off"),
        (BuildStatus::Stopped, Some(BuildOutcome::Skipped)) => ("skipped", "off"),
        (BuildStatus::Stopped, None) => ("stopped", "off"),
        (BuildStatus::Queued, _) => ("queued", "wait"),
        (BuildStatus::Initializing, _) => ("initializing", "live"),
        (BuildStatus::Running, _) => ("running", "live"),
    };
    BuildState { label, class }
}

/// How long a build took, or has been taking at `now` (from its claim; `None` while queued).
pub fn build_duration(build: &Build, now: Timestamp) -> Option<i64> {
    let start = build.initializing_on.or(build.running_on)?;
    Some(build.stopped_on.unwrap_or(now).millis() - start.millis())
}

/// The page's name for what started a build.
pub fn source_label(source: TriggerSource) -> &'static str {
    match source {
        TriggerSource::Push => "push",
        TriggerSource::PullRequest => "pull request",
        TriggerSource::Manual => "manual",
        TriggerSource::DeployHook => "deploy hook",
        TriggerSource::Api => "API",
    }
}

/// The first 7 characters of a commit hash.
pub fn short_commit(hash: &str) -> &str {
    match hash.char_indices().nth(7) {
        Some((i, _)) => &hash[..i],
        None => hash,
    }
}

/// The first line of a commit message, cut to about 100 characters.
pub fn message_title(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default();
    match first.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &first[..i]),
        None => first.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_ages_read_well() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_345), "12.3 s");
        assert_eq!(duration(245_000), "4 min 05 s");
        assert_eq!(duration(3_720_000), "1 h 02 min");
        let now = Timestamp::from_millis(10_000_000);
        assert_eq!(age(Timestamp::from_millis(9_999_000), now), "just now");
        assert_eq!(
            age(Timestamp::from_millis(10_000_000 - 180_000), now),
            "3 min ago"
        );
        assert_eq!(short_commit("0123456789abcdef"), "0123456");
        assert_eq!(short_commit("ab"), "ab");
        assert_eq!(message_title("first\nsecond"), "first");
    }
}
