//! Allocations off the event loop (finding 2, "load that never stalls").
//!
//! A large allocation's cost is the kernel's: a dma-heap zeroes every page,
//! hugetlb reserves them (`fallocate`), udmabuf pins them; 256 MiB takes tens
//! of milliseconds, during which a loop that allocated itself answered
//! nobody. Allocations of [`LARGE`] bytes or more therefore run on one
//! worker thread (`dmabroker-alloc`, started on first use), in the order
//! asked; the loop learns of each result through an eventfd it polls and
//! registers the buffer there (quota checked again, then handed out). The
//! connection that asked is not read meanwhile, so its requests are
//! answered in order; other clients are served at once.

use dmabroker::heap::{AllocError, AllocRequest, Heaps};
use dmabroker::Buffer;
use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Allocations this large or larger run on the worker thread.
pub const LARGE: u64 = 4 << 20;

/// One allocation for the worker: (connection token, heap, request).
type Job = (u64, String, AllocRequest);

#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<Job>,
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
    done: Mutex<Vec<(u64, Result<Buffer, AllocError>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these are held; a poisoned one is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The worker thread and its queues.
#[derive(Debug)]
pub struct Offload {
    heaps: Arc<Heaps>,
    shared: Arc<Shared>,
    /// Readable while results wait (the loop polls it); `None`: no eventfd
    /// could be made, so nothing is offloaded.
    wake: Option<Arc<OwnedFd>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Offload {
    /// A worker (not started yet) allocating from `heaps`.
    pub fn new(heaps: Arc<Heaps>) -> Self {
        use rustix::event::EventfdFlags;
        let wake = match rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK) {
            Ok(fd) => Some(Arc::new(fd)),
            Err(e) => {
                tracing::warn!("eventfd: {e}; large allocations run on the loop");
                None
            }
        };
        Self { heaps, shared: Arc::new(Shared::default()), wake, worker: None }
    }

    /// The fd that polls readable when results wait.
    pub fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.wake.as_ref().map(|w| w.as_fd())
    }

    /// Queue an allocation for connection `token`. `Err` gives the request
    /// back when no worker thread can be started (the caller allocates itself).
    pub fn submit(&mut self, token: u64, heap: &str, request: AllocRequest) -> Result<(), AllocRequest> {
        let Some(wake) = &self.wake else { return Err(request) };
        if self.worker.is_none() {
            let (heaps, shared, wake) = (self.heaps.clone(), self.shared.clone(), wake.clone());
            match std::thread::Builder::new().name("dmabroker-alloc".into()).spawn(move || work(&heaps, &shared, &wake))
            {
                Ok(t) => self.worker = Some(t),
                Err(e) => {
                    tracing::warn!("cannot start the allocation thread ({e}): allocating on the loop");
                    return Err(request);
                }
            }
        }
        lock(&self.shared.queue).jobs.push_back((token, heap.to_owned(), request));
        self.shared.work.notify_one();
        Ok(())
    }

    /// Results that arrived, in the order they were asked.
    pub fn take_done(&self) -> Vec<(u64, Result<Buffer, AllocError>)> {
        let Some(wake) = &self.wake else { return Vec::new() };
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&**wake, &mut counter);
        std::mem::take(&mut *lock(&self.shared.done))
    }
}

impl Drop for Offload {
    fn drop(&mut self) {
        lock(&self.shared.queue).stop = true;
        self.shared.work.notify_all();
        if let Some(t) = self.worker.take() {
            // It finishes the allocation in progress (bounded by the kernel's
            // allocator) and leaves the rest.
            let _ = t.join();
        }
    }
}

fn work(heaps: &Heaps, shared: &Shared, wake: &OwnedFd) {
    loop {
        let (token, heap, request) = {
            let mut queue = lock(&shared.queue);
            loop {
                if queue.stop {
                    return;
                }
                if let Some(job) = queue.jobs.pop_front() {
                    break job;
                }
                queue = shared.work.wait(queue).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        let result = heaps.allocate(&heap, &request);
        lock(&shared.done).push((token, result));
        let _ = rustix::io::write(wake, &1u64.to_ne_bytes());
    }
}
