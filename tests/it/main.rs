//! Integration tests: real Sluice gateways on loopback, real clients over real sockets.
//! One test binary (modules below) keeps link time down.

#[cfg(feature = "distributed")]
#[path = "../support/ballista.rs"]
mod ballista;
mod cache;
mod clients;
mod cluster;
#[cfg(feature = "distributed")]
mod distributed;
mod glue;
mod harness;
mod hygiene;
mod idp;
mod jdbc;
mod jobs;
mod lake_answers;
#[path = "../support/lake_queries.rs"]
mod lake_queries;
mod ldap;
mod memory;
#[path = "../support/moto.rs"]
mod moto;
#[path = "../support/nyc_lake.rs"]
mod nyc_lake;
mod oidc;
mod open_formats;
mod operations;
mod policy;
#[path = "../support/postgres.rs"]
mod postgres;
mod protocol;
mod psql;
mod python;
mod redshift;
mod redshift_drivers;
mod robustness;
mod security;
#[path = "../support/slapd.rs"]
mod slapd;
mod wire_fuzz;
mod workload;
