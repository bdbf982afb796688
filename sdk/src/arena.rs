//! [`CallArena`], the SDK's opt-in bump allocator for plugin calls.

#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
#[cfg(target_arch = "wasm32")]
use core::cell::Cell;

/// A bump allocator for plugins whose calls allocate little, opted into with
/// `#[global_allocator]`.
///
/// orca runs every plugin call in a fresh instance and discards it afterwards, so memory a
/// call allocates never needs to be reused by a later call. A bump allocator hands out memory
/// by moving a pointer and frees by doing nothing (except for the newest block, which is
/// given back, and grown in place by `realloc`), which makes the many small allocations of
/// decoding a call's input and building its answer nearly free. It is the right choice for a
/// plugin that allocates a bounded amount per call (a placement policy, a simple strategy);
/// a plugin that allocates and frees a lot in one call (parsing large payloads) should keep
/// the default allocator, since freed memory is not reused and counts against the host's
/// memory cap.
///
/// ```ignore
/// #[cfg(target_family = "wasm")]
/// #[global_allocator]
/// static ALLOC: orca_plugin_sdk::CallArena = orca_plugin_sdk::CallArena::new();
/// ```
///
/// Natively (tests), it forwards to the system allocator.
pub struct CallArena {
    #[cfg(target_arch = "wasm32")]
    next: Cell<usize>,
    #[cfg(target_arch = "wasm32")]
    end: Cell<usize>,
    #[cfg(target_arch = "wasm32")]
    last: Cell<usize>,
}

// SAFETY: orca runs a plugin instance on one thread (wasm32 without the threads proposal, no
// shared memory); natively the type holds no state.
unsafe impl Sync for CallArena {}

impl CallArena {
    /// An empty arena; it grows the linear memory on the first allocation.
    pub const fn new() -> Self {
        CallArena {
            #[cfg(target_arch = "wasm32")]
            next: Cell::new(0),
            #[cfg(target_arch = "wasm32")]
            end: Cell::new(0),
            #[cfg(target_arch = "wasm32")]
            last: Cell::new(usize::MAX),
        }
    }
}

impl Default for CallArena {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(target_arch = "wasm32")]
const PAGE: usize = 64 * 1024;
/// Pages the arena grows by at least: one `memory.grow` serves most calls.
#[cfg(target_arch = "wasm32")]
const MIN_GROW_PAGES: usize = 4;

#[cfg(target_arch = "wasm32")]
impl CallArena {
    /// Grows the linear memory by enough pages for `size` bytes aligned to `align`; false
    /// when the host refuses (its memory cap).
    fn grow(&self, size: usize, align: usize) -> bool {
        let pages = (size + align).div_ceil(PAGE).max(MIN_GROW_PAGES);
        let old = core::arch::wasm32::memory_grow(0, pages);
        if old == usize::MAX {
            return false;
        }
        let old_end = old * PAGE;
        if old_end != self.end.get() {
            // First use, or the memory was grown by someone else: continue at the new pages.
            self.next.set(old_end);
            self.last.set(usize::MAX);
        }
        self.end.set(old_end + pages * PAGE);
        true
    }
}

#[cfg(target_arch = "wasm32")]
unsafe impl GlobalAlloc for CallArena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut start = self.next.get().next_multiple_of(layout.align());
        if self.end.get() == 0 || start + layout.size() > self.end.get() {
            if !self.grow(layout.size(), layout.align()) {
                return core::ptr::null_mut();
            }
            start = self.next.get().next_multiple_of(layout.align());
        }
        self.next.set(start + layout.size());
        self.last.set(start);
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // Only the newest block is given back; the rest goes with the instance.
        if ptr as usize == self.last.get() {
            self.next.set(ptr as usize);
            self.last.set(usize::MAX);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let at = ptr as usize;
        if at == self.last.get() && at + new_size <= self.end.get() {
            self.next.set(at + new_size);
            return ptr;
        }
        // SAFETY: the caller's contract for `realloc` is the one `alloc` needs.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not overlap (the new
            // one starts at or after the old one's end, or the old one is not the newest).
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        }
        new
    }
}

#[cfg(not(target_arch = "wasm32"))]
unsafe impl GlobalAlloc for CallArena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}
