use std::time::Instant;

use proptest::prelude::*;

use super::*;

const VARS: [&str; 3] = ["a", "b", "c"];

fn met(expression: &str, values: [i128; 3]) -> bool {
    Constraint::compile(&[expression], &VARS)
        .unwrap_or_else(|e| panic!("{expression:?}: {e}"))
        .met(&values)
        .unwrap()
}

fn error(expression: &str) -> (usize, String) {
    match Constraint::compile(&[expression], &VARS) {
        Err(CompileError::Expression(e)) => (e.column, e.message),
        other => panic!("{expression:?} compiled: {other:?}"),
    }
}

#[test]
fn valid_expressions() {
    let gib = 1i128 << 30;
    let table: &[(&str, [i128; 3], bool)] = &[
        ("a > b * 0.70", [71, 100, 0], true),
        ("a > b * 0.70", [70, 100, 0], false),
        ("a >= b * 0.70", [70, 100, 0], true),
        ("a == 2GiB", [2 * gib, 0, 0], true),
        ("a == gib(2)", [2 * gib, 0, 0], true),
        ("a == 1.5GB", [1_500_000_000, 0, 0], true),
        ("a == 0.5KiB", [512, 0, 0], true),
        ("a == 1 + 2 * 3", [7, 0, 0], true),
        ("a == (1 + 2) * 3", [9, 0, 0], true),
        ("a == -b * -2", [6, 3, 0], true),
        ("a == 10 - 4 - 3", [3, 0, 0], true),
        ("a == 12 / 3 / 2", [2, 0, 0], true),
        ("a / 3 == 1/3", [1, 0, 0], true),
        ("0.1 + 0.2 == 0.3", [0, 0, 0], true),
        ("min(a, b, c) == 1 and max(a, b, c) == 3", [2, 3, 1], true),
        ("abs(a - b) == 5", [1, 6, 0], true),
        ("min(a) == a", [9, 0, 0], true),
        ("not a > b", [1, 2, 0], true),
        ("not not a > b", [1, 2, 0], false),
        ("a > 0 or b > 0 and c > 0", [1, 0, 0], true),
        ("(a > 0 or b > 0) and c > 0", [1, 0, 0], false),
        ("a < b < c", [1, 2, 3], true),
        ("a < b < c", [1, 3, 2], false),
        ("a < b > c", [1, 3, 2], true),
        ("a == b == c", [4, 4, 4], true),
        ("a != b != c", [1, 2, 1], true),
        ("a<=b", [1, 1, 0], true),
        ("a > b / c", [1, 1, 0], false),
        ("not (a > b / c)", [1, 1, 0], true),
        ("a > b / c or a > 0", [1, 1, 0], true),
        ("a < b / c < 10", [0, 10, 0], false),
    ];
    for &(expression, values, expected) in table {
        assert_eq!(
            met(expression, values),
            expected,
            "{expression} with {values:?}"
        );
    }
}

#[test]
fn invalid_expressions() {
    let table: &[(&str, usize, &str)] = &[
        ("", 1, "expected an operand"),
        ("a >", 4, "expected an operand"),
        ("a > b)", 6, "expected an operator"),
        ("(a > b", 7, "expected `)` to close the `(` at column 1"),
        ("a + b", 1, "expected a comparison"),
        ("a > (b > c)", 5, "expected a number, got a comparison"),
        ("a + (b > c) > 1", 5, "expected a number"),
        ("not a", 5, "expected a comparison"),
        ("a > 1 and b", 11, "expected a comparison"),
        ("d > 1", 1, "expected a variable (a, b, c), got `d`"),
        ("a > foo(1)", 5, "expected a function"),
        ("a > min()", 5, "expected at least one argument to `min`"),
        ("a > abs(1, 2)", 5, "expected exactly one argument to `abs`"),
        ("a > gib(1, 2)", 5, "expected exactly one argument to `gib`"),
        (
            "a > min(1 2)",
            11,
            "expected `,` or `)` to close the call to `min` at column 8",
        ),
        ("a > 2XB", 6, "expected a unit"),
        (
            "a > 1 / 0",
            9,
            "expected a divisor other than a constant zero",
        ),
        ("a > 1 / (2 - 2)", 9, "constant zero"),
        ("a > 2**3", 6, "no power operator"),
        ("a = 1", 3, "expected `==`"),
        ("a.b > 1", 2, "got `.`"),
        ("a > 1 AND b > 1", 7, "expected an operator"),
        ("__import__('os') > 1", 12, "got `'`"),
        (
            "a > 100000000000000000000TiB * 1000000000000000000",
            5,
            "overflows",
        ),
        (
            "a > -(-170141183460469231731687303715884105727 - 1)",
            5,
            "overflows",
        ),
    ];
    for &(expression, column, message) in table {
        let (got_column, got_message) = error(expression);
        assert_eq!(got_column, column, "{expression}: {got_message}");
        assert!(got_message.contains(message), "{expression}: {got_message}");
    }
}

#[test]
fn the_failing_expression_is_named_by_index() {
    let err = Constraint::compile(&["a > 1", "b >", "c"], &VARS).unwrap_err();
    assert!(matches!(
        err,
        CompileError::Expression(InvalidExpression {
            index: 1,
            column: 4,
            ..
        })
    ));
}

#[test]
fn rules_combine_with_or() {
    let c = Constraint::compile(&["a > 10", "b > 10"], &VARS).unwrap();
    assert!(!c.met(&[1, 1, 1]).unwrap());
    assert!(c.met(&[1, 11, 1]).unwrap());
    let none = Constraint::compile::<&str, &str>(&[], &VARS).unwrap();
    assert!(!none.met(&[1, 1, 1]).unwrap());
}

#[test]
fn used_variables_and_repeats() {
    let c = Constraint::compile(&["c > a"], &["a", "b", "a", "c"]).unwrap();
    assert_eq!(c.variables(), ["a", "b", "c"]);
    assert_eq!(c.used_variables().collect::<Vec<_>>(), vec![0, 2]);
    assert!(c.met(&[1, 0]).is_err());
}

#[test]
fn bad_variable_names_are_argument_errors() {
    for name in ["", "1a", "a-b", "and", "not", "é"] {
        let err = Constraint::compile(&["1 > 0"], &[name]).unwrap_err();
        assert!(matches!(err, CompileError::Argument(_)), "{name:?}");
    }
}

#[test]
fn too_many_expressions() {
    let rules = vec!["a > 1"; MAX_EXPRESSIONS + 1];
    assert!(matches!(
        Constraint::compile(&rules, &VARS),
        Err(CompileError::Argument(_))
    ));
    assert!(Constraint::compile(&rules[1..], &VARS).is_ok());
}

#[test]
fn run_time_overflow_makes_the_comparison_false() {
    let max = i128::MAX;
    assert!(!met("a * b > 0", [max, 2, 0]));
    assert!(!met("a * b < 0", [max, 2, 0]));
    assert!(met("not a * b > 0", [max, 2, 0]));
    assert!(met("a * b > 0 or c == 1", [max, 2, 1]));
    // The default rule cannot overflow on u64 byte counts.
    let big = i128::from(u64::MAX);
    assert!(met("a > b * 0.70", [big, big, 0]));
}

#[test]
fn length_is_checked_before_parsing() {
    let huge = vec!["a"; 10_000].join(" + ") + " > 1";
    let started = Instant::now();
    let (column, message) = error(&huge);
    assert_eq!(column, MAX_EXPRESSION_BYTES + 1);
    assert_eq!(
        message,
        format!("expected at most 512 bytes, got {}", huge.len())
    );
    // The length is the only thing looked at: a reject is not a parse.
    assert!(started.elapsed().as_secs() < 1);
}

#[test]
fn node_and_depth_limits() {
    // 129 terms and 128 `+` fit in 512 bytes but are 257 nodes.
    let wide = vec!["a"; 129].join("+") + ">1";
    assert!(wide.len() <= MAX_EXPRESSION_BYTES);
    let (_, message) = error(&wide);
    assert!(
        message.starts_with("expected at most 256 nodes"),
        "{message}"
    );
    let ok = vec!["a"; 127].join("+") + ">1";
    assert!(Constraint::compile(&[ok.as_str()], &VARS).is_ok());

    let deep = "(".repeat(40) + "a" + &")".repeat(40) + ">1";
    assert_eq!(
        error(&deep),
        (
            33,
            format!(
                "expected at most {MAX_DEPTH} levels of nesting (parentheses, calls, `-`, `not`)"
            )
        )
    );
    let negs = "-".repeat(200) + "a > 1";
    assert_eq!(error(&negs).0, MAX_DEPTH + 1);
    let nots = "not ".repeat(100) + "a > 1";
    assert_eq!(error(&nots).0, 4 * MAX_DEPTH + 1);
}

// ---- properties --------------------------------------------------------

/// A number in the straightforward reference: an unreduced fraction.
#[derive(Debug, Clone, Copy)]
enum Ref {
    Value(i128, i128),
    /// Division by zero: the comparison is false.
    Undefined,
    /// The reference itself overflowed; the case says nothing.
    Unknown,
}

#[derive(Debug, Clone)]
enum E {
    Lit(i64),
    Var(usize),
    Neg(Box<E>),
    Abs(Box<E>),
    Bin(char, Box<E>, Box<E>),
    Min(Vec<E>),
    Max(Vec<E>),
}

#[derive(Debug, Clone)]
enum B {
    Cmp(E, Vec<(&'static str, E)>),
    Not(Box<B>),
    Bin(&'static str, Box<B>, Box<B>),
}

fn render(e: &E) -> String {
    match e {
        E::Lit(n) if *n < 0 => format!("(-{})", n.unsigned_abs()),
        E::Lit(n) => n.to_string(),
        E::Var(i) => VARS[*i].to_owned(),
        E::Neg(x) => format!("(-{})", render(x)),
        E::Abs(x) => format!("abs({})", render(x)),
        E::Bin(op, a, b) => format!("({} {op} {})", render(a), render(b)),
        E::Min(xs) | E::Max(xs) => {
            let name = if matches!(e, E::Min(_)) { "min" } else { "max" };
            let args: Vec<String> = xs.iter().map(render).collect();
            format!("{name}({})", args.join(", "))
        }
    }
}

fn render_bool(b: &B) -> String {
    match b {
        B::Cmp(first, rest) => {
            let mut s = render(first);
            for (op, x) in rest {
                s += &format!(" {op} {}", render(x));
            }
            s
        }
        B::Not(x) => format!("not ({})", render_bool(x)),
        B::Bin(op, a, b) => format!("({}) {op} ({})", render_bool(a), render_bool(b)),
    }
}

fn reference(e: &E, vars: &[i128; 3]) -> Ref {
    use Ref::*;
    let value = |n: Option<i128>, d: Option<i128>| match (n, d) {
        (Some(n), Some(d)) => Value(n, d),
        _ => Unknown,
    };
    match e {
        E::Lit(n) => Value(i128::from(*n), 1),
        E::Var(i) => Value(vars[*i], 1),
        E::Neg(x) => match reference(x, vars) {
            Value(n, d) => Value(-n, d),
            other => other,
        },
        E::Abs(x) => match reference(x, vars) {
            Value(n, d) => Value(n.abs(), d.abs()),
            other => other,
        },
        E::Bin(op, a, b) => match (reference(a, vars), reference(b, vars)) {
            (Unknown, _) | (_, Unknown) => Unknown,
            (Undefined, _) | (_, Undefined) => Undefined,
            (Value(an, ad), Value(bn, bd)) => match op {
                '+' => value(
                    an.checked_mul(bd)
                        .zip(bn.checked_mul(ad))
                        .and_then(|(x, y)| x.checked_add(y)),
                    ad.checked_mul(bd),
                ),
                '-' => value(
                    an.checked_mul(bd)
                        .zip(bn.checked_mul(ad))
                        .and_then(|(x, y)| x.checked_sub(y)),
                    ad.checked_mul(bd),
                ),
                '*' => value(an.checked_mul(bn), ad.checked_mul(bd)),
                _ if bn == 0 => Undefined,
                _ => value(an.checked_mul(bd), ad.checked_mul(bn)),
            },
        },
        E::Min(xs) | E::Max(xs) => {
            let want = if matches!(e, E::Min(_)) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            };
            let mut best = reference(&xs[0], vars);
            for x in &xs[1..] {
                let next = reference(x, vars);
                best = match (best, next) {
                    (Unknown, _) | (_, Unknown) => Unknown,
                    (Undefined, _) | (_, Undefined) => Undefined,
                    (a, b) => match ref_cmp(a, b) {
                        Some(order) if order == want => a,
                        Some(_) => b,
                        None => Unknown,
                    },
                };
            }
            best
        }
    }
}

/// Cross-multiplication with positive denominators.
fn ref_cmp(a: Ref, b: Ref) -> Option<std::cmp::Ordering> {
    let (Ref::Value(an, ad), Ref::Value(bn, bd)) = (a, b) else {
        return None;
    };
    let (an, ad) = if ad < 0 { (-an, -ad) } else { (an, ad) };
    let (bn, bd) = if bd < 0 { (-bn, -bd) } else { (bn, bd) };
    Some(an.checked_mul(bd)?.cmp(&bn.checked_mul(ad)?))
}

/// `None` when the reference overflowed somewhere it looked.
fn reference_bool(b: &B, vars: &[i128; 3]) -> Option<bool> {
    match b {
        B::Cmp(first, rest) => {
            // Every operand, so that an overflow anywhere is seen.
            let mut values = vec![reference(first, vars)];
            values.extend(rest.iter().map(|(_, x)| reference(x, vars)));
            if values.iter().any(|v| matches!(v, Ref::Unknown)) {
                return None;
            }
            if values.iter().any(|v| matches!(v, Ref::Undefined)) {
                return Some(false);
            }
            let mut all = true;
            for (i, (op, _)) in rest.iter().enumerate() {
                let order = ref_cmp(values[i], values[i + 1])?;
                all &= match *op {
                    "<" => order.is_lt(),
                    "<=" => order.is_le(),
                    ">" => order.is_gt(),
                    ">=" => order.is_ge(),
                    "==" => order.is_eq(),
                    _ => order.is_ne(),
                };
            }
            Some(all)
        }
        B::Not(x) => reference_bool(x, vars).map(|v| !v),
        B::Bin(op, a, b) => {
            let (a, b) = (reference_bool(a, vars)?, reference_bool(b, vars)?);
            Some(if *op == "and" { a && b } else { a || b })
        }
    }
}

fn arb_num() -> impl Strategy<Value = E> {
    let leaf = prop_oneof![(-20i64..20).prop_map(E::Lit), (0usize..3).prop_map(E::Var)];
    leaf.prop_recursive(4, 12, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|x| E::Neg(Box::new(x))),
            inner.clone().prop_map(|x| E::Abs(Box::new(x))),
            (
                prop::sample::select(vec!['+', '-', '*', '/']),
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(op, a, b)| E::Bin(op, Box::new(a), Box::new(b))),
            prop::collection::vec(inner.clone(), 1..4).prop_map(E::Min),
            prop::collection::vec(inner, 1..4).prop_map(E::Max),
        ]
    })
}

fn arb_bool() -> impl Strategy<Value = B> {
    let op = prop::sample::select(vec!["<", "<=", ">", ">=", "==", "!="]);
    let cmp =
        (arb_num(), prop::collection::vec((op, arb_num()), 1..3)).prop_map(|(f, r)| B::Cmp(f, r));
    cmp.prop_recursive(2, 4, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|x| B::Not(Box::new(x))),
            (
                prop::sample::select(vec!["and", "or"]),
                inner.clone(),
                inner
            )
                .prop_map(|(op, a, b)| B::Bin(op, Box::new(a), Box::new(b))),
        ]
    })
}

/// Text built from the language's own pieces, to reach deeper than noise.
fn token_soup() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "a",
        "b",
        "zz",
        "1",
        "0",
        "0.70",
        "2GiB",
        "1.5gb",
        "kib",
        "min",
        "max",
        "abs",
        "(",
        ")",
        ",",
        "+",
        "-",
        "*",
        "/",
        "<",
        "<=",
        ">",
        "==",
        "!=",
        "=",
        "!",
        "and",
        "or",
        "not",
        " ",
        ".",
        "9999999999999999999999",
    ]);
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

fn check_any(text: &[u8], values: [i128; 3]) -> Result<(), TestCaseError> {
    match Constraint::compile(&[text], &VARS) {
        Ok(c) => {
            c.met(&values).unwrap();
        }
        Err(CompileError::Expression(e)) => {
            prop_assert!(e.column >= 1 && e.column <= text.len().min(MAX_EXPRESSION_BYTES) + 1);
            prop_assert!(e.message.starts_with("expected "), "{}", e.message);
        }
        Err(other) => prop_assert!(false, "{other:?}"),
    }
    Ok(())
}

fn any_value() -> impl Strategy<Value = i128> {
    prop_oneof![-5i128..5, any::<i64>().prop_map(i128::from), any::<i128>()]
}

proptest! {
    #[test]
    fn evaluation_matches_the_reference(b in arb_bool(), a in -9i128..9, bv in -9i128..9, cv in -9i128..9) {
        let text = render_bool(&b);
        let vars = [a, bv, cv];
        let compiled = Constraint::compile(&[text.as_str()], &VARS);
        let compiled = match compiled {
            // Folding rejects these; the generator does not avoid them.
            Err(CompileError::Expression(e))
                if e.message.contains("constant zero") || e.message.contains("at most") =>
            {
                return Err(TestCaseError::reject("constant division by zero or too large"));
            }
            other => other.unwrap_or_else(|e| panic!("{text}: {e}")),
        };
        let Some(expected) = reference_bool(&b, &vars) else {
            return Err(TestCaseError::reject("reference overflowed"));
        };
        prop_assert_eq!(compiled.met(&vars).unwrap(), expected, "{} with {:?}", text, vars);
    }

    #[test]
    fn random_bytes_never_panic(text in prop::collection::vec(any::<u8>(), 0..600), a in any_value(), b in any_value(), c in any_value()) {
        check_any(&text, [a, b, c])?;
    }

    #[test]
    fn random_strings_never_panic(text in ".{0,80}", a in any_value(), b in any_value(), c in any_value()) {
        check_any(text.as_bytes(), [a, b, c])?;
    }

    #[test]
    fn token_soup_never_panics(text in token_soup(), a in any_value(), b in any_value(), c in any_value()) {
        check_any(text.as_bytes(), [a, b, c])?;
    }

    #[test]
    fn chains_are_conjunctions(a in -9i128..9, b in -9i128..9, c in -9i128..9,
                               ops in prop::collection::vec(prop::sample::select(vec!["<", "<=", ">", ">=", "==", "!="]), 2)) {
        let chain = format!("a {} b {} c", ops[0], ops[1]);
        let pairs = format!("a {} b and b {} c", ops[0], ops[1]);
        prop_assert_eq!(met(&chain, [a, b, c]), met(&pairs, [a, b, c]));
    }
}
