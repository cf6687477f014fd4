//! Billed dimensions: the predecessor's formulas ([`crate::formula`], Python expressions) over a
//! contract's sums, and the rounding rule that turns an amount into the whole number Clazar is
//! sent. Pure functions.
//!
//! An int result is sent exactly. A formula's float result under `--rounding floor` (the
//! predecessor's rule) is sent as the predecessor sent it, Python's `int(float(value))`: the
//! formula is Python, and its author rounds in it (`0.29 / 0.01` is 28.999999999999996 in floating
//! point, and 28 is sent, as before; `round(0.29 / 0.01)` sends 29). Every other amount (a base
//! dimension's sum, which meterbook adds up itself, or a formula under `nearest` or `ceiling`,
//! which the predecessor did not have) is first snapped to a whole number when it is within a few
//! ULPs of one, so that float noise never changes a quantity, then rounded by the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use num_traits::{Signed, ToPrimitive};

use crate::formula::{self, Expression, Value};
use crate::source::parse::Quantity;

/// Omnistrate's base dimensions, always known to formulas (0 when a contract has no usage of one).
pub const BASE_DIMENSIONS: [&str; 4] = [
    "cpu_core_hours",
    "memory_byte_hours",
    "storage_allocated_byte_hours",
    "replica_hours",
];

/// The suffix of the variable holding a dimension's sum of value x pricePerUnit.
pub const PRICE_SUFFIX: &str = "_total_price";

/// The predecessor's variable for the sum of the records whose dimension is named `pricePerUnit`
/// (0 when there are none).
pub const PRICE_PER_UNIT: &str = "pricePerUnit";

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

/// Whether an amount within float noise of a whole number is taken as that number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Noise {
    /// Within 64 ULPs (and less than 1/1024) of a whole number is that number.
    Snapped,
    /// Taken as it is (a formula's value under floor rounding: Python's `int()`).
    Kept,
}

/// Turns an exact amount into the quantity sent, treating float noise as `noise` says; a negative
/// or non-finite amount, or one too large, is an error.
fn to_quantity(exact: f64, rounding: Rounding, noise: Noise) -> Result<i64, String> {
    if !exact.is_finite() {
        return Err(format!("{exact} is not a finite number"));
    }
    let whole = exact.round();
    // Noise is a few ULPs, but never as much as 1/1024 of a unit: above 2^44 a ULP is that large,
    // and snapping would turn floor into nearest.
    let ulps = (64.0 * f64::EPSILON * exact.abs().max(1.0)).min(1.0 / 1024.0);
    let rounded = if noise == Noise::Snapped && (exact - whole).abs() <= ulps {
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

/// The quantity sent for a value: an int exactly, a float by [`to_quantity`].
fn quantity_of(value: &Value, rounding: Rounding, noise: Noise) -> Result<i64, String> {
    match value {
        Value::Int(i) if i.is_negative() => Err(format!("{value} is negative")),
        Value::Int(i) => i
            .to_i64()
            .ok_or_else(|| format!("{value} is too large for a quantity")),
        Value::Float(x) => to_quantity(*x, rounding, noise),
    }
}

/// The quantity sent for a formula's value: under floor rounding exactly what the predecessor
/// sent, Python's `int(float(value))` (an int above 2^53 exactly, where `float()` rounded it).
pub fn formula_quantity(value: &Value, rounding: Rounding) -> Result<i64, String> {
    let noise = match rounding {
        Rounding::Floor => Noise::Kept,
        Rounding::Nearest | Rounding::Ceiling => Noise::Snapped,
    };
    quantity_of(value, rounding, noise)
}

/// One custom dimension: its name and its compiled formula.
#[derive(Debug, Clone)]
pub struct Formula {
    pub name: String,
    pub source: String,
    /// The environment variable(s) it came from, for messages.
    pub origin: String,
    expression: Expression,
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
    /// The variables formulas may read, in the order their compiled forms expect them.
    variables: Vec<Variable>,
}

/// One dimension's sums for a contract and period, as the ledger holds them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DimensionSum {
    /// SUM(value): an int when every record's value is one (a Python int to formulas), else a
    /// float.
    pub value: Quantity,
    /// SUM(value x pricePerUnit); `None` when no record has a price.
    pub amount: Option<f64>,
}

/// A contract's base usage in one period, per dimension.
pub type BaseUsage = BTreeMap<String, DimensionSum>;

/// One computed line: the amount (the nearest float to the exact value) and the quantity it
/// rounds to (or why it cannot be sent).
#[derive(Debug, Clone, PartialEq)]
pub struct ComputedLine {
    pub dimension: String,
    pub exact: f64,
    pub quantity: Result<i64, String>,
}

/// A variable formulas may read, and where its value comes from.
#[derive(Debug, Clone, PartialEq)]
struct Variable {
    name: String,
    /// The dimension it is about.
    dimension: String,
    /// Whether it is the dimension's priced amount (`<dimension>_total_price`) or its value.
    price: bool,
}

impl Variable {
    /// Its value for one contract: the predecessor's types. A dimension without usage is int 0;
    /// with usage, its value is the sum as the ledger holds it and its priced amount a float.
    fn value(&self, usage: &BaseUsage) -> Value {
        match usage.get(&self.dimension) {
            None => Value::int(0),
            Some(sum) if self.price => Value::Float(sum.amount.unwrap_or(0.0)),
            Some(sum) => sum.value(),
        }
    }
}

impl DimensionSum {
    /// The sum as a formula sees it: an int or a float.
    pub fn value(&self) -> Value {
        match self.value {
            Quantity::Int(i) => Value::int(i),
            Quantity::Real(x) => Value::Float(x),
        }
    }
}

impl Dimensions {
    /// Reads both of the predecessor's forms from environment variables: `DIMENSION_<name>=<formula>`
    /// and `DIMENSION<n>_NAME` / `DIMENSION<n>_FORMULA`. An empty (or blank) variable is unset, as
    /// for the predecessor (its deployments pass every variable, empty when unused): an empty pair
    /// is absent, and only one of a pair set is an error.
    pub fn from_vars<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Vec<(String, String, String)>, FormulaError> {
        let mut named: BTreeMap<String, (String, String)> = BTreeMap::new();
        let mut numbered: BTreeMap<u32, (Option<String>, Option<String>)> = BTreeMap::new();
        for (key, value) in vars {
            let Some(rest) = key.strip_prefix("DIMENSION") else {
                continue;
            };
            if value.trim().is_empty() {
                continue;
            }
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

    /// Compiles every formula against the variables of the known base dimensions, naming the
    /// variable that holds a refused one and the construct refused.
    pub fn new(
        specs: Vec<(String, String, String)>,
        base_dimensions: &BTreeSet<String>,
        send_base: bool,
        rounding: Rounding,
    ) -> Result<Dimensions, FormulaError> {
        let variables = Dimensions::variables(base_dimensions);
        let names: Vec<String> = variables.iter().map(|v| v.name.clone()).collect();
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
            let expression = Expression::compile(&source, &names)
                .map_err(|why| FormulaError(format!("{origin}: formula '{source}': {why}")))?;
            formulas.push(Formula {
                name,
                source,
                origin,
                expression,
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
            variables,
        })
    }

    /// The lines for one contract and period, in a stable order: base dimensions (when sent),
    /// then formulas by name.
    pub fn compute(&self, usage: &BaseUsage) -> Vec<ComputedLine> {
        let line = |dimension: &str, value: Result<Value, String>, formula: bool| {
            let (exact, quantity) = match value {
                // An int too large for a float has no amount to show; its quantity says why.
                Ok(v) => (
                    v.to_f64().unwrap_or(f64::NAN),
                    if formula {
                        formula_quantity(&v, self.rounding)
                    } else {
                        quantity_of(&v, self.rounding, Noise::Snapped)
                    },
                ),
                Err(why) => (f64::NAN, Err(why)),
            };
            ComputedLine {
                dimension: dimension.to_string(),
                exact,
                quantity,
            }
        };
        let mut lines = Vec::new();
        if self.send_base || self.formulas.is_empty() {
            for (dimension, sum) in usage {
                lines.push(line(dimension, Ok(sum.value()), false));
            }
        }
        if self.formulas.is_empty() {
            return lines;
        }
        let values: Vec<Value> = self.variables.iter().map(|v| v.value(usage)).collect();
        for f in &self.formulas {
            let value = f
                .expression
                .eval(&values)
                .map_err(|e| format!("'{}': {e}", f.source));
            let mut l = line(&f.name, value, true);
            l.quantity = l
                .quantity
                .map_err(|why| format!("{} ({}): {why}", f.name, f.origin));
            lines.push(l);
        }
        lines
    }

    /// The variables formulas may read: each base dimension and its `_total_price`, and
    /// `pricePerUnit`. The predecessor's names come first, so that no dimension in the ledger can
    /// change what they mean; names that are one of the functions cannot be variables.
    fn variables(base_dimensions: &BTreeSet<String>) -> Vec<Variable> {
        let mut by_name: BTreeMap<String, Variable> = BTreeMap::new();
        let predecessors = BASE_DIMENSIONS.iter().map(|d| (*d, true));
        let others = base_dimensions.iter().map(|d| (d.as_str(), true));
        let price_per_unit = std::iter::once((PRICE_PER_UNIT, false));
        for (dimension, priced) in predecessors.chain(price_per_unit).chain(others) {
            let mut add = |name: String, price: bool| {
                by_name.entry(name.clone()).or_insert(Variable {
                    name,
                    dimension: dimension.to_string(),
                    price,
                });
            };
            add(dimension.to_string(), false);
            if priced {
                add(format!("{dimension}{PRICE_SUFFIX}"), true);
            }
        }
        by_name
            .into_values()
            .filter(|v| !formula::is_function(&v.name))
            .collect()
    }
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

    fn usage(sums: &[(&str, Quantity, Option<f64>)]) -> BaseUsage {
        sums.iter()
            .map(|(d, value, amount)| {
                (
                    d.to_string(),
                    DimensionSum {
                        value: *value,
                        amount: *amount,
                    },
                )
            })
            .collect()
    }

    /// (dimension, exact, quantity) of each line.
    fn computed(d: &Dimensions, u: &BaseUsage) -> Vec<(String, f64, Result<i64, String>)> {
        d.compute(u)
            .into_iter()
            .map(|l| (l.dimension, l.exact, l.quantity))
            .collect()
    }

    /// The one formula `f` over `u`: its quantity.
    fn quantity(f: &str, u: &BaseUsage) -> Result<i64, String> {
        let d = dims(&[("x", f)], false).unwrap_or_else(|e| panic!("{f}: {e}"));
        d.compute(u).remove(0).quantity
    }

    #[test]
    fn float_noise_never_changes_a_summed_quantity() {
        let snapped = |x: f64, r: Rounding| to_quantity(x, r, Noise::Snapped);
        assert_eq!(0.29_f64 / 0.01, 28.999999999999996);
        assert_eq!(snapped(0.29 / 0.01, Rounding::Floor), Ok(29));
        assert_eq!(snapped((0.1 + 0.2) * 10.0, Rounding::Ceiling), Ok(3));
        assert_eq!(snapped(-1e-15, Rounding::Floor), Ok(0));
        assert_eq!(snapped(28.5, Rounding::Floor), Ok(28));
        assert_eq!(snapped(28.5, Rounding::Nearest), Ok(29));
        assert_eq!(snapped(28.2, Rounding::Ceiling), Ok(29));
        assert_eq!(snapped(1e12 + 0.5, Rounding::Floor), Ok(1_000_000_000_000));
        // Where 64 ULPs are more than a unit, floor stays floor.
        assert_eq!(
            snapped(589_911_926_487_544.0 + 0.875, Rounding::Floor),
            Ok(589_911_926_487_544)
        );
        assert!(snapped(-0.5, Rounding::Floor).is_err());
        assert!(snapped(f64::NAN, Rounding::Floor).is_err());
        assert!(snapped(f64::INFINITY, Rounding::Floor).is_err());
        assert!(snapped(1e19, Rounding::Floor).is_err());
    }

    #[test]
    fn a_formula_under_floor_sends_what_pythons_int_gives() {
        let u = usage(&[("cpu_core_hours", Quantity::Int(29), None)]);
        // 29 * 0.01 / 0.01 is 28.999999999999996: the predecessor sent int() of it, 28.
        assert_eq!(quantity("cpu_core_hours * 0.01 / 0.01", &u), Ok(28));
        assert_eq!(quantity("round(cpu_core_hours * 0.01 / 0.01)", &u), Ok(29));
        let f = dims(&[("x", "cpu_core_hours * 0.01 / 0.01")], false).unwrap();
        let under = |rounding| {
            Dimensions {
                rounding,
                ..f.clone()
            }
            .compute(&u)[0]
                .quantity
                .clone()
        };
        assert_eq!(under(Rounding::Nearest), Ok(29));
        assert_eq!(under(Rounding::Ceiling), Ok(29));
        // A negative value is refused as the predecessor refused it, however small.
        assert!(quantity("cpu_core_hours * 0.01 - 0.29", &u).is_ok());
        assert!(quantity("0.29 - cpu_core_hours * 0.01 - 1e-15", &u)
            .unwrap_err()
            .contains("is negative"));
    }

    #[test]
    fn int_results_are_sent_exactly_even_above_two_to_the_53() {
        let above = 9_007_199_254_740_993_i64; // 2^53 + 1: no float holds it
        let u = usage(&[("cpu_core_hours", Quantity::Int(above), None)]);
        assert_eq!(quantity("cpu_core_hours * 1", &u), Ok(above));
        assert_eq!(quantity("cpu_core_hours // 3 * 3", &u), Ok(above));
        assert_eq!(
            quantity("cpu_core_hours + 2 ** 62", &u),
            Ok(above + (1 << 62))
        );
        assert!(quantity("cpu_core_hours - 2 ** 60", &u)
            .unwrap_err()
            .contains("is negative"));
        assert!(quantity("cpu_core_hours + 2 ** 63", &u)
            .unwrap_err()
            .contains("too large for a quantity"));
        assert_eq!(
            formula_quantity(&Value::int(i64::MAX), Rounding::Ceiling),
            Ok(i64::MAX)
        );
    }

    #[test]
    fn variables_have_the_predecessors_types() {
        let u = usage(&[
            ("cpu_core_hours", Quantity::Int(7), None),
            ("replica_hours", Quantity::Real(7.5), Some(0.75)),
        ]);
        let d = dims(
            &[
                ("a_int", "cpu_core_hours // 2"),
                ("b_real", "replica_hours // 2"),
                ("c_price", "cpu_core_hours_total_price + 1"),
                (
                    "d_absent",
                    "memory_byte_hours_total_price + memory_byte_hours",
                ),
                ("e_ppu", "pricePerUnit + replica_hours_total_price * 100"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(
            computed(&d, &u),
            vec![
                ("a_int".to_string(), 3.0, Ok(3)),
                ("b_real".to_string(), 3.0, Ok(3)),
                ("c_price".to_string(), 1.0, Ok(1)),
                ("d_absent".to_string(), 0.0, Ok(0)),
                ("e_ppu".to_string(), 75.0, Ok(75)),
            ]
        );
        let values: Vec<Value> = d.variables.iter().map(|v| v.value(&u)).collect();
        let value_of = |name: &str| {
            let i = d.variables.iter().position(|v| v.name == name).unwrap();
            values[i].clone()
        };
        assert_eq!(value_of("cpu_core_hours"), Value::int(7));
        assert_eq!(value_of("replica_hours"), Value::Float(7.5));
        // A dimension with records but no price: a float 0.0, like the predecessor's sum.
        assert_eq!(value_of("cpu_core_hours_total_price"), Value::Float(0.0));
        assert_eq!(value_of("replica_hours_total_price"), Value::Float(0.75));
        // A dimension without usage, and pricePerUnit without such records: int 0.
        assert_eq!(value_of("memory_byte_hours"), Value::int(0));
        assert_eq!(value_of("memory_byte_hours_total_price"), Value::int(0));
        assert_eq!(value_of("pricePerUnit"), Value::int(0));
    }

    #[test]
    fn any_dimension_in_the_ledger_is_a_variable_but_cannot_change_the_predecessors_names() {
        let mut known = base();
        known.extend(
            [
                "gpu_hours",
                "pricePerUnit",
                "abs",
                "cpu_core_hours_total_price",
            ]
            .map(String::from),
        );
        let specs = vec![(
            "g".to_string(),
            "gpu_hours * 2 + gpu_hours_total_price + pricePerUnit_total_price".to_string(),
            "DIMENSION_g".to_string(),
        )];
        let d = Dimensions::new(specs, &known, false, Rounding::Floor).unwrap();
        let names: Vec<&str> = d.variables.iter().map(|v| v.name.as_str()).collect();
        assert!(!names.contains(&"abs"));
        let price = d
            .variables
            .iter()
            .find(|v| v.name == "cpu_core_hours_total_price")
            .unwrap();
        assert!(price.price && price.dimension == "cpu_core_hours");
        let u = usage(&[
            ("gpu_hours", Quantity::Int(5), Some(2.5)),
            ("pricePerUnit", Quantity::Int(1), Some(0.5)),
        ]);
        assert_eq!(d.compute(&u)[0].quantity, Ok(13));
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
    fn empty_dimension_variables_are_unset_like_the_predecessors_compose_file_passes_them() {
        let vars = [
            ("DIMENSION1_NAME", "cpu"),
            ("DIMENSION1_FORMULA", "cpu_core_hours"),
            ("DIMENSION2_NAME", ""),
            ("DIMENSION2_FORMULA", ""),
            ("DIMENSION3_NAME", " "),
            ("DIMENSION3_FORMULA", ""),
            ("DIMENSION_unused", ""),
        ];
        let specs = Dimensions::from_vars(vars).unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].0, "cpu");
        let half = |name: &'static str, formula: &'static str| {
            Dimensions::from_vars([("DIMENSION2_NAME", name), ("DIMENSION2_FORMULA", formula)])
        };
        assert!(half("mem", "")
            .unwrap_err()
            .0
            .contains("DIMENSION2_FORMULA is not"));
        assert!(half("", "replica_hours")
            .unwrap_err()
            .0
            .contains("DIMENSION2_NAME is not"));
        // Duplicate names stay errors, across both forms.
        let twice = Dimensions::from_vars([
            ("DIMENSION_cpu", "cpu_core_hours"),
            ("DIMENSION1_NAME", "cpu"),
            ("DIMENSION1_FORMULA", "cpu_core_hours * 2"),
        ])
        .unwrap();
        let err = Dimensions::new(twice, &base(), false, Rounding::Floor).unwrap_err();
        assert!(err.0.contains("defined twice"), "{err}");
    }

    #[test]
    fn formulas_divide_like_python_and_use_prices_and_functions() {
        let d = dims(
            &[
                ("half", "replica_hours / 2"),
                ("gb", "memory_byte_hours / 1024 ** 3"),
                ("price", "round(cpu_core_hours_total_price * 100)"),
                (
                    "f",
                    "max(abs(0 - cpu_core_hours), min(1, 2), int(7.9), float(3))",
                ),
                ("centi", "cpu_core_hours_total_price / 0.01"),
                ("floor", "cpu_core_hours // 4"),
            ],
            false,
        )
        .unwrap();
        let u = usage(&[
            ("replica_hours", Quantity::Int(7), Some(0.07)),
            ("memory_byte_hours", Quantity::Int(3 * 1073741824), None),
            ("cpu_core_hours", Quantity::Int(10), Some(0.29)),
        ]);
        assert_eq!(
            computed(&d, &u),
            vec![
                ("half".to_string(), 3.5, Ok(3)),
                ("gb".to_string(), 3.0, Ok(3)),
                ("price".to_string(), 29.0, Ok(29)),
                ("f".to_string(), 10.0, Ok(10)),
                // 28.999999999999996: the predecessor sent int() of it, 28.
                ("centi".to_string(), 0.29 / 0.01, Ok(28)),
                ("floor".to_string(), 2.0, Ok(2)),
            ]
        );
    }

    #[test]
    fn without_formulas_the_base_dimensions_are_sent_and_with_them_only_if_asked() {
        let u = usage(&[
            ("cpu_core_hours", Quantity::Real(2.5), None),
            ("replica_hours", Quantity::Int(1), None),
        ]);
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
        assert!(err("(cpu_core_hours").contains("DIMENSION_x: formula '(cpu_core_hours'"));
        assert!(err("(cpu_core_hours").contains("without its ')'"));
        assert!(err("cpu_core_hours *").contains("ends where a value is expected"));
        assert!(err("cpu_hours * 2").contains("unknown variable 'cpu_hours'"));
        assert!(err("sqrt(cpu_core_hours)").contains("unknown variable 'sqrt'"));
        assert!(err("x = 3").contains("an assignment"));
        assert!(err("\"text\"").contains("a string"));
        assert!(err("cpu_core_hours > 2").contains("a comparison"));
        assert!(err("(cpu_core_hours - 1) ** 0.5").contains("complex"));
        assert!(err("").contains("empty"));
    }

    #[test]
    fn failing_and_negative_and_non_finite_results_are_errors_for_that_line() {
        let d = dims(
            &[
                ("neg", "0 - replica_hours"),
                ("zero", "replica_hours / cpu_core_hours"),
                ("inf", "replica_hours * 1e308 * 10"),
                ("ok", "replica_hours"),
            ],
            false,
        )
        .unwrap();
        let lines = d.compute(&usage(&[("replica_hours", Quantity::Int(1), None)]));
        let why = |i: usize| lines[i].quantity.clone().unwrap_err();
        assert!(why(0).contains("negative"), "{}", why(0));
        assert!(why(1).contains("ZeroDivisionError"), "{}", why(1));
        assert!(why(1).starts_with("zero (DIMENSION_zero): "), "{}", why(1));
        assert!(why(2).contains("finite"), "{}", why(2));
        assert_eq!(lines[3].quantity, Ok(1));
    }
}
