//! The e1000 driver against the fake device and IOMMU of `crate::fake`: register programming,
//! ring logic, IOrec checks, interrupts, counters and teardown, without hardware.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbuf::{DataArea, Extent, IoRec, PagePolicy};

use crate::dma::DmaAccess;
use crate::e1000::desc::{self, TXD_CMD_EOP, TXD_CMD_IFCS, TXD_CMD_RS, TxDesc};
use crate::e1000::regs::*;
use crate::e1000::{Config, E1000, IMS_CAUSES, Identity, SUPPORTED};
use crate::fake::{FakeE1000, FakeIommu};
use crate::mmio::Regs;
use crate::vfio::Iova;
use crate::{AreaId, Batch, Error, IOREC_RX_ERROR, IOREC_RX_FRAGMENT, LinkStatus, MacAddr, Nic};

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const AREA_BYTES: usize = 1 << 20;

/// A NIC on a fake device with one RX and one TX area. Field order is drop order: the
/// NIC (and its mappings) goes before the areas, as `FakeIommu::new` requires.
struct Rig {
    nic: E1000<FakeE1000>,
    dev: FakeE1000,
    iommu: Arc<FakeIommu>,
    rx: AreaId,
    tx: AreaId,
    rx_area: DataArea,
    tx_area: DataArea,
}

fn rig_with(config: Config, dev: impl FnOnce(FakeE1000) -> FakeE1000) -> Rig {
    rig_as(config, false, dev)
}

fn rig_as(config: Config, qemu: bool, dev: impl FnOnce(FakeE1000) -> FakeE1000) -> Rig {
    // SAFETY: every area mapped through this IOMMU is owned by the `Rig`, in fields
    // declared after the NIC, so it stays mapped until the NIC has unmapped it.
    let iommu = unsafe { FakeIommu::new() };
    let dev = dev(FakeE1000::new(iommu.clone(), MAC));
    let irq = config.interrupts.then(|| dev.interrupt().unwrap());
    let identity = Identity {
        id: SUPPORTED[0],
        qemu,
    };
    let mut nic = E1000::with_regs(dev.clone(), iommu.clone(), identity, &config, irq).unwrap();
    let rx_area = DataArea::create(AREA_BYTES, PagePolicy::Shmem).unwrap();
    let tx_area = DataArea::create(AREA_BYTES, PagePolicy::Shmem).unwrap();
    let rx = nic.add_rx_area(&rx_area).unwrap();
    let tx = nic.add_tx_area(&tx_area).unwrap();
    Rig {
        nic,
        dev,
        iommu,
        rx,
        tx,
        rx_area,
        tx_area,
    }
}

fn rig(config: Config) -> Rig {
    rig_with(config, |d| d)
}

fn small_rings() -> Config {
    Config {
        rx_ring_size: 8,
        tx_ring_size: 8,
        ..Config::default()
    }
}

/// A frame to `dst` of `len` bytes whose payload depends on `seq`.
fn frame(dst: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&PEER);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&seq.to_be_bytes());
    let mut x = seq.wrapping_mul(2_654_435_761) | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f.truncate(len);
    f
}

/// Empty 2 KiB buffers at `first..first+n` of the RX area, tagged with their index.
fn empties(first: u32, n: u32) -> Vec<IoRec> {
    (first..first + n)
        .map(|i| {
            IoRec::single(
                u64::from(i),
                Extent::new(i * 2048 % AREA_BYTES as u32, 2048),
            )
        })
        .collect()
}

fn read(area: &DataArea, e: Extent) -> Vec<u8> {
    let mut v = vec![0; e.len() as usize];
    area.read(e.offset() as usize, &mut v).unwrap();
    v
}

#[test]
fn init_programs_the_registers_in_the_datasheet_order_and_values() {
    let r = rig(Config::default());
    let d = &r.dev;
    assert_eq!(r.nic.mac(), MAC);
    assert_eq!(d.peek(RAL0), 0x1200_5452);
    assert_eq!(d.peek(RAH0), 0x5634 | RAH_AV);
    let rctl = d.peek(RCTL);
    assert_eq!(rctl, RCTL_EN | RCTL_BAM | RCTL_SECRC, "{rctl:#x}");
    let tctl = d.peek(TCTL);
    assert_eq!(tctl, TCTL_EN | TCTL_PSP | (0x0F << 4) | (0x40 << 12));
    assert_eq!(d.peek(TIPG), 0x0060_200A);
    assert_eq!(d.peek(RDLEN), 256 * 16);
    assert_eq!(d.peek(TDLEN), 256 * 16);
    let rdba = u64::from(d.peek(RDBAL)) | u64::from(d.peek(RDBAH)) << 32;
    let tdba = u64::from(d.peek(TDBAL)) | u64::from(d.peek(TDBAH)) << 32;
    let maps = r.iommu.mappings();
    for base in [rdba, tdba] {
        assert!(maps.iter().any(|(iova, len, access)| iova.0 == base
            && *len == 4096
            && *access == DmaAccess::DeviceWrites));
    }
    assert!((crate::vfio::iova::LOW_RESERVED_BYTES..1 << 39).contains(&rdba));
    assert_eq!(
        (d.peek(RDH), d.peek(RDT), d.peek(TDH), d.peek(TDT)),
        (0, 0, 0, 0)
    );
    assert!((0..MTA_LEN).all(|i| d.peek(MTA + 4 * i) == 0));
    assert_eq!(d.peek(CTRL) & (CTRL_SLU | CTRL_ASDE), CTRL_SLU | CTRL_ASDE);
    assert_eq!(d.peek(IMS), 0, "polling mode leaves interrupts masked");
    assert_eq!(
        r.nic.link(),
        LinkStatus {
            up: true,
            speed_mbps: 1000,
            full_duplex: true
        }
    );
}

#[test]
fn mac_comes_from_the_eeprom_when_the_receive_address_is_invalid() {
    let r = rig_with(Config::default(), FakeE1000::without_receive_address);
    assert_eq!(r.nic.mac(), MAC);
    assert_eq!(r.dev.peek(RAH0) & RAH_AV, RAH_AV);
}

#[test]
fn init_does_not_trust_a_reset_that_resets_nothing() {
    // QEMU's model: a previous user left the rings running and RST changes nothing.
    let r = rig_with(Config::default(), |d| {
        let d = d.qemu_quirks();
        d.write32(RDH, 5);
        d.write32(RDT, 9);
        d.write32(IMS, 0xff);
        d.write32(MTA + 8, 0xdead_beef);
        d
    });
    assert_eq!((r.dev.peek(RDH), r.dev.peek(RDT)), (0, 0));
    assert_eq!(r.dev.peek(IMS), 0);
    assert_eq!(r.dev.peek(MTA + 8), 0);
}

#[test]
fn receive_returns_tags_lengths_and_bytes_in_order() {
    let mut r = rig(Config::default());
    assert_eq!(r.nic.rx_space(), 255);
    assert_eq!(r.nic.rx_post(r.rx, &empties(0, 64)).unwrap(), 64);
    assert_eq!(r.dev.peek(RDT), 64);
    let frames: Vec<Vec<u8>> = (0..40)
        .map(|i| frame(MAC.0, i, 60 + 37 * i as usize))
        .collect();
    for f in &frames {
        assert!(r.dev.deliver(f));
    }
    let mut out = [IoRec::default(); 32];
    let mut got = Vec::new();
    let b = r.nic.rx_poll(&mut out).unwrap();
    assert_eq!(
        b,
        Batch {
            area: r.rx,
            count: 32
        }
    );
    got.extend_from_slice(&out[..b.count]);
    let b = r.nic.rx_poll(&mut out).unwrap();
    assert_eq!(b.count, 8);
    got.extend_from_slice(&out[..b.count]);
    assert_eq!(got.len(), 40);
    for (i, rec) in got.iter().enumerate() {
        assert_eq!(rec.tag(), i as u64);
        assert_eq!(rec.flags(), 0);
        let e = rec.extents()[0];
        assert_eq!(e.offset(), i as u32 * 2048);
        assert_eq!(e.len() as usize, frames[i].len());
        assert_eq!(read(&r.rx_area, e), frames[i]);
    }
    assert_eq!(r.nic.rx_poll(&mut out), None);
    let s = r.nic.stats();
    assert_eq!((s.rx_packets, s.rx_buffers), (40, 40));
    assert_eq!(
        s.rx_bytes,
        frames.iter().map(|f| f.len() as u64 + 4).sum::<u64>()
    );
}

#[test]
fn short_frames_come_back_padded_to_60_bytes() {
    let mut r = rig(Config::default());
    r.nic.rx_post(r.rx, &empties(0, 1)).unwrap();
    assert!(r.dev.deliver(&frame(MAC.0, 1, 42)));
    let mut out = [IoRec::default(); 4];
    r.nic.rx_poll(&mut out).unwrap();
    assert_eq!(out[0].extents()[0].len(), 60);
}

#[test]
fn rings_wrap_many_times_with_free_running_indices() {
    let mut r = rig(small_rings());
    assert_eq!(r.nic.rx_space(), 7);
    let mut out = [IoRec::default(); 8];
    let mut next_post = 0u32;
    let mut next_seq = 0u32;
    let mut received = 0u32;
    let mut rounds = 0;
    while received < 1000 {
        rounds += 1;
        assert!(rounds < 5000, "RX stalled after {received} frames");
        let space = r.nic.rx_space() as u32;
        let n = r.nic.rx_post(r.rx, &empties(next_post % 7, space)).unwrap();
        assert_eq!(n as u32, space);
        next_post += space;
        // Deliver fewer than posted sometimes, so head and tail move unevenly.
        for _ in 0..(1 + next_seq % 7).min(space.max(1)) {
            if r.dev
                .deliver(&frame(MAC.0, next_seq, 64 + (next_seq % 900) as usize))
            {
                next_seq += 1;
            }
        }
        while let Some(b) = r.nic.rx_poll(&mut out) {
            for rec in &out[..b.count] {
                let e = rec.extents()[0];
                let expect = frame(MAC.0, received, 64 + (received % 900) as usize);
                assert_eq!(read(&r.rx_area, e), expect, "frame {received}");
                received += 1;
            }
        }
    }
    // Same through TX: 1000 single-extent frames through an 8-slot ring.
    let mut done = [IoRec::default(); 8];
    let mut sent = 0u32;
    let mut reclaimed = 0u32;
    let mut rounds = 0;
    while reclaimed < 1000 {
        rounds += 1;
        assert!(rounds < 5000, "TX stalled after {reclaimed} frames");
        let mut batch = Vec::new();
        for k in 0..3u32 {
            let seq = sent + k;
            let f = frame(PEER, seq, 60 + (seq % 1400) as usize);
            let off = (seq % 64) * 2048;
            r.tx_area.write(off as usize, &f).unwrap();
            batch.push(IoRec::single(
                u64::from(seq),
                Extent::new(off, f.len() as u32),
            ));
        }
        let n = r.nic.tx_submit(r.tx, &batch).unwrap() as u32;
        for (k, f) in r.dev.take_sent().iter().enumerate() {
            assert_eq!(
                *f,
                frame(
                    PEER,
                    sent + k as u32,
                    60 + ((sent + k as u32) % 1400) as usize
                )
            );
        }
        sent += n;
        while let Some(b) = r.nic.tx_reclaim(&mut done) {
            for rec in &done[..b.count] {
                assert_eq!(rec.tag(), u64::from(reclaimed));
                reclaimed += 1;
            }
        }
    }
}

#[test]
fn receive_errors_are_flagged_counted_and_the_buffer_returned() {
    let mut r = rig(Config::default());
    r.nic.rx_post(r.rx, &empties(0, 4)).unwrap();
    assert!(r.dev.deliver(&frame(MAC.0, 0, 100)));
    assert!(
        r.dev
            .deliver_with_errors(&frame(MAC.0, 1, 100), desc::RXD_ERR_CE)
    );
    assert!(
        r.dev
            .deliver_with_errors(&frame(MAC.0, 2, 100), desc::RXD_ERR_TCPE)
    );
    let mut out = [IoRec::default(); 4];
    let b = r.nic.rx_poll(&mut out).unwrap();
    assert_eq!(b.count, 3);
    assert_eq!(out[0].flags(), 0);
    assert_eq!(out[1].flags(), IOREC_RX_ERROR);
    assert_eq!(out[1].tag(), 1);
    assert_eq!(out[1].extents()[0].len(), 100);
    // A checksum verdict is not a frame error.
    assert_eq!(out[2].flags(), 0);
    let s = r.nic.stats();
    assert_eq!(s.rx_error_buffers, 1);
    assert_eq!(s.rx_crc_errors, 1);
    assert_eq!(s.rx_packets, 2);
}

#[test]
fn a_frame_spread_over_buffers_is_flagged_as_fragments() {
    let config = Config {
        rx_buffer_bytes: 256,
        ..Config::default()
    };
    let mut r = rig(config);
    let recs: Vec<IoRec> = (0..4)
        .map(|i| IoRec::single(i, Extent::new(i as u32 * 256, 256)))
        .collect();
    r.nic.rx_post(r.rx, &recs).unwrap();
    assert!(r.dev.deliver(&frame(MAC.0, 7, 600)));
    let mut out = [IoRec::default(); 4];
    let b = r.nic.rx_poll(&mut out).unwrap();
    assert_eq!(b.count, 3);
    let flags: Vec<u16> = out[..3].iter().map(IoRec::flags).collect();
    assert_eq!(flags, [IOREC_RX_FRAGMENT, IOREC_RX_FRAGMENT, 0]);
    let lens: Vec<u32> = out[..3].iter().map(|r| r.extents()[0].len()).collect();
    assert_eq!(lens, [256, 256, 88]);
    assert_eq!(r.nic.stats().rx_error_buffers, 2);
}

#[test]
fn rx_post_checks_every_iorec_before_writing_a_descriptor() {
    let mut r = rig(Config::default());
    let area_len = AREA_BYTES;
    let good = IoRec::single(1, Extent::new(0, 2048));
    let outside = IoRec::single(2, Extent::new(area_len as u32 - 1024, 2048));
    let small = IoRec::single(3, Extent::new(4096, 1500));
    let two = IoRec::from_extents(4, &[Extent::new(0, 2048), Extent::new(4096, 2048)]).unwrap();

    let err = r.nic.rx_post(r.rx, &[good, outside, good]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BadIoRec {
                index: 1,
                accepted: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.accepted(), Some(1));
    assert_eq!(
        r.dev.peek(RDT),
        1,
        "the accepted one was published, nothing else"
    );

    let err = r.nic.rx_post(r.rx, &[small]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unusable {
                value: 1500,
                limit: 2048,
                ..
            }
        ),
        "{err}"
    );
    let err = r.nic.rx_post(r.rx, &[two]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unusable {
                value: 2,
                limit: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        r.nic.rx_post(r.tx, &[good]),
        Err(Error::UnknownArea {
            direction: "RX",
            ..
        })
    ));
    assert!(matches!(
        r.nic.rx_post(AreaId(9), &[good]),
        Err(Error::UnknownArea { .. })
    ));
    assert_eq!(r.dev.peek(RDT), 1);
    assert_eq!(r.nic.stats().refused_iorecs, 3);
}

#[test]
fn a_full_rx_ring_stops_posting_and_drops_are_counted() {
    let mut r = rig(small_rings());
    assert_eq!(r.nic.rx_post(r.rx, &empties(0, 10)).unwrap(), 7);
    assert_eq!(r.nic.rx_space(), 0);
    assert_eq!(r.nic.rx_post(r.rx, &empties(7, 3)).unwrap(), 0);
    for i in 0..9 {
        r.dev.deliver(&frame(MAC.0, i, 80));
    }
    let s = r.nic.stats();
    assert_eq!((s.rx_packets, s.rx_missed, s.rx_no_buffer), (7, 2, 2));
}

#[test]
fn a_three_extent_iorec_is_one_frame_with_eop_and_rs_on_the_last_descriptor() {
    let mut r = rig(Config::default());
    let f = frame(PEER, 42, 1000);
    // Scatter the frame over three places in the TX area, out of order.
    let parts = [(8192u32, 0..14), (100, 14..514), (40000, 514..1000)];
    let mut extents = Vec::new();
    for (off, range) in parts.clone() {
        r.tx_area.write(off as usize, &f[range.clone()]).unwrap();
        extents.push(Extent::new(off, range.len() as u32));
    }
    let rec = IoRec::from_extents(0xabc, &extents).unwrap();
    assert_eq!(r.nic.tx_submit(r.tx, &[rec]).unwrap(), 1);
    assert_eq!(r.dev.take_sent(), vec![f]);
    let descs: Vec<TxDesc> = r
        .dev
        .take_tx_descriptors()
        .into_iter()
        .map(TxDesc::from_words)
        .collect();
    assert_eq!(descs.len(), 3);
    let base = r.nic.area_iova(r.tx).unwrap().0;
    for (d, (off, range)) in descs.iter().zip(parts.clone()) {
        assert_eq!(d.addr, base + u64::from(off));
        assert_eq!(usize::from(d.length), range.len());
    }
    assert_eq!(descs[0].cmd, TXD_CMD_IFCS);
    assert_eq!(descs[1].cmd, TXD_CMD_IFCS);
    assert_eq!(descs[2].cmd, TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS);
    let mut done = [IoRec::default(); 4];
    assert_eq!(
        r.nic.tx_reclaim(&mut done),
        Some(Batch {
            area: r.tx,
            count: 1
        })
    );
    assert_eq!(done[0], rec, "the IOrec comes back unchanged");
    assert_eq!(r.nic.tx_space(), 255);
    let s = r.nic.stats();
    assert_eq!((s.tx_packets, s.tx_bytes, s.tx_iorecs), (1, 1004, 1));
}

#[test]
fn tx_submit_is_all_or_nothing_per_iorec() {
    let mut r = rig(small_rings());
    // Keep the device from completing: TCTL off means descriptors stay in flight.
    r.dev.write32(TCTL, 0);
    let three = |tag| {
        IoRec::from_extents(
            tag,
            &[
                Extent::new(0, 60),
                Extent::new(64, 60),
                Extent::new(128, 60),
            ],
        )
        .unwrap()
    };
    assert_eq!(r.nic.tx_space(), 7);
    assert_eq!(
        r.nic
            .tx_submit(r.tx, &[three(1), three(2), three(3)])
            .unwrap(),
        2
    );
    assert_eq!(r.nic.tx_space(), 1);
    assert_eq!(r.nic.tx_submit(r.tx, &[three(3)]).unwrap(), 0);
    let mut done = [IoRec::default(); 4];
    assert_eq!(r.nic.tx_reclaim(&mut done), None, "nothing sent yet");
    r.dev.write32(TCTL, TCTL_EN);
    let b = r.nic.tx_reclaim(&mut done).unwrap();
    assert_eq!(b.count, 2);
    assert_eq!((done[0].tag(), done[1].tag()), (1, 2));
    assert_eq!(r.dev.take_sent().len(), 2);
}

#[test]
fn tx_submit_refuses_bad_iorecs_and_keeps_the_ones_before() {
    let mut r = rig(Config::default());
    let ok = IoRec::single(1, Extent::new(0, 64));
    let empty = IoRec::single(2, Extent::new(0, 0));
    let huge = IoRec::single(3, Extent::new(0, 20000));
    let outside = IoRec::single(4, Extent::new(AREA_BYTES as u32 - 10, 64));
    let none = IoRec::new(5);
    let err = r.nic.tx_submit(r.tx, &[ok, empty]).unwrap_err();
    assert_eq!(err.accepted(), Some(1));
    let hole = IoRec::from_extents(
        6,
        &[Extent::new(0, 30), Extent::new(64, 0), Extent::new(128, 30)],
    )
    .unwrap();
    assert!(matches!(
        r.nic.tx_submit(r.tx, &[hole]),
        Err(Error::Unusable { value: 1, .. })
    ));
    assert!(matches!(
        r.nic.tx_submit(r.tx, &[huge]),
        Err(Error::Unusable { value: 20000, .. })
    ));
    assert!(matches!(
        r.nic.tx_submit(r.tx, &[outside]),
        Err(Error::BadIoRec { .. })
    ));
    assert!(matches!(
        r.nic.tx_submit(r.tx, &[none]),
        Err(Error::BadIoRec { .. })
    ));
    assert!(matches!(
        r.nic.tx_submit(r.rx, &[ok]),
        Err(Error::UnknownArea {
            direction: "TX",
            ..
        })
    ));
    assert_eq!(r.dev.take_sent().len(), 1);
}

#[test]
fn completion_batches_never_mix_areas() {
    let mut r = rig(Config::default());
    let other = DataArea::create(AREA_BYTES, PagePolicy::Shmem).unwrap();
    let tx2 = r.nic.add_tx_area(&other).unwrap();
    assert_ne!(tx2, r.tx);
    let rec = |tag| IoRec::single(tag, Extent::new(0, 64));
    r.nic.tx_submit(r.tx, &[rec(1), rec(2)]).unwrap();
    r.nic.tx_submit(tx2, &[rec(3)]).unwrap();
    r.nic.tx_submit(r.tx, &[rec(4)]).unwrap();
    let mut done = [IoRec::default(); 8];
    let mut seen = Vec::new();
    while let Some(b) = r.nic.tx_reclaim(&mut done) {
        seen.push((
            b.area,
            done[..b.count].iter().map(IoRec::tag).collect::<Vec<_>>(),
        ));
    }
    assert_eq!(
        seen,
        vec![(r.tx, vec![1, 2]), (tx2, vec![3]), (r.tx, vec![4])]
    );
    // The NIC (and its mapping of `other`) must go before `other`.
    drop(r);
}

#[test]
fn areas_are_mapped_by_direction_and_the_iommu_refuses_the_rest() {
    let mut r = rig(Config::default());
    assert_eq!(r.nic.area_access(r.rx), Some(DmaAccess::DeviceWrites));
    assert_eq!(r.nic.area_access(r.tx), Some(DmaAccess::DeviceReads));
    let maps = r.iommu.mappings();
    assert_eq!(maps.len(), 4, "two rings, two areas: {maps:?}");
    let tx_iova = r.nic.area_iova(r.tx).unwrap();
    r.tx_area.write(0, &[0x5a; 4096]).unwrap();

    // Nothing the NIC may write can be targeted.
    let rx_iova = r.nic.area_iova(r.rx).unwrap();
    for bad in [
        rx_iova,
        rx_iova.add(AREA_BYTES as u64 - 1),
        Iova(rx_iova.0 - 100),
        Iova(0),
    ] {
        assert!(matches!(
            r.nic.inject_rx_descriptor(bad),
            Err(Error::FaultInjection(_))
        ));
    }
    // A descriptor pointing into the TX area: the NIC's write is refused.
    r.nic.inject_rx_descriptor(tx_iova).unwrap();
    // One pointing nowhere at all.
    r.nic.inject_rx_descriptor(Iova(0x7f_0000_0000)).unwrap();
    r.nic.rx_post(r.rx, &empties(0, 1)).unwrap();
    for i in 0..3 {
        assert!(r.dev.deliver(&frame(MAC.0, i, 500)));
    }
    let faults = r.iommu.faults();
    assert_eq!(faults.len(), 2, "{faults:?}");
    assert_eq!(faults[0].iova, tx_iova.0);
    assert!(faults[0].write);
    assert_eq!(faults[0].reason, "write to a device-read-only mapping");
    assert_eq!(faults[1].iova, 0x7f_0000_0000);
    assert_eq!(faults[1].reason, "not mapped");
    let mut buf = vec![0u8; 4096];
    r.tx_area.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x5a), "TX area unchanged");
    // Injected completions are consumed, the real one returned.
    let mut out = [IoRec::default(); 4];
    let b = r.nic.rx_poll(&mut out).unwrap();
    assert_eq!((b.count, out[0].tag()), (1, 0));
    assert_eq!(r.nic.raw_completions(), 2);
    assert_eq!(read(&r.rx_area, out[0].extents()[0]), frame(MAC.0, 2, 500));
}

#[test]
fn a_read_only_area_cannot_be_an_rx_area() {
    let mut r = rig(Config::default());
    let ro = DataArea::open_readonly(r.tx_area.readonly_fd().unwrap(), AREA_BYTES).unwrap();
    assert!(matches!(
        r.nic.add_rx_area(&ro),
        Err(Error::AreaNotWritable { .. })
    ));
    // But it can be transmitted from: the driver is the receiver of a TMM channel.
    let id = r.nic.add_tx_area(&ro).unwrap();
    r.tx_area.write(0, &frame(PEER, 1, 70)).unwrap();
    r.nic
        .tx_submit(id, &[IoRec::single(9, Extent::new(0, 70))])
        .unwrap();
    assert_eq!(r.dev.take_sent(), vec![frame(PEER, 1, 70)]);
    let mut done = [IoRec::default(); 1];
    r.nic.tx_reclaim(&mut done).unwrap();
    r.nic.remove_area(id).unwrap();
    drop(r);
    drop(ro);
}

#[test]
fn areas_are_removed_only_when_idle() {
    let mut r = rig(Config::default());
    r.nic.rx_post(r.rx, &empties(0, 2)).unwrap();
    let err = r.nic.remove_area(r.rx).unwrap_err();
    assert!(matches!(err, Error::AreaBusy { in_flight: 2, .. }), "{err}");
    assert_eq!(err.accepted(), None);
    r.dev.deliver(&frame(MAC.0, 0, 64));
    r.dev.deliver(&frame(MAC.0, 1, 64));
    let mut out = [IoRec::default(); 2];
    r.nic.rx_poll(&mut out).unwrap();
    let before = r.iommu.mappings().len();
    r.nic.remove_area(r.rx).unwrap();
    assert_eq!(r.iommu.mappings().len(), before - 1);
    assert!(matches!(
        r.nic.remove_area(r.rx),
        Err(Error::UnknownArea { .. })
    ));
    assert!(matches!(
        r.nic.rx_post(r.rx, &empties(0, 1)),
        Err(Error::UnknownArea { .. })
    ));
    // The slot is reused.
    let again = r.nic.add_rx_area(&r.rx_area).unwrap();
    assert_eq!(again, r.rx);
}

#[test]
fn promiscuous_and_all_multicast_switch_the_filter() {
    let mut r = rig(Config::default());
    r.nic.rx_post(r.rx, &empties(0, 8)).unwrap();
    let stranger = [0x02, 1, 2, 3, 4, 5];
    let multicast = [0x01, 0x00, 0x5e, 0, 0, 1];
    assert!(!r.dev.deliver(&frame(stranger, 0, 64)));
    assert!(!r.dev.deliver(&frame(multicast, 0, 64)));
    assert!(
        r.dev.deliver(&frame([0xff; 6], 0, 64)),
        "broadcast is accepted"
    );
    r.nic.set_all_multicast(true);
    assert_eq!(r.dev.peek(RCTL) & (RCTL_UPE | RCTL_MPE), RCTL_MPE);
    assert!(r.dev.deliver(&frame(multicast, 1, 64)));
    assert!(!r.dev.deliver(&frame(stranger, 1, 64)));
    r.nic.set_promiscuous(true);
    assert!(r.dev.deliver(&frame(stranger, 2, 64)));
    r.nic.set_promiscuous(false);
    assert_eq!(
        r.dev.peek(RCTL) & (RCTL_UPE | RCTL_MPE),
        RCTL_MPE,
        "all-multicast stays"
    );
    r.nic.set_all_multicast(false);
    assert_eq!(r.dev.peek(RCTL) & (RCTL_UPE | RCTL_MPE), 0);
    assert_eq!(r.dev.peek(RCTL) & RCTL_EN, RCTL_EN);
}

#[test]
fn counters_accumulate_across_clear_on_read_and_qemu_sticky_registers() {
    for qemu in [false, true] {
        let mut r = rig_as(
            small_rings(),
            qemu,
            |d| if qemu { d.qemu_quirks() } else { d },
        );
        for round in 0..3u32 {
            r.nic.rx_post(r.rx, &empties(0, 7)).unwrap();
            for i in 0..9 {
                r.dev.deliver(&frame(MAC.0, i, 100));
            }
            let mut out = [IoRec::default(); 8];
            while r.nic.rx_poll(&mut out).is_some() {}
            let s = r.nic.stats();
            let n = u64::from(round + 1);
            assert_eq!(
                (s.rx_packets, s.rx_missed, s.rx_no_buffer),
                (7 * n, 2 * n, 2 * n),
                "qemu={qemu}"
            );
            assert_eq!(s.rx_bytes, 7 * 104 * n);
            assert_eq!(s.rx_total_packets, 7 * n);
        }
    }
}

#[test]
fn interrupt_mode_sleeps_until_the_nic_interrupts() {
    let mut r = rig(Config {
        interrupts: true,
        ..Config::default()
    });
    assert_eq!(r.dev.peek(IMS), IMS_CAUSES);
    assert!(r.nic.event_fd().is_some());
    let t = Instant::now();
    assert!(!r.nic.wait(Some(Duration::from_millis(30))).unwrap());
    assert!(t.elapsed() >= Duration::from_millis(25));
    r.nic.rx_post(r.rx, &empties(0, 4)).unwrap();
    assert!(r.dev.deliver(&frame(MAC.0, 0, 64)));
    assert!(r.dev.line());
    assert!(r.nic.wait(Some(Duration::from_secs(5))).unwrap());
    assert!(!r.dev.line(), "reading ICR lowered the line");
    assert_eq!(r.dev.peek(ICR), 0);
    let mut out = [IoRec::default(); 4];
    assert_eq!(r.nic.rx_poll(&mut out).unwrap().count, 1);
    // A second frame raises it again (a new edge).
    assert!(r.dev.deliver(&frame(MAC.0, 1, 64)));
    assert!(r.nic.wait(Some(Duration::from_secs(5))).unwrap());
    r.dev.set_link(false);
    assert!(r.nic.wait(Some(Duration::from_secs(5))).unwrap());
    assert!(!r.nic.link().up);
    assert_eq!(r.nic.stats().interrupts, 3);
}

#[test]
fn polling_mode_has_no_wait() {
    let mut r = rig(Config::default());
    assert!(matches!(r.nic.wait(None), Err(Error::NoInterrupts)));
    assert!(r.nic.event_fd().is_none());
}

#[test]
fn bad_configurations_are_refused() {
    // SAFETY: nothing is mapped through this IOMMU beyond the NIC's own rings.
    let iommu = unsafe { FakeIommu::new() };
    let dev = FakeE1000::new(iommu.clone(), MAC);
    let id = Identity {
        id: SUPPORTED[0],
        qemu: false,
    };
    for (config, what) in [
        (
            Config {
                rx_ring_size: 100,
                ..Config::default()
            },
            "rx_ring_size",
        ),
        (
            Config {
                tx_ring_size: 8192,
                ..Config::default()
            },
            "tx_ring_size",
        ),
        (
            Config {
                rx_buffer_bytes: 1500,
                ..Config::default()
            },
            "rx_buffer_bytes",
        ),
    ] {
        match E1000::with_regs(dev.clone(), iommu.clone(), id, &config, None) {
            Err(Error::BadConfig { what: w, .. }) => assert_eq!(w, what),
            other => panic!("{other:?}"),
        }
    }
    let irq_config = Config {
        interrupts: true,
        ..Config::default()
    };
    assert!(matches!(
        E1000::with_regs(dev.clone(), iommu.clone(), id, &irq_config, None),
        Err(Error::NoInterrupts)
    ));
    assert!(iommu.mappings().is_empty());
}

#[test]
fn drop_stops_the_nic_before_unmapping_everything() {
    let r = rig(Config {
        interrupts: true,
        ..Config::default()
    });
    let Rig {
        nic,
        dev,
        iommu,
        rx_area,
        tx_area,
        ..
    } = r;
    assert_eq!(iommu.mappings().len(), 4);
    drop(nic);
    assert_eq!(dev.peek(RCTL) & RCTL_EN, 0);
    assert_eq!(dev.peek(TCTL) & TCTL_EN, 0);
    assert_eq!(dev.peek(IMS), 0);
    assert!(iommu.mappings().is_empty());
    // A frame arriving now goes nowhere.
    assert!(!dev.deliver(&frame(MAC.0, 0, 64)));
    drop((rx_area, tx_area));
}

#[test]
fn a_real_nic_can_move_to_a_driver_thread() {
    fn send<T: Send>() {}
    send::<E1000<crate::mmio::Bar>>();
    send::<crate::vfio::Device>();
    send::<crate::dma::DmaMapping>();
}
