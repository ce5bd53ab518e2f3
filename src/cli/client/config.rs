//! Where the client finds its server: `kiln login` profiles in `$XDG_CONFIG_HOME/kiln/config.json`
//! (default `~/.config/kiln/config.json`), overridden by `KILN_URL`, `KILN_API_TOKEN` and
//! `KILN_ACCOUNT_ID` (issue 10; README "Command-line client").
//!
//! The file holds API tokens: it is written whole to a new 0600 file in a 0700 directory and renamed
//! over the old one (a crash leaves the old file or the new one, never half of either).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The server's URL (scheme, host, port and any path prefix before `/client/v4`).
pub const ENV_URL: &str = "KILN_URL";
/// An API token; it wins over the profile's.
pub const ENV_TOKEN: &str = "KILN_API_TOKEN";
/// The profile name used when `--profile` and `KILN_PROFILE` are absent.
pub const DEFAULT_PROFILE: &str = "default";

/// One server and the token to call it with.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The server's base URL as [`normalize_url`] leaves it.
    pub url: String,
    pub token: String,
    /// The account commands act on unless `--account` or `KILN_ACCOUNT_ID` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

// The token must not reach a log or a panic message through `{:?}`.
impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("url", &self.url)
            .field("token", &"***")
            .field("account_id", &self.account_id)
            .finish()
    }
}

/// The whole configuration file: profiles by name.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// The configuration file's path: `$XDG_CONFIG_HOME/kiln/config.json`, else
/// `$HOME/.config/kiln/config.json` (the XDG base directory rule).
pub fn config_path() -> anyhow::Result<PathBuf> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let base = match from_env("XDG_CONFIG_HOME") {
        Some(dir) => dir,
        None => from_env("HOME")
            .context("neither XDG_CONFIG_HOME nor HOME is set: cannot place the kiln profile")?
            .join(".config"),
    };
    Ok(base.join("kiln").join("config.json"))
}

impl ConfigFile {
    /// Reads the file at `path`; a missing file is an empty configuration. A file others may read
    /// is used but reported (it holds tokens).
    pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        use std::os::unix::fs::PermissionsExt;
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {} can be read by other users and holds API tokens: chmod 600 it",
                path.display()
            );
        }
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }

    /// Writes the file at `path` atomically, mode 0600, creating its directory with mode 0700 (and
    /// narrowing the `kiln` directory to 0700 when it exists with a wider mode).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = path
            .parent()
            .context("the configuration path has no directory")?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
        // tempfile creates the file 0600 with a random name, and `persist` renames it into place.
        let mut file = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a file in {}", dir.display()))?;
        let mut text = serde_json::to_vec_pretty(self).context("encoding the configuration")?;
        text.push(b'\n');
        file.write_all(&text)
            .and_then(|()| file.as_file().sync_all())
            .with_context(|| format!("writing {}", file.path().display()))?;
        file.persist(path)
            .with_context(|| format!("replacing {}", path.display()))?;
        // The rename is durable once the directory is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Reduces what a user types as the server's address to its base: surrounding blanks, trailing
/// slashes and a trailing `/client/v4` (the API's base path, which some copy with the host) go.
/// Only `http` and `https` URLs with a host are accepted.
pub fn normalize_url(raw: &str) -> anyhow::Result<String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let trimmed = trimmed
        .strip_suffix(crate::api::BASE)
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    let url = url::Url::parse(trimmed).with_context(|| format!("{raw:?} is not a URL"))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https") && url.host().is_some(),
        "{raw:?} is not an http:// or https:// URL of a server"
    );
    anyhow::ensure!(
        url.query().is_none() && url.fragment().is_none(),
        "{raw:?}: give the server's URL without a query or fragment"
    );
    anyhow::ensure!(
        url.username().is_empty() && url.password().is_none(),
        "{raw:?}: give the server's URL without credentials (the token is read from standard input)"
    );
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// The server, token and account a command uses, after the environment overrode the profile.
#[derive(Clone)]
pub struct Connection {
    pub url: String,
    pub token: String,
    /// The account when given (flag, `KILN_ACCOUNT_ID` or profile); else the token's only one.
    pub account: Option<String>,
}

/// A non-empty environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Resolves the connection: `KILN_URL` and `KILN_API_TOKEN` over the profile `profile`, `account`
/// (the flag or `KILN_ACCOUNT_ID`) over the profile's account. Fails with what to do when no URL
/// or token is known.
pub fn resolve(profile: &str, account: Option<&str>) -> anyhow::Result<Connection> {
    let path = config_path();
    let stored = match &path {
        Ok(path) => ConfigFile::load(path)?.profiles.remove(profile),
        Err(_) => None,
    };
    let url = env(ENV_URL).or_else(|| stored.as_ref().map(|p| p.url.clone()));
    let token = env(ENV_TOKEN).or_else(|| stored.as_ref().map(|p| p.token.clone()));
    let (Some(url), Some(token)) = (url, token) else {
        let place = path.map_or_else(
            |_| "the configuration file".to_owned(),
            |p| p.display().to_string(),
        );
        let missing = if profile == DEFAULT_PROFILE {
            format!("no Kiln server configured (no profile in {place})")
        } else {
            format!("no profile {profile:?} in {place}")
        };
        anyhow::bail!(
            "{missing}: set {ENV_URL} and {ENV_TOKEN}, or run `kiln login --url URL{}` \
             (it reads the token from standard input)",
            if profile == DEFAULT_PROFILE {
                String::new()
            } else {
                format!(" --profile {profile}")
            }
        );
    };
    let url =
        normalize_url(&url).with_context(|| format!("the server URL ({ENV_URL} or profile)"))?;
    let account = account
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .or_else(|| stored.and_then(|p| p.account_id));
    Ok(Connection {
        url,
        token: token.trim().to_owned(),
        account,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_the_api_path_and_trailing_slashes() {
        for raw in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            " http://127.0.0.1:8080/client/v4/ ",
        ] {
            assert_eq!(normalize_url(raw).expect(raw), "http://127.0.0.1:8080");
        }
        assert_eq!(
            normalize_url("https://ci.example.com/kiln/client/v4").expect("prefix"),
            "https://ci.example.com/kiln"
        );
        for bad in [
            "",
            "ci.example.com",
            "ftp://ci.example.com",
            "http://u:p@ci.example.com",
            "http://ci.example.com/?x=1",
        ] {
            assert!(normalize_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn profiles_are_written_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("conf").join("kiln").join("config.json");
        let mut config = ConfigFile::default();
        config.profiles.insert(
            "default".into(),
            Profile {
                url: "http://127.0.0.1:1".into(),
                token: "tok-secret".into(),
                account_id: None,
            },
        );
        config.save(&path).expect("save");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("dir")), 0o700);
        let back = ConfigFile::load(&path).expect("load");
        assert_eq!(back.profiles["default"], config.profiles["default"]);
        assert!(!format!("{back:?}").contains("tok-secret"));
        // Saving again replaces the file (no temporary file is left behind).
        config.save(&path).expect("save again");
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["config.json"]);
        assert!(
            ConfigFile::load(&dir.path().join("missing.json"))
                .expect("missing is empty")
                .profiles
                .is_empty()
        );
    }
}
