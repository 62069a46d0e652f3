//! glibc malloc settings for a process that streams blobs: the HTTP client's receive buffers
//! (up to about 400 KiB each) are allocated and freed for every read of an upstream body.
//! Above glibc's mmap threshold each one is mapped anew and page-faulted in on first touch
//! (6.5 % of the facade's CPU on a cold pull, see BENCHMARKS.md); kept in the heap they are
//! reused. Measured: cold single-client pull 1.76 -> 1.50-1.62 CPU s/GiB, peak RSS unchanged
//! (8 cold clients 23.5 MiB, 500 slow readers 96 MiB).

/// Call before any other thread starts (`mallopt` is not safe to call concurrently).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing in `main`, before the runtime or any other thread exists;
    // the arguments are plain integers mallopt accepts.
    unsafe {
        // Buffers below 4 MiB come from the heap and are reused after being freed.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        // And the heap is not trimmed back to the OS for every freed buffer.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}
