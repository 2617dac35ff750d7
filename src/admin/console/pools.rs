//! `SHOW POOLS`: per upstream, clients holding or waiting for an upstream session
//! and the upstream sessions busy and parked.

use std::time::Duration;

use super::super::{AdminView, ViewContext};
use crate::observe::sessions::State;

pub struct PoolsView;

impl AdminView for PoolsView {
    fn name(&self) -> &'static str {
        "pools"
    }

    fn columns(&self) -> &'static [&'static str] {
        &[
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
            "load_balance_hosts",
        ]
    }

    fn admin_only(&self) -> bool {
        true
    }

    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>> {
        let sessions = cx.observer.board.snapshot();
        let max_wait = sessions
            .iter()
            .filter(|s| s.state == State::Waiting)
            .map(|s| s.wait_us)
            .max()
            .unwrap_or(0);
        let (maxwait, maxwait_us) = super::secs_and_us(Duration::from_micros(max_wait));
        cx.upstreams
            .all()
            .iter()
            .map(|u| {
                let stats = u.pool.stats();
                let linked = sessions
                    .iter()
                    .filter(|s| s.server.as_ref().is_some_and(|l| l.upstream == u.name()))
                    .count();
                vec![
                    u.name().to_owned(),
                    "*".to_owned(),
                    linked.to_string(),
                    stats.waiting.to_string(),
                    "0".into(),
                    "0".into(),
                    stats.open.saturating_sub(stats.idle).to_string(),
                    "0".into(),
                    "0".into(),
                    stats.idle.to_string(),
                    "0".into(),
                    "0".into(),
                    "0".into(),
                    maxwait.clone(),
                    maxwait_us.clone(),
                    "session".into(),
                    String::new(),
                ]
            })
            .collect()
    }
}
