//! What every Glue table shares: the Glue client, the cached partition lists and
//! file listings (with their age; stale entries serve when Glue or S3 fail), and
//! the per-database request counters.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::Expr;
use futures::TryStreamExt;
use object_store::ObjectMeta;

use super::partitions::{self, GluePartition, PartitionKey};
use super::{collect_pages, glue_request};
use crate::config::GlueLakeConfig;
use crate::error::{PgError, SqlState};

/// Something fetched, and when.
pub(super) struct Fetched<T> {
    pub(super) at: Instant,
    pub(super) value: Arc<T>,
}

impl<T> Clone for Fetched<T> {
    fn clone(&self) -> Self {
        Fetched {
            at: self.at,
            value: self.value.clone(),
        }
    }
}

type PartitionCacheKey = (String, String, Option<String>);

/// What every Glue table shares: the client and the partition and listing caches.
pub struct GlueShared {
    pub(super) client: aws_sdk_glue::Client,
    pub(super) catalog_id: Option<String>,
    pub(super) metadata_ttl: Duration,
    pub(super) listing_ttl: Duration,
    pub(super) allow_local_locations: bool,
    /// The lake's object stores, for reading Delta logs and Iceberg metadata when
    /// the catalog loads (queries read through their own session's runtime).
    pub(super) runtime: Arc<RuntimeEnv>,
    /// Bumped by every refresh: a fetch that started before a refresh does not
    /// store its (possibly older) answer after it.
    pub(super) epoch: AtomicU64,
    pub(super) partitions: moka::future::Cache<PartitionCacheKey, Fetched<Vec<GluePartition>>>,
    pub(super) listings: moka::future::Cache<String, Fetched<Vec<ObjectMeta>>>,
    /// Per-database counters for `SHOW sluice.lake`.
    pub(super) stats: std::sync::Mutex<HashMap<String, DatabaseStats>>,
}

/// What Sluice asked of Glue and S3 for one database since start-up.
#[derive(Debug, Clone, Copy, Default)]
pub struct DatabaseStats {
    /// Glue API calls (every page counts).
    pub glue_requests: u64,
    pub glue_failures: u64,
    /// Partitions Glue returned (after its own filtering by expression).
    pub partitions_fetched: u64,
    /// S3 / file listings of table and partition locations.
    pub listings: u64,
}

impl std::fmt::Debug for GlueShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlueShared")
            .field("catalog_id", &self.catalog_id)
            .finish_non_exhaustive()
    }
}

pub(super) fn catalog_error(message: String) -> DataFusionError {
    DataFusionError::External(Box::new(
        PgError::new(SqlState("58000"), message)
            .with_hint("the Glue catalog or S3 could not be reached; try again, or ask an administrator to check the gateway's AWS access"),
    ))
}

impl GlueShared {
    pub(super) fn new(
        client: aws_sdk_glue::Client,
        config: &GlueLakeConfig,
        runtime: Arc<RuntimeEnv>,
    ) -> GlueShared {
        GlueShared {
            runtime,
            client,
            catalog_id: config.catalog_id.clone(),
            metadata_ttl: Duration::from_secs(config.metadata_ttl_secs),
            listing_ttl: Duration::from_secs(config.listing_ttl_secs),
            allow_local_locations: config.allow_local_locations,
            epoch: AtomicU64::new(0),
            partitions: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .weigher(|_, v: &Fetched<Vec<GluePartition>>| {
                    u32::try_from(v.value.len()).unwrap_or(u32::MAX).max(1)
                })
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            listings: moka::future::Cache::builder()
                .max_capacity(2_000_000)
                .weigher(|_, v: &Fetched<Vec<ObjectMeta>>| {
                    u32::try_from(v.value.len()).unwrap_or(u32::MAX).max(1)
                })
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            stats: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn count(&self, database: &str, f: impl FnOnce(&mut DatabaseStats)) {
        if let Ok(mut stats) = self.stats.lock() {
            f(stats.entry(database.to_owned()).or_default());
        }
    }

    /// The counters of one database.
    pub fn stats(&self, database: &str) -> DatabaseStats {
        self.stats
            .lock()
            .ok()
            .and_then(|s| s.get(database).copied())
            .unwrap_or_default()
    }

    /// The partitions of a table that pass `filters` (partition-column filters only),
    /// with typed values and locations. The filters go to Glue as an expression.
    pub async fn partitions(
        &self,
        database: &str,
        table: &str,
        table_location: Option<&str>,
        keys: &[PartitionKey],
        filters: &[&Expr],
    ) -> Result<Vec<(Vec<ScalarValue>, String)>> {
        let expression = partitions::glue_expression(filters, keys);
        let key = (database.to_owned(), table.to_owned(), expression.clone());
        let epoch = self.epoch.load(Ordering::Acquire);
        let cached = self.partitions.get(&key).await;
        let all = match cached {
            Some(c) if c.at.elapsed() < self.metadata_ttl => c.value,
            _ => match self
                .fetch_partitions_or_all(
                    database,
                    table,
                    table_location,
                    keys,
                    expression.as_deref(),
                )
                .await
            {
                Ok(list) if self.epoch.load(Ordering::Acquire) != epoch => Arc::new(list),
                Ok(list) => {
                    let value = Arc::new(list);
                    self.partitions
                        .insert(
                            key,
                            Fetched {
                                at: Instant::now(),
                                value: value.clone(),
                            },
                        )
                        .await;
                    value
                }
                Err(e) => match cached {
                    Some(stale) => {
                        tracing::warn!(%database, %table, error = %e, "Glue unreachable; serving cached partitions");
                        stale.value
                    }
                    None => return Err(catalog_error(e)),
                },
            },
        };
        tracing::debug!(%database, %table, ?expression, partitions = all.len(), "partitions from Glue");
        partitions::prune(&all, keys, filters)
    }

    /// Fetches with the expression; if Glue rejects the expression itself
    /// (InvalidInputException), fetches every partition instead: pruning in Sluice
    /// is exact either way, only slower.
    async fn fetch_partitions_or_all(
        &self,
        database: &str,
        table: &str,
        table_location: Option<&str>,
        keys: &[PartitionKey],
        expression: Option<&str>,
    ) -> std::result::Result<Vec<GluePartition>, String> {
        match self
            .fetch_partitions(database, table, table_location, keys, expression)
            .await
        {
            Err(e) if expression.is_some() && e.contains("InvalidInputException") => {
                tracing::warn!(%database, %table, ?expression, error = %e, "Glue rejected the partition filter; fetching all partitions");
                self.fetch_partitions(database, table, table_location, keys, None)
                    .await
            }
            other => other,
        }
    }

    async fn fetch_partitions(
        &self,
        database: &str,
        table: &str,
        table_location: Option<&str>,
        keys: &[PartitionKey],
        expression: Option<&str>,
    ) -> std::result::Result<Vec<GluePartition>, String> {
        let result = collect_pages(|token| async move {
            self.count(database, |s| s.glue_requests += 1);
            let out = self
                .client
                .get_partitions()
                .set_catalog_id(self.catalog_id.clone())
                .database_name(database)
                .table_name(table)
                .set_expression(expression.map(str::to_owned))
                .exclude_column_schema(true)
                .set_next_token(token)
                .send()
                .await
                .inspect(|_| glue_request("GetPartitions", "ok"))
                .inspect_err(|_| glue_request("GetPartitions", "error"))
                .map_err(|e| crate::aws::describe_error("GetPartitions", &e))?;
            let page = out
                .partitions()
                .iter()
                .filter_map(|p| {
                    let location = match p.storage_descriptor().and_then(|sd| sd.location()) {
                        Some(l) => l.to_owned(),
                        // No location of its own: Hive's default layout under the table.
                        None => {
                            let base = table_location?.trim_end_matches('/');
                            let parts: Vec<String> = keys
                                .iter()
                                .zip(p.values())
                                .map(|(k, v)| format!("{}={v}", k.field.name()))
                                .collect();
                            format!("{base}/{}/", parts.join("/"))
                        }
                    };
                    Some(GluePartition {
                        values: p.values().to_vec(),
                        location,
                    })
                })
                .collect();
            Ok((page, out.next_token().map(str::to_owned)))
        })
        .await;
        match &result {
            Ok(list) => self.count(database, |s| s.partitions_fetched += list.len() as u64),
            Err(_) => self.count(database, |s| s.glue_failures += 1),
        }
        result
    }

    /// An Iceberg table's current `metadata_location`, read from Glue now.
    pub async fn metadata_location(
        &self,
        database: &str,
        table: &str,
    ) -> std::result::Result<String, String> {
        self.count(database, |s| s.glue_requests += 1);
        let out = self
            .client
            .get_table()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(database)
            .name(table)
            .send()
            .await
            .inspect(|_| glue_request("GetTable", "ok"))
            .inspect_err(|_| {
                glue_request("GetTable", "error");
                self.count(database, |s| s.glue_failures += 1);
            })
            .map_err(|e| crate::aws::describe_error("GetTable", &e))?;
        out.table()
            .and_then(|t| t.parameters())
            .and_then(|p| {
                p.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("metadata_location"))
                    .map(|(_, v)| v.clone())
            })
            .ok_or_else(|| "Glue no longer gives the table a metadata_location".to_owned())
    }

    /// Whether Glue may name locations on the gateway's own disk.
    pub fn local_allowed(&self) -> bool {
        self.allow_local_locations
    }

    pub fn listing_ttl(&self) -> Duration {
        self.listing_ttl
    }

    /// The data files under a table or partition location (recursively, skipping
    /// hidden `_`/`.` names and folder markers), cached for `listing_ttl_secs`.
    pub async fn list_files(
        &self,
        runtime: &RuntimeEnv,
        database: &str,
        location: &str,
    ) -> Result<(ObjectStoreUrl, Arc<Vec<ObjectMeta>>)> {
        let (store_url, prefix) = crate::lake::stores::split_location(location)?;
        crate::lake::stores::refuse_local(&store_url, location, self.allow_local_locations)?;
        let url = ObjectStoreUrl::parse(store_url.as_str())?;
        let cached = self.listings.get(location).await;
        if let Some(c) = &cached
            && c.at.elapsed() < self.listing_ttl
        {
            return Ok((url, c.value.clone()));
        }
        let store = runtime.object_store(&url)?;
        let epoch = self.epoch.load(Ordering::Acquire);
        self.count(database, |s| s.listings += 1);
        let listed: std::result::Result<Vec<ObjectMeta>, object_store::Error> =
            store.list(Some(&prefix)).try_collect().await;
        match listed {
            Ok(mut files) => {
                files.retain(|m| is_data_file(&prefix, m));
                let value = Arc::new(files);
                if self.epoch.load(Ordering::Acquire) != epoch {
                    return Ok((url, value)); // a refresh happened meanwhile: do not cache
                }
                self.listings
                    .insert(
                        location.to_owned(),
                        Fetched {
                            at: Instant::now(),
                            value: value.clone(),
                        },
                    )
                    .await;
                Ok((url, value))
            }
            Err(e) => match cached {
                Some(stale) => {
                    tracing::warn!(%location, error = %e, "listing failed; serving the cached listing");
                    Ok((url, stale.value))
                }
                None => Err(catalog_error(format!("cannot list {location}: {e}"))),
            },
        }
    }
}

pub(super) fn is_data_file(prefix: &object_store::path::Path, meta: &ObjectMeta) -> bool {
    if meta.size == 0 || meta.location.as_ref().ends_with("$folder$") {
        return false;
    }
    let relative = meta
        .location
        .prefix_match(prefix)
        .map(|parts| parts.collect::<Vec<_>>())
        .unwrap_or_default();
    !relative.iter().any(|part| {
        let p = part.as_ref();
        p.starts_with('_') || p.starts_with('.')
    })
}
