//! The data areas a NIC has registered, shared by every driver: each one's DMA mapping
//! (device-writable for receive, device-read-only for transmit), its direction, and how
//! many buffers in it the device may still reach, so an area is unmapped only when none.

#![forbid(unsafe_code)]

use std::sync::Arc;

use rbuf::{DataArea, Extent, IoRec};

use crate::Error;
use crate::dma::{DmaAccess, DmaMapping, Iommu};
use crate::nic::AreaId;
use crate::vfio::Iova;

/// At most this many data areas per NIC.
pub const MAX_AREAS: usize = 64;

/// What the NIC does with an area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// It receives into it.
    Rx,
    /// It transmits from it.
    Tx,
}

impl Direction {
    /// `RX` or `TX`, as in error messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Direction::Rx => "RX",
            Direction::Tx => "TX",
        }
    }

    /// The permission the device gets: it writes what it receives, only reads what it sends.
    fn access(self) -> DmaAccess {
        match self {
            Direction::Rx => DmaAccess::DeviceWrites,
            Direction::Tx => DmaAccess::DeviceReads,
        }
    }
}

/// One registered area.
pub(crate) struct Area {
    /// Its IOMMU mapping (unmapped when dropped).
    pub(crate) mapping: DmaMapping,
    /// Its size.
    pub(crate) len_bytes: usize,
    /// What the NIC does with it.
    pub(crate) direction: Direction,
    /// Buffers (RX) or IOrecs (TX) in flight that point into the area.
    pub(crate) in_flight: usize,
}

/// The areas of one NIC, by [`AreaId`] (a slot number, reused after removal).
#[derive(Default)]
pub(crate) struct Areas {
    slots: Vec<Option<Area>>,
}

impl Areas {
    /// Maps `area` through `iommu` with the permission `direction` needs and registers it.
    pub(crate) fn add(
        &mut self,
        iommu: &Arc<dyn Iommu>,
        area: &DataArea,
        direction: Direction,
    ) -> Result<AreaId, Error> {
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.slots.len() < MAX_AREAS => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return Err(Error::TooManyAreas { max: MAX_AREAS }),
        };
        let access = direction.access();
        let mapping = DmaMapping::of_area(iommu, area, access)?;
        log::debug!(
            "{} area {slot}: {} bytes at IOVA {} ({access:?})",
            direction.name(),
            area.len(),
            mapping.iova()
        );
        self.slots[slot] = Some(Area {
            mapping,
            len_bytes: area.len(),
            direction,
            in_flight: 0,
        });
        Ok(AreaId(slot as u16))
    }

    /// The area `id`, which must be registered for `direction`.
    pub(crate) fn get(&self, id: AreaId, direction: Direction) -> Result<&Area, Error> {
        match self.slots.get(usize::from(id.0)) {
            Some(Some(a)) if a.direction == direction => Ok(a),
            _ => Err(Error::UnknownArea {
                area: id,
                direction: direction.name(),
            }),
        }
    }

    /// The area in slot `id`, if registered (for the in-flight counts).
    pub(crate) fn get_mut(&mut self, id: u16) -> Option<&mut Area> {
        self.slots.get_mut(usize::from(id))?.as_mut()
    }

    /// The IOVA an area starts at.
    pub(crate) fn iova(&self, id: AreaId) -> Option<Iova> {
        Some(self.slots.get(usize::from(id.0))?.as_ref()?.mapping.iova())
    }

    /// The device's permission on an area.
    pub(crate) fn access(&self, id: AreaId) -> Option<DmaAccess> {
        Some(
            self.slots
                .get(usize::from(id.0))?
                .as_ref()?
                .mapping
                .access(),
        )
    }

    /// `(IOVA, bytes)` of every area the device may write.
    pub(crate) fn device_writable(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.slots
            .iter()
            .flatten()
            .filter(|a| a.mapping.access() == DmaAccess::DeviceWrites)
            .map(|a| (a.mapping.iova().0, a.len_bytes as u64))
    }

    /// Unmaps and forgets area `id`; refused while the device may still reach a buffer in
    /// it.
    pub(crate) fn remove(&mut self, id: AreaId) -> Result<(), Error> {
        let Some(Some(area)) = self.slots.get(usize::from(id.0)) else {
            return Err(Error::UnknownArea {
                area: id,
                direction: "RX or TX",
            });
        };
        if area.in_flight > 0 {
            return Err(Error::AreaBusy {
                area: id,
                in_flight: area.in_flight,
            });
        }
        // Dropping the mapping unmaps it; no descriptor points into it any more.
        self.slots[usize::from(id.0)] = None;
        Ok(())
    }
}

/// Checks an empty receive IOrec at position `index` of a batch (after `accepted` were
/// posted) against an area of `area_len` bytes: valid, one extent, at least `min_len`
/// bytes (a device may fill a whole receive buffer whatever the frame, so a shorter extent
/// would let it write past the buffer). Returns the extent.
pub(crate) fn check_rx_buffer(
    rec: &IoRec,
    index: usize,
    accepted: usize,
    area_len: usize,
    min_len: u32,
) -> Result<Extent, Error> {
    rec.validate(area_len).map_err(|source| Error::BadIoRec {
        index,
        accepted,
        source,
    })?;
    if rec.raw_count() != 1 {
        return Err(Error::Unusable {
            index,
            accepted,
            reason: "an RX IOrec names exactly one buffer",
            value: u64::from(rec.raw_count()),
            limit: 1,
        });
    }
    let e = rec.extents()[0];
    if e.len() < min_len {
        return Err(Error::Unusable {
            index,
            accepted,
            reason: "RX buffer shorter than the receive buffer size",
            value: u64::from(e.len()),
            limit: u64::from(min_len),
        });
    }
    Ok(e)
}
