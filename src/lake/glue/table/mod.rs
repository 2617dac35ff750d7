//! One Glue table as a DataFusion `TableProvider`: the reader comes from the
//! table's `StorageDescriptor` (`format.rs`), partitions from Glue (never from
//! listing the table root), files from listing each partition's own location.
//! Delta and Iceberg tables are read through their own log or metadata (`open.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_glue::types::Table;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::CsvOptions;
use datafusion::common::{DataFusionError, Result, ScalarValue, TableReference, project_schema};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::Operator;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::expressions::{
    BinaryExpr, CaseExpr, CastExpr, Column as PhysicalColumn, Literal,
};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::union::UnionExec;
use datafusion_datasource::compute_all_files_statistics;
use futures::{StreamExt, TryStreamExt};

use super::GlueShared;
use super::partitions::{PartitionKey, is_partition_filter};
use super::types::hive_to_arrow;
use crate::error::{PgError, SqlState};
use crate::lake::as_of::AsOf;

#[derive(Debug)]
pub struct GlueTable {
    database: String,
    name: String,
    schema: SchemaRef,
    file_schema: SchemaRef,
    keys: Vec<PartitionKey>,
    location: Option<String>,
    /// The reader, or why this table cannot be read.
    format: std::result::Result<Format, String>,
    glue: Arc<GlueShared>,
    /// For Parquet: the file's own spelling of each column when it differs from
    /// Glue's lower-case name (Glue lower-cases, writers such as Spark keep
    /// `VendorID`). Learned from the first file read; `None` when all match.
    file_spelling: tokio::sync::OnceCell<Option<SchemaRef>>,
    /// Delta and Iceberg tables: the reader of their log or metadata.
    open: Option<open::OpenTable>,
}

impl GlueTable {
    /// Builds the provider from Glue's definition. Problems that make the table
    /// unreadable (unknown format, Iceberg, a bad column type) do not hide it: it is
    /// listed with what its columns are, and a query of it gets the reason.
    pub fn new(database: &str, table: &Table, glue: Arc<GlueShared>) -> GlueTable {
        let mut problem = None;
        let mut field = |name: &str, hive: &str| {
            let data_type = hive_to_arrow(hive).unwrap_or_else(|e| {
                problem.get_or_insert(e);
                DataType::Utf8
            });
            Arc::new(Field::new(name.to_lowercase(), data_type, true))
        };
        let sd = table.storage_descriptor();
        let columns: Vec<FieldRef> = sd
            .map(|sd| sd.columns())
            .unwrap_or_default()
            .iter()
            .map(|c| field(c.name(), c.r#type().unwrap_or("string")))
            .collect();
        let keys: Vec<PartitionKey> = table
            .partition_keys()
            .iter()
            .map(|c| {
                let hive = c.r#type().unwrap_or("string");
                PartitionKey {
                    field: crate::lake::partition_field(field(c.name(), hive)),
                    hive_type: hive.trim().to_lowercase(),
                }
            })
            .collect();
        let file_schema = Arc::new(Schema::new(columns.clone()));
        let mut format = match (detect_format(table), problem) {
            (Ok(f @ (Format::Delta | Format::Iceberg { .. })), _) => Ok(f),
            (Ok(_), Some(p)) => Err(p),
            (f, _) => f,
        };
        let name = table.name().to_lowercase();
        let location = match &format {
            Ok(Format::Delta) => delta_location(table),
            _ => sd.and_then(|sd| sd.location()).map(str::to_owned),
        };
        let label = format!("\"{database}\".\"{name}\"");
        let runtime = glue.runtime.clone();
        let max_age = glue.listing_ttl();
        let own_location = match &format {
            Ok(Format::Delta) => location.clone(),
            Ok(Format::Iceberg { metadata_location }) => Some(metadata_location.clone()),
            _ => None,
        };
        if let Some(l) = &own_location
            && let Ok((store_url, _)) = crate::lake::stores::split_location(l)
            && store_url.scheme() == "file"
            && !glue.local_allowed()
        {
            format = Err(format!(
                "its location {l} is on the gateway's local disk (refused unless lake.glue.allow_local_locations = true)"
            ));
        }
        let open = match &format {
            Ok(Format::Delta) => {
                match open::OpenTable::delta(label, location.as_deref(), runtime, max_age) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        format = Err(e);
                        None
                    }
                }
            }
            Ok(Format::Iceberg { metadata_location }) => Some(open::OpenTable::iceberg(
                label,
                metadata_location,
                runtime,
                max_age,
            )),
            _ => None,
        };
        // An open format's columns and partitions are its own; Glue's columns
        // stand in until its log or metadata has been read.
        let keys = if open.is_some() { Vec::new() } else { keys };
        let mut all = columns;
        all.extend(keys.iter().map(|k| k.field.clone()));
        GlueTable {
            database: database.to_owned(),
            name,
            schema: Arc::new(Schema::new(all)),
            file_schema,
            keys,
            location,
            format,
            glue,
            file_spelling: tokio::sync::OnceCell::new(),
            open,
        }
    }

    /// Delta and Iceberg tables: takes the schema of the newest version from the
    /// table's log or metadata. On failure the table keeps Glue's columns, and a
    /// query of it reports the reason.
    pub async fn load_open_schema(&mut self) {
        let Some(open) = &self.open else { return };
        match open.schema().await {
            Ok(schema) => self.schema = schema,
            Err(e) => tracing::warn!(
                database = %self.database,
                table = %self.name,
                error = %e,
                "cannot read the table's own schema; listing Glue's columns"
            ),
        }
    }

    /// The table as of an earlier version (Delta and Iceberg only).
    pub async fn as_of(&self, as_of: AsOf) -> Result<Arc<dyn TableProvider>> {
        self.format.as_ref().map_err(|why| self.unreadable(why))?;
        match &self.open {
            Some(open) => {
                let inner = open
                    .provider(&self.glue, &self.database, &self.name, Some(as_of))
                    .await?;
                Ok(Arc::new(open::LocalChecked {
                    inner,
                    local_allowed: self.glue.local_allowed(),
                }))
            }
            None => Err(DataFusionError::External(Box::new(
                PgError::new(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!(
                        "table \"{}\".{} has no versions to read ({as_of} was asked for)",
                        self.database, self.name
                    ),
                )
                .with_hint("time travel (\"table@v12\", \"table@20261201093000000\") reads Delta Lake and Iceberg tables"),
            ))),
        }
    }

    pub fn format(&self) -> std::result::Result<&Format, &str> {
        self.format.as_ref().map_err(String::as_str)
    }

    fn unreadable(&self, why: &str) -> DataFusionError {
        let e = PgError::new(
            SqlState::FEATURE_NOT_SUPPORTED,
            format!(
                "cannot read table \"{}\".{}: {why}",
                self.database, self.name
            ),
        )
        .with_hint("Sluice reads Glue tables stored as Parquet, CSV/TSV or JSON, and Delta Lake and Apache Iceberg tables");
        DataFusionError::External(Box::new(e))
    }
}

#[async_trait]
impl TableProvider for GlueTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Partition filters are decided exactly on Glue's partition values; the rest
        // prune Parquet row groups and pages and are applied again above the scan.
        Ok(filters
            .iter()
            .map(|f| {
                if is_partition_filter(f, &self.keys) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let format = self.format.as_ref().map_err(|why| self.unreadable(why))?;
        if let Some(open) = &self.open {
            let newest = open
                .provider(&self.glue, &self.database, &self.name, None)
                .await?;
            let plan = crate::lake::conform::scan(
                newest.as_ref(),
                &self.schema,
                state,
                projection,
                filters,
                limit,
            )
            .await?;
            crate::lake::stores::refuse_local_files(&plan, self.glue.local_allowed())?;
            return Ok(plan);
        }
        let locations: Vec<(Vec<ScalarValue>, String)> = if self.keys.is_empty() {
            let Some(location) = &self.location else {
                return Err(self.unreadable("the table has no Location"));
            };
            vec![(Vec::new(), location.clone())]
        } else {
            let partition_filters: Vec<&Expr> = filters
                .iter()
                .filter(|f| is_partition_filter(f, &self.keys))
                .collect();
            self.glue
                .partitions(
                    &self.database,
                    &self.name,
                    self.location.as_deref(),
                    &self.keys,
                    &partition_filters,
                )
                .await?
        };

        // List every location (a few at a time), then group the files by store and
        // compression: one scan per group.
        let runtime = state.runtime_env();
        let listed: Vec<(ObjectStoreUrl, Vec<PartitionedFile>)> =
            futures::stream::iter(locations.into_iter().map(|(values, location)| {
                let (glue, database) = (&self.glue, &self.database);
                async move {
                    let (store_url, files) = glue.list_files(runtime, database, &location).await?;
                    let files = files
                        .iter()
                        .map(|meta| {
                            PartitionedFile::new_from_meta(meta.clone())
                                .with_partition_values(values.clone())
                        })
                        .collect::<Vec<_>>();
                    Ok::<_, DataFusionError>((store_url, files))
                }
            }))
            .buffer_unordered(16)
            .try_collect()
            .await?;
        // The workload's scan-size limit, before any object is read.
        if let Some(guard) = crate::lake::scan_guard::ScanGuard::of(state) {
            guard.add(
                listed
                    .iter()
                    .flat_map(|(_, files)| files)
                    .map(|f| f.object_meta.size)
                    .sum(),
            )?;
        }
        // Keyed by the store URL's text (`ObjectStoreUrl` has no order).
        let mut groups: BTreeMap<(String, Compression), Vec<PartitionedFile>> = BTreeMap::new();
        for (url, files) in listed {
            let key = url.as_str().to_owned();
            for file in files {
                let compression = Compression::of(file.object_meta.location.as_ref());
                groups
                    .entry((key.clone(), compression))
                    .or_default()
                    .push(file);
            }
        }
        if groups.is_empty() {
            return Ok(Arc::new(EmptyExec::new(project_schema(
                &self.schema,
                projection,
            )?)));
        }
        // Parquet columns match Glue's names case-insensitively, as in Athena.
        let mut file_schema = self.file_schema.clone();
        if *format == Format::Parquet
            && let Some(((url, _), files)) = groups.iter().next()
            && let Some(first) = files.first()
        {
            let store_url = ObjectStoreUrl::parse(url)?;
            let spelled = self
                .file_spelling
                .get_or_try_init(|| self.spelling_in_file(state, &store_url, first))
                .await?;
            if let Some(spelled) = spelled {
                file_schema = spelled.clone();
            }
        }
        // Text is read as strings and converted above the scan, as Hive does: the
        // NULL marker and values that do not parse as the column's type are NULL.
        let text = matches!(format, Format::Text(_));
        if text {
            file_schema = Arc::new(Schema::new(
                file_schema
                    .fields()
                    .iter()
                    .map(|f| Field::new(f.name(), DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            ));
        }
        let renamed = !Arc::ptr_eq(&file_schema, &self.file_schema);
        let target = state.config().target_partitions().max(1);
        let partition_fields: Vec<FieldRef> = self.keys.iter().map(|k| k.field.clone()).collect();
        // Parquet footers give per-file statistics (as a ListingTable collects them).
        let collect_statistics = *format == Format::Parquet && state.config().collect_statistics();
        let scan_schema = Arc::new(Schema::new(
            file_schema
                .fields()
                .iter()
                .chain(&partition_fields)
                .cloned()
                .collect::<Vec<_>>(),
        ));
        let table_ref = TableReference::partial(self.database.as_str(), self.name.as_str());
        let mut plans = Vec::with_capacity(groups.len());
        for ((url, compression), mut files) in groups {
            // Deterministic order: the same files in the same groups every run.
            files.sort_by(|a, b| a.object_meta.location.cmp(&b.object_meta.location));
            let store_url = ObjectStoreUrl::parse(&url)?;
            let file_format = self.file_format(state, format, compression);
            if collect_statistics {
                files = crate::lake::file_stats::attach(
                    state,
                    &file_format,
                    &store_url,
                    &file_schema,
                    &table_ref,
                    files,
                )
                .await?;
            }
            let (file_groups, statistics) = compute_all_files_statistics(
                FileGroup::new(files).split_files(target),
                scan_schema.clone(),
                collect_statistics,
                false,
            )?;
            let source = file_format.file_source(
                TableSchema::builder(file_schema.clone())
                    .with_table_partition_cols(partition_fields.clone())
                    .build(),
            );
            let config = FileScanConfigBuilder::new(store_url, source)
                .with_file_groups(file_groups)
                .with_statistics(statistics)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
            plans.push(file_format.create_physical_plan(state, config).await?);
        }
        let plan = if plans.len() == 1 {
            plans.remove(0)
        } else {
            UnionExec::try_new(plans)?
        };
        if !renamed {
            return Ok(plan);
        }
        // Back to Glue's names and types above the scan.
        let null_marker = match format {
            Format::Text(t) => t.null_marker.clone(),
            _ => None,
        };
        let output = project_schema(&self.schema, projection)?;
        let input = plan.schema();
        let mut exprs = Vec::with_capacity(output.fields().len());
        for (i, (file_field, glue_field)) in input.fields().iter().zip(output.fields()).enumerate()
        {
            let column: Arc<dyn PhysicalExpr> = Arc::new(PhysicalColumn::new(file_field.name(), i));
            let expr = if file_field.data_type() == glue_field.data_type() && null_marker.is_none()
            {
                column
            } else {
                hive_text_value(
                    column,
                    glue_field.data_type(),
                    null_marker.as_deref(),
                    &input,
                )?
            };
            exprs.push(ProjectionExpr::new(expr, glue_field.name().clone()));
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }
}

#[async_trait]
impl crate::lake::tables::Versioned for GlueTable {
    async fn as_of(&self, as_of: AsOf) -> Result<Arc<dyn TableProvider>> {
        GlueTable::as_of(self, as_of).await
    }
}

/// A text field as Hive reads it: the NULL marker is NULL, and so is a value that does
/// not parse as the column's type (a safe cast), instead of failing the query.
fn hive_text_value(
    column: Arc<dyn PhysicalExpr>,
    to: &DataType,
    null_marker: Option<&str>,
    input: &Schema,
) -> Result<Arc<dyn PhysicalExpr>> {
    let from = column.data_type(input)?;
    let converted: Arc<dyn PhysicalExpr> = if &from == to {
        column.clone()
    } else {
        Arc::new(CastExpr::new(
            column.clone(),
            to.clone(),
            Some(datafusion::arrow::compute::CastOptions {
                safe: true,
                ..Default::default()
            }),
        ))
    };
    if from != DataType::Utf8 {
        return Ok(converted);
    }
    let Some(marker) = null_marker else {
        return Ok(converted);
    };
    let is_marker = Arc::new(BinaryExpr::new(
        column,
        Operator::Eq,
        Arc::new(Literal::new(ScalarValue::Utf8(Some(marker.to_owned())))),
    ));
    let null = Arc::new(Literal::new(ScalarValue::try_from(to)?));
    Ok(Arc::new(CaseExpr::try_new(
        None,
        vec![(is_marker, null)],
        Some(converted),
    )?))
}

impl GlueTable {
    /// The file schema with each column spelled as in `file`, if any differs.
    async fn spelling_in_file(
        &self,
        state: &dyn Session,
        store_url: &ObjectStoreUrl,
        file: &PartitionedFile,
    ) -> Result<Option<SchemaRef>> {
        let store = state.runtime_env().object_store(store_url)?;
        let in_file = ParquetFormat::default()
            .infer_schema(state, &store, std::slice::from_ref(&file.object_meta))
            .await?;
        let mut changed = false;
        let fields: Vec<FieldRef> = self
            .file_schema
            .fields()
            .iter()
            .map(|f| {
                match in_file
                    .fields()
                    .iter()
                    .find(|g| g.name() != f.name() && g.name().eq_ignore_ascii_case(f.name()))
                {
                    Some(g) if in_file.field_with_name(f.name()).is_err() => {
                        changed = true;
                        Arc::new(f.as_ref().clone().with_name(g.name()))
                    }
                    _ => f.clone(),
                }
            })
            .collect();
        Ok(changed.then(|| Arc::new(Schema::new(fields))))
    }

    fn file_format(
        &self,
        state: &dyn Session,
        format: &Format,
        compression: Compression,
    ) -> Arc<dyn FileFormat> {
        match format {
            Format::Parquet => Arc::new(
                ParquetFormat::default().with_options(state.table_options().parquet.clone()),
            ),
            // Open formats never reach here: they are scanned by their own readers.
            Format::Json | Format::Delta | Format::Iceberg { .. } => {
                Arc::new(JsonFormat::default().with_file_compression_type(compression.into()))
            }
            Format::Text(t) => {
                let options = CsvOptions {
                    has_header: Some(t.header),
                    delimiter: t.delimiter,
                    // Without quoting, a NUL "quote" never occurs in text data.
                    quote: t.quote.unwrap_or(0),
                    escape: t.escape,
                    // Hive reads missing trailing fields as NULL.
                    truncated_rows: Some(true),
                    newlines_in_values: Some(false),
                    ..CsvOptions::default()
                };
                Arc::new(
                    CsvFormat::default()
                        .with_options(options)
                        .with_file_compression_type(compression.into()),
                )
            }
        }
    }
}

mod format;
mod open;

use format::delta_location;
pub use format::{Compression, Format, TextFormat, detect_format};
#[cfg(test)]
mod tests;
