//! `placement()` terms: `%{ram: bytes, vram: %{gpu_index => bytes}}`, and
//! the usage arithmetic over them. The codec in `codec` is the fast path;
//! `explain` says what is wrong with a term it refused.

use model_budget_core::Placement;
use rustler::types::map::MapIterator;
use rustler::{Encoder, Env, Term};

use crate::atoms;
use crate::badarg::{bad, reply, Decoded};
use crate::codec::{encode_placement, encode_usage, read_placement};
use crate::decode::{bytes, exact_map, index};

const EXPECTED: &str = "a map %{ram: bytes, vram: %{gpu_index => bytes}}";

/// A placement argument named `arg`: the codec, or on failure the explanation.
pub fn decode<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, Placement> {
    let mut placement = Placement::empty();
    match read_placement(term, &mut placement) {
        Ok(()) => Ok(placement),
        Err(_) => explain(term, arg),
    }
}

fn explain<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, Placement> {
    let [ram, vram] = exact_map(term, [atoms::ram(), atoms::vram()], arg, EXPECTED)?;
    // The whole placement is shown on error: a bad byte count reads best in context.
    let Ok(ram) = bytes(ram, arg) else {
        return bad(arg, EXPECTED, term);
    };
    let mut placement = Placement::in_ram(ram);
    let Some(entries) = MapIterator::new(vram) else {
        return bad(arg, EXPECTED, term);
    };
    for (gpu, b) in entries {
        let (Ok(gpu), Ok(b)) = (index(gpu, arg), bytes(b, arg)) else {
            return bad(arg, EXPECTED, term);
        };
        placement.vram.insert(gpu, b);
    }
    Ok(placement.canonical())
}

/// Encoder for a core placement.
pub struct Encoded(pub Placement);

impl Encoder for Encoded {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        encode_placement(env, &self.0)
    }
}

#[rustler::nif]
fn empty_usage(env: Env) -> Term {
    encode_placement(env, &Placement::empty())
}

/// Applies `op` to the decoded usage in place and answers `{ram, vram}`
/// (see `encode_usage`). The slow decoders only run when the codec refused
/// an argument.
fn usage_op<'a>(
    env: Env<'a>,
    used: Term<'a>,
    placement: Term<'a>,
    op: fn(&mut Placement, &Placement) -> model_budget_core::Result<()>,
) -> Term<'a> {
    let (mut usage, mut added) = (Placement::empty(), Placement::empty());
    let result = (|| {
        let fast =
            read_placement(used, &mut usage).and_then(|_| read_placement(placement, &mut added));
        if fast.is_err() {
            usage = decode(used, "used")?;
            added = decode(placement, "placement")?;
        }
        op(&mut usage, &added)?;
        Ok(encode_usage(env, &usage))
    })();
    reply(env, result)
}

/// `{ram, vram}` of `used` with `placement` added (`ModelBudget.fold/2`).
#[rustler::nif]
fn fold<'a>(env: Env<'a>, used: Term<'a>, placement: Term<'a>) -> Term<'a> {
    usage_op(env, used, placement, Placement::fold_in)
}

/// `{ram, vram}` of `used` with `placement` taken out (`ModelBudget.release/2`).
#[rustler::nif]
fn release<'a>(env: Env<'a>, used: Term<'a>, placement: Term<'a>) -> Term<'a> {
    usage_op(env, used, placement, Placement::release_from)
}
