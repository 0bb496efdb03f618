//! `check/3`: `:ok` or `{:error, {:insufficient_memory, [device:, required:, available:]}}`.

use model_budget_core::{Device, Insufficient};
use rustler::{Encoder, Env, Term};

use crate::atoms;
use crate::badarg::{reply, Decoded};
use crate::{budget, placement};

struct DeviceTerm(Device);

impl Encoder for DeviceTerm {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self.0 {
            Device::Total => atoms::total().encode(env),
            Device::Ram => atoms::ram().encode(env),
            Device::Gpu(i) => (atoms::gpu(), i).encode(env),
        }
    }
}

/// `[device:, required:, available:]`, in DESIGN.md's order.
pub struct Details(pub Insufficient);

impl Encoder for Details {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let details = [
            (atoms::device(), DeviceTerm(self.0.device).encode(env)),
            (atoms::required(), self.0.required.encode(env)),
            (atoms::available(), self.0.available.encode(env)),
        ];
        details.as_slice().encode(env)
    }
}

/// The error tuple.
struct Shortfall(Insufficient);

impl Encoder for Shortfall {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        (
            atoms::error(),
            (atoms::insufficient_memory(), Details(self.0)),
        )
            .encode(env)
    }
}

#[rustler::nif]
fn check<'a>(env: Env<'a>, budget: Term<'a>, placement: Term<'a>, used: Term<'a>) -> Term<'a> {
    let result: Decoded<Term> = (|| {
        let budget = budget::decode(budget)?;
        let placement = placement::decode(placement, "placement")?;
        let used = placement::decode(used, "used")?;
        Ok(match model_budget_core::check(&budget, &placement, &used) {
            Ok(()) => atoms::ok().encode(env),
            Err(short) => Shortfall(short).encode(env),
        })
    })();
    reply(env, result)
}
