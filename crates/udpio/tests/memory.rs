//! Sockets that only send, or that receive into the thread's shared buffers, hold no
//! receive buffers of their own. A relay's ingress opens two sockets per session that
//! forwards: each took 32 × 64 KiB zeroed buffers at creation (1.5 MiB resident per socket
//! in a release build with glibc's malloc; with them this test fails at 266 KiB per
//! socket).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use udpio::{BatchSocket, Offload};

const SOCKETS: u64 = 200;
/// Far above a socket's own state, far below one receive buffer set (2 MiB).
const MAX_PER_SOCKET: u64 = 64 * 1024;

fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "current_thread")]
async fn many_sockets_cost_no_receive_buffers_each() {
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sink = BatchSocket::bind(lo, Offload::On).await.unwrap();
    let to = sink.local_addr().unwrap();
    // The thread's shared buffers exist before the count starts.
    let first = BatchSocket::bind(lo, Offload::On).await.unwrap();
    first.send_all(&[(to, vec![0; 1200])]).await;
    sink.recv_each(|_, _| {}).await.unwrap();
    let before = rss();
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        let s = BatchSocket::bind(lo, Offload::On).await.unwrap();
        s.send_all(&[(to, vec![1; 1200])]).await;
        sockets.push(s);
    }
    // Each socket also receives a reply, through the shared buffers.
    for s in &sockets {
        let back = s.local_addr().unwrap();
        sink.send_all(&[(back, vec![2; 1200])]).await;
    }
    let mut replies = 0;
    for s in &sockets {
        tokio::time::timeout(
            Duration::from_secs(5),
            s.recv_each(|_, d| {
                assert_eq!(d, [2; 1200]);
                replies += 1;
            }),
        )
        .await
        .expect("the reply arrives")
        .unwrap();
    }
    assert_eq!(replies, SOCKETS);
    let grown = rss().saturating_sub(before);
    assert!(
        grown < SOCKETS * MAX_PER_SOCKET,
        "{SOCKETS} sockets took {} KiB, {} KiB each",
        grown / 1024,
        grown / SOCKETS / 1024
    );
}
