//! Where a planned lake statement runs: on the gateway, or as a job on an Apache
//! DataFusion Ballista cluster (`[engine.distributed]`, cargo feature
//! `distributed`).
//!
//! The route has already sent the statement to the lake; this is the engine's own
//! choice of where to execute the plan, made once per statement after physical
//! planning because it depends on the planned scan size. The gateway always plans
//! (under the session's policy, so executors only ever see files the user may
//! read); Ballista only executes.

#[cfg(feature = "distributed")]
mod ballista;
#[cfg(feature = "distributed")]
pub use ballista::Cluster;

use crate::config::{DistributedConfig, DistributedRoute};

/// The session setting that chooses the engine for the session's lake statements.
pub const SETTING: &str = "sluice.engine";

/// `sluice.engine`: `auto` (the default: distributed above the configured scan
/// size), `local` or `distributed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    #[default]
    Auto,
    Local,
    Distributed,
}

impl EngineChoice {
    pub fn parse(value: &str) -> Option<EngineChoice> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" | "default" => Some(EngineChoice::Auto),
            "local" | "gateway" => Some(EngineChoice::Local),
            "distributed" | "ballista" => Some(EngineChoice::Distributed),
            _ => None,
        }
    }

    /// The session's choice (checked when it was set; anything else reads as auto).
    pub fn of(vars: &super::session_vars::SessionVars) -> EngineChoice {
        vars.values
            .get(SETTING)
            .and_then(|v| EngineChoice::parse(v))
            .unwrap_or_default()
    }
}

/// Where one statement runs.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    /// On the gateway; the NOTICE says why when the session asked for more.
    Local(Option<String>),
    Distributed,
}

/// The placement rule: plans that read no files (catalog queries, constants,
/// upstream tables alone) always stay local; `local` stays local; `distributed`
/// goes when it can; `auto` goes at or above the scan threshold. The plan is only
/// walked (`scan_bytes`, `reads_files`) when the answer depends on it: a gateway
/// without a cluster pays nothing per statement.
pub fn place(
    config: Option<&DistributedConfig>,
    choice: EngineChoice,
    route: DistributedRoute,
    scan_bytes: impl FnOnce() -> u64,
    reads_files: impl FnOnce() -> bool,
) -> Placement {
    if choice == EngineChoice::Local {
        return Placement::Local(None);
    }
    let forced = choice == EngineChoice::Distributed;
    let config = match config {
        Some(c) if c.allows(route) => c,
        other => {
            let why = match other {
                None => {
                    "sluice.engine = 'distributed', but this gateway has no [engine.distributed]: running on the gateway"
                }
                Some(_) => {
                    "[engine.distributed] routes does not include this kind of statement: running on the gateway"
                }
            };
            return Placement::Local((forced && reads_files()).then(|| why.to_string()));
        }
    };
    if !reads_files() {
        return Placement::Local(None);
    }
    if forced
        || config
            .scan_threshold_bytes()
            .is_some_and(|threshold| scan_bytes() >= threshold)
    {
        Placement::Distributed
    } else {
        Placement::Local(None)
    }
}

/// Why a statement placed on the cluster did not go there.
#[derive(Debug)]
pub enum NotDistributed {
    /// It runs on the gateway instead; the text is the NOTICE.
    RunLocally(String),
    /// It fails (the scheduler is unreachable and `on_unavailable = "error"`).
    Fail(crate::error::PgError),
}

/// The cluster when this build has no Ballista client: `[engine.distributed]` is
/// refused at start-up, so no value of it ever exists.
#[cfg(not(feature = "distributed"))]
pub enum Cluster {}

#[cfg(not(feature = "distributed"))]
impl Cluster {
    pub fn config(&self) -> &DistributedConfig {
        match *self {}
    }

    pub async fn launch(
        &self,
        _: &super::PhysicalQuery,
        _: &tokio::runtime::Handle,
    ) -> Result<super::execute::JobWork, NotDistributed> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(threshold_mb: Option<u64>, routes: &[DistributedRoute]) -> DistributedConfig {
        let mut c: DistributedConfig =
            toml::from_str("scheduler = \"http://s:50050\"").expect("config");
        c.scan_threshold_mb = match threshold_mb {
            Some(mb) => crate::config::ScanThreshold::Mb(mb),
            None => crate::config::ScanThreshold::Word("never".into()),
        };
        c.routes = routes.to_vec();
        c
    }

    #[test]
    fn the_session_setting_parses() {
        assert_eq!(
            EngineChoice::parse(" Distributed "),
            Some(EngineChoice::Distributed)
        );
        assert_eq!(EngineChoice::parse("LOCAL"), Some(EngineChoice::Local));
        assert_eq!(EngineChoice::parse("auto"), Some(EngineChoice::Auto));
        assert_eq!(EngineChoice::parse("spark"), None);
    }

    #[test]
    fn placement_follows_choice_threshold_and_routes() {
        use DistributedRoute::{Queries, Refreshes};
        use EngineChoice::{Auto, Distributed, Local};
        let mb = 1 << 20;
        let c = config(Some(10), &[Queries]);
        assert_eq!(
            place(Some(&c), Auto, Queries, || 10 * mb, || true),
            Placement::Distributed
        );
        assert_eq!(
            place(Some(&c), Auto, Queries, || 10 * mb - 1, || true),
            Placement::Local(None)
        );
        assert_eq!(
            place(Some(&c), Local, Queries, || 100 * mb, || true),
            Placement::Local(None)
        );
        assert_eq!(
            place(Some(&c), Distributed, Queries, || 0, || true),
            Placement::Distributed
        );
        // Nothing to distribute: no NOTICE even when asked.
        assert_eq!(
            place(Some(&c), Distributed, Queries, || 0, || false),
            Placement::Local(None)
        );
        // A route that is not enabled.
        assert_eq!(
            place(Some(&c), Auto, Refreshes, || 100 * mb, || true),
            Placement::Local(None)
        );
        assert!(matches!(
            place(Some(&c), Distributed, Refreshes, || 0, || true),
            Placement::Local(Some(_))
        ));
        // No threshold: only sessions that ask.
        let c = config(None, &[Queries]);
        assert_eq!(
            place(Some(&c), Auto, Queries, || u64::MAX, || true),
            Placement::Local(None)
        );
        // Not configured.
        assert_eq!(
            place(None, Auto, Queries, || u64::MAX, || true),
            Placement::Local(None)
        );
        assert!(matches!(
            place(None, Distributed, Queries, || 1, || true),
            Placement::Local(Some(n)) if n.contains("[engine.distributed]")
        ));
    }
}
