//! The test binary's allocator: the system allocator, plus a per-thread record of
//! the largest single block requested while armed. It is how the fuzzer notices a
//! decoder reserving memory for a length or count the input does not back.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Watch;

thread_local! {
    // Const-initialized and without destructors: safe to touch from the allocator.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

/// Starts recording on this thread.
pub fn arm() {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
}

/// Stops recording; the largest block requested since `arm`.
pub fn disarm() -> usize {
    ARMED.with(|a| a.set(false));
    LARGEST.with(Cell::get)
}

// SAFETY: every call is passed unchanged to `System`; `note` only reads and writes
// thread-local cells and never allocates.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}
