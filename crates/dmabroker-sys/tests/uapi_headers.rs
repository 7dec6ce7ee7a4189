//! Checks every ioctl number and struct size of the kernel ABI layer against
//! the installed kernel headers (Debian's linux-libc-dev), by compiling and
//! running a small C program.

use dmabroker_sys::{dma_buf, dma_heap, udmabuf};
use std::collections::HashMap;
use std::process::Command;

#[path = "../../dmabroker/tests/common/skip.rs"]
mod skip_rule;

const C_SOURCE: &str = r#"
#include <stdio.h>
#include <fcntl.h>
#include <linux/dma-heap.h>
#include <linux/dma-buf.h>
#include <linux/udmabuf.h>
#define P(x) printf("%s %llu\n", #x, (unsigned long long)(x))
int main(void) {
    P(DMA_HEAP_IOCTL_ALLOC);
    P(sizeof(struct dma_heap_allocation_data));
    P(DMA_HEAP_VALID_FD_FLAGS);
    P(DMA_BUF_IOCTL_SYNC);
    P(sizeof(struct dma_buf_sync));
    P(DMA_BUF_SYNC_READ); P(DMA_BUF_SYNC_WRITE); P(DMA_BUF_SYNC_RW);
    P(DMA_BUF_SYNC_START); P(DMA_BUF_SYNC_END);
    P(DMA_BUF_SET_NAME); P(DMA_BUF_SET_NAME_A); P(DMA_BUF_SET_NAME_B);
    P(DMA_BUF_NAME_LEN);
    P(DMA_BUF_IOCTL_EXPORT_SYNC_FILE); P(sizeof(struct dma_buf_export_sync_file));
    P(DMA_BUF_IOCTL_IMPORT_SYNC_FILE); P(sizeof(struct dma_buf_import_sync_file));
    P(UDMABUF_CREATE); P(sizeof(struct udmabuf_create));
    P(UDMABUF_CREATE_LIST); P(sizeof(struct udmabuf_create_list));
    P(sizeof(struct udmabuf_create_item));
    P(UDMABUF_FLAGS_CLOEXEC);
    return 0;
}
"#;

fn compile_and_run() -> Option<HashMap<String, u64>> {
    let dir = std::env::temp_dir().join(format!("dmabroker-uapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let src = dir.join("uapi.c");
    let exe = dir.join("uapi");
    std::fs::write(&src, C_SOURCE).ok()?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = match Command::new(&cc).arg(&src).arg("-o").arg(&exe).status() {
        Ok(s) => s,
        Err(e) => {
            skip_rule::skip_for_tool(
                "uapi_matches_kernel_headers",
                &cc,
                &format!("{e}; install gcc and linux-libc-dev"),
            );
            return None;
        }
    };
    assert!(status.success(), "compiling the header check failed: are linux-libc-dev's headers installed?");
    let out = Command::new(&exe).output().expect("running the header check");
    let _ = std::fs::remove_dir_all(&dir);
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect(),
    )
}

#[test]
fn uapi_matches_kernel_headers() {
    let Some(c) = compile_and_run() else { return };
    let rust: [(&str, u64); 24] = [
        ("DMA_HEAP_IOCTL_ALLOC", u64::from(dma_heap::DMA_HEAP_IOCTL_ALLOC)),
        ("sizeof(struct dma_heap_allocation_data)", size_of::<dma_heap::DmaHeapAllocationData>() as u64),
        ("DMA_HEAP_VALID_FD_FLAGS", u64::from(dma_heap::DMA_HEAP_VALID_FD_FLAGS)),
        ("DMA_BUF_IOCTL_SYNC", u64::from(dma_buf::DMA_BUF_IOCTL_SYNC)),
        ("sizeof(struct dma_buf_sync)", size_of::<dma_buf::DmaBufSync>() as u64),
        ("DMA_BUF_SYNC_READ", dma_buf::DMA_BUF_SYNC_READ),
        ("DMA_BUF_SYNC_WRITE", dma_buf::DMA_BUF_SYNC_WRITE),
        ("DMA_BUF_SYNC_RW", dma_buf::DMA_BUF_SYNC_RW),
        ("DMA_BUF_SYNC_START", dma_buf::DMA_BUF_SYNC_START),
        ("DMA_BUF_SYNC_END", dma_buf::DMA_BUF_SYNC_END),
        ("DMA_BUF_SET_NAME", u64::from(dma_buf::DMA_BUF_SET_NAME)),
        ("DMA_BUF_SET_NAME_A", u64::from(dma_buf::DMA_BUF_SET_NAME_A)),
        ("DMA_BUF_SET_NAME_B", u64::from(dma_buf::DMA_BUF_SET_NAME_B)),
        ("DMA_BUF_NAME_LEN", dma_buf::DMA_BUF_NAME_LEN as u64),
        ("DMA_BUF_IOCTL_EXPORT_SYNC_FILE", u64::from(dma_buf::DMA_BUF_IOCTL_EXPORT_SYNC_FILE)),
        ("sizeof(struct dma_buf_export_sync_file)", size_of::<dma_buf::DmaBufExportSyncFile>() as u64),
        ("DMA_BUF_IOCTL_IMPORT_SYNC_FILE", u64::from(dma_buf::DMA_BUF_IOCTL_IMPORT_SYNC_FILE)),
        ("sizeof(struct dma_buf_import_sync_file)", size_of::<dma_buf::DmaBufImportSyncFile>() as u64),
        ("UDMABUF_CREATE", u64::from(udmabuf::UDMABUF_CREATE)),
        ("sizeof(struct udmabuf_create)", size_of::<udmabuf::UdmabufCreate>() as u64),
        ("UDMABUF_CREATE_LIST", u64::from(udmabuf::UDMABUF_CREATE_LIST)),
        ("sizeof(struct udmabuf_create_list)", size_of::<udmabuf::UdmabufCreateList>() as u64),
        ("sizeof(struct udmabuf_create_item)", size_of::<udmabuf::UdmabufCreateItem>() as u64),
        ("UDMABUF_FLAGS_CLOEXEC", u64::from(udmabuf::UDMABUF_FLAGS_CLOEXEC)),
    ];
    let mut mismatches = Vec::new();
    for (name, value) in rust {
        match c.get(name) {
            Some(&cv) if cv == value => {}
            other => mismatches.push(format!("{name}: C {other:?}, Rust {value}")),
        }
    }
    assert!(mismatches.is_empty(), "kernel ABI mismatches:\n{}", mismatches.join("\n"));
    println!("{} ABI values match the kernel headers", rust.len());
}
