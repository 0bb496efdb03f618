//! Tokens with their 1-based columns. The language is ASCII: any other byte
//! is an error at its own column, so byte and character columns agree up to
//! every reported error.

use super::ratio::Ratio;
use super::Located;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok<'a> {
    /// A literal with its unit suffix already applied.
    Number(Ratio),
    Ident(&'a str),
    And,
    Or,
    Not,
    Plus,
    Minus,
    Star,
    Slash,
    LParen,
    RParen,
    Comma,
    Cmp(CmpOp),
    End,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Token<'a> {
    pub tok: Tok<'a>,
    pub column: usize,
    /// The source text, for error messages.
    pub text: &'a str,
}

impl Token<'_> {
    /// How an error message names this token.
    pub(crate) fn describe(&self) -> String {
        match self.tok {
            Tok::End => "the end of the expression".to_owned(),
            _ => format!("`{}`", self.text),
        }
    }
}

/// Byte units, as a suffix (`2GiB`) or a function (`gib(2)`), matched
/// without regard to case: `gb`, `GB` and `Gb` are all 10^9 bytes.
pub(crate) const UNITS: [(&str, i128); 8] = [
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

pub(crate) fn unit(name: &str) -> Option<i128> {
    UNITS
        .iter()
        .find(|(unit, _)| unit.eq_ignore_ascii_case(name))
        .map(|&(_, factor)| factor)
}

pub(crate) fn unit_list() -> String {
    let names: Vec<&str> = UNITS.iter().map(|(name, _)| *name).collect();
    names.join(", ")
}

const TOO_LARGE: &str = "expected a number below 2^127";

/// Splits `source` into tokens, ending with `Tok::End`.
pub(crate) fn tokenize(source: &[u8]) -> Result<Vec<Token<'_>>, Located> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < source.len() {
        let c = source[i];
        let start = i;
        let tok = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'0'..=b'9' => {
                let (value, end) = number(source, i)?;
                i = end;
                Tok::Number(value)
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                i = word_end(source, i);
                match ascii(&source[start..i]) {
                    "and" => Tok::And,
                    "or" => Tok::Or,
                    "not" => Tok::Not,
                    word => Tok::Ident(word),
                }
            }
            _ => {
                let (tok, len) = punctuation(source, i)?;
                i += len;
                tok
            }
        };
        tokens.push(Token {
            tok,
            column: start + 1,
            text: ascii(&source[start..i]),
        });
    }
    tokens.push(Token {
        tok: Tok::End,
        column: source.len() + 1,
        text: "",
    });
    Ok(tokens)
}

/// Text the lexer has already checked to be ASCII.
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("")
}

fn word_end(source: &[u8], mut i: usize) -> usize {
    while i < source.len() && (source[i].is_ascii_alphanumeric() || source[i] == b'_') {
        i += 1;
    }
    i
}

fn digits(
    source: &[u8],
    mut i: usize,
    mut acc: i128,
    column: usize,
) -> Result<(i128, usize, u32), Located> {
    let mut count = 0;
    while i < source.len() && source[i].is_ascii_digit() {
        acc = acc
            .checked_mul(10)
            .and_then(|a| a.checked_add(i128::from(source[i] - b'0')))
            .ok_or_else(|| Located::new(column, TOO_LARGE))?;
        i += 1;
        count += 1;
    }
    Ok((acc, i, count))
}

/// `123`, `0.70`, `1.5GB`: digits, an optional fraction, an optional unit.
fn number(source: &[u8], start: usize) -> Result<(Ratio, usize), Located> {
    let column = start + 1;
    let (mut value, mut i, _) = digits(source, start, 0, column)?;
    let mut places = 0;
    if source.get(i) == Some(&b'.') {
        let (v, end, count) = digits(source, i + 1, value, column)?;
        if count == 0 {
            return Err(Located::new(
                i + 2,
                format!(
                    "expected a digit after the decimal point, got {}",
                    found(source, i + 1)
                ),
            ));
        }
        (value, i, places) = (v, end, count);
    }
    let mut ratio = Ratio::decimal(value, places)
        .ok_or_else(|| Located::new(column, "expected at most 38 decimal places"))?;
    if i < source.len() && (source[i].is_ascii_alphabetic() || source[i] == b'_') {
        let end = word_end(source, i);
        let suffix = ascii(&source[i..end]);
        let factor = unit(suffix).ok_or_else(|| {
            Located::new(
                i + 1,
                format!(
                    "expected a unit ({}) after the number, got `{suffix}`",
                    unit_list()
                ),
            )
        })?;
        ratio = ratio
            .checked_mul(Ratio::int(factor))
            .ok_or_else(|| Located::new(column, TOO_LARGE))?;
        i = end;
    }
    Ok((ratio, i))
}

/// Operators and parentheses, with hints for the spellings of other languages.
fn punctuation(source: &[u8], i: usize) -> Result<(Tok<'static>, usize), Located> {
    let next = source.get(i + 1).copied();
    let column = i + 1;
    let hint = |expected: &str, got: &str| {
        Err(Located::new(
            column,
            format!("expected {expected}, got `{got}`"),
        ))
    };
    Ok(match (source[i], next) {
        (b'+', _) => (Tok::Plus, 1),
        (b'-', _) => (Tok::Minus, 1),
        (b'*', Some(b'*')) => return hint("`*` (there is no power operator)", "**"),
        (b'*', _) => (Tok::Star, 1),
        (b'/', _) => (Tok::Slash, 1),
        (b'(', _) => (Tok::LParen, 1),
        (b')', _) => (Tok::RParen, 1),
        (b',', _) => (Tok::Comma, 1),
        (b'<', Some(b'=')) => (Tok::Cmp(CmpOp::Le), 2),
        (b'<', _) => (Tok::Cmp(CmpOp::Lt), 1),
        (b'>', Some(b'=')) => (Tok::Cmp(CmpOp::Ge), 2),
        (b'>', _) => (Tok::Cmp(CmpOp::Gt), 1),
        (b'=', Some(b'=')) => (Tok::Cmp(CmpOp::Eq), 2),
        (b'=', _) => return hint("`==` (comparison; there is no assignment)", "="),
        (b'!', Some(b'=')) => (Tok::Cmp(CmpOp::Ne), 2),
        (b'!', _) => return hint("`!=` (write `not` to negate)", "!"),
        (b'&', Some(b'&')) => return hint("`and`", "&&"),
        (b'&', _) => return hint("`and`", "&"),
        (b'|', Some(b'|')) => return hint("`or`", "||"),
        (b'|', _) => return hint("`or`", "|"),
        _ => {
            return Err(Located::new(
                column,
                format!(
                    "expected a number, a name, an operator, `(`, `)` or `,`, got {}",
                    found(source, i)
                ),
            ))
        }
    })
}

/// Names the character at `i` (which may be the start of a multi-byte one).
fn found(source: &[u8], i: usize) -> String {
    let Some(&byte) = source.get(i) else {
        return "the end of the expression".to_owned();
    };
    let rest = &source[i..source.len().min(i + 4)];
    let text = match std::str::from_utf8(rest) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&rest[..e.valid_up_to()]).unwrap_or(""),
    };
    match text.chars().next() {
        Some(c) if !c.is_control() => format!("`{c}`"),
        _ => format!("the byte 0x{byte:02X}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok<'_>> {
        tokenize(s.as_bytes())
            .unwrap()
            .into_iter()
            .map(|t| t.tok)
            .collect()
    }

    fn err(s: &str) -> (usize, String) {
        let e = tokenize(s.as_bytes()).unwrap_err();
        (e.column, e.message)
    }

    #[test]
    fn numbers_units_and_words() {
        assert_eq!(
            toks("2GiB 1.5gb 0.70 x_1 and"),
            vec![
                Tok::Number(Ratio::int(2 << 30)),
                Tok::Number(Ratio::int(1_500_000_000)),
                Tok::Number(Ratio::new(7, 10).unwrap()),
                Tok::Ident("x_1"),
                Tok::And,
                Tok::End
            ]
        );
    }

    #[test]
    fn columns_are_one_based() {
        let cols: Vec<usize> = tokenize(b"a <= 10MiB")
            .unwrap()
            .iter()
            .map(|t| t.column)
            .collect();
        assert_eq!(cols, vec![1, 3, 6, 11]);
    }

    #[test]
    fn operators() {
        use CmpOp::*;
        assert_eq!(
            toks("<<=>>===!=+-*/(),"),
            vec![
                Tok::Cmp(Lt),
                Tok::Cmp(Le),
                Tok::Cmp(Gt),
                Tok::Cmp(Ge),
                Tok::Cmp(Eq),
                Tok::Cmp(Ne),
                Tok::Plus,
                Tok::Minus,
                Tok::Star,
                Tok::Slash,
                Tok::LParen,
                Tok::RParen,
                Tok::Comma,
                Tok::End
            ]
        );
    }

    #[test]
    fn errors_point_at_the_offending_character() {
        assert_eq!(err("a = b").0, 3);
        assert!(err("a = b").1.contains("`==`"));
        assert_eq!(err("a && b").1, "expected `and`, got `&&`");
        assert_eq!(err("1.").0, 3);
        assert_eq!(err("2XB").0, 2);
        assert!(err("2XB").1.starts_with("expected a unit (KB, MB"));
        assert_eq!(
            err("a.b"),
            (
                2,
                "expected a number, a name, an operator, `(`, `)` or `,`, got `.`".to_owned()
            )
        );
        assert_eq!(
            err("x > é").1,
            "expected a number, a name, an operator, `(`, `)` or `,`, got `é`"
        );
        assert_eq!(
            err("x \u{1}").1,
            "expected a number, a name, an operator, `(`, `)` or `,`, got the byte 0x01"
        );
    }

    #[test]
    fn invalid_utf8_is_an_error_not_a_panic() {
        let e = tokenize(b"a > \xff\xfe").unwrap_err();
        assert_eq!(e.column, 5);
        assert!(e.message.ends_with("got the byte 0xFF"));
    }

    #[test]
    fn literals_too_large_are_errors() {
        assert_eq!(
            err("999999999999999999999999999999999999999999").1,
            TOO_LARGE
        );
        assert_eq!(err("100000000000000000000000000000000TiB").1, TOO_LARGE);
        assert_eq!(
            err("0.000000000000000000000000000000000000000001").1,
            "expected at most 38 decimal places"
        );
    }
}
