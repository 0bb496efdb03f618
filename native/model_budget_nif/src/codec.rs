//! Derived and hand-written codecs between terms and the core's types: the
//! fast path of every budget call. They decode straight into the core's
//! types (GPU maps inline, no intermediate collections) and build results
//! from stack arrays.
//!
//! A codec only answers "this term is well-formed" or not; when one fails,
//! the NIF re-reads its arguments with the slow decoders (`budget`,
//! `placement`, `options`), which say which argument was wrong and how.
//! So every term a codec accepts, the slow decoder accepts with the same
//! meaning; `test/model_budget/native_codec_test.exs` round-trips each.

use model_budget_core::budget::gpu_map::INLINE_GPUS;
use model_budget_core::budget::spec::{Budget, Limit, VramLimits};
use model_budget_core::estimate::layout::kv::CacheType;
use model_budget_core::{Device, GpuMap, Insufficient, Mode, Placement, SplitMode};
use rustler::sys::ErlNifTerm;
use rustler::{
    Atom, Decoder, Encoder, Env, Error, NifMap, NifResult, NifTaggedEnum, NifUnitEnum, Term,
};
use smallvec::SmallVec;

use crate::atoms;
use crate::raw::{self, raw};

/// `:server | :direct`.
#[derive(NifUnitEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeTerm {
    Server,
    Direct,
}

impl From<ModeTerm> for Mode {
    fn from(m: ModeTerm) -> Self {
        match m {
            ModeTerm::Server => Mode::Server,
            ModeTerm::Direct => Mode::Direct,
        }
    }
}

/// `:none | :layer | :row`.
#[derive(NifUnitEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitModeTerm {
    None,
    Layer,
    Row,
}

impl From<SplitModeTerm> for SplitMode {
    fn from(m: SplitModeTerm) -> Self {
        match m {
            SplitModeTerm::None => SplitMode::None,
            SplitModeTerm::Layer => SplitMode::Layer,
            SplitModeTerm::Row => SplitMode::Row,
        }
    }
}

/// A KV cache type atom (`:q8_0`, ...): the core's one table of cache
/// types (`CacheType::ALL` and its names), read and written by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheTypeTerm(pub CacheType);

impl<'a> Decoder<'a> for CacheTypeTerm {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        CacheType::from_name(&term.atom_to_string()?)
            .map(CacheTypeTerm)
            .ok_or(rustler::Error::BadArg)
    }
}

impl Encoder for CacheTypeTerm {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        Atom::from_str(env, self.0.name())
            .expect("cache type names are valid atoms")
            .encode(env)
    }
}

/// `:total | :ram | {:gpu, index}`.
#[derive(NifTaggedEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceTerm {
    Total,
    Ram,
    Gpu(u32),
}

impl From<Device> for DeviceTerm {
    fn from(d: Device) -> Self {
        match d {
            Device::Total => DeviceTerm::Total,
            Device::Ram => DeviceTerm::Ram,
            Device::Gpu(i) => DeviceTerm::Gpu(i),
        }
    }
}

impl From<DeviceTerm> for Device {
    fn from(d: DeviceTerm) -> Self {
        match d {
            DeviceTerm::Total => Device::Total,
            DeviceTerm::Ram => Device::Ram,
            DeviceTerm::Gpu(i) => Device::Gpu(i),
        }
    }
}

/// A byte count or `:infinity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitTerm(pub Limit);

impl<'a> Decoder<'a> for LimitTerm {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        if let Ok(bytes) = term.decode::<u64>() {
            return Ok(LimitTerm(Limit::Bytes(bytes)));
        }
        if term.decode::<Atom>()? == atoms::infinity() {
            return Ok(LimitTerm(Limit::Infinity));
        }
        Err(Error::BadArg)
    }
}

impl Encoder for LimitTerm {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self.0 {
            Limit::Bytes(b) => b.encode(env),
            Limit::Infinity => atoms::infinity().encode(env),
        }
    }
}

/// A value a GPU map holds, converted to and from its term.
pub trait GpuValue: Sized + Copy + 'static {
    fn decode_value(term: Term) -> NifResult<Self>;
    fn encode_value<'a>(&self, env: Env<'a>) -> Term<'a>;
}

impl GpuValue for u64 {
    fn decode_value(term: Term) -> NifResult<Self> {
        term.decode()
    }
    fn encode_value<'a>(&self, env: Env<'a>) -> Term<'a> {
        self.encode(env)
    }
}

impl GpuValue for Limit {
    fn decode_value(term: Term) -> NifResult<Self> {
        Ok(term.decode::<LimitTerm>()?.0)
    }
    fn encode_value<'a>(&self, env: Env<'a>) -> Term<'a> {
        LimitTerm(*self).encode(env)
    }
}

/// `%{gpu_index => value}`, decoded into the core's inline `GpuMap`. Small
/// maps iterate in key order, so each entry is an append.
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
    let read = raw::for_each(term, |gpu, value| {
        let (gpu, value) = (gpu.decode::<u32>()?, V::decode_value(value)?);
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

impl<V: GpuValue> Encoder for GpuMapTerm<V> {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        encode_gpu_map(env, &self.0)
    }
}

/// A GPU map as a term, keys and values gathered on the stack.
pub fn encode_gpu_map<'a, V: GpuValue>(env: Env<'a>, map: &GpuMap<V>) -> Term<'a> {
    // One pass over the entries, into vectors sized up front.
    let mut keys = SmallVec::<[ErlNifTerm; INLINE_GPUS]>::with_capacity(map.len());
    let mut values = SmallVec::<[ErlNifTerm; INLINE_GPUS]>::with_capacity(map.len());
    for (gpu, value) in map.as_slice() {
        keys.push(raw(gpu.encode(env)));
        values.push(raw(value.encode_value(env)));
    }
    raw::map_from_arrays(env, &keys, &values)
}

/// `%{ram: bytes, vram: %{gpu_index => bytes}}` and nothing else.
#[derive(NifMap)]
struct PlacementFields {
    ram: u64,
    vram: GpuMapTerm<u64>,
}

/// A placement term, decoded canonical (GPUs holding zero dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementTerm(pub Placement);

impl<'a> Decoder<'a> for PlacementTerm {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        exact_size(term, 2)?;
        let PlacementFields { ram, mut vram } = term.decode()?;
        vram.0.retain(|_, bytes| *bytes > 0);
        Ok(PlacementTerm(Placement { ram, vram: vram.0 }))
    }
}

/// What `PlacementTerm` decodes, read into `out` in place: the hot paths
/// use it so that the inline GPU map is written once instead of being
/// moved through each wrapper and `Result` on its way out.
pub fn read_placement(term: Term, out: &mut Placement) -> NifResult<()> {
    exact_size(term, 2)?;
    out.ram = term.map_get(atoms::ram())?.decode()?;
    out.vram.clear();
    read_gpu_map(term.map_get(atoms::vram())?, &mut out.vram, |bytes| {
        *bytes > 0
    })
}

impl Encoder for PlacementTerm {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        encode_placement(env, &self.0)
    }
}

/// A placement as a term, without copying it.
pub fn encode_placement<'a>(env: Env<'a>, p: &Placement) -> Term<'a> {
    raw::map_from_arrays(
        env,
        &[
            raw(atoms::ram().encode(env)),
            raw(atoms::vram().encode(env)),
        ],
        &[raw(p.ram.encode(env)), raw(encode_gpu_map(env, &p.vram))],
    )
}

/// GPU maps of up to this many entries, indexed 0, 1, 2, ... (what
/// `distribute/3` and `:auto` budgets give, and their folds), leave the NIF
/// as a tuple of their values: `ModelBudget` has a clause per size that
/// builds the map with literal keys (its `@dense_gpus` must agree;
/// `test/model_budget/native_codec_test.exs` fails otherwise).
/// The VM builds such a map from a literal key tuple without sorting; a map
/// a NIF builds has its keys copied and sorted first, about 150 ns for 8
/// GPUs against about 30 for the tuple and the literal map.
pub const DENSE_GPUS: usize = 16;

/// A GPU map as `ModelBudget` reads it from the budget calls: a tuple of
/// its values when it is dense (see `DENSE_GPUS`), else the map.
pub fn encode_gpus<'a, V: GpuValue>(env: Env<'a>, map: &GpuMap<V>) -> Term<'a> {
    let entries = map.as_slice();
    let dense = entries.len() <= DENSE_GPUS
        && entries
            .iter()
            .enumerate()
            .all(|(i, (gpu, _))| *gpu as usize == i);
    if !dense {
        return encode_gpu_map(env, map);
    }
    let mut values = [ErlNifTerm::default(); DENSE_GPUS];
    for (slot, (_, value)) in values.iter_mut().zip(entries) {
        *slot = raw(value.encode_value(env));
    }
    raw::tuple(env, &values[..entries.len()])
}

/// A placement as the tuple `ModelBudget` turns into `%{ram:, vram:}`:
/// `{ram}` with no GPU, `{ram, gpu, bytes}` with one, `{ram, vram}` with
/// more, where `vram` is `encode_gpus`'s: a tuple of bytes for GPUs 0, 1,
/// ..., else a map. Elixir builds small maps with literal keys in a few
/// nanoseconds, where a NIF takes about 50 per map (the VM copies and sorts
/// its keys on a fresh heap).
pub fn encode_usage<'a>(env: Env<'a>, p: &Placement) -> Term<'a> {
    match p.vram.as_slice() {
        [] => (p.ram,).encode(env),
        [(gpu, bytes)] => (p.ram, *gpu, *bytes).encode(env),
        _ => (p.ram, encode_gpus(env, &p.vram)).encode(env),
    }
}

/// A resolved per-device budget, as `encode_usage` answers placements:
/// `{:per_device, ram}` with an empty GPU map, `{:per_device, ram, gpu,
/// limit}` with one GPU, `{:per_device, ram, vram}` otherwise (`vram`:
/// `:infinity`, or `encode_gpus`'s tuple or map).
pub fn encode_per_device<'a>(env: Env<'a>, ram: Limit, vram: &VramLimits) -> Term<'a> {
    let (mode, ram) = (atoms::per_device(), LimitTerm(ram));
    match vram {
        VramLimits::PerGpu(map) => match map.as_slice() {
            [] => (mode, ram).encode(env),
            [(gpu, limit)] => (mode, ram, *gpu, LimitTerm(*limit)).encode(env),
            _ => (mode, ram, encode_gpus(env, map)).encode(env),
        },
        VramLimits::Infinity => (mode, ram, atoms::infinity()).encode(env),
    }
}

/// A map of exactly `n` keys: derived `NifMap` decoders ignore extra keys,
/// and the contract allows none.
fn exact_size(term: Term, n: usize) -> NifResult<()> {
    if term.map_size()? == n {
        Ok(())
    } else {
        Err(Error::BadArg)
    }
}

/// The `:mode` of a budget map.
#[derive(NifUnitEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BudgetMode {
    Unlimited,
    Combined,
    PerDevice,
}

#[derive(NifMap)]
struct UnlimitedFields {
    mode: BudgetMode,
}

#[derive(NifMap)]
struct CombinedFields {
    mode: BudgetMode,
    limit: u64,
}

/// A resolved `budget()`; the map's size tells its shape, the `:mode` must
/// agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetTerm(pub Budget);

impl<'a> Decoder<'a> for BudgetTerm {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        let mut budget = Budget::Unlimited;
        read_budget(term, &mut budget)?;
        Ok(BudgetTerm(budget))
    }
}

/// What `BudgetTerm` decodes, read into `out` in place (see
/// `read_placement`): a budget's inline GPU map is the largest value on
/// the `check/3` path, and each move of it is a copy.
pub fn read_budget(term: Term, out: &mut Budget) -> NifResult<()> {
    let size = term.map_size()?;
    match (size, term.map_get(atoms::mode())?.decode::<BudgetMode>()?) {
        (1, BudgetMode::Unlimited) => *out = Budget::Unlimited,
        (2, BudgetMode::Combined) => match term.map_get(atoms::limit())?.decode::<u64>()? {
            0 => return Err(Error::BadArg),
            limit => *out = Budget::Combined { limit },
        },
        (3, BudgetMode::PerDevice) => {
            let ram = term.map_get(atoms::ram())?.decode::<LimitTerm>()?.0;
            let vram = term.map_get(atoms::vram())?;
            if vram.decode::<Atom>().is_ok_and(|a| a == atoms::infinity()) {
                *out = Budget::PerDevice {
                    ram,
                    vram: VramLimits::Infinity,
                };
                return Ok(());
            }
            *out = Budget::PerDevice {
                ram,
                vram: VramLimits::PerGpu(GpuMap::new()),
            };
            if let Budget::PerDevice {
                vram: VramLimits::PerGpu(map),
                ..
            } = out
            {
                read_gpu_map(vram, map, |_| true)?;
            }
        }
        _ => return Err(Error::BadArg),
    }
    Ok(())
}

impl Encoder for BudgetTerm {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        encode_budget(env, &self.0)
    }
}

/// A budget as a term, without copying it.
pub fn encode_budget<'a>(env: Env<'a>, budget: &Budget) -> Term<'a> {
    match budget {
        Budget::Unlimited => UnlimitedFields {
            mode: BudgetMode::Unlimited,
        }
        .encode(env),
        Budget::Combined { limit } => CombinedFields {
            mode: BudgetMode::Combined,
            limit: *limit,
        }
        .encode(env),
        Budget::PerDevice { ram, vram } => raw::map_from_arrays(
            env,
            &[
                raw(atoms::mode().encode(env)),
                raw(atoms::ram().encode(env)),
                raw(atoms::vram().encode(env)),
            ],
            &[
                raw(BudgetMode::PerDevice.encode(env)),
                raw(LimitTerm(*ram).encode(env)),
                raw(VramLimitsTerm(vram).encode(env)),
            ],
        ),
    }
}

/// A per-device budget's `:vram`: `:infinity` or `%{gpu_index => limit}`.
struct VramLimitsTerm<'v>(pub &'v VramLimits);

impl Encoder for VramLimitsTerm<'_> {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self.0 {
            VramLimits::Infinity => atoms::infinity().encode(env),
            VramLimits::PerGpu(map) => encode_gpu_map(env, map),
        }
    }
}

/// `[device: d, required: r, available: a]`, in DESIGN.md's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsufficientTerm(pub Insufficient);

impl Encoder for InsufficientTerm {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let items = [
            raw((atoms::device(), DeviceTerm::from(self.0.device)).encode(env)),
            raw((atoms::required(), self.0.required).encode(env)),
            raw((atoms::available(), self.0.available).encode(env)),
        ];
        raw::list(env, &items)
    }
}

impl<'a> Decoder<'a> for InsufficientTerm {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        let [(k1, device), (k2, required), (k3, available)]: [(Atom, Term); 3] = {
            let items: Vec<(Atom, Term)> = crate::decode::proper(term)?.decode()?;
            items.try_into().map_err(|_| Error::BadArg)?
        };
        if (k1, k2, k3) != (atoms::device(), atoms::required(), atoms::available()) {
            return Err(Error::BadArg);
        }
        Ok(InsufficientTerm(Insufficient {
            device: device.decode::<DeviceTerm>()?.into(),
            required: required.decode()?,
            available: available.decode()?,
        }))
    }
}

/// `:ok` or `{:error, {:insufficient_memory, details}}`: `check/3`'s answer.
pub fn encode_check<'a>(env: Env<'a>, result: Result<(), Insufficient>) -> Term<'a> {
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(short) => (
            atoms::error(),
            (atoms::insufficient_memory(), InsufficientTerm(short)),
        )
            .encode(env),
    }
}
