//! Terminate mode: see each new SYN before smoltcp does, report it, and either hand it to a
//! listening socket bound to exactly its destination (accept) or answer it with RST (refuse).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use smoltcp::socket::tcp;

use crate::error::StackError;
use crate::event::{CloseReason, Event, TcpState};
use crate::idle::{Quiet, ShrinkIfEmpty};
use crate::stack::is_unicast;
use crate::table::Table;
use crate::tcp::Flow;
use crate::wire::{self, Syn};
use crate::{FlowId, Mode, Stack};

/// SYNs that wait for the caller's decision, and those accepted but not yet given to smoltcp.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    waiting: Table<FlowId, PendingSyn>,
    /// Deadlines in arrival order (so in deadline order); entries of decided flows are skipped.
    deadlines: VecDeque<(Instant, FlowId)>,
    accepted: Vec<(FlowId, Vec<u8>)>,
}

/// A SYN kept until the caller decides.
#[derive(Debug)]
struct PendingSyn {
    packet: Vec<u8>,
    syn: Syn,
}

impl Pending {
    /// Gives back the memory of whatever is empty (see [`Stack::shrink_idle`]).
    pub(crate) fn shrink_idle(&mut self) {
        self.waiting.shrink_if_empty();
        self.deadlines.shrink_if_empty();
        self.accepted.shrink_if_empty();
    }

    pub(crate) fn contains(&self, flow: FlowId) -> bool {
        self.waiting.contains_key(&flow)
    }

    pub(crate) fn has_accepted(&self) -> bool {
        !self.accepted.is_empty()
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines
            .iter()
            .find(|(_, flow)| self.waiting.contains_key(flow))
            .map(|(at, _)| *at)
    }
}

impl Stack {
    /// Terminate mode: accept a flow reported by [`Event::TcpIncoming`]. The SYN is answered
    /// on the next [`poll`](Self::poll); [`Event::TcpConnected`] follows the handshake.
    pub fn accept(&mut self, flow: FlowId) -> Result<(), StackError> {
        let pending = self.take_pending(flow)?;
        if let Some(entry) = self.flows.get_mut(&flow) {
            entry.state = TcpState::Connecting;
        }
        self.pending.accepted.push((flow, pending.packet));
        Ok(())
    }

    /// Terminate mode: refuse a flow reported by [`Event::TcpIncoming`]: the client gets RST
    /// (as from a closed port) and the flow is freed.
    pub fn refuse(&mut self, flow: FlowId) -> Result<(), StackError> {
        let pending = self.take_pending(flow)?;
        if let Some(entry) = self.flows.get(&flow) {
            let packet = wire::rst(entry.local, entry.remote, pending.syn);
            self.push_packet(packet);
        }
        self.stats.flows_refused += 1;
        self.free_flow(flow);
        Ok(())
    }

    /// Route a TCP segment in terminate mode.
    pub(crate) fn receive_terminated_tcp(
        &mut self,
        packet: &[u8],
        src: SocketAddr,
        dst: SocketAddr,
        syn: Option<Syn>,
        rst: bool,
    ) {
        if self.source_for(dst.ip()).is_none()
            || !is_unicast(src.ip())
            || !is_unicast(dst.ip())
            || src.port() == 0
            || dst.port() == 0
        {
            self.stats.unsupported_dropped += 1;
            return;
        }
        let existing = self.tuples.get(&(src, dst)).copied();
        let Some(flow) = existing else {
            match syn {
                Some(syn) => self.intercept_syn(packet, src, dst, syn),
                // No flow: smoltcp answers with RST (and ignores RSTs).
                None => self.dev.rx.push_back(spare::copy_of(packet)),
            }
            return;
        };
        let Some(handle) = self.flows.get(&flow).and_then(|f| f.socket) else {
            // Awaiting a decision: retransmitted SYNs are answered once it is made.
            return;
        };
        let state = self.sockets.get::<tcp::Socket>(handle).state();
        match state {
            tcp::State::SynReceived if rst => {
                // smoltcp would put the socket back to LISTEN; end the flow instead.
                self.mark_closed(flow, CloseReason::Reset);
                self.drop_socket(flow);
            }
            tcp::State::Closed | tcp::State::TimeWait if syn.is_some() => {
                // The client reuses the endpoints of a finished flow: that flow is over.
                self.drop_socket(flow);
                if let Some(syn) = syn {
                    self.intercept_syn(packet, src, dst, syn);
                }
            }
            _ => self.dev.rx.push_back(spare::copy_of(packet)),
        }
    }

    /// Report a new SYN, or refuse it at once if the limits are reached.
    fn intercept_syn(&mut self, packet: &[u8], src: SocketAddr, dst: SocketAddr, syn: Syn) {
        if self.flows.len() >= self.config.max_flows
            || self.pending.waiting.len() >= self.config.max_pending
        {
            self.push_packet(wire::rst(dst, src, syn));
            self.stats.flows_refused += 1;
            return;
        }
        let flow = self.next_flow_id();
        self.flows.insert(
            flow,
            Box::new(Flow {
                socket: None,
                local: dst,
                remote: src,
                state: TcpState::Pending,
                opened_at: self.now,
                released: false,
                quiet: Quiet::new(self.now),
                wakers: None,
            }),
        );
        self.tuples.insert((src, dst), flow);
        self.pending.waiting.insert(
            flow,
            PendingSyn {
                packet: packet.to_vec(),
                syn,
            },
        );
        self.pending
            .deadlines
            .push_back((self.now + self.config.pending_timeout, flow));
        self.events.push_back(Event::TcpIncoming { flow, src, dst });
    }

    /// The pending SYN of `flow`, removed from the waiting set.
    fn take_pending(&mut self, flow: FlowId) -> Result<PendingSyn, StackError> {
        if self.config.mode != Mode::Terminate {
            return Err(StackError::WrongMode {
                op: "accept/refuse",
                mode: self.config.mode,
            });
        }
        match self.pending.waiting.remove(&flow) {
            Some(p) => Ok(p),
            None if self.flows.contains_key(&flow) => Err(StackError::NotPending(flow)),
            None => Err(StackError::UnknownFlow(flow)),
        }
    }

    /// Refuse SYNs whose decision is overdue, and report them as timed out.
    pub(crate) fn expire_pending(&mut self) {
        while let Some(&(at, flow)) = self.pending.deadlines.front() {
            // Entries of decided flows are dropped too, so the front is (nearly) always live.
            if at > self.now && self.pending.contains(flow) {
                break;
            }
            self.pending.deadlines.pop_front();
            if self.pending.contains(flow) && self.refuse(flow).is_ok() {
                self.events.push_back(Event::TcpClosed {
                    flow,
                    reason: CloseReason::TimedOut,
                });
            }
        }
    }

    /// Give accepted SYNs to new sockets listening on exactly their destination. Each SYN is
    /// processed alone, so a listening socket can take no SYN but its own.
    pub(crate) fn inject_accepted(&mut self, ts: smoltcp::time::Instant) {
        for (flow, packet) in std::mem::take(&mut self.pending.accepted) {
            let Some(local) = self.flows.get(&flow).map(|f| f.local) else {
                continue;
            };
            let mut socket = self.new_socket();
            if socket.listen(local).is_err() {
                self.mark_closed(flow, CloseReason::Reset);
                continue;
            }
            let handle = self.sockets.add(socket);
            if let Some(entry) = self.flows.get_mut(&flow) {
                entry.socket = Some(handle);
            }
            self.register_wakers(flow, handle);
            self.note_activity(flow);
            self.stats.flows_opened += 1;
            let queued = std::mem::replace(&mut self.dev.rx, VecDeque::from([packet]));
            self.iface.poll(ts, &mut self.dev, &mut self.sockets);
            self.dev.rx = queued;
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            if socket.state() == tcp::State::Listen {
                // smoltcp did not take the SYN; never leave a listener behind.
                socket.abort();
                self.mark_closed(flow, CloseReason::Reset);
            }
        }
    }
}
