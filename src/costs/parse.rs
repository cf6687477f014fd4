//! Rows of a billing CSV: columns matched by header name, each row a line item, a total row, or a
//! problem that names its line and reason. Tag columns (`user:*`, `aws:*`) vary per account and
//! month; every non-empty one is kept.

use std::collections::BTreeMap;
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

/// The rows of one billing CSV, read as a stream. An `Err` item is an I/O error (a damaged or
/// truncated archive) after which the rest of the file cannot be trusted.
pub struct BillingRows<R: Read> {
    reader: csv::Reader<R>,
    columns: Columns,
    record: csv::StringRecord,
}

impl<R: Read> BillingRows<R> {
    /// Reads the header. `Err` says why the file cannot be read at all.
    pub fn new(input: R, user_tags: &[String]) -> Result<BillingRows<R>, String> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .buffer_capacity(1 << 16)
            .from_reader(input);
        let header = reader
            .headers()
            .map_err(|e| format!("reading the header row: {e}"))?
            .clone();
        if header.iter().all(|h| h.trim().is_empty()) {
            return Err("the CSV is empty".into());
        }
        Ok(BillingRows {
            columns: Columns::from_header(&header, user_tags)?,
            reader,
            record: csv::StringRecord::new(),
        })
    }
}

impl<R: Read> Iterator for BillingRows<R> {
    type Item = Result<Parsed, String>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.reader.read_record(&mut self.record) {
            Ok(false) => None,
            Ok(true) => {
                let line = self.record.position().map_or(0, |p| p.line());
                Some(Ok(parse_record(&self.columns, &self.record, line)
                    .unwrap_or_else(|reason| {
                        Parsed::Problem(RowProblem { line, reason })
                    })))
            }
            Err(e) => {
                let line = e
                    .position()
                    .map_or(self.reader.position().line(), |p| p.line());
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
        BillingRows::new(format!("{HEADER}\n{body}").as_bytes(), &tags)
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
        let err = BillingRows::new("RecordType,Foo\nLineItem,1\n".as_bytes(), &[]).err();
        assert_eq!(err.as_deref(), Some("the header has no BlendedCost column"));
    }
}
