//! Hot results on the gateway: the automatic result cache (`results`) and gateway
//! materialized views (`matview`), both served without touching the upstream.

pub mod matview;
pub mod results;
pub mod shared;
