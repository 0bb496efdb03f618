//! NVIDIA GPUs as CUDA programs number them, probed through NVML.
//!
//! NVML (`libnvidia-ml.so.1`) is loaded at run time, so this builds and runs
//! on machines without the driver: there [`devices`] is empty and [`status`]
//! says why. NVML is initialised once, on first use, and kept; a failed
//! initialisation is remembered until [`refresh`] tries again. Every call
//! here may touch the driver: call it off latency-sensitive threads.

mod nvml;
pub mod visible;

pub use nvml::{devices, known_absent, refresh, status};

/// One GPU visible to CUDA programs started with this process's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// CUDA's index for this GPU: its position in `CUDA_VISIBLE_DEVICES`
    /// (from 0), or NVML's index when the variable is unset.
    pub gpu_index: u32,
    /// NVML's index (the one `nvidia-smi` shows), which ignores
    /// `CUDA_VISIBLE_DEVICES`.
    pub nvml_index: u32,
    pub name: String,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as `nvidia-smi` shows it.
    pub uuid: String,
    /// Bytes. All three are 0 when the GPU stopped answering (fell off the
    /// bus, say) after NVML started: such a GPU keeps its index, and an
    /// `:auto` budget gives it nothing.
    pub memory_total: u64,
    pub memory_free: u64,
    pub memory_used: u64,
}

/// Whether GPUs can be probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuStatus {
    /// NVML works: the driver's version and how many GPUs [`devices`] lists.
    Ok { driver_version: String, count: u32 },
    /// No GPU can be probed, and why.
    Unavailable(Unavailable),
}

/// Why NVML could not be used. The messages are meant for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("NVIDIA management library (libnvidia-ml.so.1) not found: is the NVIDIA driver installed? ({0})")]
    LibraryNotFound(String),
    #[error("libnvidia-ml.so.1 is too old for this program: {0}")]
    FunctionMissing(String),
    #[error("the NVIDIA kernel driver is not loaded")]
    DriverNotLoaded,
    #[error("NVIDIA driver/library version mismatch: the loaded kernel module and libnvidia-ml.so.1 differ (reload the driver or reboot)")]
    VersionMismatch,
    #[error("no permission to talk to the NVIDIA driver (check access to /dev/nvidia*)")]
    NoPermission,
    #[error("GPU {nvml_index} could not be read: {message}")]
    Device { nvml_index: u32, message: String },
    #[error("NVML failed: {0}")]
    Nvml(String),
}
