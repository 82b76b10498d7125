//! The element-wise and row-wise arithmetic of the encoder, written so
//! that loops over a row compile to SIMD instructions.
//!
//! `exp` and the exact GELU are branch-free f32 code, because the standard
//! library's `f32::exp` is a call per element and it has no `erf`. The
//! reductions keep eight partial results, because a single running sum or
//! maximum is a chain of dependent instructions that the compiler may not
//! reorder.

use std::f32::consts::{FRAC_1_SQRT_2, LOG2_E};

/// 1.5·2²³: adding and subtracting it rounds an f32 below 2²² in
/// magnitude to the nearest integer, and leaves that integer in the low
/// mantissa bits of the sum.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// ln 2 split in two, so that `n·LN2_HIGH` is exact for the `n` used here.
const LN2_HIGH: f32 = 355.0 / 512.0;
const LN2_LOW: f32 = -2.121_944_4e-4;

/// e^x, with a relative error below 3e-7 where the result is a normal
/// f32. Inputs are clamped to [-87, 88], so results below e^-87 ≈ 1.6e-38
/// come out as e^-87 and results above e^88 as e^88.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);

    // x = n·ln 2 + r with n an integer and |r| ≤ ln 2 / 2.
    let shifted = x * LOG2_E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    let r = x - n * LN2_HIGH - n * LN2_LOW;

    // e^r by its Taylor series to degree 7, whose truncation error is
    // below 1e-8 for |r| ≤ ln 2 / 2.
    let polynomial = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));

    // 2^n from its exponent bits. n is in -126..=127, so 2^n is a normal
    // f32. The low bits of `shifted` contain n in two's complement.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    polynomial * scale
}

/// The error function by Abramowitz and Stegun's formula 7.1.26, whose
/// absolute error is below 1.5e-7 before f32 rounding.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let polynomial = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let magnitude = 1.0 - polynomial * exp(-z * z);
    magnitude.copysign(x)
}

/// GELU as BERT defines it, x·Φ(x) = x/2·(1 + erf(x/√2)), not the tanh
/// approximation.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// Partial results kept by the reductions.
const LANES: usize = 8;

/// Folds `values` into `LANES` partial results with `step`, then merges
/// the partial results with `merge`.
#[inline(always)]
fn reduce(values: &[f32], initial: f32, step: impl Fn(f32, f32) -> f32, merge: impl Fn(f32, f32) -> f32) -> f32 {
    let (chunks, rest) = values.as_chunks::<LANES>();
    let mut lanes = [initial; LANES];
    for chunk in chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            *lane = step(*lane, value);
        }
    }
    let rest = rest.iter().fold(initial, |partial, &value| step(partial, value));
    lanes.into_iter().fold(rest, merge)
}

fn sum(values: &[f32]) -> f32 {
    reduce(values, 0.0, |sum, value| sum + value, |a, b| a + b)
}

fn max(values: &[f32]) -> f32 {
    reduce(values, f32::NEG_INFINITY, f32::max, f32::max)
}

/// Replaces `values` with exp(x - max), the numerators of their softmax,
/// and returns the sum of the new values, its denominator.
pub(crate) fn softmax_numerators(values: &mut [f32]) -> f32 {
    let max = max(values);
    let (chunks, rest) = values.as_chunks_mut::<LANES>();
    let mut lanes = [0.0; LANES];
    for chunk in chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            *value = exp(*value - max);
            *lane += *value;
        }
    }
    let mut rest_sum = 0.0;
    for value in rest {
        *value = exp(*value - max);
        rest_sum += *value;
    }
    lanes.into_iter().fold(rest_sum, |a, b| a + b)
}

/// Normalises `values` to zero mean and unit variance (the biased
/// variance, as PyTorch's `LayerNorm`), then scales by `weight` and shifts
/// by `bias`.
pub(crate) fn layer_norm(values: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let count = values.len() as f32;
    let mean = sum(values) / count;
    let variance = reduce(values, 0.0, |sum, value| sum + (value - mean) * (value - mean), |a, b| a + b) / count;
    let inverse_deviation = 1.0 / (variance + eps).sqrt();
    for ((value, &weight), &bias) in values.iter_mut().zip(weight).zip(bias) {
        *value = (*value - mean) * inverse_deviation * weight + bias;
    }
}

pub(crate) fn add(values: &mut [f32], bias: &[f32]) {
    for (value, &bias) in values.iter_mut().zip(bias) {
        *value += bias;
    }
}

pub(crate) fn add_and_gelu(values: &mut [f32], bias: &[f32]) {
    for (value, &bias) in values.iter_mut().zip(bias) {
        *value = gelu(*value + bias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_cover_remainder() {
        let values: Vec<f32> = (1..=19).map(|value| value as f32).collect();
        assert_eq!(sum(&values), 190.0);
        assert_eq!(max(&values), 19.0);
        assert_eq!(sum(&[]), 0.0);
    }

    #[test]
    fn softmax_numerators_shift_by_max() {
        let mut values = [1.0_f32, 2.0, 3.0, -50.0, 1000.0, 0.0, 1.0, 2.0, 999.0, 5.0];
        let sum = softmax_numerators(&mut values);
        assert_eq!(values[4], 1.0);
        assert!((values[8] - (-1.0_f32).exp()).abs() < 1e-7, "{values:?}");
        assert!(values[0] < 2e-38, "{values:?}");
        assert!((sum - (1.0 + (-1.0_f32).exp())).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn layer_norm_standardises() {
        let mut values = [1.0_f32, 2.0, 3.0, 4.0];
        layer_norm(&mut values, &[1.0, 1.0, 2.0, 1.0], &[0.0, 0.0, 0.0, 10.0], 0.0);
        // Mean 2.5, biased variance 1.25.
        let deviation = 1.25_f32.sqrt();
        let expected = [-1.5 / deviation, -0.5 / deviation, 2.0 * 0.5 / deviation, 10.0 + 1.5 / deviation];
        for (value, expected) in values.iter().zip(expected) {
            assert!((value - expected).abs() < 1e-6, "{values:?}");
        }
    }

    #[test]
    fn exp_matches_std() {
        let mut x = -87.0_f32;
        while x <= 88.0 {
            let expected = f64::from(x).exp();
            let relative = ((f64::from(exp(x)) - expected) / expected).abs();
            assert!(relative < 3e-7, "exp({x}) = {}, expected {expected}, relative error {relative}", exp(x));
            x += 0.01;
        }
    }

    #[test]
    fn exp_clamps_out_of_range() {
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) > 0.0);
        assert!(exp(-1000.0) < 2e-38);
        assert!(exp(f32::NEG_INFINITY) < 2e-38);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn erf_matches_reference_values() {
        // Python's math.erf.
        let cases = [
            (-3.0, -0.999_977_909_503_001_4),
            (-1.5, -0.966_105_146_475_310_8),
            (-0.5, -0.520_499_877_813_046_5),
            (-0.1, -0.112_462_916_018_284_9),
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.5, 0.999_999_256_901_627_6),
        ];
        for (x, expected) in cases {
            let error = (f64::from(erf(x)) - expected).abs();
            assert!(error < 3e-7, "erf({x}) = {}, expected {expected}", erf(x));
        }
    }

    #[test]
    fn gelu_matches_reference_values() {
        // x/2·(1 + math.erf(x/√2)) in Python.
        let cases = [
            (-3.0, -0.004_049_694_094_890_31),
            (-1.5, -0.100_210_801_903_287_13),
            (-0.5, -0.154_268_769_362_993_44),
            (0.1, 0.053_982_783_727_702_904),
            (1.0, 0.841_344_746_068_542_9),
            (2.0, 1.954_499_736_103_641_6),
            (3.5, 3.499_185_798_223_375_6),
        ];
        for (x, expected) in cases {
            let error = (f64::from(gelu(x)) - expected).abs();
            assert!(error < 1e-6, "gelu({x}) = {}, expected {expected}", gelu(x));
        }
        assert_eq!(gelu(-20.0), 0.0);
    }
}
