//! The admission ledger as a NIF resource: the budget and the usage stay on
//! the Rust side, and only each new placement crosses the boundary. A mutex
//! makes each admission one step, whichever process calls.

use model_budget_core::budget::admission::Admissions;
use parking_lot::Mutex;
use rustler::{Encoder, Env, NifResult, ResourceArc, Term};

use crate::atoms;
use crate::badarg::{bad, reply, Decoded};
use crate::codec::{encode_check, encode_placement, PlacementTerm};
use crate::{budget, placement};

struct Ledger(Mutex<Admissions>);

#[rustler::resource_impl]
impl rustler::Resource for Ledger {}

fn ledger<'a>(term: Term<'a>) -> Decoded<'a, ResourceArc<Ledger>> {
    term.decode()
        .or_else(|_| bad("ledger", "a ledger from ModelBudget.Ledger.new/1", term))
}

#[rustler::nif]
fn ledger_new<'a>(env: Env<'a>, budget_term: Term<'a>) -> Term<'a> {
    let result = budget::decode(budget_term)
        .map(|b| ResourceArc::new(Ledger(Mutex::new(Admissions::new(b)))).encode(env));
    reply(env, result)
}

/// `:ok` (and the usage grows), or check's error (and nothing changes).
#[rustler::nif]
fn ledger_admit<'a>(env: Env<'a>, ledger_term: Term<'a>, placement_term: Term<'a>) -> Term<'a> {
    let fast = || -> NifResult<_> {
        Ok((
            ledger_term.decode::<ResourceArc<Ledger>>()?,
            placement_term.decode::<PlacementTerm>()?.0,
        ))
    };
    let result = (|| {
        let (ledger, placement) = match fast() {
            Ok(args) => args,
            Err(_) => (
                ledger(ledger_term)?,
                placement::decode(placement_term, "placement")?,
            ),
        };
        let admitted = ledger.0.lock().admit(&placement)?;
        Ok(encode_check(env, admitted))
    })();
    reply(env, result)
}

#[rustler::nif]
fn ledger_release<'a>(env: Env<'a>, ledger_term: Term<'a>, placement_term: Term<'a>) -> Term<'a> {
    let result = (|| {
        let ledger = ledger(ledger_term)?;
        let placement = placement::decode(placement_term, "placement")?;
        ledger.0.lock().release(&placement)?;
        Ok(atoms::ok().encode(env))
    })();
    reply(env, result)
}

#[rustler::nif]
fn ledger_usage<'a>(env: Env<'a>, ledger_term: Term<'a>) -> Term<'a> {
    let result = ledger(ledger_term).map(|l| encode_placement(env, &l.0.lock().usage));
    reply(env, result)
}
