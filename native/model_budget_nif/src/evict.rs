//! `evict_choose`: the core's eviction chooser over a snapshot term, and
//! the snapshot's decoding for every eviction NIF.

use model_budget_core::budget::evict::{self, Choice, Free, Reason, Snapshot};
use model_budget_core::Placement;
use rustler::{Encoder, Env, NifTaggedEnum, ResourceArc, Term};

use crate::atoms;
use crate::badarg::{bad, reply, Decoded};
use crate::codec::{encode_placement, DeviceTerm, InsufficientTerm};
use crate::constraint::Compiled;
use crate::{budget, placement, raw};

rustler::atoms! {
    usage,
    resident_count,
    free,
    rules,
    constraint,
    constraint_ref = "ref",
}

/// `:constraint | {:does_not_fit, required, available}`.
#[derive(NifTaggedEnum)]
pub(crate) enum ReasonTerm {
    Constraint,
    DoesNotFit(u64, u64),
}

impl From<Reason> for ReasonTerm {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Constraint => ReasonTerm::Constraint,
            Reason::DoesNotFit {
                required,
                available,
            } => ReasonTerm::DoesNotFit(required, available),
        }
    }
}

const SNAPSHOT: &str = "a map with :budget, :usage, :resident_count, :free (nil or %{device => bytes}) and :rules (nil, or compiled rules: %{constraint: %ModelBudget.Constraint{}} or its reference)";

fn field<'a>(snapshot: Term<'a>, key: rustler::Atom) -> Decoded<'a, Term<'a>> {
    snapshot
        .map_get(key)
        .or_else(|_| bad("snapshot", SNAPSHOT, snapshot))
}

fn decode_free(term: Term) -> Decoded<Option<Free>> {
    if term.decode::<rustler::Atom>().ok() == Some(atoms::nil()) {
        return Ok(None);
    }
    let mut free = Free::default();
    let read = raw::for_each(term, |device, bytes| {
        let bytes = bytes.decode::<u64>()?;
        match device.decode::<DeviceTerm>()? {
            DeviceTerm::Total => free.total = bytes,
            DeviceTerm::Ram => free.ram = bytes,
            DeviceTerm::Gpu(g) => {
                free.gpus.insert(g, bytes);
            }
        }
        Ok::<(), rustler::Error>(())
    });
    match read {
        Some(Ok(())) => Ok(Some(free)),
        _ => bad(
            "snapshot :free",
            "nil or a map of devices (:total, :ram, {:gpu, i}) to bytes",
            term,
        ),
    }
}

/// `nil`, a compiled constraint's reference, or the manager's compiled
/// rules (`%{constraint: %ModelBudget.Constraint{ref: ref}}`), read where
/// they are.
fn decode_rules(term: Term) -> Decoded<Option<ResourceArc<Compiled>>> {
    if term.decode::<rustler::Atom>().ok() == Some(atoms::nil()) {
        return Ok(None);
    }
    let reference = if term.is_map() {
        term.map_get(constraint())
            .and_then(|c| c.map_get(constraint_ref()))
    } else {
        Ok(term)
    };
    reference.and_then(|r| r.decode()).map(Some).or_else(|_| {
        bad(
            "snapshot :rules",
            "nil or %{constraint: %ModelBudget.Constraint{}}",
            term,
        )
    })
}

/// A snapshot term, and its rules.
pub(crate) fn decode_snapshot(
    snapshot: Term,
) -> Decoded<(Snapshot, Option<ResourceArc<Compiled>>)> {
    let rules = decode_rules(field(snapshot, rules())?)?;
    let decoded = Snapshot {
        budget: budget::decode(field(snapshot, atoms::budget())?)?,
        usage: placement::decode(field(snapshot, usage())?, "snapshot :usage")?,
        resident_count: crate::decode::bytes(
            field(snapshot, resident_count())?,
            "snapshot :resident_count",
        )?,
        free: decode_free(field(snapshot, free())?)?,
    };
    Ok((decoded, rules))
}

/// A list of placements, argument `arg`.
pub(crate) fn decode_placements<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, Vec<Placement>> {
    let Ok(list) = crate::decode::list(term) else {
        return bad(arg, "a list of placements", term);
    };
    list.map(|p| placement::decode(p, arg)).collect()
}

/// `{:ok, [{index, device, reason}], usage}` or `{:error, {:insufficient_memory, details}}`.
pub(crate) fn encode_choice(env: Env, choice: Choice) -> Term {
    match choice {
        Choice::Room { evictions, usage } => {
            let list: Vec<Term> = evictions
                .iter()
                .map(|e| {
                    (
                        e.candidate,
                        DeviceTerm::from(e.device),
                        ReasonTerm::from(e.reason),
                    )
                        .encode(env)
                })
                .collect();
            (atoms::ok(), list, encode_placement(env, &usage)).encode(env)
        }
        Choice::Short(short) => (
            atoms::error(),
            (atoms::insufficient_memory(), InsufficientTerm(short)),
        )
            .encode(env),
    }
}

/// The chooser over every candidate: see [`encode_choice`].
#[rustler::nif]
fn evict_choose<'a>(
    env: Env<'a>,
    snapshot: Term<'a>,
    placement_term: Term<'a>,
    candidates: Term<'a>,
) -> Term<'a> {
    let result = (|| {
        let (snapshot, rules) = decode_snapshot(snapshot)?;
        let placement = placement::decode(placement_term, "placement")?;
        let candidates = decode_placements(candidates, "candidates")?;
        let choice = evict::choose(
            &snapshot,
            rules.as_ref().map(|r| &r.constraint),
            &placement,
            &candidates,
        )?;
        Ok(encode_choice(env, choice))
    })();
    reply(env, result)
}
