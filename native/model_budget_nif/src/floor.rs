//! The floors that benchmarks compare every call against: an empty NIF, and
//! NIFs that only read their argument terms through rustler (every map
//! entry, list element, integer and atom, with the primitives the codecs
//! use) and return `:ok`, with no validation, no arithmetic and no result
//! term.

use model_budget_core::budget::spec::{Limit, VramLimits};
use model_budget_core::estimate::distribute::distribute_into;
use model_budget_core::{Budget, DistributeOptions, GpuMap, OptionSet, Placement};
use rustler::types::tuple::get_tuple;
use rustler::{Atom, Env, Term, TermType};

use crate::atoms;
use crate::budget::{decode_spec, read_gpus, Gpus};
use crate::codec::encode_placement;
use crate::distribute::gpu_count;
use crate::load_options::read_options;
use crate::raw::{self, encode_per_device, read_budget, read_placement as read_in_place};

#[rustler::nif]
fn noop() -> Atom {
    atoms::ok()
}

/// Reads every leaf of `term`; the result only
/// feeds `black_box`, so that the reads cannot be optimised away.
fn read(term: Term) -> u64 {
    match term.get_type() {
        TermType::Integer => term.decode::<u64>().unwrap_or(1),
        TermType::Atom => u64::from(term.decode::<Atom>().is_ok()),
        TermType::Float => term.decode::<f64>().map(|f| f as u64).unwrap_or(0),
        TermType::Map => {
            let mut acc = 0u64;
            raw::for_each(term, |k, v| {
                acc = acc.wrapping_add(read(k) ^ read(v));
                Ok::<(), ()>(())
            });
            acc
        }
        TermType::List => crate::decode::list(term)
            .map(|items| items.fold(0u64, |acc, t| acc.wrapping_add(read(t))))
            .unwrap_or(0),
        TermType::Tuple => get_tuple(term)
            .map(|items| {
                items
                    .into_iter()
                    .fold(0u64, |acc, t| acc.wrapping_add(read(t)))
            })
            .unwrap_or(0),
        _ => 0,
    }
}

/// A placement read with the codec's primitives: two lookups and the GPU map.
fn read_placement(term: Term) -> u64 {
    let ram = term
        .map_get(atoms::ram())
        .map_or(0, |t| t.decode::<u64>().unwrap_or(0));
    ram.wrapping_add(term.map_get(atoms::vram()).map_or(0, read_gpu_map))
}

/// A GPU map of byte counts or limits.
fn read_gpu_map(term: Term) -> u64 {
    let mut acc = 0u64;
    raw::for_each(term, |k, v| {
        let v = v.decode::<u64>().unwrap_or(0);
        acc = acc.wrapping_add(u64::from(k.decode::<u32>().unwrap_or(0)) ^ v);
        Ok::<(), ()>(())
    });
    acc
}

/// `check/3`'s arguments: the budget's keys by lookup, two placements.
#[rustler::nif]
fn floor_check(budget: Term, placement: Term, used: Term) -> Atom {
    let mode = budget.map_get(atoms::mode()).map(read).unwrap_or(0);
    let limits = [atoms::limit(), atoms::ram()]
        .into_iter()
        .filter_map(|key| budget.map_get(key).ok())
        .fold(mode, |acc, t| acc.wrapping_add(read(t)));
    let vram = budget.map_get(atoms::vram()).map_or(0, read_gpu_map);
    std::hint::black_box(
        limits
            .wrapping_add(vram)
            .wrapping_add(read_placement(placement))
            .wrapping_add(read_placement(used)),
    );
    atoms::ok()
}

/// `fold/2` and `release/2`'s arguments: two placements.
#[rustler::nif]
fn floor_usage(used: Term, placement: Term) -> Atom {
    std::hint::black_box(read_placement(used).wrapping_add(read_placement(placement)));
    atoms::ok()
}

/// `distribute/3`'s arguments: a byte count, each option's key and value,
/// a count.
#[rustler::nif]
fn floor_distribute(bytes: Term, opts: Term, n_gpus: Term) -> Atom {
    let opts = crate::decode::list(opts).map_or(0, |items| {
        items.fold(0u64, |acc, item| {
            let value = item.decode::<(Atom, Term)>().map_or(0, |(_, v)| read(v));
            acc.wrapping_add(value)
        })
    });
    std::hint::black_box(read(bytes).wrapping_add(opts).wrapping_add(read(n_gpus)));
    atoms::ok()
}

/// `resolve`'s arguments: the spec, each GPU's two keys by lookup, a count.
#[rustler::nif]
fn floor_resolve(spec: Term, gpus: Term, ram_limit: Term) -> Atom {
    let gpus = crate::decode::list(gpus).map_or(0, |items| {
        items.fold(0u64, |acc, gpu| {
            let index = gpu.map_get(atoms::gpu_index()).map_or(0, read);
            let free = gpu.map_get(atoms::memory_free()).map_or(0, read);
            acc.wrapping_add(index ^ free)
        })
    });
    std::hint::black_box(read(spec).wrapping_add(gpus).wrapping_add(read(ram_limit)));
    atoms::ok()
}

/// The decoding step of each call alone, timed apart from the call so that
/// a benchmark can split a call's time beyond its floor into decoding with
/// validation (this step minus the floor) and the rest: arithmetic, the
/// result term and the Elixir wrapper (the call minus this step). Each
/// reads its arguments with the codecs the call uses and returns `:ok`.
#[rustler::nif]
fn decode_only_check(budget: Term, placement: Term, used: Term) -> Atom {
    let (mut b, mut p, mut u) = (Budget::Unlimited, Placement::empty(), Placement::empty());
    let read = read_budget(budget, &mut b)
        .and_then(|_| read_in_place(placement, &mut p))
        .and_then(|_| read_in_place(used, &mut u));
    std::hint::black_box((read.is_ok(), &b, &p, &u));
    atoms::ok()
}

/// `fold/2` and `release/2`'s decoding step.
#[rustler::nif]
fn decode_only_usage(used: Term, placement: Term) -> Atom {
    let (mut u, mut p) = (Placement::empty(), Placement::empty());
    let read = read_in_place(used, &mut u).and_then(|_| read_in_place(placement, &mut p));
    std::hint::black_box((read.is_ok(), &u, &p));
    atoms::ok()
}

/// `distribute/3`'s decoding step: the byte count, the options, the count.
#[rustler::nif]
fn decode_only_distribute(bytes: Term, opts: Term, n_gpus: Term) -> Atom {
    let bytes = bytes.decode::<u64>().is_ok();
    let mut options = DistributeOptions::default();
    let opts = read_options(opts, OptionSet::Bytes, &mut options).is_ok();
    std::hint::black_box((bytes, opts, &options, gpu_count(n_gpus).is_ok()));
    atoms::ok()
}

/// `resolve/2`'s decoding step: the spec and the GPU list.
#[rustler::nif]
fn decode_only_resolve(spec: Term, gpus: Term) -> Atom {
    let mut list = Gpus::new();
    let read = read_gpus(gpus, &mut list).is_ok();
    std::hint::black_box((decode_spec(spec).ok(), read, &list));
    atoms::ok()
}

/// Each call up to its result: the decoding step and the core's work,
/// then `:ok` instead of the result term. The call minus this is the
/// result term and the Elixir wrapper; this minus the decoding step is the
/// core's work. (`check/3`'s result is `:ok` already.)
#[rustler::nif]
fn compute_only_usage(used: Term, placement: Term, release: bool) -> Atom {
    let (mut u, mut p) = (Placement::empty(), Placement::empty());
    let read = read_in_place(used, &mut u).and_then(|_| read_in_place(placement, &mut p));
    let done = read.is_ok()
        && if release {
            u.release_from(&p).is_ok()
        } else {
            u.fold_in(&p).is_ok()
        };
    std::hint::black_box((done, &u));
    atoms::ok()
}

/// `distribute/3` up to its result.
#[rustler::nif]
fn compute_only_distribute(bytes: Term, opts: Term, n_gpus: Term) -> Atom {
    let mut options = DistributeOptions::default();
    let mut placement = Placement::empty();
    let done = match (bytes.decode::<u64>(), gpu_count(n_gpus)) {
        (Ok(bytes), Ok(n)) if read_options(opts, OptionSet::Bytes, &mut options).is_ok() => {
            distribute_into(bytes, &options, n, &mut placement).is_ok()
        }
        _ => false,
    };
    std::hint::black_box((done, &placement));
    atoms::ok()
}

/// `resolve/2` up to its result.
#[rustler::nif]
fn compute_only_resolve(spec: Term, gpus: Term) -> Atom {
    let mut list = Gpus::new();
    let mut budget = Budget::Unlimited;
    let done = match (decode_spec(spec), read_gpus(gpus, &mut list)) {
        (Ok(spec), Ok(())) => {
            model_budget_core::budget::spec::resolve_into(&spec, 0, &list, &mut budget).is_ok()
        }
        _ => false,
    };
    std::hint::black_box((done, &budget));
    atoms::ok()
}

/// The floors with the call's result: each reads its arguments as its
/// floor does (no validation, no arithmetic), gathers the values it read
/// into the core's type as they come, and answers the result term the call
/// answers, built from them by the call's own encoder, with the same GPUs.
/// No implementation of a call can do less than this, so this over the
/// floor is the part of the target the result term alone takes.
///
/// A placement as read, unchecked (`used` and `placement` name the same
/// GPUs in the benchmark, so `fold/2`'s and `release/2`'s result has
/// `used`'s).
fn gather_placement(term: Term, out: &mut Placement) {
    out.ram = term
        .map_get(atoms::ram())
        .map_or(0, |t| t.decode::<u64>().unwrap_or(0));
    if let Ok(vram) = term.map_get(atoms::vram()) {
        raw::for_each(vram, |k, v| {
            out.vram
                .insert(k.decode::<u32>().unwrap_or(0), v.decode().unwrap_or(0));
            Ok::<(), ()>(())
        });
    }
}

/// `fold/2` and `release/2`'s floor with their result.
#[rustler::nif]
fn floor_result_usage<'a>(env: Env<'a>, used: Term<'a>, placement: Term<'a>) -> Term<'a> {
    let (mut u, mut p) = (Placement::empty(), Placement::empty());
    gather_placement(used, &mut u);
    gather_placement(placement, &mut p);
    std::hint::black_box(&p);
    encode_placement(env, &u)
}

/// `distribute/3`'s floor with its result: `bytes / n_gpus` on each GPU.
#[rustler::nif]
fn floor_result_distribute<'a>(
    env: Env<'a>,
    bytes: Term<'a>,
    opts: Term<'a>,
    n_gpus: Term<'a>,
) -> Term<'a> {
    let read_opts = crate::decode::list(opts).map_or(0, |items| {
        items.fold(0u64, |acc, item| {
            let value = item.decode::<(Atom, Term)>().map_or(0, |(_, v)| read(v));
            acc.wrapping_add(value)
        })
    });
    std::hint::black_box(read_opts);
    let bytes = bytes.decode::<u64>().unwrap_or(0);
    let n = n_gpus.decode::<u32>().unwrap_or(0);
    let mut placement = Placement::empty();
    for gpu in 0..n {
        placement.vram.insert(gpu, bytes / u64::from(n));
    }
    encode_placement(env, &placement)
}

/// `resolve/2`'s floor on `%{ram: bytes, vram: :auto}` with its result:
/// the RAM read, each GPU's free memory as its limit.
#[rustler::nif]
fn floor_result_resolve<'a>(env: Env<'a>, spec: Term<'a>, gpus: Term<'a>) -> Term<'a> {
    let ram = spec
        .map_get(atoms::ram())
        .map_or(0, |t| t.decode::<u64>().unwrap_or(0));
    std::hint::black_box(spec.map_get(atoms::vram()).map_or(0, read));
    let mut vram = GpuMap::new();
    if let Ok(items) = crate::decode::list(gpus) {
        for gpu in items {
            let index = gpu
                .map_get(atoms::gpu_index())
                .map_or(0, |t| t.decode::<u32>().unwrap_or(0));
            let free = gpu
                .map_get(atoms::memory_free())
                .map_or(0, |t| t.decode::<u64>().unwrap_or(0));
            vram.insert(index, Limit::Bytes(free));
        }
    }
    encode_per_device(env, Limit::Bytes(ram), &VramLimits::PerGpu(vram))
}
