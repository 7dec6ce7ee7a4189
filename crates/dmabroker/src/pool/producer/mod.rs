//! The producer side: owns the buffers and the control block, accepts
//! consumers, hands off frames, watches consumers' health.
//!
//! The producer is single-threaded by design: it services attach
//! handshakes, health checks and evictions only from inside its own calls
//! (see [`Producer`]).

use super::error::{CreateError, PoolAllocError};
use super::layout::{Control, Geometry, PRODUCER_BIT, STREAM_CLOSED};
use super::{now_ns, PoolOptions};
use crate::buffer::{Buffer, BufferKind, BufferMapping};
use crate::closer::CloseLater;
use crate::constraints::{Choice, Constraints};
use crate::format::Layout;
use crate::heap::{AllocRequest, Heaps};
use dmabroker_sys::mmap::{AtomicMapping, MapError};
use rustix::io::Errno;
use rustix::thread::futex;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

mod door;
mod handoff;
mod health;
mod identity;
mod membership;
mod stats;
pub use handoff::WriteSlot;
pub use stats::{ConsumerStats, PoolStats};

/// How often the producer checks consumers' health and attaches new ones
/// while frames flow, starved or not.
const MAINTENANCE_NS: u64 = 10_000_000;
/// Longest single futex sleep while starved: health checks run between sleeps.
const STARVED_SLICE: Duration = Duration::from_millis(10);

#[derive(Debug)]
struct Conn {
    /// Closed by a closer thread: messages the consumer queued may carry fds
    /// whose release blocks (see [`crate::closer`]).
    socket: CloseLater,
    pidfd: Option<OwnedFd>,
    pid: u32,
    want_sync: bool,
    evicted: bool,
    /// Entries put in its ring that it was not yet seen to take, oldest
    /// first: (ring position, buffer index).
    queued: VecDeque<(u32, u32)>,
    /// By buffer index: when the producer first saw it take the frame
    /// (its ring's tail passed the entry): the start of its hold time.
    /// `None` while the frame waits unreceived in its ring.
    received_at: Vec<Option<u64>>,
    /// Its received + released counters when last looked at, and when
    /// they last changed: the last time it made progress.
    progress: u64,
    progress_ns: u64,
}

/// The producing end of a pool.
///
/// # Threading and attach handshakes
/// Frames, health checks and evictions run only inside the caller's
/// calls. One thread of the producer's own, the door (started by the first
/// [`Producer::listen`] or [`Producer::attach`]), accepts connections,
/// reads their HELLO and refuses what is beyond its bounds (at most 8
/// connections of one uid not attached yet, 256 in all: beyond, "busy",
/// [`super::AttachError::Busy`]), so that idle connections cost the frame
/// path nothing (see `producer/door.rs`). A consumer is attached (given a slot and
/// the WELCOME) only inside [`Producer::acquire`] (every 10 ms while frames
/// flow or while it is starved), [`Producer::wait_for_consumers`] and
/// [`Producer::maintain_now`], at most 4 per call. A consumer's attach
/// therefore fails with [`super::AttachError::Timeout`] (after
/// [`super::ConsumerOptions::attach_timeout`], 5 s by default) when the
/// producer calls none of these for that long (it idles between frames, or
/// is blocked elsewhere): call [`Producer::maintain_now`] periodically while
/// idle. Health checks and evictions run at the same points.
///
/// After [`Producer::close`] the listener stays open until the producer is
/// dropped, and connections are answered with "closed"
/// ([`super::AttachError::Closed`]) by the door, at once, whenever they come
/// (also sockets given to [`Producer::attach`] after close).
///
/// # What consumers can do with the buffers
/// Memfd (and hugetlb memfd) buffers go to consumers as read-only fds: one
/// `O_RDONLY` reopen of each buffer (`open("/proc/self/fd/N")`), made once
/// when the pool is created. A consumer cannot map them writable
/// ([`MapError::ReadOnly`](crate::buffer::MapError::ReadOnly)), `write()`
/// or truncate them, so a buggy consumer cannot change a frame under the
/// producer and the other consumers. The buffers are made mode 0600 first,
/// so a consumer of another uid cannot reopen its `/proc/self/fd/N`
/// read-write either; a consumer of the producer's own uid can.
///
/// Dma-buf buffers go to consumers read-write: a dma-buf cannot be reopened
/// read-only, and a device that imports it may write to it whatever the fd
/// mode. Consumers of dma-buf pools are trusted not to write.
#[derive(Debug)]
pub struct Producer {
    ctl: Control,
    ctl_fd: OwnedFd,
    maps: Vec<BufferMapping>,
    /// What consumers receive for each buffer: a read-only reopen
    /// (`O_RDONLY`) of a memfd, or `None` to send the buffer's own fd
    /// (dma-bufs cannot be reopened read-only).
    shared: Vec<Option<OwnedFd>>,
    options: PoolOptions,
    conns: Vec<Option<Conn>>,
    /// The thread that accepts connections and reads HELLOs (started by
    /// the first [`Producer::listen`] or [`Producer::attach`]).
    door: Option<door::Door>,
    listen_path: Option<std::path::PathBuf>,
    next_seq: u64,
    next_scan: u32,
    /// By buffer: the producer holds it (writing it, or lent). Kept here,
    /// not only as PRODUCER_BIT in the shared mask, which any consumer can
    /// write: a forged bit on every buffer would stop the producer for good.
    owned: Vec<bool>,
    last_maintenance: u64,
    lost_consumers: u64,
    closed: bool,
    /// The heap choice of [`Producer::allocate_for`].
    choice: Option<Choice>,
}

impl Producer {
    /// A pool over buffers the caller allocated (all at least
    /// `options.buffer_len` bytes; memfds must be size-sealed).
    ///
    /// # Errors
    /// [`CreateError`]: counts out of range, a buffer too small or unsealed,
    /// mapping or control-block creation failures.
    pub fn new(buffers: Vec<Buffer>, options: &PoolOptions) -> Result<Self, CreateError> {
        if buffers.is_empty() || buffers.len() > super::MAX_BUFFERS as usize {
            return Err(CreateError::BufferCount(buffers.len()));
        }
        if options.max_consumers == 0 || options.max_consumers > super::MAX_CONSUMERS {
            return Err(CreateError::ConsumerCount(options.max_consumers));
        }
        if options.buffer_len == 0 {
            return Err(CreateError::ZeroLength);
        }
        let mut maps = Vec::with_capacity(buffers.len());
        let mut shared = Vec::with_capacity(buffers.len());
        for (index, buffer) in buffers.into_iter().enumerate() {
            if buffer.len() < options.buffer_len {
                return Err(CreateError::BufferTooSmall { index, len: buffer.len(), need: options.buffer_len });
            }
            // Consumers map these; a truncation would SIGBUS all of them.
            if !buffer.is_size_sealed() {
                return Err(CreateError::Unsealed(index));
            }
            shared.push(match buffer.kind() {
                BufferKind::DmaBuf => None,
                BufferKind::Memfd | BufferKind::HugetlbMemfd => {
                    // A memfd is created mode 0777: a consumer of another uid
                    // could reopen /proc/self/fd/N of its read-only fd for
                    // writing. Private first, then reopened read-only.
                    make_private(&buffer).map_err(|source| CreateError::ReadOnlyFd { index, source })?;
                    Some(
                        Buffer::reopen_read_only(&buffer)
                            .map_err(|source| CreateError::ReadOnlyFd { index, source })?,
                    )
                }
            });
            maps.push(buffer.map_read_write().map_err(|source| CreateError::Map { index, source })?);
        }
        let nbuf = maps.len() as u32;
        let geometry = Geometry {
            nbuf,
            max_consumers: options.max_consumers,
            // A consumer never has more than nbuf entries outstanding (each
            // names a distinct buffer it holds), so this ring cannot overflow.
            ring_cap: nbuf.next_power_of_two(),
            policy: options.backpressure.to_word(),
            buf_len: options.buffer_len,
        };
        let (ctl_fd, ctl) = create_control(geometry)?;
        ctl.init_header();
        let conns = (0..options.max_consumers).map(|_| None).collect();
        Ok(Self {
            ctl,
            ctl_fd,
            maps,
            shared,
            options: options.clone(),
            conns,
            door: None,
            listen_path: None,
            next_seq: 0,
            next_scan: 0,
            owned: vec![false; nbuf as usize],
            last_maintenance: 0,
            lost_consumers: 0,
            closed: false,
            choice: None,
        })
    }

    /// Allocate `options.buffers` buffers from `heap` and make a pool of them.
    ///
    /// # Errors
    /// [`CreateError::Alloc`] naming the buffer that failed; see [`Producer::new`].
    pub fn allocate(heaps: &Heaps, heap: &str, options: &PoolOptions) -> Result<Self, CreateError> {
        if options.buffers == 0 || options.buffers > super::MAX_BUFFERS as usize {
            return Err(CreateError::BufferCount(options.buffers));
        }
        let buffers = (0..options.buffers)
            .map(|index| {
                let request = AllocRequest::new(options.buffer_len).name(format!("{}-{index}", options.name));
                heaps.allocate(heap, &request).map_err(|source| CreateError::Alloc { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(buffers, options)
    }

    /// Allocate `options.buffers` buffers of `options.buffer_len` bytes for
    /// the devices behind `constraints` and make a pool of them. Each buffer
    /// comes from [`crate::constraints::allocate_for`]: the cheapest heap
    /// that meets every requirement, falling back to the next suitable one
    /// when it runs out, so a pool may mix heaps (each meets everything).
    ///
    /// [`Producer::choice`] then says which heap and why (the first buffer's
    /// choice; a later buffer that came from another heap adds a reason).
    ///
    /// # Errors
    /// [`PoolAllocError::Alloc`] naming the buffer and wrapping
    /// [`crate::constraints::AllocForError`] (no heap meets the constraints,
    /// or every suitable one failed); [`PoolAllocError::Create`] as
    /// [`Producer::new`].
    pub fn allocate_for(
        heaps: &Heaps,
        constraints: &Constraints,
        options: &PoolOptions,
    ) -> Result<Self, PoolAllocError> {
        if options.buffers == 0 || options.buffers > super::MAX_BUFFERS as usize {
            return Err(CreateError::BufferCount(options.buffers).into());
        }
        if options.buffer_len == 0 {
            return Err(CreateError::ZeroLength.into());
        }
        let mut buffers = Vec::with_capacity(options.buffers);
        let mut first: Option<Choice> = None;
        for index in 0..options.buffers {
            let name = format!("{}-{index}", options.name);
            let (buffer, choice) =
                crate::constraints::allocate_for(heaps, constraints, options.buffer_len, Some(&name))
                    .map_err(|source| PoolAllocError::Alloc { index, source })?;
            buffers.push(buffer);
            match &mut first {
                None => first = Some(choice),
                Some(f) if f.heap != choice.heap => f.reasons.push(format!(
                    "buffer {index} came from {}: {}",
                    choice.heap,
                    choice
                        .reasons
                        .iter()
                        .filter(|r| r.starts_with("fell back"))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
                Some(_) => {}
            }
        }
        let mut producer = Self::new(buffers, options)?;
        producer.choice = first;
        Ok(producer)
    }

    /// [`Producer::allocate_for`] for frames of `layout`: each pool buffer
    /// holds one whole frame, `layout.total_size()` bytes (this replaces
    /// `options.buffer_len`).
    ///
    /// For a one-buffer format the planes lie where `layout` puts them. For
    /// a multi-buffer `…M` format (one buffer per plane in V4L2/DRM terms)
    /// the pool still allocates **one** buffer per frame, holding every
    /// plane's buffer back to back: plane buffer `b` starts at the sum of
    /// `layout.buffer_sizes()[..b]` (so [`LayoutOptions::size_align`](crate::format::LayoutOptions::size_align)
    /// aligns those starts), and [`plane_offsets`](super::plane_offsets)
    /// gives each plane's offset. Hand a device the same fd once per plane
    /// with those offsets (DRM and V4L2 `…M` take an fd and an offset per plane).
    ///
    /// # Errors
    /// As [`Producer::allocate_for`].
    pub fn allocate_for_layout(
        heaps: &Heaps,
        constraints: &Constraints,
        options: &PoolOptions,
        layout: &Layout,
    ) -> Result<Self, PoolAllocError> {
        let options = PoolOptions { buffer_len: layout.total_size(), ..options.clone() };
        Self::allocate_for(heaps, constraints, &options)
    }

    /// Which heap [`Producer::allocate_for`] chose and why (`reasons`,
    /// `passed_over`); `None` for pools made otherwise.
    pub fn choice(&self) -> Option<&Choice> {
        self.choice.as_ref()
    }

    /// The pool's buffers.
    pub fn buffers(&self) -> impl Iterator<Item = &Buffer> {
        self.maps.iter().map(super::super::buffer::mapping::BufferMapping::buffer)
    }

    /// The options it was made with.
    pub fn options(&self) -> &PoolOptions {
        &self.options
    }

    /// End the stream in order: consumers receive the frames already handed
    /// off, then [`super::PoolError::Closed`]. Also done on drop.
    ///
    /// Consumers still in their handshake are refused with
    /// [`super::AttachError::Closed`] now; those that connect later, while the
    /// producer lives, at its next call that services handshakes or when it
    /// is dropped (see [`Producer`]).
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.ctl.stream_state().store(STREAM_CLOSED, Ordering::SeqCst);
        for c in 0..self.conns.len() as u32 {
            if self.conns[c as usize].is_some() {
                let _ = futex::wake(self.ctl.head(c), futex::Flags::empty(), u32::MAX);
            }
        }
        if let Some(door) = &self.door {
            door.close();
        }
        // Only the connections: no health check or eviction here, which
        // could take back frames handed off before the close.
        self.service_connections(now_ns());
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.close();
        // Answer whoever connected since: "closed", not a hang-up (the
        // door does, and stops).
        self.service_connections(now_ns());
        self.door = None;
    }
}

/// Mode 0600 for a pool memfd (its owner and root may still reopen it
/// writable; they could write it anyway). A file that cannot be changed is
/// accepted only when nobody but its owner may write it already.
fn make_private(buffer: &Buffer) -> Result<(), Errno> {
    match rustix::fs::fchmod(buffer, rustix::fs::Mode::from_raw_mode(0o600)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let st = rustix::fs::fstat(buffer)?;
            if st.st_mode & 0o022 == 0 {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// Iterate the set bits of a holder mask as consumer slots below `slots`
/// (the mask lives in shared memory: it may name slots that do not exist).
fn bits(mask: u64, slots: u32) -> impl Iterator<Item = u32> {
    let mask = mask & !PRODUCER_BIT;
    (0..slots.min(63)).filter(move |c| mask & (1 << c) != 0)
}

/// A duration in nanoseconds, saturating (`as u64` would wrap huge ones to
/// small values: a "practically forever" release timeout evicting at once).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(super) fn create_control(geometry: Geometry) -> Result<(OwnedFd, Control), CreateError> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let err = |op| move |source| CreateError::ControlBlock { op, source };
    let len = geometry.control_len().ok_or(CreateError::BufferCount(geometry.nbuf as usize))?;
    let len = len.next_multiple_of(rustix::param::page_size());
    let fd = rustix::fs::memfd_create("dmabroker:pool-control", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(err("memfd_create"))?;
    rustix::fs::ftruncate(&fd, len as u64).map_err(err("ftruncate"))?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(err("F_ADD_SEALS"))?;
    let map = AtomicMapping::map(&fd, len, true).map_err(|e| match e {
        MapError::Os(source) => CreateError::ControlBlock { op: "mmap", source },
        _ => CreateError::ControlBlock { op: "mmap (seals)", source: Errno::PERM },
    })?;
    let ctl =
        Control::new(map, geometry).ok_or(CreateError::ControlBlock { op: "size check", source: Errno::INVAL })?;
    Ok((fd, ctl))
}

#[cfg(test)]
mod tests;
