//! Giving an idle connection's buffer pages back to the system.
//!
//! Each TCP flow's buffers are sized for a fast connection (256 KiB each way by default), and
//! every page a burst once touched stays resident for as long as the flow lives, idle or
//! not: an egress holding many quiet connections would hold a quarter of a megabyte for each
//! that ever moved that much. The buffers of a flow that holds no data are given back here;
//! the next data faults fresh zeroed pages in.

use std::sync::OnceLock;

/// Hands the whole pages inside `buf` back to the system; their bytes read as zero
/// afterwards. The partial pages at either end are left alone (they may share a page with
/// other allocations). Failure (e.g. locked memory) only means the pages stay resident.
pub(crate) fn give_back(buf: &mut [u8]) {
    let page = page_size();
    let start = buf.as_mut_ptr() as usize;
    let first = start.next_multiple_of(page);
    let end = (start + buf.len()) / page * page;
    if end <= first {
        return;
    }
    discard(&mut buf[first - start..end - start]);
}

/// `madvise(MADV_DONTNEED)` on `pages`, which start and end on page boundaries.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn discard(pages: &mut [u8]) {
    // SAFETY: `pages` is borrowed mutably, so no one else reads or writes these bytes while
    // the call runs, and it covers whole pages only, so no byte outside it is touched. The
    // call changes no mapping; on the private memory of an allocation it makes the pages
    // read as zero from then on, which is a write of valid `u8` values to bytes we own.
    let _ = unsafe { libc::madvise(pages.as_mut_ptr().cast(), pages.len(), libc::MADV_DONTNEED) };
}

/// Elsewhere the pages stay resident.
#[cfg(not(target_os = "linux"))]
fn discard(_pages: &mut [u8]) {}

/// The system's page size (4 KiB where it cannot be read).
fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
            #[allow(unsafe_code)]
            let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            if let Ok(size @ 1..) = usize::try_from(size) {
                if size.is_power_of_two() {
                    return size;
                }
            }
        }
        4096
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_pages_read_as_zero_and_the_partial_ends_are_kept() {
        let page = page_size();
        let mut buf = vec![0xabu8; 5 * page];
        let start = buf.as_ptr() as usize;
        let offset = start.next_multiple_of(page) - start;
        give_back(&mut buf);
        let whole = (5 * page - offset) / page * page;
        assert!(whole >= 4 * page);
        assert!(
            buf[..offset].iter().all(|&b| b == 0xab),
            "the leading partial page is kept"
        );
        assert!(
            buf[offset..offset + whole].iter().all(|&b| b == 0),
            "the whole pages were given back"
        );
        assert!(
            buf[offset + whole..].iter().all(|&b| b == 0xab),
            "the trailing partial page is kept"
        );
        // Still ours to use.
        buf.fill(7);
        assert!(buf.iter().all(|&b| b == 7));
    }

    #[test]
    fn a_buffer_within_one_page_is_left_alone() {
        let mut buf = vec![1u8; 100];
        give_back(&mut buf);
        assert!(buf.iter().all(|&b| b == 1));
        give_back(&mut []);
    }
}
