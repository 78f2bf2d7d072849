//! The CPU backend's fast paths for the shapes of decoding: a few rows through a weight matrix,
//! and single-query attention over the paged cache, read where it lies.
//!
//! burn's ndarray backend copies every slice it reads and packs both operands of every matrix
//! product. For one row through a weight matrix, the packing is a full copy of the matrix per
//! product; for a decode's attention, the gathered context is copied twice before a few
//! multiplications per element. These loops read each weight and each cached key and value
//! once. They are written against `pulp`'s vector types and dispatched at run time to the widest
//! vector unit the CPU has (AVX2 and FMA on x86-64), not the baseline the binary targets. Every
//! function returns `None` on any other backend, which then takes burn's path.

// burn 0.22 marks ndarray deprecated; it is the CPU backend this project runs (see `device`).
#![allow(deprecated)]

use std::ops::Range;

use burn::backend::{ndarray::NdArrayTensor, DispatchDevice, NdArray};
use burn::tensor::{Device, Tensor};
use ndarray::{ArcArray, ArrayViewD, IxDyn};

/// Rows up to which [`few_rows_product`] reads the weights itself; past this, burn's packed
/// product does more arithmetic per weight loaded than these loops.
const FEW_ROWS: usize = 4;

/// Partial sums of [`few_rows_product`] kept per pass over the weights: 256 KiB, which the L2
/// cache holds.
const TILE_FLOATS: usize = 64 * 1024;

/// Whether `device` is the one these loops run on.
pub(crate) fn runs_on(device: &Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::NdArray(_))
}

/// The backend's array under `tensor`; the device is checked first, so a GPU step does not
/// format a conversion error for every product.
fn on_cpu<const D: usize>(tensor: &Tensor<D>) -> Option<NdArrayTensor> {
    if !runs_on(&tensor.device()) {
        return None;
    }
    tensor.clone().try_into_primitive::<NdArray>().ok()
}

fn f32_view(tensor: &NdArrayTensor) -> Option<ArrayViewD<'_, f32>> {
    match tensor {
        NdArrayTensor::F32(storage) => Some(storage.view()),
        _ => None,
    }
}

/// Each tensor's elements as one slice in row-major order; none unless all are laid out so.
fn contiguous(tensors: &[NdArrayTensor]) -> Option<Vec<&[f32]>> {
    tensors
        .iter()
        .map(|tensor| f32_view(tensor)?.to_slice())
        .collect()
}

fn from_rows<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Option<Tensor<D>> {
    let array = ArcArray::from_shape_vec(IxDyn(&shape), values).ok()?;
    Some(Tensor::from_primitive::<NdArray>(NdArrayTensor::from(
        array,
    )))
}

/// `x · w` for `x` of at most [`FEW_ROWS`] rows, `w` stored row-major (`[in, out]`) or as the
/// transpose of a row-major matrix (a checkpoint's `[out, in]`, a tied embedding).
pub(crate) fn few_rows_product(x: &Tensor<2>, w: &Tensor<2>) -> Option<Tensor<2>> {
    if x.dims()[0] > FEW_ROWS {
        return None;
    }
    let (x_primitive, w_primitive) = (on_cpu(x)?, on_cpu(w)?);
    let x = f32_view(&x_primitive)?;
    let w = f32_view(&w_primitive)?;
    let (&[rows, depth], &[w_depth, width]) = (x.shape(), w.shape()) else {
        return None;
    };
    if depth != w_depth {
        return None;
    }
    // Logical order, whatever the layout.
    let x: Vec<f32> = x.iter().copied().collect();
    let mut out = vec![0.0f32; rows * width];
    let weights = if let Some(w) = w.as_slice() {
        Weights::RowMajor(w)
    } else {
        Weights::Transposed(w.t().to_slice()?)
    };
    pulp::Arch::new().dispatch(FewRows {
        x: &x,
        weights,
        depth,
        width,
        out: &mut out,
    });
    from_rows(out, [rows, width])
}

/// A weight matrix as it lies in memory.
enum Weights<'a> {
    /// `[in, out]`, row-major.
    RowMajor(&'a [f32]),
    /// `[out, in]`, row-major: the transpose of the logical matrix.
    Transposed(&'a [f32]),
}

/// [`few_rows_product`]'s arithmetic: `out[rows, width] = x[rows, depth] · w`.
struct FewRows<'a> {
    x: &'a [f32],
    weights: Weights<'a>,
    depth: usize,
    width: usize,
    out: &'a mut [f32],
}

impl pulp::WithSimd for FewRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Self {
            x,
            weights,
            depth,
            width,
            out,
        } = self;
        match weights {
            Weights::RowMajor(w) => {
                // Rows of `w` scaled by each row's `x[k]` and summed, four rows of `w` at a
                // time, over column tiles whose partial sums stay in the L2 cache: `w` is read
                // once, in order.
                let rows = out.len() / width.max(1);
                let tile_width = (TILE_FLOATS / rows.max(1)).max(1);
                for tile in (0..width).step_by(tile_width) {
                    let tile = tile..(tile + tile_width).min(width);
                    let mut w_rows = w.chunks_exact(width).map(|w_row| &w_row[tile.clone()]);
                    for k in (0..depth).step_by(4) {
                        let four = [w_rows.next(), w_rows.next(), w_rows.next(), w_rows.next()];
                        for (x, out) in x.chunks_exact(depth).zip(out.chunks_exact_mut(width)) {
                            let (x, out) = (&x[k..], &mut out[tile.clone()]);
                            match four {
                                [Some(w0), Some(w1), Some(w2), Some(w3)] => {
                                    axpy4(simd, out, [x[0], x[1], x[2], x[3]], [w0, w1, w2, w3]);
                                }
                                _ => {
                                    for (&a, w_row) in x.iter().zip(four.iter().flatten()) {
                                        axpy(simd, out, a, w_row);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Weights::Transposed(w) => {
                // Column `j` of `w` is row `j` of its transpose: one dot product per output.
                for (column, w_column) in w.chunks_exact(depth).enumerate() {
                    for (row, x_row) in x.chunks_exact(depth).enumerate() {
                        out[row * width + column] = dot(simd, x_row, w_column);
                    }
                }
            }
        }
    }
}

/// One single-query entry of a step: its row of the step and the slots of its context.
pub(crate) struct SingleQuery {
    pub(crate) row: usize,
    pub(crate) slots: Vec<Range<usize>>,
}

/// Attention of each entry's query heads (rows of `q`, `[rows, heads, head_dim]`) over the slots
/// of its own context, read from the cache's `[slots, head_dim]` matrices (one per key/value
/// head) in place; `[entries, heads × head_dim]`. The query heads that share a key/value head
/// are scored together, so each cached key and value is read once.
pub(crate) fn single_query_attention(
    q: &Tensor<3>,
    keys: &[Tensor<2>],
    values: &[Tensor<2>],
    entries: &[SingleQuery],
) -> Option<Tensor<2>> {
    let q_primitive = on_cpu(q)?;
    let q = f32_view(&q_primitive)?;
    let &[_, heads, head_dim] = q.shape() else {
        return None;
    };
    let key_primitives: Vec<NdArrayTensor> = keys.iter().map(on_cpu).collect::<Option<_>>()?;
    let value_primitives: Vec<NdArrayTensor> = values.iter().map(on_cpu).collect::<Option<_>>()?;
    let (key_slices, value_slices) = (contiguous(&key_primitives)?, contiguous(&value_primitives)?);
    let kv_heads = key_slices.len();
    if kv_heads == 0 || heads % kv_heads != 0 || value_slices.len() != kv_heads {
        return None;
    }
    let group = heads / kv_heads;
    let scale = (head_dim as f32).sqrt().recip();
    let mut out = vec![0.0f32; entries.len() * heads * head_dim];
    // Reused across entries and heads.
    let (mut queries, mut scores) = (Vec::new(), Vec::new());
    let arch = pulp::Arch::new();
    #[cfg(target_arch = "x86_64")]
    let v3 = pulp::x86::V3::try_new();
    for (entry, out) in entries.iter().zip(out.chunks_exact_mut(heads * head_dim)) {
        for (kv_head, out) in out.chunks_exact_mut(group * head_dim).enumerate() {
            queries.clear();
            for head in kv_head * group..(kv_head + 1) * group {
                for d in 0..head_dim {
                    queries.push(*q.get([entry.row, head, d])? * scale);
                }
            }
            let attention = GroupAttention {
                queries: &queries,
                keys: runs(key_slices[kv_head], &entry.slots, head_dim)?,
                values: runs(value_slices[kv_head], &entry.slots, head_dim)?,
                head_dim,
                scores: &mut scores,
                out,
            };
            #[cfg(target_arch = "x86_64")]
            if let Some(v3) = v3 {
                pulp::Simd::vectorize(v3, Scored(attention, v3));
                continue;
            }
            arch.dispatch(Scored(attention, PerKey));
        }
    }
    from_rows(out, [entries.len(), heads * head_dim])
}

/// The rows of a `[slots, head_dim]` matrix for each run of slots.
fn runs<'a>(matrix: &'a [f32], slots: &[Range<usize>], head_dim: usize) -> Option<Vec<&'a [f32]>> {
    slots
        .iter()
        .map(|run| matrix.get(run.start * head_dim..run.end * head_dim))
        .collect()
}

/// One key/value head's share of an entry's attention: the query heads that share it (already
/// scaled), the runs of its cached keys and values, and where its output rows go.
struct GroupAttention<'a> {
    queries: &'a [f32],
    keys: Vec<&'a [f32]>,
    values: Vec<&'a [f32]>,
    head_dim: usize,
    /// Reused across calls: `[group, context]`.
    scores: &'a mut Vec<f32>,
    out: &'a mut [f32],
}

/// A group's attention with the way its keys are scored eight at a time.
struct Scored<'a, E>(GroupAttention<'a>, E);

/// A way to score eight keys at once where the vector unit can add across lanes of several
/// vectors together; scoring a key alone ends in a chain of shuffles to sum one vector's lanes.
trait EightKeys: Copy {
    /// `query · key j` for the eight keys laid end to end in `keys`, or `None` to score them one
    /// at a time.
    fn dots(self, query: &[f32], keys: &[f32], head_dim: usize) -> Option<[f32; 8]>;
}

/// Every key scored on its own.
#[derive(Clone, Copy)]
struct PerKey;

impl EightKeys for PerKey {
    #[inline(always)]
    fn dots(self, _: &[f32], _: &[f32], _: usize) -> Option<[f32; 8]> {
        None
    }
}

/// AVX's horizontal adds reduce eight keys' lane-wise sums in three rounds.
#[cfg(target_arch = "x86_64")]
impl EightKeys for pulp::x86::V3 {
    #[inline(always)]
    fn dots(self, query: &[f32], keys: &[f32], head_dim: usize) -> Option<[f32; 8]> {
        use pulp::{bytemuck::cast, Simd};
        use std::arch::x86_64::__m256;
        let (query, tail) = Self::as_simd_f32s(query);
        if !tail.is_empty() {
            return None;
        }
        let mut partials = [self.splat_f32s(0.0); 8];
        for (partial, key) in partials.iter_mut().zip(keys.chunks_exact(head_dim)) {
            for (&q, &k) in query.iter().zip(Self::as_simd_f32s(key).0) {
                *partial = self.mul_add_e_f32s(q, k, *partial);
            }
        }
        let [p0, p1, p2, p3, p4, p5, p6, p7]: [__m256; 8] = partials.map(cast);
        let avx = self.avx;
        // [key 0..4 of lanes 0..4, key 0..4 of lanes 4..8], then the same for keys 4..8.
        let low_keys = avx._mm256_hadd_ps(avx._mm256_hadd_ps(p0, p1), avx._mm256_hadd_ps(p2, p3));
        let high_keys = avx._mm256_hadd_ps(avx._mm256_hadd_ps(p4, p5), avx._mm256_hadd_ps(p6, p7));
        let first_lanes = avx._mm256_permute2f128_ps::<0x20>(low_keys, high_keys);
        let last_lanes = avx._mm256_permute2f128_ps::<0x31>(low_keys, high_keys);
        Some(cast(avx._mm256_add_ps(first_lanes, last_lanes)))
    }
}

impl<E: EightKeys> pulp::WithSimd for Scored<'_, E> {
    type Output = ();

    /// The common head widths are constants in their own copies of the loops, so a row of keys
    /// or values is whole registers.
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Self(attention, eight_keys) = self;
        match attention.head_dim {
            16 => attention.attend(simd, eight_keys, 16),
            32 => attention.attend(simd, eight_keys, 32),
            64 => attention.attend(simd, eight_keys, 64),
            128 => attention.attend(simd, eight_keys, 128),
            head_dim => attention.attend(simd, eight_keys, head_dim),
        }
    }
}

impl GroupAttention<'_> {
    /// Each key and value is read from the cache once and used for every query of the group
    /// while it is in the L1 cache: a long context's keys and values outgrow the L2 cache.
    #[inline(always)]
    fn attend<S: pulp::Simd, E: EightKeys>(self, simd: S, eight_keys: E, head_dim: usize) {
        let Self {
            queries,
            keys,
            values,
            scores,
            out,
            ..
        } = self;
        let context: usize = keys.iter().map(|run| run.len() / head_dim).sum();
        scores.clear();
        scores.resize(queries.len() / head_dim * context, 0.0);
        if context == 0 {
            return;
        }
        // Each query's row of scores, split once: a step over keys then costs no division.
        let mut rows: Vec<&mut [f32]> = scores.chunks_exact_mut(context).collect();
        let mut position = 0;
        for run in keys {
            let mut eights = run.chunks_exact(8 * head_dim);
            for eight in &mut eights {
                for (query, row) in queries.chunks_exact(head_dim).zip(rows.iter_mut()) {
                    let row = &mut row[position..position + 8];
                    match eight_keys.dots(query, eight, head_dim) {
                        Some(scores) => row.copy_from_slice(&scores),
                        None => {
                            for (score, key) in row.iter_mut().zip(eight.chunks_exact(head_dim)) {
                                *score = dot(simd, query, key);
                            }
                        }
                    }
                }
                position += 8;
            }
            for key in eights.remainder().chunks_exact(head_dim) {
                for (query, row) in queries.chunks_exact(head_dim).zip(rows.iter_mut()) {
                    row[position] = dot(simd, query, key);
                }
                position += 1;
            }
        }
        for row in rows.iter_mut() {
            let inverse = softmax_numerators(row).recip();
            for p in row.iter_mut() {
                *p *= inverse;
            }
        }
        // Four values per pass over the outputs, so their stores do not chain from one value to
        // the next.
        let mut position = 0;
        for run in values {
            let mut fours = run.chunks_exact(4 * head_dim);
            for four in &mut fours {
                let (v0, rest) = four.split_at(head_dim);
                let (v1, rest) = rest.split_at(head_dim);
                let (v2, v3) = rest.split_at(head_dim);
                for (out, row) in out.chunks_exact_mut(head_dim).zip(rows.iter()) {
                    let p = &row[position..position + 4];
                    axpy4(simd, out, [p[0], p[1], p[2], p[3]], [v0, v1, v2, v3]);
                }
                position += 4;
            }
            for value in fours.remainder().chunks_exact(head_dim) {
                for (out, row) in out.chunks_exact_mut(head_dim).zip(rows.iter()) {
                    axpy(simd, out, row[position], value);
                }
                position += 1;
            }
        }
    }
}

/// Replaces each score by `e^(score − max)` and returns their sum: softmax before its division.
#[inline(always)]
fn softmax_numerators(scores: &mut [f32]) -> f32 {
    const LANES: usize = 8;
    let mut maxima = [f32::NEG_INFINITY; LANES];
    let mut chunks = scores.chunks_exact(LANES);
    for chunk in &mut chunks {
        for lane in 0..LANES {
            maxima[lane] = maxima[lane].max(chunk[lane]);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&maxima)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sums = [0.0f32; LANES];
    let mut chunks = scores.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for lane in 0..LANES {
            chunk[lane] = exp_of_nonpositive(chunk[lane] - max);
            sums[lane] += chunk[lane];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for score in chunks.into_remainder() {
        *score = exp_of_nonpositive(*score - max);
        sum += *score;
    }
    sum
}

/// `e^x` for `x ≤ 0`, to within two units in the last place, in arithmetic that vectorises (the
/// C library's `expf` is a call per element): `x = n·ln 2 + r` with integer `n` and
/// `|r| ≤ ln 2 / 2`, a degree-6 polynomial for `e^r` (Cephes' `expf` coefficients), and `2^n`
/// built from its exponent bits. Below −87 the result is clamped to `e^−87`, whose share of any
/// softmax that also holds its maximum (`e^0 = 1`) is below `f32` resolution.
#[inline(always)]
fn exp_of_nonpositive(x: f32) -> f32 {
    // Adding 1.5 × 2²³ rounds to an integer, which then sits in the low bits of the mantissa.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split so that `n · LN2_HIGH` is exact for the `n` that occur.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let mut p = 1.987_569_1e-4;
    for coefficient in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = p * r + coefficient;
    }
    let e_r = p * r * r + r + 1.0;
    let two_to_n = f32::from_bits(
        shifted
            .to_bits()
            .wrapping_sub(ROUND.to_bits())
            .wrapping_add(127)
            << 23,
    );
    e_r * two_to_n
}

/// `out += a · x`.
#[inline(always)]
fn axpy<S: pulp::Simd>(simd: S, out: &mut [f32], a: f32, x: &[f32]) {
    let ((out, out_tail), (x, x_tail)) = (S::as_mut_simd_f32s(out), S::as_simd_f32s(x));
    let a_lanes = simd.splat_f32s(a);
    for (o, &x) in out.iter_mut().zip(x) {
        *o = simd.mul_add_e_f32s(a_lanes, x, *o);
    }
    for (o, x) in out_tail.iter_mut().zip(x_tail) {
        *o += a * x;
    }
}

/// `out += a[0] · x[0] + … + a[3] · x[3]`: four rows per pass over `out`.
#[inline(always)]
fn axpy4<S: pulp::Simd>(simd: S, out: &mut [f32], a: [f32; 4], x: [&[f32]; 4]) {
    let len = out.len();
    let x = x.map(|x| S::as_simd_f32s(&x[..len]));
    let (out, out_tail) = S::as_mut_simd_f32s(out);
    let ([x0, x1, x2, x3], [a0, a1, a2, a3]) = (x.map(|x| x.0), a.map(|a| simd.splat_f32s(a)));
    for (j, o) in out.iter_mut().enumerate() {
        let sum = simd.mul_add_e_f32s(a0, x0[j], *o);
        let sum = simd.mul_add_e_f32s(a1, x1[j], sum);
        let sum = simd.mul_add_e_f32s(a2, x2[j], sum);
        *o = simd.mul_add_e_f32s(a3, x3[j], sum);
    }
    let tails = x.map(|x| x.1);
    for (j, o) in out_tail.iter_mut().enumerate() {
        *o += a[0] * tails[0][j] + a[1] * tails[1][j] + a[2] * tails[2][j] + a[3] * tails[3][j];
    }
}

/// `a · b`.
#[inline(always)]
fn dot<S: pulp::Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let ((a, a_tail), (b, b_tail)) = (S::as_simd_f32s(a), S::as_simd_f32s(b));
    let mut lanes = simd.splat_f32s(0.0);
    for (&a, &b) in a.iter().zip(b) {
        lanes = simd.mul_add_e_f32s(a, b, lanes);
    }
    let mut sum = simd.reduce_sum_f32s(lanes);
    for (a, b) in a_tail.iter().zip(b_tail) {
        sum += a * b;
    }
    sum
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};

    use super::{
        exp_of_nonpositive, few_rows_product, single_query_attention, GroupAttention, PerKey,
        Scored, SingleQuery,
    };
    use crate::cpu_device;

    fn matrix(rows: usize, cols: usize, seed: usize) -> Tensor<2> {
        let values = (0..rows * cols)
            .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::from_data(TensorData::new(values, [rows, cols]), &cpu_device())
    }

    fn assert_close(actual: Tensor<2>, expected: Tensor<2>) {
        let actual: Vec<f32> = actual.into_data().to_vec().unwrap();
        let expected: Vec<f32> = expected.into_data().to_vec().unwrap();
        assert_eq!(actual.len(), expected.len());
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, e) in actual.iter().zip(&expected) {
            assert!((a - e).abs() <= 1e-5 * scale, "{a} against {e}");
        }
    }

    #[test]
    fn few_rows_products_match_burns_product_in_both_weight_layouts() {
        // Wider than one column tile, and a depth that is not a multiple of the dot's lanes.
        let (depth, width) = (37, 1500);
        let row_major = matrix(depth, width, 1);
        let transposed = matrix(width, depth, 2).transpose();
        for rows in 1..=4 {
            let x = matrix(rows, depth, 3);
            for w in [&row_major, &transposed] {
                let product = few_rows_product(&x, w).expect("a few rows on the CPU");
                assert_close(product, x.clone().matmul(w.clone()));
            }
        }
        let many = matrix(5, depth, 4);
        assert!(few_rows_product(&many, &row_major).is_none());
    }

    /// Softmax attention of one query over `keys`/`values` rows, in `f64`.
    fn reference_attention(query: &[f32], keys: &[&[f32]], values: &[&[f32]]) -> Vec<f64> {
        let scale = (query.len() as f64).sqrt().recip();
        let scores: Vec<f64> = keys
            .iter()
            .map(|key| {
                query
                    .iter()
                    .zip(*key)
                    .map(|(&q, &k)| f64::from(q) * f64::from(k))
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut out = vec![0.0; query.len()];
        for (weight, value) in weights.iter().zip(values) {
            for (o, &v) in out.iter_mut().zip(*value) {
                *o += weight / total * f64::from(v);
            }
        }
        out
    }

    #[test]
    fn single_query_attention_matches_softmax_attention_over_scattered_runs() {
        let slots = 200;
        // Head widths with and without a tail past the vector lanes; contexts that are and are
        // not whole groups of eight keys, in one run or several.
        for head_dim in [16, 20, 64] {
            for (heads, kv_heads) in [(4, 2), (3, 1), (2, 2)] {
                let caches = |seed| -> Vec<Tensor<2>> {
                    (0..kv_heads)
                        .map(|h| matrix(slots, head_dim, seed + h))
                        .collect()
                };
                let (keys, values) = (caches(10), caches(20));
                let entries = vec![
                    SingleQuery {
                        row: 1,
                        slots: std::iter::once(0..1).collect(),
                    },
                    SingleQuery {
                        row: 0,
                        slots: vec![40..57, 8..16, 100..103],
                    },
                    SingleQuery {
                        row: 2,
                        slots: vec![120..160, 160..200],
                    },
                ];
                let q = matrix(3, heads * head_dim, 30).reshape([3, heads, head_dim]);
                let out = single_query_attention(&q, &keys, &values, &entries).expect("on the CPU");
                let out: Vec<f32> = out.into_data().to_vec().unwrap();
                let q: Vec<f32> = q.into_data().to_vec().unwrap();
                let keys: Vec<Vec<f32>> = keys
                    .into_iter()
                    .map(|k| k.into_data().to_vec().unwrap())
                    .collect();
                let values: Vec<Vec<f32>> = values
                    .into_iter()
                    .map(|v| v.into_data().to_vec().unwrap())
                    .collect();
                for (e, entry) in entries.iter().enumerate() {
                    let rows = |cache: &[f32]| -> Vec<Vec<f32>> {
                        entry
                            .slots
                            .iter()
                            .flat_map(|run| run.clone())
                            .map(|slot| cache[slot * head_dim..(slot + 1) * head_dim].to_vec())
                            .collect()
                    };
                    for head in 0..heads {
                        let kv_head = head / (heads / kv_heads);
                        let (k, v) = (rows(&keys[kv_head]), rows(&values[kv_head]));
                        let k: Vec<&[f32]> = k.iter().map(Vec::as_slice).collect();
                        let v: Vec<&[f32]> = v.iter().map(Vec::as_slice).collect();
                        let query = &q[(entry.row * heads + head) * head_dim..][..head_dim];
                        let expected = reference_attention(query, &k, &v);
                        let actual = &out[(e * heads + head) * head_dim..][..head_dim];
                        for (a, x) in actual.iter().zip(&expected) {
                            assert!(
                                (f64::from(*a) - x).abs() <= 1e-5,
                                "head_dim {head_dim}, heads {heads}/{kv_heads}, entry {e}, head {head}: {a} against {x}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_softmax_exponential_is_within_two_units_in_the_last_place() {
        for i in 0..=200_000 {
            let x = -87.0 * f64::from(i) / 200_000.0;
            let (actual, expected) = (
                f64::from(exp_of_nonpositive(x as f32)),
                (x as f32 as f64).exp(),
            );
            let ulp = f64::from(f32::EPSILON) * expected;
            assert!(
                (actual - expected).abs() <= 2.0 * ulp,
                "e^{x}: {actual} against {expected}"
            );
        }
        assert_eq!(exp_of_nonpositive(0.0), 1.0);
        assert!(exp_of_nonpositive(f32::NEG_INFINITY) > 0.0);
    }

    #[test]
    fn keys_scored_one_at_a_time_match_the_reference_on_every_vector_unit() {
        // What `single_query_attention` takes where no faster way to score eight keys exists.
        let (head_dim, group) = (16, 2);
        let cache = |seed| -> Vec<f32> { matrix(45, head_dim, seed).into_data().to_vec().unwrap() };
        let (keys, values) = (cache(1), cache(2));
        let queries: Vec<f32> = matrix(group, head_dim, 3).into_data().to_vec().unwrap();
        let runs = |cache: &[f32]| -> Vec<Vec<f32>> {
            vec![
                cache[..17 * head_dim].to_vec(),
                cache[20 * head_dim..].to_vec(),
            ]
        };
        let (key_runs, value_runs) = (runs(&keys), runs(&values));
        let (mut scores, mut out) = (Vec::new(), vec![0.0f32; group * head_dim]);
        let attention = GroupAttention {
            queries: &queries,
            keys: key_runs.iter().map(Vec::as_slice).collect(),
            values: value_runs.iter().map(Vec::as_slice).collect(),
            head_dim,
            scores: &mut scores,
            out: &mut out,
        };
        pulp::Arch::new().dispatch(Scored(attention, PerKey));
        let rows = |runs: &[Vec<f32>]| -> Vec<Vec<f32>> {
            runs.iter()
                .flat_map(|run| run.chunks_exact(head_dim).map(<[f32]>::to_vec))
                .collect()
        };
        let (key_rows, value_rows) = (rows(&key_runs), rows(&value_runs));
        for (query, out) in queries
            .chunks_exact(head_dim)
            .zip(out.chunks_exact(head_dim))
        {
            // The queries come scaled; the reference scales its own.
            let unscaled: Vec<f32> = query.iter().map(|q| q * (head_dim as f32).sqrt()).collect();
            let k: Vec<&[f32]> = key_rows.iter().map(Vec::as_slice).collect();
            let v: Vec<&[f32]> = value_rows.iter().map(Vec::as_slice).collect();
            for (a, x) in out.iter().zip(reference_attention(&unscaled, &k, &v)) {
                assert!((f64::from(*a) - x).abs() <= 1e-5, "{a} against {x}");
            }
        }
    }
}
