//! Recursive descent over the tokens, with Python's precedence:
//!
//! ```text
//! expression := or
//! or         := and ("or" and)*
//! and        := not ("and" not)*
//! not        := "not" not | comparison
//! comparison := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)*
//! sum        := product (("+" | "-") product)*
//! product    := unary (("*" | "/") unary)*
//! unary      := "-" unary | primary
//! primary    := number | name | name "(" [or ("," or)*] ")" | "(" or ")"
//! ```
//!
//! Nodes and nesting are counted as the tree grows, so an oversized
//! expression stops at the first node past the limit.

use super::lexer::{CmpOp, Tok, Token};
use super::ratio::Ratio;
use super::{Located, MAX_DEPTH, MAX_NODES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Logic {
    And,
    Or,
}

/// An untyped node and the column where its text starts (the `(` for a
/// parenthesised one).
#[derive(Debug)]
pub(crate) struct Node<'a> {
    pub column: usize,
    pub kind: Kind<'a>,
}

#[derive(Debug)]
pub(crate) enum Kind<'a> {
    Number(Ratio),
    Name(&'a str),
    Call(&'a str, Vec<Node<'a>>),
    Neg(Box<Node<'a>>),
    Arith(Arith, Box<Node<'a>>, Box<Node<'a>>),
    /// `a < b <= c`: the first operand, then each operator with its operand.
    Compare(Box<Node<'a>>, Vec<(CmpOp, Node<'a>)>),
    Not(Box<Node<'a>>),
    Logic(Logic, Box<Node<'a>>, Box<Node<'a>>),
}

pub(crate) fn parse<'a>(tokens: &[Token<'a>]) -> Result<Node<'a>, Located> {
    let mut parser = Parser {
        tokens,
        pos: 0,
        nodes: 0,
        depth: 0,
    };
    let node = parser.or()?;
    let next = parser.peek();
    if next.tok != Tok::End {
        return Err(parser.unexpected(
            "an operator (`+ - * /`, a comparison, `and`, `or`) or the end of the expression",
        ));
    }
    Ok(node)
}

struct Parser<'t, 'a> {
    tokens: &'t [Token<'a>],
    pos: usize,
    nodes: usize,
    depth: usize,
}

impl<'a> Parser<'_, 'a> {
    fn peek(&self) -> Token<'a> {
        // The lexer ends every list with `End`, and nothing consumes it.
        self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> Token<'a> {
        let token = self.peek();
        if token.tok != Tok::End {
            self.pos += 1;
        }
        token
    }

    fn unexpected(&self, expected: &str) -> Located {
        let token = self.peek();
        Located::new(
            token.column,
            format!("expected {expected}, got {}", token.describe()),
        )
    }

    /// Makes a node, failing at `at` once there are more than `MAX_NODES`.
    fn node(&mut self, at: usize, column: usize, kind: Kind<'a>) -> Result<Node<'a>, Located> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(Located::new(
                at,
                format!("expected at most {MAX_NODES} nodes (numbers, names, operators and calls) in one expression"),
            ));
        }
        Ok(Node { column, kind })
    }

    /// Guards the recursion: parentheses, calls, `-` and `not` nest.
    fn enter(&mut self, at: usize) -> Result<(), Located> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Located::new(
                at,
                format!("expected at most {MAX_DEPTH} levels of nesting (parentheses, calls, `-`, `not`)"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn or(&mut self) -> Result<Node<'a>, Located> {
        let mut left = self.and()?;
        while self.peek().tok == Tok::Or {
            let at = self.bump().column;
            let right = self.and()?;
            left = self.node(
                at,
                left.column,
                Kind::Logic(Logic::Or, Box::new(left), Box::new(right)),
            )?;
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node<'a>, Located> {
        let mut left = self.not()?;
        while self.peek().tok == Tok::And {
            let at = self.bump().column;
            let right = self.not()?;
            left = self.node(
                at,
                left.column,
                Kind::Logic(Logic::And, Box::new(left), Box::new(right)),
            )?;
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Node<'a>, Located> {
        if self.peek().tok != Tok::Not {
            return self.comparison();
        }
        let at = self.bump().column;
        self.enter(at)?;
        let operand = self.not()?;
        self.leave();
        self.node(at, at, Kind::Not(Box::new(operand)))
    }

    fn comparison(&mut self) -> Result<Node<'a>, Located> {
        let first = self.sum()?;
        let mut rest = Vec::new();
        let mut at = 0;
        while let Tok::Cmp(op) = self.peek().tok {
            let column = self.bump().column;
            if rest.is_empty() {
                at = column;
            }
            rest.push((op, self.sum()?));
        }
        if rest.is_empty() {
            return Ok(first);
        }
        let column = first.column;
        self.node(at, column, Kind::Compare(Box::new(first), rest))
    }

    fn sum(&mut self) -> Result<Node<'a>, Located> {
        let mut left = self.product()?;
        loop {
            let op = match self.peek().tok {
                Tok::Plus => Arith::Add,
                Tok::Minus => Arith::Sub,
                _ => return Ok(left),
            };
            let at = self.bump().column;
            let right = self.product()?;
            left = self.node(
                at,
                left.column,
                Kind::Arith(op, Box::new(left), Box::new(right)),
            )?;
        }
    }

    fn product(&mut self) -> Result<Node<'a>, Located> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek().tok {
                Tok::Star => Arith::Mul,
                Tok::Slash => Arith::Div,
                _ => return Ok(left),
            };
            let at = self.bump().column;
            let right = self.unary()?;
            left = self.node(
                at,
                left.column,
                Kind::Arith(op, Box::new(left), Box::new(right)),
            )?;
        }
    }

    fn unary(&mut self) -> Result<Node<'a>, Located> {
        if self.peek().tok != Tok::Minus {
            return self.primary();
        }
        let at = self.bump().column;
        self.enter(at)?;
        let operand = self.unary()?;
        self.leave();
        self.node(at, at, Kind::Neg(Box::new(operand)))
    }

    fn primary(&mut self) -> Result<Node<'a>, Located> {
        let token = self.peek();
        match token.tok {
            Tok::Number(value) => {
                self.bump();
                self.node(token.column, token.column, Kind::Number(value))
            }
            Tok::Ident(name) => {
                self.bump();
                if self.peek().tok == Tok::LParen {
                    self.call(name, token.column)
                } else {
                    self.node(token.column, token.column, Kind::Name(name))
                }
            }
            Tok::LParen => {
                self.bump();
                self.enter(token.column)?;
                let mut inner = self.or()?;
                self.close(format!("`)` to close the `(` at column {}", token.column))?;
                self.leave();
                inner.column = token.column;
                Ok(inner)
            }
            _ => Err(self.unexpected("an operand (a number, a variable, a function call or `(`)")),
        }
    }

    fn call(&mut self, name: &'a str, column: usize) -> Result<Node<'a>, Located> {
        let open = self.bump();
        self.enter(open.column)?;
        let mut args = Vec::new();
        if self.peek().tok != Tok::RParen {
            loop {
                args.push(self.or()?);
                if self.peek().tok != Tok::Comma {
                    break;
                }
                self.bump();
            }
        }
        self.close(format!(
            "`,` or `)` to close the call to `{name}` at column {}",
            open.column
        ))?;
        self.leave();
        self.node(column, column, Kind::Call(name, args))
    }

    fn close(&mut self, expected: String) -> Result<(), Located> {
        if self.peek().tok != Tok::RParen {
            return Err(self.unexpected(&expected));
        }
        self.bump();
        Ok(())
    }
}
