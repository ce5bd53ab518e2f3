//! The dashboard's stylesheet and scripts, compiled into the binary and served under `/static/`.
//!
//! Pages link them with `?v=<hash of the content>`: such a URL never changes content, so it is
//! cached for a year (`immutable`); a URL without the current hash is cached briefly.

use std::sync::LazyLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::session::{PagePath, PageQuery};

/// One file served under `/static/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// Hex of the content's SHA-256, shortened.
    version: String,
    /// `/static/<name>?v=<version>`.
    url: String,
}

/// The files, by name.
static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        (
            "app.css",
            "text/css; charset=utf-8",
            include_str!("static/app.css"),
        ),
        (
            "build.js",
            "text/javascript; charset=utf-8",
            include_str!("static/build.js"),
        ),
        (
            "settings.js",
            "text/javascript; charset=utf-8",
            include_str!("static/settings.js"),
        ),
    ]
    .into_iter()
    .map(|(name, content_type, body)| {
        let version = hex::encode(&Sha256::digest(body.as_bytes())[..8]);
        Asset {
            name,
            content_type,
            body,
            url: format!("/static/{name}?v={version}"),
            version,
        }
    })
    .collect()
});

fn url_of(name: &str) -> &'static str {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .map_or("", |a| a.url.as_str())
}

/// URL of the stylesheet.
pub fn css_url() -> &'static str {
    url_of("app.css")
}

/// URL of the build page's script (the live log, search highlighting).
pub fn build_js_url() -> &'static str {
    url_of("build.js")
}

/// URL of the settings pages' script (copy buttons, the secret field of the variable form).
pub fn settings_js_url() -> &'static str {
    url_of("settings.js")
}

/// `?v=` of an asset URL.
#[derive(Deserialize)]
pub struct VersionQuery {
    v: Option<String>,
}

/// `GET /static/{name}`
pub async fn get_asset(
    PagePath(name): PagePath<String>,
    PageQuery(query): PageQuery<VersionQuery>,
) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return super::error::error_page(StatusCode::NOT_FOUND, "Not found", "No such file".into());
    };
    let cache = if query.v.as_deref() == Some(asset.version.as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=300"
    };
    let mut resp = asset.body.into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}
