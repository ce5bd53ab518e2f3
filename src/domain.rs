//! Pure domain types: identifiers, timestamps, statuses and validation rules. No I/O lives here.

mod filters;
mod ids;
mod lifecycle;
mod packages;
mod project;
mod queue;
// `string_enum!` is defined in `records` and used by `notifications`, declared after it.
#[macro_use]
mod records;
mod notifications;
mod seed;
mod steps;
mod time;
mod validate;

pub use filters::{
    Glob, WATCH_PATHS_MAX_COMMITS, WATCH_PATHS_MAX_FILES, WATCH_PATHS_MAX_PATH_BYTES,
    WATCH_PATHS_MAX_TOTAL_BYTES, WatchPathCheck, branch_selected, glob_matches, is_preview_trigger,
    paths_selected,
};
pub(crate) use ids::truncate_for_message;
pub use ids::{
    AccountId, BuildId, BuildTokenId, DeliveryId, DeployHookId, EnvVarKey, MAX_WORKER_ID_LEN,
    RepoConnectionId, SubscriptionId, TriggerId, VersionId, WorkerId,
};
pub use lifecycle::{BuildChange, BuildState, IllegalTransition, is_legal, transition};
pub use notifications::{
    CreatedSubscription, Delivery, DeliveryStatus, EventSubscription, EventType,
    MAX_SECRET_KEY_BYTES, MAX_SUBSCRIPTION_WORKERS, MAX_SUBSCRIPTIONS_PER_ACCOUNT, MAX_URL_LEN,
    MIN_SECRET_KEY_BYTES, RetryPolicy, SECRET_PREFIX, StatusChange, WebhookSecret, destination_url,
    event_body,
};
pub use packages::PackageManager;
pub use project::{
    DEFAULT_BUN_VERSION, DEFAULT_NODE_VERSION, DEFAULT_PNPM_VERSION, DEFAULT_YARN_VERSION,
    MAX_PROJECT_FILE_BYTES, PROJECT_FILES, ProjectDir, ProjectPlan, Requested, VersionSource,
    parse_package_manager_field, plan_project, project_dirs,
};
pub use queue::{
    ActiveBuild, DURATION_SAMPLES, Durations, PastBuild, QueueInfo, QueueReason, QueueSnapshot,
    QueuedBuild, explain_queued,
};
pub use records::*;
pub use seed::{MAX_SEED_FILES, SeedFile, SeedRepo, encode_content, relative_path};
pub use steps::{
    BUILD_PREFIX, CLONE_LINE, DEPLOY_PREFIX, INIT_LINE, INSTALL_PREFIX, Step, StepKind, StepLines,
    StepState, command_line, install_line, restore_cache_line, save_cache_line,
};
pub use time::Timestamp;
pub use validate::*;

/// A value a client sent that breaks a rule; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    /// An error about `field` with an explanation.
    pub fn field(field: &str, why: impl std::fmt::Display) -> Self {
        Invalid(format!("{field}: {why}"))
    }
}
