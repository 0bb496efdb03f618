//! The core's eviction steps around the chooser (`evict_choose`): whether a
//! placement needs room at all, the rule variables' values, the hand-over's
//! residuals, and a probe's free bytes by device. A manager admits in one
//! call (`evict_admit`).

use model_budget_core::budget::evict::{self, Free};
use model_budget_core::budget::handover;
use model_budget_core::Device;
use rustler::{Encoder, Env, Term};

use crate::atoms;
use crate::badarg::{bad, reply, Decoded};
use crate::codec::{DeviceTerm, GpuMapTerm};
use crate::evict::{decode_placements, decode_snapshot, ReasonTerm};
use crate::placement::{self, Encoded};
use crate::{budget, decode};

fn device(term: Term) -> Decoded<Device> {
    term.decode::<DeviceTerm>()
        .map(Device::from)
        .or_else(|_| bad("device", ":total, :ram or {:gpu, index}", term))
}

/// `nil` when `placement` fits and the rules hold nowhere (nothing to
/// evict), else `{device, reason}` for the first device that needs room.
#[rustler::nif]
fn evict_needs<'a>(env: Env<'a>, snapshot: Term<'a>, placement_term: Term<'a>) -> Term<'a> {
    let result = (|| {
        let (snapshot, rules) = decode_snapshot(snapshot)?;
        let placement = placement::decode(placement_term, "placement")?;
        let need = evict::needs(&snapshot, rules.as_ref().map(|r| &r.constraint), &placement)?;
        Ok(match need {
            None => atoms::nil().encode(env),
            Some((device, why)) => (DeviceTerm::from(device), ReasonTerm::from(why)).encode(env),
        })
    })();
    reply(env, result)
}

/// The rule variables' values on `device`, in `evict::VARIABLES` order.
#[rustler::nif]
fn evict_values<'a>(
    env: Env<'a>,
    snapshot: Term<'a>,
    placement_term: Term<'a>,
    device_term: Term<'a>,
) -> Term<'a> {
    let result = (|| {
        let (snapshot, _rules) = decode_snapshot(snapshot)?;
        let placement = placement::decode(placement_term, "placement")?;
        let values = evict::values(&snapshot, &placement, device(device_term)?);
        Ok(values.to_vec())
    })();
    reply(env, result)
}

/// What each evicted model still counts while a load takes its memory over.
#[rustler::nif]
fn evict_residuals<'a>(
    env: Env<'a>,
    budget_term: Term<'a>,
    evicted_term: Term<'a>,
    placement_term: Term<'a>,
) -> Term<'a> {
    let result = (|| {
        let budget = budget::decode(budget_term)?;
        let evicted = decode_placements(evicted_term, "evicted")?;
        let placement = placement::decode(placement_term, "placement")?;
        let residuals = handover::residuals(&budget, &evicted, &placement)?;
        Ok(residuals.into_iter().map(Encoded).collect::<Vec<_>>())
    })();
    reply(env, result)
}

/// `%{device => free bytes}` on the devices `placement` touches, from a
/// probe's RAM available bytes and GPUs' free bytes.
#[rustler::nif]
fn evict_free<'a>(
    env: Env<'a>,
    budget_term: Term<'a>,
    placement_term: Term<'a>,
    ram_term: Term<'a>,
    gpus_term: Term<'a>,
) -> Term<'a> {
    let result = (|| {
        let budget = budget::decode(budget_term)?;
        let placement = placement::decode(placement_term, "placement")?;
        let ram = decode::bytes(ram_term, "ram")?;
        let Ok(GpuMapTerm(gpus)) = gpus_term.decode::<GpuMapTerm<u64>>() else {
            return bad("gpus", "a map of GPU indices to bytes", gpus_term);
        };
        let free = Free::probed(ram, gpus);
        let mut map = Term::map_new(env);
        for d in evict::devices(&budget, &placement) {
            map = map
                .map_put(DeviceTerm::from(d).encode(env), free.on(d).encode(env))
                .or_else(|_| bad("placement", "a placement", placement_term))?;
        }
        Ok(map)
    })();
    reply(env, result)
}
