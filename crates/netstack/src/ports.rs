//! Client mode's ports: the TCP and UDP ports in use on the tunnel address, and the choice
//! of ephemeral ones. The sets are made on first use, so a terminate-mode stack (an egress
//! runs one per session) holds a pointer instead of two empty sets (96 bytes, which took
//! its shared state past a size class of the relay's allocator).

use std::collections::HashSet;

use crate::Stack;

/// First port of the ephemeral range (RFC 6335).
pub(crate) const EPHEMERAL_START: u16 = 49_152;
/// Number of ephemeral ports.
pub(crate) const EPHEMERAL_COUNT: u16 = 16_384;

/// Ports in use, per protocol.
#[derive(Debug, Default)]
pub(crate) struct Ports {
    tcp: HashSet<u16>,
    udp: HashSet<u16>,
}

impl Ports {
    fn of(&mut self, udp: bool) -> &mut HashSet<u16> {
        if udp {
            &mut self.udp
        } else {
            &mut self.tcp
        }
    }
}

impl Stack {
    /// An unused ephemeral TCP or UDP port, marked as used.
    pub(crate) fn allocate_port(&mut self, udp: bool) -> Option<u16> {
        for _ in 0..EPHEMERAL_COUNT {
            let port = self.next_port;
            self.next_port = if port == u16::MAX {
                EPHEMERAL_START
            } else {
                port + 1
            };
            if self.bind_port(udp, port) {
                return Some(port);
            }
        }
        None
    }

    /// Marks `port` as used; false if it already was.
    pub(crate) fn bind_port(&mut self, udp: bool, port: u16) -> bool {
        self.ports
            .get_or_insert_with(Box::default)
            .of(udp)
            .insert(port)
    }

    pub(crate) fn release_port(&mut self, udp: bool, port: u16) {
        if let Some(ports) = &mut self.ports {
            ports.of(udp).remove(&port);
        }
    }

    pub(crate) fn port_in_use(&self, udp: bool, port: u16) -> bool {
        self.ports.as_ref().is_some_and(|ports| {
            if udp {
                ports.udp.contains(&port)
            } else {
                ports.tcp.contains(&port)
            }
        })
    }
}
