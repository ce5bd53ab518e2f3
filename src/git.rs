//! The git mirror cache: one bare mirror per repository under `<data_dir>/git`, created on first use
//! and fetched incrementally afterwards, from which builds check out commits and the API reads files.
//!
//! Everything goes through the `git` CLI (what most CI systems use) with a cleared environment, a time
//! limit per command, and errors that carry git's stderr without credentials. Only branches and tags
//! are fetched. Clone URLs are never stored on disk: each fetch passes the URL on the command line, so
//! that credentials in it (a future app token) do not persist in a mirror's config.
//!
//! Layout under the root: `mirrors/<owner>/<repo>.git` (bare repositories), `mirrors/<owner>/<repo>.lock`
//! (the cross-process fetch lock), `external/<sha256 of the URL>.git` (mirrors of submodules on other
//! hosts than the URL template's), `tmp/` (mirrors being created, renamed into place once complete)
//! and `home/` (git's `HOME`, empty, so no user configuration applies).

mod mirror;
mod names;
mod run;
mod submodules;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::domain::SeedRepo;

pub use mirror::{CommitInfo, Mirror, Resolved};
pub use names::{check_branch, check_slug, is_full_oid, valid_refname};
pub use run::redact_url;
use run::{Cmd, Git};
pub use submodules::{
    MAX_GITMODULES_BYTES, MAX_SUBMODULE_DEPTH, MAX_SUBMODULES, SubmoduleCheckout,
};

/// Most bytes of file content a seed template may have.
pub const MAX_SEED_BYTES: u64 = 256 * 1024 * 1024;
/// Most files, directories and links a seed template may have.
pub const MAX_SEED_ENTRIES: u64 = 50_000;
/// How the template of a seed is copied.
const SEED_COPY_LIMITS: crate::untrusted::CopyLimits = crate::untrusted::CopyLimits {
    max_bytes: MAX_SEED_BYTES,
    max_entries: MAX_SEED_ENTRIES,
    max_depth: 64,
};

/// Clone URL of a repository when nothing else is configured.
pub const DEFAULT_URL_TEMPLATE: &str = "https://github.com/{owner}/{repo}.git";
/// Time limit of a fetch (or the first clone) of one repository.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// Time limit of a local git command (reading objects, checking out a workspace).
pub const DEFAULT_LOCAL_TIMEOUT: Duration = Duration::from_secs(300);

/// A failure callers branch on (the API maps these to 4xx answers, a build to a `fail` outcome).
/// Anything else from this module is an internal error. Find one in an `anyhow::Error` with
/// [`GitError::find`].
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// A name that cannot be passed to git safely (option-like, a revision expression, a bad path).
    #[error("invalid {what}: {value:?}")]
    InvalidName { what: &'static str, value: String },
    /// The repository has no such branch.
    #[error("no branch named {0:?}")]
    UnknownBranch(String),
    /// The repository has no commit with this id.
    #[error("no commit {0:?} in the repository")]
    UnknownCommit(String),
    /// The abbreviated commit id matches several commits.
    #[error("the abbreviated commit id {0:?} matches several commits")]
    AmbiguousCommit(String),
    /// The remote could not be fetched (unknown repository, no access, network failure).
    #[error("could not fetch {url}: {stderr}")]
    Fetch { url: String, stderr: String },
    /// A git command failed.
    #[error("`git {args}` failed (exit code {code:?}): {stderr}")]
    Command {
        args: String,
        code: Option<i32>,
        stderr: String,
    },
    /// A git command ran past its time limit and was killed.
    #[error("`git {args}` did not finish within {secs} s")]
    Timeout { args: String, secs: u64 },
    /// A git command printed more than allowed.
    #[error("`git {args}` printed more than {limit} bytes")]
    TooMuchOutput { args: String, limit: usize },
}

impl GitError {
    /// The [`GitError`] in an error's chain, if any.
    pub fn find(err: &anyhow::Error) -> Option<&GitError> {
        err.chain().find_map(|e| e.downcast_ref::<GitError>())
    }
}

/// The mirror cache. Cheap to share behind an `Arc`; safe to use from many tasks and processes.
#[derive(Debug)]
pub struct GitCache {
    root: PathBuf,
    url_template: String,
    git: Git,
    fetch_timeout: Duration,
    local_timeout: Duration,
    /// Per mirror path: its last successful fetch. Holding the mutex = fetching it.
    fetches: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<Option<LastFetch>>>>>,
}

impl GitCache {
    /// A cache under `root` (usually `<data_dir>/git`) cloning from `url_template`, in which `{owner}`
    /// and `{repo}` stand for the repository's owner and name.
    pub fn new(root: impl Into<PathBuf>, url_template: impl Into<String>) -> GitCache {
        let root = root.into();
        GitCache {
            git: Git::new(root.join("home")),
            root,
            url_template: url_template.into(),
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            local_timeout: DEFAULT_LOCAL_TIMEOUT,
            fetches: Mutex::new(HashMap::new()),
        }
    }

    /// The same cache with other time limits for fetches and for local commands.
    pub fn with_timeouts(mut self, fetch: Duration, local: Duration) -> GitCache {
        self.fetch_timeout = fetch;
        self.local_timeout = local;
        self
    }

    /// The directory the cache lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The clone URL of `owner/repo` (the connection's `provider_account_name` and `repo_name`).
    pub fn clone_url(&self, owner: &str, repo: &str) -> String {
        self.url_template
            .replace("{owner}", owner)
            .replace("{repo}", repo)
    }

    /// Where the mirror of `owner/repo` lives (whether or not it exists yet).
    fn mirror_path(&self, owner: &str, repo: &str) -> PathBuf {
        self.root
            .join("mirrors")
            .join(owner)
            .join(format!("{repo}.git"))
    }

    /// The up-to-date mirror of `owner/repo`: cloned on first use, fetched (branches and tags, with
    /// pruning) on every later call. One fetch per repository runs at a time, across tasks (an async
    /// mutex) and processes (a file lock); a caller that waited for a fetch which started after its
    /// own call, with the same credentials, reuses that fetch. A failed first clone leaves nothing
    /// behind.
    ///
    /// Mirrors are shared by every build and account, whoever's credentials filled them: a mirror is
    /// only handed out after the remote accepted the caller's own credentials (none here) in a fetch
    /// of its own or one it shares with the same credentials. A caller that may not read the
    /// repository gets [`GitError::Fetch`], never the mirror.
    pub async fn mirror(&self, owner: &str, repo: &str) -> anyhow::Result<Mirror> {
        self.mirror_with_token(owner, repo, None).await
    }

    /// [`GitCache::mirror`] of a private repository: `token` (a GitHub installation token) reaches git
    /// as an `Authorization` header through its environment, never its command line.
    pub async fn mirror_with_token(
        &self,
        owner: &str,
        repo: &str,
        token: Option<&str>,
    ) -> anyhow::Result<Mirror> {
        names::check_slug("repository owner", owner)?;
        names::check_slug("repository name", repo)?;
        let path = self.mirror_path(owner, repo);
        let url = self.clone_url(owner, repo);
        self.mirror_at(path, &url, token_header(token)).await
    }

    /// The up-to-date mirror at `path` of the repository at `url` (created or fetched), `auth` being
    /// the `Authorization` header of an installation token. Every call fetches with its own
    /// credentials unless it waited for a fetch that started after the call with the same ones: the
    /// remote's answer to those credentials is what lets the caller use the (shared) mirror.
    async fn mirror_at(
        &self,
        path: PathBuf,
        url: &str,
        auth: Option<String>,
    ) -> anyhow::Result<Mirror> {
        let slot = {
            let mut map = self
                .fetches
                .lock()
                .map_err(|_| anyhow::anyhow!("git fetch table poisoned"))?;
            map.entry(path.clone()).or_default().clone()
        };
        let asked = Instant::now();
        let credentials = credentials_key(url, auth.as_deref());
        let mut last_fetch = slot.lock().await;
        let shared = last_fetch
            .as_ref()
            .is_some_and(|last| last.started >= asked && last.credentials == credentials);
        if !shared {
            let started = Instant::now();
            let _file_lock = lock_file(path.with_extension("lock")).await?;
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                self.fetch(&path, url, auth.clone()).await?;
                self.maintain_in_background(&path);
            } else {
                self.create(&path, url, auth.clone()).await?;
            }
            *last_fetch = Some(LastFetch {
                started,
                credentials,
            });
        }
        Ok(self.open_mirror(path, url))
    }

    /// The mirror at `path` as it is, without fetching.
    fn open_mirror(&self, path: PathBuf, url: &str) -> Mirror {
        Mirror::new(path, redact_url(url), self.git.clone(), self.local_timeout)
    }

    /// Fetches one commit by id into the mirror at `path`, under `refs/kiln/commits/<sha>` (so that
    /// neither `--prune` nor gc removes it): for a commit on no branch or tag, such as a submodule's
    /// recorded commit. Needs a server that serves any reachable commit (protocol v2 does).
    async fn fetch_commit(
        &self,
        path: &Path,
        url: &str,
        token_auth: Option<String>,
        sha: &str,
    ) -> anyhow::Result<()> {
        let (url, auth) = remote_and_auth(url, token_auth);
        let out = self
            .git
            .output(
                remote_cmd(self.fetch_timeout, &url, auth)
                    .dir(path)
                    .args([
                        "-c",
                        "maintenance.auto=false",
                        "fetch",
                        "--quiet",
                        "--no-write-fetch-head",
                        "--end-of-options",
                        &url,
                    ])
                    .arg(format!("+{sha}:refs/kiln/commits/{sha}")),
            )
            .await?;
        if !out.success {
            return Err(GitError::Fetch {
                url: redact_url(&url),
                stderr: out.stderr,
            }
            .into());
        }
        Ok(())
    }

    /// Creates the mirror in `tmp/` and renames it into place once complete.
    async fn create(&self, path: &Path, url: &str, auth: Option<String>) -> anyhow::Result<()> {
        let tmp_root = self.root.join("tmp");
        tokio::fs::create_dir_all(&tmp_root)
            .await
            .with_context(|| format!("creating {}", tmp_root.display()))?;
        let tmp = TempDir(Some(
            tmp_root.join(format!("mirror-{}", uuid::Uuid::new_v4().simple())),
        ));
        let tmp_path = tmp.path().to_path_buf();
        self.git
            .ok(Cmd::new(self.local_timeout)
                .args(["init", "--quiet", "--bare", "--template="])
                .arg(&tmp_path))
            .await
            .context("creating a bare repository")?;
        self.update_head(&tmp_path, url, auth.clone()).await?;
        self.fetch(&tmp_path, url, auth).await?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        match tokio::fs::rename(&tmp_path, path).await {
            Ok(()) => {
                tmp.keep();
                tracing::info!(url = %redact_url(url), mirror = %path.display(), "created git mirror");
                Ok(())
            }
            // Someone else completed the same mirror meanwhile (the file lock makes this rare): use it.
            Err(_)
                if tokio::fs::try_exists(path.join("HEAD"))
                    .await
                    .unwrap_or(false) =>
            {
                Ok(())
            }
            Err(e) => {
                Err(e).with_context(|| format!("moving the new mirror to {}", path.display()))
            }
        }
    }

    /// Fetches branches and tags into the mirror at `path`, pruning deleted ones.
    async fn fetch(
        &self,
        path: &Path,
        url: &str,
        token_auth: Option<String>,
    ) -> anyhow::Result<()> {
        let (url, auth) = remote_and_auth(url, token_auth);
        let url = url.as_str();
        let out = self
            .git
            .output(
                remote_cmd(self.fetch_timeout, url, auth.clone())
                    .dir(path)
                    .args([
                        // Housekeeping runs after the fetch, off the build's path (below).
                        "-c",
                        "maintenance.auto=false",
                        "fetch",
                        "--quiet",
                        "--prune",
                        "--no-write-fetch-head",
                        "--end-of-options",
                        url,
                        "+refs/heads/*:refs/heads/*",
                        "+refs/tags/*:refs/tags/*",
                    ]),
            )
            .await?;
        if !out.success {
            return Err(GitError::Fetch {
                url: redact_url(url),
                stderr: out.stderr,
            }
            .into());
        }
        // The default branch: set at creation, refreshed when the branch HEAD names is gone.
        if !head_branch_exists(path).await {
            self.update_head(path, url, auth).await?;
        }
        Ok(())
    }

    /// Creates the first commit of `owner/repo`'s `branch` from a template (`seed`), working in `work`
    /// (a fresh directory of the caller's), and pushes it without force: a branch that already exists
    /// is refused by the remote. Returns the new commit.
    ///
    /// The template is untrusted content: it is read and copied as an untrusted tree
    /// ([`crate::untrusted::Tree`]: no link out of it is followed, links are copied as links, at most
    /// [`MAX_SEED_BYTES`] in [`MAX_SEED_ENTRIES`] entries), and the copy and the seed's files are
    /// written with the rights of `user` (the build's user when Kiln runs as root), so that not even a
    /// fault in that walk could read or write what the build user cannot.
    pub async fn seed(
        &self,
        owner: &str,
        repo: &str,
        branch: &str,
        seed: &SeedRepo,
        work: &Path,
        user: Option<crate::sandbox::BuildUser>,
    ) -> anyhow::Result<String> {
        names::check_branch(branch)?;
        let template = self.mirror(&seed.owner, &seed.repository).await?;
        let resolved = template.resolve(seed.branch.as_deref(), None).await?;
        let checkout = work.join("template");
        template.checkout(&resolved.sha, &checkout).await?;
        let tree = work.join("seed");
        tokio::fs::create_dir(&tree)
            .await
            .with_context(|| format!("creating {}", tree.display()))?;
        if let Some(user) = user {
            use std::os::unix::fs::PermissionsExt;
            std::os::unix::fs::lchown(&tree, Some(user.uid), Some(user.gid))
                .with_context(|| format!("chown {}", tree.display()))?;
            tokio::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o700))
                .await
                .with_context(|| format!("chmod {}", tree.display()))?;
        }
        let (files, path) = (seed.files.clone(), seed.path.clone());
        let copy_to = tree.clone();
        let template_name = format!("{}/{}", seed.owner, seed.repository);
        crate::sandbox::BuildUser::run_as(user, move || -> anyhow::Result<()> {
            use crate::untrusted::{Tree, TreeError};
            let template = Tree::open(&checkout)?;
            let source = if path.is_empty() {
                template
            } else {
                template.open_dir(&path).map_err(|e| match e {
                    TreeError::Missing(_) | TreeError::NotADirectory(_) => {
                        anyhow::anyhow!("the template {template_name} has no directory {path:?}")
                    }
                    other => anyhow::anyhow!("the template {template_name}: {other}"),
                })?
            };
            source
                .copy_into(&copy_to, SEED_COPY_LIMITS)
                .with_context(|| format!("copying the template {template_name}"))?;
            let dest = Tree::open(&copy_to)?;
            for f in &files {
                let content = f.content();
                let bytes = match &f.replace {
                    Some(needle) => {
                        let text = dest.read(&f.filename, MAX_SEED_BYTES).map_err(|e| {
                            anyhow::anyhow!(
                                "{}: no such text file in the template ({e})",
                                f.filename
                            )
                        })?;
                        String::from_utf8_lossy(&text)
                            .replace(needle.as_str(), &String::from_utf8_lossy(&content))
                            .into_bytes()
                    }
                    None => content,
                };
                dest.write(&f.filename, &bytes)
                    .with_context(|| format!("writing {}", f.filename))?;
            }
            Ok(())
        })
        .await
        .context("preparing the seed")??;
        // The tree belongs to the build user; git runs as Kiln in it.
        let safe = format!("safe.directory={}", tree.display());
        let message = format!("Initial commit from {}/{}", seed.owner, seed.repository);
        for args in [
            vec!["init", "--quiet", "--template=", "-b", branch],
            vec!["add", "--all"],
            vec![
                "-c",
                "user.name=Kiln",
                "-c",
                "user.email=kiln@localhost",
                "commit",
                "--quiet",
                "-m",
                &message,
            ],
        ] {
            self.git
                .ok(Cmd::new(self.local_timeout)
                    .dir(&tree)
                    .args(["-c", safe.as_str()])
                    .args(args))
                .await
                .context("committing the seed")?;
        }
        let (url, auth) = split_credentials(&self.clone_url(owner, repo));
        // Only an empty branch is seeded (a push of an identical first commit would pass silently).
        let heads = self
            .git
            .output(
                with_auth(Cmd::new(self.fetch_timeout), auth.clone())
                    .dir(&tree)
                    .args(["-c", safe.as_str()])
                    .args(["ls-remote", "--heads", "--end-of-options", &url])
                    .arg(format!("refs/heads/{branch}")),
            )
            .await?;
        if !heads.success {
            return Err(GitError::Fetch {
                url: redact_url(&url),
                stderr: heads.stderr,
            }
            .into());
        }
        anyhow::ensure!(
            heads.stdout.is_empty(),
            "the repository already has a branch {branch}: only an empty branch can be seeded"
        );
        let out = self
            .git
            .output(
                with_auth(Cmd::new(self.fetch_timeout), auth)
                    .dir(&tree)
                    .args(["-c", safe.as_str()])
                    .args([
                        "push",
                        "--quiet",
                        "--end-of-options",
                        &url,
                        &format!("HEAD:refs/heads/{branch}"),
                    ]),
            )
            .await?;
        if !out.success {
            return Err(GitError::Fetch {
                url: redact_url(&url),
                stderr: out.stderr,
            }
            .into());
        }
        let sha = self
            .git
            .ok(Cmd::new(self.local_timeout).dir(&tree).args([
                "-c",
                safe.as_str(),
                "rev-parse",
                "HEAD",
            ]))
            .await?;
        Ok(String::from_utf8_lossy(&sha).trim().to_owned())
    }

    /// `git maintenance run --auto` (gc when loose objects pile up) off the build's path: git locks what
    /// it rewrites, so fetches and checkouts go on meanwhile.
    fn maintain_in_background(&self, path: &Path) {
        let git = self.git.clone();
        let maintenance = Cmd::new(self.local_timeout).dir(path).args([
            "maintenance",
            "run",
            "--auto",
            "--quiet",
        ]);
        tokio::spawn(async move {
            if let Err(e) = git.ok(maintenance).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "git maintenance of a mirror failed"
                );
            }
        });
    }

    /// Points the mirror's `HEAD` at the remote's default branch (left alone for an empty remote).
    async fn update_head(
        &self,
        path: &Path,
        url: &str,
        token_auth: Option<String>,
    ) -> anyhow::Result<()> {
        let (url, auth) = remote_and_auth(url, token_auth);
        let url = url.as_str();
        let out = self
            .git
            .output(remote_cmd(self.fetch_timeout, url, auth).dir(path).args([
                "ls-remote",
                "--symref",
                "--end-of-options",
                url,
                "HEAD",
            ]))
            .await?;
        if !out.success {
            return Err(GitError::Fetch {
                url: redact_url(url),
                stderr: out.stderr,
            }
            .into());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let target = text.lines().find_map(|line| {
            let (target, name) = line.strip_prefix("ref: ")?.split_once('\t')?;
            (name == "HEAD" && target.starts_with("refs/heads/") && valid_refname(target))
                .then(|| target.to_owned())
        });
        if let Some(target) = target {
            self.git
                .ok(Cmd::new(self.local_timeout)
                    .dir(path)
                    .args(["symbolic-ref", "HEAD"])
                    .arg(target))
                .await
                .context("setting the mirror's default branch")?;
        }
        Ok(())
    }
}

/// The last successful fetch of a mirror: when it started and with which credentials.
#[derive(Debug)]
struct LastFetch {
    started: Instant,
    credentials: CredentialsKey,
}

/// What identifies the credentials a fetch sent (a digest, so that they are not kept in memory twice):
/// `None` for none.
type CredentialsKey = Option<[u8; 32]>;

/// The [`CredentialsKey`] of a fetch of `url` with the token header `token_auth` (the header wins over
/// credentials written in the URL, as in [`remote_and_auth`]).
fn credentials_key(url: &str, token_auth: Option<&str>) -> CredentialsKey {
    use sha2::{Digest, Sha256};
    let (_, auth) = remote_and_auth(url, token_auth.map(str::to_owned));
    auth.map(|header| Sha256::digest(header.as_bytes()).into())
}

/// Splits `user:password@` off an http(s) URL into an `Authorization` header, so that git gets the
/// credential through its environment instead of its command line (where `ps` shows it, and where
/// git hands it on to `git-remote-https` as an argument). Other URLs are returned unchanged.
fn split_credentials(url: &str) -> (String, Option<String>) {
    use base64::Engine;
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return (url.to_owned(), None);
    }
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_owned(), None);
    };
    let userinfo = &rest[..at];
    let clean = format!("{scheme}://{}", &rest[at + 1..]);
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let token = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        percent_decode(user),
        percent_decode(password)
    ));
    (clean, Some(format!("Authorization: Basic {token}")))
}

/// Decodes `%XX` escapes (URL userinfo may carry them); invalid escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL to give git and the `Authorization` header to send: an installation token's header wins
/// over credentials written in the URL.
fn remote_and_auth(url: &str, token_auth: Option<String>) -> (String, Option<String>) {
    let (url, url_auth) = split_credentials(url);
    (url, token_auth.or(url_auth))
}

/// The `Authorization` header that carries a GitHub installation token.
fn token_header(token: Option<&str>) -> Option<String> {
    use base64::Engine;
    token.map(|t| {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{t}"));
        format!("Authorization: Basic {basic}")
    })
}

/// A git command that talks to `url`: with the credential header, and allowed only the transport
/// `url` names (`GIT_ALLOW_PROTOCOL`), so that nothing a remote sends (a redirect, a submodule URL)
/// makes git use another one (`ext::` runs commands, `file://` reads the host's files).
fn remote_cmd(timeout: Duration, url: &str, auth: Option<String>) -> Cmd {
    with_auth(Cmd::new(timeout), auth).env("GIT_ALLOW_PROTOCOL", &allowed_protocols(url))
}

/// The transports (`GIT_ALLOW_PROTOCOL` syntax) git may use to reach `url`.
fn allowed_protocols(url: &str) -> String {
    let allowed = match url.split_once("://") {
        Some((scheme, _)) => match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => "http:https",
            "git" => "git",
            "ssh" | "git+ssh" | "ssh+git" => "ssh",
            // Another transport can only come from the operator's own URL template: allow it alone.
            other => return other.replace(':', ""),
        },
        // `host:path` (scp-like) is ssh; anything else is a local path.
        None => match url.find(':') {
            Some(colon) if !url[..colon].contains('/') => "ssh",
            _ => "file",
        },
    };
    allowed.to_owned()
}

fn with_auth(cmd: Cmd, auth: Option<String>) -> Cmd {
    match auth {
        Some(header) => cmd.secret_config("http.extraHeader", header),
        None => cmd,
    }
}

/// Whether the branch the mirror's `HEAD` names exists, read from the files (no git process).
async fn head_branch_exists(repo: &Path) -> bool {
    let Ok(head) = tokio::fs::read_to_string(repo.join("HEAD")).await else {
        return false;
    };
    match head.trim().strip_prefix("ref: ") {
        Some(target) if target.starts_with("refs/heads/") && valid_refname(target) => {
            mirror::read_ref(repo, target).await.is_some()
        }
        _ => false,
    }
}

/// Takes an exclusive `flock` on `path` (created if missing), released when the file is dropped.
async fn lock_file(path: PathBuf) -> anyhow::Result<std::fs::File> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(file)
    })
    .await
    .context("lock task failed")?
}

/// A directory removed on drop unless kept: a mirror whose creation failed or was cancelled leaves
/// nothing behind.
struct TempDir(Option<PathBuf>);

impl TempDir {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(e) = std::fs::remove_dir_all(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, dir = %path.display(), "could not remove a partial git mirror");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_for_a_header() {
        let (url, auth) = split_credentials("https://x-access-token:ghs_S3CRET@github.com/o/r.git");
        assert_eq!(url, "https://github.com/o/r.git");
        // base64("x-access-token:ghs_S3CRET")
        assert_eq!(
            auth.as_deref(),
            Some("Authorization: Basic eC1hY2Nlc3MtdG9rZW46Z2hzX1MzQ1JFVA==")
        );
        let (url, auth) = split_credentials("http://user%40corp:p%3Ass@git.example/o/r");
        assert_eq!(url, "http://git.example/o/r");
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.unwrap().trim_start_matches("Authorization: Basic "))
            .unwrap();
        assert_eq!(decoded, b"user@corp:p:ss");
        for plain in [
            "https://github.com/o/r.git",
            "file:///tmp/o/r",
            "ssh://git@host/o/r",
            "https://h/a@b",
        ] {
            assert_eq!(
                split_credentials(plain),
                (plain.to_owned(), None),
                "{plain}"
            );
        }
    }
}
