//! Data Manager quotas are per Google Cloud project
//! (<https://developers.google.com/data-manager/api/devguides/limits>):
//! 300 mutate requests a minute and 100,000 a day for IngestionService.
//! Several destinations can use one project, so they share one limiter,
//! and a spent daily quota waits for Google's quota day to end.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, TimeZone, Utc, Weekday};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// One limiter per project in this process: a destination rebuilt by a
/// config reload gets the same one back, so the quota stays shared. The
/// first destination naming a project sets its rate.
pub fn project_limiter(project: &str, per_minute: u32) -> Arc<DefaultDirectRateLimiter> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>> =
        OnceLock::new();
    let mut map = REGISTRY
        .get_or_init(Default::default)
        .lock()
        .expect("quota registry lock");
    map.entry(project.to_owned())
        .or_insert_with(|| {
            let n = NonZeroU32::new(per_minute.max(1)).expect("at least 1");
            Arc::new(RateLimiter::direct(Quota::per_minute(n)))
        })
        .clone()
}

/// Which quota a RESOURCE_EXHAUSTED was about, from
/// `ErrorInfo.metadata.quota_limit` (e.g.
/// `IngestionMutateRequestsPerDayPerProject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaWindow {
    /// Per minute, or unknown: back off and retry.
    Short,
    /// Per day: nothing succeeds before the reset.
    Day,
}

pub fn quota_window(quota_limit: Option<&str>) -> QuotaWindow {
    match quota_limit {
        Some(q) if q.contains("PerDay") => QuotaWindow::Day,
        _ => QuotaWindow::Short,
    }
}

/// The next midnight in America/Los_Angeles after `now`, when Google
/// Cloud's daily quotas reset. US daylight time (second Sunday of March to
/// first Sunday of November, since 2007) is computed here rather than
/// pulling in a time-zone database for one zone.
pub fn next_pacific_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    let offset = |utc: DateTime<Utc>| -> i64 {
        if is_pacific_dst(utc) {
            -7
        } else {
            -8
        }
    };
    let local = now + ChronoDuration::hours(offset(now));
    let tomorrow = local.date_naive().succ_opt().expect("not the end of time");
    // Midnight is never inside a DST switch (they happen at 02:00), so the
    // offset at the candidate instant is the right one.
    let guess = Utc.from_utc_datetime(&tomorrow.and_hms_opt(0, 0, 0).expect("valid"))
        + ChronoDuration::hours(8);
    Utc.from_utc_datetime(&tomorrow.and_hms_opt(0, 0, 0).expect("valid"))
        - ChronoDuration::hours(offset(guess))
}

/// True while Pacific daylight time applies at the instant `t`: from
/// 10:00 UTC on the second Sunday of March to 09:00 UTC on the first
/// Sunday of November.
fn is_pacific_dst(t: DateTime<Utc>) -> bool {
    let year = t.year();
    let start = nth_sunday(year, 3, 2).and_hms_opt(10, 0, 0).expect("valid");
    let end = nth_sunday(year, 11, 1).and_hms_opt(9, 0, 0).expect("valid");
    let naive = t.naive_utc();
    naive >= start && naive < end
}

fn nth_sunday(year: i32, month: u32, n: u32) -> NaiveDate {
    NaiveDate::from_weekday_of_month_opt(year, month, Weekday::Sun, n as u8).expect("exists")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_daily_reset_is_the_next_pacific_midnight() {
        // Winter (PST, UTC-8): 2026-01-15 10:00 PST → 2026-01-16 08:00 UTC.
        assert_eq!(
            next_pacific_midnight(utc("2026-01-15T18:00:00Z")),
            utc("2026-01-16T08:00:00Z")
        );
        // Summer (PDT, UTC-7).
        assert_eq!(
            next_pacific_midnight(utc("2026-07-01T06:59:00Z")),
            utc("2026-07-01T07:00:00Z")
        );
        assert_eq!(
            next_pacific_midnight(utc("2026-07-01T07:00:00Z")),
            utc("2026-07-02T07:00:00Z")
        );
        // The day DST starts (2026-03-08): midnight before is still PST.
        assert_eq!(
            next_pacific_midnight(utc("2026-03-07T20:00:00Z")),
            utc("2026-03-08T08:00:00Z")
        );
        // The day after, midnight is PDT.
        assert_eq!(
            next_pacific_midnight(utc("2026-03-08T12:00:00Z")),
            utc("2026-03-09T07:00:00Z")
        );
        // DST ends 2026-11-01: the midnight that follows is PST.
        assert_eq!(
            next_pacific_midnight(utc("2026-11-01T12:00:00Z")),
            utc("2026-11-02T08:00:00Z")
        );
    }

    #[test]
    fn quota_limit_names_tell_day_from_minute() {
        assert_eq!(
            quota_window(Some("IngestionMutateRequestsPerDayPerProject")),
            QuotaWindow::Day
        );
        assert_eq!(
            quota_window(Some("IngestionMutateRequestsPerMinutePerProject")),
            QuotaWindow::Short
        );
        assert_eq!(quota_window(None), QuotaWindow::Short);
    }

    #[test]
    fn destinations_naming_one_project_share_its_limiter() {
        let a = project_limiter("koala-test-shared-project", 300);
        let b = project_limiter("koala-test-shared-project", 10);
        let c = project_limiter("koala-test-other-project", 300);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
