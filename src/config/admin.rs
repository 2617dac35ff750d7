//! `[admin]` (the HTTP admin listener) and `[query_groups]`.

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP listener: `/metrics` (Prometheus), `/livez`,
    /// `/readyz` and the dashboard. Off when absent.
    pub listen: Option<String>,
    /// Serve HTTPS with the server's certificate (`server.tls`). Defaults to on
    /// unless `listen` is a loopback address; the dashboard asks for credentials,
    /// which never cross a network in plaintext: on a non-loopback address
    /// `tls = false` is refused.
    pub tls: Option<bool>,
}

impl AdminConfig {
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        let Some(listen) = &self.listen else {
            return Ok(None);
        };
        listen
            .parse()
            .map(Some)
            .map_err(|e| format!("`{listen}` is not a socket address such as 127.0.0.1:9187 ({e})"))
    }

    /// Whether the listener serves HTTPS.
    pub fn serves_tls(&self) -> bool {
        let loopback = self
            .listen_addr()
            .ok()
            .flatten()
            .is_some_and(|a| a.ip().is_loopback());
        self.tls.unwrap_or(!loopback)
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let addr = self
            .listen_addr()
            .map_err(|m| ("admin.listen".to_owned(), m))?;
        if let Some(addr) = addr
            && !addr.ip().is_loopback()
            && self.tls == Some(false)
        {
            return Err((
                "admin.tls".into(),
                "cannot be false on a non-loopback address: the dashboard's credentials would cross the network in plaintext".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryGroupsConfig {
    /// Keep statistics per query group (`sluice.query_groups`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Most groups kept; past it the tenth with the least total time is dropped.
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
    /// Label forwarding sessions' upstream work with its query group
    /// (`sluice_<fingerprint>`), so the warehouse's own views show Sluice's groups.
    #[serde(default)]
    pub label_upstream: bool,
    /// The statement that labels an upstream session; `{label}` is replaced.
    /// Redshift's `query_group` by default; a PostgreSQL upstream can use
    /// `SET application_name TO '{label}'`.
    #[serde(default = "default_label_statement")]
    pub label_statement: String,
}

impl Default for QueryGroupsConfig {
    fn default() -> Self {
        QueryGroupsConfig {
            enabled: true,
            max_groups: default_max_groups(),
            label_upstream: false,
            label_statement: default_label_statement(),
        }
    }
}

impl QueryGroupsConfig {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if !(100..=1_000_000).contains(&self.max_groups) {
            return Err((
                "query_groups.max_groups".into(),
                "from 100 to 1000000".into(),
            ));
        }
        if self.label_upstream && !self.label_statement.contains("{label}") {
            return Err((
                "query_groups.label_statement".into(),
                "must contain {label}, where the query group goes".into(),
            ));
        }
        Ok(())
    }
}

fn default_label_statement() -> String {
    "SET query_group TO '{label}'".into()
}

fn default_true() -> bool {
    true
}

fn default_max_groups() -> usize {
    5000
}
