//! Bad input: raised as `{:model_budget_badarg, arg, message[, value]}` and
//! turned into an `ArgumentError` by `ModelBudget`, which can `inspect` the
//! offending value the way Elixir users read it.

use rustler::{Encoder, Env, Term};

use crate::atoms;

/// An argument the NIF refuses, with the offending term when there is one.
pub struct BadArg<'a> {
    pub arg: String,
    pub message: String,
    pub value: Option<Term<'a>>,
}

/// Boxed so that the success path stays small (results are moved often).
pub type Decoded<'a, T> = Result<T, Box<BadArg<'a>>>;

/// A bad value: "invalid `arg`: expected `expected`, got: `value`".
pub fn bad<'a, T>(arg: &str, expected: &str, value: Term<'a>) -> Decoded<'a, T> {
    Err(Box::new(BadArg {
        arg: arg.to_owned(),
        message: format!("expected {expected}"),
        value: Some(value),
    }))
}

impl From<model_budget_core::Error> for Box<BadArg<'_>> {
    fn from(err: model_budget_core::Error) -> Self {
        match err {
            model_budget_core::Error::InvalidArgument { arg, message } => Box::new(BadArg {
                arg: arg.to_owned(),
                message,
                value: None,
            }),
            // Model reading answers these as `{:error, reason}` itself.
            other => Box::new(BadArg {
                arg: "model".to_owned(),
                message: other.to_string(),
                value: None,
            }),
        }
    }
}

/// Encodes `result`, or raises its error. Every NIF returns through this.
pub fn reply<'a, T: Encoder>(env: Env<'a>, result: Decoded<'a, T>) -> Term<'a> {
    match result {
        Ok(value) => value.encode(env),
        Err(bad) => {
            let reason = match bad.value {
                Some(value) => {
                    (atoms::model_budget_badarg(), bad.arg, bad.message, value).encode(env)
                }
                None => (atoms::model_budget_badarg(), bad.arg, bad.message).encode(env),
            };
            // SAFETY: enif_raise_exception returns a marker term that the NIF
            // must return as its result, which `reply`'s callers do.
            unsafe {
                Term::new(
                    env,
                    rustler::sys::enif_raise_exception(env.as_c_arg(), reason.as_c_arg()),
                )
            }
        }
    }
}
