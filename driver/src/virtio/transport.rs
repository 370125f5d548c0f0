//! The virtio-pci modern transport (4.1): the structures the capabilities point to, mapped
//! from their BARs, and the accesses the specification defines on them. Every field is
//! accessed with its own width (4.1.3.1), 64-bit fields as two 32-bit halves, low first.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use crate::Error;
use crate::mmio::Window;
use crate::pci::PciAddress;
use crate::vfio::Device;

use super::caps::{CapRegion, VirtioCaps};
use super::regs::*;

/// A BAR as the transport uses it.
type BoxedWindow = Box<dyn Window>;

/// The mapped structures of one device.
pub struct Transport {
    addr: PciAddress,
    bars: [Option<BoxedWindow>; 6],
    caps: VirtioCaps,
}

impl Transport {
    /// Maps every BAR the capabilities name and checks that each structure lies inside
    /// its BAR and the common configuration is long enough.
    pub fn new(device: &Device, caps: VirtioCaps) -> Result<Transport, Error> {
        let mut bars: Vec<(u8, BoxedWindow)> = Vec::new();
        for r in [caps.common, caps.notify, caps.isr, caps.device] {
            if r.bar <= 5 && !bars.iter().any(|(i, _)| *i == r.bar) {
                bars.push((r.bar, Box::new(device.bar(u32::from(r.bar))?)));
            }
        }
        Transport::with_windows(device.address(), caps, bars)
    }

    /// A transport over register windows given as `(BAR number, window)` (a fake device
    /// in tests; [`Transport::new`] maps a real device's), with the same checks.
    pub fn with_windows(
        addr: PciAddress,
        caps: VirtioCaps,
        windows: Vec<(u8, BoxedWindow)>,
    ) -> Result<Transport, Error> {
        let mut bars: [Option<BoxedWindow>; 6] = Default::default();
        for (index, w) in windows {
            if let Some(slot) = bars.get_mut(usize::from(index)) {
                *slot = Some(w);
            }
        }
        let regions = [
            (
                "common configuration",
                caps.common,
                u64::from(COMMON_CFG_LEN),
            ),
            ("notification", caps.notify, 2),
            ("ISR status", caps.isr, 1),
            ("device configuration", caps.device, 8),
        ];
        for (what, r, min_len) in regions {
            let bar_len = bars
                .get(usize::from(r.bar))
                .and_then(Option::as_ref)
                .map_or(0, |w| w.window_bytes());
            let end = r.end().unwrap_or(u64::MAX);
            if end > bar_len || u64::from(r.length) < min_len {
                log::error!(
                    "{addr}: virtio {what} structure {r:?} does not fit BAR of {bar_len:#x} bytes"
                );
                return Err(Error::Virtio {
                    addr,
                    what: "structure outside its BAR or too short",
                    value: u64::from(r.offset),
                });
            }
        }
        Ok(Transport { addr, bars, caps })
    }

    fn bar(&self, r: CapRegion) -> &dyn Window {
        // `with_windows` checked that every BAR a region names is there.
        self.bars[usize::from(r.bar)]
            .as_deref()
            .expect("BAR checked in Transport::with_windows")
    }

    fn common(&self, field: u32) -> (&dyn Window, u32) {
        (self.bar(self.caps.common), self.caps.common.offset + field)
    }

    /// Reads an 8-bit common configuration field.
    pub fn read8(&self, field: u32) -> u8 {
        let (bar, at) = self.common(field);
        bar.read8(at)
    }

    /// Reads a 16-bit common configuration field.
    pub fn read16(&self, field: u32) -> u16 {
        let (bar, at) = self.common(field);
        bar.read16(at)
    }

    /// Reads a 32-bit common configuration field.
    pub fn read32(&self, field: u32) -> u32 {
        let (bar, at) = self.common(field);
        bar.read32(at)
    }

    /// Writes an 8-bit common configuration field.
    pub fn write8(&self, field: u32, value: u8) {
        let (bar, at) = self.common(field);
        bar.write8(at, value);
    }

    /// Writes a 16-bit common configuration field.
    pub fn write16(&self, field: u32, value: u16) {
        let (bar, at) = self.common(field);
        bar.write16(at, value);
    }

    /// Writes a 32-bit common configuration field.
    pub fn write32(&self, field: u32, value: u32) {
        let (bar, at) = self.common(field);
        bar.write32(at, value);
    }

    /// Writes a 64-bit common configuration field as two 32-bit halves, low first.
    pub fn write64(&self, field: u32, value: u64) {
        self.write32(field, value as u32);
        self.write32(field + 4, (value >> 32) as u32);
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.read8(DEVICE_STATUS)
    }

    /// Sets bits in the device status byte (3.1.1: each step adds its bit).
    pub fn add_status(&self, bits: u8) {
        let s = self.status();
        self.write8(DEVICE_STATUS, s | bits);
    }

    /// Resets the device: writes 0 to `device_status` and waits until it reads 0 (4.1.4.3.2).
    pub fn reset(&self) -> Result<(), Error> {
        self.write8(DEVICE_STATUS, 0);
        let start = Instant::now();
        while self.status() != 0 {
            if start.elapsed() > Duration::from_secs(1) {
                return Err(Error::Timeout {
                    what: "virtio device reset",
                    waited_ms: 1000,
                });
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    /// All 64 feature bits the device offers.
    pub fn device_features(&self) -> u64 {
        self.write32(DEVICE_FEATURE_SELECT, 0);
        let lo = self.read32(DEVICE_FEATURE);
        self.write32(DEVICE_FEATURE_SELECT, 1);
        let hi = self.read32(DEVICE_FEATURE);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    /// Writes the 64 feature bits the driver accepts.
    pub fn set_driver_features(&self, features: u64) {
        self.write32(DRIVER_FEATURE_SELECT, 0);
        self.write32(DRIVER_FEATURE, features as u32);
        self.write32(DRIVER_FEATURE_SELECT, 1);
        self.write32(DRIVER_FEATURE, (features >> 32) as u32);
    }

    /// Reads `N` bytes of device configuration at `offset` consistently: again until
    /// `config_generation` is the same before and after (4.1.4.3.1).
    pub fn device_config<const N: usize>(&self, offset: u32) -> Result<[u8; N], Error> {
        let r = self.caps.device;
        let bar = self.bar(r);
        for _ in 0..100 {
            let before = self.read8(CONFIG_GENERATION);
            let mut out = [0u8; N];
            for (i, b) in out.iter_mut().enumerate() {
                *b = bar.read8(r.offset + offset + i as u32);
            }
            if self.read8(CONFIG_GENERATION) == before {
                return Ok(out);
            }
        }
        Err(Error::Virtio {
            addr: self.addr,
            what: "configuration keeps changing (config_generation)",
            value: u64::from(offset),
        })
    }

    /// The BAR offset of a queue's notification address, from its `queue_notify_off`
    /// (4.1.4.4), checked against the notification structure.
    pub fn notify_offset(&self, queue_notify_off: u16) -> Result<u32, Error> {
        let n = self.caps.notify;
        let at = u64::from(queue_notify_off) * u64::from(self.caps.notify_off_multiplier);
        if at + 2 > u64::from(n.length) {
            return Err(Error::Virtio {
                addr: self.addr,
                what: "queue notification address outside the notification structure",
                value: at,
            });
        }
        Ok(n.offset + at as u32)
    }

    /// Notifies the device that queue `queue` has new buffers (4.1.5.2: the queue index,
    /// 16 bits, to its notification address).
    pub fn notify(&self, notify_offset: u32, queue: u16) {
        self.bar(self.caps.notify).write16(notify_offset, queue);
    }

    /// The device's PCI address.
    pub fn address(&self) -> PciAddress {
        self.addr
    }

    /// The capabilities this transport was built from.
    pub fn caps(&self) -> &VirtioCaps {
        &self.caps
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("addr", &self.addr)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}
