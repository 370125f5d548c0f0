//! A port over the fake e1000 and over the fake virtio-net: frames through rbuf channels
//! both ways, byte-exact, by the same code (the layer above cannot tell the drivers apart).

use std::sync::Arc;

use rbuf::connect::pair;
use rbuf::{DataArea, Extent, Mode, PagePolicy, Pool};

use rbuf::IoRec;

use crate::e1000::{Config, Identity, SUPPORTED};
use crate::fake::virtio::{FakeVirtioNet, QEMU_FEATURES};
use crate::fake::{FakeE1000, FakeIommu};
use crate::port::Port;
use crate::{E1000, MacAddr, Nic, VirtioNet};

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

fn frame(seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&MAC.0);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..18].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in f[18..].iter_mut().enumerate() {
        *b = (seq as usize + i) as u8;
    }
    f
}

#[test]
fn frames_travel_through_rbuf_channels_both_ways() {
    // SAFETY: every area the NIC maps belongs to a channel held by the `Port`, whose
    // NIC field is dropped (and unmaps) before the channels.
    let iommu = unsafe { FakeIommu::new() };
    let dev = FakeE1000::new(iommu.clone(), MAC);
    let config = Config {
        rx_ring_size: 16,
        tx_ring_size: 16,
        ..Config::default()
    };
    let identity = Identity {
        id: SUPPORTED[0],
        qemu: false,
    };
    let nic = E1000::with_regs(dev.clone(), iommu, identity, &config, None).unwrap();
    exercise(Port::new(nic), &|f| dev.deliver(f), &|| dev.take_sent());
}

#[test]
fn frames_travel_through_rbuf_channels_both_ways_over_virtio() {
    // SAFETY: as above.
    let iommu = unsafe { FakeIommu::new() };
    let dev = FakeVirtioNet::new(iommu.clone(), MAC, QEMU_FEATURES);
    let config = crate::virtio::Config {
        rx_queue_size: 16,
        tx_queue_size: 16,
        ..crate::virtio::Config::default()
    };
    let transport = dev.transport("0000:00:05.0".parse().unwrap()).unwrap();
    let id = crate::virtio::SUPPORTED[0];
    let nic = VirtioNet::with_transport(transport, iommu, id, &config, None).unwrap();
    exercise(Port::new(nic), &|f| dev.deliver(f), &|| dev.take_sent());
}

/// 500 frames each way through a port over `nic`: `deliver` puts a frame on the wire
/// towards the NIC, `take_sent` takes what it transmitted.
fn exercise<N: Nic>(
    mut port: Port<N>,
    deliver: &dyn Fn(&[u8]) -> bool,
    take_sent: &dyn Fn() -> Vec<Vec<u8>>,
) {
    // Receive: the driver originates the data area, the application is the master.
    let rx_area = Arc::new(DataArea::create(1 << 20, PagePolicy::Shmem).unwrap());
    let mut rx_pool = Pool::slots(rx_area.len(), 2048);
    let (drv, app) = pair(Mode::Rmm, 64, rx_area, rx_pool.capacity()).unwrap();
    port.attach_rx(drv.into_peer().unwrap()).unwrap();
    let mut app_rx = app.into_master().unwrap();
    // Transmit: the application originates its own data area and is the master.
    let tx_area = Arc::new(DataArea::create(1 << 20, PagePolicy::Shmem).unwrap());
    let mut tx_pool = Pool::slots(tx_area.len(), 2048);
    let (app, drv) = pair(Mode::Tmm, 64, tx_area.clone(), tx_pool.capacity()).unwrap();
    port.attach_tx(drv.into_peer().unwrap()).unwrap();
    let mut app_tx = app.into_master().unwrap();

    const N: u32 = 500;
    let mut got = Vec::new();
    let mut recs = [IoRec::default(); 32];
    let mut delivered = 0;
    let mut sent = 0;
    let mut returned = 0;
    for round in 0..10_000 {
        // The application keeps 32 empty buffers posted.
        while app_rx.lent().len() < 32 {
            let id = rx_pool.alloc(2048).unwrap();
            let rec = rx_pool.iorec(id);
            if app_rx.send(&mut rx_pool, &[rec]).unwrap() == 0 {
                rx_pool.free(id);
                break;
            }
        }
        // The wire delivers frames; the application sends frames (3 extents each).
        if delivered < N
            && round % 2 == 0
            && deliver(&frame(delivered, 60 + delivered as usize % 1400))
        {
            delivered += 1;
        }
        if sent < N && app_tx.lent().len() < 16 {
            let f = frame(sent, 100 + sent as usize % 1300);
            let id = tx_pool.alloc(2048).unwrap();
            let base = tx_pool.extent(id).offset();
            // Header, a gap, then the payload split in two: one frame, three extents.
            tx_area.write(base as usize, &f[..14]).unwrap();
            tx_area.write(base as usize + 64, &f[14..50]).unwrap();
            tx_area.write(base as usize + 128, &f[50..]).unwrap();
            let ext = [
                Extent::new(base, 14),
                Extent::new(base + 64, 36),
                Extent::new(base + 128, (f.len() - 50) as u32),
            ];
            let rec = IoRec::from_extents(u64::from(id), &ext).unwrap();
            assert_eq!(app_tx.send(&mut tx_pool, &[rec]).unwrap(), 1);
            sent += 1;
        }
        port.step().unwrap();
        let n = app_rx.recv(&mut rx_pool, &mut recs).unwrap();
        for rec in &recs[..n] {
            let mut buf = vec![0u8; rec.total_len() as usize];
            app_rx.area().gather(rec.extents(), &mut buf).unwrap();
            got.push(buf);
            rx_pool.free(rec.tag() as u32);
        }
        returned += app_tx.reclaim(&mut tx_pool).unwrap();
        if got.len() == N as usize && returned == N as usize {
            break;
        }
    }
    assert_eq!(got.len(), N as usize, "received");
    for (i, f) in got.iter().enumerate() {
        // The NIC appends nothing the driver reports: the frame is byte-exact.
        assert_eq!(f, &frame(i as u32, 60 + i % 1400), "frame {i}");
    }
    let wire = take_sent();
    assert_eq!(wire.len(), N as usize);
    for (i, f) in wire.iter().enumerate() {
        assert_eq!(f, &frame(i as u32, 100 + i % 1300), "sent frame {i}");
    }
    assert_eq!(returned, N as usize);
    let st = port.stats();
    assert_eq!(
        (st.rx_delivered, st.tx_queued, st.tx_returned, st.refused),
        (500, 500, 500, 0)
    );
    // Every buffer is back where it belongs.
    app_rx.link().disconnect();
    app_rx.reclaim_all(&mut rx_pool);
    assert_eq!(
        rx_pool.audit(&[app_rx.lent()]).unwrap().free,
        rx_pool.capacity()
    );
    assert_eq!(
        tx_pool.audit(&[app_tx.lent()]).unwrap().free,
        tx_pool.capacity()
    );
}
