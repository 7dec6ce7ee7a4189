//! Surviving restarts: published buffers go to the service manager's fd
//! store as `b<id>`, and a small memfd named `state` holds what the fds
//! alone cannot say (owners, names, tokens, ACLs, expiry) as JSON. At the
//! next start both come back in `LISTEN_FDS` and [`restore`] rebuilds the
//! registry; stored buffers the state does not mention are dropped.
//!
//! The state is rewritten at most every 50 ms (debounced by the service's
//! timer) rather than per publication: a crash in between loses at most
//! the publications of those 50 ms. When the manager is slow to read, the
//! update waits in [`crate::notify`]'s queue, where a newer state replaces
//! an older one.

use crate::registry::{Entry, FileId, Publication};
use crate::service::Service;
use dmabroker::proto::Grant;
use dmabroker::Buffer;
use dmabroker_sys::inherited::InheritedFd;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The fd store name of the state memfd.
pub const STATE_NAME: &str = "state";

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    buffers: Vec<SavedBuffer>,
    publications: Vec<SavedPublication>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedBuffer {
    id: u64,
    owner_uid: u32,
    owner_pid: u32,
    recipients: Vec<u32>,
    /// The cgroup charged (absent in states saved before cgroup rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cgroup: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedPublication {
    key: String,
    buffer_id: u64,
    publisher_uid: u32,
    grants: Vec<Grant>,
    one_shot: bool,
    expires_at_unix: Option<u64>,
}

/// Write the state memfd and hand it to the fd store (replacing the old one).
pub fn save(service: &mut Service) {
    service.state_dirty = false;
    let Some(notifier) = &mut service.notifier else { return };
    let saved = Saved {
        version: 1,
        buffers: service
            .registry
            .entries()
            .filter(|(_, e)| e.stored)
            .map(|(id, e)| SavedBuffer {
                id,
                owner_uid: e.owner_uid,
                owner_pid: e.owner_pid,
                recipients: e.recipients.iter().copied().collect(),
                cgroup: e.cgroup.as_deref().map(str::to_owned),
            })
            .collect(),
        publications: service
            .registry
            .publications()
            .map(|p| SavedPublication {
                key: p.key.clone(),
                buffer_id: p.buffer_id,
                publisher_uid: p.publisher_uid,
                grants: p.grants.clone(),
                one_shot: p.one_shot,
                expires_at_unix: p.expires_at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
            })
            .collect(),
    };
    let result = (|| -> std::io::Result<()> {
        let fd = rustix::fs::memfd_create("dmabroker-state", rustix::fs::MemfdFlags::CLOEXEC)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(&serde_json::to_vec(&saved).map_err(std::io::Error::other)?)?;
        // Sent now or queued behind earlier notifications, replacing a
        // queued older state (never blocking the loop).
        notifier.store_state(file.into())?;
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!("cannot save state to the fd store: {e}; publications will not survive a restart");
    }
}

/// Rebuild the registry from fds the service manager passed back. Returns
/// the number of publications restored.
pub fn restore(service: &mut Service, inherited: Vec<InheritedFd>) -> usize {
    let mut fds: HashMap<String, std::os::fd::OwnedFd> = HashMap::new();
    let mut state = None;
    for f in inherited {
        if f.name == STATE_NAME {
            state = Some(f.fd);
        } else if f.name.starts_with('b') {
            fds.insert(f.name, f.fd);
        }
    }
    let saved: Option<Saved> = state.and_then(|fd| {
        let mut file = std::fs::File::from(fd);
        let mut text = String::new();
        file.rewind().ok()?;
        file.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).map_err(|e| tracing::warn!("ignoring unreadable saved state: {e}")).ok()
    });
    let Some(saved) = saved else {
        drop_orphans(service, fds.into_keys());
        return 0;
    };
    for b in saved.buffers {
        // The registry's next id is one past the largest: u64::MAX leaves none.
        if b.id == u64::MAX {
            tracing::warn!("ignoring saved buffer with id {}: corrupt state", b.id);
            continue;
        }
        let name = format!("b{}", b.id);
        let Some(fd) = fds.remove(&name) else { continue };
        let Ok(buffer) = Buffer::from_fd(fd) else { continue };
        let Some(file) = FileId::of(&buffer) else { continue };
        service.registry.insert_with_id(
            b.id,
            Entry {
                // Not saved: a restored buffer is treated as adopted (its
                // mode changed only for a publisher that owns the file).
                adopted: true,
                len: buffer.len(),
                owner_uid: b.owner_uid,
                owner_pid: b.owner_pid,
                cgroup: b.cgroup.map(Into::into),
                file,
                publications: 0,
                pins: 0,
                recipients: b.recipients.into_iter().collect::<BTreeSet<_>>(),
                stored: true,
                handouts: 0,
                // The description the fd store kept may be shared with
                // clients of an earlier broker (dups): scans only.
                counting: crate::registry::Counting::ScanOnly,
                buffer,
            },
        );
    }
    drop_orphans(service, fds.into_keys());
    let now = SystemTime::now();
    let mut restored = 0;
    for p in saved.publications {
        let Some(expires_at) = expiry(p.expires_at_unix) else {
            tracing::warn!(key = %p.key, "ignoring saved publication with an impossible expiry: corrupt state");
            continue;
        };
        if service.registry.get(p.buffer_id).is_none() || expires_at.is_some_and(|t| t <= now) {
            continue;
        }
        // A state saved before names had owners: the name goes into its
        // publisher's namespace (crate::names), as a new publication would.
        let key = if p.key.starts_with(dmabroker::proto::TOKEN_PREFIX)
            || crate::names::split_namespace(&p.key).is_some_and(|(u, _)| u == p.publisher_uid)
        {
            p.key
        } else {
            format!("{}/{}", p.publisher_uid, p.key)
        };
        if service.registry.publication(&key).is_some() {
            continue;
        }
        service.registry.publish(Publication {
            key,
            buffer_id: p.buffer_id,
            publisher_uid: p.publisher_uid,
            grants: p.grants,
            one_shot: p.one_shot,
            expires_at,
        });
        restored += 1;
    }
    // Buffers whose publications all expired while the broker was down.
    let unpublished: Vec<u64> =
        service.registry.entries().filter(|(_, e)| e.publications == 0).map(|(id, _)| id).collect();
    for id in unpublished {
        if let Some(n) = &mut service.notifier {
            let _ = n.remove(&format!("b{id}"));
        }
        if let Some(e) = service.registry.get_mut(id) {
            e.stored = false;
        }
    }
    service.state_dirty = true;
    restored
}

/// A saved expiry (seconds since the epoch) as a time; `None` when no
/// `SystemTime` can hold it (a corrupt state: `UNIX_EPOCH + Duration`
/// would panic), `Some(None)` when the publication never expires.
fn expiry(unix_secs: Option<u64>) -> Option<Option<SystemTime>> {
    match unix_secs {
        None => Some(None),
        Some(s) => UNIX_EPOCH.checked_add(Duration::from_secs(s)).map(Some),
    }
}

fn drop_orphans(service: &mut Service, names: impl Iterator<Item = String>) {
    for name in names {
        tracing::info!("dropping stored fd {name}: not in the saved state");
        if let Some(n) = &mut service.notifier {
            let _ = n.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::service::SweepTiming;
    use dmabroker::heap::Heaps;
    use std::os::fd::AsFd;

    fn state_fd(json: &str) -> InheritedFd {
        let fd = rustix::fs::memfd_create("state", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut file = std::fs::File::from(fd);
        file.write_all(json.as_bytes()).unwrap();
        InheritedFd { fd: file.into(), name: STATE_NAME.to_owned() }
    }

    #[test]
    fn a_corrupt_state_is_ignored_not_panicked_on() {
        // Regression: an expiry beyond what SystemTime holds, and a buffer id
        // that leaves the registry no next id, panicked at restore.
        let heaps = Heaps::discover();
        let buffer = heaps.allocate("memfd", &dmabroker::heap::AllocRequest::new(4096)).unwrap();
        let fd = rustix::io::dup(buffer.as_fd()).unwrap();
        let mut service = Service::new(Policy::builtin(0), heaps, None, SweepTiming::default());
        let state = r#"{"version":1,"buffers":[
            {"id":7,"owner_uid":0,"owner_pid":1,"recipients":[]},
            {"id":18446744073709551615,"owner_uid":0,"owner_pid":1,"recipients":[]}],
          "publications":[
            {"key":"far","buffer_id":7,"publisher_uid":0,"grants":[],"one_shot":false,
             "expires_at_unix":18446744073709551615},
            {"key":"kept","buffer_id":7,"publisher_uid":0,"grants":[],"one_shot":false,
             "expires_at_unix":null}]}"#;
        let max_fd = rustix::io::dup(buffer.as_fd()).unwrap();
        let inherited = vec![
            state_fd(state),
            InheritedFd { fd, name: "b7".into() },
            InheritedFd { fd: max_fd, name: format!("b{}", u64::MAX) },
        ];
        assert_eq!(restore(&mut service, inherited), 1);
        // Saved before names had owners: restored into its publisher's namespace.
        assert!(service.registry.publication("0/kept").is_some());
        assert!(service.registry.publication("0/far").is_none());
        assert!(service.registry.get(u64::MAX).is_none());
    }
}
