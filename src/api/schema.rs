//! JSON Schemas of Kiln's input rules, for the OpenAPI description: a request that the description
//! allows is one that Kiln accepts (unless the resources it names do not exist). Each schema states
//! the rule of the function it names; where a rule cannot be stated exactly (lengths in bytes, values
//! that are trimmed before they are checked) the schema is the stricter one and its description says
//! the rule.
//!
//! Patterns are ECMA-262 regular expressions (OpenAPI 3.1), written in the subset that Python's and
//! Rust's regex engines read the same way.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::domain::{
    MAX_BRANCH_LEN, MAX_COMMAND_LEN, MAX_ENV_VALUE_BYTES, MAX_ENV_VARS, MAX_HOOK_NAME_LEN,
    MAX_NAME_LEN, MAX_PATTERN_LEN, MAX_PATTERN_WILDCARDS, MAX_PATTERNS, MAX_ROOT_DIRECTORY_LEN,
    MAX_SECRET_KEY_BYTES, MAX_SUBSCRIPTION_WORKERS, MAX_TOKEN_SECRET_BYTES, MAX_URL_LEN,
    MIN_SECRET_KEY_BYTES, WorkerId,
};

/// Unicode control characters (`char::is_control`, general category Cc), as a character-class body.
pub const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";

/// Standard base64 with padding and zero trailing bits, as the `base64` crate's `STANDARD` engine
/// decodes it ([`crate::domain::encode_content`]).
pub const BASE64_PATTERN: &str =
    r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$";

/// Most characters of a value whose limit is `bytes` UTF-8 bytes: four bytes a character at most.
const fn chars_within(bytes: usize) -> usize {
    bytes / 4
}

/// [`crate::domain::bounded_text`] with `min` = 1: some character that is not white space, no control
/// character, at most `max` characters.
pub fn text(max: usize) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": max,
        "pattern": format!(r"^[^{CONTROL}]*[^\s{CONTROL}][^{CONTROL}]*$"),
    })
}

/// A branch name that both [`crate::domain::branch`] and git's rules ([`crate::git::check_branch`])
/// accept: `/`-separated parts of letters, digits and `_+@-`, single dots between them, no part ending
/// in `.lock`, not starting with `-`, not `HEAD`.
pub fn branch() -> Schema {
    let part = r"[A-Za-z0-9_+@-](?:\.?[A-Za-z0-9_+@-])*(?<!\.lock)";
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_BRANCH_LEN,
        "pattern": format!(r"^(?!HEAD$)(?!-){part}(?:/{part})*$"),
    })
}

macro_rules! schema_type {
    ($(#[$doc:meta])* $name:ident => $schema:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

schema_type!(
    /// A name or provider identifier: [`text`] of at most [`MAX_NAME_LEN`] characters.
    Name => text(MAX_NAME_LEN)
);

schema_type!(
    /// A deploy hook's name: [`text`] of at most [`MAX_HOOK_NAME_LEN`] characters.
    HookName => text(MAX_HOOK_NAME_LEN)
);

schema_type!(
    /// A branch name ([`branch`]).
    Branch => branch()
);

schema_type!(
    /// A build or deploy command ([`crate::domain::command`]): at most [`MAX_COMMAND_LEN`]
    /// characters, no NUL; empty skips the step.
    Command => json_schema!({
        "type": "string",
        "maxLength": MAX_COMMAND_LEN,
        "pattern": r"^[^\x00]*$",
    })
);

schema_type!(
    /// A trigger's root directory ([`crate::domain::root_directory`]): relative or `/`-anchored,
    /// never a `..` part, no `\` or control character; empty means `/`.
    RootDirectory => json_schema!({
        "type": "string",
        "maxLength": MAX_ROOT_DIRECTORY_LEN,
        "pattern": format!(r"^(?!\s)(?!(?:.*/)?\.\.(?:/.*)?$)[^\\{CONTROL}]*(?<!\s)$"),
    })
);

schema_type!(
    /// Branch or path patterns ([`crate::domain::patterns`]): at most [`MAX_PATTERNS`], each a
    /// [`text`] of at most [`MAX_PATTERN_LEN`] characters with at most [`MAX_PATTERN_WILDCARDS`] `*`;
    /// `*` matches any run of characters.
    Patterns => json_schema!({
        "type": "array",
        "maxItems": MAX_PATTERNS,
        "items": {
            "allOf": [
                text(MAX_PATTERN_LEN),
                { "pattern": format!(r"^[^*]*(?:\*[^*]*){{0,{MAX_PATTERN_WILDCARDS}}}$") },
            ],
        },
    })
);

schema_type!(
    /// A commit hash ([`crate::domain::commit_hash`]): 4–64 hexadecimal digits.
    CommitHash => json_schema!({
        "type": "string",
        "pattern": r"^[0-9a-fA-F]{4,64}$",
    })
);

schema_type!(
    /// A build token's secret: [`text`]; at most [`MAX_TOKEN_SECRET_BYTES`] bytes.
    TokenSecret => {
        let mut schema = text(chars_within(MAX_TOKEN_SECRET_BYTES));
        schema.insert(
            "description".into(),
            format!("Write-only: stored encrypted, never returned. At most {MAX_TOKEN_SECRET_BYTES} bytes of UTF-8, no control characters.").into(),
        );
        schema
    }
);

/// An environment variable's value ([`crate::domain::env_value`]): no control character below
/// U+0020 but tab, line feed and carriage return, at most [`MAX_ENV_VALUE_BYTES`] bytes.
fn env_value(then: &str) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": chars_within(MAX_ENV_VALUE_BYTES),
        "pattern": r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$",
        "description": format!("At most {MAX_ENV_VALUE_BYTES} bytes of UTF-8, no control characters but tab, line feed and carriage return.{then}"),
    })
}

schema_type!(
    /// An environment variable's value in the map form, where it may be omitted ([`env_value`]).
    EnvValue => env_value(" Omitted: the stored value is kept (409 for a variable that does not exist yet).")
);

schema_type!(
    /// An environment variable's value in the `{"variables": [...]}` form ([`env_value`]).
    EnvListValue => env_value("")
);

schema_type!(
    /// A GitHub owner or repository name of a `seed_repo` template: 1–100 of `A-Za-z0-9._-`, not `.`
    /// or `..`.
    GithubName => json_schema!({
        "type": "string",
        "pattern": r"^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,98}|\.\.[A-Za-z0-9._-]{1,98})$",
    })
);

/// An event subscription's destination ([`crate::domain::destination_url`]): an absolute `http` or
/// `https` URL with a host, no credentials, fragment, white space or control character, at most
/// [`MAX_URL_LEN`] bytes. The schema is stricter (ASCII, a DNS name or an IPv4 address, a port,
/// path and query of URL characters) and shorter by one byte: the normalised form (a `/` added to an
/// empty path) must fit too.
pub fn webhook_url() -> Schema {
    let label = r"(?![xX][nN]--)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    // A last label that is not a number: one that is makes the host an IPv4 address.
    let last = r"(?![xX][nN]--)[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    let octet = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
    let port = r"(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?";
    let path = r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*";
    // `'` is percent-encoded in a query, which would lengthen it.
    let query = r"(?:\?[A-Za-z0-9._~!$&()*+,;=:@%/?-]*)?";
    let mut schema = json_schema!({
        "type": "string",
        "maxLength": MAX_URL_LEN - 1,
        "pattern": format!(
            r"^https?://(?:(?:{label}\.)*{last}|{octet}(?:\.{octet}){{3}}){port}{path}{query}$"
        ),
    });
    schema.insert(
        "description".into(),
        format!(
            "An absolute http or https URL with a host, without credentials (user:password@), a \
             fragment, white space or control characters; at most {MAX_URL_LEN} bytes, also once \
             normalised (as returned)."
        )
        .into(),
    );
    schema
}

schema_type!(
    /// An event subscription's destination ([`webhook_url`]).
    WebhookUrl => webhook_url()
);

schema_type!(
    /// A Standard Webhooks signing secret ([`crate::domain::WebhookSecret::parse`]): `whsec_` and
    /// the padded standard base64 of a key of 24–64 bytes (the schema: 24–62 bytes).
    WebhookSecret => json_schema!({
        "type": "string",
        "pattern": r"^whsec_(?:[A-Za-z0-9+/]{4}){8,20}(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$",
        "description": format!(
            "Write-only: `whsec_` followed by the standard base64 (with padding) of a \
             {MIN_SECRET_KEY_BYTES}-{MAX_SECRET_KEY_BYTES} byte key; stored encrypted, never returned."
        ),
    })
);

schema_type!(
    /// An event subscription's Worker filter: at most [`MAX_SUBSCRIPTION_WORKERS`] Worker names.
    WorkerNames => json_schema!({
        "type": "array",
        "maxItems": MAX_SUBSCRIPTION_WORKERS,
        "items": WorkerId::json_schema(&mut SchemaGenerator::default()).to_value(),
    })
);

/// A relative path of a `seed_repo` template ([`crate::domain::relative_path`]): `/`-separated
/// non-empty parts, none `.`, `..` or `.git`, no `\` or control character, at most 1024 bytes.
fn relative_path(allow_empty: bool) -> Schema {
    let part = format!(r"[^/\\{CONTROL}]+");
    let parts = format!("{part}(?:/{part})*");
    let body = if allow_empty {
        format!("(?:{parts})?")
    } else {
        parts
    };
    json_schema!({
        "type": "string",
        "maxLength": chars_within(1024),
        "pattern": format!(r"^(?!\s)(?!(?:.*/)?(?:\.|\.\.|\.git)(?:/.*)?$)/*{body}/*(?<!\s)$"),
    })
}

schema_type!(
    /// The template directory of a `seed_repo` (empty: all of it).
    SeedPath => relative_path(true)
);

schema_type!(
    /// A file name of a `seed_repo`.
    SeedFilename => relative_path(false)
);

/// `createManualBuild`: a branch, or a commit without `seed_repo` (a seed needs the branch to create).
pub fn manual_build_rules(schema: &mut Schema) {
    schema.insert(
        "anyOf".into(),
        serde_json::json!([
            {"required": ["branch"], "properties": {"branch": {"type": "string"}}},
            {"required": ["commit_hash"], "properties": {"commit_hash": {"type": "string"}, "seed_repo": {"type": "null"}}},
        ]),
    );
}

/// A `seed_repo` file: with `isBase64`, `content` is base64 ([`BASE64_PATTERN`]).
pub fn seed_file_rules(schema: &mut Schema) {
    schema.insert(
        "anyOf".into(),
        serde_json::json!([
            {"properties": {"isBase64": {"const": false}}},
            {"required": ["isBase64"], "properties": {"isBase64": {"const": true}, "content": {"pattern": BASE64_PATTERN}}},
        ]),
    );
}

/// `upsertEnvironmentVariables`: at most [`MAX_ENV_VARS`] variables, named as
/// [`crate::domain::EnvVarKey`] says.
pub fn env_vars_rules(schema: &mut Schema) {
    schema.insert("maxProperties".into(), MAX_ENV_VARS.into());
    let key = crate::domain::EnvVarKey::json_schema(&mut SchemaGenerator::default());
    schema.insert("propertyNames".into(), key.to_value());
}

/// A provider's account or repository id in a path: looked up as given, so any [`text`] that is a
/// path segment (not `.` or `..`, which URLs resolve away).
pub fn path_segment_text() -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_NAME_LEN,
        "pattern": format!(r"^(?!\.\.?$)[^{CONTROL}]*[^\s{CONTROL}][^{CONTROL}]*$"),
    })
}

/// An entry of a comma-separated Worker id list ([`crate::api::extract::id_list`]): a
/// [`crate::domain::WorkerId`] without white space around it (entries are trimmed).
pub fn worker_id_list_item() -> Schema {
    json_schema!({
        "type": "string",
        "pattern": format!(r"^(?!\s)(?!\.\.?$)[^/,{CONTROL}]{{1,64}}(?<!\s)$"),
    })
}

/// The `root_directory` query parameter of `getWorkerConfigAutofill`: no `..` part, no control
/// character.
pub fn autofill_root_directory() -> Schema {
    json_schema!({
        "type": "string",
        "pattern": format!(r"^(?!(?:.*/)?\.\.(?:/.*)?$)[^{CONTROL}]*$"),
    })
}

/// Takes `null` out of every property of an object schema (a schemars `transform`): for bodies whose
/// optional fields are `Option`s only to tell "absent" apart, where `null` means the same as absent
/// and a client has no reason to send it. Kiln still reads `null` as absent.
pub fn without_null(schema: &mut Schema) {
    let Some(serde_json::Value::Object(properties)) = schema.get_mut("properties") else {
        return;
    };
    for property in properties.values_mut() {
        let serde_json::Value::Object(p) = property else {
            continue;
        };
        if let Some(serde_json::Value::Array(types)) = p.get_mut("type") {
            types.retain(|t| t != "null");
            if let [only] = types.as_slice() {
                let only = only.clone();
                p.insert("type".into(), only);
            }
        }
        for key in ["anyOf", "oneOf"] {
            let Some(serde_json::Value::Array(options)) = p.get_mut(key) else {
                continue;
            };
            options.retain(|o| o.get("type").and_then(|t| t.as_str()) != Some("null"));
            if let [only] = options.as_slice()
                && let serde_json::Value::Object(only) = only.clone()
            {
                p.remove(key);
                for (k, v) in only {
                    p.entry(k).or_insert(v);
                }
            }
        }
    }
}
