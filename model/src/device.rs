//! Which burn device the model runs on: the CPU (ndarray) or a GPU through wgpu.

use burn::tensor::Device;

/// The `--device` choices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum DeviceChoice {
    /// The CPU, through burn's ndarray backend.
    #[default]
    Cpu,
    /// The default GPU adapter wgpu finds (Vulkan, Metal or DX12).
    Wgpu,
}

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The binary was built without the `wgpu` cargo feature.
    #[error("this waypoint was built without GPU support: rebuild with `--features wgpu`")]
    WgpuNotBuilt,
    /// In a browser the GPU opens asynchronously.
    #[error("in a browser WebGPU opens asynchronously: use `open_device_async`")]
    AsyncOnly,
    /// wgpu found no usable adapter.
    #[error("wgpu found no usable GPU adapter ({0}); on Linux without a GPU, Mesa's lavapipe (Debian `mesa-vulkan-drivers`) provides one")]
    NoAdapter(String),
}

/// Open the chosen device. A GPU is initialised here, so a missing adapter is an error now
/// rather than a panic at the first tensor.
pub fn open(choice: DeviceChoice) -> Result<Device, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(cpu_device()),
        DeviceChoice::Wgpu => open_wgpu(),
    }
}

/// The CPU device (burn's ndarray backend).
///
/// burn 0.22 marks ndarray deprecated in favour of its new `flex` CPU backend; ndarray is kept
/// because it is the CPU backend this project specifies and was checked against wgpu here.
#[allow(deprecated)]
pub fn cpu_device() -> Device {
    Device::ndarray()
}

/// Open the chosen device where a GPU can only be awaited: WebGPU in a browser, where
/// [`open`] cannot open one. Call it once per page.
pub async fn open_async(choice: DeviceChoice) -> Result<Device, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(cpu_device()),
        #[cfg(feature = "wgpu")]
        DeviceChoice::Wgpu => Device::wgpu_options()
            .init_async()
            .await
            .map_err(|e| DeviceError::NoAdapter(e.to_string())),
        #[cfg(not(feature = "wgpu"))]
        DeviceChoice::Wgpu => Err(DeviceError::WgpuNotBuilt),
    }
}

/// wgpu's runtime can be initialised once per process; later calls share the device.
#[cfg(all(feature = "wgpu", not(target_family = "wasm")))]
fn open_wgpu() -> Result<Device, DeviceError> {
    static DEVICE: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| Device::wgpu_options().init().map_err(|e| e.to_string()))
        .clone()
        .map_err(DeviceError::NoAdapter)
}

#[cfg(all(feature = "wgpu", target_family = "wasm"))]
fn open_wgpu() -> Result<Device, DeviceError> {
    Err(DeviceError::AsyncOnly)
}

#[cfg(not(feature = "wgpu"))]
fn open_wgpu() -> Result<Device, DeviceError> {
    Err(DeviceError::WgpuNotBuilt)
}
