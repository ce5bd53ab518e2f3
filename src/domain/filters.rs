//! Branch and path filters of triggers (DESIGN.md §3): `*` matches any run of characters, `/`
//! included; excludes win over includes.

/// Whether `text` matches `pattern`, where `*` stands for any run of characters (also empty, also
/// across `/`) and every other character stands for itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and how much of the text it has swallowed so far.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
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

/// Whether a push with these changed paths builds under these watch paths: paths matching an exclude
/// are dropped, then any remaining path matching an include builds. Pushes whose file list is empty or
/// may be incomplete (3,000+ files, 20+ commits) always build.
pub fn paths_selected(
    includes: &[String],
    excludes: &[String],
    changed: &[String],
    commits: usize,
) -> bool {
    if changed.is_empty()
        || changed.len() >= WATCH_PATHS_MAX_FILES
        || commits >= WATCH_PATHS_MAX_COMMITS
    {
        return true;
    }
    changed
        .iter()
        .filter(|path| !excludes.iter().any(|p| glob_matches(p, path)))
        .any(|path| includes.iter().any(|p| glob_matches(p, path)))
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
