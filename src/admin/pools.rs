//! `SHOW sluice.pools` (admins): per upstream, its endpoint, credential mode,
//! upstream sessions open and idle, clients waiting, and credential mints.

use super::{AdminView, ViewContext};

pub struct PoolsView;

impl AdminView for PoolsView {
    fn name(&self) -> &'static str {
        "sluice.pools"
    }

    fn columns(&self) -> &'static [&'static str] {
        &[
            "upstream",
            "endpoint",
            "credentials",
            "sessions_open",
            "sessions_idle",
            "clients_waiting",
            "max_sessions",
            "credentials_minted",
            "mint_failures",
        ]
    }

    fn admin_only(&self) -> bool {
        true
    }

    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>> {
        cx.upstreams
            .all()
            .iter()
            .map(|u| {
                let stats = u.pool.stats();
                vec![
                    u.name().to_owned(),
                    u.known_endpoint()
                        .unwrap_or_else(|| "(not yet looked up)".into()),
                    u.config.credentials.as_str().to_owned(),
                    stats.open.to_string(),
                    stats.idle.to_string(),
                    stats.waiting.to_string(),
                    u.pool.max_sessions().to_string(),
                    u.credentials.mint_count().to_string(),
                    u.credentials.failure_count().to_string(),
                ]
            })
            .collect()
    }
}
