//! Apache Iceberg tables (format versions 1 and 2): Sluice reads the metadata itself
//! (JSON, and Avro manifests with `apache-avro`) and scans the data files with
//! DataFusion's Parquet reader, the same scan plain Glue tables use. Why not the
//! `iceberg` crate: its 0.10 release is built on arrow 58 and DataFusion 53, so
//! linking it would compile a second arrow and its record batches could not flow
//! into Sluice's DataFusion 55 plans (ARCHITECTURE.md, "Open table formats").
//!
//! A scan reads the snapshot's manifest list, drops manifests whose partition
//! summaries cannot match the query's filters, reads the rest (cached by path:
//! manifests never change) and drops data files whose partition tuple or column
//! bounds cannot match. Delete files (merge-on-read deletes) are refused with
//! 0A000 rather than read wrongly, as are column renames, which a by-name Parquet
//! scan would misread.

pub mod bounds;
pub mod manifest;
pub mod metadata;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, DataFusionError, Result, project_schema};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion_datasource::compute_all_files_statistics;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use self::bounds::{Containers, Ranges};
use self::manifest::{DataFile, ManifestFile};
use self::metadata::{IcebergSchema, Snapshot, TableMetadata};
use super::as_of::AsOf;
use crate::error::{PgError, SqlState};

/// One Iceberg table's reader: its metadata and manifests, cached by path.
#[derive(Debug)]
pub struct Iceberg {
    reader: Arc<Reader>,
}

struct Reader {
    /// `"database"."table"`, for messages.
    label: String,
    runtime: Arc<RuntimeEnv>,
    metadata: moka::future::Cache<String, Arc<TableMetadata>>,
    lists: moka::future::Cache<String, Arc<Vec<ManifestFile>>>,
    manifests: moka::future::Cache<String, Arc<Vec<DataFile>>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Iceberg {
    pub fn new(label: String, runtime: Arc<RuntimeEnv>) -> Iceberg {
        Iceberg {
            reader: Arc::new(Reader {
                label,
                runtime,
                metadata: moka::future::Cache::new(16),
                lists: moka::future::Cache::new(64),
                manifests: moka::future::Cache::builder()
                    .max_capacity(1_000_000)
                    .weigher(|_, v: &Arc<Vec<DataFile>>| {
                        u32::try_from(v.len()).unwrap_or(u32::MAX).max(1)
                    })
                    .build(),
            }),
        }
    }

    /// The schema of the current snapshot of the table whose metadata file is
    /// `metadata_location`.
    pub async fn schema(&self, metadata_location: &str) -> Result<SchemaRef> {
        Ok(self.provider(metadata_location, None).await?.schema())
    }

    /// A provider for the snapshot `as_of` names (the current one when `None`).
    pub async fn provider(
        &self,
        metadata_location: &str,
        as_of: Option<AsOf>,
    ) -> Result<Arc<dyn TableProvider>> {
        let reader = &self.reader;
        let metadata = reader.metadata(metadata_location).await?;
        if metadata.format_version > 2 {
            return Err(reader.unsupported(format!(
                "it is format version {} (Sluice reads versions 1 and 2)",
                metadata.format_version
            )));
        }
        let snapshot = match as_of {
            None => match metadata.current_snapshot_id {
                Some(id) => Some(metadata.snapshot(id).cloned().ok_or_else(|| {
                    reader.broken(format!("current snapshot {id} is not in the metadata file"))
                })?),
                None => None,
            },
            Some(AsOf::Version(id)) => Some(metadata.snapshot(id).cloned().ok_or_else(|| {
                reader.bad_as_of(format!("snapshot {id} does not exist (or has expired)"))
            })?),
            Some(AsOf::Timestamp(at)) => Some(
                metadata
                    .snapshot_at(at.timestamp_millis())
                    .cloned()
                    .ok_or_else(|| {
                        reader.bad_as_of(format!(
                            "there is no snapshot as of {}",
                            AsOf::Timestamp(at)
                        ))
                    })?,
            ),
        };
        // Time travel reads with the schema of its snapshot; the current snapshot
        // with the table's current schema.
        let schema_id = match (&as_of, &snapshot) {
            (Some(_), Some(s)) => s.schema_id,
            _ => None,
        };
        let schema = metadata
            .schema_by_id(schema_id)
            .map_err(|e| reader.broken(e))?
            .clone();
        if let Some(problem) = metadata.name_mapping_problem(&schema) {
            return Err(reader.unsupported(problem));
        }
        let arrow = schema.arrow().map_err(|e| reader.unsupported(e))?;
        Ok(Arc::new(SnapshotScan {
            reader: reader.clone(),
            metadata,
            snapshot,
            schema,
            arrow,
        }))
    }
}

impl Reader {
    fn error(&self, code: SqlState, message: String, hint: &str) -> DataFusionError {
        DataFusionError::External(Box::new(
            PgError::new(code, format!("Iceberg table {}: {message}", self.label)).with_hint(hint),
        ))
    }

    fn unsupported(&self, why: String) -> DataFusionError {
        self.error(
            SqlState::FEATURE_NOT_SUPPORTED,
            format!("cannot read it: {why}"),
            "Sluice reads Iceberg v1/v2 tables without delete files; compact merge-on-read deletes (rewrite_data_files) to read the table here",
        )
    }

    fn broken(&self, why: String) -> DataFusionError {
        self.error(
            SqlState::IO_ERROR,
            why,
            "the table's metadata is incomplete; check the table with its writer",
        )
    }

    fn bad_as_of(&self, why: String) -> DataFusionError {
        self.error(
            SqlState::INVALID_PARAMETER_VALUE,
            why,
            "list the table's snapshots with its writer (e.g. pyiceberg `table.snapshots()`)",
        )
    }

    async fn read(&self, location: &str) -> Result<Bytes> {
        let (store_url, path) = crate::lake::stores::split_location(location)?;
        let store = self
            .runtime
            .object_store(&ObjectStoreUrl::parse(store_url.as_str())?)?;
        let got = async { store.get(&path).await?.bytes().await }.await;
        got.map_err(|e| {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or_default().to_owned();
            self.error(
                SqlState("58000"),
                format!("cannot read {location}: {first}"),
                "the table's files could not be read; try again, or ask an administrator to check the gateway's storage access",
            )
        })
    }

    async fn metadata(&self, location: &str) -> Result<Arc<TableMetadata>> {
        self.metadata
            .try_get_with(location.to_owned(), async {
                let bytes = self.read(location).await?;
                TableMetadata::parse(&bytes)
                    .map(Arc::new)
                    .map_err(|e| self.broken(format!("{location}: {e}")))
            })
            .await
            .map_err(|e| unshare(&e))
    }

    async fn manifest_list(&self, snapshot: &Snapshot) -> Result<Arc<Vec<ManifestFile>>> {
        let Some(location) = &snapshot.manifest_list else {
            return Err(self.unsupported(format!(
                "snapshot {} lists its manifests inline (an early format-1 layout)",
                snapshot.snapshot_id
            )));
        };
        self.lists
            .try_get_with(location.clone(), async {
                let bytes = self.read(location).await?;
                manifest::read_manifest_list(&bytes)
                    .map(Arc::new)
                    .map_err(|e| self.broken(format!("{location}: {e}")))
            })
            .await
            .map_err(|e| unshare(&e))
    }

    async fn manifest(&self, location: &str) -> Result<Arc<Vec<DataFile>>> {
        self.manifests
            .try_get_with(location.to_owned(), async {
                let bytes = self.read(location).await?;
                manifest::read_manifest(&bytes)
                    .map(Arc::new)
                    .map_err(|e| self.broken(format!("{location}: {e}")))
            })
            .await
            .map_err(|e| unshare(&e))
    }
}

/// A cached loader's shared error, as an owned one with the same SQLSTATE.
fn unshare(e: &Arc<DataFusionError>) -> DataFusionError {
    match e.as_ref() {
        DataFusionError::External(inner) => match inner.downcast_ref::<PgError>() {
            Some(pg) => DataFusionError::External(Box::new(pg.clone())),
            None => DataFusionError::Execution(inner.to_string()),
        },
        other => DataFusionError::Execution(other.to_string()),
    }
}

/// One snapshot of an Iceberg table as a DataFusion table.
#[derive(Debug)]
struct SnapshotScan {
    reader: Arc<Reader>,
    metadata: Arc<TableMetadata>,
    /// `None`: the table has no snapshot yet (no rows).
    snapshot: Option<Snapshot>,
    schema: IcebergSchema,
    arrow: SchemaRef,
}

impl SnapshotScan {
    /// The live data files of the snapshot that can hold rows passing `filters`.
    async fn plan_files(
        &self,
        state: &dyn Session,
        snapshot: &Snapshot,
        filters: &[Expr],
    ) -> Result<Vec<DataFile>> {
        let reader = &self.reader;
        let list = reader.manifest_list(snapshot).await?;
        let predicate = match conjunction(filters.iter().cloned()) {
            Some(expr) => {
                let df_schema = DFSchema::try_from(self.arrow.as_ref().clone())?;
                state
                    .create_physical_expr(expr, &df_schema)
                    .ok()
                    .and_then(|e| {
                        PruningPredicateBuilder::new()
                            .with_file_schema(self.arrow.clone())
                            .build(e)
                    })
            }
            None => None,
        };
        // Delete files anywhere in the snapshot: refuse rather than return deleted rows.
        for m in list.iter().filter(|m| m.content != 0) {
            let live = match m.live_files {
                Some(n) => n > 0,
                None => !reader.manifest(&m.path).await?.is_empty(),
            };
            if live {
                return Err(reader.unsupported(
                    "its current snapshot has delete files (merge-on-read positional or equality deletes), which Sluice does not apply yet".into(),
                ));
            }
        }
        let data: Vec<&ManifestFile> = list.iter().filter(|m| m.content == 0).collect();
        let keep = match &predicate {
            Some(p) => {
                let ranges: Vec<Ranges> = data.iter().map(|m| self.manifest_ranges(m)).collect();
                p.prune(&Containers {
                    schema: &self.arrow,
                    ranges: &ranges,
                })
                .unwrap_or_else(|_| vec![true; data.len()])
            }
            None => vec![true; data.len()],
        };
        let wanted: Vec<(String, i32)> = data
            .iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(m, _)| (m.path.clone(), m.spec_id))
            .collect();
        let manifests: Vec<(Arc<Vec<DataFile>>, i32)> = futures::stream::iter(wanted)
            .map(|(path, spec_id)| {
                let reader = reader.clone();
                async move { Ok::<_, DataFusionError>((reader.manifest(&path).await?, spec_id)) }
            })
            .buffered(8)
            .try_collect()
            .await?;
        let mut files: Vec<(&DataFile, i32)> = Vec::new();
        for (entries, spec_id) in &manifests {
            for file in entries.iter() {
                if file.content != 0 {
                    return Err(reader.unsupported(format!(
                        "{} is a delete file in a data manifest",
                        file.path
                    )));
                }
                if !file.format.eq_ignore_ascii_case("parquet") {
                    return Err(reader.unsupported(format!(
                        "data file {} is {} (Sluice reads Parquet data files)",
                        file.path, file.format
                    )));
                }
                files.push((file, *spec_id));
            }
        }
        let keep = match &predicate {
            Some(p) => {
                let ranges: Vec<Ranges> = files
                    .iter()
                    .map(|(f, spec)| self.file_ranges(f, *spec))
                    .collect();
                p.prune(&Containers {
                    schema: &self.arrow,
                    ranges: &ranges,
                })
                .unwrap_or_else(|_| vec![true; files.len()])
            }
            None => vec![true; files.len()],
        };
        Ok(files
            .into_iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|((f, _), _)| f.clone())
            .collect())
    }

    fn manifest_ranges(&self, m: &ManifestFile) -> Ranges {
        let mut ranges = Ranges::default();
        let Some(spec) = self.metadata.spec(m.spec_id) else {
            return ranges;
        };
        let values: Vec<_> = spec
            .fields
            .iter()
            .zip(&m.partitions)
            .map(|(field, summary)| {
                let source_type = self
                    .schema
                    .field_by_id(field.source_id)
                    .and_then(|f| self.arrow.field_with_name(&f.name).ok())
                    .map(|f| f.data_type().clone());
                let decode = |b: &Option<Vec<u8>>| {
                    b.as_deref()
                        .zip(source_type.as_ref())
                        .and_then(|(b, t)| bounds::partition_from_bytes(b, &field.transform, t))
                };
                (decode(&summary.lower), decode(&summary.upper))
            })
            .collect();
        ranges.add_partition(&self.schema, &self.arrow, spec, &values);
        ranges
    }

    fn file_ranges(&self, file: &DataFile, spec_id: i32) -> Ranges {
        let mut ranges = Ranges {
            rows: u64::try_from(file.record_count).ok(),
            ..Ranges::default()
        };
        if let Some(spec) = self.metadata.spec(spec_id) {
            let values: Vec<_> = file
                .partition
                .iter()
                .map(|v| (v.clone(), v.clone()))
                .collect();
            ranges.add_partition(&self.schema, &self.arrow, spec, &values);
        }
        for field in &self.schema.fields {
            let Ok(column) = self.arrow.field_with_name(&field.name) else {
                continue;
            };
            let decode =
                |b: Option<&Vec<u8>>| b.and_then(|b| bounds::decode(b, column.data_type()));
            ranges.narrow(
                &field.name,
                decode(file.lower_bounds.get(&field.id)),
                decode(file.upper_bounds.get(&field.id)),
            );
            if let Some(n) = file
                .null_counts
                .get(&field.id)
                .and_then(|n| u64::try_from(*n).ok())
            {
                ranges.null_counts.insert(field.name.clone(), n);
            }
        }
        ranges
    }
}

#[async_trait::async_trait]
impl TableProvider for SnapshotScan {
    fn schema(&self) -> SchemaRef {
        self.arrow.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Files are pruned on ranges; rows are filtered again above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let empty = || -> Result<Arc<dyn ExecutionPlan>> {
            Ok(Arc::new(EmptyExec::new(project_schema(
                &self.arrow,
                projection,
            )?)))
        };
        let Some(snapshot) = &self.snapshot else {
            return empty();
        };
        let files = self.plan_files(state, snapshot, filters).await?;
        if let Some(guard) = crate::lake::scan_guard::ScanGuard::of(state) {
            guard.add(files.iter().map(|f| f.file_size).sum())?;
        }
        let mut groups: BTreeMap<String, Vec<PartitionedFile>> = BTreeMap::new();
        for file in &files {
            let (store_url, path) = crate::lake::stores::split_location(&file.path)?;
            groups
                .entry(store_url.as_str().to_owned())
                .or_default()
                .push(PartitionedFile::new(path.as_ref(), file.file_size));
        }
        if groups.is_empty() {
            return empty();
        }
        let format: Arc<dyn FileFormat> =
            Arc::new(ParquetFormat::default().with_options(state.table_options().parquet.clone()));
        let collect_statistics = state.config().collect_statistics();
        let target = state.config().target_partitions().max(1);
        let table_ref = datafusion::common::TableReference::bare(self.reader.label.as_str());
        let mut plans = Vec::with_capacity(groups.len());
        for (url, mut files) in groups {
            files.sort_by(|a, b| a.object_meta.location.cmp(&b.object_meta.location));
            let store_url = ObjectStoreUrl::parse(&url)?;
            if collect_statistics {
                files = crate::lake::file_stats::attach(
                    state,
                    &format,
                    &store_url,
                    &self.arrow,
                    &table_ref,
                    files,
                )
                .await?;
            }
            let (file_groups, statistics) = compute_all_files_statistics(
                FileGroup::new(files).split_files(target),
                self.arrow.clone(),
                collect_statistics,
                false,
            )?;
            let source = format.file_source(TableSchema::builder(self.arrow.clone()).build());
            let config = FileScanConfigBuilder::new(store_url, source)
                .with_file_groups(file_groups)
                .with_statistics(statistics)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
            plans.push(format.create_physical_plan(state, config).await?);
        }
        Ok(if plans.len() == 1 {
            plans.remove(0)
        } else {
            UnionExec::try_new(plans)?
        })
    }
}
