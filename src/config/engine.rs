//! `[engine]`: what sessions may change of the lake engine (DataFusion).

use serde::Deserialize;

/// The engine options (`datafusion.*` settings) a role without `admin = true` may
/// `SET`. Admin roles may set any. The default allows only options that change how
/// EXPLAIN and values are displayed, nothing that changes resource use (not
/// `target_partitions`, `batch_size`, `optimizer.*`, memory or spilling).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// `datafusion.*` setting names, `*` wildcards (`datafusion.explain.*`).
    #[serde(default = "default_user_settable")]
    pub user_settable: Vec<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            user_settable: default_user_settable(),
        }
    }
}

/// Display-only options: EXPLAIN's output and the formatting of values.
pub const DEFAULT_USER_SETTABLE: &[&str] = &["datafusion.explain.*", "datafusion.format.*"];

fn default_user_settable() -> Vec<String> {
    DEFAULT_USER_SETTABLE
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl EngineConfig {
    /// Whether a non-admin session may set `name` (lower case).
    pub fn user_may_set(&self, name: &str) -> bool {
        self.user_settable
            .iter()
            .any(|p| super::values::glob(&p.to_lowercase(), name))
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        for (i, p) in self.user_settable.iter().enumerate() {
            if !p.to_lowercase().starts_with("datafusion.") {
                return Err((
                    format!("user_settable[{i}]"),
                    format!("`{p}` is not a `datafusion.*` setting name or pattern"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_allows_display_options_only() {
        let c = EngineConfig::default();
        assert!(c.user_may_set("datafusion.explain.format"));
        assert!(c.user_may_set("datafusion.format.null"));
        for refused in [
            "datafusion.execution.batch_size",
            "datafusion.execution.target_partitions",
            "datafusion.optimizer.max_passes",
            "datafusion.runtime.memory_limit",
        ] {
            assert!(!c.user_may_set(refused), "{refused}");
        }
        assert!(
            EngineConfig {
                user_settable: vec!["sluice.x".into()]
            }
            .validate()
            .is_err()
        );
    }
}
