//! The kernel's futex hash for a process with a thread per connection.
//!
//! Since Linux 6.16 each multi-threaded process gets a private futex hash
//! sized for `min(threads, CPUs)`: 16 buckets on a 2-core machine, however
//! many threads the process has. Every waking of a futex (a contended
//! mutex's unlock, each `Condvar` notify, a glibc arena lock handed over)
//! walks the chain of every thread waiting in that bucket: with 4,000
//! threads waiting, 7.8 µs per wake against 1.0 µs in the system-wide
//! hash (measured on this project's 2-core machine, kernel 6.18). cwa-sim
//! spent 43% of its CPU in `futex_wake` holding 5,000 event GETs (`perf
//! record -a` during the 5,000-session HTTPS message-latency load run).
//! [`use_global_hash`] puts the process back on the system-wide hash
//! (sized for 256 buckets per CPU); older kernels do not know the request
//! and are unaffected.

/// `prctl` option and sub-command (include/uapi/linux/prctl.h, Linux 6.16).
#[cfg(target_os = "linux")]
const PR_FUTEX_HASH: libc::c_int = 78;
#[cfg(target_os = "linux")]
const PR_FUTEX_HASH_SET_SLOTS: libc::c_ulong = 1;

/// Makes this process use the system-wide futex hash. Call before the
/// threads start (the kernel moves waiters, but there are none then).
/// Returns whether the kernel took the request (false on kernels before
/// 6.16, which have only the system-wide hash anyway).
pub fn use_global_hash() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with integer arguments only; slots 0 = the
        // system-wide hash.
        unsafe {
            libc::prctl(
                PR_FUTEX_HASH,
                PR_FUTEX_HASH_SET_SLOTS,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a kernel with private hashes, the process reports 0 slots (the
    /// system-wide hash) afterwards, even once it has threads.
    #[test]
    fn the_process_stays_on_the_global_hash() {
        if !use_global_hash() {
            return; // a kernel before 6.16: nothing to check
        }
        let t = std::thread::spawn(|| ());
        t.join().unwrap();
        const PR_FUTEX_HASH_GET_SLOTS: libc::c_ulong = 2;
        // SAFETY: as above.
        let slots = unsafe { libc::prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_GET_SLOTS, 0, 0, 0) };
        assert_eq!(slots, 0);
    }
}
