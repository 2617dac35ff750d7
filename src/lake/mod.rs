//! The data lake: catalogs whose tables DataFusion reads directly.
//!
//! Every catalog source yields DataFusion `SchemaProvider`s (one per lake database)
//! holding `TableProvider`s; the engine mounts them under the gateway's catalog.

pub mod demo;
pub mod local;
