//! JSON through serde_json: any term made of maps, lists, strings, numbers,
//! booleans, `nil` and atoms to text, and JSON text back to terms. Elixir
//! here has no JSON library (no hex packages), and the plan task's `--json`
//! output must be exact.

use rustler::types::map::MapIterator;
use rustler::{Atom, Binary, Encoder, Env, NewBinary, Term, TermType};
use serde_json::{Map, Number, Value};

use crate::atoms;
use crate::badarg::{bad, reply, Decoded};
use crate::decode::atom;

rustler::atoms! {
    pretty,
}

/// Nesting deeper than this is refused both ways, so neither the encoder's
/// recursion nor the decoded term can grow without bound (serde_json's
/// parser stops at 128 levels as well).
const MAX_DEPTH: usize = 128;

const ENCODABLE: &str =
    "a map, list, string (UTF-8), integer below 2^64 in magnitude, float, boolean, nil or atom";

fn to_value<'a>(term: Term<'a>, depth: usize) -> Decoded<'a, Value> {
    if depth > MAX_DEPTH {
        return bad(
            "term",
            &format!("data nested at most {MAX_DEPTH} levels deep"),
            term,
        );
    }
    Ok(match term.get_type() {
        TermType::Atom => match atom(term) {
            Some(a) if a == atoms::nil() => Value::Null,
            Some(a) if a == rustler::types::atom::true_() => Value::Bool(true),
            Some(a) if a == rustler::types::atom::false_() => Value::Bool(false),
            _ => Value::String(
                term.atom_to_string()
                    .or_else(|_| bad("term", ENCODABLE, term))?,
            ),
        },
        TermType::Binary => match term.decode::<&str>() {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => return bad("term", "strings that are valid UTF-8", term),
        },
        TermType::Integer => match (term.decode::<i64>(), term.decode::<u64>()) {
            (Ok(n), _) => Value::from(n),
            (_, Ok(n)) => Value::from(n),
            _ => return bad("term", "integers of magnitude below 2^64", term),
        },
        TermType::Float => match term.decode::<f64>().ok().and_then(Number::from_f64) {
            Some(n) => Value::Number(n),
            None => return bad("term", ENCODABLE, term),
        },
        TermType::List => {
            let mut items = Vec::new();
            let mut rest = term;
            while !rest.is_empty_list() {
                let Ok((head, tail)) = rest.list_get_cell() else {
                    return bad("term", "proper lists", term);
                };
                items.push(to_value(head, depth + 1)?);
                rest = tail;
            }
            Value::Array(items)
        }
        TermType::Map => {
            let mut object = Map::new();
            let Some(entries) = MapIterator::new(term) else {
                return bad("term", ENCODABLE, term);
            };
            for (key, value) in entries {
                let name = key_name(key)?;
                if object.insert(name, to_value(value, depth + 1)?).is_some() {
                    return bad(
                        "term",
                        "maps whose keys stay distinct as JSON strings",
                        term,
                    );
                }
            }
            Value::Object(object)
        }
        _ => return bad("term", ENCODABLE, term),
    })
}

/// Object keys: atoms, strings and integers, as JSON strings.
fn key_name(key: Term) -> Decoded<String> {
    match key.get_type() {
        TermType::Atom => key
            .atom_to_string()
            .or_else(|_| bad("term", "map keys that are atoms, strings or integers", key)),
        TermType::Binary => key
            .decode::<&str>()
            .map(str::to_owned)
            .or_else(|_| bad("term", "map keys that are valid UTF-8", key)),
        TermType::Integer => match (key.decode::<i64>(), key.decode::<u64>()) {
            (Ok(n), _) => Ok(n.to_string()),
            (_, Ok(n)) => Ok(n.to_string()),
            _ => bad("term", "integer map keys of magnitude below 2^64", key),
        },
        _ => bad("term", "map keys that are atoms, strings or integers", key),
    }
}

fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut out = NewBinary::new(env, bytes.len());
    out.as_mut_slice().copy_from_slice(bytes);
    Binary::from(out).to_term(env)
}

/// JSON text of `term`; `opts` is `[]` or `[pretty: true]` (two-space
/// indents). Object keys come out sorted.
#[rustler::nif(schedule = "DirtyCpu")]
fn json_encode<'a>(env: Env<'a>, term: Term<'a>, opts: Term<'a>) -> Term<'a> {
    let result = (|| {
        let pretty_output =
            match crate::decode::proper(opts).and_then(|o| o.decode::<Vec<(Atom, bool)>>()) {
                Ok(list) if list.iter().all(|(k, _)| *k == pretty()) => {
                    list.first().is_some_and(|(_, v)| *v)
                }
                _ => return bad("opts", "[] or [pretty: boolean]", opts),
            };
        let value = to_value(term, 0)?;
        let text = if pretty_output {
            serde_json::to_vec_pretty(&value)
        } else {
            serde_json::to_vec(&value)
        };
        match text {
            Ok(bytes) => Ok(binary(env, &bytes)),
            // Writing a Value to memory cannot fail; say so if it ever does.
            Err(e) => bad("term", &format!("data serde_json can write ({e})"), term),
        }
    })();
    reply(env, result)
}

fn to_term<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    match value {
        Value::Null => atoms::nil().encode(env),
        Value::Bool(b) => b.encode(env),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.encode(env),
            (_, Some(i), _) => i.encode(env),
            (_, _, Some(f)) => f.encode(env),
            // serde_json numbers are always one of the three.
            _ => atoms::nil().encode(env),
        },
        Value::String(s) => binary(env, s.as_bytes()),
        Value::Array(items) => items
            .iter()
            .map(|v| to_term(env, v))
            .collect::<Vec<Term>>()
            .encode(env),
        Value::Object(object) => {
            let keys: Vec<Term> = object.keys().map(|k| binary(env, k.as_bytes())).collect();
            let values: Vec<Term> = object.values().map(|v| to_term(env, v)).collect();
            // Keys of a serde_json map are distinct, which is all this needs.
            Term::map_from_term_arrays(env, &keys, &values)
                .unwrap_or_else(|_| rustler::types::map::map_new(env))
        }
    }
}

/// `{:ok, term}` (objects as maps with string keys, `null` as `nil`), or
/// `{:error, message}` naming the line and column of the first problem.
#[rustler::nif(schedule = "DirtyCpu")]
fn json_decode<'a>(env: Env<'a>, text: Term<'a>) -> Term<'a> {
    let result = match text.decode::<Binary>() {
        Ok(bytes) => Ok(match serde_json::from_slice::<Value>(bytes.as_slice()) {
            Ok(value) => (atoms::ok(), to_term(env, &value)).encode(env),
            Err(e) => (atoms::error(), e.to_string()).encode(env),
        }),
        Err(_) => bad("text", "a binary", text),
    };
    reply(env, result)
}
