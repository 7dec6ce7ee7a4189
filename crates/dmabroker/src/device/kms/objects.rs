//! The KMS objects of a device (`GETRESOURCES`, `GETCONNECTOR`,
//! `GETENCODER`, `GETPLANERESOURCES`, `GETPLANE`), their properties by name
//! (`OBJ_GETPROPERTIES`, `GETPROPERTY`) and property blobs
//! (`GETPROPBLOB`, `CREATEPROPBLOB`, `DESTROYPROPBLOB`).

use super::{KmsDevice, KmsError};
use dmabroker_sys::kms::drm;
use drm::control::{connector, crtc, from_u32, plane, property, Device as _, RawResourceHandle, ResourceHandle};
use std::fmt;

/// A KMS object by kind and id (ids are unique across kinds on one device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KmsObject {
    /// A connector (a display output, or a writeback connector).
    Connector(u32),
    /// A CRTC (a scanout engine: mode, timing).
    Crtc(u32),
    /// A plane (a framebuffer source blended by a CRTC).
    Plane(u32),
}

impl KmsObject {
    /// The object's id.
    pub fn id(self) -> u32 {
        match self {
            Self::Connector(id) | Self::Crtc(id) | Self::Plane(id) => id,
        }
    }
}

impl fmt::Display for KmsObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connector(id) => write!(f, "connector {id}"),
            Self::Crtc(id) => write!(f, "CRTC {id}"),
            Self::Plane(id) => write!(f, "plane {id}"),
        }
    }
}

/// A display mode a connector offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisplayMode {
    raw: drm::control::Mode,
}

impl DisplayMode {
    /// Visible width and height in pixels.
    pub fn size(&self) -> (u32, u32) {
        let (w, h) = self.raw.size();
        (u32::from(w), u32::from(h))
    }

    /// Refresh rate in Hz.
    pub fn refresh(&self) -> u32 {
        self.raw.vrefresh()
    }

    /// Whether the connector marks it preferred.
    pub fn preferred(&self) -> bool {
        self.raw.mode_type().contains(drm::control::ModeTypeFlags::PREFERRED)
    }

    /// The mode's name (`640x480`).
    pub fn name(&self) -> String {
        self.raw.name().to_string_lossy().into_owned()
    }

    pub(super) fn raw(&self) -> &drm::control::Mode {
        &self.raw
    }
}

impl fmt::Display for DisplayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (w, h) = self.size();
        write!(f, "{w}x{h}@{}", self.refresh())
    }
}

/// A connector as `GETCONNECTOR` describes it.
#[derive(Debug, Clone)]
pub struct Connector {
    /// Its id.
    pub id: u32,
    /// Kernel-style name: `Virtual-1`, `Writeback-1`, `HDMI-A-1`.
    pub name: String,
    /// Whether it is a writeback connector (output to memory).
    pub writeback: bool,
    /// Whether a display is connected (writeback connectors: always).
    pub connected: bool,
    /// The modes it offers (probed).
    pub modes: Vec<DisplayMode>,
    /// The CRTCs that can drive it (through its encoders).
    pub possible_crtcs: Vec<u32>,
}

impl Connector {
    /// The first mode of exactly `width` x `height`, preferred modes first.
    pub fn mode(&self, width: u32, height: u32) -> Option<DisplayMode> {
        let mut fits: Vec<DisplayMode> = self.modes.iter().copied().filter(|m| m.size() == (width, height)).collect();
        fits.sort_by_key(|m| !m.preferred());
        fits.first().copied()
    }
}

/// A CRTC and whether it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crtc {
    /// Its id.
    pub id: u32,
    /// Its index in the device's CRTC list (the bit in `possible_crtcs` masks).
    pub index: usize,
    /// The mode it scans out now, if any.
    pub active_size: Option<(u32, u32)>,
}

/// A plane's role, from its `type` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlaneKind {
    /// The CRTC's main plane.
    Primary,
    /// Blended above the primary plane.
    Overlay,
    /// The hardware cursor.
    Cursor,
}

impl PlaneKind {
    /// Whether this is a primary plane.
    pub fn is_primary(self) -> bool {
        self == Self::Primary
    }
}

/// A plane as `GETPLANE` and its properties describe it.
#[derive(Debug, Clone)]
pub struct Plane {
    /// Its id.
    pub id: u32,
    /// Primary, overlay or cursor.
    pub kind: PlaneKind,
    /// The CRTCs it can be blended by.
    pub possible_crtcs: Vec<u32>,
    /// The DRM fourccs it scans out (`GETPLANE`'s list).
    pub formats: Vec<u32>,
    /// The `IN_FORMATS` blob id (formats with modifiers), when the plane has one.
    pub in_formats_blob: Option<u64>,
}

/// One property of an object: name, id and current value.
#[derive(Debug, Clone)]
pub struct Property {
    /// Its name (`FB_ID`, `CRTC_ID`, `MODE_ID`, ...).
    pub name: String,
    /// Its current value (a blob id for blob properties).
    pub value: u64,
    pub(super) handle: property::Handle,
    pub(super) blob: bool,
}

/// A property blob this file created, destroyed on drop (a commit that
/// uses it holds its own reference: the state keeps it alive).
#[derive(Debug)]
#[must_use = "dropping the blob destroys it at once"]
pub struct PropertyBlob<'d> {
    dev: &'d KmsDevice,
    id: u64,
}

impl PropertyBlob<'_> {
    /// The blob id, the value of a blob property (`MODE_ID`).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for PropertyBlob<'_> {
    fn drop(&mut self) {
        // Nothing to do on failure: the blob goes with the file anyway.
        let _ = self.dev.control().destroy_property_blob(self.id);
    }
}

fn handle<H: From<RawResourceHandle>>(object: KmsObject) -> Result<H, KmsError> {
    from_u32(object.id()).ok_or(KmsError::NoSuchObject(object))
}

fn crtc_ids(
    mask: drm::control::CrtcListFilter,
    crtcs: &[crtc::Handle],
    res: &drm::control::ResourceHandles,
) -> Vec<u32> {
    let wanted = res.filter_crtcs(mask);
    crtcs.iter().filter(|c| wanted.contains(c)).map(|&c| u32::from(c)).collect()
}

impl KmsDevice {
    fn resources(&self) -> Result<drm::control::ResourceHandles, KmsError> {
        self.control().resource_handles().map_err(|e| KmsError::os("DRM_IOCTL_MODE_GETRESOURCES", e))
    }

    /// Every connector (writeback connectors only when
    /// [`Self::writeback_enabled`]), probed: a connector whose modes were
    /// never read gets them read now (as DRM master, a forced probe).
    ///
    /// # Errors
    /// [`KmsError::Os`] when a query fails.
    pub fn connectors(&self) -> Result<Vec<Connector>, KmsError> {
        let res = self.resources()?;
        let mut out = Vec::new();
        for &c in res.connectors() {
            let info = self
                .control()
                .get_connector(c, true)
                .map_err(|e| KmsError::os(format!("DRM_IOCTL_MODE_GETCONNECTOR {}", u32::from(c)), e))?;
            let mut possible = Vec::new();
            for &e in info.encoders() {
                let enc = self
                    .control()
                    .get_encoder(e)
                    .map_err(|err| KmsError::os(format!("DRM_IOCTL_MODE_GETENCODER {}", u32::from(e)), err))?;
                for id in crtc_ids(enc.possible_crtcs(), res.crtcs(), &res) {
                    if !possible.contains(&id) {
                        possible.push(id);
                    }
                }
            }
            let interface = info.interface();
            out.push(Connector {
                id: c.into(),
                name: format!("{}-{}", interface.as_str(), info.interface_id()),
                writeback: interface == connector::Interface::Writeback,
                connected: info.state() == connector::State::Connected,
                modes: info.modes().iter().map(|&raw| DisplayMode { raw }).collect(),
                possible_crtcs: possible,
            });
        }
        Ok(out)
    }

    /// Every CRTC, in the device's order.
    ///
    /// # Errors
    /// [`KmsError::Os`] when a query fails.
    pub fn crtcs(&self) -> Result<Vec<Crtc>, KmsError> {
        let res = self.resources()?;
        res.crtcs()
            .iter()
            .enumerate()
            .map(|(index, &c)| {
                let info = self
                    .control()
                    .get_crtc(c)
                    .map_err(|e| KmsError::os(format!("DRM_IOCTL_MODE_GETCRTC {}", u32::from(c)), e))?;
                let active_size = info.mode().map(|m| {
                    let (w, h) = m.size();
                    (u32::from(w), u32::from(h))
                });
                Ok(Crtc { id: c.into(), index, active_size })
            })
            .collect()
    }

    /// Every plane (primary and cursor planes too: `UNIVERSAL_PLANES` is on).
    ///
    /// # Errors
    /// [`KmsError::Os`] when a query fails; [`KmsError::NoSuchProperty`] for
    /// a plane without a `type` property (no driver does that).
    pub fn planes(&self) -> Result<Vec<Plane>, KmsError> {
        let res = self.resources()?;
        let handles =
            self.control().plane_handles().map_err(|e| KmsError::os("DRM_IOCTL_MODE_GETPLANERESOURCES", e))?;
        let mut out = Vec::new();
        for p in handles {
            let info = self
                .control()
                .get_plane(p)
                .map_err(|e| KmsError::os(format!("DRM_IOCTL_MODE_GETPLANE {}", u32::from(p)), e))?;
            let object = KmsObject::Plane(p.into());
            let props = self.properties(object)?;
            let kind = match find(&props, object, "type")?.value {
                1 => PlaneKind::Primary,
                2 => PlaneKind::Cursor,
                _ => PlaneKind::Overlay,
            };
            let in_formats_blob = props.iter().find(|p| p.name == "IN_FORMATS").map(|p| p.value).filter(|&v| v != 0);
            out.push(Plane {
                id: p.into(),
                kind,
                possible_crtcs: crtc_ids(info.possible_crtcs(), res.crtcs(), &res),
                formats: info.formats().to_vec(),
                in_formats_blob,
            });
        }
        Ok(out)
    }

    /// Every property of `object`, with its current value.
    ///
    /// # Errors
    /// [`KmsError::NoSuchObject`], [`KmsError::Os`].
    pub fn properties(&self, object: KmsObject) -> Result<Vec<Property>, KmsError> {
        let set = match object {
            KmsObject::Connector(_) => self.props_of::<connector::Handle>(object),
            KmsObject::Crtc(_) => self.props_of::<crtc::Handle>(object),
            KmsObject::Plane(_) => self.props_of::<plane::Handle>(object),
        }?;
        let (ids, values) = set.as_props_and_values();
        let mut out = Vec::with_capacity(ids.len());
        for (&handle, &value) in ids.iter().zip(values) {
            let info = self
                .control()
                .get_property(handle)
                .map_err(|e| KmsError::os(format!("DRM_IOCTL_MODE_GETPROPERTY {}", u32::from(handle)), e))?;
            let blob = matches!(info.value_type(), property::ValueType::Blob);
            out.push(Property { name: info.name().to_string_lossy().into_owned(), value, handle, blob });
        }
        Ok(out)
    }

    fn props_of<H: ResourceHandle + From<RawResourceHandle>>(
        &self,
        object: KmsObject,
    ) -> Result<drm::control::PropertyValueSet, KmsError> {
        let h: H = handle(object)?;
        self.control().get_properties(h).map_err(|e| match rustix::io::Errno::from_io_error(&e) {
            Some(rustix::io::Errno::NOENT) => KmsError::NoSuchObject(object),
            _ => KmsError::os(format!("DRM_IOCTL_MODE_OBJ_GETPROPERTIES {object}"), e),
        })
    }

    /// The property `name` of `object`.
    ///
    /// # Errors
    /// [`KmsError::NoSuchProperty`] naming what the object has.
    pub fn property(&self, object: KmsObject, name: &str) -> Result<Property, KmsError> {
        let props = self.properties(object)?;
        find(&props, object, name).cloned()
    }

    /// The bytes of the blob property `name` of `object` (`IN_FORMATS`,
    /// `WRITEBACK_PIXEL_FORMATS`, `MODE_ID`); empty when the blob id is 0.
    ///
    /// # Errors
    /// [`KmsError::NoSuchProperty`], [`KmsError::WrongPropertyType`],
    /// [`KmsError::Os`].
    pub fn blob_property(&self, object: KmsObject, name: &str) -> Result<Vec<u8>, KmsError> {
        let p = self.property(object, name)?;
        if !p.blob {
            return Err(KmsError::WrongPropertyType { object, name: name.to_owned(), expected: "a blob" });
        }
        self.blob(p.value)
    }

    /// `DRM_IOCTL_MODE_GETPROPBLOB`: a blob's bytes (empty for id 0).
    ///
    /// # Errors
    /// [`KmsError::Os`] (`ENOENT` for an unknown blob).
    pub fn blob(&self, id: u64) -> Result<Vec<u8>, KmsError> {
        if id == 0 {
            return Ok(Vec::new());
        }
        self.control().get_property_blob(id).map_err(|e| KmsError::os(format!("DRM_IOCTL_MODE_GETPROPBLOB {id}"), e))
    }

    /// `DRM_IOCTL_MODE_CREATEPROPBLOB` of a mode: the value for a CRTC's
    /// `MODE_ID`.
    ///
    /// # Errors
    /// [`KmsError::Os`].
    pub fn mode_blob(&self, mode: &DisplayMode) -> Result<PropertyBlob<'_>, KmsError> {
        let v = self
            .control()
            .create_property_blob(mode.raw())
            .map_err(|e| KmsError::os("DRM_IOCTL_MODE_CREATEPROPBLOB (mode)", e))?;
        match v {
            property::Value::Blob(id) => Ok(PropertyBlob { dev: self, id }),
            // drm-rs returns only Blob here.
            _ => Err(KmsError::os("DRM_IOCTL_MODE_CREATEPROPBLOB", std::io::Error::other("not a blob"))),
        }
    }

    /// The DRM fourccs a writeback connector writes
    /// (`WRITEBACK_PIXEL_FORMATS`, an array of `u32`).
    ///
    /// # Errors
    /// As [`Self::blob_property`].
    pub fn writeback_formats(&self, connector: u32) -> Result<Vec<u32>, KmsError> {
        let bytes = self.blob_property(KmsObject::Connector(connector), "WRITEBACK_PIXEL_FORMATS")?;
        Ok(bytes.chunks_exact(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

pub(super) fn find<'p>(props: &'p [Property], object: KmsObject, name: &str) -> Result<&'p Property, KmsError> {
    props.iter().find(|p| p.name == name).ok_or_else(|| KmsError::NoSuchProperty {
        object,
        name: name.to_owned(),
        have: props.iter().map(|p| p.name.clone()).collect(),
    })
}
