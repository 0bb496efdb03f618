//! `placement()` terms: `%{ram: bytes, vram: %{gpu_index => bytes}}`.

use model_budget_core::Placement;
use rustler::{Encoder, Env, Term};

use crate::atoms;
use rustler::types::map::MapIterator;

use crate::badarg::{bad, reply, Decoded};
use crate::decode::{bytes, exact_map, index};

const EXPECTED: &str = "a map %{ram: bytes, vram: %{gpu_index => bytes}}";

pub fn decode<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, Placement> {
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
        let keys: Vec<Term> = self.0.vram.keys().map(|k| k.encode(env)).collect();
        let values: Vec<Term> = self.0.vram.values().map(|v| v.encode(env)).collect();
        let vram = Term::map_from_term_arrays(env, &keys, &values)
            .expect("distinct GPU indices make a valid map");
        Term::map_from_term_arrays(
            env,
            &[atoms::ram().encode(env), atoms::vram().encode(env)],
            &[self.0.ram.encode(env), vram],
        )
        .expect("two distinct keys make a valid map")
    }
}

#[rustler::nif]
fn empty_usage(env: Env) -> Term {
    Encoded(Placement::empty()).encode(env)
}

#[rustler::nif]
fn fold<'a>(env: Env<'a>, used: Term<'a>, placement: Term<'a>) -> Term<'a> {
    reply(
        env,
        (|| {
            let used = decode(used, "used")?;
            let placement = decode(placement, "placement")?;
            Ok(Encoded(used.fold(&placement)?))
        })(),
    )
}

#[rustler::nif]
fn release<'a>(env: Env<'a>, used: Term<'a>, placement: Term<'a>) -> Term<'a> {
    reply(
        env,
        (|| {
            let used = decode(used, "used")?;
            let placement = decode(placement, "placement")?;
            Ok(Encoded(used.release(&placement)?))
        })(),
    )
}
