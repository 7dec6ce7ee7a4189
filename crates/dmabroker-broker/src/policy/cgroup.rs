//! `[[cgroup]]` rules: what clients in matching cgroups may do, narrowed
//! from what their uid may do.
//!
//! ```toml
//! cgroup_unknown = "refuse"   # top-level key, before any table: "refuse" (default) or "allow"
//!
//! [[cgroup]]
//! path = "app-flatpak-*.scope"        # pattern: see [`super::glob`]
//! heaps = ["memfd"]                   # only these (of what the uid may use)
//! max_bytes = "64MiB"                 # per matched cgroup, all its clients together
//! max_buffers = 32
//! publish = false                     # false denies publishing; true changes nothing
//! ```
//!
//! **Rules only narrow.** A client may do what its uid's rule (`[[user]]`,
//! `[[group]]`, `[defaults]`) allows *and* every `[[cgroup]]` rule matching
//! its cgroup allows: the heaps are the intersection, each matching rule's
//! quota applies besides the uid's, and `publish = false` in any of them
//! denies. A key left out narrows nothing. Rules never grant, because a
//! cgroup is no identity the broker can hold a user to: a user can move
//! its own processes between its cgroups (it owns them under systemd's
//! delegation; `cgroup.procs` is writable to it), so anything a cgroup rule
//! gave beyond the uid's rule every process of that user could take.
//!
//! Quotas are charged per cgroup, whatever the uid of the clients in it:
//! a rule without `/**` to each matching cgroup on its own (every flatpak
//! app its own 64 MiB above), a subtree rule `P/**` to the cgroup `P`
//! matches, summed over all below it. A buffer counts for the cgroup its
//! allocating (or publishing, for a buffer the broker did not hold yet)
//! client was in at connect, for as long as it is charged.
//!
//! The client's cgroup is read at connect, from `/proc/PID/cgroup` while
//! its pidfd shows the process is still the one that connected (the
//! unified hierarchy's `0::/path` line, relative to the broker's cgroup
//! namespace). Where it cannot be read (no pidfd: the client is outside the
//! broker's pid namespace or exited; no cgroup v2; the client's cgroup is
//! outside the broker's cgroup namespace, `/../...`), `cgroup_unknown`
//! decides: `"refuse"` (the default once any `[[cgroup]]` rule exists)
//! refuses its allocations and publications with the reason; `"allow"`
//! serves it by its uid's rule alone. Importing is never refused.

use super::glob::CgroupPattern;
use super::heap_list_allows;
use std::sync::Arc;

/// One `[[cgroup]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRule {
    /// The pattern (`path`).
    pub pattern: CgroupPattern,
    /// Its line in the policy file, for messages.
    pub line: usize,
    /// Heaps allowed (intersected with the uid's); `None`: no narrowing.
    pub heaps: Option<Vec<String>>,
    /// Bytes all clients of one matched cgroup may hold together.
    pub max_bytes: Option<u64>,
    /// Buffers all clients of one matched cgroup may hold together.
    pub max_buffers: Option<u64>,
    /// `Some(false)`: publishing (and registering pools) denied.
    pub publish: Option<bool>,
}

impl CgroupRule {
    /// The rule as messages name it: "[[cgroup]] `PATTERN` (policy line N)".
    pub fn describe(&self) -> String {
        format!("[[cgroup]] `{}` (policy line {})", self.pattern, self.line)
    }
}

/// What to do with a client whose cgroup cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupUnknown {
    /// Refuse its allocations and publications.
    Refuse,
    /// Serve it by its uid's rule alone.
    Allow,
}

/// One rule matching a client, and the cgroup its quota is charged to.
#[derive(Debug, Clone)]
pub struct Matched {
    /// The rule.
    pub rule: Arc<CgroupRule>,
    /// The cgroup charged: the client's, or for a subtree rule its top.
    pub unit: String,
}

/// What the cgroup rules make of one client.
#[derive(Debug, Clone)]
pub enum CgroupAccess {
    /// The client's cgroup is known; the rules that match it (maybe none).
    Known {
        /// Every matching rule, in file order.
        rules: Vec<Matched>,
    },
    /// Not known, and served by its uid alone (no rule exists, or
    /// `cgroup_unknown = "allow"`).
    UnknownAllowed,
    /// Not known, and refused (`cgroup_unknown = "refuse"`).
    UnknownRefused {
        /// Why it is not known.
        why: String,
    },
}

impl CgroupAccess {
    /// The matching rules (none when the cgroup is not known).
    pub fn rules(&self) -> &[Matched] {
        match self {
            Self::Known { rules } => rules,
            _ => &[],
        }
    }

    /// Why the client is refused everything but importing, if it is.
    pub fn refused(&self) -> Option<&str> {
        match self {
            Self::UnknownRefused { why } => Some(why),
            _ => None,
        }
    }

    /// The first matching rule that does not allow `heap`.
    pub fn heap_denied(&self, heap: &str) -> Option<&Matched> {
        self.rules().iter().find(|m| m.rule.heaps.as_ref().is_some_and(|h| !heap_list_allows(h, heap)))
    }

    /// The first matching rule that denies publishing.
    pub fn publish_denied(&self) -> Option<&Matched> {
        self.rules().iter().find(|m| m.rule.publish == Some(false))
    }
}

/// The rules' verdict on a client whose cgroup read gave `cgroup`.
pub fn access(rules: &[Arc<CgroupRule>], unknown: CgroupUnknown, cgroup: &Result<String, String>) -> CgroupAccess {
    let path = match cgroup {
        // `/../x`: outside the broker's cgroup namespace, where no pattern
        // of this policy can name it.
        Ok(p) if p.split('/').any(|c| c == "..") => {
            Err(format!("its cgroup {p} is outside the broker's cgroup namespace"))
        }
        Ok(p) => Ok(p),
        Err(e) => Err(e.clone()),
    };
    match path {
        Ok(path) => CgroupAccess::Known {
            rules: rules
                .iter()
                .filter_map(|r| r.pattern.unit(path).map(|unit| Matched { rule: Arc::clone(r), unit }))
                .collect(),
        },
        Err(_) if rules.is_empty() || unknown == CgroupUnknown::Allow => CgroupAccess::UnknownAllowed,
        Err(why) => CgroupAccess::UnknownRefused { why },
    }
}

/// Whether a buffer charged to `cgroup` counts for `unit`: the same cgroup,
/// or (`subtree`) one below it.
pub fn within(cgroup: &str, unit: &str, subtree: bool) -> bool {
    cgroup == unit || (subtree && (unit == "/" || cgroup.strip_prefix(unit).is_some_and(|rest| rest.starts_with('/'))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(path: &str, line: usize) -> Arc<CgroupRule> {
        Arc::new(CgroupRule {
            pattern: CgroupPattern::parse(path).unwrap(),
            line,
            heaps: Some(vec!["memfd".into()]),
            max_bytes: Some(1 << 20),
            max_buffers: None,
            publish: Some(false),
        })
    }

    #[test]
    fn every_matching_rule_applies_and_unknown_cgroups_follow_the_setting() {
        let rules = vec![rule("a/*", 3), rule("/x/**", 9), rule("b/*", 12)];
        let a = access(&rules, CgroupUnknown::Refuse, &Ok("/x/a/1".into()));
        let units: Vec<_> = a.rules().iter().map(|m| (m.rule.line, m.unit.as_str())).collect();
        assert_eq!(units, vec![(3, "/x/a/1"), (9, "/x")]);
        assert!(a.heap_denied("dma-heap/system").is_some() && a.heap_denied("memfd").is_none());
        assert_eq!(a.publish_denied().map(|m| m.rule.line), Some(3));
        let none = access(&rules, CgroupUnknown::Refuse, &Ok("/y".into()));
        assert!(none.rules().is_empty() && none.refused().is_none());
        let gone = Err("no pidfd".to_owned());
        assert_eq!(access(&rules, CgroupUnknown::Refuse, &gone).refused(), Some("no pidfd"));
        assert!(access(&rules, CgroupUnknown::Allow, &gone).refused().is_none());
        assert!(access(&[], CgroupUnknown::Refuse, &gone).refused().is_none(), "no rule: nothing to refuse by");
        let outside = access(&rules, CgroupUnknown::Refuse, &Ok("/../../x/a/1".into()));
        assert!(outside.refused().unwrap().contains("outside the broker's cgroup namespace"));
    }

    #[test]
    fn subtrees_contain_their_descendants_only() {
        assert!(within("/a", "/a", false) && within("/a/b", "/a", true) && within("/a", "/", true));
        assert!(!within("/a/b", "/a", false) && !within("/ab", "/a", true) && !within("/a", "/a/b", true));
    }
}
