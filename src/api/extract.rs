//! Extractors whose rejections are envelope errors instead of axum's plain-text answers.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ResultInfo};
use crate::domain::{AccountId, Invalid};

/// Maximum request body size of API routes, in bytes (1 MiB, DESIGN.md §2).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The largest body a route accepts, in bytes: a request extension set per route with
/// `.layer(Extension(BodyLimit(n)))` (the router sets [`MAX_BODY_BYTES`] for all, the webhook route
/// its own). [`read_body`] enforces it and names it in the 413 message.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Reads a whole request body within the route's [`BodyLimit`] ([`MAX_BODY_BYTES`] when none is set).
///
/// Errors: 413 over the limit (refused from `Content-Length` before reading when it is declared), 408
/// when the body read timeout of [`crate::listen`] passes first, 400 for a body that cannot be read.
pub async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    let limit = req
        .extensions()
        .get::<BodyLimit>()
        .map_or(MAX_BODY_BYTES, |l| l.0);
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(body_error(&*e, limit)),
    }
}

/// The answer for a body that could not be read: which of the causes in `e`'s chain it was.
fn body_error(e: &(dyn std::error::Error + 'static), limit: usize) -> ApiError {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return ApiError::PayloadTooLarge { limit };
        }
        if let Some(t) = c.downcast_ref::<crate::listen::BodyTimedOut>() {
            return ApiError::BodyTimeout { timeout: t.0 };
        }
        cause = c.source();
    }
    ApiError::BadRequest(format!("could not read the request body: {e}"))
}

/// Size a page of a list or of log lines is kept under, in bytes of JSON (1 MiB): a page holds fewer
/// items when they are large, and only a single item larger than this makes a page larger.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// A JSON body; errors name the offending field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::BadRequest(
                "request body is required (a JSON object)".into(),
            ));
        }
        // JSON text is UTF-8 (RFC 8259); serde_json skips unknown fields without checking their bytes.
        if let Err(e) = std::str::from_utf8(&bytes) {
            return Err(ApiError::BadRequest(format!(
                "invalid request body: malformed JSON: {e}"
            )));
        }
        // Every body is an object; serde would also take a struct as an array of its field values.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::BadRequest(
                "invalid request body: must be a JSON object".into(),
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let inner_is_syntax = inner.is_syntax() || inner.is_eof();
            let what = if inner_is_syntax {
                format!("malformed JSON: {inner}")
            } else {
                inner.to_string()
            };
            if inner_is_syntax || path == "." || path.is_empty() {
                ApiError::BadRequest(format!("invalid request body: {what}"))
            } else {
                ApiError::BadRequest(format!("{path}: {what}"))
            }
        })?;
        de.end()
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
        Ok(ApiJson(value))
    }
}

/// Drains and ignores a body (endpoints without one), still enforcing the size limit.
pub struct NoBody;

impl<S: Send + Sync> FromRequest<S> for NoBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        read_body(req).await?;
        Ok(NoBody)
    }
}

/// Path parameters as text, keyed by name; handlers parse them into ids.
pub struct PathParams(HashMap<String, String>);

impl PathParams {
    /// A parameter that the route declares.
    pub fn get(&self, name: &str) -> Result<&str, ApiError> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("route has no parameter {name}")))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PathParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid path parameter: {}", e.body_text())))
            .and_then(|p| {
                if p.0.values().any(|v| v.contains('\0')) {
                    return Err(ApiError::BadRequest(
                        "invalid path parameter: must not contain NUL characters".into(),
                    ));
                }
                Ok(PathParams(p.0))
            })
    }
}

/// Query parameters as text (the last value wins); handlers validate the ones they use.
pub struct QueryParams(HashMap<String, String>);

impl QueryParams {
    /// An optional parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A required parameter.
    pub fn require(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .ok_or_else(|| ApiError::BadRequest(format!("{name}: query parameter is required")))
    }

    /// `page` and `per_page`, validated.
    pub fn paging(&self) -> Result<Paging, ApiError> {
        let page = int_param(self.get("page"), "page", 1, MAX_PAGE, 1)?;
        let per_page = int_param(
            self.get("per_page"),
            "per_page",
            1,
            MAX_PER_PAGE,
            DEFAULT_PER_PAGE,
        )?;
        Ok(Paging { page, per_page })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))
            .and_then(|q| {
                if q.0
                    .iter()
                    .any(|(k, v)| k.contains('\0') || v.contains('\0'))
                {
                    return Err(ApiError::BadRequest(
                        "invalid query string: must not contain NUL characters".into(),
                    ));
                }
                Ok(QueryParams(q.0.into_iter().collect()))
            })
    }
}

/// Largest accepted `page`.
pub const MAX_PAGE: u32 = 1_000_000;
/// Largest accepted `per_page`.
pub const MAX_PER_PAGE: u32 = 200;
/// `per_page` when none is given.
pub const DEFAULT_PER_PAGE: u32 = 50;

fn int_param(
    raw: Option<&str>,
    name: &str,
    min: u32,
    max: u32,
    default: u32,
) -> Result<u32, Invalid> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.trim().parse::<i64>() {
        Ok(n) if n >= i64::from(min) && n <= i64::from(max) => Ok(n as u32),
        _ => Err(Invalid::field(
            name,
            format!("must be an integer from {min} to {max}"),
        )),
    }
}

/// Page-based paging parameters.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub page: u32,
    pub per_page: u32,
}

impl Paging {
    /// This paging with `per_page` lowered so that a page of items of at most `largest_item` bytes
    /// of JSON stays under [`MAX_PAGE_BYTES`] (never below one item). The same list gives the same
    /// `per_page` on every page, so paging with it skips nothing; `result_info` reports it.
    pub fn fit(self, largest_item: u64) -> Paging {
        let fits = (MAX_PAGE_BYTES as u64 / largest_item.max(1)).max(1);
        Paging {
            page: self.page,
            per_page: self.per_page.min(u32::try_from(fits).unwrap_or(u32::MAX)),
        }
    }

    /// `result_info` for a page of `count` items out of `total`.
    pub fn info(self, count: usize, total: i64) -> ResultInfo {
        let total_pages = (total + i64::from(self.per_page) - 1) / i64::from(self.per_page);
        ResultInfo {
            page: self.page,
            per_page: self.per_page,
            count: count as u32,
            total_count: total,
            total_pages,
            next_page: i64::from(self.page) < total_pages,
        }
    }
}

/// The throttling key of the request's client (`None` when the server did not record its address).
pub struct Client(pub Option<super::throttle::ClientKey>);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Client(super::throttle::client_key(&parts.extensions)))
    }
}

/// The account of the request, checked against the caller's credentials by the auth layer.
pub struct Account(pub AccountId);

impl<S: Send + Sync> FromRequestParts<S> for Account {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<AccountId>()
            .cloned()
            .map(Account)
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("route is not behind the auth layer"))
            })
    }
}

/// A comma-separated id list: 1–20 non-empty entries.
pub fn id_list<'a>(name: &str, raw: &'a str) -> Result<Vec<&'a str>, Invalid> {
    let ids: Vec<&str> = raw.split(',').map(str::trim).collect();
    if ids.iter().any(|s| s.is_empty()) {
        return Err(Invalid::field(
            name,
            "must be a comma-separated list without empty entries",
        ));
    }
    if ids.len() > crate::domain::MAX_IDS_PER_QUERY {
        return Err(Invalid::field(
            name,
            format!(
                "at most {} ids are allowed",
                crate::domain::MAX_IDS_PER_QUERY
            ),
        ));
    }
    Ok(ids)
}

/// A provider identifier (`provider_account_id`, `repo_id`) sent as a JSON string or, as GitHub
/// itself spells them, a non-negative JSON integer, which stands for its decimal string.
#[derive(Debug, Clone)]
pub struct IdText(pub String);

impl<'de> serde::Deserialize<'de> for IdText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IdText;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a non-negative integer")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IdText, E> {
                Ok(IdText(v.to_owned()))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IdText, E> {
                Ok(IdText(v.to_string()))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IdText, E> {
                u64::try_from(v)
                    .map(|v| IdText(v.to_string()))
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }

            /// JSON Schema counts `892.0` as an integer; so does Kiln, when it is one below 2^64.
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<IdText, E> {
                if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                    Ok(IdText((v as u64).to_string()))
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl schemars::JsonSchema for IdText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ProviderId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let text = super::schema::text(crate::domain::MAX_NAME_LEN);
        schemars::json_schema!({
            "description": "A provider's identifier: a string, or a non-negative integer standing for its decimal string",
            "oneOf": [text, {"type": "integer", "minimum": 0, "maximum": u64::MAX}],
        })
    }
}
