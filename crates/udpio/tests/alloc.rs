//! Heap allocations of batched sends and receives, counted with dhat's testing mode.
//!
//! One test in this file, run without libtest (`harness = false`, see `testbed::run_alone`):
//! dhat counts the whole process, so nothing may run beside it.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use udpio::{BatchSocket, Offload};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const ROUNDS: u64 = 50;

fn blocks() -> u64 {
    dhat::HeapStats::get().total_blocks
}

/// Sends `batch` and receives it; returns the allocations that took.
async fn round(tx: &BatchSocket, rx: &BatchSocket, batch: &[(SocketAddr, Vec<u8>)]) -> u64 {
    let before = blocks();
    tx.send_all(batch).await;
    let mut got = 0;
    while got < batch.len() {
        tokio::time::timeout(Duration::from_secs(5), rx.recv_each(|_, _| got += 1))
            .await
            .expect("the datagrams arrive")
            .unwrap();
    }
    blocks() - before
}

fn warm_sends_and_shared_receives_allocate_nothing() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let rx = BatchSocket::bind(lo, Offload::On).await.unwrap();
        let tx = BatchSocket::bind(lo, Offload::On).await.unwrap();
        let to = rx.local_addr().unwrap();
        // Eight datagrams of one size to one peer: one segmented send where the kernel
        // has GSO.
        let batch: Vec<(SocketAddr, Vec<u8>)> = (0..8u8).map(|i| (to, vec![i; 1200])).collect();
        // The first round makes the thread's buffers.
        round(&tx, &rx, &batch).await;
        let mut allocated = 0;
        for _ in 0..ROUNDS {
            allocated += round(&tx, &rx, &batch).await;
        }
        assert_eq!(allocated, 0, "{allocated} allocations in {ROUNDS} rounds");
        // The joined, segmented path ran (loopback has GSO).
        if tx.max_segments() > 1 {
            assert!(tx.segmented.load(std::sync::atomic::Ordering::Relaxed) >= ROUNDS);
        }
    });
}

fn main() {
    testbed::run_alone(warm_sends_and_shared_receives_allocate_nothing);
}
