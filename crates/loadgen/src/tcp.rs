//! One TCP connection per client, held open and idle as an app's push channel or a
//! keep-alive connection is: SYN, then the ACK that carries a short request, then an ACK for
//! each segment of the reply (and for keep-alive probes), nothing else. Just enough TCP to
//! hold a connection open at the egress, sans-IO and built with smoltcp's wire types; the
//! load generator is not a TCP stack. It sends the SYN and the request again until they are
//! answered (a lost one left the connection unfinished, one or more of 2,000 connections
//! in loaded runs); the egress's TCP sends the reply again itself.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

/// What the client asks for once connected.
pub const REQUEST: &[u8] = b"openrelay-loadgen: hold this connection open\n";

/// Where clients connect, and how many bytes the listener there answers each request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The listener.
    pub addr: SocketAddr,
    /// Bytes of each answer.
    pub answer_len: usize,
}
/// The window the client advertises.
const WINDOW: u16 = 65_535;
/// The client's initial sequence number (one connection per client, never reused).
const ISN: i32 = 1_000;
/// The first wait before the SYN or the request goes again (RFC 6298's initial RTO);
/// doubled each time, up to [`MAX_RTO`].
const RTO: Duration = Duration::from_secs(1);
const MAX_RTO: Duration = Duration::from_secs(8);

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// SYN sent.
    SynSent,
    /// The request went out with the handshake's ACK.
    Established,
    /// The peer sent FIN or RST.
    Closed,
}

/// One connection from the client's tunnel address to the sink.
#[derive(Debug)]
pub struct Conn {
    local: SocketAddrV4,
    remote: SocketAddrV4,
    state: State,
    snd_nxt: TcpSeqNumber,
    rcv_nxt: TcpSeqNumber,
    /// Reply bytes received in order.
    received: usize,
    /// Reply bytes expected.
    answer_len: usize,
    /// The peer has acknowledged the request.
    request_acked: bool,
    /// When the SYN or the request goes again if still unanswered; set by the first
    /// [`retransmit`](Self::retransmit) call after it went.
    retransmit_at: Option<Instant>,
    rto: Duration,
}

impl Conn {
    /// A connection about to open; the SYN to send into the tunnel comes with it.
    /// The whole answer is `answer_len` bytes.
    pub fn connect(
        local: SocketAddrV4,
        remote: SocketAddrV4,
        answer_len: usize,
    ) -> (Self, Vec<u8>) {
        let conn = Self {
            local,
            remote,
            state: State::SynSent,
            snd_nxt: TcpSeqNumber(ISN) + 1,
            rcv_nxt: TcpSeqNumber(0),
            received: 0,
            answer_len,
            request_acked: false,
            retransmit_at: None,
            rto: RTO,
        };
        let syn = conn.syn();
        (conn, syn)
    }

    fn syn(&self) -> Vec<u8> {
        self.segment(TcpControl::Syn, TcpSeqNumber(ISN), None, &[])
    }

    fn request(&self) -> Vec<u8> {
        self.segment(
            TcpControl::Psh,
            TcpSeqNumber(ISN) + 1,
            Some(self.rcv_nxt),
            REQUEST,
        )
    }

    /// The SYN or the request again, when it is due and still unanswered. Call it now and
    /// then (the client's timer does, every 250 ms).
    pub fn retransmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let segment = match self.state {
            State::SynSent => self.syn(),
            State::Established if !self.request_acked => self.request(),
            _ => return None,
        };
        let due = *self.retransmit_at.get_or_insert(now + self.rto);
        if now < due {
            return None;
        }
        self.rto = (self.rto * 2).min(MAX_RTO);
        self.retransmit_at = Some(now + self.rto);
        Some(segment)
    }

    /// Where the connection is.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the whole reply to the request has arrived.
    pub fn replied(&self) -> bool {
        self.received >= self.answer_len
    }

    /// Takes an IP packet out of the tunnel; returns the segment to send back, if any.
    /// Packets that are not this connection's are left alone (`None`).
    pub fn receive(&mut self, ip: &[u8]) -> Option<Vec<u8>> {
        let caps = ChecksumCapabilities::default();
        let packet = Ipv4Packet::new_checked(ip).ok()?;
        let ip_repr = Ipv4Repr::parse(&packet, &caps).ok()?;
        if ip_repr.next_header != IpProtocol::Tcp
            || ip_repr.src_addr != *self.remote.ip()
            || ip_repr.dst_addr != *self.local.ip()
        {
            return None;
        }
        let tcp = TcpPacket::new_checked(packet.payload()).ok()?;
        let repr = TcpRepr::parse(
            &tcp,
            &ip_repr.src_addr.into(),
            &ip_repr.dst_addr.into(),
            &caps,
        )
        .ok()?;
        if repr.src_port != self.remote.port() || repr.dst_port != self.local.port() {
            return None;
        }
        if repr.control == TcpControl::Rst {
            self.state = State::Closed;
            return None;
        }
        match self.state {
            State::SynSent => {
                if repr.control != TcpControl::Syn || repr.ack_number != Some(self.snd_nxt) {
                    return None;
                }
                self.rcv_nxt = repr.seq_number + 1;
                self.state = State::Established;
                self.snd_nxt += REQUEST.len();
                self.retransmit_at = None;
                self.rto = RTO;
                Some(self.request())
            }
            State::Established => {
                if repr.ack_number.is_some_and(|ack| ack >= self.snd_nxt) {
                    self.request_acked = true;
                }
                if repr.seq_number == self.rcv_nxt {
                    let fin = repr.control == TcpControl::Fin;
                    if repr.payload.is_empty() && !fin {
                        // A bare ACK of the request: nothing to answer.
                        return None;
                    }
                    self.rcv_nxt += repr.payload.len();
                    self.received += repr.payload.len();
                    if fin {
                        self.rcv_nxt += 1;
                        self.state = State::Closed;
                    }
                }
                // In order, a keep-alive probe (one before rcv_nxt) or out of order: our
                // ACK says what has arrived.
                Some(self.segment(TcpControl::None, self.snd_nxt, Some(self.rcv_nxt), &[]))
            }
            State::Closed => None,
        }
    }

    fn segment(
        &self,
        control: TcpControl,
        seq: TcpSeqNumber,
        ack: Option<TcpSeqNumber>,
        payload: &[u8],
    ) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            control,
            seq_number: seq,
            ack_number: ack,
            window_len: WINDOW,
            window_scale: None,
            max_seg_size: (control == TcpControl::Syn).then_some(1200),
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: *self.local.ip(),
            dst_addr: *self.remote.ip(),
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let caps = ChecksumCapabilities::default();
        let mut buf = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
        let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
        ip.emit(&mut packet, &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(packet.payload_mut()),
            &IpAddr::V4(*self.local.ip()).into(),
            &IpAddr::V4(*self.remote.ip()).into(),
            &caps,
        );
        buf
    }
}

/// The endpoint as IPv4, if it is one (the sink listens on 127.0.0.1).
pub fn v4(addr: SocketAddr) -> Option<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::Ipv4Addr;

    use super::*;

    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(100, 64, 0, 2), 40_001);
    const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8080);

    /// A segment from the server to the client, built as the client builds its own.
    fn from_server(control: TcpControl, seq: i32, ack: i32, payload: &[u8]) -> Vec<u8> {
        let server = Conn {
            local: SERVER,
            remote: CLIENT,
            state: State::Established,
            snd_nxt: TcpSeqNumber(seq),
            rcv_nxt: TcpSeqNumber(ack),
            received: 0,
            answer_len: 0,
            request_acked: false,
            retransmit_at: None,
            rto: RTO,
        };
        server.segment(control, TcpSeqNumber(seq), Some(TcpSeqNumber(ack)), payload)
    }

    /// (seq, ack, payload length) of a segment the client sent.
    fn read(ip: &[u8]) -> (i32, Option<i32>, usize, TcpControl) {
        let packet = Ipv4Packet::new_checked(ip).unwrap();
        let tcp = TcpPacket::new_checked(packet.payload()).unwrap();
        let repr = TcpRepr::parse(
            &tcp,
            &IpAddr::V4(*CLIENT.ip()).into(),
            &IpAddr::V4(*SERVER.ip()).into(),
            &ChecksumCapabilities::default(),
        )
        .expect("checksums valid");
        (
            repr.seq_number.0,
            repr.ack_number.map(|a| a.0),
            repr.payload.len(),
            repr.control,
        )
    }

    #[test]
    fn a_connection_opens_sends_its_request_acks_the_answer_and_probes() {
        let (mut conn, syn) = Conn::connect(CLIENT, SERVER, REQUEST.len());
        assert_eq!(read(&syn), (ISN, None, 0, TcpControl::Syn));
        // Not this connection's: another port.
        let mut other = from_server(TcpControl::Syn, 5_000, ISN + 1, &[]);
        other[20..22].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(conn.receive(&other), None);
        assert_eq!(conn.state(), State::SynSent);

        let request = conn
            .receive(&from_server(TcpControl::Syn, 5_000, ISN + 1, &[]))
            .expect("the handshake's ACK with the request");
        assert_eq!(
            read(&request),
            (ISN + 1, Some(5_001), REQUEST.len(), TcpControl::Psh)
        );
        assert_eq!(conn.state(), State::Established);
        let sent = ISN + 1 + REQUEST.len() as i32;
        // A bare ACK of the request needs no answer.
        assert_eq!(
            conn.receive(&from_server(TcpControl::None, 5_001, sent, &[])),
            None
        );
        // The answer, in two segments: each is acknowledged.
        let (a, b) = REQUEST.split_at(10);
        let ack = conn
            .receive(&from_server(TcpControl::Psh, 5_001, sent, a))
            .unwrap();
        assert_eq!(read(&ack), (sent, Some(5_011), 0, TcpControl::None));
        assert!(!conn.replied());
        let ack = conn
            .receive(&from_server(TcpControl::Psh, 5_011, sent, b))
            .unwrap();
        let end = 5_001 + REQUEST.len() as i32;
        assert_eq!(read(&ack), (sent, Some(end), 0, TcpControl::None));
        assert!(conn.replied());
        // A keep-alive probe (one before what the client expects) is answered.
        let ack = conn
            .receive(&from_server(TcpControl::None, end - 1, sent, &[]))
            .unwrap();
        assert_eq!(read(&ack), (sent, Some(end), 0, TcpControl::None));
        // RST closes.
        assert_eq!(
            conn.receive(&from_server(TcpControl::Rst, end, sent, &[])),
            None
        );
        assert_eq!(conn.state(), State::Closed);
    }

    #[test]
    fn an_unanswered_syn_goes_again_ever_later() {
        let t0 = Instant::now();
        let (mut conn, syn) = Conn::connect(CLIENT, SERVER, REQUEST.len());
        assert_eq!(conn.retransmit(t0), None, "the first call arms the timer");
        assert_eq!(conn.retransmit(t0 + Duration::from_millis(999)), None);
        let mut at = t0 + RTO;
        for wait in [2, 4, 8, 8] {
            assert_eq!(conn.retransmit(at), Some(syn.clone()), "the same SYN");
            assert_eq!(
                conn.retransmit(at + Duration::from_secs(wait) - Duration::from_millis(1)),
                None
            );
            at += Duration::from_secs(wait);
        }
        conn.receive(&from_server(TcpControl::Syn, 5_000, ISN + 1, &[]))
            .expect("the request");
        assert_eq!(
            conn.retransmit(at),
            None,
            "answered: the request's timer starts"
        );
    }

    #[test]
    fn an_unacknowledged_request_goes_again_until_acknowledged() {
        let t0 = Instant::now();
        let (mut conn, _) = Conn::connect(CLIENT, SERVER, REQUEST.len());
        let request = conn
            .receive(&from_server(TcpControl::Syn, 5_000, ISN + 1, &[]))
            .expect("the request");
        assert_eq!(conn.retransmit(t0), None);
        assert_eq!(conn.retransmit(t0 + RTO), Some(request.clone()));
        // The SYN-ACK again (our ACK was lost with the request): acknowledged with a bare
        // ACK, and the request keeps its timer.
        let ack = conn
            .receive(&from_server(TcpControl::Syn, 5_000, ISN + 1, &[]))
            .expect("an ACK");
        assert_eq!(read(&ack).2, 0);
        assert_eq!(conn.retransmit(t0 + RTO * 3), Some(request));
        let sent = ISN + 1 + REQUEST.len() as i32;
        assert_eq!(
            conn.receive(&from_server(TcpControl::None, 5_001, sent, &[])),
            None
        );
        assert_eq!(
            conn.retransmit(t0 + RTO * 60),
            None,
            "acknowledged: nothing more"
        );
    }
}
