//! Deterministic test frames: every frame is a pure function of `(seed, seq)`, so a sender
//! and a receiver that share the seed can produce and check frames byte for byte without
//! talking to each other.
//!
//! Layout (all integers little-endian except the EtherType):
//!
//! | offset | len | field |
//! |---|---|---|
//! | 0 | 6 | destination MAC |
//! | 6 | 6 | source MAC |
//! | 12 | 2 | EtherType [`ETHERTYPE`] (0x88b5, IEEE local experimental), big-endian |
//! | 14 | 4 | magic [`MAGIC`] |
//! | 18 | 8 | seed |
//! | 26 | 8 | sequence number |
//! | 34 | 2 | total frame length in bytes (header to CRC, no FCS) |
//! | 36 | 2 | reserved, zero |
//! | 38 | len − 42 | pseudo-random bytes from `(seed, seq)` |
//! | len − 4 | 4 | CRC-32 (IEEE) of bytes 12 .. len − 4 |
//!
//! The frame length itself is drawn from `(seed, seq)` within the generator's range, so a
//! receiver knows the exact length to expect. The CRC skips the MAC addresses so frames stay
//! checkable after a forwarder rewrote them ([`FrameGen::verify_payload`]).
//!
//! This module depends only on `std`, `crc32fast` and `thiserror`, and builds without the
//! crate's `harness` feature, so guest-side programs can generate and check the same frames.

use std::fmt;

/// EtherType of test frames: IEEE 802 "local experimental EtherType 1".
pub const ETHERTYPE: u16 = 0x88b5;
/// Magic bytes at the start of the test header.
pub const MAGIC: [u8; 4] = *b"RBNF";
/// Length of the Ethernet header (two MACs and the EtherType).
pub const ETH_HEADER_LEN: usize = 14;
/// Length of the test header that follows the Ethernet header.
pub const TEST_HEADER_LEN: usize = 24;
/// Length of the CRC trailer.
pub const CRC_LEN: usize = 4;
/// Smallest frame the generator makes: the Ethernet minimum without FCS, so no NIC pads it.
pub const MIN_FRAME_LEN: usize = 60;
/// Largest frame the generator makes: a 9000-byte jumbo payload plus the Ethernet header.
pub const MAX_FRAME_LEN: usize = 9014;
/// Largest standard (non-jumbo) frame without FCS.
pub const STD_MAX_FRAME_LEN: usize = 1514;

/// Byte ranges of the header fields.
mod field {
    use std::ops::Range;

    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const MAGIC: Range<usize> = 14..18;
    pub const SEED: Range<usize> = 18..26;
    pub const SEQ: Range<usize> = 26..34;
    pub const LEN: Range<usize> = 34..36;
    pub const RESERVED: Range<usize> = 36..38;
    pub const PAYLOAD_START: usize = 38;
    /// Start of the bytes the CRC covers (the EtherType onwards).
    pub const CRC_START: usize = 12;
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The broadcast address ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// A locally administered unicast address in QEMU's 52:54:00 range ending in `last`.
    pub const fn qemu(last: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, last])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a frame is not the expected test frame (or why a generator cannot be built).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length range is empty or outside `MIN_FRAME_LEN..=MAX_FRAME_LEN`.
    #[error(
        "invalid frame length range {min_len}..={max_len} (allowed {MIN_FRAME_LEN}..={MAX_FRAME_LEN})"
    )]
    InvalidLenRange {
        /// Requested minimum length.
        min_len: usize,
        /// Requested maximum length.
        max_len: usize,
    },
    /// The caller's buffer cannot hold the frame.
    #[error("buffer of {buf_len} bytes is too small for frame seq {seq} of {frame_len} bytes")]
    BufferTooSmall {
        /// Sequence number of the frame.
        seq: u64,
        /// Length the frame needs.
        frame_len: usize,
        /// Length of the buffer given.
        buf_len: usize,
    },
    /// The frame is shorter than the headers plus CRC.
    #[error("frame of {len} bytes is too short for a test frame")]
    TooShort {
        /// Length of the frame.
        len: usize,
    },
    /// The EtherType or magic is not that of a test frame.
    #[error("not a test frame (EtherType {ethertype:#06x})")]
    NotTestFrame {
        /// The EtherType found.
        ethertype: u16,
    },
    /// The frame belongs to another stream.
    #[error("seed mismatch: expected {expected:#x}, found {found:#x}")]
    WrongSeed {
        /// The verifier's seed.
        expected: u64,
        /// The seed in the frame.
        found: u64,
    },
    /// The length field, the generator's length for this seq and the frame's length disagree.
    #[error(
        "frame seq {seq}: length {frame_len} bytes, header says {header_len}, expected {expected_len}"
    )]
    LenMismatch {
        /// Sequence number in the frame.
        seq: u64,
        /// Actual length of the frame.
        frame_len: usize,
        /// Length in the header field.
        header_len: usize,
        /// Length the generator makes for this seq.
        expected_len: usize,
    },
    /// The reserved field is not zero.
    #[error("frame seq {seq}: reserved field is {found:#06x}")]
    ReservedNotZero {
        /// Sequence number in the frame.
        seq: u64,
        /// The reserved field's value.
        found: u16,
    },
    /// A payload byte differs from the generated one.
    #[error("frame seq {seq}: byte {offset} is {found:#04x}, expected {expected:#04x}")]
    PayloadMismatch {
        /// Sequence number in the frame.
        seq: u64,
        /// Offset of the first differing byte in the frame.
        offset: usize,
        /// Expected byte.
        expected: u8,
        /// Byte found.
        found: u8,
    },
    /// The CRC trailer does not match.
    #[error("frame seq {seq}: CRC {found:#010x}, expected {expected:#010x}")]
    CrcMismatch {
        /// Sequence number in the frame.
        seq: u64,
        /// CRC computed over the frame.
        expected: u32,
        /// CRC found in the trailer.
        found: u32,
    },
    /// A MAC address differs from the generator's.
    #[error("frame seq {seq}: {which} MAC is {found}, expected {expected}")]
    MacMismatch {
        /// Sequence number in the frame.
        seq: u64,
        /// `"destination"` or `"source"`.
        which: &'static str,
        /// Expected address.
        expected: MacAddr,
        /// Address found.
        found: MacAddr,
    },
}

/// SplitMix64 step: a small, fixed PRNG whose output never changes between versions.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pseudo-random stream of one frame: its length draw, then one word per 8 payload
/// bytes (little-endian; the last word is cut to the payload's end).
struct FrameStream {
    state: u64,
}

impl FrameStream {
    fn new(seed: u64, seq: u64) -> FrameStream {
        let mut mix = seq;
        FrameStream {
            state: seed ^ splitmix64(&mut mix),
        }
    }

    fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.state)
    }
}

/// Generates and verifies the frames of one stream, identified by its seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameGen {
    seed: u64,
    dst: MacAddr,
    src: MacAddr,
    min_len: usize,
    max_len: usize,
}

impl FrameGen {
    /// A stream from `src` to `dst` with frame lengths in `MIN_FRAME_LEN..=STD_MAX_FRAME_LEN`.
    pub fn new(seed: u64, dst: MacAddr, src: MacAddr) -> FrameGen {
        FrameGen {
            seed,
            dst,
            src,
            min_len: MIN_FRAME_LEN,
            max_len: STD_MAX_FRAME_LEN,
        }
    }

    /// The same stream with frame lengths drawn from `min_len..=max_len` (fixed if equal).
    pub fn with_len_range(self, min_len: usize, max_len: usize) -> Result<FrameGen, FrameError> {
        if min_len > max_len || min_len < MIN_FRAME_LEN || max_len > MAX_FRAME_LEN {
            return Err(FrameError::InvalidLenRange { min_len, max_len });
        }
        Ok(FrameGen {
            min_len,
            max_len,
            ..self
        })
    }

    /// The stream's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Destination MAC of generated frames.
    pub fn dst(&self) -> MacAddr {
        self.dst
    }

    /// Source MAC of generated frames.
    pub fn src(&self) -> MacAddr {
        self.src
    }

    /// Largest frame length this stream can produce (the buffer size a caller needs).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    fn stream(&self, seq: u64) -> (FrameStream, usize) {
        let mut stream = FrameStream::new(self.seed, seq);
        let span = (self.max_len - self.min_len) as u64 + 1;
        let len = self.min_len + (stream.next_u64() % span) as usize;
        (stream, len)
    }

    /// Length in bytes of frame `seq`.
    pub fn len_of(&self, seq: u64) -> usize {
        self.stream(seq).1
    }

    /// Writes frame `seq` to the start of `buf` and returns its length; no allocation.
    pub fn write(&self, seq: u64, buf: &mut [u8]) -> Result<usize, FrameError> {
        let (mut stream, len) = self.stream(seq);
        if buf.len() < len {
            return Err(FrameError::BufferTooSmall {
                seq,
                frame_len: len,
                buf_len: buf.len(),
            });
        }
        let frame = &mut buf[..len];
        frame[field::DST].copy_from_slice(&self.dst.0);
        frame[field::SRC].copy_from_slice(&self.src.0);
        frame[field::ETHERTYPE].copy_from_slice(&ETHERTYPE.to_be_bytes());
        frame[field::MAGIC].copy_from_slice(&MAGIC);
        frame[field::SEED].copy_from_slice(&self.seed.to_le_bytes());
        frame[field::SEQ].copy_from_slice(&seq.to_le_bytes());
        // `len <= MAX_FRAME_LEN < 2^16` by construction of the range.
        frame[field::LEN].copy_from_slice(&(len as u16).to_le_bytes());
        frame[field::RESERVED].copy_from_slice(&[0, 0]);
        let crc_at = len - CRC_LEN;
        for chunk in frame[field::PAYLOAD_START..crc_at].chunks_mut(8) {
            let word = stream.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        let crc = crc32fast::hash(&frame[field::CRC_START..crc_at]);
        frame[crc_at..].copy_from_slice(&crc.to_le_bytes());
        Ok(len)
    }

    /// Frame `seq` in a new vector.
    pub fn frame(&self, seq: u64) -> Vec<u8> {
        let mut buf = vec![0; self.len_of(seq)];
        // The buffer has exactly the frame's length, so `write` cannot fail.
        let len = self.write(seq, &mut buf).unwrap_or(0);
        buf.truncate(len);
        buf
    }

    /// Checks that `frame` is byte for byte frame `seq` of this stream, MACs included, and
    /// returns `seq`.
    pub fn verify(&self, frame: &[u8]) -> Result<u64, FrameError> {
        let seq = self.verify_payload(frame)?;
        let dst = mac_at(frame, field::DST.start);
        if dst != self.dst {
            return Err(FrameError::MacMismatch {
                seq,
                which: "destination",
                expected: self.dst,
                found: dst,
            });
        }
        let src = mac_at(frame, field::SRC.start);
        if src != self.src {
            return Err(FrameError::MacMismatch {
                seq,
                which: "source",
                expected: self.src,
                found: src,
            });
        }
        Ok(seq)
    }

    /// Checks everything but the two MAC addresses (which a forwarder may rewrite) and
    /// returns the frame's `seq`.
    pub fn verify_payload(&self, frame: &[u8]) -> Result<u64, FrameError> {
        let header = TestHeader::parse(frame)?;
        if header.seed != self.seed {
            return Err(FrameError::WrongSeed {
                expected: self.seed,
                found: header.seed,
            });
        }
        let seq = header.seq;
        let (mut stream, expected_len) = self.stream(seq);
        if header.len_bytes != expected_len || frame.len() != expected_len {
            return Err(FrameError::LenMismatch {
                seq,
                frame_len: frame.len(),
                header_len: header.len_bytes,
                expected_len,
            });
        }
        if header.reserved != 0 {
            return Err(FrameError::ReservedNotZero {
                seq,
                found: header.reserved,
            });
        }
        let crc_at = expected_len - CRC_LEN;
        let payload = &frame[field::PAYLOAD_START..crc_at];
        for (i, chunk) in payload.chunks(8).enumerate() {
            let word = stream.next_u64().to_le_bytes();
            if chunk != &word[..chunk.len()] {
                let (at, (&found, &expected)) = chunk
                    .iter()
                    .zip(&word)
                    .enumerate()
                    .find(|(_, (f, e))| f != e)
                    .unwrap_or((0, (&chunk[0], &word[0])));
                return Err(FrameError::PayloadMismatch {
                    seq,
                    offset: field::PAYLOAD_START + i * 8 + at,
                    expected,
                    found,
                });
            }
        }
        let expected = crc32fast::hash(&frame[field::CRC_START..crc_at]);
        let found = u32::from_le_bytes(array(&frame[crc_at..]));
        if found != expected {
            return Err(FrameError::CrcMismatch {
                seq,
                expected,
                found,
            });
        }
        Ok(seq)
    }
}

/// The parsed test header of a frame, without any check against a generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestHeader {
    /// Seed of the stream the frame claims to belong to.
    pub seed: u64,
    /// Sequence number.
    pub seq: u64,
    /// Frame length from the header.
    pub len_bytes: usize,
    /// Reserved field (zero in valid frames).
    pub reserved: u16,
}

impl TestHeader {
    /// Parses the header if `frame` carries the test EtherType and magic.
    pub fn parse(frame: &[u8]) -> Result<TestHeader, FrameError> {
        if frame.len() < ETH_HEADER_LEN {
            return Err(FrameError::TooShort { len: frame.len() });
        }
        let ethertype = u16::from_be_bytes(array(&frame[field::ETHERTYPE]));
        if ethertype != ETHERTYPE {
            return Err(FrameError::NotTestFrame { ethertype });
        }
        if frame.len() < ETH_HEADER_LEN + TEST_HEADER_LEN + CRC_LEN {
            return Err(FrameError::TooShort { len: frame.len() });
        }
        if frame[field::MAGIC] != MAGIC {
            return Err(FrameError::NotTestFrame { ethertype });
        }
        Ok(TestHeader {
            seed: u64::from_le_bytes(array(&frame[field::SEED])),
            seq: u64::from_le_bytes(array(&frame[field::SEQ])),
            len_bytes: usize::from(u16::from_le_bytes(array(&frame[field::LEN]))),
            reserved: u16::from_le_bytes(array(&frame[field::RESERVED])),
        })
    }
}

/// True if `frame` carries the test EtherType (whether or not it is valid).
pub fn is_test_frame(frame: &[u8]) -> bool {
    frame.len() >= ETH_HEADER_LEN && frame[field::ETHERTYPE] == ETHERTYPE.to_be_bytes()
}

fn mac_at(frame: &[u8], at: usize) -> MacAddr {
    MacAddr(array(&frame[at..at + 6]))
}

/// Copies a slice whose length the caller has checked into an array.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DST: MacAddr = MacAddr::qemu(0x56);
    const SRC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);

    fn stream() -> FrameGen {
        FrameGen::new(0x1234_5678_9abc_def0, DST, SRC)
    }

    #[test]
    fn mac_display() {
        assert_eq!(DST.to_string(), "52:54:00:12:34:56");
        assert_eq!(format!("{:?}", MacAddr::BROADCAST), "ff:ff:ff:ff:ff:ff");
    }

    #[test]
    fn frames_are_deterministic_and_distinct() {
        let g = stream();
        assert_eq!(g.frame(7), g.frame(7));
        assert_eq!(g.frame(7), g.clone().frame(7));
        assert_ne!(g.frame(7), g.frame(8));
        let other = FrameGen::new(g.seed() + 1, DST, SRC);
        assert_ne!(
            g.frame(7)[field::PAYLOAD_START..],
            other.frame(7)[field::PAYLOAD_START..]
        );
    }

    /// Pins the generator's output so guest-side and host-side builds of different versions
    /// keep agreeing byte for byte.
    #[test]
    fn generator_output_is_pinned() {
        let g = FrameGen::new(42, DST, SRC).with_len_range(60, 60).unwrap();
        let f = g.frame(0);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &DST.0);
        assert_eq!(&f[6..12], &SRC.0);
        assert_eq!(&f[12..14], &[0x88, 0xb5]);
        assert_eq!(&f[14..18], b"RBNF");
        assert_eq!(&f[18..26], &42u64.to_le_bytes());
        assert_eq!(&f[26..34], &0u64.to_le_bytes());
        assert_eq!(&f[34..36], &60u16.to_le_bytes());
        assert_eq!(&f[36..38], &[0, 0]);
        // The payload is SplitMix64 seeded with `seed ^ splitmix64(seq)`, first draw skipped
        // (it picks the length).
        let mut mix = 0u64;
        let mut state = 42 ^ splitmix64(&mut mix);
        let _len_draw = splitmix64(&mut state);
        let w0 = splitmix64(&mut state).to_le_bytes();
        assert_eq!(&f[38..46], &w0);
        let crc = crc32fast::hash(&f[12..56]);
        assert_eq!(&f[56..60], &crc.to_le_bytes());
        // A fixed fingerprint of a longer frame: changes only if the format changes.
        let g = FrameGen::new(42, DST, SRC);
        let f = g.frame(3);
        assert_eq!(f.len(), g.len_of(3));
        assert_eq!((f.len(), crc32fast::hash(&f)), (1250, 0xfbc8_a9ba));
    }

    #[test]
    fn lengths_cover_the_range() {
        let g = stream().with_len_range(60, 70).unwrap();
        let mut seen = [false; 11];
        for seq in 0..1000 {
            let len = g.len_of(seq);
            assert!((60..=70).contains(&len), "len {len}");
            seen[len - 60] = true;
            assert_eq!(g.frame(seq).len(), len);
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }

    #[test]
    fn invalid_len_ranges_are_rejected() {
        for (min_len, max_len) in [(59, 100), (100, 99), (60, MAX_FRAME_LEN + 1)] {
            assert_eq!(
                stream().with_len_range(min_len, max_len),
                Err(FrameError::InvalidLenRange { min_len, max_len })
            );
        }
        assert!(
            stream()
                .with_len_range(MAX_FRAME_LEN, MAX_FRAME_LEN)
                .is_ok()
        );
    }

    #[test]
    fn write_into_small_buffer_fails() {
        let g = stream();
        let len = g.len_of(1);
        let mut buf = vec![0u8; len - 1];
        assert_eq!(
            g.write(1, &mut buf),
            Err(FrameError::BufferTooSmall {
                seq: 1,
                frame_len: len,
                buf_len: len - 1
            })
        );
        let mut big = vec![0xaau8; len + 10];
        assert_eq!(g.write(1, &mut big), Ok(len));
        assert_eq!(&big[..len], &g.frame(1)[..]);
        assert!(big[len..].iter().all(|&b| b == 0xaa));
    }

    #[test]
    fn valid_frames_verify() {
        let g = stream();
        for seq in [0, 1, 2, 1000, u64::MAX] {
            assert_eq!(g.verify(&g.frame(seq)), Ok(seq));
            assert_eq!(g.verify_payload(&g.frame(seq)), Ok(seq));
        }
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let g = stream().with_len_range(60, 60).unwrap();
        let good = g.frame(5);
        for byte in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    g.verify(&bad).is_err(),
                    "flip of byte {byte} bit {bit} passed"
                );
            }
        }
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let g = stream();
        let good = g.frame(9);
        let len = good.len();

        assert_eq!(g.verify(&good[..10]), Err(FrameError::TooShort { len: 10 }));
        assert_eq!(g.verify(&good[..20]), Err(FrameError::TooShort { len: 20 }));

        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            g.verify(&arp),
            Err(FrameError::NotTestFrame { ethertype: 0x0806 })
        );
        assert!(!is_test_frame(&arp));
        assert!(is_test_frame(&good));

        let other = FrameGen::new(1, DST, SRC);
        assert_eq!(
            other.verify(&good),
            Err(FrameError::WrongSeed {
                expected: 1,
                found: g.seed()
            })
        );

        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 4]);
        assert_eq!(
            g.verify(&padded),
            Err(FrameError::LenMismatch {
                seq: 9,
                frame_len: len + 4,
                header_len: len,
                expected_len: len
            })
        );

        let mut payload = good.clone();
        payload[100] ^= 0xff;
        assert_eq!(
            g.verify(&payload),
            Err(FrameError::PayloadMismatch {
                seq: 9,
                offset: 100,
                expected: good[100],
                found: good[100] ^ 0xff
            })
        );

        let mut crc = good.clone();
        crc[len - 1] ^= 0x80;
        assert!(matches!(
            g.verify(&crc),
            Err(FrameError::CrcMismatch { seq: 9, .. })
        ));

        let mut reserved = good.clone();
        reserved[36] = 1;
        assert_eq!(
            g.verify(&reserved),
            Err(FrameError::ReservedNotZero { seq: 9, found: 1 })
        );

        let mut mac = good.clone();
        mac[0..6].copy_from_slice(&MacAddr::BROADCAST.0);
        assert_eq!(
            g.verify(&mac),
            Err(FrameError::MacMismatch {
                seq: 9,
                which: "destination",
                expected: DST,
                found: MacAddr::BROADCAST
            })
        );
        assert_eq!(g.verify_payload(&mac), Ok(9));
    }

    #[test]
    fn header_parses_without_a_generator() {
        let g = stream();
        let f = g.frame(77);
        assert_eq!(
            TestHeader::parse(&f),
            Ok(TestHeader {
                seed: g.seed(),
                seq: 77,
                len_bytes: f.len(),
                reserved: 0
            })
        );
    }
}
