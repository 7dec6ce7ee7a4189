//! The broker allocator and buffer pool against a real broker (the
//! workspace's `dmabroker serve`): memfd memory on this host; dma-heap
//! memory is refused with the broker's reason when the machine has none.

use gst::prelude::*;
use gstdmabroker::allocator::{DmaBrokerAllocator, DmaBrokerBufferPool};
use std::path::PathBuf;
use std::process::{Child, Command};

struct Broker {
    child: Child,
    dir: PathBuf,
    sock: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn broker(name: &str) -> Option<Broker> {
    let cli = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/x86_64-unknown-linux-gnu/release/dmabroker");
    if !cli.exists() {
        println!("SKIP {name}: no dmabroker CLI at {} (cargo build --release --target x86_64-unknown-linux-gnu -p dmabroker-cli)", cli.display());
        return None;
    }
    let dir = std::env::temp_dir().join(format!("dmabroker-gstalloc-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let sock = dir.join("b.sock");
    let child = Command::new(&cli).arg("serve").arg("--socket").arg(&sock).spawn().ok()?;
    for _ in 0..200 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Some(Broker { child, dir, sock: sock.display().to_string() })
}

#[test]
fn the_allocator_hands_out_broker_memory() {
    gst::init().unwrap();
    let Some(b) = broker("allocator") else { return };
    let allocator = DmaBrokerAllocator::new(Some(&b.sock), "memfd");
    let mut memory = allocator.alloc(100_000, None).unwrap();
    assert_eq!(memory.size(), 100_000);
    assert!(memory.is_memory_type::<gst_allocators::FdMemory>(), "memfd memory is GstFdMemory");
    {
        let mut map = memory.make_mut().map_writable().unwrap();
        map.fill(0x5a);
    }
    assert!(memory.map_readable().unwrap().iter().all(|b| *b == 0x5a));
    // The fd is a memfd the broker allocated (and charges to us).
    let fd = memory.downcast_memory_ref::<gst_allocators::FdMemory>().unwrap().fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    assert!(link.to_string_lossy().starts_with("/memfd:dmabroker:gst"), "{}", link.display());

    if !std::path::Path::new("/dev/dma_heap/system").exists() {
        let none = DmaBrokerAllocator::new(Some(&b.sock), "dma-heap/system");
        assert!(none.alloc(4096, None).is_err(), "no dma-heap here: the allocation fails, nothing panics");
    }
}

#[test]
fn the_pool_allocates_through_the_broker() {
    gst::init().unwrap();
    let Some(b) = broker("pool") else { return };
    let pool = DmaBrokerBufferPool::new(Some(&b.sock), "memfd");
    let mut config = pool.config();
    config.set_params(None, 65536, 2, 4);
    pool.set_config(config).unwrap();
    pool.set_active(true).unwrap();
    let buffer = pool.acquire_buffer(None).unwrap();
    let memory = buffer.peek_memory(0);
    assert!(memory.is_memory_type::<gst_allocators::FdMemory>());
    assert!(memory.allocator().is_some_and(|a| a.is::<DmaBrokerAllocator>()));
    drop(buffer);
    pool.set_active(false).unwrap();
}
