//! `usage_month_totals` (migration V11): monthly usage per service key, contract and dimension,
//! kept by ingest in the same transaction as the records, so that the console reads a month's
//! usage without aggregating every record again. Its definition is the view
//! `usage_month_totals_recomputed`: the sum of each file's contribution (its records of one
//! contract and dimension). A stored file adds its contributions, a replaced file takes its old
//! ones back; compaction turns records into totals without changing a contribution.
//!
//! A batch of files collects its changes here ([`MonthTotals`]) and applies them once, one row
//! per month, contract and dimension, before it commits: a few hundred writes per thousand files
//! rather than one per record. A row found inconsistent (a count below zero: a bug, or a ledger
//! changed by hand) is computed again from its definition, with a warning.

use anyhow::{Context, Result};
use foldhash::HashMap;
use num_bigint::{BigInt, BigUint};
use num_traits::{One, Signed};
use rusqlite::{params, OptionalExtension, Transaction};

use crate::formula::{float_parts, ratio_to_f64};
use crate::source::parse::Quantity;

/// The rows of `usage_month_totals` that differ from their definition (`usage_month_totals_recomputed`),
/// or that only one of them has: every column exactly, except the two float sums, which may differ
/// in their last digits once added file by file (relative 1e-9, absolute below 1). Empty when the
/// totals are right.
pub const MONTH_TOTALS_DIFFERENCES: &str = "
SELECT service_key, month, contract_id, dimension,
       r.records AS records_now, t.records AS records_kept,
       r.files AS files_now, t.files AS files_kept, r.hours AS hours_now, t.hours AS hours_kept,
       r.int_value AS int_value_now, t.int_value AS int_value_kept,
       r.real_files AS real_files_now, t.real_files AS real_files_kept,
       r.real_value AS real_value_now, t.real_value AS real_value_kept,
       r.priced_files AS priced_files_now, t.priced_files AS priced_files_kept,
       r.amount AS amount_now, t.amount AS amount_kept
FROM usage_month_totals_recomputed r
FULL JOIN usage_month_totals t USING (service_key, month, contract_id, dimension)
WHERE r.records IS NOT t.records OR r.files IS NOT t.files OR r.hours IS NOT t.hours
   OR r.int_value IS NOT t.int_value OR r.real_files IS NOT t.real_files
   OR r.priced_files IS NOT t.priced_files
   OR NOT abs(r.real_value - t.real_value) <= 1e-9 * max(abs(r.real_value), abs(t.real_value), 1.0)
   OR NOT abs(r.amount - t.amount) <= 1e-9 * max(abs(r.amount), abs(t.amount), 1.0)
   OR r.real_value IS NULL OR t.real_value IS NULL";

/// Service key, month (`YYYY-MM`), contract, dimension.
type Key = (String, String, String, String);

/// What one file adds to (or takes from) a month's row: its records of one contract and
/// dimension.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Contribution {
    pub records: i64,
    /// Their sum: an integer when every value is stored as an integer (as SQLite's `SUM` types
    /// it), a float otherwise.
    pub value: Quantity,
    /// The sum of `value * price_per_unit`: `None` when no record has a price.
    pub amount: Option<f64>,
}

/// A sum of floats kept exactly (mantissa x 2^exponent), so that a file's contribution taken
/// back leaves exactly what was there before, however large it was: a float running sum loses
/// the small amounts that a large one passed through. Stored as text, `<mantissa>p<exponent>`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ExactSum {
    mantissa: BigInt,
    exponent: i64,
}

impl ExactSum {
    fn of(x: f64) -> ExactSum {
        if !x.is_finite() {
            // Not from a stored record (SQLite keeps no infinities from the parser); kept at 0.
            return ExactSum::default();
        }
        let (mantissa, exponent) = float_parts(x);
        ExactSum { mantissa, exponent }.normalized()
    }

    fn add(&mut self, other: &ExactSum, sign: i64) {
        let e = self.exponent.min(other.exponent);
        let a = &self.mantissa << (self.exponent - e) as u64;
        let b = &other.mantissa << (other.exponent - e) as u64;
        *self = ExactSum {
            mantissa: if sign < 0 { a - b } else { a + b },
            exponent: e,
        }
        .normalized();
    }

    fn normalized(self) -> ExactSum {
        match self.mantissa.trailing_zeros() {
            None => ExactSum::default(),
            Some(0) => self,
            Some(z) => ExactSum {
                mantissa: self.mantissa >> z,
                exponent: self.exponent + z as i64,
            },
        }
    }

    /// The nearest float (ties to even); ±infinity beyond the largest.
    fn to_f64(&self) -> f64 {
        let negative = self.mantissa.is_negative();
        let m = self.mantissa.magnitude();
        let rounded = if self.exponent >= 0 {
            ratio_to_f64(negative, &(m << self.exponent as u64), &BigUint::one())
        } else {
            ratio_to_f64(negative, m, &(BigUint::one() << (-self.exponent) as u64))
        };
        rounded.unwrap_or(if negative {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        })
    }

    fn to_text(&self) -> String {
        format!("{}p{}", self.mantissa, self.exponent)
    }

    /// The stored text, or (NULL: a row written by the migration or computed again from its
    /// definition) the stored float, exactly.
    fn stored(text: Option<&str>, float: f64) -> ExactSum {
        text.and_then(|t| {
            let (m, e) = t.split_once('p')?;
            Some(ExactSum {
                mantissa: m.parse().ok()?,
                exponent: e.parse().ok()?,
            })
        })
        .unwrap_or_else(|| ExactSum::of(float))
    }
}

/// A row of `usage_month_totals` (the key aside), or a batch's change to one.
#[derive(Debug, Default, Clone, PartialEq)]
struct Totals {
    records: i64,
    files: i64,
    hours: i64,
    int_value: i64,
    real_files: i64,
    real_value: ExactSum,
    priced_files: i64,
    amount: ExactSum,
}

impl Totals {
    /// Adds `change`; `None` when a count or the integer sum leaves its range.
    fn plus(&self, change: &Totals) -> Option<Totals> {
        let mut real_value = self.real_value.clone();
        real_value.add(&change.real_value, 1);
        let mut amount = self.amount.clone();
        amount.add(&change.amount, 1);
        let mut t = Totals {
            records: self.records.checked_add(change.records)?,
            files: self.files.checked_add(change.files)?,
            hours: self.hours.checked_add(change.hours)?,
            int_value: self.int_value.checked_add(change.int_value)?,
            real_files: self.real_files.checked_add(change.real_files)?,
            real_value,
            priced_files: self.priced_files.checked_add(change.priced_files)?,
            amount,
        };
        // A sum whose last file left is 0. (Taken back as it was added, it is exactly 0 already;
        // a file of a compacted month is taken back as its compacted totals, which SQLite summed
        // and which may differ from what was added in the last bit.)
        if t.real_files == 0 {
            t.real_value = ExactSum::default();
        }
        if t.priced_files == 0 {
            t.amount = ExactSum::default();
        }
        let counts = [t.records, t.files, t.hours, t.real_files, t.priced_files];
        let consistent = counts.iter().all(|n| *n >= 0)
            && (t.records == 0) == (t.files == 0)
            && (t.files == 0) == (t.hours == 0)
            && t.hours <= t.files
            && t.real_files <= t.files
            && t.priced_files <= t.files;
        consistent.then_some(t)
    }
}

/// The changes of one batch, applied by [`MonthTotals::apply`].
#[derive(Debug, Default)]
pub(super) struct MonthTotals {
    changes: HashMap<Key, Totals>,
}

impl MonthTotals {
    /// A file of `hour` adds `c` to its contract and dimension; `new_hour`: no other stored file
    /// of that hour has records of them.
    pub fn add(
        &mut self,
        service_key: &str,
        hour: &str,
        group: (&str, &str),
        c: &Contribution,
        new_hour: bool,
    ) {
        self.change(service_key, hour, group, c, 1, new_hour);
    }

    /// A file of `hour` leaves (it is replaced): `c` is taken back; `hour_left`: no other stored
    /// file of that hour has records of its contract and dimension any more.
    pub fn remove(
        &mut self,
        service_key: &str,
        hour: &str,
        group: (&str, &str),
        c: &Contribution,
        hour_left: bool,
    ) {
        self.change(service_key, hour, group, c, -1, hour_left);
    }

    fn change(
        &mut self,
        service_key: &str,
        hour: &str,
        (contract, dimension): (&str, &str),
        c: &Contribution,
        sign: i64,
        hour_changes: bool,
    ) {
        let key = (
            service_key.to_string(),
            hour.get(..7).unwrap_or(hour).to_string(),
            contract.to_string(),
            dimension.to_string(),
        );
        let t = self.changes.entry(key).or_default();
        t.records += sign * c.records;
        t.files += sign;
        t.hours += sign * i64::from(hour_changes);
        match c.value {
            Quantity::Int(v) => t.int_value += sign * v,
            Quantity::Real(v) => {
                t.real_files += sign;
                t.real_value.add(&ExactSum::of(v), sign);
            }
        }
        if let Some(a) = c.amount {
            t.priced_files += sign;
            t.amount.add(&ExactSum::of(a), sign);
        }
    }

    /// Writes the batch's changes, one row per month, contract and dimension; a row that would
    /// become inconsistent is computed again from its definition instead.
    pub fn apply(self, tx: &Transaction) -> Result<()> {
        let mut read = tx.prepare_cached(
            "SELECT records, files, hours, int_value, real_files, real_value, real_exact,
                    priced_files, amount, amount_exact
             FROM usage_month_totals
             WHERE service_key = ?1 AND month = ?2 AND contract_id = ?3 AND dimension = ?4",
        )?;
        let mut write = tx.prepare_cached(
            "INSERT OR REPLACE INTO usage_month_totals (service_key, month, contract_id,
                 dimension, records, files, hours, int_value, real_files, real_value, real_exact,
                 priced_files, amount, amount_exact)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        let mut remove = tx.prepare_cached(
            "DELETE FROM usage_month_totals
             WHERE service_key = ?1 AND month = ?2 AND contract_id = ?3 AND dimension = ?4",
        )?;
        for (key, change) in self.changes {
            if change == Totals::default() {
                continue;
            }
            let (service_key, month, contract, dimension) = &key;
            let kept: Totals = read
                .query_row(params![service_key, month, contract, dimension], |r| {
                    Ok(Totals {
                        records: r.get(0)?,
                        files: r.get(1)?,
                        hours: r.get(2)?,
                        int_value: r.get(3)?,
                        real_files: r.get(4)?,
                        real_value: ExactSum::stored(r.get_ref(6)?.as_str_or_null()?, r.get(5)?),
                        priced_files: r.get(7)?,
                        amount: ExactSum::stored(r.get_ref(9)?.as_str_or_null()?, r.get(8)?),
                    })
                })
                .optional()?
                .unwrap_or_default();
            match kept.plus(&change) {
                None => {
                    #[cfg(test)]
                    RECOMPUTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tracing::warn!(
                        "monthly totals of contract {contract} dimension {dimension} in {month} \
                         ({service_key}) were inconsistent; computed again from the records"
                    );
                    recompute(tx, &key)?;
                }
                Some(t) if t.files == 0 => {
                    remove.execute(params![service_key, month, contract, dimension])?;
                }
                Some(t) => {
                    write.execute(params![
                        service_key,
                        month,
                        contract,
                        dimension,
                        t.records,
                        t.files,
                        t.hours,
                        t.int_value,
                        t.real_files,
                        t.real_value.to_f64(),
                        t.real_value.to_text(),
                        t.priced_files,
                        t.amount.to_f64(),
                        t.amount.to_text()
                    ])?;
                }
            }
        }
        Ok(())
    }
}

/// Rows computed again because they were found inconsistent (unit tests check that ingest never
/// needs to).
#[cfg(test)]
pub(super) static RECOMPUTED: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// One row computed again from `usage_month_totals_recomputed` (reads the month's records).
fn recompute(tx: &Transaction, (service_key, month, contract, dimension): &Key) -> Result<()> {
    let key = params![service_key, month, contract, dimension];
    tx.execute(
        "DELETE FROM usage_month_totals
         WHERE service_key = ?1 AND month = ?2 AND contract_id = ?3 AND dimension = ?4",
        key,
    )?;
    tx.execute(
        "INSERT INTO usage_month_totals (service_key, month, contract_id, dimension, records,
             files, hours, int_value, real_files, real_value, priced_files, amount)
         SELECT * FROM usage_month_totals_recomputed
         WHERE service_key = ?1 AND month = ?2 AND contract_id = ?3 AND dimension = ?4",
        key,
    )
    .context("computing monthly totals again")?;
    Ok(())
}

/// The contributions of a file's records (contract, dimension, value as stored, price), per
/// contract and dimension; unattributed records are not in the totals. Values are added in the
/// file's order, so that the same records always give the same floats.
pub(super) fn contributions<'r>(
    records: impl IntoIterator<Item = (Option<&'r str>, &'r str, Quantity, Option<f64>)>,
) -> HashMap<(&'r str, &'r str), Contribution> {
    let mut out: HashMap<(&str, &str), Contribution> = HashMap::default();
    for (contract, dimension, value, price) in records {
        let Some(contract) = contract else {
            continue;
        };
        let value = stored(value);
        let c = out.entry((contract, dimension)).or_insert(Contribution {
            records: 0,
            value: Quantity::Int(0),
            amount: None,
        });
        c.records += 1;
        c.value = match (c.value, value) {
            (Quantity::Int(a), Quantity::Int(b)) => a
                .checked_add(b)
                .map_or(Quantity::Real(a as f64 + b as f64), Quantity::Int),
            (a, b) => Quantity::Real(a.as_f64() + b.as_f64()),
        };
        if let Some(p) = price {
            c.amount = Some(c.amount.unwrap_or(0.0) + value.as_f64() * p);
        }
    }
    out
}

/// A stored file's contributions, computed as they were when it was stored: from its records,
/// read back in file order (or, in a compacted month, from its totals).
pub(super) fn stored_contributions(
    tx: &Transaction,
    file_id: i64,
    service_key: &str,
    hour: &str,
) -> Result<Vec<(String, String, Contribution)>> {
    let records: Vec<(String, String, Quantity, Option<f64>)> = tx
        .prepare_cached(
            "SELECT contract_id, dimension, value, price_per_unit FROM usage_records
             WHERE service_key = ?2 AND hour = ?3 AND file_id = ?1 AND contract_id IS NOT NULL
             ORDER BY record_index",
        )?
        .query_map(params![file_id, service_key, hour], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut out: Vec<(String, String, Contribution)> = contributions(
        records
            .iter()
            .map(|(c, d, v, p)| (Some(c.as_str()), d.as_str(), *v, *p)),
    )
    .into_iter()
    .map(|((c, d), contribution)| (c.to_string(), d.to_string(), contribution))
    .collect();
    let compacted = tx
        .prepare_cached(
            "SELECT contract_id, dimension, SUM(records), SUM(value), SUM(amount)
             FROM compacted_usage
             WHERE service_key = ?2 AND hour = ?3 AND file_id = ?1 AND contract_id IS NOT NULL
             GROUP BY contract_id, dimension",
        )?
        .query_map(params![file_id, service_key, hour], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                Contribution {
                    records: r.get(2)?,
                    value: r.get(3)?,
                    amount: r.get(4)?,
                },
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    out.extend(compacted);
    Ok(out)
}

/// A value as the ledger stores it: `usage_records.value` has NUMERIC affinity, so SQLite keeps a
/// float that is a whole number as an integer (its rule: the round trip through a 64-bit integer
/// is exact, and the integer is neither the smallest nor the largest one). A test checks this
/// against SQLite itself.
pub(super) fn stored(v: Quantity) -> Quantity {
    match v {
        Quantity::Real(x) => {
            // `as` saturates, as SQLite's doubleToInt64 does.
            let i = x as i64;
            if x == i as f64 && i > i64::MIN && i < i64::MAX {
                Quantity::Int(i)
            } else {
                v
            }
        }
        int => int,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn a_float_is_stored_as_sqlite_stores_it_in_a_numeric_column() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v NUMERIC NOT NULL)")
            .unwrap();
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            5.5,
            0.1,
            1e15,
            1e16 + 2.0,
            2f64.powi(51),
            2f64.powi(52),
            2f64.powi(53),
            2f64.powi(53) + 2.0,
            2f64.powi(62),
            2f64.powi(63),
            -2f64.powi(63),
            2f64.powi(64),
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            4503599627370495.5,
            -4503599627370495.5,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let x = f64::from_bits(seed);
            if x.is_finite() {
                values.push(x);
                values.push(x.trunc());
            }
            values.push((seed % 1_000_000) as f64 / 4.0);
        }
        let mut insert = conn.prepare("INSERT INTO t (v) VALUES (?1)").unwrap();
        let mut read = conn
            .prepare("SELECT v FROM t WHERE rowid = last_insert_rowid()")
            .unwrap();
        for x in values {
            insert.execute([x]).unwrap();
            let back: Quantity = read.query_row([], |r| r.get(0)).unwrap();
            let ours = stored(Quantity::Real(x));
            let same = match (back, ours) {
                (Quantity::Int(a), Quantity::Int(b)) => a == b,
                (Quantity::Real(a), Quantity::Real(b)) => a.to_bits() == b.to_bits() || a == b,
                _ => false,
            };
            assert!(same, "{x:e}: SQLite stores {back:?}, we assume {ours:?}");
        }
    }

    #[test]
    fn a_files_contributions_are_per_contract_and_dimension_and_typed_as_sum_types_them() {
        let c = contributions([
            (Some("A"), "cpu", Quantity::Int(2), None),
            (Some("A"), "cpu", Quantity::Real(3.0), Some(0.5)),
            (Some("A"), "mem", Quantity::Int(1), None),
            (Some("A"), "mem", Quantity::Real(0.5), None),
            (None, "cpu", Quantity::Int(7), None),
        ]);
        assert_eq!(c.len(), 2, "unattributed records are not in the totals");
        assert_eq!(
            c[&("A", "cpu")],
            Contribution {
                records: 2,
                value: Quantity::Int(5),
                amount: Some(1.5)
            }
        );
        assert_eq!(
            c[&("A", "mem")],
            Contribution {
                records: 2,
                value: Quantity::Real(1.5),
                amount: None
            }
        );
    }

    #[test]
    fn an_exact_sum_takes_back_exactly_what_it_was_given() {
        let mut sum = ExactSum::default();
        let parts = [504.2, 0.1, 1.35e15, 1e-300, -7.25, 1e300, 3.0e-5];
        for x in parts {
            sum.add(&ExactSum::of(x), 1);
        }
        for x in [1.35e15, 1e300, 1e-300] {
            sum.add(&ExactSum::of(x), -1);
        }
        // Correctly rounded: 504.2 + 0.1 - 7.25 + 3e-5 in exact arithmetic, then rounded once.
        let exact = ExactSum::of(504.2);
        let mut expected = exact.clone();
        for x in [0.1, -7.25, 3.0e-5] {
            expected.add(&ExactSum::of(x), 1);
        }
        assert_eq!(sum, expected);
        assert_eq!(sum.to_f64(), 497.05003);
        for x in [0.1, -0.0, 1e308, f64::MIN_POSITIVE, 5e-324, 123456789.125] {
            assert_eq!(ExactSum::of(x).to_f64(), x);
            let text = ExactSum::of(x).to_text();
            assert_eq!(ExactSum::stored(Some(&text), f64::NAN), ExactSum::of(x));
        }
        let mut big = ExactSum::of(1e308);
        big.add(&ExactSum::of(1e308), 1);
        assert_eq!(big.to_f64(), f64::INFINITY);
        // A float sum loses what passed through a large value; this one does not.
        assert_ne!((504.2 + 1.35e15) - 1.35e15, 504.2);
        let mut kept = ExactSum::of(504.2);
        kept.add(&ExactSum::of(1.35e15), 1);
        kept.add(&ExactSum::of(1.35e15), -1);
        assert_eq!(kept.to_f64(), 504.2);
        assert_eq!(ExactSum::stored(None, 2.5), ExactSum::of(2.5));
    }

    #[test]
    fn a_sum_whose_last_file_leaves_is_zero_even_if_taken_back_as_summed_otherwise() {
        let mut totals = MonthTotals::default();
        let added = Contribution {
            records: 3,
            value: Quantity::Real(0.1 + 0.2 + 0.3),
            amount: Some(0.6),
        };
        // A compacted file comes back as SQLite summed it: the last bit may differ.
        let taken = Contribution {
            value: Quantity::Real(0.6),
            amount: Some(0.6000000000000001),
            ..added.clone()
        };
        totals.add("sk", "2025-06-01T00:00:00Z", ("C", "d"), &added, true);
        let kept = Totals::default()
            .plus(&totals.changes.drain().next().unwrap().1)
            .unwrap();
        totals.remove("sk", "2025-06-01T00:00:00Z", ("C", "d"), &taken, true);
        let left = kept
            .plus(&totals.changes.drain().next().unwrap().1)
            .expect("consistent");
        assert_eq!(left, Totals::default());
        // Counts that go below zero are not.
        let mut again = MonthTotals::default();
        again.remove("sk", "2025-06-01T00:00:00Z", ("C", "d"), &taken, true);
        assert_eq!(
            Totals::default().plus(&again.changes.drain().next().unwrap().1),
            None
        );
    }
}
