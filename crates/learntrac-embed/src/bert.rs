//! The BERT encoder's forward pass for one sequence, followed by mean
//! pooling and L2 normalisation.
//!
//! A single sequence needs no padding, so the attention mask is all ones
//! and is left out. Every matrix product goes through ndarray's
//! `general_mat_mul`, which calls matrixmultiply's sgemm for f32.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayRef2, ArrayView1, ArrayViewMut1, Axis, Slice, Zip};

use crate::math;
use crate::weights::{BertWeights, LayerNorm, Linear};

/// The shape of the encoder, from `config.json`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub layer_norm_eps: f32,
}

/// Buffers for the activations of a forward pass, kept between passes so
/// that a thread embedding many texts allocates them once. Each matrix
/// has a row per token of the longest sequence so far, and a pass uses
/// the first rows.
pub(crate) struct Workspace {
    /// `[tokens, hidden]`: the residual stream.
    hidden: Array2<f32>,
    /// `[tokens, 3·hidden]`: queries, keys and values side by side.
    qkv: Array2<f32>,
    /// `[tokens, hidden]`: the attention heads' outputs side by side.
    context: Array2<f32>,
    /// `[tokens, intermediate]`.
    intermediate: Array2<f32>,
    /// `[tokens, tokens]`: one head's attention weights before
    /// normalisation.
    scores: Array2<f32>,
    /// `[tokens]`: the softmax denominators of the rows of `scores`.
    denominators: Vec<f32>,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            hidden: Array2::zeros((0, 0)),
            qkv: Array2::zeros((0, 0)),
            context: Array2::zeros((0, 0)),
            intermediate: Array2::zeros((0, 0)),
            scores: Array2::zeros((0, 0)),
            denominators: Vec::new(),
        }
    }

    /// Grows the buffers to `tokens` rows if they have fewer.
    fn reserve(&mut self, tokens: usize, shape: Shape) {
        if self.hidden.nrows() >= tokens && self.hidden.ncols() == shape.hidden {
            return;
        }
        *self = Workspace {
            hidden: Array2::zeros((tokens, shape.hidden)),
            qkv: Array2::zeros((tokens, 3 * shape.hidden)),
            context: Array2::zeros((tokens, shape.hidden)),
            intermediate: Array2::zeros((tokens, shape.intermediate)),
            scores: Array2::zeros((tokens, tokens)),
            denominators: vec![0.0; tokens],
        };
    }
}

/// Computes the sentence embedding of `ids`, which start with `[CLS]` and
/// end with `[SEP]`: the mean of the last layer's token vectors, scaled to
/// unit length. Each id must be below the vocabulary size and `ids` no
/// longer than the position table, which the loader checks.
pub(crate) fn embed(weights: &BertWeights, shape: Shape, ids: &[u32], workspace: &mut Workspace) -> Vec<f32> {
    let tokens = ids.len();
    workspace.reserve(tokens, shape);
    let rows = || Slice::from(..tokens);
    let mut hidden = workspace.hidden.slice_axis_mut(Axis(0), rows());
    let mut qkv = workspace.qkv.slice_axis_mut(Axis(0), rows());
    let mut context = workspace.context.slice_axis_mut(Axis(0), rows());
    let mut intermediate = workspace.intermediate.slice_axis_mut(Axis(0), rows());
    let mut scores = workspace.scores.slice_each_axis_mut(|_| rows());
    let denominators = &mut workspace.denominators[..tokens];

    embed_tokens(weights, shape, ids, &mut hidden);
    for layer in &weights.layers {
        linear(&hidden, &layer.qkv, &mut qkv);
        attention(&qkv, shape, &mut scores, denominators, &mut context);
        project_and_normalize(&context, &layer.attention_output, &layer.attention_norm, shape, &mut hidden);

        general_mat_mul(1.0, &hidden, &layer.intermediate.weight, 0.0, &mut intermediate);
        for row in intermediate.rows_mut() {
            with_slice(row, |values| math::add_and_gelu(values, &layer.intermediate.bias));
        }
        project_and_normalize(&intermediate, &layer.output, &layer.output_norm, shape, &mut hidden);
    }

    mean_pool_and_normalize(&hidden)
}

/// Word, position and token type 0 embeddings, summed and normalised.
fn embed_tokens(weights: &BertWeights, shape: Shape, ids: &[u32], hidden: &mut ArrayRef2<f32>) {
    let token_type = ndarray::aview1(&weights.token_type_embedding);
    for (position, (&id, mut row)) in ids.iter().zip(hidden.rows_mut()).enumerate() {
        Zip::from(&mut row)
            .and(weights.word_embeddings.row(id as usize))
            .and(weights.position_embeddings.row(position))
            .and(token_type)
            .for_each(|value, &word, &position, &token_type| *value = word + position + token_type);
        with_slice(row, |values| {
            let norm = &weights.embedding_norm;
            math::layer_norm(values, &norm.weight, &norm.bias, shape.layer_norm_eps);
        });
    }
}

/// `output = input·W + b`.
fn linear(input: &ArrayRef2<f32>, layer: &Linear, output: &mut ArrayRef2<f32>) {
    general_mat_mul(1.0, input, &layer.weight, 0.0, output);
    for row in output.rows_mut() {
        with_slice(row, |values| math::add(values, &layer.bias));
    }
}

/// Calls `f` with the elements of `row` as a slice, or with a copy of them
/// when the row is not contiguous in memory. The rows of the workspace
/// matrices always are.
fn with_slice<R>(mut row: ArrayViewMut1<f32>, f: impl FnOnce(&mut [f32]) -> R) -> R {
    if let Some(values) = row.as_slice_mut() {
        return f(values);
    }
    let mut values = row.to_vec();
    let result = f(&mut values);
    row.assign(&ArrayView1::from(&values));
    result
}

/// Computes multi-head self-attention from the queries, keys and values
/// in `qkv` into `context`: for each head, softmax(Q·Kᵀ/√d)·V on that
/// head's columns. The softmax denominators divide the head's
/// `[tokens, d]` output instead of the `[tokens, tokens]` weights, which
/// is less work.
fn attention(
    qkv: &ArrayRef2<f32>,
    shape: Shape,
    scores: &mut ArrayRef2<f32>,
    denominators: &mut [f32],
    context: &mut ArrayRef2<f32>,
) {
    let head_size = shape.hidden / shape.heads;
    let scale = 1.0 / (head_size as f32).sqrt();
    for head in 0..shape.heads {
        let columns = |offset: usize| {
            let start = offset + head * head_size;
            Slice::from(start..start + head_size)
        };
        let query = qkv.slice_axis(Axis(1), columns(0));
        let key = qkv.slice_axis(Axis(1), columns(shape.hidden));
        let value = qkv.slice_axis(Axis(1), columns(2 * shape.hidden));

        general_mat_mul(scale, &query, &key.t(), 0.0, scores);
        for (row, denominator) in scores.rows_mut().into_iter().zip(denominators.iter_mut()) {
            *denominator = with_slice(row, math::softmax_numerators);
        }

        let mut head_context = context.slice_axis_mut(Axis(1), columns(0));
        general_mat_mul(1.0, scores, &value, 0.0, &mut head_context);
        for (mut row, &denominator) in head_context.rows_mut().into_iter().zip(denominators.iter()) {
            row /= denominator;
        }
    }
}

/// `hidden = LayerNorm(hidden + input·W + b)`: a block's output projection,
/// residual connection and normalisation.
fn project_and_normalize(
    input: &ArrayRef2<f32>,
    layer: &Linear,
    norm: &LayerNorm,
    shape: Shape,
    hidden: &mut ArrayRef2<f32>,
) {
    general_mat_mul(1.0, input, &layer.weight, 1.0, hidden);
    for row in hidden.rows_mut() {
        with_slice(row, |values| {
            math::add(values, &layer.bias);
            math::layer_norm(values, &norm.weight, &norm.bias, shape.layer_norm_eps);
        });
    }
}

/// Averages the token vectors and scales the mean to unit length, as
/// sentence-transformers' `Pooling` and `Normalize` modules do.
fn mean_pool_and_normalize(hidden: &ArrayRef2<f32>) -> Vec<f32> {
    let Some(mean) = hidden.mean_axis(Axis(0)) else {
        return vec![0.0; hidden.ncols()];
    };
    let norm = mean.dot(&mean).sqrt();
    // PyTorch's `normalize` divides by max(norm, 1e-12).
    let divisor = norm.max(1e-12);
    mean.iter().map(|value| value / divisor).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::tiny::{self, Tensor};

    /// Computes the embedding with plain loops in f64, reading the weights
    /// in PyTorch's layout.
    fn reference_embedding(tensors: &[Tensor], shape: Shape, layers: usize, ids: &[u32]) -> Vec<f64> {
        let get = |name: &str| -> Vec<f64> {
            let tensor = tensors.iter().find(|tensor| tensor.name == name).unwrap();
            tensor.values.iter().map(|&value| f64::from(value)).collect()
        };
        let hidden = shape.hidden;
        let eps = f64::from(shape.layer_norm_eps);
        let layer_norm = |x: &mut [f64], prefix: &str| {
            let (weight, bias) = (get(&format!("{prefix}.weight")), get(&format!("{prefix}.bias")));
            let mean = x.iter().sum::<f64>() / x.len() as f64;
            let variance = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / x.len() as f64;
            for (i, v) in x.iter_mut().enumerate() {
                *v = (*v - mean) / (variance + eps).sqrt() * weight[i] + bias[i];
            }
        };
        // y[t][o] = Σ_i x[t][i]·W[o][i] + b[o]
        let linear = |x: &[Vec<f64>], prefix: &str| -> Vec<Vec<f64>> {
            let (weight, bias) = (get(&format!("{prefix}.weight")), get(&format!("{prefix}.bias")));
            let inputs = x[0].len();
            x.iter()
                .map(|row| {
                    (0..bias.len())
                        .map(|o| bias[o] + (0..inputs).map(|i| row[i] * weight[o * inputs + i]).sum::<f64>())
                        .collect()
                })
                .collect()
        };

        let (words, positions, types) = (
            get("embeddings.word_embeddings.weight"),
            get("embeddings.position_embeddings.weight"),
            get("embeddings.token_type_embeddings.weight"),
        );
        let mut x: Vec<Vec<f64>> = ids
            .iter()
            .enumerate()
            .map(|(t, &id)| {
                let mut row: Vec<f64> = (0..hidden)
                    .map(|j| words[id as usize * hidden + j] + positions[t * hidden + j] + types[j])
                    .collect();
                layer_norm(&mut row, "embeddings.LayerNorm");
                row
            })
            .collect();

        let head_size = hidden / shape.heads;
        for layer in 0..layers {
            let prefix = format!("encoder.layer.{layer}");
            let q = linear(&x, &format!("{prefix}.attention.self.query"));
            let k = linear(&x, &format!("{prefix}.attention.self.key"));
            let v = linear(&x, &format!("{prefix}.attention.self.value"));
            let mut context = vec![vec![0.0; hidden]; ids.len()];
            for h in 0..shape.heads {
                let columns = h * head_size..(h + 1) * head_size;
                for t in 0..ids.len() {
                    let scores: Vec<f64> = (0..ids.len())
                        .map(|u| columns.clone().map(|c| q[t][c] * k[u][c]).sum::<f64>() / (head_size as f64).sqrt())
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = exps.iter().sum();
                    for c in columns.clone() {
                        context[t][c] = (0..ids.len()).map(|u| exps[u] / sum * v[u][c]).sum();
                    }
                }
            }
            let attention = linear(&context, &format!("{prefix}.attention.output.dense"));
            for (row, projected) in x.iter_mut().zip(&attention) {
                row.iter_mut().zip(projected).for_each(|(a, b)| *a += b);
                layer_norm(row, &format!("{prefix}.attention.output.LayerNorm"));
            }
            let mut intermediate = linear(&x, &format!("{prefix}.intermediate.dense"));
            for value in intermediate.iter_mut().flatten() {
                *value = 0.5 * *value * (1.0 + erf_series(*value / std::f64::consts::SQRT_2));
            }
            let output = linear(&intermediate, &format!("{prefix}.output.dense"));
            for (row, projected) in x.iter_mut().zip(&output) {
                row.iter_mut().zip(projected).for_each(|(a, b)| *a += b);
                layer_norm(row, &format!("{prefix}.output.LayerNorm"));
            }
        }

        let mean: Vec<f64> = (0..hidden).map(|j| x.iter().map(|row| row[j]).sum::<f64>() / ids.len() as f64).collect();
        let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        mean.iter().map(|v| v / norm).collect()
    }

    /// Computes erf in f64: by its Maclaurin series below 3, where the
    /// cancellation between terms costs about 1e-13, and by the first four
    /// terms of the asymptotic series of erfc from 3 on, which are within
    /// 1e-7 there.
    fn erf_series(x: f64) -> f64 {
        let z = x.abs();
        if z >= 3.0 {
            let inverse = 1.0 / (2.0 * z * z);
            let series = 1.0 - inverse + 3.0 * inverse.powi(2) - 15.0 * inverse.powi(3);
            let erfc = (-z * z).exp() / (z * std::f64::consts::PI.sqrt()) * series;
            return (1.0 - erfc).copysign(x);
        }
        let mut term = x;
        let mut sum = x;
        for n in 1..100 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_series_matches_reference_values() {
        // Python's math.erf.
        for (x, expected) in
            [(0.5, 0.520_499_877_813_046_5), (2.0, 0.995_322_265_018_952_7), (-3.5, -0.999_999_256_901_627_6)]
        {
            assert!((erf_series(x) - expected).abs() < 1e-7, "erf({x}) = {}", erf_series(x));
        }
    }

    #[test]
    fn forward_pass_matches_reference() {
        let config = tiny::config();
        let tensors = tiny::tensors(&config);
        let weights = BertWeights::from_safetensors(&tiny::serialize(&tensors), &config).unwrap();
        let shape = Shape { hidden: 8, heads: 2, intermediate: 16, layer_norm_eps: 1e-12 };

        // Longer, shorter and longer again, so that the workspace is both
        // grown and reused.
        let mut workspace = Workspace::new();
        for ids in [&[2, 5, 7, 3][..], &[2, 3], &[2, 11, 0, 4, 4, 9, 1, 6, 8, 3], &[2, 9, 9, 3]] {
            let embedding = embed(&weights, shape, ids, &mut workspace);
            let expected = reference_embedding(&tensors, shape, config.num_hidden_layers, ids);
            for (actual, expected) in embedding.iter().zip(&expected) {
                assert!((f64::from(*actual) - expected).abs() < 1e-5, "{ids:?}: {embedding:?} vs {expected:?}");
            }
        }
    }

    #[test]
    fn with_slice_handles_strided_rows() {
        let mut matrix = ndarray::arr2(&[[1.0_f32, 2.0], [3.0, 4.0]]);
        with_slice(matrix.column_mut(1), |values| {
            assert_eq!(values, [2.0, 4.0]);
            values[1] = 5.0;
        });
        assert_eq!(matrix, ndarray::arr2(&[[1.0, 2.0], [3.0, 5.0]]));
    }
}
