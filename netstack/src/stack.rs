//! A stack: one smoltcp interface, its sockets and its device, and the poll loop step.

#![forbid(unsafe_code)]

use std::time::Duration;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::{dhcpv4, icmp, tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr, Ipv6Cidr};

use crate::config::{Ipv4Setup, StackConfig, TcpTuning, link_local};
use crate::{Error, PortControl};

/// First port of the IANA ephemeral range (RFC 6335).
const EPHEMERAL_FIRST: u16 = 49152;
/// Ports in that range.
const EPHEMERAL_COUNT: u16 = 16384;

/// An interface with its sockets over a device `D` (an [`crate::RbufDevice`], possibly
/// wrapped in smoltcp's `FaultInjector`, `PcapWriter` or `Tracer`, or any other device).
pub struct Stack<D: Device> {
    iface: Interface,
    sockets: SocketSet<'static>,
    device: D,
    control: Option<Box<dyn PortControl>>,
    dhcp: Option<SocketHandle>,
    tcp: TcpTuning,
    next_port: u16,
}

impl<D: Device> Stack<D> {
    /// Builds the interface over `device` as `config` says (addresses, routes, DHCP).
    pub fn new(mut device: D, config: &StackConfig) -> Result<Stack<D>, Error> {
        config.validate()?;
        let seed = match config.seed {
            Some(s) => s,
            None => getrandom::u64().map_err(|e| Error::Random(e.to_string()))?,
        };
        let mut ic = Config::new(HardwareAddress::Ethernet(config.mac));
        ic.random_seed = seed;
        let mut iface = Interface::new(ic, &mut device, Instant::now());
        let mut sockets = SocketSet::new(Vec::new());
        let mut dhcp = None;
        let mut addrs: Vec<IpCidr> = Vec::new();
        match config.ipv4 {
            Ipv4Setup::None => {}
            Ipv4Setup::Static { cidr, gateway } => {
                addrs.push(IpCidr::Ipv4(cidr));
                if let Some(gw) = gateway {
                    iface
                        .routes_mut()
                        .add_default_ipv4_route(gw)
                        .map_err(|_| Error::Config("IPv4 route table full".into()))?;
                }
            }
            Ipv4Setup::Dhcp => {
                dhcp = Some(sockets.add(dhcpv4::Socket::new()));
            }
        }
        addrs.push(IpCidr::Ipv6(Ipv6Cidr::new(link_local(config.mac), 64)));
        if let Some(v6) = config.ipv6 {
            addrs.push(IpCidr::Ipv6(v6.cidr));
            if let Some(gw) = v6.gateway {
                iface
                    .routes_mut()
                    .add_default_ipv6_route(gw)
                    .map_err(|_| Error::Config("IPv6 route table full".into()))?;
            }
        }
        let mut full = false;
        iface.update_ip_addrs(|a| {
            for cidr in addrs {
                full |= a.push(cidr).is_err();
            }
        });
        if full {
            return Err(Error::Config(
                "more addresses than the interface holds".into(),
            ));
        }
        Ok(Stack {
            iface,
            sockets,
            device,
            control: None,
            dhcp,
            tcp: config.tcp,
            next_port: EPHEMERAL_FIRST + (seed >> 48) as u16 % EPHEMERAL_COUNT,
        })
    }

    /// Gives the stack its port's control (from [`crate::RbufDevice::handle`]), so that
    /// [`Stack::poll`] reports a dead port and [`Stack::wait`] sleeps on its doorbells.
    pub fn with_control(mut self, control: impl PortControl + 'static) -> Stack<D> {
        self.control = Some(Box::new(control));
        self
    }

    /// One step of the poll loop: moves every frame that is ready in and out, runs the
    /// timers and the DHCP client. Returns whether any socket changed state. Fails once
    /// the port's channels have failed (peer gone or evicted).
    pub fn poll(&mut self) -> Result<bool, Error> {
        let now = Instant::now();
        let changed = self.iface.poll(now, &mut self.device, &mut self.sockets)
            == PollResult::SocketStateChanged;
        if let Some(h) = self.dhcp {
            self.dhcp_event(h);
        }
        if let Some(c) = self.control.as_mut()
            && let Some(e) = c.take_error()
        {
            return Err(e);
        }
        Ok(changed)
    }

    /// Sleeps until a frame arrives or a timer of the stack is due, at most `max`. Without
    /// a port control it only sleeps for the timer (at most `max`).
    pub fn wait(&mut self, max: Duration) -> Result<(), Error> {
        let delay = self
            .iface
            .poll_delay(Instant::now(), &self.sockets)
            .map_or(max, |d| Duration::from_micros(d.total_micros()).min(max));
        if delay.is_zero() {
            return Ok(());
        }
        match self.control.as_mut() {
            Some(c) => c.wait(delay),
            None => {
                std::thread::sleep(delay);
                Ok(())
            }
        }
    }

    fn dhcp_event(&mut self, h: SocketHandle) {
        match self.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
            None => {}
            Some(dhcpv4::Event::Configured(cfg)) => {
                log::info!(
                    "DHCP lease {} router {:?} from {}",
                    cfg.address,
                    cfg.router,
                    cfg.server.address
                );
                let address = cfg.address;
                let router = cfg.router;
                self.set_ipv4(Some(address));
                self.iface.routes_mut().remove_default_ipv4_route();
                if let Some(r) = router
                    && self.iface.routes_mut().add_default_ipv4_route(r).is_err()
                {
                    log::warn!("DHCP router {r}: route table full");
                }
            }
            Some(dhcpv4::Event::Deconfigured) => {
                log::info!("DHCP lease lost");
                self.set_ipv4(None);
                self.iface.routes_mut().remove_default_ipv4_route();
            }
        }
    }

    fn set_ipv4(&mut self, cidr: Option<Ipv4Cidr>) {
        self.iface.update_ip_addrs(|addrs| {
            addrs.retain(|a| !matches!(a, IpCidr::Ipv4(_)));
            if let Some(c) = cidr
                && addrs.push(IpCidr::Ipv4(c)).is_err()
            {
                log::warn!("no room for IPv4 address {c}");
            }
        });
    }

    /// A local port for an outgoing connection: the IANA ephemeral range, in turn from a
    /// random start.
    pub fn ephemeral_port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = EPHEMERAL_FIRST + (port - EPHEMERAL_FIRST + 1) % EPHEMERAL_COUNT;
        port
    }

    /// The interface's IPv4 address, once it has one.
    pub fn ipv4_addr(&self) -> Option<Ipv4Address> {
        self.iface.ipv4_addr()
    }

    /// A new TCP socket with the configured buffers, Nagle and delayed-ACK settings.
    pub fn add_tcp_socket(&mut self) -> SocketHandle {
        let rx = tcp::SocketBuffer::new(vec![0; self.tcp.rx_buffer_bytes]);
        let tx = tcp::SocketBuffer::new(vec![0; self.tcp.tx_buffer_bytes]);
        let mut s = tcp::Socket::new(rx, tx);
        self.tcp.apply(&mut s);
        self.sockets.add(s)
    }

    /// A new UDP socket holding up to `packets` datagrams and `bytes` of payload each way.
    pub fn add_udp_socket(&mut self, packets: usize, bytes: usize) -> SocketHandle {
        let meta = || vec![udp::PacketMetadata::EMPTY; packets];
        let rx = udp::PacketBuffer::new(meta(), vec![0; bytes]);
        let tx = udp::PacketBuffer::new(meta(), vec![0; bytes]);
        self.sockets.add(udp::Socket::new(rx, tx))
    }

    /// A new ICMP socket holding up to `packets` messages and `bytes` each way.
    pub fn add_icmp_socket(&mut self, packets: usize, bytes: usize) -> SocketHandle {
        let meta = || vec![icmp::PacketMetadata::EMPTY; packets];
        let rx = icmp::PacketBuffer::new(meta(), vec![0; bytes]);
        let tx = icmp::PacketBuffer::new(meta(), vec![0; bytes]);
        self.sockets.add(icmp::Socket::new(rx, tx))
    }

    /// The sockets.
    pub fn sockets(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }

    /// The interface and the sockets at once (to open a connection:
    /// `tcp::Socket::connect` needs the interface's context).
    pub fn parts(&mut self) -> (&mut Interface, &mut SocketSet<'static>) {
        (&mut self.iface, &mut self.sockets)
    }

    /// The interface.
    pub fn iface(&mut self) -> &mut Interface {
        &mut self.iface
    }

    /// The device.
    pub fn device(&mut self) -> &mut D {
        &mut self.device
    }

    /// The TCP tuning new sockets get.
    pub fn tcp_tuning(&self) -> TcpTuning {
        self.tcp
    }
}

impl TcpTuning {
    /// Applies Nagle and delayed ACK to a socket.
    pub fn apply(&self, s: &mut tcp::Socket<'_>) {
        s.set_nagle_enabled(self.nagle);
        s.set_ack_delay(self.ack_delay_ms.map(smoltcp::time::Duration::from_millis));
    }
}
