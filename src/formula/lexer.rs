//! Python's tokenizer, for the part of the language formulas may use: numbers, names,
//! `+ - * / // % **`, parentheses, commas, whitespace and `#` comments, read as Python 3.11
//! reads them (for `eval` of a string: leading spaces and tabs are skipped, a formula is one
//! logical line, line breaks are allowed inside parentheses). Everything else is refused naming
//! the construct, and so is what this tokenizer is not sure to read exactly as Python does
//! (non-ASCII text, backslash continuations, a line break before the formula).

use num_bigint::BigInt;

use super::number::Value;

/// The longest formula, in bytes: far beyond any real one, it bounds the work a formula can ask.
pub const MAX_SOURCE_LEN: usize = 10_000;

/// Python refuses int literals of more than 4,300 decimal digits (`sys.int_info`); staying well
/// below that limit is safe.
const MAX_INT_LITERAL_DIGITS: usize = 4_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    Number(Value),
    Name(String),
    Op(Op),
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Plus,
    Minus,
    Star,
    Slash,
    DoubleSlash,
    Percent,
    DoubleStar,
    LParen,
    RParen,
    Comma,
}

/// A token and where it starts (1-based column, in characters: a formula is ASCII).
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned {
    pub token: Token,
    pub column: usize,
}

/// Python's keywords: none may be used, each is named in the refusal.
const KEYWORDS: [(&str, &str); 35] = [
    ("False", "the constant False"),
    ("None", "the constant None"),
    ("True", "the constant True"),
    ("and", "the boolean operator 'and'"),
    ("as", "the keyword 'as'"),
    ("assert", "the statement 'assert'"),
    ("async", "the keyword 'async'"),
    ("await", "the keyword 'await'"),
    ("break", "the statement 'break'"),
    ("class", "the statement 'class'"),
    ("continue", "the statement 'continue'"),
    ("def", "the statement 'def'"),
    ("del", "the statement 'del'"),
    ("elif", "the keyword 'elif'"),
    ("else", "a conditional expression ('if ... else')"),
    ("except", "the keyword 'except'"),
    ("finally", "the keyword 'finally'"),
    ("for", "a comprehension ('for')"),
    ("from", "the keyword 'from'"),
    ("global", "the statement 'global'"),
    ("if", "a conditional expression ('if ... else')"),
    ("import", "the statement 'import'"),
    ("in", "the comparison 'in'"),
    ("is", "the comparison 'is'"),
    ("lambda", "a lambda"),
    ("nonlocal", "the statement 'nonlocal'"),
    ("not", "the boolean operator 'not'"),
    ("or", "the boolean operator 'or'"),
    ("pass", "the statement 'pass'"),
    ("raise", "the statement 'raise'"),
    ("return", "the statement 'return'"),
    ("try", "the statement 'try'"),
    ("while", "the statement 'while'"),
    ("with", "the statement 'with'"),
    ("yield", "the keyword 'yield'"),
];

/// Operators and punctuation outside the language, longest first, with what they are.
const REFUSED_PUNCTUATION: [(&str, &str); 26] = [
    ("**=", "an assignment"),
    ("//=", "an assignment"),
    (">>=", "an assignment"),
    ("<<=", "an assignment"),
    ("...", "the constant Ellipsis"),
    ("==", "a comparison"),
    ("!=", "a comparison"),
    ("<=", "a comparison"),
    (">=", "a comparison"),
    ("<<", "the bitwise operator '<<'"),
    (">>", "the bitwise operator '>>'"),
    (":=", "an assignment expression ':='"),
    ("->", "an annotation '->'"),
    ("<", "a comparison"),
    (">", "a comparison"),
    ("|", "the bitwise operator '|'"),
    ("&", "the bitwise operator '&'"),
    ("^", "the bitwise operator '^' (Python's power is '**')"),
    ("~", "the bitwise operator '~'"),
    ("@", "the operator '@'"),
    ("=", "'=' (an assignment or a keyword argument)"),
    (":", "':' (a slice, lambda or annotation)"),
    (";", "';' (a formula is one expression)"),
    (".", "attribute access '.'"),
    ("[", "a subscript or list '['"),
    ("{", "a set or dict '{'"),
];

/// The tokens of a formula, ending with [`Token::End`].
pub fn tokenize(source: &str) -> Result<Vec<Spanned>, String> {
    if source.len() > MAX_SOURCE_LEN {
        return Err(format!(
            "is {} bytes long; meterbook reads formulas of at most {MAX_SOURCE_LEN}",
            source.len()
        ));
    }
    if let Some((at, c)) = source
        .char_indices()
        .find(|(_, c)| !c.is_ascii() || (c.is_ascii_control() && !"\t\n\r\x0c".contains(*c)))
    {
        return Err(format!(
            "at column {}: the character {c:?} is not supported (formulas are plain ASCII)",
            source[..at].chars().count() + 1
        ));
    }
    Lexer {
        s: source.as_bytes(),
        i: 0,
        depth: 0,
        tokens: Vec::new(),
    }
    .run()
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    /// Open parentheses: inside them, line breaks are whitespace.
    depth: usize,
    tokens: Vec<Spanned>,
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> u8 {
        self.s.get(self.i + ahead).copied().unwrap_or(0)
    }

    fn refuse(&self, what: &str) -> String {
        format!("at column {}: {what} is not supported", self.i + 1)
    }

    fn run(mut self) -> Result<Vec<Spanned>, String> {
        // `eval` of a string skips leading spaces and tabs.
        while matches!(self.peek(0), b' ' | b'\t') {
            self.i += 1;
        }
        while self.i < self.s.len() {
            let c = self.peek(0);
            match c {
                b' ' | b'\t' | b'\x0c' => self.i += 1,
                b'#' => self.skip_comment(),
                b'\n' | b'\r' if self.depth > 0 => self.i += 1,
                b'\n' | b'\r' => return self.end_of_line(),
                b'0'..=b'9' => self.number()?,
                b'.' if self.peek(1).is_ascii_digit() => self.number()?,
                b'a'..=b'z' | b'A'..=b'Z' | b'_' => self.name()?,
                b'\\' => return Err(self.refuse("a backslash (line continuation)")),
                b'\'' | b'"' => return Err(self.refuse("a string")),
                _ => self.punctuation()?,
            }
        }
        self.finish()
    }

    /// A line break outside parentheses ends the formula: only blank lines and comments may follow.
    fn end_of_line(mut self) -> Result<Vec<Spanned>, String> {
        if self.tokens.is_empty() {
            return Err(self.refuse("a line break before the formula"));
        }
        while self.i < self.s.len() {
            match self.peek(0) {
                b' ' | b'\t' | b'\x0c' | b'\n' | b'\r' => self.i += 1,
                b'#' => self.skip_comment(),
                _ => return Err(self.refuse("a second line (a formula is one expression)")),
            }
        }
        self.finish()
    }

    /// A `#` comment runs to the end of its line.
    fn skip_comment(&mut self) {
        while self.i < self.s.len() && !matches!(self.peek(0), b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn finish(mut self) -> Result<Vec<Spanned>, String> {
        self.tokens.push(Spanned {
            token: Token::End,
            column: self.i + 1,
        });
        Ok(self.tokens)
    }

    fn push(&mut self, token: Token, start: usize) {
        self.tokens.push(Spanned {
            token,
            column: start + 1,
        });
    }

    fn punctuation(&mut self) -> Result<(), String> {
        let start = self.i;
        let rest = &self.s[self.i..];
        let ops = [
            ("**", Op::DoubleStar),
            ("//", Op::DoubleSlash),
            ("+", Op::Plus),
            ("-", Op::Minus),
            ("*", Op::Star),
            ("/", Op::Slash),
            ("%", Op::Percent),
            ("(", Op::LParen),
            (")", Op::RParen),
            (",", Op::Comma),
        ];
        // Refused punctuation first: `**=` and `//=` begin like an operator.
        for (text, what) in REFUSED_PUNCTUATION {
            if rest.starts_with(text.as_bytes()) {
                return Err(self.refuse(what));
            }
        }
        if let Some((text, op)) = ops.iter().find(|(t, _)| rest.starts_with(t.as_bytes())) {
            let arithmetic = !matches!(op, Op::LParen | Op::RParen | Op::Comma);
            if arithmetic && rest.get(text.len()) == Some(&b'=') {
                return Err(self.refuse("an assignment"));
            }
            match op {
                Op::LParen => self.depth += 1,
                Op::RParen if self.depth == 0 => {
                    return Err(self.refuse("an unmatched ')'"));
                }
                Op::RParen => self.depth -= 1,
                _ => {}
            }
            self.i += text.len();
            self.push(Token::Op(*op), start);
            return Ok(());
        }
        let what = match self.peek(0) {
            b']' | b'}' => "a closing bracket without its opening one",
            _ => "this character",
        };
        Err(self.refuse(what))
    }

    fn name(&mut self) -> Result<(), String> {
        let start = self.i;
        while matches!(self.peek(0), b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_') {
            self.i += 1;
        }
        let name = std::str::from_utf8(&self.s[start..self.i]).expect("ASCII");
        if let Some((_, what)) = KEYWORDS.iter().find(|(k, _)| *k == name) {
            self.i = start;
            return Err(self.refuse(what));
        }
        // A string prefix (r'', b'', f'', ...) makes the name the start of a string.
        if matches!(self.peek(0), b'\'' | b'"') {
            self.i = start;
            return Err(self.refuse("a string"));
        }
        self.push(Token::Name(name.to_string()), start);
        Ok(())
    }

    /// Digits of one base, with single underscores between them (`digit (["_"] digit)*`).
    fn digits(&mut self, is_digit: fn(u8) -> bool) -> Result<usize, String> {
        let start = self.i;
        if is_digit(self.peek(0)) {
            self.i += 1;
            while is_digit(self.peek(0)) || (self.peek(0) == b'_' && is_digit(self.peek(1))) {
                self.i += 1;
            }
        }
        if self.peek(0) == b'_' {
            return Err(self.refuse("an underscore not between two digits"));
        }
        Ok(self.i - start)
    }

    fn number(&mut self) -> Result<(), String> {
        let start = self.i;
        let value = match (self.peek(0), self.peek(1).to_ascii_lowercase()) {
            (b'0', radix @ (b'x' | b'o' | b'b')) => {
                self.i += 2;
                let (radix, is_digit): (u32, fn(u8) -> bool) = match radix {
                    b'x' => (16, |c| c.is_ascii_hexdigit()),
                    b'o' => (8, |c| (b'0'..=b'7').contains(&c)),
                    _ => (2, |c| c == b'0' || c == b'1'),
                };
                // An underscore may follow the prefix: `0x_1f`.
                if self.peek(0) == b'_' {
                    self.i += 1;
                }
                if self.digits(is_digit)? == 0 {
                    return Err(self.refuse("an invalid number"));
                }
                let text = self.text(start + 2);
                Value::Int(
                    BigInt::parse_bytes(text.as_bytes(), radix).expect("digits of the radix"),
                )
            }
            _ => self.decimal(start)?,
        };
        let next = self.peek(0);
        if next.is_ascii_alphanumeric() || next == b'_' || next == b'.' {
            let what = if next == b'j' || next == b'J' {
                "a complex number"
            } else {
                "an invalid number (a letter, '_' or '.' right after it)"
            };
            return Err(self.refuse(what));
        }
        self.push(Token::Number(value), start);
        Ok(())
    }

    /// `decinteger`, `pointfloat` and `exponentfloat`.
    fn decimal(&mut self, start: usize) -> Result<Value, String> {
        let is_digit: fn(u8) -> bool = |c| c.is_ascii_digit();
        let whole = self.digits(is_digit)?;
        let mut float = false;
        if self.peek(0) == b'.' {
            self.i += 1;
            float = true;
            self.digits(is_digit)?;
        }
        if matches!(self.peek(0), b'e' | b'E') {
            let sign = usize::from(matches!(self.peek(1), b'+' | b'-'));
            if self.peek(1 + sign).is_ascii_digit() {
                self.i += 1 + sign;
                self.digits(is_digit)?;
                float = true;
            }
        }
        let text = self.text(start);
        if float {
            let x: f64 = text.parse().expect("a Python float literal is a Rust one");
            return Ok(Value::Float(x));
        }
        if text.starts_with('0') && text.bytes().any(|c| c != b'0') {
            return Err(format!(
                "at column {}: an int with leading zeros is not supported (Python refuses it)",
                start + 1
            ));
        }
        if whole > MAX_INT_LITERAL_DIGITS {
            return Err(format!(
                "at column {}: an int literal of more than {MAX_INT_LITERAL_DIGITS} digits is not supported",
                start + 1
            ));
        }
        Ok(Value::Int(text.parse().expect("decimal digits")))
    }

    /// The literal from `from` to here, without underscores.
    fn text(&self, from: usize) -> String {
        self.s[from..self.i]
            .iter()
            .filter(|c| **c != b'_')
            .map(|c| *c as char)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(s: &str) -> Vec<Token> {
        tokenize(s)
            .unwrap_or_else(|e| panic!("{s:?}: {e}"))
            .into_iter()
            .map(|t| t.token)
            .collect()
    }

    fn number(s: &str) -> Value {
        match tokens(s).as_slice() {
            [Token::Number(v), Token::End] => v.clone(),
            other => panic!("{s:?} gave {other:?}"),
        }
    }

    fn refusal(s: &str) -> String {
        tokenize(s).expect_err(s)
    }

    #[test]
    fn numeric_literals_read_as_python_reads_them() {
        let int = |i: i64| Value::int(i);
        assert_eq!(number("1_073_741_824"), int(1_073_741_824));
        assert_eq!(number("1e9"), Value::Float(1e9));
        assert_eq!(number(".5"), Value::Float(0.5));
        assert_eq!(number("5."), Value::Float(5.0));
        assert_eq!(number("1.e5"), Value::Float(1e5));
        assert_eq!(number("1E+05"), Value::Float(1e5));
        assert_eq!(number("1e-5"), Value::Float(1e-5));
        assert_eq!(number("1e1_0"), Value::Float(1e10));
        assert_eq!(number("1_000.000_1"), Value::Float(1000.0001));
        assert_eq!(number("007.5"), Value::Float(7.5));
        assert_eq!(number("01e3"), Value::Float(1000.0));
        assert_eq!(number("00"), int(0));
        assert_eq!(number("0_0"), int(0));
        assert_eq!(number("0x1F"), int(31));
        assert_eq!(number("0X_1f"), int(31));
        assert_eq!(number("0o17"), int(15));
        assert_eq!(number("0b1_0"), int(2));
        assert_eq!(number("1e400"), Value::Float(f64::INFINITY));
        assert_eq!(number("0.1"), Value::Float(0.1));
    }

    #[test]
    fn invalid_and_doubtful_literals_are_refused() {
        for bad in [
            "007", "08", "0_7", "1__0", "1_", "0_", "1._5", "5._", "1e", "1e+", "0x", "0b2", "2x",
            "1.real", "0x1g", "1.5.3",
        ] {
            assert!(refusal(bad).contains("not supported"), "{bad}");
        }
        assert!(refusal("1j").contains("a complex number"));
        assert!(refusal("1.5J").contains("a complex number"));
        assert!(refusal(&"9".repeat(4001)).contains("4000 digits"));
    }

    #[test]
    fn whitespace_comments_and_line_breaks_follow_python() {
        assert_eq!(tokens(" \t1 # a comment").len(), 2);
        assert_eq!(tokens("1\n").len(), 2);
        assert_eq!(tokens("1\r\n\n# done\n").len(), 2);
        assert_eq!(tokens("(1 # one\n + 2)").len(), 6);
        assert_eq!(tokens("(1\r\n+2)").len(), 6);
        assert!(refusal("1\n+2").contains("a second line"));
        assert!(refusal("\n1").contains("a line break before"));
        assert!(refusal("1 \\\n + 2").contains("backslash"));
        assert!(refusal("1\x00").contains("'\\0'"));
        assert!(refusal("\u{fb01}").contains("plain ASCII"));
    }

    #[test]
    fn constructs_outside_the_language_are_named() {
        let cases = [
            ("x < 1", "a comparison"),
            ("x == 1", "a comparison"),
            ("x and y", "'and'"),
            ("not x", "'not'"),
            ("1 if x else 2", "a conditional expression"),
            ("lambda: 1", "a lambda"),
            ("x | 1", "'|'"),
            ("~x", "'~'"),
            ("x << 1", "'<<'"),
            ("x ^ 2", "Python's power is '**'"),
            ("x @ y", "'@'"),
            ("'text'", "a string"),
            ("f'{x}'", "a string"),
            ("True", "the constant True"),
            ("None", "the constant None"),
            ("x.real", "attribute access"),
            ("x[0]", "a subscript"),
            ("x = 3", "an assignment"),
            ("x += 3", "an assignment"),
            ("(x := 3)", "an assignment expression"),
            ("x; y", "one expression"),
            ("{1}", "a set or dict"),
            ("...", "Ellipsis"),
            ("x)", "unmatched"),
            ("x for x in y", "a comprehension"),
            ("$", "this character"),
        ];
        for (formula, what) in cases {
            let why = refusal(formula);
            assert!(why.contains(what), "{formula}: {why}");
        }
    }
}
