//! The JSON files of a sentence-transformers model directory that set the
//! encoder's shape, the token window and the pooling.

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The fields of a Hugging Face BERT `config.json` that the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    pub hidden_act: String,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn absolute() -> String {
    "absolute".to_owned()
}

impl BertConfig {
    pub fn read(path: &Path) -> anyhow::Result<BertConfig> {
        let config: BertConfig = read_json(path)?;
        config.check().with_context(|| format!("unsupported model configuration in {}", path.display()))?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        // Transformers' "gelu" is the exact GELU with erf. The tanh
        // approximation is named "gelu_new" or "gelu_pytorch_tanh".
        if self.hidden_act != "gelu" {
            bail!("hidden_act is {:?}, expected \"gelu\"", self.hidden_act);
        }
        if self.position_embedding_type != "absolute" {
            bail!("position_embedding_type is {:?}, expected \"absolute\"", self.position_embedding_type);
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.hidden_size == 0 || self.intermediate_size == 0 || self.vocab_size == 0 || self.type_vocab_size == 0 {
            bail!("hidden_size, intermediate_size, vocab_size and type_vocab_size must be positive");
        }
        Ok(())
    }
}

/// `sentence_bert_config.json`: the token window of the sentence-transformers
/// model, which may be shorter than the encoder's position table.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SentenceConfig {
    pub max_seq_length: usize,
    /// Whether sentence-transformers lowercases the text before
    /// tokenization.
    #[serde(default)]
    pub do_lower_case: bool,
}

impl SentenceConfig {
    pub fn read(path: &Path, bert: &BertConfig) -> anyhow::Result<SentenceConfig> {
        let config: SentenceConfig = read_json(path)?;
        if config.max_seq_length < 2 || config.max_seq_length > bert.max_position_embeddings {
            bail!(
                "max_seq_length {} in {} is outside 2..={}, the range that [CLS], [SEP] and the position table allow",
                config.max_seq_length,
                path.display(),
                bert.max_position_embeddings
            );
        }
        Ok(config)
    }
}

/// `1_Pooling/config.json` of sentence-transformers' `Pooling` module.
#[derive(Debug, Clone, Deserialize)]
struct PoolingConfig {
    word_embedding_dimension: usize,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

/// Checks that the pooling module averages the token vectors and nothing
/// else, since mean pooling is the only one implemented.
pub(crate) fn check_pooling(path: &Path, bert: &BertConfig) -> anyhow::Result<()> {
    let pooling: PoolingConfig = read_json(path)?;
    let other_modes = pooling.pooling_mode_cls_token
        || pooling.pooling_mode_max_tokens
        || pooling.pooling_mode_mean_sqrt_len_tokens
        || pooling.pooling_mode_weightedmean_tokens
        || pooling.pooling_mode_lasttoken;
    if !pooling.pooling_mode_mean_tokens || other_modes {
        bail!("{} asks for a pooling other than mean pooling alone, which is not supported", path.display());
    }
    if pooling.word_embedding_dimension != bert.hidden_size {
        bail!(
            "word_embedding_dimension {} in {} differs from hidden_size {} in config.json",
            pooling.word_embedding_dimension,
            path.display(),
            bert.hidden_size
        );
    }
    Ok(())
}

fn read_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid JSON or missing field in {}", path.display()))
}
