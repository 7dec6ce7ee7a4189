//! Every dma-buf on the machine, from the kernel's dma-buf BPF iterator
//! (`iter/dmabuf`, Linux >= 6.16): the program in
//! `crates/dmabroker/bpf/dmabuf_ledger.bpf.c`, compiled by clang at build
//! time (feature `bpf-ledger`) and loaded with aya, writes one fixed-size
//! record per dma-buf ([`RECORD_LEN`] bytes, parsed by [`parse_records`]),
//! including buffers that no process holds any more (only a driver does).
//!
//! Needs: the iterator in the kernel (its BTF names `bpf_iter_dmabuf`), the
//! kernel's BTF (`/sys/kernel/btf/vmlinux`, for the CO-RE relocations and the
//! attach point) and the right to load tracing programs (root, or
//! `CAP_BPF` + `CAP_PERFMON`). [`read`] says which one is missing as an
//! [`Unavailable`] reason that `dmabroker ps` prints.

use serde::Serialize;

/// Bytes per record written by the BPF program (`struct ledger_record`).
pub const RECORD_LEN: usize = 136;
const NAME_LEN: usize = 32;

/// One dma-buf as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DmabufEntry {
    /// Inode number of the dma-buf file (the `/proc` scan's identity too).
    pub inode: u64,
    /// Size in bytes.
    pub size: u64,
    /// The exporter's name (`system`, `udmabuf`, a driver).
    pub exporter: String,
    /// The name set with `DMA_BUF_SET_NAME`, if any.
    pub name: Option<String>,
    /// Creation time (the dma-buf inode's ctime), seconds since the epoch; 0
    /// when the kernel did not tell.
    pub created_sec: i64,
    /// Number of importers (device attachments), counted up to 16.
    pub attachments: u64,
    /// The device name of the first importer (`vgem`, a PCI address), if any.
    pub importer: Option<String>,
}

/// Why the iterator cannot be read here (printed by `dmabroker ps`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

fn u64_at(rec: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&rec[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Parses the iterator's output: whole records only (a trailing partial
/// record, which the kernel never writes, is ignored).
pub fn parse_records(data: &[u8]) -> Vec<DmabufEntry> {
    data.chunks_exact(RECORD_LEN)
        .map(|rec| {
            let flags = u64_at(rec, 24);
            let importer = crate::kernel_text::nul_terminated(&rec[40 + 2 * NAME_LEN..40 + 3 * NAME_LEN]);
            DmabufEntry {
                inode: u64_at(rec, 0),
                size: u64_at(rec, 8),
                created_sec: u64_at(rec, 16) as i64,
                attachments: u64_at(rec, 32),
                exporter: crate::kernel_text::nul_terminated(&rec[40..40 + NAME_LEN]),
                name: (flags & 1 != 0)
                    .then(|| crate::kernel_text::nul_terminated(&rec[40 + NAME_LEN..40 + 2 * NAME_LEN])),
                importer: (!importer.is_empty()).then_some(importer),
            }
        })
        .collect()
}

/// Lists every dma-buf through the iterator, or says why it cannot
/// ([`Loaded::load`] then one [`Loaded::read`]).
pub fn read() -> Result<Vec<DmabufEntry>, Unavailable> {
    Loaded::load()?.read()
}

/// The iterator's program, loaded and verified once (the kernel's BTF
/// parsed, the program checked by the verifier): each [`Loaded::read`]
/// attaches it anew and reads every dma-buf, without paying that again
/// (`dmabroker top`'s refreshes, `bench ledger`).
pub struct Loaded(imp::Loaded);

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bpf_iter::Loaded")
    }
}

impl Loaded {
    /// Loads the program, or says why the iterator cannot be used here.
    ///
    /// # Errors
    /// [`Unavailable`], with the reason (no iterator, no BTF, not root).
    pub fn load() -> Result<Self, Unavailable> {
        imp::Loaded::load().map(Self)
    }

    /// Lists every dma-buf: attach, read the records, parse.
    ///
    /// # Errors
    /// [`Unavailable`] when attaching or reading fails.
    pub fn read(&mut self) -> Result<Vec<DmabufEntry>, Unavailable> {
        self.0.read()
    }
}

/// `uname -r` (for the messages).
fn kernel_release() -> String {
    rustix::system::uname().release().to_string_lossy().into_owned()
}

#[cfg(not(feature = "bpf-ledger"))]
mod imp {
    use super::*;

    pub enum Loaded {}

    impl Loaded {
        pub fn load() -> Result<Self, Unavailable> {
            Err(Unavailable(format!(
                "this dmabroker was built without the `bpf-ledger` feature (kernel {}); rebuild with it to list dma-bufs only drivers hold",
                kernel_release()
            )))
        }

        pub fn read(&mut self) -> Result<Vec<DmabufEntry>, Unavailable> {
            match *self {}
        }
    }
}

#[cfg(feature = "bpf-ledger")]
mod imp {
    use super::*;
    use aya::programs::{Iter, ProgramError};
    use aya::{Btf, Ebpf};
    use std::io::Read;

    const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

    fn denied(e: &std::io::Error) -> bool {
        // EPERM, EACCES.
        matches!(e.raw_os_error(), Some(1 | 13))
    }

    fn not_root(what: &str, e: &dyn std::fmt::Display) -> Unavailable {
        Unavailable(format!(
            "cannot {what} the dma-buf BPF iterator ({e}): loading BPF programs needs root (or CAP_BPF and CAP_PERFMON); run `sudo dmabroker ps`"
        ))
    }

    fn program_error(release: &str, what: &str, e: ProgramError) -> Unavailable {
        let io = match &e {
            ProgramError::SyscallError(s) => Some(&s.io_error),
            ProgramError::LoadError { io_error, .. } => Some(io_error),
            _ => None,
        };
        if matches!(e, ProgramError::Btf(_)) {
            // Iter::load looks up `bpf_iter_dmabuf` in the kernel's BTF.
            Unavailable(format!(
                "kernel {release} has no dma-buf BPF iterator (iter/dmabuf: Linux >= 6.16 with CONFIG_DMA_SHARED_BUFFER and CONFIG_BPF_SYSCALL)"
            ))
        } else if io.is_some_and(denied) {
            not_root(what, &e)
        } else {
            Unavailable(format!("cannot {what} the dma-buf BPF iterator on kernel {release}: {e:?}"))
        }
    }

    pub struct Loaded {
        ebpf: Ebpf,
        release: String,
    }

    impl Loaded {
        fn program(ebpf: &mut Ebpf) -> Result<&mut Iter, Unavailable> {
            ebpf.program_mut("dmabroker_ledger")
                .ok_or_else(|| Unavailable("the built-in BPF object lacks its program (a build error)".into()))?
                .try_into()
                .map_err(|e: ProgramError| Unavailable(format!("the built-in BPF program is not an iterator: {e}")))
        }

        pub fn load() -> Result<Self, Unavailable> {
            let release = kernel_release();
            if !std::path::Path::new(BTF_PATH).exists() {
                return Err(Unavailable(format!(
                    "kernel {release} has no BTF ({BTF_PATH}; CONFIG_DEBUG_INFO_BTF), which the dma-buf BPF iterator needs"
                )));
            }
            let btf = Btf::from_sys_fs()
                .map_err(|e| Unavailable(format!("cannot read the kernel's BTF ({BTF_PATH}): {e}")))?;
            let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dmabuf_ledger.bpf.o"));
            let mut ebpf = Ebpf::load(object).map_err(|e| match &e {
                aya::EbpfError::MapError(_) => not_root("load", &e),
                _ => Unavailable(format!("cannot load the dma-buf BPF iterator: {e}")),
            })?;
            Self::program(&mut ebpf)?.load("dmabuf", &btf).map_err(|e| program_error(&release, "load", e))?;
            Ok(Self { ebpf, release })
        }

        pub fn read(&mut self) -> Result<Vec<DmabufEntry>, Unavailable> {
            let release = &self.release;
            let program = Self::program(&mut self.ebpf)?;
            let link_id = program.attach().map_err(|e| program_error(release, "attach", e))?;
            let link = program.take_link(link_id).map_err(|e| program_error(release, "attach", e))?;
            let mut file =
                link.into_file().map_err(|e| Unavailable(format!("cannot open the dma-buf BPF iterator: {e}")))?;
            let mut data = Vec::new();
            file.read_to_end(&mut data)
                .map_err(|e| Unavailable(format!("reading the dma-buf BPF iterator failed: {e}")))?;
            Ok(parse_records(&data))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(inode: u64, size: u64, exporter: &str, name: Option<&str>, importer: &str) -> Vec<u8> {
        let mut r = Vec::with_capacity(RECORD_LEN);
        r.extend_from_slice(&inode.to_le_bytes());
        r.extend_from_slice(&size.to_le_bytes());
        r.extend_from_slice(&1_700_000_000i64.to_le_bytes());
        r.extend_from_slice(&u64::from(name.is_some()).to_le_bytes());
        r.extend_from_slice(&u64::from(!importer.is_empty()).to_le_bytes());
        for s in [exporter, name.unwrap_or(""), importer] {
            let mut f = [0u8; NAME_LEN];
            f[..s.len()].copy_from_slice(s.as_bytes());
            r.extend_from_slice(&f);
        }
        assert_eq!(r.len(), RECORD_LEN);
        r
    }

    #[test]
    fn parses_whole_records() {
        let mut data = record(7, 4096, "system", Some("frame"), "vgem");
        data.extend(record(8, 8192, "udmabuf", None, ""));
        data.extend_from_slice(&[1, 2, 3]);
        let e = parse_records(&data);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].inode, e[0].size, e[0].exporter.as_str()), (7, 4096, "system"));
        assert_eq!(e[0].name.as_deref(), Some("frame"));
        assert_eq!(e[0].importer.as_deref(), Some("vgem"));
        assert_eq!(e[0].created_sec, 1_700_000_000);
        assert_eq!((e[1].name.as_deref(), e[1].importer.as_deref(), e[1].attachments), (None, None, 0));
    }

    #[test]
    fn a_full_name_without_nul_is_kept() {
        let name = "n".repeat(NAME_LEN);
        let mut data = record(1, 1, "system", None, "");
        data[24] = 1;
        data[40 + NAME_LEN..40 + 2 * NAME_LEN].copy_from_slice(name.as_bytes());
        assert_eq!(parse_records(&data)[0].name.as_deref(), Some(name.as_str()));
    }
}
