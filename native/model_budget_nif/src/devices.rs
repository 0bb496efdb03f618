//! GPUs through NVML, on a dirty I/O scheduler: the first call loads the
//! driver's library and every call may talk to the driver.

use model_budget_core::devices::{self, Gpu, GpuStatus};
use rustler::{Encoder, Env, NifMap, Term};

use crate::atoms;

rustler::atoms! {
    unavailable,
}

/// A GPU as `ModelBudget.devices/0` returns it.
#[derive(NifMap)]
struct GpuTerm {
    gpu_index: u32,
    nvml_index: u32,
    name: String,
    uuid: String,
    memory_total: u64,
    memory_free: u64,
    memory_used: u64,
}

impl From<Gpu> for GpuTerm {
    fn from(gpu: Gpu) -> Self {
        GpuTerm {
            gpu_index: gpu.gpu_index,
            nvml_index: gpu.nvml_index,
            name: gpu.name,
            uuid: gpu.uuid,
            memory_total: gpu.memory_total,
            memory_free: gpu.memory_free,
            memory_used: gpu.memory_used,
        }
    }
}

/// `{:ok, driver_version, count}` or `{:unavailable, reason}`.
fn encode_status(env: Env, status: GpuStatus) -> Term {
    match status {
        GpuStatus::Ok {
            driver_version,
            count,
        } => (atoms::ok(), driver_version, count).encode(env),
        GpuStatus::Unavailable(why) => (unavailable(), why.to_string()).encode(env),
    }
}

#[rustler::nif(schedule = "DirtyIo")]
fn devices() -> Vec<GpuTerm> {
    devices::devices().into_iter().map(GpuTerm::from).collect()
}

#[rustler::nif(schedule = "DirtyIo")]
fn gpu_status(env: Env) -> Term {
    encode_status(env, devices::status())
}

/// Starts NVML again and re-reads the memory limit `:auto` budgets use.
#[rustler::nif(schedule = "DirtyIo")]
fn refresh_devices(env: Env) -> Term {
    model_budget_core::system::memory();
    encode_status(env, devices::refresh())
}
