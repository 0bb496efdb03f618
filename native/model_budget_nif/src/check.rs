//! `check/3`: `:ok` or `{:error, {:insufficient_memory, [device:, required:, available:]}}`.

use rustler::{Encoder, Env, NifResult, Term};

use crate::badarg::{bad, reply};
use crate::codec::{encode_check, BudgetTerm, DeviceTerm, PlacementTerm};
use crate::{atoms, budget, placement};

#[rustler::nif]
fn check<'a>(env: Env<'a>, budget: Term<'a>, placement: Term<'a>, used: Term<'a>) -> Term<'a> {
    let fast = || -> NifResult<_> {
        Ok((
            budget.decode::<BudgetTerm>()?.0,
            placement.decode::<PlacementTerm>()?.0,
            used.decode::<PlacementTerm>()?.0,
        ))
    };
    let result = (|| {
        let (budget, placement, used) = match fast() {
            Ok(args) => args,
            Err(_) => (
                budget::decode(budget)?,
                placement::decode(placement, "placement")?,
                placement::decode(used, "used")?,
            ),
        };
        Ok(encode_check(
            env,
            model_budget_core::check(&budget, &placement, &used),
        ))
    })();
    reply(env, result)
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
