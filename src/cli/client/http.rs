//! Calls to a Kiln server's API (`/client/v4`): the Bearer token, the envelope read into `result`
//! or into an [`ApiFailure`] with the server's messages and codes, paging, and errors that name the
//! URL that could not be reached.

use std::time::Duration;

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

/// Longest a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a response may go without a byte arriving (the live log stream sends a keep-alive
/// comment every 15 s, so a silent minute is a dead connection).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a whole request may take (not the live log stream).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Items asked for per page when a command reads a whole list (the API allows 1–200).
pub const PER_PAGE: u32 = 100;

/// One entry of the envelope's `errors`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorItem {
    pub code: i64,
    pub message: String,
}

/// The server answered with an error envelope (or with something that is not an envelope).
#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub status: StatusCode,
    /// The envelope's errors; empty when the body was not an envelope.
    pub errors: Vec<ErrorItem>,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.errors.is_empty() {
            return write!(f, "HTTP {} (not a Kiln API answer)", self.status);
        }
        let parts: Vec<String> = self
            .errors
            .iter()
            .map(|e| format!("{} (code {})", e.message, e.code))
            .collect();
        write!(f, "{} [HTTP {}]", parts.join("; "), self.status.as_u16())
    }
}

impl std::error::Error for ApiFailure {}

/// `result_info` of a paginated list.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResultInfo {
    #[serde(default)]
    pub next_page: bool,
}

#[derive(Deserialize)]
struct Envelope {
    success: bool,
    #[serde(default)]
    errors: Vec<ErrorItem>,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

/// A client of one server with one token.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// The server's base URL, without a trailing slash.
    base: String,
    token: String,
}

impl Api {
    /// A client of the server at `base` (as [`super::config::normalize_url`] leaves it).
    pub fn new(base: &str, token: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("kiln-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .context("setting up the HTTP client")?;
        Ok(Api {
            http,
            base: base.to_owned(),
            token: token.to_owned(),
        })
    }

    /// `<base>/client/v4/<segments…>`, each segment percent-encoded (a Worker name or an id typed
    /// by the user cannot change the path).
    pub fn url(&self, segments: &[&str]) -> anyhow::Result<url::Url> {
        let mut url = url::Url::parse(&format!("{}{}", self.base, crate::api::BASE))
            .with_context(|| format!("{} is not a URL", self.base))?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("{} cannot have a path", self.base))?
            .extend(segments);
        Ok(url)
    }

    /// A request with the token, not yet sent.
    pub fn request(&self, method: Method, url: url::Url) -> reqwest::RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.token)
    }

    /// Sends `request` (to `url`, named in a connection error).
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &url::Url,
    ) -> anyhow::Result<reqwest::Response> {
        request.send().await.map_err(|e| connection_error(url, &e))
    }

    /// Calls the API and returns the envelope's `result` and `result_info`; an error envelope is an
    /// [`ApiFailure`].
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<(Value, Option<ResultInfo>)> {
        let url = self.url(segments)?;
        let mut request = self
            .request(method, url.clone())
            .query(query)
            .timeout(REQUEST_TIMEOUT);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(request, &url).await?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| connection_error(&url, &e))?;
        let envelope: Envelope = match serde_json::from_slice(&bytes) {
            Ok(envelope) => envelope,
            Err(_) => {
                return Err(ApiFailure {
                    status,
                    errors: Vec::new(),
                }
                .into());
            }
        };
        if !envelope.success || !status.is_success() {
            return Err(ApiFailure {
                status,
                errors: envelope.errors,
            }
            .into());
        }
        Ok((envelope.result, envelope.result_info))
    }

    /// `GET` and the `result`.
    pub async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> anyhow::Result<Value> {
        Ok(self.call(Method::GET, segments, query, None).await?.0)
    }

    /// Every item of a paginated list (at most `limit`), reading page after page while the server
    /// says another follows.
    pub async fn get_all(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        limit: Option<usize>,
    ) -> anyhow::Result<Vec<Value>> {
        let mut items = Vec::new();
        let per_page = limit.map_or(PER_PAGE, |l| (l.clamp(1, 200)) as u32);
        for page in 1u32.. {
            let mut q = query.to_vec();
            q.push(("page", page.to_string()));
            q.push(("per_page", per_page.to_string()));
            let (result, info) = self.call(Method::GET, segments, &q, None).await?;
            let Value::Array(page_items) = result else {
                anyhow::bail!("the server answered a list with something else");
            };
            let empty = page_items.is_empty();
            items.extend(page_items);
            if let Some(limit) = limit
                && items.len() >= limit
            {
                items.truncate(limit);
                break;
            }
            if empty || !info.is_some_and(|i| i.next_page) {
                break;
            }
        }
        Ok(items)
    }
}

/// A failed connection, naming the URL and the innermost cause (refused, timed out, TLS).
pub fn connection_error(url: &url::Url, e: &reqwest::Error) -> anyhow::Error {
    let mut cause = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    let what = if e.is_timeout() {
        "timed out"
    } else {
        "failed"
    };
    // The query (page numbers, cursors) is left out of the message.
    let mut shown = url.clone();
    shown.set_query(None);
    anyhow::anyhow!("request to {shown} {what}: {cause}")
}

/// Whether `e` is an API answer with this HTTP status.
pub fn has_status(e: &anyhow::Error, status: StatusCode) -> bool {
    e.downcast_ref::<ApiFailure>()
        .is_some_and(|f| f.status == status)
}
