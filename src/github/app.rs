//! A GitHub App: its JWT (RS256), installation tokens (cached until shortly before they expire) and the
//! check run and pull request comment calls Kiln makes.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::RsaPrivateKey;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Mutex;

use crate::domain::Timestamp;

/// Time limit of one GitHub API call.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// An installation token is renewed this long before it expires, in milliseconds.
const TOKEN_RENEW_MARGIN_MS: i64 = 5 * 60 * 1000;

/// GitHub App settings.
#[derive(Clone)]
pub struct AppConfig {
    /// `https://api.github.com`, or a fake in tests.
    pub api_url: String,
    pub app_id: String,
    pub private_key_pem: String,
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppConfig")
            .field("api_url", &self.api_url)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

/// A GitHub App client.
pub struct GithubApp {
    api_url: String,
    app_id: String,
    key: SigningKey<Sha256>,
    http: reqwest::Client,
    tokens: Mutex<HashMap<i64, (String, i64)>>,
}

/// Pages of a list read at most when looking for what an earlier attempt created.
const MAX_PAGES: usize = 10;

/// A check run as GitHub lists it (the fields Kiln reads).
#[derive(Debug, Clone, Deserialize)]
pub struct FoundCheckRun {
    pub id: i64,
    pub external_id: Option<String>,
    /// `queued`, `in_progress` or `completed`.
    pub status: String,
    /// Set once `completed`.
    pub conclusion: Option<String>,
}

#[derive(Deserialize)]
struct CheckRunList {
    check_runs: Vec<FoundCheckRun>,
}

/// A pull request comment as GitHub lists it (the fields Kiln reads).
#[derive(Debug, Clone, Deserialize)]
pub struct FoundComment {
    pub id: i64,
    #[serde(default)]
    pub body: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: String,
    expires_at: String,
}

impl GithubApp {
    /// Reads the private key (PKCS#1 `RSA PRIVATE KEY`, as GitHub issues them, or PKCS#8).
    pub fn new(config: &AppConfig) -> anyhow::Result<GithubApp> {
        let pem = config.private_key_pem.trim();
        let key = RsaPrivateKey::from_pkcs1_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs8_pem(pem))
            .context("the GitHub App private key is not an RSA key in PEM")?;
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the GitHub client")?;
        Ok(GithubApp {
            api_url: config.api_url.trim_end_matches('/').to_owned(),
            app_id: config.app_id.clone(),
            key: SigningKey::<Sha256>::new(key),
            http,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The App's JWT: issued a minute in the past (clock drift), valid for nine minutes.
    pub fn jwt(&self) -> String {
        let now = Timestamp::now().millis() / 1000;
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = json!({"iat": now - 60, "exp": now + 540, "iss": self.app_id});
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{payload}");
        let signature = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }

    /// An installation access token, from the cache while it has more than five minutes left.
    pub async fn installation_token(&self, installation: i64) -> anyhow::Result<String> {
        let mut tokens = self.tokens.lock().await;
        let now = Timestamp::now().millis();
        if let Some((token, expires)) = tokens.get(&installation)
            && *expires - TOKEN_RENEW_MARGIN_MS > now
        {
            return Ok(token.clone());
        }
        let url = format!(
            "{}/app/installations/{installation}/access_tokens",
            self.api_url
        );
        let answer: TokenAnswer = self
            .call(reqwest::Method::POST, &url, &self.jwt(), None)
            .await
            .context("exchanging the App JWT for an installation token")?;
        let expires = chrono::DateTime::parse_from_rfc3339(&answer.expires_at)
            .map(|t| t.timestamp_millis())
            .unwrap_or(now + 60 * 60 * 1000);
        tokens.insert(installation, (answer.token.clone(), expires));
        Ok(answer.token)
    }

    /// The id of the App's installation that covers the repository `owner/repo` (`GET
    /// /repos/{owner}/{repo}/installation`, with the App's JWT); `None` when the App is not installed
    /// on it (GitHub answers 404). Errors: invalid names, an unreachable API or another answer.
    pub async fn repo_installation(&self, owner: &str, repo: &str) -> anyhow::Result<Option<i64>> {
        crate::git::check_slug("repository owner", owner)?;
        crate::git::check_slug("repository name", repo)?;
        let url = format!("{}/repos/{owner}/{repo}/installation", self.api_url);
        let resp = self
            .send(reqwest::Method::GET, &url, &self.jwt(), None)
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let found: Value = checked(reqwest::Method::GET, &url, resp).await?;
        found["id"]
            .as_i64()
            .map(Some)
            .context("GitHub's installation has no id")
    }

    /// Creates a check run; returns its id.
    pub async fn create_check_run(
        &self,
        installation: i64,
        owner: &str,
        repo: &str,
        body: Value,
    ) -> anyhow::Result<i64> {
        let token = self.installation_token(installation).await?;
        let url = format!("{}/repos/{owner}/{repo}/check-runs", self.api_url);
        let created: Value = self
            .call(reqwest::Method::POST, &url, &token, Some(body))
            .await?;
        created["id"]
            .as_i64()
            .context("GitHub's check run has no id")
    }

    /// Updates a check run.
    pub async fn update_check_run(
        &self,
        installation: i64,
        owner: &str,
        repo: &str,
        id: i64,
        body: Value,
    ) -> anyhow::Result<()> {
        let token = self.installation_token(installation).await?;
        let url = format!("{}/repos/{owner}/{repo}/check-runs/{id}", self.api_url);
        let _: Value = self
            .call(reqwest::Method::PATCH, &url, &token, Some(body))
            .await?;
        Ok(())
    }

    /// The check run named `name` on commit `sha` whose `external_id` is `external_id`, if GitHub has
    /// one (`GET /repos/{owner}/{repo}/commits/{sha}/check-runs`, at most [`MAX_PAGES`] pages of 100):
    /// what an earlier attempt whose answer was lost created.
    pub async fn find_check_run(
        &self,
        installation: i64,
        owner: &str,
        repo: &str,
        sha: &str,
        name: &str,
        external_id: &str,
    ) -> anyhow::Result<Option<FoundCheckRun>> {
        let token = self.installation_token(installation).await?;
        let base = format!(
            "{}/repos/{owner}/{repo}/commits/{sha}/check-runs",
            self.api_url
        );
        for page in 1..=MAX_PAGES {
            let url = reqwest::Url::parse_with_params(
                &base,
                [
                    ("check_name", name),
                    ("filter", "all"),
                    ("per_page", "100"),
                    ("page", &page.to_string()),
                ],
            )
            .context("building a check runs URL")?;
            let listed: CheckRunList = self
                .call(reqwest::Method::GET, url.as_str(), &token, None)
                .await?;
            let full = listed.check_runs.len() >= 100;
            if let Some(found) = listed
                .check_runs
                .into_iter()
                .find(|c| c.external_id.as_deref() == Some(external_id))
            {
                return Ok(Some(found));
            }
            if !full {
                break;
            }
        }
        Ok(None)
    }

    /// The first comment on pull request `number` whose text contains `marker`, if any (`GET
    /// /repos/{owner}/{repo}/issues/{number}/comments`, at most [`MAX_PAGES`] pages of 100): what an
    /// earlier attempt whose answer was lost created.
    pub async fn find_comment(
        &self,
        installation: i64,
        owner: &str,
        repo: &str,
        number: i64,
        marker: &str,
    ) -> anyhow::Result<Option<FoundComment>> {
        let token = self.installation_token(installation).await?;
        for page in 1..=MAX_PAGES {
            let url = format!(
                "{}/repos/{owner}/{repo}/issues/{number}/comments?per_page=100&page={page}",
                self.api_url
            );
            let listed: Vec<FoundComment> =
                self.call(reqwest::Method::GET, &url, &token, None).await?;
            let full = listed.len() >= 100;
            if let Some(found) = listed.into_iter().find(|c| c.body.contains(marker)) {
                return Ok(Some(found));
            }
            if !full {
                break;
            }
        }
        Ok(None)
    }

    /// Comments on a pull request; returns the comment's id.
    pub async fn create_comment(
        &self,
        installation: i64,
        owner: &str,
        repo: &str,
        number: i64,
        body: &str,
    ) -> anyhow::Result<i64> {
        let token = self.installation_token(installation).await?;
        let url = format!(
            "{}/repos/{owner}/{repo}/issues/{number}/comments",
            self.api_url
        );
        let created: Value = self
            .call(
                reqwest::Method::POST,
                &url,
                &token,
                Some(json!({"body": body})),
            )
            .await?;
        created["id"].as_i64().context("GitHub's comment has no id")
    }

    /// Replaces a comment's text.
    pub async fn update_comment(
        &self,
        installation: i64,
        owner: &str,
        repo: &str,
        id: i64,
        body: &str,
    ) -> anyhow::Result<()> {
        let token = self.installation_token(installation).await?;
        let url = format!("{}/repos/{owner}/{repo}/issues/comments/{id}", self.api_url);
        let _: Value = self
            .call(
                reqwest::Method::PATCH,
                &url,
                &token,
                Some(json!({"body": body})),
            )
            .await?;
        Ok(())
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        url: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let resp = self.send(method.clone(), url, bearer, body).await?;
        checked(method, url, resp).await
    }

    /// Sends one API request; the answer's status is the caller's to check.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut req = self
            .http
            .request(method.clone(), url)
            .bearer_auth(bearer)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28");
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.with_context(|| format!("{method} {url}"))
    }
}

/// GitHub answered a call with an error status.
#[derive(Debug, thiserror::Error)]
#[error("{method} {url}: {status}: {text}")]
pub struct ApiError {
    pub method: reqwest::Method,
    pub url: String,
    pub status: reqwest::StatusCode,
    /// The start of GitHub's answer (at most 300 characters; never the token, which is only sent).
    pub text: String,
}

impl ApiError {
    /// The status GitHub answered, if `e` (anywhere in its chain) is an [`ApiError`].
    pub fn status_of(e: &anyhow::Error) -> Option<reqwest::StatusCode> {
        e.chain()
            .find_map(|cause| cause.downcast_ref::<ApiError>())
            .map(|api| api.status)
    }
}

/// The answer's JSON body when its status is a success, else an [`ApiError`] with GitHub's text
/// (never the token).
async fn checked<T: serde::de::DeserializeOwned>(
    method: reqwest::Method,
    url: &str,
    resp: reqwest::Response,
) -> anyhow::Result<T> {
    let status = resp.status();
    if !status.is_success() {
        let text: String = resp
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        return Err(ApiError {
            method,
            url: url.to_owned(),
            status,
            text,
        }
        .into());
    }
    resp.json()
        .await
        .with_context(|| format!("{method} {url}: unreadable answer"))
}
