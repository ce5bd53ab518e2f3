//! Reading a mirror: resolving branches and commits, commit metadata, files and trees, changed paths,
//! and checking a commit out into a build workspace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::GitError;
use super::names::{check_branch, check_hex, check_rev, check_tree_path, is_full_oid};
use super::run::{Cmd, Git};

/// A bare mirror of one repository, as returned (freshly fetched) by
/// [`GitCache::mirror`](super::GitCache::mirror).
#[derive(Debug, Clone)]
pub struct Mirror {
    /// The bare repository.
    pub path: PathBuf,
    /// The clone URL without credentials (recorded as `origin` in checkouts).
    pub url: String,
    git: Git,
    timeout: Duration,
}

/// A commit to build and the branch it is reported under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Full object id (40 hex digits, or 64 for SHA-256 repositories), lower case.
    pub sha: String,
    /// The branch: the one asked for, else one containing the commit (the default branch first).
    /// `None` when the commit is on no branch (e.g. only tagged).
    pub branch: Option<String>,
}

/// What a build records about its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// The full commit message, trimmed.
    pub message: String,
    /// The author's e-mail address.
    pub author: String,
    /// The author's name.
    pub author_name: String,
}

impl Mirror {
    pub(super) fn new(path: PathBuf, url: String, git: Git, timeout: Duration) -> Mirror {
        Mirror {
            path,
            url,
            git,
            timeout,
        }
    }

    fn cmd(&self) -> Cmd {
        Cmd::new(self.timeout).dir(&self.path)
    }

    /// The commit to build from a branch, a commit id (full or abbreviated), both, or neither:
    ///
    /// * branch only: the head of that branch ([`GitError::UnknownBranch`] if there is none);
    /// * commit only: that commit ([`GitError::UnknownCommit`] / [`GitError::AmbiguousCommit`]), reported
    ///   under a branch that contains it, the default branch first, else the first by name;
    /// * both: that commit, reported under that branch. Whether the branch contains the commit is not
    ///   checked: the pair is the caller's statement (a commit may have left its branch by a force push
    ///   since), and the branch need not exist any more;
    /// * neither: the head of the default branch.
    ///
    /// Branch names and commit ids are checked first ([`GitError::InvalidName`]), so nothing reaches
    /// git as an option or a revision expression.
    pub async fn resolve(
        &self,
        branch: Option<&str>,
        commit: Option<&str>,
    ) -> anyhow::Result<Resolved> {
        if let Some(b) = branch {
            check_branch(b)?;
        }
        let commit = commit.map(|c| check_hex("commit", c)).transpose()?;
        match (branch, commit) {
            (_, Some(commit)) => {
                let sha = self.find_commit(&commit).await?;
                let branch = match branch {
                    Some(b) => Some(b.to_owned()),
                    None => self.branch_containing(&sha).await?,
                };
                Ok(Resolved { sha, branch })
            }
            (Some(b), None) => {
                let sha = match read_ref(&self.path, &format!("refs/heads/{b}")).await {
                    Some(sha) => sha,
                    None => self
                        .rev_parse(&format!("refs/heads/{b}^{{commit}}"))
                        .await?
                        .ok_or_else(|| GitError::UnknownBranch(b.to_owned()))?,
                };
                Ok(Resolved {
                    sha,
                    branch: Some(b.to_owned()),
                })
            }
            (None, None) => {
                let b = self
                    .default_branch()
                    .await?
                    .ok_or_else(|| GitError::UnknownBranch("HEAD".to_owned()))?;
                let sha = self
                    .rev_parse(&format!("refs/heads/{b}^{{commit}}"))
                    .await?
                    .ok_or_else(|| GitError::UnknownBranch(b.clone()))?;
                Ok(Resolved {
                    sha,
                    branch: Some(b),
                })
            }
        }
    }

    /// The remote's default branch, if the mirror has it.
    pub async fn default_branch(&self) -> anyhow::Result<Option<String>> {
        let out = self
            .git
            .output(self.cmd().args(["symbolic-ref", "--quiet", "HEAD"]))
            .await?;
        let head = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let Some(name) = head.strip_prefix("refs/heads/").filter(|_| out.success) else {
            return Ok(None);
        };
        let exists = self.rev_parse(&format!("{head}^{{commit}}")).await?;
        Ok(exists.map(|_| name.to_owned()))
    }

    /// `git rev-parse --verify` of a checked spec: `None` when it names nothing.
    async fn rev_parse(&self, spec: &str) -> anyhow::Result<Option<String>> {
        let out = self
            .git
            .output(
                self.cmd()
                    .args(["rev-parse", "--verify", "--quiet", "--end-of-options", spec]),
            )
            .await?;
        match (out.success, out.code) {
            (true, _) => Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())),
            (false, Some(1)) => Ok(None),
            (false, code) => Err(GitError::Command {
                args: format!("rev-parse {spec}"),
                code,
                stderr: out.stderr,
            }
            .into()),
        }
    }

    /// The full id of the commit `hex` names. An abbreviation is matched against objects only (a
    /// branch that happens to be called `abc123` does not shadow commit `abc123…`).
    async fn find_commit(&self, hex: &str) -> anyhow::Result<String> {
        if is_full_oid(hex) {
            return self
                .rev_parse(&format!("{hex}^{{commit}}"))
                .await?
                .filter(|sha| sha == hex)
                .ok_or_else(|| GitError::UnknownCommit(hex.to_owned()).into());
        }
        let candidates = self
            .git
            .ok(self
                .cmd()
                .arg("rev-parse")
                .arg(format!("--disambiguate={hex}")))
            .await
            .context("looking up an abbreviated commit id")?;
        let mut input = candidates;
        input.push(b'\n');
        let typed = self
            .git
            .ok(self.cmd().args(["cat-file", "--batch-check"]).stdin(input))
            .await
            .context("reading object types")?;
        let commits: Vec<String> = String::from_utf8_lossy(&typed)
            .lines()
            .filter_map(|line| {
                let mut parts = line.split(' ');
                let oid = parts.next()?;
                (parts.next() == Some("commit")).then(|| oid.to_owned())
            })
            .collect();
        match commits.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(GitError::UnknownCommit(hex.to_owned()).into()),
            _ => Err(GitError::AmbiguousCommit(hex.to_owned()).into()),
        }
    }

    /// Whether the mirror has the commit `sha` (a full object id), without fetching.
    pub(super) async fn has_commit(&self, sha: &str) -> anyhow::Result<bool> {
        let sha = full_oid(sha)?;
        Ok(self
            .rev_parse(&format!("{sha}^{{commit}}"))
            .await?
            .as_deref()
            == Some(sha.as_str()))
    }

    /// A branch containing `sha`: the default branch if it does, else the first by name.
    async fn branch_containing(&self, sha: &str) -> anyhow::Result<Option<String>> {
        let out = self
            .git
            .ok(self.cmd().args([
                "for-each-ref",
                "--format=%(refname)",
                "--contains",
                sha,
                "refs/heads/",
            ]))
            .await
            .context("finding the branches that contain a commit")?;
        let text = String::from_utf8_lossy(&out);
        let branches: Vec<&str> = text
            .lines()
            .filter_map(|r| r.strip_prefix("refs/heads/"))
            .collect();
        if branches.is_empty() {
            return Ok(None);
        }
        if let Some(default) = self.default_branch().await?
            && branches.contains(&default.as_str())
        {
            return Ok(Some(default));
        }
        Ok(branches.first().map(|b| (*b).to_owned()))
    }

    /// Message and author of a commit (`sha`: a full object id).
    pub async fn commit_info(&self, sha: &str) -> anyhow::Result<CommitInfo> {
        let sha = full_oid(sha)?;
        let out = self
            .git
            .ok(self.cmd().args([
                "log",
                "-1",
                "--no-show-signature",
                "--format=%ae%x00%an%x00%B",
                "--end-of-options",
                &format!("{sha}^{{commit}}"),
                "--",
            ]))
            .await
            .context("reading a commit")?;
        let text = String::from_utf8_lossy(&out);
        let mut parts = text.splitn(3, '\0');
        let author = parts.next().unwrap_or_default().trim().to_owned();
        let author_name = parts.next().unwrap_or_default().trim().to_owned();
        let message = parts.next().unwrap_or_default().trim().to_owned();
        Ok(CommitInfo {
            message,
            author,
            author_name,
        })
    }

    /// Checks `sha` (a full object id) out into `dest`, which must not exist or be empty, leaving a
    /// usable repository there: a detached `HEAD` at `sha`, a clean work tree, and `origin` pointing at
    /// the clone URL.
    ///
    /// The mirror's objects are hard-linked into the checkout (copied where the mirror is on another
    /// file system), so that whatever runs git in the checkout (the build) needs no access to the
    /// mirror itself: mirrors stay unreadable by builds, and a build reads only its own repository.
    /// The links are read-only files that the build cannot change (they stay Kiln's). A `git gc` of
    /// the mirror at the same time may remove a pack between listing and linking: the checkout is
    /// then linked again and retried once.
    ///
    /// The `.git` skeleton is written directly and one `git checkout` fills the work tree: measured
    /// fastest among `clone --shared` + checkout, `init` + alternates + checkout, and `read-tree -u`.
    pub async fn checkout(&self, sha: &str, dest: &Path) -> anyhow::Result<()> {
        let sha = full_oid(sha)?;
        let objects = tokio::fs::canonicalize(self.path.join("objects"))
            .await
            .with_context(|| format!("locating the objects of {}", self.path.display()))?;
        write_skeleton(dest, &self.url, sha.len() == 64)
            .await
            .with_context(|| format!("preparing the workspace {}", dest.display()))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (from, to) = (objects.clone(), dest.join(".git/objects"));
            tokio::task::spawn_blocking(move || link_objects(&from, &to))
                .await
                .context("linking the mirror's objects")?
                .with_context(|| format!("linking the objects of {}", self.path.display()))?;
            let checked_out = self
                .git
                .ok(Cmd::new(self.timeout)
                    .dir(dest)
                    .args(["checkout", "--quiet", "--detach", &sha, "--"]))
                .await
                .with_context(|| format!("checking out {sha}"));
            match checked_out {
                // An object missing: a pack replaced by a gc between listing and linking.
                Err(e)
                    if attempt == 1
                        && ["object", "unable to read"]
                            .iter()
                            .any(|m| format!("{e:#}").contains(m)) =>
                {
                    continue;
                }
                other => return other.map(|_| ()),
            }
        }
    }

    /// The contents of the file at `path` in `rev` (an object id, `HEAD` or `refs/…`); `None` when
    /// there is no such file (missing, or a directory).
    pub async fn read_file(&self, rev: &str, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.read_files(rev, &[path]).await?.pop().flatten())
    }

    /// Several files of one revision with one git process; same rules as [`Mirror::read_file`].
    pub async fn read_files(
        &self,
        rev: &str,
        paths: &[&str],
    ) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        let rev = check_rev(rev)?;
        let mut input = Vec::new();
        for p in paths {
            let p = check_tree_path(p)?;
            input.extend_from_slice(format!("{rev}:{p}\n").as_bytes());
        }
        let out = self
            .git
            .ok(self.cmd().args(["cat-file", "--batch"]).stdin(input))
            .await
            .context("reading files")?;
        parse_batch(&out, paths.len())
    }

    /// The names in the directory `dir` of `rev` (files and subdirectories, sorted as git stores them);
    /// empty when there is no such directory.
    pub async fn list_dir(&self, rev: &str, dir: &str) -> anyhow::Result<Vec<String>> {
        let rev = check_rev(rev)?;
        let dir = check_tree_path(dir)?;
        let out = self
            .git
            .output(self.cmd().args([
                "ls-tree",
                "-z",
                "--name-only",
                "--end-of-options",
                &format!("{rev}:{dir}"),
            ]))
            .await?;
        if !out.success {
            if out.stderr.contains("Not a valid object name")
                || out.stderr.contains("not a tree object")
            {
                return Ok(Vec::new());
            }
            return Err(GitError::Command {
                args: format!("ls-tree {rev}:{dir}"),
                code: out.code,
                stderr: out.stderr,
            }
            .into());
        }
        Ok(split_nul(&out.stdout))
    }

    /// The best common ancestor of two commits (full object ids), `None` when they share no history
    /// (`git merge-base`).
    pub async fn merge_base(&self, a: &str, b: &str) -> anyhow::Result<Option<String>> {
        let (a, b) = (full_oid(a)?, full_oid(b)?);
        let out = self
            .git
            .output(self.cmd().args(["merge-base", "--end-of-options", &a, &b]))
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        match (out.success, out.code) {
            (true, _) => Ok(Some(full_oid(&stdout)?)),
            // Exit status 1 without a message: no common ancestor.
            (false, Some(1)) if out.stderr.trim().is_empty() => Ok(None),
            _ => Err(GitError::Command {
                args: format!("merge-base {a} {b}"),
                code: out.code,
                stderr: out.stderr,
            }
            .into()),
        }
    }

    /// How many commits `to` has that `from` does not (`git rev-list --count ^from to`; full ids).
    pub async fn count_commits(&self, from: &str, to: &str) -> anyhow::Result<usize> {
        let (from, to) = (full_oid(from)?, full_oid(to)?);
        let out = self
            .git
            .ok(self.cmd().args([
                "rev-list",
                "--count",
                "--end-of-options",
                &format!("^{from}"),
                &to,
            ]))
            .await
            .context("counting commits")?;
        String::from_utf8_lossy(&out)
            .trim()
            .parse()
            .context("reading a commit count")
    }

    /// Paths that differ between two revisions (`git diff --name-only`, renames as delete + add).
    pub async fn changed_paths(&self, from: &str, to: &str) -> anyhow::Result<Vec<String>> {
        let from = check_rev(from)?;
        let to = check_rev(to)?;
        let out = self
            .git
            .ok(self.cmd().args([
                "diff",
                "--name-only",
                "-z",
                "--no-renames",
                "--no-ext-diff",
                "--end-of-options",
                &from,
                &to,
                "--",
            ]))
            .await
            .context("listing changed paths")?;
        Ok(split_nul(&out))
    }
}

fn full_oid(sha: &str) -> Result<String, GitError> {
    let sha = check_hex("commit", sha)?;
    if is_full_oid(&sha) {
        Ok(sha)
    } else {
        Err(GitError::InvalidName {
            what: "full commit id",
            value: sha,
        })
    }
}

fn split_nul(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Parses `git cat-file --batch` output for `n` requests: blobs become `Some(contents)`, anything
/// else (missing, tree, submodule) `None`.
fn parse_batch(out: &[u8], n: usize) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
    let mut results = Vec::with_capacity(n);
    let mut rest = out;
    for _ in 0..n {
        let eol = rest
            .iter()
            .position(|b| *b == b'\n')
            .context("truncated cat-file output")?;
        let header = String::from_utf8_lossy(&rest[..eol]).into_owned();
        rest = &rest[eol + 1..];
        let fields: Vec<&str> = header.split(' ').collect();
        match fields.as_slice() {
            [_, kind, size] if size.parse::<usize>().is_ok() => {
                let size: usize = size.parse()?;
                anyhow::ensure!(rest.len() > size, "truncated cat-file output");
                let body = &rest[..size];
                rest = &rest[size + 1..];
                results.push((*kind == "blob").then(|| body.to_vec()));
            }
            // "<name> missing" / "<name> ambiguous" (the name may contain spaces).
            _ => results.push(None),
        }
    }
    Ok(results)
}

/// Writes `dest/.git` for a checkout, with an unborn `HEAD` and no objects yet.
async fn write_skeleton(dest: &Path, url: &str, sha256: bool) -> anyhow::Result<()> {
    if tokio::fs::try_exists(dest).await? {
        let mut entries = tokio::fs::read_dir(dest).await?;
        anyhow::ensure!(
            entries.next_entry().await?.is_none(),
            "{} is not empty",
            dest.display()
        );
    }
    let dot_git = dest.join(".git");
    for dir in ["objects/info", "objects/pack", "refs/heads", "refs/tags"] {
        tokio::fs::create_dir_all(dot_git.join(dir)).await?;
    }
    tokio::fs::write(dot_git.join("HEAD"), "ref: refs/heads/main\n").await?;
    let (version, extensions) = if sha256 {
        ("1", "[extensions]\n\tobjectformat = sha256\n")
    } else {
        ("0", "")
    };
    let quoted = url.replace('\\', "\\\\").replace('"', "\\\"");
    let config = format!(
        "[core]\n\trepositoryformatversion = {version}\n\tfilemode = true\n\tbare = false\n\
         \tlogallrefupdates = true\n{extensions}[remote \"origin\"]\n\turl = \"{quoted}\"\n\
         \tfetch = +refs/heads/*:refs/remotes/origin/*\n"
    );
    tokio::fs::write(dot_git.join("config"), config).await?;
    Ok(())
}

/// Hard-links (or, across file systems, copies) the packs and loose objects of the object directory
/// `from` into `to` (a checkout's `.git/objects`); files already there are kept. Temporary files of
/// a fetch or repack in progress are left out; so are the mirror's caches (`info/`), which git does
/// without.
fn link_objects(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let loose = name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if !(loose || name == "pack") || !entry.file_type()?.is_dir() {
            continue;
        }
        let target = to.join(name);
        match std::fs::create_dir(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let files = match std::fs::read_dir(entry.path()) {
            Ok(files) => files,
            // Emptied and removed by a gc meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for file in files {
            let file = file?;
            let file_name = file.file_name();
            if file_name.as_encoded_bytes().starts_with(b"tmp_") || !file.file_type()?.is_file() {
                continue;
            }
            let (src, dst) = (file.path(), target.join(&file_name));
            match std::fs::hard_link(&src, &dst) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // Another file system (EXDEV), or links refused: copy.
                Err(_) => match std::fs::copy(&src, &dst) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                },
            }
        }
    }
    Ok(())
}

/// The object id a ref of a bare repository points at, read from its loose ref file or `packed-refs`
/// without starting git (the hot path of every branch build). `None` when not found that way (the
/// caller then asks git, which also reports unknown refs). `name` must be a checked `refs/…` name.
pub(super) async fn read_ref(repo: &Path, name: &str) -> Option<String> {
    let is_oid =
        |s: &str| (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Ok(text) = tokio::fs::read_to_string(repo.join(name)).await {
        let oid = text.trim();
        return is_oid(oid).then(|| oid.to_ascii_lowercase());
    }
    let packed = tokio::fs::read_to_string(repo.join("packed-refs"))
        .await
        .ok()?;
    packed.lines().find_map(|line| {
        let (oid, refname) = line.split_once(' ')?;
        (refname == name && is_oid(oid)).then(|| oid.to_ascii_lowercase())
    })
}
