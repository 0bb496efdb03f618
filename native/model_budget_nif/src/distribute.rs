//! `distribute/3`: load options in, `placement()` out.

use model_budget_core::estimate::distribute::{distribute_into, MAX_GPUS};
use model_budget_core::{DistributeOptions, OptionSet, Placement};

use rustler::{Env, Term};

use crate::badarg::{bad, reply, Decoded};
use crate::codec::encode_placement;
use crate::decode::bytes;
use crate::load_options::read_options;

/// The `n_gpus` argument.
pub fn gpu_count(term: Term) -> Decoded<u32> {
    match term.decode::<u32>() {
        Ok(n) if n <= MAX_GPUS => Ok(n),
        _ => bad("n_gpus", &format!("an integer in 0..{MAX_GPUS}"), term),
    }
}

/// The placement of a model of `file_bytes`.
#[rustler::nif]
fn distribute<'a>(
    env: Env<'a>,
    file_bytes: Term<'a>,
    opts: Term<'a>,
    n_gpus: Term<'a>,
) -> Term<'a> {
    let result = (|| {
        let file_bytes = bytes(file_bytes, "file_bytes")?;
        let mut options = DistributeOptions::default();
        read_options(opts, OptionSet::Bytes, &mut options)?;
        let n_gpus = gpu_count(n_gpus)?;
        // Written in place: a placement's GPU map is inline, a move copies it.
        let mut placement = Placement::empty();
        distribute_into(file_bytes, &options, n_gpus, &mut placement)?;
        Ok(encode_placement(env, &placement))
    })();
    reply(env, result)
}
