//! Real TUN devices in a network namespace of the test's own: TCP segments written through a
//! `WriteBatch` reach a kernel socket byte-exact, in as few writes as coalescing allows.
//! Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};
use tokio::io::AsyncReadExt;
use tun_rs::{AsyncDevice, DeviceBuilder, VIRTIO_NET_HDR_LEN};
use tunio::{Flushed, WriteBatch};

const HOST: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const PORT: u16 = 5000;
const SEGMENT: usize = 1000;
const SEGMENTS: usize = 20;

fn root() -> bool {
    if testbed::available() {
        return true;
    }
    assert!(
        std::env::var_os("OPENRELAY_SKIP_ROOT_TESTS").is_some(),
        "needs root; set OPENRELAY_SKIP_ROOT_TESTS=1 to skip"
    );
    false
}

/// Runs `test` on a thread in a network namespace of its own (gone when the thread ends),
/// with a TUN device `tunio0` at HOST/24.
fn in_netns<F>(offload: bool, test: impl FnOnce(AsyncDevice) -> F + Send + 'static)
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
struct Flow {
    port: u16,
    seq: u32,
    ack: u32,
}

impl Flow {
    /// A segment of this flow from PEER with valid checksums.
    fn packet(&self, control: TcpControl, seq: u32, payload: &[u8]) -> Vec<u8> {
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
    async fn open(dev: &AsyncDevice, port: u16) -> Self {
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
    fn segment(&self, i: usize) -> Vec<u8> {
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
fn payload(port: u16, i: usize) -> Vec<u8> {
    (0..SEGMENT)
        .map(|k| (k as u16 ^ port ^ (i as u16) << 3) as u8)
        .collect()
}

/// Opens `flows` connections, writes their data segments interleaved in one batch and
/// checks what every accepted socket reads. Returns what the flush did.
async fn send_interleaved(dev: AsyncDevice, flows: u16) -> Flushed {
    let listener = tokio::net::TcpListener::bind(SocketAddrV4::new(HOST, PORT))
        .await
        .unwrap();
    let mut opened = Vec::new();
    let mut sockets = Vec::new();
    for k in 0..flows {
        opened.push(Flow::open(&dev, 40_000 + k).await);
        let (socket, from) = listener.accept().await.unwrap();
        sockets.push((from.port(), socket));
    }
    let mut batch = WriteBatch::new();
    for i in 0..SEGMENTS {
        for flow in &opened {
            batch.push(&flow.segment(i));
        }
    }
    assert_eq!(batch.len(), SEGMENTS * usize::from(flows));
    let flushed = batch.flush(&dev).unwrap();
    assert!(batch.is_empty());
    for (port, mut socket) in sockets {
        let mut got = vec![0u8; SEGMENTS * SEGMENT];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            socket.read_exact(&mut got),
        )
        .await
        .expect("the data did not arrive within 5 s")
        .unwrap();
        let want: Vec<u8> = (0..SEGMENTS).flat_map(|i| payload(port, i)).collect();
        assert!(got == want, "flow from port {port} read other bytes");
    }
    flushed
}

#[test]
fn in_order_segments_of_each_flow_become_one_write_and_arrive_byte_exact() {
    if !root() {
        return;
    }
    in_netns(true, |dev| async move {
        let flushed = send_interleaved(dev, 2).await;
        assert_eq!(
            flushed,
            Flushed {
                packets: 2 * SEGMENTS,
                writes: 2
            }
        );
    });
}

#[test]
fn without_the_virtio_header_every_packet_is_its_own_write_and_arrives_byte_exact() {
    if !root() {
        return;
    }
    in_netns(false, |dev| async move {
        let flushed = send_interleaved(dev, 2).await;
        assert_eq!(
            flushed,
            Flushed {
                packets: 2 * SEGMENTS,
                writes: 2 * SEGMENTS
            }
        );
    });
}

#[test]
fn a_write_the_kernel_refuses_is_an_error_and_the_batch_is_emptied() {
    if !root() {
        return;
    }
    in_netns(true, |dev| async move {
        let flow = Flow {
            port: 40_000,
            seq: 1,
            ack: 1,
        };
        dev.enabled(false).unwrap();
        let mut batch = WriteBatch::new();
        batch.push(&flow.segment(0));
        assert!(
            batch.flush(&dev).is_err(),
            "a TUN device that is down took a write"
        );
        assert!(batch.is_empty());
        dev.enabled(true).unwrap();
        batch.push(&flow.segment(0));
        assert_eq!(
            batch.flush(&dev).unwrap(),
            Flushed {
                packets: 1,
                writes: 1
            }
        );
    });
}
