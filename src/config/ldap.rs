//! `[auth.ldap]`: password logins checked against an LDAP directory (OpenLDAP,
//! Active Directory), as Presto/Trino on EMR and PgBouncer offer them.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldaps://host:636` (TLS from the first byte) or `ldap://host:389` (with
    /// `starttls = true`; plaintext LDAP needs `allow_plaintext = true`).
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before anything is sent.
    #[serde(default)]
    pub starttls: bool,
    /// Send binds over an unencrypted `ldap://` connection (passwords in clear on
    /// the network): development and trusted networks only.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// PEM CA bundle for the directory's certificate; default: the system store.
    pub ca_file: Option<PathBuf>,

    /// Direct bind: the user's DN from a pattern, `{user}` replaced by the escaped
    /// login name, e.g. `uid={user},ou=people,dc=example,dc=com` or
    /// `{user}@corp.example.com` (Active Directory UPN bind).
    pub user_bind_pattern: Option<String>,
    /// Search then bind: a service account finds the user's DN first.
    pub bind_dn: Option<String>,
    /// The service account's password from an environment variable or a file
    /// (never in the config itself).
    pub bind_password_env: Option<String>,
    pub bind_password_file: Option<PathBuf>,
    /// Where to search for users, and the filter (`{user}` is escaped).
    pub user_base_dn: Option<String>,
    #[serde(default = "default_user_filter")]
    pub user_filter: String,

    /// Groups: entries under `group_base_dn` matching `group_filter` (`{dn}` is the
    /// user's DN, `{user}` the login name), e.g. `(member={dn})` for groupOfNames.
    pub group_base_dn: Option<String>,
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    /// Or/also: an attribute of the user's entry listing group DNs (`memberOf`).
    pub group_attribute: Option<String>,

    /// TCP connect + TLS handshake, and each LDAP operation.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Directory connections kept open for searches (service account) at most.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// A refused (user, password) pair is refused again without asking the
    /// directory for this long: password sprays and retry loops do not reach it
    /// (and do not lock accounts). 0 turns it off.
    #[serde(default = "default_negative_cache")]
    pub negative_cache_secs: u64,
}

fn default_user_filter() -> String {
    "(uid={user})".into()
}
fn default_group_filter() -> String {
    "(member={dn})".into()
}
fn default_connect_timeout() -> u64 {
    5
}
fn default_timeout() -> u64 {
    10
}
fn default_pool_size() -> usize {
    8
}
fn default_negative_cache() -> u64 {
    10
}

impl LdapConfig {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((k.to_owned(), m.to_owned()));
        let lower = self.url.to_ascii_lowercase();
        let ldaps = lower.starts_with("ldaps://");
        if !ldaps && !lower.starts_with("ldap://") {
            return err("url", "must start with ldaps:// or ldap://");
        }
        if url::Url::parse(&self.url).map_or(true, |u| u.host_str().is_none()) {
            return err("url", "is not a valid LDAP URL with a host");
        }
        if ldaps && self.starttls {
            return err("starttls", "is for ldap:// URLs; ldaps:// is TLS already");
        }
        if !ldaps && !self.starttls && !self.allow_plaintext {
            return err(
                "url",
                "ldap:// sends passwords unencrypted: use ldaps://, or starttls = true (or allow_plaintext = true on a trusted network)",
            );
        }
        match (&self.user_bind_pattern, &self.bind_dn) {
            (Some(_), Some(_)) => {
                return err(
                    "user_bind_pattern",
                    "set either user_bind_pattern (direct bind) or bind_dn (search then bind), not both",
                );
            }
            (None, None) => {
                return err(
                    "user_bind_pattern",
                    "set user_bind_pattern (direct bind) or bind_dn + user_base_dn (search then bind)",
                );
            }
            (Some(p), None) if !p.contains("{user}") => {
                return err("user_bind_pattern", "must contain {user}");
            }
            (None, Some(_)) => {
                if self.user_base_dn.is_none() {
                    return err(
                        "user_base_dn",
                        "is required with bind_dn (search then bind)",
                    );
                }
                if self.bind_password_env.is_some() == self.bind_password_file.is_some() {
                    return err(
                        "bind_password_env",
                        "set exactly one of bind_password_env and bind_password_file",
                    );
                }
                if !self.user_filter.contains("{user}") {
                    return err("user_filter", "must contain {user}");
                }
            }
            _ => {}
        }
        if self.group_base_dn.is_some() && !self.group_filter.contains('{') {
            return err("group_filter", "must contain {dn} or {user}");
        }
        if !(1..=120).contains(&self.connect_timeout_secs) {
            return err("connect_timeout_secs", "from 1 to 120 seconds");
        }
        if !(1..=300).contains(&self.timeout_secs) {
            return err("timeout_secs", "from 1 to 300 seconds");
        }
        if !(1..=1024).contains(&self.pool_size) {
            return err("pool_size", "from 1 to 1024");
        }
        if self.negative_cache_secs > 3600 {
            return err("negative_cache_secs", "at most 3600 seconds");
        }
        Ok(())
    }
}
