//! The offline embedding: a feature-hashing vectoriser that needs no
//! downloaded model. Stemmed words, word pairs and character trigrams are
//! hashed into a fixed number of signed dimensions, then the vector is
//! scaled to unit length, so a dot product is the cosine similarity.

use crate::text;

/// Dimensions of an offline embedding.
pub const DIMENSIONS: usize = 384;

const WORD_WEIGHT: f32 = 1.0;
const PAIR_WEIGHT: f32 = 0.5;
const TRIGRAM_WEIGHT: f32 = 0.25;

/// Returns the unit-length embedding of `text` (all zeros when the text
/// has no terms).
pub fn embed(text_in: &str) -> Vec<f32> {
    let mut vector = vec![0.0f32; DIMENSIONS];
    let terms = text::terms(text_in);

    for term in &terms {
        add_feature(&mut vector, term.as_bytes(), WORD_WEIGHT);
        let padded = format!("<{term}>");
        let chars: Vec<char> = padded.chars().collect();
        for gram in chars.windows(3) {
            let gram: String = gram.iter().collect();
            add_feature(&mut vector, gram.as_bytes(), TRIGRAM_WEIGHT);
        }
    }
    for pair in terms.windows(2) {
        let key = format!("{} {}", pair[0], pair[1]);
        add_feature(&mut vector, key.as_bytes(), PAIR_WEIGHT);
    }

    // Sublinear weighting: a term repeated many times should not drown the rest.
    for value in &mut vector {
        *value = value.signum() * value.abs().sqrt();
    }
    normalize(&mut vector);
    vector
}

/// Returns the dot product of two vectors of the same length; for unit
/// vectors this is their cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Scales `vector` to unit length; a zero vector stays zero.
pub fn normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for value in vector.iter_mut() {
            *value /= norm;
        }
    }
}

/// Encodes an embedding as little-endian `f32` bytes for storage.
pub fn to_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Decodes little-endian `f32` bytes written by [`to_bytes`]. Returns
/// `None` when the length is not a multiple of four.
pub fn from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn add_feature(vector: &mut [f32], key: &[u8], weight: f32) {
    let hash = fnv1a(key);
    let index = (hash % DIMENSIONS as u64) as usize;
    let sign = if (hash >> 63) == 0 { 1.0 } else { -1.0 };
    vector[index] += sign * weight;
}

/// 64-bit FNV-1a: stable across platforms and releases, unlike the
/// standard library's randomly seeded hasher, so stored vectors stay valid.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_is_unit_length() {
        let v = embed("Missing values in R are written NA.");
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }

    #[test]
    fn related_texts_are_closer() {
        let query = embed("how does R mark missing values");
        let related = embed("When an element or value is not available, a missing value, R marks it NA.");
        let unrelated = embed("Plotting functions draw graphics on a device such as a window.");
        assert!(cosine(&query, &related) > cosine(&query, &unrelated) + 0.1);
    }

    #[test]
    fn bytes_round_trip() {
        let v = embed("vectors and assignment");
        assert_eq!(from_bytes(&to_bytes(&v)), Some(v));
        assert_eq!(from_bytes(&[1, 2, 3]), None);
    }
}
