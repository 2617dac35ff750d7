//! Sluice: a federated SQL gateway that speaks the PostgreSQL wire protocol.
//!
//! See ARCHITECTURE.md for the map. A statement flows
//! `server` (wire, TLS, session) → `route` (where it runs) → `engine` (DataFusion over
//! the `lake` catalogs) → back through `engine::encode` to the client; or
//! `redshift` (credentials, pool, relay) for statements forwarded upstream.

pub mod admin;
pub mod auth;
pub mod aws;
pub mod cache;
pub mod config;
pub mod engine;
pub mod error;
pub mod lake;
pub mod redshift;
pub mod route;
pub mod server;
pub mod wire;
