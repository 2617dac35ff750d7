//! When a job's ticks fall: a cron expression read in the job's time zone, or an
//! interval aligned to the Unix epoch. Either way a tick is a property of the
//! schedule, not of when a gateway started, so every gateway sharing the storage
//! computes the same ticks and the lease for a tick (`store`) means one run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::cache::matview::schedule::{Schedule, parse_cron};
use crate::config::JobConfig;

#[derive(Debug, Clone)]
pub struct JobSchedule {
    schedule: Schedule,
    tz: Tz,
}

impl JobSchedule {
    /// The job's schedule (the config was validated; an invalid one is an error all
    /// the same).
    pub fn of(job: &JobConfig) -> Result<JobSchedule, String> {
        let tz = crate::config::values::parse_time_zone(&job.time_zone)?;
        let schedule = match (&job.schedule, job.every_secs) {
            (Some(c), _) => Schedule::Cron(Box::new(parse_cron(c)?)),
            (None, Some(secs)) if secs > 0 => Schedule::Every(Duration::from_secs(secs)),
            _ => return Err("a job needs schedule or every_secs".into()),
        };
        Ok(JobSchedule { schedule, tz })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.schedule {
            // Aligned to the epoch (the views' schedule does it).
            Schedule::Every(_) => self.schedule.next_after(after),
            Schedule::Cron(c) => c
                .after(&after.with_timezone(&self.tz))
                .next()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    /// How `SHOW sluice.jobs` shows it.
    pub fn describe(&self) -> String {
        match &self.schedule {
            Schedule::Cron(_) => format!("{} ({})", self.schedule.describe(), self.tz.name()),
            Schedule::Every(_) => self.schedule.describe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job(schedule: Option<&str>, every: Option<u64>, tz: &str) -> JobConfig {
        let text = format!(
            "name = \"j\"\n{}{}time_zone = \"{tz}\"\nstatements = [\"SELECT 1\"]\nrun_as_role = \"r\"\ntarget = \"lake\"\n",
            schedule
                .map(|s| format!("schedule = \"{s}\"\n"))
                .unwrap_or_default(),
            every
                .map(|s| format!("every_secs = {s}\n"))
                .unwrap_or_default(),
        );
        toml::from_str(&text).expect("a job")
    }

    #[test]
    fn cron_ticks_follow_the_time_zone_across_daylight_saving() {
        let s = JobSchedule::of(&job(Some("0 30 2 * * *"), None, "Europe/Paris")).unwrap();
        // 02:30 Paris in winter is 01:30 UTC.
        let jan = Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap();
        assert_eq!(
            s.next_after(jan),
            Some(Utc.with_ymd_and_hms(2026, 1, 11, 1, 30, 0).unwrap())
        );
        // In summer (CEST, UTC+2) it is 00:30 UTC.
        let jul = Utc.with_ymd_and_hms(2026, 7, 10, 12, 0, 0).unwrap();
        assert_eq!(
            s.next_after(jul),
            Some(Utc.with_ymd_and_hms(2026, 7, 11, 0, 30, 0).unwrap())
        );
        // 2026-03-29 has no 02:30 in Paris (clocks jump 02:00 → 03:00): that day is
        // skipped, the next tick is the following night.
        let spring = Utc.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap();
        assert_eq!(
            s.next_after(spring),
            Some(Utc.with_ymd_and_hms(2026, 3, 30, 0, 30, 0).unwrap())
        );
        assert!(s.describe().contains("Europe/Paris"), "{}", s.describe());
    }

    #[test]
    fn seconds_fields_and_five_field_expressions() {
        let s = JobSchedule::of(&job(Some("*/10 * * * * *"), None, "UTC")).unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 3).unwrap();
        assert_eq!(
            s.next_after(t),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap())
        );
        let five = JobSchedule::of(&job(Some("15 3 * * *"), None, "America/New_York")).unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        // 03:15 in New York (EST, UTC-5) is 08:15 UTC.
        assert_eq!(
            five.next_after(t),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 8, 15, 0).unwrap())
        );
    }

    #[test]
    fn intervals_align_to_the_epoch_so_gateways_agree() {
        let s = JobSchedule::of(&job(None, Some(60), "Asia/Tokyo")).unwrap();
        let a = Utc.with_ymd_and_hms(2026, 1, 1, 10, 7, 30).unwrap();
        let b = Utc.with_ymd_and_hms(2026, 1, 1, 10, 7, 59).unwrap();
        let tick = Utc.with_ymd_and_hms(2026, 1, 1, 10, 8, 0).unwrap();
        assert_eq!(s.next_after(a), Some(tick));
        assert_eq!(s.next_after(b), Some(tick));
        // Strictly after: a tick is never planned twice.
        assert_eq!(
            s.next_after(tick),
            Some(tick + chrono::Duration::seconds(60))
        );
        assert_eq!(s.describe(), "every 60 s");
    }
}
