//! `SHOW SERVERS`: upstream sessions, held by a client (`active`) or parked in
//! the pool (`idle`), with PgBouncer's columns.

use std::time::SystemTime;

use super::super::{AdminView, ViewContext};

pub struct ServersView;

impl AdminView for ServersView {
    fn name(&self) -> &'static str {
        "servers"
    }

    fn columns(&self) -> &'static [&'static str] {
        super::CONNECTION_COLUMNS
    }

    fn admin_only(&self) -> bool {
        true
    }

    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for s in cx.observer.board.snapshot() {
            let Some(link) = &s.server else { continue };
            let (addr, port) = super::split_addr(&link.addr);
            rows.push(vec![
                "S".into(),
                link.db_user.clone(),
                link.upstream.clone(),
                "active".into(),
                addr,
                port,
                String::new(),
                String::new(),
                super::timestamp(link.connect_time),
                s.request_time.map(super::timestamp).unwrap_or_default(),
                "0".into(),
                "0".into(),
                "0".into(),
                format!("{:#x}", link.remote_pid),
                s.who.session.to_string(),
                link.remote_pid.to_string(),
                if link.tls { "yes" } else { "" }.into(),
                s.application.clone(),
                "0".into(),
                link.remote_pid.to_string(),
            ]);
        }
        for u in cx.upstreams.all() {
            for idle in u.pool.idle_sessions() {
                let (addr, port) = super::split_addr(&idle.addr);
                let since = SystemTime::now()
                    .checked_sub(idle.idle)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                rows.push(vec![
                    "S".into(),
                    idle.db_user,
                    u.name().to_owned(),
                    "idle".into(),
                    addr,
                    port,
                    String::new(),
                    String::new(),
                    String::new(),
                    super::timestamp(since),
                    "0".into(),
                    "0".into(),
                    "0".into(),
                    format!("{:#x}", idle.remote_pid),
                    String::new(),
                    idle.remote_pid.to_string(),
                    if idle.tls { "yes" } else { "" }.into(),
                    String::new(),
                    "0".into(),
                    idle.remote_pid.to_string(),
                ]);
            }
        }
        rows
    }
}
