//! The Erlang NIF boundary of ModelBudget: decode terms, call the core,
//! encode results. No budgeting logic lives here.

mod atoms;
mod badarg;
mod budget;
mod check;
mod decode;
mod distribute;
mod floor;
mod model;
mod placement;
mod system;

rustler::init!("Elixir.ModelBudget.Native");
