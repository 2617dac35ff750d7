//! Several gateways as one service behind an L4 load balancer.
//!
//! What the gateways share, and how (the deployment guide is `docs/deployment.md`):
//! - **Views and job runs** live in their storage (`materialized_views.storage`);
//!   changes are announced in a [`journal::Journal`] there, and a scheduled tick
//!   runs on the gateway that creates its [`lease`].
//! - **Result-cache invalidations**: the tables a client wrote through one gateway
//!   are published in a journal under `cluster.storage`, and every other gateway
//!   drops its cached results for them (`cache::results`).
//! - **Cancel requests**: a session's process id carries its gateway's number
//!   ([`session_pid`]), so a CancelRequest that the balancer sends to another
//!   gateway is passed on to the right one — PgBouncer's peering, in spirit.
//!
//! This module knows nothing of sessions or caches: it imports only `config` and
//! `wire` (the cancel packet).

pub mod journal;
pub mod lease;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::ClusterConfig;

/// Process ids of clustered gateways have bit 30 set, the gateway's number in
/// bits 22–29 and the session's number in bits 0–21: always positive, and always
/// above the pids of a single gateway (`route::FIRST_SESSION_PID` up to 2^30) and
/// of any real backend (Linux pids stay below 2^22).
const CLUSTER_PID: i32 = 1 << 30;
/// Session numbers per gateway before they wrap.
pub const SESSIONS_PER_GATEWAY: u32 = 1 << 22;

/// The process id of session number `n` (taken modulo 2^22) on gateway `gateway`.
pub fn session_pid(gateway: u8, n: u32) -> i32 {
    CLUSTER_PID | (i32::from(gateway) << 22) | (n % SESSIONS_PER_GATEWAY) as i32
}

/// The gateway a process id was handed out by, when it is a clustered one.
pub fn gateway_of(pid: i32) -> Option<u8> {
    (pid > 0 && pid & CLUSTER_PID != 0).then_some(((pid >> 22) & 0xff) as u8)
}

/// This gateway's name where it records what it did (job runs, leases): host,
/// process, and a random part (two gateways in one process differ too).
pub fn gateway_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into());
    format!(
        "{host}/{}/{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// This gateway's place among its peers.
pub struct Cluster {
    pub gateway_id: u8,
    peers: BTreeMap<u8, String>,
}

impl Cluster {
    pub fn from_config(config: &ClusterConfig) -> Result<Cluster, String> {
        let peers = config
            .peer_addresses()
            .map_err(|(k, m)| format!("cluster.{k}: {m}"))?;
        Ok(Cluster {
            gateway_id: config.gateway_id,
            peers,
        })
    }

    /// Where a cancel for `pid` must be passed on: another gateway's address.
    /// `None` for this gateway's own sessions and for ids no peer handed out.
    pub fn peer_for(&self, pid: i32) -> Option<&str> {
        let gateway = gateway_of(pid)?;
        if gateway == self.gateway_id {
            return None;
        }
        self.peers.get(&gateway).map(String::as_str)
    }
}

/// Passes a cancel for (`pid`, `secret`) on to the gateway at `address`: plaintext,
/// like a client's (it carries no credential but the key itself), with Sluice's
/// peer request code, which the receiver never passes on again.
pub async fn forward_cancel(address: &str, pid: i32, secret: i32) -> std::io::Result<()> {
    let timeout = Duration::from_secs(3);
    let mut tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let packet = crate::wire::frame::encode_cancel(
        crate::wire::frame::PEER_CANCEL_REQUEST_CODE,
        pid,
        secret,
    );
    tokio::time::timeout(timeout, tcp.write_all(&packet))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "send timed out"))??;
    // The peer closes the connection once it has read the request.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(timeout, tcp.read(&mut sink)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_carry_their_gateway() {
        for gateway in [1u8, 2, 17, 255] {
            for n in [0u32, 1, 4_194_303, 4_194_304, u32::MAX] {
                let pid = session_pid(gateway, n);
                assert!(pid > crate::route::FIRST_SESSION_PID, "{pid}");
                assert_eq!(gateway_of(pid), Some(gateway), "{gateway} {n}");
            }
        }
        assert_eq!(session_pid(3, 5), session_pid(3, 5 + SESSIONS_PER_GATEWAY));
        // Ids of a gateway without `[cluster]` (below 2^30) and real pids name none.
        assert_eq!(gateway_of(crate::route::FIRST_SESSION_PID), None);
        assert_eq!(gateway_of((1 << 30) - 1), None);
        assert_eq!(gateway_of(12345), None);
        assert_eq!(gateway_of(-5), None);
    }

    #[test]
    fn a_passed_on_cancel_carries_the_peer_code_and_the_key() {
        use crate::wire::frame;
        let packet = frame::encode_cancel(frame::PEER_CANCEL_REQUEST_CODE, session_pid(2, 7), -5);
        assert_eq!(
            i32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]),
            16
        );
        assert_eq!(
            i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            frame::PEER_CANCEL_REQUEST_CODE
        );
        assert_ne!(frame::PEER_CANCEL_REQUEST_CODE, frame::CANCEL_REQUEST_CODE);
        assert_eq!(
            frame::decode_cancel(&packet[8..]),
            Some((session_pid(2, 7), -5))
        );
    }

    #[test]
    fn cancels_for_other_gateways_go_to_their_address() {
        let config: ClusterConfig = toml::from_str(
            "gateway_id = 1\nstorage = \"x\"\n[peers]\n1 = \"10.0.0.1:5439\"\n2 = \"10.0.0.2:5439\"\n",
        )
        .expect("config");
        let cluster = Cluster::from_config(&config).expect("cluster");
        assert_eq!(cluster.peer_for(session_pid(1, 9)), None, "own session");
        assert_eq!(cluster.peer_for(session_pid(2, 9)), Some("10.0.0.2:5439"));
        assert_eq!(cluster.peer_for(session_pid(3, 9)), None, "unknown gateway");
        assert_eq!(cluster.peer_for(4_194_400), None, "unclustered id");
    }
}
