//! `check/3`: `:ok` or `{:error, {:insufficient_memory, [device:, required:, available:]}}`.

use rustler::{Env, NifResult, Term};

use crate::badarg::reply;
use crate::codec::{encode_check, BudgetTerm, PlacementTerm};
use crate::{budget, placement};

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
