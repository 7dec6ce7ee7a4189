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
//! | [`spawner`] | the thread that starts workers off the event loop |
//! | [`work`] | the worker process's side and the messages |

pub mod cgroup;
pub mod spawner;
pub mod work;
pub mod worker;

use dmabroker::heap::charge_target::ChargeTarget;
use dmabroker::heap::mem_accounting::MemAccounting;
use dmabroker::heap::{AllocRequest, Heap};
use dmabroker::size::format_size;
use dmabroker::Buffer;
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use worker::{Failure, Worker};

/// How long a cgroup whose worker did not answer is refused.
pub const PENALTY: Duration = Duration::from_secs(30);
/// How long a retired worker may take to exit before `SIGKILL`.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long after a failed start in a cgroup the broker allocates itself
/// for it without trying again.
const SPAWN_RETRY: Duration = Duration::from_secs(60);
/// How long a request waits for its cgroup's worker to be started (the
/// `clone3` on the spawner thread; the worker's own start-up is waited for
/// by the request's bounded wait for its answer).
const SPAWN_WAIT: Duration = Duration::from_secs(2);

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
    /// The kernel's own charge target, probed at start when it would be used.
    target: ChargeTarget,
    exe: Option<Arc<OwnedFd>>,
    root: Option<PathBuf>,
    /// Started on first use (a broker without workers has no thread).
    spawner: Option<spawner::Spawner>,
    /// Cgroups whose worker the spawner is starting.
    starting: HashSet<String>,
    /// Whether udmabuf exists (its pages are charged on every kernel).
    udmabuf: bool,
    own_cgroup: Option<String>,
    /// A worker unused this long is ended.
    pub idle: Duration,
    /// Start a client's worker at its `Hello` ([`Charging::prepare`]), not
    /// at its first allocation.
    pub at_hello: bool,
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
            target: ChargeTarget::Unknown { why: "not probed: the broker allocates itself".into() },
            exe: None,
            root: None,
            spawner: None,
            starting: HashSet::new(),
            udmabuf: false,
            own_cgroup: None,
            idle: Duration::from_secs(30),
            at_hello: true,
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
        c.udmabuf = Path::new("/dev/udmabuf").exists();
        if c.accounting == MemAccounting::On {
            c.target = ChargeTarget::probe();
            tracing::info!("the kernel's dma-heap charge target: {}", c.target.describe());
        }
        c.own_cgroup = std::fs::read_to_string("/proc/self/cgroup").ok().as_deref().and_then(cgroup::parse);
        match std::fs::File::open(exe) {
            Ok(f) => c.exe = Some(Arc::new(f.into())),
            Err(e) => {
                tracing::warn!("cannot open the worker executable {}: {e}; allocating in the broker", exe.display());
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
        tracing::info!("charging mechanism for clients in other cgroups: {}", c.mechanism());
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

    /// The kernel's own charge target, as probed.
    pub fn target(&self) -> &ChargeTarget {
        &self.target
    }

    /// How dma-heap memory of clients in other cgroups is charged.
    pub fn mechanism(&self) -> &'static str {
        if self.accounting != MemAccounting::On {
            "none (dma_heap.mem_accounting is off: no cgroup is charged)"
        } else if self.root.is_none() {
            "the broker's cgroup (no cgroup2 mount)"
        } else if self.target.available() {
            "the kernel's charge target (charge_fd: the client's cgroup)"
        } else if self.exe.is_some() {
            "a worker in each client's cgroup"
        } else {
            "the broker's cgroup (no worker executable)"
        }
    }

    /// Workers alive (serving or retired but not reaped yet).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.values().map(|w| w.pid).collect()
    }

    /// A client in `client_cgroup` finished its handshake: start its
    /// cgroup's worker now, on the spawner thread, unless one runs or none
    /// would be used, so that its first allocation does not pay the start.
    pub fn prepare(&mut self, client_cgroup: &Result<String, String>) {
        let Ok(cgroup) = client_cgroup else { return };
        let dma_heap_by_worker = self.accounting == MemAccounting::On && !self.target.available();
        if !self.at_hello || !self.active() || !(self.udmabuf || dma_heap_by_worker) {
            return;
        }
        if self.own_cgroup.as_ref() == Some(cgroup) || self.workers.contains_key(cgroup) {
            return;
        }
        let now = Instant::now();
        if self.own_until.get(cgroup).is_some_and(|t| now < *t)
            || self.refused_until.get(cgroup).is_some_and(|t| now < *t)
        {
            return;
        }
        self.start(cgroup);
    }

    /// Ask the spawner for a worker in `cgroup` (once; started lazily).
    fn start(&mut self, cgroup: &str) {
        if self.starting.contains(cgroup) {
            return;
        }
        let (Some(exe), Some(root)) = (&self.exe, &self.root) else { return };
        if self.spawner.is_none() {
            match spawner::Spawner::new(Arc::clone(exe), root.clone()) {
                Ok(s) => self.spawner = Some(s),
                Err(e) => {
                    tracing::warn!("cannot start the worker-spawning thread ({e}): allocating in the broker");
                    self.exe = None;
                    return;
                }
            }
        }
        if self.spawner.as_ref().is_some_and(|s| s.request(cgroup)) {
            self.starting.insert(cgroup.to_owned());
        }
    }

    /// Wait (at most until `until`) for `cgroup`'s worker being started.
    fn wait_for(&mut self, cgroup: &str, until: Instant) {
        if !self.starting.contains(cgroup) {
            return;
        }
        let got = self.spawner.as_ref().map(|s| s.wait(cgroup, until)).unwrap_or_default();
        self.adopt(got);
    }

    /// Take in started workers (or note in which cgroups none could start).
    fn adopt(&mut self, started: Vec<spawner::Started>) {
        let now = Instant::now();
        for (cgroup, result) in started {
            self.starting.remove(&cgroup);
            match result {
                Ok(mut w) => {
                    tracing::debug!(cgroup = %cgroup, pid = w.pid, "allocation worker started");
                    w.last_used = now;
                    if let Some(old) = self.workers.insert(cgroup, w) {
                        self.dying.push((old.retire(), now));
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot start an allocation worker in cgroup {cgroup} ({e}): its dma-heap and udmabuf memory \
                         is charged to the broker's cgroup; give the broker write access to that cgroup.procs"
                    );
                    self.own_until.insert(cgroup, now + SPAWN_RETRY);
                }
            }
        }
    }

    /// Whether [`Charging::allocate`] would allocate in this process (no
    /// worker of the client's cgroup involved): then the allocation may run
    /// on any thread of the broker.
    pub fn allocates_here(&self, client_cgroup: &Result<String, String>, heap: &dyn Heap) -> bool {
        if !self.active() || self.exe.is_none() || self.root.is_none() {
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
        if !self.active() {
            return Ok(heap.allocate(request)?);
        }
        let Some(root) = self.root.clone() else { return Ok(heap.allocate(request)?) };
        let root = root.as_path();
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
        if self.target.available() && heap.name().starts_with("dma-heap/") {
            return self.allocate_charged(root, cgroup, heap, request);
        }
        if !self.workers.contains_key(cgroup) {
            // Usually started at the client's Hello ([`Charging::prepare`]);
            // this request waits for it only if it came before the worker did.
            let t = Instant::now();
            self.start(cgroup);
            self.wait_for(cgroup, t + SPAWN_WAIT);
            if !self.workers.contains_key(cgroup) {
                return Ok(heap.allocate(request)?);
            }
            tracing::trace!(cgroup = %cgroup, waited_us = t.elapsed().as_micros() as u64, "waited for the worker");
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
                return Buffer::from_allocated(fd, len, heap.name(), request.name.clone(), hint)
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

    /// Allocate here, charged by the kernel to `cgroup` (the RFC's
    /// `charge_fd` with the cgroup's directory fd). Only where the probe saw
    /// the kernel read the field; no released kernel does, so this path has
    /// run on none.
    fn allocate_charged(
        &self,
        root: &Path,
        cgroup: &str,
        heap: &dyn Heap,
        request: &AllocRequest,
    ) -> Result<Buffer, ChargeRefusal> {
        let over = |level, max, current| ChargeRefusal::CgroupLimit {
            cgroup: cgroup.to_owned(),
            level,
            max,
            current,
            asked: request.len,
        };
        // As the worker does: refuse before the kernel's charge would go
        // through the cgroup's OOM killer.
        if let Some((level, max, current)) = cgroup::tightest_limit(root, cgroup) {
            if current.saturating_add(request.len) > max {
                return Err(over(level, max, current));
            }
        }
        let dir = rustix::fs::open(
            cgroup::dir(root, cgroup),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| ChargeRefusal::Worker { cgroup: cgroup.to_owned(), message: format!("cannot open it: {e}") })?;
        match heap.allocate_charged(request, std::os::fd::AsFd::as_fd(&dir)) {
            Some(Ok(b)) => Ok(b),
            Some(Err(e @ dmabroker::heap::AllocError::OutOfMemory { .. })) => {
                match cgroup::tightest_limit(root, cgroup) {
                    Some((level, max, current)) => Err(over(level, max, current)),
                    None => Err(e.into()),
                }
            }
            Some(Err(e)) => Err(e.into()),
            None => Ok(heap.allocate(request)?),
        }
    }

    /// When the next worker is due to be ended or reaped.
    pub fn next_deadline(&self) -> Option<Instant> {
        let idle = self.workers.values().map(|w| w.last_used + self.idle).min();
        // Reaping, and taking in workers being started: polled.
        let dying =
            (!self.dying.is_empty() || !self.starting.is_empty()).then(|| Instant::now() + Duration::from_millis(50));
        match (idle, dying) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// End idle workers, reap those that exited, kill the slow ones.
    pub fn tick(&mut self) {
        if let Some(got) = self.spawner.as_ref().map(spawner::Spawner::poll) {
            self.adopt(got);
        }
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
