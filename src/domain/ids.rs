//! Identifier newtypes, parsed once at the edge.

use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use super::Invalid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random (version 4) id.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                $name(Uuid::new_v4())
            }

            /// Parses the hyphenated form; `field` names the input in the error.
            pub fn parse(field: &str, s: &str) -> Result<Self, Invalid> {
                parse_uuid(field, s).map($name)
            }

            /// Reads a value this service stored itself.
            pub fn from_stored(s: &str) -> anyhow::Result<Self> {
                Ok($name(Uuid::try_parse(s)?))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string", "format": "uuid", "pattern": UUID_PATTERN})
            }
        }
    };
}

/// What [`parse_uuid`] accepts, as a JSON Schema pattern.
const UUID_PATTERN: &str =
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

fn parse_uuid(field: &str, s: &str) -> Result<Uuid, Invalid> {
    // Only the canonical 36-character hyphenated form; braces, URNs and bare hex are refused.
    if s.len() != 36 {
        return Err(Invalid::field(field, "must be a UUID"));
    }
    Uuid::try_parse(s).map_err(|_| Invalid::field(field, "must be a UUID"))
}

uuid_id!(
    /// A build (`build_uuid`).
    BuildId
);
uuid_id!(
    /// A trigger (`trigger_uuid`).
    TriggerId
);
uuid_id!(
    /// A build token (`build_token_uuid`).
    BuildTokenId
);
uuid_id!(
    /// A repository connection (`repo_connection_uuid`).
    RepoConnectionId
);
uuid_id!(
    /// A deploy hook (`deploy_hook_uuid`); being random, it is also the hook's secret.
    DeployHookId
);
uuid_id!(
    /// A Worker version produced by a deploy.
    VersionId
);
uuid_id!(
    /// An event subscription (`event_subscription_id`).
    SubscriptionId
);
uuid_id!(
    /// One delivery of an event to a subscription (`delivery_id`); also its `webhook-id`.
    DeliveryId
);

/// Maximum length of an account id, in characters.
pub const MAX_ACCOUNT_ID_LEN: usize = 64;
/// Maximum length of a Worker identifier (`external_script_id`), in characters.
pub const MAX_WORKER_ID_LEN: usize = 64;

/// A Cloudflare account identifier (32 hex characters at Cloudflare; any `[A-Za-z0-9_-]{1,64}` here).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct AccountId(String);

impl schemars::JsonSchema for AccountId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AccountId".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"})
    }
}

impl AccountId {
    /// Parses and validates an account id.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = !s.is_empty()
            && s.len() <= MAX_ACCOUNT_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(AccountId(s.to_owned()))
        } else {
            Err(Invalid::field(
                "account_id",
                "must be 1-64 characters of letters, digits, '-' or '_'",
            ))
        }
    }

    /// Reads a value this service stored itself.
    pub fn from_stored(s: String) -> Self {
        AccountId(s)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Worker identifier: `external_script_id` = `script_tag` = `script_name` (DESIGN.md §2), opaque.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct WorkerId(String);

impl schemars::JsonSchema for WorkerId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WorkerId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Control characters are Unicode category Cc (`char::is_control`).
        schemars::json_schema!({
            "type": "string",
            "description": "A Worker's name: 1-64 characters, no control characters, '/' or ',', not '.' or '..'",
            "pattern": r"^(?!\.\.?$)[^/,\x00-\x1f\x7f-\x9f]{1,64}$",
        })
    }
}

impl WorkerId {
    /// Parses a Worker id: 1–64 characters, no control characters, no `/` or `,`, not `.` or `..`
    /// (it is a path segment of the API's URLs, where those two mean something else).
    pub fn parse(field: &str, s: &str) -> Result<Self, Invalid> {
        let len = s.chars().count();
        if len == 0 || len > MAX_WORKER_ID_LEN {
            return Err(Invalid::field(field, "must be 1-64 characters"));
        }
        if s.chars().any(|c| c.is_control() || c == '/' || c == ',') {
            return Err(Invalid::field(
                field,
                "must not contain control characters, '/' or ','",
            ));
        }
        if s == "." || s == ".." {
            return Err(Invalid::field(field, "must not be '.' or '..'"));
        }
        Ok(WorkerId(s.to_owned()))
    }

    /// Reads a value this service stored itself.
    pub fn from_stored(s: String) -> Self {
        WorkerId(s)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Maximum length of an environment variable name, in bytes.
pub const MAX_ENV_KEY_LEN: usize = 256;

/// An environment variable name: `^[A-Za-z_][A-Za-z0-9_]*$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EnvVarKey(String);

impl schemars::JsonSchema for EnvVarKey {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EnvVarKey".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": MAX_ENV_KEY_LEN,
            "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
        })
    }
}

impl EnvVarKey {
    /// Parses a variable name.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let mut bytes = s.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if first_ok
            && s.len() <= MAX_ENV_KEY_LEN
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            Ok(EnvVarKey(s.to_owned()))
        } else {
            Err(Invalid(format!(
                "environment variable name {:?} must match ^[A-Za-z_][A-Za-z0-9_]*$ (at most {MAX_ENV_KEY_LEN} characters)",
                truncate_for_message(s)
            )))
        }
    }

    /// Reads a value this service stored itself.
    pub fn from_stored(s: String) -> Self {
        EnvVarKey(s)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Shortens client input before echoing it in an error message.
pub(crate) fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_ids_require_the_hyphenated_form() {
        assert!(BuildId::parse("b", "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e").is_ok());
        assert!(BuildId::parse("b", "182bd5e56e1a4fe4a799aa6d9a6ab26e").is_err());
        assert!(BuildId::parse("b", "{182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e}").is_err());
        assert!(BuildId::parse("b", "not-a-uuid").is_err());
        assert!(BuildId::parse("b", "").is_err());
    }

    #[test]
    fn env_keys() {
        for ok in ["A", "_", "NODE_ENV", "a1_b2"] {
            assert!(EnvVarKey::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "é", "A.B"] {
            assert!(EnvVarKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn account_and_worker_ids() {
        assert!(AccountId::parse("023e105f4ecef8ad9ca31a8372d0c353").is_ok());
        assert!(AccountId::parse("").is_err());
        assert!(AccountId::parse(&"a".repeat(65)).is_err());
        assert!(AccountId::parse("a b").is_err());
        assert!(WorkerId::parse("w", "my-worker").is_ok());
        assert!(WorkerId::parse("w", "").is_err());
        assert!(WorkerId::parse("w", &"x".repeat(65)).is_err());
        assert!(WorkerId::parse("w", "a\nb").is_err());
        assert!(WorkerId::parse("w", "..").is_err());
        assert!(WorkerId::parse("w", "...").is_ok());
    }
}
