//! `check/3`: `:ok` or `{:error, {:insufficient_memory, [device:, required:, available:]}}`.

use rustler::{Encoder, Env, Term};

use crate::badarg::{bad, reply, Decoded};
use crate::codec::{encode_check, DeviceTerm};
use crate::raw::{read_budget, read_placement};
use crate::{atoms, budget, placement};
use model_budget_core::{Budget, Placement};

#[rustler::nif]
fn check<'a>(env: Env<'a>, budget: Term<'a>, placement: Term<'a>, used: Term<'a>) -> Term<'a> {
    let (mut b, mut added, mut usage) = (Budget::Unlimited, Placement::empty(), Placement::empty());
    match read_args([budget, placement, used], &mut b, &mut added, &mut usage) {
        Ok(()) => encode_check(env, model_budget_core::check(&b, &added, &usage)),
        Err(bad) => reply::<Term>(env, Err(bad)),
    }
}

/// `check/3`, and when it fits the room the placement leaves on the
/// devices it uses: `{:ok, bytes | :infinity}` or check's error.
#[rustler::nif]
fn room<'a>(env: Env<'a>, budget: Term<'a>, placement: Term<'a>, used: Term<'a>) -> Term<'a> {
    let (mut b, mut added, mut usage) = (Budget::Unlimited, Placement::empty(), Placement::empty());
    if let Err(bad) = read_args([budget, placement, used], &mut b, &mut added, &mut usage) {
        return reply::<Term>(env, Err(bad));
    }
    match model_budget_core::room(&b, &added, &usage) {
        Ok(Some(bytes)) => (atoms::ok(), bytes).encode(env),
        Ok(None) => (atoms::ok(), atoms::infinity()).encode(env),
        Err(short) => encode_check(env, Err(short)),
    }
}

/// A check's budget, placement and usage, read in place (the "check/3"
/// rows of bench/budget.exs: see `raw`); the first one refused is named.
fn read_args<'a>(
    [budget, placement, used]: [Term<'a>; 3],
    b: &mut Budget,
    added: &mut Placement,
    usage: &mut Placement,
) -> Decoded<'a, ()> {
    if read_budget(budget, b).is_err() {
        return bad("budget", budget::BUDGET, budget);
    }
    if read_placement(placement, added).is_err() {
        return bad("placement", placement::EXPECTED, placement);
    }
    if read_placement(used, usage).is_err() {
        return bad("used", placement::EXPECTED, used);
    }
    Ok(())
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
            match model_budget_core::budget::check::available(&budget, &used, d.into()) {
                Some(bytes) => bytes.encode(env),
                None => atoms::infinity().encode(env),
            },
        )
    })();
    reply(env, result)
}
