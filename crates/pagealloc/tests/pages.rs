//! What the allocator promises, checked page by page with `mincore`: a large block is a
//! mapping of its own, none of its pages resident until written and every one of them
//! given back by `madvise`; small blocks and large ones that mimalloc served stay
//! mimalloc's. The test binary runs on the allocator itself.
#![allow(unsafe_code, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout};

use pagealloc::{PageAlloc, LARGE};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: PageAlloc = PageAlloc;

const PAGE: usize = 4096;

/// Residency of each page of `len` bytes at `p` (page-aligned), or `None` where nothing
/// is mapped.
fn resident(p: *mut u8, len: usize) -> Option<Vec<bool>> {
    let pages = len.div_ceil(PAGE);
    let mut vec = vec![0u8; pages];
    // SAFETY: mincore only reads the page tables of the range and writes `pages` bytes.
    let r = unsafe { libc::mincore(p.cast(), len, vec.as_mut_ptr()) };
    (r == 0).then(|| vec.iter().map(|b| b & 1 == 1).collect())
}

fn count(pages: &[bool]) -> usize {
    pages.iter().filter(|r| **r).count()
}

#[test]
fn a_large_block_is_a_mapping_that_holds_only_the_pages_written() {
    let len = 256 * 1024;
    let layout = Layout::from_size_align(len, 1).unwrap();
    // SAFETY: a non-zero layout; the block is freed below with the same layout.
    let p = unsafe { ALLOC.alloc_zeroed(layout) };
    assert!(!p.is_null());
    assert_eq!(p as usize % PAGE, 0, "starts on a page");
    assert_eq!(
        count(&resident(p, len).unwrap()),
        0,
        "zeroed, yet nothing touched"
    );

    // SAFETY: `p` is valid for `len` bytes.
    let block = unsafe { std::slice::from_raw_parts_mut(p, len) };
    block[..PAGE * 3].fill(7);
    assert_eq!(count(&resident(p, len).unwrap()), 3, "the pages written");
    // (Reading maps the kernel's zero page, which mincore counts: read only now.)
    assert!(block[PAGE * 3..].iter().all(|b| *b == 0));
    block.fill(9);
    assert_eq!(count(&resident(p, len).unwrap()), len / PAGE);

    // SAFETY: the whole block, page-aligned and a whole number of pages.
    let r = unsafe { libc::madvise(p.cast(), len, libc::MADV_DONTNEED) };
    assert_eq!(r, 0);
    assert_eq!(
        count(&resident(p, len).unwrap()),
        0,
        "every page given back, the first and last too"
    );

    // SAFETY: allocated above with this layout.
    unsafe { ALLOC.dealloc(p, layout) };
    assert!(resident(p, len).is_none(), "the mapping is gone");
}

#[test]
fn small_blocks_and_large_ones_mimalloc_served_stay_mimallocs() {
    let small = Layout::from_size_align(LARGE - 1, 8).unwrap();
    let large = Layout::from_size_align(LARGE, 8).unwrap();
    // SAFETY: non-zero layouts, each block freed with its own.
    unsafe {
        let p = ALLOC.alloc(small);
        assert!(libmimalloc_sys::mi_is_in_heap_region(p.cast_const().cast()));
        ALLOC.dealloc(p, small);

        // What `alloc` falls back to when the kernel refuses a mapping.
        let p = mimalloc::MiMalloc.alloc(large);
        p.write_bytes(5, LARGE);
        ALLOC.dealloc(p, large);
        let page = (p as usize / PAGE * PAGE) as *mut u8;
        assert!(
            resident(page, PAGE).is_some(),
            "freed by mimalloc, not unmapped from under it"
        );
        let again = mimalloc::MiMalloc.alloc(large);
        again.write_bytes(6, LARGE);
        mimalloc::MiMalloc.dealloc(again, large);
    }
}

#[test]
fn a_large_alignment_is_left_to_mimalloc() {
    let layout = Layout::from_size_align(LARGE, 64 * 1024).unwrap();
    // SAFETY: a non-zero layout, freed with itself.
    unsafe {
        let p = ALLOC.alloc(layout);
        assert_eq!(p as usize % (64 * 1024), 0);
        assert!(libmimalloc_sys::mi_is_in_heap_region(p.cast_const().cast()));
        ALLOC.dealloc(p, layout);
    }
}

/// One step on a set of live blocks.
#[derive(Debug, Clone)]
enum Op {
    Alloc {
        size: usize,
        align: usize,
        zeroed: bool,
    },
    Realloc {
        which: usize,
        size: usize,
    },
    Free {
        which: usize,
    },
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..4096,
        (LARGE - 2 * PAGE)..(LARGE + 2 * PAGE),
        LARGE..(600 * 1024),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            size(),
            prop::sample::select(vec![1usize, 8, 16, 4096, 8192]),
            any::<bool>()
        )
            .prop_map(|(size, align, zeroed)| Op::Alloc {
                size,
                align,
                zeroed
            }),
        (any::<usize>(), size()).prop_map(|(which, size)| Op::Realloc { which, size }),
        any::<usize>().prop_map(|which| Op::Free { which }),
    ]
}

/// The byte block `tag` holds at `i`.
fn byte(tag: u8, i: usize) -> u8 {
    tag.wrapping_add((i % 251) as u8)
}

/// Fills the block, with a few bytes at each end and in the middle checked later.
fn fill(p: *mut u8, len: usize, tag: u8) {
    // SAFETY: the caller's block is valid for `len` bytes.
    let block = unsafe { std::slice::from_raw_parts_mut(p, len) };
    for (i, b) in block.iter_mut().enumerate() {
        *b = byte(tag, i);
    }
}

fn intact(p: *const u8, len: usize, tag: u8) -> bool {
    // SAFETY: the caller's block is valid for `len` bytes.
    let block = unsafe { std::slice::from_raw_parts(p, len) };
    block.iter().enumerate().all(|(i, b)| *b == byte(tag, i))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Blocks of any size about the threshold, any alignment, grown and shrunk across it,
    /// keep their bytes and their alignment, and go back where they came from.
    #[test]
    fn blocks_keep_their_bytes_across_the_threshold(ops in prop::collection::vec(op(), 1..40)) {
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        for (n, op) in ops.into_iter().enumerate() {
            let tag = n as u8;
            match op {
                Op::Alloc { size, align, zeroed } => {
                    let layout = Layout::from_size_align(size, align).unwrap();
                    // SAFETY: a non-zero layout; freed below with it.
                    let p = unsafe {
                        if zeroed { ALLOC.alloc_zeroed(layout) } else { ALLOC.alloc(layout) }
                    };
                    prop_assert!(!p.is_null());
                    prop_assert_eq!(p as usize % align, 0);
                    if zeroed {
                        // SAFETY: valid for `size` bytes.
                        let block = unsafe { std::slice::from_raw_parts(p, size) };
                        prop_assert!(block.iter().all(|b| *b == 0));
                    }
                    fill(p, size, tag);
                    live.push((p, layout, tag));
                }
                Op::Realloc { which, size } if !live.is_empty() => {
                    let (p, layout, old_tag) = live.swap_remove(which % live.len());
                    // SAFETY: `p` is live with `layout`; the new size is non-zero.
                    let q = unsafe { ALLOC.realloc(p, layout, size) };
                    prop_assert!(!q.is_null());
                    prop_assert_eq!(q as usize % layout.align(), 0);
                    prop_assert!(intact(q, layout.size().min(size), old_tag));
                    let layout = Layout::from_size_align(size, layout.align()).unwrap();
                    fill(q, size, tag);
                    live.push((q, layout, tag));
                }
                Op::Free { which } if !live.is_empty() => {
                    let (p, layout, tag) = live.swap_remove(which % live.len());
                    prop_assert!(intact(p, layout.size(), tag));
                    // SAFETY: live with this layout.
                    unsafe { ALLOC.dealloc(p, layout) };
                }
                _ => {}
            }
        }
        for (p, layout, tag) in live {
            prop_assert!(intact(p, layout.size(), tag));
            // SAFETY: live with this layout.
            unsafe { ALLOC.dealloc(p, layout) };
        }
    }
}
