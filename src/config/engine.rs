//! `[engine]`: the lake engine's (DataFusion's) memory, spilling, and what sessions
//! may change of it.

use std::path::PathBuf;

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
    /// The memory all lake queries together may hold, in MiB (DataFusion's memory
    /// pool): a number, or `"unlimited"`. Default: half of the machine's memory (or
    /// of the cgroup's `memory.max`, when lower), decided at start-up.
    pub memory_limit_mb: Option<MemoryLimit>,
    /// How the limit is shared between a statement's operators.
    #[serde(default)]
    pub memory_pool: PoolKind,
    /// Where sorts, aggregates and joins that can spill write their temporary files
    /// (created at start). Default: `sluice-spill` under the OS temp directory.
    pub spill_dir: Option<PathBuf>,
    /// The most the spill files of all statements together may take on disk, in MiB;
    /// past it a statement fails with 53400.
    #[serde(default = "default_spill_max_mb")]
    pub spill_max_mb: u64,
    /// `[engine.distributed]`: big lake statements on a Ballista cluster.
    pub distributed: Option<super::DistributedConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            user_settable: default_user_settable(),
            memory_limit_mb: None,
            memory_pool: PoolKind::default(),
            spill_dir: None,
            spill_max_mb: default_spill_max_mb(),
            distributed: None,
        }
    }
}

/// `engine.memory_limit_mb`: MiB, or the word `unlimited`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum MemoryLimit {
    Mb(u64),
    Word(String),
}

impl MemoryLimit {
    /// MiB, or `None` for no limit (checked by `validate`).
    pub fn mb(&self) -> Option<u64> {
        match self {
            MemoryLimit::Mb(mb) => Some(*mb),
            MemoryLimit::Word(_) => None,
        }
    }
}

/// `engine.memory_pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// DataFusion's `FairSpillPool`: operators that can spill share what the others
    /// leave equally, so one big sort cannot starve the rest (the default).
    #[default]
    Fair,
    /// DataFusion's `GreedyMemoryPool`: first come, first served.
    Greedy,
}

/// DataFusion's own default (100 GiB).
const DEFAULT_SPILL_MAX_MB: u64 = 100 * 1024;

fn default_spill_max_mb() -> u64 {
    DEFAULT_SPILL_MAX_MB
}

/// The most `memory_limit_mb` may say (1 PiB): beyond it the number is a typo.
const MAX_MB: u64 = 1 << 30;

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

    /// Whether `memory_limit_mb = "unlimited"` was written.
    pub fn unlimited_memory(&self) -> bool {
        matches!(self.memory_limit_mb, Some(MemoryLimit::Word(_)))
    }

    /// The spill directory as configured (relative paths: to the config file), or
    /// `sluice-spill` under the OS temp directory.
    pub fn spill_dir(&self, resolve: impl Fn(&std::path::Path) -> PathBuf) -> PathBuf {
        match &self.spill_dir {
            Some(p) => resolve(p),
            None => std::env::temp_dir().join("sluice-spill"),
        }
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        match &self.memory_limit_mb {
            Some(MemoryLimit::Word(w)) if !w.eq_ignore_ascii_case("unlimited") => {
                return Err((
                    "memory_limit_mb".into(),
                    format!("`{w}` is neither a number of MiB nor \"unlimited\""),
                ));
            }
            Some(MemoryLimit::Mb(0)) => {
                return Err((
                    "memory_limit_mb".into(),
                    "must be at least 1 (write \"unlimited\" for no limit; omit it for half of the machine's memory)".into(),
                ));
            }
            Some(MemoryLimit::Mb(mb)) if *mb > MAX_MB => {
                return Err((
                    "memory_limit_mb".into(),
                    format!("{mb} MiB is more than any machine has (at most {MAX_MB})"),
                ));
            }
            _ => {}
        }
        if self.spill_max_mb == 0 || self.spill_max_mb > MAX_MB {
            return Err((
                "spill_max_mb".into(),
                format!("must be from 1 to {MAX_MB} MiB"),
            ));
        }
        if let Some(dir) = &self.spill_dir
            && dir.as_os_str().is_empty()
        {
            return Err(("spill_dir".into(), "must not be empty".into()));
        }
        if let Some(d) = &self.distributed {
            if !cfg!(feature = "distributed") {
                return Err((
                    "distributed".into(),
                    "this Sluice was built without distributed lake queries; build it with `--features distributed` (the Docker image has them)".into(),
                ));
            }
            d.validate()
                .map_err(|(k, m)| (format!("distributed.{k}"), m))?;
        }
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
                user_settable: vec!["sluice.x".into()],
                ..EngineConfig::default()
            }
            .validate()
            .is_err()
        );
    }

    fn engine(toml: &str) -> Result<EngineConfig, String> {
        let c: EngineConfig = toml::from_str(toml).map_err(|e| e.to_string())?;
        c.validate().map_err(|(k, m)| format!("{k}: {m}"))?;
        Ok(c)
    }

    #[test]
    fn memory_keys_parse_and_validate() {
        let c = engine("").expect("defaults");
        assert_eq!(c.memory_limit_mb, None);
        assert_eq!(c.memory_pool, PoolKind::Fair);
        assert_eq!(c.spill_max_mb, 100 * 1024);
        let c = engine("memory_limit_mb = 512\nmemory_pool = \"greedy\"\nspill_max_mb = 10")
            .expect("valid");
        assert_eq!(c.memory_limit_mb.and_then(|m| m.mb()), Some(512));
        assert_eq!(c.memory_pool, PoolKind::Greedy);
        let c = engine("memory_limit_mb = \"Unlimited\"").expect("valid");
        assert!(c.unlimited_memory());
        for (bad, key) in [
            ("memory_limit_mb = 0", "memory_limit_mb"),
            ("memory_limit_mb = \"lots\"", "memory_limit_mb"),
            ("spill_max_mb = 0", "spill_max_mb"),
            ("spill_dir = \"\"", "spill_dir"),
        ] {
            let e = engine(bad).expect_err(bad);
            assert!(e.starts_with(key), "{bad}: {e}");
        }
        assert!(engine("memory_pool = \"lifo\"").is_err());
        assert!(engine("memory_limit_mb = -1").is_err());
        let dir = EngineConfig::default().spill_dir(|p| p.to_owned());
        assert!(dir.ends_with("sluice-spill"), "{}", dir.display());
    }
}
