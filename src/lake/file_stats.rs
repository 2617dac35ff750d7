//! Per-file statistics for a Glue table's Parquet files, as DataFusion's own
//! `ListingTable` gathers them: row counts, min/max and null counts from each
//! footer, so `count(*)`, `min` and `max` are answered from metadata and row groups
//! are pruned on estimates. Footers go through the runtime's file-metadata cache and
//! the results through its file-statistics cache, keyed by the file's path, size and
//! modification time: a file is read for its footer once, until it changes.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::{Result, Statistics, TableReference};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::execution::cache::cache_manager::CachedFileMetadata;
use datafusion::execution::cache::{SchemaFingerprint, TableScopedPath};
use datafusion::execution::object_store::ObjectStoreUrl;
use futures::{StreamExt, TryStreamExt};

/// `files` with their statistics attached (same order).
pub async fn attach(
    state: &dyn Session,
    format: &Arc<dyn FileFormat>,
    store_url: &ObjectStoreUrl,
    file_schema: &SchemaRef,
    table: &TableReference,
    files: Vec<PartitionedFile>,
) -> Result<Vec<PartitionedFile>> {
    let store = state.runtime_env().object_store(store_url)?;
    let cache = state.runtime_env().cache_manager.get_file_statistic_cache();
    let fingerprint = Arc::new(SchemaFingerprint::from_schema(file_schema));
    let concurrency = state
        .config_options()
        .execution
        .meta_fetch_concurrency
        .get();
    futures::stream::iter(files)
        .map(|file| {
            let (store, cache, fingerprint) = (&store, &cache, &fingerprint);
            async move {
                let key = TableScopedPath {
                    table: Some(table.clone()),
                    path: file.object_meta.location.clone(),
                };
                if let Some(cached) = cache.as_ref().and_then(|c| c.get(&key))
                    && cached.is_valid_for(&file.object_meta, fingerprint)
                {
                    return Ok(file.with_statistics(cached.statistics));
                }
                let statistics: Arc<Statistics> = Arc::new(
                    format
                        .infer_stats(state, store, file_schema.clone(), &file.object_meta)
                        .await?,
                );
                if let Some(cache) = cache {
                    cache.put(
                        &key,
                        CachedFileMetadata::new(
                            file.object_meta.clone(),
                            fingerprint.clone(),
                            statistics.clone(),
                            None,
                        ),
                    );
                }
                Ok(file.with_statistics(statistics))
            }
        })
        .buffered(concurrency)
        .try_collect()
        .await
}
