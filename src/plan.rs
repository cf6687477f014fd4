//! Which periods are due for submission: months or hours, complete by Omnistrate's marker (or, only
//! when the operator opts in, by a grace delay where no marker was ever seen), never the current
//! period, from `START_MONTH` on, oldest first, at most so many per run. Pure functions.

use chrono::{DateTime, Duration, Utc};

use crate::period::{Month, Period, PeriodKind};

/// Whether a period may be submitted, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completeness {
    Complete,
    /// Not over yet (the current period, or a future one).
    NotOver,
    /// Omnistrate's export has not reached the end of the period.
    ExportBehind {
        last_processed_to: DateTime<Utc>,
    },
    /// No marker was ever seen and no grace delay was opted into.
    NoMarker,
    /// No marker; the grace delay after the period's end has not passed yet.
    InGrace,
}

/// Is `period` complete at `now`? Omnistrate writes `last_processed_to` inclusive (…T23:59:59Z
/// covers the whole day), so a period is complete when the marker is at or after its last second.
pub fn completeness(
    period: Period,
    marker: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    grace_without_marker: Option<Duration>,
) -> Completeness {
    let end = period.end();
    if end > now {
        return Completeness::NotOver;
    }
    match (marker, grace_without_marker) {
        (Some(to), _) if to >= end - Duration::seconds(1) => Completeness::Complete,
        (Some(to), _) => Completeness::ExportBehind {
            last_processed_to: to,
        },
        (None, Some(grace)) if end + grace <= now => Completeness::Complete,
        (None, Some(_)) => Completeness::InGrace,
        (None, None) => Completeness::NoMarker,
    }
}

/// What limits which periods a run takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodRules {
    pub kind: PeriodKind,
    /// `START_MONTH`: nothing before this month.
    pub start_month: Option<Month>,
    /// `MAX_MONTHS_PER_RUN` or `MAX_HOURS_PER_RUN`.
    pub max_per_run: usize,
    /// Opt-in: where no marker was ever seen, a period counts as complete this long after its end.
    pub grace_without_marker: Option<Duration>,
}

/// Which of the periods with work a run takes, and why it leaves the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DuePeriods {
    /// Complete, from `START_MONTH` on, oldest first, at most `max_per_run`.
    pub due: Vec<Period>,
    /// Not complete yet, and why.
    pub waiting: Vec<(Period, Completeness)>,
    /// Before `START_MONTH`: never submitted while it says so.
    pub before_start: Vec<Period>,
}

/// The periods with work to do that a run takes. `with_work` lists the periods that have
/// unplanned usage (any order, duplicates allowed).
pub fn due_periods(
    with_work: &[Period],
    marker: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    rules: &PeriodRules,
) -> DuePeriods {
    let mut candidates: Vec<Period> = with_work
        .iter()
        .copied()
        .filter(|p| p.kind == rules.kind)
        .collect();
    candidates.sort();
    candidates.dedup();
    let mut out = DuePeriods::default();
    for p in candidates {
        if rules.start_month.is_some_and(|m| p.month_of() < m) {
            out.before_start.push(p);
            continue;
        }
        match completeness(p, marker, now, rules.grace_without_marker) {
            Completeness::Complete if out.due.len() < rules.max_per_run => out.due.push(p),
            Completeness::Complete => {}
            other => out.waiting.push((p, other)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::parse_timestamp;

    fn t(s: &str) -> DateTime<Utc> {
        parse_timestamp(s).unwrap()
    }

    fn june() -> Period {
        Period::month("2025-06".parse().unwrap())
    }

    #[test]
    fn a_month_is_complete_only_when_the_marker_covers_its_last_second() {
        let now = t("2025-08-01T00:00:00Z");
        let c = |m: &str| completeness(june(), Some(t(m)), now, None);
        assert_eq!(c("2025-06-30T23:59:59Z"), Completeness::Complete);
        assert_eq!(c("2025-07-01T00:00:00Z"), Completeness::Complete);
        assert_eq!(
            c("2025-06-30T23:59:58Z"),
            Completeness::ExportBehind {
                last_processed_to: t("2025-06-30T23:59:58Z")
            }
        );
        // The month containing last_processed_to is not complete (the predecessor's bug).
        assert!(matches!(
            c("2025-06-15T00:00:00Z"),
            Completeness::ExportBehind { .. }
        ));
    }

    #[test]
    fn the_current_period_is_never_complete() {
        let now = t("2025-06-30T23:59:59Z");
        let marker = Some(t("2025-07-31T23:59:59Z"));
        assert_eq!(
            completeness(june(), marker, now, None),
            Completeness::NotOver
        );
        let hour = Period::hour(now);
        assert_eq!(completeness(hour, marker, now, None), Completeness::NotOver);
    }

    #[test]
    fn without_a_marker_only_an_opted_in_grace_delay_completes_a_period() {
        let now = t("2025-07-01T05:00:00Z");
        assert_eq!(
            completeness(june(), None, now, None),
            Completeness::NoMarker
        );
        assert_eq!(
            completeness(june(), None, now, Some(Duration::hours(6))),
            Completeness::InGrace
        );
        assert_eq!(
            completeness(june(), None, now, Some(Duration::hours(5))),
            Completeness::Complete
        );
    }

    #[test]
    fn due_periods_are_oldest_first_bounded_and_from_start_month() {
        let months: Vec<Period> = ["2025-05", "2025-03", "2025-04", "2025-02", "2025-03"]
            .iter()
            .map(|m| Period::month(m.parse().unwrap()))
            .collect();
        let rules = PeriodRules {
            kind: PeriodKind::Month,
            start_month: Some("2025-03".parse().unwrap()),
            max_per_run: 2,
            grace_without_marker: None,
        };
        let marker = Some(t("2025-04-30T23:59:59Z"));
        let out = due_periods(&months, marker, t("2025-09-01T00:00:00Z"), &rules);
        let keys: Vec<String> = out.due.iter().map(|p| p.key()).collect();
        assert_eq!(keys, ["2025-03", "2025-04"]);
        assert_eq!(out.waiting.len(), 1);
        assert_eq!(out.waiting[0].0.key(), "2025-05");
        let before: Vec<String> = out.before_start.iter().map(|p| p.key()).collect();
        assert_eq!(before, ["2025-02"]);
    }
}
