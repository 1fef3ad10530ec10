//! Keeping a thread-per-connection daemon's resident memory proportional to
//! what it holds, not to what it once did (glibc and Linux only; elsewhere
//! these do nothing):
//!
//! - [`limit_malloc_arenas`]: glibc gives each thread that contends for the
//!   allocator an arena of its own, up to eight per core, each keeping
//!   freed memory in 64 MiB heaps; with thousands of threads those hold
//!   most of the freed memory. Called once at start-up.
//! - [`note_freed`] and [`trim_if_due`]: after a burst of session ends
//!   (or of Config DB connections closed), `malloc_trim(0)` hands the free pages
//!   inside the arenas back to the system, at most once per
//!   [`RETURN_INTERVAL`] so a storm of frees costs one trim, not thousands
//!   (through one process-wide [`MemoryReturn`]); one more trim follows a
//!   burst, for what was freed after its last note, and [`owe_trim`] asks
//!   for one for what a thread's thread-locals free as it exits.
//! - [`reexec_without_thread_caches`]: glibc keeps, per thread, a cache
//!   of recently freed blocks (tcache, up to 7 blocks of each of 64 sizes)
//!   that no trim reaches. Every session thread keeps one for hours, full
//!   of what its sign-in freed: measured with `tests/load.rs` at 1,000
//!   HTTP sessions, 40 KiB of each session's 108 KiB. The cache is only
//!   configurable through the `GLIBC_TUNABLES` environment variable read at
//!   process start, so collabd sets it and executes itself again, once
//!   (with one more tunable that makes every thread's control block
//!   smaller; see [`NO_THREAD_CACHES`]).
//! - [`release_idle_memory`]: a long-lived thread (a session's link
//!   or event thread) that did deep work once (the sign-in: TLS, the CWA
//!   client, XML, the Config DB) keeps every stack page it touched resident
//!   for hours. Before it blocks for a long wait, it gives the pages below
//!   its current frame back (`madvise(MADV_DONTNEED)`; the next deep call
//!   touches them again as zero pages), and the small heap blocks it keeps
//!   cached ([`super::thread_cache`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bound glibc's malloc arenas to `max` (`M_ARENA_MAX`), unless
/// `GLIBC_TUNABLES` sets `glibc.malloc.arena_max` (the operator's choice).
/// Call before the threads start.
pub fn limit_malloc_arenas(max: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if tunables_set("glibc.malloc.arena_max") {
            return;
        }
        let max = libc::c_int::try_from(max.max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a tuning parameter.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, max) };
        if ok != 1 {
            log::warn!("mallopt(M_ARENA_MAX, {max}) refused");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = max;
}

/// The glibc tunables collabd runs with:
/// - no per-thread caches of freed memory;
/// - room in every thread's control block for one link-map namespace
///   rather than four (collabd never calls `dlmopen`; each namespace more
///   reserves static TLS at the top of every thread's stack: measured, 896
///   bytes less on each of a session's two threads, which takes the event
///   thread's wait from five stack pages to four);
/// - a cache of the stacks of ended threads of 2 MiB rather than 40 (each
///   cached stack keeps its top pages resident, about 13 KiB: after 5,000
///   sessions ended the default cache held 80 of them; a new thread whose
///   stack is not cached maps a fresh one, a few microseconds).
pub const NO_THREAD_CACHES: &str =
    "glibc.malloc.tcache_count=0:glibc.rtld.nns=1:glibc.pthread.stack_cache_size=2097152";

/// Executes this program again (its own file, same arguments, same
/// process id, same descriptors) with [`NO_THREAD_CACHES`] added to
/// `GLIBC_TUNABLES`, unless that variable already sets
/// `glibc.malloc.tcache_count` (the operator's choice, or this is the
/// second run). Call first thing, before any thread exists. Returns only
/// when nothing was executed: `Ok(())` when the setting is already made,
/// or the error of the exec, after which the program runs with the caches
/// (more memory, nothing else changes).
pub fn reexec_without_thread_caches() -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if tunables_set("glibc.malloc.tcache_count") {
            return Ok(());
        }
        let mut tunables = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
        if !tunables.is_empty() {
            tunables.push(":");
        }
        tunables.push(NO_THREAD_CACHES);
        let mut args = std::env::args_os();
        // The program's own path, so that the process keeps its name
        // (`/proc/self/exe` itself would rename it "exe"); that link only
        // when the file is gone (replaced by an upgrade).
        let program = std::env::current_exe()
            .ok()
            .filter(|p| p.exists())
            .unwrap_or_else(|| "/proc/self/exe".into());
        let mut command = std::process::Command::new(program);
        if let Some(argv0) = args.next() {
            command.arg0(argv0);
        }
        // `exec` only returns on failure.
        Err(command.args(args).env("GLIBC_TUNABLES", tunables).exec())
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    Ok(())
}

/// Whether the `GLIBC_TUNABLES` this process started with sets `name`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tunables_set(name: &str) -> bool {
    std::env::var_os("GLIBC_TUNABLES").is_some_and(|t| sets_tunable(&t.to_string_lossy(), name))
}

/// Whether `tunables` (`name=value` pairs separated by colons, glibc's
/// syntax) sets `name`.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn sets_tunable(tunables: &str, name: &str) -> bool {
    tunables
        .split(':')
        .any(|setting| setting.split('=').next() == Some(name))
}

/// Gives freed heap memory back to the system after bursts of frees,
/// rate-limited: [`MemoryReturn::note_freed`] after something big ended;
/// the trim runs at most once per `interval`, on the calling thread.
#[derive(Debug)]
pub struct MemoryReturn {
    start: Instant,
    interval: Duration,
    /// Milliseconds after `start` of the last trim (0: never).
    last_ms: AtomicU64,
    /// Frees noted since the last trim.
    pending: AtomicU64,
    /// The last trim was caused by noted frees, so one more is owed an
    /// `interval` later: what a session frees after its end is noted
    /// (its threads unwinding, the finisher's captured state dropping) is
    /// only returned by a trim that runs after it.
    follow_up: AtomicBool,
}

impl MemoryReturn {
    /// A trimmer that trims at most once per `interval`.
    pub fn new(interval: Duration) -> MemoryReturn {
        MemoryReturn {
            start: Instant::now(),
            interval,
            last_ms: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            follow_up: AtomicBool::new(false),
        }
    }

    /// Something was freed (a session ended). Trims now if the last trim
    /// is at least `interval` ago; returns whether it did.
    pub fn note_freed(&self) -> bool {
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.trim_if_due()
    }

    /// Something will be freed in a moment, by a thread that cannot trim
    /// after it (a thread's thread-locals, as it exits): the next
    /// [`MemoryReturn::trim_if_due`] at least `interval` after the last
    /// trim trims.
    pub fn owe_trim(&self) {
        self.follow_up.store(true, Ordering::Relaxed);
    }

    /// Trims if frees were noted (or the last trim was for noted frees:
    /// one follow-up trim) and the last trim is at least `interval` ago.
    /// Call it now and then, e.g. from a periodic thread, so the last
    /// frees of a burst are returned too, including those made just after
    /// their note. Returns whether it trimmed.
    pub fn trim_if_due(&self) -> bool {
        let noted = self.pending.load(Ordering::Relaxed) > 0;
        if !noted && !self.follow_up.load(Ordering::Relaxed) {
            return false;
        }
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.interval.as_millis() as u64 {
            return false;
        }
        // One thread wins the slot; the others skip.
        if self
            .last_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.pending.store(0, Ordering::Relaxed);
        self.follow_up.store(noted, Ordering::Relaxed);
        trim_heap();
        true
    }
}

/// How often, at most, the process returns freed heap memory
/// ([`note_freed`]).
pub const RETURN_INTERVAL: Duration = Duration::from_secs(1);

/// The process's one trimmer: session ends and the Config DB pool's closing
/// of idle connections note their frees here, so a storm of either costs
/// one trim a second.
static RETURNS: std::sync::LazyLock<MemoryReturn> =
    std::sync::LazyLock::new(|| MemoryReturn::new(RETURN_INTERVAL));

/// Something sizeable was freed (a session ended, idle Config DB
/// connections closed): trims now if the last trim is [`RETURN_INTERVAL`]
/// ago.
pub fn note_freed() {
    RETURNS.note_freed();
}

/// A thread is about to exit and free what its thread-locals hold: the
/// next [`trim_if_due`] (the session reaper's tick) returns it.
pub fn owe_trim() {
    RETURNS.owe_trim()
}

/// Trims if frees were noted or a trim is owed (see
/// [`MemoryReturn::trim_if_due`]) and the last trim is [`RETURN_INTERVAL`]
/// ago; call it now and then so the last frees of a burst go back too.
pub fn trim_if_due() -> bool {
    RETURNS.trim_if_due()
}

/// `malloc_trim(0)`: return free memory at the top of and inside every
/// arena to the system.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How long a long-lived thread's peer must have been silent before the
/// thread gives its stack pages back (the held event GET, the device link's
/// read): a session that has been silent this long is likely to stay so
/// for minutes, while one in a conversation would otherwise give its pages
/// back and fault them in again at every message, each release a TLB
/// shootdown across the processors (with 50 ms here, three `madvise`
/// calls per relayed message in the message-latency load run, strace, and
/// `__madvise` 5% of collabd's CPU, perf). Idle sessions, the ones that
/// count by the thousand, wait far longer than this.
pub const RELEASE_AFTER_QUIET: std::time::Duration = std::time::Duration::from_secs(1);

/// Stack headroom kept below this function's own stack pointer: room for
/// the `madvise` call (a return address; the system call stub uses no
/// stack) and the 128-byte red zone, with a margin. Kept small on purpose:
/// a page within it that an earlier deep call touched stays resident
/// (measured with the load runs: 4 KiB here kept one page more on each of
/// a session's two threads, 1 KiB one more on the event thread). The
/// frames of the blocking read that follows fault back in (a page or two,
/// a few microseconds); an idle session keeps only its frames above the
/// wait.
const KEEP_BELOW: usize = 256;

/// Give the calling thread's idle memory back: the small heap blocks it
/// has cached ([`super::thread_cache::flush`]), then its stack pages more
/// than [`KEEP_BELOW`] below the current frame. Call it from a long-lived
/// thread just before a long blocking wait, at a shallow point of its
/// loop. Pages that were never touched cost nothing; pages in use are
/// above the current frame and untouched. Returns the bytes of stack
/// address range advised (not necessarily resident before).
#[inline(never)]
pub fn release_idle_memory() -> usize {
    // First, so that the pages `free` touched below this frame go too.
    super::thread_cache::flush();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let Some(low) = stack_low_end() else { return 0 };
        let here = stack_pointer();
        let page = page_size();
        let top = here.saturating_sub(KEEP_BELOW) & !(page - 1);
        let low = (low + page - 1) & !(page - 1);
        if top <= low {
            return 0;
        }
        // SAFETY: [low, top) is inside this thread's own stack mapping,
        // below every live frame (the stack grows down and `top` is under
        // this frame's stack pointer by KEEP_BELOW); MADV_DONTNEED on private
        // anonymous memory only drops pages, which read back as zeros.
        let rc = unsafe { libc::madvise(low as *mut libc::c_void, top - low, libc::MADV_DONTNEED) };
        if rc == 0 {
            top - low
        } else {
            0
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    0
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// The current stack pointer: the bottom of the calling frame, so that
/// nothing of that frame lies below it (a local's address would only be
/// somewhere inside the frame).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[inline(always)]
fn stack_pointer() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let sp: usize;
        // SAFETY: reads a register into a local; no memory, stack or flags
        // are touched.
        unsafe {
            std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
        };
        sp
    }
    #[cfg(target_arch = "aarch64")]
    {
        let sp: usize;
        // SAFETY: as above.
        unsafe {
            std::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags))
        };
        sp
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        // Elsewhere a local's address, a frame's worth (4 KiB) lower.
        let marker = 0u8;
        (std::hint::black_box(&marker) as *const u8 as usize).saturating_sub(4096)
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
thread_local! {
    /// The lowest usable address of this thread's stack (0: unknown),
    /// looked up once per thread.
    static STACK_LOW: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The lowest usable address of the calling thread's stack (above its
/// guard page), from `pthread_getattr_np`. None for the main thread, whose
/// stack grows on demand.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn stack_low_end() -> Option<usize> {
    let cached = STACK_LOW.with(|c| c.get());
    if cached != 0 {
        return Some(cached);
    }
    // SAFETY: pthread_getattr_np fills an attribute object that we destroy
    // after reading the stack address and size from it.
    let (addr, size) = unsafe {
        if libc::getpid() == libc::gettid() {
            return None;
        }
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 || addr.is_null() {
            return None;
        }
        (addr as usize, size)
    };
    let _ = size;
    STACK_LOW.with(|c| c.set(addr));
    Some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator's own setting is recognised by its whole name, in any
    /// position, and a longer or shorter name is not taken for it.
    #[test]
    fn an_operators_tunable_is_found_by_its_whole_name() {
        let ours = NO_THREAD_CACHES;
        assert!(sets_tunable(ours, "glibc.malloc.tcache_count"));
        assert!(!sets_tunable(ours, "glibc.malloc.arena_max"));
        let theirs = format!("glibc.malloc.arena_max=16:{ours}");
        assert!(sets_tunable(&theirs, "glibc.malloc.arena_max"));
        assert!(sets_tunable(&theirs, "glibc.rtld.nns"));
        assert!(!sets_tunable(
            "glibc.malloc.arena_max_x=1",
            "glibc.malloc.arena_max"
        ));
        assert!(!sets_tunable(
            "glibc.malloc.arena=1",
            "glibc.malloc.arena_max"
        ));
        assert!(!sets_tunable("", "glibc.malloc.arena_max"));
    }

    /// Touches `kib` KiB of stack so that there is something to release.
    #[inline(never)]
    fn deep(kib: usize) -> u8 {
        let mut buf = [0u8; 1024];
        buf[kib % 1024] = kib as u8;
        let below = if kib > 1 { deep(kib - 1) } else { 0 };
        std::hint::black_box(&mut buf);
        buf[0].wrapping_add(below)
    }

    fn resident_pages(low: usize, len: usize) -> usize {
        let page = page_size();
        let mut vec = vec![0u8; len / page];
        // SAFETY: mincore over a mapped range into a buffer of one byte
        // per page.
        let rc = unsafe { libc::mincore(low as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|b| **b & 1 == 1).count()
    }

    #[test]
    fn a_thread_gives_back_the_stack_it_touched_below_its_frame() {
        let t = std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(|| {
                std::hint::black_box(deep(400));
                let low = stack_low_end().expect("a spawned thread knows its stack");
                let page = page_size();
                let marker = 0u8;
                let here = (&marker as *const u8 as usize) & !(page - 1);
                let span = here - KEEP_BELOW - low;
                let before = resident_pages(low, span);
                let released = release_idle_memory();
                let after = resident_pages(low, span);
                (before, released, after)
            })
            .unwrap();
        let (before, released, after) = t.join().unwrap();
        assert!(before >= 64, "the deep call touched pages: {before}");
        assert!(released > 0);
        assert!(
            after < before / 4,
            "pages below the frame released: {before} -> {after}"
        );
    }

    #[test]
    fn trims_are_rate_limited() {
        let r = MemoryReturn::new(Duration::from_secs(3600));
        assert!(!r.trim_if_due(), "nothing freed, nothing to trim");
        assert!(r.note_freed(), "the first free after start trims");
        assert!(!r.note_freed(), "the next within the interval does not");
        let r = MemoryReturn::new(Duration::ZERO);
        assert!(r.note_freed());
        assert!(r.note_freed());
    }

    #[test]
    fn a_burst_of_frees_gets_one_follow_up_trim() {
        // A session's threads free most of its memory just after its end
        // is noted; the trim the note caused ran before those frees.
        let r = MemoryReturn::new(Duration::ZERO);
        assert!(r.note_freed(), "the note trims");
        assert!(r.trim_if_due(), "one more trim after the note's trim");
        assert!(!r.trim_if_due(), "then nothing until the next note");
        assert!(r.note_freed());
        assert!(r.trim_if_due());
        assert!(!r.trim_if_due());
        r.owe_trim();
        assert!(r.trim_if_due(), "an owed trim runs at the next tick");
        assert!(!r.trim_if_due(), "and only once");
    }
}
