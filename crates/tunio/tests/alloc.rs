//! Heap allocations of coalesced TUN writes, counted with dhat's testing mode: a relay or
//! client writes every packet it delivers through a `WriteBatch`, so an allocation there is
//! one per packet. Needs root.
//!
//! One test in this file, run without libtest (`harness = false`, see `testbed::run_alone`):
//! dhat counts the whole process, so nothing may run beside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddrV4;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tunio::{Flushed, WriteBatch};

mod support;
use support::{in_netns, payload, Flow, HOST, PORT, SEGMENT, SEGMENTS};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const ROUNDS: usize = 10;

fn coalesced_writes_allocate_nothing_once_warm() {
    if !testbed::required() {
        return;
    }
    let _profiler = dhat::Profiler::builder().testing().build();
    in_netns(true, |dev| async move {
        let listener = tokio::net::TcpListener::bind(SocketAddrV4::new(HOST, PORT))
            .await
            .unwrap();
        let mut flow = Flow::open(&dev, 40_000).await;
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut batch = WriteBatch::new();
        let mut got = vec![0u8; SEGMENTS * SEGMENT];
        let want: Vec<u8> = (0..SEGMENTS).flat_map(|i| payload(flow.port, i)).collect();
        let mut flush_blocks = Vec::with_capacity(ROUNDS + 1);
        // Round 0 warms up: the batch's buffers and the coalescing tables are made.
        for _ in 0..=ROUNDS {
            let segments: Vec<Vec<u8>> = (0..SEGMENTS).map(|i| flow.segment(i)).collect();
            let before = dhat::HeapStats::get().total_blocks;
            for s in &segments {
                batch.push(s);
            }
            let flushed = batch.flush(&dev).unwrap();
            flush_blocks.push(dhat::HeapStats::get().total_blocks - before);
            assert_eq!(
                flushed,
                Flushed {
                    packets: SEGMENTS,
                    writes: 1
                },
                "one flow's in-order segments are one write"
            );
            tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut got))
                .await
                .expect("the data did not arrive within 5 s")
                .unwrap();
            assert!(got == want, "the socket read other bytes");
            flow.seq += (SEGMENTS * SEGMENT) as u32;
        }
        assert_eq!(
            flush_blocks[1..],
            [0; ROUNDS],
            "allocations per flush of {SEGMENTS} packets after the first"
        );
    });
}

fn main() {
    testbed::run_alone(coalesced_writes_allocate_nothing_once_warm);
}
