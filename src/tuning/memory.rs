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
//! - [`restart_without_thread_caches`], before anything else: glibc gives every thread a cache
//!   of freed blocks, which a relay with two threads per connection pays for thousands of
//!   times; the relay turns it off the only way glibc allows, by starting itself again.
//! - [`release_unused_stack`]: a connection thread gives back the stack pages its TLS handshake
//!   touched once and never needs again.
//!
//! Platform-specific: only glibc has these calls; elsewhere they do nothing.

/// The environment variable glibc reads its tunables from, once, when a process starts.
const TUNABLES: &str = "GLIBC_TUNABLES";
/// glibc's per-thread cache of freed blocks, turned off.
const NO_THREAD_CACHE: &str = "glibc.malloc.tcache_count=0";
/// Set for the second start, so that a glibc that ignores [`TUNABLES`] cannot make the relay
/// start itself over and over. Set it yourself (to anything) and the relay never restarts.
const RESTARTED: &str = "RELAYCHAT_TUNED_RESTART";

/// Starts this program again, in place (same process, same arguments, same open files), with
/// glibc's per-thread cache of freed blocks turned off. Returns at once, doing nothing, when the
/// cache is off already, when `GLIBC_TUNABLES` sets it some other way (which is how an operator
/// keeps the cache: `GLIBC_TUNABLES=glibc.malloc.tcache_count=7`), when `RELAYCHAT_TUNED_RESTART`
/// is set, and where a restart could not work or would not count: a setuid or file-capability
/// program (glibc ignores the variable there), or a program started through the dynamic loader
/// (`ld-linux.so ./server`: starting "this program" again would start the loader). Returns after
/// a failed restart too, with one line on stderr; the relay then runs with the cache. Call it
/// first thing in `main`, before any thread starts.
///
/// Why: glibc keeps up to seven freed blocks of each small size per thread, for that thread
/// to reuse without taking a lock. The blocks stay in the thread's cache while it lives. A relay
/// connection has two threads for as long as it is connected, and what they freed after the
/// handshake and the hello stayed cached: 8–9 KiB per connection, about a fifth of an idle TLS
/// connection's memory (measured with `cargo bench --bench rooms -- --clients 2000 --rooms 20
/// --lines 0 --path tls`: 56 KiB per connection with the cache, 46 without). glibc reads this
/// setting only from the environment, when a program starts, so the only way for the relay to
/// set it for itself is to start again with it set (`exec` of its own binary, by the name it was
/// started with, so that `ps` and `pgrep` see the same name). What the cache saves, a lock per
/// small allocation, does not show in the relay's benchmarks (see README).
pub fn restart_without_thread_caches() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::{CStr, OsStr};
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::CommandExt;

        let tunables = std::env::var_os(TUNABLES).unwrap_or_default();
        let setting = b"glibc.malloc.tcache_count";
        let mentions_cache = tunables.as_bytes().windows(setting.len()).any(|w| w == setting);
        // SAFETY: getauxval only reads the auxiliary vector the kernel gave this process; the
        // AT_EXECFN string it points to lives as long as the process.
        let (secure, loader, started_as) = unsafe {
            let execfn = libc::getauxval(libc::AT_EXECFN) as *const libc::c_char;
            let started_as =
                (!execfn.is_null()).then(|| OsStr::from_bytes(CStr::from_ptr(execfn).to_bytes()));
            (libc::getauxval(libc::AT_SECURE) != 0, libc::getauxval(libc::AT_BASE), started_as)
        };
        // AT_BASE is where the kernel put the dynamic loader; 0 when the loader *is* the program
        // (started by hand) or there is none (a static build).
        if std::env::var_os(RESTARTED).is_some() || mentions_cache || secure || loader == 0 {
            return;
        }
        let program = match started_as {
            Some(path) => path.to_owned(),
            None => match std::env::current_exe() {
                Ok(path) => path.into_os_string(),
                Err(_) => return,
            },
        };
        let mut value = tunables;
        if !value.is_empty() {
            value.push(":");
        }
        value.push(NO_THREAD_CACHE);
        let mut args = std::env::args_os();
        let mut again = std::process::Command::new(&program);
        if let Some(name) = args.next() {
            again.arg0(name);
        }
        // `exec` replaces this program and returns only if it could not.
        let failed = again.args(args).env(TUNABLES, &value).env(RESTARTED, "1").exec();
        // Before trying, `exec` set SIGPIPE back to the system's default (which kills the
        // process); Rust programs ignore it and get an error from the write instead. A relay that
        // failed to restart must not die the first time a client hangs up in the middle of a
        // write, so it is ignored again.
        // SAFETY: no other thread exists yet; this only sets this process's SIGPIPE disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        eprintln!(
            "note: could not restart {} without glibc's thread caches ({failed}); running with them",
            program.to_string_lossy()
        );
    }
}

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

/// Gives back the pages of this thread's stack that lie below the caller's frame. The relay's
/// connection thread calls it once, after the TLS handshake and the hello, just before it settles
/// into reading frames for the rest of the connection's life.
///
/// Why: a page of a thread's stack, once touched, stays in memory until the thread ends, even
/// when the function that touched it has long returned. The handshake runs deep (key exchange,
/// signing, rustls moving a 1 KiB connection about by value), and it left a connection thread
/// with 24 KiB of stack where reading chat needs 12. With 10,000 connections that is 120 MiB of
/// dead stack. `madvise(MADV_DONTNEED)` drops those pages; if the thread goes that deep again,
/// the kernel hands it fresh zeroed pages, one page fault each.
///
/// Measured with `cargo bench --bench rooms -- --clients 2000 --rooms 20 --lines 0 --path tls`
/// and the relay's `/proc/PID/smaps`: each reader's stack went from 28 KiB resident (24 KiB
/// with the handshake in a frame of its own) to 12 KiB.
///
/// Only for threads the program started (on the main thread it does nothing: glibc describes
/// that stack from `/proc/self/maps` and the stack limit, slowly and only roughly). Never
/// inlined: the address of its own local must lie below every live frame of its caller.
#[inline(never)]
pub fn release_unused_stack() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: pthread_getattr_np and pthread_attr_getstack only describe the calling thread's own
    // stack mapping (one that grows down, as on every platform this is compiled for). Everything
    // below this function's frame is dead: the function is never inlined, so every live frame of
    // its callers lies above its own local; nothing may point into frames that have returned; and
    // a signal handler builds its frame below the stack pointer only while it runs. One page
    // below `here` is kept for this function's own callees (madvise itself); glibc's thread data
    // lives at the top of the mapping, above every frame, and the guard page is outside the range
    // glibc reports. MADV_DONTNEED on private anonymous memory only makes the next touch of those
    // pages read zeros, which is all unused stack is.
    unsafe {
        if libc::syscall(libc::SYS_gettid) == libc::c_long::from(libc::getpid()) {
            return; // the main thread (see above)
        }
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return;
        }
        let mut bottom: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let found = libc::pthread_attr_getstack(&attr, &mut bottom, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        let page = usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)).unwrap_or(4096);
        if !found || !page.is_power_of_two() {
            return;
        }
        // The address of a local is a close enough stand-in for the stack pointer.
        let here = std::ptr::addr_of!(bottom) as usize;
        let end = here.saturating_sub(page) & !(page - 1);
        let start = (bottom as usize).div_ceil(page) * page;
        if here > bottom as usize && here <= bottom as usize + size && end > start {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}
