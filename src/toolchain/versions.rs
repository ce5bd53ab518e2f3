//! Version specs: turning `22`, `v22.16`, `>=22 <24` or `^10` into the newest matching published version.
//!
//! Specs follow npm's syntax (space-separated comparators, `||` alternatives, `1.2 - 1.4` hyphen
//! ranges, `x`/`*` wildcards, a bare partial version meaning "any release of it"); they are rewritten
//! into the `semver` crate's syntax, whose operators mean the same as npm's.

use std::collections::BTreeMap;

use semver::{Version, VersionReq};

/// A parsed version spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spec {
    /// One exact version (`22.16.0`, `v22.16.0`, `1.0.0-rc.1`): it exists or it does not.
    Exact(Version),
    /// A range: the newest version matching any alternative wins.
    Range {
        alternatives: Vec<VersionReq>,
        /// The spec names a prerelease, so prereleases may match (as npm does).
        prerelease: bool,
    },
    /// A dist-tag such as `latest`.
    Tag(String),
}

/// Parses a published version (a leading `v` is allowed).
pub(crate) fn parse_version(text: &str) -> Option<Version> {
    Version::parse(strip_v(text.trim())).ok()
}

fn strip_v(t: &str) -> &str {
    t.strip_prefix(['v', 'V'])
        .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(t)
}

impl Spec {
    /// Parses a spec; `None` when it is neither a version, a range nor a tag name.
    pub(crate) fn parse(spec: &str) -> Option<Spec> {
        let spec = spec.trim();
        if let Some(v) = parse_version(spec) {
            return Some(Spec::Exact(v));
        }
        if !spec.is_empty()
            && spec.starts_with(|c: char| c.is_ascii_alphabetic())
            && !spec.starts_with(['v', 'V', 'x', 'X'])
            && spec
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Some(Spec::Tag(spec.to_owned()));
        }
        let mut alternatives = Vec::new();
        for alt in spec.split("||") {
            alternatives.push(VersionReq::parse(&npm_to_semver(alt)?).ok()?);
        }
        let prerelease = spec.contains(|c: char| c.is_ascii_digit())
            && spec
                .split(|c: char| c.is_whitespace() || c == '|')
                .any(|tok| tok.contains('-') && tok != "-");
        Some(Spec::Range {
            alternatives,
            prerelease,
        })
    }

    /// Whether `v` satisfies this spec (tags never match here: they are looked up separately).
    pub(crate) fn matches(&self, v: &Version) -> bool {
        match self {
            Spec::Exact(want) => want == v,
            Spec::Range {
                alternatives,
                prerelease,
            } => (v.pre.is_empty() || *prerelease) && alternatives.iter().any(|r| r.matches(v)),
            Spec::Tag(_) => false,
        }
    }

    /// The newest of `versions` satisfying this spec.
    pub(crate) fn newest<'a>(
        &self,
        versions: impl IntoIterator<Item = &'a Version>,
    ) -> Option<&'a Version> {
        versions.into_iter().filter(|v| self.matches(v)).max()
    }
}

/// Rewrites one npm alternative (no `||`) into a comma-separated `semver` requirement.
fn npm_to_semver(alt: &str) -> Option<String> {
    let alt = alt.trim();
    if let Some((low, high)) = alt.split_once(" - ") {
        let low = partial_parts(low.trim())?;
        let high = partial_parts(high.trim())?;
        return Some(format!(">={}, <={}", low.join("."), high.join(".")));
    }
    // Join an operator written apart from its version (`>= 22`) with it.
    let mut tokens: Vec<String> = Vec::new();
    let mut pending_op = String::new();
    for tok in alt.split_whitespace() {
        if tok
            .chars()
            .all(|c| matches!(c, '<' | '>' | '=' | '^' | '~'))
        {
            pending_op.push_str(tok);
            continue;
        }
        tokens.push(format!("{pending_op}{tok}"));
        pending_op.clear();
    }
    if !pending_op.is_empty() {
        return None;
    }
    if tokens.is_empty() {
        return Some("*".to_owned());
    }
    let mut out = Vec::new();
    for tok in tokens {
        let split = tok
            .find(|c: char| !matches!(c, '<' | '>' | '=' | '^' | '~'))
            .unwrap_or(tok.len());
        let (op, ver) = tok.split_at(split);
        let ver = strip_v(ver);
        let op = if op == "~>" { "~" } else { op };
        if ver.is_empty() {
            return None;
        }
        if op.is_empty() {
            // npm: a bare full version is exact, a bare partial one is "any release of it";
            // the semver crate would read both as caret requirements.
            if Version::parse(ver).is_ok() {
                out.push(format!("={ver}"));
                continue;
            }
            let parts = partial_parts(ver)?;
            if parts.iter().all(|p| p == "*") {
                out.push("*".to_owned());
            } else {
                let fixed: Vec<_> = parts.into_iter().take_while(|p| p != "*").collect();
                out.push(format!("{}.*", fixed.join(".")));
            }
        } else {
            let ver = ver.replace(['x', 'X'], "*");
            out.push(format!("{op}{ver}"));
        }
    }
    Some(out.join(", "))
}

/// `22` → `["22"]`, `22.x` → `["22", "*"]`, `22.16.0` → `["22", "16", "0"]`; `None` when not numeric.
fn partial_parts(ver: &str) -> Option<Vec<String>> {
    let ver = strip_v(ver);
    if ver.contains(['-', '+']) {
        // A full version with a prerelease or build: kept whole.
        return Version::parse(ver).ok().map(|_| vec![ver.to_owned()]);
    }
    let parts: Vec<String> = ver
        .split('.')
        .map(|p| match p {
            "x" | "X" | "*" => Some("*".to_owned()),
            n if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => Some(n.to_owned()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    (1..=3).contains(&parts.len()).then_some(parts)
}

/// Up to three published versions to suggest when a spec matches nothing: the newest release of
/// each of the majors nearest the spec's first number (the newest majors when it has none),
/// newest first.
pub(crate) fn nearest(spec: &str, versions: &[Version]) -> Vec<String> {
    let target: Option<u64> = spec
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok());
    let releases: Vec<&Version> = versions.iter().filter(|v| v.pre.is_empty()).collect();
    let pool: Vec<&Version> = if releases.is_empty() {
        versions.iter().collect()
    } else {
        releases
    };
    let mut newest_per_major: BTreeMap<u64, &Version> = BTreeMap::new();
    for v in pool {
        let slot = newest_per_major.entry(v.major).or_insert(v);
        if v > *slot {
            *slot = v;
        }
    }
    let mut majors: Vec<(u64, &Version)> = newest_per_major.into_iter().collect();
    match target {
        // Nearest first; between two equally near majors the newer one.
        Some(t) => majors.sort_by_key(|(m, _)| (m.abs_diff(t), std::cmp::Reverse(*m))),
        None => majors.sort_by_key(|(m, _)| std::cmp::Reverse(*m)),
    }
    let mut picked: Vec<&Version> = majors.into_iter().take(3).map(|(_, v)| v).collect();
    picked.sort_by(|a, b| b.cmp(a));
    picked.into_iter().map(Version::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(list: &[&str]) -> Vec<Version> {
        list.iter().map(|v| Version::parse(v).unwrap()).collect()
    }

    fn pick(spec: &str, list: &[&str]) -> Option<String> {
        let versions = vs(list);
        Spec::parse(spec)?.newest(&versions).map(Version::to_string)
    }

    const NODE: &[&str] = &[
        "18.20.8",
        "20.19.2",
        "22.15.1",
        "22.16.0",
        "22.16.3",
        "22.17.0",
        "23.0.0-rc.1",
        "24.0.0",
        "24.18.0",
        "25.0.0-nightly",
    ];

    #[test]
    fn partial_versions_mean_any_release_of_them() {
        assert_eq!(pick("22", NODE).as_deref(), Some("22.17.0"));
        assert_eq!(pick("v22", NODE).as_deref(), Some("22.17.0"));
        assert_eq!(pick("22.16", NODE).as_deref(), Some("22.16.3"));
        assert_eq!(pick("22.16.x", NODE).as_deref(), Some("22.16.3"));
        assert_eq!(pick("22.x", NODE).as_deref(), Some("22.17.0"));
        assert_eq!(pick("*", NODE).as_deref(), Some("24.18.0"));
        assert_eq!(pick("", NODE).as_deref(), Some("24.18.0"));
    }

    #[test]
    fn exact_versions_must_exist() {
        assert_eq!(
            Spec::parse("v22.16.0"),
            Some(Spec::Exact(Version::new(22, 16, 0)))
        );
        assert_eq!(pick("22.16.0", NODE).as_deref(), Some("22.16.0"));
        assert_eq!(pick("22.16.1", NODE), None);
        assert_eq!(pick("23.0.0-rc.1", NODE).as_deref(), Some("23.0.0-rc.1"));
    }

    #[test]
    fn npm_ranges() {
        assert_eq!(pick(">=22", NODE).as_deref(), Some("24.18.0"));
        assert_eq!(pick(">= 22 <24", NODE).as_deref(), Some("22.17.0"));
        assert_eq!(pick("^20 || ^22", NODE).as_deref(), Some("22.17.0"));
        assert_eq!(pick("~22.16.0", NODE).as_deref(), Some("22.16.3"));
        assert_eq!(pick("^22.16", NODE).as_deref(), Some("22.17.0"));
        assert_eq!(pick("<=22.16", NODE).as_deref(), Some("22.16.3"));
        assert_eq!(pick("18 - 20", NODE).as_deref(), Some("20.19.2"));
        assert_eq!(pick("=20.19.2", NODE).as_deref(), Some("20.19.2"));
        assert_eq!(pick(">=99", NODE), None);
    }

    #[test]
    fn prereleases_only_when_asked() {
        assert_eq!(pick(">=23 <24", NODE), None);
        assert_eq!(
            pick(">=23.0.0-rc.0 <24", NODE).as_deref(),
            Some("23.0.0-rc.1")
        );
    }

    #[test]
    fn tags_and_garbage() {
        assert_eq!(Spec::parse("latest"), Some(Spec::Tag("latest".into())));
        assert_eq!(Spec::parse(">>>"), None);
        assert_eq!(Spec::parse("22..1"), None);
        assert_eq!(Spec::parse(">="), None);
    }

    #[test]
    fn nearest_are_the_newest_of_the_nearest_majors() {
        assert_eq!(nearest("99", &vs(NODE)), ["24.18.0", "22.17.0", "20.19.2"]);
        assert_eq!(
            nearest("21.1", &vs(NODE)),
            ["24.18.0", "22.17.0", "20.19.2"]
        );
        assert_eq!(nearest("19", &vs(NODE)), ["22.17.0", "20.19.2", "18.20.8"]);
        assert_eq!(
            nearest("latest-ish", &vs(NODE)),
            ["24.18.0", "22.17.0", "20.19.2"]
        );
        assert!(nearest("1", &[]).is_empty());
    }
}
