//! Sentence embeddings with all-MiniLM-L6-v2, computed in Rust from the
//! files of a sentence-transformers model directory, with nothing
//! downloaded at run time.
//!
//! The result matches sentence-transformers' `encode`: WordPiece tokens
//! between `[CLS]` and `[SEP]`, truncated to the model's window, a BERT
//! encoder in f32, the mean of the token vectors, scaled to unit length.
//! Any BERT encoder in the same layout loads. all-MiniLM-L6-v2 gives
//! 384-dimensional vectors from a window of 256 tokens.

// Tests report a failure by panicking.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod bert;
mod config;
mod math;
mod tokenizer;
mod weights;

use std::borrow::Cow;
use std::fmt;
use std::num::NonZero;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::bert::{Shape, Workspace};
use crate::config::{BertConfig, SentenceConfig};
use crate::tokenizer::Tokenizer;
use crate::weights::BertWeights;

/// The name in [`MiniLm::model_id`], before the hash of the weights.
const MODEL_NAME: &str = "all-MiniLM-L6-v2";
/// Hex digits of the weights' SHA-256 in [`MiniLm::model_id`].
const MODEL_HASH_DIGITS: usize = 12;

/// A loaded sentence embedding model. It is immutable, so one instance can
/// serve many threads.
pub struct MiniLm {
    tokenizer: Tokenizer,
    weights: BertWeights,
    shape: Shape,
    max_tokens: usize,
    lowercase_input: bool,
    model_id: String,
}

impl MiniLm {
    /// Loads a sentence-transformers model directory: `config.json`,
    /// `sentence_bert_config.json`, `tokenizer.json` (or `vocab.txt` when
    /// there is none), `model.safetensors` and, when present,
    /// `1_Pooling/config.json`, which must ask for mean pooling.
    ///
    /// Errors name the file and what is wrong with it: missing, invalid
    /// JSON, an unsupported setting, or a tensor that is missing, unknown,
    /// of another type or of the wrong shape.
    pub fn load(dir: &Path) -> anyhow::Result<MiniLm> {
        let config = BertConfig::read(&dir.join("config.json"))?;
        let sentence_config = SentenceConfig::read(&dir.join("sentence_bert_config.json"), &config)?;
        let pooling_path = dir.join("1_Pooling").join("config.json");
        if pooling_path.exists() {
            config::check_pooling(&pooling_path, &config)?;
        }

        let tokenizer_path = dir.join("tokenizer.json");
        let vocab_path = dir.join("vocab.txt");
        let tokenizer = if tokenizer_path.exists() {
            Tokenizer::from_tokenizer_json(&tokenizer_path)?
        } else if vocab_path.exists() {
            Tokenizer::from_vocab_txt(&vocab_path)?
        } else {
            bail!("missing tokenizer: neither tokenizer.json nor vocab.txt is in {}", dir.display());
        };
        if tokenizer.max_id() as usize >= config.vocab_size {
            bail!(
                "the tokenizer has token id {} but vocab_size in {} is {}",
                tokenizer.max_id(),
                dir.join("config.json").display(),
                config.vocab_size
            );
        }

        let weights_path = dir.join("model.safetensors");
        let bytes =
            std::fs::read(&weights_path).with_context(|| format!("failed to read {}", weights_path.display()))?;
        let weights = BertWeights::from_safetensors(&bytes, &config)
            .with_context(|| format!("failed to load the weights in {}", weights_path.display()))?;
        let model_id = model_id(&bytes);

        Ok(MiniLm {
            tokenizer,
            weights,
            shape: Shape {
                hidden: config.hidden_size,
                heads: config.num_attention_heads,
                intermediate: config.intermediate_size,
                layer_norm_eps: config.layer_norm_eps,
            },
            max_tokens: sentence_config.max_seq_length,
            lowercase_input: sentence_config.do_lower_case,
            model_id,
        })
    }

    /// Returns the length of the embedding vectors: 384 for all-MiniLM-L6-v2.
    pub fn dimensions(&self) -> usize {
        self.shape.hidden
    }

    /// Returns the window in tokens, `[CLS]` and `[SEP]` included, from
    /// `max_seq_length` in `sentence_bert_config.json`: 256 for
    /// all-MiniLM-L6-v2. [`MiniLm::embed`] ignores the tokens past it.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Returns the token ids of `text`, from `[CLS]` to `[SEP]`, without
    /// truncation.
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(&self.model_input(text))
    }

    /// Returns `text` as sentence-transformers passes it to the tokenizer.
    fn model_input<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.lowercase_input { Cow::Owned(text.to_lowercase()) } else { Cow::Borrowed(text) }
    }

    /// Counts the tokens of `text`, `[CLS]` and `[SEP]` included and
    /// without truncation, so that callers can split a passage until each
    /// part fits in [`MiniLm::max_tokens`].
    pub fn token_count(&self, text: &str) -> usize {
        self.token_ids(text).len()
    }

    /// Computes the unit-length embedding of `text`, truncated to
    /// [`MiniLm::max_tokens`] tokens. Runs on the calling thread.
    pub fn embed(&self, text: &str) -> Vec<f32> {
        self.embed_with(text, &mut Workspace::new())
    }

    fn embed_with(&self, text: &str, workspace: &mut Workspace) -> Vec<f32> {
        let ids = self.tokenizer.encode_truncated(&self.model_input(text), self.max_tokens);
        bert::embed(&self.weights, self.shape, &ids, workspace)
    }

    /// Computes the embeddings of `texts`, in order, on as many threads as
    /// `std::thread::available_parallelism` reports. Each thread takes the
    /// next text when it finishes one, so texts of different lengths need
    /// no padding.
    pub fn embed_batch(&self, texts: &[&str]) -> Vec<Vec<f32>> {
        let threads = std::thread::available_parallelism().map_or(1, NonZero::get).min(texts.len());
        if threads <= 1 {
            let mut workspace = Workspace::new();
            return texts.iter().map(|text| self.embed_with(text, &mut workspace)).collect();
        }

        let next = AtomicUsize::new(0);
        let mut embeddings = vec![Vec::new(); texts.len()];
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut workspace = Workspace::new();
                        let mut done = Vec::new();
                        loop {
                            let index = next.fetch_add(1, Ordering::Relaxed);
                            let Some(text) = texts.get(index) else { break };
                            done.push((index, self.embed_with(text, &mut workspace)));
                        }
                        done
                    })
                })
                .collect();
            for worker in workers {
                match worker.join() {
                    Ok(done) => {
                        for (index, embedding) in done {
                            embeddings[index] = embedding;
                        }
                    }
                    // A worker panics only on a bug, and the caller gets that panic.
                    Err(payload) => std::panic::resume_unwind(payload),
                }
            }
        });
        embeddings
    }

    /// Returns `all-MiniLM-L6-v2:` and the first 12 hex digits of the
    /// SHA-256 of `model.safetensors`, so that stored vectors can be matched
    /// to the weights that made them. The name part stays the same for
    /// other BERT models, whose hash differs.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }
}

impl fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MiniLm")
            .field("model_id", &self.model_id)
            .field("dimensions", &self.dimensions())
            .field("max_tokens", &self.max_tokens)
            .field("layers", &self.weights.layers.len())
            .finish_non_exhaustive()
    }
}

fn model_id(weights: &[u8]) -> String {
    let digest = Sha256::digest(weights);
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{MODEL_NAME}:{}", &hex[..MODEL_HASH_DIGITS])
}
