//! `check/3`: `:ok` or `{:error, {:insufficient_memory, [device:, required:, available:]}}`.

use rustler::{Encoder, Env, Term};

use crate::badarg::{bad, reply};
use crate::codec::{encode_check, read_budget, read_placement, DeviceTerm};
use crate::{atoms, budget, placement};
use model_budget_core::{Budget, Placement};

#[rustler::nif]
fn check<'a>(env: Env<'a>, budget: Term<'a>, placement: Term<'a>, used: Term<'a>) -> Term<'a> {
    // Decoded in place: the inline GPU maps are never moved.
    let (mut b, mut added, mut usage) = (Budget::Unlimited, Placement::empty(), Placement::empty());
    let fast = read_budget(budget, &mut b)
        .and_then(|_| read_placement(placement, &mut added))
        .and_then(|_| read_placement(used, &mut usage));
    if fast.is_err() {
        // The slow decoders name the argument that is wrong.
        let explained = (|| {
            added = placement::decode(placement, "placement")?;
            usage = placement::decode(used, "used")?;
            b = budget::decode(budget)?;
            Ok(())
        })();
        if let Err(bad) = explained {
            return reply::<Term>(env, Err(bad));
        }
    }
    encode_check(env, model_budget_core::check(&b, &added, &usage))
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
