//! The resources Kiln keeps, in the shapes the API shows them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    AccountId, BuildId, BuildTokenId, DeployHookId, RepoConnectionId, Timestamp, TriggerId,
    WorkerId,
};

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire and storage spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the wire spelling.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }

            /// Reads a value this service stored itself.
            pub fn from_stored(s: &str) -> anyhow::Result<Self> {
                Self::parse(s).ok_or_else(|| anyhow::anyhow!("unknown {} {:?} in store", stringify!($name), s))
            }
        }
    };
}

string_enum!(
    /// A build's lifecycle status.
    BuildStatus { Queued = "queued", Initializing = "initializing", Running = "running", Stopped = "stopped" }
);
string_enum!(
    /// How a stopped build ended.
    BuildOutcome { Success = "success", Fail = "fail", Skipped = "skipped", Cancelled = "cancelled", Terminated = "terminated" }
);
string_enum!(
    /// What started a build.
    TriggerSource { Push = "push", PullRequest = "pull_request", Manual = "manual", Api = "api", DeployHook = "deploy_hook" }
);
string_enum!(
    /// The source-control provider of a repository connection.
    ProviderType { Github = "github" }
);
string_enum!(
    /// What an API token may do: read only, or read and write.
    Permission { Read = "read", Write = "write" }
);

/// A connected git repository.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RepoConnection {
    pub repo_connection_uuid: RepoConnectionId,
    pub provider_type: ProviderType,
    pub provider_account_id: String,
    pub provider_account_name: String,
    pub repo_id: String,
    pub repo_name: String,
    pub created_on: Timestamp,
    pub modified_on: Timestamp,
    pub deleted_on: Option<Timestamp>,
    #[serde(skip)]
    #[schemars(skip)]
    pub account_id: AccountId,
}

/// A trigger as embedded in a build: every trigger field except the build token.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BuildTrigger {
    pub trigger_uuid: TriggerId,
    pub trigger_name: String,
    pub external_script_id: WorkerId,
    pub repo_connection: RepoConnection,
    pub build_command: String,
    pub deploy_command: String,
    pub root_directory: String,
    pub branch_includes: Vec<String>,
    pub branch_excludes: Vec<String>,
    pub path_includes: Vec<String>,
    pub path_excludes: Vec<String>,
    pub build_caching_enabled: bool,
    pub created_on: Timestamp,
    pub modified_on: Timestamp,
    pub deleted_on: Option<Timestamp>,
}

/// A trigger: which Worker to build from which repository, how, and on which branches and paths.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Trigger {
    #[serde(flatten)]
    pub info: BuildTrigger,
    pub build_token_uuid: BuildTokenId,
    pub build_token_name: Option<String>,
    #[serde(skip)]
    #[schemars(skip)]
    pub account_id: AccountId,
}

/// A build token: the Cloudflare API token a build deploys with. The secret is never shown.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BuildToken {
    pub build_token_uuid: BuildTokenId,
    pub build_token_name: String,
    pub cloudflare_token_id: String,
    pub owner_type: String,
    pub created_on: Timestamp,
}

/// One environment variable as the API shows it; `value` is null for secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EnvVarView {
    pub is_secret: bool,
    pub created_on: Timestamp,
    pub value: Option<String>,
}

/// A trigger's environment variables by name.
pub type EnvVarMap = BTreeMap<String, EnvVarView>;

/// One stored environment variable, its value available to the runner only.
#[derive(Clone)]
pub struct EnvVar {
    pub key: String,
    pub is_secret: bool,
    /// Plain value; for secrets this is the decrypted value and must never reach a response.
    pub value: String,
    pub created_on: Timestamp,
}

// A secret's value must not reach a log or a panic through `{:?}`.
impl std::fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvVar")
            .field("key", &self.key)
            .field("is_secret", &self.is_secret)
            .field("value", &self.view().value.as_deref().unwrap_or("***"))
            .field("created_on", &self.created_on)
            .finish()
    }
}

impl EnvVar {
    /// The public view: the value of a secret is hidden.
    pub fn view(&self) -> EnvVarView {
        EnvVarView {
            is_secret: self.is_secret,
            created_on: self.created_on,
            value: (!self.is_secret).then(|| self.value.clone()),
        }
    }
}

/// A deploy hook: a secret URL that builds one branch of one Worker.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeployHook {
    pub deploy_hook_uuid: DeployHookId,
    pub deploy_hook_name: String,
    pub external_script_id: WorkerId,
    pub branch: String,
    pub created_on: Timestamp,
    pub modified_on: Timestamp,
}

/// A deploy hook with the time of its newest build.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DetailedDeployHook {
    #[serde(flatten)]
    pub hook: DeployHook,
    pub latest_build: Option<LatestHookBuild>,
}

/// When a hook last started a build.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LatestHookBuild {
    pub created_on: Timestamp,
}

/// The pull request a build belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PullRequest {
    pub created_on: Timestamp,
    pub pull_request_url: String,
}

/// What a build ran with: a snapshot taken when the build was created, completed by the runner.
///
/// `commit_hash`, `commit_message` and `author` are `None` while unknown (a queued build of a branch,
/// a checkout that failed) and are shown, and stored, as `""` then: Cloudflare's Workers Builds client
/// rejects a `null` in them (DESIGN.md §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BuildTriggerMetadata {
    pub build_trigger_source: TriggerSource,
    pub branch: Option<String>,
    #[serde(with = "unknown_is_empty", default)]
    #[schemars(with = "String")]
    pub commit_hash: Option<String>,
    #[serde(with = "unknown_is_empty", default)]
    #[schemars(with = "String")]
    pub commit_message: Option<String>,
    #[serde(with = "unknown_is_empty", default)]
    #[schemars(with = "String")]
    pub author: Option<String>,
    pub build_command: String,
    pub deploy_command: String,
    pub build_token_name: Option<String>,
    pub build_token_uuid: BuildTokenId,
    pub environment_variables: EnvVarMap,
    pub provider_type: ProviderType,
    pub provider_account_name: String,
    pub repo_name: String,
    pub root_directory: String,
}

/// A string field whose unknown value is written `""`; `""` and `null` (stored by older versions)
/// read back as unknown.
mod unknown_is_empty {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.as_deref().unwrap_or(""))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.filter(|v| !v.is_empty()))
    }
}

/// A build.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Build {
    pub build_uuid: BuildId,
    pub status: BuildStatus,
    pub build_outcome: Option<BuildOutcome>,
    pub created_on: Timestamp,
    pub modified_on: Timestamp,
    pub initializing_on: Option<Timestamp>,
    pub running_on: Option<Timestamp>,
    pub stopped_on: Option<Timestamp>,
    pub pull_request: Option<PullRequest>,
    pub trigger: BuildTrigger,
    pub build_trigger_metadata: BuildTriggerMetadata,
    #[serde(skip)]
    #[schemars(skip)]
    pub account_id: AccountId,
}

/// Which accounts an API token may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountScope {
    All,
    Only(Vec<AccountId>),
}

impl AccountScope {
    /// Whether `account` is inside the scope.
    pub fn allows(&self, account: &AccountId) -> bool {
        match self {
            AccountScope::All => true,
            AccountScope::Only(ids) => ids.contains(account),
        }
    }
}

/// How an API credential is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// `Authorization: Bearer <token>`.
    Token,
    /// `X-Auth-Email` + `X-Auth-Key`.
    GlobalKey,
}

impl CredentialKind {
    /// Storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Token => "token",
            CredentialKind::GlobalKey => "global_key",
        }
    }
}

/// An API credential (its secret is stored only as a hash).
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub id: String,
    pub kind: CredentialKind,
    pub email: Option<String>,
    pub permission: Permission,
    pub scope: AccountScope,
    pub created_on: Timestamp,
    pub revoked_on: Option<Timestamp>,
    pub label: Option<String>,
}

impl ApiToken {
    /// Whether this credential may use an endpoint needing `needed` on `account`.
    pub fn permits(&self, account: &AccountId, needed: Permission) -> bool {
        self.scope.allows(account) && (needed == Permission::Read || self.permission == needed)
    }
}

/// Maximum number of triggers per Worker (production + one other).
pub const MAX_TRIGGERS_PER_WORKER: i64 = 2;

/// Deploy command of a trigger created without one (the hosted product's default).
pub const DEFAULT_DEPLOY_COMMAND: &str = "npx wrangler deploy";
/// Deploy command of a preview trigger ([`super::is_preview_trigger`]) created without one: the
/// hosted product's non-production branch deploy command (PRODUCT-NOTES §3).
pub const DEFAULT_PREVIEW_DEPLOY_COMMAND: &str = "npx wrangler versions upload";

/// Maximum number of live deploy hooks per Worker: the hook list is not paged, so its size is
/// bounded by this count (the hosted product publishes no number).
pub const MAX_DEPLOY_HOOKS_PER_WORKER: i64 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_commit_fields_are_empty_strings_and_old_nulls_read_as_unknown() {
        // Metadata stored by an older version, with nulls.
        let stored = serde_json::json!({
            "build_trigger_source": "push", "branch": "main", "commit_hash": null,
            "commit_message": null, "author": null, "build_command": "", "deploy_command": "d",
            "build_token_name": null, "build_token_uuid": "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e",
            "environment_variables": {}, "provider_type": "github", "provider_account_name": "o",
            "repo_name": "r", "root_directory": "/"
        });
        let meta: BuildTriggerMetadata = serde_json::from_value(stored).expect("old metadata");
        assert_eq!(meta.commit_hash, None);
        let shown = serde_json::to_value(&meta).expect("serialize");
        for field in ["commit_hash", "commit_message", "author"] {
            assert_eq!(shown[field], "", "{field}");
        }
        let back: BuildTriggerMetadata = serde_json::from_value(shown).expect("new metadata");
        assert_eq!(back, meta);
    }
}
