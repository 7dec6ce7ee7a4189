//! Device requirements, their merge, and the choice of a heap that meets
//! them all.
//!
//! Every device that will touch a buffer states [`Constraints`]: how many
//! physical segments it can follow (1 = contiguous), start alignment, size
//! granularity, the highest physical address it reaches (DMA mask bits), the
//! page size it wants, its cache coherency, and whether it imports a real
//! dma-buf. Constraints come from three places:
//!
//! 1. **sysfs**, by probing a device node ([`DeviceProbe::probe`],
//!    [`Constraints::probe`]): `stat` gives the node's `major:minor`,
//!    `/sys/dev/char/MAJ:MIN/device` the device, and there `dma_mask_bits`
//!    (PCI devices have it, platform devices often not), the `iommu_group`
//!    link (and its `type`: an `identity` domain translates nothing) and the
//!    `driver` link.
//! 2. **device profiles** in TOML ([`Profiles`]), from
//!    `/etc/dmabroker/devices.d/*.toml` and explicit `--profile FILE` paths,
//!    for what sysfs cannot show (contiguity, segments, alignment, uncached).
//! 3. **the API**: [`Constraints::builder`].
//!
//! [`Constraints::merge`] combines the constraints of several devices; every
//! [`Requirement`] remembers which devices asked for it. Merging is
//! commutative and associative, with [`Constraints::none`] as identity; the
//! only conflict is a device that needs cached memory (it snoops CPU caches)
//! sharing a buffer with one that needs uncached memory ([`ConflictError`]).
//!
//! [`choose_heap`] then picks the cheapest heap that meets everything, with
//! reasons, or says which requirement no heap meets and why
//! ([`NoHeapError`]); [`allocate_for`] does both and allocates.
//!
//! ```no_run
//! use dmabroker::constraints::{allocate_for, Constraints, DeviceCoherency};
//! use dmabroker::heap::Heaps;
//!
//! // A camera found through sysfs and profiles, plus a display controller
//! // without an IOMMU described in code.
//! let camera = Constraints::probe("/dev/video0")?;
//! let display = Constraints::builder("vc4")
//!     .contiguous()
//!     .address_bits(32)
//!     .coherency(DeviceCoherency::NeedsMaintenance)
//!     .build()?;
//! let both = camera.merge(&display)?;
//! let (buffer, choice) = allocate_for(&Heaps::discover(), &both, 1920 * 1080 * 3 / 2, Some("frame"))?;
//! println!("{} from {}: {}", buffer.len(), choice.heap, choice.reasons.join("; "));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Device profiles
//!
//! A profile file holds any number of `[[device]]` tables. Each matches by
//! `driver` (the basename of the sysfs `driver` link, e.g. `rockchip-rga`)
//! or by `path` (the node path as given, or where its symlinks lead), never
//! both. Unknown keys are errors that name the file and the key.
//!
//! ```toml
//! [[device]]
//! driver = "rockchip-rga"          # or: path = "/dev/video3"
//! description = "RGA2 2D engine; no IOMMU on RK3399/RK356x"
//! unless_iommu = true              # ignore this entry when sysfs shows a translating IOMMU
//! contiguous = true                # same as max_segments = 1
//! # max_segments = 16             # a scatter-gather engine with 16 descriptors
//! address_bits = 32                # reaches physical addresses below 4 GiB
//! align = "4K"                     # start alignment: bytes, or a size such as "64K"
//! granularity = 64                 # length rounded up to a multiple of this
//! page_size = "4K"                 # smallest page size it accepts
//! coherency = "needs-maintenance"  # "snoops", "needs-maintenance" or "needs-uncached"
//! dma_buf = true                   # imports a dma-buf (false: CPU/IPC memory will do)
//! ```
//!
//! Sizes are integers (bytes) or strings read by [`crate::size::parse_size`];
//! `align`, `granularity` and `page_size` must be powers of two;
//! `address_bits` lies in 12..=64. Files are read in name order and entries
//! in file order; when several entries match a device, a later entry's keys
//! override an earlier one's, and any profile key overrides what sysfs said
//! (profiles exist for what sysfs gets wrong or cannot see). `profiles/` at
//! the top of the source tree has examples for common embedded blocks.
//!
//! # Coherency model
//!
//! A device that **snoops** CPU caches (`dma-coherent`) needs cached memory:
//! mapping memory uncached on the CPU while a snooping device maps it cached
//! is a mismatched-attribute alias on Arm. A device that does **not snoop**
//! works with cached memory plus explicit maintenance (the
//! [`crate::buffer::CpuRead`]/[`crate::buffer::CpuWrite`] guards), or with
//! uncached memory. A device that **needs uncached** memory gets nothing else.
//! Merged, this is two requirements: the cache mode (cached or uncached, the
//! two conflict) and the coherency (non-coherent wins: the buffer needs
//! maintenance as soon as one device does not snoop).

mod choose;
pub mod modifier;
mod profile;
mod sysfs;

pub use choose::{
    allocate_for, choose_heap, rank, AllocForError, Choice, ChooseError, Lack, NoHeapError, Rejection, RANKING,
};
pub use profile::{DeviceProfile, ProfileError, Profiles, DEFAULT_PROFILE_DIR, MAX_PROFILE_BYTES};
pub use sysfs::{highest_ram_address, DeviceProbe, IommuState, ProbeError, SYSFS_ROOT};

use crate::buffer::{CacheMode, Coherency};
use crate::size::format_size;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One requirement and the devices that asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Requirement<T> {
    /// The strictest value asked for.
    pub value: T,
    /// The devices that asked for exactly this value, sorted, without duplicates.
    pub from: Vec<String>,
}

impl<T> Requirement<T> {
    /// A requirement from one device.
    pub fn new(value: T, from: impl Into<String>) -> Self {
        Self { value, from: vec![from.into()] }
    }

    /// The devices as prose: `isp0`, `isp0 and vpu0`, `a, b and c`.
    pub fn who(&self) -> String {
        who(&self.from)
    }

    /// The verb agreeing with [`Requirement::who`]: `needs` or `need`.
    fn needs(&self) -> &'static str {
        if self.from.len() == 1 {
            "needs"
        } else {
            "need"
        }
    }
}

/// A list of names as prose.
pub(crate) fn who(names: &[String]) -> String {
    match names {
        [] => "nobody".to_owned(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn union(a: &[String], b: &[String]) -> Vec<String> {
    let mut v: Vec<String> = a.iter().chain(b).cloned().collect();
    v.sort();
    v.dedup();
    v
}

/// Merge two optional requirements where the stricter value wins (`stricter`
/// returns true when its first argument is strictly stricter); equal values
/// pool their devices. A semilattice join: commutative, associative, `None`
/// the identity.
fn join<T: Clone + PartialEq>(
    a: &Option<Requirement<T>>,
    b: &Option<Requirement<T>>,
    stricter: impl Fn(&T, &T) -> bool,
) -> Option<Requirement<T>> {
    match (a, b) {
        (None, x) | (x, None) => x.clone(),
        (Some(a), Some(b)) => Some(if a.value == b.value {
            Requirement { value: a.value.clone(), from: union(&a.from, &b.from) }
        } else if stricter(&a.value, &b.value) {
            a.clone()
        } else {
            b.clone()
        }),
    }
}

/// How a device relates to CPU caches, as a device (or its profile) states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceCoherency {
    /// The device snoops CPU caches (`dma-coherent`): it needs cached memory
    /// and no maintenance.
    Snoops,
    /// The device does not snoop: cached memory with explicit cache
    /// maintenance around CPU access, or uncached memory.
    NeedsMaintenance,
    /// The device needs memory the CPU maps uncached.
    NeedsUncached,
}

/// Which requirement a [`Requirement`], a [`Lack`] or a conflict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequirementKind {
    /// A dma-buf a device can import.
    DmaBuf,
    /// At most N physical segments (1: contiguous).
    Segments,
    /// Highest physical address.
    AddressBits,
    /// Start alignment.
    Align,
    /// Smallest page size.
    PageSize,
    /// Size granularity.
    Granularity,
    /// Cached or uncached memory.
    Cache,
    /// Cache maintenance needed or not.
    Coherency,
}

/// The requirements of one device, or of several merged.
///
/// Built by [`Constraints::builder`], [`Constraints::probe`] or
/// [`Profiles::constraints_for`]; combined with [`Constraints::merge`].
/// Serializes with provenance (`{"max_segments": {"value": 1, "from": ["isp0"]}, ...}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Constraints {
    /// Every device that contributed, sorted (also those that require nothing).
    devices: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dma_buf: Option<Requirement<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_segments: Option<Requirement<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address_bits: Option<Requirement<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    align: Option<Requirement<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    page_size: Option<Requirement<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    granularity: Option<Requirement<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<Requirement<CacheMode>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    coherency: Option<Requirement<Coherency>>,
    /// Facts found while probing (`video0 (vivid): no IOMMU`), sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

/// Two devices want what no buffer can be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} {} cached memory (snooping CPU caches) but {} {} uncached memory: no buffer is both; \
     give the snooping device its own buffer and copy, or correct the profile that says otherwise",
    who(cached), if cached.len() == 1 { "needs" } else { "need" },
    who(uncached), if uncached.len() == 1 { "needs" } else { "need" }
)]
pub struct ConflictError {
    /// The devices that need cached memory.
    pub cached: Vec<String>,
    /// The devices that need uncached memory.
    pub uncached: Vec<String>,
}

/// A value no device can require.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidConstraint {
    /// Alignment, granularity and page size are powers of two.
    #[error("{device}: {what} {value} is not a power of two")]
    NotPowerOfTwo {
        /// The device.
        device: String,
        /// `align`, `granularity` or `page_size`.
        what: &'static str,
        /// The value given.
        value: u64,
    },
    /// Zero segments.
    #[error("{device}: max_segments must be at least 1 (1 = contiguous)")]
    ZeroSegments {
        /// The device.
        device: String,
    },
    /// DMA address width outside 12..=64.
    #[error("{device}: address_bits {bits} is outside 12..=64")]
    AddressBits {
        /// The device.
        device: String,
        /// The value given.
        bits: u32,
    },
}

/// Builds the [`Constraints`] of one device; see [`Constraints::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ConstraintsBuilder {
    device: String,
    dma_buf: Option<bool>,
    max_segments: Option<u64>,
    address_bits: Option<u32>,
    align: Option<u64>,
    page_size: Option<u64>,
    granularity: Option<u64>,
    coherency: Option<DeviceCoherency>,
    notes: Vec<String>,
}

impl ConstraintsBuilder {
    /// Whether the device imports a real dma-buf (`true`) or CPU/IPC memory
    /// will do (`false`).
    pub fn dma_buf(mut self, needed: bool) -> Self {
        self.dma_buf = Some(needed);
        self
    }

    /// The device needs physically contiguous memory (one segment).
    pub fn contiguous(self) -> Self {
        self.max_segments(1)
    }

    /// The device follows at most `n` physical segments (a scatter-gather
    /// table of `n` entries).
    pub fn max_segments(mut self, n: u64) -> Self {
        self.max_segments = Some(n);
        self
    }

    /// The device reaches physical addresses below `2^bits` only (its DMA
    /// mask), and no IOMMU translates for it. 64 means no limit.
    pub fn address_bits(mut self, bits: u32) -> Self {
        self.address_bits = Some(bits);
        self
    }

    /// The buffer must start on a multiple of `bytes` (a power of two).
    pub fn align(mut self, bytes: u64) -> Self {
        self.align = Some(bytes);
        self
    }

    /// The buffer's pages must be at least `bytes` (a power of two), e.g. a
    /// device TLB built for 64 KiB or 2 MiB pages.
    pub fn page_size(mut self, bytes: u64) -> Self {
        self.page_size = Some(bytes);
        self
    }

    /// The buffer's length is rounded up to a multiple of `bytes` (a power of two).
    pub fn granularity(mut self, bytes: u64) -> Self {
        self.granularity = Some(bytes);
        self
    }

    /// How the device relates to CPU caches.
    pub fn coherency(mut self, coherency: DeviceCoherency) -> Self {
        self.coherency = Some(coherency);
        self
    }

    /// Attach a fact worth showing (the builder adds the device name).
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(format!("{}: {}", self.device, note.into()));
        self
    }

    /// Check the values and build.
    ///
    /// # Errors
    /// [`InvalidConstraint`] for a value no device can require.
    pub fn build(self) -> Result<Constraints, InvalidConstraint> {
        let device = self.device;
        let pow2 = |what: &'static str, v: Option<u64>| match v {
            Some(value) if !value.is_power_of_two() => {
                Err(InvalidConstraint::NotPowerOfTwo { device: device.clone(), what, value })
            }
            _ => Ok(()),
        };
        pow2("align", self.align)?;
        pow2("granularity", self.granularity)?;
        pow2("page_size", self.page_size)?;
        if self.max_segments == Some(0) {
            return Err(InvalidConstraint::ZeroSegments { device });
        }
        if let Some(bits) = self.address_bits.filter(|b| !(12..=64).contains(b)) {
            return Err(InvalidConstraint::AddressBits { device, bits });
        }
        let (cache, coherency) = match self.coherency {
            None => (None, None),
            Some(DeviceCoherency::Snoops) => (Some(CacheMode::Cached), Some(Coherency::Coherent)),
            Some(DeviceCoherency::NeedsMaintenance) => (None, Some(Coherency::NonCoherent)),
            Some(DeviceCoherency::NeedsUncached) => (Some(CacheMode::Uncached), Some(Coherency::NonCoherent)),
        };
        let mut notes = self.notes;
        notes.sort();
        notes.dedup();
        Ok(Constraints {
            dma_buf: self.dma_buf.map(|v| Requirement::new(v, device.clone())),
            max_segments: self.max_segments.map(|v| Requirement::new(v, device.clone())),
            // 64 bits reach everything: no requirement.
            address_bits: self.address_bits.filter(|b| *b < 64).map(|v| Requirement::new(v, device.clone())),
            align: self.align.filter(|a| *a > 1).map(|v| Requirement::new(v, device.clone())),
            page_size: self.page_size.filter(|p| *p > 1).map(|v| Requirement::new(v, device.clone())),
            granularity: self.granularity.filter(|g| *g > 1).map(|v| Requirement::new(v, device.clone())),
            cache: cache.map(|v| Requirement::new(v, device.clone())),
            coherency: coherency.map(|v| Requirement::new(v, device.clone())),
            devices: vec![device],
            notes,
        })
    }
}

impl Constraints {
    /// No requirement at all: the identity of [`Constraints::merge`].
    pub fn none() -> Self {
        Self::default()
    }

    /// Start describing the device named `device` (the name errors and
    /// reasons will show, e.g. `isp0` or `video0 (rkisp1)`).
    pub fn builder(device: impl Into<String>) -> ConstraintsBuilder {
        ConstraintsBuilder {
            device: device.into(),
            dma_buf: None,
            max_segments: None,
            address_bits: None,
            align: None,
            page_size: None,
            granularity: None,
            coherency: None,
            notes: Vec::new(),
        }
    }

    /// Probe a V4L2 or DRM device node through `/sys` and apply the profiles
    /// in [`DEFAULT_PROFILE_DIR`] (a missing directory means no profiles).
    ///
    /// # Errors
    /// [`ProbeError`]: the node is missing, not a V4L2/DRM/accel device, has
    /// no sysfs entry, or a profile file is invalid.
    pub fn probe(path: impl AsRef<std::path::Path>) -> Result<Self, ProbeError> {
        let profiles = Profiles::load_default()?;
        Self::probe_with(path, &profiles)
    }

    /// Like [`Constraints::probe`] with the given profiles (for
    /// `--profile FILE`: [`Profiles::load_default`] then [`Profiles::load`]).
    ///
    /// # Errors
    /// See [`Constraints::probe`].
    pub fn probe_with(path: impl AsRef<std::path::Path>, profiles: &Profiles) -> Result<Self, ProbeError> {
        let probe = DeviceProbe::probe(path)?;
        Ok(profiles.constraints_for(&probe))
    }

    /// Combine the requirements of two sets of devices: the strictest value
    /// of each requirement wins (fewest segments, largest alignment, page
    /// size and granularity, fewest address bits, dma-buf over CPU memory,
    /// non-coherent over coherent), remembering who asked for it.
    ///
    /// # Errors
    /// [`ConflictError`] when one side needs cached memory and the other
    /// uncached memory.
    pub fn merge(&self, other: &Self) -> Result<Self, ConflictError> {
        let cache = match (&self.cache, &other.cache) {
            (Some(a), Some(b)) if a.value != b.value => {
                let (cached, uncached) = if a.value == CacheMode::Cached { (a, b) } else { (b, a) };
                return Err(ConflictError { cached: cached.from.clone(), uncached: uncached.from.clone() });
            }
            (a, b) => join(a, b, |_, _| false),
        };
        Ok(Self {
            devices: union(&self.devices, &other.devices),
            dma_buf: join(&self.dma_buf, &other.dma_buf, |a, b| a & !b),
            max_segments: join(&self.max_segments, &other.max_segments, |a, b| a < b),
            address_bits: join(&self.address_bits, &other.address_bits, |a, b| a < b),
            align: join(&self.align, &other.align, |a, b| a > b),
            page_size: join(&self.page_size, &other.page_size, |a, b| a > b),
            granularity: join(&self.granularity, &other.granularity, |a, b| a > b),
            cache,
            coherency: join(&self.coherency, &other.coherency, |a, _| *a == Coherency::NonCoherent),
            notes: union(&self.notes, &other.notes),
        })
    }

    /// Merge any number of constraint sets ([`Constraints::none`] for none).
    ///
    /// # Errors
    /// The first [`ConflictError`].
    pub fn merge_all<'a>(all: impl IntoIterator<Item = &'a Self>) -> Result<Self, ConflictError> {
        all.into_iter().try_fold(Self::none(), |acc, c| acc.merge(c))
    }

    /// The devices that contributed, sorted.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }

    /// Whether the buffer must be a dma-buf (`value: true`) or CPU/IPC
    /// memory will do (`false`); `None`: nobody said.
    pub fn dma_buf(&self) -> Option<&Requirement<bool>> {
        self.dma_buf.as_ref()
    }

    /// True when some device imports the buffer.
    pub fn needs_dma_buf(&self) -> bool {
        self.dma_buf.as_ref().is_some_and(|r| r.value)
    }

    /// The most physical segments allowed (1: contiguous).
    pub fn max_segments(&self) -> Option<&Requirement<u64>> {
        self.max_segments.as_ref()
    }

    /// True when some device needs one physically contiguous segment.
    pub fn needs_contiguous(&self) -> bool {
        self.max_segments.as_ref().is_some_and(|r| r.value == 1)
    }

    /// The DMA address width of the most limited device without an IOMMU.
    pub fn address_bits(&self) -> Option<&Requirement<u32>> {
        self.address_bits.as_ref()
    }

    /// Start alignment in bytes.
    pub fn align(&self) -> Option<&Requirement<u64>> {
        self.align.as_ref()
    }

    /// Smallest acceptable page size in bytes.
    pub fn page_size(&self) -> Option<&Requirement<u64>> {
        self.page_size.as_ref()
    }

    /// Size granularity in bytes.
    pub fn granularity(&self) -> Option<&Requirement<u64>> {
        self.granularity.as_ref()
    }

    /// Cached or uncached memory, where a device cares.
    pub fn cache(&self) -> Option<&Requirement<CacheMode>> {
        self.cache.as_ref()
    }

    /// Whether CPU access needs cache maintenance.
    pub fn coherency(&self) -> Option<&Requirement<Coherency>> {
        self.coherency.as_ref()
    }

    /// The coherency buffers get ([`Coherency::Coherent`] when nobody said).
    pub fn effective_coherency(&self) -> Coherency {
        self.coherency.as_ref().map_or(Coherency::Coherent, |r| r.value)
    }

    /// Facts found while probing, sorted.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// True when nothing is required.
    pub fn is_unconstrained(&self) -> bool {
        self.dma_buf.is_none()
            && self.max_segments.is_none()
            && self.address_bits.is_none()
            && self.align.is_none()
            && self.page_size.is_none()
            && self.granularity.is_none()
            && self.cache.is_none()
            && self.coherency.is_none()
    }

    /// `len` rounded up to the granularity.
    ///
    /// # Errors
    /// [`ChooseError::ZeroSize`] or [`ChooseError::SizeOverflow`].
    pub fn round_len(&self, len: u64) -> Result<u64, ChooseError> {
        if len == 0 {
            return Err(ChooseError::ZeroSize);
        }
        let g = self.granularity.as_ref().map_or(1, |r| r.value);
        len.checked_next_multiple_of(g).ok_or(ChooseError::SizeOverflow { len, granularity: g })
    }

    /// Each requirement as a sentence naming its devices, in a fixed order
    /// (`isp0 needs physically contiguous memory`).
    pub fn describe(&self) -> Vec<(RequirementKind, String)> {
        let mut out = Vec::new();
        if let Some(r) = &self.dma_buf {
            let text = if r.value {
                format!("{} {} a dma-buf to import", r.who(), r.needs())
            } else {
                format!("{} {} CPU/IPC memory", r.who(), if r.from.len() == 1 { "accepts" } else { "accept" })
            };
            out.push((RequirementKind::DmaBuf, text));
        }
        if let Some(r) = &self.max_segments {
            let text = if r.value == 1 {
                format!("{} {} physically contiguous memory", r.who(), r.needs())
            } else {
                format!("{} {} at most {} physical segments", r.who(), r.needs(), r.value)
            };
            out.push((RequirementKind::Segments, text));
        }
        if let Some(r) = &self.address_bits {
            out.push((
                RequirementKind::AddressBits,
                format!(
                    "{} {} memory below {} ({}-bit DMA, no IOMMU)",
                    r.who(),
                    r.needs(),
                    format_size(1u64.checked_shl(r.value).unwrap_or(u64::MAX)),
                    r.value
                ),
            ));
        }
        if let Some(r) = &self.align {
            out.push((
                RequirementKind::Align,
                format!("{} {} a start aligned to {}", r.who(), r.needs(), format_size(r.value)),
            ));
        }
        if let Some(r) = &self.page_size {
            out.push((
                RequirementKind::PageSize,
                format!("{} {} pages of at least {}", r.who(), r.needs(), format_size(r.value)),
            ));
        }
        if let Some(r) = &self.granularity {
            out.push((
                RequirementKind::Granularity,
                format!("{} {} a length that is a multiple of {}", r.who(), r.needs(), format_size(r.value)),
            ));
        }
        if let Some(r) = &self.cache {
            let text = match r.value {
                CacheMode::Cached => format!("{} {} cached memory (snoops CPU caches)", r.who(), r.needs()),
                CacheMode::Uncached => format!("{} {} uncached memory", r.who(), r.needs()),
            };
            out.push((RequirementKind::Cache, text));
        }
        if let Some(r) = &self.coherency {
            let text = match r.value {
                Coherency::Coherent => {
                    format!("{} {} CPU caches", r.who(), if r.from.len() == 1 { "snoops" } else { "snoop" })
                }
                Coherency::NonCoherent => format!(
                    "{} {} not snoop CPU caches: CPU access needs cache maintenance",
                    r.who(),
                    if r.from.len() == 1 { "does" } else { "do" }
                ),
            };
            out.push((RequirementKind::Coherency, text));
        }
        out
    }
}

impl fmt::Display for Constraints {
    /// One requirement per line; `no requirement` when there is none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = self.describe();
        if lines.is_empty() {
            return write!(f, "no requirement (devices: {})", who(&self.devices));
        }
        for (i, (_, line)) in lines.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            f.write_str(line)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_rejects_impossible_values() {
        assert!(matches!(
            Constraints::builder("a").align(3).build(),
            Err(InvalidConstraint::NotPowerOfTwo { what: "align", value: 3, .. })
        ));
        assert!(matches!(
            Constraints::builder("a").max_segments(0).build(),
            Err(InvalidConstraint::ZeroSegments { .. })
        ));
        assert!(matches!(
            Constraints::builder("a").address_bits(8).build(),
            Err(InvalidConstraint::AddressBits { .. })
        ));
    }

    #[test]
    fn merge_keeps_the_strictest_with_provenance() {
        let a = Constraints::builder("isp0").contiguous().address_bits(32).align(4096).build().unwrap();
        let b =
            Constraints::builder("vpu0").max_segments(8).address_bits(32).align(65536).dma_buf(true).build().unwrap();
        let m = a.merge(&b).unwrap();
        assert_eq!(m.max_segments(), Some(&Requirement::new(1, "isp0")));
        assert_eq!(m.address_bits().unwrap().from, ["isp0", "vpu0"]);
        assert_eq!(m.align(), Some(&Requirement::new(65536, "vpu0")));
        assert!(m.needs_dma_buf());
        assert_eq!(m.devices(), ["isp0", "vpu0"]);
    }

    #[test]
    fn cached_and_uncached_conflict_naming_both() {
        let gpu = Constraints::builder("gpu0").coherency(DeviceCoherency::Snoops).build().unwrap();
        let vpu = Constraints::builder("vpu0").coherency(DeviceCoherency::NeedsUncached).build().unwrap();
        let e = vpu.merge(&gpu).unwrap_err();
        assert_eq!(e, gpu.merge(&vpu).unwrap_err());
        let text = e.to_string();
        assert!(text.contains("gpu0 needs cached") && text.contains("vpu0 needs uncached"), "{text}");
        // Maintenance merges with either.
        let isp = Constraints::builder("isp0").coherency(DeviceCoherency::NeedsMaintenance).build().unwrap();
        let m = isp.merge(&gpu).unwrap();
        assert_eq!(m.effective_coherency(), Coherency::NonCoherent);
        assert_eq!(m.cache().unwrap().value, CacheMode::Cached);
    }

    #[test]
    fn serializes_with_provenance() {
        let c = Constraints::builder("isp0").contiguous().build().unwrap();
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["max_segments"]["value"], 1);
        assert_eq!(json["max_segments"]["from"][0], "isp0");
        assert!(json.get("align").is_none());
    }
}
