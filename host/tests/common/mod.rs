//! Helpers shared by the model tests.

// Each test crate that includes this module uses part of it.
#![allow(dead_code)]

use waypoint::model::{open_device, Device, DeviceChoice, Model, ModelConfig, Weights};

/// The device the model tests run on: the CPU, or a GPU through wgpu when
/// `WAYPOINT_TEST_DEVICE=wgpu` (CI runs them both ways, the GPU on Mesa's lavapipe).
pub fn test_device() -> Device {
    let choice = match std::env::var("WAYPOINT_TEST_DEVICE").as_deref() {
        Ok("wgpu") => DeviceChoice::Wgpu,
        Ok("cpu") | Err(_) => DeviceChoice::Cpu,
        Ok(other) => panic!("WAYPOINT_TEST_DEVICE={other:?}: use cpu or wgpu"),
    };
    open_device(choice).expect("the test device opens")
}

/// The tiny model with seeded random weights, on the test device: enough for the engine tests,
/// which check scheduling and outputs, not what the model says.
pub fn tiny_random_model() -> Model {
    let device = test_device();
    let config = ModelConfig::tiny();
    Model::new(config, Weights::random(&config, 3, &device), device)
}

/// Largest absolute difference, relative to the largest expected magnitude.
pub fn max_relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(
        actual.len(),
        expected.len(),
        "compared logits differ in size"
    );
    waypoint::model::max_relative_error(actual, expected)
}
