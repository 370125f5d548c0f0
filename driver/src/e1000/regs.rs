//! The 8254x register file: names and offsets as in the PCI/PCI-X Family of Gigabit
//! Ethernet Controllers Software Developer's Manual (8254x SDM), Table 13-2, and the bits
//! this driver uses. All registers are 32 bits wide, at byte offsets into BAR0.

#![forbid(unsafe_code)]

// --- General (SDM 13.4) ---
/// Device Control.
pub const CTRL: u32 = 0x0000;
/// Device Status (read-only).
pub const STATUS: u32 = 0x0008;
/// EEPROM/Flash Control and Data.
pub const EECD: u32 = 0x0010;
/// EEPROM Read (not on the 82544GC/EI).
pub const EERD: u32 = 0x0014;
/// Extended Device Control.
pub const CTRL_EXT: u32 = 0x0018;
/// MDI Control.
pub const MDIC: u32 = 0x0020;
/// Flow Control Address Low.
pub const FCAL: u32 = 0x0028;
/// Flow Control Address High.
pub const FCAH: u32 = 0x002C;
/// Flow Control Type.
pub const FCT: u32 = 0x0030;
/// VLAN Ether Type.
pub const VET: u32 = 0x0038;
/// Flow Control Transmit Timer Value.
pub const FCTTV: u32 = 0x0170;

// --- Interrupts (SDM 13.4.17-13.4.21) ---
/// Interrupt Cause Read (clears on read).
pub const ICR: u32 = 0x00C0;
/// Interrupt Throttling (units of 256 ns).
pub const ITR: u32 = 0x00C4;
/// Interrupt Cause Set.
pub const ICS: u32 = 0x00C8;
/// Interrupt Mask Set/Read.
pub const IMS: u32 = 0x00D0;
/// Interrupt Mask Clear.
pub const IMC: u32 = 0x00D8;

// --- Receive (SDM 13.4.22-13.4.36) ---
/// Receive Control.
pub const RCTL: u32 = 0x0100;
/// Flow Control Receive Threshold Low.
pub const FCRTL: u32 = 0x2160;
/// Flow Control Receive Threshold High.
pub const FCRTH: u32 = 0x2168;
/// Receive Descriptor Base Address Low.
pub const RDBAL: u32 = 0x2800;
/// Receive Descriptor Base Address High.
pub const RDBAH: u32 = 0x2804;
/// Receive Descriptor Length (bytes, multiple of 128).
pub const RDLEN: u32 = 0x2808;
/// Receive Descriptor Head.
pub const RDH: u32 = 0x2810;
/// Receive Descriptor Tail.
pub const RDT: u32 = 0x2818;
/// Receive Delay Timer.
pub const RDTR: u32 = 0x2820;
/// Receive Descriptor Control.
pub const RXDCTL: u32 = 0x2828;
/// Receive Interrupt Absolute Delay Timer.
pub const RADV: u32 = 0x282C;
/// Receive Checksum Control.
pub const RXCSUM: u32 = 0x5000;
/// Multicast Table Array (128 registers).
pub const MTA: u32 = 0x5200;
/// Number of MTA registers.
pub const MTA_LEN: u32 = 128;
/// Receive Address Low, entry 0.
pub const RAL0: u32 = 0x5400;
/// Receive Address High, entry 0.
pub const RAH0: u32 = 0x5404;
/// Number of receive address entries.
pub const RA_ENTRIES: u32 = 16;
/// VLAN Filter Table Array (128 registers).
pub const VFTA: u32 = 0x5600;

// --- Transmit (SDM 13.4.33-13.4.45) ---
/// Transmit Control.
pub const TCTL: u32 = 0x0400;
/// Transmit Inter-Packet Gap.
pub const TIPG: u32 = 0x0410;
/// Transmit Descriptor Base Address Low.
pub const TDBAL: u32 = 0x3800;
/// Transmit Descriptor Base Address High.
pub const TDBAH: u32 = 0x3804;
/// Transmit Descriptor Length (bytes, multiple of 128).
pub const TDLEN: u32 = 0x3808;
/// Transmit Descriptor Head.
pub const TDH: u32 = 0x3810;
/// Transmit Descriptor Tail.
pub const TDT: u32 = 0x3818;
/// Transmit Interrupt Delay Value.
pub const TIDV: u32 = 0x3820;
/// Transmit Descriptor Control.
pub const TXDCTL: u32 = 0x3828;
/// Transmit Absolute Interrupt Delay Value.
pub const TADV: u32 = 0x382C;

// --- Statistics (SDM 13.7), all clear on read ---
/// CRC Error Count.
pub const CRCERRS: u32 = 0x4000;
/// Alignment Error Count.
pub const ALGNERRC: u32 = 0x4004;
/// Symbol Error Count.
pub const SYMERRS: u32 = 0x4008;
/// RX Error Count.
pub const RXERRC: u32 = 0x400C;
/// Missed Packets Count.
pub const MPC: u32 = 0x4010;
/// Collision Count.
pub const COLC: u32 = 0x4028;
/// Receive Length Error Count.
pub const RLEC: u32 = 0x4040;
/// Good Packets Received Count.
pub const GPRC: u32 = 0x4074;
/// Broadcast Packets Received Count.
pub const BPRC: u32 = 0x4078;
/// Multicast Packets Received Count.
pub const MPRC: u32 = 0x407C;
/// Good Packets Transmitted Count.
pub const GPTC: u32 = 0x4080;
/// Good Octets Received Count, low (read before high; high clears both).
pub const GORCL: u32 = 0x4088;
/// Good Octets Received Count, high.
pub const GORCH: u32 = 0x408C;
/// Good Octets Transmitted Count, low.
pub const GOTCL: u32 = 0x4090;
/// Good Octets Transmitted Count, high.
pub const GOTCH: u32 = 0x4094;
/// Receive No Buffers Count.
pub const RNBC: u32 = 0x40A0;
/// Receive Undersize Count.
pub const RUC: u32 = 0x40A4;
/// Receive Oversize Count.
pub const ROC: u32 = 0x40AC;
/// Total Octets Received, low.
pub const TORL: u32 = 0x40C0;
/// Total Octets Received, high.
pub const TORH: u32 = 0x40C4;
/// Total Octets Transmitted, low.
pub const TOTL: u32 = 0x40C8;
/// Total Octets Transmitted, high.
pub const TOTH: u32 = 0x40CC;
/// Total Packets Received.
pub const TPR: u32 = 0x40D0;
/// Total Packets Transmitted.
pub const TPT: u32 = 0x40D4;
/// Multicast Packets Transmitted Count.
pub const MPTC: u32 = 0x40F0;
/// Broadcast Packets Transmitted Count.
pub const BPTC: u32 = 0x40F4;
/// First statistics register.
pub const STATS_START: u32 = 0x4000;
/// One past the last statistics register.
pub const STATS_END: u32 = 0x4100;

// --- CTRL bits (SDM 13.4.1) ---
/// Full duplex.
pub const CTRL_FD: u32 = 1 << 0;
/// Link reset.
pub const CTRL_LRST: u32 = 1 << 3;
/// Auto-speed detection enable.
pub const CTRL_ASDE: u32 = 1 << 5;
/// Set link up.
pub const CTRL_SLU: u32 = 1 << 6;
/// Invert loss-of-signal.
pub const CTRL_ILOS: u32 = 1 << 7;
/// Device reset (self-clearing).
pub const CTRL_RST: u32 = 1 << 26;
/// Receive flow control enable.
pub const CTRL_RFCE: u32 = 1 << 27;
/// Transmit flow control enable.
pub const CTRL_TFCE: u32 = 1 << 28;
/// VLAN mode enable.
pub const CTRL_VME: u32 = 1 << 30;
/// PHY reset.
pub const CTRL_PHY_RST: u32 = 1 << 31;

// --- STATUS bits (SDM 13.4.2) ---
/// Full duplex.
pub const STATUS_FD: u32 = 1 << 0;
/// Link up.
pub const STATUS_LU: u32 = 1 << 1;
/// Link speed, bits 7:6 (00 = 10, 01 = 100, 1x = 1000 Mb/s).
pub const STATUS_SPEED_SHIFT: u32 = 6;

// --- EERD bits (SDM 13.4.4) ---
/// Start a read.
pub const EERD_START: u32 = 1 << 0;
/// Read done.
pub const EERD_DONE: u32 = 1 << 4;
/// Word address, bits 15:8.
pub const EERD_ADDR_SHIFT: u32 = 8;
/// Data, bits 31:16.
pub const EERD_DATA_SHIFT: u32 = 16;

// --- Interrupt cause bits, shared by ICR/ICS/IMS/IMC (SDM 13.4.17) ---
/// Transmit descriptor written back.
pub const ICR_TXDW: u32 = 1 << 0;
/// Transmit queue empty.
pub const ICR_TXQE: u32 = 1 << 1;
/// Link status change.
pub const ICR_LSC: u32 = 1 << 2;
/// Receive sequence error.
pub const ICR_RXSEQ: u32 = 1 << 3;
/// Receive descriptor minimum threshold reached.
pub const ICR_RXDMT0: u32 = 1 << 4;
/// Receiver overrun (no descriptor for a frame).
pub const ICR_RXO: u32 = 1 << 6;
/// Receiver timer interrupt (a frame was received).
pub const ICR_RXT0: u32 = 1 << 7;

// --- RCTL bits (SDM 13.4.22) ---
/// Receiver enable.
pub const RCTL_EN: u32 = 1 << 1;
/// Store bad packets.
pub const RCTL_SBP: u32 = 1 << 2;
/// Unicast promiscuous.
pub const RCTL_UPE: u32 = 1 << 3;
/// Multicast promiscuous.
pub const RCTL_MPE: u32 = 1 << 4;
/// Long packet enable (frames up to 16384 bytes).
pub const RCTL_LPE: u32 = 1 << 5;
/// Free-buffer threshold 1/2 of RDLEN (bits 9:8 = 00).
pub const RCTL_RDMTS_HALF: u32 = 0 << 8;
/// Broadcast accept.
pub const RCTL_BAM: u32 = 1 << 15;
/// Buffer size field, bits 17:16.
pub const RCTL_BSIZE_SHIFT: u32 = 16;
/// Buffer size extension (sizes ×16).
pub const RCTL_BSEX: u32 = 1 << 25;
/// Strip Ethernet CRC from incoming packets.
pub const RCTL_SECRC: u32 = 1 << 26;

// --- TCTL bits (SDM 13.4.33) ---
/// Transmit enable.
pub const TCTL_EN: u32 = 1 << 1;
/// Pad short packets.
pub const TCTL_PSP: u32 = 1 << 3;
/// Collision threshold, bits 11:4.
pub const TCTL_CT_SHIFT: u32 = 4;
/// Collision distance, bits 21:12.
pub const TCTL_COLD_SHIFT: u32 = 12;
/// Re-transmit on late collision.
pub const TCTL_RTLC: u32 = 1 << 24;

// --- TIPG fields (SDM 13.4.34), IEEE 802.3 copper values ---
/// IPG transmit time, bits 9:0.
pub const TIPG_IPGT_SHIFT: u32 = 0;
/// IPG receive time 1, bits 19:10.
pub const TIPG_IPGR1_SHIFT: u32 = 10;
/// IPG receive time 2, bits 29:20.
pub const TIPG_IPGR2_SHIFT: u32 = 20;

// --- RAH bits (SDM 13.4.26) ---
/// Address valid.
pub const RAH_AV: u32 = 1 << 31;

/// The RCTL buffer-size bits (BSIZE and BSEX) for a receive buffer of `bytes`, if the
/// hardware has that size (SDM 13.4.22: 256, 512, 1024, 2048, and with BSEX 4096, 8192,
/// 16384).
pub const fn rctl_bsize(bytes: u32) -> Option<u32> {
    match bytes {
        2048 => Some(0 << RCTL_BSIZE_SHIFT),
        1024 => Some(1 << RCTL_BSIZE_SHIFT),
        512 => Some(2 << RCTL_BSIZE_SHIFT),
        256 => Some(3 << RCTL_BSIZE_SHIFT),
        16384 => Some(RCTL_BSEX | (1 << RCTL_BSIZE_SHIFT)),
        8192 => Some(RCTL_BSEX | (2 << RCTL_BSIZE_SHIFT)),
        4096 => Some(RCTL_BSEX | (3 << RCTL_BSIZE_SHIFT)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_size_encodings_match_the_sdm() {
        assert_eq!(rctl_bsize(2048), Some(0));
        assert_eq!(rctl_bsize(256), Some(0x0003_0000));
        assert_eq!(rctl_bsize(4096), Some(0x0203_0000));
        assert_eq!(rctl_bsize(16384), Some(0x0201_0000));
        assert_eq!(rctl_bsize(1500), None);
    }

    #[test]
    fn offsets_are_word_aligned_and_in_the_128k_bar() {
        for r in [
            CTRL, STATUS, EERD, ICR, ITR, IMS, IMC, RCTL, RDBAL, RDBAH, RDLEN, RDH, RDT, TCTL,
            TIPG, TDBAL, TDBAH, TDLEN, TDH, TDT, MTA, RAL0, RAH0, GPRC, GPTC, GORCL, GORCH, GOTCL,
            GOTCH, TPR, TPT, MPC, RNBC, BPTC,
        ] {
            assert_eq!(r % 4, 0);
            assert!(r < 0x20000);
        }
        assert_eq!(MTA + 4 * MTA_LEN, RAL0);
    }
}
