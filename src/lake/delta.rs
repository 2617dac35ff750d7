//! Delta Lake tables, read through `deltalake-core` (delta-rs) on the gateway's own
//! object stores: the transaction log gives the snapshot (newest, or a version, or
//! the version current at a time), delta-rs's DataFusion scan skips files on their
//! partition values and column statistics, applies deletion vectors, and reads the
//! Parquet files. A table that needs a reader feature delta-rs lacks gets 0A000.
//!
//! The newest snapshot is kept for the catalog's listing age (`listing_ttl_secs`),
//! as plain tables keep their file listings: a commit is visible within that time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use deltalake_core::delta_datafusion::{DeltaScanConfig, DeltaScanNext};
use deltalake_core::kernel::Snapshot;
use deltalake_core::logstore::{LogStoreRef, StorageConfig, default_logstore};
use deltalake_core::{DeltaTable, DeltaTableError};
use object_store::prefix::PrefixStore;
use url::Url;

use super::as_of::AsOf;
use crate::error::{PgError, SqlState};

/// One Delta table at a root location.
#[derive(Debug)]
pub struct DeltaLake {
    /// `"database"."table"`, for messages.
    label: String,
    store_url: ObjectStoreUrl,
    prefix: object_store::path::Path,
    /// `store_url` + `prefix` + `/`: the URL delta-rs resolves files against.
    root: Url,
    runtime: Arc<RuntimeEnv>,
    max_age: Duration,
    newest: tokio::sync::Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

impl DeltaLake {
    /// `location` is the table root (the folder holding `_delta_log`).
    pub fn new(
        label: String,
        location: &str,
        runtime: Arc<RuntimeEnv>,
        max_age: Duration,
    ) -> std::result::Result<DeltaLake, String> {
        let (store_url, prefix) =
            crate::lake::stores::split_location(location).map_err(|e| e.to_string())?;
        let base = store_url.as_str().trim_end_matches('/');
        let root = match prefix.as_ref() {
            "" => format!("{base}/"),
            p => format!("{base}/{p}/"),
        };
        let root = Url::parse(&root)
            .map_err(|e| format!("its location `{location}` is not a URL: {e}"))?;
        Ok(DeltaLake {
            label,
            store_url: ObjectStoreUrl::parse(store_url.as_str()).map_err(|e| e.to_string())?,
            prefix,
            root,
            runtime,
            max_age,
            newest: tokio::sync::Mutex::new(None),
        })
    }

    fn log_store(&self) -> Result<LogStoreRef> {
        let root_store = self.runtime.object_store(&self.store_url)?;
        let table_store = Arc::new(PrefixStore::new(root_store.clone(), self.prefix.clone()));
        Ok(default_logstore(
            table_store,
            root_store,
            &self.root,
            &StorageConfig::default(),
        ))
    }

    /// The snapshot `as_of` names, or the newest one.
    pub async fn snapshot(&self, as_of: Option<AsOf>) -> Result<Arc<Snapshot>> {
        let log_store = self.log_store()?;
        match as_of {
            None => {
                let mut newest = self.newest.lock().await;
                if let Some((at, snapshot)) = newest.as_ref()
                    && at.elapsed() < self.max_age
                {
                    return Ok(snapshot.clone());
                }
                let snapshot = Arc::new(
                    Snapshot::try_new(log_store.as_ref(), None)
                        .await
                        .map_err(|e| self.error(e, None))?,
                );
                *newest = Some((Instant::now(), snapshot.clone()));
                Ok(snapshot)
            }
            Some(AsOf::Version(v)) => {
                let version = u64::try_from(v).map_err(|_| {
                    self.error_text(
                        SqlState::INVALID_PARAMETER_VALUE,
                        format!("version {v} does not exist"),
                    )
                })?;
                Ok(Arc::new(
                    Snapshot::try_new(log_store.as_ref(), Some(version))
                        .await
                        .map_err(|e| self.error(e, as_of))?,
                ))
            }
            Some(AsOf::Timestamp(at)) => {
                let mut table = DeltaTable::new(log_store.clone());
                table
                    .load_with_datetime(at)
                    .await
                    .map_err(|e| self.error(e, as_of))?;
                let version = table.version().ok_or_else(|| {
                    self.error_text(
                        SqlState::INVALID_PARAMETER_VALUE,
                        format!("the table has no version as of {}", AsOf::Timestamp(at)),
                    )
                })?;
                Ok(Arc::new(
                    Snapshot::try_new(log_store.as_ref(), Some(version))
                        .await
                        .map_err(|e| self.error(e, as_of))?,
                ))
            }
        }
    }

    /// delta-rs's DataFusion provider for one snapshot. Partition values are plain
    /// columns (not dictionary-wrapped) so clients see their ordinary types.
    pub fn provider(
        &self,
        snapshot: Arc<Snapshot>,
        as_of: Option<AsOf>,
    ) -> Result<Arc<dyn TableProvider>> {
        let config = DeltaScanConfig::new().with_wrap_partition_values(false);
        let scan = DeltaScanNext::new(snapshot, config)
            .map_err(|e| self.error(DeltaTableError::from(e), as_of))?;
        Ok(Arc::new(scan))
    }

    /// The schema of the newest snapshot.
    pub async fn schema(&self) -> Result<SchemaRef> {
        let snapshot = self.snapshot(None).await?;
        Ok(self.provider(snapshot, None)?.schema())
    }

    /// A query's scan of the snapshot `as_of` names (newest when `None`).
    pub async fn provider_as_of(&self, as_of: Option<AsOf>) -> Result<Arc<dyn TableProvider>> {
        let snapshot = self.snapshot(as_of).await?;
        self.provider(snapshot, as_of)
    }

    fn error_text(&self, code: SqlState, message: String) -> DataFusionError {
        DataFusionError::External(Box::new(PgError::new(
            code,
            format!("Delta table {}: {message}", self.label),
        )))
    }

    /// delta-rs's error as the SQLSTATE a client can act on.
    fn error(&self, e: DeltaTableError, as_of: Option<AsOf>) -> DataFusionError {
        let text = e.to_string();
        let lower = text.to_ascii_lowercase();
        let first_line = text.lines().next().unwrap_or_default();
        let trimmed: String = first_line.chars().take(300).collect();
        let (code, hint) = if lower.contains("unsupported") || lower.contains("not supported") {
            (
                SqlState::FEATURE_NOT_SUPPORTED,
                "the table uses a Delta reader feature or protocol version Sluice's Delta reader (delta-rs) does not support",
            )
        } else if as_of.is_some()
            && (matches!(e, DeltaTableError::InvalidVersion(_))
                || lower.contains("version")
                || lower.contains("timestamp"))
        {
            (
                SqlState::INVALID_PARAMETER_VALUE,
                "that version or time is not in the table's log (it may have been vacuumed or not written yet)",
            )
        } else if matches!(e, DeltaTableError::NotATable(_))
            || lower.contains("no files in log segment")
        {
            (
                SqlState::IO_ERROR,
                "Glue points at a location with no Delta transaction log (_delta_log)",
            )
        } else {
            (
                SqlState("58000"),
                "the table's log or files could not be read; try again, or ask an administrator to check the gateway's storage access",
            )
        };
        let at = as_of.map(|a| format!(" at {a}")).unwrap_or_default();
        DataFusionError::External(Box::new(
            PgError::new(code, format!("Delta table {}{at}: {trimmed}", self.label))
                .with_hint(hint),
        ))
    }
}
