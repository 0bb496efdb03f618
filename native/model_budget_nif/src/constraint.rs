//! Constraint expressions: compiled once into a resource, evaluated against a
//! map of variable values.

use model_budget_core::budget::constraint::{CompileError, Constraint};
use rustler::{Atom, Binary, Encoder, Env, ResourceArc, Term, TermType};

use crate::atoms;
use crate::badarg::{bad, reply, Decoded};

rustler::atoms! {
    invalid_constraint,
}

pub(crate) struct Compiled {
    pub(crate) constraint: Constraint,
    /// Each variable's atom, where one existed at compile time, so that the
    /// usual atom-keyed values map is read without an atom-table lookup.
    atoms: Vec<Option<Atom>>,
}

#[rustler::resource_impl]
impl rustler::Resource for Compiled {}

/// `{:ok, {ref, variables, used_variables}}` or
/// `{:error, {:invalid_constraint, expression, message, column}}`. On a dirty
/// scheduler: a list of rules may take longer than a NIF should block for.
#[rustler::nif(schedule = "DirtyCpu")]
fn constraint_compile<'a>(env: Env<'a>, expressions: Term<'a>, variables: Term<'a>) -> Term<'a> {
    let result: Decoded<Term> = (|| {
        let sources = list(expressions, "expressions", "a list of strings", |t| {
            t.decode::<Binary>().ok().map(|b| (t, b))
        })?;
        let names = list(variables, "variables", "a list of atoms or strings", name)?;
        let texts: Vec<&[u8]> = sources.iter().map(|(_, b)| b.as_slice()).collect();
        let constraint = match Constraint::compile(&texts, &names) {
            Ok(constraint) => constraint,
            Err(CompileError::Expression(e)) => {
                let source = sources[e.index].0;
                let reason = (invalid_constraint(), source, e.message, e.column);
                return Ok((atoms::error(), reason).encode(env));
            }
            Err(CompileError::Argument(e)) => return Err(e.into()),
        };
        let declared = constraint.variables();
        let used: Vec<&str> = constraint
            .used_variables()
            .map(|i| declared[i].as_str())
            .collect();
        let reply = (declared, used).encode(env);
        let atoms = declared
            .iter()
            .map(|n| Atom::existing_from_bytes(env, n.as_bytes()).ok())
            .collect();
        let resource = ResourceArc::new(Compiled { constraint, atoms });
        Ok((atoms::ok(), (resource, reply)).encode(env))
    })();
    reply(env, result)
}

/// Whether any rule holds. `values` maps each variable a rule reads (atom or
/// string key; the atom wins when both are present) to an integer.
#[rustler::nif]
fn constraint_met<'a>(env: Env<'a>, constraint: Term<'a>, values: Term<'a>) -> Term<'a> {
    let result: Decoded<bool> = (|| {
        let Ok(compiled) = constraint.decode::<ResourceArc<Compiled>>() else {
            return bad("constraint", "a compiled constraint", constraint);
        };
        if values.get_type() != TermType::Map {
            return bad("values", "a map of variable names to integers", values);
        }
        let declared = compiled.constraint.variables();
        let mut slots = vec![0i128; declared.len()];
        for i in compiled.constraint.used_variables() {
            let name = &declared[i];
            let Some(value) = lookup(env, values, name, compiled.atoms[i]) else {
                return bad(
                    "values",
                    &format!("an integer for the variable `{name}` (missing from the map)"),
                    values,
                );
            };
            slots[i] = match value.decode::<i64>() {
                Ok(v) => i128::from(v),
                Err(_) => match value.decode::<u64>() {
                    Ok(v) => i128::from(v),
                    Err(_) => {
                        return bad(
                            "values",
                            &format!(
                                "an integer between -2^63 and 2^64 - 1 for the variable `{name}`"
                            ),
                            value,
                        )
                    }
                },
            };
        }
        Ok(compiled.constraint.met(&slots)?)
    })();
    reply(env, result)
}

fn lookup<'a>(env: Env<'a>, map: Term<'a>, name: &str, atom: Option<Atom>) -> Option<Term<'a>> {
    let atom = atom.or_else(|| Atom::existing_from_bytes(env, name.as_bytes()).ok());
    atom.and_then(|a| map.map_get(a).ok())
        .or_else(|| map.map_get(name).ok())
}

/// A variable name given as an atom or a UTF-8 string.
fn name(term: Term) -> Option<String> {
    if term.is_atom() {
        term.atom_to_string().ok()
    } else {
        term.decode::<String>().ok()
    }
}

/// Decodes every element of a proper list, or names the whole list as bad.
fn list<'a, T>(
    term: Term<'a>,
    arg: &str,
    expected: &str,
    element: impl Fn(Term<'a>) -> Option<T>,
) -> Decoded<'a, Vec<T>> {
    let items: Option<Vec<T>> = crate::decode::list(term)
        .ok()
        .and_then(|items| items.map(&element).collect());
    items.map_or_else(|| bad(arg, expected, term), Ok)
}
