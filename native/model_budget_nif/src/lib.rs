//! The Erlang NIF boundary of ModelBudget: decode terms, call the core,
//! encode results. No budgeting logic lives here.

mod admission;
mod atoms;
mod badarg;
mod budget;
mod check;
mod codec;
mod constraint;
mod decode;
mod devices;
mod distribute;
#[cfg(feature = "bench")]
mod echo;
mod evict;
mod evict_steps;
mod fit;
#[cfg(feature = "bench")]
mod floor;
mod gate;
mod json;
mod layout;
mod load_options;
mod matrix;
mod model;
mod placement;
mod raw;
mod runtime;
mod system;

rustler::init!("Elixir.ModelBudget.Native");
