//! `check/3`: `:ok` or `{:error, {:insufficient_memory, [device:, required:, available:]}}`.

use rustler::{Encoder, Env, NifResult, Term};

use crate::badarg::{bad, reply};
use crate::codec::{encode_check, read_placement, BudgetTerm, DeviceTerm};
use crate::{atoms, budget, placement};
use model_budget_core::{Budget, Placement};

#[rustler::nif]
fn check<'a>(env: Env<'a>, budget: Term<'a>, placement: Term<'a>, used: Term<'a>) -> Term<'a> {
    let (mut added, mut usage) = (Placement::empty(), Placement::empty());
    let fast = |added: &mut Placement, usage: &mut Placement| -> NifResult<Budget> {
        let b = budget.decode::<BudgetTerm>()?.0;
        read_placement(placement, added)?;
        read_placement(used, usage)?;
        Ok(b)
    };
    let result = (|| {
        let budget = match fast(&mut added, &mut usage) {
            Ok(b) => b,
            Err(_) => {
                added = placement::decode(placement, "placement")?;
                usage = placement::decode(used, "used")?;
                budget::decode(budget)?
            }
        };
        Ok(encode_check(
            env,
            model_budget_core::check(&budget, &added, &usage),
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
