//! The data lake: catalogs whose tables DataFusion reads directly.
//!
//! Every catalog source yields DataFusion `SchemaProvider`s (one per lake database)
//! holding `TableProvider`s; the engine mounts them under the gateway's catalog.
//! `local` reads a directory tree, `glue` the AWS Glue Data Catalog; `stores` says
//! where files are read from (local disk, S3).

mod counted;
pub mod demo;
pub mod glue;
pub mod local;
pub mod scan_guard;
pub mod stores;
pub mod tables;
