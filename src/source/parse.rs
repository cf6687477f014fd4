//! Parsing a usage file's body (a JSON array of records) into ledger records and problems.
//! Pure: no I/O. A problem with one record never loses the others.
//!
//! Bounded: the array is read element by element (never collected first), values above
//! [`MAX_VALUE`] and prices above [`MAX_PRICE_PER_UNIT`] are refused, and only the first
//! [`PROBLEMS_KEPT_PER_FILE`] problems are kept (the rest are counted), so memory follows the
//! records, not the problems, whatever the body holds.

use std::fmt;

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// The largest usage value a record may have, and the largest total of one hour's records per
/// service key, contract (or none) and dimension: 2^52. Below it every integer is exact in a
/// double, and a month (at most 744 hours) sums to less than 2^62, so SQLite's integer `SUM`
/// cannot overflow whatever order it adds in.
pub const MAX_VALUE: i64 = 1 << 52;

/// The largest `pricePerUnit` taken (dollars per unit); a larger one is refused and the record
/// kept without a price. Omnistrate's prices are cents per unit-hour.
pub const MAX_PRICE_PER_UNIT: f64 = 1e6;

/// Problems stored per file: the first ones are kept, the rest only counted (in the file's
/// `problem_count` and one closing problem row), so a file of a million bad lines cannot fill the
/// disk.
pub const PROBLEMS_KEPT_PER_FILE: usize = 1000;

/// A usage quantity as written: integers stay exact, fractions are floats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantity {
    Int(i64),
    Real(f64),
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quantity::Int(i) => write!(f, "{i}"),
            Quantity::Real(r) => write!(f, "{r}"),
        }
    }
}

impl Quantity {
    pub fn as_f64(self) -> f64 {
        match self {
            Quantity::Int(i) => i as f64,
            Quantity::Real(r) => r,
        }
    }
}

/// One record of a usage file, ready for the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    pub record_index: usize,
    /// `externalPayerId`, the marketplace contract id; `None` when missing or empty.
    pub contract_id: Option<String>,
    pub dimension: String,
    pub value: Quantity,
    pub price_per_unit: Option<f64>,
    pub subscription_id: Option<String>,
    pub customer_id: Option<String>,
    pub instance_id: Option<String>,
    pub pod_name: Option<String>,
    pub host_name: Option<String>,
    pub instance_type: Option<String>,
    pub timestamp: Option<String>,
}

/// Something wrong with the input, for the problems table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The record's position in the array; `None` when the whole file is at fault.
    pub record_index: Option<usize>,
    pub reason: String,
    /// The record was still stored (e.g. without its price).
    pub record_kept: bool,
}

impl Problem {
    pub fn file(reason: impl Into<String>) -> Problem {
        Problem {
            record_index: None,
            reason: reason.into(),
            record_kept: false,
        }
    }

    fn record(index: usize, reason: impl Into<String>) -> Problem {
        Problem {
            record_index: Some(index),
            reason: reason.into(),
            record_kept: false,
        }
    }
}

/// Keeps `item` while `kept` holds fewer than [`PROBLEMS_KEPT_PER_FILE`], else counts it in
/// `more`.
pub fn keep_or_count<T>(kept: &mut Vec<T>, more: &mut u64, item: T) {
    if kept.len() < PROBLEMS_KEPT_PER_FILE {
        kept.push(item);
    } else {
        *more += 1;
    }
}

/// The records and problems found in one body.
#[derive(Debug, Default, PartialEq)]
pub struct ParsedBody {
    pub records: Vec<UsageRecord>,
    /// The first [`PROBLEMS_KEPT_PER_FILE`] problems.
    pub problems: Vec<Problem>,
    /// Problems found beyond those kept.
    pub more_problems: u64,
}

impl ParsedBody {
    /// A body that is wrong as a whole.
    pub fn rejected(reason: impl Into<String>) -> ParsedBody {
        ParsedBody {
            problems: vec![Problem::file(reason)],
            ..ParsedBody::default()
        }
    }

    fn problem(&mut self, p: Problem) {
        keep_or_count(&mut self.problems, &mut self.more_problems, p);
    }

    /// Every problem found, kept or not.
    pub fn problem_count(&self) -> u64 {
        self.problems.len() as u64 + self.more_problems
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRecord {
    timestamp: Option<Value>,
    customer_id: Option<Value>,
    subscription_id: Option<Value>,
    external_payer_id: Option<Value>,
    instance_id: Option<Value>,
    pod_name: Option<Value>,
    instance_type: Option<Value>,
    host_name: Option<Value>,
    dimension: Option<Value>,
    value: Option<Value>,
    price_per_unit: Option<Value>,
}

/// Parses a usage file body. Never fails: what cannot be used becomes a [`Problem`].
pub fn parse_usage_body(body: &[u8]) -> ParsedBody {
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            return ParsedBody::rejected(format!(
                "body is not UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ))
        }
    };
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if trimmed.is_empty() {
        return ParsedBody::rejected("empty body");
    }
    if !trimmed.starts_with('[') {
        let found = match serde_json::from_str::<Value>(trimmed) {
            Ok(v) => format!("a JSON {}", json_kind(&v)),
            Err(e) => format!("invalid JSON: {e}"),
        };
        return ParsedBody::rejected(format!(
            "body is not a JSON array of records (found {found})"
        ));
    }
    // Fast path: a well-formed array of objects parses in one pass.
    let mut parsed = ParsedBody::default();
    if each_element(trimmed, |index, rec: RawRecord| {
        convert_record(index, rec, &mut parsed)
    })
    .is_ok()
    {
        return parsed;
    }
    // Otherwise one record at a time, so that one bad record cannot hide the others.
    let mut parsed = ParsedBody::default();
    match each_element(trimmed, |index, raw: &RawValue| {
        parse_record(index, raw.get(), &mut parsed)
    }) {
        Ok(()) => parsed,
        Err(e) => ParsedBody::rejected(format!("invalid JSON: {e}")),
    }
}

/// Deserializes the elements of the JSON array `text` one at a time, handing each to `each` with
/// its index, without collecting them first.
fn each_element<'de, T: Deserialize<'de>>(
    text: &'de str,
    each: impl FnMut(usize, T),
) -> serde_json::Result<()> {
    struct Elements<F, T>(F, std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>, F: FnMut(usize, T)> Visitor<'de> for Elements<F, T> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON array of records")
        }
        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            let mut index = 0;
            while let Some(element) = seq.next_element::<T>()? {
                (self.0)(index, element);
                index += 1;
            }
            Ok(())
        }
    }
    impl<'de, T: Deserialize<'de>, F: FnMut(usize, T)> DeserializeSeed<'de> for Elements<F, T> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    Elements(each, std::marker::PhantomData).deserialize(&mut de)?;
    de.end()
}

fn parse_record(index: usize, raw: &str, out: &mut ParsedBody) {
    if !raw.starts_with('{') {
        let kind = serde_json::from_str::<Value>(raw)
            .map(|v| json_kind(&v))
            .unwrap_or("value");
        out.problem(Problem::record(
            index,
            format!("record is not a JSON object (found a JSON {kind})"),
        ));
        return;
    }
    match serde_json::from_str(raw) {
        Ok(rec) => convert_record(index, rec, out),
        Err(e) => out.problem(Problem::record(index, format!("invalid record: {e}"))),
    }
}

/// Checks one record's fields and keeps it, or says what is wrong with it.
fn convert_record(index: usize, rec: RawRecord, out: &mut ParsedBody) {
    let dimension = match rec.dimension {
        None | Some(Value::Null) => {
            out.problem(Problem::record(index, "record has no dimension"));
            return;
        }
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(other) => {
            out.problem(Problem::record(
                index,
                format!("dimension is not a non-empty string: {other}"),
            ));
            return;
        }
    };
    let value = match rec.value {
        None | Some(Value::Null) => {
            out.problem(Problem::record(index, "record has no value"));
            return;
        }
        Some(v) => match quantity(&v) {
            Ok(q) => q,
            Err(why) => {
                out.problem(Problem::record(
                    index,
                    format!("value {v} is {why} (dimension {dimension})"),
                ));
                return;
            }
        },
    };
    let price_per_unit = match rec.price_per_unit {
        None | Some(Value::Null) => None,
        Some(v) => match quantity(&v).and_then(price) {
            Ok(p) => Some(p),
            Err(why) => {
                out.problem(Problem {
                    record_index: Some(index),
                    reason: format!("pricePerUnit {v} is {why}; record kept without a price"),
                    record_kept: true,
                });
                None
            }
        },
    };
    let contract_id = match rec.external_payer_id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Some(other) => {
            out.problem(Problem {
                record_index: Some(index),
                reason: format!(
                    "externalPayerId {other} is not a string; record kept as unattributed"
                ),
                record_kept: true,
            });
            None
        }
    };
    out.records.push(UsageRecord {
        record_index: index,
        contract_id,
        dimension,
        value,
        price_per_unit,
        subscription_id: text_field(rec.subscription_id),
        customer_id: text_field(rec.customer_id),
        instance_id: text_field(rec.instance_id),
        pod_name: text_field(rec.pod_name),
        host_name: text_field(rec.host_name),
        instance_type: text_field(rec.instance_type),
        timestamp: text_field(rec.timestamp),
    });
}

/// A finite, non-negative JSON number of at most [`MAX_VALUE`].
fn quantity(v: &Value) -> Result<Quantity, &'static str> {
    let Value::Number(n) = v else {
        return Err("not a number");
    };
    let q = if let Some(i) = n.as_i64() {
        Quantity::Int(i)
    } else {
        Quantity::Real(n.as_f64().ok_or("not a finite number")?)
    };
    match q {
        Quantity::Int(i) if i < 0 => Err("negative"),
        Quantity::Real(r) if !r.is_finite() => Err("not a finite number"),
        Quantity::Real(r) if r < 0.0 => Err("negative"),
        q if q.as_f64() > MAX_VALUE as f64 => {
            Err("above the largest value taken, 2^52 = 4503599627370496")
        }
        q => Ok(q),
    }
}

/// A price per unit of at most [`MAX_PRICE_PER_UNIT`].
fn price(q: Quantity) -> Result<f64, &'static str> {
    match q.as_f64() {
        p if p > MAX_PRICE_PER_UNIT => Err("above the largest price taken, 1000000 per unit"),
        p => Ok(p),
    }
}

/// Identity fields are informational: keep whatever is there, as text.
fn text_field(v: Option<Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(p: &ParsedBody) -> Vec<(Option<usize>, String)> {
        p.problems
            .iter()
            .map(|p| (p.record_index, p.reason.clone()))
            .collect()
    }

    #[test]
    fn a_real_record_is_parsed_with_its_identity_fields() {
        let body = br#"[{"timestamp":"2025-11-14T03:01:59Z","customerId":"user-1","subscriptionId":"sub-3",
            "externalPayerId":"ae641bd1","instanceId":"instance-8","podName":"postgres-0",
            "instanceType":"t4g.small","hostName":"ip-172","dimension":"storage_allocated_byte_hours",
            "value":10737418240,"pricePerUnit":0.05,"somethingNew":{"x":1}}]"#;
        let p = parse_usage_body(body);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let r = &p.records[0];
        assert_eq!(r.contract_id.as_deref(), Some("ae641bd1"));
        assert_eq!(r.value, Quantity::Int(10737418240));
        assert_eq!(r.price_per_unit, Some(0.05));
        assert_eq!(r.pod_name.as_deref(), Some("postgres-0"));
        assert_eq!(r.timestamp.as_deref(), Some("2025-11-14T03:01:59Z"));
    }

    #[test]
    fn bad_records_become_problems_and_the_rest_is_kept() {
        let body = br#"[
            {"dimension":"cpu_core_hours","value":2,"externalPayerId":"c1"},
            {"value":1,"externalPayerId":"c1"},
            {"dimension":"cpu_core_hours","externalPayerId":"c1"},
            {"dimension":"cpu_core_hours","value":-1,"externalPayerId":"c1"},
            {"dimension":"cpu_core_hours","value":"7","externalPayerId":"c1"},
            42,
            {"dimension":"cpu_core_hours","value":1.5,"externalPayerId":"","pricePerUnit":"x"}
        ]"#;
        let p = parse_usage_body(body);
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.records[1].value, Quantity::Real(1.5));
        assert_eq!(p.records[1].contract_id, None);
        assert_eq!(p.records[1].price_per_unit, None);
        let r = reasons(&p);
        assert_eq!(r[0], (Some(1), "record has no dimension".into()));
        assert_eq!(r[1], (Some(2), "record has no value".into()));
        assert!(r[2].1.contains("negative"), "{r:?}");
        assert!(r[3].1.contains("not a number"), "{r:?}");
        assert!(r[4].1.contains("not a JSON object"), "{r:?}");
        assert!(r[5].1.contains("pricePerUnit"), "{r:?}");
        assert!(p.problems[5].record_kept);
    }

    #[test]
    fn whole_file_problems_are_named() {
        let cases: [(&[u8], &str); 5] = [
            (b"", "empty body"),
            (b"  \n", "empty body"),
            (b"[{\"dimension\":", "invalid JSON"),
            (
                b"{\"records\":[]}",
                "not a JSON array of records (found a JSON object)",
            ),
            (b"[\xff\xfe]", "not UTF-8"),
        ];
        for (body, expected) in cases {
            let p = parse_usage_body(body);
            assert!(p.records.is_empty());
            assert_eq!(p.problems.len(), 1);
            assert_eq!(p.problems[0].record_index, None);
            assert!(
                p.problems[0].reason.contains(expected),
                "{:?} -> {}",
                String::from_utf8_lossy(body),
                p.problems[0].reason
            );
        }
    }

    #[test]
    fn an_empty_array_is_valid_and_empty() {
        assert_eq!(parse_usage_body(b"[]"), ParsedBody::default());
    }

    #[test]
    fn values_and_prices_past_their_bounds_are_refused() {
        let body = format!(
            r#"[{{"dimension":"d","value":{max}}},
                {{"dimension":"d","value":{over}}},
                {{"dimension":"d","value":9223372036854775807}},
                {{"dimension":"d","value":18446744073709551615}},
                {{"dimension":"d","value":1e300}},
                {{"dimension":"d","value":1,"pricePerUnit":1000001}},
                {{"dimension":"d","value":1,"pricePerUnit":-1}}]"#,
            max = MAX_VALUE,
            over = MAX_VALUE + 1
        );
        let p = parse_usage_body(body.as_bytes());
        let kept: Vec<usize> = p.records.iter().map(|r| r.record_index).collect();
        assert_eq!(kept, [0, 5, 6]);
        assert_eq!(p.records[0].value, Quantity::Int(MAX_VALUE));
        assert_eq!(
            (p.records[1].price_per_unit, p.records[2].price_per_unit),
            (None, None)
        );
        let r = reasons(&p);
        for i in 0..4 {
            assert!(r[i].1.contains("2^52"), "{r:?}");
        }
        assert!(r[4].1.contains("largest price") && p.problems[4].record_kept);
        assert!(r[5].1.contains("negative") && p.problems[5].record_kept);
    }

    #[test]
    fn problems_past_the_cap_are_counted_not_kept() {
        let body = format!("[{}0]", "0,".repeat(2 * PROBLEMS_KEPT_PER_FILE));
        let p = parse_usage_body(body.as_bytes());
        assert_eq!(p.problems.len(), PROBLEMS_KEPT_PER_FILE);
        assert_eq!(p.problem_count(), 2 * PROBLEMS_KEPT_PER_FILE as u64 + 1);
        assert!(p.records.is_empty());
    }
}

/// Property tests: whatever the body, parsing ends, stays within its bounds, and accounts for
/// every element of an array as a record or a problem.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Field values, plausible and hostile.
    fn field() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (0..=MAX_VALUE).prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
                .map(Value::Number)),
            "[a-z_ ]{0,12}".prop_map(Value::from),
            Just(json!({"x": [1, 2]})),
        ]
    }

    fn element() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => (field(), field(), field(), field()).prop_map(|(c, d, v, p)| {
                json!({"externalPayerId": c, "dimension": d, "value": v, "pricePerUnit": p})
            }),
            4 => ("[a-z]{1,8}", 0..=MAX_VALUE, proptest::option::of(0.0..2e6f64)).prop_map(
                |(d, v, p)| json!({"externalPayerId": "c", "dimension": d, "value": v, "pricePerUnit": p})
            ),
            1 => field(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn every_element_ends_as_a_record_or_a_problem(elements in proptest::collection::vec(element(), 0..40)) {
            let body = serde_json::to_vec(&elements).unwrap();
            let p = parse_usage_body(&body);
            prop_assert_eq!(p.more_problems, 0);
            let mut seen = vec![0; elements.len()];
            for r in &p.records {
                seen[r.record_index] += 1;
                prop_assert!(r.value.as_f64().is_finite());
                prop_assert!((0.0..=MAX_VALUE as f64).contains(&r.value.as_f64()));
                prop_assert!(r.price_per_unit.is_none_or(|x| (0.0..=MAX_PRICE_PER_UNIT).contains(&x)));
            }
            for pr in p.problems.iter().filter(|pr| !pr.record_kept) {
                let i = pr.record_index.expect("an array's problems name their element");
                seen[i] += 1;
            }
            prop_assert!(seen.iter().all(|&n| n == 1), "{:?}", seen);
        }

        #[test]
        fn any_bytes_end_as_bounded_records_and_problems(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let p = parse_usage_body(&body);
            prop_assert!(p.records.len() <= body.len() / 2);
            prop_assert!(p.problems.len() <= PROBLEMS_KEPT_PER_FILE);
            // Nothing found means nothing was there: an empty array.
            if p.records.is_empty() && p.problems.is_empty() {
                let text = std::str::from_utf8(&body).unwrap().trim_start_matches('\u{feff}');
                prop_assert_eq!(serde_json::from_str::<Vec<Value>>(text).ok(), Some(vec![]));
            }
        }
    }
}
