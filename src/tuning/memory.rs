//! glibc's allocator settings: the relay gives freed memory back, the client keeps its chunk
//! buffers (part of the tuning corner, [`crate::tuning`]: nothing here changes what either does).
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
pub fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Tells the C allocator to keep freed chunk buffers for reuse instead of handing them back to
/// the kernel. Called first thing by the client binary (the relay has [`tune_allocator`]).
///
/// A transfer allocates and frees a 256 KiB buffer per chunk. By default glibc serves such sizes
/// with `mmap` and returns them (or trims its heap) on free, so the next chunk faults fresh pages
/// in again. On a virtual machine like this project's, a page the host has not backed yet costs
/// several times the copy into it: `client receive` of 1 GiB ran at ~470 MB/s, and at ~1 GB/s with
/// these two settings. Memory stays flat: only a few chunks are ever alive at once.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; it is called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}
