//! Giving freed memory back to the operating system (a tuning corner: nothing here changes what
//! the relay does, only how much memory it keeps).
//!
//! When a slow client is cut or an attacker leaves, the frames queued for them are freed, but the
//! C allocator (glibc's malloc) keeps freed memory for reuse, so the relay's RSS would stay where
//! the attack left it. Two settings fix that:
//!
//! - [`tune_allocator`], at start: at most 4 arenas (each thread allocates from an arena, and
//!   every arena keeps its own free memory), freed memory at the top of an arena goes back to the
//!   system once more than 4 MiB of it is free, and buffers up to 1 MiB (file chunks are 256 KiB)
//!   come from the arenas, so a transfer reuses the same pages instead of mapping fresh ones.
//! - [`give_back_free_memory`], every few seconds on the janitor thread: `malloc_trim(0)` hands
//!   back the free pages in the middle of every arena too. On a quiet relay it costs microseconds.
//!
//! Platform-specific: only glibc has these calls; elsewhere both do nothing.

/// Sets the allocator up for a long-running server (see the module docs). Call it first thing
/// in `main`, before any other thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
    }
}

/// Returns unused heap memory to the operating system, where the allocator supports it.
pub(crate) fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}
