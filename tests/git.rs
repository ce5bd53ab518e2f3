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

    /// Records a submodule in `.gitmodules` and a gitlink to `sha` at `path` in the index (the commit
    /// need not exist anywhere, and nothing is cloned); commit with [`Remote::commit_index`].
    fn add_submodule(&self, name: &str, path: &str, url: &str, sha: &str) {
        let key = |k: &str| format!("submodule.{name}.{k}");
        self.git(&["config", "--file", ".gitmodules", &key("path"), path]);
        self.git(&["config", "--file", ".gitmodules", &key("url"), url]);
        self.git(&["add", ".gitmodules"]);
        self.git(&[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{sha},{path}"),
        ]);
    }

    /// Commits what is staged; returns the new commit id.
    fn commit_index(&self, message: &str) -> String {
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
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

/// The inode of a path: a mirror that was not re-created keeps its own.
fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}

#[tokio::test]
async fn submodules_are_checked_out_recursively_from_mirrors() {
    let (tmp, cache) = setup();
    // octo/site ─┬─ themes/ananke: octo/theme (relative URL) ── vendor/nested: octo/nested
    //            └─ lib: other/lib (a github.com URL, at a commit on no branch)
    let nested = Remote::init(tmp.path(), "octo", "nested", "main");
    nested.write("nested.txt", "deep\n");
    let n1 = nested.commit("nested");
    let theme = Remote::init(tmp.path(), "octo", "theme", "main");
    theme.write("layouts/index.html", "theme v1\n");
    theme.add_submodule(
        "nested",
        "vendor/nested",
        "git@github.com:octo/nested.git",
        &n1,
    );
    theme.git(&["add", "layouts"]);
    let t1 = theme.commit_index("theme v1");
    let lib = Remote::init(tmp.path(), "other", "lib", "main");
    lib.commit("base");
    lib.write("lib.js", "orphan\n");
    let orphan = lib.commit("only reachable until the reset");
    lib.git(&["reset", "-q", "--hard", "HEAD~1"]);
    let site = Remote::init(tmp.path(), "octo", "site", "main");
    site.write("index.md", "hello\n");
    site.git(&["add", "index.md"]);
    site.add_submodule("ananke", "themes/ananke", "../theme.git", &t1);
    site.add_submodule("lib", "lib", "https://github.com/other/lib.git", &orphan);
    let s1 = site.commit_index("site");

    let mirror = cache.mirror("octo", "site").await.expect("mirror");
    let dest = tmp.path().join("work/build-1");
    mirror.checkout(&s1, &dest).await.expect("checkout");
    let subs = cache
        .checkout_submodules(&dest, &mirror, None)
        .await
        .expect("submodules");
    let got: Vec<(&str, &str, &str)> = subs
        .iter()
        .map(|s| (s.path.as_str(), s.sha.as_str(), s.url.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("themes/ananke", t1.as_str(), "../theme.git"),
            ("lib", orphan.as_str(), "https://github.com/other/lib.git"),
            (
                "themes/ananke/vendor/nested",
                n1.as_str(),
                "git@github.com:octo/nested.git"
            ),
        ]
    );
    let mirrors = cache.root().join("mirrors");
    for (sub, repo) in [
        ("themes/ananke", "octo/theme.git"),
        ("lib", "other/lib.git"),
        ("themes/ananke/vendor/nested", "octo/nested.git"),
    ] {
        let found = subs.iter().find(|s| s.path == sub).expect("listed");
        assert_eq!(found.mirror, mirrors.join(repo));
        // The checkout has that mirror's objects, linked: it needs no access to the mirror.
        assert!(!dest.join(sub).join(".git/objects/info/alternates").exists());
        assert!(
            shares_a_file(
                &found.mirror.join("objects"),
                &dest.join(sub).join(".git/objects")
            ),
            "{sub}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dest.join("themes/ananke/layouts/index.html")).expect("theme"),
        "theme v1\n"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("themes/ananke/vendor/nested/nested.txt"))
            .expect("nested"),
        "deep\n"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("lib/lib.js")).expect("lib"),
        "orphan\n"
    );
    let ws = |path: &str| Remote {
        dir: dest.join(path),
    };
    assert_eq!(ws("themes/ananke").git(&["rev-parse", "HEAD"]), t1);
    assert_eq!(ws("lib").git(&["rev-parse", "HEAD"]), orphan);
    assert_eq!(
        ws("themes/ananke/vendor/nested").git(&["rev-parse", "HEAD"]),
        n1
    );
    assert_eq!(ws("").git(&["status", "--porcelain"]), "");
    assert_eq!(ws("themes/ananke").git(&["status", "--porcelain"]), "");
    // git sees every submodule initialised and at its recorded commit (a leading space).
    let status = ws("").git(&["submodule", "status", "--recursive"]);
    assert_eq!(status.lines().count(), 3, "{status}");
    for line in status.lines() {
        assert!(!line.starts_with(['-', '+', 'U']), "{status}");
    }

    // A new build of a new theme commit: the mirrors are fetched, not created again.
    let inodes: Vec<u64> = ["octo/theme.git", "other/lib.git", "octo/nested.git"]
        .iter()
        .map(|r| inode(&mirrors.join(r)))
        .collect();
    theme.write("layouts/index.html", "theme v2\n");
    theme.git(&["add", "layouts"]);
    let t2 = theme.commit_index("theme v2");
    lib.git(&["branch", "later"]);
    site.git(&[
        "update-index",
        "--cacheinfo",
        &format!("160000,{t2},themes/ananke"),
    ]);
    let s2 = site.commit_index("new theme");
    let mirror = cache.mirror("octo", "site").await.expect("mirror");
    let dest2 = tmp.path().join("work/build-2");
    mirror.checkout(&s2, &dest2).await.expect("checkout");
    // With a token (ignored by file://), every submodule repository is fetched even when its mirror
    // has the commit: the fetch is the remote's check that the token may read it.
    let subs = cache
        .checkout_submodules(&dest2, &mirror, Some("ghs_installation_token"))
        .await
        .expect("submodules again");
    let lib_mirror = Remote {
        dir: mirrors.join("other/lib.git"),
    };
    lib_mirror.git(&["rev-parse", "--verify", "--quiet", "refs/heads/later"]);
    assert_eq!(subs.len(), 3);
    assert_eq!(subs[0].sha, t2);
    assert_eq!(
        std::fs::read_to_string(dest2.join("themes/ananke/layouts/index.html")).expect("theme"),
        "theme v2\n"
    );
    let again: Vec<u64> = ["octo/theme.git", "other/lib.git", "octo/nested.git"]
        .iter()
        .map(|r| inode(&mirrors.join(r)))
        .collect();
    assert_eq!(inodes, again, "the mirrors were reused");
    assert_eq!(
        Remote { dir: dest2.clone() }.git(&["status", "--porcelain"]),
        ""
    );
}

#[tokio::test]
async fn a_submodule_that_cannot_be_fetched_fails_the_checkout_naming_it() {
    let (tmp, cache) = setup();
    let theme = Remote::init(tmp.path(), "octo", "theme", "main");
    let t1 = theme.commit("theme");
    let site = Remote::init(tmp.path(), "octo", "site", "main");
    site.add_submodule("gone", "themes/gone", "../missing.git", &t1);
    let missing_repo = site.commit_index("a submodule whose repository does not exist");
    site.git(&["rm", "-q", "--cached", "themes/gone"]);
    site.git(&[
        "config",
        "--file",
        ".gitmodules",
        "--remove-section",
        "submodule.gone",
    ]);
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    site.add_submodule("ananke", "themes/ananke", "../theme.git", unknown);
    let missing_commit = site.commit_index("a gitlink to a commit the theme does not have");
    let mirror = cache.mirror("octo", "site").await.expect("mirror");

    let dest = tmp.path().join("work/1");
    mirror
        .checkout(&missing_repo, &dest)
        .await
        .expect("checkout");
    let err = cache
        .checkout_submodules(&dest, &mirror, None)
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.starts_with("submodule themes/gone (../missing.git): "),
        "{text}"
    );
    assert!(matches!(kind(&err), GitError::Fetch { .. }), "{text}");

    let dest = tmp.path().join("work/2");
    mirror
        .checkout(&missing_commit, &dest)
        .await
        .expect("checkout");
    let err = cache
        .checkout_submodules(&dest, &mirror, None)
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.starts_with(&format!(
            "submodule themes/ananke (../theme.git): could not fetch commit {unknown}"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn hostile_gitmodules_are_refused_and_write_nothing_outside() {
    let (tmp, cache) = setup();
    let theme = Remote::init(tmp.path(), "octo", "theme", "main");
    let t1 = theme.commit("theme");
    let marker = tmp.path().join("pwned");
    let ext = format!("ext::sh -c touch% {}", marker.display());
    let option = format!("--upload-pack=touch {}", marker.display());
    let local = tmp.path().join("remotes/octo/theme").display().to_string();
    // (A file URL that is exactly a template URL names a repository of the template: allowed.)
    let file = format!("file://{}", tmp.path().join("remotes").display());
    let site = Remote::init(tmp.path(), "octo", "site", "main");
    let mirror_of = |n: usize| tmp.path().join(format!("work/{n}"));
    // (url, path in .gitmodules, where the gitlink is): what the error must name.
    let cases: Vec<(&str, &str, Option<&str>, &str)> = vec![
        (
            "file:///etc",
            "vendor/x",
            Some("vendor/x"),
            "submodule vendor/x (file:///etc)",
        ),
        (
            &ext,
            "vendor/x",
            Some("vendor/x"),
            "submodule vendor/x (ext::sh",
        ),
        (
            &option,
            "vendor/x",
            Some("vendor/x"),
            "submodule vendor/x (--upload-pack",
        ),
        (
            &file,
            "vendor/x",
            Some("vendor/x"),
            "submodule vendor/x (file://",
        ),
        (
            &local,
            "vendor/x",
            Some("vendor/x"),
            "submodule vendor/x (/",
        ),
        (
            "../../../../../../etc",
            "vendor/x",
            Some("vendor/x"),
            "submodule vendor/x (../../",
        ),
        ("../theme.git", "../outside", None, "\"../outside\""),
        ("../theme.git", ".git", None, "\".git\""),
        ("../theme.git", "a/.git/hooks", None, "\"a/.git/hooks\""),
    ];
    for (n, (url, path, gitlink, named)) in cases.into_iter().enumerate() {
        let _ = std::fs::remove_file(site.dir.join(".gitmodules"));
        site.git(&["rm", "-q", "-r", "--cached", "--ignore-unmatch", "."]);
        site.git(&["config", "--file", ".gitmodules", "submodule.x.path", path]);
        site.git(&["config", "--file", ".gitmodules", "submodule.x.url", url]);
        site.git(&["add", ".gitmodules"]);
        if let Some(at) = gitlink {
            site.git(&[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{t1},{at}"),
            ]);
        }
        let sha = site.commit_index(&format!("hostile {n}"));
        let mirror = cache.mirror("octo", "site").await.expect("mirror");
        let dest = mirror_of(n);
        mirror.checkout(&sha, &dest).await.expect("checkout");
        let err = cache
            .checkout_submodules(&dest, &mirror, None)
            .await
            .expect_err(url);
        let text = format!("{err:#}");
        assert!(text.contains(named), "{url} {path}: {text}");
        assert!(!marker.exists(), "{url}: a command ran");
        assert!(!tmp.path().join("work/outside").exists());
        if let Some(at) = gitlink {
            let left = std::fs::read_dir(dest.join(at))
                .expect("gitlink dir")
                .count();
            assert_eq!(left, 0, "{url}: nothing checked out");
        }
    }
    // Only the superproject was mirrored: no submodule URL was fetched.
    assert!(!cache.root().join("external").exists());
    let owners: Vec<_> = std::fs::read_dir(cache.root().join("mirrors"))
        .expect("mirrors")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(owners, ["octo"]);
    assert!(!cache.root().join("mirrors/octo/theme.git").exists());
}

#[tokio::test]
async fn without_gitmodules_no_git_process_starts() {
    let (tmp, cache) = setup();
    let site = Remote::init(tmp.path(), "octo", "site", "main");
    site.write("index.md", "hello\n");
    let plain = site.commit("no submodules");
    let theme = Remote::init(tmp.path(), "octo", "theme", "main");
    let t1 = theme.commit("theme");
    site.add_submodule("ananke", "themes/ananke", "../theme.git", &t1);
    let with = site.commit_index("a submodule");
    let mirror = cache.mirror("octo", "site").await.expect("mirror");
    // A cache that cannot start git at all: its home directory cannot be created under a file.
    std::fs::write(tmp.path().join("not-a-dir"), "").expect("file");
    let no_git = GitCache::new(
        tmp.path().join("not-a-dir/git"),
        "file:///nowhere/{owner}/{repo}",
    );

    let dest = tmp.path().join("work/plain");
    mirror.checkout(&plain, &dest).await.expect("checkout");
    let subs = no_git
        .checkout_submodules(&dest, &mirror, None)
        .await
        .expect("nothing to do, without git");
    assert!(subs.is_empty());
    // The same cache fails as soon as there is a .gitmodules to read.
    let dest = tmp.path().join("work/with");
    mirror.checkout(&with, &dest).await.expect("checkout");
    assert!(
        no_git
            .checkout_submodules(&dest, &mirror, None)
            .await
            .is_err()
    );
    assert_eq!(
        cache
            .checkout_submodules(&dest, &mirror, None)
            .await
            .expect("submodules")
            .len(),
        1
    );
}

/// Whether some object file of `a` (loose or packed) is the very file (hard link) of one in `b`.
fn shares_a_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    fn files(dir: &std::path::Path, out: &mut Vec<(u64, u64)>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                files(&entry.path(), out);
            } else {
                out.push((meta.dev(), meta.ino()));
            }
        }
    }
    let (mut left, mut right) = (Vec::new(), Vec::new());
    files(a, &mut left);
    files(b, &mut right);
    left.iter().any(|f| right.contains(f))
}
