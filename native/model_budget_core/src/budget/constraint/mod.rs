//! Constraint expressions: small rules such as
//! `memory_required > available * 0.70` that decide when the manager makes
//! room. A safe language of our own: numbers, declared variables, `+ - * /`,
//! comparisons (chained as in Python), `and`/`or`/`not`, and the functions
//! `min`, `max`, `abs` and the byte units. Nothing reaches the host.
//!
//! Rules are compiled once (lexer, parser, checker) and evaluated many times.
//!
//! * Arithmetic is exact, on rationals of checked `i128`s: `0.70` is 7/10 and
//!   `1.5GB` is 1500000000. Nothing wraps.
//! * At evaluation, a division by zero or a result outside `i128` rationals
//!   makes the comparison it feeds false (so with `y` = 0, `not (x / y > 1)`
//!   is true).
//! * At compile time, a constant that overflows (a literal, or an operation on
//!   constants only) and a division by a constant zero are errors.
//! * Unit names are matched without regard to case (`gib(2)`, `2GiB`,
//!   `2GIB`); keywords (`and`, `or`, `not`), `min`, `max`, `abs` are lowercase;
//!   variable names are case-sensitive.
//! * An expression has at most [`MAX_EXPRESSION_BYTES`] bytes,
//!   [`MAX_NODES`] nodes and [`MAX_DEPTH`] levels of nesting; a constraint
//!   has at most [`MAX_EXPRESSIONS`] rules. Evaluation is therefore bounded.

mod checker;
mod eval;
mod lexer;
mod parser;
mod ratio;
mod size;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

pub use size::parse_size;

use crate::error::{invalid, Error};

/// The longest expression, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 512;
/// The most nodes (numbers, names, operators, calls) in one expression.
pub const MAX_NODES: usize = 256;
/// The deepest nesting of parentheses, calls, `-` and `not`.
pub const MAX_DEPTH: usize = 32;
/// The most rules in one constraint.
pub const MAX_EXPRESSIONS: usize = 64;

/// A rule that does not compile: which one, the 1-based column (in bytes) and
/// what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid constraint (expression {index}, column {column}): {message}")]
pub struct InvalidExpression {
    /// Position of the expression in the list given to [`Constraint::compile`].
    pub index: usize,
    pub column: usize,
    pub message: String,
}

/// Why [`Constraint::compile`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// An expression is not a valid rule.
    #[error(transparent)]
    Expression(#[from] InvalidExpression),
    /// The arguments themselves are unusable (bad variable names, too many rules).
    #[error(transparent)]
    Argument(#[from] Error),
}

/// An error at a column of one expression, before it knows its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub column: usize,
    pub message: String,
}

impl Located {
    pub(crate) fn new(column: usize, message: impl Into<String>) -> Located {
        Located {
            column,
            message: message.into(),
        }
    }
}

/// Compiled rules, combined with OR: the constraint is met when any rule is.
#[derive(Debug, Clone)]
pub struct Constraint {
    variables: Vec<String>,
    used: Vec<bool>,
    rules: Vec<eval::Bool>,
}

impl Constraint {
    /// Compiles `expressions` over `variables` (names that must be
    /// identifiers and not keywords; repeats are dropped). No expressions
    /// makes a constraint that is never met.
    pub fn compile<E, V>(expressions: &[E], variables: &[V]) -> Result<Constraint, CompileError>
    where
        E: AsRef<[u8]>,
        V: AsRef<str>,
    {
        if expressions.len() > MAX_EXPRESSIONS {
            return Err(invalid(
                "expressions",
                format!(
                    "expected at most {MAX_EXPRESSIONS} expressions, got {}",
                    expressions.len()
                ),
            )
            .into());
        }
        let mut names: Vec<String> = Vec::with_capacity(variables.len());
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(variables.len());
        for name in variables {
            let name = name.as_ref();
            if !is_variable_name(name) {
                return Err(invalid(
                    "variables",
                    format!(
                        "expected names made of ASCII letters, digits and `_`, not starting with a digit and not `and`, `or` or `not`, got {name:?}"
                    ),
                )
                .into());
            }
            if !index.contains_key(name) {
                index.insert(name, names.len());
                names.push(name.to_owned());
            }
        }
        let mut used = vec![false; names.len()];
        let rules = expressions
            .iter()
            .enumerate()
            .map(|(i, expression)| {
                let mut checker = checker::Checker {
                    names: &names,
                    index: &index,
                    used: &mut used,
                };
                rule(expression.as_ref(), &mut checker).map_err(|e| InvalidExpression {
                    index: i,
                    column: e.column,
                    message: e.message,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Constraint {
            variables: names,
            used,
            rules,
        })
    }

    /// The declared variables, in order, without repeats.
    pub fn variables(&self) -> &[String] {
        &self.variables
    }

    /// Indices (into [`Constraint::variables`]) of the variables some rule reads.
    pub fn used_variables(&self) -> impl Iterator<Item = usize> + '_ {
        self.used
            .iter()
            .enumerate()
            .filter_map(|(i, &used)| used.then_some(i))
    }

    /// Whether any rule holds for `values`, given in the order of
    /// [`Constraint::variables`] (values of unused variables are ignored).
    pub fn met(&self, values: &[i128]) -> crate::error::Result<bool> {
        if values.len() != self.variables.len() {
            return Err(invalid(
                "values",
                format!(
                    "expected {} values, one per variable, got {}",
                    self.variables.len(),
                    values.len()
                ),
            ));
        }
        Ok(self.rules.iter().any(|rule| rule.eval(values)))
    }
}

fn rule(expression: &[u8], checker: &mut checker::Checker) -> Result<eval::Bool, Located> {
    // Checked before anything else, so that a huge input costs nothing.
    if expression.len() > MAX_EXPRESSION_BYTES {
        return Err(Located::new(
            MAX_EXPRESSION_BYTES + 1,
            format!(
                "expected at most {MAX_EXPRESSION_BYTES} bytes, got {}",
                expression.len()
            ),
        ));
    }
    let tokens = lexer::tokenize(expression)?;
    let tree = parser::parse(&tokens)?;
    checker.rule(tree)
}

fn is_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let starts_well = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    starts_well
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !matches!(name, "and" | "or" | "not")
}
