//! Billed dimensions: the predecessor's formulas (evalexpr) over the base dimensions, and the
//! rounding rule that turns an amount into the whole number Clazar is sent. Pure functions.
//!
//! Arithmetic is in floating point like the predecessor's Python (`7 / 2` is 3.5), and rounding
//! first snaps values within a few ULPs of a whole number to it, so that float noise never changes
//! a quantity: `0.29 / 0.01` is 28.999999999999996 in floating point, and 29 here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use evalexpr::{
    build_operator_tree, Context, ContextWithMutableFunctions, ContextWithMutableVariables,
    EvalexprError, EvalexprResult, Function, HashMapContext, Node, Operator, Value,
};

/// Omnistrate's base dimensions, always known to formulas (0 when a contract has no usage of one).
pub const BASE_DIMENSIONS: [&str; 4] = [
    "cpu_core_hours",
    "memory_byte_hours",
    "storage_allocated_byte_hours",
    "replica_hours",
];

/// The functions a formula may call.
pub const FUNCTIONS: [&str; 6] = ["abs", "round", "min", "max", "int", "float"];

/// The suffix of the variable holding a dimension's sum of value x pricePerUnit.
pub const PRICE_SUFFIX: &str = "_total_price";

/// How an amount becomes a whole number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Rounding {
    /// Down (the predecessor's behaviour).
    #[default]
    Floor,
    /// To the nearest whole number, halves away from zero.
    Nearest,
    /// Up.
    Ceiling,
}

/// Turns an exact amount into the quantity sent. Values within 64 ULPs of a whole number are that
/// number (float noise); a negative or non-finite amount, or one too large, is an error.
pub fn to_quantity(exact: f64, rounding: Rounding) -> Result<i64, String> {
    if !exact.is_finite() {
        return Err(format!("{exact} is not a finite number"));
    }
    let whole = exact.round();
    let noise = 64.0 * f64::EPSILON * exact.abs().max(1.0);
    let rounded = if (exact - whole).abs() <= noise {
        whole
    } else {
        match rounding {
            Rounding::Floor => exact.floor(),
            Rounding::Nearest => whole,
            Rounding::Ceiling => exact.ceil(),
        }
    };
    if rounded < 0.0 {
        return Err(format!("{exact} is negative"));
    }
    // 2^63 is exactly representable; anything at or above it does not fit.
    if rounded >= 9_223_372_036_854_775_808.0 {
        return Err(format!("{exact} is too large for a quantity"));
    }
    Ok(rounded as i64)
}

/// One custom dimension: its name and its compiled formula.
#[derive(Debug, Clone)]
pub struct Formula {
    pub name: String,
    pub source: String,
    /// The environment variable(s) it came from, for messages.
    pub origin: String,
    tree: Node,
}

/// What is wrong with the configured formulas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormulaError(pub String);

impl fmt::Display for FormulaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The configured billed dimensions.
#[derive(Debug, Clone, Default)]
pub struct Dimensions {
    pub formulas: Vec<Formula>,
    /// Send the base dimensions too (always, when there are no formulas).
    pub send_base: bool,
    pub rounding: Rounding,
    /// The base dimensions formulas may read (0 when a contract has no usage of one).
    known: BTreeSet<String>,
}

/// A contract's base usage in one period: per dimension, the value and the priced amount.
pub type BaseUsage = BTreeMap<String, (f64, f64)>;

/// One computed line: the exact amount and the quantity it rounds to (or why it cannot be sent).
#[derive(Debug, Clone, PartialEq)]
pub struct ComputedLine {
    pub dimension: String,
    pub exact: f64,
    pub quantity: Result<i64, String>,
}

impl Dimensions {
    /// Reads both of the predecessor's forms from environment variables: `DIMENSION_<name>=<formula>`
    /// and `DIMENSION<n>_NAME` / `DIMENSION<n>_FORMULA`.
    pub fn from_vars<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Vec<(String, String, String)>, FormulaError> {
        let mut named: BTreeMap<String, (String, String)> = BTreeMap::new();
        let mut numbered: BTreeMap<u32, (Option<String>, Option<String>)> = BTreeMap::new();
        for (key, value) in vars {
            let Some(rest) = key.strip_prefix("DIMENSION") else {
                continue;
            };
            if let Some(name) = rest.strip_prefix('_') {
                named.insert(name.to_string(), (value.to_string(), key.to_string()));
                continue;
            }
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let Ok(n) = digits.parse::<u32>() else {
                continue;
            };
            let slot = numbered.entry(n).or_default();
            match &rest[digits.len()..] {
                "_NAME" => slot.0 = Some(value.trim().to_string()),
                "_FORMULA" => slot.1 = Some(value.to_string()),
                _ => {}
            }
        }
        let mut out: Vec<(String, String, String)> = named
            .into_iter()
            .map(|(name, (formula, origin))| (name, formula, origin))
            .collect();
        for (n, slot) in numbered {
            match slot {
                (Some(name), Some(formula)) => out.push((
                    name,
                    formula,
                    format!("DIMENSION{n}_NAME/DIMENSION{n}_FORMULA"),
                )),
                (Some(_), None) => {
                    return Err(FormulaError(format!(
                        "DIMENSION{n}_NAME is set but DIMENSION{n}_FORMULA is not"
                    )))
                }
                (None, Some(_)) => {
                    return Err(FormulaError(format!(
                        "DIMENSION{n}_FORMULA is set but DIMENSION{n}_NAME is not"
                    )))
                }
                (None, None) => {}
            }
        }
        Ok(out)
    }

    /// Compiles and validates every formula against the known base dimensions (syntax, unknown
    /// variables and functions), naming the variable that holds a bad one.
    pub fn new(
        specs: Vec<(String, String, String)>,
        base_dimensions: &BTreeSet<String>,
        send_base: bool,
        rounding: Rounding,
    ) -> Result<Dimensions, FormulaError> {
        let mut formulas = Vec::with_capacity(specs.len());
        let mut seen = BTreeSet::new();
        for (name, source, origin) in specs {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            {
                return Err(FormulaError(format!(
                    "{origin}: '{name}' is not a dimension name (letters, digits, '_', '-', '.')"
                )));
            }
            if !seen.insert(name.clone()) {
                return Err(FormulaError(format!(
                    "{origin}: dimension '{name}' is defined twice"
                )));
            }
            let tree = compile(&source, base_dimensions)
                .map_err(|why| FormulaError(format!("{origin}: formula '{source}': {why}")))?;
            formulas.push(Formula {
                name,
                source,
                origin,
                tree,
            });
        }
        if send_base {
            if let Some(f) = formulas.iter().find(|f| base_dimensions.contains(&f.name)) {
                return Err(FormulaError(format!(
                    "{}: '{}' is a base dimension, which is also sent as is; rename it or stop sending base dimensions",
                    f.origin, f.name
                )));
            }
        }
        Ok(Dimensions {
            formulas,
            send_base,
            rounding,
            known: base_dimensions.clone(),
        })
    }

    /// The lines for one contract and period, in a stable order: base dimensions (when sent),
    /// then formulas by name.
    pub fn compute(&self, usage: &BaseUsage) -> Vec<ComputedLine> {
        let mut lines = Vec::new();
        if self.send_base || self.formulas.is_empty() {
            for (dimension, (value, _)) in usage {
                lines.push(ComputedLine {
                    dimension: dimension.clone(),
                    exact: *value,
                    quantity: to_quantity(*value, self.rounding),
                });
            }
        }
        if self.formulas.is_empty() {
            return lines;
        }
        let context = formula_context(usage, &self.known);
        for f in &self.formulas {
            let (exact, quantity) = match f.tree.eval_with_context(&context) {
                Ok(v) => match v.as_number() {
                    Ok(x) => (x, to_quantity(x, self.rounding)),
                    Err(_) => (
                        f64::NAN,
                        Err(format!("'{}' gave {v}, not a number", f.source)),
                    ),
                },
                Err(e) => (f64::NAN, Err(format!("'{}': {e}", f.source))),
            };
            lines.push(ComputedLine {
                dimension: f.name.clone(),
                exact,
                quantity: quantity.map_err(|why| format!("{} ({}): {why}", f.name, f.origin)),
            });
        }
        lines
    }

    /// The variables a formula may read, given the base dimensions.
    pub fn variables(base_dimensions: &BTreeSet<String>) -> BTreeSet<String> {
        base_dimensions
            .iter()
            .flat_map(|d| [d.clone(), format!("{d}{PRICE_SUFFIX}")])
            .collect()
    }
}

/// Parses a formula, makes every number a float (Python's `/` divides exactly), and checks names.
fn compile(source: &str, base_dimensions: &BTreeSet<String>) -> Result<Node, String> {
    let mut tree = build_operator_tree(source).map_err(|e| format!("does not parse: {e}"))?;
    if tree.children().is_empty() {
        return Err("is empty".into());
    }
    if tree.iter_write_variable_identifiers().next().is_some() {
        return Err("assigns to a variable; a formula is an expression".into());
    }
    let known = Dimensions::variables(base_dimensions);
    if let Some(v) = tree
        .iter_read_variable_identifiers()
        .find(|v| !known.contains(*v))
    {
        return Err(format!(
            "unknown variable '{v}'; known: {}",
            known.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if let Some(f) = tree
        .iter_function_identifiers()
        .find(|f| !FUNCTIONS.contains(f))
    {
        return Err(format!(
            "unknown function '{f}'; known: {}",
            FUNCTIONS.join(", ")
        ));
    }
    floats_only(&mut tree);
    // Evaluate once with every variable at 1 to catch type errors (e.g. a string) now, not later.
    let ones: BaseUsage = base_dimensions
        .iter()
        .map(|d| (d.clone(), (1.0, 1.0)))
        .collect();
    match tree.eval_with_context(&formula_context(&ones, base_dimensions)) {
        Ok(v) if v.is_number() => Ok(tree),
        Ok(v) => Err(format!("gives {v}, not a number")),
        Err(e) => Err(format!("cannot be evaluated: {e}")),
    }
}

fn floats_only(node: &mut Node) {
    if let Operator::Const {
        value: Value::Int(i),
    } = node.operator()
    {
        *node.operator_mut() = Operator::Const {
            value: Value::Float(*i as f64),
        };
    }
    for child in node.children_mut() {
        floats_only(child);
    }
}

fn numbers(argument: &Value) -> EvalexprResult<Vec<f64>> {
    match argument {
        Value::Tuple(items) => items.iter().map(Value::as_number).collect(),
        single => Ok(vec![single.as_number()?]),
    }
}

fn one_number(argument: &Value) -> EvalexprResult<f64> {
    match numbers(argument)?.as_slice() {
        [x] => Ok(*x),
        more => Err(EvalexprError::WrongFunctionArgumentAmount {
            expected: 1..=1,
            actual: more.len(),
        }),
    }
}

/// Variables (every base dimension and its `_total_price`, 0 when absent) and the functions.
fn formula_context(usage: &BaseUsage, known: &BTreeSet<String>) -> HashMapContext {
    let mut ctx = HashMapContext::new();
    for (dimension, (value, amount)) in usage {
        set(&mut ctx, dimension.clone(), *value);
        set(&mut ctx, format!("{dimension}{PRICE_SUFFIX}"), *amount);
    }
    for d in known {
        if !usage.contains_key(d) {
            set(&mut ctx, d.clone(), 0.0);
            set(&mut ctx, format!("{d}{PRICE_SUFFIX}"), 0.0);
        }
    }
    type Builtin = fn(&Value) -> EvalexprResult<Value>;
    let functions: [(&str, Builtin); 6] = [
        ("abs", |a| Ok(Value::Float(one_number(a)?.abs()))),
        // Python's round() of one argument; halves away from zero (Python rounds them to even).
        ("round", |a| Ok(Value::Float(one_number(a)?.round()))),
        // int() truncates toward zero, but stays a float so that later `/` still divides exactly.
        ("int", |a| Ok(Value::Float(one_number(a)?.trunc()))),
        ("float", |a| Ok(Value::Float(one_number(a)?))),
        ("min", |a| {
            Ok(Value::Float(
                numbers(a)?.into_iter().fold(f64::INFINITY, f64::min),
            ))
        }),
        ("max", |a| {
            Ok(Value::Float(
                numbers(a)?.into_iter().fold(f64::NEG_INFINITY, f64::max),
            ))
        }),
    ];
    for (name, f) in functions {
        ctx.set_function(name.to_string(), Function::new(f))
            .expect("a HashMapContext takes functions");
    }
    ctx.set_builtin_functions_disabled(true)
        .expect("a HashMapContext can disable builtins");
    ctx
}

fn set(ctx: &mut HashMapContext, name: String, value: f64) {
    ctx.set_value(name, Value::Float(value))
        .expect("every variable is a float");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BTreeSet<String> {
        BASE_DIMENSIONS.iter().map(|d| d.to_string()).collect()
    }

    fn dims(specs: &[(&str, &str)], send_base: bool) -> Result<Dimensions, FormulaError> {
        let specs = specs
            .iter()
            .map(|(n, f)| (n.to_string(), f.to_string(), format!("DIMENSION_{n}")))
            .collect();
        Dimensions::new(specs, &base(), send_base, Rounding::Floor)
    }

    fn usage(pairs: &[(&str, f64, f64)]) -> BaseUsage {
        pairs
            .iter()
            .map(|(d, v, a)| (d.to_string(), (*v, *a)))
            .collect()
    }

    #[test]
    fn float_noise_never_changes_a_quantity() {
        assert_eq!(0.29_f64 / 0.01, 28.999999999999996);
        assert_eq!(to_quantity(0.29 / 0.01, Rounding::Floor), Ok(29));
        assert_eq!(to_quantity((0.1 + 0.2) * 10.0, Rounding::Ceiling), Ok(3));
        assert_eq!(to_quantity(-1e-15, Rounding::Floor), Ok(0));
        assert_eq!(to_quantity(28.5, Rounding::Floor), Ok(28));
        assert_eq!(to_quantity(28.5, Rounding::Nearest), Ok(29));
        assert_eq!(to_quantity(28.2, Rounding::Ceiling), Ok(29));
        assert_eq!(
            to_quantity(1e12 + 0.5, Rounding::Floor),
            Ok(1_000_000_000_000)
        );
        assert!(to_quantity(-0.5, Rounding::Floor).is_err());
        assert!(to_quantity(f64::NAN, Rounding::Floor).is_err());
        assert!(to_quantity(f64::INFINITY, Rounding::Floor).is_err());
        assert!(to_quantity(1e19, Rounding::Floor).is_err());
    }

    #[test]
    fn reads_both_forms_of_the_predecessors_variables() {
        let vars = [
            (
                "DIMENSION_memory_gb_hours",
                "memory_byte_hours / 1073741824",
            ),
            ("DIMENSION1_NAME", "cpu"),
            ("DIMENSION1_FORMULA", "cpu_core_hours * 2"),
            ("PATH", "/bin"),
        ];
        let specs = Dimensions::from_vars(vars).unwrap();
        assert_eq!(
            specs,
            vec![
                (
                    "memory_gb_hours".to_string(),
                    "memory_byte_hours / 1073741824".to_string(),
                    "DIMENSION_memory_gb_hours".to_string()
                ),
                (
                    "cpu".to_string(),
                    "cpu_core_hours * 2".to_string(),
                    "DIMENSION1_NAME/DIMENSION1_FORMULA".to_string()
                ),
            ]
        );
        let err = Dimensions::from_vars([("DIMENSION2_NAME", "x")]).unwrap_err();
        assert!(err.0.contains("DIMENSION2_FORMULA"), "{err}");
    }

    #[test]
    fn formulas_divide_like_python_and_use_prices_and_functions() {
        let d = dims(
            &[
                ("half", "replica_hours / 2"),
                ("gb", "memory_byte_hours / 1073741824"),
                ("price", "round(cpu_core_hours_total_price * 100)"),
                (
                    "f",
                    "max(abs(0 - cpu_core_hours), min(1, 2), int(7.9), float(3))",
                ),
                ("centi", "cpu_core_hours_total_price / 0.01"),
            ],
            false,
        )
        .unwrap();
        let u = usage(&[
            ("replica_hours", 7.0, 0.07),
            ("memory_byte_hours", 3.0 * 1073741824.0, 0.0),
            ("cpu_core_hours", 10.0, 0.29),
        ]);
        let got: Vec<(String, f64, Result<i64, String>)> = d
            .compute(&u)
            .into_iter()
            .map(|l| (l.dimension, l.exact, l.quantity))
            .collect();
        assert_eq!(
            got,
            vec![
                ("half".to_string(), 3.5, Ok(3)),
                ("gb".to_string(), 3.0, Ok(3)),
                ("price".to_string(), 29.0, Ok(29)),
                ("f".to_string(), 10.0, Ok(10)),
                ("centi".to_string(), 0.29 / 0.01, Ok(29)),
            ]
        );
    }

    #[test]
    fn without_formulas_the_base_dimensions_are_sent_and_with_them_only_if_asked() {
        let u = usage(&[("cpu_core_hours", 2.5, 0.0), ("replica_hours", 1.0, 0.0)]);
        let plain = dims(&[], false).unwrap().compute(&u);
        assert_eq!(plain.len(), 2);
        assert_eq!(plain[0].quantity, Ok(2));
        let only = dims(&[("x", "replica_hours")], false).unwrap().compute(&u);
        assert_eq!(only.len(), 1);
        let both = dims(&[("x", "replica_hours")], true).unwrap().compute(&u);
        assert_eq!(both.len(), 3);
    }

    #[test]
    fn bad_formulas_are_refused_naming_the_variable_and_the_problem() {
        let err = |f: &str| dims(&[("x", f)], false).unwrap_err().0;
        assert!(err("(cpu_core_hours").contains("DIMENSION_x"));
        assert!(err("(cpu_core_hours").contains("does not parse"));
        assert!(err("cpu_core_hours *")
            .contains("cannot be evaluated: An operator expected 2 arguments"));
        assert!(err("cpu_hours * 2").contains("unknown variable 'cpu_hours'"));
        assert!(err("sqrt(cpu_core_hours)").contains("unknown function 'sqrt'"));
        assert!(err("x = 3").contains("assigns"));
        assert!(err("\"text\"").contains("not a number"));
        assert!(err("").contains("empty"));
    }

    #[test]
    fn negative_and_non_finite_results_are_errors_for_that_line() {
        let d = dims(
            &[("neg", "0 - replica_hours"), ("inf", "replica_hours / 0")],
            false,
        )
        .unwrap();
        let lines = d.compute(&usage(&[("replica_hours", 1.0, 0.0)]));
        assert!(lines[0].quantity.as_ref().unwrap_err().contains("negative"));
        assert!(lines[1].quantity.as_ref().unwrap_err().contains("finite"));
    }
}
