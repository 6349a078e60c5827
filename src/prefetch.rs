//! A hint to the CPU to load a cache line ahead of its use.
//!
//! Lookups at random places in large tables (the dedup table's slots; the session path's
//! key slots in the engine and rows in the view) are each a cache miss of their own.
//! Where a loop knows the next places ahead (ids queued, hints carried, a request's
//! next ids), it asks for them some steps before it gets there, so the misses overlap
//! instead of queueing one after another.

/// Asks for the cache line holding `*p`. Never reads it as far as the program can tell:
/// any address, even a dangling or null one, is fine.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetch` is a hint: it cannot fault and has no effect the program can
    // observe, whatever the address; SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks for every cache line of `*p` (a struct over a few lines).
#[inline(always)]
pub fn prefetch_all<T>(p: *const T) {
    let bytes = p.cast::<u8>();
    let mut at = 0;
    while at < std::mem::size_of::<T>() {
        prefetch(bytes.wrapping_add(at));
        at += 64;
    }
}

/// How many steps ahead the pipelines' loops prefetch: far enough for a miss (a few
/// hundred cycles) to land before the step that needs it, near enough that the line is
/// still there.
pub const AHEAD: usize = 16;
