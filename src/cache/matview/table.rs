//! A gateway materialized view as DataFusion sees it: a `TableProvider` whose scan
//! reads the Parquet files of the version current when the scan is planned. A
//! refresh swaps the version atomically ([`MatViewTable::swap`]); plans already
//! made keep reading the files of the version they started with.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

/// One immutable version of a view's data.
#[derive(Debug)]
pub enum Version {
    /// Created `WITH NO DATA`, or its first refresh has not finished.
    Unpopulated {
        name: String,
    },
    Populated(Box<ListingTable>),
}

impl Version {
    /// A version reading exactly `files` (URLs of Parquet files with `schema`).
    pub fn of_files(schema: SchemaRef, files: &[String]) -> Result<Version> {
        let urls = files
            .iter()
            .map(ListingTableUrl::parse)
            .collect::<Result<Vec<_>>>()?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(schema);
        Ok(Version::Populated(Box::new(ListingTable::try_new(config)?)))
    }
}

#[derive(Debug)]
pub struct MatViewTable {
    schema: ArcSwap<SchemaRef>,
    current: ArcSwap<Version>,
}

impl MatViewTable {
    pub fn new(schema: SchemaRef, version: Version) -> MatViewTable {
        MatViewTable {
            schema: ArcSwap::from_pointee(schema),
            current: ArcSwap::from_pointee(version),
        }
    }

    /// Makes `version` the one new scans read (the schema may change with it).
    pub fn swap(&self, schema: SchemaRef, version: Version) {
        self.schema.store(Arc::new(schema));
        self.current.store(Arc::new(version));
    }
}

#[async_trait]
impl TableProvider for MatViewTable {
    fn schema(&self) -> SchemaRef {
        self.schema.load().as_ref().clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        match self.current.load().as_ref() {
            Version::Populated(t) => t.supports_filters_pushdown(filters),
            Version::Unpopulated { .. } => Ok(vec![
                TableProviderFilterPushDown::Unsupported;
                filters.len()
            ]),
        }
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // One load: the whole scan reads one version, even if a refresh swaps now.
        let version = self.current.load_full();
        match version.as_ref() {
            Version::Populated(t) => t.scan(state, projection, filters, limit).await,
            Version::Unpopulated { name } => Err(DataFusionError::Plan(format!(
                "materialized view \"{name}\" has not been populated (REFRESH MATERIALIZED VIEW {name})"
            ))),
        }
    }
}

#[async_trait::async_trait]
impl crate::lake::tables::Versioned for MatViewTable {
    async fn as_of(&self, as_of: crate::lake::as_of::AsOf) -> Result<Arc<dyn TableProvider>> {
        Err(DataFusionError::External(Box::new(
            crate::error::PgError::new(
                crate::error::SqlState::FEATURE_NOT_SUPPORTED,
                format!("materialized views have no earlier versions ({as_of} was asked for)"),
            ),
        )))
    }
}

/// A schema holding gateway views (`materialized_views.schemas`).
pub type MatViewSchema = crate::lake::tables::TableMap<MatViewTable>;
