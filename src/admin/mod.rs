//! Operations: the admin views (`SHOW sluice.*`, PgBouncer's `SHOW POOLS` /
//! `CLIENTS` / `SERVERS` / `STATS` in `console/`, `CALL sluice.refresh_lake`, `SHOW sluice.jobs`) and
//! logging set-up. Metrics live in `metrics`, the record stage in `observe`, the
//! audit trail in `audit`, the admin HTTP listener in `server::http`.
//!
//! Each view is one file implementing [`AdminView`]; [`VIEWS`] lists them. A session
//! answers `SHOW <name>` for any listed name with the view's columns and rows, after
//! checking `admin_only`. To add a view: a file with a unit struct implementing the
//! trait, and one line in [`VIEWS`].

pub mod console;
pub mod credentials;
pub mod identity;
pub mod jobs;
pub mod lake;
pub mod materialized_views;
pub mod pools;
pub mod query_groups;
pub mod queues;
pub mod refresh_lake;
pub mod result_cache;
pub mod sessions;

use crate::auth::Identity;
use crate::auth::policy::Policy;
use crate::cache::matview::MatViews;
use crate::cache::results::ResultCache;
use crate::engine::Engine;
use crate::jobs::Jobs;
use crate::observe::Observer;
use crate::redshift::Upstreams;

/// What a view may read: the asking session's identity and policy, and the
/// gateway's parts.
pub struct ViewContext<'a> {
    pub identity: &'a Identity,
    pub policy: &'a Policy,
    pub engine: &'a Engine,
    pub results: Option<&'a ResultCache>,
    pub matviews: Option<&'a MatViews>,
    /// Scheduled jobs, when configured.
    pub jobs: Option<&'a Jobs>,
    pub upstreams: &'a Upstreams,
    pub observer: &'a Observer,
    /// Workload queues, when configured.
    pub workload: Option<&'a crate::workload::Workload>,
    /// The database name clients connect to (`server.database`).
    pub database: &'a str,
}

/// One `SHOW sluice.<name>` view: text columns, rows computed when shown.
pub trait AdminView: Sync {
    /// The name after SHOW, lower case (`sluice.pools`).
    fn name(&self) -> &'static str;
    fn columns(&self) -> &'static [&'static str];
    /// Only roles with `admin = true` may see it.
    fn admin_only(&self) -> bool {
        false
    }
    /// The rows this session may see (a view filters by the session's policy).
    fn rows(&self, cx: &ViewContext<'_>) -> Vec<Vec<String>>;
}

/// Every admin view.
pub static VIEWS: &[&dyn AdminView] = &[
    &identity::IdentityView,
    &lake::LakeView,
    &result_cache::ResultCacheView,
    &materialized_views::MaterializedViewsView,
    &pools::PoolsView,
    &credentials::CredentialsView,
    &query_groups::QueryGroupsInfoView,
    &queues::QueuesView,
    &jobs::JobsView,
    &sessions::SessionsView,
];

/// The view `SHOW name` names, if any: a `sluice.*` view, or one of PgBouncer's
/// console views (`SHOW POOLS`, `CLIENTS`, `SERVERS`, `STATS`).
pub fn find(name: &str) -> Option<&'static dyn AdminView> {
    VIEWS
        .iter()
        .chain(console::VIEWS)
        .copied()
        .find(|v| v.name().eq_ignore_ascii_case(name))
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides the configured filter.
/// The log goes to standard error, as PostgreSQL's does: standard output is left to
/// the audit trail's stdout sink (`[audit.stdout]`), so the two never interleave.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_names_are_unique_and_lower_case() {
        let mut names: Vec<&str> = VIEWS.iter().map(|v| v.name()).collect();
        assert!(
            console::VIEWS
                .iter()
                .all(|v| crate::route::is_console_view(v.name()))
        );
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("sluice.") && *n == n.to_lowercase())
        );
        names.sort();
        names.dedup();
        assert_eq!(names.len(), VIEWS.len());
        assert!(find("sluice.pools").is_some_and(|v| v.admin_only()));
        assert!(find("sluice.identity").is_some_and(|v| !v.admin_only()));
        for name in crate::route::CONSOLE_VIEWS {
            assert!(find(name).is_some_and(|v| v.admin_only()), "{name}");
        }
    }
}
