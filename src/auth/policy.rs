//! Role policy: what a session's roles let it read and see.
//!
//! A session's roles (local account roles, or the roles its token mapped to) are
//! expanded through `includes` and merged into one [`Policy`]. The engine gives each
//! distinct policy its own view of the catalog, so a table a role may not read is
//! absent from every listing (`\dt`, pgjdbc `getTables`, `information_schema`) and a
//! query naming it fails with 42501.

use std::collections::BTreeSet;

use crate::config::RoleConfig;

/// The merged grants of a set of roles. Equal policies share one catalog view.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Policy {
    /// `(database pattern, table pattern)`, lower case, `*` wildcards.
    read: BTreeSet<(String, String)>,
    pub write: bool,
    /// May see gateway internals (pools, credential cache).
    pub admin: bool,
    /// Most rows a statement may return; `None` = no limit.
    pub row_limit: Option<u64>,
    /// The roles' own result-cache TTL (the shortest they set); `None`: the default.
    pub result_cache_ttl_secs: Option<u64>,
    /// May create, refresh and drop gateway materialized views.
    pub manage_materialized_views: bool,
    /// The role whose memory share the session's lake statements count against
    /// (the most generous of its roles); `None`: only `engine.memory_limit_mb`.
    pub memory: Option<MemoryShare>,
}

/// A role's share of the lake engine's memory: every session acting under `role`
/// counts against one budget of `percent` % of `engine.memory_limit_mb`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemoryShare {
    pub role: String,
    pub percent: u8,
}

impl Policy {
    /// Merges `roles` (and everything they include) from the configured `[[roles]]`.
    /// Unknown names grant nothing (config validation rejects them up front).
    pub fn resolve(roles: &[String], defined: &[RoleConfig]) -> Policy {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = roles.iter().map(String::as_str).collect();
        let mut policy = Policy::default();
        let mut limits = Vec::new();
        let mut unlimited_reader = false;
        let mut shares: Vec<MemoryShare> = Vec::new();
        let mut unshared_reader = false;
        while let Some(name) = stack.pop() {
            if !seen.insert(name.to_owned()) {
                continue;
            }
            let Some(role) = defined.iter().find(|r| r.name == name) else {
                continue;
            };
            for pattern in &role.read {
                let p = pattern.to_lowercase();
                let (db, table) = p.split_once('.').unwrap_or((p.as_str(), "*"));
                policy.read.insert((db.to_owned(), table.to_owned()));
            }
            policy.write |= role.write;
            policy.admin |= role.admin;
            policy.manage_materialized_views |= role.manage_materialized_views;
            if let Some(ttl) = role.result_cache_ttl_secs {
                policy.result_cache_ttl_secs =
                    Some(policy.result_cache_ttl_secs.map_or(ttl, |t| t.min(ttl)));
            }
            match role.memory_share {
                Some(p) => shares.push(MemoryShare {
                    role: role.name.clone(),
                    percent: p.clamp(1, 100) as u8,
                }),
                None if !role.read.is_empty() => unshared_reader = true,
                None => {}
            }
            match role.row_limit {
                Some(l) => limits.push(l),
                None if !role.read.is_empty() => unlimited_reader = true,
                None => {}
            }
            stack.extend(role.includes.iter().map(String::as_str));
        }
        // Grants add up: the most generous limit among the roles applies.
        policy.row_limit = if unlimited_reader {
            None
        } else {
            limits.into_iter().max()
        };
        // Memory too: the most generous share (ties: the first role name, so the
        // same roles always count against the same budget); 100 % is no share.
        policy.memory = if unshared_reader {
            None
        } else {
            shares
                .into_iter()
                .min_by(|a, b| b.percent.cmp(&a.percent).then(a.role.cmp(&b.role)))
                .filter(|s| s.percent < 100)
        };
        policy
    }

    /// A policy granting everything (used by internal tools and benchmarks).
    pub fn all() -> Policy {
        let mut p = Policy::default();
        p.read.insert(("*".into(), "*".into()));
        p.write = true;
        p.admin = true;
        p.manage_materialized_views = true;
        p
    }

    pub fn can_read(&self, database: &str, table: &str) -> bool {
        let (db, t) = (database.to_lowercase(), table.to_lowercase());
        self.read
            .iter()
            .any(|(dp, tp)| glob(dp, &db) && glob(tp, &t))
    }

    /// Whether any table of `database` could be readable (before looking at its tables).
    pub fn may_read_in(&self, database: &str) -> bool {
        let db = database.to_lowercase();
        self.read.iter().any(|(dp, _)| glob(dp, &db))
    }
}

pub use crate::config::values::glob;

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, read: &[&str], includes: &[&str], row_limit: Option<u64>) -> RoleConfig {
        RoleConfig {
            name: name.into(),
            read: read.iter().map(|s| s.to_string()).collect(),
            includes: includes.iter().map(|s| s.to_string()).collect(),
            write: false,
            admin: false,
            row_limit,
            result_cache_ttl_secs: None,
            manage_materialized_views: false,
            redshift_user: None,
            redshift_groups: vec![],
            idle_session_timeout_secs: None,
            idle_in_transaction_session_timeout_secs: None,
            max_session_age_secs: None,
            max_connections: None,
            memory_share: None,
        }
    }

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("nyc", "nyc"));
        assert!(!glob("nyc", "nycx"));
        assert!(glob("trip*", "trips"));
        assert!(glob("*_raw", "taxi_raw"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn roles_merge_through_includes() {
        let defined = vec![
            role("zones", &["nyc.zones"], &[], Some(10)),
            role("sales", &["sales"], &["zones"], Some(1000)),
            role("base", &[], &[], None),
        ];
        let p = Policy::resolve(&["sales".into()], &defined);
        assert!(p.can_read("NYC", "Zones"));
        assert!(p.can_read("sales", "anything"));
        assert!(!p.can_read("nyc", "trips"));
        assert_eq!(p.row_limit, Some(1000));
        let base = Policy::resolve(&["base".into()], &defined);
        assert!(!base.can_read("nyc", "zones"));
        assert!(!base.may_read_in("nyc"));
        assert!(Policy::all().can_read("x", "y"));
    }

    #[test]
    fn the_most_generous_memory_share_applies() {
        let share = |name: &str, read: &[&str], includes: &[&str], share: Option<u64>| RoleConfig {
            memory_share: share,
            ..role(name, read, includes, None)
        };
        let defined = vec![
            share("small", &["nyc.*"], &[], Some(10)),
            share("medium", &["sales.*"], &[], Some(40)),
            share("other40", &["x.*"], &[], Some(40)),
            share("free", &["nyc.*"], &[], None),
            share("nothing", &[], &[], None),
            share("includes_free", &[], &["free"], Some(20)),
            share("full", &[], &[], Some(100)),
        ];
        let of = |roles: &[&str]| {
            Policy::resolve(
                &roles.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                &defined,
            )
            .memory
            .map(|m| (m.role, m.percent))
        };
        assert_eq!(of(&["small"]), Some(("small".into(), 10)));
        assert_eq!(of(&["small", "medium"]), Some(("medium".into(), 40)));
        assert_eq!(of(&["other40", "medium"]), Some(("medium".into(), 40)));
        // A role granting reads without a share, directly or included, lifts it.
        assert_eq!(of(&["small", "free"]), None);
        assert_eq!(of(&["includes_free"]), None);
        // A role that reads nothing and sets nothing does not.
        assert_eq!(of(&["small", "nothing"]), Some(("small".into(), 10)));
        assert_eq!(of(&["small", "full"]), None);
        assert_eq!(of(&["nothing"]), None);
    }
}
