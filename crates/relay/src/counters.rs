//! Aggregate counters: the only thing a relay reports about its traffic.
//!
//! Counters hold numbers, never addresses or keys, so logging them cannot reveal who talked
//! to whom.

use std::fmt;

/// Why a datagram or packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Not a WireGuard message (random bytes, wrong size).
    Malformed,
    /// Failed authentication (forged, corrupted, wrong key).
    Auth,
    /// Replayed or too old.
    Replay,
    /// No session for the receiver index (for example after a relay restart).
    NoSession,
    /// User traffic from a session that was not admitted.
    Unadmitted,
    /// A control message that could not be decoded.
    BadControl,
    /// An inner datagram addressed to something other than a listed egress (ingress).
    NotEgress,
    /// A packet whose source is not the address the session was assigned.
    Spoofed,
    /// A destination refused by policy (egress).
    Policy,
    /// Not a parseable IP packet inside the tunnel.
    NotIp,
    /// Session limit reached.
    Capacity,
}

/// Running totals since the relay started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams received on the relay's port(s).
    pub rx_datagrams: u64,
    /// Datagrams sent.
    pub tx_datagrams: u64,
    /// Handshakes answered.
    pub handshakes: u64,
    /// Sessions created.
    pub sessions_created: u64,
    /// Sessions admitted.
    pub sessions_admitted: u64,
    /// Sessions removed (expired, lifetime over).
    pub sessions_closed: u64,
    /// Sessions put to sleep (no key left after a quiet spell; admission kept).
    pub sessions_slept: u64,
    /// Sessions asleep now (a level, not a total: woken and removed ones leave it).
    pub sessions_asleep: u64,
    /// Of the sessions put to sleep, those whose idle client asked for it (`Rest`).
    pub sessions_rested: u64,
    /// User packets carried for admitted sessions (both directions).
    pub forwarded: u64,
    /// Payload bytes carried for admitted sessions (both directions).
    pub forwarded_bytes: u64,
    /// Control messages handled.
    pub control: u64,
    /// Attest requests answered (with evidence or a refusal).
    pub attestations: u64,
    /// Tokens redeemed (valid, unspent).
    pub tokens_redeemed: u64,
    /// Userspace egress: session stacks started (on a session's first packet).
    pub stacks_started: u64,
    /// Userspace egress: session stacks stopped (idle, or their session closed).
    pub stacks_stopped: u64,
    /// Userspace egress: UDP sends to destinations that carried several datagrams of a
    /// flow in one segmented (GSO) call.
    pub udp_segmented: u64,
    /// Userspace egress: UDP flows opened (a socket for a client endpoint).
    pub udp_flows_opened: u64,
    /// Userspace egress: UDP flows closed (idle, or their session closed).
    pub udp_flows_closed: u64,
    /// Userspace egress: replies from destinations dropped because they were larger than
    /// the tunnel MTU.
    pub udp_too_large: u64,
    /// Userspace egress: TCP connections to destinations that failed or did not open in
    /// time (the client's connection was refused); a rise points at the egress's own
    /// network, not at clients.
    pub tcp_connect_failed: u64,
    /// TUN egress: packets written to the TUN device.
    pub tun_packets: u64,
    /// TUN egress: writes they took (fewer when packets of a flow were coalesced).
    pub tun_writes: u64,
    /// TUN egress: packets in batches the kernel refused (the device is down, say).
    pub tun_refused: u64,
    /// Tokens refused (forged, spent, for another relay or session, expired, malformed).
    pub tokens_refused: u64,
    /// Drops by reason.
    pub dropped_malformed: u64,
    /// See [`Drop::Auth`].
    pub dropped_auth: u64,
    /// See [`Drop::Replay`].
    pub dropped_replay: u64,
    /// See [`Drop::NoSession`].
    pub dropped_no_session: u64,
    /// See [`Drop::Unadmitted`].
    pub dropped_unadmitted: u64,
    /// See [`Drop::BadControl`].
    pub dropped_bad_control: u64,
    /// See [`Drop::NotEgress`].
    pub dropped_not_egress: u64,
    /// See [`Drop::Spoofed`].
    pub dropped_spoofed: u64,
    /// See [`Drop::Policy`].
    pub dropped_policy: u64,
    /// See [`Drop::NotIp`].
    pub dropped_not_ip: u64,
    /// See [`Drop::Capacity`].
    pub dropped_capacity: u64,
    /// Datagrams that waited too long in the relay's receive queue, dropped singly and
    /// early because the relay fell behind (CoDel, in `udpio`).
    pub dropped_late: u64,
}

impl Counters {
    /// Counts one drop.
    pub fn drop(&mut self, why: Drop) {
        let c = match why {
            Drop::Malformed => &mut self.dropped_malformed,
            Drop::Auth => &mut self.dropped_auth,
            Drop::Replay => &mut self.dropped_replay,
            Drop::NoSession => &mut self.dropped_no_session,
            Drop::Unadmitted => &mut self.dropped_unadmitted,
            Drop::BadControl => &mut self.dropped_bad_control,
            Drop::NotEgress => &mut self.dropped_not_egress,
            Drop::Spoofed => &mut self.dropped_spoofed,
            Drop::Policy => &mut self.dropped_policy,
            Drop::NotIp => &mut self.dropped_not_ip,
            Drop::Capacity => &mut self.dropped_capacity,
        };
        *c += 1;
    }

    /// All drops together.
    pub fn dropped(&self) -> u64 {
        self.dropped_malformed
            + self.dropped_auth
            + self.dropped_replay
            + self.dropped_no_session
            + self.dropped_unadmitted
            + self.dropped_bad_control
            + self.dropped_not_egress
            + self.dropped_spoofed
            + self.dropped_policy
            + self.dropped_not_ip
            + self.dropped_capacity
            + self.dropped_late
    }
}

/// ` asleep=now/slept` once a session has slept, ` rested=n` once a client asked for it,
/// ` stacks=live/started` where stacks run (a userspace egress that has started one),
/// ` udp_flows=live/opened` once a UDP flow has opened, ` udp_too_large=n` once a reply
/// did not fit the tunnel, ` tcp_connect_failed=n` once a destination could not be
/// reached, ` udp_segmented=sends` once flows' datagrams have gone out
/// segmented,
/// ` tun=packets/writes` where a TUN egress has written and ` tun_refused=packets` where the
/// kernel refused some.
struct Levels<'a>(&'a Counters);

impl fmt::Display for Levels<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        if c.sessions_slept > 0 {
            write!(f, " asleep={}/{}", c.sessions_asleep, c.sessions_slept)?;
        }
        if c.sessions_rested > 0 {
            write!(f, " rested={}", c.sessions_rested)?;
        }
        if c.stacks_started > 0 {
            let live = c.stacks_started.saturating_sub(c.stacks_stopped);
            write!(f, " stacks={live}/{}", c.stacks_started)?;
        }
        if c.udp_flows_opened > 0 {
            let live = c.udp_flows_opened.saturating_sub(c.udp_flows_closed);
            write!(f, " udp_flows={live}/{}", c.udp_flows_opened)?;
        }
        if c.udp_too_large > 0 {
            write!(f, " udp_too_large={}", c.udp_too_large)?;
        }
        if c.tcp_connect_failed > 0 {
            write!(f, " tcp_connect_failed={}", c.tcp_connect_failed)?;
        }
        if c.udp_segmented > 0 {
            write!(f, " udp_segmented={}", c.udp_segmented)?;
        }
        if c.tun_packets > 0 {
            write!(f, " tun={}/{}", c.tun_packets, c.tun_writes)?;
        }
        if c.tun_refused > 0 {
            write!(f, " tun_refused={}", c.tun_refused)?;
        }
        Ok(())
    }
}

/// Totals of several workers.
impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Self) {
        self.rx_datagrams += o.rx_datagrams;
        self.tx_datagrams += o.tx_datagrams;
        self.handshakes += o.handshakes;
        self.sessions_created += o.sessions_created;
        self.sessions_admitted += o.sessions_admitted;
        self.sessions_closed += o.sessions_closed;
        self.sessions_slept += o.sessions_slept;
        self.sessions_asleep += o.sessions_asleep;
        self.sessions_rested += o.sessions_rested;
        self.forwarded += o.forwarded;
        self.forwarded_bytes += o.forwarded_bytes;
        self.control += o.control;
        self.attestations += o.attestations;
        self.tokens_redeemed += o.tokens_redeemed;
        self.stacks_started += o.stacks_started;
        self.stacks_stopped += o.stacks_stopped;
        self.udp_segmented += o.udp_segmented;
        self.udp_flows_opened += o.udp_flows_opened;
        self.udp_flows_closed += o.udp_flows_closed;
        self.udp_too_large += o.udp_too_large;
        self.tcp_connect_failed += o.tcp_connect_failed;
        self.tun_packets += o.tun_packets;
        self.tun_writes += o.tun_writes;
        self.tun_refused += o.tun_refused;
        self.tokens_refused += o.tokens_refused;
        self.dropped_malformed += o.dropped_malformed;
        self.dropped_auth += o.dropped_auth;
        self.dropped_replay += o.dropped_replay;
        self.dropped_no_session += o.dropped_no_session;
        self.dropped_unadmitted += o.dropped_unadmitted;
        self.dropped_bad_control += o.dropped_bad_control;
        self.dropped_not_egress += o.dropped_not_egress;
        self.dropped_spoofed += o.dropped_spoofed;
        self.dropped_policy += o.dropped_policy;
        self.dropped_not_ip += o.dropped_not_ip;
        self.dropped_capacity += o.dropped_capacity;
        self.dropped_late += o.dropped_late;
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rx={} tx={} handshakes={} sessions={}/{} admitted={} forwarded={} ({} bytes) control={} attestations={} \
             tokens={} tokens_refused={}{} \
             dropped={} (malformed={} auth={} replay={} no_session={} unadmitted={} bad_control={} \
             not_egress={} spoofed={} policy={} not_ip={} capacity={} late={})",
            self.rx_datagrams,
            self.tx_datagrams,
            self.handshakes,
            self.sessions_created.saturating_sub(self.sessions_closed),
            self.sessions_created,
            self.sessions_admitted,
            self.forwarded,
            self.forwarded_bytes,
            self.control,
            self.attestations,
            self.tokens_redeemed,
            self.tokens_refused,
            Levels(self),
            self.dropped(),
            self.dropped_malformed,
            self.dropped_auth,
            self.dropped_replay,
            self.dropped_no_session,
            self.dropped_unadmitted,
            self.dropped_bad_control,
            self.dropped_not_egress,
            self.dropped_spoofed,
            self.dropped_policy,
            self.dropped_not_ip,
            self.dropped_capacity,
            self.dropped_late,
        )
    }
}
