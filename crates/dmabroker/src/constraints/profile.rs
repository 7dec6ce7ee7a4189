//! Device profiles: TOML files giving what sysfs cannot show. The schema is
//! documented in [`crate::constraints`].

use super::{Constraints, ConstraintsBuilder, DeviceCoherency, DeviceProbe, InvalidConstraint};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// The directory read by [`Profiles::load_default`].
pub const DEFAULT_PROFILE_DIR: &str = "/etc/dmabroker/devices.d";

/// The largest profile file read: real ones are a few KiB.
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// One `[[device]]` entry of a profile file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    /// Match devices bound to this driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Match this device node path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Ignore this entry when sysfs shows a translating IOMMU.
    #[serde(default)]
    pub unless_iommu: bool,
    /// Needs one physically contiguous segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contiguous: Option<bool>,
    /// At most this many physical segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_segments: Option<u64>,
    /// DMA address width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_bits: Option<u32>,
    /// Start alignment in bytes.
    #[serde(default, deserialize_with = "size", skip_serializing_if = "Option::is_none")]
    pub align: Option<u64>,
    /// Size granularity in bytes.
    #[serde(default, deserialize_with = "size", skip_serializing_if = "Option::is_none")]
    pub granularity: Option<u64>,
    /// Smallest page size in bytes.
    #[serde(default, deserialize_with = "size", skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u64>,
    /// Relation to CPU caches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coherency: Option<DeviceCoherency>,
    /// Imports a dma-buf (`true`) or takes CPU/IPC memory (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dma_buf: Option<bool>,
}

/// A size: an integer of bytes or a string such as `"64K"`.
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size in bytes (4096) or a string such as \"4K\" or \"2MiB\"")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("size {v} is negative")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            crate::size::parse_size(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    device: Vec<DeviceProfile>,
}

/// Why profiles could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not a regular file (a FIFO, a device, a directory, a socket): reading
    /// it could block forever or never end.
    #[error("{file} is {what}, not a regular file: give the path of a TOML profile file")]
    NotAFile {
        /// The file.
        file: String,
        /// What it is (`a FIFO`, `a character device`, `a directory`, ...).
        what: &'static str,
    },
    /// Larger than [`MAX_PROFILE_BYTES`].
    #[error(
        "{file} holds {}{} bytes, more than the {} a profile may hold: is it the right file? \
         (split real profiles into several files)",
        if *at_least { "at least " } else { "" }, len, crate::size::format_size(*max)
    )]
    TooLarge {
        /// The file.
        file: String,
        /// Its size, or how much was read before giving up.
        len: u64,
        /// True when `len` is what was read, not the whole file.
        at_least: bool,
        /// The limit.
        max: u64,
    },
    /// Not valid TOML, or a key that is unknown or of the wrong type (the
    /// parser's message names the key, line and column).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// A valid TOML entry with a value no device can have.
    #[error("{file}: [[device]] #{index} ({matcher}): {problem}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based entry number in the file.
        index: usize,
        /// `driver = "..."` or `path = "..."`.
        matcher: String,
        /// What is wrong, naming the key.
        problem: String,
    },
}

/// Loaded device profiles, in load order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Profiles {
    entries: Vec<(String, DeviceProfile)>,
}

impl Profiles {
    /// No profiles.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every `*.toml` in [`DEFAULT_PROFILE_DIR`], in name order; an absent
    /// directory gives no profiles.
    ///
    /// # Errors
    /// [`ProfileError`] for the first bad file.
    pub fn load_default() -> Result<Self, ProfileError> {
        let mut p = Self::new();
        p.load_dir(Path::new(DEFAULT_PROFILE_DIR))?;
        Ok(p)
    }

    /// Add every `*.toml` in `dir`, in name order (an absent directory adds nothing).
    ///
    /// # Errors
    /// [`ProfileError`] for the first bad file.
    pub fn load_dir(&mut self, dir: &Path) -> Result<(), ProfileError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(ProfileError::Read { file: dir.display().to_string(), source }),
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        self.load(&files)
    }

    /// Add the given files (`--profile FILE`), in order.
    ///
    /// # Errors
    /// [`ProfileError`] for the first bad file.
    pub fn load(&mut self, files: &[PathBuf]) -> Result<(), ProfileError> {
        for file in files {
            let name = file.display().to_string();
            let text = read_bounded(file, &name)?;
            self.add_str(&text, &name)?;
        }
        Ok(())
    }

    /// Parse profile text; `origin` names it in errors and provenance.
    ///
    /// # Errors
    /// [`ProfileError::Parse`] or [`ProfileError::Invalid`].
    pub fn add_str(&mut self, text: &str, origin: &str) -> Result<(), ProfileError> {
        let parsed: ProfileFile = toml::from_str(text).map_err(|e| ProfileError::Parse {
            file: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        for (i, entry) in parsed.device.iter().enumerate() {
            let invalid = |problem: String| ProfileError::Invalid {
                file: origin.to_owned(),
                index: i + 1,
                matcher: entry.matcher(),
                problem,
            };
            match (&entry.driver, &entry.path) {
                (None, None) => return Err(invalid("give `driver` or `path` to say which device it describes".into())),
                (Some(_), Some(_)) => return Err(invalid("give `driver` or `path`, not both".into())),
                _ => {}
            }
            if entry.contiguous == Some(true) && entry.max_segments.is_some_and(|n| n != 1) {
                return Err(invalid("`contiguous = true` contradicts `max_segments` other than 1".into()));
            }
            entry.to_constraints("check").map_err(|e| invalid(profile_key_problem(&e)))?;
        }
        self.entries.extend(parsed.device.into_iter().map(|d| (origin.to_owned(), d)));
        Ok(())
    }

    /// Every entry with the file it came from.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &DeviceProfile)> {
        self.entries.iter().map(|(f, d)| (f.as_str(), d))
    }

    /// The entries matching a probed device, in load order.
    pub fn matching<'a>(&'a self, probe: &'a DeviceProbe) -> impl Iterator<Item = (&'a str, &'a DeviceProfile)> + 'a {
        self.entries().filter(move |(_, d)| d.matches(probe))
    }

    /// The device's constraints: what sysfs shows, overridden key by key by
    /// each matching profile entry in load order, with notes on where each
    /// came from.
    pub fn constraints_for(&self, probe: &DeviceProbe) -> Constraints {
        let mut merged =
            DeviceProfile { dma_buf: Some(true), address_bits: probe.address_bits(), ..DeviceProfile::default() };
        let mut notes = probe.notes();
        for (file, entry) in self.matching(probe) {
            merged.override_with(entry);
            notes.push(format!("profile {file} ({})", entry.matcher()));
        }
        let mut b = merged.builder(&probe.label);
        for n in notes {
            b = b.note(n);
        }
        // Every value was range-checked when its file was loaded.
        b.build().unwrap_or_else(|_| probe.constraints())
    }
}

/// Read a profile file: a regular file of at most [`MAX_PROFILE_BYTES`].
/// The path is checked before it is opened (opening a FIFO blocks, opening
/// some devices has effects), opened non-blocking, checked again through the
/// fd (the path may have changed in between), and read no further than the
/// limit (procfs files report size 0, and a file may grow).
fn read_bounded(file: &Path, name: &str) -> Result<String, ProfileError> {
    use rustix::fs::{FileType, Mode, OFlags};
    use std::io::Read;
    let read_err = |source: std::io::Error| ProfileError::Read { file: name.to_owned(), source };
    let check = |st: &rustix::fs::Stat| -> Result<(), ProfileError> {
        let t = FileType::from_raw_mode(st.st_mode);
        if t != FileType::RegularFile {
            return Err(ProfileError::NotAFile { file: name.to_owned(), what: crate::file_kind::describe(t) });
        }
        let len = u64::try_from(st.st_size).unwrap_or(0);
        if len > MAX_PROFILE_BYTES {
            return Err(ProfileError::TooLarge { file: name.to_owned(), len, at_least: false, max: MAX_PROFILE_BYTES });
        }
        Ok(())
    };
    check(&rustix::fs::stat(file).map_err(|e| read_err(e.into()))?)?;
    let fd =
        rustix::fs::open(file, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY, Mode::empty())
            .map_err(|e| read_err(e.into()))?;
    check(&rustix::fs::fstat(&fd).map_err(|e| read_err(e.into()))?)?;
    let mut bytes = Vec::new();
    std::fs::File::from(fd).take(MAX_PROFILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_PROFILE_BYTES {
        return Err(ProfileError::TooLarge {
            file: name.to_owned(),
            len: bytes.len() as u64,
            at_least: true,
            max: MAX_PROFILE_BYTES,
        });
    }
    String::from_utf8(bytes)
        .map_err(|e| read_err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8 text: {e}"))))
}

/// Builder errors in a profile's own words (its keys).
fn profile_key_problem(e: &InvalidConstraint) -> String {
    match e {
        InvalidConstraint::NotPowerOfTwo { what, value, .. } => format!("`{what} = {value}` is not a power of two"),
        InvalidConstraint::ZeroSegments { .. } => "`max_segments = 0`: at least 1 (1 = contiguous)".to_owned(),
        InvalidConstraint::AddressBits { bits, .. } => format!("`address_bits = {bits}` is outside 12..=64"),
    }
}

impl DeviceProfile {
    /// `driver = "x"` or `path = "y"`, for messages.
    pub fn matcher(&self) -> String {
        match (&self.driver, &self.path) {
            (Some(d), _) => format!("driver = {d:?}"),
            (None, Some(p)) => format!("path = {p:?}"),
            (None, None) => "no driver or path".to_owned(),
        }
    }

    /// Whether this entry describes the probed device.
    pub fn matches(&self, probe: &DeviceProbe) -> bool {
        if self.unless_iommu && probe.iommu.translates() {
            return false;
        }
        match (&self.driver, &self.path) {
            (Some(d), _) => probe.driver.as_deref() == Some(d.as_str()),
            (None, Some(p)) => *p == probe.path || *p == probe.canonical_path,
            (None, None) => false,
        }
    }

    /// Take every key `other` sets.
    fn override_with(&mut self, other: &Self) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f.clone(); } )* };
        }
        take!(address_bits, align, granularity, page_size, coherency, dma_buf);
        if other.contiguous.is_some() || other.max_segments.is_some() {
            self.contiguous = other.contiguous;
            self.max_segments = other.max_segments;
        }
    }

    /// The constraints this entry states for a device named `label`.
    ///
    /// # Errors
    /// [`InvalidConstraint`] for an impossible value.
    pub fn to_constraints(&self, label: &str) -> Result<Constraints, InvalidConstraint> {
        self.builder(label).build()
    }

    fn builder(&self, label: &str) -> ConstraintsBuilder {
        let mut b = Constraints::builder(label);
        if let Some(v) = self.dma_buf {
            b = b.dma_buf(v);
        }
        if let Some(n) = self.max_segments {
            b = b.max_segments(n);
        }
        if self.contiguous == Some(true) {
            b = b.contiguous();
        }
        if let Some(v) = self.address_bits {
            b = b.address_bits(v);
        }
        if let Some(v) = self.align {
            b = b.align(v);
        }
        if let Some(v) = self.granularity {
            b = b.granularity(v);
        }
        if let Some(v) = self.page_size {
            b = b.page_size(v);
        }
        if let Some(v) = self.coherency {
            b = b.coherency(v);
        }
        b
    }
}
