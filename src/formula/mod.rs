//! The predecessor's formula language: a Python expression over a contract's sums, evaluated
//! exactly as CPython 3.11's `eval` evaluates it with builtins restricted to
//! `abs min max round int float` — or refused when it is compiled, before anything is sent.
//!
//! A formula is read by [`lexer`] and [`parser`] (Python's grammar for `+ - * / // % **`, unary
//! `-` and `+`, parentheses, numeric literals and the six calls) and evaluated over
//! [`number::Value`]s, Python's int and float with CPython's semantics. There is no third outcome:
//! a formula meterbook accepts gives Python's value, and one it cannot evaluate as Python would is
//! refused. The differential test `tests/formulas.rs` holds this against `python3`.

mod lexer;
mod number;
mod parser;

use std::cmp::Ordering;
use std::fmt;

/// Exact float helpers, also used for the ledger's exact sums (`ledger::month_totals`).
pub(crate) use number::{float_parts, ratio_to_f64};
pub use number::{EvalError, Value};
use parser::{BinOp, Builtin, Node};

/// Whether `name` is one of the functions a formula may call.
pub fn is_function(name: &str) -> bool {
    Builtin::ALL.iter().any(|f| f.name() == name)
}

/// Why a formula is refused when compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Outside the language: a construct meterbook does not evaluate (a comparison, a string,
    /// an unknown variable, ...) or a syntax error.
    Unsupported,
    /// A `**` whose base may be negative and whose exponent may be fractional: Python would give
    /// a complex number for some sums, which meterbook does not represent.
    MaybeComplex,
    /// It fails for every input (Python raises whatever the sums are).
    AlwaysFails,
}

/// A refused formula: why, and a message naming the construct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub refusal: Refusal,
    pub message: String,
}

impl CompileError {
    fn unsupported(message: String) -> CompileError {
        CompileError {
            refusal: Refusal::Unsupported,
            message,
        }
    }

    fn always_fails(message: String) -> CompileError {
        CompileError {
            refusal: Refusal::AlwaysFails,
            message,
        }
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A compiled formula.
#[derive(Debug, Clone)]
pub struct Expression {
    tree: Node,
}

impl Expression {
    /// Compiles `source`, whose names may be the given variables (in the order [`Self::eval`]
    /// takes their values) and the six functions.
    pub fn compile(source: &str, variables: &[String]) -> Result<Expression, CompileError> {
        let tree = parser::parse(source, variables)?;
        if let Some(column) = parser::power_may_be_complex(&tree) {
            return Err(CompileError {
                refusal: Refusal::MaybeComplex,
                message: format!(
                    "at column {column}: '**' of a base that may be negative to an exponent that may \
                     be fractional is not supported (Python would give a complex number); use \
                     abs() around the base or an integer exponent"
                ),
            });
        }
        if let Some(column) = parser::float_ndigits(&tree) {
            return Err(CompileError::always_fails(format!(
                "at column {column}: round()'s second argument is a float; Python raises \
                 TypeError (it must be an int)"
            )));
        }
        let expression = Expression { tree };
        if !parser::reads_variables(&expression.tree) {
            if let Err(e) = expression.eval(&[]) {
                return Err(CompileError::always_fails(format!(
                    "reads no variable and always fails: {e}"
                )));
            }
        }
        Ok(expression)
    }

    /// The formula's value given its variables' values, or the exception Python raises.
    pub fn eval(&self, variables: &[Value]) -> Result<Value, EvalError> {
        eval(&self.tree, variables)
    }
}

fn eval(node: &Node, variables: &[Value]) -> Result<Value, EvalError> {
    match node {
        Node::Literal(v) => Ok(v.clone()),
        Node::Variable(i) => Ok(variables[*i].clone()),
        Node::Negate(x) => Ok(eval(x, variables)?.neg()),
        Node::Plus(x) => eval(x, variables),
        Node::Binary {
            op, left, right, ..
        } => {
            // Python evaluates the left operand, then the right, then applies the operator.
            let a = eval(left, variables)?;
            let b = eval(right, variables)?;
            match op {
                BinOp::Add => a.add(&b),
                BinOp::Sub => a.sub(&b),
                BinOp::Mul => a.mul(&b),
                BinOp::Div => a.true_div(&b),
                BinOp::FloorDiv => a.floor_div(&b),
                BinOp::Mod => a.rem(&b),
                BinOp::Pow => a.pow(&b),
            }
        }
        Node::Call(f, args, _) => {
            let mut values = args
                .iter()
                .map(|a| eval(a, variables))
                .collect::<Result<Vec<_>, _>>()?;
            match (f, values.len()) {
                (Builtin::Abs, _) => Ok(values[0].abs()),
                (Builtin::Min, _) => Ok(number::min_max(values, Ordering::Less)),
                (Builtin::Max, _) => Ok(number::min_max(values, Ordering::Greater)),
                (Builtin::Round, 1) => values[0].round(),
                (Builtin::Round, _) => values[0].round_to(&values[1]),
                (Builtin::Int, 0) => Ok(Value::int(0)),
                (Builtin::Int, _) => values.remove(0).to_int(),
                (Builtin::Float, 0) => Ok(Value::Float(0.0)),
                (Builtin::Float, _) => values[0].to_float(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARIABLES: [&str; 4] = ["cpu_core_hours", "memory_byte_hours", "x", "y"];

    fn variables() -> Vec<String> {
        VARIABLES.iter().map(|v| v.to_string()).collect()
    }

    /// Evaluates with cpu_core_hours = cpu, memory_byte_hours = memory, x = 7, y = 2.5.
    fn eval_with(source: &str, cpu: Value, memory: Value) -> Result<Value, EvalError> {
        let e =
            Expression::compile(source, &variables()).unwrap_or_else(|e| panic!("{source}: {e}"));
        e.eval(&[cpu, memory, Value::int(7), Value::Float(2.5)])
    }

    fn value(source: &str) -> Value {
        eval_with(source, Value::int(40), Value::int(0)).unwrap_or_else(|e| panic!("{source}: {e}"))
    }

    fn refusal(source: &str) -> CompileError {
        Expression::compile(source, &variables()).expect_err(source)
    }

    fn int(i: i64) -> Value {
        Value::int(i)
    }

    fn float(x: f64) -> Value {
        Value::Float(x)
    }

    #[test]
    fn floor_division_is_not_a_comment() {
        // evalexpr read `//` as a comment and sent twice the amount.
        assert_eq!(value("cpu_core_hours // 2"), int(20));
        assert_eq!(value("-7 // 2"), int(-4));
        assert_eq!(value("x // 2.0"), float(3.0));
    }

    #[test]
    fn round_halves_to_even_like_python() {
        let ten = |s| eval_with(s, int(10), int(0)).unwrap();
        assert_eq!(ten("round(cpu_core_hours / 4)"), int(2));
        assert_eq!(value("round(2.5)"), int(2));
        assert_eq!(value("round(3.5)"), int(4));
        assert_eq!(value("round(y)"), int(2));
        assert_eq!(value("round(0.125, 2)"), float(0.12));
        assert_eq!(value("round(2.675, 2)"), float(2.67));
        assert_eq!(value("round(15, -1)"), int(20));
        assert_eq!(value("round(25, -1)"), int(20));
    }

    #[test]
    fn operators_have_pythons_precedence_and_associativity() {
        assert_eq!(value("-2 ** 2"), int(-4));
        assert_eq!(value("2 ** -1"), float(0.5));
        assert_eq!(value("2 ** 3 ** 2"), int(512));
        assert_eq!(value("2 ** 2 ** -1"), float(std::f64::consts::SQRT_2));
        assert_eq!(value("+-+1"), int(-1));
        assert_eq!(value("1 + 2 * 3 - 4 / 2"), float(5.0));
        assert_eq!(value("7 % 3 * 2"), int(2));
        assert_eq!(value("2 * 3 % 4"), int(2));
        assert_eq!(value("10 - 3 - 2"), int(5));
        assert_eq!(value("2 ** 10 // 3"), int(341));
    }

    #[test]
    fn division_is_true_division_and_remainders_take_the_divisors_sign() {
        assert_eq!(value("7 / 2"), float(3.5));
        assert_eq!(value("x / 7"), float(1.0));
        assert_eq!(value("-7 % 2"), int(1));
        assert_eq!(value("7 % -2"), int(-1));
        assert_eq!(value("-7.5 % 2"), float(0.5));
    }

    #[test]
    fn literals_include_exponents_underscores_and_bare_points() {
        assert_eq!(value("1e9"), float(1e9));
        assert_eq!(value("1_073_741_824"), int(1_073_741_824));
        assert_eq!(value(".5 + 5."), float(5.5));
        assert_eq!(value("0x10 + 0o10 + 0b10"), int(26));
    }

    #[test]
    fn the_six_functions_behave_as_pythons() {
        assert_eq!(value("abs(-3)"), int(3));
        assert_eq!(value("abs(-2.5)"), float(2.5));
        assert_eq!(value("min(3, 2.0, 2)"), float(2.0));
        assert_eq!(value("max(1, 2, 2.0,)"), int(2));
        assert_eq!(value("int(7.9)"), int(7));
        assert_eq!(value("int(-7.9)"), int(-7));
        assert_eq!(value("int()"), int(0));
        assert_eq!(value("float(3)"), float(3.0));
        assert_eq!(value("float()"), float(0.0));
        assert_eq!(value("max(2 ** 53 + 1, 2.0 ** 53)"), value("2 ** 53 + 1"));
    }

    #[test]
    fn the_predecessors_readme_examples_mean_what_python_means() {
        let gib = 1_073_741_824_i64;
        let memory = int(3 * gib);
        let run = |s| eval_with(s, int(10), memory.clone()).unwrap();
        assert_eq!(run("cpu_core_hours"), int(10));
        assert_eq!(run("cpu_core_hours / 2"), float(5.0));
        assert_eq!(run("memory_byte_hours / 1024 ** 3"), float(3.0));
        assert_eq!(run("memory_byte_hours / 1073741824"), float(3.0));
        assert_eq!(
            run("cpu_core_hours + memory_byte_hours / 1024 ** 3"),
            float(13.0)
        );
        // replica_hours_total_price / 0.01 with a price sum of 0.29: float noise, as in Python.
        let price = eval_with("cpu_core_hours / 0.01", float(0.29), int(0)).unwrap();
        assert_eq!(price, float(28.999999999999996));
    }

    #[test]
    fn python_exceptions_are_evaluation_errors() {
        let zero = |s| eval_with(s, int(0), int(0)).unwrap_err().python_name();
        assert_eq!(zero("x / cpu_core_hours"), "ZeroDivisionError");
        assert_eq!(zero("x // cpu_core_hours"), "ZeroDivisionError");
        assert_eq!(zero("x % cpu_core_hours"), "ZeroDivisionError");
        assert_eq!(zero("cpu_core_hours ** -1"), "ZeroDivisionError");
        assert_eq!(zero("int(x * 1e308 * 10)"), "OverflowError");
        assert_eq!(zero("round(x * 1e308 * 10 - x * 1e308 * 10)"), "ValueError");
        // Python evaluates left to right: the first exception is the one raised.
        assert_eq!(
            zero("(x / cpu_core_hours) + int(x * 1e400)"),
            "ZeroDivisionError"
        );
    }

    #[test]
    fn a_power_that_could_be_complex_is_refused_and_a_safe_one_is_not() {
        for refused in [
            "(x - y) ** 0.5",
            "(-x) ** y",
            "(x - 1) ** (1 / 3)",
            "-(x - y) ** -0.5 ** 2",
        ] {
            assert_eq!(refusal(refused).refusal, Refusal::MaybeComplex, "{refused}");
        }
        for fine in [
            "x ** 0.5",
            "abs(x - y) ** 0.5",
            "(x - y) ** 2",
            "(x - y) ** -1",
            "(x - y) ** 2.0",
            "(x - y) ** int(y)",
            "(x - y) ** round(y)",
            "min(x, y) ** y",
            "(x % (y + 1)) ** 0.5",
            "((x - y) % 3) ** 0.5",
            "(x // y * y / 2 + 1) ** 0.5",
            "-x ** 0.5",
        ] {
            assert!(Expression::compile(fine, &variables()).is_ok(), "{fine}");
        }
        assert_eq!(value("-x ** 0.5"), float(-(7.0_f64.sqrt())));
    }

    #[test]
    fn formulas_that_fail_for_every_input_are_refused() {
        for source in [
            "abs(x, y)",
            "min(x)",
            "max()",
            "int(x, 10)",
            "float(x, y)",
            "round(x, 2.0)",
            "round()",
            "1 / 0",
            "round(1e400)",
        ] {
            assert_eq!(refusal(source).refusal, Refusal::AlwaysFails, "{source}");
        }
        // A constant formula that works is fine.
        assert_eq!(value("1024 ** 3"), int(1_073_741_824));
    }

    #[test]
    fn constructs_outside_the_language_are_refused_naming_them() {
        let cases = [
            ("cpu_hours * 2", "unknown variable 'cpu_hours'"),
            ("pow(x, 2)", "unknown variable 'pow'"),
            ("abs + 1", "the function 'abs' used without calling it"),
            ("(abs)(x)", "the function 'abs' used without calling it"),
            (
                "x(2)",
                "a call of something that is not one of the functions",
            ),
            (
                "(x)(2)",
                "a call of something that is not one of the functions",
            ),
            (
                "abs(x)(2)",
                "a call of something that is not one of the functions",
            ),
            (
                "round(x, ndigits=2)",
                "'=' (an assignment or a keyword argument)",
            ),
            ("max(*x)", "an unpacked argument"),
            ("(x, y)", "a tuple"),
            ("x, y", "a tuple"),
            ("x y", "a missing operator"),
            ("", "is empty"),
            ("   ", "is empty"),
            ("(x", "without its ')'"),
            ("x *", "ends where a value is expected"),
            ("* x", "a starred expression"),
            ("x < 1", "a comparison"),
            ("x if y else 1", "a conditional expression"),
        ];
        for (source, what) in cases {
            let e = refusal(source);
            assert_eq!(e.refusal, Refusal::Unsupported, "{source}");
            assert!(e.message.contains(what), "{source}: {e}");
        }
        let nested = |n: usize| format!("{}x{}", "(".repeat(n), ")".repeat(n));
        assert!(refusal(&nested(250)).message.contains("deeper than 200"));
        assert!(refusal(&format!("x{}", " + x".repeat(250)))
            .message
            .contains("deeper than 200"));
        assert!(Expression::compile(&nested(190), &variables()).is_ok());
        assert!(Expression::compile(&format!("x{}", " + x".repeat(150)), &variables()).is_ok());
    }

    #[test]
    fn huge_ints_are_exact_and_bounded() {
        assert_eq!(value("2 ** 64 + 1 - 2 ** 64"), int(1),);
        assert_eq!(value("10 ** 400 / 10 ** 399"), float(10.0));
        assert_eq!(
            eval_with("cpu_core_hours ** 100000", int(2), int(0)),
            Err(EvalError::TooLarge)
        );
        assert_eq!(refusal("9 ** 9 ** 9").refusal, Refusal::AlwaysFails);
    }
}
