//! Helpers shared by the model tests.

/// Largest absolute difference, relative to the largest expected magnitude.
pub fn max_relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(
        actual.len(),
        expected.len(),
        "compared logits differ in size"
    );
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs() / scale)
        .fold(0.0, f32::max)
}
