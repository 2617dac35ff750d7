//! Engine settings are not the user's to raise: `datafusion.*` settings change how
//! the lake engine spends CPU and memory (`target_partitions`, `batch_size`,
//! `optimizer.*`), so a role without `admin = true` may set only the options
//! `[engine] user_settable` lists; every path that sets one (SET, RESET, `set_config`,
//! startup parameters and `options=-c`) goes through `Settings::set`, which asks
//! [`check_engine_setting`].

use std::sync::Arc;

use crate::config::EngineConfig;
use crate::error::{PgError, SqlState};

/// What one session may set of the engine's options.
#[derive(Debug, Clone)]
pub struct EngineGuard {
    pub admin: bool,
    pub config: Arc<EngineConfig>,
}

/// Whether `name` (a lower-case `datafusion.*` name) may be set to `value` (`None`:
/// back to the default, always allowed) under `guard` (`None`: no restriction), and
/// whether the engine knows the option and accepts the value.
pub fn check_engine_setting(
    guard: Option<&EngineGuard>,
    name: &str,
    value: Option<&str>,
) -> Result<(), PgError> {
    let Some(value) = value else {
        return Ok(());
    };
    if let Some(g) = guard
        && !g.admin
        && !g.config.user_may_set(name)
    {
        return Err(PgError::new(
            SqlState::INSUFFICIENT_PRIVILEGE,
            format!("permission denied to set parameter \"{name}\""),
        )
        .with_hint(
            "lake engine settings are for roles with admin = true; others may set only \
             those listed in the gateway's [engine] user_settable",
        ));
    }
    crate::engine::session_vars::check_engine_option(name, value)
}
