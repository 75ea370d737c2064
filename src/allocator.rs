//! glibc's allocator, set for a tunnel that moves 64 KiB buffers at hundreds of MB/s.
//!
//! With glibc's defaults, freed memory at the top of the heap goes back to the kernel as soon
//! as 128 KiB of it is free, and the next buffers fault fresh pages in again: page faults were
//! about 9 % of a bulk transfer's CPU (docs/benchmarks.md, "UDX per-packet cost, session 6").
//! Keeping up to 256 MiB and serving allocations below 32 MiB from the heap cut the CPU per
//! GiB by 8-15 % on each side. What stays resident is what the process once needed: its
//! peak, itself bounded by our limits (at most 30 MiB per side in the benchmark), not more.

/// Sets glibc's trim and mmap thresholds; elsewhere there is nothing to set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() {
    const KEEP_FREED: libc::c_int = 256 << 20;
    const MMAP_ABOVE: libc::c_int = 32 << 20;
    // SAFETY: mallopt only changes the allocator's parameters, under its own lock; it reads
    // and writes no memory of ours.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREED);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_ABOVE);
    }
}

/// Sets glibc's trim and mmap thresholds; elsewhere there is nothing to set.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}
