//! `mix model_budget.plan`'s questions: what is short, the longest context
//! that fits, the changes that would make a model fit; and byte sizes
//! written with units.

use model_budget_core::budget::constraint;
use model_budget_core::estimate::fit::{search, Search, Target};
use rustler::{Encoder, Env, Term};

use crate::badarg::{bad, reply};
use crate::codec::{CacheTypeTerm, DeviceTerm};
use crate::layout::placement_args;
use crate::{atoms, budget, placement};

rustler::atoms! {
    short,
    short_by,
    longest_context,
    cache_type,
}

/// `ModelBudget.Plan.fit_search/3`'s answer: a map with `:short` (a list of
/// `[device:, required:, available:, short_by:]`), `:n_ctx`, `:longest_context`,
/// `:n_gpu_layers`, `:cache_type` and `:cache_ram` (the last four `nil` when
/// absent).
fn search_term<'a>(env: Env<'a>, s: Search) -> Term<'a> {
    let short_list: Vec<Term> = s
        .short
        .into_iter()
        .map(|i| {
            [
                (atoms::device(), DeviceTerm::from(i.device).encode(env)),
                (atoms::required(), i.required.encode(env)),
                (atoms::available(), i.available.encode(env)),
                (short_by(), i.short_by().encode(env)),
            ]
            .encode(env)
        })
        .collect();
    let pairs = [
        (short().encode(env), short_list.encode(env)),
        (atoms::n_ctx().encode(env), s.n_ctx.encode(env)),
        (longest_context().encode(env), s.longest_context.encode(env)),
        (
            atoms::n_gpu_layers().encode(env),
            s.n_gpu_layers.encode(env),
        ),
        (
            cache_type().encode(env),
            s.cache_type.map(CacheTypeTerm).encode(env),
        ),
        (atoms::cache_ram().encode(env), s.cache_ram.encode(env)),
    ];
    let (keys, values): (Vec<Term>, Vec<Term>) = pairs.into_iter().unzip();
    // The keys are distinct atoms, so building the map cannot fail.
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| atoms::nil().encode(env))
}

/// A search places the model up to a few thousand times: a dirty CPU
/// scheduler keeps that off the normal schedulers.
#[rustler::nif(schedule = "DirtyCpu")]
fn fit_search<'a>(
    env: Env<'a>,
    model: Term<'a>,
    opts: Term<'a>,
    n_gpus: Term<'a>,
    budget: Term<'a>,
    used: Term<'a>,
) -> Term<'a> {
    let result = (|| {
        let (shape, opts, n_gpus) = placement_args(model, opts, n_gpus)?;
        let budget = budget::decode(budget)?;
        let used = placement::decode(used, "used")?;
        let target = Target {
            budget: &budget,
            used: &used,
            n_gpus,
        };
        Ok(search_term(env, search(&shape, &opts, target)?))
    })();
    reply(env, result)
}

/// `{:ok, bytes}`, or `{:error, message}` for text that is not a size.
#[rustler::nif]
fn plan_parse_size<'a>(env: Env<'a>, text: Term<'a>) -> Term<'a> {
    let result = match text.decode::<&str>() {
        Ok(s) => Ok(match constraint::parse_size(s) {
            Ok(n) => (atoms::ok(), n).encode(env),
            Err(e) => (atoms::error(), e.to_string()).encode(env),
        }),
        Err(_) => bad("text", "a string", text),
    };
    reply(env, result)
}
