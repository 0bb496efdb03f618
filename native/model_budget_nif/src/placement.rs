//! `placement()` terms: `%{ram: bytes, vram: %{gpu_index => bytes}}`, and
//! the usage arithmetic over them.

use model_budget_core::Placement;
use rustler::{Encoder, Env, Term};

use crate::badarg::{bad, reply, Decoded};
use crate::codec::{encode_placement, PlacementTerm};
use crate::raw::read_placement;

pub const EXPECTED: &str = "a map %{ram: bytes, vram: %{gpu_index => bytes}}";

/// A placement argument named `arg`; a term the codec refuses is named
/// whole (a bad byte count reads best in context).
pub fn decode<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, Placement> {
    match term.decode::<PlacementTerm>() {
        Ok(p) => Ok(p.0),
        Err(_) => bad(arg, EXPECTED, term),
    }
}

/// Encoder for a core placement.
pub struct Encoded(pub Placement);

impl Encoder for Encoded {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        encode_placement(env, &self.0)
    }
}

#[rustler::nif]
fn empty_usage(env: Env) -> Term {
    encode_placement(env, &Placement::empty())
}

/// `used` with `placement` applied by `op`, both read in place (the
/// "fold/2" and "release/2" rows of bench/budget.exs: see `raw`).
fn usage_op<'a>(
    env: Env<'a>,
    used: Term<'a>,
    placement: Term<'a>,
    op: fn(&mut Placement, &Placement) -> model_budget_core::Result<()>,
) -> Term<'a> {
    let (mut usage, mut added) = (Placement::empty(), Placement::empty());
    let result = (|| {
        if read_placement(used, &mut usage).is_err() {
            return bad("used", EXPECTED, used);
        }
        if read_placement(placement, &mut added).is_err() {
            return bad("placement", EXPECTED, placement);
        }
        op(&mut usage, &added)?;
        Ok(encode_placement(env, &usage))
    })();
    reply(env, result)
}

/// `used` with `placement` added (`ModelBudget.fold/2`).
#[rustler::nif]
fn fold<'a>(env: Env<'a>, used: Term<'a>, placement: Term<'a>) -> Term<'a> {
    usage_op(env, used, placement, Placement::fold_in)
}

/// `used` with `placement` taken out (`ModelBudget.release/2`).
#[rustler::nif]
fn release<'a>(env: Env<'a>, used: Term<'a>, placement: Term<'a>) -> Term<'a> {
    usage_op(env, used, placement, Placement::release_from)
}
