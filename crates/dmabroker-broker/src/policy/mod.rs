//! The policy: which heaps each user may allocate from, how much (quota),
//! and whether it may publish. Read from TOML (`--policy FILE`, default
//! `/etc/dmabroker/policy.toml` when present):
//!
//! ```toml
//! # Everyone not matched below (default: nothing but importing what was granted).
//! [defaults]
//! heaps = []
//! max_bytes = 0
//! max_buffers = 0
//! publish = false
//!
//! [[user]]            # matched by uid first
//! uid = 1000
//! heaps = ["memfd", "udmabuf", "dma-heap/system"]
//! max_bytes = "512MiB"
//! max_buffers = 256
//! publish = true
//!
//! [[group]]           # then by primary or supplementary gid, first match wins
//! gid = 44
//! heaps = ["*"]
//! max_bytes = "2GiB"
//! max_buffers = 1024
//! publish = true
//! ```
//!
//! Each uid may have one `[[user]]` entry and each gid one `[[group]]` entry;
//! a repeated one is an error naming it (which one should win is not obvious).
//!
//! Without a `[[user]]` entry of their own, root and the broker's own uid get
//! [`Limits::owner`] (every heap, 1 GiB, 1024 buffers, publish): the people
//! who could open the heaps themselves lose nothing by going through the broker.
//!
//! `[[cgroup]]` rules ([`cgroup`]) narrow what the uid's rule allows for
//! clients in matching cgroups (patterns: [`glob`]), with quotas charged per
//! cgroup; `cgroup_unknown` (a top-level key) says what happens to a client
//! whose cgroup cannot be read. A policy without them reads as before.
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | the file format, uid and group rules, names |
//! | [`cgroup`] | `[[cgroup]]` rules: narrowing, unknown cgroups |
//! | [`glob`] | cgroup path patterns |

pub mod cgroup;
pub mod glob;

use cgroup::{CgroupAccess, CgroupRule, CgroupUnknown};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use toml::Spanned;

/// What one user may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Heap names allowed; `*` allows every heap.
    pub heaps: Vec<String>,
    /// Bytes the user may hold through the broker at once.
    pub max_bytes: u64,
    /// Buffers the user may hold through the broker at once.
    pub max_buffers: u64,
    /// Whether the user may publish buffers.
    pub publish: bool,
}

impl Limits {
    /// The built-in rule for root and the broker's own uid.
    pub fn owner() -> Self {
        Self { heaps: vec!["*".into()], max_bytes: 1 << 30, max_buffers: 1024, publish: true }
    }

    /// The built-in rule for everyone else: nothing but importing.
    pub fn nothing() -> Self {
        Self { heaps: Vec::new(), max_bytes: 0, max_buffers: 0, publish: false }
    }

    /// Whether `heap` is allowed (`dma-heap/system` also matches `system`).
    pub fn allows_heap(&self, heap: &str) -> bool {
        heap_list_allows(&self.heaps, heap)
    }
}

/// Whether a policy heap list allows `heap` (`*` every heap;
/// `dma-heap/system` also matches `system`).
pub(crate) fn heap_list_allows(list: &[String], heap: &str) -> bool {
    list.iter().any(|h| h == "*" || h == heap || format!("dma-heap/{h}") == heap || format!("dma-heap/{heap}") == *h)
}

/// Why a policy file was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown keys.
    #[error("invalid policy {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with the line.
        message: String,
    },
}

/// A size in the policy: a number of bytes or a string such as `"512MiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    uid: Option<u32>,
    gid: Option<u32>,
    #[serde(default)]
    heaps: Vec<String>,
    max_bytes: Option<Size>,
    max_buffers: Option<u64>,
    #[serde(default)]
    publish: bool,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    defaults: Option<Spanned<RuleFile>>,
    #[serde(default)]
    user: Vec<Spanned<RuleFile>>,
    #[serde(default)]
    group: Vec<Spanned<RuleFile>>,
    #[serde(default)]
    name: Vec<Spanned<NameFile>>,
    cgroup_unknown: Option<CgroupUnknownFile>,
    #[serde(default)]
    cgroup: Vec<CgroupFile>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CgroupUnknownFile {
    Refuse,
    Allow,
}

/// `[[cgroup]]`: every key but `path` optional (left out: no narrowing).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CgroupFile {
    path: Spanned<String>,
    heaps: Option<Vec<String>>,
    max_bytes: Option<Spanned<Size>>,
    max_buffers: Option<u64>,
    publish: Option<bool>,
}

/// `[[name]] name = "cam0"` (or a prefix, `"cam*"`) `uid = 1001`: the name
/// belongs to that uid; nobody else may publish or register it, and its
/// unqualified form resolves to that uid's publication for everyone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameFile {
    name: String,
    uid: u32,
}

/// The parsed policy.
#[derive(Debug, Clone)]
pub struct Policy {
    defaults: Limits,
    users: Vec<(u32, Limits)>,
    groups: Vec<(u32, Limits)>,
    owner_uid: u32,
    /// Reserved names (`[[name]]`): pattern (exact, or a prefix ending in
    /// `*`) and owner.
    names: Vec<(String, u32)>,
    /// `[[cgroup]]` rules, in file order.
    cgroups: Vec<Arc<CgroupRule>>,
    cgroup_unknown: CgroupUnknown,
}

impl Policy {
    /// The built-in policy: root and `owner_uid` get [`Limits::owner`],
    /// everyone else [`Limits::nothing`].
    pub fn builtin(owner_uid: u32) -> Self {
        Self {
            defaults: Limits::nothing(),
            users: Vec::new(),
            groups: Vec::new(),
            owner_uid,
            names: Vec::new(),
            cgroups: Vec::new(),
            cgroup_unknown: CgroupUnknown::Refuse,
        }
    }

    /// Read a policy file.
    ///
    /// # Errors
    /// [`PolicyError`] naming the file and the line.
    pub fn load(path: &Path, owner_uid: u32) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, owner_uid)
            .map_err(|message| PolicyError::Parse { path: path.display().to_string(), message })
    }

    /// Parse policy TOML.
    ///
    /// # Errors
    /// A message saying what is wrong, with the line and the key.
    pub fn parse(text: &str, owner_uid: u32) -> Result<Self, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            let mut m = e.to_string();
            // TOML puts a key after a `[table]` header inside that table.
            if m.contains("unknown field `cgroup_unknown`") {
                m.push_str("\n(cgroup_unknown is a top-level key: put it above the first [table] or [[table]])");
            }
            m
        })?;
        // Every error of a table starts with its line.
        let at = |span: std::ops::Range<usize>| format!("line {}: ", line_of(text, span.start));
        let limits = |r: &RuleFile, what: &str| -> Result<Limits, String> {
            let max_bytes = match &r.max_bytes {
                None => 0,
                Some(Size::Bytes(b)) => *b,
                Some(Size::Text(t)) => {
                    dmabroker::size::parse_size(t).map_err(|e| format!("{what}: max_bytes `{t}`: {e}"))?
                }
            };
            Ok(Limits {
                heaps: r.heaps.clone(),
                max_bytes,
                max_buffers: r.max_buffers.unwrap_or(0),
                publish: r.publish,
            })
        };
        let defaults = match &file.defaults {
            Some(d) if d.get_ref().uid.is_some() || d.get_ref().gid.is_some() => {
                return Err(format!("{}[defaults] takes no uid or gid", at(d.span())))
            }
            Some(d) => limits(d.get_ref(), "[defaults]").map_err(|e| at(d.span()) + &e)?,
            None => Limits::nothing(),
        };
        let mut users = Vec::new();
        for (i, spanned) in file.user.iter().enumerate() {
            let (u, line) = (spanned.get_ref(), at(spanned.span()));
            let uid = u.uid.ok_or_else(|| format!("{line}[[user]] #{}: uid is required", i + 1))?;
            if u.gid.is_some() {
                return Err(format!("{line}[[user]] uid {uid}: gid belongs in a [[group]] entry"));
            }
            if users.iter().any(|(other, _)| *other == uid) {
                return Err(format!(
                    "{line}[[user]] uid {uid} appears more than once (entry #{}): merge the entries into one",
                    i + 1
                ));
            }
            users.push((uid, limits(u, &format!("user {uid}")).map_err(|e| line + &e)?));
        }
        let mut groups = Vec::new();
        for (i, spanned) in file.group.iter().enumerate() {
            let (g, line) = (spanned.get_ref(), at(spanned.span()));
            let gid = g.gid.ok_or_else(|| format!("{line}[[group]] #{}: gid is required", i + 1))?;
            if g.uid.is_some() {
                return Err(format!("{line}[[group]] gid {gid}: uid belongs in a [[user]] entry"));
            }
            if groups.iter().any(|(other, _)| *other == gid) {
                return Err(format!(
                    "{line}[[group]] gid {gid} appears more than once (entry #{}): merge the entries into one",
                    i + 1
                ));
            }
            groups.push((gid, limits(g, &format!("group {gid}")).map_err(|e| line + &e)?));
        }
        let mut names: Vec<(String, u32)> = Vec::new();
        for (i, spanned) in file.name.iter().enumerate() {
            let (n, line) = (spanned.get_ref(), at(spanned.span()));
            let bare = n.name.strip_suffix('*').unwrap_or(&n.name);
            if bare.is_empty() && !n.name.is_empty() {
                return Err(format!("{line}[[name]] #{}: `*` alone would reserve every name", i + 1));
            }
            dmabroker::proto::validate_name(bare)
                .map_err(|e| format!("{line}[[name]] #{} `{}`: {e}", i + 1, n.name))?;
            if crate::names::split_namespace(bare).is_some() {
                return Err(format!(
                    "{line}[[name]] `{}`: a name that starts with `<uid>/` already belongs to that uid",
                    n.name
                ));
            }
            if let Some((_, other)) = names.iter().find(|(p, _)| *p == n.name) {
                return Err(format!("{line}[[name]] `{}` is reserved twice (uids {other} and {})", n.name, n.uid));
            }
            names.push((n.name.clone(), n.uid));
        }
        let cgroups = parse_cgroup_rules(text, &file.cgroup)?;
        let cgroup_unknown = match file.cgroup_unknown {
            Some(CgroupUnknownFile::Allow) => CgroupUnknown::Allow,
            Some(CgroupUnknownFile::Refuse) | None => CgroupUnknown::Refuse,
        };
        Ok(Self { defaults, users, groups, owner_uid, names, cgroups, cgroup_unknown })
    }

    /// The `[[cgroup]]` rules, in file order.
    pub fn cgroup_rules(&self) -> &[Arc<CgroupRule>] {
        &self.cgroups
    }

    /// What the `[[cgroup]]` rules make of a client whose cgroup read gave
    /// `cgroup` ([`crate::charge::cgroup::of_process`]).
    pub fn cgroup_access(&self, cgroup: &Result<String, String>) -> CgroupAccess {
        cgroup::access(&self.cgroups, self.cgroup_unknown, cgroup)
    }

    /// The uid a name is reserved for (`[[name]]`), if any: an exact entry
    /// first, else the longest matching prefix.
    pub fn reserved_owner(&self, name: &str) -> Option<u32> {
        if let Some((_, uid)) = self.names.iter().find(|(p, _)| p == name) {
            return Some(*uid);
        }
        self.names
            .iter()
            .filter_map(|(p, uid)| p.strip_suffix('*').filter(|pre| name.starts_with(pre)).map(|pre| (pre.len(), *uid)))
            .max_by_key(|(len, _)| *len)
            .map(|(_, uid)| uid)
    }

    /// The broker's own uid (trusted like root for unqualified names).
    pub fn owner_uid(&self) -> u32 {
        self.owner_uid
    }

    /// Heap names in the policy that none of `known` (this machine's heaps,
    /// [`dmabroker::Heaps::names`]) matches, as `(entry, heap)`: not an
    /// error (a policy may be shared by machines with other heaps), but
    /// worth a warning at load, since a typo silently allows nothing.
    pub fn unknown_heaps(&self, known: &[String]) -> Vec<(String, String)> {
        let rules = std::iter::once(("[defaults]".to_owned(), &self.defaults))
            .chain(self.users.iter().map(|(uid, l)| (format!("user {uid}"), l)))
            .chain(self.groups.iter().map(|(gid, l)| (format!("group {gid}"), l)))
            .map(|(what, l)| (what, &l.heaps))
            .chain(self.cgroups.iter().filter_map(|r| Some((r.describe(), r.heaps.as_ref()?))));
        let mut unknown = Vec::new();
        for (what, heaps) in rules {
            for heap in heaps.iter().filter(|h| h.as_str() != "*") {
                if !known.iter().any(|k| heap_list_allows(std::slice::from_ref(heap), k)) {
                    unknown.push((what.clone(), heap.clone()));
                }
            }
        }
        unknown
    }

    /// The limits of a user with these groups (primary first).
    pub fn limits(&self, uid: u32, groups: &[u32]) -> Limits {
        if let Some((_, l)) = self.users.iter().find(|(u, _)| *u == uid) {
            return l.clone();
        }
        if uid == 0 || uid == self.owner_uid {
            return Limits::owner();
        }
        if let Some((_, l)) = self.groups.iter().find(|(g, _)| groups.contains(g)) {
            return l.clone();
        }
        self.defaults.clone()
    }
}

/// The line (1-based) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// `[[cgroup]]` entries, each error naming its line and key.
fn parse_cgroup_rules(text: &str, entries: &[CgroupFile]) -> Result<Vec<Arc<CgroupRule>>, String> {
    let mut rules: Vec<Arc<CgroupRule>> = Vec::new();
    for c in entries {
        let line = line_of(text, c.path.span().start);
        let path = c.path.get_ref();
        let pattern =
            glob::CgroupPattern::parse(path).map_err(|e| format!("line {line}: [[cgroup]] path `{path}`: {e}"))?;
        if let Some(other) = rules.iter().find(|r| r.pattern == pattern) {
            return Err(format!(
                "line {line}: [[cgroup]] path `{path}` appears more than once (also line {}): merge the entries into one",
                other.line
            ));
        }
        let max_bytes = match &c.max_bytes {
            None => None,
            Some(s) => Some(match s.get_ref() {
                Size::Bytes(b) => *b,
                Size::Text(t) => dmabroker::size::parse_size(t).map_err(|e| {
                    format!("line {}: [[cgroup]] `{path}` max_bytes `{t}`: {e}", line_of(text, s.span().start))
                })?,
            }),
        };
        rules.push(Arc::new(CgroupRule {
            pattern,
            line,
            heaps: c.heaps.clone(),
            max_bytes,
            max_buffers: c.max_buffers,
            publish: c.publish,
        }));
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_gives_owner_and_root_everything_and_others_nothing() {
        let p = Policy::builtin(1000);
        assert!(p.limits(1000, &[1000]).allows_heap("memfd"));
        assert!(p.limits(0, &[0]).publish);
        let other = p.limits(65534, &[65534]);
        assert!(!other.allows_heap("memfd"));
        assert_eq!(other.max_bytes, 0);
    }

    #[test]
    fn parses_users_groups_and_sizes() {
        let p = Policy::parse(
            r#"
            [defaults]
            heaps = ["memfd"]
            max_bytes = 4096
            max_buffers = 1
            [[user]]
            uid = 1000
            heaps = ["system"]
            max_bytes = "512MiB"
            max_buffers = 8
            publish = true
            [[group]]
            gid = 44
            heaps = ["*"]
            max_bytes = "1G"
            "#,
            0,
        )
        .unwrap();
        let u = p.limits(1000, &[]);
        assert_eq!(u.max_bytes, 512 << 20);
        assert!(u.allows_heap("dma-heap/system") && !u.allows_heap("memfd"));
        assert!(p.limits(2000, &[5, 44]).allows_heap("udmabuf"));
        assert_eq!(p.limits(2000, &[5]).max_buffers, 1);
        assert!(Policy::parse("[[user]]\nheaps=[]", 0).is_err());
        assert!(Policy::parse("[defaults]\nbogus = 1", 0).is_err());
        assert!(Policy::parse("[[user]]\nuid=1\nmax_bytes=\"lots\"", 0).is_err());
    }

    #[test]
    fn hexadecimal_sizes_and_unknown_heaps() {
        let p = Policy::parse(
            "[defaults]\nheaps = [\"memfd\", \"*\"]\n[[user]]\nuid = 7\nheaps = [\"nosuch\", \"system\"]\nmax_bytes = \"0x10\"\n",
            0,
        )
        .unwrap();
        assert_eq!(p.limits(7, &[]).max_bytes, 16);
        let known = vec!["memfd".to_owned(), "dma-heap/system".to_owned()];
        assert_eq!(p.unknown_heaps(&known), vec![("user 7".to_owned(), "nosuch".to_owned())]);
    }

    #[test]
    fn duplicate_entries_are_refused_by_id() {
        let e =
            Policy::parse("[[user]]\nuid = 5\nmax_buffers = 1\n[[user]]\nuid = 5\nmax_buffers = 9\n", 0).unwrap_err();
        assert!(e.contains("uid 5 appears more than once"), "{e}");
        let e = Policy::parse("[[group]]\ngid = 44\n[[user]]\nuid = 44\n[[group]]\ngid = 44\n", 0).unwrap_err();
        assert!(e.contains("gid 44 appears more than once"), "{e}");
        assert!(Policy::parse("[[group]]\ngid = 44\n[[user]]\nuid = 44\n", 0).is_ok(), "a uid and a gid may be equal");
    }
    #[test]
    fn cgroup_rules_are_read_with_their_lines() {
        let text = "[defaults]\nheaps = [\"memfd\"]\n\n[[cgroup]]\npath = \"app-flatpak-*.scope\"\nmax_bytes = \"64MiB\"\n\
                    heaps = [\"memfd\", \"nosuch\"]\npublish = false\n\n[[cgroup]]\npath = \"/system.slice/**\"\nmax_buffers = 4\n";
        let p = Policy::parse(text, 0).unwrap();
        let r = p.cgroup_rules();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].line, r[0].max_bytes, r[0].max_buffers, r[0].publish), (5, Some(64 << 20), None, Some(false)));
        assert_eq!((r[1].line, r[1].max_bytes, r[1].max_buffers, r[1].heaps.as_ref()), (11, None, Some(4), None));
        assert_eq!(r[0].describe(), "[[cgroup]] `app-flatpak-*.scope` (policy line 5)");
        assert_eq!(
            p.unknown_heaps(&["memfd".to_owned()]),
            vec![("[[cgroup]] `app-flatpak-*.scope` (policy line 5)".to_owned(), "nosuch".to_owned())]
        );
        let unknown = Err("no pidfd".to_owned());
        assert_eq!(p.cgroup_access(&unknown).refused(), Some("no pidfd"), "refused by default once rules exist");
        let p = Policy::parse(&format!("cgroup_unknown = \"allow\"\n{text}"), 0).unwrap();
        assert!(p.cgroup_access(&unknown).refused().is_none());
        // A policy without cgroup rules reads as before and refuses nobody for an unknown cgroup.
        assert!(Policy::parse("[[user]]\nuid = 1\n", 0).unwrap().cgroup_access(&unknown).refused().is_none());
    }

    #[test]
    fn cgroup_rule_errors_name_the_line_and_the_key() {
        let e = |t: &str| Policy::parse(t, 0).unwrap_err();
        let m = e("[[user]]\nuid = 1\n[[cgroup]]\npath = \"a/**/b\"\n");
        assert!(m.contains("line 4") && m.contains("path `a/**/b`") && m.contains("`**`"), "{m}");
        let m = e("[[cgroup]]\npath = \"x.scope\"\nmax_bytes = \"lots\"\n");
        assert!(m.contains("line 3") && m.contains("max_bytes `lots`"), "{m}");
        let m = e("[[cgroup]]\npath = \"x.scope\"\nmax_byte = 1\n");
        assert!(m.contains("line 3") && m.contains("max_byte"), "{m}");
        let m = e("[[cgroup]]\nheaps = []\n");
        assert!(m.contains("line 1") && m.contains("path"), "{m}");
        let m = e("[[cgroup]]\npath = \"x\"\nmax_buffers = \"many\"\n");
        assert!(m.contains("line 3") && m.contains("max_buffers"), "{m}");
        let m = e("\ncgroup_unknown = \"maybe\"\n");
        assert!(m.contains("line 2") && m.contains("maybe") && m.contains("allow"), "{m}");
        let m = e("[defaults]\ncgroup_unknown = \"allow\"\n");
        assert!(m.contains("line 2") && m.contains("top-level key"), "{m}");
        let m = e("[[cgroup]]\npath = \"a/*\"\n[[cgroup]]\npath = \"a/*\"\n");
        assert!(m.contains("line 4") && m.contains("also line 2"), "{m}");
    }

    #[test]
    fn the_example_policy_parses() {
        let p = Policy::parse(include_str!("../../../../examples/policy/policy.toml"), 0).unwrap();
        assert_eq!(p.cgroup_rules().len(), 2);
        let app = "/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.x-12.scope";
        let units: Vec<String> = p.cgroup_access(&Ok(app.into())).rules().iter().map(|m| m.unit.clone()).collect();
        assert_eq!(units, vec![app.to_owned(), "/user.slice/user-1000.slice/user@1000.service/app.slice".to_owned()]);
    }

    #[test]
    fn user_group_and_name_errors_name_their_line() {
        let e = |t: &str| Policy::parse(t, 0).unwrap_err();
        let m = e("[[user]]\nuid = 1\n\n[[user]]\nheaps = []\n");
        assert!(m.contains("line 4") || m.contains("line 5"), "{m}");
        assert!(m.contains("uid is required"), "{m}");
        let m = e("[[group]]\ngid = 4\nmax_bytes = \"lots\"\n");
        assert!(m.contains("line 1") || m.contains("line 2"), "{m}");
        assert!(m.contains("max_bytes `lots`"), "{m}");
        let m = e("[defaults]\nuid = 3\n");
        assert!(m.starts_with("line "), "{m}");
        let m = e("[[name]]\nname = \"*\"\nuid = 1\n");
        assert!(m.starts_with("line ") && m.contains("every name"), "{m}");
    }
}
