//! A double-ended queue stored in fixed-size blocks: the storage of a
//! [`Retransmit`](crate::reliable::Retransmit) buffer, and of the hub's
//! outbound queues.
//!
//! A `VecDeque` grows by doubling: each growth copies everything it holds
//! into a fresh allocation twice the size, which the kernel first has to
//! fault in. A retransmit buffer of a reliable subscriber under a burst
//! grows from empty to tens of thousands of entries, and a hub has one per
//! client, so those copies and page faults were a large share of a
//! reliable fan-out's cost. [`Blocks`] grows by whole blocks of
//! [`BLOCK`] entries instead: nothing already held is ever copied, and a
//! block given back is one the allocator hands out again. Only the first
//! block grows by doubling (up to [`BLOCK`]), so a queue that never holds
//! many costs no more than a `VecDeque` would.
//!
//! Only what those queues need: push at the back, pop at the front, find
//! by a sorted key, remove the first entry a predicate picks, keep what a
//! predicate keeps, iterate in order.

use std::collections::VecDeque;

/// Entries per full block.
pub const BLOCK: usize = 512;

/// A queue in blocks of at most [`BLOCK`] entries, in order: the front
/// block is popped from, the back one pushed to; blocks between them may
/// be partly filled (after a [`retain`](Blocks::retain)).
#[derive(Debug, Clone)]
pub struct Blocks<E> {
    /// No block is empty, but the only one. (No count of entries kept
    /// beside them: a hub has a buffer per client, and its size counts.)
    blocks: VecDeque<VecDeque<E>>,
}

impl<E> Default for Blocks<E> {
    fn default() -> Self {
        Blocks {
            blocks: VecDeque::new(),
        }
    }
}

impl<E> Blocks<E> {
    /// Entries held (a sum over the blocks).
    pub fn len(&self) -> usize {
        self.blocks.iter().map(VecDeque::len).sum()
    }

    /// Whether no entry is held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.blocks.front().is_none_or(VecDeque::is_empty)
    }

    /// Entries the blocks allocated have room for (a sum over the blocks).
    pub fn capacity(&self) -> usize {
        self.blocks.iter().map(VecDeque::capacity).sum()
    }

    /// Makes room for `n` entries (at most [`BLOCK`]) in the first block
    /// when none is allocated yet, so a queue that fills in bursts
    /// allocates once per burst rather than doubling from nothing.
    #[inline]
    pub fn reserve_start(&mut self, n: usize) {
        if self.blocks.is_empty() {
            self.blocks.push_back(VecDeque::with_capacity(n.min(BLOCK)));
        }
    }

    /// Appends `e` at the back: into the back block while it has room
    /// (the only block grows by doubling up to [`BLOCK`]), else into a new
    /// block of [`BLOCK`] entries.
    #[inline]
    pub fn push_back(&mut self, e: E) {
        match self.blocks.back_mut() {
            Some(b) if b.len() < BLOCK => b.push_back(e),
            _ => self.push_block(e),
        }
    }

    /// [`push_back`](Self::push_back) into a new block: once per
    /// [`BLOCK`] pushes, out of the hot path.
    #[cold]
    #[inline(never)]
    fn push_block(&mut self, e: E) {
        let mut b = if self.blocks.is_empty() {
            VecDeque::new()
        } else {
            VecDeque::with_capacity(BLOCK)
        };
        b.push_back(e);
        self.blocks.push_back(b);
    }

    /// The first entry.
    #[inline]
    pub fn front(&self) -> Option<&E> {
        self.blocks.front().and_then(|b| b.front())
    }

    /// The last entry.
    #[inline]
    pub fn back(&self) -> Option<&E> {
        self.blocks.back().and_then(|b| b.back())
    }

    /// Removes the first entry. A block left empty goes, unless it is the
    /// only one (kept, like a `VecDeque` keeps its capacity, for the next
    /// push).
    #[inline]
    pub fn pop_front(&mut self) -> Option<E> {
        let b = self.blocks.front_mut()?;
        let e = b.pop_front()?;
        if b.is_empty() && self.blocks.len() > 1 {
            self.blocks.pop_front();
        }
        Some(e)
    }

    /// Removes the longest prefix of entries that `take` holds true for
    /// (`take` must hold for a prefix and then no more, as for entries
    /// sorted by a key compared with a bound), handing each to `each` in
    /// order: whole blocks at a time, and within a block one `drain`.
    pub fn pop_front_while(&mut self, mut take: impl FnMut(&E) -> bool, each: impl FnMut(E)) {
        self.pop_front_counted(|b| b.partition_point(&mut take), each);
    }

    /// Removes entries from the front, handing each to `each` in order,
    /// until `take` first says no: `take` is asked about each entry once,
    /// in order, and may keep count (of bytes taken, say). Linear, where
    /// [`pop_front_while`](Self::pop_front_while) searches.
    #[inline]
    pub fn pop_front_until(&mut self, mut take: impl FnMut(&E) -> bool, each: impl FnMut(E)) {
        self.pop_front_counted(|b| b.iter().take_while(|e| take(e)).count(), each);
    }

    /// Removes the entries `count` says to from the front block, handing
    /// each to `each` in order, and goes on with the next block while it
    /// says to take all of one (the last block is kept).
    #[inline]
    fn pop_front_counted(
        &mut self,
        mut count: impl FnMut(&VecDeque<E>) -> usize,
        mut each: impl FnMut(E),
    ) {
        loop {
            let more = self.blocks.len() > 1;
            let Some(b) = self.blocks.front_mut() else {
                return;
            };
            let k = count(b);
            if k == 0 {
                return;
            }
            if k == b.len() && more {
                if let Some(b) = self.blocks.pop_front() {
                    b.into_iter().for_each(&mut each);
                }
                continue;
            }
            b.drain(..k).for_each(&mut each);
            return;
        }
    }

    /// Removes and returns the first entry `pick` holds true for. A block
    /// left empty goes, unless it is the only one.
    pub fn remove_first(&mut self, mut pick: impl FnMut(&E) -> bool) -> Option<E> {
        let more = self.blocks.len() > 1;
        let (i, j) = self
            .blocks
            .iter()
            .enumerate()
            .find_map(|(i, b)| b.iter().position(&mut pick).map(|j| (i, j)))?;
        let b = &mut self.blocks[i];
        let e = b.remove(j);
        if b.is_empty() && more {
            self.blocks.remove(i);
        }
        e
    }

    /// The position of the entry whose key is `key`, the entries being
    /// sorted by `f`: `Ok(i)` when found, else `Err(i)` where it would go.
    pub fn binary_search_by_key<K: Ord>(
        &self,
        key: &K,
        mut f: impl FnMut(&E) -> K,
    ) -> Result<usize, usize> {
        // The first block whose last key is not below `key`.
        let i = self
            .blocks
            .partition_point(|b| b.back().is_some_and(|e| f(e) < *key));
        let before: usize = self.blocks.iter().take(i).map(VecDeque::len).sum();
        match self.blocks.get(i) {
            None => Err(before),
            Some(b) => b
                .binary_search_by_key(key, f)
                .map(|j| before + j)
                .map_err(|j| before + j),
        }
    }

    /// The entry at position `i`.
    pub fn get_mut(&mut self, mut i: usize) -> Option<&mut E> {
        for b in &mut self.blocks {
            if i < b.len() {
                return b.get_mut(i);
            }
            i -= b.len();
        }
        None
    }

    /// Keeps only the entries `keep` holds true for, in order; blocks left
    /// empty go (all of them, when nothing is kept).
    pub fn retain(&mut self, mut keep: impl FnMut(&E) -> bool) {
        for b in &mut self.blocks {
            b.retain(&mut keep);
        }
        self.blocks.retain(|b| !b.is_empty());
    }

    /// The entries, first to last.
    pub fn iter(&self) -> impl Iterator<Item = &E> + '_ {
        self.blocks.iter().flat_map(VecDeque::iter)
    }

    /// Removes every entry (and every block).
    pub fn clear(&mut self) {
        self.blocks.clear();
    }

    /// Blocks allocated (for tests of the growth).
    #[cfg(test)]
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Pop,
        PopWhile(u64),
        PopUntil(u64, usize),
        Search(u64),
        Set(usize),
        Retain(u64),
        RemoveFirst(u64),
        Clear,
        Reserve(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            20 => Just(Op::Push),
            10 => Just(Op::Pop),
            5 => (0u64..5_000).prop_map(Op::PopWhile),
            5 => (2u64..50, 0usize..2_000).prop_map(|(m, n)| Op::PopUntil(m, n)),
            3 => (0u64..5_000).prop_map(Op::Search),
            3 => (0usize..5_000).prop_map(Op::Set),
            1 => (2u64..7).prop_map(Op::Retain),
            3 => (2u64..40).prop_map(Op::RemoveFirst),
            1 => Just(Op::Clear),
            1 => (0usize..1_000).prop_map(Op::Reserve),
        ]
    }

    proptest! {
        /// Every operation agrees with a `VecDeque` doing the same, with
        /// runs long enough to cross many blocks.
        #[test]
        fn behaves_like_a_vec_deque(ops in proptest::collection::vec((op(), 1usize..400), 1..60)) {
            let mut blocks: Blocks<(u64, u64)> = Blocks::default();
            let mut model: VecDeque<(u64, u64)> = VecDeque::new();
            let mut next = 0u64;
            for (op, times) in ops {
                match op {
                    Op::Push => for _ in 0..times {
                        next += 1 + next % 3;
                        blocks.push_back((next, 0));
                        model.push_back((next, 0));
                    },
                    Op::Pop => for _ in 0..times {
                        prop_assert_eq!(blocks.pop_front(), model.pop_front());
                    },
                    Op::PopWhile(k) => {
                        let k = k * next.max(1) / 5_000;
                        let mut got = Vec::new();
                        blocks.pop_front_while(|e| e.0 <= k, |e| got.push(e));
                        let mut want = Vec::new();
                        while model.front().is_some_and(|e| e.0 <= k) {
                            want.extend(model.pop_front());
                        }
                        prop_assert_eq!(got, want);
                    }
                    Op::PopUntil(m, n) => {
                        // Stops at a multiple of `m` or after `n` entries,
                        // whichever comes first: a stateful predicate.
                        let (mut asked, mut got) = (0, Vec::new());
                        blocks.pop_front_until(
                            |e| {
                                asked += 1;
                                asked <= n && e.0 % m != 0
                            },
                            |e| got.push(e),
                        );
                        let mut want = Vec::new();
                        while want.len() < n && model.front().is_some_and(|e| e.0 % m != 0) {
                            want.extend(model.pop_front());
                        }
                        prop_assert_eq!(got, want);
                    }
                    Op::Search(k) => {
                        let k = k * next.max(1) / 5_000;
                        prop_assert_eq!(
                            blocks.binary_search_by_key(&k, |e| e.0),
                            model.binary_search_by_key(&k, |e| e.0)
                        );
                    }
                    Op::Set(i) => {
                        let i = i % (model.len() + 1);
                        if let Some(e) = model.get_mut(i) {
                            e.1 += 1;
                        }
                        if let Some(e) = blocks.get_mut(i) {
                            e.1 += 1;
                        }
                    }
                    Op::Retain(m) => {
                        blocks.retain(|e| e.0 % m != 0);
                        model.retain(|e| e.0 % m != 0);
                    }
                    Op::RemoveFirst(m) => for _ in 0..times.min(20) {
                        let got = blocks.remove_first(|e| e.0 % m == 0);
                        let want = model
                            .iter()
                            .position(|e| e.0 % m == 0)
                            .and_then(|i| model.remove(i));
                        prop_assert_eq!(got, want);
                    },
                    Op::Clear => {
                        blocks.clear();
                        model.clear();
                    }
                    Op::Reserve(n) => {
                        let had = blocks.blocks();
                        blocks.reserve_start(n);
                        prop_assert!(blocks.blocks() == had.max(1));
                    }
                }
                prop_assert_eq!(blocks.is_empty(), model.is_empty());
                prop_assert!(blocks.capacity() >= model.len());
                prop_assert_eq!(blocks.len(), model.len());
                prop_assert_eq!(blocks.front(), model.front());
                prop_assert_eq!(blocks.back(), model.back());
                prop_assert!(blocks.iter().eq(model.iter()));
            }
        }
    }

    #[test]
    fn grows_by_whole_blocks_and_gives_them_back() {
        let mut b = Blocks::default();
        for i in 0..(3 * BLOCK + 1) {
            b.push_back(i);
        }
        assert_eq!(b.blocks(), 4);
        // Full blocks were allocated at their size: none was copied.
        assert!(b.blocks.iter().skip(1).all(|x| x.capacity() >= BLOCK));
        for _ in 0..(2 * BLOCK) {
            b.pop_front();
        }
        assert_eq!(b.blocks(), 2, "emptied blocks go");
        while b.pop_front().is_some() {}
        assert_eq!(b.blocks(), 1, "the last block stays for the next push");
        assert_eq!(b.len(), 0);
        b.push_back(7);
        assert_eq!((b.front(), b.blocks()), (Some(&7), 1));
    }

    #[test]
    fn a_reserved_start_is_one_allocation_for_a_burst() {
        let mut b = Blocks::default();
        b.reserve_start(16);
        assert_eq!((b.blocks(), b.capacity(), b.is_empty()), (1, 16, true));
        for i in 0..16 {
            b.push_back(i);
        }
        assert_eq!((b.blocks(), b.capacity()), (1, 16));
        // Only before the first block exists.
        b.reserve_start(500);
        assert_eq!(b.capacity(), 16);
        assert_eq!(b.remove_first(|&e| e == 3), Some(3));
        assert_eq!(b.remove_first(|&e| e == 3), None);
        assert_eq!(b.len(), 15);
    }

    #[test]
    fn a_small_queue_is_one_small_block() {
        let mut b = Blocks::default();
        for i in 0..10 {
            b.push_back(i);
        }
        assert_eq!(b.blocks(), 1);
        assert!(b.blocks[0].capacity() < BLOCK);
    }
}
