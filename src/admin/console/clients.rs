//! `SHOW CLIENTS`: every client session, with PgBouncer's columns.

use std::time::Duration;

use super::super::{AdminView, ViewContext};
use crate::observe::sessions::State;

pub struct ClientsView;

impl AdminView for ClientsView {
    fn name(&self) -> &'static str {
        "clients"
    }

    fn columns(&self) -> &'static [&'static str] {
        super::CONNECTION_COLUMNS
    }

    fn admin_only(&self) -> bool {
        true
    }

    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>> {
        cx.observer
            .board
            .snapshot()
            .into_iter()
            .map(|s| {
                let (addr, port) = super::split_addr(&s.who.client);
                let (local_addr, local_port) = super::split_addr(&s.local_addr);
                let (wait, wait_us) = super::secs_and_us(Duration::from_micros(s.wait_us));
                // PgBouncer's words: a client in a transaction is active.
                let state = match s.state {
                    State::Active | State::IdleInTransaction => "active",
                    State::Waiting => "waiting",
                    State::Idle => "idle",
                };
                vec![
                    "C".into(),
                    s.who.user.clone(),
                    s.who.database.clone(),
                    state.into(),
                    addr,
                    port,
                    local_addr,
                    local_port,
                    super::timestamp(s.connect_time),
                    s.request_time.map(super::timestamp).unwrap_or_default(),
                    wait,
                    wait_us,
                    "0".into(),
                    format!("{:#x}", s.who.session),
                    s.server
                        .as_ref()
                        .map(|l| l.remote_pid.to_string())
                        .unwrap_or_default(),
                    s.server
                        .as_ref()
                        .map(|l| l.remote_pid.to_string())
                        .unwrap_or_else(|| "0".into()),
                    s.who.tls.unwrap_or("").to_owned(),
                    s.application,
                    "0".into(),
                    s.who.session.to_string(),
                ]
            })
            .collect()
    }
}
