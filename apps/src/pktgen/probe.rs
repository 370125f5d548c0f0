//! The frames `rbufnic pktgen` sends: Ethernet + IPv4 + UDP, the flow in the UDP source
//! port, and in the payload a magic number, a sequence number and the send time.
//!
//! ```text
//!  0  destination MAC          6  source MAC            12  EtherType 0x0800
//! 14  IPv4 header (20 B, no options, DF, TTL 64, UDP, header checksum)
//! 34  UDP source port = FLOW_PORT_BASE + flow, destination port 9 (discard), length,
//!     checksum 0 (none, allowed for IPv4)
//! 42  magic 0x5242 ("RB")     44  sequence number, u64 LE   52  send time in ns, u64 LE
//! 60  fill: byte i of the frame is (i as u8) up to the frame's end
//! ```
//!
//! The 60-byte minimum (64 on the wire with the FCS) holds everything; bigger frames carry
//! a fill the receiver checks byte for byte, so a corrupted frame is counted, not trusted.
//! Everything but the flow port, the sequence number and the time is the same in every
//! frame of one size (the IPv4 identification is 0 with DF set, so the header checksum is
//! constant too): a transmit slot gets its template once, and each send writes 18 bytes.

use std::net::Ipv4Addr;

use driver::MacAddr;

/// Smallest probe frame (without FCS).
pub const MIN_FRAME: usize = 60;
/// Largest probe frame (without FCS; no jumbo frames).
pub const MAX_FRAME: usize = 1514;
/// First UDP source port; flow `f` uses `FLOW_PORT_BASE + f`.
pub const FLOW_PORT_BASE: u16 = 1024;
/// Most flows: the source ports up to 65535.
pub const MAX_FLOWS: u32 = 65536 - FLOW_PORT_BASE as u32;
/// UDP destination port (discard).
pub const DST_PORT: u16 = 9;
/// Marks a probe in the payload.
pub const MAGIC: u16 = 0x5242;

const ETHERTYPE_IPV4: u16 = 0x0800;
const IP_OFF: usize = 14;
const UDP_OFF: usize = 34;
const SPORT_OFF: usize = UDP_OFF;
const MAGIC_OFF: usize = 42;
const SEQ_OFF: usize = 44;
const TIME_OFF: usize = 52;
const FILL_OFF: usize = 60;

/// The per-frame fields of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Flow number (0-based).
    pub flow: u16,
    /// Sequence number, counting every probe sent, over all flows.
    pub seq: u64,
    /// Send time in ns on the sender's clock.
    pub sent_ns: u64,
}

/// Addresses of the probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// Destination MAC.
    pub dst_mac: MacAddr,
    /// Source MAC (the sending port's).
    pub src_mac: MacAddr,
    /// Source IPv4 address.
    pub src_ip: Ipv4Addr,
    /// Destination IPv4 address.
    pub dst_ip: Ipv4Addr,
}

/// Writes the constant part of a probe of `frame.len()` bytes (60..=1514).
pub fn template(frame: &mut [u8], a: &Addresses) {
    let len = frame.len();
    assert!((MIN_FRAME..=MAX_FRAME).contains(&len), "probe size {len}");
    frame[0..6].copy_from_slice(&a.dst_mac.0);
    frame[6..12].copy_from_slice(&a.src_mac.0);
    frame[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip_len = (len - IP_OFF) as u16;
    let ip = &mut frame[IP_OFF..UDP_OFF];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, // version 4, IHL 5, DSCP 0, total length below
        0, 0, 0x40, 0, // identification 0, DF, fragment offset 0
        64, 17, 0, 0, // TTL, protocol UDP, checksum below
        0, 0, 0, 0, 0, 0, 0, 0, // addresses below
    ]);
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[12..16].copy_from_slice(&a.src_ip.octets());
    ip[16..20].copy_from_slice(&a.dst_ip.octets());
    let sum = internet_checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp_len = (len - UDP_OFF) as u16;
    let udp = &mut frame[UDP_OFF..MAGIC_OFF];
    udp[2..4].copy_from_slice(&DST_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    frame[MAGIC_OFF..SEQ_OFF].copy_from_slice(&MAGIC.to_be_bytes());
    for (i, b) in frame.iter_mut().enumerate().skip(FILL_OFF) {
        *b = i as u8;
    }
}

/// The bytes a send writes over the template, and where: `(offset, bytes)` pairs that a
/// caller writes into the slot (source port, then sequence number and time).
pub fn stamp(p: &Probe) -> [(usize, [u8; 16]); 2] {
    let mut port = [0u8; 16];
    port[..2].copy_from_slice(&(FLOW_PORT_BASE + p.flow).to_be_bytes());
    let mut seq_time = [0u8; 16];
    seq_time[..8].copy_from_slice(&p.seq.to_le_bytes());
    seq_time[8..].copy_from_slice(&p.sent_ns.to_le_bytes());
    [(SPORT_OFF, port), (SEQ_OFF, seq_time)]
}

/// Lengths of the two [`stamp`] writes.
pub const STAMP_LENS: [usize; 2] = [2, 16];

/// What a received frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// A probe, intact.
    Probe(Probe),
    /// A probe whose headers or fill do not match what was sent.
    Corrupt,
    /// Not a probe (other traffic on the wire).
    Other,
}

/// Classifies a received frame. `frame` is the whole frame as received (no FCS).
pub fn parse(frame: &[u8]) -> Received {
    if frame.len() < MIN_FRAME
        || frame[12..14] != ETHERTYPE_IPV4.to_be_bytes()
        || frame[IP_OFF] != 0x45
        || frame[IP_OFF + 9] != 17
        || frame[UDP_OFF + 2..UDP_OFF + 4] != DST_PORT.to_be_bytes()
        || frame[MAGIC_OFF..SEQ_OFF] != MAGIC.to_be_bytes()
    {
        return Received::Other;
    }
    let be16 = |o: usize| u16::from_be_bytes([frame[o], frame[o + 1]]);
    let le64 = |o: usize| u64::from_le_bytes(frame[o..o + 8].try_into().expect("8 bytes"));
    let intact = usize::from(be16(IP_OFF + 2)) == frame.len() - IP_OFF
        && usize::from(be16(UDP_OFF + 4)) == frame.len() - UDP_OFF
        && internet_checksum(&frame[IP_OFF..UDP_OFF]) == 0
        && be16(UDP_OFF + 6) == 0
        && be16(SPORT_OFF) >= FLOW_PORT_BASE
        && frame
            .iter()
            .enumerate()
            .skip(FILL_OFF)
            .all(|(i, &b)| b == i as u8);
    if !intact {
        return Received::Corrupt;
    }
    Received::Probe(Probe {
        flow: be16(SPORT_OFF) - FLOW_PORT_BASE,
        seq: le64(SEQ_OFF),
        sent_ns: le64(TIME_OFF),
    })
}

/// The RFC 1071 checksum of `bytes` (0 when a header with its checksum is intact).
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Addresses {
        Addresses {
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            src_ip: Ipv4Addr::new(10, 0, 0, 1),
            dst_ip: Ipv4Addr::new(10, 0, 0, 2),
        }
    }

    fn probe_frame(len: usize, p: &Probe) -> Vec<u8> {
        let mut f = vec![0u8; len];
        template(&mut f, &addrs());
        for ((off, bytes), n) in stamp(p).iter().zip(STAMP_LENS) {
            f[*off..off + n].copy_from_slice(&bytes[..n]);
        }
        f
    }

    #[test]
    fn probes_of_every_size_round_trip_and_their_ip_header_is_valid() {
        let p = Probe {
            flow: 7,
            seq: 0x0102_0304_0506_0708,
            sent_ns: 123_456_789,
        };
        for len in [MIN_FRAME, 61, 64, 128, 1000, MAX_FRAME] {
            let f = probe_frame(len, &p);
            assert_eq!(parse(&f), Received::Probe(p), "{len}");
            assert_eq!(internet_checksum(&f[IP_OFF..UDP_OFF]), 0);
            assert_eq!(&f[34..36], &(1024u16 + 7).to_be_bytes());
        }
        // A known header: 10.0.0.1 -> 10.0.0.2, 46 bytes, DF, TTL 64, UDP.
        let f = probe_frame(60, &p);
        assert_eq!(&f[IP_OFF + 10..IP_OFF + 12], &[0x26, 0xbd]);
    }

    #[test]
    fn any_flipped_byte_makes_a_probe_corrupt_or_other() {
        let p = Probe {
            flow: 0,
            seq: 5,
            sent_ns: 9,
        };
        let good = probe_frame(200, &p);
        for i in 12..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            let got = parse(&bad);
            // Bytes outside the checked ones only change the probe's own fields.
            let own_field =
                (SPORT_OFF..SPORT_OFF + 2).contains(&i) || (SEQ_OFF..FILL_OFF).contains(&i);
            if own_field {
                assert!(matches!(got, Received::Probe(q) if q != p), "{i}: {got:?}");
            } else {
                assert!(
                    matches!(got, Received::Corrupt | Received::Other),
                    "{i}: {got:?}"
                );
            }
        }
        assert_eq!(parse(&good[..59]), Received::Other);
        assert_eq!(parse(&[0u8; 100]), Received::Other);
    }
}
