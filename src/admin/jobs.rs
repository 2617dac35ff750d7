//! `SHOW sluice.jobs`: each scheduled job with its schedule, target, run-as role and
//! database user, next tick, and how its last run went. Admins see every job, other
//! roles the jobs they are granted (`grant_roles`). The runs themselves are a table:
//! `SELECT … FROM sluice.job_runs`.

use super::{AdminView, ViewContext};

pub struct JobsView;

impl AdminView for JobsView {
    fn name(&self) -> &'static str {
        "sluice.jobs"
    }

    fn columns(&self) -> &'static [&'static str] {
        crate::jobs::SHOW_COLUMNS
    }

    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>> {
        let Some(jobs) = cx.jobs else {
            return Vec::new();
        };
        jobs.listing(&crate::jobs::Caller {
            admin: cx.policy.admin,
            roles: &cx.identity.roles,
        })
    }
}
