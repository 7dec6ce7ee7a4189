//! The client's cgroup in the `Stats` reply (protocol version 4): its path
//! as the broker read it at connect, what is charged to it, and each
//! `[[cgroup]]` policy rule matching it with that rule's quota and use.
//!
//! ```
//! use dmabroker::proto::cgroup::{check, for_wire, CgroupStats};
//! let s = CgroupStats { path: Some("/app.slice/x.scope".into()), ..CgroupStats::default() };
//! assert!(check(&s).is_ok());
//! assert_eq!(for_wire(&"é".repeat(600), 1024).len(), 1024);
//! assert_eq!(for_wire("a\nb", 1024), "a?b");
//! ```

use super::{check_text, invalid, CodecError, MAX_NAME_LEN, MAX_TEXT_LEN};
use serde::{Deserialize, Serialize};

/// The first protocol version whose `Stats` reply is
/// [`super::Response::StatsWithCgroup`].
pub const CGROUP_STATS_VERSION: u16 = 4;
/// Most rules one reply lists (the broker lists the first that match).
pub const MAX_CGROUP_RULES: usize = 8;
/// Most heap names one rule lists.
pub const MAX_RULE_HEAPS: usize = 16;

/// The asking client's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// Its cgroup v2 path (`/proc/PID/cgroup`'s `0::` line, in the broker's
    /// cgroup namespace), at most [`MAX_TEXT_LEN`] bytes (cut); `None` when
    /// the broker could not read it.
    pub path: Option<String>,
    /// Why it could not be read.
    pub unknown: Option<String>,
    /// Whether the policy refuses this client everything but importing
    /// because its cgroup is unknown (`cgroup_unknown = "refuse"`).
    pub refused: bool,
    /// Bytes charged to this exact cgroup (all its clients, every uid).
    pub used_bytes: u64,
    /// Buffers charged to this exact cgroup.
    pub used_buffers: u64,
    /// The policy rules matching it, in policy order (at most [`MAX_CGROUP_RULES`]).
    pub rules: Vec<CgroupRuleStats>,
}

/// One `[[cgroup]]` rule matching the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupRuleStats {
    /// The rule's pattern as written.
    pub rule: String,
    /// Its line in the policy file.
    pub line: u32,
    /// The cgroup its quota is charged to: the client's, or for a subtree
    /// rule (`P/**`) the top of the subtree.
    pub unit: String,
    /// Bytes charged to `unit` (and, for a subtree, below it).
    pub used_bytes: u64,
    /// Buffers charged likewise.
    pub used_buffers: u64,
    /// The rule's byte quota, if it sets one.
    pub max_bytes: Option<u64>,
    /// The rule's buffer quota, if it sets one.
    pub max_buffers: Option<u64>,
    /// The heaps it allows (`None`: it does not narrow them; at most
    /// [`MAX_RULE_HEAPS`] names).
    pub heaps: Option<Vec<String>>,
    /// `Some(false)`: it denies publishing.
    pub publish: Option<bool>,
}

/// `s` as a text field may carry it: control characters (which a cgroup
/// name may hold, and the wire may not) as `?`, cut to `max` bytes at a
/// character boundary.
pub fn for_wire(s: &str, max: usize) -> String {
    let clean: String = s.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    let mut end = clean.len().min(max);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    clean[..end].to_owned()
}

/// Check the bounds of a decoded [`CgroupStats`].
///
/// # Errors
/// [`CodecError::Malformed`] naming the field out of bounds.
pub fn check(s: &CgroupStats) -> Result<(), CodecError> {
    for (field, text) in [("cgroup.path", &s.path), ("cgroup.unknown", &s.unknown)] {
        if let Some(t) = text {
            check_text(field, t, MAX_TEXT_LEN)?;
        }
    }
    if s.rules.len() > MAX_CGROUP_RULES {
        return Err(invalid(format!("cgroup.rules: {} entries, at most {MAX_CGROUP_RULES}", s.rules.len())));
    }
    for r in &s.rules {
        check_text("cgroup.rules.rule", &r.rule, MAX_TEXT_LEN)?;
        check_text("cgroup.rules.unit", &r.unit, MAX_TEXT_LEN)?;
        if let Some(h) = &r.heaps {
            if h.len() > MAX_RULE_HEAPS {
                return Err(invalid(format!("cgroup.rules.heaps: {} entries, at most {MAX_RULE_HEAPS}", h.len())));
            }
            for name in h {
                check_text("cgroup.rules.heaps", name, MAX_NAME_LEN)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{decode_response, encode_response, Response, Stats};

    fn stats() -> Stats {
        Stats {
            uid: 1,
            used_bytes: 0,
            used_buffers: 0,
            max_bytes: 0,
            max_buffers: 0,
            heaps: Vec::new(),
            may_publish: false,
            total_buffers: 0,
            total_bytes: 0,
            publications: 0,
            clients: 1,
        }
    }

    #[test]
    fn the_reply_round_trips_and_out_of_bounds_fields_are_refused() {
        let rule = CgroupRuleStats {
            rule: "app-*.scope".into(),
            line: 9,
            unit: "/a/app-x.scope".into(),
            max_bytes: Some(1 << 20),
            heaps: Some(vec!["memfd".into()]),
            publish: Some(false),
            ..CgroupRuleStats::default()
        };
        let full = CgroupStats {
            path: Some(for_wire(&"x".repeat(5000), MAX_TEXT_LEN)),
            rules: vec![rule.clone(); MAX_CGROUP_RULES],
            ..CgroupStats::default()
        };
        let r = Response::StatsWithCgroup { stats: stats(), cgroup: full };
        assert_eq!(decode_response(&encode_response(&r).unwrap()).unwrap(), r);
        // The largest reply the bounds allow fits one datagram.
        let long = "x".repeat(MAX_TEXT_LEN);
        let widest = CgroupRuleStats {
            rule: long.clone(),
            unit: long.clone(),
            heaps: Some(vec!["h".repeat(MAX_NAME_LEN); MAX_RULE_HEAPS]),
            ..rule.clone()
        };
        let cgroup = CgroupStats {
            path: Some(long.clone()),
            unknown: Some(long),
            rules: vec![widest; MAX_CGROUP_RULES],
            ..CgroupStats::default()
        };
        let len = encode_response(&Response::StatsWithCgroup { stats: stats(), cgroup }).unwrap().len();
        assert!(len < crate::proto::MAX_RESPONSE_LEN, "{len} bytes");
        let mut too_many = CgroupStats { rules: vec![rule.clone(); MAX_CGROUP_RULES + 1], ..CgroupStats::default() };
        assert!(check(&too_many).is_err());
        too_many.rules.truncate(1);
        too_many.rules[0].unit = "a\nb".into();
        assert!(check(&too_many).is_err(), "control characters");
        too_many.rules[0].unit = "/a".into();
        too_many.rules[0].heaps = Some(vec!["h".into(); MAX_RULE_HEAPS + 1]);
        let r = Response::StatsWithCgroup { stats: stats(), cgroup: too_many };
        assert!(decode_response(&encode_response(&r).unwrap()).is_err());
    }
}
