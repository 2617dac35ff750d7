//! A Glue table that is an open table format: Delta Lake (read by `lake::delta`)
//! or Iceberg (read by `lake::iceberg`). Glue only says where the table is; its
//! schema, files and versions come from the table's own log or metadata.
//!
//! Iceberg commits move Glue's `metadata_location`: a query re-reads it from Glue
//! once the cached one is older than the listing age (`listing_ttl_secs`), the
//! same freshness plain tables' file listings have. Delta commits are found by
//! listing `_delta_log`, on the same schedule (`lake::delta`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::TableType;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::super::GlueShared;
use crate::lake::as_of::AsOf;
use crate::lake::delta::DeltaLake;
use crate::lake::iceberg::Iceberg;

#[derive(Debug)]
pub enum OpenTable {
    Delta(Box<DeltaLake>),
    Iceberg {
        reader: Iceberg,
        /// Glue's `metadata_location`, and when it was read.
        metadata: tokio::sync::Mutex<(Instant, String)>,
        max_age: Duration,
    },
}

impl OpenTable {
    pub fn delta(
        label: String,
        location: Option<&str>,
        runtime: Arc<RuntimeEnv>,
        max_age: Duration,
    ) -> std::result::Result<OpenTable, String> {
        let location = location.ok_or("the Delta table has no Location in Glue")?;
        Ok(OpenTable::Delta(Box::new(DeltaLake::new(
            label, location, runtime, max_age,
        )?)))
    }

    pub fn iceberg(
        label: String,
        metadata_location: &str,
        runtime: Arc<RuntimeEnv>,
        max_age: Duration,
    ) -> OpenTable {
        OpenTable::Iceberg {
            reader: Iceberg::new(label, runtime),
            metadata: tokio::sync::Mutex::new((Instant::now(), metadata_location.to_owned())),
            max_age,
        }
    }

    /// The schema of the newest version.
    pub async fn schema(&self) -> Result<SchemaRef> {
        match self {
            OpenTable::Delta(delta) => delta.schema().await,
            OpenTable::Iceberg {
                reader, metadata, ..
            } => {
                let location = metadata.lock().await.1.clone();
                reader.schema(&location).await
            }
        }
    }

    /// A provider of the version `as_of` names, or the newest.
    pub async fn provider(
        &self,
        glue: &GlueShared,
        database: &str,
        name: &str,
        as_of: Option<AsOf>,
    ) -> Result<Arc<dyn TableProvider>> {
        match self {
            OpenTable::Delta(delta) => delta.provider_as_of(as_of).await,
            OpenTable::Iceberg {
                reader,
                metadata,
                max_age,
            } => {
                let location = {
                    let mut current = metadata.lock().await;
                    if current.0.elapsed() >= *max_age {
                        match glue.metadata_location(database, name).await {
                            Ok(location) => *current = (Instant::now(), location),
                            Err(e) => {
                                tracing::warn!(%database, table = %name, error = %e, "cannot re-read the Iceberg metadata location from Glue; using the cached one");
                            }
                        }
                    }
                    current.1.clone()
                };
                reader.provider(&location, as_of).await
            }
        }
    }
}

/// A version of an open-format table as queries read it: its scans are refused
/// when they would read the gateway's own disk and the catalog does not allow it.
#[derive(Debug)]
pub struct LocalChecked {
    pub inner: Arc<dyn TableProvider>,
    pub local_allowed: bool,
}

#[async_trait]
impl TableProvider for LocalChecked {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        crate::lake::stores::refuse_local_files(&plan, self.local_allowed)?;
        Ok(plan)
    }
}
