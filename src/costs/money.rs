//! Money as exact integers: billing costs become nano-dollars (1e-9 USD) when read, so that sums
//! of millions of line items are exact and the check against the invoice total is not blurred by
//! floating-point error. Dollars appear only when printing.

/// Nano-dollars per dollar.
pub const NANOS_PER_DOLLAR: i64 = 1_000_000_000;

/// Parses a decimal cost such as `12.5`, `-0.0000001` or `9.12e-02` into nano-dollars, rounding
/// half away from zero past the ninth decimal. `None` for anything that is not a finite decimal
/// or does not fit.
pub fn parse_nanos(text: &str) -> Option<i64> {
    let s = text.trim();
    let (negative, s) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part
        .bytes()
        .chain(frac_part.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // All the digits, and where the decimal point sits among them after the exponent.
    let digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let point = i64::try_from(int_part.len()).ok()? + i64::from(exponent);
    // Nano-dollars keep the digits up to 9 places after the point.
    let keep = point + 9;
    let mut value: i128 = 0;
    for i in 0..keep.max(0) {
        let d = usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i))
            .copied()
            .unwrap_or(0);
        value = value.checked_mul(10)?.checked_add(i128::from(d))?;
        if value > i128::from(i64::MAX) {
            return None;
        }
    }
    let next = usize::try_from(keep)
        .ok()
        .and_then(|i| digits.get(i))
        .copied();
    if next.is_some_and(|d| d >= 5) {
        value += 1;
    }
    let value = i64::try_from(value).ok()?;
    Some(if negative { -value } else { value })
}

/// Nano-dollars as dollars, for arithmetic on results (run rates, plots).
pub fn to_dollars(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_DOLLAR as f64
}

/// Formats nano-dollars as `$1,234.56` (rounded to the cent, half away from zero).
pub fn format_dollars(nanos: i64) -> String {
    let cents = (i128::from(nanos) * 100
        + i128::from(NANOS_PER_DOLLAR / 2) * i128::from(nanos.signum()))
        / i128::from(NANOS_PER_DOLLAR);
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    let whole = (cents / 100).to_string();
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}${grouped}.{:02}", cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_exponents_parse_exactly() {
        assert_eq!(parse_nanos("0"), Some(0));
        assert_eq!(parse_nanos("12.5"), Some(12_500_000_000));
        assert_eq!(parse_nanos("-0.000000001"), Some(-1));
        assert_eq!(parse_nanos("9.12e-02"), Some(91_200_000));
        assert_eq!(parse_nanos("9.12E+02"), Some(912_000_000_000));
        assert_eq!(parse_nanos("1e-9"), Some(1));
        assert_eq!(parse_nanos(".5"), Some(500_000_000));
        assert_eq!(parse_nanos("3."), Some(3_000_000_000));
        assert_eq!(parse_nanos(" 0.1234567894 "), Some(123_456_789));
        assert_eq!(parse_nanos("0.1234567895"), Some(123_456_790));
        assert_eq!(parse_nanos("-0.0000000015"), Some(-2));
    }

    #[test]
    fn non_numbers_are_refused() {
        for bad in [
            "", "-", ".", "abc", "1.2.3", "1e", "1e-x", "NaN", "inf", "1,5", "$3", "1e30",
        ] {
            assert_eq!(parse_nanos(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn dollars_are_grouped_and_rounded_to_cents() {
        assert_eq!(format_dollars(0), "$0.00");
        assert_eq!(format_dollars(1_234_567_890_000), "$1,234.57");
        assert_eq!(format_dollars(-5_000_000), "-$0.01");
        assert_eq!(format_dollars(999_994_999), "$1.00");
        assert_eq!(format_dollars(123_456_789_000_000_000), "$123,456,789.00");
    }
}
