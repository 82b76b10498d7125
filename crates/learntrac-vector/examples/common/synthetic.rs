//! Synthetic unit vectors shaped like sentence embeddings, for the
//! benchmark and the recall tests. Shared by `examples/ann_bench.rs` and
//! the crate's unit tests through `#[path]`.
//!
//! Each vector is `√0.1·g + √0.4·t + √0.5·n`, scaled to unit length, where
//! `g` is one direction shared by all vectors, `t` the centre of one of
//! `topics` random topics and `n` fresh noise, all three random unit
//! vectors. Random directions in hundreds of dimensions are nearly
//! orthogonal, so two vectors of one topic have a cosine near 0.5 and two
//! of different topics near 0.1: related passages close, unrelated ones
//! slightly positive, as sentence embeddings tend to be.
//! NOTE: the shape is not fitted to real all-MiniLM-L6-v2 vectors. Its
//! noise spreads over every dimension, which probably makes neighbours
//! harder to find than in real text.

/// Shares of the squared length taken by the shared direction, the topic
/// centre and the noise. They sum to 1.
const SHARED_SHARE: f32 = 0.1;
const TOPIC_SHARE: f32 = 0.4;
const NOISE_SHARE: f32 = 0.5;
/// Share of the noise in a query, so that a query has a cosine of about
/// √0.8 ≈ 0.9 with the vector it was drawn from.
const QUERY_NOISE_SHARE: f32 = 0.2;

pub struct Embeddings {
    dimension: usize,
    state: u64,
    shared: Vec<f32>,
    topics: Vec<Vec<f32>>,
}

impl Embeddings {
    pub fn new(dimension: usize, topics: usize, seed: u64) -> Embeddings {
        let mut embeddings = Embeddings { dimension, state: seed | 1, shared: Vec::new(), topics: Vec::new() };
        embeddings.shared = embeddings.random_direction();
        embeddings.topics = (0..topics).map(|_| embeddings.random_direction()).collect();
        embeddings
    }

    /// Draws a vector of a random topic.
    pub fn next_vector(&mut self) -> Vec<f32> {
        let topic = (self.next_u64() % self.topics.len() as u64) as usize;
        let noise = self.random_direction();
        let vector = (0..self.dimension)
            .map(|i| {
                SHARED_SHARE.sqrt() * self.shared[i]
                    + TOPIC_SHARE.sqrt() * self.topics[topic][i]
                    + NOISE_SHARE.sqrt() * noise[i]
            })
            .collect();
        normalized(vector)
    }

    /// Draws a query near `vector`, with a cosine of about 0.9 to it.
    pub fn query_near(&mut self, vector: &[f32]) -> Vec<f32> {
        let noise = self.random_direction();
        let keep = (1.0 - QUERY_NOISE_SHARE).sqrt();
        let offset = QUERY_NOISE_SHARE.sqrt();
        normalized(vector.iter().zip(&noise).map(|(value, noise)| keep * value + offset * noise).collect())
    }

    fn random_direction(&mut self) -> Vec<f32> {
        normalized((0..self.dimension).map(|_| self.next_gaussian()).collect())
    }

    /// xorshift64*.
    fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Draws a standard normal sample by the Box–Muller transform.
    fn next_gaussian(&mut self) -> f32 {
        let scale = 1.0 / (1_u64 << 53) as f64;
        let u1 = ((self.next_u64() >> 11) + 1) as f64 * scale;
        let u2 = (self.next_u64() >> 11) as f64 * scale;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

fn normalized(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|value| *value /= norm);
    }
    vector
}
