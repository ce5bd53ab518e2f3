//! The HTTP API: one route table drives both the router and the OpenAPI description.

mod auth;
mod autofill;
pub(crate) mod builds;
mod connections;
pub(crate) mod deploy_hooks;
pub(crate) mod env_vars;
pub mod error;
mod extract;
pub mod health;
pub(crate) mod log_stream;
pub mod observe;
mod openapi;
mod overview;
mod schema;
pub(crate) mod subscriptions;
pub mod throttle;
mod tokens;
pub(crate) mod triggers;
mod webhooks;
mod workers;

use std::collections::BTreeMap;

use axum::Router;
use axum::http::Method;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{MethodFilter, MethodRouter, on};
use schemars::{Schema, SchemaGenerator};
use tower_http::catch_panic::CatchPanicLayer;

pub use auth::{Access, authenticate, token_by_secret};
use error::ApiError;
pub use extract::{BodyLimit, MAX_BODY_BYTES, MAX_PAGE_BYTES, read_body};
pub use log_stream::{LogStreamConfig, LogStreams};

use crate::store::Store;

/// Base path of the API.
pub const BASE: &str = "/client/v4";

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub limits: Limits,
    /// The git mirror cache (config autofill reads repositories through it).
    pub git: std::sync::Arc<crate::git::GitCache>,
    /// Relays cancels to the runners on this node at once (other nodes learn them from the build
    /// events).
    pub scheduler: crate::scheduler::SchedulerHandle,
    /// Wakes whoever waits for build events (the store's bus; see [`crate::events`]).
    pub events: crate::events::EventBus,
    /// Secrets GitHub signs webhook deliveries with (several during a rotation); none: webhooks off.
    pub github_webhook_secrets: std::sync::Arc<Vec<String>>,
    /// This node's build cache (`purge_build_cache` deletes a trigger's entries).
    pub cache: std::sync::Arc<crate::cache::BuildCache>,
    /// Failed authentications per client (API credentials and deploy hook ids).
    pub auth_throttle: std::sync::Arc<throttle::AuthThrottle>,
    /// This node's metrics (`GET /metrics`), which also know its build slots (`GET /readyz`).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Wakes this node's notification dispatcher (redeliveries) and knows its retry window.
    pub notifier: crate::notify::NotifyHandle,
    /// The live log streams open on this node.
    pub log_streams: std::sync::Arc<LogStreams>,
    /// Concurrent builds per account unless set otherwise (the scheduler's; the queue explanation
    /// applies it).
    pub default_concurrency: i64,
    /// How the dashboard's sessions behave.
    pub dashboard: crate::dashboard::DashboardConfig,
}

/// Account-level limits reported by `account/limits`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Build minutes per account per calendar month.
    pub build_minutes_per_month: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            build_minutes_per_month: 3000,
        }
    }
}

/// A query parameter of a route, for the OpenAPI description.
#[derive(Clone, Copy)]
pub struct QueryDoc {
    pub name: &'static str,
    pub required: bool,
    pub description: &'static str,
}

/// One API operation.
pub struct Route {
    pub method: Method,
    /// Path below [`BASE`], with `{param}` segments.
    pub path: &'static str,
    pub operation_id: &'static str,
    pub summary: &'static str,
    pub access: Access,
    pub query: &'static [QueryDoc],
    pub body: Option<fn(&mut SchemaGenerator) -> Schema>,
    pub result: fn(&mut SchemaGenerator) -> Schema,
    pub paginated: bool,
    /// Success is `201 Created` instead of `200`.
    pub created: bool,
    /// Success is a stream of Server-Sent Events (`text/event-stream`), not the envelope; `result`
    /// is the data of its `end` event.
    pub events: bool,
    pub handler: fn() -> MethodRouter<AppState>,
}

macro_rules! route {
    ($method:ident $path:literal, $op:literal, $access:ident, $handler:path,
     summary: $summary:literal, result: $result:ty
     $(, body: $body:ty)? $(, query: $query:expr)? $(, paginated: $paged:literal)?
     $(, created: $created:literal)? $(, events: $events:literal)?) => {
        Route {
            method: Method::$method,
            path: $path,
            operation_id: $op,
            summary: $summary,
            access: Access::$access,
            query: { #[allow(unused_variables)] let q: &'static [QueryDoc] = &[]; $(let q = $query;)? q },
            body: { #[allow(unused_variables)] let b: Option<fn(&mut SchemaGenerator) -> Schema> = None;
                    $(let b: Option<fn(&mut SchemaGenerator) -> Schema> = Some(|g| g.subschema_for::<$body>());)? b },
            result: |g| g.subschema_for::<$result>(),
            paginated: { #[allow(unused_variables)] let p = false; $(let p = $paged;)? p },
            created: { #[allow(unused_variables)] let c = false; $(let c = $created;)? c },
            events: { #[allow(unused_variables)] let e = false; $(let e = $events;)? e },
            handler: || on(MethodFilter::$method, $handler),
        }
    };
}

const PAGING: &[QueryDoc] = &[
    QueryDoc {
        name: "page",
        required: false,
        description: "Page number, from 1 (default 1)",
    },
    QueryDoc {
        name: "per_page",
        required: false,
        description: "Items per page, 1-200 (default 50)",
    },
];

/// Query of `listBuildsByScript`: paging, and Kiln's filters.
const BUILD_LIST_QUERY: &[QueryDoc] = &[
    PAGING[0],
    PAGING[1],
    QueryDoc {
        name: "branch",
        required: false,
        description: "Kiln extension: only builds of this branch (exact name)",
    },
    QueryDoc {
        name: "outcome",
        required: false,
        description: "Kiln extension: only builds with this build_outcome (success, fail, skipped, cancelled, terminated)",
    },
];

/// Every operation Kiln serves.
pub fn routes() -> Vec<Route> {
    use crate::domain::{
        Build, BuildToken, CreatedSubscription, Delivery, DeployHook, DetailedDeployHook,
        EnvVarMap, EventSubscription, RepoConnection, Trigger,
    };
    vec![
        route!(GET "/accounts", "listAccounts", Caller,
            overview::list_accounts,
            summary: "Kiln extension: the accounts these credentials may act on, by id (every account Kiln holds anything of, for an all-accounts token)",
            result: Vec<overview::AccountSummary>, query: PAGING, paginated: true),
        route!(GET "/accounts/{account_id}/builds/workers", "listWorkers", Read,
            overview::list_workers,
            summary: "Kiln extension: the account's Workers (a live trigger or a build), by id, each with its number of triggers and newest build",
            result: Vec<overview::WorkerView>, query: PAGING, paginated: true),
        route!(GET "/accounts/{account_id}/builds/workers/{external_script_id}/builds", "listBuildsByScript", Read,
            builds::list_builds, summary: "List a Worker's builds, newest first", result: Vec<Build>,
            query: BUILD_LIST_QUERY, paginated: true),
        route!(GET "/accounts/{account_id}/builds/builds/latest", "getLatestBuildsByScripts", Read,
            builds::get_latest_builds, summary: "Newest build of each given Worker", result: builds::BuildsMap,
            query: &[QueryDoc { name: "external_script_ids", required: true, description: "Comma-separated Worker ids (at most 20)" }]),
        route!(GET "/accounts/{account_id}/builds/builds", "getBuildsByVersionIds", Read,
            builds::get_builds_by_versions, summary: "The builds that produced the given Worker versions", result: builds::BuildsMap,
            query: &[QueryDoc { name: "version_ids", required: true, description: "Comma-separated version UUIDs (at most 20)" }]),
        route!(GET "/accounts/{account_id}/builds/builds/{build_uuid}", "getBuildByUuid", Read,
            builds::get_build, summary: "Get a build; a queued one says why it waits (`queue`, a Kiln extension)",
            result: builds::BuildView),
        route!(PUT "/accounts/{account_id}/builds/builds/{build_uuid}/cancel", "cancelBuildByUuid", Write,
            builds::cancel_build, summary: "Cancel a queued or running build (whichever node runs it stops its processes within the cancel grace)", result: builds::CancelledBuild),
        route!(GET "/accounts/{account_id}/builds/builds/{build_uuid}/logs", "getBuildLogs", Read,
            builds::get_build_logs, summary: "A build's log lines, paged with a cursor", result: builds::LogsPage,
            query: &[QueryDoc { name: "cursor", required: false, description: "The cursor returned by the previous page" }]),
        route!(GET "/accounts/{account_id}/builds/builds/{build_uuid}/logs/stream", "streamBuildLogs", Read,
            log_stream::stream_build_logs,
            summary: "Kiln extension: a build's log as Server-Sent Events, live until the build ends",
            result: log_stream::EndEvent,
            query: &[QueryDoc { name: "cursor", required: false,
                description: "Start after this position: a getBuildLogs cursor or an event id of this stream (the Last-Event-ID header wins)" }],
            events: true),
        route!(GET "/accounts/{account_id}/builds/account/limits", "getAccountLimits", Read,
            builds::get_account_limits, summary: "Build-minute usage of the account", result: builds::AccountLimits),
        route!(GET "/accounts/{account_id}/builds/workers/{external_script_id}/triggers", "listTriggersByScript", Read,
            triggers::list_triggers, summary: "List a Worker's triggers", result: Vec<Trigger>),
        route!(POST "/accounts/{account_id}/builds/triggers", "createTrigger", Write,
            triggers::create_trigger, summary: "Create a trigger", result: Trigger, body: triggers::CreateTriggerRequest),
        route!(PATCH "/accounts/{account_id}/builds/triggers/{trigger_uuid}", "updateTrigger", Write,
            triggers::update_trigger, summary: "Update a trigger", result: Trigger, body: triggers::UpdateTriggerRequest),
        route!(DELETE "/accounts/{account_id}/builds/triggers/{trigger_uuid}", "deleteTrigger", Write,
            triggers::delete_trigger, summary: "Delete a trigger (its builds stay readable)", result: ()),
        route!(POST "/accounts/{account_id}/builds/triggers/{trigger_uuid}/purge_build_cache", "purgeBuildCache", Write,
            triggers::purge_build_cache, summary: "Purge a trigger's build cache", result: ()),
        route!(POST "/accounts/{account_id}/builds/triggers/{trigger_uuid}/builds", "createManualBuild", Write,
            builds::create_manual_build, summary: "Queue a build of a branch or commit", result: builds::InsertedBuild,
            body: builds::CreateBuildRequest),
        route!(GET "/accounts/{account_id}/builds/triggers/{trigger_uuid}/environment_variables", "listEnvironmentVariables", Read,
            env_vars::list_env_vars, summary: "List a trigger's environment variables", result: EnvVarMap),
        route!(PATCH "/accounts/{account_id}/builds/triggers/{trigger_uuid}/environment_variables", "upsertEnvironmentVariables", Write,
            env_vars::upsert_env_vars, summary: "Create or update environment variables", result: EnvVarMap,
            body: env_vars::EnvVarsRequest),
        route!(DELETE "/accounts/{account_id}/builds/triggers/{trigger_uuid}/environment_variables/{environment_variable_key}",
            "deleteEnvironmentVariable", Write, env_vars::delete_env_var, summary: "Delete an environment variable", result: ()),
        route!(POST "/accounts/{account_id}/builds/tokens", "createBuildToken", Write,
            tokens::create_build_token, summary: "Create a build token", result: BuildToken, body: tokens::CreateBuildTokenRequest),
        route!(GET "/accounts/{account_id}/builds/tokens", "listBuildTokens", Read,
            tokens::list_build_tokens, summary: "List build tokens, newest first", result: Vec<BuildToken>,
            query: PAGING, paginated: true),
        route!(DELETE "/accounts/{account_id}/builds/tokens/{build_token_uuid}", "deleteBuildToken", Write,
            tokens::delete_build_token, summary: "Delete a build token", result: ()),
        route!(PUT "/accounts/{account_id}/builds/repos/connections", "upsertRepoConnection", Write,
            connections::upsert_repo_connection, summary: "Create or update a repository connection", result: RepoConnection,
            body: connections::UpsertRepoConnectionRequest),
        route!(DELETE "/accounts/{account_id}/builds/repos/connections/{repo_connection_uuid}", "deleteRepoConnection", Write,
            connections::delete_repo_connection, summary: "Delete a repository connection no trigger uses", result: ()),
        route!(GET "/accounts/{account_id}/builds/repos/{provider_type}/{provider_account_id}/{repo_id}/config_autofill",
            "getWorkerConfigAutofill", Read, autofill::get_config_autofill,
            summary: "Suggest a build configuration from a branch of a connected repository", result: autofill::ConfigAutofill,
            query: &[QueryDoc { name: "branch", required: true, description: "Git branch to analyze" },
                     QueryDoc { name: "root_directory", required: false, description: "Directory to inspect, relative to the repository root (default /)" }]),
        route!(GET "/accounts/{account_id}/builds/workers/{external_script_id}/deploy_hooks", "listDeployHooks", Read,
            deploy_hooks::list_deploy_hooks, summary: "List a Worker's deploy hooks", result: Vec<DetailedDeployHook>),
        route!(POST "/accounts/{account_id}/builds/workers/{external_script_id}/deploy_hooks", "createDeployHook", Write,
            deploy_hooks::create_deploy_hook, summary: "Create a deploy hook", result: DeployHook,
            body: deploy_hooks::DeployHookRequest),
        route!(GET "/accounts/{account_id}/builds/workers/{external_script_id}/deploy_hooks/{deploy_hook_uuid}", "getDeployHook", Read,
            deploy_hooks::get_deploy_hook, summary: "Get a deploy hook", result: DeployHook),
        route!(PUT "/accounts/{account_id}/builds/workers/{external_script_id}/deploy_hooks/{deploy_hook_uuid}", "updateDeployHook", Write,
            deploy_hooks::update_deploy_hook, summary: "Update a deploy hook", result: DeployHook,
            body: deploy_hooks::DeployHookRequest),
        route!(POST "/accounts/{account_id}/builds/workers", "createWorkerBuild", Write,
            workers::create_worker_build,
            summary: "Create a Worker's build configuration: its repository, production branch and settings, and optionally previews of every other branch",
            result: workers::WorkerResponse, body: workers::CreateWorkerBuildRequest, created: true),
        route!(GET "/accounts/{account_id}/builds/workers/{external_script_id}", "getWorkerBuild", Read,
            workers::get_worker_build, summary: "Get a Worker's build configuration", result: workers::WorkerResponse),
        route!(PATCH "/accounts/{account_id}/builds/workers/{external_script_id}", "updateWorkerBuild", Write,
            workers::update_worker_build,
            summary: "Update a Worker's build configuration: its branch, settings, variables (null deletes one) and previews",
            result: workers::WorkerResponse, body: workers::UpdateWorkerBuildRequest,
            query: &[QueryDoc { name: "patch_existing_previews", required: false,
                description: "true or false (default false); Kiln keeps no Worker Previews of its own, so this changes nothing" }]),
        route!(DELETE "/accounts/{account_id}/builds/workers/{external_script_id}", "deleteWorkerBuild", Write,
            workers::delete_worker_build,
            summary: "Delete a Worker's build configuration: its triggers go and their unfinished builds are cancelled (builds stay readable); result \"ok\"",
            result: String),
        route!(POST "/workers/builds/deploy_hooks/{deploy_hook_uuid}", "triggerDeployHook", Public,
            deploy_hooks::trigger_deploy_hook, summary: "Start a build from a deploy hook (no authentication: the hook id is the secret)",
            result: deploy_hooks::HookTriggered),
        route!(DELETE "/accounts/{account_id}/builds/workers/{external_script_id}/deploy_hooks/{deploy_hook_uuid}", "deleteDeployHook", Write,
            deploy_hooks::delete_deploy_hook, summary: "Delete a deploy hook and return it", result: DeployHook),
        route!(POST "/accounts/{account_id}/builds/event_subscriptions", "createEventSubscription", Write,
            subscriptions::create_subscription,
            summary: "Subscribe an HTTP endpoint to build events (Kiln's own resource: the hosted product sets these up as Queues event subscriptions); the answer shows the signing secret, once",
            result: CreatedSubscription, body: subscriptions::CreateSubscriptionRequest),
        route!(GET "/accounts/{account_id}/builds/event_subscriptions", "listEventSubscriptions", Read,
            subscriptions::list_subscriptions, summary: "List the account's event subscriptions, oldest first (never their secrets)",
            result: Vec<EventSubscription>, query: PAGING, paginated: true),
        route!(GET "/accounts/{account_id}/builds/event_subscriptions/{event_subscription_id}", "getEventSubscription", Read,
            subscriptions::get_subscription, summary: "Get an event subscription (never its secret)", result: EventSubscription),
        route!(PATCH "/accounts/{account_id}/builds/event_subscriptions/{event_subscription_id}", "updateEventSubscription", Write,
            subscriptions::update_subscription, summary: "Update an event subscription: its name, URL, secret, filters or enabled flag",
            result: EventSubscription, body: subscriptions::UpdateSubscriptionRequest),
        route!(DELETE "/accounts/{account_id}/builds/event_subscriptions/{event_subscription_id}", "deleteEventSubscription", Write,
            subscriptions::delete_subscription, summary: "Delete an event subscription and its deliveries", result: ()),
        route!(GET "/accounts/{account_id}/builds/event_subscriptions/{event_subscription_id}/deliveries", "listEventDeliveries", Read,
            subscriptions::list_deliveries, summary: "A subscription's deliveries, newest first: status, response code, attempts, times",
            result: Vec<Delivery>, query: PAGING, paginated: true),
        route!(POST "/accounts/{account_id}/builds/event_subscriptions/{event_subscription_id}/deliveries/{delivery_id}/redeliver",
            "redeliverEvent", Write, subscriptions::redeliver,
            summary: "Send a delivery again now (same body and webhook-id, a new signature), retried for a new day",
            result: Delivery),
    ]
}

/// The router for the whole service.
pub fn router(state: AppState) -> Router {
    let mut by_path: BTreeMap<&'static str, MethodRouter<AppState>> = BTreeMap::new();
    for r in routes() {
        let gate = auth::Gate {
            store: state.store.clone(),
            access: r.access,
            throttle: state.auth_throttle.clone(),
        };
        let mr = (r.handler)().layer(from_fn_with_state(gate, auth::authorize));
        let merged = match by_path.remove(r.path) {
            Some(existing) => existing.merge(mr),
            None => mr,
        };
        by_path.insert(r.path, merged);
    }
    let mut api = Router::new();
    for (path, mr) in by_path {
        api = api.route(path, mr.fallback(method_not_allowed));
    }
    let openapi_doc = std::sync::Arc::new(openapi::document());
    api = api.route(
        "/openapi.json",
        axum::routing::get(move || {
            let doc = openapi_doc.clone();
            async move { axum::Json((*doc).clone()) }
        })
        .fallback(method_not_allowed),
    );
    let webhooks = Router::new()
        .route(
            "/webhooks/github",
            axum::routing::post(webhooks::receive_github_webhook)
                .fallback(method_not_allowed)
                .layer(axum::Extension(BodyLimit(crate::github::MAX_WEBHOOK_BYTES))),
        )
        .with_state(state.clone());
    let metrics = state.metrics.clone();
    let router = Router::new()
        .nest(BASE, api.with_state(state.clone()))
        .merge(webhooks)
        .merge(health::router(state.clone()))
        .merge(crate::dashboard::router(state))
        .fallback(no_route)
        .layer(axum::Extension(BodyLimit(MAX_BODY_BYTES)))
        // A panicking handler still answers the envelope (500, code 10001), and the connection lives.
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("a request handler panicked")).into_response()
        }));
    observe::instrument(router, metrics)
}

/// Unknown paths: the API's envelope, or the dashboard's 404 page for a browser outside the API.
async fn no_route(req: axum::extract::Request) -> axum::response::Response {
    if crate::dashboard::wants_html(&req) {
        return crate::dashboard::not_found();
    }
    ApiError::NoRoute.into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Path prefix of the public deploy-hook endpoint, whose last segment is the hook's secret id.
const HOOK_TRIGGER_PREFIX: &str = "/client/v4/workers/builds/deploy_hooks/";

/// A request path fit for logs: a deploy hook's id is a credential and is left out. The query string
/// (log cursors and the like) is not logged either.
fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path.strip_prefix(HOOK_TRIGGER_PREFIX) {
        Some(_) => format!("{HOOK_TRIGGER_PREFIX}{{deploy_hook_uuid}}").into(),
        None => path.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    /// The largest text a validated field of `chars` characters can be in JSON: 4-byte characters.
    fn widest(chars: usize) -> String {
        "\u{1F680}".repeat(chars)
    }

    fn json_len<T: serde::Serialize>(v: &T) -> usize {
        serde_json::to_vec(v).expect("serialize").len()
    }

    /// Lists without paging are bounded by their item count and the input limits: at their largest
    /// they stay under the page size bound.
    #[test]
    fn unpaged_lists_are_bounded_by_construction() {
        let now = Timestamp::now();
        let worker = WorkerId::parse("w", &"w".repeat(64)).expect("worker");
        // Environment variables: the most, each as long as allowed, of characters JSON escapes.
        let vars: EnvVarMap = (0..MAX_ENV_VARS)
            .map(|i| {
                let key = format!("K{i:02}{}", "_".repeat(256 - 3));
                let value = "\"".repeat(MAX_ENV_VALUE_BYTES);
                assert!(env_value(&key, &value).is_ok());
                (
                    key,
                    EnvVarView {
                        is_secret: false,
                        created_on: now,
                        value: Some(value),
                    },
                )
            })
            .collect();
        assert!(json_len(&vars) < MAX_PAGE_BYTES, "{}", json_len(&vars));
        // Triggers of one Worker.
        let connection = RepoConnection {
            repo_connection_uuid: RepoConnectionId::new(),
            provider_type: ProviderType::Github,
            provider_account_id: widest(MAX_NAME_LEN),
            provider_account_name: widest(MAX_NAME_LEN),
            repo_id: widest(MAX_NAME_LEN),
            repo_name: widest(MAX_NAME_LEN),
            created_on: now,
            modified_on: now,
            deleted_on: None,
            account_id: AccountId::parse("a").expect("account"),
        };
        let patterns = vec![widest(MAX_PATTERN_LEN); MAX_PATTERNS];
        let trigger = Trigger {
            info: BuildTrigger {
                trigger_uuid: TriggerId::new(),
                trigger_name: widest(MAX_NAME_LEN),
                external_script_id: worker.clone(),
                repo_connection: connection,
                build_command: "\u{1}".repeat(MAX_COMMAND_LEN),
                deploy_command: "\u{1}".repeat(MAX_COMMAND_LEN),
                root_directory: widest(MAX_ROOT_DIRECTORY_LEN),
                branch_includes: patterns.clone(),
                branch_excludes: patterns.clone(),
                path_includes: patterns.clone(),
                path_excludes: patterns,
                build_caching_enabled: true,
                created_on: now,
                modified_on: now,
                deleted_on: None,
            },
            build_token_uuid: BuildTokenId::new(),
            build_token_name: Some(widest(MAX_NAME_LEN)),
            account_id: AccountId::parse("a").expect("account"),
        };
        let triggers = vec![trigger; MAX_TRIGGERS_PER_WORKER as usize];
        assert!(
            json_len(&triggers) < MAX_PAGE_BYTES,
            "{}",
            json_len(&triggers)
        );
        // Deploy hooks of one Worker.
        let hook = DetailedDeployHook {
            hook: DeployHook {
                deploy_hook_uuid: DeployHookId::new(),
                deploy_hook_name: widest(MAX_HOOK_NAME_LEN),
                external_script_id: worker,
                branch: widest(MAX_BRANCH_LEN),
                created_on: now,
                modified_on: now,
            },
            latest_build: Some(LatestHookBuild { created_on: now }),
        };
        let hooks = vec![hook; MAX_DEPLOY_HOOKS_PER_WORKER as usize];
        assert!(json_len(&hooks) < MAX_PAGE_BYTES, "{}", json_len(&hooks));
        // A full page of build tokens.
        let token = BuildToken {
            build_token_uuid: BuildTokenId::new(),
            build_token_name: widest(MAX_NAME_LEN),
            cloudflare_token_id: widest(MAX_NAME_LEN),
            owner_type: "user".to_owned(),
            created_on: now,
        };
        let tokens = vec![token; extract::MAX_PER_PAGE as usize];
        assert!(json_len(&tokens) < MAX_PAGE_BYTES, "{}", json_len(&tokens));
    }

    #[test]
    fn hook_ids_stay_out_of_logs() {
        let id = "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e";
        let logged =
            loggable_path(&format!("/client/v4/workers/builds/deploy_hooks/{id}")).into_owned();
        assert!(!logged.contains(id), "{logged}");
        assert_eq!(
            loggable_path("/client/v4/accounts/a/builds/tokens"),
            "/client/v4/accounts/a/builds/tokens"
        );
    }
}
