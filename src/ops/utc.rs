//! Calendar time in UTC from epoch time, without a date crate: one place
//! for the civil-from-days arithmetic that log lines, collabctl's tables
//! and the simulator's `publishTime` attributes all need.

use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC calendar time, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

impl Utc {
    /// The calendar time `epoch_ms` milliseconds after 1970-01-01 (before
    /// it when negative).
    pub fn from_epoch_ms(epoch_ms: i64) -> Utc {
        let secs = epoch_ms.div_euclid(1000);
        let millis = epoch_ms.rem_euclid(1000) as u32;
        let days = secs.div_euclid(86_400);
        let of_day = secs.rem_euclid(86_400) as u32;
        // Civil date from days since 1970-01-01 (Howard Hinnant's
        // civil_from_days).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Utc {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: of_day / 3600,
            minute: of_day % 3600 / 60,
            second: of_day % 60,
            millis,
        }
    }

    /// The calendar time of `t` (the epoch for times before it).
    pub fn from_system_time(t: SystemTime) -> Utc {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Utc::from_epoch_ms(ms)
    }

    /// `YYYY-MM-DD`.
    pub fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// `hh:mm:ss`.
    pub fn time(&self) -> String {
        format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let u = Utc::from_epoch_ms(0);
        assert_eq!(
            (u.date(), u.time(), u.millis),
            ("1970-01-01".into(), "00:00:00".into(), 0)
        );
        let leap = Utc::from_epoch_ms(951_782_400_000);
        assert_eq!(leap.date(), "2000-02-29");
        let u = Utc::from_epoch_ms(1_700_000_000_123);
        assert_eq!(
            (u.date(), u.time(), u.millis),
            ("2023-11-14".into(), "22:13:20".into(), 123)
        );
        let before = Utc::from_epoch_ms(-1);
        assert_eq!(
            (before.date(), before.time(), before.millis),
            ("1969-12-31".into(), "23:59:59".into(), 999)
        );
    }
}
