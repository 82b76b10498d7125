use std::collections::HashSet;

use super::*;

#[path = "../examples/common/synthetic.rs"]
mod synthetic;

use synthetic::Embeddings;

const DIMENSION: usize = 384;

/// Returns the default configuration with the graph built at `threshold`
/// vectors.
fn config_with_threshold(threshold: usize) -> IndexConfig {
    IndexConfig { graph_threshold: threshold, ..IndexConfig::default() }
}

fn filled_index(config: IndexConfig, count: usize, seed: u64) -> (VectorIndex, Vec<Vec<f32>>) {
    let mut embeddings = Embeddings::new(DIMENSION, 50, seed);
    let mut index = VectorIndex::with_config(DIMENSION, config).unwrap();
    let mut vectors = Vec::with_capacity(count);
    for id in 0..count as u64 {
        let vector = embeddings.next_vector();
        index.insert(id, vector.clone()).unwrap();
        vectors.push(vector);
    }
    (index, vectors)
}

fn ids(neighbors: &[Neighbor]) -> Vec<u64> {
    neighbors.iter().map(|neighbor| neighbor.id).collect()
}

fn unit(dimension: usize, axis: usize) -> Vec<f32> {
    let mut vector = vec![0.0; dimension];
    vector[axis] = 1.0;
    vector
}

#[test]
fn graph_recall_at_10() {
    let (index, vectors) = filled_index(config_with_threshold(1000), 3000, 7);
    assert_eq!(index.mode(), SearchMode::Graph);

    let mut queries = Embeddings::new(DIMENSION, 50, 99);
    let mut found = 0;
    let mut expected = 0;
    for vector in vectors.iter().step_by(15) {
        let query = queries.query_near(vector);
        let exact: HashSet<u64> = ids(&index.search_exact(&query, 10).unwrap()).into_iter().collect();
        let approximate = index.search(&query, 10).unwrap();
        found += approximate.iter().filter(|neighbor| exact.contains(&neighbor.id)).count();
        expected += exact.len();
    }
    let recall = found as f64 / expected as f64;
    assert!(recall >= 0.95, "recall@10 is {recall:.3}");
}

#[test]
fn search_orders_best_first() {
    let mut index = VectorIndex::new(3).unwrap();
    index.insert(1, vec![1.0, 0.0, 0.0]).unwrap();
    index.insert(2, vec![0.6, 0.8, 0.0]).unwrap();
    index.insert(3, vec![0.0, 0.0, 1.0]).unwrap();

    let found = index.search(&[1.0, 0.0, 0.0], 3).unwrap();
    assert_eq!(ids(&found), [1, 2, 3]);
    assert!((found[1].similarity - 0.6).abs() < 1e-6);
}

#[test]
fn k_larger_than_len() {
    let mut index = VectorIndex::new(4).unwrap();
    index.insert(10, unit(4, 0)).unwrap();
    index.insert(11, unit(4, 1)).unwrap();
    assert_eq!(index.search(&unit(4, 0), 50).unwrap().len(), 2);

    let (graph_index, vectors) = filled_index(config_with_threshold(100), 150, 3);
    assert_eq!(graph_index.mode(), SearchMode::Graph);
    let found = graph_index.search(&vectors[0], 1000).unwrap();
    assert_eq!(found.len(), 150);
}

#[test]
fn empty_index_and_zero_k() {
    let mut index = VectorIndex::new(4).unwrap();
    assert!(index.is_empty());
    assert!(index.search(&unit(4, 0), 10).unwrap().is_empty());

    index.insert(1, unit(4, 0)).unwrap();
    assert!(index.search(&unit(4, 0), 0).unwrap().is_empty());
}

#[test]
fn dimension_mismatch_is_error() {
    let mut index = VectorIndex::new(4).unwrap();
    let mismatch = VectorError::DimensionMismatch { expected: 4, actual: 3 };
    assert_eq!(index.insert(1, vec![1.0, 0.0, 0.0]), Err(mismatch.clone()));
    assert_eq!(index.search(&[1.0, 0.0, 0.0], 5), Err(mismatch.clone()));
    assert_eq!(index.search_exact(&[1.0, 0.0, 0.0], 5), Err(mismatch));
    assert!(index.is_empty());
}

#[test]
fn non_finite_value_is_error() {
    let mut index = VectorIndex::new(3).unwrap();
    assert_eq!(index.insert(1, vec![0.0, f32::NAN, 0.0]), Err(VectorError::NonFinite { position: 1 }));
    assert_eq!(index.search(&[f32::INFINITY, 0.0, 0.0], 1), Err(VectorError::NonFinite { position: 0 }));
}

#[test]
fn invalid_config_is_error() {
    assert!(VectorIndex::new(0).is_err());
    let config = IndexConfig { max_links: 1, ..IndexConfig::default() };
    assert!(VectorIndex::with_config(4, config).is_err());
    let config = IndexConfig { max_links: 65, ..IndexConfig::default() };
    assert!(VectorIndex::with_config(4, config).is_err());
    let config = IndexConfig { ef_search: 0, ..IndexConfig::default() };
    assert!(VectorIndex::with_config(4, config).is_err());
    let config = IndexConfig { exact_threads: 0, ..IndexConfig::default() };
    assert!(VectorIndex::with_config(4, config).is_err());
}

#[test]
fn remove_in_exact_mode() {
    let mut index = VectorIndex::new(4).unwrap();
    for axis in 0..4 {
        index.insert(axis as u64, unit(4, axis)).unwrap();
    }

    assert!(index.remove(0));
    assert!(!index.remove(0));
    assert_eq!(index.len(), 3);
    assert!(!index.contains(0));

    let found = index.search(&unit(4, 0), 4).unwrap();
    assert_eq!(found.len(), 3);
    assert!(!ids(&found).contains(&0));
    // The last row moved into the freed slot and keeps its id.
    assert_eq!(ids(&index.search(&unit(4, 3), 1).unwrap()), [3]);
}

#[test]
fn remove_in_graph_mode() {
    let (mut index, vectors) = filled_index(config_with_threshold(200), 400, 11);
    assert_eq!(index.mode(), SearchMode::Graph);

    let target = 123;
    assert_eq!(ids(&index.search(&vectors[target], 1).unwrap()), [target as u64]);
    assert!(index.remove(target as u64));
    assert_eq!(index.len(), 399);
    assert_eq!(index.removed_len(), 1);

    for search in [VectorIndex::search, VectorIndex::search_exact] {
        let found = search(&index, &vectors[target], 400).unwrap();
        assert_eq!(found.len(), 399);
        assert!(!ids(&found).contains(&(target as u64)));
    }
}

#[test]
fn remove_half_then_compact() {
    let (mut index, vectors) = filled_index(config_with_threshold(200), 400, 13);
    for id in (0..400).step_by(2) {
        assert!(index.remove(id));
    }
    assert_eq!(index.len(), 200);
    assert_eq!(index.removed_len(), 200);

    index.compact();
    assert_eq!(index.removed_len(), 0);
    assert_eq!(index.len(), 200);
    assert_eq!(index.mode(), SearchMode::Graph);
    let found = index.search(&vectors[1], 1).unwrap();
    assert_eq!(ids(&found), [1]);

    assert!(index.remove(1));
    index.compact();
    assert_eq!(index.mode(), SearchMode::Exact);
    let found = index.search(&vectors[3], 300).unwrap();
    assert_eq!(found.len(), 199);
    assert_eq!(found[0].id, 3);
    assert!(ids(&found).iter().all(|id| id % 2 == 1 && *id != 1));
}

#[test]
fn insert_replaces_same_id() {
    for threshold in [1000, 10] {
        let (mut index, _) = filled_index(config_with_threshold(threshold), 20, 17);
        index.insert(5, unit(DIMENSION, 0)).unwrap();
        assert_eq!(index.len(), 20);
        let found = index.search(&unit(DIMENSION, 0), 1).unwrap();
        assert_eq!(ids(&found), [5], "threshold {threshold}");
        assert!((found[0].similarity - 1.0).abs() < 1e-6);
    }
}

#[test]
fn filtered_search_in_both_modes() {
    for threshold in [10_000, 200] {
        let (index, vectors) = filled_index(config_with_threshold(threshold), 500, 19);
        let found = index.search_filtered(&vectors[0], 20, |id| id % 10 == 3).unwrap();
        assert_eq!(found.len(), 20, "threshold {threshold}");
        assert!(ids(&found).iter().all(|id| id % 10 == 3));

        let exact: Vec<u64> = ids(&index.search_exact(&vectors[0], 500).unwrap())
            .into_iter()
            .filter(|id| id % 10 == 3)
            .take(20)
            .collect();
        let overlap = ids(&found).iter().filter(|id| exact.contains(id)).count();
        assert!(overlap >= 18, "threshold {threshold}: {overlap} of 20 filtered results are exact");
    }
}

#[test]
fn same_inserts_build_same_graph() {
    let (first, vectors) = filled_index(config_with_threshold(300), 600, 23);
    let (second, _) = filled_index(config_with_threshold(300), 600, 23);
    for vector in vectors.iter().take(20) {
        assert_eq!(first.search(vector, 10).unwrap(), second.search(vector, 10).unwrap());
    }
}

#[test]
fn exact_scan_on_two_threads() {
    let config = IndexConfig { exact_threads: 2, exact_rows_per_thread: 100, ..IndexConfig::default() };
    let (threaded, vectors) = filled_index(config, 1000, 29);
    let (single, _) = filled_index(IndexConfig::default(), 1000, 29);
    for vector in vectors.iter().take(10) {
        assert_eq!(threaded.search(vector, 10).unwrap(), single.search(vector, 10).unwrap());
    }
}

#[test]
fn searches_from_many_threads() {
    let (index, vectors) = filled_index(config_with_threshold(300), 600, 31);
    std::thread::scope(|scope| {
        for part in 0..4 {
            let index = &index;
            let vectors = &vectors;
            scope.spawn(move || {
                for (id, vector) in vectors.iter().enumerate().skip(part).step_by(4) {
                    let found = index.search(vector, 1).unwrap();
                    assert_eq!(ids(&found), [id as u64]);
                }
            });
        }
    });
}
