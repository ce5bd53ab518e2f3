//! The git mirror cache against real repositories made in a temp dir and served over `file://`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln::git::{GitCache, GitError, redact_url};

const AUTHOR: &str = "Ada Lovelace";
const EMAIL: &str = "ada@example.com";

/// A work repository acting as the remote.
struct Remote {
    dir: PathBuf,
}

impl Remote {
    /// `<root>/remotes/<owner>/<repo>`, with `branch` as its default branch.
    fn init(root: &Path, owner: &str, repo: &str, branch: &str) -> Remote {
        let dir = root.join("remotes").join(owner).join(repo);
        std::fs::create_dir_all(&dir).expect("create remote dir");
        let r = Remote { dir };
        r.git(&["init", "-q", "-b", branch]);
        r
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args(args)
            .env("HOME", &self.dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", AUTHOR)
            .env("GIT_AUTHOR_EMAIL", EMAIL)
            .env("GIT_COMMITTER_NAME", AUTHOR)
            .env("GIT_COMMITTER_EMAIL", EMAIL)
            .env("GIT_AUTHOR_DATE", "2026-01-02T03:04:05Z")
            .env("GIT_COMMITTER_DATE", "2026-01-02T03:04:05Z")
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn write(&self, path: &str, contents: &str) {
        let p = self.dir.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, contents).expect("write file");
    }

    /// Commits everything; returns the new commit id.
    fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A temp dir with a cache under `git/` cloning from `remotes/{owner}/{repo}`.
fn setup() -> (tempfile::TempDir, GitCache) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let template = format!("file://{}/remotes/{{owner}}/{{repo}}", tmp.path().display());
    let cache = GitCache::new(tmp.path().join("git"), template);
    (tmp, cache)
}

fn kind(err: &anyhow::Error) -> &GitError {
    GitError::find(err).unwrap_or_else(|| panic!("not a GitError: {err:#}"))
}

#[tokio::test]
async fn mirror_is_created_then_fetched_incrementally() {
    let (tmp, cache) = setup();
    let remote = Remote::init(tmp.path(), "octo", "demo", "main");
    remote.write("README.md", "hello\n");
    let first = remote.commit("first");

    let mirror = cache.mirror("octo", "demo").await.expect("first mirror");
    assert!(mirror.path.join("HEAD").is_file(), "a bare repository");
    assert!(mirror.path.starts_with(tmp.path().join("git")));
    assert_eq!(
        mirror
            .resolve(Some("main"), None)
            .await
            .expect("resolve")
            .sha,
        first
    );

    remote.write("README.md", "hello again\n");
    let second = remote.commit("second");
    remote.git(&["tag", "v1"]);
    let mirror = cache.mirror("octo", "demo").await.expect("fetch");
    assert_eq!(
        mirror
            .resolve(Some("main"), None)
            .await
            .expect("resolve")
            .sha,
        second,
        "the fetch saw the new commit"
    );
    assert!(
        mirror
            .read_file("refs/tags/v1", "README.md")
            .await
            .expect("read")
            .is_some(),
        "tags are fetched"
    );

    // A deleted branch is pruned.
    remote.git(&["branch", "gone"]);
    let mirror = cache.mirror("octo", "demo").await.expect("fetch");
    assert!(mirror.resolve(Some("gone"), None).await.is_ok());
    remote.git(&["branch", "-D", "gone"]);
    let mirror = cache.mirror("octo", "demo").await.expect("fetch");
    let err = mirror.resolve(Some("gone"), None).await.unwrap_err();
    assert!(matches!(kind(&err), GitError::UnknownBranch(b) if b == "gone"));

    // The clone URL is not stored in the mirror.
    let config = std::fs::read_to_string(mirror.path.join("config")).expect("config");
    assert!(!config.contains("remotes"), "{config}");
}

#[tokio::test]
async fn a_failed_first_clone_leaves_nothing_behind() {
    let (_tmp, cache) = setup();
    let err = cache.mirror("octo", "missing").await.unwrap_err();
    assert!(matches!(kind(&err), GitError::Fetch { .. }), "{err:#}");
    assert!(!cache.root().join("mirrors/octo/missing.git").exists());
    let leftovers = std::fs::read_dir(cache.root().join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn a_command_past_its_time_limit_is_killed_and_cleaned_up() {
    let (tmp, cache) = setup();
    let remote = Remote::init(tmp.path(), "octo", "slow", "main");
    remote.commit("one");
    let cache = cache.with_timeouts(Duration::ZERO, Duration::from_secs(60));
    let err = cache.mirror("octo", "slow").await.unwrap_err();
    assert!(matches!(kind(&err), GitError::Timeout { .. }), "{err:#}");
    assert!(!cache.root().join("mirrors/octo/slow.git").exists());
}

#[tokio::test]
async fn names_that_could_escape_are_refused() {
    let (_tmp, cache) = setup();
    for (owner, repo) in [
        ("..", "x"),
        ("octo", ".."),
        ("a/b", "c"),
        ("-o", "r"),
        ("o", "r x"),
    ] {
        let err = cache.mirror(owner, repo).await.unwrap_err();
        assert!(
            matches!(kind(&err), GitError::InvalidName { .. }),
            "{owner}/{repo}: {err:#}"
        );
    }
    assert!(!cache.root().join("mirrors").exists());
}

#[tokio::test]
async fn resolve_branches_and_commits() {
    let (tmp, cache) = setup();
    // A default branch that is not called main: taken from the remote's HEAD.
    let remote = Remote::init(tmp.path(), "octo", "refs", "trunk");
    let base = remote.commit("base");
    remote.git(&["checkout", "-q", "-b", "feature"]);
    let feature = remote.commit("feature work");
    remote.git(&["checkout", "-q", "-b", "another"]);
    remote.git(&["checkout", "-q", "trunk"]);
    let tip = remote.commit("trunk tip");
    // A branch named like an abbreviation of `feature` must not shadow that commit.
    remote.git(&["branch", &feature[..8], &base]);
    remote.git(&["tag", "only-tag", &tip]);
    let mirror = cache.mirror("octo", "refs").await.expect("mirror");

    assert_eq!(
        mirror.default_branch().await.expect("default"),
        Some("trunk".to_owned())
    );
    let r = mirror.resolve(Some("feature"), None).await.expect("branch");
    assert_eq!(
        (r.sha.as_str(), r.branch.as_deref()),
        (feature.as_str(), Some("feature"))
    );
    let r = mirror.resolve(None, None).await.expect("default branch");
    assert_eq!(
        (r.sha.as_str(), r.branch.as_deref()),
        (tip.as_str(), Some("trunk"))
    );

    // Commit only: the default branch when it contains it, else the first by name.
    let r = mirror.resolve(None, Some(&base)).await.expect("base");
    assert_eq!(r.branch.as_deref(), Some("trunk"));
    let r = mirror.resolve(None, Some(&feature)).await.expect("feature");
    assert_eq!(
        (r.sha.as_str(), r.branch.as_deref()),
        (feature.as_str(), Some("another"))
    );
    let r = mirror
        .resolve(None, Some(&feature[..8].to_uppercase()))
        .await
        .expect("abbreviated");
    assert_eq!(
        r.sha, feature,
        "abbreviation resolved to the commit, not the branch"
    );

    // Both: the pair is used as given.
    let r = mirror
        .resolve(Some("feature"), Some(&base[..10]))
        .await
        .expect("both");
    assert_eq!(
        (r.sha.as_str(), r.branch.as_deref()),
        (base.as_str(), Some("feature"))
    );

    // Unknown and invalid.
    let err = mirror.resolve(Some("nope"), None).await.unwrap_err();
    assert!(matches!(kind(&err), GitError::UnknownBranch(b) if b == "nope"));
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let err = mirror.resolve(None, Some(missing)).await.unwrap_err();
    assert!(matches!(kind(&err), GitError::UnknownCommit(_)), "{err:#}");
    let err = mirror.resolve(None, Some("fffff")).await.unwrap_err();
    assert!(matches!(kind(&err), GitError::UnknownCommit(_)), "{err:#}");
    // A tree id is not a commit.
    let tree = remote.git(&["rev-parse", "HEAD^{tree}"]);
    let err = mirror.resolve(None, Some(&tree)).await.unwrap_err();
    assert!(matches!(kind(&err), GitError::UnknownCommit(_)), "{err:#}");
    for bad in ["xyz", "abc", "HEAD~1", "main..x"] {
        let err = mirror.resolve(None, Some(bad)).await.unwrap_err();
        assert!(matches!(kind(&err), GitError::InvalidName { .. }), "{bad}");
    }
}

#[tokio::test]
async fn option_like_branch_names_are_rejected_and_harmless() {
    let (tmp, cache) = setup();
    let remote = Remote::init(tmp.path(), "octo", "opts", "main");
    remote.commit("one");
    let mirror = cache.mirror("octo", "opts").await.expect("mirror");
    let marker = tmp.path().join("pwned");
    let evil = format!("--upload-pack=touch {}", marker.display());
    for name in [
        evil.as_str(),
        "--output=/tmp/x",
        "-h",
        "main~1",
        "main^",
        "@{-1}",
    ] {
        let err = mirror.resolve(Some(name), None).await.unwrap_err();
        assert!(
            matches!(kind(&err), GitError::InvalidName { .. }),
            "{name}: {err:#}"
        );
    }
    assert!(mirror.read_file("--output=x", "a").await.is_err());
    assert!(mirror.list_dir("--upload-pack=x", "").await.is_err());
    assert!(mirror.changed_paths("-p", "HEAD").await.is_err());
    assert!(!marker.exists());
}

#[tokio::test]
async fn commit_info_checkout_files_and_changed_paths() {
    let (tmp, cache) = setup();
    let remote = Remote::init(tmp.path(), "octo", "files", "main");
    remote.write("package.json", "{\"name\":\"x\"}\n");
    remote.write("src/index.js", "export default {}\n");
    remote.write("docs/a b.md", "spaces\n");
    let first = remote.commit("Add the app\n\nWith a body line.\n");
    remote.write("src/index.js", "export default { fetch() {} }\n");
    remote.write("src/new.js", "new\n");
    std::fs::remove_file(remote.dir.join("docs/a b.md")).expect("rm");
    let second = remote.commit("Change things");
    let mirror = cache.mirror("octo", "files").await.expect("mirror");

    let info = mirror.commit_info(&first).await.expect("commit info");
    assert_eq!(info.message, "Add the app\n\nWith a body line.");
    assert_eq!(info.author, EMAIL);
    assert_eq!(info.author_name, AUTHOR);
    assert!(
        mirror.commit_info(&first[..7]).await.is_err(),
        "full ids only"
    );

    // Files and directories.
    let read = mirror
        .read_file(&first, "/src/index.js")
        .await
        .expect("read");
    assert_eq!(read.as_deref(), Some(&b"export default {}\n"[..]));
    assert_eq!(
        mirror.read_file(&first, "nope.txt").await.expect("read"),
        None
    );
    assert_eq!(
        mirror.read_file(&first, "src").await.expect("read dir"),
        None
    );
    assert!(mirror.read_file(&first, "../etc/passwd").await.is_err());
    let many = mirror
        .read_files(
            &second,
            &["package.json", "missing", "docs/a b.md", "src/new.js"],
        )
        .await
        .expect("read files");
    assert_eq!(
        many,
        vec![
            Some(b"{\"name\":\"x\"}\n".to_vec()),
            None,
            None,
            Some(b"new\n".to_vec())
        ]
    );
    assert_eq!(
        mirror.list_dir(&first, "/").await.expect("root"),
        ["docs", "package.json", "src"]
    );
    assert_eq!(
        mirror.list_dir(&second, "src/").await.expect("src"),
        ["index.js", "new.js"]
    );
    assert!(
        mirror
            .list_dir(&second, "docs")
            .await
            .expect("gone")
            .is_empty()
    );
    assert!(
        mirror
            .list_dir(&second, "package.json")
            .await
            .expect("file")
            .is_empty()
    );
    assert_eq!(
        mirror
            .list_dir("refs/heads/main", "")
            .await
            .expect("by ref"),
        ["package.json", "src"]
    );

    let mut changed = mirror.changed_paths(&first, &second).await.expect("diff");
    changed.sort();
    assert_eq!(changed, ["docs/a b.md", "src/index.js", "src/new.js"]);
    assert!(
        mirror
            .changed_paths(&second, &second)
            .await
            .expect("same")
            .is_empty()
    );

    // Checkout: the files of the commit, HEAD at it, a clean work tree.
    let dest = tmp.path().join("work/build-1");
    mirror.checkout(&first, &dest).await.expect("checkout");
    assert_eq!(
        std::fs::read_to_string(dest.join("src/index.js")).expect("file"),
        "export default {}\n"
    );
    assert!(dest.join("docs/a b.md").is_file());
    let ws = Remote { dir: dest.clone() };
    assert_eq!(ws.git(&["rev-parse", "HEAD"]), first);
    assert_eq!(ws.git(&["status", "--porcelain"]), "");
    assert_eq!(ws.git(&["log", "--format=%s", "-1"]), "Add the app");
    assert_eq!(ws.git(&["remote", "get-url", "origin"]), mirror.url);
    // A non-empty destination is refused.
    assert!(mirror.checkout(&second, &dest).await.is_err());
}

#[tokio::test]
async fn concurrent_mirror_calls_share_one_repository() {
    let (tmp, cache) = setup();
    let remote = Remote::init(tmp.path(), "octo", "busy", "main");
    let sha = remote.commit("one");
    let cache = std::sync::Arc::new(cache);
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.mirror("octo", "busy").await })
        })
        .collect();
    for t in tasks {
        let mirror = t.await.expect("join").expect("mirror");
        assert_eq!(
            mirror
                .resolve(Some("main"), None)
                .await
                .expect("resolve")
                .sha,
            sha
        );
    }
}

#[test]
fn credentials_are_redacted_from_urls() {
    assert_eq!(
        redact_url(
            "fatal: could not read from 'https://x-access-token:ghs_abc@github.com/o/r.git'"
        ),
        "fatal: could not read from 'https://github.com/o/r.git'"
    );
    assert_eq!(
        redact_url("https://github.com/o/r.git"),
        "https://github.com/o/r.git"
    );
}

#[tokio::test]
async fn failures_never_show_credentials() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Nothing listens on port 9 of localhost: the fetch fails fast.
    let cache = GitCache::new(
        tmp.path().join("git"),
        "http://kiln:s3cr3t-token@127.0.0.1:9/{owner}/{repo}.git",
    );
    let err = cache.mirror("octo", "private").await.unwrap_err();
    let text = format!("{err:#} {err:?}");
    assert!(matches!(kind(&err), GitError::Fetch { .. }), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(text.contains("127.0.0.1:9/octo/private.git"), "{text}");
}
