//! One output buffer written by many parallel tasks at once.
//!
//! The CPU kernels (the quantized matmul in `llama::qmatmul`, attention in
//! `llama::attention`) split their output among the tasks of candle's thread pool: each
//! task computes its part and writes it in place, with no copy and no lock. The pool
//! takes a `Sync` closure, which a `&mut [f32]` cannot be captured in; [`DisjointSlice`]
//! is the one place the buffer is shared as a raw pointer, and its two unsafe methods
//! say what each caller must show: that no other task touches the elements it writes.

use std::{marker::PhantomData, ops::Range};

/// A mutable slice shared by parallel tasks, each of which writes a part of it that no
/// other task reads or writes while it runs.
///
/// Invariants: the pointer and length are those of a slice borrowed mutably for `'a`,
/// so the buffer outlives every parallel call that uses the wrapper and nothing else
/// reads or writes it meanwhile (the borrow checker holds the caller to that); every
/// access is bounds-checked. What the type cannot check, that tasks write disjoint
/// ranges, is the contract of [`DisjointSlice::slice_mut`] and [`DisjointSlice::write`].
pub struct DisjointSlice<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: shared use only reaches the elements through `slice_mut` and `write`, whose
// callers guarantee that concurrent accesses touch disjoint elements; handing `T`s to
// other threads that way is sound when `T: Send`, as for `&mut [T]` split by
// `chunks_mut` across threads.
unsafe impl<T: Send> Sync for DisjointSlice<'_, T> {}

impl<'a, T> DisjointSlice<'a, T> {
    /// Shares `slice` for as long as the wrapper lives.
    pub fn new(slice: &'a mut [T]) -> Self {
        DisjointSlice { ptr: slice.as_mut_ptr(), len: slice.len(), _borrow: PhantomData }
    }

    /// The elements in `range`, to write. Panics when `range` is out of bounds.
    ///
    /// # Safety
    ///
    /// While the returned slice is alive, no other access to any element of `range` may
    /// happen: no other task may hold an overlapping range or write into it.
    #[allow(clippy::mut_from_ref)] // the point of the type; the contract above makes it sound
    pub unsafe fn slice_mut(&self, range: Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len, "{range:?} is outside 0..{}", self.len);
        // SAFETY: the range lies inside the borrowed slice (checked above), which is valid
        // for `'a`; the caller guarantees that no other access overlaps it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }

    /// Sets element `index` to `value`. Panics when `index` is out of bounds.
    ///
    /// # Safety
    ///
    /// No other task may read or write element `index` at the same time.
    pub unsafe fn write(&self, index: usize, value: T) {
        assert!(index < self.len, "index {index} is outside 0..{}", self.len);
        // SAFETY: the element lies inside the borrowed slice (checked above), which is
        // valid for `'a`; the caller guarantees that no other access to it overlaps.
        unsafe { *self.ptr.add(index) = value };
    }
}
