//! Publication: publish, import, unpublish and list under the ACLs, and
//! the checks a published fd must pass.

use super::{Reply, Service, Session, MAX_LIST_ENTRIES, MAX_PUBLICATIONS_PER_BUFFER};
use crate::refusal::{ImportRefusal, PublishRefusal, UnpublishRefusal};
use crate::registry::{Entry, FileId, Publication};
use dmabroker::closer::CloseLater;
use dmabroker::proto::{self, Access, ListEntry, PublishRequest, Response};
use dmabroker::{Buffer, BufferKind};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, SystemTime};

impl Service {
    pub(super) fn publish(
        &mut self,
        session: &mut Session,
        p: PublishRequest,
        fd: Option<OwnedFd>,
    ) -> Result<Reply, PublishRefusal> {
        // A client's fd: until it is known to be a buffer and adopted, it is
        // closed off the loop (a lingering socket's or FUSE file's release
        // would block it), whatever the refusal.
        let fd = fd.map(CloseLater::new);
        let uid = session.peer.uid;
        if !session.limits.publish {
            return Err(PublishRefusal::NotAllowed(uid));
        }
        if let Some(why) = session.cgroup_access.refused() {
            return Err(crate::refusal::CgroupUnknown { uid, why: why.to_owned() }.into());
        }
        if let Some(m) = session.cgroup_access.publish_denied() {
            return Err(PublishRefusal::NotAllowedInCgroup {
                cgroup: session.cgroup_path().unwrap_or("?").to_owned(),
                rule: m.rule.describe(),
            });
        }
        let fd = fd.ok_or(PublishRefusal::MissingFd)?;
        if rustix::fs::fcntl_getfl(&fd).is_ok_and(|f| f.contains(rustix::fs::OFlags::PATH)) {
            return Err(PublishRefusal::NotABuffer(
                "the fd was opened with O_PATH, which gives no access to the buffer's memory: an O_PATH fd is not \
                 a buffer; send the fd the allocator or importer returned, or reopen it \
                 (open(\"/proc/self/fd/N\", O_RDWR))"
                    .into(),
            ));
        }
        // Bounded by proto::MAX_EXPIRY_SECS when decoded (which also keeps
        // the arithmetic sane); checked again for direct callers of handle().
        let expires_at = match p.expires_in_secs {
            None => None,
            Some(s) if s <= proto::MAX_EXPIRY_SECS => SystemTime::now().checked_add(Duration::from_secs(s)),
            Some(s) => {
                return Err(PublishRefusal::BadRequest(format!(
                    "expires_in_secs: {s}, at most {} (10 years)",
                    proto::MAX_EXPIRY_SECS
                )))
            }
        };
        // Names live in the publisher's namespace (crate::names).
        let key = match &p.name {
            Some(name) => {
                let key = crate::names::qualify(&self.policy, name, uid).map_err(PublishRefusal::Name)?;
                if self.registry.publication(&key).is_some() {
                    return Err(PublishRefusal::AlreadyExists(name.clone()));
                }
                Some(key)
            }
            None => None,
        };
        let limit = session.limits.max_buffers.saturating_mul(4).saturating_add(16);
        let mine = self.registry.publications().filter(|q| q.publisher_uid == uid).count() as u64;
        if mine >= limit {
            return Err(PublishRefusal::Busy(format!(
                "uid {uid} has {mine} publications, the most it may have: unpublish some"
            )));
        }
        check_inspectable(&fd, &self.memfd_mounts)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| PublishRefusal::NotABuffer(format!("cannot fstat the fd: {e}")))?;
        let file = FileId { major: rustix::fs::major(st.st_dev), minor: rustix::fs::minor(st.st_dev), ino: st.st_ino };
        let id = match self.registry.find_same_file(&fd, &file).map_err(PublishRefusal::NotABuffer)? {
            Some(id) => {
                // A buffer the broker holds: the sender must hold it at least
                // as writable as the broker does, or a read-only importer
                // could publish its fd and import that publication
                // read-write (the publisher's access).
                let entry = self.registry.get(id).expect("found by file");
                if !writable(&fd) && writable(&entry.buffer) {
                    return Err(PublishRefusal::ReadOnlyFd);
                }
                id
            }
            None => {
                // Classified by check_inspectable: a memfd or a dma-buf,
                // whose close cannot block.
                let buffer = Buffer::from_fd(fd.into_inner()).map_err(|e| PublishRefusal::NotABuffer(e.to_string()))?;
                if !buffer.is_size_sealed() {
                    return Err(PublishRefusal::NotABuffer(
                        "the memfd is not sealed against resizing: add F_SEAL_SHRINK | F_SEAL_GROW (an importer mapping it would die of SIGBUS if it shrank)".into(),
                    ));
                }
                if !writable(&buffer) && p.grants.iter().any(|g| g.access == Access::ReadWrite) {
                    return Err(PublishRefusal::ReadWriteFromReadOnlyFd);
                }
                self.check_quota(session, buffer.len())?;
                self.insert_as(buffer, session, true)
                    .map_err(|()| PublishRefusal::NotABuffer("cannot fstat the fd".into()))?
            }
        };
        let entry = self.registry.get(id).expect("just found or inserted");
        // The broker's fd is read-only (a buffer first published from an
        // O_RDONLY fd): every importer gets ro (see access_for), so an rw
        // grant would be a lie.
        if !writable(&entry.buffer) && p.grants.iter().any(|g| g.access == Access::ReadWrite) {
            return Err(PublishRefusal::ReadWriteFromReadOnlyFd);
        }
        if entry.publications >= MAX_PUBLICATIONS_PER_BUFFER {
            return Err(PublishRefusal::Busy(format!(
                "the buffer already has {MAX_PUBLICATIONS_PER_BUFFER} publications"
            )));
        }
        if p.grants.iter().any(|g| g.access == Access::ReadOnly) {
            make_private(entry, uid)?;
        }
        let key = match key {
            Some(k) => k,
            None => new_token().map_err(|e| PublishRefusal::Busy(format!("no randomness for a token: {e}")))?,
        };
        if let Some(name) = &p.name {
            name_after_publication(&entry.buffer, name);
        }
        self.registry.publish(Publication {
            key: key.clone(),
            buffer_id: id,
            publisher_uid: uid,
            grants: p.grants,
            one_shot: p.one_shot,
            expires_at,
        });
        self.store(id);
        tracing::debug!(uid, id, key = %key, "published");
        // The name as the client sent it (it resolves to this for its uid).
        Ok(Reply::ok(Response::Published { key: p.name.unwrap_or(key) }))
    }

    /// Put a published buffer in the service manager's fd store.
    pub(super) fn store(&mut self, id: u64) {
        let Some(notifier) = &mut self.notifier else { return };
        let Some(entry) = self.registry.get_mut(id) else { return };
        if !entry.stored {
            // Sent now or queued (never blocking); refused only when the
            // queue is full or the manager is gone.
            match notifier.store(&format!("b{id}"), &entry.buffer) {
                Ok(()) => entry.stored = true,
                Err(e) => tracing::warn!(
                    "cannot hand buffer {id} to the fd store: {e}; its publications will not survive a restart"
                ),
            }
        }
        self.state_dirty = true;
    }

    pub(super) fn import(&mut self, session: &mut Session, asked: &str) -> Result<Reply, ImportRefusal> {
        let uid = session.peer.uid;
        let now = SystemTime::now();
        let Some(key) = self.resolve(asked, uid) else {
            return Err(self.not_found(asked, session));
        };
        let key = key.as_str();
        let Some(publication) = self.registry.publication(key).cloned() else {
            return Err(ImportRefusal::NotFound(asked.to_owned()));
        };
        if publication.expired(now) {
            self.withdraw(key);
            return Err(ImportRefusal::NotFound(key.to_owned()));
        }
        let Some(entry) = self.registry.get(publication.buffer_id) else {
            return Err(ImportRefusal::NotFound(key.to_owned()));
        };
        let access = access_for(&publication, entry, uid, &session.peer.groups)
            .ok_or_else(|| ImportRefusal::NotGranted { key: key.to_owned(), uid })?;
        let fd = match access {
            // A reopen for memfds, never a dup: see registry::Counting.
            Access::ReadWrite => entry.hand_out(true).map_err(|_| ImportRefusal::Busy)?,
            // A new open file description with O_RDONLY: mmap(PROT_WRITE,
            // MAP_SHARED), write() and ftruncate() fail on it. dma-bufs never
            // get here: publish refuses read-only grants for them.
            Access::ReadOnly => entry.buffer.reopen_read_only().map_err(ImportRefusal::Reopen)?,
        };
        let (len, heap, properties) = (entry.len, entry.buffer.heap().to_owned(), entry.buffer.properties().hint());
        self.pin(publication.buffer_id, session);
        if publication.one_shot && uid != publication.publisher_uid {
            self.withdraw(key);
        }
        tracing::debug!(uid, key, %access, "imported");
        Ok(Reply {
            response: Response::Imported { len, access, heap, publisher_uid: publication.publisher_uid }
                .for_version(session.version(), properties),
            fd: Some(fd),
            close: false,
        })
    }

    /// Withdraw a publication: its publisher, root, or the owner of the
    /// buffer (the uid charged for it), so that nobody can keep another
    /// user's buffer, and its charge, alive by republishing an import.
    pub(super) fn unpublish(&mut self, session: &mut Session, asked: &str) -> Result<Reply, UnpublishRefusal> {
        let uid = session.peer.uid;
        let key = self.resolve(asked, uid).ok_or_else(|| UnpublishRefusal::NotFound(asked.to_owned()))?;
        let key = key.as_str();
        let p = self.registry.publication(key).ok_or_else(|| UnpublishRefusal::NotFound(key.to_owned()))?;
        let owner = self.registry.get(p.buffer_id).map(|e| e.owner_uid);
        if p.publisher_uid != uid && uid != 0 && owner != Some(uid) {
            return Err(UnpublishRefusal::NotPublisher {
                key: key.to_owned(),
                publisher: p.publisher_uid,
                owner: owner.unwrap_or(p.publisher_uid),
            });
        }
        if p.publisher_uid != uid {
            tracing::info!(
                uid,
                key,
                publisher = p.publisher_uid,
                "publication withdrawn by the buffer's owner or root"
            );
        }
        self.withdraw(key);
        Ok(Reply::ok(Response::Unpublished))
    }

    /// Remove a publication; a buffer left with none leaves the fd store and
    /// becomes a candidate for release.
    ///
    /// The state is saved at once, before the reply goes out, not after
    /// `STATE_SAVE_DELAY`: a withdrawn publication (unpublished, a consumed
    /// one-shot, expired) must not come back if the broker crashes within
    /// the delay. (Saves are still batched for new publications: a crash
    /// then loses a publication its publisher can redo, never resurrects one.)
    pub(crate) fn withdraw(&mut self, key: &str) {
        if self.withdraw_unsaved(key) {
            self.save_now();
        }
    }

    /// Save the state for the fd store now (when there is a service manager).
    pub(super) fn save_now(&mut self) {
        if self.notifier.is_some() {
            self.state_dirty_since = None;
            crate::persist::save(self);
        }
    }

    /// [`Self::withdraw`] without the save; whether there was a publication.
    pub(super) fn withdraw_unsaved(&mut self, key: &str) -> bool {
        let Some(p) = self.registry.unpublish(key) else { return false };
        self.state_dirty |= self.notifier.is_some();
        if let Some(e) = self.registry.get_mut(p.buffer_id) {
            if e.publications == 0 {
                if e.stored {
                    if let Some(n) = &mut self.notifier {
                        if let Err(err) = n.remove(&format!("b{}", p.buffer_id)) {
                            tracing::warn!(
                                "cannot remove buffer {} from the fd store: {err}; the service manager keeps it until \
                                 the next start drops it",
                                p.buffer_id
                            );
                        }
                    }
                    e.stored = false;
                }
                self.sweep_requested = true;
            }
        }
        true
    }

    /// The publication key `asked` stands for, for `uid` (crate::names).
    pub(super) fn resolve(&self, asked: &str, uid: u32) -> Option<String> {
        crate::names::resolve(&self.policy, asked, uid, |k| self.registry.publication(k).is_some())
    }

    /// `NotFound` for an unresolved key; `Untrusted` when others publish
    /// that name and grant `session` access (the qualified names to use).
    pub(super) fn not_found(&self, asked: &str, session: &Session) -> ImportRefusal {
        if asked.starts_with(proto::TOKEN_PREFIX) || crate::names::split_namespace(asked).is_some() {
            return ImportRefusal::NotFound(asked.to_owned());
        }
        let others: Vec<String> = self
            .registry
            .publications()
            .filter(|p| crate::names::split_namespace(&p.key).is_some_and(|(_, bare)| bare == asked))
            .filter(|p| {
                let entry = self.registry.get(p.buffer_id);
                entry.and_then(|e| access_for(p, e, session.peer.uid, &session.peer.groups)).is_some()
            })
            .map(|p| format!("`{}`", p.key))
            .take(4)
            .collect();
        if others.is_empty() {
            return ImportRefusal::NotFound(asked.to_owned());
        }
        ImportRefusal::Untrusted { key: asked.to_owned(), others: others.join(", ") }
    }

    pub(super) fn list(&self, session: &Session) -> Reply {
        let now = SystemTime::now();
        let uid = session.peer.uid;
        let mut entries = Vec::new();
        let mut truncated = false;
        for p in self.registry.publications().filter(|p| !p.expired(now)) {
            let e = self.registry.get(p.buffer_id);
            // The owner of the buffer (the uid charged) sees every
            // publication of it, whoever published it, tokens included:
            // it may withdraw them, and it holds the buffer anyway.
            let owns = e.is_some_and(|e| e.owner_uid == uid);
            let is_token = p.key.starts_with(proto::TOKEN_PREFIX);
            // A token is a capability: only its publisher (and the buffer's
            // owner) sees it listed.
            if is_token && p.publisher_uid != uid && !owns {
                continue;
            }
            let access = match e {
                Some(e) => access_for(p, e, uid, &session.peer.groups),
                None => p.access_for(uid, &session.peer.groups),
            };
            let Some(access) = access else { continue };
            if entries.len() == MAX_LIST_ENTRIES {
                truncated = true;
                break;
            }
            entries.push(ListEntry {
                key: crate::names::shown(&self.policy, &p.key, uid, |k| self.registry.publication(k).is_some()),
                len: e.map_or(0, |e| e.len),
                heap: e.map_or_else(String::new, |e| e.buffer.heap().chars().take(proto::MAX_NAME_LEN).collect()),
                publisher_uid: p.publisher_uid,
                access,
                one_shot: p.one_shot,
                expires_in_secs: p.expires_at.map(|t| t.duration_since(now).unwrap_or_default().as_secs()),
            });
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Reply::ok(Response::List { entries, truncated })
    }
}

/// Refuse, before any call that reaches a file system, an fd that is
/// neither a dma-buf nor a memfd: `fstat` on a file of a hostile FUSE mount
/// could block the broker forever. fdinfo is answered by the VFS alone.
pub(super) fn check_inspectable(fd: &impl AsFd, memfd_mounts: &[u64]) -> Result<(), PublishRefusal> {
    let fd = fd.as_fd();
    let link = dmabroker::fdinfo::fd_link(None, fd.as_raw_fd()).unwrap_or_default();
    let info = dmabroker::fdinfo::FdInfo::read(None, fd.as_raw_fd())
        .map_err(|e| PublishRefusal::NotABuffer(format!("cannot inspect the fd: {e}")))?;
    if info.is_dma_buf() || info.get_u64("mnt_id").is_some_and(|m| memfd_mounts.contains(&m)) {
        return Ok(());
    }
    Err(PublishRefusal::NotABuffer(format!(
        "fd is {link}, not a buffer: publish a dma-buf or a memfd (sealed with F_SEAL_SHRINK | F_SEAL_GROW)"
    )))
}

/// The access `uid` gets to a publication: what its grants give
/// ([`Publication::access_for`]: publisher and root read-write), and
/// read-write for the owner of the buffer (the uid charged for it), which
/// allocated it or sent the broker its fd and may see and withdraw every
/// publication of it. The fd handed out is the broker's own (its mode, see
/// `import`), never more than the owner had.
///
/// Never more than the broker's own fd gives: a buffer it holds read-only
/// (first published from an `O_RDONLY` fd) is imported ro by everyone.
pub(super) fn access_for(p: &Publication, entry: &Entry, uid: u32, groups: &[u32]) -> Option<Access> {
    let access = if entry.owner_uid == uid { Some(Access::ReadWrite) } else { p.access_for(uid, groups) };
    match access {
        Some(Access::ReadWrite) if !writable(&entry.buffer) => Some(Access::ReadOnly),
        other => other,
    }
}

/// Name an unnamed dma-buf after its first named publication
/// (`DMA_BUF_SET_NAME`, cut to 31 bytes), so that `/proc/PID/fdinfo` and
/// `dmabroker ps` show it. Tokens are never used (they are secrets); memfd
/// names are fixed at creation (pass the name when allocating); a failure
/// only logs, a name being a debugging aid.
pub(super) fn name_after_publication(buffer: &Buffer, name: &str) {
    if buffer.kind() != BufferKind::DmaBuf {
        return;
    }
    let named = dmabroker::fdinfo::FdInfo::read(None, buffer.as_fd().as_raw_fd())
        .map(|info| info.dma_buf_name().is_some_and(|n| !n.is_empty()));
    if named.unwrap_or(true) {
        return;
    }
    let mut cut = name.len().min(dmabroker_sys::dma_buf::DMA_BUF_NAME_LEN - 1);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    if let Ok(c) = std::ffi::CString::new(&name[..cut]) {
        if let Err(e) = dmabroker_sys::dma_buf::set_name(buffer, &c) {
            tracing::debug!("DMA_BUF_SET_NAME {name:?}: {e}");
        }
    }
}

/// Whether an fd was opened for writing (not `O_RDONLY`, not `O_PATH`).
pub(super) fn writable(fd: &impl AsFd) -> bool {
    use rustix::fs::OFlags;
    rustix::fs::fcntl_getfl(fd)
        .is_ok_and(|f| !f.contains(OFlags::PATH) && f.intersection(OFlags::ACCMODE) != OFlags::RDONLY)
}

/// Make a memfd's inode private to its owner (mode 0600) so that a
/// read-only importer of another uid cannot reopen `/proc/self/fd/N`
/// read-write; the owner and root can, and could anyway.
///
/// Only a file the broker allocated, or one the publisher owns (or root
/// publishes) has its mode changed: the broker never changes the mode of
/// another user's file on behalf of a publisher who could not. A memfd that
/// is already closed to others' writes (no `0o022` bits) needs no change
/// (its owner uid can still reopen it writable: it owns the file); any
/// other is refused, since a read-only grant could not be enforced.
pub(super) fn make_private(entry: &Entry, publisher: u32) -> Result<(), PublishRefusal> {
    let buffer = &entry.buffer;
    if buffer.kind() == BufferKind::DmaBuf {
        return Err(PublishRefusal::ReadOnlyUnsupported(
            "read-only grants are refused for dma-bufs: a dma-buf fd carries the mode its exporter gave it and cannot be reopened read-only, and a device import can write it anyway; grant rw, or publish a memfd".into(),
        ));
    }
    let st = rustix::fs::fstat(buffer)
        .map_err(|e| PublishRefusal::ReadOnlyUnsupported(format!("cannot fstat the memfd: {e}")))?;
    if st.st_mode & 0o077 == 0 {
        return Ok(());
    }
    if entry.adopted && st.st_uid != publisher && publisher != 0 {
        if st.st_mode & 0o022 == 0 {
            return Ok(());
        }
        return Err(PublishRefusal::ReadOnlyUnsupported(format!(
            "the memfd belongs to uid {} and others may write it (mode {:o}): the broker does not change the mode \
             of a file the publisher does not own, so a read-only grant could not be enforced; have its owner \
             fchmod it 0600 first, or grant rw",
            st.st_uid,
            st.st_mode & 0o777
        )));
    }
    rustix::fs::fchmod(buffer, rustix::fs::Mode::from_raw_mode(0o600)).map_err(|e| {
        PublishRefusal::ReadOnlyUnsupported(format!(
            "cannot make the memfd private ({e}): the broker must own it or run as root to enforce read-only grants; allocate through the broker instead"
        ))
    })
}

/// A 128-bit token from the kernel's CSPRNG (`getrandom(2)`). `GRND_NONBLOCK`:
/// before the pool is initialized (early boot) this fails with `EAGAIN`
/// rather than stalling the event loop; the publish is then refused (`Busy`).
pub(super) fn new_token() -> std::io::Result<String> {
    use rustix::rand::{getrandom, GetRandomFlags};
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        match getrandom(&mut bytes[filled..], GetRandomFlags::NONBLOCK) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}{hex}", proto::TOKEN_PREFIX))
}
