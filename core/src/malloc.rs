//! What the daemon asks of glibc's allocator: fewer arenas, and the memory
//! its plugins' inits used for a moment handed back once it serves.
//!
//! Both are measured choices (BENCHMARKS.md): idle memory is one of the
//! figures a microkernel must win against the monolith it replaces, and
//! glibc's defaults are tuned for throughput of long-lived heaps, not for a
//! daemon whose start-up allocates far more than it keeps.

/// Caps glibc's malloc arenas at the number of CPUs (at most 4), unless
/// `MALLOC_ARENA_MAX` says otherwise. Call it before any thread starts.
///
/// Why: glibc gives each thread that allocates while the others hold their
/// arenas a new one, up to eight per CPU, and keeps every arena for the
/// life of the process. The daemon's threads (workers, plugin lanes, one
/// thread per plugin init, and the inits of one dependency wave run at
/// once) left 2 MiB more anonymous memory at idle than with one arena per
/// CPU, on a daemon whose whole idle RSS is about 25 MiB (BENCHMARKS.md).
/// One arena per CPU keeps allocation free of contention between threads
/// that run at the same time.
pub fn cap_arenas() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
        // SAFETY: mallopt only sets an allocator parameter; it is called
        // before the daemon starts any thread, and a refused value (0
        // returned) leaves glibc's default in place.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cpus as libc::c_int);
        }
    }
}

/// Hands the free pages of every arena back to the kernel, once, after
/// start-up. Blocking (it walks every arena under its lock): call it off
/// the async workers.
///
/// Why: opening redb databases (the metadata store, each snapshotter's)
/// allocates their region allocators' bitmaps, a few hundred KiB each,
/// and frees most of them again; the daemon's start peaks at about 4.5 MiB
/// of live heap (heaptrack). glibc keeps freed chunks mapped, so without
/// this the idle daemon carries its start-up's high-water mark: 1.3 MiB of
/// anonymous memory, measured on the bundle daemon (BENCHMARKS.md).
pub fn release_free_pages() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns unused memory of glibc's own heaps
    // to the kernel; it takes each arena's lock, so it is safe while other
    // threads allocate.
    unsafe {
        libc::malloc_trim(0);
    }
}
