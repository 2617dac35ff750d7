//! `[cluster]`: gateways behind one load balancer serving as one service.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What a gateway needs to know to act as one of several. Views and job runs are
/// shared through their storage without this section; it adds cancel requests that
/// reach the gateway holding the session, and result-cache invalidations that reach
/// every gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This gateway's number (1–255), different on every gateway: it is part of
    /// every cancel key this gateway hands out, so a cancel arriving at another
    /// gateway is passed on to this one.
    pub gateway_id: u8,
    /// Every gateway by number: the address (`host:port` of its PostgreSQL
    /// listener, as the other gateways reach it) cancel requests are passed on to.
    /// This gateway's own entry may be present; it is never used.
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    /// Where gateways publish the tables their clients wrote, so each drops its
    /// cached results for them: a directory every gateway mounts, or
    /// `s3://bucket/prefix`. Default: `materialized_views.storage`.
    pub storage: Option<String>,
    /// How often a gateway publishes the writes it saw and reads the others'
    /// (milliseconds). A write through one gateway reaches the others' result
    /// caches within about twice this, plus the storage's latency.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

fn default_poll_ms() -> u64 {
    1000
}

impl ClusterConfig {
    /// The peers as (gateway number, address), checked.
    pub fn peer_addresses(&self) -> Result<BTreeMap<u8, String>, (String, String)> {
        let mut out = BTreeMap::new();
        for (id, address) in &self.peers {
            let key = || format!("peers.{id}");
            let n: u8 = id
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| (key(), "gateway numbers are 1 to 255".to_string()))?;
            let (host, port) = address.rsplit_once(':').ok_or_else(|| {
                (
                    key(),
                    format!("`{address}` is not host:port (e.g. 10.0.0.12:5439)"),
                )
            })?;
            if host.is_empty() || !port.parse::<u16>().is_ok_and(|p| p != 0) {
                return Err((
                    key(),
                    format!("`{address}` is not host:port (e.g. 10.0.0.12:5439)"),
                ));
            }
            out.insert(n, address.clone());
        }
        Ok(out)
    }

    pub(super) fn validate(&self, views_storage: Option<&str>) -> Result<(), (String, String)> {
        if self.gateway_id == 0 {
            return Err(("gateway_id".into(), "gateway numbers are 1 to 255".into()));
        }
        self.peer_addresses()?;
        if !(50..=60_000).contains(&self.poll_ms) {
            return Err(("poll_ms".into(), "from 50 to 60000 milliseconds".into()));
        }
        match self.storage.as_deref().or(views_storage) {
            Some(s) => super::cache::check_storage(s).map_err(|m| ("storage".to_string(), m)),
            None => Err((
                "storage".into(),
                "set it (a directory every gateway mounts, or s3://bucket/prefix), or set materialized_views.storage".into(),
            )),
        }
    }
}
