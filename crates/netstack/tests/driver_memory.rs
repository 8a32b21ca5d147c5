//! What a terminate stack run by the driver holds before its first flow, counted with dhat:
//! an egress runs one per active session, so it is a per-session cost.
//!
//! One test in this file, run without libtest (`harness = false`, see `testbed::run_alone`):
//! dhat counts the whole process, so nothing may run beside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use netstack::{driver, Mode, Stack, StackConfig};
use tokio::sync::mpsc;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const EGRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));
const STACKS: usize = 100;
/// The stack, its shared state, the task, its input, a function taking its TCP flows and a
/// receiver of its datagrams ([`driver::spawn_fed`], [`driver::StackHandle::take_incoming`]):
/// 2,110 bytes when written, with a receiver of flows instead of the function. With tokio
/// channels for the incoming flows and datagrams it was 8,654 (a block of 32 entries each,
/// made with the channel); a tokio channel for the input added 1,312 more. 3,078 bytes with
/// the function, as `cargo test --workspace` builds it (the workspace's features make
/// tokio's structures larger: 2,742 for this crate alone); 3,062 with a receiver.
const MAX_PER_STACK: usize = 3200;

fn a_terminate_stack_and_its_receivers_hold_no_queue_before_the_first_flow() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The channel to the tunnel is shared by all stacks, as an egress worker's is.
        let (out_tx, out_rx) = mpsc::channel::<(usize, Vec<u8>)>(8);
        let mut running = Vec::with_capacity(STACKS);
        let before = dhat::HeapStats::get().curr_bytes;
        for n in 0..STACKS {
            let stack = Stack::new(
                StackConfig::new(Mode::Terminate, vec![EGRESS]),
                Instant::now(),
            )
            .expect("config");
            let (handle, input) = driver::spawn_fed(stack, 1024, out_tx.clone(), move |p| (n, p));
            assert!(handle.take_incoming(drop));
            let datagrams = handle.incoming_udp().expect("terminate mode");
            running.push((handle, datagrams, input));
        }
        // Each task runs once and waits for input.
        tokio::task::yield_now().await;
        let per_stack = (dhat::HeapStats::get().curr_bytes - before) / STACKS;
        assert!(
            per_stack <= MAX_PER_STACK,
            "{per_stack} bytes per stack (at most {MAX_PER_STACK})"
        );
        assert_eq!(running.len(), STACKS);
        drop(out_rx);
    });
}

fn main() {
    testbed::run_alone(a_terminate_stack_and_its_receivers_hold_no_queue_before_the_first_flow);
}
