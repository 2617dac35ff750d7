//! The data lake: catalogs whose tables DataFusion reads directly.
//!
//! Every catalog source yields DataFusion `SchemaProvider`s (one per lake database)
//! holding `TableProvider`s; the engine mounts them under the gateway's catalog.
//! `local` reads a directory tree, `glue` the AWS Glue Data Catalog; `stores` says
//! where files are read from (local disk, S3). Glue tables in open table formats are
//! read by `delta` (Delta Lake, through delta-rs) and `iceberg` (Apache Iceberg);
//! `as_of` parses their time-travel names and `conform` keeps a moving schema in
//! the shape the catalog listed.

pub mod as_of;
mod conform;
mod counted;
pub mod delta;
pub mod demo;
pub mod file_stats;
pub mod glue;
pub mod iceberg;
pub mod local;
pub mod scan_guard;
pub mod stores;
pub mod tables;

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};

/// The type of a text Hive partition column (`month=2024-03`). The value is the same
/// for every row of a file, and DataFusion repeats it into each batch: as string
/// views a short value is stored inline (no bytes copied per row) and grouping by it
/// takes DataFusion's fast path; the dictionary type DataFusion suggests for
/// partition values does not (measured in README, "The lake engine's speed").
pub const PARTITION_TEXT: DataType = DataType::Utf8View;

/// A partition column's field: text partition values as [`PARTITION_TEXT`], other
/// types unchanged.
pub fn partition_field(field: FieldRef) -> FieldRef {
    match field.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 => Arc::new(
            Field::new(field.name(), PARTITION_TEXT, field.is_nullable())
                .with_metadata(field.metadata().clone()),
        ),
        _ => field,
    }
}
