//! Python's expression grammar for formulas, by precedence climbing, and the checks made before
//! any usage is read. The grammar (CPython's, restricted):
//!
//! ```text
//! expression := term (("+" | "-") term)*
//! term       := factor (("*" | "/" | "//" | "%") factor)*
//! factor     := ("+" | "-") factor | power
//! power      := atom ["**" factor]          -- so -2 ** 2 is -4, 2 ** -1 is 0.5, 2 ** 3 ** 2 is 512
//! atom       := NUMBER | VARIABLE | FUNCTION "(" [arguments [","]] ")" | "(" expression ")"
//! ```
//!
//! A formula is refused when it is outside this language, when it fails for every input (a call
//! with the wrong number of arguments, `round(x, 2.5)`, a constant formula that raises), and when
//! a `**` could give a complex number (see [`power_may_be_complex`]).

use super::number::Value;
use super::CompileError;
use crate::formula::lexer::{tokenize, Op, Spanned, Token};

/// How deep a formula's expression tree may be (parentheses, unary operators, calls and chains
/// of operators all count): this bounds the stack parsing and evaluation use.
const MAX_DEPTH: usize = 200;

/// The functions a formula may call: the predecessor's builtins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Abs,
    Min,
    Max,
    Round,
    Int,
    Float,
}

impl Builtin {
    pub const ALL: [Builtin; 6] = [
        Builtin::Abs,
        Builtin::Min,
        Builtin::Max,
        Builtin::Round,
        Builtin::Int,
        Builtin::Float,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Builtin::Abs => "abs",
            Builtin::Min => "min",
            Builtin::Max => "max",
            Builtin::Round => "round",
            Builtin::Int => "int",
            Builtin::Float => "float",
        }
    }

    /// Python's complaint when called with `n` positional arguments, if it always complains.
    fn arity_error(self, n: usize) -> Option<&'static str> {
        match (self, n) {
            (Builtin::Abs, 1)
            | (Builtin::Round, 1 | 2)
            | (Builtin::Int | Builtin::Float, 0 | 1) => None,
            (Builtin::Min | Builtin::Max, n) if n >= 2 => None,
            (Builtin::Abs, _) => Some("abs() takes exactly one argument"),
            (Builtin::Round, _) => Some("round() takes one or two arguments"),
            (Builtin::Int, _) => Some("int() of two arguments needs a string"),
            (Builtin::Float, _) => Some("float() takes at most one argument"),
            (_, 1) => Some("min() and max() of one argument need an iterable, not a number"),
            _ => Some("min() and max() need at least one argument"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
}

/// A parsed formula.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Literal(Value),
    /// An index into the variables the formula was compiled with.
    Variable(usize),
    Negate(Box<Node>),
    Plus(Box<Node>),
    Binary {
        op: BinOp,
        left: Box<Node>,
        right: Box<Node>,
        /// Where the operator is, for messages.
        column: usize,
    },
    Call(Builtin, Vec<Node>, usize),
}

/// Parses `source`, whose names may be the given variables and the six functions.
pub fn parse(source: &str, variables: &[String]) -> Result<Node, CompileError> {
    let tokens = tokenize(source).map_err(CompileError::unsupported)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        depth: 0,
        variables,
    };
    if parser.peek() == &Token::End {
        return Err(CompileError::unsupported("is empty".into()));
    }
    let tree = parser.expression()?;
    match parser.peek() {
        Token::End if depth(&tree) > MAX_DEPTH => Err(CompileError::unsupported(format!(
            "nests deeper than {MAX_DEPTH} levels"
        ))),
        Token::End => Ok(tree),
        Token::Op(Op::Comma) => Err(parser.refuse("a tuple (',')")),
        Token::Op(Op::LParen) => {
            Err(parser.refuse("a call of something that is not one of the functions"))
        }
        _ => Err(parser.refuse("a value right after a value (a missing operator)")),
    }
}

struct Parser<'a> {
    tokens: Vec<Spanned>,
    at: usize,
    depth: usize,
    variables: &'a [String],
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.tokens[self.at].token
    }

    fn column(&self) -> usize {
        self.tokens[self.at].column
    }

    fn next(&mut self) -> Token {
        let token = self.tokens[self.at].token.clone();
        if token != Token::End {
            self.at += 1;
        }
        token
    }

    fn refuse(&self, what: &str) -> CompileError {
        CompileError::unsupported(format!(
            "at column {}: {what} is not supported",
            self.column()
        ))
    }

    /// Enters a factor: every level of nesting passes through one, so this bounds recursion.
    fn deeper(&mut self) -> Result<(), CompileError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(CompileError::unsupported(format!(
                "nests deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(())
    }

    fn expression(&mut self) -> Result<Node, CompileError> {
        let mut left = self.term()?;
        while let Token::Op(op @ (Op::Plus | Op::Minus)) = *self.peek() {
            let column = self.column();
            self.next();
            let right = self.term()?;
            let op = if op == Op::Plus {
                BinOp::Add
            } else {
                BinOp::Sub
            };
            left = binary(op, left, right, column);
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Node, CompileError> {
        let mut left = self.factor()?;
        loop {
            let op = match self.peek() {
                Token::Op(Op::Star) => BinOp::Mul,
                Token::Op(Op::Slash) => BinOp::Div,
                Token::Op(Op::DoubleSlash) => BinOp::FloorDiv,
                Token::Op(Op::Percent) => BinOp::Mod,
                _ => return Ok(left),
            };
            let column = self.column();
            self.next();
            let right = self.factor()?;
            left = binary(op, left, right, column);
        }
    }

    fn factor(&mut self) -> Result<Node, CompileError> {
        self.deeper()?;
        let node = match *self.peek() {
            Token::Op(op @ (Op::Plus | Op::Minus)) => {
                self.next();
                let operand = Box::new(self.factor()?);
                if op == Op::Minus {
                    Node::Negate(operand)
                } else {
                    Node::Plus(operand)
                }
            }
            _ => self.power()?,
        };
        self.depth -= 1;
        Ok(node)
    }

    fn power(&mut self) -> Result<Node, CompileError> {
        let base = self.atom()?;
        if *self.peek() == Token::Op(Op::LParen) {
            return Err(self.refuse("a call of something that is not one of the functions"));
        }
        if *self.peek() != Token::Op(Op::DoubleStar) {
            return Ok(base);
        }
        let column = self.column();
        self.next();
        let exponent = self.factor()?;
        Ok(binary(BinOp::Pow, base, exponent, column))
    }

    fn atom(&mut self) -> Result<Node, CompileError> {
        let column = self.column();
        match self.next() {
            Token::Number(v) => Ok(Node::Literal(v)),
            Token::Name(name) => {
                if let Some(f) = Builtin::ALL.iter().find(|f| f.name() == name) {
                    if *self.peek() != Token::Op(Op::LParen) {
                        self.at -= 1;
                        return Err(
                            self.refuse(&format!("the function '{name}' used without calling it"))
                        );
                    }
                    self.next();
                    return self.call(*f, column);
                }
                match self.variables.iter().position(|v| *v == name) {
                    Some(i) => Ok(Node::Variable(i)),
                    None => Err(CompileError::unsupported(format!(
                        "unknown variable '{name}'; known: {}",
                        self.variables.join(", ")
                    ))),
                }
            }
            Token::Op(Op::LParen) => {
                let inner = self.expression()?;
                match self.next() {
                    Token::Op(Op::RParen) => {}
                    Token::Op(Op::Comma) => {
                        self.at -= 1;
                        return Err(self.refuse("a tuple (',')"));
                    }
                    _ => {
                        self.at -= 1;
                        return Err(self.refuse("an expression without its ')'"));
                    }
                }
                Ok(inner)
            }
            Token::Op(Op::Star) => {
                self.at -= 1;
                Err(self.refuse("a starred expression ('*')"))
            }
            Token::Op(Op::DoubleStar) => {
                self.at -= 1;
                Err(self.refuse("'**' without a left operand (keyword unpacking)"))
            }
            Token::End => Err(CompileError::unsupported(
                "ends where a value is expected".into(),
            )),
            _ => {
                self.at -= 1;
                Err(self.refuse("an operator where a value is expected"))
            }
        }
    }

    /// The arguments of a call, after its '('.
    fn call(&mut self, f: Builtin, column: usize) -> Result<Node, CompileError> {
        let mut args = Vec::new();
        while *self.peek() != Token::Op(Op::RParen) {
            if let Token::Op(Op::Star | Op::DoubleStar) = self.peek() {
                return Err(self.refuse("an unpacked argument ('*' or '**')"));
            }
            args.push(self.expression()?);
            match self.peek() {
                Token::Op(Op::Comma) => {
                    self.next();
                }
                Token::Op(Op::RParen) => {}
                _ => return Err(self.refuse("an argument not followed by ',' or ')'")),
            }
        }
        self.next();
        if let Some(why) = f.arity_error(args.len()) {
            return Err(CompileError::always_fails(format!(
                "at column {column}: {why} (Python raises TypeError)"
            )));
        }
        Ok(Node::Call(f, args, column))
    }
}

fn binary(op: BinOp, left: Node, right: Node, column: usize) -> Node {
    Node::Binary {
        op,
        left: Box::new(left),
        right: Box::new(right),
        column,
    }
}

/// What a subexpression is sure to be, whatever the variables hold (each may be int or float).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Either,
}

fn kind(node: &Node) -> Kind {
    let join = |a: Kind, b: Kind| match (a, b) {
        (Kind::Int, Kind::Int) => Kind::Int,
        (Kind::Float, _) | (_, Kind::Float) => Kind::Float,
        _ => Kind::Either,
    };
    match node {
        Node::Literal(Value::Int(_)) => Kind::Int,
        Node::Literal(Value::Float(_)) => Kind::Float,
        Node::Variable(_) => Kind::Either,
        Node::Negate(x) | Node::Plus(x) => kind(x),
        Node::Binary {
            op, left, right, ..
        } => match op {
            BinOp::Div => Kind::Float,
            // int ** int is a float when the exponent is negative.
            BinOp::Pow => match join(kind(left), kind(right)) {
                Kind::Float => Kind::Float,
                _ => Kind::Either,
            },
            _ => join(kind(left), kind(right)),
        },
        Node::Call(f, args, _) => match (f, args.as_slice()) {
            (Builtin::Int, _) | (Builtin::Round, [_]) => Kind::Int,
            (Builtin::Float, _) => Kind::Float,
            (Builtin::Abs | Builtin::Round, [x, ..]) => kind(x),
            (_, args) => {
                let kinds: Vec<Kind> = args.iter().map(kind).collect();
                if kinds.iter().all(|k| *k == kinds[0]) {
                    kinds[0]
                } else {
                    Kind::Either
                }
            }
        },
    }
}

/// Whether the value is sure not to be below zero (it may be -0.0 or NaN), given that every
/// variable is a non-negative sum.
fn non_negative(node: &Node) -> bool {
    match node {
        Node::Literal(_) | Node::Variable(_) => true,
        Node::Negate(_) => false,
        Node::Plus(x) => non_negative(x),
        Node::Binary {
            op, left, right, ..
        } => match op {
            BinOp::Add | BinOp::Mul | BinOp::Div | BinOp::FloorDiv => {
                non_negative(left) && non_negative(right)
            }
            // The remainder takes the divisor's sign; a power of a non-negative base is one.
            BinOp::Mod => non_negative(right),
            BinOp::Pow => non_negative(left),
            BinOp::Sub => false,
        },
        Node::Call(Builtin::Abs, _, _) => true,
        // round(x, ndigits) has the sign of x.
        Node::Call(Builtin::Round, args, _) => non_negative(&args[0]),
        Node::Call(_, args, _) => args.iter().all(non_negative),
    }
}

/// Whether the value, when it is a float, is sure to be a whole number.
fn integral(node: &Node) -> bool {
    match node {
        Node::Literal(Value::Float(x)) => x.is_finite() && x.fract() == 0.0,
        Node::Negate(x) | Node::Plus(x) => integral(x),
        other => kind(other) == Kind::Int,
    }
}

/// Python gives a complex number for a negative base to a fractional power. meterbook has no
/// complex numbers (the predecessor dropped such a contract for the month), so it refuses every
/// `**` whose base may be negative while its exponent may be fractional: `(a - b) ** 0.5` is
/// refused, `abs(a - b) ** 0.5`, `a ** 0.5` and `(a - b) ** 2` are not.
pub fn power_may_be_complex(node: &Node) -> Option<usize> {
    match node {
        Node::Literal(_) | Node::Variable(_) => None,
        Node::Negate(x) | Node::Plus(x) => power_may_be_complex(x),
        Node::Binary {
            op,
            left,
            right,
            column,
        } => {
            if *op == BinOp::Pow && !non_negative(left) && !integral(right) {
                return Some(*column);
            }
            power_may_be_complex(left).or_else(|| power_may_be_complex(right))
        }
        Node::Call(_, args, _) => args.iter().find_map(power_may_be_complex),
    }
}

/// A `round(x, ndigits)` whose ndigits is sure to be a float: Python always raises TypeError.
pub fn float_ndigits(node: &Node) -> Option<usize> {
    match node {
        Node::Literal(_) | Node::Variable(_) => None,
        Node::Negate(x) | Node::Plus(x) => float_ndigits(x),
        Node::Binary { left, right, .. } => float_ndigits(left).or_else(|| float_ndigits(right)),
        Node::Call(f, args, column) => {
            if *f == Builtin::Round && args.len() == 2 && kind(&args[1]) == Kind::Float {
                return Some(*column);
            }
            args.iter().find_map(float_ndigits)
        }
    }
}

/// The depth of the expression tree.
fn depth(node: &Node) -> usize {
    1 + match node {
        Node::Literal(_) | Node::Variable(_) => 0,
        Node::Negate(x) | Node::Plus(x) => depth(x),
        Node::Binary { left, right, .. } => depth(left).max(depth(right)),
        Node::Call(_, args, _) => args.iter().map(depth).max().unwrap_or(0),
    }
}

/// Whether the formula reads any variable.
pub fn reads_variables(node: &Node) -> bool {
    match node {
        Node::Literal(_) => false,
        Node::Variable(_) => true,
        Node::Negate(x) | Node::Plus(x) => reads_variables(x),
        Node::Binary { left, right, .. } => reads_variables(left) || reads_variables(right),
        Node::Call(_, args, _) => args.iter().any(reads_variables),
    }
}
