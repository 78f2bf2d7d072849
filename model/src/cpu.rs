//! The CPU backend's fast paths for the shapes of decoding: a few rows through a weight matrix,
//! and single-query attention over the paged cache, read where it lies.
//!
//! burn's ndarray backend copies every slice it reads and packs both operands of every matrix
//! product. For one row through a weight matrix, the packing is a full copy of the matrix per
//! product; for a decode's attention, the gathered context is copied twice before a few
//! multiplications per element. These loops read each weight and each cached key and value
//! once. Every function returns `None` on any other backend, which then takes burn's path.

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
    if let Some(w) = w.as_slice() {
        // Rows of `w` scaled by each row's `x[k]` and summed, four rows of `w` at a time, over
        // column tiles whose partial sums stay in the L2 cache: `w` is read once, in order.
        let tile_width = (TILE_FLOATS / rows).max(1);
        for tile in (0..width).step_by(tile_width) {
            let tile = tile..(tile + tile_width).min(width);
            let w_rows = w.chunks_exact(width).map(|w_row| &w_row[tile.clone()]);
            for (k, w_rows) in w_rows.collect::<Vec<_>>().chunks(4).enumerate() {
                for (row, out) in out.chunks_exact_mut(width).enumerate() {
                    let x = &x[row * depth + 4 * k..];
                    let out = &mut out[tile.clone()];
                    match *w_rows {
                        [w0, w1, w2, w3] => axpy4(out, [x[0], x[1], x[2], x[3]], [w0, w1, w2, w3]),
                        _ => {
                            for (&a, w_row) in x.iter().zip(w_rows) {
                                axpy(out, a, w_row);
                            }
                        }
                    }
                }
            }
        }
    } else if let Some(w_transposed) = w.t().as_slice() {
        // Column `j` of `w` is row `j` of its transpose: one dot product per output.
        for (column, w_column) in w_transposed.chunks_exact(depth).enumerate() {
            for (row, x_row) in x.chunks_exact(depth).enumerate() {
                out[row * width + column] = dot(x_row, w_column);
            }
        }
    } else {
        return None;
    }
    from_rows(out, [rows, width])
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
    let (mut queries, mut scores, mut sums) = (Vec::new(), Vec::new(), Vec::new());
    for (entry, out) in entries.iter().zip(out.chunks_exact_mut(heads * head_dim)) {
        let context: usize = entry.slots.iter().map(ExactSizeIterator::len).sum();
        for (kv_head, out) in out.chunks_exact_mut(group * head_dim).enumerate() {
            queries.clear();
            for head in kv_head * group..(kv_head + 1) * group {
                for d in 0..head_dim {
                    queries.push(*q.get([entry.row, head, d])?);
                }
            }
            // scores[g × context + i]: query head g against the entry's i-th key.
            scores.clear();
            scores.resize(group * context, 0.0);
            let mut position = 0;
            for run in &entry.slots {
                let keys = key_slices[kv_head].get(run.start * head_dim..run.end * head_dim)?;
                for key in keys.chunks_exact(head_dim) {
                    for (g, query) in queries.chunks_exact(head_dim).enumerate() {
                        scores[g * context + position] = dot(query, key) * scale;
                    }
                    position += 1;
                }
            }
            sums.clear();
            sums.resize(group, 0.0f32);
            for (scores, sum) in scores.chunks_exact_mut(context.max(1)).zip(&mut sums) {
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for score in scores.iter_mut() {
                    *score = (*score - max).exp();
                    *sum += *score;
                }
            }
            let mut position = 0;
            for run in &entry.slots {
                let values = value_slices[kv_head].get(run.start * head_dim..run.end * head_dim)?;
                for value in values.chunks_exact(head_dim) {
                    for (g, out) in out.chunks_exact_mut(head_dim).enumerate() {
                        axpy(out, scores[g * context + position], value);
                    }
                    position += 1;
                }
            }
            for (out, sum) in out.chunks_exact_mut(head_dim).zip(&sums) {
                let inverse = sum.recip();
                out.iter_mut().for_each(|o| *o *= inverse);
            }
        }
    }
    from_rows(out, [entries.len(), heads * head_dim])
}

/// `out += a · x`.
#[inline(always)]
fn axpy(out: &mut [f32], a: f32, x: &[f32]) {
    for (o, x) in out.iter_mut().zip(x) {
        *o += a * x;
    }
}

/// `out += a[0] · x[0] + … + a[3] · x[3]`: four rows per pass over `out`.
#[inline(always)]
fn axpy4(out: &mut [f32], a: [f32; 4], x: [&[f32]; 4]) {
    let len = out.len();
    let (x0, x1, x2, x3) = (&x[0][..len], &x[1][..len], &x[2][..len], &x[3][..len]);
    for (j, o) in out.iter_mut().enumerate() {
        *o += a[0] * x0[j] + a[1] * x1[j] + a[2] * x2[j] + a[3] * x3[j];
    }
}

/// `a · b`, summed in eight lanes so the loop vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut lanes = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            lanes[lane] += a[lane] * b[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};

    use super::few_rows_product;
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
}
