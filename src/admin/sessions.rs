//! `SHOW sluice.sessions`: every client session, in `pg_stat_activity`'s words —
//! the pid `sluice.terminate(pid)` takes, who, from where, doing what and for how
//! long, and how old the session is. Admin roles only.

use std::time::{Duration, SystemTime};

use super::{AdminView, ViewContext};

pub struct SessionsView;

impl AdminView for SessionsView {
    fn name(&self) -> &'static str {
        "sluice.sessions"
    }

    fn columns(&self) -> &'static [&'static str] {
        &[
            "pid",
            "usename",
            "application_name",
            "client_addr",
            "state",
            "state_duration_s",
            "backend_start",
            "session_age_s",
            "roles",
            "route",
            "upstream_pid",
        ]
    }

    fn admin_only(&self) -> bool {
        true
    }

    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>> {
        let now = SystemTime::now();
        let secs = |since: SystemTime| {
            let d = now.duration_since(since).unwrap_or(Duration::ZERO);
            format!("{:.3}", d.as_secs_f64())
        };
        cx.observer
            .board
            .snapshot()
            .into_iter()
            .map(|s| {
                vec![
                    s.who.session.to_string(),
                    s.who.user.clone(),
                    s.application.clone(),
                    s.who.client.clone(),
                    s.state.name().to_owned(),
                    secs(s.state_since),
                    super::console::timestamp(s.connect_time),
                    secs(s.connect_time),
                    s.who.roles.join(","),
                    s.route.to_owned(),
                    s.server
                        .as_ref()
                        .map(|l| l.remote_pid.to_string())
                        .unwrap_or_default(),
                ]
            })
            .collect()
    }
}
