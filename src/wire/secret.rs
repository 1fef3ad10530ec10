//! Passwords in memory: the [`Secret`] type, which is wiped when dropped
//! and never printed, the [`wipe`] of a buffer that held one, and the
//! wipe scope ([`WipeScope`]) that makes every heap block freed by the
//! current thread be zeroed first.
//!
//! A password passes through buffers that are not ours: the XML parser's
//! text buffers, the inflater's window, the HTTP client's output buffer,
//! the NTLM hashing. Our own buffers are wiped explicitly; for the others
//! a sign-in runs inside a [`WipeScope`], and the global allocator
//! ([`WipingAllocator`], which the `collabd` and `collab-device` programs
//! install) zeroes each block freed on that thread while the scope is open,
//! before the block goes to the allocator under it (the system's, or
//! collabd's per-thread cache in front of it). Outside a scope it is that
//! allocator, plus one thread-local flag test per free.
//!
//! Wiping uses volatile writes, so the compiler cannot drop them as dead
//! stores before a free.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{compiler_fence, Ordering};

/// Overwrites `buf` with zeros in a way the optimiser keeps.
pub fn wipe(buf: &mut [u8]) {
    // SAFETY: the pointer and length come from a live mutable slice.
    unsafe { wipe_raw(buf.as_mut_ptr(), buf.len()) }
}

/// Overwrites `words` with zeros in a way the optimiser keeps.
pub fn wipe_words(words: &mut [u32]) {
    // SAFETY: the pointer and byte length come from a live mutable slice.
    unsafe {
        wipe_raw(
            words.as_mut_ptr().cast::<u8>(),
            std::mem::size_of_val(words),
        )
    }
}

/// Wipes a vector's whole allocation (its spare capacity too, which may
/// hold bytes from before a `truncate` or `clear`) and empties it.
pub fn wipe_vec(v: &mut Vec<u8>) {
    let cap = v.capacity();
    // SAFETY: the allocation is `cap` bytes long and owned by `v`; after
    // the wipe the length is set to 0, so no zeroed byte is read as `u8`
    // that was not initialised before (zero is a valid `u8` anyway).
    unsafe { wipe_raw(v.as_mut_ptr(), cap) };
    v.clear();
}

/// Zeroes `len` bytes at `p` with volatile stores, a word at a time where
/// aligned.
///
/// # Safety
/// `p..p+len` must be writable memory owned by the caller.
unsafe fn wipe_raw(p: *mut u8, len: usize) {
    // SAFETY (every block below): `i < len`, or `i + size_of::<usize>() <=
    // len` for the word stores, so each store is inside `p..p+len`, which
    // the caller owns; word stores start at an address aligned for usize.
    let mut i = 0;
    while i < len && (p.wrapping_add(i) as usize) % std::mem::size_of::<usize>() != 0 {
        // SAFETY: see above.
        unsafe { std::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
    while i + std::mem::size_of::<usize>() <= len {
        // SAFETY: see above.
        unsafe { std::ptr::write_volatile(p.add(i).cast::<usize>(), 0) };
        i += std::mem::size_of::<usize>();
    }
    while i < len {
        // SAFETY: see above.
        unsafe { std::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
    compiler_fence(Ordering::SeqCst);
}

/// A password: wiped when dropped, never printed (`Debug` and `Display`
/// show `***`), compared in constant time.
pub struct Secret(String);

impl Secret {
    /// Wraps `s` (taking it over: no copy is made).
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Clone for Secret {
    fn clone(&self) -> Secret {
        // Exactly the length: no reallocation leaves a stray copy behind.
        let mut s = String::with_capacity(self.0.len());
        s.push_str(&self.0);
        Secret(s)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.0.len() == other.0.len() && openssl::memcmp::eq(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl Eq for Secret {}

impl Drop for Secret {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        wipe_vec(&mut bytes);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

thread_local! {
    /// Open [`WipeScope`]s on this thread (a count, so scopes nest).
    static WIPE_DEPTH: Cell<u32> = const { Cell::new(0) };
}

fn wiping() -> bool {
    // `const` thread-locals without a destructor never allocate and are
    // usable at any point of a thread's life, also from the allocator.
    WIPE_DEPTH.with(Cell::get) > 0
}

/// While alive, every heap block this thread frees (or moves by
/// reallocation) is zeroed first. Not `Send`: it belongs to the thread.
#[must_use = "the scope ends when this is dropped"]
pub struct WipeScope {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl WipeScope {
    /// Opens a scope on the current thread.
    pub fn enter() -> WipeScope {
        WIPE_DEPTH.with(|d| d.set(d.get() + 1));
        WipeScope {
            _not_send: std::marker::PhantomData,
        }
    }

    /// Whether a scope is open on the current thread.
    pub fn is_open() -> bool {
        wiping()
    }
}

impl Drop for WipeScope {
    fn drop(&mut self) {
        WIPE_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// An allocator (the system's, or [`crate::ops::thread_cache::ThreadCache`]
/// in collabd), but a block freed or moved while a [`WipeScope`] is open on
/// the freeing thread is zeroed first.
pub struct WipingAllocator<A: GlobalAlloc = System> {
    inner: A,
}

impl WipingAllocator<System> {
    /// Over the system allocator.
    pub const fn system() -> WipingAllocator<System> {
        WipingAllocator { inner: System }
    }
}

impl<A: GlobalAlloc> WipingAllocator<A> {
    /// Over `inner`.
    pub const fn over(inner: A) -> WipingAllocator<A> {
        WipingAllocator { inner }
    }
}

// SAFETY: every call is forwarded to the inner allocator with the same
// layout; the extra work only writes inside the block being freed, before
// freeing it.
unsafe impl<A: GlobalAlloc> GlobalAlloc for WipingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller's contract for `alloc` is the inner one's.
        unsafe { self.inner.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller's contract for `alloc_zeroed` is the inner one's.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if wiping() {
            // SAFETY: `ptr` is a live block of `layout.size()` bytes from
            // this allocator (the caller's contract), not yet freed.
            unsafe { wipe_raw(ptr, layout.size()) };
        }
        // SAFETY: the same block and layout the caller gave us.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !wiping() {
            // SAFETY: our caller's contract for `realloc` is the inner one's.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        // The inner realloc may move the block and free the old one
        // unwiped: move it ourselves.
        // SAFETY: `layout.align()` is a valid alignment, and the caller
        // guarantees `new_size` rounded up to it does not overflow isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_layout` has a non-zero size (the caller's contract).
        let new = unsafe { self.inner.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least the
            // smaller size long; the old block is wiped and freed with the
            // layout it was allocated with.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                wipe_raw(ptr, layout.size());
                self.inner.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_printed_and_compare_by_content() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s, Secret::new("hunter2"));
        assert_ne!(s, Secret::new("hunter3"));
        assert_ne!(s, Secret::new("hunter22"));
        assert_eq!(s.clone().expose(), "hunter2");
    }

    #[test]
    fn wipe_vec_zeroes_the_spare_capacity_too() {
        let mut v = b"password123".to_vec();
        v.truncate(3);
        let (p, cap) = (v.as_ptr(), v.capacity());
        wipe_vec(&mut v);
        assert!(v.is_empty());
        // SAFETY: `v` still owns its allocation of `cap` bytes.
        let all = unsafe { std::slice::from_raw_parts(p, cap) };
        assert!(all.iter().all(|&b| b == 0));
    }

    #[test]
    fn scopes_nest_and_belong_to_their_thread() {
        assert!(!WipeScope::is_open());
        let outer = WipeScope::enter();
        {
            let _inner = WipeScope::enter();
            assert!(WipeScope::is_open());
            let other = std::thread::spawn(WipeScope::is_open).join().unwrap();
            assert!(!other, "another thread is not in the scope");
        }
        assert!(WipeScope::is_open());
        drop(outer);
        assert!(!WipeScope::is_open());
        // Allocation and reallocation inside a scope keep the contents.
        let _scope = WipeScope::enter();
        let mut v = Vec::with_capacity(1);
        for i in 0..1000u32 {
            v.push(i);
        }
        assert_eq!(v.iter().sum::<u32>(), 499_500);
    }
}
