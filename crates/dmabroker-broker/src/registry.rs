//! The registry: every buffer the broker holds (its own fd of each), every
//! publication (names and tokens with their ACL), and the charges per user.
//!
//! A buffer stays here, charged to its owner, while any of these holds:
//! it is published; it is pinned (a memfd whose reply the client has not
//! received yet: in flight, no scan can see it);
//! another process holds it (see [`crate::holders`]). The broker's own fd is
//! closed and the charge ends when none holds.

use dmabroker::proto::{Access, Grant, Grantee};
use dmabroker::{Buffer, BufferKind};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

/// Identity of a file: device and inode, as `fstat` and `/proc/PID/maps` give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// `major(st_dev)`.
    pub major: u32,
    /// `minor(st_dev)`.
    pub minor: u32,
    /// `st_ino`.
    pub ino: u64,
}

impl FileId {
    /// `fstat` a buffer.
    pub fn of(buffer: &Buffer) -> Option<Self> {
        let st = rustix::fs::fstat(buffer).ok()?;
        Some(Self { major: rustix::fs::major(st.st_dev), minor: rustix::fs::minor(st.st_dev), ino: st.st_ino })
    }
}

/// One buffer the broker holds.
#[derive(Debug)]
pub struct Entry {
    /// The broker's own handle (its fd).
    pub buffer: Buffer,
    /// Bytes charged.
    pub len: u64,
    /// Who is charged.
    pub owner_uid: u32,
    /// The process that allocated or published it (for reports).
    pub owner_pid: u32,
    /// The cgroup that process was in at connect, when known: charged for
    /// `[[cgroup]]` quotas (crate::policy::cgroup).
    pub cgroup: Option<Arc<str>>,
    /// Device and inode, to find holders by scanning `/proc`.
    pub file: FileId,
    /// Publications pointing at it.
    pub publications: u32,
    /// Open connections on which its fd was handed out (memfds only).
    pub pins: u32,
    /// Users it was handed to (for the conservative memfd scan).
    pub recipients: BTreeSet<u32>,
    /// fds handed out so far (a background scan's answer is void for a
    /// buffer handed out after it started).
    pub handouts: u64,
    /// Whether the service manager's fd store has a copy.
    pub stored: bool,
    /// Whether a client sent it (publish of a buffer the broker did not
    /// hold), rather than the broker allocating it: the file then belongs
    /// to whoever created it, and the broker changes its mode only for a
    /// publisher that owns it (see `make_private` in service.rs).
    pub adopted: bool,
    /// What the inode's open counts tell about other holders (memfds).
    pub counting: Counting,
}

/// How far the inode's open counts (a file-lease probe,
/// [`dmabroker_sys::lease::opened_elsewhere`]) tell whether others hold a
/// memfd. The counts include every open file description made by `open()`
/// (each fd, mapping, `SCM_RIGHTS` message in flight and io_uring fixed
/// file keeps one), but not the one `memfd_create` made: so the broker
/// holds a description it reopened itself and hands out only reopened ones
/// (never a dup of its own), and what the counts cannot see is the
/// creator's original description alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// The broker created the memfd and closed the original: the counts are
    /// exact, and no `/proc` scan is needed (the recipients do not matter).
    Exact,
    /// A client created it (adopted) and still has the original, which the
    /// counts miss: when they show nobody else, a scan decides, and only
    /// the owner's (the creator's) unreadable processes can hide a holder,
    /// never a grantee's (every fd the broker handed out is counted).
    CreatorUncounted,
    /// The broker could not reopen it (another user's file, 0600, a broker
    /// that is not root) or was restarted: its own description may be
    /// shared, so only the scan decides, and any recipient's unreadable
    /// processes keep it held.
    ScanOnly,
}

impl Entry {
    /// Whether only a `/proc` scan or the open counts can tell if others
    /// hold it (memfds), as opposed to the dma-buf's exact file count.
    pub fn needs_scan(&self) -> bool {
        self.buffer.kind() != BufferKind::DmaBuf
    }

    /// An fd to hand to a client: for a memfd a new open file description
    /// (`O_RDWR` when `write` and the broker's is writable, else
    /// `O_RDONLY`), counted in the inode's open counts; a dup of the
    /// broker's own only for dma-bufs and [`Counting::ScanOnly`] buffers
    /// (whose read-write reopen was refused).
    ///
    /// # Errors
    /// The reopen's or dup's errno.
    pub fn hand_out(&self, write: bool) -> std::io::Result<std::os::fd::OwnedFd> {
        if !self.needs_scan() {
            return self.buffer.try_clone_fd();
        }
        match self.buffer.reopen_fd(write) {
            Ok(fd) => Ok(fd),
            Err(_) if write && self.counting == Counting::ScanOnly => self.buffer.try_clone_fd(),
            Err(e) => Err(e.into()),
        }
    }

    /// What the open counts say about other holders: `Some(true)` held,
    /// `Some(false)` nobody but the broker and (for
    /// [`Counting::CreatorUncounted`]) the creator's original; `None` when
    /// they cannot be read (not a memfd, [`Counting::ScanOnly`], no lease
    /// rights, a file system without leases).
    pub fn opened_elsewhere(&self) -> Option<bool> {
        use std::os::fd::AsFd;
        if !self.needs_scan() || self.counting == Counting::ScanOnly {
            return None;
        }
        dmabroker_sys::lease::opened_elsewhere(self.buffer.as_fd()).ok()
    }
}

/// The broker's own open file description of a memfd it is about to hold:
/// a reopen (same access as `buffer`'s), so that the inode's open counts
/// see every other ([`Counting`]); `adopted`: a client created it. The
/// description `buffer` had is dropped here (a memfd: its close cannot
/// block). Dma-bufs are returned as they are.
pub fn own_description(buffer: Buffer, adopted: bool) -> (Buffer, Counting) {
    if buffer.kind() == BufferKind::DmaBuf {
        return (buffer, Counting::Exact);
    }
    let write = rustix::fs::fcntl_getfl(&buffer)
        .is_ok_and(|f| f.intersection(rustix::fs::OFlags::ACCMODE) != rustix::fs::OFlags::RDONLY);
    match buffer.reopened(write) {
        Ok(own) => (own, if adopted { Counting::CreatorUncounted } else { Counting::Exact }),
        Err(e) => {
            tracing::debug!("cannot reopen a memfd to count its holders ({e}): only /proc scans will tell");
            (buffer, Counting::ScanOnly)
        }
    }
}

/// One publication.
#[derive(Debug, Clone)]
pub struct Publication {
    /// The name or token.
    pub key: String,
    /// The buffer.
    pub buffer_id: u64,
    /// Who published it.
    pub publisher_uid: u32,
    /// Who else may import, and how.
    pub grants: Vec<Grant>,
    /// Withdrawn after the first import by another user.
    pub one_shot: bool,
    /// Withdrawn at this time.
    pub expires_at: Option<SystemTime>,
}

impl Publication {
    /// The access `uid` (member of `groups`) gets, if any: the publisher and
    /// root read-write, grantees the best of their matching grants.
    pub fn access_for(&self, uid: u32, groups: &[u32]) -> Option<Access> {
        granted_access(self.publisher_uid, &self.grants, uid, groups)
    }

    /// Whether it has expired at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// What one user is charged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes.
    pub bytes: u64,
    /// Buffers.
    pub buffers: u64,
}

/// Buffers, publications and charges.
#[derive(Debug, Default)]
pub struct Registry {
    entries: HashMap<u64, Entry>,
    by_file: HashMap<FileId, u64>,
    publications: HashMap<String, Publication>,
    usage: HashMap<u32, Usage>,
    /// Charges per exact cgroup (entries with a known one).
    cgroup_usage: HashMap<Arc<str>, Usage>,
    next_id: u64,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self { next_id: 1, ..Self::default() }
    }

    /// Add a buffer and charge its owner; returns its id.
    pub fn insert(&mut self, entry: Entry) -> u64 {
        let id = self.next_id;
        self.insert_with_id(id, entry);
        id
    }

    /// Add a buffer under a known id (restored from the fd store).
    pub fn insert_with_id(&mut self, id: u64, entry: Entry) {
        self.next_id = self.next_id.max(id + 1);
        let u = self.usage.entry(entry.owner_uid).or_default();
        u.bytes += entry.len;
        u.buffers += 1;
        if let Some(c) = &entry.cgroup {
            let u = self.cgroup_usage.entry(Arc::clone(c)).or_default();
            u.bytes += entry.len;
            u.buffers += 1;
        }
        // After a wrap of 32-bit inode numbers two held buffers may share a
        // FileId: the first keeps the index (see `find_same_file`).
        self.by_file.entry(entry.file).or_insert(id);
        self.entries.insert(id, entry);
    }

    /// Drop a buffer (closing the broker's fd) and end its charge.
    pub fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if self.by_file.get(&entry.file) == Some(&id) {
            self.by_file.remove(&entry.file);
        }
        if let Some(u) = self.usage.get_mut(&entry.owner_uid) {
            u.bytes = u.bytes.saturating_sub(entry.len);
            u.buffers = u.buffers.saturating_sub(1);
            if u.buffers == 0 {
                self.usage.remove(&entry.owner_uid);
            }
        }
        if let Some(c) = &entry.cgroup {
            if let Some(u) = self.cgroup_usage.get_mut(c) {
                u.bytes = u.bytes.saturating_sub(entry.len);
                u.buffers = u.buffers.saturating_sub(1);
                if u.buffers == 0 {
                    self.cgroup_usage.remove(c);
                }
            }
        }
        Some(entry)
    }

    /// Number of buffers held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no buffer is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A buffer by id.
    pub fn get(&self, id: u64) -> Option<&Entry> {
        self.entries.get(&id)
    }

    /// A buffer by id, mutable.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut Entry> {
        self.entries.get_mut(&id)
    }

    /// The buffer with this device and inode, if the broker holds it.
    pub fn find_file(&self, file: &FileId) -> Option<u64> {
        self.by_file.get(file).copied()
    }

    /// The buffer `fd` (whose `fstat` gave `file`) is a file of, if the
    /// broker holds it: found by device and inode, then proven the same
    /// inode by a lock taken through the broker's fd and seen through `fd`
    /// ([`dmabroker_sys::lease::same_inode`]): hugetlbfs (like every file
    /// system numbering inodes with `get_next_ino`) reuses 32-bit inode
    /// numbers, so an attacker's file can share a victim buffer's
    /// `(st_dev, st_ino)` (finding 6).
    ///
    /// # Errors
    /// A message for the client when the numbers match but the file is
    /// another, or when that cannot be told: refused as ambiguous.
    pub fn find_same_file(&self, fd: &impl std::os::fd::AsFd, file: &FileId) -> Result<Option<u64>, String> {
        use std::hash::{BuildHasher, Hasher};
        let Some(id) = self.find_file(file) else { return Ok(None) };
        let entry = self.entries.get(&id).expect("indexed");
        // Where two fds share the broker's own open file description, no
        // lock can tell them apart (it never conflicts with itself); the
        // description is the same file.
        if dmabroker_sys::kcmp::same_file(fd.as_fd(), std::os::fd::AsFd::as_fd(&entry.buffer)).unwrap_or(false) {
            return Ok(Some(id));
        }
        let key = std::collections::hash_map::RandomState::new().build_hasher().finish();
        match dmabroker_sys::lease::same_inode(std::os::fd::AsFd::as_fd(&entry.buffer), fd.as_fd(), key) {
            Ok(true) => Ok(Some(id)),
            Ok(false) => Err(format!(
                "the fd's file has the device and inode number ({}:{} {}) of another buffer the broker holds, but is \
                 a different file (the file system reused the inode number): refused as ambiguous; publish a new \
                 buffer (allocate another)",
                file.major, file.minor, file.ino
            )),
            Err(e) => Err(format!(
                "cannot tell whether the fd is the buffer with device and inode {}:{} {} the broker holds ({e}): \
                 refused as ambiguous; retry, or publish another buffer",
                file.major, file.minor, file.ino
            )),
        }
    }

    /// Make entry `id` look as if it had device and inode `file`: the shape
    /// of a 32-bit inode-number collision, for tests.
    #[cfg(test)]
    pub(crate) fn forge_file_id(&mut self, id: u64, file: FileId) {
        if let Some(e) = self.entries.get_mut(&id) {
            self.by_file.remove(&e.file);
            e.file = file;
            self.by_file.insert(file, id);
        }
    }

    /// Every buffer.
    pub fn entries(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.entries.iter().map(|(id, e)| (*id, e))
    }

    /// A user's charges.
    pub fn usage(&self, uid: u32) -> Usage {
        self.usage.get(&uid).copied().unwrap_or_default()
    }

    /// What is charged to `unit`: buffers of clients in that cgroup, and
    /// with `subtree` in any cgroup below it. O(cgroups with buffers).
    pub fn cgroup_usage(&self, unit: &str, subtree: bool) -> Usage {
        if !subtree {
            return self.cgroup_usage.get(unit).copied().unwrap_or_default();
        }
        self.cgroup_usage
            .iter()
            .filter(|(c, _)| crate::policy::cgroup::within(c, unit, true))
            .fold(Usage::default(), |a, (_, u)| Usage { bytes: a.bytes + u.bytes, buffers: a.buffers + u.buffers })
    }

    /// Buffers and bytes held, all users.
    pub fn totals(&self) -> Usage {
        self.usage
            .values()
            .fold(Usage::default(), |a, u| Usage { bytes: a.bytes + u.bytes, buffers: a.buffers + u.buffers })
    }

    /// Add a publication (its key must be free).
    pub fn publish(&mut self, publication: Publication) {
        if let Some(e) = self.entries.get_mut(&publication.buffer_id) {
            e.publications += 1;
        }
        self.publications.insert(publication.key.clone(), publication);
    }

    /// A publication by key.
    pub fn publication(&self, key: &str) -> Option<&Publication> {
        self.publications.get(key)
    }

    /// Remove a publication.
    pub fn unpublish(&mut self, key: &str) -> Option<Publication> {
        let p = self.publications.remove(key)?;
        if let Some(e) = self.entries.get_mut(&p.buffer_id) {
            e.publications = e.publications.saturating_sub(1);
        }
        Some(p)
    }

    /// Every publication.
    pub fn publications(&self) -> impl Iterator<Item = &Publication> {
        self.publications.values()
    }

    /// Number of publications.
    pub fn publication_count(&self) -> usize {
        self.publications.len()
    }

    /// Keys of expired publications.
    pub fn expired(&self, now: SystemTime) -> Vec<String> {
        self.publications.values().filter(|p| p.expired(now)).map(|p| p.key.clone()).collect()
    }
}

/// The access `uid` (member of `groups`) gets to something `owner_uid` shared
/// under `grants`: the owner and root read-write, grantees the best of their
/// matching grants. One rule for publications and pools by name.
pub(crate) fn granted_access(owner_uid: u32, grants: &[Grant], uid: u32, groups: &[u32]) -> Option<Access> {
    if uid == owner_uid || uid == 0 {
        return Some(Access::ReadWrite);
    }
    grants
        .iter()
        .filter(|g| match g.who {
            Grantee::Uid(u) => u == uid,
            Grantee::Gid(g) => groups.contains(&g),
            Grantee::Anyone => true,
        })
        .map(|g| g.access)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Peer;
    use crate::service::{Service, Session};
    use dmabroker::proto::{AllocateRequest, ErrorCode, PublishRequest, Request, Response};

    /// Finding 6: after hugetlbfs's 32-bit inode numbers wrap, an attacker's
    /// file can have the `(st_dev, st_ino)` of a victim's buffer, and
    /// publishing it published the victim's buffer as the attacker's (which
    /// the attacker then imports read-write). A real wrap takes about 2^32
    /// inode creations (some 90 minutes), so the collision is constructed:
    /// the victim's entry is given the attacker file's identity.
    #[test]
    fn a_colliding_inode_number_is_not_taken_for_the_buffer() {
        const VICTIM: u32 = 4242;
        const ATTACKER: u32 = 4343;
        let policy = crate::Policy::parse(
            &format!("[[user]]\nuid = {ATTACKER}\npublish = true\nmax_bytes = \"1MiB\"\nmax_buffers = 8\n"),
            VICTIM,
        )
        .unwrap();
        let mut service = Service::new(policy, dmabroker::heap::Heaps::discover(), None, Default::default());
        let session = |service: &mut Service, uid: u32| {
            let peer = Peer { uid, gid: uid, pid: std::process::id(), groups: vec![uid], pidfd: None };
            let mut s = Session::new(peer, &service.policy);
            let hello = service.handle(&mut s, Request::Hello { min_version: 1, max_version: 1 }, None);
            assert!(matches!(hello.response, Response::Hello { .. }));
            s
        };
        let (mut victim, mut attacker) = (session(&mut service, VICTIM), session(&mut service, ATTACKER));
        let alloc = AllocateRequest { heap: "memfd".into(), len: 4096, align: 1, contiguous: false, name: None };
        let reply = service.handle(&mut victim, Request::Allocate(alloc), None);
        let Response::Allocated { id: victim_id, .. } = reply.response else { panic!("{:?}", reply.response) };
        let _victim_fd = reply.fd;

        let mine = {
            use rustix::fs::{MemfdFlags, SealFlags};
            let fd = rustix::fs::memfd_create("attacker", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
            rustix::fs::ftruncate(&fd, 4096).unwrap();
            rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
            fd
        };
        let st = rustix::fs::fstat(&mine).unwrap();
        let collision =
            FileId { major: rustix::fs::major(st.st_dev), minor: rustix::fs::minor(st.st_dev), ino: st.st_ino };
        service.registry.forge_file_id(victim_id, collision);

        let p =
            PublishRequest { name: Some("mine".into()), grants: Vec::new(), one_shot: false, expires_in_secs: None };
        match service.handle(&mut attacker, Request::Publish(p), Some(mine)).response {
            Response::Error { code: ErrorCode::NotABuffer, message } => {
                assert!(message.contains("ambiguous"), "{message}");
            }
            r => panic!("a colliding file was taken for the victim's buffer: {r:?}"),
        }
        assert!(
            !service.registry.publications().any(|p| p.buffer_id == victim_id),
            "the victim's buffer was published by the attacker"
        );
    }
}
