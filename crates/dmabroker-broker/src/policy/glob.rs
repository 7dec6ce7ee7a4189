//! Cgroup path patterns of `[[cgroup]]` rules.
//!
//! A pattern is a cgroup path whose components may hold `*`; nothing else
//! is special (systemd escapes such as `\x2d` are literal text).
//!
//! - `*` matches any run of characters **within one component**, never a
//!   `/`: `app-flatpak-*.scope` matches `app-flatpak-org.gnome.Maps-1234.scope`.
//! - A pattern starting with `/` is anchored at the root of the cgroup
//!   hierarchy (the broker's cgroup namespace): `/system.slice/foo.service`
//!   names exactly that cgroup. One without the leading `/` is matched
//!   against the **last** components of the client's cgroup, whole
//!   components only: `user@1000.service/app.slice/*` matches
//!   `/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope`, not
//!   a cgroup below `x.scope`. Both ends are anchored either way.
//! - A final `/**` makes it a subtree: `P/**` matches the cgroup `P` matches
//!   and every cgroup below it. The quota of such a rule is charged to that
//!   top cgroup, summed over everything below it (as `memory.max` is); the
//!   quota of a rule without `/**` is charged to the client's own cgroup.
//!
//! ```
//! use dmabroker_broker::policy::glob::CgroupPattern;
//! let p = CgroupPattern::parse("app.slice/app-flatpak-*.scope").unwrap();
//! let c = "/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.x-12.scope";
//! assert_eq!(p.unit(c).as_deref(), Some(c));
//! let tree = CgroupPattern::parse("user@1000.service/**").unwrap();
//! assert_eq!(tree.unit(c).as_deref(), Some("/user.slice/user-1000.slice/user@1000.service"));
//! assert_eq!(CgroupPattern::parse("/user.slice/*").unwrap().unit(c), None);
//! ```

/// A parsed cgroup pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPattern {
    text: String,
    anchored: bool,
    subtree: bool,
    components: Vec<String>,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// Nothing to match.
    #[error("empty path: write `/` for the root cgroup or `/**` for every cgroup")]
    Empty,
    /// `a//b`, or a trailing `/` (which would suggest a subtree without saying so).
    #[error("empty component (`//` or a trailing `/`): write `P/**` for a subtree")]
    EmptyComponent,
    /// `.` or `..`: cgroup paths from the kernel never hold them.
    #[error("component `{0}`: `.` and `..` never appear in a cgroup path")]
    Dot(String),
    /// `**` anywhere but as the last component, or part of a component.
    #[error("`**` is allowed only as the whole last component (`P/**`, a subtree)")]
    DoubleStar,
    /// `**` alone, without a cgroup above it.
    #[error("`**` alone: write `/**` for every cgroup")]
    BareSubtree,
    /// Control characters cannot be in a cgroup name.
    #[error("control characters are not allowed")]
    Control,
}

impl CgroupPattern {
    /// Parse a pattern (see the module docs).
    ///
    /// # Errors
    /// [`PatternError`]: what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.chars().any(char::is_control) {
            return Err(PatternError::Control);
        }
        let anchored = text.starts_with('/');
        let body = if anchored { &text[1..] } else { text };
        let mut components: Vec<String> = if body.is_empty() {
            Vec::new() // "/": the root cgroup
        } else {
            body.split('/').map(str::to_owned).collect()
        };
        let subtree = components.last().is_some_and(|c| c == "**");
        if subtree {
            components.pop();
            if components.is_empty() && !anchored {
                return Err(PatternError::BareSubtree);
            }
        }
        for c in &components {
            match c.as_str() {
                "" => return Err(PatternError::EmptyComponent),
                "." | ".." => return Err(PatternError::Dot(c.clone())),
                c if c.contains("**") => return Err(PatternError::DoubleStar),
                _ => {}
            }
        }
        Ok(Self { text: text.to_owned(), anchored, subtree, components })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether it is a subtree pattern (`P/**`).
    pub fn is_subtree(&self) -> bool {
        self.subtree
    }

    /// The cgroup a match charges, if `cgroup` (an absolute path as
    /// `/proc/PID/cgroup` gives it) matches: `cgroup` itself, or for a
    /// subtree pattern the outermost ancestor (or itself) that `P` matches.
    pub fn unit(&self, cgroup: &str) -> Option<String> {
        let path: Vec<&str> = cgroup.split('/').filter(|c| !c.is_empty()).collect();
        if !self.subtree {
            return self.matches_exactly(&path).then(|| cgroup.to_owned());
        }
        (0..=path.len()).find(|&n| self.matches_exactly(&path[..n])).map(|n| {
            if n == 0 {
                "/".to_owned()
            } else {
                format!("/{}", path[..n].join("/"))
            }
        })
    }

    /// Whether the components before `/**` match `path` (both ends
    /// anchored; a relative pattern against the last components).
    fn matches_exactly(&self, path: &[&str]) -> bool {
        let k = self.components.len();
        if path.len() < k || (self.anchored && path.len() != k) {
            return false;
        }
        self.components.iter().zip(&path[path.len() - k..]).all(|(p, c)| component_matches(p, c))
    }
}

impl std::fmt::Display for CgroupPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// `*` (any run, possibly empty) against one component; everything else literal.
/// The classic greedy match with one backtrack point: O(len(p) * len(c)).
fn component_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == n[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.gnome.Maps-4242.scope";

    fn unit(p: &str, c: &str) -> Option<String> {
        CgroupPattern::parse(p).unwrap().unit(c)
    }

    #[test]
    fn star_matches_within_one_component() {
        assert!(component_matches("app-flatpak-*.scope", "app-flatpak-org.gnome.Maps-4242.scope"));
        assert!(component_matches("*", "x"));
        assert!(component_matches("a*b*c", "aXbYbc"));
        assert!(component_matches("a**", "a"), "two stars inside a component parse as one run");
        assert!(!component_matches("app-*.scope", "app-x.service"));
        assert!(!component_matches("abc", "abcd") && !component_matches("abcd", "abc"));
        assert!(component_matches("", "") && !component_matches("", "a"));
        // The star never crosses a `/`: components are matched one by one.
        assert_eq!(unit("app.slice/*", "/u/app.slice/a/b"), None);
        assert_eq!(unit("/*", "/a/b"), None);
    }

    #[test]
    fn relative_patterns_match_the_last_components() {
        assert_eq!(unit("app-flatpak-*.scope", APP).as_deref(), Some(APP));
        assert_eq!(unit("user@1000.service/app.slice/*", APP).as_deref(), Some(APP));
        assert_eq!(unit("user@1000.service/app.slice", APP), None, "anchored at the end");
        assert_eq!(unit("flatpak-*.scope", APP), None, "whole components only");
        assert_eq!(unit("user@1001.service/app.slice/*", APP), None);
        assert_eq!(unit("a/b/c", "/b/c"), None, "longer than the path");
    }

    #[test]
    fn absolute_patterns_match_from_the_root() {
        assert_eq!(unit("/user.slice/*/user@*.service/app.slice/*", APP).as_deref(), Some(APP));
        assert_eq!(unit("/app.slice/*", APP), None);
        assert_eq!(unit("/", "/").as_deref(), Some("/"));
        assert_eq!(unit("/", "/a"), None);
        assert_eq!(
            unit("/system.slice/foo.service", "/system.slice/foo.service").as_deref(),
            Some("/system.slice/foo.service")
        );
    }

    #[test]
    fn subtrees_charge_their_top_cgroup() {
        let slice = "/user.slice/user-1000.slice/user@1000.service/app.slice";
        assert_eq!(unit("app.slice/**", APP).as_deref(), Some(slice));
        assert_eq!(unit("app.slice/**", slice).as_deref(), Some(slice), "the top itself is in its subtree");
        assert_eq!(unit("/user.slice/**", APP).as_deref(), Some("/user.slice"));
        assert_eq!(unit("/**", APP).as_deref(), Some("/"));
        assert_eq!(unit("/**", "/").as_deref(), Some("/"));
        // The outermost match wins: nested slices of the same name share the top's quota.
        assert_eq!(unit("*.slice/**", APP).as_deref(), Some("/user.slice"));
        assert_eq!(unit("system.slice/**", APP), None);
        assert!(CgroupPattern::parse("app.slice/**").unwrap().is_subtree());
    }

    #[test]
    fn bad_patterns_say_why() {
        assert_eq!(CgroupPattern::parse(""), Err(PatternError::Empty));
        assert_eq!(CgroupPattern::parse("a//b"), Err(PatternError::EmptyComponent));
        assert_eq!(CgroupPattern::parse("a/"), Err(PatternError::EmptyComponent));
        assert_eq!(CgroupPattern::parse("a/../b"), Err(PatternError::Dot("..".into())));
        assert_eq!(CgroupPattern::parse("a/**/b"), Err(PatternError::DoubleStar));
        assert_eq!(CgroupPattern::parse("a**"), Err(PatternError::DoubleStar));
        assert_eq!(CgroupPattern::parse("**"), Err(PatternError::BareSubtree));
        assert_eq!(CgroupPattern::parse("a\nb"), Err(PatternError::Control));
        assert!(CgroupPattern::parse("app-flatpak-org.foo\\x2dbar-*.scope").is_ok(), "systemd escapes are literal");
    }
}
