//! How a stack is set up: addresses, TCP behaviour, socket buffer sizes.

#![forbid(unsafe_code)]

use smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr, Ipv6Address, Ipv6Cidr};

use crate::Error;

/// IPv4 addressing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv4Setup {
    /// No IPv4.
    None,
    /// A fixed address and prefix, and an optional default gateway.
    Static {
        /// Address and prefix length.
        cidr: Ipv4Cidr,
        /// Default gateway.
        gateway: Option<Ipv4Address>,
    },
    /// An address, prefix and gateway leased from a DHCPv4 server.
    Dhcp,
}

/// IPv6 addressing (a link-local address derived from the MAC is always added).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Setup {
    /// A fixed address and prefix length.
    pub cidr: Ipv6Cidr,
    /// Default gateway.
    pub gateway: Option<Ipv6Address>,
}

/// TCP behaviour of the sockets a stack makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpTuning {
    /// Nagle's algorithm (smoltcp's default: on).
    pub nagle: bool,
    /// Delayed-ACK timeout in milliseconds, `None` to ACK at once (smoltcp's default: 10).
    pub ack_delay_ms: Option<u64>,
    /// Receive buffer per TCP socket, in bytes (the largest window it can offer).
    pub rx_buffer_bytes: usize,
    /// Transmit buffer per TCP socket, in bytes.
    pub tx_buffer_bytes: usize,
}

impl Default for TcpTuning {
    fn default() -> TcpTuning {
        TcpTuning {
            nagle: true,
            ack_delay_ms: Some(10),
            rx_buffer_bytes: 256 << 10,
            tx_buffer_bytes: 256 << 10,
        }
    }
}

/// Everything a [`crate::Stack`] is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackConfig {
    /// The interface's MAC address (unicast).
    pub mac: EthernetAddress,
    /// IPv4 addressing.
    pub ipv4: Ipv4Setup,
    /// Optional static IPv6 address.
    pub ipv6: Option<Ipv6Setup>,
    /// TCP socket behaviour.
    pub tcp: TcpTuning,
    /// Seed for ISNs and ephemeral ports; `None`: random from the OS (the default; a
    /// fixed seed makes two stacks pick the same sequence numbers).
    pub seed: Option<u64>,
}

impl StackConfig {
    /// A static IPv4 stack, no gateway, default TCP tuning, OS-random seed.
    pub fn ipv4(mac: EthernetAddress, cidr: Ipv4Cidr) -> StackConfig {
        StackConfig {
            mac,
            ipv4: Ipv4Setup::Static {
                cidr,
                gateway: None,
            },
            ipv6: None,
            tcp: TcpTuning::default(),
            seed: None,
        }
    }

    /// Checks what smoltcp would otherwise panic on.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.mac.is_unicast() {
            return Err(Error::Config(format!("MAC {} is not unicast", self.mac)));
        }
        if let Ipv4Setup::Static { cidr, gateway } = self.ipv4 {
            if cidr.address().is_unspecified() || cidr.address().is_multicast() {
                return Err(Error::Config(format!("IPv4 address {cidr} cannot be used")));
            }
            if let Some(gw) = gateway
                && !cidr.contains_addr(&gw)
            {
                return Err(Error::Config(format!(
                    "IPv4 gateway {gw} is outside {cidr}"
                )));
            }
        }
        if self.tcp.rx_buffer_bytes == 0 || self.tcp.tx_buffer_bytes == 0 {
            return Err(Error::Config("TCP buffers of 0 bytes".into()));
        }
        Ok(())
    }
}

/// The IPv6 link-local address of a MAC (modified EUI-64, RFC 4291 appendix A).
pub fn link_local(mac: EthernetAddress) -> Ipv6Address {
    let m = mac.0;
    Ipv6Address::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
        u16::from_be_bytes([m[2], 0xff]),
        u16::from_be_bytes([0xfe, m[3]]),
        u16::from_be_bytes([m[4], m[5]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_is_modified_eui64() {
        let mac = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(
            link_local(mac).to_string(),
            "fe80::5054:ff:fe12:3456",
            "as Linux derives it"
        );
    }

    #[test]
    fn validate_refuses_what_smoltcp_panics_on() {
        let mut c = StackConfig::ipv4(
            EthernetAddress([2, 0, 0, 0, 0, 1]),
            Ipv4Cidr::new(Ipv4Address::new(10, 0, 0, 1), 24),
        );
        assert!(c.validate().is_ok());
        c.mac = EthernetAddress([1, 0, 0, 0, 0, 1]);
        assert!(c.validate().unwrap_err().to_string().contains("unicast"));
        c.mac = EthernetAddress([2, 0, 0, 0, 0, 1]);
        c.ipv4 = Ipv4Setup::Static {
            cidr: Ipv4Cidr::new(Ipv4Address::new(10, 0, 0, 1), 24),
            gateway: Some(Ipv4Address::new(10, 0, 1, 1)),
        };
        assert!(c.validate().unwrap_err().to_string().contains("outside"));
    }
}
