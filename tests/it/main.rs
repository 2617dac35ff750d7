//! Integration tests: real Sluice gateways on loopback, real clients over real sockets.
//! One test binary (modules below) keeps link time down.

mod harness;
mod jdbc;
mod oidc;
mod policy;
mod protocol;
mod psql;
mod python;
mod redshift;
mod robustness;
mod security;
