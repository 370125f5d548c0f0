//! The physical limits `rbufnic bench ipc` measures rbuf against: the same two processes
//! on the same two CPUs moving the same bytes with no protocol at all, only what the
//! hardware needs (one shared word or a stamp per hand-over, the receiver's count back).
//! No validation, no accounting, no wake-ups: nothing built on shared memory can beat
//! them, so a ratio against them is what rbuf's protocol costs.
//!
//! - *Cache line*: one word each way per round trip (latency).
//! - *Ring*: rbuf's own layout without rbuf. A ring of 64-byte slots (the size of an
//!   IOrec), each naming a 64-byte message in a buffer of its own, published by a stamp in
//!   the slot; the receiver reads the slot, then every byte of the message (rate and
//!   latency).
//! - *Hand-over*: 1 MiB buffers handed over with a count each way (bulk).
//! - One core's memory read bandwidth, for reference.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Result, bail};
use rbuf::PagePolicy;
use rbuf::connect;
use rbuf::shm::Region;
use rustix::net::SocketType;

use super::ipc::{
    BULK_BYTES, BULK_DEPTH, Laps, MSG_BYTES, PONG_SLOTS, RATE_SLOTS, Session, finish, read_all,
    spin_until, unix_connect, unix_listener, warmup,
};

// ---------- the cache line ----------

/// Two 64-bit words, each in its own region written by one process only: the physical
/// limit of any shared-memory ping-pong (one cache line each way per round trip).
pub(super) fn cache_line_latency(s: &mut Session, iters: u64) -> Result<Vec<u64>> {
    let (child, sock) = s.child("bare-cache-line-pong", Stdio::null())?;
    let (ping, pong, _conn) = exchange_regions(&sock, 4096)?;
    let mut laps = Laps::start(warmup(iters), iters);
    for i in 1..=warmup(iters) + iters {
        ping.store_u64(0, i, Ordering::Release);
        spin_until(|| pong.load_u64(0, Ordering::Acquire) == i);
        laps.lap();
    }
    ping.store_u64(0, u64::MAX, Ordering::Release);
    finish(child)?;
    Ok(laps.into_ns())
}

fn child_cache_line_pong(sock: &Path) -> Result<()> {
    let (pong, ping, _conn) = connect_regions(sock, 4096)?;
    let mut last = 0;
    loop {
        let mut v = last;
        spin_until(|| {
            v = ping.load_u64(0, Ordering::Acquire);
            v != last
        });
        if v == u64::MAX {
            return Ok(());
        }
        pong.store_u64(0, v, Ordering::Release);
        last = v;
    }
}

// ---------- set-up: one region each, exchanged read-only ----------

/// Parent side of a bare set-up: creates its region of `len` bytes, sends a read-only
/// descriptor, receives the child's. Returns (ours, theirs, connection).
fn exchange_regions(sock: &Path, len: usize) -> Result<(Region, Region, OwnedFd)> {
    let listener = unix_listener(sock, SocketType::SEQPACKET)?;
    let conn = rustix::net::accept(&listener)?;
    let mine = send_region(&conn, len)?;
    let (theirs, conn) = recv_region(conn)?;
    Ok((mine, theirs, conn))
}

fn connect_regions(sock: &Path, len: usize) -> Result<(Region, Region, OwnedFd)> {
    let conn = unix_connect(sock, SocketType::SEQPACKET)?;
    let (theirs, conn) = recv_region(conn)?;
    let mine = send_region(&conn, len)?;
    Ok((mine, theirs, conn))
}

/// Creates our region of `len` bytes and sends the peer a read-only descriptor of it.
fn send_region(conn: &OwnedFd, len: usize) -> Result<Region> {
    let mine = Region::create(c"bench-bare", len, PagePolicy::PreferHuge)?;
    connect::send_with_fds(
        conn,
        &(mine.len() as u64).to_le_bytes(),
        &[mine.readonly_fd()?],
    )?;
    Ok(mine)
}

fn recv_region(conn: OwnedFd) -> Result<(Region, OwnedFd)> {
    let mut len = [0u8; 8];
    let (n, mut fds) = connect::recv_with_fds(&conn, &mut len)?;
    if n != 8 || fds.len() != 1 {
        bail!("bare set-up: got {n} bytes and {} descriptors", fds.len());
    }
    let region = Region::map_readonly(fds.remove(0), u64::from_le_bytes(len) as usize)?;
    Ok((region, conn))
}

// ---------- the hand-over ----------

/// The same buffers handed over with nothing but a count each way: the sender fills
/// buffer `i % depth` once the receiver's count says it is free, then publishes `i + 1`;
/// the receiver reads every buffer published so far, then publishes its own count once
/// (the batching the rbuf receiver does too).
pub(super) fn handover_bulk(s: &mut Session, mib: u64) -> Result<f64> {
    let (child, sock) = s.child("bare-handover", Stdio::null())?;
    let (mine, theirs, _conn) = exchange_regions(&sock, BULK_DEPTH * BULK_BYTES + 4096)?;
    let area_off = 4096;
    let start = Instant::now();
    for i in 0..mib {
        spin_until(|| i < theirs.load_u64(0, Ordering::Acquire) + BULK_DEPTH as u64);
        let off = area_off + (i as usize % BULK_DEPTH) * BULK_BYTES;
        fill_region(&mine, off, BULK_BYTES, i as u8);
        mine.store_u64(0, i + 1, Ordering::Release);
    }
    spin_until(|| theirs.load_u64(0, Ordering::Acquire) >= mib);
    let secs = start.elapsed().as_secs_f64();
    mine.store_u64(8, 1, Ordering::Release);
    finish(child)?;
    Ok((mib * BULK_BYTES as u64) as f64 / secs)
}

/// Fills `len` bytes of our own region at `offset` with `value`.
fn fill_region(region: &Region, offset: usize, len: usize, value: u8) {
    assert!(
        offset + len <= region.len(),
        "{offset} + {len} past the region"
    );
    // SAFETY: in bounds (checked above). By the protocol of each bare peer the receiver
    // is done with these bytes (its count passed them) and reads them again only after
    // we publish; nobody else writes them.
    let bytes = unsafe { std::slice::from_raw_parts_mut(region.as_ptr().add(offset), len) };
    bytes.fill(value);
}

/// `len` bytes of the peer's region at `offset`, which the peer published to us.
fn peer_bytes(region: &Region, offset: usize, len: usize) -> Result<&[u8]> {
    if offset.checked_add(len).is_none_or(|end| end > region.len()) {
        bail!(
            "bare peer named bytes {offset}+{len} past its {}-byte region",
            region.len()
        );
    }
    // SAFETY: in bounds (checked above); the sender does not write these bytes again
    // until our count passes them, and the mapping is read-only here.
    Ok(unsafe { std::slice::from_raw_parts(region.as_ptr().add(offset), len) })
}

fn child_handover(sock: &Path) -> Result<()> {
    let (mine, theirs, _conn) = connect_regions(sock, 4096)?;
    let mut next = 0u64;
    let mut sum = 0;
    loop {
        let (mut published, mut stop) = (0, false);
        spin_until(|| {
            published = theirs.load_u64(0, Ordering::Acquire);
            stop = theirs.load_u64(8, Ordering::Acquire) != 0;
            published > next || stop
        });
        if stop {
            break;
        }
        while next < published {
            let off = 4096 + (next as usize % BULK_DEPTH) * BULK_BYTES;
            sum = read_all(peer_bytes(&theirs, off, BULK_BYTES)?).wrapping_add(sum);
            next += 1;
        }
        mine.store_u64(0, next, Ordering::Release);
    }
    println!("{sum}");
    Ok(())
}

// ---------- one core's read bandwidth ----------

/// One core reading a buffer much larger than the caches, in bytes per second.
pub(super) fn read_bandwidth() -> f64 {
    let buf = vec![1u8; 256 << 20];
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let sum = read_all(std::hint::black_box(&buf));
        std::hint::black_box(sum);
        best = best.max(buf.len() as f64 / t.elapsed().as_secs_f64());
    }
    best
}

// ---------- the ring: rbuf's layout without rbuf ----------

/// Bytes per slot: an IOrec's size.
const SLOT_BYTES: usize = 64;
/// Where the slot's words live: the message's offset, its length, and (last, written
/// after them with `Release`) the stamp `seq + 1`.
const SLOT_OFFSET: usize = 0;
const SLOT_LEN: usize = 8;
const SLOT_STAMP: usize = 56;
/// Bytes per message buffer, as the rbuf runs' pool hands them out.
const BUFFER_BYTES: usize = 256;

/// The sender's region: `slots` slots, then the buffers.
fn ring_bytes(slots: usize, buffers: usize) -> usize {
    slots * SLOT_BYTES + buffers * BUFFER_BYTES
}

fn slot_at(seq: u64, slots: usize) -> usize {
    (seq as usize % slots) * SLOT_BYTES
}

/// Where buffer `buffer` lives in a region with `slots` slots.
fn buffer_at(slots: usize, buffer: usize) -> usize {
    slots * SLOT_BYTES + buffer * BUFFER_BYTES
}

/// Writes message `seq` (`len` bytes) into buffer `buffer`, names it in slot `seq` and
/// stamps the slot.
fn publish(ring: &Region, slots: usize, seq: u64, buffer: usize, len: usize) {
    let offset = buffer_at(slots, buffer);
    fill_region(ring, offset, len, seq as u8);
    let slot = slot_at(seq, slots);
    ring.store_u64(slot + SLOT_OFFSET, offset as u64, Ordering::Relaxed);
    ring.store_u64(slot + SLOT_LEN, len as u64, Ordering::Relaxed);
    // Release: the message and the slot's words become visible before the stamp.
    ring.store_u64(slot + SLOT_STAMP, seq + 1, Ordering::Release);
}

fn stamped(ring: &Region, slots: usize, seq: u64) -> bool {
    ring.load_u64(slot_at(seq, slots) + SLOT_STAMP, Ordering::Acquire) == seq + 1
}

/// A message as a slot names it.
struct Named {
    offset: usize,
    len: usize,
    /// A sum of its bytes, every one read.
    sum: u64,
}

/// Reads slot `seq` (stamped) and every byte of the message it names.
fn take(ring: &Region, slots: usize, seq: u64) -> Result<Named> {
    let slot = slot_at(seq, slots);
    let offset = ring.load_u64(slot + SLOT_OFFSET, Ordering::Relaxed) as usize;
    let len = ring.load_u64(slot + SLOT_LEN, Ordering::Relaxed) as usize;
    let sum = read_all(peer_bytes(ring, offset, len)?);
    Ok(Named { offset, len, sum })
}

/// Message rate over the ring, `batch` messages per publication: the sender waits
/// until a batch fits ([`RATE_SLOTS`] in flight), writes each message into the next of
/// twice as many buffers and stamps its slot; the receiver takes up to `batch` stamped
/// slots, reads every message, then publishes its count once (as the rbuf receiver
/// returns a batch in one run return).
pub(super) fn ring_rate(s: &mut Session, messages: u64, batch: usize) -> Result<f64> {
    let (child, sock) = s.child(&format!("bare-ring-rate-{batch}"), Stdio::null())?;
    let buffers = 2 * RATE_SLOTS;
    let (mine, theirs, _conn) = exchange_regions(&sock, ring_bytes(RATE_SLOTS, buffers))?;
    let start = Instant::now();
    let (mut head, mut tail) = (0u64, 0u64);
    while head < messages {
        let n = (batch as u64).min(messages - head);
        if head + n - tail > RATE_SLOTS as u64 {
            spin_until(|| {
                tail = theirs.load_u64(0, Ordering::Acquire);
                head + n - tail <= RATE_SLOTS as u64
            });
        }
        // Ownership of the batch's lines requested at once, as the rbuf run does.
        for seq in head..head + n {
            mine.prefetch_write(buffer_at(RATE_SLOTS, seq as usize % buffers));
            mine.prefetch_write(slot_at(seq, RATE_SLOTS));
        }
        for seq in head..head + n {
            publish(&mine, RATE_SLOTS, seq, seq as usize % buffers, MSG_BYTES);
        }
        head += n;
    }
    spin_until(|| theirs.load_u64(0, Ordering::Acquire) == messages);
    let secs = start.elapsed().as_secs_f64();
    finish(child)?;
    Ok(messages as f64 / secs)
}

fn child_ring_rate(sock: &Path, messages: u64, batch: usize) -> Result<()> {
    let (mine, theirs, _conn) = connect_regions(sock, 4096)?;
    let mut tail = 0u64;
    let mut sum = 0u64;
    while tail < messages {
        spin_until(|| stamped(&theirs, RATE_SLOTS, tail));
        let mut n = 0;
        while n < batch as u64 && tail + n < messages && stamped(&theirs, RATE_SLOTS, tail + n) {
            sum = sum.wrapping_add(take(&theirs, RATE_SLOTS, tail + n)?.sum);
            n += 1;
        }
        tail += n;
        mine.store_u64(0, tail, Ordering::Release);
    }
    println!("{sum}");
    Ok(())
}

/// Ping-pong over two rings ([`PONG_SLOTS`] slots each way): the pinger writes a 64-byte
/// message into its one buffer (the rbuf run's pool hands out the same one every time)
/// and stamps a slot naming it; the ponger reads the slot and the message and stamps a
/// slot of its own ring naming it back, which the pinger waits for.
pub(super) fn ring_latency(s: &mut Session, iters: u64) -> Result<Vec<u64>> {
    let (child, sock) = s.child("bare-ring-pong", Stdio::null())?;
    let (ping, pong, _conn) = exchange_regions(&sock, ring_bytes(PONG_SLOTS, 1))?;
    let rounds = warmup(iters) + iters;
    let mut laps = Laps::start(warmup(iters), iters);
    for seq in 0..rounds {
        publish(&ping, PONG_SLOTS, seq, 0, MSG_BYTES);
        spin_until(|| stamped(&pong, PONG_SLOTS, seq));
        laps.lap();
    }
    // An empty message says stop.
    publish(&ping, PONG_SLOTS, rounds, 0, 0);
    finish(child)?;
    Ok(laps.into_ns())
}

fn child_ring_pong(sock: &Path) -> Result<()> {
    let (pong, ping, _conn) = connect_regions(sock, 4096)?;
    let mut sum = 0u64;
    for seq in 0.. {
        spin_until(|| stamped(&ping, PONG_SLOTS, seq));
        let msg = take(&ping, PONG_SLOTS, seq)?;
        if msg.len == 0 {
            break;
        }
        sum = sum.wrapping_add(msg.sum);
        // The answer names the message back, as the rbuf peer returns its IOrec.
        let slot = slot_at(seq, PONG_SLOTS);
        pong.store_u64(slot + SLOT_OFFSET, msg.offset as u64, Ordering::Relaxed);
        pong.store_u64(slot + SLOT_LEN, msg.len as u64, Ordering::Relaxed);
        pong.store_u64(slot + SLOT_STAMP, seq + 1, Ordering::Release);
    }
    println!("{sum}");
    Ok(())
}

// ---------- the child side ----------

/// Runs the child of a bare peer, if `kind` names one.
pub(super) fn child(kind: &str, sock: &Path, messages: u64) -> Option<Result<()>> {
    Some(match kind {
        "bare-cache-line-pong" => child_cache_line_pong(sock),
        "bare-ring-rate-1" => child_ring_rate(sock, messages, 1),
        "bare-ring-rate-32" => child_ring_rate(sock, messages, 32),
        "bare-ring-pong" => child_ring_pong(sock),
        "bare-handover" => child_handover(sock),
        _ => return None,
    })
}
