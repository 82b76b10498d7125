//! The encoder's weights from a `model.safetensors` in the layout of
//! Transformers' `BertModel`, checked against `config.json` and rearranged
//! for row-major matrix products.

use std::collections::HashSet;

use anyhow::{Context, bail};
use ndarray::{Array2, Axis, Slice};
use safetensors::{Dtype, SafeTensors};

use crate::config::BertConfig;

/// A dense layer `y = x·W + b`, with `W` stored as `[in, out]`, the
/// transpose of PyTorch's `[out, in]`, so that both operands of the
/// matrix product are row-major.
#[derive(Debug)]
pub(crate) struct Linear {
    pub weight: Array2<f32>,
    pub bias: Vec<f32>,
}

#[derive(Debug)]
pub(crate) struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// One transformer block.
#[derive(Debug)]
pub(crate) struct EncoderLayer {
    /// The query, key and value projections side by side: `[hidden, 3·hidden]`.
    pub qkv: Linear,
    pub attention_output: Linear,
    pub attention_norm: LayerNorm,
    pub intermediate: Linear,
    pub output: Linear,
    pub output_norm: LayerNorm,
}

#[derive(Debug)]
pub(crate) struct BertWeights {
    /// `[vocab_size, hidden]`.
    pub word_embeddings: Array2<f32>,
    /// `[max_position_embeddings, hidden]`.
    pub position_embeddings: Array2<f32>,
    /// The row of token type 0, the only type of a single sentence.
    pub token_type_embedding: Vec<f32>,
    pub embedding_norm: LayerNorm,
    pub layers: Vec<EncoderLayer>,
}

/// Tensors that a `BertModel` checkpoint may hold but that sentence
/// embeddings do not use: the constant position ids and the pooler, which
/// only feeds BERT's next-sentence head.
fn is_unused(name: &str) -> bool {
    matches!(name, "embeddings.position_ids" | "pooler.dense.weight" | "pooler.dense.bias")
}

impl BertWeights {
    /// Parses the contents of a safetensors file. Every tensor must have
    /// the shape that `config` implies and the F32 type, and every tensor
    /// in the file must be one the encoder uses or one of the known unused
    /// ones.
    pub fn from_safetensors(bytes: &[u8], config: &BertConfig) -> anyhow::Result<BertWeights> {
        let tensors = SafeTensors::deserialize(bytes).context("invalid safetensors file")?;
        let mut reader = TensorReader { tensors: &tensors, read_names: HashSet::new() };

        let hidden = config.hidden_size;
        let word_embeddings = reader.matrix("embeddings.word_embeddings.weight", config.vocab_size, hidden)?;
        let position_embeddings =
            reader.matrix("embeddings.position_embeddings.weight", config.max_position_embeddings, hidden)?;
        let token_types = reader.matrix("embeddings.token_type_embeddings.weight", config.type_vocab_size, hidden)?;
        let token_type_embedding = token_types.row(0).to_vec();
        let embedding_norm = reader.layer_norm("embeddings.LayerNorm", hidden)?;

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for index in 0..config.num_hidden_layers {
            let prefix = format!("encoder.layer.{index}");
            let query = reader.linear(&format!("{prefix}.attention.self.query"), hidden, hidden)?;
            let key = reader.linear(&format!("{prefix}.attention.self.key"), hidden, hidden)?;
            let value = reader.linear(&format!("{prefix}.attention.self.value"), hidden, hidden)?;
            layers.push(EncoderLayer {
                qkv: concatenate_outputs(&[query, key, value]),
                attention_output: reader.linear(&format!("{prefix}.attention.output.dense"), hidden, hidden)?,
                attention_norm: reader.layer_norm(&format!("{prefix}.attention.output.LayerNorm"), hidden)?,
                intermediate: reader.linear(
                    &format!("{prefix}.intermediate.dense"),
                    hidden,
                    config.intermediate_size,
                )?,
                output: reader.linear(&format!("{prefix}.output.dense"), config.intermediate_size, hidden)?,
                output_norm: reader.layer_norm(&format!("{prefix}.output.LayerNorm"), hidden)?,
            });
        }

        let mut unknown: Vec<&str> =
            tensors.names().into_iter().filter(|name| !reader.read_names.contains(*name) && !is_unused(name)).collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            bail!(
                "unknown tensor {} for a BERT encoder with {} layers (check num_hidden_layers in config.json)",
                unknown.join(", "),
                config.num_hidden_layers
            );
        }

        Ok(BertWeights { word_embeddings, position_embeddings, token_type_embedding, embedding_norm, layers })
    }
}

/// Reads tensors by name and records which ones were read.
struct TensorReader<'a> {
    tensors: &'a SafeTensors<'a>,
    read_names: HashSet<String>,
}

impl TensorReader<'_> {
    fn tensor(&mut self, name: &str, shape: &[usize]) -> anyhow::Result<Vec<f32>> {
        let tensor = self.tensors.tensor(name).with_context(|| format!("missing tensor {name}"))?;
        if tensor.dtype() != Dtype::F32 {
            bail!("tensor {name} has type {}, expected F32", tensor.dtype());
        }
        if tensor.shape() != shape {
            bail!("tensor {name} has shape {:?}, expected {shape:?}", tensor.shape());
        }
        self.read_names.insert(name.to_owned());
        // safetensors stores little-endian values at arbitrary alignment.
        Ok(tensor
            .data()
            .chunks_exact(4)
            .map(|bytes| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            .collect())
    }

    fn matrix(&mut self, name: &str, rows: usize, columns: usize) -> anyhow::Result<Array2<f32>> {
        let values = self.tensor(name, &[rows, columns])?;
        Array2::from_shape_vec((rows, columns), values).with_context(|| format!("tensor {name} has the wrong size"))
    }

    /// Reads `NAME.weight` as `[out, in]` and `NAME.bias` as `[out]`.
    fn linear(&mut self, name: &str, inputs: usize, outputs: usize) -> anyhow::Result<Linear> {
        let weight = self.matrix(&format!("{name}.weight"), outputs, inputs)?;
        let bias = self.tensor(&format!("{name}.bias"), &[outputs])?;
        Ok(Linear { weight: weight.t().as_standard_layout().into_owned(), bias })
    }

    fn layer_norm(&mut self, name: &str, size: usize) -> anyhow::Result<LayerNorm> {
        let weight = self.tensor(&format!("{name}.weight"), &[size])?;
        let bias = self.tensor(&format!("{name}.bias"), &[size])?;
        Ok(LayerNorm { weight, bias })
    }
}

/// Puts layers with the same input side by side, so that one matrix
/// product computes all their outputs.
fn concatenate_outputs(parts: &[Linear]) -> Linear {
    let inputs = parts.first().map_or(0, |part| part.weight.nrows());
    let outputs: usize = parts.iter().map(|part| part.weight.ncols()).sum();
    let mut weight = Array2::zeros((inputs, outputs));
    let mut bias = Vec::with_capacity(outputs);
    let mut start = 0;
    for part in parts {
        let end = start + part.weight.ncols();
        weight.slice_axis_mut(Axis(1), Slice::from(start..end)).assign(&part.weight);
        bias.extend_from_slice(&part.bias);
        start = end;
    }
    Linear { weight, bias }
}

/// A small random BERT for tests that need no model files.
#[cfg(test)]
pub(crate) mod tiny {
    use safetensors::tensor::TensorView;

    use super::*;

    pub fn config() -> BertConfig {
        BertConfig {
            vocab_size: 12,
            hidden_size: 8,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 16,
            max_position_embeddings: 10,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".to_owned(),
            position_embedding_type: "absolute".to_owned(),
        }
    }

    /// A tensor in PyTorch's layout: name, shape and row-major values.
    pub struct Tensor {
        pub name: String,
        pub shape: Vec<usize>,
        pub values: Vec<f32>,
    }

    /// Returns every tensor of a `BertModel` checkpoint for `config`,
    /// filled with values from a fixed pseudo-random sequence.
    pub fn tensors(config: &BertConfig) -> Vec<Tensor> {
        let hidden = config.hidden_size;
        let intermediate = config.intermediate_size;
        let mut shapes = vec![
            ("embeddings.word_embeddings.weight".to_owned(), vec![config.vocab_size, hidden]),
            ("embeddings.position_embeddings.weight".to_owned(), vec![config.max_position_embeddings, hidden]),
            ("embeddings.token_type_embeddings.weight".to_owned(), vec![config.type_vocab_size, hidden]),
            ("embeddings.LayerNorm.weight".to_owned(), vec![hidden]),
            ("embeddings.LayerNorm.bias".to_owned(), vec![hidden]),
            ("pooler.dense.weight".to_owned(), vec![hidden, hidden]),
            ("pooler.dense.bias".to_owned(), vec![hidden]),
        ];
        for layer in 0..config.num_hidden_layers {
            let prefix = format!("encoder.layer.{layer}");
            for (name, outputs, inputs) in [
                ("attention.self.query", hidden, hidden),
                ("attention.self.key", hidden, hidden),
                ("attention.self.value", hidden, hidden),
                ("attention.output.dense", hidden, hidden),
                ("intermediate.dense", intermediate, hidden),
                ("output.dense", hidden, intermediate),
            ] {
                shapes.push((format!("{prefix}.{name}.weight"), vec![outputs, inputs]));
                shapes.push((format!("{prefix}.{name}.bias"), vec![outputs]));
            }
            for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                shapes.push((format!("{prefix}.{name}.weight"), vec![hidden]));
                shapes.push((format!("{prefix}.{name}.bias"), vec![hidden]));
            }
        }

        let mut state: u32 = 12345;
        shapes
            .into_iter()
            .map(|(name, shape)| {
                let offset = if name.ends_with("LayerNorm.weight") { 1.0 } else { 0.0 };
                let values = (0..shape.iter().product())
                    .map(|_| {
                        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        offset + (state >> 8) as f32 / (1 << 24) as f32 - 0.5
                    })
                    .collect();
                Tensor { name, shape, values }
            })
            .collect()
    }

    pub fn serialize(tensors: &[Tensor]) -> Vec<u8> {
        let bytes: Vec<Vec<u8>> =
            tensors.iter().map(|tensor| tensor.values.iter().flat_map(|value| value.to_le_bytes()).collect()).collect();
        let views = tensors.iter().zip(&bytes).map(|(tensor, bytes)| {
            (tensor.name.clone(), TensorView::new(Dtype::F32, tensor.shape.clone(), bytes).unwrap())
        });
        safetensors::serialize(views, None).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use safetensors::tensor::TensorView;

    use super::tiny::{Tensor, config, serialize, tensors};
    use super::*;

    fn load_error(tensors: &[Tensor]) -> String {
        format!("{:#}", BertWeights::from_safetensors(&serialize(tensors), &config()).unwrap_err())
    }

    #[test]
    fn tiny_model_loads() {
        let weights = BertWeights::from_safetensors(&serialize(&tensors(&config())), &config()).unwrap();
        assert_eq!(weights.layers.len(), 2);
        assert_eq!(weights.layers[0].qkv.weight.dim(), (8, 24));
        assert_eq!(weights.layers[0].intermediate.weight.dim(), (8, 16));
        assert_eq!(weights.layers[0].output.weight.dim(), (16, 8));
    }

    #[test]
    fn linear_weights_are_transposed() {
        let tensors = tensors(&config());
        let weights = BertWeights::from_safetensors(&serialize(&tensors), &config()).unwrap();
        let key = tensors.iter().find(|tensor| tensor.name == "encoder.layer.1.attention.self.key.weight").unwrap();
        // PyTorch's key weight is [out, in]. The fused matrix contains it
        // transposed, in columns 8..16.
        assert_eq!(weights.layers[1].qkv.weight[[3, 8 + 5]], key.values[5 * 8 + 3]);
    }

    #[test]
    fn wrong_shape_is_named() {
        let mut tensors = tensors(&config());
        let tensor =
            tensors.iter_mut().find(|tensor| tensor.name == "encoder.layer.0.intermediate.dense.weight").unwrap();
        tensor.shape = vec![8, 16];
        let error = load_error(&tensors);
        assert_eq!(error, "tensor encoder.layer.0.intermediate.dense.weight has shape [8, 16], expected [16, 8]");
    }

    #[test]
    fn unknown_tensor_is_named() {
        let mut tensors = tensors(&config());
        tensors.push(Tensor {
            name: "encoder.layer.2.output.dense.bias".to_owned(),
            shape: vec![8],
            values: vec![0.0; 8],
        });
        let error = load_error(&tensors);
        assert!(error.starts_with("unknown tensor encoder.layer.2.output.dense.bias"), "{error}");
    }

    #[test]
    fn missing_tensor_is_named() {
        let mut tensors = tensors(&config());
        tensors.retain(|tensor| tensor.name != "encoder.layer.1.output.LayerNorm.bias");
        let error = load_error(&tensors);
        assert!(error.starts_with("missing tensor encoder.layer.1.output.LayerNorm.bias"), "{error}");
    }

    #[test]
    fn other_type_is_rejected() {
        let tensors = tensors(&config());
        let bytes: Vec<Vec<u8>> =
            tensors.iter().map(|tensor| tensor.values.iter().flat_map(|value| value.to_le_bytes()).collect()).collect();
        let views = tensors.iter().zip(&bytes).map(|(tensor, bytes)| {
            if tensor.name == "embeddings.LayerNorm.bias" {
                (tensor.name.clone(), TensorView::new(Dtype::F16, vec![16], bytes).unwrap())
            } else {
                (tensor.name.clone(), TensorView::new(Dtype::F32, tensor.shape.clone(), bytes).unwrap())
            }
        });
        let file = safetensors::serialize(views, None).unwrap();
        let error = format!("{:#}", BertWeights::from_safetensors(&file, &config()).unwrap_err());
        assert_eq!(error, "tensor embeddings.LayerNorm.bias has type F16, expected F32");
    }

    #[test]
    fn truncated_file_is_rejected() {
        let file = serialize(&tensors(&config()));
        let error = format!("{:#}", BertWeights::from_safetensors(&file[..file.len() - 4], &config()).unwrap_err());
        assert!(error.starts_with("invalid safetensors file"), "{error}");
    }
}
