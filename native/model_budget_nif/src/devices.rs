//! GPUs through NVML, on a dirty I/O scheduler: the first call loads the
//! driver's library and every call may talk to the driver.
//!
//! Each NIF takes `CUDA_VISIBLE_DEVICES` as the BEAM sees it (`nil` or a
//! binary): `System.put_env/2` changes the VM's copy of the environment,
//! which is what ports hand to the programs they start, and not the C
//! environment the NIF could read itself.

use model_budget_core::machine::devices::{self, Gpu, GpuStatus};
use rustler::{Encoder, Env, NifMap, Term};

use crate::atoms;
use crate::badarg::{bad, reply, Decoded};
use crate::decode::optional;

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

/// `nil` or a binary (not necessarily UTF-8, as CUDA reads bytes).
fn decode_visible(term: Term) -> Decoded<Option<String>> {
    optional(term, |t| match t.decode::<rustler::Binary>() {
        Ok(binary) => Ok(String::from_utf8_lossy(binary.as_slice()).into_owned()),
        Err(_) => bad("CUDA_VISIBLE_DEVICES", "nil or a string", t),
    })
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

fn gpu_terms(visible: Option<&str>) -> Vec<GpuTerm> {
    devices::devices(visible)
        .into_iter()
        .map(GpuTerm::from)
        .collect()
}

#[rustler::nif(schedule = "DirtyIo")]
fn devices<'a>(env: Env<'a>, visible: Term<'a>) -> Term<'a> {
    let result = decode_visible(visible).map(|visible| gpu_terms(visible.as_deref()).encode(env));
    reply(env, result)
}

/// `{devices, memory_limit}`: what `resolve(:auto)` needs, in one trip to a
/// dirty scheduler instead of two.
#[rustler::nif(schedule = "DirtyIo")]
fn probe_machine<'a>(env: Env<'a>, visible: Term<'a>) -> Term<'a> {
    let result = decode_visible(visible).map(|visible| {
        (
            gpu_terms(visible.as_deref()),
            model_budget_core::machine::system::limit(),
        )
            .encode(env)
    });
    reply(env, result)
}

#[rustler::nif(schedule = "DirtyIo")]
fn gpu_status<'a>(env: Env<'a>, visible: Term<'a>) -> Term<'a> {
    let result = decode_visible(visible)
        .map(|visible| encode_status(env, devices::status(visible.as_deref())));
    reply(env, result)
}

/// Starts NVML again and re-reads the memory limit `:auto` budgets use.
#[rustler::nif(schedule = "DirtyIo")]
fn refresh_devices<'a>(env: Env<'a>, visible: Term<'a>) -> Term<'a> {
    let result = decode_visible(visible).map(|visible| {
        model_budget_core::machine::system::memory();
        encode_status(env, devices::refresh(visible.as_deref()))
    });
    reply(env, result)
}
