//! Secrets on the command line: read from files (the documented way), and warned about when given
//! as arguments, which every local user can read (`ps`, `/proc/<pid>/cmdline`).

use std::path::Path;

use anyhow::Context;

/// Flags whose value is a secret whenever given.
const SECRET_FLAGS: &[&str] = &[
    "--bootstrap-token",
    "--metrics-token",
    "--github-webhook-secret",
];
/// Flags whose value is a URL that is a secret when it carries a password.
const URL_FLAGS: &[&str] = &["--database-url", "--npm-registry"];

/// Reads a secret from `path`: the whole file without trailing line breaks and blanks. A file that
/// others may read is used but reported.
pub fn read_secret_file(what: &str, path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} from {}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            "the {what} file can be read by other users: make it 0600 (chmod 600)"
        );
    }
    let secret = text.trim_end().to_owned();
    anyhow::ensure!(
        !secret.is_empty(),
        "the {what} file {} is empty",
        path.display()
    );
    Ok(secret)
}

/// Whether a URL carries a password: `scheme://user:password@host…` or a `password=` parameter.
pub fn url_has_password(url: &str) -> bool {
    let authority = url.split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or("")
    });
    let in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.split_once(':').is_some_and(|(_, p)| !p.is_empty()));
    let in_query = url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|kv| kv.to_ascii_lowercase().starts_with("password="))
    });
    in_userinfo || in_query
}

/// The secret-carrying flags given in `args` (a process's arguments, program name first): each
/// secret flag, and each URL flag whose URL has a password.
pub fn secrets_in_argv(args: &[String]) -> Vec<&'static str> {
    let mut found = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].as_str();
        if arg == "--" {
            break;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value)),
            None => (arg, None),
        };
        let value = || inline.or_else(|| args.get(i + 1).map(String::as_str));
        if let Some(f) = SECRET_FLAGS.iter().find(|f| **f == flag) {
            found.push(*f);
        } else if let Some(f) = URL_FLAGS.iter().find(|f| **f == flag)
            && value().is_some_and(url_has_password)
        {
            found.push(*f);
        }
        i += 1;
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// Logs a warning for each secret given on the command line, naming the file or environment form
/// to use instead.
pub fn warn_about_argv_secrets(args: &[String]) {
    for flag in secrets_in_argv(args) {
        let instead = match flag {
            "--bootstrap-token" => "--bootstrap-token-file or KILN_BOOTSTRAP_TOKEN_FILE",
            "--metrics-token" => "--metrics-token-file or KILN_METRICS_TOKEN_FILE",
            "--github-webhook-secret" => {
                "--github-webhook-secret-file or KILN_GITHUB_WEBHOOK_SECRET_FILE"
            }
            "--database-url" => "--database-url-file or KILN_DATABASE_URL_FILE",
            _ => "its environment variable",
        };
        tracing::warn!(
            "{flag} was given on the command line, where every local user can read it (ps, \
             /proc/PID/cmdline): use {instead} instead"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        std::iter::once("kiln")
            .chain(list.iter().copied())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn finds_secret_flags_in_both_spellings() {
        assert_eq!(
            secrets_in_argv(&args(&["serve", "--bootstrap-token", "x", "--listen", "a"])),
            ["--bootstrap-token"]
        );
        assert_eq!(
            secrets_in_argv(&args(&[
                "serve",
                "--github-webhook-secret=s",
                "--build-env",
                "A=b"
            ])),
            ["--github-webhook-secret"]
        );
        assert!(secrets_in_argv(&args(&["serve", "--bootstrap-token-file", "/f"])).is_empty());
        assert_eq!(
            secrets_in_argv(&args(&["serve", "--metrics-token=t", "--runners", "0"])),
            ["--metrics-token"]
        );
        assert!(secrets_in_argv(&args(&["serve", "--metrics-token-file", "/f"])).is_empty());
        assert!(secrets_in_argv(&args(&["serve", "--", "--bootstrap-token"])).is_empty());
    }

    #[test]
    fn urls_count_only_with_a_password() {
        assert_eq!(
            secrets_in_argv(&args(&[
                "serve",
                "--database-url",
                "postgres://k:pw@db/kiln"
            ])),
            ["--database-url"]
        );
        assert_eq!(
            secrets_in_argv(&args(&[
                "serve",
                "--database-url=postgres://db/kiln?password=pw"
            ])),
            ["--database-url"]
        );
        assert!(
            secrets_in_argv(&args(&[
                "serve",
                "--database-url",
                "postgres://kiln@db/kiln"
            ]))
            .is_empty()
        );
        assert!(
            secrets_in_argv(&args(&[
                "serve",
                "--database-url",
                "sqlite:///var/lib/kiln/k.db"
            ]))
            .is_empty()
        );
        assert_eq!(
            secrets_in_argv(&args(&[
                "serve",
                "--npm-registry",
                "https://u:t@npm.example/"
            ])),
            ["--npm-registry"]
        );
        assert!(url_has_password("postgresql://user:p%40ss@host:5432/db"));
        assert!(!url_has_password("postgres://user@host/db?sslmode=require"));
        assert!(!url_has_password("postgres://host/db#user:pw@x"));
    }

    #[test]
    fn secret_files_are_read_without_the_trailing_newline() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret value\n\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            read_secret_file("token", &path).expect("read"),
            "s3cret value"
        );
        std::fs::write(&path, "\n").expect("write");
        assert!(read_secret_file("token", &path).is_err());
        assert!(read_secret_file("token", &dir.path().join("missing")).is_err());
    }
}
