//! The runtime profile a llama.cpp build reports (`CpuBuffers`'s rules).

use model_budget_core::estimate::layout::cpu_buffers::CpuBuffers;
use rustler::{Atom, Env, Term};

use crate::badarg::{bad, reply};

/// The profile a `system_info:` line names, as its atom (`:x86_amx`, ...).
#[rustler::nif]
fn cpu_buffers_from_system_info<'a>(env: Env<'a>, line: Term<'a>) -> Term<'a> {
    let result = (|| {
        let Ok(text) = line.decode::<&str>() else {
            return bad("system_info", "a string", line);
        };
        let name = CpuBuffers::from_system_info(text).name();
        // The profiles' names are the core's fixed table: always atoms.
        Ok(Atom::from_str(env, name).unwrap_or_else(|_| crate::atoms::none()))
    })();
    reply(env, result)
}

/// The profile of a native llama.cpp build on this machine's CPU.
#[rustler::nif]
fn cpu_buffers_detect(env: Env) -> Term {
    let name = CpuBuffers::detect().name();
    let atom = Atom::from_str(env, name).unwrap_or_else(|_| crate::atoms::none());
    rustler::Encoder::encode(&atom, env)
}
