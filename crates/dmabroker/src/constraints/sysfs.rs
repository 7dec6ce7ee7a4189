//! What sysfs tells about a device node: driver, DMA mask, IOMMU.
//!
//! `stat(node)` gives `major:minor`; `/sys/dev/char/MAJ:MIN` is the class
//! device (`video4linux/video0`, `drm/card0`), its `subsystem` link names the
//! class and its `device` link leads to the bus device, which has the
//! `driver` link, `dma_mask_bits` (PCI; platform devices usually lack it) and,
//! behind an IOMMU, the `iommu_group` link (whose `type` is `identity` when
//! the IOMMU passes addresses through untranslated).
//!
//! Every function that reads sysfs takes its root as a parameter, so tests
//! run against a fake tree.

use super::{Constraints, ProfileError};
use crate::size::format_size;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Where sysfs is mounted.
pub const SYSFS_ROOT: &str = "/sys";

/// Device classes whose nodes import dma-bufs.
const SUBSYSTEMS: [&str; 3] = ["video4linux", "drm", "accel"];

/// Whether an IOMMU translates the device's DMA addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "group")]
pub enum IommuState {
    /// No `iommu_group` link: the device sees physical addresses.
    None,
    /// In an IOMMU group whose domain is `identity` (passthrough): physical
    /// addresses, as without an IOMMU.
    Passthrough(String),
    /// In an IOMMU group that translates (DMA, DMA-FQ, unmanaged or unknown
    /// domain type): the device reaches any page and needs no contiguity.
    Translated(String),
}

impl IommuState {
    /// True when addresses are translated.
    pub fn translates(&self) -> bool {
        matches!(self, Self::Translated(_))
    }
}

/// What sysfs says about one device node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceProbe {
    /// The node as given (`/dev/video0`).
    pub path: String,
    /// Where the node's symlinks lead (`/dev/v4l/by-id/...` -> `/dev/video0`).
    pub canonical_path: String,
    /// The name requirements carry: `video0 (vivid)`.
    pub label: String,
    /// Device number.
    pub major: u32,
    /// Device number.
    pub minor: u32,
    /// `video4linux`, `drm` or `accel`.
    pub subsystem: String,
    /// The bus device's directory in sysfs.
    pub device_dir: String,
    /// Its driver's name (basename of the `driver` link; for a DRM node
    /// without one, the name `DRM_IOCTL_VERSION` reports).
    pub driver: Option<String>,
    /// `dma_mask_bits`, where the bus exports it.
    pub dma_mask_bits: Option<u32>,
    /// IOMMU translation.
    pub iommu: IommuState,
    /// The end of the highest memory block (from `/sys/devices/system/memory`),
    /// when the kernel lists memory blocks.
    pub ram_end: Option<u64>,
}

/// Why a device node could not be probed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The node does not exist.
    #[error("{path}: no such device node (is the driver loaded? `ls /dev/video* /dev/dri`)")]
    NotFound {
        /// The node.
        path: String,
    },
    /// stat failed otherwise.
    #[error("{path}: stat failed: {source}")]
    Stat {
        /// The node.
        path: String,
        /// The errno.
        #[source]
        source: rustix::io::Errno,
    },
    /// Not a character device.
    #[error("{path} is not a character device: pass a V4L2 (/dev/videoN) or DRM (/dev/dri/cardN, renderD*) node")]
    NotACharDevice {
        /// The node.
        path: String,
    },
    /// sysfs (`/sys/dev/char`) is not there at all.
    #[error("{path} ({major}:{minor}): no {sysfs} entry, nor its dev/char directory: is sysfs mounted? (`mount -t sysfs sysfs /sys`)")]
    NoSysfsEntry {
        /// The node.
        path: String,
        /// Device number.
        major: u32,
        /// Device number.
        minor: u32,
        /// The missing sysfs path.
        sysfs: String,
    },
    /// sysfs is mounted but no device is registered with that number.
    #[error(
        "{path} ({major}:{minor}): no device is registered with that number ({sysfs} does not exist): \
         the node is stale or belongs to a driver that is not loaded; load the driver, or use the node \
         udev created (`ls -l /dev/video* /dev/dri`)"
    )]
    NoSuchDevice {
        /// The node.
        path: String,
        /// Device number.
        major: u32,
        /// Device number.
        minor: u32,
        /// The missing sysfs path.
        sysfs: String,
    },
    /// A character device of another class.
    #[error("{path} is a `{subsystem}` device, not V4L2, DRM or accel: dmabroker knows no constraints for it")]
    UnsupportedSubsystem {
        /// The node.
        path: String,
        /// Its class.
        subsystem: String,
    },
    /// A profile file is invalid.
    #[error(transparent)]
    Profile(#[from] ProfileError),
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// The driver name `DRM_IOCTL_VERSION` reports for a DRM node (opened
/// read-only, which the ioctl allows; `None` when it cannot be opened).
fn drm_driver_name(path: &Path) -> Option<String> {
    let fd =
        rustix::fs::open(path, rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())
            .map_err(|e| tracing::debug!("{}: cannot open to ask the DRM driver's name: {e}", path.display()))
            .ok()?;
    let version = dmabroker_sys::drm::version(&fd).ok()?;
    Some(version.name).filter(|n| !n.is_empty())
}

fn link_basename(path: &Path) -> Option<String> {
    std::fs::read_link(path).ok()?.file_name()?.to_str().map(str::to_owned)
}

/// The end address of the highest memory block, from
/// `<sysfs_root>/devices/system/memory/{block_size_bytes,memoryN}`; `None`
/// where the kernel does not list memory blocks.
/// The heaps report the same value as [`HeapInfo::ram_end`](crate::heap::HeapInfo::ram_end).
pub fn highest_ram_address(sysfs_root: &Path) -> Option<u64> {
    crate::heap::highest_ram_address(sysfs_root)
}

impl DeviceProbe {
    /// Probe a device node through `/sys`.
    ///
    /// # Errors
    /// [`ProbeError`] naming the node and what is wrong with it.
    pub fn probe(path: impl AsRef<Path>) -> Result<Self, ProbeError> {
        Self::probe_in(path, Path::new(SYSFS_ROOT))
    }

    /// Probe a device node, reading sysfs under `sysfs_root`.
    ///
    /// # Errors
    /// See [`DeviceProbe::probe`].
    pub fn probe_in(path: impl AsRef<Path>, sysfs_root: &Path) -> Result<Self, ProbeError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let st = rustix::fs::stat(path).map_err(|source| match source {
            rustix::io::Errno::NOENT => ProbeError::NotFound { path: shown.clone() },
            source => ProbeError::Stat { path: shown.clone(), source },
        })?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::CharacterDevice {
            return Err(ProbeError::NotACharDevice { path: shown });
        }
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let mut probe = Self::from_sysfs(
            sysfs_root,
            &shown,
            &canonical.display().to_string(),
            rustix::fs::major(st.st_rdev),
            rustix::fs::minor(st.st_rdev),
        )?;
        // Virtual DRM devices (vgem, vkms) sit on a platform device with no
        // `driver` link, or (Linux 6.15+) on a faux device whose driver is
        // the faux bus's own `faux_driver`, which names nobody; the DRM core
        // still knows the driver.
        if probe.subsystem == "drm" && matches!(probe.driver.as_deref(), None | Some("faux_driver")) {
            if let Some(name) = drm_driver_name(path) {
                probe.set_driver(name);
            }
        }
        Ok(probe)
    }

    /// Record the driver found another way than sysfs, and show it in the label.
    fn set_driver(&mut self, driver: String) {
        self.label = match self.driver.as_deref() {
            None => format!("{} ({driver})", self.label),
            Some(old) => self.label.replace(&format!("({old})"), &format!("({driver})")),
        };
        self.driver = Some(driver);
    }

    /// Read what sysfs under `sysfs_root` says about device `major:minor`,
    /// reached through the node `path` (`canonical_path`: where its
    /// symlinks lead). No `stat`: this is the part tests drive.
    ///
    /// # Errors
    /// [`ProbeError::NoSuchDevice`], [`ProbeError::NoSysfsEntry`],
    /// [`ProbeError::UnsupportedSubsystem`].
    pub fn from_sysfs(
        sysfs_root: &Path,
        path: &str,
        canonical_path: &str,
        major: u32,
        minor: u32,
    ) -> Result<Self, ProbeError> {
        let class_dev = sysfs_root.join(format!("dev/char/{major}:{minor}"));
        if std::fs::symlink_metadata(&class_dev).is_err() {
            let (path, sysfs) = (path.to_owned(), class_dev.display().to_string());
            // With /sys/dev/char present, sysfs is mounted: nobody registered the number.
            return Err(if sysfs_root.join("dev/char").is_dir() {
                ProbeError::NoSuchDevice { path, major, minor, sysfs }
            } else {
                ProbeError::NoSysfsEntry { path, major, minor, sysfs }
            });
        }
        let subsystem = link_basename(&class_dev.join("subsystem")).unwrap_or_else(|| "unknown".to_owned());
        if !SUBSYSTEMS.contains(&subsystem.as_str()) {
            return Err(ProbeError::UnsupportedSubsystem { path: path.to_owned(), subsystem });
        }
        let device: PathBuf = std::fs::canonicalize(class_dev.join("device")).unwrap_or_else(|_| class_dev.clone());
        let driver = link_basename(&device.join("driver"));
        let dma_mask_bits = read_trimmed(&device.join("dma_mask_bits")).and_then(|s| s.parse().ok());
        let group = device.join("iommu_group");
        let iommu = match link_basename(&group) {
            None => IommuState::None,
            Some(id) => match read_trimmed(&group.join("type")).as_deref() {
                Some("identity") => IommuState::Passthrough(id),
                _ => IommuState::Translated(id),
            },
        };
        let node = Path::new(canonical_path)
            .file_name()
            .or_else(|| Path::new(path).file_name())
            .map_or_else(|| path.to_owned(), |n| n.to_string_lossy().into_owned());
        let label = match &driver {
            Some(d) => format!("{node} ({d})"),
            None => node,
        };
        Ok(Self {
            path: path.to_owned(),
            canonical_path: canonical_path.to_owned(),
            label,
            major,
            minor,
            subsystem,
            device_dir: device.display().to_string(),
            driver,
            dma_mask_bits,
            iommu,
            ram_end: highest_ram_address(sysfs_root),
        })
    }

    /// The address limit sysfs implies: the DMA mask, unless an IOMMU
    /// translates or all RAM lies below the limit anyway.
    pub fn address_bits(&self) -> Option<u32> {
        let bits = self.dma_mask_bits.filter(|b| (12..64).contains(b))?;
        if self.iommu.translates() {
            return None;
        }
        if self.ram_end.is_some_and(|end| end <= 1u64 << bits) {
            return None;
        }
        Some(bits)
    }

    /// The constraints sysfs alone shows: a dma-buf to import (every V4L2,
    /// DRM and accel device imports one) and the address limit.
    pub fn constraints(&self) -> Constraints {
        let mut b = Constraints::builder(&self.label).dma_buf(true);
        if let Some(bits) = self.address_bits() {
            b = b.address_bits(bits);
        }
        for note in self.notes() {
            b = b.note(note);
        }
        b.build().expect("sysfs values are range-checked")
    }

    /// The facts behind [`DeviceProbe::constraints`], as prose.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        match &self.iommu {
            IommuState::None => notes.push("no IOMMU".to_owned()),
            IommuState::Passthrough(g) => {
                notes.push(format!("IOMMU group {g} in passthrough (identity): physical addresses"));
            }
            IommuState::Translated(g) => notes.push(format!("behind IOMMU group {g}: any page is reachable")),
        }
        match (self.dma_mask_bits, self.address_bits()) {
            (None, _) => notes
                .push("no dma_mask_bits in sysfs: address limit unknown (a profile can set address_bits)".to_owned()),
            (Some(bits), None) if bits < 64 && !self.iommu.translates() => {
                if let Some(end) = self.ram_end {
                    notes.push(format!("{bits}-bit DMA, but all RAM lies below {}", format_size(end)));
                }
            }
            _ => {}
        }
        notes
    }
}
