//! Durations as policies write them — `30m`, `1h`, `90d`, `12mo`, `1y` — and their calendar
//! arithmetic, all in UTC. Minutes, hours and days are exact; `12mo` from 31 March 10:00 ends 31
//! March 10:00 next year. When the day does not exist in the final month (from 29 February, or
//! `1mo` from 31 January), the period ends with the end of that month's last day, i.e. at 00:00
//! on the 1st of the next month — the rule of EU Regulation 1182/71 art. 3(2)(c) for periods
//! expressed in months. Unlike clamping to the last day at the same time of day, this rule is
//! monotone (a later anchor never expires earlier), so "expired at `now`" is exactly
//! `anchor <= cutoff(now)` for a single cutoff ([`Span::cutoff`]): one range predicate, exact in
//! SQL, to the microsecond.

use std::fmt;

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeDelta, Utc};

/// A retention period as written: `30m`, `1h`, `90d`, `12mo`, `1y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Minutes(u32),
    Hours(u32),
    Days(u32),
    Months(u32),
    Years(u32),
}

impl Span {
    pub fn parse(s: &str) -> Result<Span, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, unit) = s.split_at(split);
        let n: u32 = n
            .parse()
            .map_err(|_| format!("{s:?} does not start with a number"))?;
        if n == 0 {
            return Err(format!(
                "{s:?} is zero; a zero retention would delete data as soon as it is written"
            ));
        }
        Ok(match unit {
            "m" => Span::Minutes(n),
            "h" => Span::Hours(n),
            "d" => Span::Days(n),
            "mo" => Span::Months(n),
            "y" => Span::Years(n),
            _ => {
                return Err(format!(
                    "{s:?} has unknown unit {unit:?} (use m, h, d, mo or y)"
                ));
            }
        })
    }

    fn months(self) -> Option<u32> {
        match self {
            Span::Months(n) => Some(n),
            Span::Years(n) => n.checked_mul(12),
            _ => None,
        }
    }

    fn fixed(self) -> Option<TimeDelta> {
        match self {
            Span::Minutes(n) => Some(TimeDelta::minutes(n.into())),
            Span::Hours(n) => Some(TimeDelta::hours(n.into())),
            Span::Days(n) => Some(TimeDelta::days(n.into())),
            _ => None,
        }
    }

    /// When a period of `self` starting at `t` ends: `t + self`, in calendar months for months
    /// and years; a day missing from the final month ends the period at 00:00 of the next
    /// month's 1st (see the module doc).
    pub fn after(self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Some(d) = self.fixed() {
            return t.checked_add_signed(d);
        }
        let n = self.months()?;
        let end = t.checked_add_months(Months::new(n))?;
        if end.day() == t.day() {
            return Some(end);
        }
        // chrono clamped the day: the period ends with the end of `end`'s month.
        first_of_next_month(end)
    }

    /// The latest anchor whose period has ended at `now`: for every `a`,
    /// `self.after(a) <= now` exactly when `a <= self.cutoff(now)`. `None` when no anchor is
    /// that old (the calendar underflows).
    pub fn cutoff(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Some(d) = self.fixed() {
            return now.checked_sub_signed(d);
        }
        let n = self.months()?;
        let back = now.checked_sub_months(Months::new(n))?;
        if back.day() == now.day() {
            // The same day and time n months earlier ends exactly at `now`.
            return Some(back);
        }
        // `now`'s day does not exist n months earlier: every instant of that (shorter) month
        // has ended, and nothing of the next month has.
        first_of_next_month(back)?.checked_sub_signed(TimeDelta::microseconds(1))
    }
}

/// 00:00 UTC on the first day of the month after `t`'s.
fn first_of_next_month(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let (y, m) = if t.month() == 12 {
        (t.year() + 1, 1)
    } else {
        (t.year(), t.month() + 1)
    };
    Some(
        NaiveDate::from_ymd_opt(y, m, 1)?
            .and_hms_opt(0, 0, 0)?
            .and_utc(),
    )
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Span::Minutes(n) => write!(f, "{n}m"),
            Span::Hours(n) => write!(f, "{n}h"),
            Span::Days(n) => write!(f, "{n}d"),
            Span::Months(n) => write!(f, "{n}mo"),
            Span::Years(n) => write!(f, "{n}y"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn spans_parse_and_display() {
        for s in ["30m", "1h", "90d", "12mo", "1y"] {
            assert_eq!(Span::parse(s).unwrap().to_string(), s);
        }
        for bad in ["", "90", "d", "0d", "9w", "-1d", "1.5d"] {
            assert!(Span::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn months_are_calendar_months() {
        let t = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap();
        assert_eq!(Span::Months(12).after(t(2025, 3, 31)), Some(t(2026, 3, 31)));
        let midnight = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap();
        // A day missing from the final month: the period ends with that month's last day.
        assert_eq!(
            Span::Months(1).after(t(2026, 1, 31)),
            Some(midnight(2026, 3, 1))
        );
        assert_eq!(
            Span::Years(1).after(t(2024, 2, 29)),
            Some(midnight(2025, 3, 1))
        );
        assert_eq!(Span::Months(1).after(t(2026, 1, 28)), Some(t(2026, 2, 28)));
        assert_eq!(Span::Days(90).after(t(2026, 1, 1)), Some(t(2026, 4, 1)));
        // The cutoff is the exact inverse.
        assert_eq!(
            Span::Months(12).cutoff(t(2026, 3, 31)),
            Some(t(2025, 3, 31))
        );
        let end_of_feb = midnight(2026, 3, 1) - TimeDelta::microseconds(1);
        assert_eq!(Span::Months(1).cutoff(t(2026, 3, 31)), Some(end_of_feb));
    }

    /// An instant in 2023..2027, biased towards month ends and midnights (the demo's
    /// deterministic generator drives the property test).
    fn instant(g: &mut crate::demo::Rng) -> DateTime<Utc> {
        let base = Utc.with_ymd_and_hms(2023, 1, 1, 0, 0, 0).unwrap();
        let mut t = base + TimeDelta::days(g.below(4 * 366) as i64);
        if g.below(3) == 0 {
            // Snap to one of the last four days of the month.
            let last = first_of_next_month(t).unwrap() - TimeDelta::days(1);
            t = last - TimeDelta::days(g.below(4) as i64);
        }
        let secs = match g.below(4) {
            0 => 0,
            1 => 86_399,
            _ => g.below(86_400) as i64,
        };
        t.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc() + TimeDelta::seconds(secs)
    }

    /// Property: for every span, anchor and now, `after(a) <= now` iff `a <= cutoff(now)`, and
    /// `after` is monotone. Checked on 200k generated cases including month ends and leap days.
    #[test]
    fn cutoff_is_the_exact_inverse_of_after() {
        let mut g = crate::demo::Rng::new(7);
        let spans = [
            Span::Minutes(30),
            Span::Hours(1),
            Span::Days(90),
            Span::Months(1),
            Span::Months(12),
            Span::Months(13),
            Span::Years(1),
        ];
        for i in 0..200_000 {
            let span = spans[i % spans.len()];
            let now = instant(&mut g);
            let a = match g.next() % 3 {
                // Near the cutoff, to hit the boundary to the second.
                0 => span.cutoff(now).unwrap() + TimeDelta::seconds((g.next() % 5) as i64 - 2),
                _ => instant(&mut g),
            };
            let expired = span.after(a).unwrap() <= now;
            assert_eq!(
                expired,
                a <= span.cutoff(now).unwrap(),
                "{span} anchor {a} now {now}"
            );
            let b = instant(&mut g);
            if a <= b {
                assert!(
                    span.after(a) <= span.after(b),
                    "{span} not monotone at {a} {b}"
                );
            }
        }
    }
}
