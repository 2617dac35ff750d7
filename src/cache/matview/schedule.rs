//! When scheduled refreshes are due: a fixed interval or a cron expression (UTC).

use std::time::Duration;

use chrono::{DateTime, Utc};

pub use crate::config::values::parse_cron;

/// A view's refresh schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    Cron(Box<cron::Schedule>),
}

impl Schedule {
    /// The first time after `after` a refresh is due. Intervals are aligned to the
    /// Unix epoch, so every gateway sharing the storage computes the same ticks
    /// (each tick's lease is named by its time).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(d) => {
                let step = i64::try_from(d.as_millis()).ok().filter(|s| *s > 0)?;
                let now = after.timestamp_millis();
                let next = (now.div_euclid(step) + 1).checked_mul(step)?;
                DateTime::from_timestamp_millis(next)
            }
            Schedule::Cron(c) => c.after(&after).next(),
        }
    }

    /// How the schedule reads in `SHOW sluice.materialized_views`.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Every(d) => format!("every {} s", d.as_secs()),
            Schedule::Cron(c) => format!("cron {c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn intervals_and_cron_expressions() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 10, 7, 30).unwrap();
        let every = Schedule::Every(Duration::from_secs(60));
        let minute = Utc.with_ymd_and_hms(2026, 1, 1, 10, 8, 0).unwrap();
        assert_eq!(every.next_after(t), Some(minute));
        assert_eq!(
            every.next_after(minute),
            Some(minute + chrono::Duration::seconds(60)),
            "strictly after"
        );
        let cron = Schedule::Cron(Box::new(parse_cron("*/15 * * * *").unwrap()));
        assert_eq!(
            cron.next_after(t),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 10, 15, 0).unwrap())
        );
        let seconds = Schedule::Cron(Box::new(parse_cron("0 0 3 * * *").unwrap()));
        assert_eq!(
            seconds.next_after(t),
            Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, 0, 0).unwrap())
        );
        assert!(parse_cron("every minute").is_err());
    }
}
