//! The sans-IO core: a smoltcp interface over two packet queues, driven by the caller's clock.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, PollResult, SocketSet};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::device::Queues;
use crate::error::ConfigError;
use crate::event::{Event, Stats};
use crate::idle::IdleCheck;
use crate::table::Table;
use crate::tcp::{Direction, Flow, ReadyList};
use crate::terminate::Pending;
use crate::wire::{self, Parsed};
use crate::{FlowId, Mode, StackConfig};

/// Most smoltcp poll rounds per [`Stack::poll`]; each round sends at most one segment per
/// socket, so this bounds the work done in one call. More work is signalled by `poll_at`.
const MAX_POLL_ROUNDS: usize = 1024;

/// First port of the ephemeral range (RFC 6335).
const EPHEMERAL_START: u16 = 49_152;
/// Number of ephemeral ports.
const EPHEMERAL_COUNT: u16 = 16_384;

/// A userspace TCP/IP stack for one tunnel session.
///
/// Sans-IO: feed packets from the tunnel with [`receive`](Self::receive), run timers and
/// protocol work with [`poll`](Self::poll), send what [`pop_transmit`](Self::pop_transmit)
/// returns into the tunnel, act on [`poll_event`](Self::poll_event), and call `poll` again by
/// [`poll_at`](Self::poll_at). Nothing here reads the clock, sleeps or does I/O.
pub struct Stack {
    pub(crate) config: StackConfig,
    pub(crate) iface: Interface,
    pub(crate) sockets: SocketSet<'static>,
    pub(crate) dev: Queues,
    /// The caller's instant that smoltcp's time zero stands for.
    epoch: Instant,
    /// The latest `now` given to [`poll`](Self::poll).
    pub(crate) now: Instant,
    /// Boxed: a flow is 160 bytes, and moves when one before it goes.
    pub(crate) flows: Table<FlowId, Box<Flow>>,
    /// (remote, local) endpoints to flow, so a packet finds its flow without a scan.
    pub(crate) tuples: Table<(SocketAddr, SocketAddr), FlowId>,
    pub(crate) pending: Pending,
    /// Flows whose smoltcp socket woke (data, space or state change) since the last poll.
    pub(crate) ready: Arc<ReadyList>,
    /// The ready list's entries while they are processed; kept for its allocation.
    pub(crate) woken: Vec<(FlowId, Direction)>,
    /// Released flows to free once smoltcp has sent their last packets.
    pub(crate) reap: Vec<FlowId>,
    pub(crate) events: VecDeque<Event>,
    next_flow: u64,
    next_port: u16,
    pub(crate) tcp_ports: HashSet<u16>,
    pub(crate) udp_ports: HashSet<u16>,
    pub(crate) stats: Stats,
    /// When to look for flows whose idle buffers can be given back ([`crate::idle`]).
    pub(crate) idle: IdleCheck,
    /// Came to rest since the driver last looked ([`Stack::take_rested`]).
    pub(crate) rested: bool,
}

impl Stack {
    /// A stack configured by `config`, whose clock starts at `now`.
    pub fn new(config: StackConfig, now: Instant) -> Result<Self, ConfigError> {
        validate(&config)?;
        let mut dev = Queues::new(config.mtu, config.tx_queue_limit);
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = config.seed;
        let mut iface = Interface::new(iface_config, &mut dev, smoltcp::time::Instant::ZERO);
        let mut overflow = false;
        iface.update_ip_addrs(|addrs| {
            for addr in &config.addrs {
                let prefix = if addr.is_ipv4() { 32 } else { 128 };
                overflow |= addrs.push(IpCidr::new((*addr).into(), prefix)).is_err();
            }
        });
        if overflow {
            return Err(ConfigError::TooManyAddresses {
                count: config.addrs.len(),
                max: StackConfig::MAX_ADDRS,
            });
        }
        if config.mode == Mode::Terminate {
            // Any destination is ours: with a default route through our own address,
            // smoltcp accepts packets for every unicast address (AnyIP).
            iface.set_any_ip(true);
            let routes = iface.routes_mut();
            // The route table holds four routes; two defaults always fit.
            if let Some(IpAddr::V4(a)) = config.addrs.iter().find(|a| a.is_ipv4()) {
                let _ = routes.add_default_ipv4_route(*a);
            }
            if let Some(IpAddr::V6(a)) = config.addrs.iter().find(|a| a.is_ipv6()) {
                let _ = routes.add_default_ipv6_route(*a);
            }
        }
        let next_port = EPHEMERAL_START + (config.seed % u64::from(EPHEMERAL_COUNT)) as u16;
        Ok(Self {
            iface,
            // Room for one socket: a session's stack usually carries one or two
            // connections, and an empty `Vec` grows to four slots of 768 bytes on the
            // first (with one flow, 2,304 bytes less).
            sockets: SocketSet::new(Vec::with_capacity(1)),
            dev,
            epoch: now,
            now,
            flows: Table::default(),
            tuples: Table::default(),
            pending: Pending::default(),
            ready: Arc::default(),
            woken: Vec::new(),
            reap: Vec::new(),
            events: VecDeque::new(),
            next_flow: 1,
            next_port,
            tcp_ports: HashSet::new(),
            udp_ports: HashSet::new(),
            stats: Stats::default(),
            idle: IdleCheck::default(),
            rested: false,
            config,
        })
    }

    /// This stack's mode.
    pub fn mode(&self) -> Mode {
        self.config.mode
    }

    /// The configuration the stack was built with.
    pub fn config(&self) -> &StackConfig {
        &self.config
    }

    /// Feed one IP packet from the tunnel. Malformed or unsupported packets are dropped and
    /// counted in [`Stats`]; nothing here panics on any input.
    pub fn receive(&mut self, packet: &[u8]) {
        self.stats.packets_in += 1;
        match wire::parse(packet) {
            Err(wire::Malformed) => self.stats.malformed_dropped += 1,
            Ok(Parsed::Unsupported) => self.stats.unsupported_dropped += 1,
            Ok(Parsed::Tcp { src, dst, syn, rst }) => self.receive_tcp(packet, src, dst, syn, rst),
            Ok(Parsed::Udp {
                src, dst, payload, ..
            }) => self.receive_udp(src, dst, payload),
            Ok(Parsed::UdpUnreachable { local, remote }) => {
                self.receive_udp_unreachable(local, remote)
            }
        }
    }

    /// Do all protocol work due at `now`: process received packets, retransmit, send queued
    /// data, expire timers, and produce events. Call after `receive`, after `send`/`recv`/
    /// `close` (so acknowledgements and window updates go out) and at [`poll_at`](Self::poll_at).
    pub fn poll(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let ts = self.timestamp(self.now);
        self.expire_pending();
        self.inject_accepted(ts);
        for _ in 0..MAX_POLL_ROUNDS {
            if self.iface.poll(ts, &mut self.dev, &mut self.sockets) == PollResult::None {
                break;
            }
        }
        self.process_ready();
        self.reap_released();
        self.give_back_idle();
    }

    /// When [`poll`](Self::poll) should next run, if nothing else happens first; `now` or
    /// earlier means at once. `None` means only new input makes work.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        if !self.dev.rx.is_empty() || self.pending.has_accepted() || !self.reap.is_empty() {
            return Some(now);
        }
        let ts = self.timestamp(now);
        let smol = self
            .iface
            .poll_at(ts, &self.sockets)
            .map(|at| self.epoch + Duration::from_micros(at.total_micros().max(0).unsigned_abs()));
        [smol, self.pending.next_deadline(), self.idle.at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next IP packet to send into the tunnel, oldest first.
    pub fn pop_transmit(&mut self) -> Option<Vec<u8>> {
        let packet = self.dev.tx.pop_front()?;
        self.stats.packets_out += 1;
        Some(packet)
    }

    /// How many IP packets wait in the transmit queue.
    pub fn transmit_queue_len(&self) -> usize {
        self.dev.tx.len()
    }

    /// Whether smoltcp may queue more packets; when `false` the caller should drain
    /// [`pop_transmit`](Self::pop_transmit) before polling for more output.
    pub fn transmit_has_room(&self) -> bool {
        self.dev.tx_has_room()
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Counters since the stack was made.
    pub fn stats(&self) -> Stats {
        Stats {
            tx_dropped: self.stats.tx_dropped + self.dev.tx_dropped,
            ..self.stats
        }
    }

    /// TCP flows that are known (pending, open, closing, or closed and not yet released).
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// smoltcp sockets held; each open or closing flow holds one until it is freed.
    pub fn socket_count(&self) -> usize {
        self.sockets.iter().count()
    }

    /// smoltcp's clock for the caller's `now`.
    pub(crate) fn timestamp(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    /// A fresh flow id.
    pub(crate) fn next_flow_id(&mut self) -> FlowId {
        let id = FlowId(self.next_flow);
        self.next_flow += 1;
        id
    }

    /// Whether `ip` is one of this stack's own addresses.
    pub(crate) fn is_local(&self, ip: IpAddr) -> bool {
        self.config.addrs.contains(&ip)
    }

    /// This stack's address of `dst`'s family, used as the source towards `dst`.
    pub(crate) fn source_for(&self, dst: IpAddr) -> Option<IpAddr> {
        self.config
            .addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == dst.is_ipv4())
    }

    /// An unused ephemeral TCP or UDP port, marked as used.
    pub(crate) fn allocate_port(&mut self, udp: bool) -> Option<u16> {
        for _ in 0..EPHEMERAL_COUNT {
            let port = self.next_port;
            self.next_port = if port == u16::MAX {
                EPHEMERAL_START
            } else {
                port + 1
            };
            let used = if udp {
                &mut self.udp_ports
            } else {
                &mut self.tcp_ports
            };
            if used.insert(port) {
                return Some(port);
            }
        }
        None
    }

    /// Queue an IP packet built outside smoltcp; counts it if dropped.
    pub(crate) fn push_packet(&mut self, packet: Vec<u8>) -> bool {
        self.dev.push_tx(packet)
    }
}

/// Whether `ip` can be a host's own or a peer's address.
pub(crate) fn is_unicast(ip: IpAddr) -> bool {
    let addr = IpAddress::from(ip);
    addr.is_unicast()
        && match ip {
            IpAddr::V4(a) => !a.is_broadcast(),
            IpAddr::V6(_) => true,
        }
}

/// Check everything `Stack::new` relies on.
fn validate(config: &StackConfig) -> Result<(), ConfigError> {
    if config.addrs.is_empty() {
        return Err(ConfigError::NoAddress);
    }
    if config.addrs.len() > StackConfig::MAX_ADDRS {
        return Err(ConfigError::TooManyAddresses {
            count: config.addrs.len(),
            max: StackConfig::MAX_ADDRS,
        });
    }
    if let Some(bad) = config.addrs.iter().find(|a| !is_unicast(**a)) {
        return Err(ConfigError::InvalidAddress(*bad));
    }
    if !(StackConfig::MIN_MTU..=StackConfig::MAX_MTU).contains(&config.mtu) {
        return Err(ConfigError::InvalidMtu {
            mtu: config.mtu,
            min: StackConfig::MIN_MTU,
            max: StackConfig::MAX_MTU,
        });
    }
    for size in [config.tcp_rx_buffer, config.tcp_tx_buffer] {
        if size < StackConfig::MIN_TCP_BUFFER {
            return Err(ConfigError::BufferTooSmall {
                size,
                min: StackConfig::MIN_TCP_BUFFER,
            });
        }
    }
    for (name, value) in [
        ("max_flows", config.max_flows),
        ("max_pending", config.max_pending),
        ("tx_queue_limit", config.tx_queue_limit),
        ("max_events", config.max_events),
    ] {
        if value == 0 {
            return Err(ConfigError::ZeroLimit(name));
        }
    }
    Ok(())
}
