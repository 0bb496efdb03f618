//! The terms of the contract (DESIGN.md) as Rust types: derived codecs
//! (`NifUnitEnum`, `NifTaggedEnum`, `NifUntaggedEnum`, `NifMap`) with
//! `From` into the core's types. GPU maps, and the placement and budget
//! maps a budget call reads and answers, are the hand-written codec in
//! `raw`, which bench/budget.exs's rows need. A codec only answers whether a term is
//! well-formed; the NIF that called it names the argument and the value
//! when it is not. Every codec has an echo NIF (`echo.rs`) that
//! `test/model_budget/native_codec_test.exs` round-trips.

use model_budget_core::budget::spec::{Budget, Limit};
use model_budget_core::estimate::layout::kv::CacheType;
use model_budget_core::{Device, Insufficient, Mode, Placement, SplitMode};
use rustler::{
    Atom, Decoder, Encoder, Env, Error, NifMap, NifResult, NifTaggedEnum, NifUnitEnum,
    NifUntaggedEnum, Term,
};

use crate::atoms;
use crate::raw::{encode_per_device, read_budget, read_placement};
pub use crate::raw::{encode_placement, GpuMapTerm};

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

/// A KV cache type atom (`:q8_0`, ...), read and written by name through
/// the core's one table of cache types (`CacheType::ALL` and its names)
/// rather than a second list of them here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheTypeTerm(pub CacheType);

impl<'a> Decoder<'a> for CacheTypeTerm {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        CacheType::from_name(&term.atom_to_string()?)
            .map(CacheTypeTerm)
            .ok_or(Error::BadArg)
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

/// The atom `:infinity`.
#[derive(NifUnitEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Infinity {
    Infinity,
}

/// A byte count or `:infinity`.
#[derive(NifUntaggedEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitTerm {
    Bytes(u64),
    Unbounded(Infinity),
}

impl From<LimitTerm> for Limit {
    fn from(l: LimitTerm) -> Self {
        match l {
            LimitTerm::Bytes(b) => Limit::Bytes(b),
            LimitTerm::Unbounded(_) => Limit::Infinity,
        }
    }
}

impl From<Limit> for LimitTerm {
    fn from(l: Limit) -> Self {
        match l {
            Limit::Bytes(b) => LimitTerm::Bytes(b),
            Limit::Infinity => LimitTerm::Unbounded(Infinity::Infinity),
        }
    }
}

/// A placement term (`raw::read_placement`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementTerm(pub Placement);

impl<'a> Decoder<'a> for PlacementTerm {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        let mut placement = Placement::empty();
        read_placement(term, &mut placement)?;
        Ok(PlacementTerm(placement))
    }
}

impl Encoder for PlacementTerm {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        encode_placement(env, &self.0)
    }
}

/// The `:mode` of a budget map.
#[derive(NifUnitEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetMode {
    Unlimited,
    Combined,
    PerDevice,
}

#[derive(NifMap)]
#[rustler(encode)]
struct UnlimitedFields {
    mode: BudgetMode,
}

#[derive(NifMap)]
#[rustler(encode)]
struct CombinedFields {
    mode: BudgetMode,
    limit: u64,
}

/// A resolved `budget()` (`raw::read_budget`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetTerm(pub Budget);

impl<'a> Decoder<'a> for BudgetTerm {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        let mut budget = Budget::Unlimited;
        read_budget(term, &mut budget)?;
        Ok(BudgetTerm(budget))
    }
}

impl Encoder for BudgetTerm {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        encode_budget(env, &self.0)
    }
}

/// A budget as a term.
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
        Budget::PerDevice { ram, vram } => encode_per_device(env, *ram, vram),
    }
}

/// `[device: d, required: r, available: a]`, in DESIGN.md's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsufficientTerm(pub Insufficient);

impl Encoder for InsufficientTerm {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let Insufficient {
            device,
            required,
            available,
        } = self.0;
        [
            (atoms::device(), DeviceTerm::from(device).encode(env)),
            (atoms::required(), required.encode(env)),
            (atoms::available(), available.encode(env)),
        ]
        .encode(env)
    }
}

impl<'a> Decoder<'a> for InsufficientTerm {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        let items: Vec<(Atom, Term)> = crate::decode::proper(term)?.decode()?;
        match items[..] {
            [(k1, device), (k2, required), (k3, available)]
                if (k1, k2, k3) == (atoms::device(), atoms::required(), atoms::available()) =>
            {
                Ok(InsufficientTerm(Insufficient {
                    device: device.decode::<DeviceTerm>()?.into(),
                    required: required.decode()?,
                    available: available.decode()?,
                }))
            }
            _ => Err(Error::BadArg),
        }
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
