//! Calendar periods in UTC: a month (`YYYY-MM`), and the period usage is submitted for (a month or
//! an hour), with the keys the ledger stores them by and the windows Clazar is sent.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};

/// A calendar month in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    pub fn new(year: i32, month: u32) -> Option<Month> {
        ((1..=12).contains(&month) && (1970..=9999).contains(&year))
            .then_some(Month { year, month })
    }

    pub fn of(t: DateTime<Utc>) -> Month {
        Month {
            year: t.year(),
            month: t.month(),
        }
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn prev(self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// The first instant of the month.
    pub fn start(self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.year, self.month, 1, 0, 0, 0)
            .single()
            .expect("a valid month has a first instant")
    }

    /// The first instant after the month.
    pub fn end(self) -> DateTime<Utc> {
        self.next().start()
    }

    pub fn last_day(self) -> u32 {
        let first_next = self.next();
        NaiveDate::from_ymd_opt(first_next.year, first_next.month, 1)
            .and_then(|d| d.pred_opt())
            .map(|d| d.day())
            .expect("a valid month has a last day")
    }

    /// Every month from `self` to `last`, both included.
    pub fn through(self, last: Month) -> impl Iterator<Item = Month> {
        std::iter::successors(Some(self), |m| Some(m.next())).take_while(move |m| *m <= last)
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Month {
    type Err = String;

    fn from_str(s: &str) -> Result<Month, String> {
        let bad = || format!("'{s}' is not a month; expected YYYY-MM, e.g. 2025-06");
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        Month::new(y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?).ok_or_else(bad)
    }
}

/// The unit usage is submitted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum PeriodKind {
    Month,
    Hour,
}

impl PeriodKind {
    pub const ALL: [PeriodKind; 2] = [PeriodKind::Month, PeriodKind::Hour];

    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Month => "month",
            PeriodKind::Hour => "hour",
        }
    }
}

impl fmt::Display for PeriodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One month or one hour, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub kind: PeriodKind,
    /// The first instant of the period.
    pub start: DateTime<Utc>,
}

impl Period {
    pub fn month(m: Month) -> Period {
        Period {
            kind: PeriodKind::Month,
            start: m.start(),
        }
    }

    /// The hour containing `t`.
    pub fn hour(t: DateTime<Utc>) -> Period {
        let start = Utc
            .with_ymd_and_hms(t.year(), t.month(), t.day(), t.hour(), 0, 0)
            .single()
            .expect("an hour of a valid instant");
        Period {
            kind: PeriodKind::Hour,
            start,
        }
    }

    /// Parses the ledger's key for a period: `YYYY-MM` for a month, an RFC 3339 hour for an hour.
    pub fn parse(kind: PeriodKind, key: &str) -> Option<Period> {
        match kind {
            PeriodKind::Month => key.parse::<Month>().ok().map(Period::month),
            PeriodKind::Hour => parse_timestamp(key)
                .filter(|t| t.minute() == 0 && t.second() == 0 && t.nanosecond() == 0)
                .map(Period::hour),
        }
    }

    pub fn month_of(self) -> Month {
        Month::of(self.start)
    }

    /// The first instant after the period.
    pub fn end(self) -> DateTime<Utc> {
        match self.kind {
            PeriodKind::Month => self.month_of().end(),
            PeriodKind::Hour => self.start + Duration::hours(1),
        }
    }

    /// The key the ledger stores: `2025-06` or `2025-06-01T13:00:00Z`.
    pub fn key(self) -> String {
        match self.kind {
            PeriodKind::Month => self.month_of().to_string(),
            PeriodKind::Hour => format_utc(self.start),
        }
    }

    /// The window as Clazar is sent it (the predecessor's form): a month ends at its last second,
    /// an hour at the next hour's start.
    pub fn window(self) -> (String, String) {
        let end = match self.kind {
            PeriodKind::Month => self.end() - Duration::seconds(1),
            PeriodKind::Hour => self.end(),
        };
        (format_utc(self.start), format_utc(end))
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// Formats an instant as the ledger stores it: RFC 3339, UTC, whole seconds, `Z`. Written out
/// field by field: `costs ingest` formats two per line item, and chrono's `format` re-reads its
/// pattern every time.
pub fn format_utc(t: DateTime<Utc>) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses a timestamp leniently: RFC 3339, a naive date-time taken as UTC, and the predecessor's
/// quirk of an offset followed by `Z` (`2025-07-25T20:15:37.123456+00:00Z`).
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    if let Some(stripped) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        if let Ok(t) = DateTime::parse_from_rfc3339(stripped) {
            return Some(t.with_timezone(&Utc));
        }
    }
    let naive = s.trim_end_matches(['Z', 'z']);
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| chrono::NaiveDateTime::parse_from_str(naive, f).ok())
    .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_formatted_like_chrono_rfc3339_in_whole_seconds() {
        for text in [
            "2025-07-01T00:00:00Z",
            "2024-02-29T23:59:59Z",
            "0999-01-02T03:04:05Z",
        ] {
            let t = chrono::DateTime::parse_from_rfc3339(text).unwrap().to_utc();
            assert_eq!(format_utc(t), text);
            assert_eq!(format_utc(t), t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
    }

    #[test]
    fn parses_and_prints_months() {
        let m: Month = "2025-06".parse().unwrap();
        assert_eq!(m, Month::new(2025, 6).unwrap());
        assert_eq!(m.to_string(), "2025-06");
        assert!("2025-13".parse::<Month>().is_err());
        assert!("2025-6".parse::<Month>().is_err());
        assert!("june".parse::<Month>().is_err());
    }

    #[test]
    fn month_boundaries_cross_years_and_leap_days() {
        let dec = Month::new(2024, 12).unwrap();
        assert_eq!(dec.next(), Month::new(2025, 1).unwrap());
        assert_eq!(Month::new(2025, 1).unwrap().prev(), dec);
        assert_eq!(Month::new(2024, 2).unwrap().last_day(), 29);
        assert_eq!(Month::new(2025, 2).unwrap().last_day(), 28);
        assert_eq!(format_utc(dec.end()), "2025-01-01T00:00:00Z");
    }

    #[test]
    fn through_lists_every_month_inclusive() {
        let a = Month::new(2024, 11).unwrap();
        let b = Month::new(2025, 2).unwrap();
        let all: Vec<String> = a.through(b).map(|m| m.to_string()).collect();
        assert_eq!(all, ["2024-11", "2024-12", "2025-01", "2025-02"]);
        assert_eq!(b.through(a).count(), 0);
    }

    #[test]
    fn parses_timestamps_leniently() {
        let want = Utc.with_ymd_and_hms(2025, 7, 25, 20, 15, 37).unwrap();
        for s in [
            "2025-07-25T20:15:37Z",
            "2025-07-25T20:15:37+00:00",
            "2025-07-25T22:15:37+02:00",
            "2025-07-25T20:15:37.123456+00:00Z",
            "2025-07-25T20:15:37",
            "2025-07-25 20:15:37",
        ] {
            let got = parse_timestamp(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(got.timestamp(), want.timestamp(), "{s}");
        }
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp(""), None);
    }

    #[test]
    fn windows_are_the_predecessors() {
        assert_eq!(
            Period::month("2025-06".parse().unwrap()).window(),
            ("2025-06-01T00:00:00Z".into(), "2025-06-30T23:59:59Z".into())
        );
        let h = Period::hour(parse_timestamp("2025-06-30T23:17:05Z").unwrap());
        assert_eq!(h.key(), "2025-06-30T23:00:00Z");
        assert_eq!(
            h.window(),
            ("2025-06-30T23:00:00Z".into(), "2025-07-01T00:00:00Z".into())
        );
        assert_eq!(Period::parse(PeriodKind::Hour, &h.key()), Some(h));
        assert_eq!(
            Period::parse(PeriodKind::Hour, "2025-06-30T23:30:00Z"),
            None
        );
        assert_eq!(
            Period::parse(PeriodKind::Month, "2025-06"),
            Some(Period::month("2025-06".parse().unwrap()))
        );
    }
}
