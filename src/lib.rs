//! Sluice: a federated SQL gateway that speaks the PostgreSQL wire protocol.
//!
//! See ARCHITECTURE.md for the map. Every statement passes one pipeline in
//! `server::session`: `route` decides where it goes (once per text), then it is
//! admitted, run — by the session, by `engine` (DataFusion over the `lake` catalogs,
//! batches encoded by `wire::rows`), relayed by `redshift`, or answered by `cache` —
//! and recorded. Layers point one way: `error`, `config` and `wire` at the bottom,
//! `server` on top.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod aws;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod error;
pub mod jobs;
pub mod lake;
pub mod metrics;
pub mod observe;
pub mod redshift;
pub mod route;
pub mod server;
pub mod wire;
pub mod workload;
