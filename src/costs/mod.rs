//! Cloud costs: AWS detailed billing files (DBR with resources and tags) read into the ledger,
//! and the report, plot and email built from it.
//!
//! A billing file is `{AccountId}-aws-billing-detailed-line-items-with-resources-and-tags-YYYY-MM.csv`
//! (usually zipped as `.csv.zip`), one per account and month, rewritten as the month goes on.
//! [`source`] finds and opens them, [`parse`] turns CSV rows into line items, total rows and
//! problems, [`ingest`] stores them, [`money`] keeps costs exact, [`grants`] says who may spend
//! how much, and [`report`], [`plot`] and [`mail`] present them.

pub mod grants;
pub mod ingest;
pub mod mail;
pub mod money;
pub mod parse;
pub mod plot;
pub mod report;
pub mod source;

use crate::period::Month;

const NAME_MIDDLE: &str = "-aws-billing-detailed-line-items-with-resources-and-tags-";

/// What a billing file's name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingFileName {
    pub account_id: String,
    pub month: Month,
    pub zipped: bool,
}

impl BillingFileName {
    /// Parses the last segment of a key or path; `None` when it is not a billing file.
    pub fn parse(key: &str) -> Option<BillingFileName> {
        let name = key.rsplit(['/', '\\']).next()?;
        let (stem, zipped) = match name.strip_suffix(".csv.zip") {
            Some(stem) => (stem, true),
            None => (name.strip_suffix(".csv")?, false),
        };
        let (account_id, month) = stem.split_once(NAME_MIDDLE)?;
        if account_id.is_empty() || !account_id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(BillingFileName {
            account_id: account_id.to_string(),
            month: month.parse().ok()?,
            zipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_file_names_give_account_and_month() {
        let name = BillingFileName::parse(
            "copydbr/123456789012-aws-billing-detailed-line-items-with-resources-and-tags-2025-06.csv.zip",
        )
        .unwrap();
        assert_eq!(name.account_id, "123456789012");
        assert_eq!(name.month.to_string(), "2025-06");
        assert!(name.zipped);
        let plain = BillingFileName::parse(
            "123456789012-aws-billing-detailed-line-items-with-resources-and-tags-2025-12.csv",
        )
        .unwrap();
        assert!(!plain.zipped);
    }

    #[test]
    fn other_names_are_not_billing_files() {
        for key in [
            "123456789012-aws-billing-detailed-line-items-with-resources-and-tags-2025-13.csv.zip",
            "123456789012-aws-billing-csv-2025-06.csv",
            "abc-aws-billing-detailed-line-items-with-resources-and-tags-2025-06.csv",
            "123456789012-aws-billing-detailed-line-items-with-resources-and-tags-2025-06.csv.gz",
            "-aws-billing-detailed-line-items-with-resources-and-tags-2025-06.csv",
        ] {
            assert_eq!(BillingFileName::parse(key), None, "{key}");
        }
    }
}
