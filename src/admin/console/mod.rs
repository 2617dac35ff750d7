//! PgBouncer's admin console views, with PgBouncer's column names so existing
//! exporters (pgbouncer_exporter) and habits work: `SHOW POOLS`, `SHOW CLIENTS`,
//! `SHOW SERVERS`, `SHOW STATS`, for admin roles. One file per view.
//!
//! Where Sluice has no counterpart of a PgBouncer column it is reported as 0 (the
//! cancel-request counts, `sv_tested`, `sv_login`, `close_needed`). Sluice pools
//! upstream sessions per upstream and identity in session mode, so `SHOW POOLS`
//! has one row per upstream with `user` = `*`; `SHOW CLIENTS` lists each session.

pub mod clients;
pub mod pools;
pub mod servers;
pub mod stats;

use std::time::{Duration, SystemTime};

use super::AdminView;

pub static VIEWS: &[&dyn AdminView] = &[
    &pools::PoolsView,
    &clients::ClientsView,
    &servers::ServersView,
    &stats::StatsView,
];

/// `SHOW CLIENTS` and `SHOW SERVERS` share PgBouncer's column list.
pub(super) const CONNECTION_COLUMNS: &[&str] = &[
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];

/// PgBouncer's timestamp format (`2024-01-31 12:00:00 UTC`).
pub(crate) fn timestamp(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

/// `host:port` → (host, port), as PgBouncer's `addr` and `port` columns.
pub(super) fn split_addr(addr: &str) -> (String, String) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (host.trim_matches(['[', ']']).to_owned(), port.to_owned()),
        None => (addr.to_owned(), String::new()),
    }
}

/// Seconds and the microseconds beyond them (PgBouncer's `wait`/`wait_us` pairs).
pub(super) fn secs_and_us(d: Duration) -> (String, String) {
    (d.as_secs().to_string(), d.subsec_micros().to_string())
}
