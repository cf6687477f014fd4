//! Formulas mean what Python means: meterbook's evaluator against `python3` evaluating the same
//! formulas the way the predecessor did (`tests/py/eval_formulas.py`: `eval` with builtins
//! restricted to `abs min max round int float`), over thousands of random formulas of the
//! predecessor's grammar and random sums, and over literal and syntax edge cases. One python3
//! process answers every case.
//!
//! Every case must end the same way: the same exact value (int digits, float bits) and the
//! quantity the predecessor sent for it (`int(float(value))`, computed by Python), or the same
//! Python exception. Two documented differences in what is sent: an int above 2^53 is sent exactly
//! (the predecessor's `float()` rounded it), and a value of 2^63 or more is refused. The one other outcome allowed is a refusal
//! when the formula is compiled: for a `**` that could be complex (meterbook's documented class,
//! counted), for a formula that fails for every input (Python must then raise), and, among the
//! edge cases only, for any construct outside the language (never for one Python runs).
//!
//! The seed is random per run and printed on failure; `METERBOOK_FORMULA_SEED=<n>` replays one.

use std::fmt::Write as _;

use meterbook::dimensions::{formula_quantity, Rounding};
use meterbook::formula::{Expression, Refusal, Value};
use num_bigint::BigInt;
use num_traits::ToPrimitive;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};

use crate::util::python_script;

/// The predecessor's variables, and one more dimension (meterbook lets formulas read any).
const VARIABLES: [&str; 10] = [
    "cpu_core_hours",
    "memory_byte_hours",
    "storage_allocated_byte_hours",
    "replica_hours",
    "cpu_core_hours_total_price",
    "memory_byte_hours_total_price",
    "storage_allocated_byte_hours_total_price",
    "replica_hours_total_price",
    "pricePerUnit",
    "gpu_hours",
];

const RANDOM_CASES: usize = 6_000;

/// What Python answered for one case.
#[derive(Debug, Clone, PartialEq)]
enum Python {
    /// A number, and the quantity the predecessor sent for it (None: nothing).
    Number(Value, Option<BigInt>),
    /// A result that is not an int or a float (a complex number).
    Other(String),
    Error(String),
}

/// One formula over one set of sums.
struct Case {
    formula: String,
    values: Vec<Value>,
}

#[test]
fn random_formulas_evaluate_exactly_as_python_evaluates_them() {
    let seed = std::env::var("METERBOOK_FORMULA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let mut rng = StdRng::seed_from_u64(seed);
    let cases: Vec<Case> = (0..RANDOM_CASES)
        .map(|i| {
            let values: Vec<Value> = VARIABLES.iter().map(|_| sum(&mut rng)).collect();
            // One case in twenty divides or rounds ints of thousands of bits.
            let formula = if i % 20 == 0 {
                big_int_formula(&mut rng)
            } else {
                Generator::new(&mut rng).formula()
            };
            Case { formula, values }
        })
        .collect();
    let answers = python(&cases);
    let mut tally = Tally::default();
    for (i, (case, answer)) in cases.iter().zip(&answers).enumerate() {
        if let Err(why) = compare(case, answer, false, &mut tally) {
            panic!(
                "seed {seed} (METERBOOK_FORMULA_SEED={seed} replays it), case {i}: {why}\n{}",
                describe(case, answer)
            );
        }
    }
    println!("seed {seed}: {tally:?}");
    // The cases must mostly be numbers, or the test would prove little.
    assert!(
        tally.same_value * 2 > RANDOM_CASES,
        "seed {seed}: too few cases gave a number: {tally:?}"
    );
    assert!(tally.same_error > 0 && tally.maybe_complex > 0, "{tally:?}");
}

#[test]
fn literals_and_syntax_edge_cases_are_read_as_python_reads_them_or_refused() {
    // (formula, whether meterbook must accept it)
    let cases: Vec<(String, bool)> = [
        ("1_073_741_824", true),
        ("1e9", true),
        (".5", true),
        ("5.", true),
        ("1.e5", true),
        ("1E+05", true),
        ("1e-5", true),
        ("1e1_0", true),
        ("1_000.000_1", true),
        ("0x1F", true),
        ("0X_1f", true),
        ("0o17", true),
        ("0b1_0", true),
        ("00", true),
        ("0_0", true),
        ("007.5", true),
        ("01e3", true),
        ("1e400", true),
        ("1e-400", true),
        ("max(1, 2,)", true),
        ("round(2.5,)", true),
        (" cpu_core_hours", true),
        ("\tcpu_core_hours", true),
        ("cpu_core_hours # comment", true),
        ("cpu_core_hours\n", true),
        ("cpu_core_hours\r\n", true),
        ("cpu_core_hours\n\n# done\n", true),
        ("(cpu_core_hours\n + 1)", true),
        ("(cpu_core_hours # one\n + 1)", true),
        ("(cpu_core_hours\r\n+1)", true),
        ("1\x0c+ 1", true),
        ("-2 ** 2", true),
        ("2 ** -1", true),
        ("2 ** 3 ** 2", true),
        ("2 ** 2 ** -1", true),
        ("+-+1", true),
        ("--1", true),
        ("int()", true),
        ("float()", true),
        ("round(0.125, 2)", true),
        ("round(2.675, 2)", true),
        ("round(-0.5)", true),
        ("round(5, 10 ** 30)", true),
        ("round(5.5, -10 ** 30)", true),
        ("min(2.0 ** 53, 2 ** 53)", true),
        ("max(2 ** 53 + 1, 2.0 ** 53)", true),
        ("cpu_core_hours // 2", true),
        ("round(cpu_core_hours / 4)", true),
        ("memory_byte_hours / 1024 ** 3", true),
        ("memory_byte_hours / 1073741824", true),
        ("cpu_core_hours + memory_byte_hours / 1024 ** 3", true),
        ("replica_hours_total_price / 0.01", true),
        ("replica_hours * pricePerUnit / 0.01", true),
        ("10 ** 400 / 10 ** 399", true),
        ("2 ** 1023 * 2.0", true),
        ("1e308 * 10", true),
        ("float(2 ** 1024 - 2 ** 970)", false),
        ("1 / 0", false),
        ("round(1e400)", false),
        ("007", false),
        ("08", false),
        ("0_7", false),
        ("1__0", false),
        ("1_", false),
        ("1._5", false),
        ("5._", false),
        ("1e", false),
        ("1e+", false),
        ("0x", false),
        ("0b", false),
        ("0b2", false),
        ("2x", false),
        ("1.real", false),
        ("1 .real", false),
        ("cpu_core_hours.real", false),
        ("1j", false),
        ("1.5J", false),
        ("1e5j", false),
        ("\n1", false),
        ("\n 1", false),
        ("1\n+2", false),
        ("1 \\\n + 2", false),
        ("cpu_core_hours < 1", false),
        ("cpu_core_hours == 1", false),
        ("cpu_core_hours and 1", false),
        ("not cpu_core_hours", false),
        ("1 if cpu_core_hours else 2", false),
        ("lambda: 1", false),
        ("cpu_core_hours | 1", false),
        ("~cpu_core_hours", false),
        ("cpu_core_hours << 1", false),
        ("cpu_core_hours ^ 2", false),
        ("cpu_core_hours @ cpu_core_hours", false),
        ("'text'", false),
        ("True", false),
        ("None", false),
        ("...", false),
        ("cpu_core_hours[0]", false),
        ("[cpu_core_hours]", false),
        ("{cpu_core_hours}", false),
        ("cpu_core_hours = 3", false),
        ("(cpu_core_hours := 3)", false),
        ("cpu_core_hours; 1", false),
        ("cpu_core_hours)", false),
        ("(cpu_core_hours", false),
        ("abs", false),
        ("abs + 1", false),
        ("abs(1)(2)", false),
        ("(abs)(1)", false),
        ("max(1)", false),
        ("max()", false),
        ("abs(1, 2)", false),
        ("min(*[1, 2])", false),
        ("round(1, ndigits=2)", false),
        ("round(1, 2.0)", false),
        ("int(1, 2)", false),
        ("float(1, 2)", false),
        ("pow(2, 3)", false),
        ("sqrt(4)", false),
        ("cpu_hours", false),
        ("__import__('os')", false),
        ("(1, 2)", false),
        ("1,", false),
        ("1 2", false),
        ("", false),
        ("  ", false),
        ("(-8) ** (1 / 3)", false),
        ("(cpu_core_hours - 100) ** 0.5", false),
        ("\u{fb01}", false),
        ("1\x00", false),
    ]
    .into_iter()
    .map(|(f, accept)| (f.to_string(), accept))
    .chain([("9".repeat(4400), false), ("9".repeat(3000), true)])
    .collect();
    let values = |i: usize| Value::int(if i == 0 { 10 } else { 3 << 30 });
    let edge: Vec<Case> = cases
        .iter()
        .map(|(formula, _)| Case {
            formula: formula.clone(),
            values: (0..VARIABLES.len()).map(values).collect(),
        })
        .collect();
    let answers = python(&edge);
    let mut tally = Tally::default();
    for ((case, answer), (_, accept)) in edge.iter().zip(&answers).zip(&cases) {
        if let Err(why) = compare(case, answer, true, &mut tally) {
            panic!("{why}\n{}", describe(case, answer));
        }
        let compiled = Expression::compile(&case.formula, &names());
        assert!(
            !accept || compiled.is_ok(),
            "{:?} must be accepted: {}",
            case.formula,
            compiled.unwrap_err()
        );
    }
}

/// How the cases ended.
#[derive(Debug, Default)]
struct Tally {
    same_value: usize,
    same_error: usize,
    maybe_complex: usize,
    always_fails: usize,
    refused: usize,
}

fn names() -> Vec<String> {
    VARIABLES.iter().map(|v| v.to_string()).collect()
}

/// Checks one case against Python's answer; `edge` allows refusing any construct.
fn compare(case: &Case, python: &Python, edge: bool, tally: &mut Tally) -> Result<(), String> {
    let expression = match Expression::compile(&case.formula, &names()) {
        Ok(e) => e,
        Err(e) => {
            return match (e.refusal, python) {
                (Refusal::MaybeComplex, _) => {
                    tally.maybe_complex += 1;
                    Ok(())
                }
                (Refusal::AlwaysFails, Python::Error(_)) => {
                    tally.always_fails += 1;
                    Ok(())
                }
                (Refusal::Unsupported, _) if edge => {
                    tally.refused += 1;
                    Ok(())
                }
                _ => Err(format!(
                    "meterbook refused it ({e}) but Python gave {python:?}"
                )),
            };
        }
    };
    if edge && *python == Python::Error("SyntaxError".into()) {
        return Err("meterbook accepted what Python cannot parse".into());
    }
    match (expression.eval(&case.values), python) {
        (Ok(mine), Python::Number(theirs, sent)) => {
            if !same(&mine, theirs) {
                return Err(format!("meterbook gave {mine:?}, Python {theirs:?}"));
            }
            let ours = formula_quantity(&mine, Rounding::Floor).ok();
            let expected = match (&mine, sent) {
                (Value::Int(i), Some(_)) if i.bits() > 53 => i.to_i64(),
                (_, Some(q)) => q.to_i64(),
                (_, None) => None,
            };
            if ours != expected {
                return Err(format!(
                    "quantity sent: meterbook {ours:?}, the predecessor {sent:?}, expected {expected:?}"
                ));
            }
            tally.same_value += 1;
            Ok(())
        }
        (Err(mine), Python::Error(theirs)) if mine.python_name() == theirs => {
            tally.same_error += 1;
            Ok(())
        }
        (mine, theirs) => Err(format!("meterbook gave {mine:?}, Python {theirs:?}")),
    }
}

/// The same Python value: equal ints, or floats with the same bits (any NaN equals any NaN).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Float(x), Value::Float(y)) => {
            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
        }
        _ => false,
    }
}

fn describe(case: &Case, python: &Python) -> String {
    let mut out = format!("formula: {:?}\nvariables:\n", case.formula);
    for (name, value) in VARIABLES.iter().zip(&case.values) {
        let shown = match value {
            Value::Int(i) => format!("{i}"),
            Value::Float(x) => format!("float {x:?} (bits {:#018x})", x.to_bits()),
        };
        writeln!(out, "  {name} = {shown}").unwrap();
    }
    write!(out, "python: {python:?}").unwrap();
    out
}

/// Asks python3 (one process) for every case's answer.
fn python(cases: &[Case]) -> Vec<Python> {
    let input: String = cases
        .iter()
        .map(|c| {
            let vars: serde_json::Map<String, Json> = VARIABLES
                .iter()
                .zip(&c.values)
                .map(|(name, v)| (name.to_string(), encode(v)))
                .collect();
            json!({"formula": c.formula, "vars": vars}).to_string() + "\n"
        })
        .collect();
    let out = python_script("tests/py/eval_formulas.py")
        .stdin(input)
        .expect_code(0);
    let answers: Vec<Python> = out
        .stdout
        .lines()
        .map(|line| decode(&serde_json::from_str(line).unwrap()))
        .collect();
    assert_eq!(answers.len(), cases.len(), "one answer per case");
    answers
}

fn encode(v: &Value) -> Json {
    match v {
        Value::Int(i) => json!({"int": format!("{i:x}")}),
        Value::Float(x) => json!({"float": x.to_bits().to_string()}),
    }
}

fn decode(answer: &Json) -> Python {
    let text = |key: &str| answer[key].as_str().map(str::to_string);
    let sent = text("sent").map(|hex| from_hex(&hex));
    if let Some(hex) = text("int") {
        return Python::Number(Value::Int(from_hex(&hex)), sent);
    }
    if let Some(bits) = text("float") {
        return Python::Number(Value::Float(f64::from_bits(bits.parse().unwrap())), sent);
    }
    if let Some(name) = text("other") {
        return Python::Other(name);
    }
    Python::Error(text("error").expect("an error name"))
}

/// An int written by Python's `hex()`.
fn from_hex(hex: &str) -> BigInt {
    let (negative, digits) = match hex.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, hex),
    };
    let digits = digits.strip_prefix("0x").expect("Python's hex()");
    let magnitude = BigInt::parse_bytes(digits.as_bytes(), 16).unwrap();
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// A random sum: ints small and byte-hour sized, fractions, zeros, floats of every size, and
/// values around 2^53 where int and float part ways. Never negative, like every ledger sum.
fn sum(rng: &mut StdRng) -> Value {
    match rng.random_range(0..100) {
        0..15 => Value::int(0),
        15..40 => Value::int(rng.random_range(1..=1000)),
        40..58 => Value::int(rng.random_range(10_000_000_000..=1_000_000_000_000_000)),
        58..62 => Value::int((1 << 53) + rng.random_range(-3..=3)),
        62..70 => Value::Float(f64::from(rng.random_range(0..4000_u32)) / 8.0),
        70..78 => Value::Float(f64::from(rng.random_range(0..100_000_u32)) / 100.0),
        78..85 => Value::Float(rng.random_range(1e10..1e15)),
        85..89 => Value::Float(0.0),
        89..93 => Value::Float(9007199254740992.0 + 2.0 * f64::from(rng.random_range(-3..=3))),
        93..97 => Value::Float(rng.random_range(0.0..1.0)),
        _ => Value::Float(10_f64.powi(rng.random_range(-300..=300)) * rng.random_range(1.0..10.0)),
    }
}

/// A formula that divides, rounds or converts ints of thousands of bits (where big-int division
/// changes algorithm).
fn big_int_formula(rng: &mut StdRng) -> String {
    let v = |rng: &mut StdRng| VARIABLES[rng.random_range(0..VARIABLES.len())];
    let (a, b) = (v(rng), v(rng));
    let (p, q) = (rng.random_range(100..320), rng.random_range(60..300));
    match rng.random_range(0..8) {
        0 => format!("({a} + 2) ** {p} // ({b} + 3) ** {q}"),
        1 => format!("({a} + 2) ** {p} % (({b} + 3) ** {q} + 7)"),
        2 => format!("({a} + 2) ** {p} / (({b} + 3) ** {q} + 1)"),
        3 => format!("round(({a} + 2) ** {q}, -{})", rng.random_range(1..400)),
        4 => format!("float(({a} + 2) ** {})", rng.random_range(1..80)),
        5 => format!("max(({a} + 1) ** {}, float({b}))", rng.random_range(1..30)),
        6 => format!("-({a} + 2) ** {p} // ({b} + 3) ** {q}"),
        _ => format!("({a} + 7) ** {p} // ({a} + 7) ** {}", p - 1),
    }
}

/// Random formulas of the predecessor's grammar, printed with the parentheses precedence needs
/// (and some it does not), random spacing, literals in every form, and calls of the six functions.
/// It keeps ints far below meterbook's size bound, since Python has none (it would hang or differ).
struct Generator<'a> {
    rng: &'a mut StdRng,
    /// Leaves still to place, so that formulas stay small.
    leaves: usize,
}

/// A printed subexpression: its text, its precedence (1 sum, 2 term, 3 unary, 4 power, 5 atom),
/// and an upper bound of the bits of its value when that is an int.
struct Printed {
    text: String,
    level: u8,
    bits: u64,
}

impl Printed {
    fn atom(text: String, bits: u64) -> Printed {
        Printed {
            text,
            level: 5,
            bits,
        }
    }
}

/// Ints above this many bits are kept out of the formulas (meterbook's bound is 100,000).
const BITS_BUDGET: u64 = 40_000;

impl<'a> Generator<'a> {
    fn new(rng: &'a mut StdRng) -> Generator<'a> {
        let leaves = rng.random_range(1..12);
        Generator { rng, leaves }
    }

    fn formula(&mut self) -> String {
        let mut e = self.expression(4);
        if self.rng.random_bool(0.1) {
            e.text = format!("({})", e.text);
        }
        let pad = |rng: &mut StdRng| [" ", "", "  ", "\t"][rng.random_range(0..4)];
        let (before, after) = (pad(self.rng), pad(self.rng));
        let comment = if self.rng.random_bool(0.05) {
            " # the formula"
        } else {
            ""
        };
        format!("{before}{}{after}{comment}", e.text)
    }

    fn space(&mut self) -> &'static str {
        [" ", " ", "", "  "][self.rng.random_range(0..4)]
    }

    /// `text` wrapped in parentheses when its precedence is below `level`, or now and then anyway.
    fn at_least(&mut self, p: Printed, level: u8) -> Printed {
        if p.level < level || (p.level < 5 && self.rng.random_bool(0.15)) {
            Printed::atom(format!("({})", p.text), p.bits)
        } else {
            p
        }
    }

    fn expression(&mut self, depth: u32) -> Printed {
        if depth == 0 || self.leaves <= 1 || self.rng.random_bool(0.25) {
            return self.leaf();
        }
        match self.rng.random_range(0..100) {
            0..55 => self.binary(depth),
            55..67 => self.unary(depth),
            67..80 => self.power(depth),
            _ => self.call(depth),
        }
    }

    fn binary(&mut self, depth: u32) -> Printed {
        let (op, level) = [("+", 1), ("-", 1), ("*", 2), ("/", 2), ("//", 2), ("%", 2)]
            [self.rng.random_range(0..6)];
        let left = self.expression(depth - 1);
        let right = self.expression(depth - 1);
        // Left-associative: the left operand may be of the same level, the right one not.
        let left = self.at_least(left, level);
        let right = self.at_least(right, level + 1);
        let bits = match op {
            "+" | "-" => left.bits.max(right.bits) + 1,
            "*" => left.bits + right.bits,
            _ => left.bits.max(right.bits),
        };
        let (s1, s2) = (self.space(), self.space());
        Printed {
            text: format!("{}{s1}{op}{s2}{}", left.text, right.text),
            level,
            bits,
        }
    }

    fn unary(&mut self, depth: u32) -> Printed {
        let op = if self.rng.random_bool(0.8) { "-" } else { "+" };
        let operand = self.expression(depth - 1);
        let operand = self.at_least(operand, 3);
        let space = if self.rng.random_bool(0.8) { "" } else { " " };
        Printed {
            text: format!("{op}{space}{}", operand.text),
            level: 3,
            bits: operand.bits,
        }
    }

    /// `base ** exponent`, the exponent small (an int up to 6, a float, or a small variable
    /// expression), so that ints stay within [`BITS_BUDGET`].
    fn power(&mut self, depth: u32) -> Printed {
        let base = self.expression(depth - 1);
        // The base is a primary: anything else needs parentheses (`(-2) ** 2`).
        let base = self.at_least(base, 5);
        let v = self.variable().text;
        let (exponent, times) = match self.rng.random_range(0..10) {
            0..4 => {
                let k = self.rng.random_range(0..=6_u64);
                (k.to_string(), k)
            }
            4 => (format!("-{}", self.rng.random_range(1..=3)), 0),
            5 => {
                let f = ["0.5", ".5", "1.5", "2.0", "0.25", "3.", "1e-1", "2.5e0"];
                (f[self.rng.random_range(0..f.len())].to_string(), 3)
            }
            6 => (
                format!("-{}", ["0.5", "1.5", "2.0"][self.rng.random_range(0..3)]),
                0,
            ),
            7 => (format!("({v} % 5)"), 4),
            8 => (format!("int({v} % 7)"), 6),
            _ => {
                let w = self.variable().text;
                (format!("({v} / ({w} + 1))"), 0)
            }
        };
        let bits = base.bits.saturating_mul(times.max(1));
        if bits > BITS_BUDGET {
            return base;
        }
        let (s1, s2) = (self.space(), self.space());
        Printed {
            text: format!("{}{s1}**{s2}{exponent}", base.text),
            level: 4,
            bits,
        }
    }

    fn call(&mut self, depth: u32) -> Printed {
        let f = ["abs", "min", "max", "round", "int", "float"][self.rng.random_range(0..6)];
        let count = match f {
            "min" | "max" => self.rng.random_range(2..=4),
            "round" => self.rng.random_range(1..=2),
            "int" | "float" if self.rng.random_bool(0.1) => 0,
            _ => 1,
        };
        let mut args: Vec<Printed> = (0..count).map(|_| self.expression(depth - 1)).collect();
        if f == "round" && count == 2 {
            args[1] = self.ndigits();
        }
        let bits = match f {
            // int() and round() of a float up to 1e308.
            "int" | "round" => args.iter().map(|a| a.bits).max().unwrap_or(0).max(1030),
            "float" => 0,
            _ => args.iter().map(|a| a.bits).max().unwrap_or(0),
        };
        let sep = if self.rng.random_bool(0.5) { ", " } else { "," };
        let mut text: Vec<String> = args.into_iter().map(|a| a.text).collect();
        if count > 0 && self.rng.random_bool(0.1) {
            text.push(String::new());
        }
        Printed::atom(format!("{f}({})", text.join(sep)), bits)
    }

    /// round()'s ndigits: mostly a small int, sometimes a variable (an int, or a float Python
    /// refuses), or a float literal (refused for every input).
    fn ndigits(&mut self) -> Printed {
        match self.rng.random_range(0..10) {
            0..6 => Printed::atom(self.rng.random_range(0..=4).to_string(), 3),
            6 | 7 => Printed {
                text: format!("-{}", self.rng.random_range(1..=12)),
                level: 3,
                bits: 4,
            },
            8 => self.variable(),
            _ => Printed::atom("2.0".into(), 0),
        }
    }

    fn leaf(&mut self) -> Printed {
        self.leaves = self.leaves.saturating_sub(1);
        if self.rng.random_bool(0.55) {
            self.variable()
        } else {
            self.literal()
        }
    }

    fn variable(&mut self) -> Printed {
        Printed::atom(
            VARIABLES[self.rng.random_range(0..VARIABLES.len())].to_string(),
            60,
        )
    }

    fn literal(&mut self) -> Printed {
        let ints = [
            "0",
            "1",
            "2",
            "3",
            "4",
            "7",
            "10",
            "24",
            "60",
            "100",
            "1000",
            "1024",
            "3600",
            "1_000",
            "1_073_741_824",
            "1073741824",
            "0x10",
            "0o17",
            "0b101",
            "00",
            "9007199254740993",
            "1000000000000000",
        ];
        let floats = [
            "0.5",
            ".5",
            "5.",
            "0.01",
            "0.1",
            "2.5",
            "3.0",
            "1e9",
            "1e-3",
            "1.5e+3",
            "1_000.5",
            "1E3",
            "0.29",
            "0.125",
            "2.675",
            "1e15",
            "1e300",
            "1e400",
            "0.0",
            "9007199254740993.0",
        ];
        if self.rng.random_bool(0.55) {
            let text = ints[self.rng.random_range(0..ints.len())];
            Printed::atom(text.to_string(), 60)
        } else {
            let text = floats[self.rng.random_range(0..floats.len())];
            Printed::atom(text.to_string(), 0)
        }
    }
}
