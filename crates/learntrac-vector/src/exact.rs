//! Dot products, the bounded top-k list, and exact search by scanning
//! every stored vector.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Partial sums kept by [`dot`]. A single running sum is a chain of
/// dependent additions that the compiler may not reorder, and sixteen f32
/// lanes fill four SSE or two AVX registers.
const LANES: usize = 16;

/// Returns the dot product of two slices of equal length.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a_chunks, a_rest) = a.as_chunks::<LANES>();
    let (b_chunks, b_rest) = b.as_chunks::<LANES>();
    let mut lanes = [0.0_f32; LANES];
    for (a_chunk, b_chunk) in a_chunks.iter().zip(b_chunks) {
        for ((lane, x), y) in lanes.iter_mut().zip(a_chunk).zip(b_chunk) {
            *lane += x * y;
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + rest
}

/// Vectors of one dimension, stored row after row in one allocation.
pub(crate) struct Rows {
    pub(crate) dimension: usize,
    pub(crate) data: Vec<f32>,
}

impl Rows {
    pub(crate) fn row(&self, slot: u32) -> &[f32] {
        let start = slot as usize * self.dimension;
        &self.data[start..start + self.dimension]
    }

    pub(crate) fn len(&self) -> usize {
        self.data.len() / self.dimension
    }
}

/// A stored vector's slot with its similarity to a query. The order is by
/// similarity, ties broken by slot, so sorting is deterministic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scored {
    pub(crate) similarity: f32,
    pub(crate) slot: u32,
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.similarity.total_cmp(&other.similarity).then_with(|| other.slot.cmp(&self.slot))
    }
}

/// The `capacity` most similar slots seen so far. The least similar one is
/// at the top of the heap, so a new slot is compared with it only.
pub(crate) struct TopK {
    capacity: usize,
    heap: BinaryHeap<Reverse<Scored>>,
}

impl TopK {
    pub(crate) fn new(capacity: usize) -> TopK {
        TopK { capacity, heap: BinaryHeap::with_capacity(capacity + 1) }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.heap.len() >= self.capacity
    }

    /// Returns the lowest similarity kept, or minus infinity while the list
    /// has room.
    pub(crate) fn threshold(&self) -> f32 {
        match self.heap.peek() {
            Some(Reverse(worst)) if self.is_full() => worst.similarity,
            _ => f32::NEG_INFINITY,
        }
    }

    pub(crate) fn push(&mut self, scored: Scored) {
        if self.capacity == 0 {
            return;
        }
        if !self.is_full() {
            self.heap.push(Reverse(scored));
        } else if let Some(mut worst) = self.heap.peek_mut()
            && scored > worst.0
        {
            *worst = Reverse(scored);
        }
    }

    /// Returns the kept slots, most similar first.
    pub(crate) fn into_sorted(self) -> Vec<Scored> {
        // Sorting `Reverse` values in ascending order puts the most
        // similar first.
        self.heap.into_sorted_vec().into_iter().map(|Reverse(scored)| scored).collect()
    }
}

/// Scans every slot that `accept` lets through and returns the `k` most
/// similar to `query`, best first. Splits the rows over `threads` scoped
/// threads when there are at least `min_rows_per_thread` rows for each.
pub(crate) fn search(
    rows: &Rows,
    query: &[f32],
    k: usize,
    threads: usize,
    min_rows_per_thread: usize,
    accept: &(dyn Fn(u32) -> bool + Sync),
) -> Vec<Scored> {
    let len = rows.len();
    let threads = threads.min(len / min_rows_per_thread.max(1)).max(1);
    if threads == 1 {
        return scan(rows, query, k, 0..len, accept).into_sorted();
    }

    let chunk = len.div_ceil(threads);
    let mut merged = TopK::new(k);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|part| {
                let range = part * chunk..((part + 1) * chunk).min(len);
                scope.spawn(move || scan(rows, query, k, range, accept))
            })
            .collect();
        for worker in workers {
            match worker.join() {
                Ok(part) => part.heap.into_iter().for_each(|Reverse(scored)| merged.push(scored)),
                // A scan panics only on a bug, and the caller gets that panic.
                Err(payload) => std::panic::resume_unwind(payload),
            }
        }
    });
    merged.into_sorted()
}

fn scan(
    rows: &Rows,
    query: &[f32],
    k: usize,
    range: std::ops::Range<usize>,
    accept: &(dyn Fn(u32) -> bool + Sync),
) -> TopK {
    let mut top = TopK::new(k);
    let start = range.start;
    let rows_in_range =
        rows.data[range.start * rows.dimension..range.end * rows.dimension].chunks_exact(rows.dimension);
    for (offset, row) in rows_in_range.enumerate() {
        let similarity = dot(query, row);
        // Slots fit in u32 because the index stores fewer than u32::MAX vectors.
        let slot = (start + offset) as u32;
        if similarity > top.threshold() && accept(slot) {
            top.push(Scored { similarity, slot });
        }
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_plain_sum() {
        for length in [0, 1, 15, 16, 17, 384, 385] {
            let a: Vec<f32> = (0..length).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..length).map(|i| (i as f32 * 0.11).cos()).collect();
            let expected: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            assert!((f64::from(dot(&a, &b)) - expected).abs() < 1e-4, "length {length}");
        }
    }

    #[test]
    fn top_k_keeps_best_in_order() {
        let mut top = TopK::new(3);
        for (slot, similarity) in [0.1, 0.9, -0.5, 0.4, 0.8, 0.2].into_iter().enumerate() {
            top.push(Scored { similarity, slot: slot as u32 });
        }
        let slots: Vec<u32> = top.into_sorted().iter().map(|scored| scored.slot).collect();
        assert_eq!(slots, [1, 4, 3]);
    }

    #[test]
    fn top_k_zero_keeps_nothing() {
        let mut top = TopK::new(0);
        top.push(Scored { similarity: 1.0, slot: 0 });
        assert!(top.into_sorted().is_empty());
    }

    #[test]
    fn threaded_scan_matches_single() {
        let dimension = 8;
        let data: Vec<f32> = (0..1000 * dimension).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let rows = Rows { dimension, data };
        let query = vec![0.3; dimension];
        let accept_all = |_: u32| true;
        let single = search(&rows, &query, 10, 1, 1, &accept_all);
        let split = search(&rows, &query, 10, 2, 1, &accept_all);
        let single_slots: Vec<u32> = single.iter().map(|scored| scored.slot).collect();
        let split_slots: Vec<u32> = split.iter().map(|scored| scored.slot).collect();
        assert_eq!(single_slots, split_slots);
    }
}
