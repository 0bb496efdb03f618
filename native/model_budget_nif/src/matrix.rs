//! A weight matrix's class (`model::MatrixClass`) as a term: `{"Q4_K",
//! rows_multiple, cols_multiple, :matrix | :experts}`; a bare type name
//! (`"Q4_K"`) stands for a 2-D matrix that satisfies every rule.

use std::collections::HashMap;

use model_budget_core::model::{ggml_type::TYPES, MatrixBytes, MatrixClass, Part, Run};
use rustler::{NifTuple, NifUnitEnum, NifUntaggedEnum, Term};

use crate::badarg::{bad, Decoded};
use crate::model::PartTerm;

#[derive(NifUnitEnum, Clone, Copy)]
pub enum KindTerm {
    Matrix,
    Experts,
}

#[derive(NifTuple)]
pub struct ClassTerm {
    ggml: String,
    rows_multiple: u32,
    cols_multiple: u32,
    kind: KindTerm,
}

#[derive(NifUntaggedEnum)]
enum KeyTerm {
    Class(ClassTerm),
    Name(String),
}

/// A run of the file order: `{part, bytes}` or `{part, bytes, class}`.
#[derive(NifUntaggedEnum)]
pub enum RunTerm {
    Plain((PartTerm, u64)),
    Matrices((PartTerm, u64, ClassTerm)),
}

impl From<MatrixClass> for ClassTerm {
    fn from(c: MatrixClass) -> Self {
        ClassTerm {
            ggml: c.ggml.to_owned(),
            rows_multiple: c.rows_multiple,
            cols_multiple: c.cols_multiple,
            kind: if c.stacked {
                KindTerm::Experts
            } else {
                KindTerm::Matrix
            },
        }
    }
}

impl From<Run> for RunTerm {
    fn from(r: Run) -> Self {
        match r.matrix {
            None => RunTerm::Plain((r.part.into(), r.bytes)),
            Some(class) => RunTerm::Matrices((r.part.into(), r.bytes, class.into())),
        }
    }
}

/// Per class, as the `%ModelBudget.Model{}` holds it.
pub fn encode_matrices(m: MatrixBytes) -> HashMap<ClassTerm, u64> {
    m.into_iter().map(|(c, b)| (c.into(), b)).collect()
}

// Map keys must hash; the derived tuple's fields decide equality.
impl PartialEq for ClassTerm {
    fn eq(&self, o: &Self) -> bool {
        (
            &self.ggml,
            self.rows_multiple,
            self.cols_multiple,
            self.kind as u8,
        ) == (&o.ggml, o.rows_multiple, o.cols_multiple, o.kind as u8)
    }
}
impl Eq for ClassTerm {}
impl std::hash::Hash for ClassTerm {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (
            &self.ggml,
            self.rows_multiple,
            self.cols_multiple,
            self.kind as u8,
        )
            .hash(h);
    }
}

const EXPECTED: &str = "a ggml type name, or {type name, rows multiple (a power of two up to 32), row length multiple (a power of two up to 256), :matrix or :experts}";

fn ggml_name(name: &str) -> Option<&'static str> {
    TYPES.iter().find(|t| t.name == name).map(|t| t.name)
}

fn class<'a>(key: KeyTerm, term: Term<'a>, arg: &str) -> Decoded<'a, MatrixClass> {
    let power_up_to = |n: u32, max: u32| n.is_power_of_two() && n <= max;
    match key {
        KeyTerm::Name(name) => match ggml_name(&name) {
            Some(ggml) => Ok(MatrixClass::plain(ggml)),
            None => bad(arg, EXPECTED, term),
        },
        KeyTerm::Class(c) => match ggml_name(&c.ggml) {
            Some(ggml)
                if power_up_to(c.rows_multiple, MatrixClass::ROWS_MULTIPLE)
                    && power_up_to(c.cols_multiple, MatrixClass::COLS_MULTIPLE) =>
            {
                Ok(MatrixClass {
                    ggml,
                    rows_multiple: c.rows_multiple,
                    cols_multiple: c.cols_multiple,
                    stacked: matches!(c.kind, KindTerm::Experts),
                })
            }
            _ => bad(arg, EXPECTED, term),
        },
    }
}

/// `%{class => bytes}`.
pub fn decode_matrices<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, MatrixBytes> {
    let Some(iter) = rustler::types::map::MapIterator::new(term) else {
        return bad(arg, "a map of matrix classes to byte counts", term);
    };
    let mut out = MatrixBytes::new();
    for (k, v) in iter {
        let key = k.decode::<KeyTerm>().or_else(|_| bad(arg, EXPECTED, k))?;
        let class = class(key, k, arg)?;
        let bytes = crate::decode::bytes(v, arg)?;
        let slot = out.entry(class).or_default();
        *slot = slot.saturating_add(bytes);
    }
    Ok(out)
}

/// A class alone (`embedding_matrix`).
pub fn decode_class<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, MatrixClass> {
    let key = term
        .decode::<KeyTerm>()
        .or_else(|_| bad(arg, EXPECTED, term))?;
    class(key, term, arg)
}

/// The file order's runs.
pub fn decode_runs<'a>(term: Term<'a>, arg: &str) -> Decoded<'a, Vec<Run>> {
    const RUNS: &str =
        "a list of {:input | :output | block, bytes} or {part, bytes, matrix class} tuples";
    if term.list_length().is_err() {
        return bad(arg, RUNS, term);
    }
    let list: Vec<Term> = term.decode().or_else(|_| bad(arg, RUNS, term))?;
    list.into_iter()
        .map(|t| match t.decode::<RunTerm>() {
            Ok(RunTerm::Plain((part, bytes))) => Ok(Run {
                part: Part::from(part),
                bytes,
                matrix: None,
            }),
            Ok(RunTerm::Matrices((part, bytes, c))) => Ok(Run {
                part: Part::from(part),
                bytes,
                matrix: Some(class(KeyTerm::Class(c), t, arg)?),
            }),
            Err(_) => bad(arg, RUNS, t),
        })
        .collect()
}
