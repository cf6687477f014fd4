//! Rows of a billing CSV: columns matched by header name, each row a line item, a total row, or a
//! problem that names its line and reason. Tag columns (`user:*`, `aws:*`) vary per account and
//! month; every non-empty one is kept.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;

use chrono::NaiveDateTime;

use super::money::parse_nanos;

/// Record types that are totals: kept apart and compared with the sum of line items.
pub const TOTAL_RECORD_TYPES: [&str; 4] =
    ["InvoiceTotal", "AccountTotal", "StatementTotal", "Rounding"];

/// The tags whose first non-empty value names a line item's user, unless configured otherwise.
pub const DEFAULT_USER_TAGS: [&str; 4] = [
    "user:Owner",
    "user:Project",
    "user:ProjectName",
    "user:Name",
];

/// A cost row: usage, discounted usage, tax, fees.
#[derive(Debug, Clone, PartialEq)]
pub struct LineItem {
    /// 1-based line in the CSV (the header is line 1).
    pub line: u64,
    pub record_type: String,
    pub invoice_id: Option<String>,
    pub linked_account_id: Option<String>,
    pub product_name: Option<String>,
    pub usage_type: Option<String>,
    pub operation: Option<String>,
    pub availability_zone: Option<String>,
    pub item_description: Option<String>,
    pub usage_start: NaiveDateTime,
    pub usage_end: Option<NaiveDateTime>,
    pub usage_quantity: Option<f64>,
    pub blended_nanos: i64,
    pub unblended_nanos: Option<i64>,
    pub resource_id: Option<String>,
    /// The first non-empty of the configured user tags.
    pub user: Option<String>,
    /// Every non-empty tag as a JSON object, `{"user:Owner":"alice",...}`; `None` when untagged.
    pub tags: Option<String>,
}

/// An `InvoiceTotal`, `AccountTotal`, `StatementTotal` or `Rounding` row.
#[derive(Debug, Clone, PartialEq)]
pub struct TotalRow {
    pub line: u64,
    pub record_type: String,
    pub invoice_id: Option<String>,
    pub linked_account_id: Option<String>,
    pub item_description: Option<String>,
    pub blended_nanos: i64,
    pub unblended_nanos: Option<i64>,
}

/// A row that could not be stored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Item(Box<LineItem>),
    Total(TotalRow),
    Problem(RowProblem),
}

/// Where each known column is in this file.
#[derive(Debug, Clone)]
struct Columns {
    width: usize,
    record_type: usize,
    blended_cost: usize,
    unblended_cost: Option<usize>,
    invoice_id: Option<usize>,
    linked_account_id: Option<usize>,
    product_name: Option<usize>,
    usage_type: Option<usize>,
    operation: Option<usize>,
    availability_zone: Option<usize>,
    item_description: Option<usize>,
    usage_start: Option<usize>,
    usage_end: Option<usize>,
    usage_quantity: Option<usize>,
    resource_id: Option<usize>,
    tags: Vec<(String, usize)>,
    /// Positions in `tags` of the configured user tags, in order of preference.
    user_tags: Vec<usize>,
}

impl Columns {
    fn from_header(header: &csv::StringRecord, user_tags: &[String]) -> Result<Columns, String> {
        let find = |name: &str| header.iter().position(|h| h.trim() == name);
        let required =
            |name: &str| find(name).ok_or_else(|| format!("the header has no {name} column"));
        let tags: Vec<(String, usize)> = header
            .iter()
            .enumerate()
            .map(|(i, h)| (h.trim().to_string(), i))
            .filter(|(h, _)| h.starts_with("user:") || h.starts_with("aws:"))
            .collect();
        let user_tags = user_tags
            .iter()
            .filter_map(|wanted| tags.iter().position(|(name, _)| name == wanted))
            .collect();
        Ok(Columns {
            width: header.len(),
            record_type: required("RecordType")?,
            blended_cost: required("BlendedCost")?,
            unblended_cost: find("UnBlendedCost"),
            invoice_id: find("InvoiceID"),
            linked_account_id: find("LinkedAccountId"),
            product_name: find("ProductName"),
            usage_type: find("UsageType"),
            operation: find("Operation"),
            availability_zone: find("AvailabilityZone"),
            item_description: find("ItemDescription"),
            usage_start: find("UsageStartDate"),
            usage_end: find("UsageEndDate"),
            usage_quantity: find("UsageQuantity"),
            resource_id: find("ResourceId"),
            tags,
            user_tags,
        })
    }
}

/// The longest row read: the csv crate holds a whole row in memory, so a row without an end (a
/// line of gigabytes, an unclosed quote) must stop the file instead.
pub const MAX_ROW_BYTES: u64 = 1 << 20;

/// Bytes the csv reader asks for at once.
const READ_BUFFER: usize = 1 << 16;

/// The input of the csv reader, cut off past `max_bytes` in all or [`MAX_ROW_BYTES`] since the
/// start of the current row, with an I/O error that says so. It also numbers lines: the csv
/// crate's own line numbers skip blank lines, so a problem would name the wrong line.
struct Bounded<R> {
    inner: R,
    read: u64,
    /// Where the row being read starts, as the csv reader last reported it.
    row_start: u64,
    max_bytes: u64,
    /// Offsets of the newlines read but not yet passed by a row, how many were passed, and
    /// where the last one passed is.
    newlines: VecDeque<u64>,
    lines_passed: u64,
    last_passed: Option<u64>,
}

impl<R> Bounded<R> {
    /// The 1-based line of the byte at `offset`; offsets asked for never go back.
    fn line_of(&mut self, offset: u64) -> u64 {
        while self.newlines.front().is_some_and(|&n| n < offset) {
            self.last_passed = self.newlines.pop_front();
            self.lines_passed += 1;
        }
        self.lines_passed + 1
    }

    /// The first line of a row that ends at `end` (where the next row starts) and holds
    /// `newlines_inside` newlines in its quoted fields. Counted back from its end, since where
    /// the csv crate says a row starts includes blank lines before it.
    fn first_line_of_row(&mut self, end: u64, newlines_inside: u64) -> u64 {
        let before_end = self.line_of(end) - 1;
        let terminated = self.last_passed == end.checked_sub(1);
        before_end + 1 - newlines_inside - u64::from(terminated && before_end > 0)
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let start = self.read;
        self.read += n as u64;
        if self.read > self.max_bytes {
            return Err(std::io::Error::other(format!(
                "the CSV is larger than {} bytes (--max-csv-bytes); the file is not read",
                self.max_bytes
            )));
        }
        if self.read - self.row_start > MAX_ROW_BYTES + READ_BUFFER as u64 {
            return Err(std::io::Error::other(format!(
                "a row is longer than {MAX_ROW_BYTES} bytes (a line without its end?); the file \
                 is not read"
            )));
        }
        let found = buf[..n].iter().enumerate().filter(|(_, b)| **b == b'\n');
        self.newlines.extend(found.map(|(i, _)| start + i as u64));
        Ok(n)
    }
}

/// The rows of one billing CSV, read as a stream. An `Err` item is an I/O error (a damaged or
/// truncated archive, a row or a file over its limit) after which the rest of the file cannot
/// be trusted.
pub struct BillingRows<R: Read> {
    reader: csv::Reader<Bounded<R>>,
    columns: Columns,
    record: csv::StringRecord,
}

impl<R: Read> BillingRows<R> {
    /// Reads the header; at most `max_bytes` of CSV are read. `Err` says why the file cannot be
    /// read at all.
    pub fn new(input: R, user_tags: &[String], max_bytes: u64) -> Result<BillingRows<R>, String> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .buffer_capacity(READ_BUFFER)
            .from_reader(Bounded {
                inner: input,
                read: 0,
                row_start: 0,
                max_bytes,
                newlines: VecDeque::new(),
                lines_passed: 0,
                last_passed: None,
            });
        let header = reader
            .headers()
            .map_err(|e| format!("reading the header row: {e}"))?
            .clone();
        if header.iter().all(|h| h.trim().is_empty()) {
            return Err("the CSV is empty".into());
        }
        reader.get_mut().row_start = reader.position().byte();
        Ok(BillingRows {
            columns: Columns::from_header(&header, user_tags)?,
            reader,
            record: csv::StringRecord::new(),
        })
    }

    fn line_of(&mut self, position: Option<&csv::Position>) -> u64 {
        let offset = position.map_or(self.reader.position().byte(), |p| p.byte());
        self.reader.get_mut().line_of(offset)
    }
}

impl<R: Read> Iterator for BillingRows<R> {
    type Item = Result<Parsed, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let read = self.reader.read_record(&mut self.record);
        let next_row = self.reader.position().byte();
        self.reader.get_mut().row_start = next_row;
        match read {
            Ok(false) => None,
            Ok(true) => {
                let inside = self
                    .record
                    .iter()
                    .map(|f| f.bytes().filter(|b| *b == b'\n').count() as u64)
                    .sum();
                let line = self.reader.get_mut().first_line_of_row(next_row, inside);
                Some(Ok(parse_record(&self.columns, &self.record, line)
                    .unwrap_or_else(|reason| {
                        Parsed::Problem(RowProblem { line, reason })
                    })))
            }
            Err(e) => {
                let line = self.line_of(e.position());
                Some(if e.is_io_error() {
                    Err(format!("reading stopped near line {line}: {e}"))
                } else {
                    Ok(Parsed::Problem(RowProblem {
                        line,
                        reason: format!("malformed row: {e}"),
                    }))
                })
            }
        }
    }
}

fn parse_record(c: &Columns, r: &csv::StringRecord, line: u64) -> Result<Parsed, String> {
    if r.len() != c.width {
        return Err(format!(
            "malformed row: {} fields where the header has {}",
            r.len(),
            c.width
        ));
    }
    let text = |i: Option<usize>| {
        i.and_then(|i| r.get(i))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let cost = |name: &str, i: usize| {
        let raw = r.get(i).unwrap_or("").trim();
        parse_nanos(raw).ok_or_else(|| format!("bad number in {name}: {raw:?}"))
    };
    let record_type = text(Some(c.record_type)).ok_or("RecordType is empty")?;
    let blended_nanos = cost("BlendedCost", c.blended_cost)?;
    let unblended_nanos = match c.unblended_cost {
        Some(i) if !r[i].trim().is_empty() => Some(cost("UnBlendedCost", i)?),
        _ => None,
    };
    if TOTAL_RECORD_TYPES.contains(&record_type.as_str()) {
        return Ok(Parsed::Total(TotalRow {
            line,
            record_type,
            invoice_id: text(c.invoice_id),
            linked_account_id: text(c.linked_account_id),
            item_description: text(c.item_description),
            blended_nanos,
            unblended_nanos,
        }));
    }
    let usage_start = match text(c.usage_start) {
        Some(s) => parse_date(&s).ok_or_else(|| format!("bad date in UsageStartDate: {s:?}"))?,
        None => return Err("UsageStartDate is empty".into()),
    };
    let usage_end = match text(c.usage_end) {
        Some(s) => Some(parse_date(&s).ok_or_else(|| format!("bad date in UsageEndDate: {s:?}"))?),
        None => None,
    };
    let usage_quantity = match text(c.usage_quantity) {
        Some(s) => Some(
            s.parse::<f64>()
                .ok()
                .filter(|q| q.is_finite())
                .ok_or_else(|| format!("bad number in UsageQuantity: {s:?}"))?,
        ),
        None => None,
    };
    let tags: BTreeMap<&str, &str> = c
        .tags
        .iter()
        .filter_map(|(name, i)| {
            let v = r[*i].trim();
            (!v.is_empty()).then_some((name.as_str(), v))
        })
        .collect();
    let user = c.user_tags.iter().find_map(|&t| {
        let v = r[c.tags[t].1].trim();
        (!v.is_empty()).then(|| v.to_string())
    });
    Ok(Parsed::Item(Box::new(LineItem {
        line,
        record_type,
        invoice_id: text(c.invoice_id),
        linked_account_id: text(c.linked_account_id),
        product_name: text(c.product_name),
        usage_type: text(c.usage_type),
        operation: text(c.operation),
        availability_zone: text(c.availability_zone),
        item_description: text(c.item_description),
        usage_start,
        usage_end,
        usage_quantity,
        blended_nanos,
        unblended_nanos,
        resource_id: text(c.resource_id),
        user,
        tags: (!tags.is_empty()).then(|| serde_json::to_string(&tags).unwrap_or_default()),
    })))
}

/// `YYYY-MM-DD HH:MM:SS` (UTC), as DBR files write dates.
fn parse_date(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "InvoiceID,PayerAccountId,LinkedAccountId,RecordType,RecordId,ProductName,RateId,SubscriptionId,PricingPlanId,UsageType,Operation,AvailabilityZone,ReservedInstance,ItemDescription,UsageStartDate,UsageEndDate,UsageQuantity,BlendedRate,BlendedCost,UnBlendedRate,UnBlendedCost,ResourceId,user:Name,user:Owner";

    fn rows(body: &str) -> Vec<Parsed> {
        let tags: Vec<String> = DEFAULT_USER_TAGS.iter().map(|s| s.to_string()).collect();
        BillingRows::new(format!("{HEADER}\n{body}").as_bytes(), &tags, u64::MAX)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn a_line_item_takes_its_user_from_the_first_non_empty_tag() {
        let parsed = rows(
            "1,111,222,LineItem,9,Amazon EC2,1,2,3,BoxUsage,RunInstances,us-west-2a,N,desc,2025-06-01 23:00:00,2025-06-02 00:00:00,1.5,0.1,9.12e-02,0.1,0.0912,i-1,web,alice\n\
             1,111,222,LineItem,9,Amazon S3,1,2,3,Storage,Put,,N,desc,2025-06-01 23:00:00,2025-06-02 00:00:00,1,0.1,0.5,0.1,0.5,bucket,web,\n\
             1,111,222,LineItem,9,Amazon S3,1,2,3,Storage,Put,,N,desc,2025-06-01 23:00:00,2025-06-02 00:00:00,1,0.1,0.5,0.1,0.5,bucket,,\n",
        );
        let Parsed::Item(item) = &parsed[0] else {
            panic!("{parsed:?}")
        };
        assert_eq!(item.line, 2);
        assert_eq!(item.user.as_deref(), Some("alice"));
        assert_eq!(item.blended_nanos, 91_200_000);
        assert_eq!(
            item.tags.as_deref(),
            Some(r#"{"user:Name":"web","user:Owner":"alice"}"#)
        );
        let Parsed::Item(second) = &parsed[1] else {
            panic!()
        };
        assert_eq!(second.user.as_deref(), Some("web"));
        let Parsed::Item(third) = &parsed[2] else {
            panic!()
        };
        assert_eq!((third.user.as_deref(), third.tags.as_deref()), (None, None));
    }

    #[test]
    fn total_rows_are_kept_apart_without_dates() {
        let parsed = rows("1,111,,InvoiceTotal,,,,,,,,,,Total for invoice 1,,,,,12.34,,12.34,,,\n");
        assert!(
            matches!(&parsed[0], Parsed::Total(t) if t.record_type == "InvoiceTotal" && t.blended_nanos == 12_340_000_000)
        );
    }

    #[test]
    fn bad_rows_become_problems_naming_line_and_reason() {
        let parsed = rows(
            "1,111,222,LineItem,9,EC2,1,2,3,U,O,,N,d,2025-06-01 00:00:00,2025-06-01 01:00:00,1,0.1,abc,0.1,0.1,i-1,,\n\
             1,111,222,LineItem,9,EC2,1,2,3,U,O,,N,d,2025-06-31 00:00:00,2025-06-01 01:00:00,1,0.1,0.1,0.1,0.1,i-1,,\n\
             1,111,222,LineItem,9,EC2\n",
        );
        let problems: Vec<(u64, String)> = parsed
            .into_iter()
            .map(|p| match p {
                Parsed::Problem(p) => (p.line, p.reason),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            problems[0],
            (2, "bad number in BlendedCost: \"abc\"".into())
        );
        assert_eq!(
            problems[1],
            (
                3,
                "bad date in UsageStartDate: \"2025-06-31 00:00:00\"".into()
            )
        );
        assert_eq!(
            problems[2],
            (4, "malformed row: 6 fields where the header has 24".into())
        );
    }

    #[test]
    fn a_header_without_costs_is_refused() {
        let err = BillingRows::new("RecordType,Foo\nLineItem,1\n".as_bytes(), &[], u64::MAX).err();
        assert_eq!(err.as_deref(), Some("the header has no BlendedCost column"));
    }

    #[test]
    fn a_row_without_an_end_stops_the_file_with_memory_bounded() {
        // 64 MiB of one line: read in 64 KiB pieces, stopped after about a MiB.
        let endless = std::io::repeat(b'0').take(64 << 20);
        let head = format!("{HEADER}\n").into_bytes();
        let tags: Vec<String> = Vec::new();
        let mut rows = BillingRows::new(head.chain(endless), &tags, u64::MAX).unwrap();
        let err = rows.next().unwrap().unwrap_err();
        assert!(err.contains("longer than 1048576 bytes"), "{err}");
    }

    #[test]
    fn a_csv_over_its_size_limit_stops() {
        let body = format!("{HEADER}\n{}", "1,2\n".repeat(100_000));
        let tags: Vec<String> = Vec::new();
        let rows = BillingRows::new(body.as_bytes(), &tags, 100_000).unwrap();
        let last = rows.last().unwrap();
        assert!(last.unwrap_err().contains("larger than 100000 bytes"));
    }
}

/// Property tests: whatever the rows, reading ends, and every line of the CSV is one line item,
/// total row or problem.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    const HEADER: &str = "InvoiceID,LinkedAccountId,RecordType,ProductName,UsageStartDate,UsageEndDate,UsageQuantity,BlendedCost,UnBlendedCost,ResourceId,user:Owner";

    fn cell() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("LineItem".to_string()),
            Just("InvoiceTotal".to_string()),
            Just("Rounding".to_string()),
            Just("2025-06-01 00:00:00".to_string()),
            Just("2025-06-31 25:00:00".to_string()),
            Just("1e400".to_string()),
            Just("NaN".to_string()),
            "-?[0-9]{0,12}(\\.[0-9]{0,12})?(e-?[0-9]{1,3})?",
            "[a-zA-Z :_-]{0,16}",
        ]
    }

    fn row() -> impl Strategy<Value = String> {
        proptest::collection::vec(cell(), 1..14).prop_map(|cells| cells.join(","))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn every_line_ends_as_an_item_a_total_or_a_problem(rows in proptest::collection::vec(row(), 0..40)) {
            let body = format!("{HEADER}\n{}\n", rows.join("\n"));
            let tags = vec!["user:Owner".to_string()];
            let parsed: Vec<Parsed> = BillingRows::new(body.as_bytes(), &tags, u64::MAX)
                .unwrap()
                .map(|r| r.expect("no I/O error from memory"))
                .collect();
            // A line of one empty cell is a blank line, which CSV skips.
            let expected: Vec<u64> = rows
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.is_empty())
                .map(|(i, _)| i as u64 + 2)
                .collect();
            let lines: Vec<u64> = parsed
                .iter()
                .map(|p| match p {
                    Parsed::Item(i) => i.line,
                    Parsed::Total(t) => t.line,
                    Parsed::Problem(p) => p.line,
                })
                .collect();
            prop_assert_eq!(lines, expected);
        }

        #[test]
        fn any_bytes_end_without_a_panic_and_bounded(body in proptest::collection::vec(any::<u8>(), 0..600), limit in 1u64..800) {
            if let Ok(rows) = BillingRows::new(&body[..], &[], limit) {
                let newlines = body.iter().filter(|b| **b == b'\n' || **b == b'\r').count();
                prop_assert!(rows.count() <= newlines + 2);
            }
        }
    }
}
