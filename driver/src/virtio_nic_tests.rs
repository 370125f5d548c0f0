//! The virtio-net driver against the fake device of `fake::virtio`: bring-up in the
//! specification's order and its failure paths, receive with the header skipped, transmit
//! with the header chained in front, areas, receive modes through the control queue, and
//! notification suppression with EVENT_IDX.

use std::sync::Arc;
use std::time::Duration;

use rbuf::{DataArea, Extent, IoRec, PagePolicy};

use crate::Error;
use crate::dma::{DmaAccess, Iommu};
use crate::fake::FakeIommu;
use crate::fake::virtio::{FakeVirtioNet, QEMU_FEATURES};
use crate::nic::{IOREC_RX_ERROR, MacAddr, Nic};
use crate::pci::{PciAddress, PciId};
use crate::virtio::regs::*;
use crate::virtio::{Config, VirtioNet};

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x99]);
const ID: PciId = PciId {
    vendor: 0x1af4,
    device: 0x1041,
};

fn addr() -> PciAddress {
    "0000:00:05.0".parse().unwrap()
}

/// A fake device offering `features` and a driver brought up on it. The data areas of
/// each test are created before the NIC, so they outlive it (FakeIommu's contract).
fn setup(
    features: u64,
    config: &Config,
) -> (Arc<FakeIommu>, FakeVirtioNet, Result<VirtioNet, Error>) {
    // SAFETY: every area mapped through this IOMMU outlives the NIC that maps it: the
    // tests declare areas before the NIC, so they drop after it.
    let iommu = unsafe { FakeIommu::new() };
    let dev = FakeVirtioNet::new(Arc::clone(&iommu), MAC, features);
    let irq = config.interrupts.then(|| dev.interrupt().unwrap());
    let nic = dev.transport(addr()).and_then(|t| {
        let dyn_iommu: Arc<dyn Iommu> = iommu.clone();
        VirtioNet::with_transport(t, dyn_iommu, ID, config, irq)
    });
    (iommu, dev, nic)
}

fn area(len: usize) -> DataArea {
    DataArea::create(len, PagePolicy::Shmem).unwrap()
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    f[..6].copy_from_slice(&MAC.0);
    f
}

#[test]
fn brings_up_the_device_in_the_specification_order() {
    let (_iommu, dev, nic) = setup(QEMU_FEATURES, &Config::default());
    let mut nic = nic.unwrap();
    assert_eq!(dev.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(
        dev.accepted_features(),
        1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_CTRL_VQ
            | 1 << VIRTIO_NET_F_CTRL_RX
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_F_ACCESS_PLATFORM
    );
    assert_eq!(dev.queue(0), (true, 256));
    assert_eq!(dev.queue(1), (true, 256));
    assert_eq!(dev.queue(2), (true, 8));
    assert_eq!(nic.mac(), MAC);
    assert!(nic.link().up);
    dev.set_link(false);
    assert!(!nic.link().up);
    // Receive modes from the configuration: both off.
    assert_eq!(dev.rx_mode(), (false, false));
    assert!(matches!(
        nic.wait(Some(Duration::ZERO)),
        Err(Error::NoInterrupts)
    ));
    drop(nic);
    // Dropping the NIC resets the device: it forgets every queue.
    assert_eq!(dev.status(), 0);
    assert!(!dev.queue(0).0);
}

#[test]
fn a_device_without_access_platform_is_refused_and_marked_failed() {
    let (iommu, dev, nic) = setup(
        QEMU_FEATURES & !(1 << VIRTIO_F_ACCESS_PLATFORM),
        &Config::default(),
    );
    match nic {
        Err(Error::VirtioFeatureMissing { feature, bit, .. }) => {
            assert_eq!((feature, bit), ("VIRTIO_F_ACCESS_PLATFORM", 33));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(dev.status(), ACKNOWLEDGE | DRIVER | FAILED);
    assert_eq!(dev.accepted_features(), 0);
    assert!(!dev.queue(0).0);
    // Nothing was mapped for it.
    assert!(iommu.mappings().is_empty());
}

#[test]
fn a_device_that_clears_features_ok_is_marked_failed() {
    // SAFETY: nothing is mapped that could outlive the test.
    let iommu = unsafe { FakeIommu::new() };
    let dev = FakeVirtioNet::new(Arc::clone(&iommu), MAC, QEMU_FEATURES);
    dev.refuse_features();
    let t = dev.transport(addr()).unwrap();
    let err = VirtioNet::with_transport(t, iommu, ID, &Config::default(), None).unwrap_err();
    assert!(
        err.to_string().contains("did not accept the features"),
        "{err}"
    );
    assert_eq!(dev.status() & FAILED, FAILED);
    assert_eq!(dev.status() & DRIVER_OK, 0);
}

#[test]
fn received_frames_skip_the_header_inside_the_posted_buffer() {
    let rx_area = area(16 * 2048);
    let (_iommu, dev, nic) = setup(QEMU_FEATURES, &Config::default());
    let mut nic = nic.unwrap();
    let rx = nic.add_rx_area(&rx_area).unwrap();
    assert_eq!(nic.area_access(rx), Some(DmaAccess::DeviceWrites));
    let bufs: Vec<IoRec> = (0..4u32)
        .map(|i| IoRec::single(100 + u64::from(i), Extent::new(i * 2048, 2048)))
        .collect();
    assert_eq!(nic.rx_post(rx, &bufs).unwrap(), 4);
    let frames = [frame(60, 1), frame(1514, 2), frame(333, 3)];
    for f in &frames {
        assert!(dev.deliver(f));
    }
    let mut out = [IoRec::default(); 8];
    let b = nic.rx_poll(&mut out).unwrap();
    assert_eq!((b.area, b.count), (rx, 3));
    for (i, (rec, f)) in out.iter().zip(&frames).enumerate() {
        assert_eq!(rec.tag(), 100 + i as u64);
        assert_eq!(rec.flags(), 0);
        let e = rec.extents()[0];
        assert_eq!(e.offset(), i as u32 * 2048 + VIRTIO_NET_HDR_LEN);
        assert_eq!(e.len() as usize, f.len());
        let mut got = vec![0u8; f.len()];
        rx_area.read(e.offset() as usize, &mut got).unwrap();
        assert_eq!(&got, f);
    }
    assert!(nic.rx_poll(&mut out).is_none());
    // A device reporting fewer bytes than a header, or more than the buffer: flagged,
    // and the extent never leaves the buffer.
    assert!(dev.deliver_reporting(&frame(100, 4), Some(5)));
    let b = nic.rx_poll(&mut out).unwrap();
    assert_eq!(b.count, 1);
    assert_eq!(out[0].flags(), IOREC_RX_ERROR);
    assert_eq!(out[0].extents()[0].len(), 0);
    let again = [IoRec::single(7, Extent::new(0, 2048))];
    nic.rx_post(rx, &again).unwrap();
    assert!(dev.deliver_reporting(&frame(100, 5), Some(4000)));
    nic.rx_poll(&mut out).unwrap();
    assert_eq!(out[0].flags(), IOREC_RX_ERROR);
    let e = out[0].extents()[0];
    assert!(e.end() <= again[0].extents()[0].end());
    let s = nic.stats();
    assert_eq!((s.rx_packets, s.rx_error_buffers, s.rx_buffers), (3, 2, 5));
    assert_eq!(s.rx_bytes, (60 + 1514 + 333) as u64);
}

#[test]
fn short_buffers_and_multi_extent_rx_iorecs_are_refused() {
    let rx_area = area(8 * 2048);
    let (_iommu, _dev, nic) = setup(QEMU_FEATURES, &Config::default());
    let mut nic = nic.unwrap();
    let rx = nic.add_rx_area(&rx_area).unwrap();
    let recs = [
        IoRec::single(1, Extent::new(0, 2048)),
        IoRec::single(2, Extent::new(2048, 1000)),
    ];
    let err = nic.rx_post(rx, &recs).unwrap_err();
    assert_eq!(err.accepted(), Some(1));
    let two = IoRec::from_extents(3, &[Extent::new(4096, 2048), Extent::new(8192, 2048)]).unwrap();
    assert!(matches!(
        nic.rx_post(rx, &[two]),
        Err(Error::Unusable { .. })
    ));
    assert!(matches!(
        nic.rx_post(crate::AreaId(9), &recs),
        Err(Error::UnknownArea { .. })
    ));
    assert!(matches!(
        nic.remove_area(rx),
        Err(Error::AreaBusy { in_flight: 1, .. })
    ));
}

#[test]
fn a_three_extent_frame_goes_out_behind_a_read_only_header() {
    let tx_area = area(64 * 1024);
    let (iommu, dev, nic) = setup(QEMU_FEATURES, &Config::default());
    let mut nic = nic.unwrap();
    let tx = nic.add_tx_area(&tx_area).unwrap();
    assert_eq!(nic.area_access(tx), Some(DmaAccess::DeviceReads));
    let base = nic.area_iova(tx).unwrap().0;
    let f = frame(900, 9);
    // Stored out of order in the area; the IOrec names them in frame order.
    let parts = [(8192u32, &f[..100]), (0, &f[100..600]), (4096, &f[600..])];
    let mut rec = IoRec::new(42);
    for (off, bytes) in parts {
        tx_area.write(off as usize, bytes).unwrap();
        rec.push(Extent::new(off, bytes.len() as u32)).unwrap();
    }
    let space = nic.tx_space();
    assert_eq!(space, 128, "half of 256 free descriptors");
    assert_eq!(nic.tx_submit(tx, &[rec]).unwrap(), 1);
    assert_eq!(dev.take_sent(), vec![f.clone()]);
    let chains = dev.take_tx_chains();
    assert_eq!(chains.len(), 1);
    let c = &chains[0];
    assert_eq!(c.len(), 4);
    // The header: 12 bytes, device-read-only, in the driver's read-only page.
    assert_eq!((c[0].1, c[0].2), (VIRTIO_NET_HDR_LEN, VIRTQ_DESC_F_NEXT));
    let header_map = iommu
        .mappings()
        .into_iter()
        .find(|(iova, len, _)| c[0].0 >= iova.0 && c[0].0 < iova.0 + *len as u64)
        .unwrap();
    assert_eq!(header_map.2, DmaAccess::DeviceReads);
    let extents: Vec<(u64, u32, u16)> = c[1..].to_vec();
    assert_eq!(
        extents,
        [
            (base + 8192, 100, VIRTQ_DESC_F_NEXT),
            (base, 500, VIRTQ_DESC_F_NEXT),
            (base + 4096, 300, 0)
        ]
    );
    let mut done = [IoRec::default(); 4];
    let b = nic.tx_reclaim(&mut done).unwrap();
    assert_eq!((b.area, b.count), (tx, 1));
    assert_eq!(done[0], rec);
    assert_eq!(nic.tx_space(), space);
    let s = nic.stats();
    assert_eq!((s.tx_packets, s.tx_bytes, s.tx_iorecs), (1, 900, 1));
    // Bad TX IOrecs are refused before the device sees anything.
    let empty = IoRec::from_extents(1, &[Extent::new(0, 10), Extent::new(10, 0)]).unwrap();
    assert!(matches!(
        nic.tx_submit(tx, &[empty]),
        Err(Error::Unusable { accepted: 0, .. })
    ));
    let outside = IoRec::single(2, Extent::new(64 * 1024 - 10, 20));
    assert!(matches!(
        nic.tx_submit(tx, &[outside]),
        Err(Error::BadIoRec { .. })
    ));
    assert!(dev.take_tx_chains().is_empty());
    assert!(iommu.faults().is_empty());
}

#[test]
fn a_full_transmit_queue_takes_whole_frames_only() {
    let tx_area = area(1 << 20);
    let config = Config {
        tx_queue_size: 8,
        ..Config::default()
    };
    let (_iommu, dev, nic) = setup(QEMU_FEATURES, &config);
    let mut nic = nic.unwrap();
    let tx = nic.add_tx_area(&tx_area).unwrap();
    tx_area.write(0, &frame(600, 1)).unwrap();
    // Six-extent frames take 7 descriptors: one fits in 8, the second waits.
    let six = IoRec::from_extents(
        1,
        &(0..6)
            .map(|i| Extent::new(i * 100, 100))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(nic.tx_space(), 4);
    // The fake transmits inside the doorbell write, so reclaim between submissions.
    assert_eq!(nic.tx_submit(tx, &[six, six]).unwrap(), 1);
    let mut done = [IoRec::default(); 4];
    assert_eq!(nic.tx_reclaim(&mut done).unwrap().count, 1);
    assert_eq!(dev.take_sent().len(), 1);
}

#[test]
fn batches_never_mix_areas() {
    let a_area = area(8 * 2048);
    let b_area = area(8 * 2048);
    let (_iommu, dev, nic) = setup(QEMU_FEATURES, &Config::default());
    let mut nic = nic.unwrap();
    let a = nic.add_rx_area(&a_area).unwrap();
    let b = nic.add_rx_area(&b_area).unwrap();
    let buf = |i: u32| IoRec::single(u64::from(i), Extent::new(i * 2048, 2048));
    nic.rx_post(a, &[buf(0), buf(1)]).unwrap();
    nic.rx_post(b, &[buf(0), buf(1)]).unwrap();
    nic.rx_post(a, &[buf(2)]).unwrap();
    for i in 0..5 {
        assert!(dev.deliver(&frame(64, i)));
    }
    let mut out = [IoRec::default(); 8];
    let got: Vec<(u16, usize)> = std::iter::from_fn(|| nic.rx_poll(&mut out))
        .map(|batch| (batch.area.0, batch.count))
        .collect();
    assert_eq!(got, [(a.0, 2), (b.0, 2), (a.0, 1)]);
    nic.remove_area(b).unwrap();
}

#[test]
fn receive_modes_go_through_the_control_queue() {
    let rx_area = area(8 * 2048);
    let (_iommu, dev, nic) = setup(QEMU_FEATURES, &Config::default());
    let mut nic = nic.unwrap();
    let rx = nic.add_rx_area(&rx_area).unwrap();
    nic.rx_post(rx, &[IoRec::single(0, Extent::new(0, 2048))])
        .unwrap();
    let mut other = frame(64, 1);
    other[..6].copy_from_slice(&[0x02, 0, 0, 0, 0x77, 0x77]);
    assert!(
        !dev.deliver(&other),
        "not promiscuous: dropped by the device"
    );
    nic.set_promiscuous(true);
    assert_eq!(dev.rx_mode(), (true, false));
    assert!(dev.deliver(&other));
    nic.set_all_multicast(true);
    nic.set_promiscuous(false);
    assert_eq!(dev.rx_mode(), (false, true));
    assert_eq!(dev.notifications(2), 5, "two at bring-up, three here");
    // Without the control queue the device keeps its own (promiscuous) filter.
    let (_iommu, dev, nic) = setup(
        QEMU_FEATURES & !(1 << VIRTIO_NET_F_CTRL_VQ),
        &Config::default(),
    );
    let mut nic = nic.unwrap();
    assert!(!dev.queue(2).0);
    nic.set_promiscuous(false);
    assert_eq!(dev.rx_mode(), (true, false));
}

#[test]
fn event_idx_interrupts_once_per_wait_and_suppresses_doorbells() {
    let rx_area = area(64 * 2048);
    let config = Config {
        interrupts: true,
        ..Config::default()
    };
    let (_iommu, dev, nic) = setup(QEMU_FEATURES, &config);
    let mut nic = nic.unwrap();
    assert!(nic.event_fd().is_some());
    let rx = nic.add_rx_area(&rx_area).unwrap();
    let bufs: Vec<IoRec> = (0..32u32)
        .map(|i| IoRec::single(u64::from(i), Extent::new(i * 2048, 2048)))
        .collect();
    nic.rx_post(rx, &bufs[..16]).unwrap();
    // The device has not taken a buffer yet: it asked to hear about the first one only.
    nic.rx_post(rx, &bufs[16..]).unwrap();
    assert_eq!(
        dev.notifications(0),
        1,
        "the second batch needs no doorbell"
    );
    let mut out = [IoRec::default(); 32];
    assert!(nic.rx_poll(&mut out).is_none()); // arms: interrupt at the next frame
    assert!(!nic.wait(Some(Duration::ZERO)).unwrap());
    assert!(dev.deliver(&frame(64, 1)));
    assert!(dev.deliver(&frame(64, 2)));
    assert_eq!(dev.interrupts(), 1, "one interrupt for two frames");
    assert!(nic.wait(Some(Duration::from_secs(1))).unwrap());
    assert_eq!(nic.rx_poll(&mut out).unwrap().count, 2);
    assert!(dev.deliver(&frame(64, 3)));
    assert_eq!(dev.interrupts(), 2, "re-armed by rx_poll");
    assert!(nic.wait(Some(Duration::from_secs(1))).unwrap());
    assert_eq!(nic.stats().interrupts, 2);
}

#[test]
fn any_nic_delegates_to_the_virtio_driver() {
    let rx_area = area(4 * 2048);
    let (_iommu, dev, nic) = setup(QEMU_FEATURES, &Config::default());
    let mut any = crate::AnyNic::VirtioNet(Box::new(nic.unwrap()));
    assert_eq!(any.kind(), crate::DriverKind::VirtioNet);
    assert_eq!(any.pci_id(), ID);
    assert!(!any.is_qemu(), "a fake has no subsystem vendor");
    assert_eq!(any.mac(), MAC);
    let rx = any.add_rx_area(&rx_area).unwrap();
    any.rx_post(rx, &[IoRec::single(5, Extent::new(2048, 2048))])
        .unwrap();
    assert!(dev.deliver(&frame(70, 1)));
    let mut out = [IoRec::default(); 2];
    assert_eq!(any.rx_poll(&mut out).unwrap().count, 1);
    assert_eq!(out[0].extents()[0], Extent::new(2048 + 12, 70));
}

#[test]
fn configuration_interrupts_report_link_changes_and_a_device_that_gave_up() {
    let rx_area = area(8 * 2048);
    let config = Config {
        interrupts: true,
        ..Config::default()
    };
    let (_iommu, dev, nic) = setup(QEMU_FEATURES, &config);
    let mut nic = nic.unwrap();
    let rx = nic.add_rx_area(&rx_area).unwrap();
    nic.rx_post(rx, &[IoRec::single(1, Extent::new(0, 2048))])
        .unwrap();
    dev.set_link(false);
    assert!(nic.wait(Some(Duration::from_secs(1))).unwrap());
    assert!(!nic.link().up);
    assert!(!nic.is_broken());
    assert_eq!(nic.rx_space(), 255);
    dev.need_reset();
    assert!(nic.wait(Some(Duration::from_secs(1))).unwrap());
    assert!(nic.is_broken());
    assert_eq!((nic.rx_space(), nic.tx_space()), (0, 0));
    assert_eq!(
        nic.rx_post(rx, &[IoRec::single(2, Extent::new(2048, 2048))])
            .unwrap(),
        0
    );
    assert_eq!(nic.stats().interrupts, 2);
}
