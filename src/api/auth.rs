//! Authentication and authorisation: Bearer tokens or `X-Auth-Email` + `X-Auth-Key`, permission and
//! account scope checked before any handler runs; a client that keeps presenting wrong credentials
//! is throttled ([`super::throttle`]).

use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::throttle::{AuthThrottle, client_key};
use crate::crypto::hash_credential;
use crate::domain::{AccountId, ApiToken, CredentialKind, Permission};
use crate::store::Store;

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials (the deploy-hook trigger: its id is the secret).
    Public,
    /// Workers CI Read or Write.
    Read,
    /// Workers CI Write.
    Write,
    /// Any valid credentials, on a route outside every account (`listAccounts`): the handler gets
    /// the caller's [`ApiToken`] and answers only with what its scope allows.
    Caller,
}

/// State of the auth layer of one route.
#[derive(Clone)]
pub struct Gate {
    pub store: Store,
    pub access: Access,
    /// Failed authentications per client, shared by every route.
    pub throttle: std::sync::Arc<AuthThrottle>,
}

/// Whether a request presents credentials to look up (a guess, when they turn out wrong): an
/// `Authorization` header, or both `X-Auth-Email` and `X-Auth-Key`.
fn presents_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key("authorization")
        || headers.contains_key("x-auth-email") && headers.contains_key("x-auth-key")
}

/// The live API token whose secret is `secret` (surrounding blanks ignored), as a Bearer token is
/// looked up; `Unauthenticated` when there is none. The dashboard's sign-in checks tokens with it.
pub async fn token_by_secret(store: &Store, secret: &str) -> Result<ApiToken, ApiError> {
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(ApiError::Unauthenticated);
    }
    store
        .get_api_token_by_hash(CredentialKind::Token, &hash_credential(secret))
        .await?
        .ok_or(ApiError::Unauthenticated)
}

/// Looks up the caller's credentials; `Unauthenticated` when absent or unknown.
pub async fn authenticate(store: &Store, headers: &HeaderMap) -> Result<ApiToken, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(auth) = header("authorization") {
        let (scheme, token) = auth.split_once(' ').ok_or(ApiError::Unauthenticated)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(ApiError::Unauthenticated);
        }
        return token_by_secret(store, token).await;
    }
    if let (Some(email), Some(key)) = (header("x-auth-email"), header("x-auth-key")) {
        let found = store
            .get_api_token_by_hash(CredentialKind::GlobalKey, &hash_credential(key))
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        let matches = found
            .email
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case(email));
        return if matches {
            Ok(found)
        } else {
            Err(ApiError::Unauthenticated)
        };
    }
    Err(ApiError::Unauthenticated)
}

/// Middleware: authenticates, then checks permission and account scope, and hands the account to the
/// handler as a request extension.
pub async fn authorize(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    match check(&gate, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn check(gate: &Gate, req: Request) -> Result<Request, ApiError> {
    if gate.access == Access::Public {
        return Ok(req);
    }
    let client = client_key(req.extensions());
    if let Some(retry_after_secs) = client.and_then(|c| gate.throttle.check(c)) {
        return Err(ApiError::RateLimited { retry_after_secs });
    }
    let token = match authenticate(&gate.store, req.headers()).await {
        Err(ApiError::Unauthenticated) => {
            if let Some(c) = client.filter(|_| presents_credentials(req.headers())) {
                gate.throttle.record_failure(c);
            }
            return Err(ApiError::Unauthenticated);
        }
        other => other?,
    };
    let (mut parts, body) = req.into_parts();
    if gate.access == Access::Caller {
        parts.extensions.insert(token);
        return Ok(Request::from_parts(parts, body));
    }
    let params = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| ApiError::BadRequest(format!("invalid path parameter: {}", e.body_text())))?;
    let raw_account = params
        .iter()
        .find(|(k, _)| *k == "account_id")
        .map(|(_, v)| v.to_owned())
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("authenticated route without account_id"))
        })?;
    let account = AccountId::parse(&raw_account)?;
    let needed = match gate.access {
        Access::Write => Permission::Write,
        _ => Permission::Read,
    };
    if !token.scope.allows(&account) {
        return Err(ApiError::Forbidden(
            "the credentials are not valid for this account",
        ));
    }
    if !token.permits(&account, needed) {
        return Err(ApiError::Forbidden(
            "the credentials lack the Workers CI Write permission",
        ));
    }
    parts.extensions.insert(account);
    Ok(Request::from_parts(parts, body))
}
