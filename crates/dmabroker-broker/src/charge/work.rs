//! The worker's side: a process started by the broker inside a client's
//! cgroup (`dmabroker charge-worker`, fd 3 a `SOCK_SEQPACKET` socket to the
//! broker) that makes dma-heap allocations (charged to that cgroup with
//! `dma_heap.mem_accounting=1`) and udmabuf allocations (whose memfd pages
//! it pins, which charges them to that cgroup on every kernel) there, and
//! sends each dma-buf back. One request at a time, each answered; it exits
//! when the broker closes its end (or dies: `PR_SET_PDEATHSIG`).

use dmabroker::buffer::{Coherency, PropertyHint};
use dmabroker::heap::dma_heap::DmaHeap;
use dmabroker::heap::udmabuf::Udmabuf;
use dmabroker::heap::{AllocError, AllocRequest, Heap};
use dmabroker::proto::wire;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// Largest message either way.
pub const MAX_MESSAGE: usize = 1024;

/// One allocation asked of a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkRequest {
    /// The heap, as the broker names it: `dma-heap/<name>` or `udmabuf`.
    pub heap: String,
    /// Bytes.
    pub len: u64,
    /// Alignment of the start.
    pub align: u64,
    /// Physically contiguous.
    pub contiguous: bool,
    /// The dma-buf's name.
    pub name: Option<String>,
    /// Coherency of the devices that will touch it.
    pub coherency: Coherency,
}

/// A worker's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WorkReply {
    /// The dma-buf comes with it.
    Allocated {
        /// Its length.
        len: u64,
        /// Its physical properties.
        hint: PropertyHint,
    },
    /// The cgroup's `memory.max` (at `level`, the cgroup or an ancestor)
    /// leaves no room for it: checked before asking the kernel, whose
    /// refusal would go through the memory cgroup's OOM killer.
    OverLimit {
        /// The cgroup whose limit is tightest.
        level: String,
        /// Its `memory.max`.
        max: u64,
        /// Its `memory.current`.
        current: u64,
    },
    /// The kernel refused.
    Failed {
        /// Why, as the library words it.
        message: String,
        /// `ENOMEM`: also the answer of a charge beyond `memory.max`.
        out_of_memory: bool,
    },
}

/// Encode a message (postcard).
pub fn encode<T: Serialize>(m: &T) -> Vec<u8> {
    postcard::to_stdvec(m).unwrap_or_default()
}

/// Decode a message.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    postcard::from_bytes(bytes).ok()
}

/// Raise this process's OOM score to the maximum, so that if the memory
/// cgroup's OOM killer runs while the worker allocates (a race with the
/// limit check), it kills the worker, never the client.
fn volunteer_for_oom() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "1000") {
        tracing::debug!("oom_score_adj: {e}");
    }
}

/// Serve the broker on `socket` until it hangs up. `root` and `cgroup`:
/// the cgroup2 mount and this worker's cgroup (for the limit check).
pub fn serve(socket: OwnedFd, root: &Path, cgroup: &str) -> std::io::Result<()> {
    volunteer_for_oom();
    let mut heaps: HashMap<String, Option<Box<dyn Heap>>> = HashMap::new();
    let limits = super::cgroup::LimitFiles::open(root, cgroup);
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let received = match wire::recv(socket.as_fd(), &mut buf, false) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let Some(request) = decode::<WorkRequest>(&buf[..received.len]) else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed request from the broker"));
        };
        let (reply, fd) = allocate(&mut heaps, &request, &limits);
        wire::send(socket.as_fd(), &encode(&reply), fd.as_ref().map(AsFd::as_fd), false)?;
    }
}

/// The heap the broker named, opened here: a dma-heap or udmabuf.
fn open(name: &str) -> Option<Box<dyn Heap>> {
    if name == "udmabuf" {
        return Udmabuf::discover().map(|h| Box::new(h) as Box<dyn Heap>);
    }
    let dma_heap = name.strip_prefix("dma-heap/")?;
    Some(Box::new(DmaHeap::open(dma_heap.to_owned())))
}

fn allocate(
    heaps: &mut HashMap<String, Option<Box<dyn Heap>>>,
    r: &WorkRequest,
    limits: &super::cgroup::LimitFiles,
) -> (WorkReply, Option<OwnedFd>) {
    if let Some((level, max, current)) = limits.tightest() {
        if current.saturating_add(r.len) > max {
            return (WorkReply::OverLimit { level, max, current }, None);
        }
    }
    let Some(heap) = heaps.entry(r.heap.clone()).or_insert_with(|| open(&r.heap)) else {
        let message = format!("the worker cannot open heap {} (no /dev/udmabuf?)", r.heap);
        return (WorkReply::Failed { message, out_of_memory: false }, None);
    };
    let mut request = AllocRequest::new(r.len).align(r.align).contiguous(r.contiguous).coherency(r.coherency);
    if let Some(n) = &r.name {
        request = request.name(n.clone());
    }
    match heap.allocate(&request) {
        Ok(buffer) => {
            let (len, hint) = (buffer.len(), buffer.properties().hint());
            match buffer.into_fd() {
                Ok(fd) => (WorkReply::Allocated { len, hint }, Some(fd)),
                Err(_) => (WorkReply::Failed { message: "the buffer is shared".into(), out_of_memory: false }, None),
            }
        }
        Err(e) => {
            let out_of_memory = matches!(e, AllocError::OutOfMemory { .. } | AllocError::CmaShort { .. });
            (WorkReply::Failed { message: e.to_string(), out_of_memory }, None)
        }
    }
}
