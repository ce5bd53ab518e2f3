//! The npm registry client: abbreviated packuments (cached in memory for a few minutes) and
//! tarball downloads hashed as they stream to disk, under a time limit and a size cap.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::integrity::Digests;

/// How long a fetched packument is reused.
const PACKUMENT_TTL: Duration = Duration::from_secs(5 * 60);
/// How long a registry that could not be reached is not asked again for a package (builds then fall
/// back at once to a stale answer or to what is installed, instead of each waiting for a timeout).
const FAILURE_TTL: Duration = Duration::from_secs(60);
/// Longest wait for a packument, in total.
const PACKUMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest packument accepted, in bytes (the biggest we use, `pnpm`'s, is about 3.5 MB).
const MAX_PACKUMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Longest silence from the server while a response streams.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// What we read of an (abbreviated) packument.
#[derive(Debug, Deserialize)]
pub(crate) struct Packument {
    #[serde(default, rename = "dist-tags")]
    pub dist_tags: HashMap<String, String>,
    #[serde(default)]
    pub versions: HashMap<String, VersionMeta>,
}

/// One published version.
#[derive(Debug, Deserialize)]
pub(crate) struct VersionMeta {
    pub dist: Dist,
}

/// Where a version's tarball is and its published checksums.
#[derive(Debug, Deserialize)]
pub(crate) struct Dist {
    pub tarball: String,
    #[serde(default)]
    pub integrity: Option<String>,
    #[serde(default)]
    pub shasum: Option<String>,
}

/// Why a registry request failed.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// No answer (connection refused, DNS, timeout, 5xx): callers may fall back to what is installed.
    Unreachable(String),
    /// The registry answered, and the answer is unusable (404, bad JSON, too big).
    Failed(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Unreachable(m) | FetchError::Failed(m) => f.write_str(m),
        }
    }
}

/// A registry at one base URL.
pub(crate) struct Registry {
    base: reqwest::Url,
    http: reqwest::Client,
    cache: Mutex<HashMap<String, (Instant, Arc<Packument>)>>,
    /// Recent failures to reach the registry, by package: when, and why.
    failures: Mutex<HashMap<String, (Instant, String)>>,
}

impl Registry {
    /// `base`: the registry URL, e.g. `https://registry.npmjs.org/`.
    pub(crate) fn new(base: &str) -> anyhow::Result<Registry> {
        let mut base = reqwest::Url::parse(base.trim())
            .map_err(|e| anyhow::anyhow!("npm registry URL {:?}: {e}", redact_str(base)))?;
        anyhow::ensure!(
            matches!(base.scheme(), "http" | "https"),
            "npm registry URL must be http or https"
        );
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("building the npm registry client: {e}"))?;
        Ok(Registry {
            base,
            http,
            cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// The packument of `name` (`@scope/name` allowed), from the cache when fresh.
    pub(crate) async fn packument(&self, name: &str) -> Result<Arc<Packument>, FetchError> {
        if let Some(hit) = self.cached(name, PACKUMENT_TTL) {
            return Ok(hit);
        }
        let recent_failure = self.failures.lock().ok().and_then(|f| {
            f.get(name)
                .filter(|(at, _)| at.elapsed() < FAILURE_TTL)
                .map(|(_, why)| why.clone())
        });
        let fetched = match recent_failure {
            Some(why) => Err(FetchError::Unreachable(why)),
            None => self.fetch_packument(name).await,
        };
        match fetched {
            Err(FetchError::Unreachable(why)) => {
                if let Ok(mut failures) = self.failures.lock() {
                    failures
                        .entry(name.to_owned())
                        .or_insert_with(|| (Instant::now(), why.clone()));
                }
                // A stale answer beats none while the registry cannot be reached.
                self.cached(name, Duration::MAX)
                    .ok_or(FetchError::Unreachable(why))
            }
            Ok(p) => {
                if let Ok(mut failures) = self.failures.lock() {
                    failures.remove(name);
                }
                Ok(p)
            }
            Err(e) => Err(e),
        }
    }

    async fn fetch_packument(&self, name: &str) -> Result<Arc<Packument>, FetchError> {
        // Scoped names keep their `@` and encode the slash, as npm does.
        let url = self
            .base
            .join(&name.replace('/', "%2f"))
            .map_err(|e| FetchError::Failed(format!("package name {name:?}: {e}")))?;
        let shown = redact(&url);
        let response = self
            .http
            .get(url)
            .header(
                reqwest::header::ACCEPT,
                "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8",
            )
            .timeout(PACKUMENT_TIMEOUT)
            .send()
            .await
            .map_err(|e| FetchError::Unreachable(format!("GET {shown}: {}", describe(&e))))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(FetchError::Unreachable(format!(
                "GET {shown}: HTTP {status}"
            )));
        }
        if !status.is_success() {
            return Err(FetchError::Failed(format!("GET {shown}: HTTP {status}")));
        }
        let body = read_capped(response, MAX_PACKUMENT_BYTES)
            .await
            .map_err(|e| FetchError::Unreachable(format!("GET {shown}: {e}")))?;
        let packument: Packument = serde_json::from_slice(&body)
            .map_err(|e| FetchError::Failed(format!("GET {shown}: not a packument: {e}")))?;
        let packument = Arc::new(packument);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(name.to_owned(), (Instant::now(), packument.clone()));
        }
        Ok(packument)
    }

    fn cached(&self, name: &str, ttl: Duration) -> Option<Arc<Packument>> {
        let cache = self.cache.lock().ok()?;
        let (at, p) = cache.get(name)?;
        (at.elapsed() < ttl).then(|| p.clone())
    }

    /// Streams `url` into a new file at `dest`, hashing it on the way. Fails when the whole transfer
    /// takes longer than `timeout` or the body exceeds `max_bytes`.
    pub(crate) async fn download(
        &self,
        url: &str,
        dest: &Path,
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<Digests, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("tarball URL: {e}"))?;
        let shown = redact(&url);
        let work = async {
            let mut response = self
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| format!("GET {shown}: {}", describe(&e)))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("GET {shown}: HTTP {status}"));
            }
            if response.content_length().is_some_and(|n| n > max_bytes) {
                return Err(too_big(&shown, max_bytes));
            }
            let mut file = tokio::fs::File::create(dest)
                .await
                .map_err(|e| format!("creating {}: {e}", dest.display()))?;
            let mut total: u64 = 0;
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| format!("GET {shown}: {}", describe(&e)))?
            {
                total = total.saturating_add(chunk.len() as u64);
                if total > max_bytes {
                    return Err(too_big(&shown, max_bytes));
                }
                file.write_all(&chunk)
                    .await
                    .map_err(|e| format!("writing {}: {e}", dest.display()))?;
            }
            file.flush()
                .await
                .map_err(|e| format!("writing {}: {e}", dest.display()))?;
            // Hashing ~50 MB five ways is CPU work: off the async runtime, whose other tasks (lease
            // renewals, log batches) must keep running.
            let path = dest.to_path_buf();
            tokio::task::spawn_blocking(move || super::integrity::hash_file(&path))
                .await
                .map_err(|e| format!("hashing the download: {e}"))?
                .map_err(|e| format!("reading {}: {e}", dest.display()))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "GET {shown}: download timed out after {}s",
                timeout.as_secs_f64()
            )),
        }
    }
}

fn too_big(shown: &str, max_bytes: u64) -> String {
    format!(
        "GET {shown}: the tarball is larger than the {} MiB limit",
        max_bytes / (1024 * 1024)
    )
}

async fn read_capped(mut response: reqwest::Response, max: u64) -> Result<Vec<u8>, String> {
    if response.content_length().is_some_and(|n| n > max) {
        return Err(format!("larger than {} MiB", max / (1024 * 1024)));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        if (body.len() + chunk.len()) as u64 > max {
            return Err(format!("larger than {} MiB", max / (1024 * 1024)));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error without its URL (which may hold credentials), with its causes.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    // reqwest's own message names the URL; ours is printed by the caller, without secrets.
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "");
        text = text.replace(" ()", "");
    }
    text
}

/// `url` without user, password or query.
pub(crate) fn redact(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.to_string()
}

fn redact_str(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| redact(&u))
        .unwrap_or_else(|_| "<unparseable>".to_owned())
}
