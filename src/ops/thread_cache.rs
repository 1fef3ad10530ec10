//! A per-thread cache of freed small heap blocks in front of the system
//! allocator ([`ThreadCache`]), kept by the thread over its short waits
//! within a process-wide budget ([`before_wait`]), and emptied ([`flush`])
//! before a long wait and when the thread exits.
//!
//! collabd runs glibc's malloc without its own per-thread caches
//! (`glibc.malloc.tcache_count=0`, `ops::memory`): with thousands of
//! threads, each holding its cached blocks for hours, they cost about 40
//! KiB a session. Without them every small allocation takes an arena lock
//! and walks the arena's bins, and relaying one message makes about 700
//! of them (XML trees, HTTP heads). This cache lets a thread reuse what it
//! freed earlier (the parsed reply's tree for the next request's head).
//! Before each wait for its peer (the link thread for its device, the
//! event thread for CWA's held GET) a thread keeps its cache if all the
//! threads waiting with one keep no more than [`KEPT_OVER_WAITS`] in all,
//! and empties it otherwise; before a long wait (`ops::memory::
//! release_idle_memory`, after a quiet moment) it always empties it. Kept
//! over every wait without a bound, it cost memory for good: every session
//! of a sign-in burst held its cache for the second before its first long
//! wait, and the heap grew by about 18 KiB a session; emptied at every
//! wait, a busy session took each message's blocks from the shared arenas
//! again, and waited for their locks (see the README's Performance
//! section).
//!
//! Blocks up to [`MAX_CACHED_SIZE`] bytes with an alignment of at most 16
//! are rounded up to a multiple of 16 (their class) when taken from the
//! system, so any block of a class can serve any request of that class.
//! A thread keeps at most [`MAX_PER_CLASS`] blocks of a class and
//! [`MAX_CACHED_BYTES`] in all; beyond that a block goes straight back to
//! the system. Everything else goes straight to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest request served from the cache.
pub const MAX_CACHED_SIZE: usize = 1024;

/// Size step between classes, and the alignment every cached block has
/// (glibc's malloc alignment on 64-bit systems).
const GRANULE: usize = 16;

/// Classes 1..=CLASSES hold blocks of `class * GRANULE` bytes.
const CLASSES: usize = MAX_CACHED_SIZE / GRANULE;

/// Most blocks kept per class.
pub const MAX_PER_CLASS: u16 = 32;

/// Most bytes kept per thread, all classes together.
pub const MAX_CACHED_BYTES: usize = 32 * 1024;

/// Most bytes all threads together keep cached over a wait
/// ([`before_wait`]).
pub const KEPT_OVER_WAITS: usize = 512 * 1024;

/// Bytes the threads now waiting keep cached (the sum of their `KEPT`).
static KEPT_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A freed block, linked through its own first word.
struct Free {
    next: *mut Free,
}

/// One thread's cached blocks: a list head and a count per class.
struct Bins {
    heads: [*mut Free; CLASSES],
    counts: [u16; CLASSES],
    bytes: usize,
}

/// The thread has not cached anything yet (its exit hook is not set).
const FRESH: u8 = 0;
/// The exit hook is being set; blocks go straight to the system meanwhile
/// (setting it may allocate).
const REGISTERING: u8 = 1;
/// Caching.
const ACTIVE: u8 = 2;
/// The thread is exiting and its cache is gone: no more caching.
const EXITED: u8 = 3;

thread_local! {
    // `const` thread-locals without a destructor never allocate and are
    // usable at any point of a thread's life, also from the allocator.
    static BINS: Cell<*mut Bins> = const { Cell::new(ptr::null_mut()) };
    static STATE: Cell<u8> = const { Cell::new(FRESH) };
    // This thread's share of KEPT_BYTES.
    static KEPT: Cell<usize> = const { Cell::new(0) };
    // Its destructor empties the cache when the thread exits.
    static EXIT_HOOK: ExitHook = const { ExitHook };
}

struct ExitHook;

impl Drop for ExitHook {
    fn drop(&mut self) {
        STATE.with(|s| s.set(EXITED));
        flush();
    }
}

/// The class serving `size` bytes at `align`, if cached at all.
fn class_of(size: usize, align: usize) -> Option<usize> {
    if align <= GRANULE && size <= MAX_CACHED_SIZE {
        Some(size.div_ceil(GRANULE).max(1))
    } else {
        None
    }
}

/// The layout a block of `class` is taken from the system with.
fn class_layout(class: usize) -> Layout {
    // A multiple of 16 up to MAX_CACHED_SIZE at alignment 16 is always a
    // valid layout.
    Layout::from_size_align(class * GRANULE, GRANULE).expect("a class's layout")
}

/// A cached block of `class`, if this thread has one.
fn take(class: usize) -> Option<*mut u8> {
    let bins = BINS.with(Cell::get);
    if bins.is_null() {
        return None;
    }
    // SAFETY: `bins` was made by `bins_for_caching` on this thread and is
    // only reached through this thread's BINS; no other reference to it is
    // live (the allocator is not re-entered while it is borrowed here).
    let bins = unsafe { &mut *bins };
    let i = class - 1;
    let head = bins.heads[i];
    if head.is_null() {
        return None;
    }
    // SAFETY: every block on a list is a live system block of at least
    // `class * GRANULE` (>= 16) bytes owned by this cache, whose first
    // word holds the next link.
    bins.heads[i] = unsafe { (*head).next };
    bins.counts[i] -= 1;
    bins.bytes -= class * GRANULE;
    Some(head.cast())
}

/// This thread's bins, made on first use; `None` when it must not cache
/// (its exit hook is being set, or it is exiting).
fn bins_for_caching() -> Option<*mut Bins> {
    match STATE.with(Cell::get) {
        ACTIVE => {}
        FRESH => {
            STATE.with(|s| s.set(REGISTERING));
            // Touching the hook registers its destructor; that may
            // allocate, and those calls find REGISTERING and bypass us.
            EXIT_HOOK.with(|_| {});
            STATE.with(|s| s.set(ACTIVE));
        }
        _ => return None,
    }
    let bins = BINS.with(Cell::get);
    if !bins.is_null() {
        return Some(bins);
    }
    let layout = Layout::new::<Bins>();
    // SAFETY: `Bins` has a non-zero size; all-zero bytes are a valid
    // `Bins` (null heads, zero counts).
    let made = unsafe { System.alloc_zeroed(layout) }.cast::<Bins>();
    if made.is_null() {
        return None;
    }
    BINS.with(|b| b.set(made));
    Some(made)
}

/// Keeps `block` of `class` on this thread if there is room.
///
/// # Safety
/// `block` must be a live system block of at least `class * GRANULE`
/// bytes, aligned to 16, that the caller gives up.
unsafe fn keep(block: *mut u8, class: usize) -> bool {
    let Some(bins) = bins_for_caching() else {
        return false;
    };
    // SAFETY: as in `take`.
    let bins = unsafe { &mut *bins };
    let i = class - 1;
    let size = class * GRANULE;
    if bins.counts[i] >= MAX_PER_CLASS || bins.bytes + size > MAX_CACHED_BYTES {
        return false;
    }
    let node = block.cast::<Free>();
    // SAFETY: the block is at least 16 bytes, aligned to 16, and now ours.
    unsafe {
        node.write(Free {
            next: bins.heads[i],
        })
    };
    bins.heads[i] = node;
    bins.counts[i] += 1;
    bins.bytes += size;
    true
}

/// Gives every block this thread has cached back to the system, and the
/// cache's own bookkeeping with them, and its share of the budget of
/// [`before_wait`]. Call it before the thread waits long; it is cheap when
/// the cache is empty, and a no-op for a program whose allocator is not
/// [`ThreadCache`].
pub fn flush() {
    give_back_share();
    let bins = BINS.with(|b| b.replace(ptr::null_mut()));
    if bins.is_null() {
        return;
    }
    // SAFETY: `bins` was made by `bins_for_caching` on this thread and has
    // just been taken out of BINS, so nothing else reaches it.
    let owned = unsafe { &mut *bins };
    for (i, head) in owned.heads.iter_mut().enumerate() {
        let layout = class_layout(i + 1);
        let mut node = std::mem::replace(head, ptr::null_mut());
        while !node.is_null() {
            // SAFETY: a listed block: live, owned by the cache, taken from
            // the system with its class's layout; read, then freed.
            let next = unsafe { (*node).next };
            // SAFETY: as above.
            unsafe { System.dealloc(node.cast(), layout) };
            node = next;
        }
    }
    // SAFETY: made with this layout by `bins_for_caching`; nothing points
    // into it any more.
    unsafe { System.dealloc(bins.cast(), Layout::new::<Bins>()) };
}

/// Call before a short wait for the peer (the next message of a busy
/// session): keeps this thread's cache over the wait while all threads
/// together keep at most [`KEPT_OVER_WAITS`], else empties it ([`flush`]).
/// A busy session's threads then start each message with the blocks the
/// last one freed, instead of taking them from the shared arenas again
/// (and waiting for their locks); a burst of sign-ins, each thread waiting
/// a moment, finds the budget spent and grows the heap by no more than it.
/// A thread that then waits long empties its cache all the same
/// (`ops::memory::release_idle_memory`).
pub fn before_wait() {
    keep_within(KEPT_OVER_WAITS);
}

/// [`before_wait`] with a budget of `budget` bytes.
fn keep_within(budget: usize) {
    let bytes = cached_bytes();
    let mine = KEPT.with(Cell::get);
    if bytes == mine {
        // The total is unchanged (and within the budget): no need to touch
        // the process-wide counter, the common case of a thread that keeps
        // nothing.
        return;
    }
    let fits = KEPT_BYTES
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |total| {
            let total = total.saturating_sub(mine) + bytes;
            (total <= budget).then_some(total)
        })
        .is_ok();
    if fits {
        KEPT.with(|k| k.set(bytes));
    } else {
        flush();
    }
}

/// Gives this thread's share of [`KEPT_BYTES`] back.
fn give_back_share() {
    let mine = KEPT.with(|k| k.replace(0));
    if mine > 0 {
        KEPT_BYTES.fetch_sub(mine, Ordering::AcqRel);
    }
}

/// Bytes this thread holds in its cache (for tests and diagnostics).
pub fn cached_bytes() -> usize {
    let bins = BINS.with(Cell::get);
    if bins.is_null() {
        0
    } else {
        // SAFETY: as in `take`; read only.
        unsafe { (*bins).bytes }
    }
}

/// The system allocator with a per-thread cache of small freed blocks
/// (see the module's documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadCache;

impl ThreadCache {
    /// The allocator (a `const` so that it can be a `#[global_allocator]`).
    pub const fn new() -> ThreadCache {
        ThreadCache
    }
}

// SAFETY: a small block is always taken from the system with its class's
// layout (a multiple of 16 bytes, at least the request, aligned to 16), so
// a cached block can serve any request of its class; every other request
// is the system's. A block is cached only by the thread freeing it, and
// each thread touches only its own cache.
unsafe impl GlobalAlloc for ThreadCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout.size(), layout.align()) {
            Some(class) => match take(class) {
                Some(block) => block,
                // SAFETY: a valid, non-zero layout.
                None => unsafe { System.alloc(class_layout(class)) },
            },
            // SAFETY: our caller's contract for `alloc` is System's.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout.size(), layout.align()) {
            Some(class) => match take(class) {
                Some(block) => {
                    // SAFETY: the block has at least `layout.size()` bytes.
                    unsafe { ptr::write_bytes(block, 0, layout.size()) };
                    block
                }
                // SAFETY: a valid, non-zero layout.
                None => unsafe { System.alloc_zeroed(class_layout(class)) },
            },
            // SAFETY: our caller's contract for `alloc_zeroed` is System's.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(class) = class_of(layout.size(), layout.align()) {
            // SAFETY: a block of this class came from `alloc` (or
            // `realloc`) with the class's layout; the caller gives it up.
            if unsafe { keep(ptr, class) } {
                return;
            }
            // SAFETY: a system block, freed with the layout it was made with.
            return unsafe { System.dealloc(ptr, class_layout(class)) };
        }
        // SAFETY: our caller's contract for `dealloc` is System's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = class_of(layout.size(), layout.align());
        let new = class_of(new_size, layout.align());
        match (old, new) {
            (Some(a), Some(b)) if a == b => ptr,
            // SAFETY: neither size is cached, so the block is a plain
            // system block; our caller's contract is System's.
            (None, None) => unsafe { System.realloc(ptr, layout, new_size) },
            _ => {
                // Between classes, or in or out of the cached sizes: move
                // it, so that a small block always has its class's size.
                // SAFETY: the caller guarantees `new_size` at this
                // alignment is a valid, non-zero layout.
                let new_layout =
                    unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // SAFETY: as above.
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks are live, distinct and at least
                    // the smaller size long; the old one is then freed with
                    // the layout it has.
                    unsafe {
                        ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_fall_into_classes_of_sixteen_bytes() {
        assert_eq!(class_of(1, 1), Some(1));
        assert_eq!(class_of(16, 8), Some(1));
        assert_eq!(class_of(17, 8), Some(2));
        assert_eq!(class_of(MAX_CACHED_SIZE, 16), Some(CLASSES));
        assert_eq!(class_of(MAX_CACHED_SIZE + 1, 16), None);
        assert_eq!(
            class_of(64, 32),
            None,
            "over-aligned blocks are the system's"
        );
    }

    // The tests below call the allocator directly (the test binary keeps
    // its own global allocator), each on a thread of its own.
    fn on_own_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().unwrap();
    }

    fn alloc(layout: Layout) -> *mut u8 {
        // SAFETY: every layout in these tests has a non-zero size.
        let p = unsafe { ThreadCache.alloc(layout) };
        assert!(!p.is_null() && p as usize % GRANULE == 0);
        p
    }

    fn alloc_zeroed(layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let p = unsafe { ThreadCache.alloc_zeroed(layout) };
        assert!(!p.is_null());
        p
    }

    fn dealloc(p: *mut u8, layout: Layout) {
        // SAFETY: each test frees a block once, with its layout.
        unsafe { ThreadCache.dealloc(p, layout) }
    }

    fn realloc(p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: a live block with its layout, and a non-zero new size.
        let q = unsafe { ThreadCache.realloc(p, layout, new_size) };
        assert!(!q.is_null());
        q
    }

    fn bytes(p: *mut u8, len: usize) -> &'static mut [u8] {
        // SAFETY: the tests pass a live block of at least `len` bytes and
        // drop the slice before freeing it.
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }

    #[test]
    fn a_freed_block_serves_the_next_request_of_its_class_until_flushed() {
        on_own_thread(|| {
            let small = Layout::from_size_align(40, 8).unwrap();
            let same_class = Layout::from_size_align(48, 8).unwrap();
            let p = alloc(small);
            bytes(p, 48).fill(0xAB);
            dealloc(p, small);
            assert_eq!(cached_bytes(), 48);
            let q = alloc(same_class);
            assert_eq!(q, p, "the cached block is reused");
            assert_eq!(cached_bytes(), 0);
            dealloc(q, same_class);
            let z = alloc_zeroed(same_class);
            assert_eq!(z, p, "the cached block is reused, zeroed");
            assert!(bytes(z, 48).iter().all(|&b| b == 0));
            dealloc(z, same_class);
            assert_eq!(cached_bytes(), 48);
            flush();
            assert_eq!(cached_bytes(), 0);
        });
    }

    /// Frees `n` fresh blocks of 1 KiB into this thread's cache.
    fn cache_kib(n: usize) {
        let kib = Layout::from_size_align(1024, 16).unwrap();
        let blocks: Vec<*mut u8> = (0..n).map(|_| alloc(kib)).collect();
        for p in blocks {
            dealloc(p, kib);
        }
        assert_eq!(cached_bytes(), n * 1024);
    }

    #[test]
    fn caches_are_kept_over_waits_only_within_the_budget_of_all_threads() {
        // The only test that keeps anything over a wait: KEPT_BYTES is
        // process-wide (other threads of this binary cache nothing).
        use std::sync::mpsc::channel;
        let budget = 16 * 1024;
        let (kept_tx, kept_rx) = channel();
        let (go_tx, go_rx) = channel::<()>();
        let first = std::thread::spawn(move || {
            cache_kib(10);
            keep_within(budget);
            assert_eq!(cached_bytes(), 10 * 1024, "kept: within the budget");
            kept_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            flush();
            assert_eq!(KEPT.with(Cell::get), 0);
        });
        kept_rx.recv().unwrap();
        assert_eq!(KEPT_BYTES.load(Ordering::Acquire), 10 * 1024);
        on_own_thread(move || {
            cache_kib(10);
            keep_within(budget);
            assert_eq!(cached_bytes(), 0, "emptied: the budget is spent");
        });
        go_tx.send(()).unwrap();
        first.join().unwrap();
        assert_eq!(
            KEPT_BYTES.load(Ordering::Acquire),
            0,
            "a flush gives the share back"
        );
        on_own_thread(move || {
            cache_kib(10);
            keep_within(budget);
            assert_eq!(cached_bytes(), 10 * 1024, "kept again");
            // The share follows what the thread keeps at its last wait.
            let kib = Layout::from_size_align(1024, 16).unwrap();
            let p = alloc(kib);
            keep_within(budget);
            assert_eq!(KEPT_BYTES.load(Ordering::Acquire), 9 * 1024);
            dealloc(p, kib);
            // The thread exits holding its cache: its exit hook empties it
            // and gives the share back.
        });
        assert_eq!(
            KEPT_BYTES.load(Ordering::Acquire),
            0,
            "the exit hook gives it back"
        );
    }

    #[test]
    fn the_cache_is_bounded_per_class_and_per_thread() {
        on_own_thread(|| {
            let small = Layout::from_size_align(16, 8).unwrap();
            let blocks: Vec<*mut u8> = (0..MAX_PER_CLASS as usize + 5)
                .map(|_| alloc(small))
                .collect();
            for &p in &blocks {
                dealloc(p, small);
            }
            assert_eq!(cached_bytes(), MAX_PER_CLASS as usize * 16);
            flush();
            // The four largest classes, full: twice the byte bound.
            let big: Vec<Layout> = (0..4)
                .map(|k| Layout::from_size_align(MAX_CACHED_SIZE - k * GRANULE, 16).unwrap())
                .collect();
            let blocks: Vec<(*mut u8, Layout)> = big
                .iter()
                .flat_map(|&l| (0..MAX_PER_CLASS).map(move |_| (alloc(l), l)))
                .collect();
            for &(p, l) in &blocks {
                dealloc(p, l);
            }
            assert!(cached_bytes() <= MAX_CACHED_BYTES);
            assert!(cached_bytes() > MAX_CACHED_BYTES - MAX_CACHED_SIZE);
            flush();
            assert_eq!(cached_bytes(), 0);
        });
    }

    #[test]
    fn reallocation_keeps_contents_across_classes_and_sizes() {
        on_own_thread(|| {
            let mut p = alloc(Layout::from_size_align(20, 4).unwrap());
            for (i, b) in bytes(p, 20).iter_mut().enumerate() {
                *b = i as u8;
            }
            let mut size = 20;
            // Within a class, up a class, out of the cached sizes and back
            // down into them.
            for new_size in [30, 100, 4000, 300, 24] {
                p = realloc(p, Layout::from_size_align(size, 4).unwrap(), new_size);
                for (i, b) in bytes(p, 20).iter().enumerate() {
                    assert_eq!(*b, i as u8, "byte {i} after {size} -> {new_size}");
                }
                // The whole new size is usable.
                bytes(p, new_size)[20..].fill(0xCD);
                size = new_size;
            }
            dealloc(p, Layout::from_size_align(size, 4).unwrap());
            flush();
        });
    }

    #[test]
    fn a_thread_that_caches_has_its_exit_hook_set() {
        // The hook's destructor empties the cache when the thread exits.
        on_own_thread(|| {
            assert_eq!(STATE.with(Cell::get), FRESH);
            let small = Layout::from_size_align(64, 8).unwrap();
            let p = alloc(small);
            dealloc(p, small);
            assert_eq!(STATE.with(Cell::get), ACTIVE);
            assert_eq!(cached_bytes(), 64);
        });
    }
}
