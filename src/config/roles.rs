//! Roles and role mapping: `[[roles]]` (what holders may do) and `[[role_mapping]]`
//! (which IdP groups, app roles, users or claims grant which roles), with their
//! validation. They are the part of the config that reloads.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use super::{Config, ConfigError};

/// Role mapping and role policy: reloaded on SIGHUP or when the config file changes;
/// sessions keep the rules they logged in with.
#[derive(Debug, Clone)]
pub struct AccessRules {
    pub role_mapping: Vec<RoleMappingRule>,
    pub roles: Vec<RoleConfig>,
    pub base_role: String,
}

/// A `[[roles]]` entry: what holders of the role may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub name: String,
    /// Lake tables the role may read and see: `database.table` patterns with `*`
    /// wildcards (`nyc.*`, `*.trips`, `*`). Names compare case-insensitively.
    #[serde(default)]
    pub read: Vec<String>,
    /// Roles whose grants this role includes (no cycles).
    #[serde(default)]
    pub includes: Vec<String>,
    /// Whether the role may run statements that write (forwarded upstreams).
    #[serde(default)]
    pub write: bool,
    /// Whether holders may see gateway internals (`SHOW sluice.pools`,
    /// `SHOW sluice.credentials`: upstream sessions and other users' database names).
    #[serde(default)]
    pub admin: bool,
    /// Most rows one statement may return to a holder of this role.
    pub row_limit: Option<u64>,
    /// How long this role's read-only results are served from the result cache
    /// (overrides `cache.result_ttl_secs`; 0 = never cached). With several roles the
    /// shortest applies.
    pub result_cache_ttl_secs: Option<u64>,
    /// Whether holders may create, refresh and drop gateway materialized views.
    #[serde(default)]
    pub manage_materialized_views: bool,
    /// The database user this role becomes on Redshift, with `{user}` replaced by the
    /// login name, e.g. `"aad:{user}"` (used when statements are forwarded).
    pub redshift_user: Option<String>,
    /// Redshift groups (`DbGroups`) holders of this role get; lower case, as the
    /// GetClusterCredentials API requires.
    #[serde(default)]
    pub redshift_groups: Vec<String>,
    /// Session hygiene for holders of this role, overriding `[server]`'s (0 = off;
    /// with several roles the shortest non-zero value applies): seconds idle
    /// outside a transaction (57P05), idle inside one (25P03), and the most a
    /// session may live (it ends when next idle outside a transaction).
    pub idle_session_timeout_secs: Option<u64>,
    pub idle_in_transaction_session_timeout_secs: Option<u64>,
    pub max_session_age_secs: Option<u64>,
    /// Most concurrent sessions holding this role directly (53300 past it).
    pub max_connections: Option<usize>,
    /// The percentage of `engine.memory_limit_mb` the lake statements of all
    /// sessions acting under this role may hold together (1–100; default 100). A
    /// session with several roles gets the most generous share among them and the
    /// roles they include; a role that reads lake tables and sets no share counts
    /// as 100.
    pub memory_share: Option<u64>,
}

/// One ordered `[[role_mapping]]` rule: every condition given must hold; the first
/// matching rule decides the user's roles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleMappingRule {
    /// A group object id in the `groups` claim.
    pub group: Option<String>,
    /// An app-role value in the `roles` claim.
    pub app_role: Option<String>,
    /// The login name (case-insensitive).
    pub username: Option<String>,
    /// The tenant (`tid`).
    pub tenant: Option<String>,
    /// Any claim, with `value`: equal to it, or containing it when the claim is a list.
    pub claim: Option<String>,
    pub value: Option<String>,
    pub roles: Vec<String>,
}

impl Config {
    /// Role names must be unique, every referenced role defined (the base role may be
    /// left implicit: it then grants nothing), and `includes` free of cycles.
    pub(super) fn validate_roles(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let mut names = BTreeSet::new();
        for (i, r) in self.roles.iter().enumerate() {
            if r.name.is_empty() || !names.insert(r.name.as_str()) {
                return Err(invalid(
                    format!("roles[{i}].name"),
                    format!("role `{}` is empty or defined twice", r.name),
                ));
            }
            if r.max_connections == Some(0) {
                return Err(invalid(
                    format!("roles[{i}].max_connections"),
                    "must be at least 1 (omit it for no limit)".into(),
                ));
            }
            if let Some(share) = r.memory_share {
                if !(1..=100).contains(&share) {
                    return Err(invalid(
                        format!("roles[{i}].memory_share"),
                        format!(
                            "{share} is not a percentage of engine.memory_limit_mb from 1 to 100"
                        ),
                    ));
                }
                if self.engine.unlimited_memory() {
                    return Err(invalid(
                        format!("roles[{i}].memory_share"),
                        "is a share of engine.memory_limit_mb, which is \"unlimited\": set a limit, or drop the share".into(),
                    ));
                }
            }
            if r.row_limit == Some(0) {
                return Err(invalid(
                    format!("roles[{i}].row_limit"),
                    "must be at least 1 (omit it for no limit)".into(),
                ));
            }
            if let Some(t) = &r.redshift_user
                && t.trim().is_empty()
            {
                return Err(invalid(
                    format!("roles[{i}].redshift_user"),
                    "must not be empty".into(),
                ));
            }
            for g in &r.redshift_groups {
                if g.is_empty()
                    || g.chars()
                        .any(|c| c.is_ascii_uppercase() || c.is_whitespace())
                {
                    return Err(invalid(
                        format!("roles[{i}].redshift_groups"),
                        format!("`{g}`: Redshift group names must be lower case without spaces"),
                    ));
                }
            }
            for p in &r.read {
                if p.is_empty() || p.split('.').count() > 2 {
                    return Err(invalid(
                        format!("roles[{i}].read"),
                        format!("`{p}` is not a `database.table` pattern"),
                    ));
                }
            }
        }
        let defined = |n: &str| names.contains(n) || n == self.auth.base_role;
        for (i, r) in self.roles.iter().enumerate() {
            for inc in &r.includes {
                if !defined(inc) {
                    return Err(invalid(
                        format!("roles[{i}].includes"),
                        format!("role `{inc}` is not defined in [[roles]]"),
                    ));
                }
            }
        }
        for (i, u) in self.auth.users.iter().enumerate() {
            for r in &u.roles {
                if !defined(r) {
                    return Err(invalid(
                        format!("auth.users[{i}].roles"),
                        format!("role `{r}` is not defined in [[roles]]"),
                    ));
                }
            }
        }
        for (i, m) in self.role_mapping.iter().enumerate() {
            for r in &m.roles {
                if !defined(r) {
                    return Err(invalid(
                        format!("role_mapping[{i}].roles"),
                        format!("role `{r}` is not defined in [[roles]]"),
                    ));
                }
            }
        }
        // Cycle check: depth-first over `includes`.
        fn visit<'a>(
            name: &'a str,
            roles: &'a [RoleConfig],
            stack: &mut Vec<&'a str>,
        ) -> Result<(), String> {
            if stack.contains(&name) {
                stack.push(name);
                return Err(stack.join(" → "));
            }
            stack.push(name);
            if let Some(r) = roles.iter().find(|r| r.name == name) {
                for inc in &r.includes {
                    visit(inc, roles, stack)?;
                }
            }
            stack.pop();
            Ok(())
        }
        for (i, r) in self.roles.iter().enumerate() {
            visit(&r.name, &self.roles, &mut Vec::new()).map_err(|cycle| {
                invalid(
                    format!("roles[{i}].includes"),
                    format!("roles include each other in a cycle: {cycle}"),
                )
            })?;
        }
        Ok(())
    }
}
