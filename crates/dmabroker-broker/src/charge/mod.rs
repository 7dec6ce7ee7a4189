//! Charging dma-heap allocations to the client's memory cgroup.
//!
//! With `dma_heap.mem_accounting=1` (Linux 7.0) the kernel charges a
//! dma-heap buffer's pages to the memory cgroup of the task that allocates
//! it: done by the broker itself, every client's memory would land on the
//! broker, escape the client's `memory.max`, and could get the broker
//! OOM-killed. So a dma-heap allocation for a client in another cgroup is
//! made by a worker process living in that cgroup ([`worker`]: started with
//! `clone3(CLONE_INTO_CGROUP)`, one per cgroup, kept while used, ended after
//! [`Charging::idle`] without use), which sends the dma-buf back over a
//! socket pair ([`work`]: the worker's side). A request that the cgroup's
//! `memory.max` (or an ancestor's) has no room for is refused for that
//! client only, naming the cgroup and its limit; the broker keeps serving.
//!
//! The broker waits for a worker at most a bounded time (2 s plus 20 ms per
//! MiB); a worker that does not answer (a frozen cgroup, a stopped process)
//! is killed, and its cgroup's dma-heap requests are refused for
//! [`PENALTY`] instead of waiting again.
//!
//! udmabuf allocations go through the worker on every kernel: udmabuf pins
//! the pages of the memfd behind it when it is created, which charges them
//! to the creator's cgroup whatever the kernel's switches (measured in the
//! VM: 16 MiB made by the broker itself landed on the broker's cgroup).
//! memfds need nothing: the broker never touches their pages, the client
//! that first writes them is charged.
//!
//! Without `mem_accounting` (Linux < 7.0, or not switched on) dma-heap
//! memory is charged to no cgroup and the broker allocates it itself. With no
//! worker executable (a broker embedded in another program), for clients in
//! the broker's own cgroup, or whose cgroup cannot be known (no pidfd), the
//! broker allocates itself as before. Its own quotas apply in every case.
//! If the broker may not place a process in the client's cgroup (it needs
//! write access to that `cgroup.procs`), it allocates itself too, and says
//! so in its log.
//!
//! A kernel charge target (the `charge_fd` field of
//! `DMA_HEAP_IOCTL_ALLOC`, `DMA_BUF_IOCTL_XFER_CHARGE`) would make the
//! worker unnecessary; those are not merged (Nov 2026) and have no ABI to
//! probe, so none is used.
//!
//! | file | concern |
//! |---|---|
//! | [`cgroup`] | the cgroup2 mount, a client's cgroup, limits |
//! | [`worker`] | the broker's handle on one worker |
//! | [`work`] | the worker process's side and the messages |

pub mod cgroup;
pub mod work;
pub mod worker;

use dmabroker::heap::mem_accounting::MemAccounting;
use dmabroker::heap::{AllocRequest, Heap};
use dmabroker::size::format_size;
use dmabroker::Buffer;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use worker::{Failure, Worker};

/// How long a cgroup whose worker did not answer is refused.
pub const PENALTY: Duration = Duration::from_secs(30);
/// How long a retired worker may take to exit before `SIGKILL`.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long after a failed start in a cgroup the broker allocates itself
/// for it without trying again.
const SPAWN_RETRY: Duration = Duration::from_secs(60);

/// Why a charged allocation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChargeRefusal {
    /// The cgroup's `memory.max` has no room.
    #[error(
        "cgroup {level} has memory.max {} and uses {}: {} more of dma-heap memory would exceed it{}; free memory \
         there or raise its memory.max",
        format_size(*max), format_size(*current), format_size(*asked),
        if level == cgroup { String::new() } else { format!(" (the client is in {cgroup}, below it)") }
    )]
    CgroupLimit {
        /// The client's cgroup.
        cgroup: String,
        /// The cgroup whose limit is tightest (the client's or an ancestor).
        level: String,
        /// Its `memory.max`.
        max: u64,
        /// Its `memory.current`.
        current: u64,
        /// Bytes asked.
        asked: u64,
    },
    /// The worker failed, or the kernel refused in it.
    #[error("allocation in cgroup {cgroup}: {message}")]
    Worker {
        /// The client's cgroup.
        cgroup: String,
        /// What happened.
        message: String,
    },
    /// The allocator itself refused (the broker's own path).
    #[error(transparent)]
    Alloc(#[from] dmabroker::heap::AllocError),
}

/// The workers and what the kernel offers.
#[derive(Debug)]
pub struct Charging {
    accounting: MemAccounting,
    exe: Option<OwnedFd>,
    root: Option<PathBuf>,
    own_cgroup: Option<String>,
    /// A worker unused this long is ended.
    pub idle: Duration,
    workers: HashMap<String, Worker>,
    /// Cgroups refused until then (a worker that did not answer) or served
    /// by the broker itself until then (a worker could not be started).
    refused_until: HashMap<String, Instant>,
    own_until: HashMap<String, Instant>,
    dying: Vec<(OwnedFd, Instant)>,
}

impl Charging {
    /// Off: the broker allocates itself (embedded brokers, tests).
    pub fn disabled() -> Self {
        Self {
            accounting: MemAccounting::detect(),
            exe: None,
            root: None,
            own_cgroup: None,
            idle: Duration::from_secs(30),
            workers: HashMap::new(),
            refused_until: HashMap::new(),
            own_until: HashMap::new(),
            dying: Vec::new(),
        }
    }

    /// Workers started from `exe` (a `dmabroker` binary: `/proc/self/exe`
    /// for `dmabroker serve`), when the kernel charges dma-heap memory.
    pub fn new(exe: &Path, idle: Duration) -> Self {
        let mut c = Self::disabled();
        c.idle = idle;
        tracing::info!("{}", c.accounting.describe());
        c.root = cgroup::mount_point();
        c.own_cgroup = std::fs::read_to_string("/proc/self/cgroup").ok().as_deref().and_then(cgroup::parse);
        match std::fs::File::open(exe) {
            Ok(f) => c.exe = Some(f.into()),
            Err(e) => {
                tracing::warn!("cannot open the worker executable {}: {e}; allocating in the broker", exe.display())
            }
        }
        if c.root.is_none() {
            tracing::warn!("no cgroup2 mount: dma-heap memory is charged to the broker's cgroup");
        } else if c.exe.is_some() {
            tracing::info!(
                "udmabuf{} allocations are charged to each client's cgroup (a worker per cgroup)",
                if c.accounting == MemAccounting::On { " and dma-heap" } else { "" }
            );
        }
        c
    }

    /// Whether workers are in use.
    pub fn active(&self) -> bool {
        self.exe.is_some() && self.root.is_some()
    }

    /// The kernel's state.
    pub fn accounting(&self) -> MemAccounting {
        self.accounting
    }

    /// Workers alive (serving or retired but not reaped yet).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.values().map(|w| w.pid).collect()
    }

    /// Whether [`Charging::allocate`] would allocate in this process (no
    /// worker of the client's cgroup involved): then the allocation may run
    /// on any thread of the broker.
    pub fn allocates_here(&self, client_cgroup: &Result<String, String>, heap: &dyn Heap) -> bool {
        if self.exe.is_none() || self.root.is_none() {
            return true;
        }
        let charged =
            heap.name() == "udmabuf" || (self.accounting == MemAccounting::On && heap.name().starts_with("dma-heap/"));
        let Ok(cgroup) = client_cgroup else { return true };
        !charged
            || self.own_cgroup.as_ref() == Some(cgroup)
            || self.own_until.get(cgroup).is_some_and(|t| Instant::now() < *t)
    }

    /// Allocate `request` from `heap` for a client in `client_cgroup`
    /// (`Err`: why it is not known): in a worker in that cgroup when it
    /// applies, else here.
    ///
    /// # Errors
    /// [`ChargeRefusal`].
    pub fn allocate(
        &mut self,
        client_cgroup: &Result<String, String>,
        heap: &dyn Heap,
        request: &AllocRequest,
    ) -> Result<Buffer, ChargeRefusal> {
        let (Some(exe), Some(root)) = (&self.exe, &self.root) else { return Ok(heap.allocate(request)?) };
        // udmabuf pins its memfd's pages when it is created: charged to the
        // creator's cgroup on every kernel. dma-heap pages only with
        // mem_accounting.
        let charged =
            heap.name() == "udmabuf" || (self.accounting == MemAccounting::On && heap.name().starts_with("dma-heap/"));
        if !charged {
            return Ok(heap.allocate(request)?);
        }
        let cgroup = match client_cgroup {
            Ok(c) => c,
            Err(why) => {
                tracing::debug!("charged to the broker: {why}");
                return Ok(heap.allocate(request)?);
            }
        };
        if self.own_cgroup.as_ref() == Some(cgroup) {
            return Ok(heap.allocate(request)?);
        }
        let now = Instant::now();
        if self.own_until.get(cgroup).is_some_and(|t| now < *t) {
            return Ok(heap.allocate(request)?);
        }
        if let Some(t) = self.refused_until.get(cgroup).filter(|t| now < **t) {
            return Err(ChargeRefusal::Worker {
                cgroup: cgroup.clone(),
                message: format!(
                    "its allocation worker did not answer in time (a frozen cgroup?); dma-heap requests for it are \
                     refused for {} s more: thaw it (cgroup.freeze) and retry",
                    t.duration_since(now).as_secs() + 1
                ),
            });
        }
        if !self.workers.contains_key(cgroup) {
            match Worker::spawn(exe, root, cgroup) {
                Ok(w) => {
                    tracing::debug!(cgroup = %cgroup, pid = w.pid, "allocation worker started");
                    self.workers.insert(cgroup.clone(), w);
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot start an allocation worker in cgroup {cgroup} ({e}): its dma-heap and udmabuf memory \
                         is charged to the broker's cgroup; give the broker write access to that cgroup.procs"
                    );
                    self.own_until.insert(cgroup.clone(), now + SPAWN_RETRY);
                    return Ok(heap.allocate(request)?);
                }
            }
        }
        let work = work::WorkRequest {
            heap: heap.name().to_owned(),
            len: request.len,
            align: request.align,
            contiguous: request.contiguous,
            name: request.name.clone(),
            coherency: request.coherency,
        };
        let timeout = Duration::from_secs(2) + Duration::from_millis((request.len >> 20).saturating_mul(20));
        let worker = self.workers.get_mut(cgroup).expect("started above");
        let failure = match worker.allocate(&work, timeout) {
            Ok((fd, len, hint)) => {
                tracing::trace!(cgroup = %cgroup, len, "allocated by the cgroup's worker");
                return Buffer::from_fd_with(fd, hint)
                    .map_err(|e| ChargeRefusal::Worker { cgroup: cgroup.clone(), message: e.to_string() });
            }
            Err(f) => f,
        };
        let message = match failure {
            Failure::Refused(work::WorkReply::OverLimit { level, max, current }) => {
                return Err(ChargeRefusal::CgroupLimit {
                    cgroup: cgroup.clone(),
                    level,
                    max,
                    current,
                    asked: request.len,
                });
            }
            Failure::Refused(work::WorkReply::Failed { message, out_of_memory }) => {
                if out_of_memory {
                    if let Some((level, max, current)) = cgroup::tightest_limit(root, cgroup) {
                        return Err(ChargeRefusal::CgroupLimit {
                            cgroup: cgroup.clone(),
                            level,
                            max,
                            current,
                            asked: request.len,
                        });
                    }
                }
                return Err(ChargeRefusal::Worker { cgroup: cgroup.clone(), message });
            }
            Failure::Refused(work::WorkReply::Allocated { .. }) => "it sent a buffer without its fd".to_owned(),
            Failure::Timeout(t) => {
                self.refused_until.insert(cgroup.clone(), Instant::now() + PENALTY);
                format!(
                    "its allocation worker did not answer within {} ms and was killed (a frozen cgroup?); dma-heap \
                     requests for it are refused for {} s",
                    t.as_millis(),
                    PENALTY.as_secs()
                )
            }
            Failure::Died(why) => format!(
                "its allocation worker ended ({why}; killed by the cgroup's OOM killer?): retry, or raise memory.max"
            ),
        };
        if let Some(w) = self.workers.remove(cgroup) {
            w.kill();
            self.dying.push((w.retire(), Instant::now()));
        }
        Err(ChargeRefusal::Worker { cgroup: cgroup.clone(), message })
    }

    /// When the next worker is due to be ended or reaped.
    pub fn next_deadline(&self) -> Option<Instant> {
        let idle = self.workers.values().map(|w| w.last_used + self.idle).min();
        let dying = (!self.dying.is_empty()).then(|| Instant::now() + Duration::from_millis(50));
        match (idle, dying) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// End idle workers, reap those that exited, kill the slow ones.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let idle: Vec<String> =
            self.workers.iter().filter(|(_, w)| now >= w.last_used + self.idle).map(|(c, _)| c.clone()).collect();
        for cgroup in idle {
            if let Some(w) = self.workers.remove(&cgroup) {
                tracing::debug!(cgroup = %cgroup, pid = w.pid, "allocation worker idle: ended");
                self.dying.push((w.retire(), now));
            }
        }
        self.dying.retain(|(pidfd, since)| {
            if worker::reap(pidfd) {
                return false;
            }
            if now >= *since + EXIT_GRACE {
                let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
            }
            true
        });
        self.refused_until.retain(|_, t| now < *t);
        self.own_until.retain(|_, t| now < *t);
    }
}
