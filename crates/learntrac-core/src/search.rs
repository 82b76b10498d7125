//! The in-memory index over book chunks. With a sentence-embedding model,
//! relevance is the calibrated cosine of the query's and the passage's
//! vectors. With the built-in embedder it combines lexical (BM25-style
//! term weighting) and semantic evidence.

use std::collections::HashMap;
use std::sync::Arc;

use learntrac_vector::{VectorError, VectorIndex};

pub use crate::book::embedding_text;
use crate::{embed, text};

/// A chunk as the index stores it, with what a hit must show.
#[derive(Clone, Debug, PartialEq)]
pub struct Passage {
    pub chunk_id: i64,
    pub book_id: i64,
    pub section_id: i64,
    pub book_title: String,
    pub heading: String,
    /// Headings of the enclosing chapter and sections, outermost first.
    pub context: String,
    pub text: String,
    /// The PDF page the passage starts on.
    pub page: Option<i64>,
}

/// The rule that turns evidence into relevance, for the model whose
/// vectors the index contains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scoring {
    /// The built-in embedder, whose cosines are weak evidence alone:
    /// lexical and semantic relevance combined.
    Hybrid,
    /// A sentence-embedding model: relevance is the cosine mapped linearly
    /// from 0 (relevance 0) through `relevant` (relevance [`RELEVANT`]) to
    /// `full` (relevance 1). The mapping does not depend on the library, so
    /// a threshold means the same at any size. A passage that contains the
    /// query's identifiers verbatim (such as `str.format` or `__init__`)
    /// gains up to `identifier_bonus`.
    Cosine { relevant: f32, full: f32, identifier_bonus: f32 },
}

#[derive(Clone, Debug)]
pub struct Hit {
    pub passage: Arc<Passage>,
    /// Combined relevance, 0.0 to 1.0.
    pub relevance: f32,
    pub lexical: f32,
    pub semantic: f32,
    /// Share of the query's information (its terms weighted by rarity) that
    /// occurs in the passage or its headings, 0.0 to 1.0.
    pub coverage: f32,
    /// The relevance before it is capped at 1.0, which orders hits that
    /// are both fully relevant.
    pub score: f32,
}

struct Entry {
    passage: Arc<Passage>,
    embedding: Vec<f32>,
    term_counts: HashMap<String, u32>,
    heading_terms: Vec<String>,
    context_terms: Vec<String>,
    length: u32,
}

/// Weight of lexical relevance; the rest is semantic.
const LEXICAL_WEIGHT: f32 = 0.7;
/// Nearest neighbours fetched per requested hit, and at least, so that
/// sections with many passages do not leave fewer than `limit` sections.
const CANDIDATES_PER_HIT: usize = 8;
const MIN_CANDIDATES: usize = 100;
/// BM25 saturation and length normalisation.
const K1: f32 = 1.2;
const B: f32 = 0.75;
/// Cosine similarities of offline embeddings seldom exceed this between a
/// short query and a long passage, so it maps to full semantic relevance.
const SEMANTIC_FULL: f32 = 0.45;

pub struct Index {
    /// The model whose vectors the index holds.
    model: String,
    scoring: Scoring,
    entries: Vec<Entry>,
    /// With [`Scoring::Cosine`], the passages' vectors by entry position;
    /// exact for small libraries, a graph above its threshold.
    vectors: Option<VectorIndex>,
    document_frequency: HashMap<String, u32>,
    total_length: u64,
}

impl Index {
    /// Creates an empty index for the vectors of `model`.
    pub fn new(model: &str, scoring: Scoring) -> Index {
        Index {
            model: model.to_string(),
            scoring,
            entries: Vec::new(),
            vectors: None,
            document_frequency: HashMap::new(),
            total_length: 0,
        }
    }

    /// The model whose vectors the index holds; queries must be embedded by it.
    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn scoring(&self) -> Scoring {
        self.scoring
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a passage with its stored embedding. With [`Scoring::Cosine`]
    /// the vector goes to the nearest-neighbour index, which rejects a
    /// vector of another length than the first or one that is not finite.
    pub fn insert(&mut self, passage: Passage, embedding: Vec<f32>) -> Result<(), VectorError> {
        let embedding = match self.scoring {
            Scoring::Hybrid => embedding,
            Scoring::Cosine { .. } => {
                let vectors = match &mut self.vectors {
                    Some(vectors) => vectors,
                    None => self.vectors.insert(VectorIndex::new(embedding.len())?),
                };
                vectors.insert(self.entries.len() as u64, embedding)?;
                Vec::new()
            }
        };
        let mut term_counts: HashMap<String, u32> = HashMap::new();
        for term in text::terms(&passage.text) {
            *term_counts.entry(term).or_default() += 1;
        }
        for term in term_counts.keys() {
            *self.document_frequency.entry(term.clone()).or_default() += 1;
        }
        let length = term_counts.values().sum::<u32>().max(1);
        self.total_length += u64::from(length);
        let heading_terms = text::terms(&passage.heading);
        let context_terms = text::terms(&passage.context);
        self.entries.push(Entry {
            passage: Arc::new(passage),
            embedding,
            term_counts,
            heading_terms,
            context_terms,
            length,
        });
        Ok(())
    }

    /// Returns up to `limit` passages with relevance of at least
    /// `min_relevance`, best first, at most one per section (its best), so
    /// that a long section does not crowd out the others. `query_embedding`
    /// is the query's vector by the index's model.
    pub fn search(&self, query: &str, query_embedding: &[f32], limit: usize, min_relevance: f32) -> Vec<Hit> {
        let mut query_terms = text::terms(query);
        query_terms.sort();
        query_terms.dedup();
        let identifiers = text::identifiers(query);
        if (query_terms.is_empty() && identifiers.is_empty()) || self.entries.is_empty() {
            return Vec::new();
        }
        let count = self.entries.len() as f32;
        let average_length = self.total_length as f32 / count;
        let idf: Vec<f32> = query_terms
            .iter()
            .map(|t| {
                let df = self.document_frequency.get(t).copied().unwrap_or(0) as f32;
                ((count - df + 0.5) / (df + 0.5)).ln_1p()
            })
            .collect();
        let idf_total: f32 = idf.iter().sum();

        let only_identifiers = query.split_whitespace().all(|word| !text::identifiers(word).is_empty());
        let score = |entry: &Entry, cosine: f32| {
            let mut matched = 0.0;
            let mut present = 0.0;
            for (term, weight) in query_terms.iter().zip(&idf) {
                let tf = entry.term_counts.get(term).copied().unwrap_or(0) as f32;
                let in_text = tf / (tf + K1 * (1.0 - B + B * entry.length as f32 / average_length));
                // The section's own heading counts fully, an enclosing
                // chapter's heading half: a subsection is about its
                // chapter's subject, but less specifically.
                let saturation = if entry.heading_terms.contains(term) {
                    1.0
                } else if entry.context_terms.contains(term) {
                    in_text.max(0.5)
                } else {
                    in_text
                };
                matched += weight * saturation;
                if saturation > 0.0 {
                    present += weight;
                }
            }
            let lexical = if idf_total > 0.0 { matched / idf_total } else { 0.0 };
            let coverage = if idf_total > 0.0 { present / idf_total } else { 0.0 };
            let (semantic, score) = match self.scoring {
                Scoring::Hybrid => {
                    let semantic = (cosine / SEMANTIC_FULL).clamp(0.0, 1.0);
                    (
                        semantic,
                        calibrate(LEXICAL_WEIGHT * lexical + (1.0 - LEXICAL_WEIGHT) * semantic, HYBRID_THRESHOLD, 1.0),
                    )
                }
                Scoring::Cosine { relevant, full, identifier_bonus } => {
                    let semantic = calibrate(cosine, relevant, full);
                    let found = identifiers.iter().filter(|id| entry.passage.text.contains(id.as_str())).count();
                    let bonus = if identifiers.is_empty() {
                        0.0
                    } else {
                        identifier_bonus * found as f32 / identifiers.len() as f32
                    };
                    // A query of identifiers alone ("__init__", ":=") looks
                    // for the passages that contain them. Each of those is
                    // relevant, and meaning orders them.
                    let score = if only_identifiers && found == identifiers.len() && identifier_bonus > 0.0 {
                        (semantic + bonus).max(RELEVANT + identifier_bonus * semantic)
                    } else {
                        semantic + bonus
                    };
                    (semantic.min(1.0), score)
                }
            };
            Hit { passage: entry.passage.clone(), relevance: score.clamp(0.0, 1.0), lexical, semantic, coverage, score }
        };

        let mut hits: Vec<Hit> = match (&self.vectors, self.scoring) {
            // The combined score needs every passage's term statistics.
            (_, Scoring::Hybrid) | (None, _) => self
                .entries
                .iter()
                .map(|entry| score(entry, embed::cosine(query_embedding, &entry.embedding)))
                .collect(),
            // The nearest neighbours by meaning, enough of them to leave
            // `limit` sections after keeping one passage per section.
            (Some(vectors), Scoring::Cosine { .. }) => {
                let candidates = (limit * CANDIDATES_PER_HIT).max(MIN_CANDIDATES);
                let mut neighbors = vectors.search(query_embedding, candidates).unwrap_or_default();
                // Passages that contain an identifier verbatim are candidates
                // even when their meaning is far from the query's words.
                if !identifiers.is_empty() {
                    let verbatim: std::collections::HashSet<u64> = self
                        .entries
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| identifiers.iter().any(|id| e.passage.text.contains(id.as_str())))
                        .map(|(i, _)| i as u64)
                        .collect();
                    if !verbatim.is_empty() {
                        let matching =
                            vectors.search_filtered(query_embedding, candidates, |id| verbatim.contains(&id));
                        neighbors.extend(matching.unwrap_or_default());
                    }
                }
                let mut seen = std::collections::HashSet::new();
                neighbors
                    .into_iter()
                    .filter(|n| seen.insert(n.id))
                    .filter_map(|n| self.entries.get(n.id as usize).map(|entry| score(entry, n.similarity)))
                    .collect()
            }
        };
        hits.retain(|hit| hit.relevance >= min_relevance);
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut seen_sections = std::collections::HashSet::new();
        hits.retain(|hit| seen_sections.insert(hit.passage.section_id));
        hits.truncate(limit);
        hits
    }
}

/// The built-in embedder's combined score that about 70% of the passages
/// answering the questions of `bench/eval` reach, as MiniLM's relevant
/// cosine does for MiniLM.
const HYBRID_THRESHOLD: f32 = 0.3;
/// The relevance that marks a passage as about the query on every scale;
/// `min_relevance` defaults to it.
pub const RELEVANT: f32 = 0.65;

/// Maps a score onto the common relevance scale: linear pieces through
/// (0, 0), (`relevant`, [`RELEVANT`]) and (`full`, 1). The last piece goes
/// on above `full`, so that the result still orders scores there, and
/// callers cap it.
/// The built-in embedder's combined score is a share of the query's
/// information found and a cosine is a cosine, so neither mapping grows
/// or shrinks with the library.
fn calibrate(score: f32, relevant: f32, full: f32) -> f32 {
    if score <= relevant {
        (score / relevant * RELEVANT).max(0.0)
    } else {
        RELEVANT + (score - relevant) / (full - relevant) * (1.0 - RELEVANT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(id: i64, heading: &str, body: &str) -> Passage {
        Passage {
            chunk_id: id,
            book_id: 1,
            section_id: id,
            book_title: "Book".into(),
            heading: heading.into(),
            context: String::new(),
            text: body.into(),
            page: None,
        }
    }

    #[test]
    fn finds_the_matching_section_first() {
        let mut index = Index::new("builtin", Scoring::Hybrid);
        for (id, heading, body) in [
            (1, "2.1 Vectors", "R operates on named data structures. The simplest is the numeric vector."),
            (2, "2.5 Missing values", "A missing value is marked NA. Any operation on an NA becomes an NA."),
            (3, "12 Graphics", "Plotting commands draw on a graphics device such as a window."),
        ] {
            index.insert(passage(id, heading, body), embed::embed(&embedding_text("", heading, body))).expect("insert");
        }
        let search = |query: &str, min| index.search(query, &embed::embed(query), 10, min);
        let hits = search("how does R handle missing values", 0.0);
        assert_eq!(hits[0].passage.chunk_id, 2);
        assert!(hits[0].relevance > hits[1].relevance);
        let sections: Vec<i64> = hits.iter().map(|h| h.passage.section_id).collect();
        assert_eq!(sections.len(), 3, "one hit per section");
        let graphics = hits.iter().find(|h| h.passage.chunk_id == 3).map_or(0.0, |h| h.coverage);
        assert!(hits[0].coverage > graphics, "the best hit contains more of the query");
        assert!(search("missing values", 0.99).len() <= 1);
        assert!(search("the of and", 0.0).is_empty());
    }

    /// Returns the unit vector along `axis` in four dimensions.
    fn axis(axis: usize) -> Vec<f32> {
        (0..4).map(|i| if i == axis { 1.0 } else { 0.0 }).collect()
    }

    #[test]
    fn cosine_scoring_is_calibrated_and_finds_identifiers() {
        let scoring = Scoring::Cosine { relevant: 0.4, full: 0.8, identifier_bonus: 0.1 };
        let mut index = Index::new("model", scoring);
        let near = vec![0.6, 0.8, 0.0, 0.0];
        index
            .insert(passage(1, "9.3 Classes", "The __init__ method sets up a new instance."), axis(2))
            .expect("insert");
        index.insert(passage(2, "4.1 Loops", "A for loop walks over a sequence."), near).expect("insert");
        index.insert(passage(3, "4.2 Ranges", "range() makes arithmetic progressions."), axis(1)).expect("insert");
        assert!(index.insert(passage(4, "Bad", "Wrong length."), vec![1.0; 3]).is_err(), "another dimension");

        // Cosine 0.8 maps to 1.0, 0.0 to 0.0 and 0.6 to 0.825, at any size.
        let hits = index.search("loops over sequences", &axis(0), 10, 0.0);
        assert_eq!(hits[0].passage.chunk_id, 2);
        assert!((hits[0].relevance - 0.825).abs() < 0.01, "{}", hits[0].relevance);
        assert!(index.search("loops over sequences", &axis(0), 10, 0.65).len() == 1, "the threshold applies");

        // An identifier alone finds the passage that contains it verbatim,
        // although its vector is far from the query's.
        let hits = index.search("__init__", &axis(3), 10, 0.65);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].passage.chunk_id, 1);
        assert!(hits[0].relevance >= RELEVANT);
    }
}
