//! `seed_repo` of a manual build: a template repository (a directory of it) and up to two files, used
//! to create the first commit of the connected, still empty repository.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::Invalid;

/// Files a seed may add or change.
pub const MAX_SEED_FILES: usize = 2;

/// A validated seed request, as stored with the build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedRepo {
    /// The template's owner and name (cloned through the same URL template as connections).
    pub owner: String,
    pub repository: String,
    /// Its branch; `None`: the default branch.
    pub branch: Option<String>,
    /// The directory of the template that becomes the new repository's root (`""`: all of it).
    pub path: String,
    pub files: Vec<SeedFile>,
}

/// A file to write (or edit) in the seeded tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedFile {
    /// Relative path in the new repository.
    pub filename: String,
    /// The content, base64-encoded here whatever the request used.
    pub content_base64: String,
    /// When set, the template's file is kept and this text in it is replaced by the content.
    pub replace: Option<String>,
}

impl SeedFile {
    /// The decoded content.
    pub fn content(&self) -> Vec<u8> {
        STANDARD.decode(&self.content_base64).unwrap_or_default()
    }
}

/// Checks a relative path: no `..`, no leading `/`, no empty or control characters.
pub fn relative_path(field: &str, value: &str, allow_empty: bool) -> Result<String, Invalid> {
    let v = value.trim().trim_matches('/');
    if v.is_empty() {
        return if allow_empty {
            Ok(String::new())
        } else {
            Err(Invalid::field(field, "must not be empty"))
        };
    }
    if v.len() > 1024 || v.chars().any(char::is_control) || v.contains('\\') {
        return Err(Invalid::field(field, "is not a valid relative path"));
    }
    if v.split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == ".." || seg == ".git")
    {
        return Err(Invalid::field(
            field,
            "must not contain empty, `.`, `..` or `.git` segments",
        ));
    }
    Ok(v.to_owned())
}

/// Decodes a file's content as the request gives it.
pub fn encode_content(field: &str, content: &str, is_base64: bool) -> Result<String, Invalid> {
    if is_base64 {
        STANDARD
            .decode(content.trim())
            .map_err(|_| Invalid::field(field, "is not valid base64"))?;
        Ok(content.trim().to_owned())
    } else {
        Ok(STANDARD.encode(content.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            relative_path("p", "/templates/worker/", true).unwrap(),
            "templates/worker"
        );
        assert_eq!(relative_path("p", "", true).unwrap(), "");
        assert!(relative_path("p", "", false).is_err());
        assert!(relative_path("p", "a/../b", true).is_err());
        assert!(relative_path("p", ".git/config", true).is_err());
    }
}
