//! What the TUN tests share: a namespace with a TUN device, and TCP segments from a peer
//! that the kernel accepts.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};
use tun_rs::{AsyncDevice, DeviceBuilder, VIRTIO_NET_HDR_LEN};
use tunio::WriteBatch;

pub(crate) const HOST: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
pub(crate) const PEER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
pub(crate) const PORT: u16 = 5000;
pub(crate) const SEGMENT: usize = 1000;
pub(crate) const SEGMENTS: usize = 20;

/// Runs `test` on a thread in a network namespace of its own (gone when the thread ends),
/// with a TUN device `tunio0` at HOST/24.
pub(crate) fn in_netns<F>(offload: bool, test: impl FnOnce(AsyncDevice) -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let dev = DeviceBuilder::new()
                .name("tunio0")
                .ipv4(HOST, 24, None)
                .mtu(1500)
                .offload(offload)
                .build_async()
                .unwrap();
            dev.enabled(true).unwrap();
            test(dev).await;
        });
    })
    .join()
    .unwrap();
}

/// One TCP connection from PEER (played by the test through the TUN) to a kernel socket.
pub(crate) struct Flow {
    pub(crate) port: u16,
    pub(crate) seq: u32,
    pub(crate) ack: u32,
}

impl Flow {
    /// A segment of this flow from PEER with valid checksums.
    pub(crate) fn packet(&self, control: TcpControl, seq: u32, payload: &[u8]) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: self.port,
            dst_port: PORT,
            control,
            seq_number: TcpSeqNumber(seq as i32),
            ack_number: (control != TcpControl::Syn).then_some(TcpSeqNumber(self.ack as i32)),
            window_len: 65_535,
            window_scale: None,
            max_seg_size: (control == TcpControl::Syn).then_some(SEGMENT as u16),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: PEER,
            dst_addr: HOST,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.header_len() + payload.len(),
            hop_limit: 64,
        };
        let caps = ChecksumCapabilities::default();
        let mut pkt = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut pkt[..]), &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut pkt[ip.buffer_len()..]),
            &PEER.into(),
            &HOST.into(),
            &caps,
        );
        pkt
    }

    /// Opens the connection: SYN through the TUN, the kernel's SYN-ACK read back, ACK.
    pub(crate) async fn open(dev: &AsyncDevice, port: u16) -> Self {
        let mut flow = Self {
            port,
            seq: 1_000 * u32::from(port),
            ack: 0,
        };
        let mut batch = WriteBatch::new();
        batch.push(&flow.packet(TcpControl::Syn, flow.seq, b""));
        batch.flush(dev).unwrap();
        let mut buf = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
        loop {
            let n = dev.recv(&mut buf).await.unwrap();
            let ip = if dev.tcp_gso() {
                &buf[VIRTIO_NET_HDR_LEN..n]
            } else {
                &buf[..n]
            };
            let Ok(ip) = Ipv4Packet::new_checked(ip) else {
                continue;
            };
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                continue;
            };
            if ip.next_header() == IpProtocol::Tcp && tcp.dst_port() == port && tcp.syn() {
                flow.ack = (tcp.seq_number().0 as u32).wrapping_add(1);
                break;
            }
        }
        flow.seq += 1;
        batch.push(&flow.packet(TcpControl::None, flow.seq, b""));
        batch.flush(dev).unwrap();
        flow
    }

    /// The i-th data segment and its bytes.
    pub(crate) fn segment(&self, i: usize) -> Vec<u8> {
        let payload = payload(self.port, i);
        let control = if i + 1 == SEGMENTS {
            TcpControl::Psh
        } else {
            TcpControl::None
        };
        self.packet(control, self.seq + (i * SEGMENT) as u32, &payload)
    }
}

/// Bytes that differ per flow and segment, so a misplaced segment shows.
pub(crate) fn payload(port: u16, i: usize) -> Vec<u8> {
    (0..SEGMENT)
        .map(|k| (k as u16 ^ port ^ (i as u16) << 3) as u8)
        .collect()
}
