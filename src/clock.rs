//! Where lethe reads the time. Everything that stamps or decides by the time — audit records,
//! run records, manifests, leases, the "as of" of a retention plan — asks a [`Clock`] it was
//! given, so a test can fix the time and a backfill can plan as of a past instant.
//!
//! The one rule about overriding it lives here too ([`as_of`]): an override may lie in the
//! past, never in the future — a clock in the future would delete data early.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that says what it is told (tests).
#[derive(Debug)]
pub struct FixedClock(Mutex<DateTime<Utc>>);

impl FixedClock {
    pub fn at(t: DateTime<Utc>) -> Arc<FixedClock> {
        Arc::new(FixedClock(Mutex::new(t)))
    }

    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().expect("clock lock") = t;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

/// The instant a plan is made "as of": `clock`'s now, or `over` (`--now`) when it is not later
/// than `clock`'s now. A later one is refused (exit 2), naming both.
pub fn as_of(clock: &dyn Clock, over: Option<DateTime<Utc>>) -> crate::Result<DateTime<Utc>> {
    let real = clock.now();
    match over {
        None => Ok(real),
        Some(t) if t <= real => Ok(t),
        Some(t) => Err(crate::Error::Usage(format!(
            "--now {} is later than the clock ({}); a clock in the future would delete data early. Use a time in the past, or leave --now out",
            crate::util::rfc3339(t),
            crate::util::rfc3339(real)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn an_override_may_lie_in_the_past_only() {
        let c = FixedClock::at(t("2026-11-28T12:00:00Z"));
        assert_eq!(as_of(&*c, None).unwrap(), t("2026-11-28T12:00:00Z"));
        let past = t("2026-01-01T00:00:00Z");
        assert_eq!(as_of(&*c, Some(past)).unwrap(), past);
        // The same instant is not the future.
        assert!(as_of(&*c, Some(t("2026-11-28T12:00:00Z"))).is_ok());
        let e = as_of(&*c, Some(t("2026-11-28T12:00:01Z"))).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string().contains("2026-11-28T12:00:01Z")
                && e.to_string().contains("2026-11-28T12:00:00Z"),
            "{e}"
        );
        c.set(t("2026-11-28T12:00:05Z"));
        assert!(as_of(&*c, Some(t("2026-11-28T12:00:01Z"))).is_ok());
    }
}
