//! `[engine.distributed]`: lake statements run on an Apache DataFusion Ballista
//! cluster (its scheduler and executors), planned in the gateway.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedConfig {
    /// The Ballista scheduler's gRPC address: `http://host:50050`, or `https://…`
    /// when a TLS proxy fronts it (Ballista's own servers speak plaintext gRPC).
    pub scheduler: String,
    /// PEM CA bundle to trust for an `https://` scheduler (default: the system's
    /// trust store).
    pub ca_file: Option<PathBuf>,
    /// gRPC metadata sent with every scheduler call (an auth header for the proxy in
    /// front of it, a tenant id). Values are never logged.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// A lake statement whose planned scan (file bytes after partition pruning) is at
    /// least this many MiB runs distributed (sessions in `auto`, the default), or
    /// `"never"`: only sessions that `SET sluice.engine = 'distributed'` do.
    #[serde(default)]
    pub scan_threshold_mb: ScanThreshold,
    /// Which work may run distributed: `"queries"` (client lake statements) and
    /// `"refreshes"` (materialized view refreshes and scheduled jobs).
    #[serde(default = "default_routes")]
    pub routes: Vec<DistributedRoute>,
    /// When the scheduler cannot be reached or refuses the job: `"error"` (the
    /// statement fails with 08001) or `"local"` (it runs on the gateway, with a
    /// NOTICE).
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// Partitions each distributed stage is planned with (Ballista's default 16):
    /// about the executors' total cores.
    #[serde(default = "default_partitions")]
    pub partitions: usize,
    /// How long connecting to the scheduler or an executor may take, in ms.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

/// `scan_threshold_mb`: MiB, or the word `never`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ScanThreshold {
    Mb(u64),
    Word(String),
}

/// The default threshold, chosen from `cargo bench --bench lake --features
/// distributed -- --sections distributed` (README "Lake statements on a Ballista
/// cluster"): a job's fixed cost is about 5% of a gateway's scan this big.
pub const DEFAULT_SCAN_THRESHOLD_MB: u64 = 4096;

impl Default for ScanThreshold {
    fn default() -> Self {
        ScanThreshold::Mb(DEFAULT_SCAN_THRESHOLD_MB)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistributedRoute {
    Queries,
    Refreshes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    Error,
    #[default]
    Local,
}

fn default_routes() -> Vec<DistributedRoute> {
    vec![DistributedRoute::Queries]
}

fn default_partitions() -> usize {
    16
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}

impl DistributedConfig {
    pub fn allows(&self, route: DistributedRoute) -> bool {
        self.routes.contains(&route)
    }

    /// The threshold in bytes; `None` for `"never"`.
    pub fn scan_threshold_bytes(&self) -> Option<u64> {
        match self.scan_threshold_mb {
            ScanThreshold::Mb(mb) => Some(mb.saturating_mul(1 << 20)),
            ScanThreshold::Word(_) => None,
        }
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let url = url::Url::parse(&self.scheduler).map_err(|e| {
            (
                "scheduler".to_string(),
                format!(
                    "`{}` is not a URL ({e}); write http://host:50050",
                    self.scheduler
                ),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err((
                "scheduler".into(),
                format!(
                    "`{}` must be http://host:port or https://host:port",
                    self.scheduler
                ),
            ));
        }
        if self.ca_file.is_some() && url.scheme() != "https" {
            return Err((
                "ca_file".into(),
                "only applies to an https:// scheduler".into(),
            ));
        }
        for name in self.metadata.keys() {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
                && !name.ends_with("-bin");
            if !valid {
                return Err((
                    format!("metadata.{name}"),
                    "gRPC metadata names are lower-case ASCII letters, digits, '-', '_' or '.' (and not binary '-bin' ones)".into(),
                ));
            }
        }
        if self
            .metadata
            .values()
            .any(|v| v.bytes().any(|b| !(0x20..0x7f).contains(&b)))
        {
            return Err(("metadata".into(), "values must be printable ASCII".into()));
        }
        if let ScanThreshold::Word(w) = &self.scan_threshold_mb
            && !w.eq_ignore_ascii_case("never")
        {
            return Err((
                "scan_threshold_mb".into(),
                format!("`{w}` is neither a number of MiB nor \"never\""),
            ));
        }
        if self.routes.is_empty() {
            return Err((
                "routes".into(),
                "name at least one of \"queries\", \"refreshes\" (or remove [engine.distributed])"
                    .into(),
            ));
        }
        if !(1..=4096).contains(&self.partitions) {
            return Err(("partitions".into(), "must be from 1 to 4096".into()));
        }
        if !(100..=600_000).contains(&self.connect_timeout_ms) {
            return Err((
                "connect_timeout_ms".into(),
                "must be from 100 to 600000".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<DistributedConfig, String> {
        let c: DistributedConfig = toml::from_str(toml).map_err(|e| e.to_string())?;
        c.validate().map_err(|(k, m)| format!("{k}: {m}"))?;
        Ok(c)
    }

    #[test]
    fn keys_parse_with_defaults_and_validate() {
        let c = parse("scheduler = \"http://sched:50050\"").expect("minimal");
        assert_eq!(c.routes, vec![DistributedRoute::Queries]);
        assert_eq!(c.on_unavailable, OnUnavailable::Local);
        assert_eq!(
            c.scan_threshold_bytes(),
            Some(DEFAULT_SCAN_THRESHOLD_MB << 20)
        );
        assert_eq!(c.partitions, 16);
        let c = parse("scheduler = \"http://s:1\"\nscan_threshold_mb = \"Never\"").expect("never");
        assert_eq!(c.scan_threshold_bytes(), None);
        let c = parse(
            "scheduler = \"https://sched:443\"\nca_file = \"ca.pem\"\nscan_threshold_mb = 2\n\
             routes = [\"queries\", \"refreshes\"]\non_unavailable = \"error\"\n\
             metadata = { authorization = \"Bearer x\" }",
        )
        .expect("full");
        assert_eq!(c.scan_threshold_bytes(), Some(2 << 20));
        assert!(c.allows(DistributedRoute::Refreshes));
        assert_eq!(c.on_unavailable, OnUnavailable::Error);
        for (bad, key) in [
            ("scheduler = \"sched:50050\"", "scheduler"),
            ("scheduler = \"grpc://sched:50050\"", "scheduler"),
            ("scheduler = \"http://s:1\"\nca_file = \"x\"", "ca_file"),
            ("scheduler = \"http://s:1\"\nroutes = []", "routes"),
            ("scheduler = \"http://s:1\"\npartitions = 0", "partitions"),
            (
                "scheduler = \"http://s:1\"\nscan_threshold_mb = \"big\"",
                "scan_threshold_mb",
            ),
            (
                "scheduler = \"http://s:1\"\nmetadata = { \"X-Up\" = \"v\" }",
                "metadata.X-Up",
            ),
            (
                "scheduler = \"http://s:1\"\nmetadata = { k = \"a\\nb\" }",
                "metadata",
            ),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.starts_with(key), "{bad}: {e}");
        }
        assert!(parse("scheduler = \"http://s:1\"\nroutes = [\"views\"]").is_err());
        assert!(parse("scheduler = \"http://s:1\"\non_unavailable = \"retry\"").is_err());
    }
}
