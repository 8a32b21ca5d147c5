//! The pages of idle flows' buffers go back to the system: measured as this process's
//! resident memory, with flows between two stacks on a fake clock.
//!
//! One test in this file: resident memory is the whole process's, so nothing may run beside it.

mod support;

use netstack::StackConfig;
use std::time::Duration;
use support::{dst, pattern, transfer, Pair};

/// Flows opened; each end holds two 256 KiB buffers, so each flow 1 MiB at both ends.
const FLOWS: usize = 24;

/// This process's resident memory in bytes (/proc/self/statm, pages).
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("resident pages in statm");
    pages * 4096
}

#[test]
fn idle_flows_give_their_buffer_pages_back() {
    const MIB: usize = 1024 * 1024;
    let mut pair = Pair::new();
    let flows: Vec<_> = (0..FLOWS).map(|_| pair.open(dst())).collect();
    let up = pattern(400 * 1024, 1);
    let down = pattern(400 * 1024, 2);
    let before = resident();

    // More than a buffer's length each way touches every page of all four buffers.
    for &(c, s) in &flows {
        assert_eq!(transfer(&mut pair, true, c, s, &up), up);
        assert_eq!(transfer(&mut pair, false, s, c, &down), down);
    }
    let busy = resident();
    assert!(
        busy >= before + FLOWS * 3 * MIB / 4,
        "the transfers touched the buffers: {} MiB resident against {} MiB before",
        busy / MIB,
        before / MIB
    );

    pair.advance(StackConfig::DEFAULT_IDLE_BUFFERS_AFTER + Duration::from_millis(100));
    assert_eq!(pair.given_back(), (FLOWS as u64, FLOWS as u64));
    let idle = resident();
    assert!(
        idle <= before + FLOWS * MIB / 16,
        "idle flows keep at most a few pages each: {} MiB resident against {} MiB before \
         the transfers and {} MiB after",
        idle / MIB,
        before / MIB,
        busy / MIB
    );

    // And they still carry data.
    let (c, s) = flows[0];
    assert_eq!(transfer(&mut pair, true, c, s, &up), up);
}
