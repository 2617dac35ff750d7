//! When scheduled refreshes are due (a fixed interval or a cron expression, UTC),
//! and the task that starts them.

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

/// Starts due refreshes once a second until the views are gone.
pub(super) async fn scheduler(views: std::sync::Weak<super::MatViews>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(all) = views.upgrade() else {
            return;
        };
        let now = Utc::now();
        for (view, tick) in all.due(now) {
            // Not due again until this run has finished and planned the next.
            if let Ok(mut n) = view.next_due.lock() {
                *n = None;
            }
            let all = all.clone();
            tokio::spawn(async move {
                // Of the gateways sharing the storage, the one whose lease is
                // created refreshes; the others read its result (`shared.rs`).
                if !all.claim_tick(&view, tick).await {
                    view.plan_next(Utc::now());
                    return;
                }
                let result = all.refresh_view(&view, true).await;
                view.plan_next(Utc::now());
                // A failure is already logged and recorded; a view that never loaded
                // retries on its schedule or, without one, in a minute.
                if result.is_err()
                    && view.schedule().is_none()
                    && !view.manifest().state.populated
                    && let Ok(mut n) = view.next_due.lock()
                {
                    *n = Some(Utc::now() + chrono::Duration::seconds(60));
                }
            });
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
