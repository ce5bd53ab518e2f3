//! Event notifications (issue 9): subscriptions to builds' status changes, the events sent to them in
//! the hosted product's shape (PRODUCT-NOTES §10: `cf.workersBuilds.worker.build.*` with a camelCase
//! payload), their Standard Webhooks signing secrets, and the retry policy of deliveries. Pure: the
//! store keeps these, `crate::notify` sends them.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    AccountId, Build, BuildId, BuildOutcome, BuildStatus, Invalid, Timestamp, TriggerSource,
    WorkerId,
};

string_enum!(
    /// The type of a build event, as the hosted product names it.
    EventType {
        Started = "cf.workersBuilds.worker.build.started",
        Succeeded = "cf.workersBuilds.worker.build.succeeded",
        Failed = "cf.workersBuilds.worker.build.failed",
        Canceled = "cf.workersBuilds.worker.build.canceled",
    }
);

string_enum!(
    /// Where a delivery stands: `pending` (sent at its next attempt time), `delivered` (the endpoint
    /// answered 2xx) or `failed` (given up after the retry window).
    DeliveryStatus { Pending = "pending", Delivered = "delivered", Failed = "failed" }
);

impl EventType {
    /// The event announcing a build's change to `status` (with `outcome` once stopped), if any:
    /// `started` when the build goes `running` (as the hosted product's example, whose `started`
    /// event has status `running`); `succeeded` when it stops with `success`; `failed` when it
    /// stops with `fail` or `terminated` (timed out, lost runner); `canceled` when it stops
    /// `cancelled`. `queued`, `initializing` and `skipped` announce nothing.
    pub fn for_change(status: BuildStatus, outcome: Option<BuildOutcome>) -> Option<EventType> {
        match (status, outcome) {
            (BuildStatus::Running, _) => Some(EventType::Started),
            (BuildStatus::Stopped, Some(BuildOutcome::Success)) => Some(EventType::Succeeded),
            (BuildStatus::Stopped, Some(BuildOutcome::Fail | BuildOutcome::Terminated)) => {
                Some(EventType::Failed)
            }
            (BuildStatus::Stopped, Some(BuildOutcome::Cancelled)) => Some(EventType::Canceled),
            _ => None,
        }
    }
}

/// Most event subscriptions an account may have (each event is matched against all of them).
pub const MAX_SUBSCRIPTIONS_PER_ACCOUNT: i64 = 100;
/// Most Worker names in a subscription's filter.
pub const MAX_SUBSCRIPTION_WORKERS: usize = 100;
/// Longest destination URL, in bytes (as given, and once normalised).
pub const MAX_URL_LEN: usize = 2048;
/// Prefix of a Standard Webhooks signing secret; the base64 of the key follows.
pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest signing key accepted, in bytes (the Standard Webhooks specification's minimum).
pub const MIN_SECRET_KEY_BYTES: usize = 24;
/// Longest signing key accepted, in bytes (the Standard Webhooks specification's maximum).
pub const MAX_SECRET_KEY_BYTES: usize = 64;
/// Size of a key Kiln generates, in bytes.
const GENERATED_SECRET_KEY_BYTES: usize = 32;

/// A destination URL from a client: absolute, `http` or `https`, with a host, without credentials
/// (`user:password@`) or a fragment, no white space or control characters, at most [`MAX_URL_LEN`]
/// bytes as given and once normalised (the normalised form is returned and stored).
pub fn destination_url(field: &str, value: &str) -> Result<String, Invalid> {
    if value.len() > MAX_URL_LEN {
        return Err(Invalid::field(
            field,
            format!("must be at most {MAX_URL_LEN} bytes"),
        ));
    }
    // The URL parser would silently drop tabs and line breaks.
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Invalid::field(
            field,
            "must not contain white space or control characters",
        ));
    }
    let url = url::Url::parse(value).map_err(|e| {
        Invalid::field(
            field,
            format!("must be an absolute http or https URL ({e})"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Invalid::field(field, "must be an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Invalid::field(field, "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Invalid::field(
            field,
            "must not contain credentials (user:password@)",
        ));
    }
    if url.fragment().is_some() {
        return Err(Invalid::field(field, "must not have a fragment (#…)"));
    }
    let normalised = String::from(url);
    if normalised.len() > MAX_URL_LEN {
        return Err(Invalid::field(
            field,
            format!("must be at most {MAX_URL_LEN} bytes once normalised"),
        ));
    }
    Ok(normalised)
}

/// A Standard Webhooks signing secret, `whsec_<base64 of the key>`. Its text is shown once (in the
/// answer that created it) and otherwise only sealed in the store; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    text: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    /// Parses a secret from a client: [`SECRET_PREFIX`] then standard base64 (padded) of a key of
    /// [`MIN_SECRET_KEY_BYTES`]–[`MAX_SECRET_KEY_BYTES`] bytes. The error never shows the value.
    pub fn parse(field: &str, value: &str) -> Result<Self, Invalid> {
        let rule = || {
            Invalid::field(
                field,
                format!(
                    "must be {SECRET_PREFIX} followed by the standard base64 (with padding) of a \
                     {MIN_SECRET_KEY_BYTES}-{MAX_SECRET_KEY_BYTES} byte key"
                ),
            )
        };
        let encoded = value.strip_prefix(SECRET_PREFIX).ok_or_else(rule)?;
        let key = STANDARD.decode(encoded).map_err(|_| rule())?;
        if !(MIN_SECRET_KEY_BYTES..=MAX_SECRET_KEY_BYTES).contains(&key.len()) {
            return Err(rule());
        }
        Ok(WebhookSecret {
            text: value.to_owned(),
            key,
        })
    }

    /// A new random secret of [`GENERATED_SECRET_KEY_BYTES`] bytes.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut key = vec![0u8; GENERATED_SECRET_KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        WebhookSecret {
            text: format!("{SECRET_PREFIX}{}", STANDARD.encode(&key)),
            key,
        }
    }

    /// Reads a secret this service stored itself.
    pub fn from_stored(text: String) -> anyhow::Result<Self> {
        Self::parse("secret", &text)
            .map_err(|_| anyhow::anyhow!("stored signing secret is malformed"))
    }

    /// The secret as the client knows it (`whsec_…`).
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The HMAC key: the base64-decoded part.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

/// An event subscription as the API shows it (never with its secret).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EventSubscription {
    pub id: super::SubscriptionId,
    pub name: String,
    /// Where events are POSTed.
    pub url: String,
    /// The Workers (`external_script_id`) whose builds are announced; empty: every Worker.
    pub worker_names: Vec<WorkerId>,
    /// The event types sent; empty: every type.
    pub event_types: Vec<EventType>,
    /// A disabled subscription gets no new events and its pending deliveries wait.
    pub enabled: bool,
    pub created_on: Timestamp,
    pub modified_on: Timestamp,
    #[serde(skip)]
    #[schemars(skip)]
    pub account_id: AccountId,
}

impl EventSubscription {
    /// Whether an event of `event_type` about a build of `worker` goes to this subscription (it
    /// must also be enabled).
    pub fn wants(&self, worker: &WorkerId, event_type: EventType) -> bool {
        self.enabled
            && (self.worker_names.is_empty() || self.worker_names.contains(worker))
            && (self.event_types.is_empty() || self.event_types.contains(&event_type))
    }
}

/// The answer of `createEventSubscription`: the subscription and, this once, its secret.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CreatedSubscription {
    #[serde(flatten)]
    pub subscription: EventSubscription,
    /// The Standard Webhooks signing secret (`whsec_…`): shown only in this answer.
    pub secret: String,
}

/// One event for one subscription, as the deliveries list shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Delivery {
    /// Also the `webhook-id` header of every attempt (the same on retries and redeliveries).
    pub id: super::DeliveryId,
    pub event_type: EventType,
    pub build_uuid: BuildId,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: i64,
    /// The HTTP status of the last attempt's answer; null when none came (or none was made).
    pub response_code: Option<i64>,
    /// Why the last attempt failed, when it did: `HTTP <code>`, `timed out`, `connection failed`,
    /// `request failed`.
    pub last_error: Option<String>,
    pub created_on: Timestamp,
    pub last_attempt_on: Option<Timestamp>,
    /// When the next attempt is made; null unless `pending`.
    pub next_attempt_on: Option<Timestamp>,
    /// When it was delivered or given up.
    pub finished_on: Option<Timestamp>,
}

/// How failed deliveries are retried: after the `n`th failed attempt, wait `base * 2^(n-1)`, at most
/// `cap`, half of it fixed and half random ("equal jitter"); a delivery whose next attempt would come
/// after its retry window (`window` from when it was queued or redelivered) is marked failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub window: Duration,
}

impl Default for RetryPolicy {
    /// 5 s doubling to at most an hour, for a day: about 30 attempts.
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(60 * 60),
            window: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl RetryPolicy {
    /// The wait after `failed_attempts` (≥ 1) failed attempts; `jitter` in `[0, 1]` picks the random
    /// half.
    pub fn delay(&self, failed_attempts: i64, jitter: f64) -> Duration {
        let exponent = u32::try_from(failed_attempts.saturating_sub(1).clamp(0, 32)).unwrap_or(32);
        let full = self
            .base
            .checked_mul(2u32.saturating_pow(exponent))
            .unwrap_or(self.cap)
            .min(self.cap);
        let half = full / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// A build's status change, as the outbox records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub build: BuildId,
    pub account: AccountId,
    pub worker: WorkerId,
    pub status: BuildStatus,
    pub outcome: Option<BuildOutcome>,
    pub at: Timestamp,
}

/// The body of the event announcing `change` (of `build`, read after the change) to `subscription`:
/// the hosted envelope `{type, source, payload, metadata}` (PRODUCT-NOTES §10) as JSON text.
///
/// `status` and `buildOutcome` are the change's, spelt as the builds API spells them; the times are
/// the build's, each only once the build reached that status at the change (a `started` event has no
/// `stoppedAt` even when the build stopped before it was sent); times are RFC 3339 with milliseconds
/// like the API's. Unknown text (a branch of a commit build, the commit of a build not yet checked
/// out) is `""`. `buildTriggerSource` is the builds API's value, but `push` is `push_event`, as the
/// hosted events spell it.
pub fn event_body(
    event_type: EventType,
    change: &StatusChange,
    build: &Build,
    subscription: super::SubscriptionId,
) -> String {
    let reached = |s: BuildStatus| status_rank(change.status) >= status_rank(s);
    let meta = &build.build_trigger_metadata;
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let body = Event {
        kind: event_type.as_str(),
        source: Source {
            kind: "workersBuilds.worker",
            worker_name: change.worker.as_str(),
        },
        payload: Payload {
            build_uuid: change.build,
            status: change.status.as_str(),
            build_outcome: change.outcome.map(BuildOutcome::as_str),
            created_at: build.created_on,
            initializing_at: build
                .initializing_on
                .filter(|_| reached(BuildStatus::Initializing)),
            running_at: build.running_on.filter(|_| reached(BuildStatus::Running)),
            stopped_at: reached(BuildStatus::Stopped)
                .then(|| build.stopped_on.unwrap_or(change.at)),
            build_trigger_metadata: TriggerMetadata {
                build_trigger_source: match meta.build_trigger_source {
                    TriggerSource::Push => "push_event",
                    other => other.as_str(),
                },
                branch: text(&meta.branch),
                commit_hash: text(&meta.commit_hash),
                commit_message: text(&meta.commit_message),
                author: text(&meta.author),
                build_command: meta.build_command.clone(),
                deploy_command: meta.deploy_command.clone(),
                root_directory: meta.root_directory.clone(),
                repo_name: meta.repo_name.clone(),
                provider_account_name: meta.provider_account_name.clone(),
                provider_type: meta.provider_type.as_str(),
            },
        },
        metadata: Metadata {
            account_id: change.account.as_str(),
            event_subscription_id: subscription,
            event_schema_version: 1,
            event_timestamp: change.at,
        },
    };
    // Plain structs of strings, ids and times: serialising cannot fail.
    serde_json::to_string(&body).unwrap_or_default()
}

fn status_rank(s: BuildStatus) -> u8 {
    match s {
        BuildStatus::Queued => 0,
        BuildStatus::Initializing => 1,
        BuildStatus::Running => 2,
        BuildStatus::Stopped => 3,
    }
}

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    source: Source<'a>,
    payload: Payload,
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Source<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    worker_name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    build_uuid: BuildId,
    status: &'static str,
    build_outcome: Option<&'static str>,
    created_at: Timestamp,
    initializing_at: Option<Timestamp>,
    running_at: Option<Timestamp>,
    stopped_at: Option<Timestamp>,
    build_trigger_metadata: TriggerMetadata,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TriggerMetadata {
    build_trigger_source: &'static str,
    branch: String,
    commit_hash: String,
    commit_message: String,
    author: String,
    build_command: String,
    deploy_command: String,
    root_directory: String,
    repo_name: String,
    provider_account_name: String,
    provider_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Metadata<'a> {
    account_id: &'a str,
    event_subscription_id: super::SubscriptionId,
    event_schema_version: u32,
    event_timestamp: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_of_status_changes() {
        use BuildOutcome::*;
        use BuildStatus::*;
        assert_eq!(EventType::for_change(Queued, None), None);
        assert_eq!(EventType::for_change(Initializing, None), None);
        assert_eq!(
            EventType::for_change(Running, None),
            Some(EventType::Started)
        );
        assert_eq!(
            EventType::for_change(Stopped, Some(Success)),
            Some(EventType::Succeeded)
        );
        assert_eq!(
            EventType::for_change(Stopped, Some(Fail)),
            Some(EventType::Failed)
        );
        assert_eq!(
            EventType::for_change(Stopped, Some(Terminated)),
            Some(EventType::Failed)
        );
        assert_eq!(
            EventType::for_change(Stopped, Some(Cancelled)),
            Some(EventType::Canceled)
        );
        assert_eq!(EventType::for_change(Stopped, Some(Skipped)), None);
    }

    #[test]
    fn destination_urls() {
        for ok in [
            "https://hooks.example.com/services/T0/B0/x",
            "http://127.0.0.1:8080/hook?x=1",
            "https://[::1]/",
            "HTTPS://Example.COM",
        ] {
            assert!(destination_url("url", ok).is_ok(), "{ok}");
        }
        assert_eq!(
            destination_url("url", "HTTPS://Example.COM").unwrap(),
            "https://example.com/"
        );
        for bad in [
            "",
            "/relative",
            "example.com/hook",
            "ftp://example.com/",
            "file:///etc/passwd",
            "mailto:a@example.com",
            "https://user:pw@example.com/",
            "https://user@example.com/",
            "https://example.com/#frag",
            "https://exa\tmple.com/",
            " https://example.com/",
            "https://example.com/a b",
            "http://",
            "https://999.1.1.1/",
        ] {
            assert!(destination_url("url", bad).is_err(), "{bad:?}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(destination_url("url", &long).is_err());
        // Non-ASCII grows when percent-encoded: the normalised form is bounded too.
        let wide = format!("https://example.com/{}", "é".repeat(MAX_URL_LEN / 2 - 20));
        assert!(wide.len() <= MAX_URL_LEN);
        assert!(destination_url("url", &wide).is_err());
    }

    #[test]
    fn secrets() {
        let s = WebhookSecret::parse("secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(s.key().len(), 24);
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_",
            "whsec_c2hvcnQ=",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS!",
            &format!("whsec_{}", STANDARD.encode([7u8; 65])),
        ] {
            let e = WebhookSecret::parse("secret", bad).unwrap_err();
            assert!(
                bad.len() < 8 || !e.0.contains(bad),
                "the error shows the value"
            );
        }
        let g = WebhookSecret::generate();
        assert_eq!(WebhookSecret::parse("secret", g.expose()).unwrap(), g);
        assert_eq!(g.key().len(), 32);
        assert_ne!(g, WebhookSecret::generate());
        assert_eq!(format!("{g:?}"), "WebhookSecret(..)");
    }

    fn build(status: BuildStatus, outcome: Option<BuildOutcome>) -> Build {
        use crate::domain::*;
        let t = |ms: i64| Timestamp::from_millis(1_746_067_737_132 + ms);
        let account = AccountId::parse("f9f79265f388666de8122cfb508d7776").unwrap();
        let connection = RepoConnection {
            repo_connection_uuid: RepoConnectionId::new(),
            provider_type: ProviderType::Github,
            provider_account_id: "1".into(),
            provider_account_name: "github-user".into(),
            repo_id: "2".into(),
            repo_name: "my-worker-repo".into(),
            created_on: t(0),
            modified_on: t(0),
            deleted_on: None,
            account_id: account.clone(),
        };
        let trigger = BuildTrigger {
            trigger_uuid: TriggerId::new(),
            trigger_name: "prod".into(),
            external_script_id: WorkerId::parse("w", "my-worker").unwrap(),
            repo_connection: connection,
            build_command: "npm run build".into(),
            deploy_command: "wrangler deploy".into(),
            root_directory: "/".into(),
            branch_includes: vec![],
            branch_excludes: vec![],
            path_includes: vec![],
            path_excludes: vec![],
            build_caching_enabled: false,
            created_on: t(0),
            modified_on: t(0),
            deleted_on: None,
        };
        Build {
            build_uuid: BuildId::new(),
            status,
            build_outcome: outcome,
            created_on: t(0),
            modified_on: t(63_000),
            initializing_on: Some(t(1000)),
            running_on: Some(t(2000)),
            stopped_on: Some(t(63_000)).filter(|_| status == BuildStatus::Stopped),
            pull_request: None,
            trigger,
            build_trigger_metadata: BuildTriggerMetadata {
                build_trigger_source: TriggerSource::Push,
                branch: Some("main".into()),
                commit_hash: Some("abc123def456".into()),
                commit_message: Some("Fix bug in authentication".into()),
                author: Some("developer@example.com".into()),
                build_command: "npm run build".into(),
                deploy_command: "wrangler deploy".into(),
                build_token_name: None,
                build_token_uuid: BuildTokenId::new(),
                environment_variables: Default::default(),
                provider_type: ProviderType::Github,
                provider_account_name: "github-user".into(),
                repo_name: "my-worker-repo".into(),
                root_directory: "/".into(),
            },
            account_id: account,
        }
    }

    #[test]
    fn event_bodies_have_the_hosted_shape() {
        let b = build(BuildStatus::Stopped, Some(BuildOutcome::Fail));
        let subscription = crate::domain::SubscriptionId::new();
        let change = StatusChange {
            build: b.build_uuid,
            account: b.account_id.clone(),
            worker: WorkerId::parse("w", "my-worker").unwrap(),
            status: BuildStatus::Stopped,
            outcome: Some(BuildOutcome::Fail),
            at: Timestamp::from_millis(1_746_067_800_132),
        };
        let body: serde_json::Value =
            serde_json::from_str(&event_body(EventType::Failed, &change, &b, subscription))
                .unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "cf.workersBuilds.worker.build.failed",
                "source": {"type": "workersBuilds.worker", "workerName": "my-worker"},
                "payload": {
                    "buildUuid": b.build_uuid.to_string(),
                    "status": "stopped",
                    "buildOutcome": "fail",
                    "createdAt": "2025-05-01T02:48:57.132Z",
                    "initializingAt": "2025-05-01T02:48:58.132Z",
                    "runningAt": "2025-05-01T02:48:59.132Z",
                    "stoppedAt": "2025-05-01T02:50:00.132Z",
                    "buildTriggerMetadata": {
                        "buildTriggerSource": "push_event",
                        "branch": "main",
                        "commitHash": "abc123def456",
                        "commitMessage": "Fix bug in authentication",
                        "author": "developer@example.com",
                        "buildCommand": "npm run build",
                        "deployCommand": "wrangler deploy",
                        "rootDirectory": "/",
                        "repoName": "my-worker-repo",
                        "providerAccountName": "github-user",
                        "providerType": "github"
                    }
                },
                "metadata": {
                    "accountId": "f9f79265f388666de8122cfb508d7776",
                    "eventSubscriptionId": subscription.to_string(),
                    "eventSchemaVersion": 1,
                    "eventTimestamp": "2025-05-01T02:50:00.132Z"
                }
            })
        );
    }

    #[test]
    fn an_event_shows_the_build_as_it_was_at_the_change() {
        // The build stopped before its `started` event was rendered: that event shows it running.
        let mut b = build(BuildStatus::Stopped, Some(BuildOutcome::Success));
        b.build_trigger_metadata.branch = None;
        b.build_trigger_metadata.commit_hash = None;
        b.build_trigger_metadata.build_trigger_source = TriggerSource::Manual;
        let change = StatusChange {
            build: b.build_uuid,
            account: b.account_id.clone(),
            worker: WorkerId::parse("w", "my-worker").unwrap(),
            status: BuildStatus::Running,
            outcome: None,
            at: Timestamp::from_millis(1_746_067_739_132),
        };
        let sub = crate::domain::SubscriptionId::new();
        let body: serde_json::Value =
            serde_json::from_str(&event_body(EventType::Started, &change, &b, sub)).unwrap();
        let p = &body["payload"];
        assert_eq!(p["status"], "running");
        assert_eq!(p["buildOutcome"], serde_json::Value::Null);
        assert_eq!(p["runningAt"], "2025-05-01T02:48:59.132Z");
        assert_eq!(p["stoppedAt"], serde_json::Value::Null);
        let m = &p["buildTriggerMetadata"];
        assert_eq!(m["branch"], "");
        assert_eq!(m["commitHash"], "");
        assert_eq!(m["buildTriggerSource"], "manual");
    }

    #[test]
    fn retry_delays_double_with_jitter_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(2500));
        assert_eq!(p.delay(1, 1.0), Duration::from_secs(5));
        assert_eq!(p.delay(2, 1.0), Duration::from_secs(10));
        assert_eq!(p.delay(3, 0.5), Duration::from_secs(15));
        assert_eq!(p.delay(20, 1.0), p.cap);
        assert_eq!(p.delay(i64::MAX, 1.0), p.cap);
        assert_eq!(p.delay(40, 0.0), p.cap / 2);
        // A day of retries at the default policy is a bounded number of attempts.
        let mut t = Duration::ZERO;
        let mut n = 0;
        while t < p.window {
            n += 1;
            t += p.delay(n, 1.0);
        }
        assert!((20..40).contains(&n), "{n}");
    }
}
