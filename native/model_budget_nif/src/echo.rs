//! One echo NIF per codec, as rustler's own test crate has: each decodes
//! its argument with the codec and encodes it back, so that ExUnit tests a
//! codec apart from the domain (`test/model_budget/native_codec_test.exs`).
//! A term the codec refuses raises `ArgumentError` (badarg).

use rustler::{Env, Term};

use crate::codec::{
    BudgetTerm, CacheTypeTerm, DeviceTerm, GpuMapTerm, InsufficientTerm, LimitTerm, ModeTerm,
    PlacementTerm, SplitModeTerm,
};
use model_budget_core::budget::spec::Limit;

#[rustler::nif]
fn echo_mode(t: ModeTerm) -> ModeTerm {
    t
}

#[rustler::nif]
fn echo_split_mode(t: SplitModeTerm) -> SplitModeTerm {
    t
}

#[rustler::nif]
fn echo_cache_type(t: CacheTypeTerm) -> CacheTypeTerm {
    t
}

#[rustler::nif]
fn echo_device(t: DeviceTerm) -> DeviceTerm {
    t
}

#[rustler::nif]
fn echo_limit(t: LimitTerm) -> LimitTerm {
    t
}

#[rustler::nif]
fn echo_gpu_bytes(t: GpuMapTerm<u64>) -> GpuMapTerm<u64> {
    t
}

#[rustler::nif]
fn echo_gpu_limits(t: GpuMapTerm<Limit>) -> GpuMapTerm<Limit> {
    t
}

#[rustler::nif]
fn echo_placement(t: PlacementTerm) -> PlacementTerm {
    t
}

#[rustler::nif]
fn echo_budget(t: BudgetTerm) -> BudgetTerm {
    t
}

#[rustler::nif]
fn echo_insufficient<'a>(env: Env<'a>, t: InsufficientTerm) -> Term<'a> {
    rustler::Encoder::encode(&t, env)
}
