//! Pure domain types: identifiers, timestamps, statuses and validation rules. No I/O lives here.

mod filters;
mod ids;
mod packages;
mod project;
mod queue;
mod records;
mod seed;
mod time;
mod validate;

pub use filters::{
    Glob, WATCH_PATHS_MAX_COMMITS, WATCH_PATHS_MAX_FILES, WATCH_PATHS_MAX_PATH_BYTES,
    WATCH_PATHS_MAX_TOTAL_BYTES, WatchPathCheck, branch_selected, glob_matches, is_preview_trigger,
    paths_selected,
};
pub(crate) use ids::truncate_for_message;
pub use ids::{
    AccountId, BuildId, BuildTokenId, DeployHookId, EnvVarKey, RepoConnectionId, TriggerId,
    VersionId, WorkerId,
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
