//! Python's numbers as the predecessor's formulas see them: `int` (exact and unbounded; here
//! bounded by [`MAX_INT_BITS`]) and `float` (an IEEE double), with CPython 3.11's arithmetic,
//! conversions, comparisons and the builtins `abs min max round int float`.
//!
//! Ported from CPython (`Objects/longobject.c`, `Objects/floatobject.c`, `Python/bltinmodule.c`);
//! each function names the CPython function whose behaviour it reproduces. Where CPython converts
//! between int and float it rounds correctly (half to even); so does [`ratio_to_f64`], on the
//! exact values. Complex numbers are not represented: the parser refuses every `**` that could
//! make one (see `parser.rs`), and [`Value::pow`] reports it should one arise anyway.

use std::cmp::Ordering;
use std::fmt;

use num_bigint::{BigInt, BigUint};
use num_integer::Integer;
use num_traits::{One, Signed, ToPrimitive, Zero};

/// The largest int a formula may produce, in bits (about 30,000 decimal digits). Python's ints are
/// unbounded; this bound keeps a formula's time and memory small whatever it says. Beyond it the
/// evaluation fails with [`EvalError::TooLarge`].
pub const MAX_INT_BITS: u64 = 100_000;

/// A Python number: `int` or `float`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(BigInt),
    Float(f64),
}

/// Why an evaluation failed: the exception Python raises, or meterbook's own bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalError {
    ZeroDivision(&'static str),
    Overflow(&'static str),
    Value(&'static str),
    Type(String),
    /// A negative base raised to a fractional power: a complex number in Python.
    Complex,
    /// An int beyond [`MAX_INT_BITS`].
    TooLarge,
}

impl EvalError {
    /// The Python exception this is (`"complex"` and `"size bound"` for the two that are not).
    pub fn python_name(&self) -> &'static str {
        match self {
            EvalError::ZeroDivision(_) => "ZeroDivisionError",
            EvalError::Overflow(_) => "OverflowError",
            EvalError::Value(_) => "ValueError",
            EvalError::Type(_) => "TypeError",
            EvalError::Complex => "complex",
            EvalError::TooLarge => "size bound",
        }
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::ZeroDivision(m) | EvalError::Overflow(m) | EvalError::Value(m) => {
                write!(f, "{}: {m}", self.python_name())
            }
            EvalError::Type(m) => write!(f, "TypeError: {m}"),
            EvalError::Complex => f.write_str(
                "a negative number to a fractional power is a complex number, not a quantity",
            ),
            EvalError::TooLarge => write!(
                f,
                "an intermediate integer exceeds meterbook's bound of {MAX_INT_BITS} bits"
            ),
        }
    }
}

impl fmt::Display for Value {
    /// Like Python's `repr`, except that ints of more than 40 digits are abbreviated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) if i.bits() <= 128 => write!(f, "{i}"),
            Value::Int(i) => write!(f, "an int of {} bits", i.bits()),
            Value::Float(x) if x.is_nan() => f.write_str("nan"),
            Value::Float(x) if x.is_infinite() => {
                f.write_str(if *x > 0.0 { "inf" } else { "-inf" })
            }
            Value::Float(x) => write!(f, "{x:?}"),
        }
    }
}

type Result<T> = std::result::Result<T, EvalError>;

const INT_TOO_LARGE_FOR_FLOAT: EvalError = EvalError::Overflow("int too large to convert to float");

/// An int result, refused beyond [`MAX_INT_BITS`].
fn int(i: BigInt) -> Result<Value> {
    if i.bits() > MAX_INT_BITS {
        return Err(EvalError::TooLarge);
    }
    Ok(Value::Int(i))
}

impl Value {
    pub fn int(i: i64) -> Value {
        Value::Int(BigInt::from(i))
    }

    /// `PyLong_AsDouble` for ints (nearest, ties to even; OverflowError beyond the largest float).
    pub fn to_f64(&self) -> Result<f64> {
        match self {
            Value::Float(x) => Ok(*x),
            Value::Int(i) => int_to_f64(i),
        }
    }

    /// Both operands as floats for a division, which Python refuses by a zero float with
    /// ZeroDivisionError(`message`).
    fn float_division(&self, divisor: &Value, message: &'static str) -> Result<(f64, f64)> {
        let (a, b) = (self.to_f64()?, divisor.to_f64()?);
        if b == 0.0 {
            return Err(EvalError::ZeroDivision(message));
        }
        Ok((a, b))
    }

    /// `+`: `long_add`, `float_add`.
    pub fn add(&self, other: &Value) -> Result<Value> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => int(a + b),
            _ => Ok(Value::Float(self.to_f64()? + other.to_f64()?)),
        }
    }

    /// `-`: `long_sub`, `float_sub`.
    pub fn sub(&self, other: &Value) -> Result<Value> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => int(a - b),
            _ => Ok(Value::Float(self.to_f64()? - other.to_f64()?)),
        }
    }

    /// `*`: `long_mul`, `float_mul`.
    pub fn mul(&self, other: &Value) -> Result<Value> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => int(a * b),
            _ => Ok(Value::Float(self.to_f64()? * other.to_f64()?)),
        }
    }

    /// `/`: `long_true_divide` (correctly rounded, even for huge ints), `float_div`.
    pub fn true_div(&self, other: &Value) -> Result<Value> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => {
                if b.is_zero() {
                    return Err(EvalError::ZeroDivision("division by zero"));
                }
                let negative = a.is_negative() != b.is_negative();
                ratio_to_f64(negative, a.magnitude(), b.magnitude())
                    .map(Value::Float)
                    .ok_or(EvalError::Overflow(
                        "integer division result too large for a float",
                    ))
            }
            _ => {
                let (a, b) = self.float_division(other, "float division by zero")?;
                Ok(Value::Float(a / b))
            }
        }
    }

    /// `//`: `long_div` (floors), `float_floor_div`.
    pub fn floor_div(&self, other: &Value) -> Result<Value> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => int(a.div_floor(int_divisor(b)?)),
            _ => {
                let (a, b) = self.float_division(other, "float floor division by zero")?;
                Ok(Value::Float(float_div_mod(a, b).0))
            }
        }
    }

    /// `%`: `long_mod` (the divisor's sign), `float_rem`.
    pub fn rem(&self, other: &Value) -> Result<Value> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => int(a.mod_floor(int_divisor(b)?)),
            _ => {
                let (a, b) = self.float_division(other, "float modulo")?;
                let m = a % b;
                let m = if m == 0.0 {
                    // fmod's zero may have either sign; Python gives it the divisor's.
                    0.0_f64.copysign(b)
                } else if (b < 0.0) != (m < 0.0) {
                    m + b
                } else {
                    m
                };
                Ok(Value::Float(m))
            }
        }
    }

    /// `**`: `long_pow` (exact for a non-negative exponent, else float), `float_pow`.
    pub fn pow(&self, other: &Value) -> Result<Value> {
        match (self, other) {
            (Value::Int(base), Value::Int(exponent)) if !exponent.is_negative() => {
                int_pow(base, exponent)
            }
            _ => float_pow(self.to_f64()?, other.to_f64()?).map(Value::Float),
        }
    }

    /// Unary `-`.
    pub fn neg(&self) -> Value {
        match self {
            Value::Int(i) => Value::Int(-i),
            Value::Float(x) => Value::Float(-x),
        }
    }

    /// `abs()`.
    pub fn abs(&self) -> Value {
        match self {
            Value::Int(i) => Value::Int(i.abs()),
            Value::Float(x) => Value::Float(x.abs()),
        }
    }

    /// `int()` of one argument: truncates a float toward zero (`PyLong_FromDouble`).
    pub fn to_int(&self) -> Result<Value> {
        match self {
            Value::Int(_) => Ok(self.clone()),
            Value::Float(x) => float_to_int(x.trunc()),
        }
    }

    /// `float()` of one argument.
    pub fn to_float(&self) -> Result<Value> {
        Ok(Value::Float(self.to_f64()?))
    }

    /// `round(x)`: an int, halves to even (`float___round___impl` without ndigits).
    pub fn round(&self) -> Result<Value> {
        match self {
            Value::Int(_) => Ok(self.clone()),
            Value::Float(x) => float_to_int(x.round_ties_even()),
        }
    }

    /// `round(x, ndigits)`: `int___round___impl` and `float___round___impl`.
    pub fn round_to(&self, ndigits: &Value) -> Result<Value> {
        let Value::Int(n) = ndigits else {
            return Err(EvalError::Type(
                "'float' object cannot be interpreted as an integer".into(),
            ));
        };
        match self {
            Value::Int(i) => round_int(i, n),
            Value::Float(x) => round_float(*x, n).map(Value::Float),
        }
    }

    /// Python's `<`/`>` between numbers: exact between int and float; `None` with a NaN.
    pub fn partial_cmp(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
            (Value::Int(a), Value::Float(b)) => cmp_int_float(a, *b),
            (Value::Float(a), Value::Int(b)) => cmp_int_float(b, *a).map(Ordering::reverse),
        }
    }
}

/// `min()` (`want` = Less) or `max()` (Greater) of two or more arguments (`min_max`): the first
/// extreme element, replaced only by an item that compares strictly beyond it.
pub fn min_max(args: Vec<Value>, want: Ordering) -> Value {
    let mut items = args.into_iter();
    let mut best = items
        .next()
        .expect("min and max take at least two arguments");
    for item in items {
        if item.partial_cmp(&best) == Some(want) {
            best = item;
        }
    }
    best
}

/// The divisor of `//` and `%` between ints, refused when zero.
fn int_divisor(b: &BigInt) -> Result<&BigInt> {
    if b.is_zero() {
        return Err(EvalError::ZeroDivision(
            "integer division or modulo by zero",
        ));
    }
    Ok(b)
}

fn int_to_f64(i: &BigInt) -> Result<f64> {
    if let Some(small) = i.to_i64() {
        // `as` rounds to nearest, ties to even, like PyLong_AsDouble.
        return Ok(small as f64);
    }
    ratio_to_f64(i.is_negative(), i.magnitude(), &BigUint::one()).ok_or(INT_TOO_LARGE_FOR_FLOAT)
}

/// `PyLong_FromDouble` of an integral value.
fn float_to_int(x: f64) -> Result<Value> {
    if x.is_nan() {
        return Err(EvalError::Value("cannot convert float NaN to integer"));
    }
    if x.is_infinite() {
        return Err(EvalError::Overflow(
            "cannot convert float infinity to integer",
        ));
    }
    let (mantissa, exponent) = float_parts(x);
    // x is integral, so a negative exponent only drops zero bits.
    Ok(Value::Int(if exponent >= 0 {
        mantissa << exponent
    } else {
        mantissa >> -exponent
    }))
}

/// A finite float as mantissa x 2^exponent, exactly.
pub(crate) fn float_parts(x: f64) -> (BigInt, i64) {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i64;
    let fraction = bits & ((1 << 52) - 1);
    let (m, e) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), biased - 1075)
    };
    let m = BigInt::from(m);
    (if x.is_sign_negative() { -m } else { m }, e)
}

/// The exact comparison of an int with a float (`float_richcompare`).
fn cmp_int_float(i: &BigInt, x: f64) -> Option<Ordering> {
    if x.is_nan() {
        return None;
    }
    if x.is_infinite() {
        return Some(if x > 0.0 {
            Ordering::Less
        } else {
            Ordering::Greater
        });
    }
    let (mantissa, exponent) = float_parts(x);
    Some(if exponent >= 0 {
        i.cmp(&(mantissa << exponent))
    } else {
        (i << -exponent).cmp(&mantissa)
    })
}

/// The float nearest to ±(a / b), ties to even, with subnormals; `None` when it overflows.
/// This is what `long_true_divide`, `PyLong_AsDouble` and `_Py_dg_strtod` each compute.
pub fn ratio_to_f64(negative: bool, a: &BigUint, b: &BigUint) -> Option<f64> {
    let sign = if negative { -1.0_f64 } else { 1.0 };
    if a.is_zero() {
        return Some(0.0_f64.copysign(sign));
    }
    // Scale so that the integer quotient q has 55 or 56 bits: a / b = (q + r / d) x 2^-shift.
    let shift = 55 - (a.bits() as i64 - b.bits() as i64);
    let (n, d) = if shift >= 0 {
        (a << shift as u64, b.clone())
    } else {
        (a.clone(), b << (-shift) as u64)
    };
    let (q, r) = n.div_rem(&d);
    let q = q.to_u64().expect("the quotient has at most 56 bits");
    let q_bits = 64 - i64::from(q.leading_zeros());
    // The value lies in [2^top, 2^(top+1)); its last significant bit is worth 2^last.
    let top = q_bits - 1 - shift;
    let last = (top - 52).max(-1074);
    let dropped = last + shift;
    if dropped > 57 {
        // Below half the smallest subnormal.
        return Some(0.0_f64.copysign(sign));
    }
    let mut mantissa = q >> dropped;
    let rest = q & ((1_u64 << dropped) - 1);
    let half = 1_u64 << (dropped - 1);
    let sticky = !r.is_zero();
    if rest > half || (rest == half && (sticky || mantissa & 1 == 1)) {
        mantissa += 1;
    }
    let mut last = last;
    if mantissa == 1 << 53 {
        mantissa = 1 << 52;
        last += 1;
    }
    let bits = if mantissa < 1 << 52 {
        // Subnormal (or zero): the exponent field is 0 and `last` is -1074.
        mantissa
    } else {
        let biased = last + 52 + 1023;
        if biased >= 0x7ff {
            return None;
        }
        ((biased as u64) << 52) | (mantissa - (1 << 52))
    };
    Some(f64::from_bits(bits).copysign(sign))
}

/// `_float_div_mod`: floor quotient and remainder of floats, the quotient snapped to an integer.
fn float_div_mod(vx: f64, wx: f64) -> (f64, f64) {
    let mut m = vx % wx;
    let mut div = (vx - m) / wx;
    if m != 0.0 {
        if (wx < 0.0) != (m < 0.0) {
            m += wx;
            div -= 1.0;
        }
    } else {
        m = 0.0_f64.copysign(wx);
    }
    let floordiv = if div != 0.0 {
        let f = div.floor();
        if div - f > 0.5 {
            f + 1.0
        } else {
            f
        }
    } else {
        0.0_f64.copysign(vx / wx)
    };
    (floordiv, m)
}

/// `long_pow` with a non-negative exponent: exact, refused beyond [`MAX_INT_BITS`] before any
/// work is done.
fn int_pow(base: &BigInt, exponent: &BigInt) -> Result<Value> {
    if exponent.is_zero() {
        return Ok(Value::int(1));
    }
    if base.is_zero() || base.is_one() {
        return Ok(Value::Int(base.clone()));
    }
    if *base == BigInt::from(-1) {
        return Ok(Value::int(if exponent.is_odd() { -1 } else { 1 }));
    }
    // |base| >= 2, so the result has at least (bits(base) - 1) x exponent + 1 bits.
    let e = match exponent.to_u64() {
        Some(e) if e <= MAX_INT_BITS && (base.bits() - 1) * e < MAX_INT_BITS => e,
        _ => return Err(EvalError::TooLarge),
    };
    int(base.pow(e as u32))
}

/// `fmod(fabs(x), 2.0) == 1.0` (`DOUBLE_IS_ODD_INTEGER`).
fn is_odd_integer(x: f64) -> bool {
    x.abs() % 2.0 == 1.0
}

/// `float_pow`: Python's special cases, then the C library's `pow`.
fn float_pow(iv: f64, iw: f64) -> Result<f64> {
    if iw == 0.0 {
        return Ok(1.0);
    }
    if iv.is_nan() {
        return Ok(iv);
    }
    if iw.is_nan() {
        return Ok(if iv == 1.0 { 1.0 } else { iw });
    }
    if iw.is_infinite() {
        let v = iv.abs();
        return Ok(if v == 1.0 {
            1.0
        } else if (iw > 0.0) == (v > 1.0) {
            iw.abs()
        } else {
            0.0
        });
    }
    if iv.is_infinite() {
        let odd = is_odd_integer(iw);
        return Ok(if iw > 0.0 {
            if odd {
                iv
            } else {
                iv.abs()
            }
        } else if odd {
            0.0_f64.copysign(iv)
        } else {
            0.0
        });
    }
    if iv == 0.0 {
        if iw < 0.0 {
            return Err(EvalError::ZeroDivision(
                "0.0 cannot be raised to a negative power",
            ));
        }
        return Ok(if is_odd_integer(iw) { iv } else { 0.0 });
    }
    let (v, negate) = if iv < 0.0 {
        if iw != iw.floor() {
            return Err(EvalError::Complex);
        }
        (-iv, is_odd_integer(iw))
    } else {
        (iv, false)
    };
    if v == 1.0 {
        return Ok(if negate { -1.0 } else { 1.0 });
    }
    let x = v.powf(iw);
    // The C library reports ERANGE for an infinite result, which Python raises; an underflow to
    // zero is forgiven (`_Py_ADJUST_ERANGE1`).
    if x.is_infinite() {
        return Err(EvalError::Overflow("(34, 'Numerical result out of range')"));
    }
    Ok(if negate { -x } else { x })
}

/// `int.__round__(ndigits)`: unchanged for ndigits >= 0, else the nearest multiple of
/// 10^-ndigits, ties to the even multiple (`_PyLong_DivmodNear`).
fn round_int(i: &BigInt, ndigits: &BigInt) -> Result<Value> {
    if !ndigits.is_negative() {
        return Ok(Value::Int(i.clone()));
    }
    // 10^k >= 8^k > 2|i| once 3k > bits(i) + 1: then i is nearer to 0 than to any other multiple.
    let k = match (-ndigits).to_u64() {
        Some(k) if k.saturating_mul(3) <= i.bits() + 1 => k,
        _ => return Ok(Value::int(0)),
    };
    let unit = BigInt::from(10).pow(k as u32);
    let (mut q, r) = i.div_mod_floor(&unit);
    let twice: BigInt = &r * 2;
    if twice > unit || (twice == unit && q.is_odd()) {
        q += 1;
    }
    int(q * unit)
}

/// `float.__round__(ndigits)`: `double_round`, i.e. the exact decimal value of x rounded half to
/// even at ndigits places (what `_Py_dg_dtoa` mode 3 gives), read back correctly rounded.
fn round_float(x: f64, ndigits: &BigInt) -> Result<f64> {
    // Python clips ndigits to a Py_ssize_t, and NDIGITS_MAX / NDIGITS_MIN to this range.
    const NDIGITS_MAX: i64 = 323;
    const NDIGITS_MIN: i64 = -308;
    if !x.is_finite() {
        return Ok(x);
    }
    let n = match ndigits.to_i64() {
        Some(n) if n > NDIGITS_MAX => return Ok(x),
        Some(n) if n >= NDIGITS_MIN => n,
        None if ndigits.is_positive() => return Ok(x),
        _ => return Ok(0.0 * x),
    };
    let (mantissa, exponent) = float_parts(x);
    let negative = x.is_sign_negative();
    let mantissa = mantissa.magnitude().clone();
    let ten_n = BigUint::from(10_u32).pow(n.unsigned_abs() as u32);
    // x x 10^n = num / den exactly.
    let (mut num, mut den) = (mantissa, BigUint::one());
    if exponent >= 0 {
        num <<= exponent as u64;
    } else {
        den <<= (-exponent) as u64;
    }
    if n >= 0 {
        num *= &ten_n;
    } else {
        den *= &ten_n;
    }
    let (mut q, r) = num.div_rem(&den);
    let twice = r * 2_u32;
    if twice > den || (twice == den && q.is_odd()) {
        q += 1_u32;
    }
    // q x 10^-n, back to the nearest float.
    let rounded = if n >= 0 {
        ratio_to_f64(negative, &q, &ten_n)
    } else {
        ratio_to_f64(negative, &(q * ten_n), &BigUint::one())
    };
    rounded.ok_or(EvalError::Overflow("rounded value too large to represent"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(x: i64) -> Value {
        Value::int(x)
    }
    fn f(x: f64) -> Value {
        Value::Float(x)
    }
    fn big(s: &str) -> Value {
        Value::Int(s.parse().unwrap())
    }

    #[test]
    fn int_division_floors_and_the_remainder_takes_the_divisors_sign() {
        assert_eq!(i(7).floor_div(&i(2)), Ok(i(3)));
        assert_eq!(i(-7).floor_div(&i(2)), Ok(i(-4)));
        assert_eq!(i(-7).rem(&i(2)), Ok(i(1)));
        assert_eq!(i(7).rem(&i(-2)), Ok(i(-1)));
        assert_eq!(
            i(1).floor_div(&i(0)).unwrap_err().python_name(),
            "ZeroDivisionError"
        );
    }

    #[test]
    fn float_floor_division_and_remainder_follow_cpython() {
        assert_eq!(f(-7.5).floor_div(&i(2)), Ok(f(-4.0)));
        assert_eq!(f(7.5).rem(&f(-2.0)), Ok(f(-0.5)));
        // Zeros take the sign Python gives them.
        let zero = f(0.0).floor_div(&i(-3)).unwrap();
        assert!(matches!(zero, Value::Float(z) if z == 0.0 && z.is_sign_negative()));
        let zero = f(-0.0).rem(&i(3)).unwrap();
        assert!(matches!(zero, Value::Float(z) if z == 0.0 && z.is_sign_positive()));
        assert_eq!(i(-5).rem(&f(f64::INFINITY)), Ok(f(f64::INFINITY)));
        // 1 // 0.1 is 9.0 in Python: 0.1 is slightly more than a tenth.
        assert_eq!(i(1).floor_div(&f(0.1)), Ok(f(9.0)));
        assert_eq!(
            i(5).floor_div(&f(0.0)).unwrap_err().python_name(),
            "ZeroDivisionError"
        );
    }

    #[test]
    fn true_division_of_ints_is_correctly_rounded_even_for_huge_ints() {
        assert_eq!(i(7).true_div(&i(2)), Ok(f(3.5)));
        let big_ten = |k: u32| Value::Int(BigInt::from(10).pow(k));
        assert_eq!(big_ten(400).true_div(&big_ten(399)), Ok(f(10.0)));
        // (2^53 + 1) / 1 is a tie between 2^53 and 2^53 + 2: to even.
        assert_eq!(
            big("9007199254740993").true_div(&i(1)),
            Ok(f(9007199254740992.0))
        );
        assert_eq!(
            big("9007199254740995").true_div(&i(1)),
            Ok(f(9007199254740996.0))
        );
        let zero = i(0).true_div(&i(-5)).unwrap();
        assert!(matches!(zero, Value::Float(z) if z == 0.0 && z.is_sign_negative()));
        assert_eq!(
            big_ten(400).true_div(&i(3)).unwrap_err().python_name(),
            "OverflowError"
        );
        // The smallest subnormal, and half of it (a tie, to even: zero).
        let two = |k: u32| Value::Int(BigInt::from(2).pow(k));
        assert_eq!(i(1).true_div(&two(1074)), Ok(f(5e-324)));
        assert_eq!(i(1).true_div(&two(1075)), Ok(f(0.0)));
        assert_eq!(i(3).true_div(&two(1076)), Ok(f(5e-324)));
    }

    #[test]
    fn int_to_float_rounds_half_to_even_and_overflows_beyond_the_largest_float() {
        assert_eq!(
            big("9007199254740993").to_float(),
            Ok(f(9007199254740992.0))
        );
        let two = |k: u32| BigInt::from(2).pow(k);
        assert_eq!(Value::Int(two(1024) - two(971)).to_f64(), Ok(f64::MAX));
        // Exactly halfway between f64::MAX and 2^1024 rounds to even, which overflows; a little
        // less is f64::MAX.
        let half = Value::Int(two(1024) - two(970));
        assert_eq!(half.to_f64().unwrap_err().python_name(), "OverflowError");
        let below = Value::Int(two(1024) - two(970) - 1);
        assert_eq!(below.to_f64(), Ok(f64::MAX));
        assert_eq!(
            i(1).add(&Value::Int(BigInt::from(10).pow(400))),
            Ok(Value::Int(BigInt::from(10).pow(400) + 1))
        );
        assert_eq!(
            f(1.0)
                .add(&Value::Int(BigInt::from(10).pow(400)))
                .unwrap_err()
                .python_name(),
            "OverflowError"
        );
    }

    #[test]
    fn powers_follow_python() {
        assert_eq!(i(2).pow(&i(10)), Ok(i(1024)));
        assert_eq!(i(2).pow(&i(-1)), Ok(f(0.5)));
        assert_eq!(i(2).pow(&f(3.0)), Ok(f(8.0)));
        assert_eq!(i(1024).pow(&i(3)), Ok(i(1_073_741_824)));
        assert_eq!(
            i(0).pow(&i(-1)).unwrap_err().python_name(),
            "ZeroDivisionError"
        );
        assert_eq!(f(-8.0).pow(&f(1.0 / 3.0)), Err(EvalError::Complex));
        assert_eq!(f(-2.0).pow(&f(3.0)), Ok(f(-8.0)));
        assert_eq!(f(-1.0).pow(&f(1e300)), Ok(f(1.0)));
        assert_eq!(
            f(10.0).pow(&i(400)).unwrap_err().python_name(),
            "OverflowError"
        );
        assert_eq!(f(2.0).pow(&f(-1080.0)), Ok(f(0.0)));
        assert_eq!(f(f64::INFINITY).pow(&f(-3.0)), Ok(f(0.0)));
        assert_eq!(i(-1).pow(&big("100000000000000000001")), Ok(i(-1)));
    }

    #[test]
    fn ints_beyond_the_size_bound_are_an_error_not_a_hang() {
        assert_eq!(i(9).pow(&big("387420489")), Err(EvalError::TooLarge));
        assert_eq!(i(2).pow(&i(99_999)).map(|v| v.to_f64().is_err()), Ok(true));
        assert_eq!(i(2).pow(&i(100_000)), Err(EvalError::TooLarge));
        let near = i(2).pow(&i(99_999)).unwrap();
        assert_eq!(near.mul(&near), Err(EvalError::TooLarge));
    }

    #[test]
    fn round_halves_to_even() {
        assert_eq!(f(2.5).round(), Ok(i(2)));
        assert_eq!(f(3.5).round(), Ok(i(4)));
        assert_eq!(f(-0.5).round(), Ok(i(0)));
        assert_eq!(i(7).round(), Ok(i(7)));
        assert_eq!(f(f64::NAN).round().unwrap_err().python_name(), "ValueError");
        assert_eq!(
            f(f64::INFINITY).round().unwrap_err().python_name(),
            "OverflowError"
        );
    }

    #[test]
    fn round_with_ndigits_rounds_the_exact_decimal_value_half_to_even() {
        // 0.125 and 0.375 are exact: ties, to even. 2.675 is a little less than 2.675.
        assert_eq!(f(0.125).round_to(&i(2)), Ok(f(0.12)));
        assert_eq!(f(0.375).round_to(&i(2)), Ok(f(0.38)));
        assert_eq!(f(2.675).round_to(&i(2)), Ok(f(2.67)));
        assert_eq!(f(1234.5).round_to(&i(-2)), Ok(f(1200.0)));
        let zero = f(-0.001).round_to(&i(2)).unwrap();
        assert!(matches!(zero, Value::Float(z) if z == 0.0 && z.is_sign_negative()));
        assert_eq!(
            f(1.5e308).round_to(&i(-308)).unwrap_err().python_name(),
            "OverflowError"
        );
        assert_eq!(f(5.5).round_to(&big("1000000000000000000000")), Ok(f(5.5)));
        assert_eq!(f(5.5).round_to(&big("-1000000000000000000000")), Ok(f(0.0)));
        assert_eq!(
            f(f64::NAN)
                .round_to(&i(2))
                .map(|v| v.to_f64().unwrap().is_nan()),
            Ok(true)
        );
        // Ints: unchanged for ndigits >= 0, else to the nearest multiple, ties to even.
        assert_eq!(i(15).round_to(&i(-1)), Ok(i(20)));
        assert_eq!(i(25).round_to(&i(-1)), Ok(i(20)));
        assert_eq!(i(5).round_to(&i(-1)), Ok(i(0)));
        assert_eq!(i(-15).round_to(&i(-1)), Ok(i(-20)));
        assert_eq!(i(5).round_to(&i(3)), Ok(i(5)));
        assert_eq!(i(5).round_to(&big("-1000000000000000000000")), Ok(i(0)));
        assert_eq!(
            i(5).round_to(&f(2.0)).unwrap_err().python_name(),
            "TypeError"
        );
    }

    #[test]
    fn int_truncates_and_refuses_nan_and_infinity() {
        assert_eq!(f(7.9).to_int(), Ok(i(7)));
        assert_eq!(f(-7.9).to_int(), Ok(i(-7)));
        assert_eq!(f(1e20).to_int(), Ok(big("100000000000000000000")));
        assert_eq!(
            f(f64::NAN).to_int().unwrap_err().python_name(),
            "ValueError"
        );
        assert_eq!(
            f(f64::NEG_INFINITY).to_int().unwrap_err().python_name(),
            "OverflowError"
        );
    }

    #[test]
    fn min_and_max_compare_int_and_float_exactly_and_keep_the_first_extreme() {
        let above = big("9007199254740993");
        let float = f(9007199254740992.0);
        assert_eq!(
            min_max(vec![above.clone(), float.clone()], Ordering::Greater),
            above
        );
        assert_eq!(
            min_max(vec![float.clone(), i(9007199254740992)], Ordering::Less),
            float
        );
        assert_eq!(min_max(vec![i(1), f(1.0)], Ordering::Greater), i(1));
        let nan = f(f64::NAN);
        assert!(
            matches!(min_max(vec![nan.clone(), i(1)], Ordering::Greater), Value::Float(x) if x.is_nan())
        );
        assert_eq!(min_max(vec![i(1), nan, i(0)], Ordering::Less), i(0));
    }
}
