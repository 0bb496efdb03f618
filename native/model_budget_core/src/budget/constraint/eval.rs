//! The checked tree and its evaluation.
//!
//! A number is `None` when it is undefined: a division by zero or a result
//! outside `i128` rationals. A comparison with an undefined operand is false.

use super::lexer::CmpOp;
use super::parser::Arith;
use super::ratio::Ratio;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Num {
    Const(Ratio),
    /// Index into the declared variables.
    Var(usize),
    Neg(Box<Num>),
    Abs(Box<Num>),
    Arith(Arith, Box<Num>, Box<Num>),
    Min(Vec<Num>),
    Max(Vec<Num>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bool {
    /// A chain `a < b <= c`, true when every link holds.
    Compare(Num, Vec<(CmpOp, Num)>),
    Not(Box<Bool>),
    And(Box<Bool>, Box<Bool>),
    Or(Box<Bool>, Box<Bool>),
}

impl Num {
    pub(crate) fn eval(&self, vars: &[i128]) -> Option<Ratio> {
        match self {
            Num::Const(value) => Some(*value),
            Num::Var(i) => vars.get(*i).copied().map(Ratio::int),
            Num::Neg(x) => x.eval(vars)?.checked_neg(),
            Num::Abs(x) => x.eval(vars)?.checked_abs(),
            Num::Arith(op, a, b) => {
                let (a, b) = (a.eval(vars)?, b.eval(vars)?);
                match op {
                    Arith::Add => a.checked_add(b),
                    Arith::Sub => a.checked_sub(b),
                    Arith::Mul => a.checked_mul(b),
                    Arith::Div => a.checked_div(b),
                }
            }
            Num::Min(args) => fold(args, vars, std::cmp::min),
            Num::Max(args) => fold(args, vars, std::cmp::max),
        }
    }
}

fn fold(args: &[Num], vars: &[i128], pick: fn(Ratio, Ratio) -> Ratio) -> Option<Ratio> {
    let (first, rest) = args.split_first()?;
    rest.iter()
        .try_fold(first.eval(vars)?, |acc, x| Some(pick(acc, x.eval(vars)?)))
}

impl Bool {
    pub(crate) fn eval(&self, vars: &[i128]) -> bool {
        match self {
            Bool::Compare(first, rest) => compare(first, rest, vars).unwrap_or(false),
            Bool::Not(x) => !x.eval(vars),
            Bool::And(a, b) => a.eval(vars) && b.eval(vars),
            Bool::Or(a, b) => a.eval(vars) || b.eval(vars),
        }
    }
}

/// `None` when an operand it reaches is undefined. Like Python, it stops at
/// the first link that fails.
fn compare(first: &Num, rest: &[(CmpOp, Num)], vars: &[i128]) -> Option<bool> {
    let mut left = first.eval(vars)?;
    for (op, right) in rest {
        let right = right.eval(vars)?;
        let holds = match op {
            CmpOp::Lt => left < right,
            CmpOp::Le => left <= right,
            CmpOp::Gt => left > right,
            CmpOp::Ge => left >= right,
            CmpOp::Eq => left == right,
            CmpOp::Ne => left != right,
        };
        if !holds {
            return Some(false);
        }
        left = right;
    }
    Some(true)
}
