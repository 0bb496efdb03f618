//! `check/3`: `:ok` or `{:error, {:insufficient_memory, [device:, required:, available:]}}`.

use rustler::{Encoder, Env, NifResult, Term};

use crate::badarg::{bad, reply, Decoded};
use crate::codec::{encode_check, read_placement, BudgetTerm, DeviceTerm};
use crate::{atoms, budget, placement};
use model_budget_core::{Budget, Placement};

#[rustler::nif]
fn check<'a>(env: Env<'a>, budget: Term<'a>, placement: Term<'a>, used: Term<'a>) -> Term<'a> {
    let (mut added, mut usage) = (Placement::empty(), Placement::empty());
    let result = decode_args(budget, placement, used, &mut added, &mut usage)
        .map(|budget| encode_check(env, model_budget_core::check(&budget, &added, &usage)));
    reply(env, result)
}

/// `check/3`, and when it fits the room the placement leaves on the
/// devices it uses: `{:ok, bytes | :infinity}` or check's error.
#[rustler::nif]
fn room<'a>(env: Env<'a>, budget: Term<'a>, placement: Term<'a>, used: Term<'a>) -> Term<'a> {
    let (mut added, mut usage) = (Placement::empty(), Placement::empty());
    let result = decode_args(budget, placement, used, &mut added, &mut usage).map(|budget| {
        match model_budget_core::room(&budget, &added, &usage) {
            Ok(Some(bytes)) => (atoms::ok(), bytes).encode(env),
            Ok(None) => (atoms::ok(), atoms::infinity()).encode(env),
            Err(short) => encode_check(env, Err(short)),
        }
    });
    reply(env, result)
}

/// The budget, the placement and the usage of a check, read in place; the
/// slow decoders, which name the argument and the value, only when the fast
/// codecs refuse one.
fn decode_args<'a>(
    budget: Term<'a>,
    placement: Term<'a>,
    used: Term<'a>,
    added: &mut Placement,
    usage: &mut Placement,
) -> Decoded<'a, Budget> {
    let fast = |added: &mut Placement, usage: &mut Placement| -> NifResult<Budget> {
        let b = budget.decode::<BudgetTerm>()?.0;
        read_placement(placement, added)?;
        read_placement(used, usage)?;
        Ok(b)
    };
    match fast(added, usage) {
        Ok(b) => Ok(b),
        Err(_) => {
            *added = placement::decode(placement, "placement")?;
            *usage = placement::decode(used, "used")?;
            budget::decode(budget)
        }
    }
}

/// Bytes still free on a device given `used`, or `:infinity`: what a report
/// shows as "available" (the arithmetic stays in the core).
#[rustler::nif]
fn available<'a>(env: Env<'a>, budget: Term<'a>, used: Term<'a>, device: Term<'a>) -> Term<'a> {
    let result = (|| {
        let budget = budget::decode(budget)?;
        let used = placement::decode(used, "used")?;
        let Ok(d) = device.decode::<DeviceTerm>() else {
            return bad("device", ":total, :ram or {:gpu, index}", device);
        };
        Ok(
            match model_budget_core::check::available(&budget, &used, d.into()) {
                Some(bytes) => bytes.encode(env),
                None => atoms::infinity().encode(env),
            },
        )
    })();
    reply(env, result)
}
