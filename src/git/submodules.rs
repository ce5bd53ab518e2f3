//! Submodules of a build checkout: listed by `.gitmodules`, each repository mirrored like the main one
//! (objects borrowed, fetched incrementally, not fetched at all when the mirror already has the
//! commit), checked out at the commit the superproject records, nested ones too.
//!
//! Submodule URLs come from whoever can push to the repository, so they are resolved and checked
//! here before git sees them: relative URLs and GitHub repositories go through the URL template with
//! the superproject's credentials; repositories on other hosts only over https, http or git and
//! without them; nothing else (`file://`, local paths and `ext::` would read the host's files or run
//! commands). Every fetch is also limited to its one transport (`GIT_ALLOW_PROTOCOL`).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::names::{check_slug, check_submodule_name, check_submodule_path, is_full_oid};
use super::run::{Cmd, redact_url};
use super::{GitCache, GitError, Mirror, split_credentials, token_header};

/// Largest `.gitmodules` file read, in bytes.
pub const MAX_GITMODULES_BYTES: u64 = 64 * 1024;
/// Most submodules checked out for one checkout, nested ones included.
pub const MAX_SUBMODULES: usize = 100;
/// Deepest nesting of submodules (1: the superproject's own submodules).
pub const MAX_SUBMODULE_DEPTH: usize = 8;

/// A submodule checked out by [`GitCache::checkout_submodules`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmoduleCheckout {
    /// Where it is, relative to the superproject's checkout (`/`-separated; a nested submodule's path
    /// starts with its parent's).
    pub path: String,
    /// The commit checked out: the one the superproject's tree records (its gitlink).
    pub sha: String,
    /// The URL as `.gitmodules` gives it, without credentials.
    pub url: String,
    /// The mirror whose objects were linked into the checkout (see [`super::Mirror::checkout`]).
    pub mirror: PathBuf,
}

/// When a submodule's existing mirror may be used without asking the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reuse {
    /// Only after the remote accepted this checkout's credentials (or their absence): a mirror that
    /// other credentials (another account's installation token) may have filled.
    AfterFetch,
    /// As soon as it has the commit, when no credentials are involved: a mirror keyed by its URL,
    /// filled only ever without credentials.
    WhenComplete,
}

/// One `submodule.<name>` section of `.gitmodules`.
#[derive(Debug, Default)]
struct Entry {
    name: String,
    path: Option<String>,
    url: Option<String>,
    update: Option<String>,
}

/// A checkout whose `.gitmodules` is still to be read.
struct Level {
    dir: PathBuf,
    /// Its path relative to the top checkout (`""` for the top).
    prefix: String,
    /// Its clone URL (without credentials): what its relative submodule URLs are relative to.
    url: String,
    depth: usize,
}

/// Where a submodule's repository comes from.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    /// `owner/repo` through the URL template, with the superproject's credentials.
    Repo { owner: String, repo: String },
    /// A repository on another host, fetched from this URL as is, without them.
    External(String),
}

impl GitCache {
    /// Checks out the submodules of the checkout at `repo_dir` (made by [`Mirror::checkout`] of
    /// `superproject`), nested ones too, each at the commit the tree records, each from a mirror of its
    /// own in this cache. `token` (the superproject's installation token) is used for the submodules
    /// that resolve to repositories of the URL template; it never reaches another host.
    ///
    /// Without a `.gitmodules` file this starts no process. A submodule of the URL template's
    /// repositories is always fetched with the superproject's credentials (or none) before its mirror
    /// is used, even when the mirror has the commit: that mirror is shared with every build, and another
    /// account's token may have filled it (a `.gitmodules` may name anyone's private repository). A
    /// submodule on another host, whose mirror only ever sees its URL's own credentials, is checked out
    /// without network access when its mirror has the commit. Any submodule that cannot be checked out
    /// (a refused URL or path, a repository or commit that cannot be fetched) fails the whole call
    /// with an error that starts `submodule <path> (<url>)`. Entries of `.gitmodules` without a
    /// gitlink in the tree are ignored, like git does, and so are those with `update = none`.
    ///
    /// Each checkout is a repository of its own (`<path>/.git`), and the superproject's
    /// `.git/config` records it as an active submodule, so that `git status` is clean and
    /// `git submodule status` shows it in place.
    pub async fn checkout_submodules(
        &self,
        repo_dir: &Path,
        superproject: &Mirror,
        token: Option<&str>,
    ) -> anyhow::Result<Vec<SubmoduleCheckout>> {
        let mut done = Vec::new();
        let mut root: Option<PathBuf> = None;
        let mut queue = VecDeque::from([Level {
            dir: repo_dir.to_path_buf(),
            prefix: String::new(),
            url: superproject.url.clone(),
            depth: 0,
        }]);
        while let Some(level) = queue.pop_front() {
            let entries = self
                .read_gitmodules(&level.dir)
                .await
                .with_context(|| format!("reading {}", join(&level.prefix, ".gitmodules")))?;
            if entries.is_empty() {
                continue;
            }
            anyhow::ensure!(
                level.depth < MAX_SUBMODULE_DEPTH,
                "submodules nested more than {MAX_SUBMODULE_DEPTH} deep at {}",
                level.prefix
            );
            let root = match &root {
                Some(r) => r.clone(),
                None => root
                    .insert(
                        tokio::fs::canonicalize(repo_dir)
                            .await
                            .with_context(|| format!("locating {}", repo_dir.display()))?,
                    )
                    .clone(),
            };
            let gitlinks = self.gitlinks(&level.dir, &entries).await?;
            for entry in &entries {
                let Some(path) = entry.path.as_deref() else {
                    continue;
                };
                let Some(sha) = gitlinks.get(path) else {
                    continue;
                };
                if entry.update.as_deref() == Some("none") {
                    continue;
                }
                let full = join(&level.prefix, path);
                let Some(url) = entry.url.as_deref() else {
                    anyhow::bail!("submodule {full}: no url in .gitmodules");
                };
                let shown = redact_url(url);
                anyhow::ensure!(
                    done.len() < MAX_SUBMODULES,
                    "more than {MAX_SUBMODULES} submodules (at {full})"
                );
                let mirror = self
                    .checkout_submodule(&root, &level, entry, path, url, sha, token)
                    .await
                    .with_context(|| format!("submodule {full} ({shown})"))?;
                queue.push_back(Level {
                    dir: level.dir.join(path),
                    prefix: full.clone(),
                    url: mirror.url.clone(),
                    depth: level.depth + 1,
                });
                done.push(SubmoduleCheckout {
                    path: full,
                    sha: sha.clone(),
                    url: shown,
                    mirror: mirror.path,
                });
            }
        }
        Ok(done)
    }

    /// One submodule of `level`: its mirror, with the commit; the checkout at `level/path`.
    #[allow(clippy::too_many_arguments)]
    async fn checkout_submodule(
        &self,
        root: &Path,
        level: &Level,
        entry: &Entry,
        path: &str,
        url: &str,
        sha: &str,
        token: Option<&str>,
    ) -> anyhow::Result<Mirror> {
        let source = resolve_source(url, &level.url, &redact_url(&self.url_template))?;
        let mirror = match source {
            Source::Repo { owner, repo } => {
                self.mirror_with_commit(
                    self.mirror_path(&owner, &repo),
                    &self.clone_url(&owner, &repo),
                    token_header(token),
                    sha,
                    Reuse::AfterFetch,
                )
                .await?
            }
            Source::External(url) => {
                let key = hex::encode(Sha256::digest(url.as_bytes()));
                let path = self.root.join("external").join(format!("{key}.git"));
                self.mirror_with_commit(path, &url, None, sha, Reuse::WhenComplete)
                    .await?
            }
        };
        let dest = level.dir.join(path);
        check_inside(root, &dest).await?;
        mirror
            .checkout(sha, &dest)
            .await
            .with_context(|| format!("checking out {sha}"))?;
        record_submodule(&level.dir, &entry.name, &mirror.url)
            .await
            .context("recording the submodule in the superproject's configuration")?;
        Ok(mirror)
    }

    /// The mirror at `path` of `url` with the commit `sha`, then the commit alone if no branch or tag
    /// has it. With [`Reuse::WhenComplete`] and no credentials, a mirror that already has the commit
    /// is used as it is (no network: commits do not change); otherwise it is fetched anyway, as the
    /// remote's check that these credentials may read the repository.
    async fn mirror_with_commit(
        &self,
        path: PathBuf,
        url: &str,
        auth: Option<String>,
        sha: &str,
        reuse: Reuse,
    ) -> anyhow::Result<Mirror> {
        if reuse == Reuse::WhenComplete
            && auth.is_none()
            && split_credentials(url).1.is_none()
            && tokio::fs::try_exists(path.join("HEAD"))
                .await
                .unwrap_or(false)
        {
            let mirror = self.open_mirror(path.clone(), url);
            if mirror.has_commit(sha).await? {
                return Ok(mirror);
            }
        }
        let mirror = self.mirror_at(path.clone(), url, auth.clone()).await?;
        if !mirror.has_commit(sha).await? {
            self.fetch_commit(&path, url, auth, sha)
                .await
                .with_context(|| format!("could not fetch commit {sha}"))?;
            anyhow::ensure!(
                mirror.has_commit(sha).await?,
                "could not fetch commit {sha}"
            );
        }
        Ok(mirror)
    }

    /// The sections of `dir/.gitmodules` that have a path (checked), in file order; empty, without
    /// starting git, when there is no such file.
    async fn read_gitmodules(&self, dir: &Path) -> anyhow::Result<Vec<Entry>> {
        let file = dir.join(".gitmodules");
        let meta = match tokio::fs::symlink_metadata(&file).await {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("reading its metadata"),
        };
        anyhow::ensure!(meta.is_file(), "not a regular file");
        anyhow::ensure!(
            meta.len() <= MAX_GITMODULES_BYTES,
            "larger than {MAX_GITMODULES_BYTES} bytes"
        );
        let out = self
            .git
            .output(
                Cmd::new(self.local_timeout)
                    .dir(dir)
                    .args(["config", "--no-includes", "--null", "--file"])
                    .arg(&file)
                    .args(["--get-regexp", r"^submodule\..*\.(path|url|update)$"]),
            )
            .await?;
        match (out.success, out.code) {
            (true, _) => parse_gitmodules(&out.stdout),
            // No matching key.
            (false, Some(1)) => Ok(Vec::new()),
            (false, code) => Err(GitError::Command {
                args: "config --file .gitmodules --get-regexp".to_owned(),
                code,
                stderr: out.stderr,
            }
            .into()),
        }
    }

    /// The commits the index of the checkout at `dir` records for the paths of `entries` that are
    /// gitlinks, by path.
    async fn gitlinks(
        &self,
        dir: &Path,
        entries: &[Entry],
    ) -> anyhow::Result<HashMap<String, String>> {
        let paths: Vec<&str> = entries.iter().filter_map(|e| e.path.as_deref()).collect();
        if paths.is_empty() {
            return Ok(HashMap::new());
        }
        let out = self
            .git
            .ok(Cmd::new(self.local_timeout)
                .dir(dir)
                .args(["--literal-pathspecs", "ls-files", "--stage", "-z", "--"])
                .args(&paths))
            .await
            .context("listing the submodules of the checkout")?;
        let mut links = HashMap::new();
        for record in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let record = String::from_utf8_lossy(record);
            let Some((meta, path)) = record.split_once('\t') else {
                continue;
            };
            let mut fields = meta.split(' ');
            if let (Some("160000"), Some(sha)) = (fields.next(), fields.next())
                && is_full_oid(sha)
            {
                links.insert(path.to_owned(), sha.to_ascii_lowercase());
            }
        }
        Ok(links)
    }
}

/// Parses `git config --null --get-regexp` output (`key\nvalue\0`, or `key\0` for a key without a
/// value) into sections, checking names and paths; the last value of a key wins, as in git.
fn parse_gitmodules(out: &[u8]) -> anyhow::Result<Vec<Entry>> {
    let text = String::from_utf8_lossy(out);
    let mut entries: Vec<Entry> = Vec::new();
    for item in text.split('\0').filter(|s| !s.is_empty()) {
        let (key, value) = match item.split_once('\n') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (item, None),
        };
        let Some((name, var)) = key
            .strip_prefix("submodule.")
            .and_then(|rest| rest.rsplit_once('.'))
        else {
            continue;
        };
        check_submodule_name(name)?;
        let i = match entries.iter().position(|e| e.name == name) {
            Some(i) => i,
            None => {
                entries.push(Entry {
                    name: name.to_owned(),
                    ..Entry::default()
                });
                entries.len() - 1
            }
        };
        match var {
            "path" => entries[i].path = value,
            "url" => entries[i].url = value,
            "update" => entries[i].update = value,
            _ => {}
        }
    }
    let mut seen = std::collections::HashSet::new();
    for path in entries.iter().filter_map(|e| e.path.as_deref()) {
        check_submodule_path(path)?;
        anyhow::ensure!(
            seen.insert(path),
            "two submodules have the path {path:?} in .gitmodules"
        );
    }
    Ok(entries)
}

/// Where the repository at `url` (from `.gitmodules`) comes from, `base` being the clone URL of the
/// repository whose `.gitmodules` it is and `template` the URL template (both without credentials).
fn resolve_source(url: &str, base: &str, template: &str) -> anyhow::Result<Source> {
    anyhow::ensure!(!url.is_empty(), "refusing the URL: it is empty");
    anyhow::ensure!(
        !url.starts_with('-'),
        "refusing the URL: it starts with '-' (an option)"
    );
    anyhow::ensure!(
        !url.chars().any(|c| c.is_control() || c.is_whitespace()),
        "refusing the URL: it contains spaces or control characters"
    );
    let absolute = if url.starts_with("./") || url.starts_with("../") {
        resolve_relative(base, url).with_context(|| {
            format!(
                "refusing the URL: it does not resolve to a repository next to {}",
                redact_url(base)
            )
        })?
    } else {
        url.to_owned()
    };
    if let Some((owner, repo)) =
        match_template(template, &absolute).or_else(|| github_repo(&absolute))
    {
        return Ok(Source::Repo { owner, repo });
    }
    let fetchable = absolute.split_once("://").is_some_and(|(scheme, rest)| {
        matches!(
            scheme.to_ascii_lowercase().as_str(),
            "https" | "http" | "git"
        ) && !rest.is_empty()
            && !rest.starts_with('/')
    });
    anyhow::ensure!(
        fetchable,
        "refusing the URL: only relative URLs, GitHub repositories and https, http or git URLs are \
         allowed"
    );
    Ok(Source::External(absolute))
}

/// Git's rule for a relative submodule URL: `base` (the superproject's clone URL) taken as a
/// directory, one component removed per leading `../`, `./` removing none. `None` when that would
/// climb above the host (or the root), or the rest is empty or has `.`/`..` components.
fn resolve_relative(base: &str, relative: &str) -> Option<String> {
    let base = base.trim_end_matches('/');
    let split = if let Some(i) = base.find("://") {
        base[i + 3..].find('/').map_or(base.len(), |j| i + 3 + j)
    } else if let Some(colon) = base.find(':').filter(|&c| !base[..c].contains('/')) {
        // scp-like `host:path`.
        colon + 1
    } else {
        0
    };
    let (prefix, path) = base.split_at(split);
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut rest = relative;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            parts.pop()?;
            rest = r;
        } else {
            break;
        }
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.split('/').any(|p| matches!(p, "" | "." | "..")) {
        return None;
    }
    parts.push(rest);
    let separator = if prefix.ends_with(':') || (prefix.is_empty() && !path.starts_with('/')) {
        ""
    } else {
        "/"
    };
    Some(format!("{prefix}{separator}{}", parts.join("/")))
}

/// `owner/repo` when `url` is what the URL template gives for them (a trailing `.git` or `/` on
/// either side does not matter).
fn match_template(template: &str, url: &str) -> Option<(String, String)> {
    fn strip(s: &str) -> &str {
        let s = s.trim_end_matches('/');
        s.strip_suffix(".git").unwrap_or(s)
    }
    let mut found = [None, None];
    if !match_parts(strip(template), strip(url), &mut found) {
        return None;
    }
    let [Some(owner), Some(repo)] = found else {
        return None;
    };
    (check_slug("owner", owner).is_ok() && check_slug("repository", repo).is_ok())
        .then(|| (owner.to_owned(), repo.to_owned()))
}

/// Matches `url` against `template`, in which `{owner}` and `{repo}` (`found[0]`, `found[1]`) stand
/// for runs of GitHub's slug alphabet.
fn match_parts<'u>(template: &str, url: &'u str, found: &mut [Option<&'u str>; 2]) -> bool {
    let next = ["{owner}", "{repo}"]
        .iter()
        .enumerate()
        .filter_map(|(k, p)| template.find(p).map(|i| (i, k, p.len())))
        .min();
    let Some((i, k, len)) = next else {
        return template == url;
    };
    let Some(url) = url.strip_prefix(&template[..i]) else {
        return false;
    };
    let rest = &template[i + len..];
    let run = url
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .unwrap_or(url.len());
    for end in (1..=run).rev() {
        let candidate = &url[..end];
        if found[k].is_some_and(|v| v != candidate) {
            continue;
        }
        let before = found[k];
        found[k] = Some(candidate);
        if match_parts(rest, &url[end..], found) {
            return true;
        }
        found[k] = before;
    }
    false
}

/// `owner/repo` of a GitHub URL: `https://github.com/o/r(.git)`, `git@github.com:o/r.git`,
/// `ssh://git@github.com/o/r`, `git://github.com/o/r` (credentials in it are dropped: the
/// superproject's are used).
fn github_repo(url: &str) -> Option<(String, String)> {
    let scp = "git@github.com:";
    let path = if url.len() > scp.len() && url[..scp.len()].eq_ignore_ascii_case(scp) {
        &url[scp.len()..]
    } else {
        let (scheme, rest) = url.split_once("://")?;
        if !matches!(
            scheme.to_ascii_lowercase().as_str(),
            "https" | "http" | "git" | "ssh" | "git+ssh"
        ) {
            return None;
        }
        let (authority, path) = rest.split_once('/')?;
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if !(host.eq_ignore_ascii_case("github.com") || host.eq_ignore_ascii_case("www.github.com"))
        {
            return None;
        }
        path
    };
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let (owner, repo) = path.split_once('/')?;
    (check_slug("owner", owner).is_ok() && check_slug("repository", repo).is_ok())
        .then(|| (owner.to_owned(), repo.to_owned()))
}

/// Fails unless `dest` is a directory (not a symlink) inside `root` (canonical), other than it.
async fn check_inside(root: &Path, dest: &Path) -> anyhow::Result<()> {
    let meta = tokio::fs::symlink_metadata(dest)
        .await
        .context("the submodule's directory is missing from the checkout")?;
    anyhow::ensure!(meta.is_dir(), "the submodule's path is not a directory");
    let real = tokio::fs::canonicalize(dest)
        .await
        .context("locating the submodule's directory")?;
    anyhow::ensure!(
        real.starts_with(root) && real != root,
        "the submodule's path leaves the checkout"
    );
    Ok(())
}

/// Records the submodule `name` as active, cloned from `url`, in `<dir>/.git/config` (what
/// `git submodule init` writes).
async fn record_submodule(dir: &Path, name: &str, url: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let section = format!(
        "[submodule \"{}\"]\n\tactive = true\n\turl = \"{}\"\n",
        quote(name),
        quote(url)
    );
    let mut config = tokio::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(".git/config"))
        .await?;
    config.write_all(section.as_bytes()).await?;
    config.flush().await?;
    Ok(())
}

/// `prefix/path`, or `path` at the top.
fn join(prefix: &str, path: &str) -> String {
    if prefix.is_empty() {
        path.to_owned()
    } else {
        format!("{prefix}/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GITHUB: &str = "https://github.com/{owner}/{repo}.git";

    fn repo(owner: &str, repo: &str) -> Source {
        Source::Repo {
            owner: owner.to_owned(),
            repo: repo.to_owned(),
        }
    }

    #[test]
    fn relative_urls_follow_git_rules() {
        let base = "https://github.com/octo/site.git";
        assert_eq!(
            resolve_relative(base, "../theme.git").as_deref(),
            Some("https://github.com/octo/theme.git")
        );
        assert_eq!(
            resolve_relative(base, "./sub").as_deref(),
            Some("https://github.com/octo/site.git/sub")
        );
        assert_eq!(
            resolve_relative(base, "../../other/lib").as_deref(),
            Some("https://github.com/other/lib")
        );
        assert_eq!(resolve_relative(base, "../../../x"), None);
        assert_eq!(resolve_relative(base, "../a/../b"), None);
        assert_eq!(resolve_relative(base, "../"), None);
        assert_eq!(
            resolve_relative("git@github.com:octo/site.git", "../theme").as_deref(),
            Some("git@github.com:octo/theme")
        );
        assert_eq!(
            resolve_relative("file:///srv/remotes/octo/site/", "../theme.git").as_deref(),
            Some("file:///srv/remotes/octo/theme.git")
        );
    }

    #[test]
    fn urls_map_to_template_repositories_or_are_refused() {
        let base = "https://github.com/octo/site.git";
        for (url, want) in [
            ("../theme.git", repo("octo", "theme")),
            ("../theme", repo("octo", "theme")),
            ("../../other/lib", repo("other", "lib")),
            ("https://github.com/a/b", repo("a", "b")),
            ("https://github.com/a/b.git/", repo("a", "b")),
            ("https://user:pw@GitHub.com/a/b.git", repo("a", "b")),
            ("git@github.com:a/b.git", repo("a", "b")),
            ("ssh://git@github.com/a/b", repo("a", "b")),
            (
                "https://gitlab.com/a/b.git",
                Source::External("https://gitlab.com/a/b.git".to_owned()),
            ),
            (
                "git://example.org/x",
                Source::External("git://example.org/x".to_owned()),
            ),
        ] {
            assert_eq!(resolve_source(url, base, GITHUB).unwrap(), want, "{url}");
        }
        let file_template = "file:///srv/remotes/{owner}/{repo}";
        let file_base = "file:///srv/remotes/octo/site";
        for (url, want) in [
            ("../theme.git", repo("octo", "theme")),
            ("https://github.com/other/lib", repo("other", "lib")),
        ] {
            assert_eq!(
                resolve_source(url, file_base, file_template).unwrap(),
                want,
                "{url}"
            );
        }
        for bad in [
            "file:///etc",
            "/etc/passwd",
            "etc",
            "ext::sh -c touch% /tmp/pwned",
            "ext::sh",
            "fd::3",
            "--upload-pack=touch /tmp/x",
            "-u",
            "https::example.org/x",
            "https:///etc",
            "ssh://git@example.org/x",
            "git@example.org:x/y",
            "../../../../etc",
            "",
            "https://example.org/a b",
        ] {
            assert!(
                resolve_source(bad, file_base, file_template).is_err(),
                "{bad}"
            );
            assert!(resolve_source(bad, base, GITHUB).is_err(), "{bad}");
        }
        // Relative, but not a repository of the template: a file URL then, refused.
        assert!(resolve_source("./sub", file_base, file_template).is_err());
    }

    #[test]
    fn template_matching() {
        assert_eq!(
            match_template("https://h/{owner}-x/{repo}.git", "https://h/o.k-x/r-1"),
            Some(("o.k".to_owned(), "r-1".to_owned()))
        );
        assert_eq!(
            match_template("https://h/{owner}/{repo}", "https://h/o"),
            None
        );
        assert_eq!(
            match_template("https://h/{owner}/{repo}", "https://h/o/r/s"),
            None
        );
        assert_eq!(
            match_template("https://h/{owner}/{repo}", "https://h/../r"),
            None
        );
    }

    #[test]
    fn gitmodules_output_is_parsed_and_checked() {
        let out = b"submodule.a.b.path\nx/y\0submodule.a.b.url\n../t.git\0submodule.c.url\0\
                    submodule.c.path\nz\0submodule.a.b.url\n../u.git\0";
        let entries = parse_gitmodules(out).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].name, "a.b");
        assert_eq!(entries[0].path.as_deref(), Some("x/y"));
        assert_eq!(entries[0].url.as_deref(), Some("../u.git"));
        assert_eq!(entries[1].url, None);
        assert!(parse_gitmodules(b"submodule.a.path\n../out\0").is_err());
        assert!(parse_gitmodules(b"submodule.../x.path\nok\0").is_err());
        assert!(parse_gitmodules(b"submodule.a.path\n.git\0").is_err());
        assert!(parse_gitmodules(b"submodule.a.path\nx\0submodule.b.path\nx\0").is_err());
    }
}
