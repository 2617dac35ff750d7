//! The Glue Data Catalog as lake schemas: Glue databases are schemas, Glue tables
//! are `GlueTable` providers.
//!
//! Metadata is kept in memory: databases and tables are fetched whole (every page)
//! at start-up, every `metadata_ttl_secs` in the background, and on
//! `CALL sluice.refresh_lake()`. Partition lists (per filter expression) and file
//! listings are cached per entry with their own age. When Glue or S3 cannot be
//! reached, whatever is cached keeps serving and a warning is logged. The caches
//! and the client every table shares are `shared.rs`; partitions, types and the
//! table provider have their own files.

pub mod partitions;
mod shared;
pub mod table;
pub mod types;

pub use shared::{DatabaseStats, GlueShared};

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::StreamExt;

use crate::config::GlueLakeConfig;
use crate::error::{PgError, SqlState};
use table::GlueTable;

/// At most this many pages per listing: a paging loop that never ends (a service
/// returning the same token) must not hang the gateway.
const MAX_PAGES: usize = 100_000;

/// Follows `NextToken`s until the last page. `fetch(token)` returns one page and the
/// next token.
pub async fn collect_pages<T, F, Fut>(mut fetch: F) -> std::result::Result<Vec<T>, String>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = std::result::Result<(Vec<T>, Option<String>), String>>,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let (items, next) = fetch(token.take()).await?;
        out.extend(items);
        match next.filter(|t| !t.is_empty()) {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
    Err(format!("gave up after {MAX_PAGES} pages"))
}

/// One Glue database as a schema. Glue names are lower case; a quoted mixed-case
/// name finds its table too.
pub type GlueSchema = crate::lake::tables::TableMap<GlueTable>;

/// The Glue part of the lake: which databases are mounted, and their refresh.
pub struct GlueCatalog {
    shared: Arc<GlueShared>,
    config: GlueLakeConfig,
    lake: Arc<MemoryCatalogProvider>,
    /// Schema names other catalogs own (the local catalog, `public`).
    reserved: Vec<String>,
    mounted: RwLock<HashMap<String, Arc<GlueSchema>>>,
    refreshing: tokio::sync::Mutex<()>,
    last_refresh: RwLock<Option<(Instant, std::result::Result<(), String>)>>,
    /// Bumped whenever the set of mounted databases may have changed, so forwarding
    /// sessions know to re-read which schemas are the lake's.
    generation: AtomicU64,
}

/// What `CALL sluice.refresh_lake()` reports.
#[derive(Debug, Clone, Default)]
pub struct RefreshSummary {
    pub databases: usize,
    pub tables: usize,
}

impl GlueCatalog {
    /// Connects, loads the catalog once and mounts it into `lake`. Glue being
    /// unreachable at start-up is not fatal: the gateway starts with no Glue schemas
    /// and the background refresh keeps trying.
    pub async fn start(
        config: &GlueLakeConfig,
        sdk: &aws_config::SdkConfig,
        lake: Arc<MemoryCatalogProvider>,
        runtime: Arc<RuntimeEnv>,
    ) -> Arc<GlueCatalog> {
        let shared = Arc::new(GlueShared::new(
            aws_sdk_glue::Client::new(sdk),
            config,
            runtime,
        ));
        let catalog = Arc::new(GlueCatalog {
            shared,
            config: config.clone(),
            reserved: lake.schema_names(),
            lake,
            mounted: RwLock::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            last_refresh: RwLock::new(None),
            generation: AtomicU64::new(0),
        });
        match catalog.refresh(None).await {
            Ok(s) => tracing::info!(
                databases = s.databases,
                tables = s.tables,
                "Glue catalog loaded"
            ),
            Err(e) => {
                tracing::warn!(error = %e.message, "Glue catalog not loaded; will retry in the background")
            }
        }
        spawn_refresher(Arc::downgrade(&catalog), config.metadata_ttl_secs);
        catalog
    }

    /// Changes whenever the mounted databases may have changed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn shared(&self) -> &Arc<GlueShared> {
        &self.shared
    }

    /// Mounted databases and their table counts.
    pub fn mounted(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .mounted
            .read()
            .map(|m| m.iter().map(|(k, s)| (k.clone(), s.len())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Age and outcome of the last refresh.
    pub fn last_refresh(&self) -> Option<(Duration, std::result::Result<(), String>)> {
        self.last_refresh
            .read()
            .ok()
            .and_then(|r| r.as_ref().map(|(at, res)| (at.elapsed(), res.clone())))
    }

    /// Reloads databases and tables from Glue (all of them, or one database), and
    /// forgets cached partitions and listings. One refresh runs at a time; a caller
    /// arriving during a refresh waits for it and then refreshes again, so it always
    /// sees changes made before it asked.
    pub async fn refresh(
        &self,
        only: Option<&str>,
    ) -> std::result::Result<RefreshSummary, PgError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let result = self.reload(only).await;
        if let Ok(mut last) = self.last_refresh.write() {
            *last = Some((
                Instant::now(),
                result.as_ref().map(|_| ()).map_err(Clone::clone),
            ));
        }
        result.map_err(|e| {
            PgError::new(
                SqlState("58000"),
                format!("Glue catalog refresh failed: {e}"),
            )
            .with_hint("the previously loaded catalog keeps serving")
        })
    }

    async fn reload(&self, only: Option<&str>) -> std::result::Result<RefreshSummary, String> {
        let shared = &self.shared;
        let names = match only {
            Some(db) if !self.config.exposes(db) => {
                return Err(format!(
                    "database `{db}` is not exposed (see lake.glue.databases and exclude)"
                ));
            }
            Some(db) => vec![db.to_lowercase()],
            None => {
                collect_pages(|token| async move {
                    let out = shared
                        .client
                        .get_databases()
                        .set_catalog_id(shared.catalog_id.clone())
                        .set_next_token(token)
                        .send()
                        .await
                        .inspect(|_| glue_request("GetDatabases", "ok"))
                        .inspect_err(|_| glue_request("GetDatabases", "error"))
                        .map_err(|e| crate::aws::describe_error("GetDatabases", &e))?;
                    let page = out
                        .database_list()
                        .iter()
                        .map(|d| d.name().to_lowercase())
                        .collect();
                    Ok((page, out.next_token().map(str::to_owned)))
                })
                .await?
            }
        };
        let mut summary = RefreshSummary::default();
        let mut loaded: HashMap<String, BTreeMap<String, Arc<GlueTable>>> = HashMap::new();
        let mut listed = std::collections::HashSet::new();
        for name in names {
            if !self.config.exposes(&name) {
                continue;
            }
            listed.insert(name.clone());
            if self.reserved.contains(&name)
                || matches!(
                    name.as_str(),
                    "pg_catalog" | "information_schema" | "public"
                )
            {
                tracing::warn!(database = %name, "Glue database name is taken by another catalog; skipped");
                continue;
            }
            match self.load_tables(&name).await {
                Ok(tables) => {
                    summary.databases += 1;
                    summary.tables += tables.len();
                    loaded.insert(name, tables);
                }
                Err(e) if only.is_some() => return Err(e),
                // One unreadable database keeps its previous tables.
                Err(e) => {
                    tracing::warn!(database = %name, error = %e, "Glue database not refreshed")
                }
            }
        }
        let mut mounted = self
            .mounted
            .write()
            .map_err(|_| "catalog lock poisoned".to_owned())?;
        for (name, tables) in loaded.iter_mut() {
            let tables = std::mem::take(tables);
            match mounted.get(name) {
                Some(schema) => schema.replace(tables),
                None => {
                    let schema = Arc::new(GlueSchema::new(tables));
                    self.lake
                        .register_schema(name, schema.clone())
                        .map_err(|e| e.to_string())?;
                    mounted.insert(name.clone(), schema);
                }
            }
        }
        if only.is_none() {
            // Databases no longer in Glue. (One that is listed but failed to load
            // keeps its previous tables.)
            let gone: Vec<String> = mounted
                .keys()
                .filter(|k| !listed.contains(*k))
                .cloned()
                .collect();
            for name in gone {
                let _ = self.lake.deregister_schema(&name, true);
                mounted.remove(&name);
            }
        }
        drop(mounted);
        shared.epoch.fetch_add(1, Ordering::AcqRel);
        self.generation.fetch_add(1, Ordering::AcqRel);
        shared.partitions.invalidate_all();
        shared.listings.invalidate_all();
        Ok(summary)
    }

    async fn load_tables(
        &self,
        database: &str,
    ) -> std::result::Result<BTreeMap<String, Arc<GlueTable>>, String> {
        let shared = &self.shared;
        let tables = collect_pages(|token| async move {
            shared.count(database, |s| s.glue_requests += 1);
            let out = shared
                .client
                .get_tables()
                .set_catalog_id(shared.catalog_id.clone())
                .database_name(database)
                .set_next_token(token)
                .send()
                .await
                .inspect(|_| glue_request("GetTables", "ok"))
                .inspect_err(|_| glue_request("GetTables", "error"))
                .map_err(|e| crate::aws::describe_error("GetTables", &e))?;
            Ok((
                out.table_list().to_vec(),
                out.next_token().map(str::to_owned),
            ))
        })
        .await
        .inspect_err(|_| shared.count(database, |s| s.glue_failures += 1))?;
        // Delta and Iceberg tables read their schema from their own log or
        // metadata: a few objects each, several tables at a time.
        let loaded: Vec<(String, Arc<GlueTable>)> = futures::stream::iter(tables)
            .map(|t| {
                let (shared, database) = (self.shared.clone(), database.to_owned());
                async move {
                    let mut table = GlueTable::new(&database, &t, shared);
                    if let Err(why) = table.format() {
                        tracing::debug!(%database, table = t.name(), %why, "Glue table is not readable");
                    }
                    table.load_open_schema().await;
                    (t.name().to_lowercase(), Arc::new(table))
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        Ok(loaded.into_iter().collect())
    }
}

fn spawn_refresher(catalog: Weak<GlueCatalog>, ttl_secs: u64) {
    tokio::spawn(async move {
        let period = Duration::from_secs(ttl_secs.max(1));
        // Until the first load succeeds, retry sooner.
        let retry = period.min(Duration::from_secs(30));
        loop {
            let loaded = match catalog.upgrade() {
                Some(c) => c.last_refresh().is_some_and(|(_, r)| r.is_ok()),
                None => return,
            };
            tokio::time::sleep(if loaded { period } else { retry }).await;
            let Some(c) = catalog.upgrade() else { return };
            if let Err(e) = c.refresh(None).await {
                tracing::warn!(error = %e.message, "Glue refresh failed; serving the cached catalog");
            }
        }
    });
}

#[cfg(test)]
mod tests;

/// Counts one Glue API request (`sluice_glue_requests_total`).
fn glue_request(operation: &str, outcome: &str) {
    crate::metrics::metrics()
        .glue_requests
        .with_label_values(&[operation, outcome])
        .inc();
}
