//! Real TUN devices in a network namespace of the test's own: TCP segments written through a
//! `WriteBatch` reach a kernel socket byte-exact, in as few writes as coalescing allows.
//! Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddrV4;

use tokio::io::AsyncReadExt;
use tun_rs::AsyncDevice;
use tunio::{Flushed, WriteBatch};

mod support;
use support::{in_netns, payload, Flow, HOST, PORT, SEGMENT, SEGMENTS};

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
    if !testbed::required() {
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
    if !testbed::required() {
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
    if !testbed::required() {
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
