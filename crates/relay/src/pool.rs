//! Tunnel addresses handed to admitted sessions.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// First address handed out; `100.64.0.1` is the relay's own control address.
const FIRST: u32 = u32::from_be_bytes([100, 64, 0, 2]);
/// Last address of 100.64.0.0/10 (shared address space, RFC 6598) that is handed out.
const LAST: u32 = u32::from_be_bytes([100, 127, 255, 254]);

/// Hands out addresses from 100.64.0.0/10, reusing released ones first.
///
/// A relay with several workers gives each its own share, every `n`-th address from its
/// own offset, so workers never hand out the same address, and the worker that owns an
/// address follows from the address alone ([`AddressPool::worker_of`]).
#[derive(Debug)]
pub(crate) struct AddressPool {
    next: u32,
    stride: u32,
    free: BTreeSet<u32>,
}

impl AddressPool {
    pub(crate) fn new() -> Self {
        Self::share(0, 1)
    }

    /// Worker `k`'s share of `n`.
    pub(crate) fn share(k: usize, n: usize) -> Self {
        let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        let k = u32::try_from(k).unwrap_or(0) % n;
        Self {
            next: FIRST + k,
            stride: n,
            free: BTreeSet::new(),
        }
    }

    /// Which of `n` workers hands out `addr`.
    pub(crate) fn worker_of(addr: Ipv4Addr, n: usize) -> usize {
        let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        (u32::from(addr).wrapping_sub(FIRST) % n) as usize
    }

    pub(crate) fn allocate(&mut self) -> Option<Ipv4Addr> {
        if let Some(a) = self.free.pop_first() {
            return Some(Ipv4Addr::from(a));
        }
        if self.next > LAST {
            return None;
        }
        let a = self.next;
        self.next = self.next.saturating_add(self.stride);
        Some(Ipv4Addr::from(a))
    }

    pub(crate) fn release(&mut self, addr: Ipv4Addr) {
        self.free.insert(u32::from(addr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_unique_and_reuses() {
        let mut p = AddressPool::new();
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert_eq!(a, Ipv4Addr::new(100, 64, 0, 2));
        assert_ne!(a, b);
        p.release(a);
        assert_eq!(p.allocate(), Some(a));
    }

    #[test]
    fn shares_are_disjoint() {
        let mut seen = std::collections::HashSet::new();
        for k in 0..3 {
            let mut p = AddressPool::share(k, 3);
            for _ in 0..100 {
                let a = p.allocate().unwrap();
                assert!(seen.insert(a), "{a} handed out twice");
                assert_eq!(AddressPool::worker_of(a, 3), k);
            }
        }
    }
}
