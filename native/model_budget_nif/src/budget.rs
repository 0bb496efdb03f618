//! Budget terms: the `:memory_budget` option as written (decoded into a
//! `BudgetSpec`), and resolved budgets in and out (`budget()`), through the
//! codecs in `codec`.

use model_budget_core::budget::spec::{
    self, Budget, BudgetSpec, GpuFree, Limit, RamSpec, VramSpec,
};
use model_budget_core::machine::{devices, system};
use model_budget_core::GpuMap;
use rustler::types::map::MapIterator;
use rustler::{Encoder, Env, NifMap, Term, TermType};
use smallvec::SmallVec;

use crate::atoms;
use crate::badarg::{bad, reply, Decoded};
use crate::codec::{encode_budget, BudgetTerm};
use crate::decode::{atom, bytes, is_unbounded, optional};

// The wording predates one-key maps; ModelManager's doctests (issue 14's
// files) quote it, so it stays until they change together.
const SPEC: &str = ":infinity, nil, :auto, a positive integer, or a map with :ram and :vram keys";
const RAM: &str = "a byte count, :infinity, nil or :auto";
const VRAM: &str =
    ":infinity, nil, :auto, a list of byte counts, or a map of GPU index => byte count or :infinity";
pub const BUDGET: &str = "a budget: %{mode: :unlimited}, %{mode: :combined, limit: pos_integer}, or %{mode: :per_device, ram: limit, vram: :infinity | %{gpu_index => limit}}";

/// Decodes the `:memory_budget` option as a user writes it. A map may give
/// only `:ram` or only `:vram`; the missing one is `:infinity` (as in
/// LlamaCppEx, which accepts `%{vram: [...]}`).
pub fn decode_spec(term: Term) -> Decoded<BudgetSpec> {
    const ARG: &str = "memory budget";
    // By type first: a failed decode makes an error that must be dropped,
    // and the map, the shape of every per-device budget, would fail two.
    match term.get_type() {
        TermType::Atom if is_unbounded(term) => return Ok(BudgetSpec::Unlimited),
        TermType::Atom if atom(term) == Some(atoms::auto()) => return Ok(BudgetSpec::Auto),
        TermType::Integer => {
            return match term.decode::<u64>() {
                Ok(limit) if limit > 0 => Ok(BudgetSpec::Combined(limit)),
                _ => bad(ARG, SPEC, term),
            };
        }
        TermType::Map => {}
        _ => return bad(ARG, SPEC, term),
    }
    let Ok(size) = term.map_size() else {
        return bad(ARG, SPEC, term);
    };
    let ram = term.map_get(atoms::ram()).ok();
    let vram = term.map_get(atoms::vram()).ok();
    let found = usize::from(ram.is_some()) + usize::from(vram.is_some());
    if size == 0 || found != size {
        return bad(ARG, "a map with :ram and/or :vram keys and no others", term);
    }
    Ok(BudgetSpec::PerDevice {
        ram: ram.map_or(Ok(RamSpec::Infinity), decode_ram_spec)?,
        vram: vram.map_or(Ok(VramSpec::Infinity), decode_vram_spec)?,
    })
}

fn decode_ram_spec(term: Term) -> Decoded<RamSpec> {
    if is_unbounded(term) {
        Ok(RamSpec::Infinity)
    } else if atom(term) == Some(atoms::auto()) {
        Ok(RamSpec::Auto)
    } else {
        term.decode::<u64>()
            .map(RamSpec::Bytes)
            .or_else(|_| bad("memory budget :ram", RAM, term))
    }
}

fn decode_vram_spec(term: Term) -> Decoded<VramSpec> {
    const ARG: &str = "memory budget :vram";
    if is_unbounded(term) {
        return Ok(VramSpec::Infinity);
    }
    if atom(term) == Some(atoms::auto()) {
        return Ok(VramSpec::Auto);
    }
    let mut map = GpuMap::new();
    if let Ok(list) = crate::decode::list(term) {
        for (gpu, limit) in list.enumerate() {
            let Ok(gpu) = u32::try_from(gpu) else {
                return bad(ARG, VRAM, term);
            };
            map.insert(gpu, decode_limit(limit, ARG, VRAM, term)?);
        }
        return Ok(VramSpec::PerGpu(map));
    }
    let Some(entries) = MapIterator::new(term) else {
        return bad(ARG, VRAM, term);
    };
    for (gpu, limit) in entries {
        let Ok(gpu) = gpu.decode::<u32>() else {
            return bad(ARG, VRAM, term);
        };
        map.insert(gpu, decode_limit(limit, ARG, VRAM, term)?);
    }
    Ok(VramSpec::PerGpu(map))
}

/// A byte count or `:infinity`; errors show `whole`, the term it sits in.
fn decode_limit<'a>(
    term: Term<'a>,
    arg: &str,
    expected: &str,
    whole: Term<'a>,
) -> Decoded<'a, Limit> {
    if let Ok(bytes) = term.decode::<u64>() {
        return Ok(Limit::Bytes(bytes));
    }
    if atom(term) == Some(atoms::infinity()) {
        return Ok(Limit::Infinity);
    }
    bad(arg, expected, whole)
}

/// A resolved `budget()`, as `check/3` receives it; a term the codec
/// refuses is named whole.
pub fn decode(term: Term) -> Decoded<Budget> {
    match term.decode::<BudgetTerm>() {
        Ok(b) => Ok(b.0),
        Err(_) => bad("budget", BUDGET, term),
    }
}

/// A GPU entry; other keys are ignored.
#[derive(NifMap)]
struct GpuFreeFields {
    gpu_index: u32,
    memory_free: u64,
}

pub type Gpus = SmallVec<[GpuFree; 8]>;

/// GPU entries as `LlamaCppEx.devices/0` and `ModelBudget.devices/0` give
/// them (maps with at least `:gpu_index` and `:memory_free`), appended to
/// `out` in place (see `spec::resolve_into`: the list is inline, and
/// each move copies it). A bad entry is named alone.
pub fn read_gpus<'a>(term: Term<'a>, out: &mut Gpus) -> Decoded<'a, ()> {
    const ARG: &str = "gpu_devices";
    let Ok(list) = crate::decode::list(term) else {
        return bad(ARG, "a list of maps with :gpu_index and :memory_free", term);
    };
    for gpu in list {
        let Ok(GpuFreeFields {
            gpu_index,
            memory_free,
        }) = gpu.decode()
        else {
            return bad(
                ARG,
                "maps with :gpu_index (an integer below 2^32) and :memory_free (an integer below 2^64)",
                gpu,
            );
        };
        out.push(GpuFree {
            gpu_index,
            memory_free,
        });
    }
    Ok(())
}

/// Resolves a `:memory_budget` into a budget. `gpus` and `ram_limit` may
/// be `nil`: when the spec needs one that is missing and the answer is not
/// already known without blocking (no NVML on this machine; the memory
/// limit read before), the answer is `{:probe, :gpus | :ram}` and the
/// Elixir side probes (on a dirty scheduler) and calls again.
#[rustler::nif]
fn resolve<'a>(env: Env<'a>, spec: Term<'a>, gpus: Term<'a>, ram_limit: Term<'a>) -> Term<'a> {
    let result = (|| {
        let spec = decode_spec(spec)?;
        // Read in place, and the budget resolved in place: both hold GPUs
        // inline, and each move copies them.
        let mut gpu_list = Gpus::new();
        let mut have_gpus = atom(gpus) != Some(atoms::nil());
        if have_gpus {
            read_gpus(gpus, &mut gpu_list)?;
        }
        let mut ram_limit = optional(ram_limit, |t| bytes(t, "ram_limit"))?;
        // Both answers are what the dirty-scheduler probe would give now.
        if spec.needs_gpus() && !have_gpus && devices::known_absent() {
            have_gpus = true;
        }
        if spec.needs_system_memory() && ram_limit.is_none() {
            ram_limit = system::cached_limit();
        }
        if spec.needs_gpus() && !have_gpus {
            return Ok((atoms::probe(), atoms::gpus()).encode(env));
        }
        if spec.needs_system_memory() && ram_limit.is_none() {
            return Ok((atoms::probe(), atoms::ram()).encode(env));
        }
        let mut resolved = Budget::Unlimited;
        spec::resolve_into(&spec, ram_limit.unwrap_or(0), &gpu_list, &mut resolved)?;
        Ok(encode_budget(env, &resolved))
    })();
    reply(env, result)
}
