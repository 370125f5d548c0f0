//! Legacy receive and transmit descriptors (8254x SDM 3.2.3 and 3.3.3): 16 bytes,
//! little-endian. The structs pin the layout; the rings never hold a reference to a
//! descriptor but move each one as two 64-bit words through atomics
//! ([`crate::dma::DmaMemory`]), converting with `to_words`/`from_words`.

#![forbid(unsafe_code)]

/// Size of every descriptor in bytes.
pub const DESC_BYTES: usize = 16;

/// Legacy receive descriptor (SDM 3.2.3). The driver writes `addr`; the NIC writes the
/// second word back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxDesc {
    /// Buffer address (an IOVA).
    pub addr: u64,
    /// Bytes written to the buffer.
    pub length: u16,
    /// Packet checksum.
    pub csum: u16,
    /// Status bits (`RXD_STAT_*`).
    pub status: u8,
    /// Error bits (`RXD_ERR_*`).
    pub errors: u8,
    /// VLAN tag.
    pub special: u16,
}

/// Descriptor done: the NIC has written this descriptor back.
pub const RXD_STAT_DD: u8 = 1 << 0;
/// End of packet.
pub const RXD_STAT_EOP: u8 = 1 << 1;
/// Ignore checksum indication.
pub const RXD_STAT_IXSM: u8 = 1 << 2;
/// CRC or alignment error.
pub const RXD_ERR_CE: u8 = 1 << 0;
/// Symbol error.
pub const RXD_ERR_SE: u8 = 1 << 1;
/// Sequence error.
pub const RXD_ERR_SEQ: u8 = 1 << 2;
/// Carrier extension error.
pub const RXD_ERR_CXE: u8 = 1 << 4;
/// TCP/UDP checksum error (not a frame error: the frame itself arrived intact).
pub const RXD_ERR_TCPE: u8 = 1 << 5;
/// IP checksum error (not a frame error).
pub const RXD_ERR_IPE: u8 = 1 << 6;
/// RX data error.
pub const RXD_ERR_RXE: u8 = 1 << 7;
/// Error bits that mean the frame's bytes are bad.
pub const RXD_ERR_FRAME: u8 = RXD_ERR_CE | RXD_ERR_SE | RXD_ERR_SEQ | RXD_ERR_CXE | RXD_ERR_RXE;

impl RxDesc {
    /// A descriptor handing the buffer at `addr` to the NIC, status cleared.
    pub const fn empty(addr: u64) -> RxDesc {
        RxDesc {
            addr,
            length: 0,
            csum: 0,
            status: 0,
            errors: 0,
            special: 0,
        }
    }

    /// The two little-endian words as the NIC sees them.
    pub const fn to_words(self) -> [u64; 2] {
        [
            self.addr,
            self.length as u64
                | (self.csum as u64) << 16
                | (self.status as u64) << 32
                | (self.errors as u64) << 40
                | (self.special as u64) << 48,
        ]
    }

    /// The descriptor from its two words.
    pub const fn from_words(w: [u64; 2]) -> RxDesc {
        RxDesc {
            addr: w[0],
            length: w[1] as u16,
            csum: (w[1] >> 16) as u16,
            status: (w[1] >> 32) as u8,
            errors: (w[1] >> 40) as u8,
            special: (w[1] >> 48) as u16,
        }
    }
}

/// Legacy transmit descriptor (SDM 3.3.3). The NIC writes back only `status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxDesc {
    /// Buffer address (an IOVA).
    pub addr: u64,
    /// Bytes to send from the buffer.
    pub length: u16,
    /// Checksum offset.
    pub cso: u8,
    /// Command bits (`TXD_CMD_*`).
    pub cmd: u8,
    /// Status bits (`TXD_STAT_*`), written by the NIC.
    pub status: u8,
    /// Checksum start.
    pub css: u8,
    /// VLAN tag.
    pub special: u16,
}

/// End of packet: the last descriptor of a frame.
pub const TXD_CMD_EOP: u8 = 1 << 0;
/// Insert FCS (the Ethernet CRC).
pub const TXD_CMD_IFCS: u8 = 1 << 1;
/// Report status: write DD back when done.
pub const TXD_CMD_RS: u8 = 1 << 3;
/// Descriptor done.
pub const TXD_STAT_DD: u8 = 1 << 0;

impl TxDesc {
    /// A data descriptor for `length` bytes at `addr` with `cmd`.
    pub const fn data(addr: u64, length: u16, cmd: u8) -> TxDesc {
        TxDesc {
            addr,
            length,
            cso: 0,
            cmd,
            status: 0,
            css: 0,
            special: 0,
        }
    }

    /// The two little-endian words as the NIC sees them.
    pub const fn to_words(self) -> [u64; 2] {
        [
            self.addr,
            self.length as u64
                | (self.cso as u64) << 16
                | (self.cmd as u64) << 24
                | (self.status as u64) << 32
                | (self.css as u64) << 40
                | (self.special as u64) << 48,
        ]
    }

    /// The descriptor from its two words.
    pub const fn from_words(w: [u64; 2]) -> TxDesc {
        TxDesc {
            addr: w[0],
            length: w[1] as u16,
            cso: (w[1] >> 16) as u8,
            cmd: (w[1] >> 24) as u8,
            status: (w[1] >> 32) as u8,
            css: (w[1] >> 40) as u8,
            special: (w[1] >> 48) as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(size_of::<RxDesc>(), DESC_BYTES);
        assert_eq!(align_of::<RxDesc>(), 8);
        assert_eq!(offset_of!(RxDesc, addr), 0);
        assert_eq!(offset_of!(RxDesc, length), 8);
        assert_eq!(offset_of!(RxDesc, csum), 10);
        assert_eq!(offset_of!(RxDesc, status), 12);
        assert_eq!(offset_of!(RxDesc, errors), 13);
        assert_eq!(offset_of!(RxDesc, special), 14);

        assert_eq!(size_of::<TxDesc>(), DESC_BYTES);
        assert_eq!(offset_of!(TxDesc, addr), 0);
        assert_eq!(offset_of!(TxDesc, length), 8);
        assert_eq!(offset_of!(TxDesc, cso), 10);
        assert_eq!(offset_of!(TxDesc, cmd), 11);
        assert_eq!(offset_of!(TxDesc, status), 12);
        assert_eq!(offset_of!(TxDesc, css), 13);
        assert_eq!(offset_of!(TxDesc, special), 14);
    }

    /// The words put each field at the byte the layout says (little-endian memory).
    #[test]
    fn words_match_the_byte_layout() {
        let rx = RxDesc {
            addr: 0x1122_3344_5566_7788,
            length: 0x05ea,
            csum: 0xbeef,
            status: RXD_STAT_DD | RXD_STAT_EOP,
            errors: RXD_ERR_CE,
            special: 0x0123,
        };
        let w = rx.to_words();
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&w[0].to_le_bytes());
        bytes[8..].copy_from_slice(&w[1].to_le_bytes());
        assert_eq!(
            bytes,
            [
                0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xea, 0x05, 0xef, 0xbe, 0x03, 0x01,
                0x23, 0x01
            ]
        );
        assert_eq!(RxDesc::from_words(w), rx);

        let tx = TxDesc::data(0x40_0000, 1514, TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS);
        let w = tx.to_words();
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&w[0].to_le_bytes());
        bytes[8..].copy_from_slice(&w[1].to_le_bytes());
        assert_eq!(&bytes[8..], &[0xea, 0x05, 0, 0x0b, 0, 0, 0, 0]);
        let mut done = tx;
        done.status = TXD_STAT_DD;
        assert_eq!(TxDesc::from_words(done.to_words()), done);
        assert_eq!(done.to_words()[1] >> 32 & 0xff, 1);
    }
}
