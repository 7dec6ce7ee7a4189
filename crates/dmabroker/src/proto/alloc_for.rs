//! Allocation by constraints over the wire (protocol version 2):
//! [`AllocateForRequest`] carries the requirements of each device that will
//! touch the buffer; the broker merges them, chooses a heap with
//! [`crate::constraints::choose_heap`] among the heaps its policy allows the
//! client, and replies with the buffer and a [`ChoiceReport`].
//!
//! Requirements travel per device (not merged) so that the broker can
//! rebuild them with [`Constraints::builder`], whose checks (powers of two,
//! address bits in 12..=64, at least one segment) and whose merge (the
//! cached/uncached conflict) are exactly the library's, and so that every
//! requirement keeps the devices that asked for it.

use super::{check_text, invalid, CodecError, MAX_NAME_LEN};
use crate::buffer::{CacheMode, Coherency};
use crate::constraints::{Choice, Constraints, DeviceCoherency};
use serde::{Deserialize, Serialize};

/// Most devices one [`AllocateForRequest`] may name.
pub const MAX_DEVICES: usize = 16;
/// Most entries in each list of a [`ChoiceReport`] (reasons, candidates,
/// heaps passed over); the broker cuts longer lists.
pub const MAX_REPORT_ENTRIES: usize = 32;
/// Longest entry of a [`ChoiceReport`] list, in bytes; the broker cuts longer ones.
pub const MAX_REPORT_TEXT_LEN: usize = 512;
/// Longest explanation of [`super::ErrorCode::NoSuitableHeap`], in bytes
/// (other error messages are bounded by [`super::MAX_TEXT_LEN`]).
pub const MAX_EXPLANATION_LEN: usize = 8192;

/// What [`super::Request::AllocateFor`] asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateForRequest {
    /// Size in bytes, before the granularity and the heap's page size round it up.
    pub len: u64,
    /// The requirements of each device that will touch the buffer (at most
    /// [`MAX_DEVICES`]; none: any heap will do).
    pub devices: Vec<DeviceRequirements>,
    /// Consider this heap only (it must still meet every requirement).
    pub heap: Option<String>,
    /// A name shown in `/proc` (memfd name or dma-buf name).
    pub name: Option<String>,
}

/// The requirements of one device, as [`Constraints::builder`] takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRequirements {
    /// The device's name as reasons show it (`video0 (vivid)`, `command line`).
    pub device: String,
    /// It imports a dma-buf (`true`) or CPU/IPC memory will do (`false`).
    pub dma_buf: Option<bool>,
    /// At most this many physical segments (1: contiguous).
    pub max_segments: Option<u64>,
    /// It reaches physical addresses below `2^bits` only (12..=64).
    pub address_bits: Option<u32>,
    /// Start alignment (a power of two).
    pub align: Option<u64>,
    /// Smallest page size (a power of two).
    pub page_size: Option<u64>,
    /// Length granularity (a power of two).
    pub granularity: Option<u64>,
    /// How it relates to CPU caches.
    pub coherency: Option<DeviceCoherency>,
}

impl DeviceRequirements {
    /// The requirements of each device of a (merged) constraint set: each
    /// device gets every requirement it is named behind. Rebuilding them
    /// with [`DeviceRequirements::merge`] gives back the same requirements
    /// with the same provenance (notes found while probing stay with the
    /// client).
    pub fn from_constraints(c: &Constraints) -> Vec<Self> {
        fn get<T: Copy>(r: Option<&crate::constraints::Requirement<T>>, device: &str) -> Option<T> {
            r.filter(|r| r.from.iter().any(|d| d == device)).map(|r| r.value)
        }
        c.devices()
            .iter()
            .map(|d| {
                let cache = get(c.cache(), d);
                let coherency = get(c.coherency(), d);
                let coherency = match (cache, coherency) {
                    (Some(CacheMode::Uncached), _) => Some(DeviceCoherency::NeedsUncached),
                    (Some(CacheMode::Cached), _) | (None, Some(Coherency::Coherent)) => Some(DeviceCoherency::Snoops),
                    (None, Some(Coherency::NonCoherent)) => Some(DeviceCoherency::NeedsMaintenance),
                    (None, None) => None,
                };
                Self {
                    device: d.clone(),
                    dma_buf: get(c.dma_buf(), d),
                    max_segments: get(c.max_segments(), d),
                    address_bits: get(c.address_bits(), d),
                    align: get(c.align(), d),
                    page_size: get(c.page_size(), d),
                    granularity: get(c.granularity(), d),
                    coherency,
                }
            })
            .collect()
    }

    /// Build this device's constraints, with the library's checks.
    ///
    /// # Errors
    /// [`CodecError::InvalidField`] naming the device and the value.
    pub fn constraints(&self) -> Result<Constraints, CodecError> {
        let mut b = Constraints::builder(self.device.clone());
        if let Some(v) = self.dma_buf {
            b = b.dma_buf(v);
        }
        if let Some(v) = self.max_segments {
            b = b.max_segments(v);
        }
        if let Some(v) = self.address_bits {
            b = b.address_bits(v);
        }
        if let Some(v) = self.align {
            b = b.align(v);
        }
        if let Some(v) = self.page_size {
            b = b.page_size(v);
        }
        if let Some(v) = self.granularity {
            b = b.granularity(v);
        }
        if let Some(v) = self.coherency {
            b = b.coherency(v);
        }
        b.build().map_err(|e| invalid(format!("devices: {e}")))
    }

    /// Build and merge the constraints of every device.
    ///
    /// # Errors
    /// [`CodecError::InvalidField`] for an impossible value or a
    /// cached/uncached conflict.
    pub fn merge(devices: &[Self]) -> Result<Constraints, CodecError> {
        let all = devices.iter().map(Self::constraints).collect::<Result<Vec<_>, _>>()?;
        Constraints::merge_all(&all).map_err(|e| invalid(format!("devices: {e}")))
    }
}

impl AllocateForRequest {
    /// A request for `len` bytes meeting `constraints`.
    pub fn new(constraints: &Constraints, len: u64) -> Self {
        Self { len, devices: DeviceRequirements::from_constraints(constraints), heap: None, name: None }
    }

    /// The merged constraints (validated).
    ///
    /// # Errors
    /// See [`AllocateForRequest::validate`].
    pub fn constraints(&self) -> Result<Constraints, CodecError> {
        self.validate()?;
        DeviceRequirements::merge(&self.devices)
    }

    /// Check every field: bounds, names, each device's values, conflicts,
    /// and that the length is not 0 and does not overflow when rounded up.
    ///
    /// # Errors
    /// [`CodecError::InvalidField`] naming the field.
    pub fn validate(&self) -> Result<(), CodecError> {
        if self.len == 0 {
            return Err(invalid("len: 0, a buffer needs at least one byte".into()));
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(invalid(format!("devices: {} entries, at most {MAX_DEVICES}", self.devices.len())));
        }
        for d in &self.devices {
            check_text("device", &d.device, MAX_NAME_LEN)?;
            if d.device.is_empty() {
                return Err(invalid("device: empty name".into()));
            }
        }
        if let Some(h) = &self.heap {
            check_text("heap", h, MAX_NAME_LEN)?;
            if h.is_empty() {
                return Err(invalid("heap: empty".into()));
            }
        }
        if let Some(n) = &self.name {
            check_text("name", n, MAX_NAME_LEN)?;
        }
        let merged = DeviceRequirements::merge(&self.devices)?;
        merged.round_len(self.len).map_err(|e| invalid(format!("len: {e}")))?;
        Ok(())
    }
}

/// The heap the broker chose, and why: [`Choice`] as the wire carries it
/// (texts and lists bounded by [`MAX_REPORT_TEXT_LEN`] and [`MAX_REPORT_ENTRIES`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChoiceReport {
    /// The heap.
    pub heap: String,
    /// Its family (`memfd`, `hugetlb`, `udmabuf`, `dma-heap`).
    pub kind: String,
    /// Bytes requested: the length rounded up to the granularity.
    pub len: u64,
    /// Bytes the heap gave: `len` rounded up to its page size.
    pub allocated_len: u64,
    /// Start alignment requested.
    pub align: u64,
    /// Whether physical contiguity was requested.
    pub contiguous: bool,
    /// The buffer's cache mode (`cached`, `uncached`).
    pub cache: String,
    /// Whether CPU access needs cache maintenance (`coherent`, `non-coherent`).
    pub coherency: String,
    /// Why this heap, one sentence each.
    pub reasons: Vec<String>,
    /// Every heap the client may use that meets everything, cheapest first.
    pub candidates: Vec<String>,
    /// The cheaper heaps passed over and why (`memfd: not usable (not
    /// allowed by policy for uid 1000)`).
    pub passed_over: Vec<String>,
}

fn kebab<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
pub fn cut_text(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn bounded(items: impl IntoIterator<Item = String>) -> Vec<String> {
    items.into_iter().take(MAX_REPORT_ENTRIES).map(|s| cut_text(&s, MAX_REPORT_TEXT_LEN)).collect()
}

impl From<&Choice> for ChoiceReport {
    fn from(c: &Choice) -> Self {
        Self {
            heap: cut_text(&c.heap, MAX_NAME_LEN),
            kind: kebab(&c.kind),
            len: c.len,
            allocated_len: c.allocated_len,
            align: c.align,
            contiguous: c.contiguous,
            cache: kebab(&c.cache),
            coherency: kebab(&c.coherency),
            reasons: bounded(c.reasons.iter().cloned()),
            candidates: bounded(c.candidates.iter().cloned()),
            passed_over: bounded(c.passed_over.iter().map(ToString::to_string)),
        }
    }
}

/// Check a [`ChoiceReport`] against its bounds (the client does, on receipt).
pub(super) fn check_report(r: &ChoiceReport) -> Result<(), CodecError> {
    check_text("heap", &r.heap, MAX_NAME_LEN)?;
    for (field, list) in [("reasons", &r.reasons), ("candidates", &r.candidates), ("passed_over", &r.passed_over)] {
        if list.len() > MAX_REPORT_ENTRIES {
            return Err(invalid(format!("{field}: {} entries, at most {MAX_REPORT_ENTRIES}", list.len())));
        }
        for s in list {
            if s.len() > MAX_REPORT_TEXT_LEN {
                return Err(invalid(format!("{field}: {} bytes, at most {MAX_REPORT_TEXT_LEN}", s.len())));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{decode_request, encode_request, encode_response, Request, Response};

    #[test]
    fn merged_constraints_survive_the_wire_with_provenance() {
        let isp = Constraints::builder("isp0")
            .contiguous()
            .address_bits(32)
            .align(4096)
            .coherency(DeviceCoherency::NeedsMaintenance)
            .build()
            .unwrap();
        let gpu = Constraints::builder("gpu0")
            .dma_buf(true)
            .address_bits(32)
            .granularity(64)
            .coherency(DeviceCoherency::Snoops)
            .build()
            .unwrap();
        let vpu = Constraints::builder("vpu0").page_size(65536).coherency(DeviceCoherency::NeedsUncached).build();
        let merged = isp.merge(&gpu).unwrap();
        let request = Request::AllocateFor(AllocateForRequest::new(&merged, 1 << 20));
        let bytes = encode_request(&request).unwrap();
        let Request::AllocateFor(back) = decode_request(&bytes).unwrap() else { panic!() };
        assert_eq!(back.constraints().unwrap(), {
            // Notes stay with the client.
            merged.clone()
        });
        // A conflict or an impossible value is refused.
        let mut bad = back.clone();
        bad.devices.extend(DeviceRequirements::from_constraints(&vpu.unwrap()));
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("uncached"), "{e}");
        let mut bad = back.clone();
        bad.devices[0].align = Some(3);
        assert!(bad.validate().unwrap_err().to_string().contains("power of two"));
        let mut bad = back.clone();
        bad.devices[0].max_segments = Some(0);
        assert!(bad.validate().is_err());
        let mut bad = back.clone();
        bad.devices[0].address_bits = Some(99);
        assert!(bad.validate().is_err());
        let mut bad = back.clone();
        bad.len = u64::MAX;
        assert!(bad.validate().unwrap_err().to_string().contains("overflow"));
        let mut bad = back.clone();
        bad.len = 0;
        assert!(bad.validate().is_err());
        let mut bad = back;
        bad.devices = vec![DeviceRequirements { device: "d".into(), ..Default::default() }; MAX_DEVICES + 1];
        assert!(bad.validate().is_err());
    }

    #[test]
    fn the_largest_request_and_report_fit() {
        let device = DeviceRequirements {
            device: "d".repeat(MAX_NAME_LEN),
            dma_buf: Some(true),
            max_segments: Some(u64::MAX),
            address_bits: Some(32),
            align: Some(1 << 63),
            page_size: Some(1 << 63),
            granularity: Some(1),
            coherency: Some(DeviceCoherency::NeedsMaintenance),
        };
        let request = Request::AllocateFor(AllocateForRequest {
            len: 1,
            devices: vec![device; MAX_DEVICES],
            heap: Some("h".repeat(MAX_NAME_LEN)),
            name: Some("n".repeat(MAX_NAME_LEN)),
        });
        assert!(postcard::to_stdvec(&request).unwrap().len() <= crate::proto::MAX_REQUEST_LEN);
        let texts = vec!["r".repeat(MAX_REPORT_TEXT_LEN); MAX_REPORT_ENTRIES];
        let choice = ChoiceReport {
            heap: "h".repeat(MAX_NAME_LEN),
            kind: "dma-heap".into(),
            len: u64::MAX,
            allocated_len: u64::MAX,
            align: u64::MAX,
            contiguous: true,
            cache: "uncached".into(),
            coherency: "non-coherent".into(),
            reasons: texts.clone(),
            candidates: texts.clone(),
            passed_over: texts,
        };
        assert!(check_report(&choice).is_ok());
        let response = Response::AllocatedFor { id: u64::MAX, len: u64::MAX, heap: "h".repeat(MAX_NAME_LEN), choice };
        assert!(encode_response(&response).is_ok());
        assert!(cut_text(&"é".repeat(600), 512).len() <= 512);
    }
}
