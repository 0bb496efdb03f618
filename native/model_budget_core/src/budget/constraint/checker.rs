//! Types, names and constants: turns the parsed tree into the checked one.
//!
//! A rule must be a comparison or `and`/`or`/`not` of comparisons; arithmetic
//! and comparisons take numbers. Names resolve to the declared variables,
//! calls to the functions below. Constant subtrees are folded here, so that a
//! constant that overflows, or a division by a constant zero, is a compile
//! error rather than a rule that is silently never met.

use std::collections::HashMap;

use super::eval::{Bool, Num};
use super::lexer::{unit, unit_list};
use super::parser::{Arith, Kind, Logic, Node};
use super::ratio::Ratio;
use super::Located;

pub(crate) struct Checker<'v> {
    /// The declared variables, in order, and the index of each name.
    pub names: &'v [String],
    pub index: &'v HashMap<&'v str, usize>,
    /// Marks each declared variable a rule reads.
    pub used: &'v mut [bool],
}

impl Checker<'_> {
    pub(crate) fn rule(&mut self, node: Node) -> Result<Bool, Located> {
        let column = node.column;
        Ok(match node.kind {
            Kind::Compare(first, rest) => {
                let first = self.number(*first)?;
                let rest = rest
                    .into_iter()
                    .map(|(op, n)| Ok((op, self.number(n)?)))
                    .collect::<Result<_, Located>>()?;
                Bool::Compare(first, rest)
            }
            Kind::Not(x) => Bool::Not(Box::new(self.rule(*x)?)),
            Kind::Logic(op, a, b) => {
                let (a, b) = (Box::new(self.rule(*a)?), Box::new(self.rule(*b)?));
                match op {
                    Logic::And => Bool::And(a, b),
                    Logic::Or => Bool::Or(a, b),
                }
            }
            _ => {
                return Err(Located::new(
                    column,
                    "expected a comparison (such as `used > total * 0.9`) or `and`, `or`, `not` of comparisons, got a number",
                ))
            }
        })
    }

    fn number(&mut self, node: Node) -> Result<Num, Located> {
        let column = node.column;
        let num = match node.kind {
            Kind::Number(value) => return Ok(Num::Const(value)),
            Kind::Name(name) => return self.variable(name, column),
            Kind::Call(name, args) => self.call(name, args, column)?,
            Kind::Neg(x) => Num::Neg(Box::new(self.number(*x)?)),
            Kind::Arith(op, a, b) => {
                let a = self.number(*a)?;
                let b_column = b.column;
                let b = self.number(*b)?;
                if op == Arith::Div && matches!(b, Num::Const(r) if r.is_zero()) {
                    return Err(Located::new(
                        b_column,
                        "expected a divisor other than a constant zero",
                    ));
                }
                Num::Arith(op, Box::new(a), Box::new(b))
            }
            Kind::Compare(..) | Kind::Not(_) | Kind::Logic(..) => {
                return Err(Located::new(
                    column,
                    "expected a number, got a comparison or a boolean",
                ))
            }
        };
        fold(num, column)
    }

    fn variable(&mut self, name: &str, column: usize) -> Result<Num, Located> {
        match self.index.get(name) {
            Some(&i) => {
                self.used[i] = true;
                Ok(Num::Var(i))
            }
            None => {
                let expected = if self.names.is_empty() {
                    "a declared variable (none are declared)".to_owned()
                } else {
                    format!("a variable ({})", self.names.join(", "))
                };
                Err(Located::new(
                    column,
                    format!("expected {expected}, got `{name}`"),
                ))
            }
        }
    }

    fn call(&mut self, name: &str, args: Vec<Node>, column: usize) -> Result<Num, Located> {
        let function = match name {
            "min" => Function::Min,
            "max" => Function::Max,
            "abs" => Function::Abs,
            _ => Function::Unit(unit(name).ok_or_else(|| {
                Located::new(
                    column,
                    format!(
                        "expected a function (min, max, abs, or a unit: {}), got `{name}`",
                        unit_list()
                    ),
                )
            })?),
        };
        let (arity_ok, wanted) = match function {
            Function::Min | Function::Max => (!args.is_empty(), "at least one argument"),
            Function::Abs | Function::Unit(_) => (args.len() == 1, "exactly one argument"),
        };
        if !arity_ok {
            return Err(Located::new(
                column,
                format!("expected {wanted} to `{name}`, got {}", args.len()),
            ));
        }
        let mut args = args
            .into_iter()
            .map(|a| self.number(a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match function {
            Function::Min => Num::Min(args),
            Function::Max => Num::Max(args),
            Function::Abs => Num::Abs(Box::new(args.swap_remove(0))),
            Function::Unit(factor) => Num::Arith(
                Arith::Mul,
                Box::new(args.swap_remove(0)),
                Box::new(Num::Const(Ratio::int(factor))),
            ),
        })
    }
}

enum Function {
    Min,
    Max,
    Abs,
    /// A unit as a function: `gib(2)` is `2 * 2^30`.
    Unit(i128),
}

/// Evaluates a node whose operands are all constants.
fn fold(num: Num, column: usize) -> Result<Num, Located> {
    let constant = |n: &Num| matches!(n, Num::Const(_));
    let foldable = match &num {
        Num::Neg(x) | Num::Abs(x) => constant(x),
        Num::Arith(_, a, b) => constant(a) && constant(b),
        Num::Min(args) | Num::Max(args) => args.iter().all(constant),
        Num::Const(_) | Num::Var(_) => false,
    };
    if !foldable {
        return Ok(num);
    }
    num.eval(&[]).map(Num::Const).ok_or_else(|| {
        Located::new(
            column,
            "expected a constant within 128-bit rationals, but this one overflows",
        )
    })
}
