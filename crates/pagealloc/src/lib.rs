//! The relay image's global allocator: mimalloc, except that a block of
//! [`LARGE`] bytes or more gets a mapping of its own from the kernel, as glibc's malloc
//! does above its mmap threshold.
//!
//! The large blocks of a relay are the userspace stack's TCP buffers, 256 KiB each way for
//! every connection an egress holds, of which a quiet connection keeps no page resident
//! (`netstack::StackConfig::idle_buffers_after`). From mimalloc such a block came with
//! resident memory of the allocator's own: 10,000 sessions each holding one quiet
//! connection took about 0.9 KiB per session more than with the buffers mapped on their
//! own (bench/NOTES.md, "Relay scale"). A mapping of its own starts and ends on a page boundary,
//! so every page of the buffer can go back, and its pages are zero until written, so a
//! zeroed buffer costs nothing until used.
//!
//! Costs: two system calls (`mmap`, `munmap`) per large block, that is per TCP connection
//! of a relay, next to the connection's own; and a mapping each, counted against the
//! kernel's `vm.max_map_count` (neighbouring mappings merge, so far fewer in practice).
//! When the kernel refuses a mapping the block comes from mimalloc instead, and freeing
//! tells the two apart by asking mimalloc whether the block is its own.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// Blocks at least this large get a mapping of their own. Below it mimalloc's pages
/// serve them better: the relay's packet and copy buffers (up to 64 KiB) come and go
/// on the data path, where a system call each would cost.
pub const LARGE: usize = 128 * 1024;

/// The largest alignment a mapping gives: its start is page-aligned (at least 4 KiB
/// everywhere Linux runs).
const MAPPED_ALIGN: usize = 4096;

/// mimalloc, with large blocks on mappings of their own (see the crate's docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct PageAlloc;

/// Whether a block of this layout is asked of the kernel.
fn mapped(layout: Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= MAPPED_ALIGN
}

/// A fresh private mapping of `len` bytes, or null if the kernel refuses.
#[allow(unsafe_code)]
fn map(len: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches
    // no existing memory; the result is checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

/// A mapping for a large `layout`; for any other, or when the kernel refuses one, what
/// `mimalloc` gives.
fn map_or(layout: Layout, mimalloc: impl FnOnce() -> *mut u8) -> *mut u8 {
    if mapped(layout) {
        let p = map(layout.size());
        if !p.is_null() {
            return p;
        }
    }
    mimalloc()
}

/// Whether mimalloc made the block at `p` (a large block it served when the kernel
/// refused a mapping). mimalloc's own `mi_cfree` decides the same way.
#[allow(unsafe_code)]
fn mimallocs(p: *mut u8) -> bool {
    // SAFETY: looks `p` up in mimalloc's page map, which any address may be.
    unsafe { libmimalloc_sys::mi_is_in_heap_region(p.cast::<c_void>().cast_const()) }
}

#[allow(unsafe_code)]
// SAFETY: every block is either a mapping of at least its size, page-aligned (which
// satisfies any alignment up to MAPPED_ALIGN, the most `mapped` lets through), or one of
// mimalloc's, made for the same layout; `dealloc` and `realloc` return each to where it
// came from.
unsafe impl GlobalAlloc for PageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        map_or(layout, || unsafe { mimalloc::MiMalloc.alloc(layout) })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // A fresh mapping reads as zero: no page is touched until written.
        // SAFETY: the caller's layout, as GlobalAlloc::alloc_zeroed requires.
        map_or(layout, || unsafe {
            mimalloc::MiMalloc.alloc_zeroed(layout)
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapped(layout) && !mimallocs(ptr) {
            // SAFETY: `ptr` was returned by `map(layout.size())` (large and not
            // mimalloc's) and the caller gives it up. A failed munmap would leave the
            // mapping in place: a leak, never an unsoundness.
            let _ = unsafe { libc::munmap(ptr.cast(), layout.size()) };
            return;
        }
        // SAFETY: mimalloc made `ptr` for `layout`.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !mapped(layout) && !mapped(new) {
            // SAFETY: mimalloc made `ptr` for `layout` (it is small), and keeps the new
            // block for a small layout too.
            return unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        }
        // SAFETY: a new block for `new`, the old one's bytes copied as far as both
        // reach, then the old one freed where it came from.
        unsafe {
            let p = self.alloc(new);
            if !p.is_null() {
                std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            p
        }
    }
}
