//! glibc malloc settings for a long-lived daemon, and handing freed heap back to the kernel
//! after a schedule load. No-ops on other C libraries (musl, macOS), whose allocators behave
//! differently and are not what the footprint figures were measured on.
//!
//! Why: loading 10,000 entries allocates about 20 MB that is freed at once, and glibc keeps
//! freed heap mapped. With its dynamic mmap threshold (raised to the size of the largest
//! buffer freed so far, up to 32 MB) the load's large buffers also came from the heap, so an
//! idle beat kept its load peak as resident memory: 31 MB where 6.5 MB was live.
//!
//! This is the only module allowed `unsafe`: each call is a plain FFI call into glibc with
//! integer arguments and no pointers, valid at any time from any thread.

#![allow(unsafe_code)]

/// Large buffers go to their own mappings at or above this size, whatever was freed before:
/// glibc's initial threshold, kept fixed (setting it disables the dynamic raise).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// At most this many malloc arenas. glibc allows 8 per core; every tokio worker and blocking
/// thread that allocates gets one, and each keeps its own freed memory (an idle beat with
/// 10,000 entries held 2.8 MB in its second arena). The beat is I/O bound and allocates
/// little between fire times, so one arena costs no visible lock contention.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 1;

/// Fixes the mmap threshold and caps the arenas. Call in `main` before any thread starts
/// (arenas already created stay), for the commands that run a beat (`app::tune_allocator`).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only changes glibc's tunables; it returns 0 on
    // an unsupported parameter, which leaves the default in place (not worth failing for).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// Returns the free pages of every arena to the kernel. Call after a burst of short-lived
/// allocations (a schedule load or reload): glibc only gives back the top of its heap on its
/// own, and a load's parse tree is freed in the middle of it. Takes a few milliseconds.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the amount of padding to keep and walks glibc's own free
    // lists under the arena locks; it is thread-safe and touches no memory of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}
