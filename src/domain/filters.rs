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
    fn excludes_win() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(branch_selected(&v(&["*"]), &v(&["main"]), "feature"));
        assert!(!branch_selected(&v(&["*"]), &v(&["main"]), "main"));
        assert!(branch_selected(&v(&["main"]), &v(&[]), "main"));
        assert!(!branch_selected(&v(&[]), &v(&[]), "main"));
    }
}
