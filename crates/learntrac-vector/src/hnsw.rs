//! A hierarchical navigable small world graph (HNSW), after Malkov and
//! Yashunin, "Efficient and robust approximate nearest neighbor search
//! using Hierarchical Navigable Small World graphs" (2016,
//! arXiv:1603.09320): insertion by their algorithm 1, layer search by
//! algorithm 2 and neighbour selection by the heuristic of algorithm 4.
//!
//! The graph stores only slot numbers. Vectors stay in [`Rows`], which the
//! caller passes to every method. Removed slots stay in the graph as
//! waypoints and are left out of results by the caller's `accept` test.

use std::collections::{BinaryHeap, HashMap};

use crate::exact::{Rows, Scored, TopK, dot};

/// Highest layer a node is given. With at least 2 links per node, a node
/// reaches it with a chance of at most 2^-24, so the cap only bounds memory
/// against a broken random source.
const MAX_LEVEL: usize = 24;

/// Construction parameters, checked by [`crate::IndexConfig::validate`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct GraphParams {
    /// Links per node on the layers above 0 (M in the paper). Layer 0 allows
    /// twice as many.
    pub(crate) max_links: usize,
    /// Candidates kept while inserting (efConstruction in the paper).
    pub(crate) ef_construction: usize,
    pub(crate) seed: u64,
}

pub(crate) struct Graph {
    params: GraphParams,
    /// 1 / ln(M): the level of a node is ⌊-ln(u) · level_scale⌋ for u
    /// uniform in (0, 1], so each layer has about 1/M of the nodes below.
    level_scale: f64,
    random: XorShift,
    /// Layer-0 links, `2 · max_links` entries per slot, of which the first
    /// `link_counts[slot]` are used.
    links: Vec<u32>,
    link_counts: Vec<u8>,
    /// Links on layers 1 and up, for the few nodes that reach them:
    /// `upper_links[&slot][layer - 1]`.
    upper_links: HashMap<u32, Vec<Vec<u32>>>,
    entry: Option<u32>,
    top_layer: usize,
}

impl Graph {
    pub(crate) fn new(params: GraphParams) -> Graph {
        Graph {
            params,
            level_scale: 1.0 / (params.max_links as f64).ln(),
            random: XorShift::new(params.seed),
            links: Vec::new(),
            link_counts: Vec::new(),
            upper_links: HashMap::new(),
            entry: None,
            top_layer: 0,
        }
    }

    /// Builds the graph over every row of `rows`, inserting them in slot
    /// order.
    pub(crate) fn build(params: GraphParams, rows: &Rows) -> Graph {
        let mut graph = Graph::new(params);
        let len = rows.len();
        graph.reserve(len);
        for slot in 0..len {
            // Slots fit in u32 because the index stores fewer than u32::MAX vectors.
            graph.insert(rows, slot as u32);
        }
        graph
    }

    /// Reserves layer-0 links for `additional` more nodes.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.links.reserve_exact(additional * self.layer0_capacity());
        self.link_counts.reserve_exact(additional);
    }

    fn layer0_capacity(&self) -> usize {
        2 * self.params.max_links
    }

    fn capacity(&self, layer: usize) -> usize {
        if layer == 0 { self.layer0_capacity() } else { self.params.max_links }
    }

    /// Returns the links of `slot` on `layer`, or none when the node does
    /// not reach that layer.
    fn neighbors(&self, slot: u32, layer: usize) -> &[u32] {
        if layer == 0 {
            let start = slot as usize * self.layer0_capacity();
            let count = usize::from(self.link_counts[slot as usize]);
            return &self.links[start..start + count];
        }
        match self.upper_links.get(&slot).and_then(|layers| layers.get(layer - 1)) {
            Some(links) => links,
            None => &[],
        }
    }

    fn set_neighbors(&mut self, slot: u32, layer: usize, neighbors: &[u32]) {
        if layer == 0 {
            let start = slot as usize * self.layer0_capacity();
            self.links[start..start + neighbors.len()].copy_from_slice(neighbors);
            // The count fits in u8 because max_links is at most 64.
            self.link_counts[slot as usize] = neighbors.len() as u8;
        } else if let Some(links) = self.upper_links.get_mut(&slot).and_then(|layers| layers.get_mut(layer - 1)) {
            links.clear();
            links.extend_from_slice(neighbors);
        }
    }

    fn random_level(&mut self) -> usize {
        let uniform = self.random.next_unit();
        // -ln(u) ≥ 0 for u in (0, 1], so the cast only truncates.
        ((-uniform.ln() * self.level_scale) as usize).min(MAX_LEVEL)
    }

    /// Links the vector in `slot`, which must be the next slot after the
    /// ones already in the graph.
    pub(crate) fn insert(&mut self, rows: &Rows, slot: u32) {
        let level = self.random_level();
        let capacity0 = self.layer0_capacity();
        self.links.resize((slot as usize + 1) * capacity0, 0);
        self.link_counts.push(0);
        if level > 0 {
            self.upper_links.insert(slot, vec![Vec::new(); level]);
        }

        let Some(entry) = self.entry else {
            self.entry = Some(slot);
            self.top_layer = level;
            return;
        };

        let query = rows.row(slot);
        let mut nearest = Scored { similarity: dot(query, rows.row(entry)), slot: entry };
        for layer in (level + 1..=self.top_layer).rev() {
            nearest = self.greedy_closest(rows, query, nearest, layer);
        }

        let accept_all = |_: u32| true;
        let mut entry_points = vec![nearest];
        for layer in (0..=level.min(self.top_layer)).rev() {
            let candidates =
                self.search_layer(rows, query, &entry_points, self.params.ef_construction, layer, &accept_all);
            let chosen = select_neighbors(rows, &candidates, self.params.max_links);
            let chosen_slots: Vec<u32> = chosen.iter().map(|scored| scored.slot).collect();
            self.set_neighbors(slot, layer, &chosen_slots);
            for &neighbor in &chosen_slots {
                self.link_back(rows, neighbor, slot, layer);
            }
            entry_points = candidates;
        }

        if level > self.top_layer {
            self.top_layer = level;
            self.entry = Some(slot);
        }
    }

    /// Adds `new` to the links of `neighbor` on `layer`. When the list is
    /// full, the heuristic chooses again among the old links and `new`.
    fn link_back(&mut self, rows: &Rows, neighbor: u32, new: u32, layer: usize) {
        let current = self.neighbors(neighbor, layer);
        let capacity = self.capacity(layer);
        if current.len() < capacity {
            let mut links = current.to_vec();
            links.push(new);
            self.set_neighbors(neighbor, layer, &links);
            return;
        }

        let base = rows.row(neighbor);
        let mut candidates: Vec<Scored> = current
            .iter()
            .chain(std::iter::once(&new))
            .map(|&slot| Scored { similarity: dot(base, rows.row(slot)), slot })
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let kept: Vec<u32> = select_neighbors(rows, &candidates, capacity).iter().map(|scored| scored.slot).collect();
        self.set_neighbors(neighbor, layer, &kept);
    }

    /// Follows the links on `layer` from `start` to the node most similar
    /// to `query`, moving while a neighbour is more similar.
    fn greedy_closest(&self, rows: &Rows, query: &[f32], start: Scored, layer: usize) -> Scored {
        let mut best = start;
        loop {
            let mut moved = false;
            for &neighbor in self.neighbors(best.slot, layer) {
                let similarity = dot(query, rows.row(neighbor));
                if similarity > best.similarity {
                    best = Scored { similarity, slot: neighbor };
                    moved = true;
                }
            }
            if !moved {
                return best;
            }
        }
    }

    /// Searches `layer` from `entry_points` and returns up to `ef` slots
    /// that `accept` lets through, most similar first. Rejected slots are
    /// still walked through, so removed vectors and filters do not cut the
    /// graph apart.
    fn search_layer(
        &self,
        rows: &Rows,
        query: &[f32],
        entry_points: &[Scored],
        ef: usize,
        layer: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<Scored> {
        let mut visited = VisitedSet::new(self.link_counts.len());
        let mut candidates: BinaryHeap<Scored> = BinaryHeap::new();
        let mut results = TopK::new(ef);
        for &point in entry_points {
            if visited.insert(point.slot) {
                candidates.push(point);
                if accept(point.slot) {
                    results.push(point);
                }
            }
        }

        while let Some(candidate) = candidates.pop() {
            if candidate.similarity < results.threshold() {
                break;
            }
            for &neighbor in self.neighbors(candidate.slot, layer) {
                if !visited.insert(neighbor) {
                    continue;
                }
                let similarity = dot(query, rows.row(neighbor));
                if similarity > results.threshold() {
                    let scored = Scored { similarity, slot: neighbor };
                    candidates.push(scored);
                    if accept(neighbor) {
                        results.push(scored);
                    }
                }
            }
        }
        results.into_sorted()
    }

    /// Returns up to `k` slots that `accept` lets through, most similar to
    /// `query` first, keeping `ef` candidates on layer 0.
    pub(crate) fn search(
        &self,
        rows: &Rows,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<Scored> {
        let Some(entry) = self.entry else {
            return Vec::new();
        };
        let mut nearest = Scored { similarity: dot(query, rows.row(entry)), slot: entry };
        for layer in (1..=self.top_layer).rev() {
            nearest = self.greedy_closest(rows, query, nearest, layer);
        }
        let mut found = self.search_layer(rows, query, &[nearest], ef.max(k), 0, accept);
        found.truncate(k);
        found
    }

    /// Estimates the heap memory of the links in bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        let layer0 = self.links.capacity() * size_of::<u32>() + self.link_counts.capacity();
        let upper: usize = self
            .upper_links
            .values()
            .map(|layers| {
                size_of::<u32>()
                    + size_of::<Vec<Vec<u32>>>()
                    + layers
                        .iter()
                        .map(|links| size_of::<Vec<u32>>() + links.capacity() * size_of::<u32>())
                        .sum::<usize>()
            })
            .sum();
        layer0 + upper
    }
}

/// Chooses up to `max` of `candidates` (sorted most similar first) as links
/// for the node they were scored against. A candidate is kept only when it
/// is more similar to that node than to every candidate already kept, which
/// spreads the links over directions instead of one dense cluster.
fn select_neighbors(rows: &Rows, candidates: &[Scored], max: usize) -> Vec<Scored> {
    let mut chosen: Vec<Scored> = Vec::with_capacity(max);
    for &candidate in candidates {
        if chosen.len() >= max {
            break;
        }
        let row = rows.row(candidate.slot);
        let diverse = chosen.iter().all(|kept| dot(row, rows.row(kept.slot)) < candidate.similarity);
        if diverse {
            chosen.push(candidate);
        }
    }
    chosen
}

/// One bit per slot, set when a search has scored the slot.
struct VisitedSet {
    words: Vec<u64>,
}

impl VisitedSet {
    fn new(slots: usize) -> VisitedSet {
        VisitedSet { words: vec![0; slots.div_ceil(64)] }
    }

    /// Marks `slot` and returns whether it was unmarked.
    fn insert(&mut self, slot: u32) -> bool {
        let word = &mut self.words[slot as usize / 64];
        let bit = 1_u64 << (slot % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }
}

/// Marsaglia's xorshift64* generator: enough for drawing levels, and
/// seeded so that the same inserts build the same graph.
struct XorShift {
    state: u64,
}

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // The all-zero state never changes, so it is replaced.
        XorShift { state: if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed } }
    }

    fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Returns a number uniform in (0, 1].
    fn next_unit(&mut self) -> f64 {
        // The top 53 bits give the multiples of 2^-53 in [0, 1). Adding one
        // step moves the range to (0, 1], so the logarithm is finite.
        ((self.next_u64() >> 11) + 1) as f64 / (1_u64 << 53) as f64
    }
}
