//! The one hand-written codec: GPU maps (`%{gpu_index => value}`) read
//! with the VM's map iterator and built from stack arrays, and the
//! placements and budgets around them read in place and built the same
//! way. Every other term goes through the derived codecs in `codec`.
//!
//! Kept for the rows of `bench/budget.exs`, each measured against the
//! derived alternative on this 2-core machine (whole runs, and the two
//! side by side in one run):
//! - reading in place: with derived `NifMap`/`NifUntaggedEnum` decoders,
//!   which move budgets and placements through `Result`s, the "check/3"
//!   rows took about 120 ns more per call (combined, 1 GPU: 417 to 431 ns
//!   against 299 to 303);
//! - the VM's iterator instead of rustler's double-ended `MapIterator`: 60
//!   to 90 ns less per map of 8 GPUs ("check/3, per-device, 8 GPU(s)"
//!   reads three, "fold/2" and "release/2, 8 GPU(s)" two);
//! - maps built from stack arrays instead of derived `NifMap` encoders and
//!   `Term::map_from_arrays` (heap vectors): 40 to 100 ns less per
//!   placement or budget ("fold/2", "release/2", "distribute/3",
//!   "resolve/2 on %{ram: bytes, vram: :auto}").

use model_budget_core::budget::gpu_map::INLINE_GPUS;
use model_budget_core::budget::spec::{Budget, Limit, VramLimits};
use model_budget_core::{GpuMap, Placement};
use rustler::sys::{
    enif_make_map_from_arrays, enif_map_iterator_create, enif_map_iterator_destroy,
    enif_map_iterator_get_pair, enif_map_iterator_next, ErlNifMapIterator, ErlNifMapIteratorEntry,
    ErlNifTerm,
};
use rustler::{Atom, Decoder, Encoder, Env, Error, NifResult, Term};
use smallvec::SmallVec;
use std::mem::MaybeUninit;

use crate::atoms;
use crate::codec::{BudgetMode, LimitTerm};

/// A value a GPU map holds, through its term type (`u64` is its own).
pub trait GpuValue: Copy + From<Self::Term> + 'static {
    type Term: for<'a> Decoder<'a> + Encoder + From<Self>;
}

impl GpuValue for u64 {
    type Term = u64;
}

impl GpuValue for Limit {
    type Term = LimitTerm;
}

/// `%{gpu_index => value}` as the core's inline `GpuMap`. Small maps
/// iterate in key order, so each entry is an append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuMapTerm<V>(pub GpuMap<V>);

impl<'a, V: GpuValue> Decoder<'a> for GpuMapTerm<V> {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        let mut map = GpuMap::new();
        read_gpu_map(term, &mut map, |_| true)?;
        Ok(GpuMapTerm(map))
    }
}

/// Reads a GPU map into `map` (appending), keeping the entries `keep`
/// accepts.
fn read_gpu_map<V: GpuValue>(
    term: Term,
    map: &mut GpuMap<V>,
    keep: impl Fn(&V) -> bool,
) -> NifResult<()> {
    let read = for_each(term, |gpu, value| {
        let (gpu, value) = (gpu.decode()?, value.decode::<V::Term>()?.into());
        if keep(&value) {
            map.insert(gpu, value);
        }
        Ok(())
    });
    // A `match`, not `ok_or`: an eager `Error` is dropped on every success.
    match read {
        Some(result) => result,
        None => Err(Error::BadArg),
    }
}

/// A placement, exactly `%{ram: bytes, vram: %{gpu_index => bytes}}`,
/// read into `out` canonical (GPUs holding zero dropped).
pub fn read_placement(term: Term, out: &mut Placement) -> NifResult<()> {
    exact_size(term, 2)?;
    out.ram = term.map_get(atoms::ram())?.decode()?;
    out.vram.clear();
    read_gpu_map(term.map_get(atoms::vram())?, &mut out.vram, |b| *b > 0)
}

/// A resolved `budget()` read into `out`: the map's size tells its shape,
/// and its `:mode` must agree.
pub fn read_budget(term: Term, out: &mut Budget) -> NifResult<()> {
    let mode = term.map_get(atoms::mode())?.decode::<BudgetMode>()?;
    match (term.map_size()?, mode) {
        (1, BudgetMode::Unlimited) => *out = Budget::Unlimited,
        (2, BudgetMode::Combined) => match term.map_get(atoms::limit())?.decode()? {
            0 => return Err(Error::BadArg),
            limit => *out = Budget::Combined { limit },
        },
        (3, BudgetMode::PerDevice) => {
            let ram = term.map_get(atoms::ram())?.decode::<LimitTerm>()?.into();
            let limits = term.map_get(atoms::vram())?;
            if limits
                .decode::<Atom>()
                .is_ok_and(|a| a == atoms::infinity())
            {
                let vram = VramLimits::Infinity;
                *out = Budget::PerDevice { ram, vram };
                return Ok(());
            }
            // Read into the budget's own map: a move of it is a copy.
            let vram = VramLimits::PerGpu(GpuMap::new());
            *out = Budget::PerDevice { ram, vram };
            if let Budget::PerDevice {
                vram: VramLimits::PerGpu(map),
                ..
            } = out
            {
                read_gpu_map(limits, map, |_| true)?;
            }
        }
        _ => return Err(Error::BadArg),
    }
    Ok(())
}

/// A map of exactly `n` keys.
fn exact_size(term: Term, n: usize) -> NifResult<()> {
    if term.map_size()? == n {
        Ok(())
    } else {
        Err(Error::BadArg)
    }
}

impl<V: GpuValue> Encoder for GpuMapTerm<V> {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        encode_gpu_map(env, &self.0)
    }
}

/// A GPU map as a term, keys and values gathered on the stack.
fn encode_gpu_map<'a, V: GpuValue>(env: Env<'a>, map: &GpuMap<V>) -> Term<'a> {
    let mut keys = SmallVec::<[ErlNifTerm; INLINE_GPUS]>::with_capacity(map.len());
    let mut values = SmallVec::<[ErlNifTerm; INLINE_GPUS]>::with_capacity(map.len());
    for (gpu, value) in map.iter() {
        keys.push(gpu.encode(env).as_c_arg());
        values.push(V::Term::from(*value).encode(env).as_c_arg());
    }
    map_from_arrays(env, &keys, &values)
}

/// A placement as a term, without copying it.
pub fn encode_placement<'a>(env: Env<'a>, p: &Placement) -> Term<'a> {
    let keys = [atoms::ram(), atoms::vram()];
    let values = [p.ram.encode(env), encode_gpu_map(env, &p.vram)];
    map_from_arrays(
        env,
        &keys.map(|k| k.encode(env).as_c_arg()),
        &values.map(|v| v.as_c_arg()),
    )
}

/// A per-device budget as a term, without copying it.
pub fn encode_per_device<'a>(env: Env<'a>, ram: Limit, vram: &VramLimits) -> Term<'a> {
    let keys = [atoms::mode(), atoms::ram(), atoms::vram()];
    let values = [
        BudgetMode::PerDevice.encode(env),
        LimitTerm::from(ram).encode(env),
        match vram {
            VramLimits::Infinity => atoms::infinity().encode(env),
            VramLimits::PerGpu(map) => encode_gpu_map(env, map),
        },
    ];
    map_from_arrays(
        env,
        &keys.map(|k| k.encode(env).as_c_arg()),
        &values.map(|v| v.as_c_arg()),
    )
}

/// Calls `visit` on each `(key, value)` of `map`, in the map's order (key
/// order for maps of up to 32 keys), stopping at the first error. `None`
/// when `map` is not a map. (rustler's `MapIterator` is double-ended: each
/// step also checks the other end.)
pub fn for_each<'a, E>(
    map: Term<'a>,
    mut visit: impl FnMut(Term<'a>, Term<'a>) -> Result<(), E>,
) -> Option<Result<(), E>> {
    let env = map.get_env();
    let mut iter = MaybeUninit::<ErlNifMapIterator>::uninit();
    // SAFETY: `iter` is initialised by a successful create, then used and
    // destroyed once with the same env while `map` is alive (it is borrowed
    // for 'a); keys and values are terms of that env.
    unsafe {
        let head = ErlNifMapIteratorEntry::ERL_NIF_MAP_ITERATOR_HEAD;
        if enif_map_iterator_create(env.as_c_arg(), map.as_c_arg(), iter.as_mut_ptr(), head) == 0 {
            return None;
        }
        let iter = iter.assume_init_mut();
        let (mut key, mut value) = (MaybeUninit::uninit(), MaybeUninit::uninit());
        // The result leaves the loop by `break`, never overwritten: a
        // `Result` assigned over another is dropped first, and rustler's
        // error type has drop glue, a call per entry.
        let result = loop {
            let (k, v) = (key.as_mut_ptr(), value.as_mut_ptr());
            if enif_map_iterator_get_pair(env.as_c_arg(), iter, k, v) == 0 {
                break Ok(());
            }
            let (k, v) = (key.assume_init(), value.assume_init());
            if let Err(e) = visit(Term::new(env, k), Term::new(env, v)) {
                break Err(e);
            }
            enif_map_iterator_next(env.as_c_arg(), iter);
        };
        enif_map_iterator_destroy(env.as_c_arg(), iter);
        Some(result)
    }
}

/// A map from parallel arrays of keys and values; the keys are distinct.
fn map_from_arrays<'a>(env: Env<'a>, keys: &[ErlNifTerm], values: &[ErlNifTerm]) -> Term<'a> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut map = MaybeUninit::uninit();
    // SAFETY: both arrays hold `keys.len()` terms of `env`; the VM writes
    // `map` when it answers non-zero.
    unsafe {
        let (k, v, n) = (keys.as_ptr(), values.as_ptr(), keys.len());
        let made = enif_make_map_from_arrays(env.as_c_arg(), k, v, n, map.as_mut_ptr());
        assert!(made != 0, "map keys are distinct");
        Term::new(env, map.assume_init())
    }
}
