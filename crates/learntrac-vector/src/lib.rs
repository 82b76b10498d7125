//! Nearest-neighbour search over unit-length sentence embeddings, such as
//! the 384-dimensional vectors of all-MiniLM-L6-v2, where cosine
//! similarity equals the dot product.
//!
//! A [`VectorIndex`] scans every vector while it contains fewer than
//! [`IndexConfig::graph_threshold`] of them, and builds an HNSW graph
//! (hierarchical navigable small world) once it reaches that many. Exact
//! search needs no extra memory and no build time, and it is fast enough
//! for small collections. Above the threshold the graph returns results in a
//! fraction of the time with a small loss of recall.
//!
//! The HNSW code is this crate's own, about 350 lines, rather than a
//! dependency. The index needs single inserts while serving, removal,
//! filtered search, vectors stored once in its own matrix, links stored as
//! `u32`, and the same graph from the same inserts. instant-distance 0.6
//! builds its graph from one batch of points and offers no insert. It and
//! hnsw_rs 0.2 both depend on rayon, rand and parking_lot, and hnsw_rs on
//! a dozen more crates. The graph follows
//! Malkov and Yashunin's paper, and levels are drawn from a seeded
//! xorshift generator.
//!
//! Reads take `&self`, so many threads can search at once. Writes take
//! `&mut self`, so a server keeps the index behind a `RwLock`.

// Tests report a failure by panicking.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod exact;
mod hnsw;

use std::collections::HashMap;

use crate::exact::{Rows, Scored};
use crate::hnsw::{Graph, GraphParams};

/// Slots are numbered in u32, which keeps the graph's links small.
const MAX_SLOTS: usize = u32::MAX as usize;

/// A stored vector found by a search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbor {
    pub id: u64,
    /// The dot product with the query, which is the cosine similarity when
    /// both vectors have unit length.
    pub similarity: f32,
}

/// The search method a [`VectorIndex`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchMode {
    /// Every vector is compared with the query.
    Exact,
    /// The HNSW graph is searched, and results are approximate.
    Graph,
}

/// Errors from building, changing or searching a [`VectorIndex`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VectorError {
    #[error("the vector has {actual} dimensions but the index expects {expected}")]
    DimensionMismatch { expected: usize, actual: usize },
    #[error("the vector contains a NaN or infinite value at position {position}")]
    NonFinite { position: usize },
    #[error("the index is full: it holds at most {max} vectors, removed ones included until compact() runs")]
    Full { max: usize },
    #[error("invalid index configuration: {setting} is {value}, but {reason}")]
    InvalidConfig { setting: &'static str, value: usize, reason: &'static str },
}

/// Settings of a [`VectorIndex`]. [`IndexConfig::default`] documents each
/// default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    /// Number of stored vectors at which the index builds its HNSW graph.
    /// Below it, searches scan every vector. With 0 the graph is used from
    /// the first insert.
    pub graph_threshold: usize,
    /// Links per node in the graph, at most 64 (M in the HNSW paper). The
    /// bottom layer allows twice as many. More links raise recall, memory
    /// and build time.
    pub max_links: usize,
    /// Candidates kept while inserting into the graph (efConstruction).
    pub ef_construction: usize,
    /// Candidates kept while searching the graph (ef). A search for `k`
    /// results keeps at least `k`.
    pub ef_search: usize,
    /// Threads an exact search may use. Each gets at least
    /// `exact_rows_per_thread` vectors, so small indexes use one.
    pub exact_threads: usize,
    /// Minimum vectors per thread in an exact search, because starting
    /// threads and merging their results costs more than a small scan.
    pub exact_rows_per_thread: usize,
    /// Seed of the random levels in the graph, so that the same inserts in
    /// the same order build the same graph.
    pub seed: u64,
}

impl Default for IndexConfig {
    /// Returns the settings measured with `examples/ann_bench.rs` on a 2-CPU Xeon
    /// virtual machine (built for plain x86-64, so the dot products use
    /// SSE2) while other builds shared its cores. They suit other machines
    /// only roughly:
    ///
    /// - `graph_threshold` 15 000: an exact search over that many
    ///   384-dimensional vectors took about 1 ms (median), about five times
    ///   a graph search. Below it the graph saves less than a millisecond
    ///   per query and costs build time, memory and some recall.
    /// - `max_links` 16, `ef_construction` 100, `ef_search` 64: recall@10 of
    ///   0.99 at 100 000 clustered synthetic embeddings, at 0.2 ms a query.
    ///   ef 32 gave 0.95.
    /// - `exact_threads` 1: a server runs several searches at once on few
    ///   cores, and a second thread only paid from about 50 000 vectors, far
    ///   above the threshold. `exact_rows_per_thread` 25 000 matches that.
    fn default() -> IndexConfig {
        IndexConfig {
            graph_threshold: 15_000,
            max_links: 16,
            ef_construction: 100,
            ef_search: 64,
            exact_threads: 1,
            exact_rows_per_thread: 25_000,
            seed: 0x5EED_1EA2_17AC_0001,
        }
    }
}

impl IndexConfig {
    /// Checks the ranges that the index relies on.
    pub fn validate(&self) -> Result<(), VectorError> {
        let invalid = |setting, value, reason| Err(VectorError::InvalidConfig { setting, value, reason });
        if !(2..=64).contains(&self.max_links) {
            return invalid("max_links", self.max_links, "it must be between 2 and 64");
        }
        if self.ef_construction < self.max_links {
            return invalid("ef_construction", self.ef_construction, "it must be at least max_links");
        }
        if self.ef_search == 0 {
            return invalid("ef_search", self.ef_search, "it must be at least 1");
        }
        if self.exact_threads == 0 {
            return invalid("exact_threads", self.exact_threads, "it must be at least 1");
        }
        Ok(())
    }

    fn graph_params(&self) -> GraphParams {
        GraphParams { max_links: self.max_links, ef_construction: self.ef_construction, seed: self.seed }
    }
}

/// A set of vectors of one dimension, each under a caller's `u64` id,
/// searchable by dot product.
///
/// Vectors are stored once, as f32 in one contiguous matrix. In graph mode
/// a removed vector stays in the matrix and the graph, marked as removed
/// and left out of every result, until [`VectorIndex::compact`] rebuilds
/// both.
pub struct VectorIndex {
    config: IndexConfig,
    rows: Rows,
    /// The id stored in each slot (row of the matrix).
    ids: Vec<u64>,
    slots: HashMap<u64, u32>,
    /// Removal marks, per slot. Only graph mode marks slots, because exact
    /// mode deletes the row at once.
    removed: Vec<bool>,
    removed_count: usize,
    graph: Option<Graph>,
}

impl VectorIndex {
    /// Creates an empty index for vectors of `dimension` values with the
    /// default configuration.
    pub fn new(dimension: usize) -> Result<VectorIndex, VectorError> {
        VectorIndex::with_config(dimension, IndexConfig::default())
    }

    /// Creates an empty index for vectors of `dimension` values.
    pub fn with_config(dimension: usize, config: IndexConfig) -> Result<VectorIndex, VectorError> {
        config.validate()?;
        if dimension == 0 {
            return Err(VectorError::InvalidConfig {
                setting: "dimension",
                value: dimension,
                reason: "it must be at least 1",
            });
        }
        Ok(VectorIndex {
            config,
            rows: Rows { dimension, data: Vec::new() },
            ids: Vec::new(),
            slots: HashMap::new(),
            removed: Vec::new(),
            removed_count: 0,
            graph: (config.graph_threshold == 0).then(|| Graph::new(config.graph_params())),
        })
    }

    pub fn dimension(&self) -> usize {
        self.rows.dimension
    }

    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// Sets the candidates kept while searching the graph, the
    /// [`IndexConfig::ef_search`] setting. Higher values raise recall and
    /// search time.
    pub fn set_ef_search(&mut self, ef_search: usize) -> Result<(), VectorError> {
        let config = IndexConfig { ef_search, ..self.config };
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Returns the number of vectors that searches can find.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.slots.contains_key(&id)
    }

    pub fn mode(&self) -> SearchMode {
        if self.graph.is_some() { SearchMode::Graph } else { SearchMode::Exact }
    }

    /// Returns the number of removed vectors that still take up memory in
    /// graph mode, until [`VectorIndex::compact`] runs.
    pub fn removed_len(&self) -> usize {
        self.removed_count
    }

    /// Reserves memory for `additional` more vectors, and for their links
    /// in graph mode, so that loading a known number of vectors allocates
    /// once instead of growing the matrix by doubling.
    pub fn reserve(&mut self, additional: usize) {
        self.rows.data.reserve_exact(additional * self.rows.dimension);
        self.ids.reserve_exact(additional);
        self.removed.reserve_exact(additional);
        self.slots.reserve(additional);
        if let Some(graph) = &mut self.graph {
            graph.reserve(additional);
        }
    }

    /// Stores `vector` under `id`, replacing the vector stored under that
    /// id, if any. The vector is not normalised: similarities are cosines
    /// only when the stored vectors and the query have unit length.
    ///
    /// The insert that brings the index to
    /// [`IndexConfig::graph_threshold`] vectors builds the whole graph,
    /// which takes seconds; later inserts link one node each.
    pub fn insert(&mut self, id: u64, vector: Vec<f32>) -> Result<(), VectorError> {
        self.check_vector(&vector)?;
        if self.ids.len() >= MAX_SLOTS {
            return Err(VectorError::Full { max: MAX_SLOTS });
        }

        self.remove(id);
        // Below MAX_SLOTS, so it fits in u32.
        let slot = self.ids.len() as u32;
        self.rows.data.extend_from_slice(&vector);
        self.ids.push(id);
        self.removed.push(false);
        self.slots.insert(id, slot);

        match &mut self.graph {
            Some(graph) => graph.insert(&self.rows, slot),
            None if self.slots.len() >= self.config.graph_threshold => {
                self.graph = Some(Graph::build(self.config.graph_params(), &self.rows));
            }
            None => {}
        }
        Ok(())
    }

    /// Removes the vector stored under `id` and returns whether there was
    /// one. Later searches never return it.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(slot) = self.slots.remove(&id) else {
            return false;
        };

        if self.graph.is_some() {
            self.removed[slot as usize] = true;
            self.removed_count += 1;
            return true;
        }

        // Exact mode: move the last row into the freed slot.
        let slot = slot as usize;
        let last = self.ids.len() - 1;
        let dimension = self.rows.dimension;
        if slot != last {
            self.rows.data.copy_within(last * dimension..(last + 1) * dimension, slot * dimension);
            let moved_id = self.ids[last];
            self.ids[slot] = moved_id;
            // `slot` came from a u32, so it fits.
            self.slots.insert(moved_id, slot as u32);
        }
        self.rows.data.truncate(last * dimension);
        self.ids.truncate(last);
        self.removed.truncate(last);
        true
    }

    /// Drops removed vectors from memory and rebuilds the graph over the
    /// rest, or returns to exact search when fewer than
    /// [`IndexConfig::graph_threshold`] remain. Rebuilding takes about as
    /// long as inserting every vector again, so a server runs it when
    /// [`VectorIndex::removed_len`] has grown to a good part of
    /// [`VectorIndex::len`], not after each removal.
    pub fn compact(&mut self) {
        if self.removed_count == 0 {
            return;
        }

        let dimension = self.rows.dimension;
        let mut data = Vec::with_capacity(self.slots.len() * dimension);
        let mut ids = Vec::with_capacity(self.slots.len());
        for (slot, &id) in self.ids.iter().enumerate() {
            if !self.removed[slot] {
                data.extend_from_slice(&self.rows.data[slot * dimension..(slot + 1) * dimension]);
                ids.push(id);
            }
        }

        self.rows.data = data;
        // New slots are below the old ones, so they fit in u32.
        self.slots = ids.iter().enumerate().map(|(slot, &id)| (id, slot as u32)).collect();
        self.removed = vec![false; ids.len()];
        self.ids = ids;
        self.removed_count = 0;
        self.graph = (self.ids.len() >= self.config.graph_threshold)
            .then(|| Graph::build(self.config.graph_params(), &self.rows));
    }

    /// Returns up to `k` stored vectors most similar to `query`, best
    /// first. In graph mode the result is approximate.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Neighbor>, VectorError> {
        self.search_filtered(query, k, |_| true)
    }

    /// Returns up to `k` stored vectors whose id `accept` lets through, most
    /// similar to `query` first.
    ///
    /// In graph mode rejected vectors are still walked through, and the
    /// search goes on until it has `k` accepted ones or has seen every
    /// vector it can reach. A filter that rejects most vectors therefore
    /// costs up to a full scan.
    pub fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        accept: impl Fn(u64) -> bool + Sync,
    ) -> Result<Vec<Neighbor>, VectorError> {
        self.check_vector(query)?;
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        let accept_slot = |slot: u32| !self.removed[slot as usize] && accept(self.ids[slot as usize]);

        let found = match &self.graph {
            Some(graph) => graph.search(&self.rows, query, k, self.config.ef_search, &accept_slot),
            None => self.scan(query, k, &accept_slot),
        };
        Ok(self.to_neighbors(found))
    }

    /// Returns the `k` stored vectors most similar to `query` by comparing
    /// it with every one, in either mode. Used to measure the graph's
    /// recall, or where an exact result matters more than time.
    pub fn search_exact(&self, query: &[f32], k: usize) -> Result<Vec<Neighbor>, VectorError> {
        self.check_vector(query)?;
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        let accept_slot = |slot: u32| !self.removed[slot as usize];
        let found = self.scan(query, k, &accept_slot);
        Ok(self.to_neighbors(found))
    }

    /// Estimates the heap memory of the index in bytes: the vector matrix,
    /// ids, removal marks, the id map (at 16 bytes and one control byte per
    /// bucket) and the graph.
    pub fn heap_bytes(&self) -> usize {
        let matrix = self.rows.data.capacity() * size_of::<f32>();
        let ids = self.ids.capacity() * size_of::<u64>() + self.removed.capacity();
        let map = self.slots.capacity() * (size_of::<(u64, u32)>() + 1);
        let graph = self.graph.as_ref().map_or(0, Graph::heap_bytes);
        matrix + ids + map + graph
    }

    fn scan(&self, query: &[f32], k: usize, accept_slot: &(dyn Fn(u32) -> bool + Sync)) -> Vec<Scored> {
        exact::search(&self.rows, query, k, self.config.exact_threads, self.config.exact_rows_per_thread, accept_slot)
    }

    fn to_neighbors(&self, found: Vec<Scored>) -> Vec<Neighbor> {
        found
            .into_iter()
            .map(|scored| Neighbor { id: self.ids[scored.slot as usize], similarity: scored.similarity })
            .collect()
    }

    fn check_vector(&self, vector: &[f32]) -> Result<(), VectorError> {
        if vector.len() != self.rows.dimension {
            return Err(VectorError::DimensionMismatch { expected: self.rows.dimension, actual: vector.len() });
        }
        match vector.iter().position(|value| !value.is_finite()) {
            Some(position) => Err(VectorError::NonFinite { position }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
