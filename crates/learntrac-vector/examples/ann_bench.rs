//! Measures exact and HNSW search over synthetic 384-dimensional
//! embeddings, clustered like sentence embeddings (see
//! `common/synthetic.rs`: 300 topics, cosine about 0.5 within a topic and
//! 0.1 between topics).
//!
//! ```text
//! cargo run --release -p learntrac-vector --example ann_bench
//! ```
//!
//! Prints, on one thread unless a line names two:
//! - the median exact-search latency at 1k to 100k vectors, on one and on
//!   two threads, which is what `IndexConfig::graph_threshold` is set from;
//! - for 10k and 100k vectors, exact and HNSW: build time, estimated heap
//!   memory, median and p99 latency of k = 10 searches, and HNSW recall@10
//!   against exact search;
//! - HNSW recall and latency at 100k for a few values of ef.
//!
//! Queries are stored vectors moved to a cosine of about 0.9, as a short
//! question is near the passage that answers it. The HNSW figures come
//! from one graph: the 10k row is measured after its first 10 000 inserts.
#![allow(clippy::expect_used)]

#[path = "common/synthetic.rs"]
mod synthetic;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use learntrac_vector::{IndexConfig, VectorIndex};
use synthetic::Embeddings;

const DIMENSION: usize = 384;
const TOPICS: usize = 300;
const SEED: u64 = 0x0A11_BE1C;
const K: usize = 10;
const QUERIES: usize = 1000;
/// Queries per size in the exact-latency table.
const SWEEP_QUERIES: usize = 200;
const SWEEP_SIZES: [usize; 7] = [1_000, 5_000, 10_000, 15_000, 20_000, 50_000, 100_000];
const REPORT_SIZES: [usize; 2] = [10_000, 100_000];
const EF_VALUES: [usize; 4] = [32, 64, 128, 256];

fn main() {
    let total = SWEEP_SIZES[SWEEP_SIZES.len() - 1];
    let started = Instant::now();
    let mut embeddings = Embeddings::new(DIMENSION, TOPICS, SEED);
    let vectors: Vec<Vec<f32>> = (0..total).map(|_| embeddings.next_vector()).collect();
    println!(
        "data: {total} vectors of {DIMENSION} dimensions in {TOPICS} topics, made in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    measure_exact(&vectors, &mut embeddings);
    measure_graph(&vectors, &mut embeddings);
}

/// Fills two exact indexes in steps, one scanning on one thread and one
/// on two, and times searches at each size.
fn measure_exact(vectors: &[Vec<f32>], embeddings: &mut Embeddings) {
    let single_config = IndexConfig { graph_threshold: usize::MAX, ..IndexConfig::default() };
    let split_config = IndexConfig { exact_threads: 2, exact_rows_per_thread: 1, ..single_config };
    let mut single = VectorIndex::with_config(DIMENSION, single_config).expect("valid configuration");
    let mut split = VectorIndex::with_config(DIMENSION, split_config).expect("valid configuration");
    let mut build_time = Duration::ZERO;

    println!("\nexact search, k = {K}, median of {SWEEP_QUERIES} queries");
    println!("{:>8} {:>12} {:>12}", "vectors", "1 thread", "2 threads");
    let mut reports = Vec::new();
    for &size in &SWEEP_SIZES {
        build_time += fill(&mut single, vectors, size);
        fill(&mut split, vectors, size);

        let queries = make_queries(&vectors[..size], SWEEP_QUERIES, embeddings);
        let single_times = latencies(&queries, |query| single.search(query, K).expect("valid query").len());
        let split_times = latencies(&queries, |query| split.search(query, K).expect("valid query").len());
        println!(
            "{size:>8} {:>9.3} ms {:>9.3} ms",
            millis(percentile(&single_times, 50)),
            millis(percentile(&split_times, 50))
        );

        if REPORT_SIZES.contains(&size) {
            let queries = make_queries(&vectors[..size], QUERIES, embeddings);
            let times = latencies(&queries, |query| single.search(query, K).expect("valid query").len());
            reports.push(Report { size, build_time, heap_bytes: single.heap_bytes(), times, recall: None });
        }
    }

    for report in &reports {
        report.print("exact");
    }
}

/// Inserts the vectors one at a time into an index that uses its graph
/// from the first insert, and measures it at each size in `REPORT_SIZES`.
fn measure_graph(vectors: &[Vec<f32>], embeddings: &mut Embeddings) {
    let config = IndexConfig { graph_threshold: 0, ..IndexConfig::default() };
    let mut index = VectorIndex::with_config(DIMENSION, config).expect("valid configuration");
    let mut build_time = Duration::ZERO;

    for &size in &REPORT_SIZES {
        build_time += fill(&mut index, vectors, size);

        let queries = make_queries(&vectors[..size], QUERIES, embeddings);
        let truth: Vec<Vec<u64>> = queries.iter().map(|query| neighbor_ids(&index, query, true)).collect();
        let times = latencies(&queries, |query| index.search(query, K).expect("valid query").len());
        let recall = measure_recall(&index, &queries, &truth);
        Report { size, build_time, heap_bytes: index.heap_bytes(), times, recall: Some(recall) }.print("hnsw");

        if size == REPORT_SIZES[REPORT_SIZES.len() - 1] {
            println!("\nhnsw at {size} vectors by ef, k = {K}, {QUERIES} queries");
            println!("{:>6} {:>10} {:>10} {:>10}", "ef", "recall@10", "median", "p99");
            for ef in EF_VALUES {
                index.set_ef_search(ef).expect("valid ef");
                let times = latencies(&queries, |query| index.search(query, K).expect("valid query").len());
                let recall = measure_recall(&index, &queries, &truth);
                println!(
                    "{ef:>6} {recall:>10.4} {:>7.3} ms {:>7.3} ms",
                    millis(percentile(&times, 50)),
                    millis(percentile(&times, 99))
                );
            }
            index.set_ef_search(config.ef_search).expect("valid ef");
        }
    }
}

struct Report {
    size: usize,
    build_time: Duration,
    heap_bytes: usize,
    times: Vec<Duration>,
    recall: Option<f64>,
}

impl Report {
    fn print(&self, mode: &str) {
        let recall = self.recall.map_or(String::from("-"), |recall| format!("{recall:.4}"));
        println!(
            "\n{mode} at {} vectors: build {:.2} s, heap {:.1} MiB (estimate), k = {K} over {} queries: \
             median {:.3} ms, p99 {:.3} ms, recall@10 {recall}",
            self.size,
            self.build_time.as_secs_f64(),
            self.heap_bytes as f64 / (1024.0 * 1024.0),
            self.times.len(),
            millis(percentile(&self.times, 50)),
            millis(percentile(&self.times, 99)),
        );
    }
}

/// Inserts `vectors` from `index.len()` up to `size`, under their
/// positions as ids, and returns the time taken.
fn fill(index: &mut VectorIndex, vectors: &[Vec<f32>], size: usize) -> Duration {
    let started = Instant::now();
    index.reserve(size - index.len());
    for (id, vector) in vectors.iter().enumerate().take(size).skip(index.len()) {
        index.insert(id as u64, vector.clone()).expect("valid vector");
    }
    started.elapsed()
}

/// Draws `count` queries near stored vectors spread evenly over `stored`.
fn make_queries(stored: &[Vec<f32>], count: usize, embeddings: &mut Embeddings) -> Vec<Vec<f32>> {
    let step = (stored.len() / count).max(1);
    stored.iter().step_by(step).take(count).map(|vector| embeddings.query_near(vector)).collect()
}

/// Times `search` on each query, sorted from fastest to slowest. The
/// search returns its result count so that it is not optimised away.
fn latencies(queries: &[Vec<f32>], search: impl Fn(&[f32]) -> usize) -> Vec<Duration> {
    let mut times: Vec<Duration> = queries
        .iter()
        .map(|query| {
            let started = Instant::now();
            std::hint::black_box(search(query));
            started.elapsed()
        })
        .collect();
    times.sort_unstable();
    times
}

fn neighbor_ids(index: &VectorIndex, query: &[f32], exact: bool) -> Vec<u64> {
    let found = if exact { index.search_exact(query, K) } else { index.search(query, K) };
    found.expect("valid query").iter().map(|neighbor| neighbor.id).collect()
}

/// Returns the share of the exact top-k ids that the index's own search
/// found, over all queries.
fn measure_recall(index: &VectorIndex, queries: &[Vec<f32>], truth: &[Vec<u64>]) -> f64 {
    let mut found = 0;
    let mut expected = 0;
    for (query, exact) in queries.iter().zip(truth) {
        let exact: HashSet<&u64> = exact.iter().collect();
        found += neighbor_ids(index, query, false).iter().filter(|id| exact.contains(id)).count();
        expected += exact.len();
    }
    found as f64 / expected as f64
}

/// Returns the `percent` percentile of sorted `times` by the nearest-rank
/// method.
fn percentile(times: &[Duration], percent: usize) -> Duration {
    let rank = (times.len() * percent).div_ceil(100).max(1);
    times[rank - 1]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
