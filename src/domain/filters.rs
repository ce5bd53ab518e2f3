//! Branch and path filters of triggers (DESIGN.md §3): `*` matches any run of characters, `/`
//! included; excludes win over includes.

use serde::{Deserialize, Serialize};

/// A branch or path pattern, compiled: `*` stands for any run of characters (also empty, also across
/// `/`) and every other character for itself.
///
/// Matching is linear, O(|pattern| + |text|), whatever the input: the literal runs between the `*`s
/// are looked for from left to right, each at its first occurrence after the previous one (with `*`
/// as the only wildcard, the leftmost occurrence is always a right choice, so nothing is ever tried
/// again), with `memchr::memmem`'s linear-time substring search, its searchers built once here.
#[derive(Debug, Clone)]
pub struct Glob {
    /// The whole pattern when it has no `*`.
    exact: Option<Vec<u8>>,
    /// Before the first `*` and after the last one.
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    /// The non-empty runs between the first and the last `*`, in order.
    literals: Vec<memchr::memmem::Finder<'static>>,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        let p = pattern.as_bytes();
        let (Some(first), Some(last)) = (memchr::memchr(b'*', p), memchr::memrchr(b'*', p)) else {
            return Glob {
                exact: Some(p.to_vec()),
                prefix: Vec::new(),
                suffix: Vec::new(),
                literals: Vec::new(),
            };
        };
        // Nothing between the first and the last `*` when they are the same one.
        let middle = p.get(first + 1..last).unwrap_or_default();
        Glob {
            exact: None,
            prefix: p[..first].to_vec(),
            suffix: p[last + 1..].to_vec(),
            literals: middle
                .split(|&b| b == b'*')
                .filter(|l| !l.is_empty())
                .map(|l| memchr::memmem::Finder::new(l).into_owned())
                .collect(),
        }
    }

    /// Whether `text` matches the pattern.
    pub fn matches(&self, text: &str) -> bool {
        let t = text.as_bytes();
        if let Some(exact) = &self.exact {
            return exact == t;
        }
        let (prefix, suffix) = (self.prefix.as_slice(), self.suffix.as_slice());
        if t.len() < prefix.len() + suffix.len() || !t.starts_with(prefix) || !t.ends_with(suffix) {
            return false;
        }
        let mut rest = &t[prefix.len()..t.len() - suffix.len()];
        for literal in &self.literals {
            let needle = literal.needle();
            // Right here is the common case: no searcher call for it.
            let at = if rest.starts_with(needle) {
                Some(0)
            } else {
                literal.find(rest)
            };
            match at {
                Some(at) => rest = &rest[at + needle.len()..],
                None => return false,
            }
        }
        true
    }
}

/// Whether `text` matches `pattern` ([`Glob`]; compile the pattern once to match it many times).
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    Glob::new(pattern).matches(text)
}

/// Whether a trigger with these filters builds `branch`: not excluded, and included. A trigger
/// without includes builds no branch on its own (only manual builds).
pub fn branch_selected(includes: &[String], excludes: &[String], branch: &str) -> bool {
    !excludes.iter().any(|p| glob_matches(p, branch))
        && includes.iter().any(|p| glob_matches(p, branch))
}

/// Pushes with this many changed files or more always build (the payload lists at most 3,000).
pub const WATCH_PATHS_MAX_FILES: usize = 3000;
/// Pushes with this many commits or more always build (the payload lists at most 20).
pub const WATCH_PATHS_MAX_COMMITS: usize = 20;
/// Longest changed path matched against watch paths, in bytes (Linux's `PATH_MAX`). A list with a
/// longer path always builds: it cannot name a file of a checkout, so the list is not trusted.
pub const WATCH_PATHS_MAX_PATH_BYTES: usize = 4096;
/// Most bytes of changed paths, all together, matched against watch paths (1 MiB: 3,000 paths of
/// 350 bytes). A larger list always builds, like one of 3,000+ files.
pub const WATCH_PATHS_MAX_TOTAL_BYTES: usize = 1024 * 1024;

/// Whether a push with these changed paths builds under these watch paths: paths matching an exclude
/// are dropped, then any remaining path matching an include builds. Pushes whose file list is empty or
/// may be incomplete (3,000+ files, 20+ commits) always build, and so do lists too large to match
/// ([`WATCH_PATHS_MAX_PATH_BYTES`], [`WATCH_PATHS_MAX_TOTAL_BYTES`]).
///
/// Cost: every pattern is compiled once, then each path is matched against at most every pattern,
/// each match linear in the path and the pattern. With the limits above and the API's on patterns
/// ([`crate::domain::MAX_PATTERNS`], [`crate::domain::MAX_PATTERN_LEN`],
/// [`crate::domain::MAX_PATTERN_WILDCARDS`]) the worst case is bounded (`benches/builds.rs`
/// measures it); callers still run it outside any write transaction, on a blocking thread.
pub fn paths_selected(
    includes: &[String],
    excludes: &[String],
    changed: &[String],
    commits: usize,
) -> bool {
    let total: usize = changed.iter().map(String::len).sum();
    if changed.is_empty()
        || changed.len() >= WATCH_PATHS_MAX_FILES
        || commits >= WATCH_PATHS_MAX_COMMITS
        || total > WATCH_PATHS_MAX_TOTAL_BYTES
        || changed
            .iter()
            .any(|path| path.len() > WATCH_PATHS_MAX_PATH_BYTES)
    {
        return true;
    }
    let includes: Vec<Glob> = includes.iter().map(|p| Glob::new(p)).collect();
    let excludes: Vec<Glob> = excludes.iter().map(|p| Glob::new(p)).collect();
    changed
        .iter()
        .filter(|path| !excludes.iter().any(|g| g.matches(path)))
        .any(|path| includes.iter().any(|g| g.matches(path)))
}

/// The watch-path check a pull-request build makes when it starts. A `pull_request` payload lists no
/// files, so the changes are read from the git mirror: `git diff` from the merge base of the base
/// branch and the head to the head (the pull request's files as GitHub shows them), with the commits
/// in between counted, evaluated by [`paths_selected`] like a push (same thresholds). When none
/// matches, the build ends `skipped`; when the changes cannot be read, it builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchPathCheck {
    /// The trigger's `path_includes` and `path_excludes` when the event arrived.
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    /// The branch the pull request merges into, and its head when the event was sent (preferred,
    /// when the mirror has it, to the branch's head when the build starts).
    pub base_branch: Option<String>,
    pub base_sha: Option<String>,
}

impl WatchPathCheck {
    /// The check of a pull-request build for a trigger with these watch paths; `None` when they
    /// select every change (an include `*`, no exclude), so that there is nothing to check.
    pub fn for_pull_request(
        includes: &[String],
        excludes: &[String],
        base_branch: Option<&str>,
        base_sha: Option<&str>,
    ) -> Option<WatchPathCheck> {
        if excludes.is_empty() && includes.iter().any(|p| p == "*") {
            return None;
        }
        Some(WatchPathCheck {
            includes: includes.to_vec(),
            excludes: excludes.to_vec(),
            base_branch: base_branch.map(str::to_owned),
            base_sha: base_sha.map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t) in [
            ("*", ""),
            ("*", "a/b"),
            ("main", "main"),
            ("preview/*", "preview/x/y"),
            ("*.md", "docs/a.md"),
            ("a*b*c", "aXbYc"),
            ("**", "x"),
        ] {
            assert!(glob_matches(p, t), "{p} {t}");
        }
        for (p, t) in [
            ("main", "main2"),
            ("preview/*", "preview"),
            ("*.md", "a.mdx"),
            ("a*b*c", "aXbY"),
            ("", "x"),
        ] {
            assert!(!glob_matches(p, t), "{p} {t}");
        }
    }

    /// The textbook dynamic programme over pattern and text prefixes (quadratic): what the linear
    /// matcher must agree with.
    fn reference(pattern: &str, text: &str) -> bool {
        let (p, t) = (pattern.as_bytes(), text.as_bytes());
        // row[j]: the pattern's first i bytes match the text's first j bytes.
        let mut row = vec![false; t.len() + 1];
        row[0] = true;
        for &c in p {
            let mut next = vec![false; t.len() + 1];
            if c == b'*' {
                next[0] = row[0];
                for j in 1..=t.len() {
                    next[j] = row[j] || next[j - 1];
                }
            } else {
                for j in 1..=t.len() {
                    next[j] = row[j - 1] && t[j - 1] == c;
                }
            }
            row = next;
        }
        row[t.len()]
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_reference(p in "[ab/*]{0,12}", t in "[ab/]{0,16}") {
            proptest::prop_assert_eq!(glob_matches(&p, &t), reference(&p, &t), "{:?} {:?}", p, t);
        }

        #[test]
        fn agrees_with_the_reference_on_multibyte_text(p in "[aé€*]{0,8}", t in "[aé€]{0,10}") {
            proptest::prop_assert_eq!(glob_matches(&p, &t), reference(&p, &t), "{:?} {:?}", p, t);
        }
    }

    #[test]
    fn worst_case_patterns_still_match_correctly() {
        // The shapes that made the old backtracking matcher quadratic: many stars, a long text
        // almost matching everywhere.
        let text = "a".repeat(4000);
        let pattern = format!("{}b", "*a".repeat(120));
        assert!(!glob_matches(&pattern, &text));
        assert!(glob_matches(&pattern, &format!("{text}b")));
        assert!(glob_matches(&"*a".repeat(120), &text));
        assert!(!glob_matches(&"*a".repeat(120), &"a".repeat(119)));
    }

    #[test]
    fn over_long_paths_always_build() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let long = format!("docs/{}", "x".repeat(WATCH_PATHS_MAX_PATH_BYTES));
        assert!(!paths_selected(&v(&["apps/*"]), &[], &v(&["docs/a"]), 1));
        assert!(paths_selected(&v(&["apps/*"]), &[], &[long], 1));
        let many = vec!["docs/x".repeat(600); 300];
        assert!(!paths_selected(&v(&["apps/*"]), &[], &many[..200], 1));
        assert!(
            paths_selected(&v(&["apps/*"]), &[], &many, 1),
            "over 1 MiB in all"
        );
    }

    #[test]
    fn watch_paths() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (inc, exc) = (v(&["apps/web/*"]), v(&["*.md"]));
        assert!(paths_selected(&inc, &exc, &v(&["apps/web/src/a.ts"]), 1));
        assert!(!paths_selected(&inc, &exc, &v(&["apps/api/x.ts"]), 1));
        assert!(!paths_selected(&inc, &exc, &v(&["apps/web/README.md"]), 1));
        assert!(paths_selected(&inc, &exc, &[], 1), "no file list: build");
        assert!(
            paths_selected(&inc, &exc, &v(&["apps/api/x.ts"]), 20),
            "20+ commits: build"
        );
    }

    #[test]
    fn excludes_win() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(branch_selected(&v(&["*"]), &v(&["main"]), "feature"));
        assert!(!branch_selected(&v(&["*"]), &v(&["main"]), "main"));
        assert!(branch_selected(&v(&["main"]), &v(&[]), "main"));
        assert!(!branch_selected(&v(&[]), &v(&[]), "main"));
    }
}

/// Whether branch filters make a trigger the Worker's preview trigger: every branch (`*`) minus
/// others (the production branch), the canonical pair of Cloudflare's Builds API guide
/// (PRODUCT-NOTES §3). Its builds are non-production branch builds.
pub fn is_preview_trigger(branch_includes: &[String], branch_excludes: &[String]) -> bool {
    branch_includes.iter().any(|p| p == "*") && !branch_excludes.is_empty()
}

#[cfg(test)]
mod preview_tests {
    use super::is_preview_trigger;

    #[test]
    fn preview_is_star_minus_production() {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(is_preview_trigger(&v(&["*"]), &v(&["main"])));
        assert!(!is_preview_trigger(&v(&["main"]), &v(&[])));
        assert!(!is_preview_trigger(&v(&["*"]), &v(&[])));
    }
}
